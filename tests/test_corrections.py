"""`ntt-batch corrections` (ISSUE 18 item 3): a review back into gold labels, references and thresholds.

The Label Studio fixtures under tests/data/label_studio/ were produced by a real Label Studio
1.23.2 server (benchmarks/label_studio_roundtrip.sh: our tasks imported, reviewed through the
HTTP API, exported as JSON; the log is roundtrip.log). What its reviewer did is in
reviewer_actions.json, and every count below is checked against that file. The before/after
precision/recall table is recomputed here with plain numpy masks, independently of the package.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from ntt_batch.cli import main
from ntt_batch.corrections import apply_corrections
from ntt_batch.corrections.brush import brush_mask, decode_brush_rle
from ntt_batch.eval.threshold_fit import tune_thresholds
from ntt_batch.exports.score_filter import ScoreThresholds
from ntt_batch.output.shards import rows_to_table
from ntt_batch.references.files import load_references, validate_references
from ntt_batch.viz.review_decisions import validate_decisions

FIX = Path(__file__).parent / "data" / "label_studio"
SHARDS = FIX / "out"


def _rows(shards: Path) -> dict[int, dict]:
    rows = {}
    for p in sorted(shards.glob("*.parquet")):
        for r in pq.read_table(p).to_pylist():
            rows[r["image_id"]] = r
    return rows


def _decode(rle: dict) -> np.ndarray:
    counts = rle["counts"]
    return mask_utils.decode({"size": rle["size"], "counts": counts.encode() if isinstance(counts, str) else counts})


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def _independent_counts(reviewed: dict, dets: dict[int, list[dict]], thr: dict, iou: float) -> dict[str, tuple]:
    """Per class (name): (#det kept, TP, #gold), greedy by score over numpy masks (no crowd regions here)."""
    names = {c["id"]: c["name"] for c in reviewed["categories"]}
    out: dict[str, list[int]] = {}
    for im in reviewed["images"]:
        gold = [a for a in reviewed["annotations"] if a["image_id"] == im["id"]]
        classes = {names[a["category_id"]] for a in gold} | {d["category_name"] for d in dets[im["id"]]}
        for name in classes:
            t = thr.get(name, thr.get("default"))
            ds = [d for d in dets[im["id"]] if d["category_name"] == name and (t is None or d["score"] >= t)]
            ds.sort(key=lambda d: -d["score"])
            gs = [_decode(a["segmentation"]) for a in gold if names[a["category_id"]] == name]
            taken = [False] * len(gs)
            tp = 0
            for d in ds:
                m = _decode(d["segmentation"])
                ious = [(_iou(m, g) if not taken[k] else -1.0) for k, g in enumerate(gs)]
                if ious and max(ious) >= iou:
                    taken[int(np.argmax(ious))] = True
                    tp += 1
            c = out.setdefault(name, [0, 0, 0])
            c[0] += len(ds)
            c[1] += tp
            c[2] += len(gs)
    return {k: tuple(v) for k, v in out.items()}


def _check_table(rep, reviewed: dict, dets: dict[int, list[dict]], current: dict, after: dict) -> None:
    before_c = _independent_counts(reviewed, dets, current, rep.iou_match)
    after_c = _independent_counts(reviewed, dets, after, rep.iou_match)
    assert {c.name for c in rep.classes} == set(before_c)
    for c in rep.classes:
        nd, tp, ng = before_c[c.name]
        assert (c.before_detections, c.before_true_positives, c.gold) == (nd, tp, ng), c.name
        assert c.before_precision == (tp / nd if nd else None)
        assert c.before_recall == (tp / ng if ng else None)
        nd, tp, ng = after_c[c.name]
        assert (c.after_detections, c.after_true_positives) == (nd, tp), c.name
        assert c.after_precision == (tp / nd if nd else None)
        assert c.after_recall == (tp / ng if ng else None)


# ----------------------------------------------------------------------------- brush RLE


def _bits(*fields: tuple[int, int]) -> list[int]:
    s = "".join(format(v, f"0{n}b") for v, n in fields)
    s += "0" * (-len(s) % 8)
    return [int(s[i : i + 8], 2) for i in range(0, len(s), 8)]


def test_brush_decoder_on_a_hand_written_stream():
    # header: 7 values, word 8 bits, run-length field widths 3, 4, 8, 16; then:
    # a run of 4 x 0 (flag 1, width #0, n-1 = 3), 2 literals 255 and 7 (flag 0, width #0, n-1 = 1),
    # a run of 1 x 9 (flag 1, width #1 (4 bits), n-1 = 0)
    rle = _bits(
        (7, 32), (7, 5), (2, 4), (3, 4), (7, 4), (15, 4),
        (1, 1), (0, 2), (3, 3), (0, 8),
        (0, 1), (0, 2), (1, 3), (255, 8), (7, 8),
        (1, 1), (1, 2), (0, 4), (9, 8),
    )  # fmt: skip
    assert decode_brush_rle(rle).tolist() == [0, 0, 0, 0, 255, 7, 9]
    with pytest.raises(ValueError, match="ends early"):
        decode_brush_rle(rle[:-3])
    with pytest.raises(ValueError, match="0-255"):
        decode_brush_rle([1, 300])
    with pytest.raises(ValueError, match="expected 1 x 2 x 4"):
        brush_mask(rle, 1, 2)


def test_brush_region_from_label_studio_is_pixel_exact():
    """The reviewer painted the missed hot dog: label-studio-sdk's mask2rle of a PIL-rasterised polygon,
    stored and exported by the server; decoding it gives back exactly that mask."""
    export = json.loads((FIX / "export.json").read_text())
    key = json.loads((FIX / "review_key.json").read_text())
    task = next(t for t in export if t["data"]["image_id"] == 20992)
    res = next(r for r in task["annotations"][-1]["result"] if r["type"] == "brushlabels")
    w, h = res["original_width"], res["original_height"]
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in key["20992"]["missing"][0]["polygons"]:
        draw.polygon(list(zip(poly[0::2], poly[1::2])), fill=255)
    expected = np.array(canvas) > 0
    got = brush_mask(res["value"]["rle"], h, w)
    assert got.shape == (h, w) and got.sum() > 1000
    assert np.array_equal(got, expected)


# ----------------------------------------------------------------------------- Label Studio (real server fixtures)


@pytest.fixture(scope="module")
def ls_result(tmp_path_factory):
    dest = tmp_path_factory.mktemp("ls") / "corr"
    rep = apply_corrections(str(SHARDS), label_studio=str(FIX / "export.json"), dest_dir=dest)
    return rep, dest


def test_label_studio_export_counts_match_what_the_reviewer_did(ls_result):
    rep, dest = ls_result
    actions = json.loads((FIX / "reviewer_actions.json").read_text())
    rows = _rows(SHARDS)
    reviewed_ids = {int(i) for i, a in actions.items() if not a.get("skipped")}
    assert rep.images_reviewed == len(reviewed_ids) == 3
    assert rep.input_counts["tasks"] == 4 and rep.input_counts["tasks_not_reviewed"] == 1
    n_acc = sum(len(a["accepted"]) for a in actions.values())
    n_del = sum(len(a["deleted"]) for a in actions.values())
    n_rel = sum(len(a["relabelled"]) for a in actions.values())
    n_add = sum(len(a["added"]) for a in actions.values())
    assert (n_acc, n_del, n_rel, n_add) == (6, 2, 1, 2)
    assert rep.counts["accepted"] == n_acc and rep.counts["rejected"] == n_del
    assert rep.counts["relabelled"] == n_rel and rep.counts["missed"] == n_add
    # further parts of one instance (ids <image>_<k>_<part>, from the polygon export) are joined back
    export = json.loads((FIX / "export.json").read_text())
    final = [max(t["annotations"], key=lambda a: a["updated_at"]) for t in export if t["data"]["image_id"] != 802]
    parts = sum(1 for a in final for r in a["result"] if str(r["id"]).count("_") == 2)
    assert rep.input_counts.get("joined_parts", 0) == parts
    assert parts == 1  # with today's polygon export: the dining table of 22892 has a second part
    assert rep.negatives == n_del + n_rel and rep.positives == n_rel + n_add

    # negatives: the deleted and the relabelled detections, as references of their *predicted* class
    neg = load_references(dest / "negatives.json")
    names = {c["id"]: c["name"] for c in neg["categories"]}
    expected_neg = sorted(
        [(int(i), k, rows[int(i)]["instances"][k]["category_name"]) for i, a in actions.items() for k in a["deleted"]]
        + [(int(i), r["instance"], r["from"]) for i, a in actions.items() for r in a["relabelled"]]
    )
    got_neg = sorted((r["image_id"], r["review"]["instance"], names[r["category_id"]]) for r in neg["references"])
    assert got_neg == expected_neg
    for r in neg["references"]:
        inst = rows[r["image_id"]]["instances"][r["review"]["instance"]]
        assert r["segmentation"] == inst["segmentation"]  # the shard's mask, exactly
        assert r["file_name"] == Path(rows[r["image_id"]]["image_uri"]).name
        assert str(Path(r["image_root"]) / r["file_name"]) == rows[r["image_id"]]["image_uri"]
        assert r["bbox"] == [
            float(v)
            for v in mask_utils.toBbox({**inst["segmentation"], "counts": inst["segmentation"]["counts"].encode()})
        ]

    # positives: the relabelled instance (new class) and the two added ones, with the reviewer's masks
    pos = load_references(dest / "positives.json")
    validate_references(json.loads((dest / "positives.json").read_text()))
    pnames = {c["id"]: c["name"] for c in pos["categories"]}
    expected_pos = sorted(
        [r["to"] for a in actions.values() for r in a["relabelled"]]
        + [x["label"] for a in actions.values() for x in a["added"]]
    )
    assert sorted(pnames[r["category_id"]] for r in pos["references"]) == expected_pos
    brush = next(r for r in pos["references"] if pnames[r["category_id"]] == "hot dog")
    assert int(_decode(brush["segmentation"]).sum()) == actions["20992"]["added"][0]["pixels"]
    key = json.loads((FIX / "review_key.json").read_text())
    plant = next(r for r in pos["references"] if pnames[r["category_id"]] == "potted plant")
    poly = max(key["22892"]["missing"][0]["polygons"], key=len)
    drawn = mask_utils.decode(mask_utils.frPyObjects([poly], plant["height"], plant["width"]))[:, :, 0]
    assert _iou(_decode(plant["segmentation"]), drawn) > 0.95  # points went through % of width/height and back
    glove = next(r for r in pos["references"] if pnames[r["category_id"]] == "baseball glove")
    pred = rows[10764]["instances"][1]["segmentation"]
    assert glove["review"]["status"] == "relabelled" and glove["review"]["predicted"] == "dog"
    assert _iou(_decode(glove["segmentation"]), _decode(pred)) > 0.8  # the exported polygon of the prediction


def test_label_studio_reviewed_coco_thresholds_and_table(ls_result):
    rep, dest = ls_result
    actions = json.loads((FIX / "reviewer_actions.json").read_text())
    coco = COCO(str(dest / "reviewed.json"))
    assert sorted(coco.getImgIds()) == sorted(int(i) for i, a in actions.items() if not a.get("skipped"))
    reviewed = json.loads((dest / "reviewed.json").read_text())
    n_expected = sum(len(a["accepted"]) + len(a["relabelled"]) + len(a["added"]) for a in actions.values())
    assert len(coco.getAnnIds()) == n_expected == rep.gold_instances
    statuses = sorted(a["review"]["status"] for a in reviewed["annotations"])
    assert statuses.count("accepted") == 6 and statuses.count("relabelled") == 1 and statuses.count("missed") == 2
    for a in reviewed["annotations"]:  # every gold mask decodes at its image's size and has its area/box
        m = coco.annToMask(a)
        assert m.sum() == a["area"] > 0
    # the deleted detections are not gold
    rows = _rows(SHARDS)
    for i, act in actions.items():
        for k in act["deleted"]:
            fp = _decode(rows[int(i)]["instances"][k]["segmentation"])
            assert all(_iou(fp, coco.annToMask(a)) < 0.5 for a in coco.loadAnns(coco.getAnnIds(imgIds=[int(i)])))

    th = yaml.safe_load((dest / "thresholds.yaml").read_text())
    assert th == rep.thresholds
    loaded = ScoreThresholds.load(str(dest / "thresholds.yaml"))
    assert loaded.threshold(0, "dog") == th["dog"] and loaded.threshold(0, "person") == th["person"]
    # the planted false positives (dog 0.41, person 0.37) are below the refit thresholds, the real ones above
    assert 0.41 < th["dog"] <= float(np.float32(rows[22892]["instances"][0]["score"]))
    assert 0.37 < th["person"] <= float(np.float32(rows[10764]["instances"][0]["score"]))

    dets = {i: rows[i]["instances"] for i in coco.getImgIds()}
    _check_table(rep, reviewed, dets, {}, th)
    fit = {c.name: c for c in tune_thresholds(str(dest / "reviewed.json"), str(SHARDS), iou_type="segm").classes}
    for c in rep.classes:  # after = the fit's own precision/recall at the threshold it chose
        if fit[c.name].threshold is not None:
            assert (c.after_precision, c.after_recall) == (fit[c.name].precision, fit[c.name].recall)
    md = (dest / "report.md").read_text()
    assert "| dog | 1 | - | 3 | 1 | 0.333 | 1.000 |" in md
    assert json.loads((dest / "report.json").read_text())["negatives"] == 3


def test_label_studio_latest_annotation_counts_and_cancelled_is_not_reviewed(tmp_path):
    export = json.loads((FIX / "export.json").read_text())
    t = next(t for t in export if t["data"]["image_id"] == 10764)
    assert len(t["annotations"]) == 2  # a first pass accepting all, then the corrected one
    swapped = copy.deepcopy(export)
    ts = next(t for t in swapped if t["data"]["image_id"] == 10764)
    first, second = ts["annotations"]
    first["updated_at"], second["updated_at"] = second["updated_at"], first["updated_at"]
    p = tmp_path / "swapped.json"
    p.write_text(json.dumps(swapped))
    rep = apply_corrections(str(SHARDS), label_studio=str(p), dest_dir=tmp_path / "c")
    # the first pass now counts: its 3 regions are the predictions themselves → nothing rejected on 10764
    assert rep.counts["rejected"] == 1 and rep.counts["relabelled"] == 0 and rep.negatives == 1
    # all annotations cancelled → not reviewed at all
    for task in swapped:
        for a in task["annotations"]:
            a["was_cancelled"] = True
    p.write_text(json.dumps(swapped))
    with pytest.raises(ValueError, match="none of its 4 task"):
        apply_corrections(str(SHARDS), label_studio=str(p), dest_dir=tmp_path / "d")
    tasks_only = tmp_path / "tasks_only.json"
    tasks_only.write_text((FIX / "tasks.json").read_text())
    with pytest.raises(ValueError, match="has a submitted annotation"):
        apply_corrections(str(SHARDS), label_studio=str(tasks_only), dest_dir=tmp_path / "e")


def test_label_studio_rows_found_by_image_id_when_uris_differ(tmp_path):
    """Shards moved (other image URIs): tasks are tied to rows by data.image_id."""
    rows = list(_rows(SHARDS).values())
    for r in rows:
        r["image_uri"] = "s3://bucket/moved/" + Path(r["image_uri"]).name
    out = tmp_path / "out"
    (out / "_ntt").mkdir(parents=True)
    pq.write_table(rows_to_table(rows), out / "part-00000.parquet")
    (out / "_ntt" / "run.json").write_text((SHARDS / "_ntt" / "run.json").read_text())
    rep = apply_corrections(str(out), label_studio=str(FIX / "export.json"), dest_dir=tmp_path / "c")
    assert rep.images_reviewed == 3 and rep.negatives == 3 and rep.positives == 3
    neg = json.loads((tmp_path / "c" / "negatives.json").read_text())
    assert {r["image_root"] for r in neg["references"]} == {"s3://bucket/moved"}


def test_cli_corrections_label_studio(tmp_path):
    res = CliRunner().invoke(
        main,
        ["corrections", "--shards", str(SHARDS), "--label-studio", str(FIX / "export.json"), "--out", str(tmp_path)],
    )
    assert res.exit_code == 0, res.output
    assert "3 negative reference(s), 3 positive reference(s)" in res.output
    assert "| person | 2 | - | 3 | 2 | 0.667 | 1.000 |" in res.output
    for f in ("reviewed.json", "negatives.json", "positives.json", "thresholds.yaml", "report.md", "report.json"):
        assert (tmp_path / f).is_file(), f
    res = CliRunner().invoke(
        main,
        ["corrections", "--shards", str(SHARDS), "--coco", "a.json", "--decisions", "b.json", "--out", str(tmp_path)],
    )
    assert res.exit_code == 2 and "exactly one of" in res.output


# ----------------------------------------------------------------------------- decisions file


def _decision(row: dict, k: int, action: str, cat: dict | None = None, original_of: int | None = None) -> dict:
    inst = row["instances"][original_of if original_of is not None else k]
    cid = cat["id"] if cat else inst["category_id"]
    return {
        "image_id": row["image_id"],
        "image_uri": row["image_uri"],
        "instance": k,
        "action": action,
        "category_id": cid,
        "category_name": cat["name"] if cat else inst["category_name"],
        "original": {
            "category_id": inst["category_id"],
            "category_name": inst["category_name"],
            "score": float(str(np.float32(inst["score"]))),
            "bbox": inst["bbox"],
        },
        "reviewer": "test",
        "decided_at": "2025-01-02T10:00:00Z",
    }


@pytest.fixture(scope="module")
def decisions_case(tmp_path_factory):
    """The fixture's rows plus a duplicate detection (a second, lower-scored 'dog' on the dog of 22892)."""
    d = tmp_path_factory.mktemp("dec")
    rows = _rows(SHARDS)
    dup = dict(rows[22892]["instances"][0], score=0.5)
    rows[22892]["instances"].append(dup)
    rows[22892]["num_instances"] += 1
    out = d / "out"
    (out / "_ntt").mkdir(parents=True)
    pq.write_table(rows_to_table(list(rows.values())), out / "part-00000.parquet")
    run = json.loads((SHARDS / "_ntt" / "run.json").read_text())
    (out / "_ntt" / "run.json").write_text(json.dumps(run))
    cats = run["memory_bank"]["categories"]
    glove = next(c for c in cats if c["name"] == "baseball glove")
    r1, r2, r3 = rows[10764], rows[20992], rows[22892]
    decisions = [
        _decision(r1, 0, "accept"),
        _decision(r1, 1, "relabel", glove),
        _decision(r1, 2, "reject"),
        _decision(r2, 1, "accept", original_of=0),  # index and original disagree: found by the original
        _decision(r2, 0, "reject", original_of=1),
        dict(_decision(r2, 0, "reject"), instance=5, original={"category_id": 1, "score": 0.5, "bbox": [1, 2, 3, 4]}),
        _decision(r3, 0, "accept"),
        _decision(r3, 1, "accept"),
        _decision(r3, 2, "accept"),
        _decision(r3, 4, "reject"),  # the duplicate; #3 (chair) stays undecided
    ]
    doc = {
        "format": "ntt-batch/review-decisions",
        "version": 1,
        "output": str(out),
        "run_id": "label-studio-fixture",
        "run_ids": ["label-studio-fixture"],
        "memory_bank_hash": "label-studio-fixture",
        "review": {"created_at": "2025-01-02T09:00:00+00:00", "thresholds": "none", "seed": 0, "limit": 200},
        "categories": cats,
        "reviewer": "test",
        "saved_at": "2025-01-02T10:14:03Z",
        "decisions": sorted(decisions, key=lambda x: (x["image_uri"], x["instance"])),
    }
    validate_decisions(doc)
    path = d / "decisions.json"
    path.write_text(json.dumps(doc))
    rep = apply_corrections(str(out), decisions=str(path), dest_dir=d / "corr")
    return rep, d / "corr", rows


def test_decisions_counts_and_references(decisions_case):
    rep, dest, rows = decisions_case
    assert rep.decisions_in == 10 and rep.input_counts["stale"] == 1
    assert rep.images_reviewed == 3
    assert rep.counts == {"accepted": 5, "relabelled": 1, "rejected": 2, "duplicates": 1, "undecided": 1}
    assert any("another index" in n for n in rep.notices) and any("stale" in n for n in rep.notices)
    neg = load_references(dest / "negatives.json")
    names = {c["id"]: c["name"] for c in neg["categories"]}
    got = sorted(
        (r["image_id"], r["review"]["instance"], names[r["category_id"]], r["review"]["status"])
        for r in neg["references"]
    )
    assert got == [(10764, 1, "dog", "relabelled"), (10764, 2, "dog", "rejected"), (20992, 1, "person", "rejected")]
    pos = load_references(dest / "positives.json")
    assert [(r["image_id"], r["review"]["instance"]) for r in pos["references"]] == [(10764, 1)]
    assert pos["categories"] == [{"id": 40, "name": "baseball glove"}]
    assert pos["references"][0]["segmentation"] == rows[10764]["instances"][1]["segmentation"]


def test_decisions_reviewed_coco_and_table(decisions_case):
    rep, dest, rows = decisions_case
    coco = COCO(str(dest / "reviewed.json"))
    reviewed = json.loads((dest / "reviewed.json").read_text())
    assert sorted(coco.getImgIds()) == [10764, 20992, 22892]
    got = sorted(
        (a["image_id"], a["review"]["instance"], coco.cats[a["category_id"]]["name"]) for a in reviewed["annotations"]
    )
    assert got == [
        (10764, 0, "person"), (10764, 1, "baseball glove"), (20992, 0, "person"),
        (22892, 0, "dog"), (22892, 1, "cat"), (22892, 2, "dining table"),
    ]  # fmt: skip
    assert {im["id"]: im["review"]["undecided"] for im in reviewed["images"]} == {10764: 0, 20992: 0, 22892: 1}
    # evaluation and the refit see the decided instances only (the undecided chair is out)
    fit_dets = sum(c["num_detections"] for c in rep.threshold_fit["classes"])
    assert fit_dets == 9
    decided = {
        (10764, 0),
        (10764, 1),
        (10764, 2),
        (20992, 0),
        (20992, 1),
        (22892, 0),
        (22892, 1),
        (22892, 2),
        (22892, 4),
    }
    dets = {i: [x for k, x in enumerate(rows[i]["instances"]) if (i, k) in decided] for i in (10764, 20992, 22892)}
    th = yaml.safe_load((dest / "thresholds.yaml").read_text())
    ScoreThresholds.load(str(dest / "thresholds.yaml"))
    _check_table(rep, reviewed, dets, {}, th)
    assert "chair" not in {c.name for c in rep.classes}


def test_decisions_refused_when_they_are_not_of_this_output(tmp_path):
    doc = {
        "format": "ntt-batch/review-decisions", "version": 1, "output": "/elsewhere",
        "decisions": [
            {"image_id": 1, "image_uri": "/elsewhere/a.jpg", "instance": 0, "action": "accept", "category_id": 1,
             "original": {"category_id": 1, "score": 0.5, "bbox": [0, 0, 1, 1]}, "decided_at": "2025-01-01T00:00:00Z"}
        ],
    }  # fmt: skip
    p = tmp_path / "d.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="none of the decisions"):
        apply_corrections(str(SHARDS), decisions=str(p), dest_dir=tmp_path / "c")
    p.write_text(json.dumps({**doc, "version": 2}))
    with pytest.raises(ValueError, match="version 2 is not supported"):
        apply_corrections(str(SHARDS), decisions=str(p), dest_dir=tmp_path / "c")
    assert not (tmp_path / "c").exists()  # nothing written before the inputs are read
    with pytest.raises(ValueError, match="exactly one review input"):
        apply_corrections(str(SHARDS), decisions=str(p), coco=str(p), dest_dir=tmp_path / "c")


# ----------------------------------------------------------------------------- COCO file


@pytest.fixture(scope="module")
def gt_subset(coco_mini, tmp_path_factory) -> tuple[Path, dict]:
    gt = json.loads((coco_mini / "annotations" / "instances_val2017.json").read_text())
    ids = {802, 10764, 20992, 22892}
    sub = {
        "images": [im for im in gt["images"] if im["id"] in ids],
        "annotations": [a for a in gt["annotations"] if a["image_id"] in ids],
        "categories": gt["categories"],
    }
    p = tmp_path_factory.mktemp("gt") / "gold.json"
    p.write_text(json.dumps(sub))
    return p, sub


def test_coco_input_full_gold(gt_subset, tmp_path):
    path, sub = gt_subset
    rep = apply_corrections(str(SHARDS), coco=str(path), dest_dir=tmp_path)
    # 4 images; planted mistakes: glove predicted as dog (relabel), 2 false blobs, hot dog + potted plant missing
    assert rep.images_reviewed == 4
    assert rep.counts["accepted"] == 8 and rep.counts["relabelled"] == 1 and rep.counts["rejected"] == 2
    assert rep.counts["missed"] == 2 and rep.negatives == 3 and rep.positives == 3
    pos = load_references(tmp_path / "positives.json")
    pnames = {c["id"]: c["name"] for c in pos["categories"]}
    assert sorted(pnames[r["category_id"]] for r in pos["references"]) == ["baseball glove", "hot dog", "potted plant"]
    assert {c["name"]: c["id"] for c in pos["categories"]} == {"baseball glove": 40, "hot dog": 58, "potted plant": 64}
    coco = COCO(str(tmp_path / "reviewed.json"))
    assert len(coco.getAnnIds()) == len(sub["annotations"])  # the gold, all of it (no crowd here)
    reviewed = json.loads((tmp_path / "reviewed.json").read_text())
    rows = _rows(SHARDS)
    _check_table(
        rep,
        reviewed,
        {i: rows[i]["instances"] for i in rows},
        {},
        yaml.safe_load((tmp_path / "thresholds.yaml").read_text()),
    )


def test_coco_input_current_thresholds_and_crowd(gt_subset, tmp_path):
    path, sub = gt_subset
    # current thresholds 0.5: the false blobs (0.41, 0.37) were never output → not judged, no negatives
    rep = apply_corrections(str(SHARDS), coco=str(path), dest_dir=tmp_path / "a", thresholds=0.5)
    assert rep.counts["below_threshold"] == 2 and rep.counts["rejected"] == 0 and rep.negatives == 1
    assert all(c.before_threshold == 0.5 for c in rep.classes)
    reviewed = json.loads((tmp_path / "a" / "reviewed.json").read_text())
    rows = _rows(SHARDS)
    th = yaml.safe_load((tmp_path / "a" / "thresholds.yaml").read_text())
    assert th["default"] == 0.5
    _check_table(rep, reviewed, {i: rows[i]["instances"] for i in rows}, {"default": 0.5}, th)
    # a crowd region of class dog over the false dog blob: that detection is ignored, not a negative
    crowd = copy.deepcopy(sub)
    m = np.zeros((424, 640), dtype=np.uint8, order="F")
    m[5:65, 5:75] = 1
    rle = mask_utils.encode(m)
    crowd["annotations"].append(
        {"id": 10**9, "image_id": 10764, "category_id": 18, "iscrowd": 1, "bbox": [5, 5, 70, 60], "area": 4200,
         "segmentation": {"size": [424, 640], "counts": rle["counts"].decode()}}
    )  # fmt: skip
    p = tmp_path / "crowd.json"
    p.write_text(json.dumps(crowd))
    rep = apply_corrections(str(SHARDS), coco=str(p), dest_dir=tmp_path / "b")
    assert rep.counts["on_crowd"] == 1 and rep.counts["rejected"] == 1 and rep.negatives == 2
    dog = next(c for c in rep.classes if c.name == "dog")
    assert (
        dog.before_detections == 3 and dog.before_true_positives == 1 and dog.before_precision == 0.5
    )  # 1 of 2 counted


def test_positives_load_as_references_for_memory_build(gt_subset, tmp_path, coco_mini):
    from ntt_batch.bank.build import load_reference_sets

    path, _ = gt_subset
    apply_corrections(str(SHARDS), coco=str(path), dest_dir=tmp_path)
    bank_refs = {
        "format": "ntt-batch/references", "version": 1,
        "categories": [{"id": 18, "name": "dog"}],
        "references": [
            {"category_id": 18, "file_name": "000000022892.jpg", "width": 500, "height": 334, "bbox": [10, 10, 50, 50]}
        ],
        "image_root": str(coco_mini / "val2017"),
    }  # fmt: skip
    merged, _ = load_reference_sets([bank_refs, str(tmp_path / "positives.json")])
    assert sorted(c["name"] for c in merged["categories"]) == ["baseball glove", "dog", "hot dog", "potted plant"]
    for r in merged["references"]:
        root = r.get("image_root") or merged.get("image_root")
        if Path(root).is_dir():
            assert (Path(root) / r["file_name"]).is_file()
