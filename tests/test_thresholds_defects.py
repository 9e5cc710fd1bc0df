"""`ntt-batch thresholds` defects found by a labeling team (issue 18):

* a class whose detections are all false positives (F1 = 0 at every threshold) got a cut-off at its
  top score, keeping its false positives: it now gets one above its highest score, which drops them;
* ground-truth classes the memory bank lacks were listed as "never predicted": they are listed apart,
  as "not in the memory bank" (the bank's classes come from the run record);
* long class names were cut at 24 characters and "-" cells shifted the columns: widths are computed.

Real components: shards written as Parquet, the run record written by ``OutputFolder.write_run``,
pycocotools matching, the CLI through click, the written map applied by ``merge``.
"""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner
from test_merge_eval_viz import _box_rle, _instance, _row, write_shards

from ntt_batch.cli import main
from ntt_batch.eval.threshold_fit import above_score, format_table, tune_thresholds
from ntt_batch.exports import merge_results
from ntt_batch.exports.score_filter import ScoreThresholds
from ntt_batch.output.folder import OutputFolder

H = W = 100
LONG = "traffic light with a pedestrian crossing signal"  # longer than the old 24-character column
GT_CLASSES = {5: "a", 6: "ghost", 7: LONG, 8: "sleepy", 9: "zebra crossing"}
BANK_CLASSES = ["a", "ghost", LONG, "sleepy"]  # no "zebra crossing"


def _case(tmp_path, *, with_record: bool = True):
    tmp_path.mkdir(parents=True, exist_ok=True)
    gt_boxes = {5: [(0, 0, 10, 10)], 6: [(20, 20, 10, 10), (40, 40, 10, 10)], 7: [(60, 0, 20, 20)]}
    gt_boxes |= {8: [(0, 60, 10, 10)], 9: [(60, 60, 20, 20)]}
    gt = {
        "images": [{"id": 1, "file_name": "x.jpg", "width": W, "height": H}],
        "categories": [{"id": k, "name": v} for k, v in GT_CLASSES.items()],
        "annotations": [],
    }
    for cid, boxes in gt_boxes.items():
        for b in boxes:
            gt["annotations"].append(
                {
                    "id": len(gt["annotations"]) + 1,
                    "image_id": 1,
                    "category_id": cid,
                    "bbox": list(b),
                    "area": b[2] * b[3],
                    "iscrowd": 0,
                    "segmentation": _box_rle(H, W, b),
                }
            )
    dets = [
        (1, "a", 0.9, (0, 0, 10, 10)),  # TP
        (1, "a", 0.5, (80, 80, 10, 10)),  # FP
        (2, "ghost", 0.62, (85, 5, 10, 10)),  # FP
        (2, "ghost", 0.31, (85, 30, 10, 10)),  # FP: every ghost detection is wrong
        (3, LONG, 0.7, (60, 0, 20, 20)),  # TP
    ]
    insts = [_instance(c, n, s, b, _box_rle(H, W, b)) for c, n, s, b in dets]
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt))
    shards = write_shards(tmp_path / "shards", [_row(1, "/data/x.jpg", W, H, insts)])
    if with_record:
        OutputFolder(str(shards)).write_run(
            {"memory_bank": {"categories": [{"id": i + 1, "name": n} for i, n in enumerate(BANK_CLASSES)]}}
        )
    return gt_path, shards


@pytest.mark.parametrize("target", ["f1", "precision=0.9"])
def test_all_false_positive_class_gets_a_cut_off_above_its_scores(tmp_path, target):
    gt_path, shards = _case(tmp_path)
    rows = {c.name: c for c in tune_thresholds(str(gt_path), str(shards), target=target).classes}
    ghost = rows["ghost"]
    assert ghost.all_false_positives and ghost.true_positives == 0
    assert ghost.threshold == 0.63 > 0.62  # the next 0.01 step above the highest score
    assert ghost.precision is None and ghost.recall == 0.0 and ghost.f1 == 0.0
    assert "no useful threshold: every detection is a false positive (2)" in ghost.note
    assert not rows["a"].all_false_positives and rows["a"].threshold is not None and rows["a"].true_positives == 1


