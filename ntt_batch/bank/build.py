"""Memory-bank folders from references files: read the references, encode them, save the bank.

``ntt-batch memory build``, the Python API's :func:`ntt_batch.build_bank` and the batch job's bank
step (:mod:`ntt_batch.pipeline.bank_prep`) all call :func:`build_bank_folder`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ..method.config import MemoryConfig
from ..method.memory_bank import META_FILE, MemoryBank, build_memory_bank, sam2_box_masks
from ..method.segmenter import resolve_device
from ..models.loading import load_encoder, load_sam2
from ..references.files import (
    REFERENCES_FILE,
    load_references,
    merge_references,
    reference_image_root,
    resolve_image_root,
    save_references,
    validate_references,
)
from ..storage.images import load_image
from ..storage.masks import encode_rle
from ..storage.names import safe_join

log = logging.getLogger(__name__)


def load_reference_sets(
    references: str | os.PathLike | Mapping | Sequence[str | os.PathLike | Mapping],
    image_root: str | os.PathLike | None = None,
) -> tuple[dict, list[str]]:
    """One references set from one or several references files (or dicts), plus notices.

    Classes are merged by name; an id clash renumbers the later class, with a notice (see
    :func:`ntt_batch.references.files.merge_references`). ``image_root`` overrides the image
    roots the files remember. Every reference must end up with an image root: the message of
    the error otherwise says how to give one.
    """
    items = [references] if isinstance(references, (str, os.PathLike, Mapping)) else list(references)
    if not items:
        raise ValueError("no references given")
    parts = []
    for k, item in enumerate(items):
        if isinstance(item, Mapping):
            where = f"references #{k + 1}"
            refs = validate_references(dict(item), where=where)
            if refs.get("image_root") is not None:
                refs["image_root"] = resolve_image_root(refs["image_root"], os.getcwd())
        else:
            where = str(item)
            refs = load_references(item)
        parts.append((refs, where))
    merged, notices = merge_references(parts)
    if image_root is not None:
        root = os.fspath(image_root)
        merged["image_root"] = root if "://" in root else os.path.abspath(root)
        merged["references"] = [{k: v for k, v in r.items() if k != "image_root"} for r in merged["references"]]
    lacking = (
        sorted(
            {
                where
                for refs, where in parts
                for r in refs["references"]
                if not (r.get("image_root") or refs.get("image_root"))
            }
        )
        if image_root is None
        else []
    )
    if lacking:
        raise ValueError(
            f"{', '.join(lacking)} does not say where its images are: pass --image-root (the folder the "
            "file names are relative to), or recreate the file with --image-root so it remembers it"
        )
    return merged, notices


def _refuse_existing_bank(out: str) -> None:
    """ValueError when the folder ``out`` already holds a memory bank (its metadata file)."""
    meta_path = Path(out) / META_FILE
    if not meta_path.is_file():
        return
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        what = f" ({len(meta.get('categories') or [])} classes, encoder {(meta.get('encoder') or {}).get('name')})"
    except (OSError, ValueError, AttributeError):
        what = ""
    raise ValueError(
        f"{out} already holds a memory bank{what}: pass --overwrite (Python: overwrite=True) to replace it, "
        "or choose another --out"
    )


def build_bank_folder(
    references_path: str | os.PathLike | Mapping | Sequence[str | os.PathLike | Mapping],
    image_root: str | os.PathLike | None,
    out: str,
    *,
    encoder_name: str,
    checkpoint_dir: str | None = None,
    download: bool = True,
    device: str = "auto",
    sam2_name: str | None = None,
    config: MemoryConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
    notice: Callable[[str], None] | None = None,
    overwrite: bool = False,
) -> MemoryBank:
    """`ntt-batch memory build`: references + images → memory bank directory ``out``.

    ``references_path``: one references file (or dict), or several (merged by class name; see
    :func:`load_reference_sets`). ``image_root``: the folder the file names are relative to;
    None = the root each references file remembers.

    Box-only references get their masks from SAM2 box prompts (``sam2_name``), exactly as the
    builder makes them (``method.memory_bank.sam2_box_masks``); those masks are recorded in the
    bank's metadata (``references.box_masks``, compressed RLE) so ``references show --memory``
    draws what the bank was built from. The (merged) references are saved beside the bank as
    ``references.json``.

    A bank already in ``out`` is refused (ValueError naming the folder) unless ``overwrite``: a
    build with other references or another encoder would otherwise replace it silently.
    """
    if not overwrite:
        _refuse_existing_bank(out)
    refs, notices = load_reference_sets(references_path, image_root)
    for n in notices:
        log.info("references: %s", n)
        if notice:
            notice(n)
    dev = resolve_device(device)
    encoder, ckpt = load_encoder(encoder_name, checkpoint_dir=checkpoint_dir, download=download)
    encoder = encoder.to(dev)

    def load_ref_image(ref: dict):
        return load_image(safe_join(reference_image_root(refs, ref), ref["file_name"]))

    box_masks: list[dict] = []
    box_only = [k for k, r in enumerate(refs["references"]) if r.get("segmentation") is None]
    if box_only:
        if not sam2_name:
            raise ValueError(
                f"{len(box_only)} reference(s) are box-only (no mask); pass --sam2 NAME to make their "
                "masks from the boxes (e.g. --sam2 sam2.1_hiera_tiny)"
            )
        box_prompter, _ = load_sam2(sam2_name, checkpoint_dir=checkpoint_dir, download=download, add_no_mem_embed=True)
        box_prompter = box_prompter.to(dev)
        refs = dict(refs, references=[dict(r) for r in refs["references"]])
        for k in box_only:
            ref = refs["references"][k]
            mask = sam2_box_masks(box_prompter, load_ref_image(ref), [ref["bbox"]])[0]
            if not mask.any():
                raise ValueError(
                    f"SAM2 ({sam2_name}) made an empty mask for the box {ref['bbox']} of reference "
                    f"{ref.get('annotation_id')} in {ref['file_name']!r}: check the box"
                )
            ref["segmentation"] = encode_rle(mask)
            ref["mask_source"] = f"sam2-box:{sam2_name}"
            box_masks.append(
                {k2: ref.get(k2) for k2 in ("category_id", "image_id", "annotation_id", "file_name", "bbox")}
                | {"segmentation": ref["segmentation"], "sam2": sam2_name}
            )
        del box_prompter

    bank = build_memory_bank(
        refs,
        load_ref_image,
        encoder,
        encoder_info={"name": encoder_name, "checkpoint_sha256": ckpt.sha256, "official": ckpt.official},
        config=config,
        progress=progress,
    )
    if box_masks:
        bank.references["box_masks"] = box_masks
    if notices:
        bank.references["merge_notices"] = notices
    bank.save(out)
    save_references(refs, Path(out) / REFERENCES_FILE)
    return bank
