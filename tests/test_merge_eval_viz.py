"""Merge (results / dataset), COCO evaluation with class splits, and overlays (ISSUE 4).

Shards are built directly from ground truth with ``rows_to_table`` (no models), so every number
asserted here is known in advance: ground truth as predictions scores AP 1.0, hand-built cases
have AP computed by hand, and `eval` must equal direct pycocotools calls on the same files.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ntt_batch.cli import main
from ntt_batch.eval.coco_eval import evaluate_coco, format_report
from ntt_batch.eval.shard_results import coco_results_from_shards
from ntt_batch.exports import merge_dataset, merge_results
from ntt_batch.output.reader import iter_image_batches
from ntt_batch.output.shards import rows_to_table
from ntt_batch.references.coco import FEW_SHOT_CLASS_NAMES
from ntt_batch.storage.masks import decode_rle, encode_rle, segmentation_to_rle
from ntt_batch.viz.overlay import PANEL_GAP, overlay_size, visualize

# ----------------------------------------------------------------------------- helpers


def _instance(cat_id, name, score, bbox, rle):
    return {
        "category_id": int(cat_id),
        "category_name": name,
        "score": float(score),
        "bbox": [float(v) for v in bbox],
        "area": int(_area(rle)),
        "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"]},
    }


def _area(rle):
    return int(decode_rle(rle).sum())


def _row(image_id, uri, width, height, instances, status=None, error=None):
    status = status or ("ok" if instances else "empty")
    return {
        "image_id": image_id,
        "image_uri": uri,
        "width": width,
        "height": height,
        "status": status,
        "error": error,
        "num_instances": len(instances),
        "instances": instances,
        "run_id": "test-run",
    }


def write_shards(
    out: Path, rows: list[dict], per_file: int = 50, row_group: int = 7, run_json: dict | None = None
) -> Path:
    """Rows → several Parquet files with small row groups (exercises streaming across files/groups)."""
    out.mkdir(parents=True, exist_ok=True)
    for k in range(0, max(len(rows), 1), per_file):
        pq.write_table(
            rows_to_table(rows[k : k + per_file]), out / f"part-{k // per_file:05d}.parquet", row_group_size=row_group
        )
    if run_json is not None:
        (out / "run.json").write_text(json.dumps(run_json))
    return out


def gt_rows(gt: dict, image_root: str, score=lambda ann: 1.0, keep=lambda ann: True) -> list[dict]:
    """One shard row per GT image whose instances are the image's non-crowd GT annotations."""
    names = {c["id"]: c["name"] for c in gt["categories"]}
    by_img: dict[int, list] = {im["id"]: [] for im in gt["images"]}
    for a in gt["annotations"]:
        if not a.get("iscrowd", 0) and keep(a):
            by_img[a["image_id"]].append(a)
    rows = []
    for im in sorted(gt["images"], key=lambda im: im["id"]):
        insts = []
        for a in by_img[im["id"]]:
            rle = segmentation_to_rle(a["segmentation"], im["height"], im["width"])
            insts.append(_instance(a["category_id"], names[a["category_id"]], score(a), a["bbox"], rle))
        rows.append(_row(im["id"], f"{image_root}/{im['file_name']}", im["width"], im["height"], insts))
    return rows


@pytest.fixture(scope="module")
def val_gt(coco_mini) -> dict:
    return json.loads((coco_mini / "annotations" / "instances_val2017.json").read_text())


@pytest.fixture(scope="module")
def val_gt_path(coco_mini) -> Path:
    return coco_mini / "annotations" / "instances_val2017.json"


@pytest.fixture(scope="module")
def perfect_shards(tmp_path_factory, val_gt, coco_mini) -> Path:
    rows = gt_rows(val_gt, str(coco_mini / "val2017"))
    return write_shards(tmp_path_factory.mktemp("perfect") / "out", rows)


def direct_cocoeval(gt_path, results_path, split_names=None, iou_type="bbox") -> np.ndarray:
    """The paper's protocol written out with plain pycocotools (method.md §5.1)."""
    gt = json.loads(Path(gt_path).read_text())
    if split_names:
        keep = {c["id"] for c in gt["categories"] if c["name"] in split_names}
        gt["annotations"] = [a for a in gt["annotations"] if a["category_id"] in keep]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        dt = coco.loadRes(str(results_path))
        ev = COCOeval(coco, dt, iou_type)
        ev.params.imgIds = sorted(coco.getImgIds())
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


# ----------------------------------------------------------------------------- eval


