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
from ..method.memory_bank import META_FILE, MemoryBank, build_memory_bank, module_device, sam2_box_masks
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


# 81 lines, 36 of them the signature and docstring: the steps are the helpers below.


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
    negatives: str | os.PathLike | Mapping | Sequence[str | os.PathLike | Mapping] | None = None,
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

    ``negatives``: references files (same formats) of *negative* references (docs/negative_references.md),
    encoded like the references into the bank's negative memory and saved beside it as
    ``negatives.json``; their classes must be bank classes (matched by name). ``image_root`` serves
    the negatives files that do not remember one.
    """
    if not overwrite:
        _refuse_existing_bank(out)
    refs, notices = load_reference_sets(references_path, image_root)
    for n in notices:
        log.info("references: %s", n)
        if notice:
            notice(n)
    if negatives:  # checked before any encoding: their classes, image roots, and SAM2 for box-only ones
        _file_negatives(negatives, image_root, refs["categories"], sam2_name)
    dev = resolve_device(device)
    encoder, ckpt = load_encoder(encoder_name, checkpoint_dir=checkpoint_dir, download=download)
    encoder = encoder.to(dev)

    def load_ref_image(ref: dict):
        return load_image(safe_join(reference_image_root(refs, ref), ref["file_name"]))

    refs, box_masks = _box_masks(refs, load_ref_image, sam2_name, checkpoint_dir, download, dev)
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
    neg_refs = None
    if negatives:
        bank, neg_refs = add_file_negatives(
            bank,
            negatives,
            image_root,
            encoder,
            sam2_name=sam2_name,
            checkpoint_dir=checkpoint_dir,
            download=download,
            notice=notice,
        )
    bank.save(out)
    save_references(refs, Path(out) / REFERENCES_FILE)
    write_negatives_file(out, neg_refs)
    return bank


def _box_masks(refs: dict, load_ref_image, sam2_name, checkpoint_dir, download, device) -> tuple[dict, list[dict]]:
    """Box-only references get their masks from SAM2 box prompts (``sam2_name``): the references
    with those masks filled in, and the records of the masks made (kept in the bank's metadata)."""
    box_only = [k for k, r in enumerate(refs["references"]) if r.get("segmentation") is None]
    if not box_only:
        return refs, []
    if not sam2_name:
        raise ValueError(
            f"{len(box_only)} reference(s) are box-only (no mask); pass --sam2 NAME to make their "
            "masks from the boxes (e.g. --sam2 sam2.1_hiera_tiny)"
        )
    box_prompter, _ = load_sam2(sam2_name, checkpoint_dir=checkpoint_dir, download=download, add_no_mem_embed=True)
    box_prompter = box_prompter.to(device)
    refs = dict(refs, references=[dict(r) for r in refs["references"]])
    box_masks = []
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
    return refs, box_masks


NEGATIVES_FILE = "negatives.json"  # a bank's negative references (references format), beside the bank


def write_negatives_file(bank_dir: str | os.PathLike, negatives: Mapping | None) -> None:
    """Save a bank's negative references as ``BANK/negatives.json``, or remove a stale one (``None``)."""
    path = Path(bank_dir) / NEGATIVES_FILE
    if negatives is None or not negatives.get("references"):
        path.unlink(missing_ok=True)
        return
    negatives = dict(negatives)
    roots = {r.get("image_root") for r in negatives["references"]}
    if len(roots) == 1 and None not in roots:  # one root: the file's own (saved portable, see save_references)
        negatives["image_root"] = roots.pop()
        negatives["references"] = [{k: v for k, v in r.items() if k != "image_root"} for r in negatives["references"]]
    save_references(negatives, path)


def load_negative_sets(
    negatives: str | os.PathLike | Mapping | Sequence[str | os.PathLike | Mapping], image_root: str | os.PathLike | None
) -> tuple[dict, list[str]]:
    """Negative references from one or several references files (or dicts), merged like references
    (:func:`load_reference_sets`); ``image_root`` serves only the files that do not remember one."""
    items = [negatives] if isinstance(negatives, (str, os.PathLike, Mapping)) else list(negatives)
    if image_root is not None:
        root = os.fspath(image_root)
        root = root if "://" in root else os.path.abspath(root)
        filled = []
        for item in items:
            refs = dict(item) if isinstance(item, Mapping) else load_references(item)
            if refs.get("image_root") is None and any(r.get("image_root") is None for r in refs["references"]):
                refs["image_root"] = root
            filled.append(refs if isinstance(item, Mapping) or refs.get("image_root") == root else item)
        items = filled
    return load_reference_sets(items)


def _file_negatives(negatives, image_root, categories: Sequence[Mapping], sam2_name: str | None) -> tuple[dict, list]:
    """Negatives files → (one set in the bank's classes, each entry's ``negative_source`` set, merge notices).
    Errors name a class the bank lacks, a file without an image root, box-only negatives without SAM2."""
    from ..method.negatives import to_bank_categories

    negs, notices = load_negative_sets(negatives, image_root)
    negs = to_bank_categories(negs, categories)
    # Given in a file, so "file" (kept when negatives are mined again), whatever made them (a mined bank's
    # negatives.json says "mined").
    negs["references"] = [{**r, "negative_source": "file"} for r in negs["references"]]
    n_box = sum(1 for r in negs["references"] if r.get("segmentation") is None)
    if n_box and not sam2_name:
        raise ValueError(
            f"{n_box} negative reference(s) are box-only (no mask); pass --sam2 NAME to make their masks "
            "from the boxes (e.g. --sam2 sam2.1_hiera_tiny)"
        )
    return negs, notices


def add_file_negatives(
    bank: MemoryBank,
    negatives: str | os.PathLike | Mapping | Sequence[str | os.PathLike | Mapping],
    image_root: str | os.PathLike | None,
    encoder,  # torch.nn.Module: the bank's encoder
    *,
    sam2_name: str | None = None,
    checkpoint_dir: str | None = None,
    download: bool = True,
    notice: Callable[[str], None] | None = None,
) -> tuple[MemoryBank, dict]:
    """``bank`` with the negative references of ``negatives`` (files in references format) as its
    negatives, encoded by ``encoder`` (the bank's) like its references; also the negatives in the
    bank's classes (for ``negatives.json``). Box-only negatives get SAM2 masks (``sam2_name``)."""
    from ..method.negatives import encode_negatives

    negs, notices = _file_negatives(negatives, image_root, bank.categories, sam2_name)
    for n in notices:
        log.info("negatives: %s", n)
        if notice:
            notice(f"negatives: {n}")
    box_prompter = None
    if any(r.get("segmentation") is None for r in negs["references"]):
        box_prompter, _ = load_sam2(sam2_name, checkpoint_dir=checkpoint_dir, download=download, add_no_mem_embed=True)
        box_prompter = box_prompter.to(module_device(encoder))

    def load_neg_image(ref: dict):
        return load_image(safe_join(reference_image_root(negs, ref), ref["file_name"]))

    protos, labels, records, notes = encode_negatives(negs, load_neg_image, encoder, bank, box_prompter=box_prompter)
    items = [negatives] if isinstance(negatives, (str, os.PathLike, Mapping)) else list(negatives)
    files = [str(x) if not isinstance(x, Mapping) else "(given as a dict)" for x in items]
    bank = bank.with_negatives(protos, labels, records, [{"kind": "file", "files": files, "count": len(records)}])
    bank.notes = [*bank.notes, *(f"negative {n}" for n in notes)]
    return bank, negs
