"""`ntt-batch memory negatives BANK`: mine negative references from a bank's own reference images.

The authors' negative-reference mode (docs/negative_references.md): the reference images are
segmented with the positive bank; detections that are not annotated instances of their class
(box IoU < 0.1 with each of them) and score at least ``score_threshold`` become negative
references of the class they were detected as, at most ``max_per_class`` per class (the highest
scoring); their features go into the bank's negative memory. The bank is written back in place
(each file atomically) with a new content hash, and the negatives, with their masks, are saved
beside it as ``negatives.json`` (references format: ``memory build --negatives`` takes it).

What counts as "annotated": the bank's references (``BANK/references.json``) and, when available,
every annotation of those images in a COCO file — ``annotations``, or by default the file the
references were sampled from (``references sample`` records it), as the authors compare with every
ground-truth instance of their support images. Without such a file, other unannotated objects of
a class in a reference image are mined as negatives of that class.

Negatives that came from a file (``memory build --negatives``) are kept; mined ones are replaced.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from ..method.config import SegmenterConfig
from ..method.negatives import (
    FALSE_POSITIVE_IOU,
    LENGTH_NEGATIVE,
    NEGATIVE_SCORE_THRESHOLD,
    MiningImage,
    encode_negatives,
    mine_negatives_in_images,
    negatives_as_references,
)
from ..references.coco import load_coco
from ..references.files import REFERENCES_FILE, load_references, reference_image_root
from ..storage.images import load_image
from ..storage.masks import segmentation_bbox_xywh
from ..storage.names import safe_join
from .build import NEGATIVES_FILE, write_negatives_file
from .load import segmenter_from_bank

log = logging.getLogger(__name__)

__all__ = ["mine_negatives", "source_annotation_files"]


def source_annotation_files(refs: Mapping, base_dir: str | os.PathLike | None = None) -> tuple[list[str], list[str]]:
    """The COCO files a references set was sampled from (``source.annotations`` of ``references sample``,
    through merged sets), as (existing files, recorded but missing). A relative path is tried as it is,
    then relative to ``base_dir``."""
    found: list[str] = []
    missing: list[str] = []

    def walk(src):
        if not isinstance(src, Mapping):
            return
        if src.get("kind") == "coco-sample" and src.get("annotations"):
            p = str(src["annotations"])
            candidates = [p] + ([os.path.join(os.fspath(base_dir), p)] if base_dir and not os.path.isabs(p) else [])
            hit = next((c for c in candidates if os.path.isfile(c)), None)
            (found if hit else missing).append(os.path.abspath(hit) if hit else p)
        for part in src.get("parts") or []:
            walk(part.get("source") if isinstance(part, Mapping) else None)

    walk(refs.get("source"))
    return sorted(set(found)), sorted(set(missing))


def _annotations_by_file_name(paths: list[str], bank) -> dict[str, list[dict]]:
    """file_name → that image's annotations ({"category_id" (the bank's, by class name), "bbox"}) in ``paths``;
    classes the bank lacks are left out (the authors keep only ``cat_ids``), crowd annotations kept (as theirs)."""
    bank_id = dict(zip(bank.category_names, bank.category_ids))
    out: dict[str, list[dict]] = {}
    for path in paths:
        coco = load_coco(path)
        names = {int(c["id"]): str(c["name"]) for c in coco.get("categories", [])}
        images = {int(im["id"]): im for im in coco.get("images", [])}
        for ann in coco.get("annotations", []):
            cid = bank_id.get(names.get(int(ann["category_id"]), ""))
            im = images.get(int(ann["image_id"]))
            if cid is None or im is None:
                continue
            bbox = ann.get("bbox")
            if bbox is None and ann.get("segmentation") is not None:
                bbox = segmentation_bbox_xywh(ann["segmentation"], int(im["height"]), int(im["width"]))
            if bbox is not None:
                out.setdefault(str(im["file_name"]), []).append({"category_id": cid, "bbox": [float(v) for v in bbox]})
    return out


def _reference_box(ref: Mapping) -> list[float]:
    if ref.get("bbox") is not None:
        return [float(v) for v in ref["bbox"]]
    return segmentation_bbox_xywh(ref["segmentation"], int(ref["height"]), int(ref["width"]))


def _kept_file_negatives(bank, bank_dir: Path) -> tuple[list[int], list[dict], list[dict]]:
    """The bank's negatives that came from a file (not mined): (rows, their negatives.json entries, sources)."""
    if not bank.has_negatives:
        return [], [], []
    records = bank.negatives.get("instances") or []
    rows = [i for i, r in enumerate(records) if r.get("source") != "mined"]
    if not rows:
        return [], [], []
    path = bank_dir / NEGATIVES_FILE
    entries = load_references(path)["references"] if path.is_file() else []
    if len(entries) != len(records):
        raise ValueError(
            f"{path} does not match the bank's {len(records)} negative references (missing or edited): rebuild the "
            "bank with `ntt-batch memory build --negatives FILE`, then mine again"
        )
    if entries and any(e.get("image_root") is None for e in entries):
        root = load_references(path).get("image_root")
        entries = [{**e, "image_root": e.get("image_root") or root} for e in entries]
    sources = [s for s in bank.negatives.get("sources") or [] if s.get("kind") != "mined"]
    return rows, [entries[i] for i in rows], sources