def test_ground_truth_as_predictions_scores_ap_1(perfect_shards, val_gt_path, tmp_path):
    results = tmp_path / "results.json"
    stats = merge_results(str(perfect_shards), str(results))
    assert stats.rows == 158 and stats.instances_written > 1000 and stats.images_error == 0
    for source in (str(results), str(perfect_shards)):  # the merged file and the shards directly
        rep = evaluate_coco(str(val_gt_path), source, split="few_shot")
        assert rep["iou_types"] == ["bbox", "segm"] and rep["num_images"] == 158
        for t in ("bbox", "segm"):
            assert rep[t]["stats"]["AP"] == pytest.approx(1.0, abs=1e-12)
            assert rep[t]["stats"]["AP50"] == pytest.approx(1.0, abs=1e-12)
            assert rep[t]["stats"]["AR100"] == pytest.approx(1.0, abs=1e-12)
            with_gt = [c for c in rep[t]["per_class"] if c["num_gt"]]
            assert with_gt and all(c["AP"] == pytest.approx(1.0) for c in with_gt)
            assert all(c["AP"] is None for c in rep[t]["per_class"] if not c["num_gt"])
        assert [c["name"] for c in rep["categories"]] == sorted(
            FEW_SHOT_CLASS_NAMES, key=list(FEW_SHOT_CLASS_NAMES).index
        )
        assert rep["detections"]["other_classes"] > 0  # non-split detections were dropped, not scored


def _box_rle(h, w, box):
    m = np.zeros((h, w), dtype=bool)
    x, y, bw, bh = box
    m[y : y + bh, x : x + bw] = True
    return encode_rle(m)


def hand_built_case(tmp_path):
    """Class 1: 2 GT, detections TP(0.9), FP(0.8), TP(0.7) → AP = (51 + 50·2/3)/101 at every IoU.
    Class 2: 1 GT, one detection with IoU 0.62 → a match at IoU thresholds .50/.55/.60 only → AP 0.3."""
    H = W = 100
    boxes_gt = {1: [(0, 0, 20, 20), (60, 60, 30, 30)], 2: [(0, 50, 50, 50)]}
    gt = {
        "images": [{"id": 7, "file_name": "x.jpg", "width": W, "height": H}],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}],
        "annotations": [],
    }
    for cid, boxes in boxes_gt.items():
        for b in boxes:
            rle = _box_rle(H, W, b)
            gt["annotations"].append(
                {
                    "id": len(gt["annotations"]) + 1,
                    "image_id": 7,
                    "category_id": cid,
                    "bbox": list(b),
                    "area": b[2] * b[3],
                    "iscrowd": 0,
                    "segmentation": rle,
                }
            )
    dets = [(1, 0.9, (0, 0, 20, 20)), (1, 0.8, (30, 0, 10, 10)), (1, 0.7, (60, 60, 30, 30)), (2, 0.6, (0, 50, 50, 31))]
    insts = [_instance(c, "ab"[c - 1], s, b, _box_rle(H, W, b)) for c, s, b in dets]
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt))
    shards = write_shards(tmp_path / "shards", [_row(7, "mem://x.jpg", W, H, insts)])
    return gt_path, shards


AP_CLASS_1 = (51 + 50 * 2 / 3) / 101


def test_hand_built_case_has_known_ap(tmp_path):
    gt_path, shards = hand_built_case(tmp_path)
    rep = evaluate_coco(str(gt_path), str(shards), split="all")
    for t in ("bbox", "segm"):
        per = {c["id"]: c for c in rep[t]["per_class"]}
        assert per[1]["AP"] == pytest.approx(AP_CLASS_1, abs=1e-9)
        assert per[1]["AP50"] == pytest.approx(AP_CLASS_1, abs=1e-9) and per[1]["AP75"] == pytest.approx(
            AP_CLASS_1, abs=1e-9
        )
        assert per[2]["AP"] == pytest.approx(0.3, abs=1e-9)
        assert per[2]["AP50"] == pytest.approx(1.0) and per[2]["AP75"] == pytest.approx(0.0)
        assert per[3]["AP"] is None and per[3]["num_gt"] == 0
        assert rep[t]["stats"]["AP"] == pytest.approx((AP_CLASS_1 + 0.3) / 2, abs=1e-9)
        assert rep[t]["stats"]["AP50"] == pytest.approx((AP_CLASS_1 + 1.0) / 2, abs=1e-9)
    only_b = evaluate_coco(str(gt_path), str(shards), split="b", iou_types="bbox")
    assert only_b["iou_types"] == ["bbox"] and only_b["bbox"]["stats"]["AP"] == pytest.approx(0.3, abs=1e-9)
    assert only_b["detections"]["other_classes"] == 3


