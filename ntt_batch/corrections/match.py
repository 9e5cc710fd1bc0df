"""Mask IoU, the reviewer-outcome matching, and precision/recall per class.

Two matchings live here:

* :func:`classify` — what a review did to the predictions of one image whose gold labels are
  complete (a Label Studio annotation, a COCO file): accepted, relabelled, rejected, duplicate,
  on a crowd region, and which gold instances no prediction found (missed);
* :func:`count_matches` — COCO-style counting for precision/recall (the rule of
  :func:`ntt_batch.eval.threshold_fit.tune_thresholds`: per image and class, detections in
  decreasing score order (stable) each take the unmatched non-crowd gold instance they overlap
  most, IoU >= the threshold; an unmatched detection overlapping a crowd region (intersection
  over the detection's area >= the threshold) is ignored, any other is a false positive).

IoU is mask IoU (``pycocotools.mask.iou`` on compressed RLEs of one image size).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


def _coco_rle(rle: dict[str, Any]) -> dict[str, Any]:
    counts = rle["counts"]
    return {"size": [int(v) for v in rle["size"]], "counts": counts.encode() if isinstance(counts, str) else counts}


def mask_iou(dets: Sequence[dict], gts: Sequence[dict], crowd: Sequence[bool] | None = None) -> np.ndarray:
    """IoU matrix (len(dets), len(gts)) of compressed RLEs; for a crowd gt, intersection / det area."""
    if not dets or not gts:
        return np.zeros((len(dets), len(gts)))
    flags = [int(bool(c)) for c in (crowd if crowd is not None else [False] * len(gts))]
    out = mask_utils.iou([_coco_rle(d) for d in dets], [_coco_rle(g) for g in gts], flags)
    return np.asarray(out, dtype=np.float64).reshape(len(dets), len(gts))


@dataclass
class Outcome:
    """What a complete gold labelling says about one image's judged predictions (indices into the lists given)."""

    accepted: list[tuple[int, int]] = field(default_factory=list)  # (pred, gold) same class
    relabelled: list[tuple[int, int]] = field(default_factory=list)  # (pred, gold) other class
    rejected: list[int] = field(default_factory=list)  # preds matching nothing: false positives
    duplicates: list[int] = field(default_factory=list)  # preds over an already matched gold of their class
    crowd: list[int] = field(default_factory=list)  # preds on a crowd region of their class (neither)
    missed: list[int] = field(default_factory=list)  # gold instances no judged prediction matched


def classify(
    preds: Sequence[tuple[str, float, dict]],
    gold: Sequence[tuple[str, dict, bool]],
    iou_match: float,
) -> Outcome:
    """Compare one image's judged predictions with its complete gold labels.

    Args:
        preds: (class name, score, RLE) per prediction, in shard order.
        gold: (class name, RLE, iscrowd) per gold instance.
        iou_match: IoU a prediction needs to match a gold instance.

    Returns:
        an :class:`Outcome`. Order of the passes: (1) same class, COCO-style greedy in decreasing
        score order, each prediction taking the free gold instance it overlaps most; (2) the
        predictions left take a free gold instance of another class (IoU >= ``iou_match``: the
        object was found, its class is wrong → relabelled); (3) the rest: a duplicate when it
        overlaps a gold instance of its class (already taken) at IoU >= ``iou_match``, on a crowd
        region of its class (intersection over its area >= ``iou_match``), else rejected.
        Gold instances (non-crowd) left free are missed.
    """
    order = sorted(range(len(preds)), key=lambda k: -preds[k][1])
    normal = [g for g, item in enumerate(gold) if not item[2]]
    crowds = [g for g, item in enumerate(gold) if item[2]]
    iou = mask_iou([preds[k][2] for k in order], [gold[g][1] for g in normal])
    ioa = mask_iou([preds[k][2] for k in order], [gold[g][1] for g in crowds], [True] * len(crowds))
    taken = np.zeros(len(normal), dtype=bool)
    out = Outcome()
    left: list[int] = []
    for r, k in enumerate(order):
        best, best_iou = -1, iou_match
        for c, g in enumerate(normal):
            if not taken[c] and gold[g][0] == preds[k][0] and iou[r, c] >= best_iou:
                best, best_iou = c, iou[r, c]
        if best >= 0:
            taken[best] = True
            out.accepted.append((k, normal[best]))
        else:
            left.append(r)
    rest: list[int] = []
    for r in left:
        k = order[r]
        best, best_iou = -1, iou_match
        for c, g in enumerate(normal):
            if not taken[c] and gold[g][0] != preds[k][0] and iou[r, c] >= best_iou:
                best, best_iou = c, iou[r, c]
        if best >= 0:
            taken[best] = True
            out.relabelled.append((k, normal[best]))
        else:
            rest.append(r)
    for r in rest:
        k = order[r]
        name = preds[k][0]
        if any(gold[g][0] == name and iou[r, c] >= iou_match for c, g in enumerate(normal)):
            out.duplicates.append(k)
        elif any(gold[g][0] == name and ioa[r, c] >= iou_match for c, g in enumerate(crowds)):
            out.crowd.append(k)
        else:
            out.rejected.append(k)
    out.missed = [normal[c] for c in range(len(normal)) if not taken[c]]
    for lst in (out.accepted, out.relabelled):
        lst.sort()
    for lst in (out.rejected, out.duplicates, out.crowd):
        lst.sort()
    return out


@dataclass
class ClassCounts:
    """Detections kept, true positives, ignored (on crowd) and gold instances of one class."""

    detections: int = 0
    true_positives: int = 0
    ignored: int = 0
    gold: int = 0

    @property
    def precision(self) -> float | None:
        n = self.detections - self.ignored
        return self.true_positives / n if n > 0 else None

    @property
    def recall(self) -> float | None:
        return self.true_positives / self.gold if self.gold > 0 else None


def count_matches(
    images: Sequence[tuple[Sequence[tuple[str, float, dict]], Sequence[tuple[str, dict, bool]]]],
    keep: Callable[[str, float], bool],
    iou_match: float,
) -> dict[str, ClassCounts]:
    """Per class name: detections kept by ``keep(name, score)``, matched COCO-style to the gold.

    Args:
        images: per image, (predictions as (class, score, RLE), gold as (class, RLE, iscrowd)).
        keep: the score thresholds in force.
        iou_match: the IoU threshold.
    """
    out: dict[str, ClassCounts] = defaultdict(ClassCounts)
    for preds, gold in images:
        classes = {p[0] for p in preds} | {g[0] for g in gold}
        for name in classes:
            dets = [p for p in preds if p[0] == name and keep(name, p[1])]
            order = sorted(range(len(dets)), key=lambda k: -dets[k][1])
            normal = [g for g in gold if g[0] == name and not g[2]]
            crowds = [g for g in gold if g[0] == name and g[2]]
            c = out[name]
            c.gold += len(normal)
            c.detections += len(dets)
            iou = mask_iou([dets[k][2] for k in order], [g[1] for g in normal])
            ioa = mask_iou([dets[k][2] for k in order], [g[1] for g in crowds], [True] * len(crowds))
            taken = np.zeros(len(normal), dtype=bool)
            for r in range(len(order)):
                best, best_iou = -1, iou_match
                for g in range(len(normal)):
                    if not taken[g] and iou[r, g] >= best_iou:
                        best, best_iou = g, iou[r, g]
                if best >= 0:
                    taken[best] = True
                    c.true_positives += 1
                elif crowds and ioa[r].max() >= iou_match:
                    c.ignored += 1
    return dict(out)
