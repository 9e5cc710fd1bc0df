"""Memory bank: per-instance and class prototypes from reference instances (method.md §2-3).

Only what inference needs is kept: the per-instance prototypes p[c,k] ([R, D], un-normalised
masked means) and their class index; the class prototypes P[c] = normalize(mean_k p[c,k]) are
derived from them. That is KB-MB, not the reference's GB of full 37×37×D maps (§8.7).

On disk a bank is a directory::

    BANK/memory_bank.safetensors   instance_prototypes [R, D] float32, instance_labels [R] int64
    BANK/memory_bank.json          categories, shots, encoder (name, checkpoint sha256), config,
                                   references' provenance, content_hash

A bank may also hold *negative references* (docs/negative_references.md): ``negative_prototypes``
[Rn, D] float32 (un-normalised masked means, made like the positive ones) and ``negative_labels``
[Rn] int64 in the safetensors file, their provenance under ``negatives`` in the JSON (format
version 2). A bank without negatives is written exactly as before (version 1, same hash).

No pickle: tensors in safetensors, everything else JSON. Two digests, both checked on load:

* ``content_hash``: a SHA-256 over the tensors, the categories and the encoder's name (unchanged
  since the first version: job fingerprints and pins record it);
* ``metadata_hash``: a SHA-256 over the canonical JSON (sorted keys, no spaces) of every other
  field of ``memory_bank.json`` (shots, feature dimension, the whole ``encoder`` record with its
  ``checkpoint_sha256`` and ``official``, config, references, notes, negatives, format, versions):
  an edit of any of them is refused ("the metadata was edited: rebuild the bank"). A bank written
  before this digest existed has none: it loads with a warning.

Required fields (a bank without one is refused, naming it): ``categories``, ``encoder`` with
``name`` and ``checkpoint_sha256`` (``null`` only for banks of random prototypes, which then skip
the encoder-weights check), ``feature_dim`` and ``shots`` (which must agree with the tensors) and
``content_hash``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .._version import __version__
from ..storage.atomic import atomic_write_bytes, atomic_write_text
from ..storage.masks import segmentation_to_mask
from .config import MemoryConfig, config_to_dict
from .preprocess import image_to_tensor, prepare_target

log = logging.getLogger(__name__)

BANK_FORMAT = "ntt-batch/memory-bank"
BANK_VERSION = 1
BANK_VERSION_NEGATIVES = 2  # written only by a bank that holds negative references
TENSORS_FILE = "memory_bank.safetensors"
META_FILE = "memory_bank.json"
# Fields every bank's JSON must hold (``encoder`` must hold ENCODER_FIELDS), checked on load.
REQUIRED_FIELDS = ("categories", "encoder", "feature_dim", "shots", "content_hash")
ENCODER_FIELDS = ("name", "checkpoint_sha256")


def metadata_hash(meta: dict) -> str:
    """SHA-256 (hex) of the canonical JSON of every field of a bank's metadata but ``metadata_hash``."""
    body = {k: v for k, v in meta.items() if k != "metadata_hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def check_metadata(meta: dict, where: str) -> None:
    """Refuse a bank's metadata with a required field missing, or edited since it was saved.

    Raises:
        ValueError: naming ``where`` (the JSON file) and the field, or saying the metadata was edited.
    """
    rebuild = "rebuild the bank with `ntt-batch memory build`"
    for key in REQUIRED_FIELDS:
        if key not in meta:
            raise ValueError(f"{where}: required field {key!r} is missing; {rebuild}")
    if not isinstance(meta["encoder"], dict):
        raise ValueError(f"{where}: field 'encoder' must be a mapping; {rebuild}")
    for key in ENCODER_FIELDS:
        if key not in meta["encoder"]:
            raise ValueError(f"{where}: required field 'encoder.{key}' is missing; {rebuild}")
    recorded = meta.get("metadata_hash")
    if recorded is None:
        log.warning(
            "%s has no metadata_hash (written by ntt-batch before it existed): edits of its metadata cannot be "
            "detected; rebuild the bank (`ntt-batch memory build`) to protect it",
            where,
        )
    elif recorded != metadata_hash(meta):
        raise ValueError(f"{where}: the metadata was edited (metadata_hash mismatch): rebuild the bank")


# ----------------------------------------------------------------------------- math (method.md §2-3)


def context_crop_box(
    bbox_xywh: Sequence[float], image_w: int, image_h: int, context_ratio: float = 0.2
) -> tuple[int, int, int, int]:
    """Square context crop centred on the box (§2.1 steps 3-4), clipped to the image.

    Returns (x0, x1, y0, y1): columns [x0, x1), rows [y0, y1). Clipping can make it non-square.
    """
    x, y, w, h = bbox_xywh
    x1, y1, x2, y2 = int(x), int(y), int(x + w), int(y + h)
    side = (1.0 + context_ratio) * max(x2 - x1, y2 - y1)
    mx, my = (x1 + x2) / 2, (y1 + y2) / 2
    return (
        max(0, int(mx - side / 2)),
        min(image_w, int(mx + side / 2)),
        max(0, int(my - side / 2)),
        min(image_h, int(my + side / 2)),
    )


def crop_reference(
    image: Tensor, mask: Tensor, bbox_xywh: Sequence[float], config: MemoryConfig
) -> tuple[Tensor, Tensor]:
    """Crop and resize one reference (§2.1 step 5).

    Args:
        image: [3, H, W] float RGB in [0, 1] at original size.
        mask: [H, W] float {0, 1} instance mask.
    Returns:
        image crop [3, S, S] (bicubic, no clamp) and soft mask [S, S] (bilinear), S = crop_size.
    """
    _, h, w = image.shape
    x0, x1, y0, y1 = context_crop_box(bbox_xywh, w, h, config.context_ratio)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"reference box {list(bbox_xywh)} gives an empty crop in a {w}x{h} image")
    s = config.crop_size
    img = F.interpolate(image[None, :, y0:y1, x0:x1], size=(s, s), mode="bicubic", align_corners=False)[0]
    m = F.interpolate(mask[None, None, y0:y1, x0:x1], size=(s, s), mode="bilinear", align_corners=False)[0, 0]
    return img, m