def test_written_map_drops_the_false_positives_of_such_a_class(tmp_path):
    gt_path, shards = _case(tmp_path)
    out = tmp_path / "th.yaml"
    r = CliRunner().invoke(
        main, ["thresholds", "--annotations", str(gt_path), "--shards", str(shards), "--out", str(out)]
    )
    assert r.exit_code == 0, r.output
    th = ScoreThresholds.load(str(out))
    assert th.to_dict()["ghost"] == 0.63
    res = tmp_path / "r.json"
    merge_results(str(shards), str(res), score_threshold=str(out))
    kept = sorted((d["category_id"], d["score"]) for d in json.loads(res.read_text()))
    assert all(cid != 2 for cid, _ in kept), kept  # no ghost detection survives
    assert (1, 0.9) in kept and (3, 0.7) in kept
    # the table (printed, and as comments in the file) says why
    assert "no useful threshold: every detection is a false positive" in r.output
    assert "# ghost" in out.read_text()


def test_classes_the_bank_lacks_are_listed_apart(tmp_path):
    gt_path, shards = _case(tmp_path)
    rep = tune_thresholds(str(gt_path), str(shards))
    assert [c.name for c in rep.not_in_bank] == ["zebra crossing"] and rep.not_in_bank[0].num_gt == 1
    rows = {c.name: c for c in rep.classes}
    assert "zebra crossing" not in rows
    assert rows["sleepy"].note == "never predicted: not tuned" and rows["sleepy"].in_bank  # no detection here
    assert rep.not_in_bank[0].in_bank is False and rep.not_in_bank[0].note == "not in the memory bank"
    table = format_table(rep)
    assert "never predicted" not in next(ln for ln in table.splitlines() if "zebra" in ln)
    assert re.search(r"^not in the memory bank \(1 ground-truth class\(es\).*: zebra crossing \(1 GT\)$", table, re.M)
    r = CliRunner().invoke(
        main,
        ["thresholds", "--annotations", str(gt_path), "--shards", str(shards), "--out", str(tmp_path / "t.json")],
    )
    assert r.exit_code == 0 and "not in the memory bank" in r.output and "zebra crossing (1 GT)" in r.output
    # without a run record the bank's classes are unknown: every class without detections is "never predicted"
    gt_path, shards = _case(tmp_path / "no_record", with_record=False)
    rep = tune_thresholds(str(gt_path), str(shards))
    assert rep.not_in_bank == []
    assert {c.name: c.note for c in rep.classes}["zebra crossing"] == "never predicted: not tuned"


def test_table_columns_line_up_with_long_names_and_empty_cells(tmp_path):
    gt_path, shards = _case(tmp_path)
    rep = tune_thresholds(str(gt_path), str(shards))
    lines = format_table(rep).splitlines()
    header, rows = lines[1], [ln for ln in lines[2:] if not ln.startswith("not in the memory bank")]
    assert len(rows) == len(rep.classes) == 4
    assert any(ln.startswith(LONG + " ") for ln in rows)  # the whole name, not cut
    # every numeric column ends where its header ends, whatever the cell ("-" included)
    for name in ("threshold", "precision", "recall", "F1", "#GT", "#det"):
        end = re.search(rf"(?<!\S){re.escape(name)}(?!\S)", header).end()
        for ln in rows:
            assert ln[end - 1] != " " and (len(ln) == end or ln[end] == " "), (name, ln)
    assert " - " in next(ln for ln in rows if ln.startswith("sleepy "))  # empty cells are checked above too


def test_above_score():
    assert above_score(0.62) == 0.63 and above_score(0.3) == 0.31 and above_score(0.30000001192092896) == 0.31
    assert above_score(0.995) == 1.0 and above_score(1.0) == 1.0 and above_score(0.0) == 0.01
