"""What makes an output one job: the fingerprint of the settings that change rows, and how two compare."""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from ..method.config import (
    ConfigError,
    SegmenterConfig,
)
from ..models.encoders import encoder_family  # torch-free at import (dry runs, config check)
from .config import JobConfig, input_spec

log = logging.getLogger(__name__)


# Segmenter settings that change speed only, never the rows: left out of the job fingerprint.
PERFORMANCE_ONLY_SETTINGS = frozenset(
    {"device", "points_batch_size", "implementation", "compile", "merge_memory_mb", "memory_limit_mb"}
)


class JobMismatchError(ConfigError):
    """The output belongs to a job with another fingerprint."""


def job_fingerprint(cfg: JobConfig, bank_hash: str, sam_ckpt, enc_ckpt) -> dict:
    """What makes two runs the same job: inputs, bank content, segmenter settings, model weights, pixel limit.

    Segmenter settings are recorded resolved for the bank's encoder (``encoder_image_size: null``
    → the encoder's native side, 518 for DINOv2), so a default that became encoder-dependent
    does not change the fingerprint of a job that ran before.
    """
    return {
        "inputs": input_spec(cfg).describe(),
        "memory_bank": bank_hash,
        "segmenter": _fingerprinted_settings(resolved_segmenter(cfg.segmenter, enc_ckpt.name)),
        "models": {
            "sam2": {"name": sam_ckpt.name, "sha256": sam_ckpt.sha256},
            "encoder": {"name": enc_ckpt.name, "sha256": enc_ckpt.sha256},
        },
        "max_pixels": cfg.max_pixels,
    }


def resolved_segmenter(seg: SegmenterConfig, encoder_name: str | None) -> SegmenterConfig:
    """``seg`` with its encoder-dependent settings resolved for ``encoder_name`` (unchanged for an unknown name)."""
    try:
        fam = encoder_family(encoder_name)
    except (ValueError, KeyError):
        return seg
    return seg.for_encoder(fam.patch_size, fam.native_image_size)


def _fingerprinted_settings(seg: SegmenterConfig) -> dict:
    return {k: v for k, v in asdict(seg).items() if k not in PERFORMANCE_ONLY_SETTINGS}


def fingerprint_defaults(encoder_name: str | None) -> dict[str, Any]:
    """Flattened fingerprint keys → the value a setting has at its default (segmenter settings resolved
    for ``encoder_name``, and the pixel limit). A setting missing from a recorded fingerprint had this value."""
    seg = _fingerprinted_settings(resolved_segmenter(SegmenterConfig(), encoder_name))
    return {**{f"segmenter.{k}": v for k, v in seg.items()}, "max_pixels": JobConfig.max_pixels}


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


_ABSENT = object()


def fingerprint_differences(old: dict, new: dict) -> list[str]:
    """Human-readable differences between two fingerprints, e.g. "segmenter.points_per_side: 32 → 8".

    Settings are added over time: a setting one side does not record counts as its default
    (:func:`fingerprint_defaults`, resolved for the new fingerprint's encoder), so an output
    written before the setting existed is the same job as long as the setting is at its default.
    Performance-only settings (``PERFORMANCE_ONLY_SETTINGS``) an older output recorded are ignored,
    and an encoder-dependent setting recorded as null counts as the encoder's value.
    """
    encoder = ((new.get("models") or {}).get("encoder") or {}).get("name")
    defaults = fingerprint_defaults(encoder)
    unresolved = _flatten({"segmenter": asdict(SegmenterConfig())})
    a, b = _flatten(old), _flatten(new)
    out = []
    for k in sorted(set(a) | set(b)):
        if k.startswith("segmenter.") and k.split(".", 1)[1] in PERFORMANCE_ONLY_SETTINGS:
            continue
        va, vb = a.get(k, _ABSENT), b.get(k, _ABSENT)
        if k in defaults:
            if va is _ABSENT or (va is None and unresolved.get(k, _ABSENT) is None):
                va = defaults[k]
            if vb is _ABSENT or (vb is None and unresolved.get(k, _ABSENT) is None):
                vb = defaults[k]
        if va != vb:
            va, vb = ("(absent)" if v is _ABSENT else v for v in (va, vb))
            if isinstance(va, str) and isinstance(vb, str) and len(va) == len(vb) == 64:
                va, vb = va[:12] + "…", vb[:12] + "…"
            out.append(f"{k}: {va!r} in the output, {vb!r} now")
    return out