def noisy_results(gt: dict, seed: int = 0) -> list[dict]:
    """Imperfect detections: jittered GT boxes/masks, random scores, misses and false positives."""
    rng = random.Random(seed)
    imgs = {im["id"]: im for im in gt["images"]}
    out = []
    for a in gt["annotations"]:
        if a.get("iscrowd") or rng.random() < 0.2:
            continue
        im = imgs[a["image_id"]]
        x, y, w, h = a["bbox"]
        dx, dy = rng.uniform(-0.15, 0.15) * w, rng.uniform(-0.15, 0.15) * h
        box = [max(0.0, x + dx), max(0.0, y + dy), w * rng.uniform(0.8, 1.2), h * rng.uniform(0.8, 1.2)]
        m = np.zeros((im["height"], im["width"]), dtype=bool)
        x0, y0 = int(box[0]), int(box[1])
        m[y0 : y0 + max(1, int(box[3])), x0 : x0 + max(1, int(box[2]))] = True
        cat = a["category_id"] if rng.random() > 0.1 else rng.choice(gt["categories"])["id"]
        out.append(
            {
                "image_id": a["image_id"],
                "category_id": cat,
                "bbox": box,
                "score": round(rng.random(), 4),
                "segmentation": encode_rle(m),
            }
        )
    return out


def test_eval_equals_direct_pycocotools_calls(val_gt, val_gt_path, tmp_path):
    results = tmp_path / "noisy.json"
    results.write_text(json.dumps(noisy_results(val_gt)))
    for split, names in (
        ("few_shot", FEW_SHOT_CLASS_NAMES),
        ("all", None),
        ("person,car,dog", ("person", "car", "dog")),
    ):
        rep = evaluate_coco(str(val_gt_path), str(results), split=split)
        for t in ("bbox", "segm"):
            direct = direct_cocoeval(val_gt_path, results, names, t)
            ours = np.array([rep[t]["stats"][k] for k in rep[t]["stats"]])
            assert np.array_equal(ours, direct), (split, t, ours, direct)
            assert 0.05 < rep[t]["stats"]["AP"] < 0.95  # a real, non-trivial number


