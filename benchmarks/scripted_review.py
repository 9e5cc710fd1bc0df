"""A scripted reviewer: the review page's ``decisions.json`` for a job output, decided against ground truth.

For the labeling-loop benchmark (docs/labeling_loop.md) without a person at the page: every
instance of every processed row (or of the first ``--limit`` rows) gets the decision a careful
reviewer would make looking at the image, with the COCO ground truth as the reviewer's eyes:

* ``accept`` — the mask overlaps a ground-truth instance of its class at mask IoU >= ``--iou``
  (at most one accepted detection per object, highest score first; a further one is rejected);
* ``relabel`` — it overlaps an object of another class at IoU >= ``--iou`` (→ that class);
* ``reject`` — anything else.

The file is written in the page's format (docs/review_decisions.md) and checked with
``validate_decisions``. Rows are tied to ground-truth images by file name.

    python benchmarks/scripted_review.py --shards OUT --annotations instances_val2017.json --out decisions.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import PurePosixPath

import numpy as np
from pycocotools import mask as mask_utils

from ntt_batch.output.folder import OutputFolder
from ntt_batch.output.reader import iter_image_batches, run_categories
from ntt_batch.viz.review_decisions import DECISIONS_FORMAT, DECISIONS_VERSION, validate_decisions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", required=True)
    ap.add_argument("--annotations", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--iou", type=float, default=0.5)
    ap.add_argument("--limit", type=int, default=None, help="review only the first N rows (file order)")
    args = ap.parse_args()
    gt = json.load(open(args.annotations))
    by_name = {im["file_name"]: im for im in gt["images"]}
    names = {c["id"]: c["name"] for c in gt["categories"]}
    anns: dict[int, list] = {}
    for a in gt["annotations"]:
        if not a.get("iscrowd"):
            anns.setdefault(a["image_id"], []).append(a)
    run = OutputFolder(args.shards).read_run(strict=False)
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    decisions, seen = [], 0
    for b in iter_image_batches(args.shards):
        for i in range(len(b)):
            if b.status[i] == "error" or (args.limit is not None and seen >= args.limit):
                continue
            seen += 1
            im = by_name.get(PurePosixPath(b.image_uri[i]).name)
            if im is None:
                continue
            h, w = im["height"], im["width"]
            gts = anns.get(im["id"], [])
            g_rle = [
                mask_utils.merge(mask_utils.frPyObjects(a["segmentation"], h, w))
                if isinstance(a["segmentation"], list)
                else a["segmentation"]
                for a in gts
            ]
            js = list(range(int(b.offsets[i]), int(b.offsets[i + 1])))
            d_rle = [{"size": b.size[j], "counts": b.counts[j].encode()} for j in js]
            iou = (
                np.asarray(mask_utils.iou(d_rle, g_rle, [0] * len(g_rle))).reshape(len(js), len(gts))
                if gts and js
                else np.zeros((len(js), len(gts)))
            )
            taken = set()
            for r in sorted(range(len(js)), key=lambda r: -b.score[js[r]]):
                j = js[r]
                same = [
                    g
                    for g in range(len(gts))
                    if gts[g]["category_id"] == b.category_id[j] and g not in taken and iou[r, g] >= args.iou
                ]
                other = [
                    g for g in range(len(gts)) if gts[g]["category_id"] != b.category_id[j] and iou[r, g] >= args.iou
                ]
                action, cid = "reject", b.category_id[j]
                if same:
                    taken.add(max(same, key=lambda g: iou[r, g]))
                    action = "accept"
                elif other:
                    action, cid = "relabel", gts[max(other, key=lambda g: iou[r, g])]["category_id"]
                decisions.append(
                    {
                        "image_id": int(b.image_id[i]),
                        "image_uri": b.image_uri[i],
                        "instance": j - int(b.offsets[i]),
                        "action": action,
                        "category_id": int(cid),
                        "category_name": names.get(int(cid)),
                        "original": {
                            "category_id": int(b.category_id[j]),
                            "category_name": b.category_name[j],
                            "score": float(b.score_text[j]),
                            "bbox": [float(v) for v in b.bbox[j]],
                        },
                        "reviewer": "scripted",
                        "decided_at": now,
                    }
                )
    doc = {
        "format": DECISIONS_FORMAT,
        "version": DECISIONS_VERSION,
        "output": args.shards,
        "run_id": (run.get("attempts") or [{}])[-1].get("run_id"),
        "run_ids": [a.get("run_id") for a in run.get("attempts") or []],
        "memory_bank_hash": (run.get("memory_bank") or {}).get("content_hash"),
        "review": {"created_at": now, "thresholds": "none", "seed": 0, "limit": args.limit},
        "categories": run_categories(run) or [],
        "reviewer": "scripted",
        "saved_at": now,
        "decisions": sorted(decisions, key=lambda d: (d["image_uri"], d["instance"])),
    }
    validate_decisions(doc)
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1)
    counts = {a: sum(d["action"] == a for d in decisions) for a in ("accept", "reject", "relabel")}
    print(f"wrote {args.out}: {len(decisions)} decisions on {seen} rows {counts}")


if __name__ == "__main__":
    main()