def _check_mining_inputs(bank_dir: Path, config: SegmenterConfig) -> Path:
    """The bank's references file (mined from); errors where the config or the bank cannot mine."""
    if config.use_negatives:
        raise ValueError(
            "mining segments the reference images with the positive bank only (the authors' test_support mode): "
            "leave --use-negatives off here"
        )
    refs_path = bank_dir / REFERENCES_FILE
    if not refs_path.is_file():
        raise FileNotFoundError(
            f"{bank_dir} has no {REFERENCES_FILE}: negatives are mined from the bank's reference images, which "
            "`ntt-batch memory build` records there. Rebuild the bank with `memory build --references ...`"
        )
    return refs_path


def _annotation_files(
    refs: Mapping,
    refs_path: Path,
    annotations: str | os.PathLike | None,
    use_source_annotations: bool,
    say: Callable[[str], None],
) -> list[str]:
    """The COCO files whose annotations of the reference images count as annotated (``say`` tells which)."""
    if annotations is not None:
        ann_files = [os.fspath(annotations)]
    elif use_source_annotations:
        ann_files, missing = source_annotation_files(refs, refs_path.parent)
        for m in missing:
            say(f"the references were sampled from {m}, which is not there: only the references count as annotated")
    else:
        ann_files = []
    if ann_files:
        say(f"annotated instances: the references and every annotation of their images in {', '.join(ann_files)}")
    else:
        say(
            "annotated instances: the references only (other objects of a class in a reference image will be mined "
            "as its negatives; --annotations FILE names a COCO file with all of them)"
        )
    return ann_files


def _reference_images(refs: Mapping, by_file: dict[str, list[dict]]) -> list[MiningImage]:
    """One :class:`MiningImage` per reference image (in first-seen order), annotated with its references'
    boxes and the annotations ``by_file`` has for its file name."""
    images: dict[tuple[str | None, str], MiningImage] = {}
    for ref in refs["references"]:
        root = reference_image_root(refs, ref)
        key = (root, str(ref["file_name"]))
        if key not in images:
            entry = {k: ref.get(k) for k in ("file_name", "width", "height", "image_id")} | {"image_root": root}
            images[key] = MiningImage(
                entry=entry,
                load=lambda r=root, f=ref["file_name"]: load_image(safe_join(r, f)),
                annotations=list(by_file.get(str(ref["file_name"]), [])),
            )
        images[key].annotations.append({"category_id": int(ref["category_id"]), "bbox": _reference_box(ref)})
    return list(images.values())


def _encode_mined(mined: list[dict], segmenter, bank, protos: list, labels: list) -> tuple[list[dict], list[str]]:
    """Encode the mined negatives with the bank's encoder, appending their prototypes / labels to ``protos`` /
    ``labels``; returns (their records, the encoder's notes)."""
    if not mined:
        return [], []
    neg_refs = negatives_as_references(mined, bank.categories, {"kind": "mined"})

    def load_neg_image(ref: dict):
        return load_image(safe_join(ref.get("image_root"), ref["file_name"]))

    p, lab, mined_records, notes = encode_negatives(neg_refs, load_neg_image, segmenter.encoder, bank)
    protos.append(p)
    labels.append(lab)
    return mined_records, notes


def _save_mined_bank(
    bank_dir: Path,
    bank,
    protos: list,
    labels: list,
    records: list[dict],
    kept_sources: list[dict],
    all_entries: list[dict],
    notes: list[str],
    source: dict,
):
    """Save the bank with the kept and mined negatives (``source`` describes the mining) and rewrite its
    negatives file with ``all_entries``; returns the new bank."""
    new_bank = bank.with_negatives(
        torch.cat(protos) if protos else None,
        torch.cat(labels) if labels else None,
        records,
        kept_sources + [source],
    )
    if notes:
        new_bank = dataclasses.replace(new_bank, notes=[*bank.notes, *(f"negative {n}" for n in notes)])
    new_bank.save(bank_dir)
    write_negatives_file(
        bank_dir,
        negatives_as_references(all_entries, bank.categories, {"kind": "negatives of a memory bank"})
        if all_entries
        else None,
    )
    return new_bank