def test_cli_eval_prints_summaries_table_and_writes_report(perfect_shards, val_gt_path, tmp_path):
    results = tmp_path / "results.json"
    r = CliRunner().invoke(
        main, ["export", "--shards", str(perfect_shards), "--out", str(results), "--format", "results"]
    )
    assert r.exit_code == 0, r.output
    report = tmp_path / "report.json"
    r = CliRunner().invoke(
        main,
        [
            "eval",
            "--annotations",
            str(val_gt_path),
            "--results",
            str(results),
            "--split",
            "few_shot",
            "--report",
            str(report),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "== bbox ==" in r.output and "== segm ==" in r.output
    assert r.output.count("Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 1.000") == 2
    assert "per-class AP" in r.output and "person" in r.output and "potted plant" in r.output
    rep = json.loads(report.read_text())
    assert rep["format"] == "ntt-batch/eval-report" and rep["split"] == "few_shot"
    assert rep["segm"]["stats"]["AP"] == 1.0 and len(rep["bbox"]["per_class"]) == 20


def test_bbox_only_ground_truth(val_gt, tmp_path, perfect_shards):
    gt = json.loads(json.dumps(val_gt))
    for a in gt["annotations"]:
        a.pop("segmentation", None)
    p = tmp_path / "gt_boxes.json"
    p.write_text(json.dumps(gt))
    rep = evaluate_coco(str(p), str(perfect_shards), split="few_shot")
    assert rep["iou_types"] == ["bbox"] and "segm" not in rep
    assert any("bbox-only" in n for n in rep["notices"])
    assert rep["bbox"]["stats"]["AP"] == pytest.approx(1.0)
    assert "== segm ==" not in format_report(rep)


def test_empty_results_give_ap_0_with_notice(val_gt_path, tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    rep = evaluate_coco(str(val_gt_path), str(empty), split="few_shot")
    for t in ("bbox", "segm"):
        assert rep[t]["stats"]["AP"] == 0.0 and rep[t]["stats"]["AR100"] == 0.0
    assert any("no detections" in n for n in rep["notices"])
    # the same from shards whose rows are all 'empty'
    gt = json.loads(Path(val_gt_path).read_text())
    rows = [_row(im["id"], f"/x/{im['file_name']}", im["width"], im["height"], []) for im in gt["images"]]
    shards = write_shards(tmp_path / "empty_shards", rows)
    rep2 = evaluate_coco(str(val_gt_path), str(shards), split="few_shot")
    assert rep2["segm"]["stats"]["AP"] == 0.0 and rep2["num_detections"] == 0
    out = tmp_path / "r.json"
    assert merge_results(str(shards), str(out)).instances_written == 0 and json.loads(out.read_text()) == []


def test_results_on_unknown_images_are_counted_and_reported(perfect_shards, val_gt_path, tmp_path):
    dets = coco_results_from_shards(str(perfect_shards)).results
    dets += [
        {
            "image_id": 999_999_001 + k,
            "category_id": 1,
            "bbox": [0, 0, 5, 5],
            "score": 0.99,
            "segmentation": _box_rle(10, 10, (0, 0, 5, 5)),
        }
        for k in range(3)
    ]
    p = tmp_path / "with_strangers.json"
    p.write_text(json.dumps(dets))
    rep = evaluate_coco(str(val_gt_path), str(p), split="few_shot")
    assert rep["detections"]["unknown_image"] == 3
    assert rep["detections"]["unknown_image_examples"] == [999_999_001, 999_999_002, 999_999_003]
    assert any("3 detection(s) are on image ids not in the ground truth" in n for n in rep["notices"])
    assert rep["bbox"]["stats"]["AP"] == pytest.approx(1.0)


def test_restrict_to_processed_and_error_rows(val_gt, val_gt_path, tmp_path, coco_mini):
    rows = gt_rows(val_gt, str(coco_mini / "val2017"))[:10]
    rows[3] = _row(rows[3]["image_id"], rows[3]["image_uri"], None, None, [], status="error", error="truncated image")
    shards = write_shards(tmp_path / "partial", rows, per_file=4)
    full = evaluate_coco(str(val_gt_path), str(shards), split="all", iou_types="bbox")
    assert full["bbox"]["stats"]["AP"] < 0.5  # 148 unprocessed images count as misses
    assert any("no processed row" in n for n in full["notices"]) and any("status 'error'" in n for n in full["notices"])
    part = evaluate_coco(str(val_gt_path), str(shards), split="all", iou_types="bbox", restrict_to_processed=True)
    assert part["num_images"] == 9 and part["bbox"]["stats"]["AP"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="needs the shards"):
        evaluate_coco(str(val_gt_path), [], restrict_to_processed=True)


def test_eval_input_errors_are_clear(tmp_path, val_gt_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image_id": 1, "bbox": [0, 0, 1, 1]}]))
    with pytest.raises(ValueError, match=r"detection \[0\] lacks category_id, score"):
        evaluate_coco(str(val_gt_path), str(bad))
    r = CliRunner().invoke(main, ["eval", "--annotations", str(val_gt_path), "--results", str(val_gt_path)])
    assert r.exit_code != 0 and "JSON array of detections" in r.output
    r = CliRunner().invoke(main, ["eval", "--annotations", str(val_gt_path), "--results", str(tmp_path / "nothing")])
    assert r.exit_code != 0 and "no Parquet shards" in r.output
    r = CliRunner().invoke(
        main, ["eval", "--annotations", str(val_gt_path), "--results", str(bad), "--iou-type", "keypoints"]
    )
    assert r.exit_code != 0 and "unknown IoU type 'keypoints'" in r.output
    r = CliRunner().invoke(
        main, ["eval", "--annotations", str(val_gt_path), "--results", str(bad), "--split", "unicorn"]
    )
    assert r.exit_code != 0 and "unicorn" in r.output


# ----------------------------------------------------------------------------- merge


def test_results_merge_loads_in_pycocotools_and_keeps_float32_scores(tmp_path, val_gt, coco_mini):
    rng = random.Random(1)
    rows = gt_rows(val_gt, str(coco_mini / "val2017"), score=lambda a: rng.random())
    shards = write_shards(tmp_path / "s", rows, per_file=13, row_group=3)
    out = tmp_path / "res.json"
    stats = merge_results(str(shards), str(out), score_threshold=0.5, batch_rows=5)
    dets = json.loads(out.read_text())
    stored = [i for r in rows for i in r["instances"]]
    stored_scores = np.array([i["score"] for i in stored], dtype=np.float32)
    assert stats.shards == 13 and stats.rows == 158
    assert len(dets) == stats.instances_written == int((stored_scores >= 0.5).sum())
    assert stats.below_threshold == len(stored) - len(dets)
    kept = [i for i in stored if np.float32(i["score"]) >= 0.5]
    assert [np.float32(d["score"]) for d in dets] == [np.float32(i["score"]) for i in kept]  # exact float32 round trip
    assert [d["segmentation"]["counts"] for d in dets] == [i["segmentation"]["counts"] for i in kept]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(coco_mini / "annotations" / "instances_val2017.json"))
        res = gt.loadRes(str(out))
    assert len(res.anns) == len(dets)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_dataset_merge_is_a_coco_file_with_exact_masks(tmp_path, val_gt, coco_mini):
    root = str(coco_mini / "val2017")
    rng = random.Random(2)
    rows = gt_rows(val_gt, root, score=lambda a: rng.random())
    rows[5] = _row(rows[5]["image_id"], rows[5]["image_uri"], None, None, [], status="error", error="not an image file")
    bank_cats = [{"id": c["id"], "name": c["name"]} for c in val_gt["categories"]]
    shards = write_shards(
        tmp_path / "s",
        rows,
        run_json={
            "memory_bank": {"categories": bank_cats, "content_hash": "abc"},
            "official_weights": False,
            "attempts": [{"run_id": "r1"}],
        },
    )
    out = tmp_path / "labels.json"
    stats = merge_dataset(str(shards), str(out), score_threshold=0.3, image_root=root)
    assert (
        stats.images_error == 1
        and stats.images_written == 157
        and stats.error_examples[0]["error"] == "not an image file"
    )
    assert stats.categories_source == "run.json (memory bank)" and len(stats.categories) == 80
    assert any("status 'error' were skipped" in n for n in stats.notices)
    with contextlib.redirect_stdout(io.StringIO()):
        ds = COCO(str(out))
    assert len(ds.imgs) == 157 and rows[5]["image_id"] not in ds.imgs
    im = ds.imgs[rows[0]["image_id"]]
    assert im["file_name"] == Path(rows[0]["image_uri"]).name and im["image_uri"] == rows[0]["image_uri"]
    assert (im["width"], im["height"]) == (rows[0]["width"], rows[0]["height"])
    expected = [
        i for k, r in enumerate(rows) if k != 5 for i in r["instances"] if np.float32(i["score"]) >= np.float32(0.3)
    ]
    assert len(ds.anns) == len(expected) == stats.instances_written
    assert sorted(ds.anns) == list(range(1, len(expected) + 1))
    for ann, inst in zip((ds.anns[k] for k in sorted(ds.anns)), expected):
        assert ann["iscrowd"] == 0 and ann["area"] == inst["area"]
        assert ann["bbox"] == mask_utils.toBbox(ds.annToRLE(ann)).tolist()  # the mask's extent (a label export)
        assert np.float32(ann["score"]) == np.float32(inst["score"]) and ann["score"] >= 0.3
        assert np.array_equal(ds.annToMask(ann).astype(bool), decode_rle(inst["segmentation"]))  # exact masks
    assert ds.dataset["info"]["memory_bank_hash"] == "abc" and ds.dataset["info"]["run_ids"] == ["r1"]
    # without run.json: categories from the instances; file_name = the full URI
    (shards / "run.json").unlink()
    stats2 = merge_dataset(str(shards), str(tmp_path / "labels2.json"))
    ds2 = json.loads((tmp_path / "labels2.json").read_text())
    seen = sorted({i["category_id"] for k, r in enumerate(rows) if k != 5 for i in r["instances"]})
    assert [c["id"] for c in ds2["categories"]] == seen and stats2.categories_source == "instances"
    assert ds2["images"][0]["file_name"] == rows[0]["image_uri"]


def test_merge_refuses_duplicates_and_leaves_no_file(tmp_path, val_gt, coco_mini):
    rows = gt_rows(val_gt, str(coco_mini / "val2017"))[:6]
    dup = dict(rows[2], image_uri="/elsewhere/copy.jpg")
    shards = write_shards(tmp_path / "s", rows + [dup], per_file=3)
    for fmt_fn in (merge_results, merge_dataset):
        out = tmp_path / f"{fmt_fn.__name__}.json"
        with pytest.raises(
            ValueError, match=f"1 image id\\(s\\) appear in more than one row \\(e.g. {rows[2]['image_id']}\\)"
        ):
            fmt_fn(str(shards), str(out))
        assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == ["s"]  # no temporary file left behind


def test_merge_input_errors(tmp_path):
    r = CliRunner().invoke(
        main, ["export", "--shards", str(tmp_path / "none"), "--out", str(tmp_path / "x.json"), "--format", "results"]
    )
    assert r.exit_code != 0 and "no Parquet shards under" in r.output
    shards = write_shards(tmp_path / "s", [_row(1, "/a/1.jpg", 10, 10, [])])
    r = CliRunner().invoke(
        main,
        ["export", "--shards", str(shards), "--out", str(tmp_path / "missing_dir" / "x.json"), "--format", "dataset"],
    )
    assert r.exit_code != 0 and "does not exist: create it first" in r.output
    r = CliRunner().invoke(
        main,
        [
            "export",
            "--shards",
            str(shards),
            "--out",
            str(tmp_path / "x.json"),
            "--format",
            "dataset",
            "--image-root",
            "/other",
        ],
    )
    assert r.exit_code != 0 and "is not under --image-root '/other'" in r.output


def test_streaming_reads_every_row_in_small_batches(tmp_path, val_gt, coco_mini):
    rows = gt_rows(val_gt, str(coco_mini / "val2017"))
    shards = write_shards(tmp_path / "s", rows, per_file=40, row_group=9)
    seen, sizes = [], []
    for b in iter_image_batches(str(shards), batch_rows=4):
        sizes.append(len(b))
        seen += [(b.image_id[i], len(b.instances(i))) for i in range(len(b))]
    assert max(sizes) <= 4
    assert seen == [(r["image_id"], len(r["instances"])) for r in rows]
    # slices bounded in instances too (a single row over the bound comes alone)
    seen = []
    for b in iter_image_batches(str(shards), batch_rows=64, batch_instances=20):
        n = int(b.offsets[-1])
        assert n <= 20 or len(b) == 1
        seen += [b.image_id[i] for i in range(len(b))]
    assert seen == [r["image_id"] for r in rows] and max(len(r["instances"]) for r in rows) > 20


def test_cli_merge_both_formats(perfect_shards, tmp_path):
    for fmt in ("results", "dataset"):
        out = tmp_path / f"{fmt}.json"
        r = CliRunner().invoke(
            main,
            ["export", "--shards", str(perfect_shards), "--out", str(out), "--format", fmt, "--thresholds", "0.5"],
        )
        assert r.exit_code == 0, r.output
        assert f"wrote {out} ({fmt}):" in r.output and "158 rows" in r.output
        data = json.loads(out.read_text())
        n = len(data) if fmt == "results" else len(data["annotations"])
        assert n > 1000


# ----------------------------------------------------------------------------- visualize


def test_visualize_writes_pngs_of_the_expected_size(perfect_shards, val_gt, val_gt_path, tmp_path, coco_mini):
    ims = sorted(val_gt["images"], key=lambda im: im["id"])[:2]
    out = tmp_path / "viz"
    r = CliRunner().invoke(
        main,
        [
            "visualize",
            "--shards",
            str(perfect_shards),
            "--images",
            str(coco_mini / "val2017"),
            "--annotations",
            str(val_gt_path),
            "--limit",
            "2",
            "--out",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    for im in ims:
        png = Image.open(out / f"{im['id']}.png")
        assert (
            png.size
            == (2 * im["width"] + PANEL_GAP, im["height"])
            == overlay_size(im["width"], im["height"], with_ground_truth=True)
        )
        a = np.asarray(png.convert("RGB"))
        assert a[:, : im["width"]].std() > 10 and (a[:, im["width"] + PANEL_GAP :] != a[:, : im["width"]]).any()
    # a results JSON + image root, prediction only, one id, scaled down
    results = tmp_path / "r.json"
    merge_results(str(perfect_shards), str(results))
    s = visualize(
        str(results),
        str(tmp_path / "viz2"),
        images_root=str(coco_mini / "val2017"),
        ids=[f"{ims[1]['id']}"],
        max_side=320,
        score_threshold=0.5,
    )
    assert len(s.written) == 1 and not s.skipped
    w, h = ims[1]["width"], ims[1]["height"]
    expected = overlay_size(w, h, with_ground_truth=False, max_side=320)
    assert Image.open(s.written[0]).size == expected and max(expected) == 320
    s = visualize(str(results), str(tmp_path / "viz3"), images_root=str(tmp_path), ids=["123456789"])
    assert not s.written and "image file not found" in s.skipped[0]["reason"]
