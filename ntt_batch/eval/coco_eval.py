"""COCO evaluation with class splits (method.md §5.1), on real pycocotools.

For a split other than "all", the ground truth keeps only that split's annotations (crowd ones
included, COCOeval ignores them as usual) while every image stays in, so false positives on
images without those classes count — the COCO-FSOD protocol.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from typing import Sequence

from ..method.references import resolve_categories

STAT_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


def evaluate_coco(
    annotations: str,
    results: str | list,
    *,
    split: str = "all",
    iou_types: Sequence[str] = ("bbox", "segm"),
) -> dict:
    """Run COCOeval; returns {iou_type: {"stats": {name: value}, "summary": text}} plus split info."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with open(annotations) as f:
        gt_json = json.load(f)
    cats = resolve_categories(gt_json["categories"], split) if split != "all" else gt_json["categories"]
    keep_ids = {int(c["id"]) for c in cats}
    gt_json = copy.copy(gt_json)
    gt_json["annotations"] = [a for a in gt_json["annotations"] if int(a["category_id"]) in keep_ids]
    dets = results if isinstance(results, list) else json.load(open(results))
    dets = [d for d in dets if int(d["category_id"]) in keep_ids]

    out: dict = {"split": split, "category_ids": sorted(keep_ids), "num_detections": len(dets)}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = gt_json
        gt.createIndex()
    if not dets:
        out.update({t: {"stats": {n: 0.0 for n in STAT_NAMES}, "summary": "no detections: AP = 0"} for t in iou_types})
        return out
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(dets)
    for t in iou_types:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            ev = COCOeval(gt, dt, t)
            ev.params.imgIds = sorted(gt.getImgIds())
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        out[t] = {"stats": dict(zip(STAT_NAMES, map(float, ev.stats))), "summary": buf.getvalue()}
    return out