def mask_to_patch_weights(soft_mask: Tensor, grid: int, fallback: str = "area") -> tuple[Tensor, bool]:
    """Soft mask [S, S] → patch weights [grid, grid] (§2.2).

    Nearest interpolation, which samples the top-left pixel of each patch, kept as float weights.
    If that misses every patch (thin objects, §8.6) and ``fallback == "area"``, the mean of the mask
    over each patch is used instead. Returns (weights, used_fallback).
    """
    w = F.interpolate(soft_mask[None, None], size=(grid, grid), mode="nearest")[0, 0]
    if w.sum() > 0:
        return w, False
    if fallback != "area":
        raise ValueError("reference mask misses every sampled patch (set empty_mask_fallback='area')")
    return F.interpolate(soft_mask[None, None], size=(grid, grid), mode="area")[0, 0], True


def instance_prototype(patch_features: Tensor, weights: Tensor) -> Tensor:
    """p = Σ_n w_n F_n / Σ_n w_n (§3 step 2). patch_features [G, G, D] or [n, D]; weights [G, G] or [n]."""
    f = patch_features.reshape(-1, patch_features.shape[-1])
    wt = weights.reshape(-1).to(f.dtype)
    return (wt[:, None] * f).sum(dim=0) / wt.sum()


def class_prototypes(instance_prototypes: Tensor, instance_labels: Tensor, num_classes: int) -> Tensor:
    """P[c] = normalize((1/K_c) Σ_k p[c,k]) (§3 step 3); K_c may differ per class (ragged shots).

    Args:
        instance_prototypes: [R, D] un-normalised p[c,k].
        instance_labels: [R] class index of each.
    Returns:
        [C, D] unit vectors.
    """
    d = instance_prototypes.shape[1]
    sums = torch.zeros(num_classes, d, dtype=instance_prototypes.dtype).index_add_(
        0, instance_labels, instance_prototypes
    )
    counts = torch.bincount(instance_labels, minlength=num_classes).to(instance_prototypes.dtype)
    if (counts == 0).any():
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"class index(es) {missing} have no reference instance")
    mean = sums / counts[:, None]
    return mean / mean.norm(dim=1, keepdim=True)