# 101 lines: a third is the docstring; the body is the named steps above
def mine_negatives(
    bank_dir: str | os.PathLike,
    *,
    sam2_name: str,
    config: SegmenterConfig | None = None,
    checkpoint_dir: str | None = None,
    download: bool = True,
    score_threshold: float = NEGATIVE_SCORE_THRESHOLD,
    iou_threshold: float = FALSE_POSITIVE_IOU,
    max_per_class: int | None = LENGTH_NEGATIVE,
    annotations: str | os.PathLike | None = None,
    use_source_annotations: bool = True,
    progress: Callable[[int, int], None] | None = None,
    notice: Callable[[str], None] | None = None,
) -> dict:
    """Mine negative references from the bank's reference images and write the bank back with them.

    Args:
        bank_dir: a bank folder built by ``memory build`` (it holds ``references.json``).
        sam2_name: the SAM 2 model that segments the reference images (use the one the jobs will use).
        config: segmenter settings for that segmentation (``use_negatives`` must be off: mining scores
            with the positive bank, as the authors' ``test_support`` mode).
        score_threshold: keep detections scoring at least this (the authors' configs: 0.2).
        iou_threshold: a detection whose box IoU with an annotated instance of its class reaches this
            is that instance, not a negative (the authors: 0.1).
        max_per_class: the highest-scoring negatives kept per class (the authors' ``length_negative``: 10);
            None = all.
        annotations: a COCO file whose annotations of the reference images count as annotated too.
        use_source_annotations: without ``annotations``, use the COCO file(s) the references were
            sampled from when they are still there.
    Returns:
        ``{"bank": MemoryBank, "previous_hash", "mined": [records], "per_class": {name: n}, "stats",
        "annotations": [files used], "kept_from_files": n}``.
    """
    bank_dir = Path(bank_dir)
    config = config or SegmenterConfig()
    refs_path = _check_mining_inputs(bank_dir, config)
    refs = load_references(refs_path)

    def say(text: str) -> None:
        if notice:
            notice(text)
        else:
            log.info("negatives: %s", text)

    ann_files = _annotation_files(refs, refs_path, annotations, use_source_annotations, say)
    segmenter, provenance = segmenter_from_bank(
        str(bank_dir), sam2_name=sam2_name, config=config, checkpoint_dir=checkpoint_dir, download=download
    )
    bank = segmenter.bank
    by_file = _annotations_by_file_name(ann_files, bank) if ann_files else {}
    mined, stats = mine_negatives_in_images(
        segmenter,
        _reference_images(refs, by_file),
        score_threshold=score_threshold,
        iou_threshold=iou_threshold,
        max_per_class=max_per_class,
        progress=progress,
    )

    rows, kept_entries, kept_sources = _kept_file_negatives(bank, bank_dir)
    protos = [bank.negative_prototypes[rows]] if rows else []
    labels = [bank.negative_labels[rows]] if rows else []
    records = [bank.negatives["instances"][i] for i in rows]
    mined_records, notes = _encode_mined(mined, segmenter, bank, protos, labels)
    records += mined_records
    new_bank = _save_mined_bank(
        bank_dir,
        bank,
        protos,
        labels,
        records,
        kept_sources,
        kept_entries + mined,
        notes,
        {
            "kind": "mined",
            "from": "the bank's reference images",
            "images": stats["images"],
            "sam2": provenance["models"]["sam2"],
            "segmenter": provenance["config"],
            "positive_bank_hash": bank.with_negatives(None, None, [], []).content_hash,
            "score_threshold": score_threshold,
            "iou_threshold": iou_threshold,
            "max_per_class": max_per_class,
            "annotations": ann_files,
            "count": len(mined_records),
        },
    )
    per_class: dict[str, int] = {}
    for r in mined_records:
        per_class[r["category_name"]] = per_class.get(r["category_name"], 0) + 1
    return {
        "bank": new_bank,
        "previous_hash": bank.content_hash,
        "mined": mined_records,
        "per_class": per_class,
        "stats": stats,
        "annotations": ann_files,
        "kept_from_files": len(rows),
    }
