"""Negative references: mining them from the reference images, and encoding them (docs/negative_references.md).

The authors' negative-reference mode (no-time-to-train @ 214fc79), in three steps:

1. segment annotated images with the positive bank (their ``test_support`` mode: the ordinary
   inference, no negatives);
2. keep the detections that match no annotation of their class — box IoU < 0.1 with every
   annotated box of that class in the image, or no annotation of that class there at all
   (``data_utils.get_false_positives``, called with ``iou_thr=0.1, use_mask_iou=False``) — and
   per class the highest-scoring ones (``COCORefTestDataset.sample_negative``, ``length_negative``
   of them per class);
3. encode each like a positive reference (context crop, encoder, mask-weighted mean of the patch
   features: ``fill_memory_neg`` + ``postprocess_memory_negative``) into the negative memory.

:func:`mine_negatives_in_images` does 1-2 with a :class:`~ntt_batch.method.segmenter.MethodSegmenter`;
:func:`encode_negatives` does 3 for any references-format set of negatives (mined, or a user's
file), by the bank builder itself; :class:`~ntt_batch.method.matching.NegativeAwareMatcher` uses
them at inference. Where we differ from the authors' code (a score threshold that is read, fewer
than ``length_negative`` negatives allowed, ties broken by order) is said there and in the doc.

Torch + numpy only (the method layer): images come in as arrays from a loader the caller gives.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..references.files import REFERENCES_FORMAT, REFERENCES_VERSION
from .config import MemoryConfig, config_from_dict
from .memory_bank import build_memory_bank

# The authors' constants (docs/negative_references.md).
FALSE_POSITIVE_IOU = 0.1  # sample_negative → get_false_positives(..., iou_thr=0.1, use_mask_iou=False)
LENGTH_NEGATIVE = 10  # memory_bank_cfg.length_negative in every negative_*.yaml
NEGATIVE_SCORE_THRESHOLD = 0.2  # sam2_infer_cfgs.negative_score_thr in every negative_*.yaml (never read there)

__all__ = [
    "FALSE_POSITIVE_IOU",
    "LENGTH_NEGATIVE",
    "NEGATIVE_SCORE_THRESHOLD",
    "MiningImage",
    "box_iou_matrix_xywh",
    "encode_negatives",
    "false_positive_flags",
    "mine_negatives_in_images",
    "negatives_as_references",
    "select_negatives",
    "to_bank_categories",
]


def box_iou_matrix_xywh(boxes1: Sequence[Sequence[float]], boxes2: Sequence[Sequence[float]]) -> np.ndarray:
    """Box IoU of COCO ``[x, y, w, h]`` boxes, [n] × [m] → [n, m] float64 (the authors' ``compute_box_iou_mat``:
    continuous coordinates, ``inter / (area1 + area2 − inter + 1e-10)``)."""
    a = np.asarray(boxes1, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes2, dtype=np.float64).reshape(-1, 4)
    ax1, ay1, ax2, ay2 = a[:, 0:1], a[:, 1:2], a[:, 0:1] + a[:, 2:3], a[:, 1:2] + a[:, 3:4]  # [n, 1]
    bx1, by1, bx2, by2 = b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]  # [m]
    iw = (np.minimum(ax2, bx2) - np.maximum(ax1, bx1)).clip(min=0.0)
    ih = (np.minimum(ay2, by2) - np.maximum(ay1, by1)).clip(min=0.0)
    inter = iw * ih
    area1 = (ax2 - ax1) * (ay2 - ay1)
    area2 = (bx2 - bx1) * (by2 - by1)
    return inter / (area1 + area2 - inter + 1e-10)


def false_positive_flags(
    detections: Sequence[Mapping], annotations: Sequence[Mapping], iou_threshold: float = FALSE_POSITIVE_IOU
) -> list[bool]:
    """Which detections of one image match no annotation of their class (the authors' ``get_false_positives``).

    A detection of class c is a false positive when the image has no annotation of class c, or when its
    box IoU with every annotated box of class c is below ``iou_threshold`` (strictly). Annotations of
    other classes do not matter (a detection of class c on an annotated object of class d is a false
    positive of c: the confusions are what negatives are for).

    Args:
        detections: ``{"category_id", "bbox": [x, y, w, h]}`` each.
        annotations: the image's known instances, ``{"category_id", "bbox"}`` each.
    """
    by_class: dict[int, list] = {}
    for a in annotations:
        by_class.setdefault(int(a["category_id"]), []).append(a["bbox"])
    flags = []
    for d in detections:
        gt = by_class.get(int(d["category_id"]))
        if not gt:
            flags.append(True)
            continue
        flags.append(bool(box_iou_matrix_xywh([d["bbox"]], gt).max() < iou_threshold))
    return flags


def select_negatives(
    candidates: Sequence[Mapping], max_per_class: int | None = LENGTH_NEGATIVE, score_threshold: float = 0.0
) -> list[dict]:
    """Per class, the highest-scoring false positives with ``score >= score_threshold``, at most ``max_per_class``.

    The authors sort each class's false positives by descending score (``np.argsort(-score)`` after a
    ``random.shuffle``, so ties fall at random) and take ``length_negative``, raising if a class has
    fewer. Here ties keep the candidates' order (a stable sort), a class may have fewer (or none),
    and the result is grouped by class in ascending category id.
    """
    by_class: dict[int, list[dict]] = {}
    for c in candidates:
        if float(c["score"]) >= score_threshold:
            by_class.setdefault(int(c["category_id"]), []).append(dict(c))
    out: list[dict] = []
    for cid in sorted(by_class):
        ranked = sorted(by_class[cid], key=lambda c: -float(c["score"]))  # stable: ties keep their order
        out.extend(ranked if max_per_class is None else ranked[:max_per_class])
    return out


@dataclass
class MiningImage:
    """One annotated image to mine negatives from.

    Attributes:
        entry: what every negative found in it records: ``file_name``, ``width``, ``height`` (pixels),
            and optionally ``image_id``, ``image_root``.
        load: () → RGB uint8 [H, W, 3].
        annotations: the image's known instances, ``{"category_id", "bbox": [x, y, w, h]}`` each
            (category ids of the bank).
    """

    entry: dict
    load: Callable[[], np.ndarray]
    annotations: list[dict] = field(default_factory=list)


@torch.no_grad()
def mine_negatives_in_images(
    segmenter,
    images: Iterable[MiningImage],
    *,
    score_threshold: float = NEGATIVE_SCORE_THRESHOLD,
    iou_threshold: float = FALSE_POSITIVE_IOU,
    max_per_class: int | None = LENGTH_NEGATIVE,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[dict], dict]:
    """Segment each image with ``segmenter`` and keep its false positives as negative references.

    ``segmenter`` should score with the positive bank only (``use_negatives`` off: the authors'
    ``test_support`` mode asserts that the negative memory is empty).

    Returns:
        (negatives, stats): negatives as references-format entries (``category_id``, ``file_name``,
        ``width``, ``height``, ``bbox``, ``segmentation`` (COCO RLE of the detection's mask),
        ``score``, ``negative_source: "mined"``, and the image's ``image_id``/``image_root`` when
        known), grouped per class by descending score; stats ``{"images", "detections",
        "false_positives", "above_threshold"}``.
    """
    images = list(images)
    candidates: list[dict] = []
    n_det = 0
    for k, im in enumerate(images):
        (instances,) = segmenter.segment_images([im.load()])
        dets = [{"category_id": i.category_id, "bbox": [float(v) for v in i.bbox]} for i in instances]
        n_det += len(dets)
        for inst, fp in zip(instances, false_positive_flags(dets, im.annotations, iou_threshold)):
            if not fp:
                continue
            candidates.append(
                {
                    **{key: im.entry[key] for key in ("image_id", "image_root") if im.entry.get(key) is not None},
                    "category_id": int(inst.category_id),
                    "file_name": im.entry["file_name"],
                    "width": int(im.entry["width"]),
                    "height": int(im.entry["height"]),
                    "bbox": [float(v) for v in inst.bbox],
                    "segmentation": inst.coco_rle(),
                    "score": float(inst.score),
                    "negative_source": "mined",
                }
            )
        if progress:
            progress(k + 1, len(images))
    chosen = select_negatives(candidates, max_per_class, score_threshold)
    stats = {
        "images": len(images),
        "detections": n_det,
        "false_positives": len(candidates),
        "above_threshold": sum(1 for c in candidates if c["score"] >= score_threshold),
    }
    return chosen, stats


def negatives_as_references(negatives: Sequence[Mapping], categories: Sequence[Mapping], source: dict) -> dict:
    """Negative entries → a references-format dict (the classes that have some), as ``references.json`` files are."""
    used = {int(n["category_id"]) for n in negatives}
    return {
        "format": REFERENCES_FORMAT,
        "version": REFERENCES_VERSION,
        "categories": [{"id": int(c["id"]), "name": str(c["name"])} for c in categories if int(c["id"]) in used],
        "references": [dict(n) for n in negatives],
        "source": source,
    }


def to_bank_categories(negatives: Mapping, categories: Sequence[Mapping]) -> dict:
    """A references-format set of negatives with its classes those of a bank (``categories``, the bank's
    ``[{"id", "name"}]``): matched **by name**, ids replaced by the bank's. A class the bank lacks is an
    error naming it."""
    bank_id = {str(c["name"]): int(c["id"]) for c in categories}
    name_by_id = {int(c["id"]): str(c["name"]) for c in negatives["categories"]}
    unknown = sorted({name_by_id[int(r["category_id"])] for r in negatives["references"]} - set(bank_id))
    if unknown:
        raise ValueError(
            f"negative references of class(es) {', '.join(map(repr, unknown))} that the memory bank does not have "
            f"(its classes: {', '.join(bank_id)}); a negative lowers one bank class's score, so it must name one "
            "of them"
        )
    refs = [{**r, "category_id": bank_id[name_by_id[int(r["category_id"])]]} for r in negatives["references"]]
    return negatives_as_references(refs, categories, negatives.get("source") or {}) | {
        k: v for k, v in negatives.items() if k not in ("categories", "references", "source")
    }


@torch.no_grad()
def encode_negatives(
    negatives: Mapping,
    load_image: Callable[[dict], np.ndarray],
    encoder: torch.nn.Module,
    bank,
    *,
    box_prompter=None,
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Tensor, Tensor, list[dict], list[str]]:
    """Encode negative references exactly as the bank's positives were encoded (the authors fill the
    negative memory with the positives' crop dataset and ``forward_fill_memory``; their
    ``postprocess_memory_negative`` takes the same mask-weighted mean per instance).

    Args:
        negatives: a references-format dict (validated); its classes are matched to the bank's by
            name (:func:`to_bank_categories`).
        load_image: entry → RGB uint8 [H, W, 3].
        encoder: the bank's encoder (same weights: the caller checks).
        bank: the ``MemoryBank``; its recorded ``config`` (crop size, context ratio, fallback) is used.
        box_prompter: SAM 2 for box-only negatives (as ``build_memory_bank``).
    Returns:
        (prototypes [Rn, D] float32 un-normalised, labels [Rn] int64 bank class index, records (one per
        row, in the entries' order), notes from the builder).
    """
    negatives = to_bank_categories(negatives, bank.categories)
    config = config_from_dict(MemoryConfig, bank.config, "memory bank config") if bank.config else None
    built = build_memory_bank(
        negatives,
        load_image,
        encoder,
        encoder_info=bank.encoder,
        config=config,
        box_prompter=box_prompter,
        batch_size=batch_size,
        progress=progress,
    )
    # build_memory_bank's class index is the rank among the negatives' own (sorted) ids → the bank's.
    index_of = {int(c["id"]): i for i, c in enumerate(bank.categories)}
    sub_ids = sorted(int(c["id"]) for c in negatives["categories"])
    labels = torch.tensor([index_of[c] for c in sub_ids], dtype=torch.int64)[built.instance_labels]
    names = dict(zip(bank.category_ids, bank.category_names))
    records = []
    for r in negatives["references"]:
        rec = {
            "category_id": int(r["category_id"]),
            "category_name": names[int(r["category_id"])],
            **{k: r.get(k) for k in ("image_id", "annotation_id", "file_name", "bbox", "score")},
            "source": r.get("negative_source", "file"),
        }
        records.append({k: v for k, v in rec.items() if v is not None})
    return built.instance_prototypes, labels, records, list(built.notes)