# ----------------------------------------------------------------------------- the bank


@dataclass
class MemoryBank:
    """Prototypes and metadata. Class index = rank of the sorted category id (§2.3)."""

    categories: list[dict]  # [{"id": int, "name": str}] sorted by id
    instance_prototypes: Tensor  # [R, D] float32
    instance_labels: Tensor  # [R] int64, class index
    encoder: dict  # {"name", "checkpoint_sha256", "official"}
    config: dict = field(default_factory=dict)
    references: dict = field(default_factory=dict)  # provenance: source + per-reference ids
    notes: list[str] = field(default_factory=list)
    # Negative references (docs/negative_references.md): None, or [Rn, D] float32 un-normalised
    # instance prototypes and their [Rn] int64 class index; ``negatives`` is their provenance
    # ({"sources": [...], "instances": [one record per row]}).
    negative_prototypes: Tensor | None = None
    negative_labels: Tensor | None = None
    negatives: dict = field(default_factory=dict)
    class_prototypes: Tensor = field(init=False)

    def __post_init__(self):
        ids = [int(c["id"]) for c in self.categories]
        if ids != sorted(ids) or len(set(ids)) != len(ids):
            raise ValueError(f"bank categories must be unique and sorted by id, got {ids}")
        if "checkpoint_sha256" not in self.encoder:  # built in Python without it: recorded as unknown (no check)
            self.encoder = {**self.encoder, "checkpoint_sha256": None}
        self.instance_prototypes = self.instance_prototypes.to(torch.float32).contiguous()
        self.instance_labels = self.instance_labels.to(torch.int64).contiguous()
        self.class_prototypes = class_prototypes(self.instance_prototypes, self.instance_labels, len(ids))
        self._check_negatives()

    def _check_negatives(self) -> None:
        """Normalise the negative tensors (None when there are none) and check them against the bank."""
        protos, labels = self.negative_prototypes, self.negative_labels
        if (protos is None) != (labels is None):
            raise ValueError("negative_prototypes and negative_labels go together: give both or neither")
        if protos is None or protos.shape[0] == 0:
            self.negative_prototypes = self.negative_labels = None
            self.negatives = {}
            return
        d = self.instance_prototypes.shape[1]
        if protos.ndim != 2 or protos.shape[1] != d or labels.shape != (protos.shape[0],):
            raise ValueError(
                f"negative references: prototypes {tuple(protos.shape)} and labels {tuple(labels.shape)} do not "
                f"fit a bank of feature dim {d} (expected [Rn, {d}] and [Rn])"
            )
        if int(labels.min()) < 0 or int(labels.max()) >= len(self.categories):
            raise ValueError(f"negative references: class index out of range 0..{len(self.categories) - 1}")
        self.negative_prototypes = protos.to(torch.float32).contiguous()
        self.negative_labels = labels.to(torch.int64).contiguous()

    @property
    def has_negatives(self) -> bool:
        """Whether the bank holds negative references (docs/negative_references.md)."""
        return self.negative_prototypes is not None

    @property
    def negative_shots(self) -> dict[str, int]:
        """Negative references per class name (every class listed, 0 for those without)."""
        if not self.has_negatives:
            return {c["name"]: 0 for c in self.categories}
        counts = torch.bincount(self.negative_labels, minlength=len(self.categories)).tolist()
        return {c["name"]: int(n) for c, n in zip(self.categories, counts)}

    def with_negatives(
        self, prototypes: Tensor | None, labels: Tensor | None, instances: list[dict], sources: list[dict]
    ) -> MemoryBank:
        """A copy of this bank whose negative references are exactly these (None / 0 rows: none).

        Args:
            prototypes: [Rn, D] un-normalised instance prototypes (as ``instance_prototypes``).
            labels: [Rn] class index of each.
            instances: one provenance record per row (``category_id``, ``file_name``, ``score``, ``source``...).
            sources: how they were made (``{"kind": "mined", ...}``, ``{"kind": "file", ...}``).
        """
        n = 0 if prototypes is None else int(prototypes.shape[0])
        if len(instances) != n:
            raise ValueError(f"{len(instances)} negative records for {n} negative prototypes")
        return dataclasses.replace(
            self,
            negative_prototypes=prototypes,
            negative_labels=labels,
            negatives={"sources": list(sources), "instances": list(instances)} if n else {},
        )

    @property
    def category_ids(self) -> list[int]:
        return [int(c["id"]) for c in self.categories]

    @property
    def category_names(self) -> list[str]:
        return [str(c["name"]) for c in self.categories]

    @property
    def shots(self) -> dict[str, int]:
        counts = torch.bincount(self.instance_labels, minlength=len(self.categories)).tolist()
        return {c["name"]: int(n) for c, n in zip(self.categories, counts)}

    @property
    def content_hash(self) -> str:
        h = hashlib.sha256()
        h.update(
            json.dumps({"categories": self.categories, "encoder": self.encoder.get("name")}, sort_keys=True).encode()
        )
        for t in (self.instance_prototypes, self.instance_labels):
            h.update(str(tuple(t.shape)).encode())
            h.update(t.numpy().tobytes())
        if self.has_negatives:  # absent: the hash of a bank without negatives, unchanged
            h.update(b"negatives")
            for t in (self.negative_prototypes, self.negative_labels):
                h.update(str(tuple(t.shape)).encode())
                h.update(t.numpy().tobytes())
        return h.hexdigest()

    def metadata(self) -> dict:
        meta = self._base_metadata()
        if self.has_negatives:
            meta["version"] = BANK_VERSION_NEGATIVES
            meta["negatives"] = {**self.negatives, "per_class": self.negative_shots}
        return meta

    def tensors(self) -> dict[str, Tensor]:
        """What the safetensors file holds."""
        out = {"instance_prototypes": self.instance_prototypes, "instance_labels": self.instance_labels}
        if self.has_negatives:
            out |= {"negative_prototypes": self.negative_prototypes, "negative_labels": self.negative_labels}
        return out

    def _base_metadata(self) -> dict:
        return {
            "format": BANK_FORMAT,
            "version": BANK_VERSION,
            "ntt_batch_version": __version__,
            "categories": self.categories,
            "shots": self.shots,
            "feature_dim": int(self.instance_prototypes.shape[1]),
            "encoder": self.encoder,
            "config": self.config,
            "references": self.references,
            "notes": self.notes,
            "content_hash": self.content_hash,
        }

    def saved_metadata(self) -> dict:
        """:meth:`metadata` with its ``metadata_hash`` (what :meth:`save` writes)."""
        meta = self.metadata()
        meta["metadata_hash"] = metadata_hash(meta)
        return meta

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the two files, each atomically (tensors first: a reader between the two renames sees a
        content-hash mismatch, never a silently mixed bank)."""
        from safetensors.torch import save

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        meta = self.saved_metadata()
        data = save(self.tensors(), metadata={"format": BANK_FORMAT, "content_hash": meta["content_hash"]})
        atomic_write_bytes(d / TENSORS_FILE, data)
        atomic_write_text(d / META_FILE, json.dumps(meta, indent=2))
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike) -> MemoryBank:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        d = Path(directory)
        meta_path, tensor_path = d / META_FILE, d / TENSORS_FILE
        if not meta_path.is_file() or not tensor_path.is_file():
            raise FileNotFoundError(
                f"{d} is not a memory bank: expected {META_FILE} and {TENSORS_FILE} in it "
                "(build one with `ntt-batch memory build`)"
            )
        rebuild = "rebuild the bank with `ntt-batch memory build` (or restore the file)"
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError as e:  # JSONDecodeError, bad UTF-8
            raise ValueError(f"{meta_path}: not valid JSON ({e}); {rebuild}") from None
        if not isinstance(meta, dict) or meta.get("format") != BANK_FORMAT:
            raise ValueError(f"{meta_path}: not a memory bank's metadata (format {BANK_FORMAT!r} expected); {rebuild}")
        if meta.get("version") not in (BANK_VERSION, BANK_VERSION_NEGATIVES):
            raise ValueError(f"{meta_path}: unsupported format {meta.get('format')!r} version {meta.get('version')!r}")
        check_metadata(meta, str(meta_path))
        try:
            tensors = load_file(str(tensor_path))
        except SafetensorError as e:  # truncated or damaged (safetensors' own error is no ValueError)
            raise ValueError(f"{tensor_path}: damaged safetensors file ({e}); {rebuild}") from None
        missing = [k for k in ("instance_prototypes", "instance_labels") if k not in tensors]
        if missing:
            raise ValueError(f"{tensor_path}: no tensor(s) {', '.join(missing)}; {rebuild}")
        bank = cls(
            categories=meta["categories"],
            instance_prototypes=tensors["instance_prototypes"],
            instance_labels=tensors["instance_labels"],
            encoder=meta["encoder"],
            config=meta.get("config", {}),
            references=meta.get("references", {}),
            notes=meta.get("notes", []),
            negative_prototypes=tensors.get("negative_prototypes"),
            negative_labels=tensors.get("negative_labels"),
            negatives={k: v for k, v in (meta.get("negatives") or {}).items() if k != "per_class"},
        )
        if bank.content_hash != meta.get("content_hash"):
            raise ValueError(f"{d}: content hash mismatch (files modified or mixed from two banks)")
        dim = int(bank.instance_prototypes.shape[1])
        if meta["feature_dim"] != dim or meta["shots"] != bank.shots:
            raise ValueError(
                f"{meta_path}: feature_dim/shots ({meta['feature_dim']}, {meta['shots']}) disagree with the tensors "
                f"({dim}, {bank.shots}); {rebuild}"
            )
        return bank


def check_encoder_weights(bank_encoder: dict, enc_ckpt, memory: str) -> None:
    """Refuse encoder weights other than those a bank was built with (its features would not be comparable).

    ``bank_encoder``: the bank's ``encoder`` record (``name``, ``checkpoint_sha256``); ``enc_ckpt``: the
    resolved checkpoint (``path``, ``sha256``). A bank recording ``checkpoint_sha256: null`` (random
    prototypes: ``benchmark.random_bank``) is accepted; a record without the field is refused (removing
    it must not turn the check off).
    """
    if "checkpoint_sha256" not in bank_encoder:
        raise ValueError(
            f"memory bank {memory}: required field 'encoder.checkpoint_sha256' is missing; rebuild the bank with "
            "`ntt-batch memory build`"
        )
    want = bank_encoder.get("checkpoint_sha256")
    if want and enc_ckpt.sha256 != want:
        raise ValueError(
            f"memory bank {memory} was built with {bank_encoder.get('name')} weights sha256 {want}, but "
            f"{enc_ckpt.path} has sha256 {enc_ckpt.sha256}: features would not be comparable. Use the same "
            "checkpoint (--checkpoint-dir) or rebuild the bank."
        )


# ----------------------------------------------------------------------------- building


def module_device(module) -> torch.device:
    """Device of a module's first parameter or buffer; CPU for stateless modules."""
    for t in list(module.parameters()) + list(module.buffers()) if isinstance(module, torch.nn.Module) else []:
        return t.device
    return torch.device("cpu")


