"""ScoreThresholds (loading, lookup order, validation, warnings) and `ntt-batch thresholds` (tuning)."""

import json
import logging

import numpy as np
import pytest
from click.testing import CliRunner
from test_merge_eval_viz import _box_rle, _instance, _row, write_shards

from ntt_batch.cli import main
from ntt_batch.eval.threshold_fit import choose_threshold, parse_target, tune_thresholds
from ntt_batch.exports import merge_results
from ntt_batch.exports.score_filter import ScoreThresholds


def test_none_and_float():
    th = ScoreThresholds.load(None)
    assert th.threshold(1, "dog") is None and th.keep(1, "dog", 0.0) and th.is_empty
    th = ScoreThresholds.load(0.5)
    assert th.threshold(7, None) == 0.5 and th.keep(7, "x", 0.5) and not th.keep(7, "x", 0.4999)
    assert ScoreThresholds.load("0.25").default == 0.25
    assert ScoreThresholds.load(0.5).to_dict() == {"default": 0.5}


def test_map_lookup_order(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text("default: 0.5\ndog: 0.7\nCat: 0.3\n3: 0.9\n'4': 0.1\n")
    th = ScoreThresholds.load(str(p))
    assert th.threshold(1, "dog") == 0.7
    assert th.threshold(2, "cat") == 0.3  # case-insensitive fallback
    assert th.threshold(3, "bird") == 0.9  # by id
    assert th.threshold(4, None) == 0.1
    assert th.threshold(5, "horse") == 0.5  # default
    assert th.keep(1, "dog", 0.7) and not th.keep(1, "dog", 0.69)
    assert th.to_dict() == {"default": 0.5, "dog": 0.7, "Cat": 0.3, 3: 0.9, 4: 0.1}
    # exact spelling wins over the case-insensitive match
    th = ScoreThresholds.load({"Dog": 0.2, "dog": 0.8})
    assert th.threshold(1, "Dog") == 0.2 and th.threshold(1, "dog") == 0.8


def test_json_file_and_no_default(tmp_path):
    p = tmp_path / "t.json"
    p.write_text(json.dumps({"dog": 0.6}))
    th = ScoreThresholds.load(p)
    assert th.threshold(1, "dog") == 0.6 and th.threshold(2, "cat") is None and th.keep(2, "cat", 0.0)
    assert ScoreThresholds.load(th.to_dict()) == th


@pytest.mark.parametrize("value", [float("nan"), 1.5, -0.1, "high", True, [0.5]])
def test_invalid_values_name_class_and_value(value):
    with pytest.raises(ValueError, match=r"'dog'.*" if not isinstance(value, float) else r"'dog'"):
        ScoreThresholds.load({"dog": value})
    with pytest.raises(ValueError, match="default"):
        ScoreThresholds.load({"default": value})


def test_invalid_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        ScoreThresholds.load(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("[0.5, 0.6]\n")
    with pytest.raises(ValueError, match="mapping"):
        ScoreThresholds.load(str(bad))
    with pytest.raises(ValueError):
        ScoreThresholds.load(float("nan"))
    with pytest.raises(ValueError):
        ScoreThresholds.load(2)


def test_unknown_classes_warn_once(caplog):
    th = ScoreThresholds.load({"dgo": 0.5, "cat": 0.4, 9: 0.1})
    with caplog.at_level(logging.WARNING):
        assert th.warn_unknown([(1, "dog"), (2, "cat")]) == ["dgo", "9"]
        th.warn_unknown([(1, "dog"), (2, "cat")])
    warnings = [r for r in caplog.records if "match no class" in r.getMessage()]
    assert len(warnings) == 1 and "dgo" in warnings[0].getMessage()


# ----------------------------------------------------------------------------- tuning (ntt-batch thresholds)


def test_choose_threshold_known_best():
    # 3 GT; by score: TP .9, TP .8, FP .7, TP .6, FP .5, FP .4
    # F1 by cut: .5, .8, .667, .857 (best, at .6), .75, .667; precision >= .9 with max recall: .8
    scores = np.array([0.5, 0.9, 0.4, 0.8, 0.7, 0.6], dtype=np.float32).astype(np.float64)
    tp = np.array([False, True, False, True, False, True])
    t, p, r, f1, ntp, note = choose_threshold(scores, tp, 3, "f1")
    assert (t, ntp, note) == (0.6, 3, "") and (p, r) == (0.75, 1.0) and f1 == pytest.approx(6 / 7)
    t, p, r, f1, ntp, _ = choose_threshold(scores, tp, 3, "precision=0.9")
    assert (t, p, ntp) == (0.8, 1.0, 2) and r == pytest.approx(2 / 3)
    t, *_, note = choose_threshold(scores, tp, 3, "precision=1.0")
    assert t == 0.8
    t, p, *_, note = choose_threshold(scores, ~tp, 3, "precision=0.9")
    assert t == 1.0 and "not reached" in note
    assert choose_threshold(scores, tp, 0)[0] is None and choose_threshold(scores[:0], tp[:0], 2)[0] is None
    # ties: equal scores form one cut; the shortest decimal in (next lower score, cut]
    t, *_ = choose_threshold(np.array([0.83, 0.83, 0.2]), np.array([True, True, False]), 2)
    assert t == 0.8
    t, *_ = choose_threshold(np.array([0.8300001, 0.83]), np.array([True, False]), 1)
    assert 0.83 < t <= 0.8300001
    assert parse_target("Precision=0.95") == ("precision", 0.95)
    for bad in ("recall=0.9", "precision=1.5", "precision=x", "f2"):
        with pytest.raises(ValueError, match="--target"):
            parse_target(bad)


def _hand_built(tmp_path):
    """Class 'a' (GT id 5, shard id 1): 3 GT boxes + 1 crowd region; class 'B' (GT 'b' id 9, shard id 2):
    1 GT; 'zebra' only in the shards. Detections as in test_choose_threshold_known_best for 'a'."""
    H = W = 100
    boxes_a = [(0, 0, 10, 10), (20, 0, 10, 10), (40, 0, 10, 10)]
    crowd = (0, 60, 40, 40)
    gt = {
        "images": [{"id": 7, "file_name": "sub/x.jpg", "width": W, "height": H}],
        "categories": [{"id": 5, "name": "a"}, {"id": 9, "name": "b"}],
        "annotations": [],
    }
    for b in boxes_a:
        gt["annotations"].append(
            {
                "id": len(gt["annotations"]) + 1,
                "image_id": 7,
                "category_id": 5,
                "bbox": list(b),
                "area": 100,
                "iscrowd": 0,
                "segmentation": _box_rle(H, W, b),
            }
        )
    gt["annotations"].append(
        {
            "id": 99,
            "image_id": 7,
            "category_id": 5,
            "bbox": list(crowd),
            "area": 1600,
            "iscrowd": 1,
            "segmentation": _box_rle(H, W, crowd),
        }
    )
    gt["annotations"].append(
        {
            "id": 100,
            "image_id": 7,
            "category_id": 9,
            "bbox": [60, 60, 20, 20],
            "area": 400,
            "iscrowd": 0,
            "segmentation": _box_rle(H, W, (60, 60, 20, 20)),
        }
    )
    a = [
        (0.9, (0, 0, 10, 10)),
        (0.8, (20, 0, 10, 10)),
        (0.7, (70, 0, 10, 10)),
        (0.6, (40, 0, 10, 10)),
        (0.5, (70, 20, 10, 10)),
        (0.4, (70, 40, 10, 10)),
        (0.95, (5, 65, 10, 10)),
    ]  # the last one: on the crowd
    insts = [_instance(1, "a", s, b, _box_rle(H, W, b)) for s, b in a]
    insts += [
        _instance(2, "B", 0.3, (60, 60, 20, 19), _box_rle(H, W, (60, 60, 20, 19))),
        _instance(2, "B", 0.2, (0, 30, 5, 5), _box_rle(H, W, (0, 30, 5, 5))),
        _instance(3, "zebra", 0.9, (0, 30, 5, 5), _box_rle(H, W, (0, 30, 5, 5))),
    ]
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt))
    # image id 123 != GT id 7: matched by file name
    shards = write_shards(
        tmp_path / "shards", [_row(123, "/data/x.jpg", W, H, insts), _row(124, "/data/y.jpg", W, H, [])]
    )
    return gt_path, shards


