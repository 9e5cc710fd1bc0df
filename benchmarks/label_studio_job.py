"""A tiny job output with known mistakes, for the Label Studio round trip (benchmarks/label_studio_roundtrip.sh).

No model runs: the "predictions" are coco_mini val2017 ground truth with planted mistakes, so what a
reviewer has to do is known exactly. Four images:

* 802 (refrigerator, oven): correct; the reviewer skips the task (cancelled annotation).
* 10764 (person, baseball glove): the glove predicted as "dog" (relabel), plus a false "dog" blob.
* 20992 (person, hot dog): the hot dog is missing (the reviewer paints it: a brush region), plus a
  false "person" blob.
* 22892 (dog, potted plant, cat, dining table, chair): the potted plant is missing (the reviewer
  draws it: a polygon).

Writes ``OUT/part-00000.parquet`` (the shard schema), ``OUT/_ntt/run.json`` (the bank's classes)
and ``KEY`` (``review_key.json``: per image, which instance indices are wrong and what is missing,
with the missing instances' COCO polygons), which the reviewer script reads as its "eyes".

    python benchmarks/label_studio_job.py --data $NTT_SHARED_DATA/coco_mini --out OUT --key KEY
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from ntt_batch.corrections.match import mask_iou
from ntt_batch.output.shards import rows_to_table
from ntt_batch.storage.masks import encode_rle, mask_area, segmentation_to_rle

IMAGES = {
    802: {"skip": True},
    10764: {"relabel": {"baseball glove": "dog"}, "false": [("dog", (8, 8, 60, 50), 0.41)]},
    20992: {"missing": ["hot dog"], "false": [("person", (400, 250, 70, 60), 0.37)]},
    22892: {"missing": ["potted plant"]},
}
CLASSES = [
    "person",
    "dog",
    "cat",
    "baseball glove",
    "hot dog",
    "potted plant",
    "dining table",
    "chair",
    "refrigerator",
    "oven",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="coco_mini folder")
    ap.add_argument("--out", required=True, help="job output folder to write")
    ap.add_argument("--key", required=True, help="review key JSON to write")
    args = ap.parse_args()
    data = Path(args.data).resolve()
    gt = json.loads((data / "annotations" / "instances_val2017.json").read_text())
    cats = {c["id"]: c["name"] for c in gt["categories"]}
    by_name = {n: i for i, n in cats.items()}
    images = {im["id"]: im for im in gt["images"]}
    rng = np.random.default_rng(18)
    rows, key = [], {}
    for iid, plan in IMAGES.items():
        im = images[iid]
        h, w = im["height"], im["width"]
        anns = sorted(
            (a for a in gt["annotations"] if a["image_id"] == iid and not a.get("iscrowd")), key=lambda a: a["id"]
        )
        insts, entry = [], {"uri": str(data / "val2017" / im["file_name"]), "false": [], "relabel": {}, "missing": []}
        for a in anns:
            name = cats[a["category_id"]]
            rle = segmentation_to_rle(a["segmentation"], h, w)
            if name in plan.get("missing", []):
                entry["missing"].append({"label": name, "polygons": a["segmentation"], "annotation_id": a["id"]})
                continue
            predicted = plan.get("relabel", {}).get(name, name)
            if predicted != name:
                entry["relabel"][str(len(insts))] = name
            score = float(np.float32(rng.uniform(0.55, 0.95)))
            insts.append(_inst(by_name[predicted], predicted, score, rle))
        for name, (x, y, bw, bh), score in plan.get("false", []):
            m = np.zeros((h, w), dtype=bool)
            m[y : y + bh, x : x + bw] = True
            rle = encode_rle(m)
            gts = [segmentation_to_rle(a["segmentation"], h, w) for a in anns]
            assert mask_iou([rle], gts).max() < 0.2, "a planted false positive must not overlap an object"
            entry["false"].append(len(insts))
            insts.append(_inst(by_name[name], name, score, rle))
        if plan.get("skip"):
            entry["skip"] = True
        rows.append(
            {
                "image_id": iid,
                "image_uri": entry["uri"],
                "width": w,
                "height": h,
                "status": "ok" if insts else "empty",
                "error": None,
                "num_instances": len(insts),
                "instances": insts,
                "run_id": "label-studio-fixture",
            }
        )
        key[str(iid)] = entry
    out = Path(args.out)
    (out / "_ntt").mkdir(parents=True, exist_ok=True)
    pq.write_table(rows_to_table(rows), out / "part-00000.parquet")
    bank_cats = [{"id": by_name[n], "name": n} for n in sorted(CLASSES, key=lambda n: by_name[n])]
    run = {
        "memory_bank": {"categories": bank_cats, "content_hash": "label-studio-fixture"},
        "attempts": [{"run_id": "label-studio-fixture"}],
    }
    (out / "_ntt" / "run.json").write_text(json.dumps(run, indent=1) + "\n")
    Path(args.key).write_text(json.dumps(key, indent=1) + "\n")
    print(f"wrote {out}: {len(rows)} rows, {sum(r['num_instances'] for r in rows)} instances; key {args.key}")


def _inst(cid: int, name: str, score: float, rle: dict) -> dict:
    from pycocotools import mask as mask_utils

    box = [float(v) for v in mask_utils.toBbox({"size": rle["size"], "counts": rle["counts"].encode()})]
    return {
        "category_id": cid,
        "category_name": name,
        "score": score,
        "bbox": box,
        "area": int(mask_area(rle)),
        "segmentation": rle,
    }


if __name__ == "__main__":
    main()