@torch.no_grad()
def sam2_box_masks(proposer, image: np.ndarray, boxes_xywh: Sequence[Sequence[float]]) -> list[np.ndarray]:
    """Masks for box-only references from SAM2 box prompts (method.md §5.4 uses SAM for this).

    Standard predictor conventions: squash to the SAM input size, single-mask output, logits
    upsampled bilinearly to the original size and thresholded at 0.
    """
    h, w = image.shape[:2]
    s = proposer.image_size
    resized, _ = prepare_target(image, s, "squash")
    device = module_device(proposer)
    feats = proposer.encode(image_to_tensor(resized)[None].to(device))
    b = torch.tensor(
        [[x * s / w, y * s / h, (x + bw) * s / w, (y + bh) * s / h] for x, y, bw, bh in boxes_xywh],
        dtype=torch.float32,
        device=device,
    )
    logits, _ = proposer.decode_boxes(feats, b)
    up = F.interpolate(logits.float(), size=(h, w), mode="bilinear", align_corners=False)
    return [m[0].cpu().numpy() > 0 for m in up]


@torch.no_grad()
def build_memory_bank(
    references: dict,
    load_image: Callable[[dict], np.ndarray],
    encoder: torch.nn.Module,
    *,
    encoder_info: dict,
    config: MemoryConfig | None = None,
    box_prompter=None,
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> MemoryBank:
    """Encode every reference and build the bank (§2-3).

    Args:
        references: a validated references dict (see :mod:`ntt_batch.references.files`).
        load_image: reference entry → RGB uint8 [H, W, 3] original image.
        encoder: an image encoder (``models.encoders.ImageEncoder``): ``patch_size`` p,
            ``native_image_size`` and ``encoder(x [B,3,S,S] in [0,1]) -> [B, S/p, S/p, D]``.
        encoder_info: {"name", "checkpoint_sha256", "official"} recorded in the bank.
        config: ``crop_size`` None (default) is the encoder's native size; the bank records the
            resolved value.
        box_prompter: a mask proposer with ``decode_boxes`` (SAM 2) for references without a
            segmentation (box-only).
    """
    config = (config or MemoryConfig()).validate().for_encoder(encoder.patch_size, encoder.native_image_size)
    cats = sorted(references["categories"], key=lambda c: int(c["id"]))
    index_of = {int(c["id"]): i for i, c in enumerate(cats)}
    device = module_device(encoder)
    refs = references["references"]
    grid = config.crop_size // encoder.patch_size  # §2.2: the encoder's patch grid over the crop

    protos: list[Tensor] = []
    labels: list[int] = []
    used: list[dict] = []
    notes: list[str] = []
    pending: list[tuple[Tensor, Tensor, dict]] = []

    def flush():
        if not pending:
            return
        x = torch.stack([p[0] for p in pending]).to(device)
        feats = encoder(x).float().cpu()  # [B, g, g, D]
        for (_, m, ref), f in zip(pending, feats):
            w, fell_back = mask_to_patch_weights(m, grid, config.empty_mask_fallback)
            if fell_back:
                notes.append(
                    f"reference annotation {ref.get('annotation_id')} (image {ref.get('file_name')}): "
                    "nearest-sampled mask missed every patch; used area pooling (§8.6)"
                )
            protos.append(instance_prototype(f, w))
            labels.append(index_of[int(ref["category_id"])])
            used.append({k: ref.get(k) for k in ("category_id", "image_id", "annotation_id", "file_name")})
        pending.clear()

    for n, ref in enumerate(refs):
        image = load_image(ref)
        mask = _reference_mask(ref, image, box_prompter)
        bbox = ref.get("bbox") or _mask_bbox(mask)
        img_t, mask_t = crop_reference(image_to_tensor(image), torch.from_numpy(mask.astype(np.float32)), bbox, config)
        pending.append((img_t, mask_t, ref))
        if len(pending) >= batch_size:
            flush()
        if progress:
            progress(n + 1, len(refs))
    flush()

    return MemoryBank(
        categories=[{"id": int(c["id"]), "name": str(c["name"])} for c in cats],
        instance_prototypes=torch.stack(protos),
        instance_labels=torch.tensor(labels),
        encoder=dict(encoder_info),
        config=config_to_dict(config),
        references={"source": references.get("source", {}), "instances": used},
        notes=notes,
    )


def _reference_mask(ref: dict, image: np.ndarray, box_prompter) -> np.ndarray:
    """The reference's object mask, bool ``[H, W]`` at ``image``'s size: its segmentation, or SAM 2's
    mask for its box (box-only references need ``box_prompter``). Refuses an image whose size is not
    the one the references file records, and an empty mask."""
    h, w = image.shape[:2]
    if (h, w) != (int(ref["height"]), int(ref["width"])):
        raise ValueError(
            f"reference image {ref['file_name']!r} is {w}x{h} but the references file says "
            f"{ref['width']}x{ref['height']}"
        )
    if ref.get("segmentation") is not None:
        mask = segmentation_to_mask(ref["segmentation"], h, w)
    elif box_prompter is not None:
        mask = sam2_box_masks(box_prompter, image, [ref["bbox"]])[0]
    else:
        raise ValueError(f"reference {ref.get('file_name')!r} has only a box; a SAM2 model is needed to make its mask")
    if not mask.any():
        raise ValueError(f"reference annotation {ref.get('annotation_id')} in {ref['file_name']!r} has an empty mask")
    return mask


def _mask_bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