def test_tune_thresholds_hand_built_case(tmp_path):
    gt_path, shards = _hand_built(tmp_path)
    rep = tune_thresholds(str(gt_path), str(shards))
    rows = {c.name: c for c in rep.classes}
    assert rep.iou_type == "segm" and rep.images == 1
    assert rows["a"].threshold == 0.6 and rows["a"].f1 == pytest.approx(6 / 7) and rows["a"].num_gt == 3
    assert rows["a"].num_detections == 7  # the crowd detection is ignored, not a false positive
    assert rows["b"].threshold == 0.3 and rows["b"].precision == 1.0 and rows["b"].recall == 1.0
    assert any("'zebra'" in n for n in rep.notices) and any(
        "'B' matched the ground truth's 'b'" in n for n in rep.notices
    )
    assert any("not images of the ground truth" in n for n in rep.notices)
    assert rep.to_map() == {"a": 0.6, "b": 0.3}
    prec = tune_thresholds(str(gt_path), str(shards), target="precision=0.9")
    assert {c.name: c.threshold for c in prec.classes} == {"a": 0.8, "b": 0.3}
    # box IoU gives the same here (box masks)
    assert tune_thresholds(str(gt_path), str(shards), iou_type="bbox").to_map() == {"a": 0.6, "b": 0.3}


def test_thresholds_cli_writes_a_map_merge_reads(tmp_path):
    gt_path, shards = _hand_built(tmp_path)
    out = tmp_path / "th.yaml"
    r = CliRunner().invoke(
        main,
        ["thresholds", "--annotations", str(gt_path), "--shards", str(shards), "--out", str(out), "--default", "0.5"],
    )
    assert r.exit_code == 0, r.output
    assert "class" in r.output and "threshold" in r.output and "precision" in r.output and "#GT" in r.output
    assert f"wrote {out}: 2 class threshold(s), default 0.5" in r.output
    th = ScoreThresholds.load(str(out))
    assert th.to_dict() == {"default": 0.5, "a": 0.6, "b": 0.3}
    assert out.read_text().startswith("# per-class score thresholds")
    res = tmp_path / "r.json"
    merge_results(str(shards), str(res), score_threshold=str(out))
    kept = sorted(d["score"] for d in json.loads(res.read_text()))
    assert kept == [0.3, 0.6, 0.7, 0.8, 0.9, 0.9, 0.95]  # a >= .6 (crowd det .95 too), b >= .3, zebra >= default .5
    r = CliRunner().invoke(
        main,
        [
            "thresholds",
            "--annotations",
            str(gt_path),
            "--shards",
            str(shards),
            "--out",
            str(tmp_path / "t.json"),
            "--target",
            "precision=2",
        ],
    )
    assert r.exit_code != 0 and "--target" in r.output


def test_thresholds_end_to_end_on_synthetic_shards(tmp_path, coco_mini):
    """Noisy detections on 40 COCO images; applying the written map reproduces the table's precision/recall."""
    gt = json.loads((coco_mini / "annotations" / "instances_val2017.json").read_text())
    rng = np.random.default_rng(3)
    images = sorted(gt["images"], key=lambda im: im["id"])[:40]
    names = {c["id"]: c["name"] for c in gt["categories"]}
    from ntt_batch.storage.masks import segmentation_to_rle

    rows = []
    for im in images:
        insts = []
        for a in (a for a in gt["annotations"] if a["image_id"] == im["id"] and not a["iscrowd"]):
            if rng.random() < 0.15:
                continue  # a miss
            rle = segmentation_to_rle(a["segmentation"], im["height"], im["width"])
            good = rng.random() < 0.75
            score = rng.uniform(0.4, 1.0) if good else rng.uniform(0.0, 0.7)
            if not good:  # a wrong mask: shifted far away
                x, y, w, h = (int(v) for v in a["bbox"])
                box = (min(im["width"] - 1, x + w + 5) % im["width"], y, max(1, w // 2), max(1, h // 2))
                rle = _box_rle(im["height"], im["width"], box)
            insts.append(_instance(a["category_id"], names[a["category_id"]], score, a["bbox"], rle))
        rows.append(_row(im["id"], f"{coco_mini}/val2017/{im['file_name']}", im["width"], im["height"], insts))
    shards = write_shards(tmp_path / "s", rows, per_file=15)
    sub = dict(
        gt, images=images, annotations=[a for a in gt["annotations"] if a["image_id"] in {im["id"] for im in images}]
    )
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(sub))
    rep = tune_thresholds(str(gt_path), str(shards))
    tuned = [c for c in rep.classes if c.threshold is not None]
    assert len(tuned) >= 10 and rep.images == 40
    for c in tuned:
        assert 0 <= c.threshold <= 1 and 0 < c.f1 <= 1
    # applying the map reproduces the table: re-tune on the merged (thresholded) detections
    out = tmp_path / "th.yaml"
    r = CliRunner().invoke(
        main, ["thresholds", "--annotations", str(gt_path), "--shards", str(shards), "--out", str(out)]
    )
    assert r.exit_code == 0, r.output
    kept = tmp_path / "kept"
    kept_rows = []
    th = ScoreThresholds.load(str(out))
    for row in rows:
        insts = [i for i in row["instances"] if th.keep(i["category_id"], i["category_name"], np.float32(i["score"]))]
        kept_rows.append(dict(row, instances=insts, num_instances=len(insts), status="ok" if insts else "empty"))
    write_shards(kept, kept_rows)
    again = {c.name: c for c in tune_thresholds(str(gt_path), str(kept)).classes}
    for c in tuned:
        a = again[c.name]
        assert (
            a.num_detections >= 1 and a.precision == pytest.approx(c.precision) and a.recall == pytest.approx(c.recall)
        )
