"""Exports read back by their consumers' own loaders or faithful readers of their published formats.

* YOLO segmentation: a reader that follows Ultralytics' dataset code (data.yaml → the images list
  file, ``./`` relative to it; label path = image path with the last ``/images/`` replaced by
  ``/labels/`` and the suffix by ``.txt``; its label checks: >= 3 points, normalised coordinates,
  class < nc); polygons rasterised and compared with the original masks.
* Label Studio: the tasks/predictions JSON schema of its pre-annotation docs, the labeling config
  parsed as XML, percent coordinates rasterised back.
* FiftyOne: its own COCO importer when installed (reads without a database); otherwise a reader
  written after that importer (file_name absolute or relative to data_path, RLE masks cropped to
  the box, score → confidence).
Shards are built from the COCO sample's ground truth (no model), so the expected output is known.
"""

from __future__ import annotations

import json
import logging
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image
from pycocotools import mask as mask_utils
from test_merge_eval_viz import _box_rle, _instance, _row, gt_rows, write_shards

from ntt_batch.cli import main
from ntt_batch.exports import export, merge, merge_dataset, merge_results
from ntt_batch.exports.polygons import bridge_polygons, mask_polygons, polygon_area
from ntt_batch.storage.masks import decode_rle

IMG_FORMATS = {"bmp", "dng", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp", "pfm", "heic"}


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def val_gt(coco_mini) -> dict:
    return json.loads((coco_mini / "annotations" / "instances_val2017.json").read_text())


@pytest.fixture(scope="module")
def small_rows(val_gt, coco_mini) -> list[dict]:
    """12 COCO images with their GT as predictions (scores spread in [0.05, 1)), one of them empty."""
    rng = np.random.default_rng(0)
    rows = gt_rows(val_gt, str(coco_mini / "val2017"), score=lambda a: float(rng.uniform(0.05, 1.0)))[:12]
    rows[4] = _row(rows[4]["image_id"], rows[4]["image_uri"], rows[4]["width"], rows[4]["height"], [])
    return rows


@pytest.fixture(scope="module")
def small_shards(tmp_path_factory, small_rows, val_gt) -> Path:
    cats = [{"id": c["id"], "name": c["name"]} for c in val_gt["categories"]]
    return write_shards(
        tmp_path_factory.mktemp("exp") / "out",
        small_rows,
        per_file=5,
        row_group=2,
        run_json={"memory_bank": {"categories": cats, "content_hash": "f" * 64}},
    )


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def _fill_holes(m: np.ndarray) -> np.ndarray:
    """The mask with its holes filled (what outer-contour polygons describe)."""
    out = np.zeros_like(m)
    for p in mask_polygons(m, simplify=0):
        out |= _raster([p], *m.shape)
    return out


def _raster(polys, h, w) -> np.ndarray:
    """Polygons in pixel-corner coordinates → mask (COCO/pycocotools rasterisation)."""
    rles = mask_utils.frPyObjects([np.asarray(p, dtype=np.float64).ravel().tolist() for p in polys], h, w)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


# ----------------------------------------------------------------------------- polygons


def test_mask_polygons_outer_contours_parts_and_holes():
    m = np.zeros((40, 50), dtype=bool)
    m[5:25, 5:30] = True
    m[10:15, 10:20] = False  # a hole: filled
    m[30:38, 35:48] = True  # a second part
    m[2, 45] = m[3, 46] = True  # two pixels touching diagonally: two 4-connected parts
    polys = mask_polygons(m, simplify=0)
    assert [polygon_area(p) for p in polys] == [500.0, 104.0, 1.0, 1.0]  # largest first, exact areas
    filled = m.copy()
    filled[10:15, 10:20] = True
    assert np.array_equal(_raster(polys, 40, 50), filled)
    assert np.array_equal(_raster([bridge_polygons(polys)], 40, 50), filled)  # bridges add no area
    assert mask_polygons(np.zeros((5, 5), dtype=bool)) == []
    # simplification keeps the shape
    yy, xx = np.mgrid[:200, :300]
    ellipse = (xx - 150) ** 2 / 120**2 + (yy - 100) ** 2 / 70**2 < 1
    exact, simple = mask_polygons(ellipse, 0)[0], mask_polygons(ellipse, 1.0)[0]
    assert len(simple) < len(exact) / 4 and _iou(_raster([simple], 200, 300), ellipse) > 0.99


# ----------------------------------------------------------------------------- YOLO


def img2label_paths(img_paths):
    """Ultralytics' rule, ``img2label_paths`` in ``ultralytics/data/utils.py`` (8.x), transcribed: the last
    /images/ → /labels/, suffix → .txt. The label path depends on the image path string only."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return [sb.join(x.rsplit(sa, 1)).rsplit(".", 1)[0] + ".txt" for x in img_paths]


def read_ultralytics_segment_dataset(data_yaml: Path, split: str = "train") -> tuple[dict, list[tuple[str, list]]]:
    """(names, [(image file, [(class, (n, 2) normalised polygon), ...])]) the way Ultralytics reads them."""
    data = yaml.safe_load(data_yaml.read_text())
    root = Path(data.get("path") or data_yaml.parent)
    assert root.is_absolute()
    names = data["names"]
    if isinstance(names, list):
        names = dict(enumerate(names))
    assert data.get("nc", len(names)) == len(names) and sorted(names) == list(range(len(names)))
    p = root / data[split]
    assert p.is_file() and p.suffix == ".txt", "a .txt split lists image files"
    parent = str(p.parent) + os.sep
    files = [x.replace("./", parent) if x.startswith("./") else x for x in p.read_text().splitlines() if x.strip()]
    out = []
    for im_file, lb_file in zip(files, img2label_paths(files)):
        assert im_file.rsplit(".", 1)[-1].lower() in IMG_FORMATS and Image.open(im_file).size  # a readable image
        segments = []
        if os.path.isfile(lb_file):
            lb = [x.split() for x in Path(lb_file).read_text().strip().splitlines() if len(x)]
            if lb:
                assert all(len(x) > 6 and len(x) % 2 == 1 for x in lb), "segment rows: class + >= 3 points"
                for x in lb:
                    cls = float(x[0])
                    assert cls == int(cls) and 0 <= cls < len(names)
                    xy = np.array(x[1:], dtype=np.float32).reshape(-1, 2)
                    assert (xy >= 0).all() and (xy <= 1).all(), "non-normalized or out of bounds coordinates"
                    segments.append((int(cls), xy))
        out.append((im_file, segments))
    return names, out


def test_yolo_export_reads_back_like_ultralytics(small_shards, small_rows, tmp_path):
    out = tmp_path / "yolo"
    stats = export(str(small_shards), str(out), format="yolo", score_threshold=0.3)
    names, images = read_ultralytics_segment_dataset(out / "data.yaml")
    assert len(images) == len(small_rows) == stats.images_written
    kept = [[i for i in r["instances"] if np.float32(i["score"]) >= np.float32(0.3)] for r in small_rows]
    assert stats.instances_written == sum(len(k) for k in kept)
    ious = []
    for row, insts, (im_file, segments) in zip(small_rows, kept, images):
        assert os.path.realpath(im_file) == os.path.realpath(row["image_uri"])  # a symlink to the original
        assert len(segments) == len(insts)
        h, w = row["height"], row["width"]
        for inst, (cls, xy) in zip(insts, segments):
            assert names[cls] == inst["category_name"]
            mask = decode_rle(inst["segmentation"])
            ious.append(_iou(_raster([xy * [w, h]], h, w), _fill_holes(mask)))
    assert len(ious) > 20 and np.mean(ious) > 0.9 and np.median(ious) > 0.93
    # every class of the bank is named, in id order
    assert list(names.values())[:3] == ["person", "bicycle", "car"] and len(names) == 80
    # a second export replaces the first (an earlier export), and an unrelated folder is refused
    export(str(small_shards), str(out), format="yolo", score_threshold=0.9, images="copy")
    _, again = read_ultralytics_segment_dataset(out / "data.yaml")
    assert not os.path.islink(again[0][0]) and sum(len(s) for _, s in again) < stats.instances_written
    other = tmp_path / "mine"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not an earlier YOLO export"):
        export(str(small_shards), str(other), format="yolo")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "yolo"]  # no temporary folder left


def segments2boxes(segments) -> np.ndarray:
    """Ultralytics' box of a segment (``segments2boxes`` in ``ultralytics/utils/ops.py``), as xyxy."""
    return np.array([[s[:, 0].min(), s[:, 1].min(), s[:, 0].max(), s[:, 1].max()] for s in segments])


def _extent_xyxy(rle) -> list[float]:
    x, y, w, h = mask_utils.toBbox(rle).tolist()
    return [x, y, x + w, y + h]


def test_label_exports_take_the_mask_extent_and_results_keep_the_job_box(small_shards, small_rows, tmp_path):
    """dataset, YOLO and Label Studio boxes are the mask's extent (pycocotools toBbox); results is unchanged."""
    insts = [i for r in small_rows for i in r["instances"]]
    results = json.loads(Path(merge_results(str(small_shards), str(tmp_path / "r.json")).out).read_text())
    assert [d["bbox"] for d in results] == [i["bbox"] for i in insts]  # the box the job stored, for eval
    merge_dataset(str(small_shards), str(tmp_path / "d.json"))
    anns = json.loads((tmp_path / "d.json").read_text())["annotations"]
    assert len(anns) == len(insts) > 50
    for a, inst in zip(anns, insts):
        assert a["bbox"] == mask_utils.toBbox(inst["segmentation"]).tolist()
        assert a["area"] == int(mask_utils.area(inst["segmentation"]))
    # YOLO, default simplification: the box Ultralytics derives from each polygon is the mask's extent
    export(str(small_shards), str(tmp_path / "y"), format="yolo")
    _, images = read_ultralytics_segment_dataset(tmp_path / "y" / "data.yaml")
    for row, (_, segments) in zip(small_rows, images):
        assert len(segments) == len(row["instances"])
        if not segments:
            continue
        w, h = row["width"], row["height"]
        got = segments2boxes([xy.astype(np.float64) for _, xy in segments]) * np.array([w, h, w, h])
        want = [_extent_xyxy(i["segmentation"]) for i in row["instances"]]
        assert np.allclose(got, want, atol=2e-3), row["image_id"]
    # Label Studio polygons (all parts): the regions of an instance span the mask's extent
    export(str(small_shards), str(tmp_path / "ls.json"), format="label-studio", mask="polygons")
    for row, task in zip(small_rows, json.loads((tmp_path / "ls.json").read_text())):
        parts: dict[str, list] = {}
        for r in task["predictions"][0]["result"]:
            parts.setdefault(r["id"].split("_")[1], []).extend(r["value"]["points"])
        for k, inst in enumerate(row["instances"]):
            pts = np.array(parts[str(k)]) * [row["width"] / 100, row["height"] / 100]
            got = [*pts.min(0), *pts.max(0)]
            assert np.allclose(got, _extent_xyxy(inst["segmentation"]), atol=2e-3), (row["image_id"], k)


def test_yolo_uri_mode_is_refused_with_a_pointer_to_link_and_copy(small_shards, small_rows, tmp_path):
    """Listing the original URIs cannot work: Ultralytics looks for each label at a path made from the image
    path alone, beside the source images (the reason it read 0 instances and 10 backgrounds)."""
    src = small_rows[0]["image_uri"]
    (label,) = img2label_paths([src])
    assert label == src.rsplit(".", 1)[0] + ".txt" and not label.startswith(str(tmp_path))
    with pytest.raises(ValueError, match=r"images='link'.*images='copy'"):
        export(str(small_shards), str(tmp_path / "y"), format="yolo", images="uri")
    r = CliRunner().invoke(
        main,
        ["export", "--shards", str(small_shards), "--out", str(tmp_path / "y"), "--format", "yolo"]
        + ["--yolo-images", "uri"],
    )
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and "--yolo-images uri" in lines[0] and "'copy'" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written, no temporary folder


def test_yolo_multi_part_masks_and_name_collisions(tmp_path):
    img_dir = tmp_path / "a" / "images"  # an /images/ folder in the source path must not confuse anything
    for sub in ("a", "b"):
        (tmp_path / sub / "images").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (60, 40)).save(tmp_path / sub / "images" / "same.png")
    m = np.zeros((40, 60), dtype=bool)
    m[2:12, 2:20] = True
    m[25:38, 40:58] = True  # two parts, one instance
    from ntt_batch.storage.masks import encode_rle

    inst = _instance(3, "car", 0.9, [2, 2, 56, 36], encode_rle(m))
    rows = [
        _row(1, str(img_dir / "same.png"), 60, 40, [inst]),
        _row(2, str(tmp_path / "b/images/same.png"), 60, 40, []),
    ]
    shards = write_shards(tmp_path / "s", rows)
    stats = export(str(shards), str(tmp_path / "y"), format="yolo", simplify=0)
    names, images = read_ultralytics_segment_dataset(tmp_path / "y" / "data.yaml")
    assert names == {0: "car"} and [Path(f).name for f, _ in images] == ["same.png", "same_2.png"]
    ((_cls, xy),) = images[0][1]
    assert _iou(_raster([xy * [60, 40]], 40, 60), m) == 1.0  # one polygon, both parts, exact
    assert images[1][1] == [] and stats.categories_source == "instances"


# ----------------------------------------------------------------------------- Label Studio


def test_label_studio_tasks_match_the_predictions_format(small_shards, small_rows, tmp_path, coco_mini):
    out = tmp_path / "tasks.json"
    root = str(coco_mini / "val2017")
    stats = merge(
        str(small_shards),
        str(out),
        format="label-studio",
        score_threshold=0.3,
        image_root=root,
        image_url_prefix="/data/local-files/?d=val2017/",
        mask="polygons",
    )
    tasks = json.loads(out.read_text())
    cfg = ET.fromstring((tmp_path / "tasks.label_config.xml").read_text())
    image_tag, poly_tag = cfg.find("Image"), cfg.find("PolygonLabels")
    labels = {lab.get("value") for lab in poly_tag.findall("Label")}
    assert image_tag.get("value") == "$image" and poly_tag.get("toName") == image_tag.get("name") == "image"
    assert len(labels) == 80 and any("label_config.xml" in n for n in stats.notices)
    assert isinstance(tasks, list) and len(tasks) == len(small_rows)
    ious, n_instances = [], 0
    for task, row in zip(tasks, small_rows):
        assert task["data"]["image"] == "/data/local-files/?d=val2017/" + Path(row["image_uri"]).name
        assert task["data"]["image_id"] == row["image_id"]
        (pred,) = task["predictions"]
        assert set(pred) <= {"model_version", "score", "result"} and pred["model_version"] == "ntt-batch-" + "f" * 12
        kept = [i for i in row["instances"] if np.float32(i["score"]) >= np.float32(0.3)]
        h, w = row["height"], row["width"]
        by_instance: dict[str, list] = {}
        region_ids = [r["id"] for r in pred["result"]]
        assert len(set(region_ids)) == len(region_ids)
        for r in pred["result"]:
            assert r["type"] == "polygonlabels" and r["from_name"] == poly_tag.get("name") and r["to_name"] == "image"
            assert (r["original_width"], r["original_height"], r["image_rotation"]) == (w, h, 0)
            pts = np.array(r["value"]["points"], dtype=np.float64)
            assert pts.ndim == 2 and pts.shape[1] == 2 and len(pts) >= 3 and (pts >= 0).all() and (pts <= 100).all()
            assert r["value"]["closed"] is True and r["value"]["polygonlabels"][0] in labels
            assert 0 < r["score"] <= 1
            by_instance.setdefault(r["id"].split("_")[1], []).append(pts * [w / 100, h / 100])
        assert len(by_instance) == len(kept)
        if kept:
            assert pred["score"] == pytest.approx(np.mean([np.float32(i["score"]) for i in kept]), abs=1e-6)
        else:
            assert pred["result"] == [] and "score" not in pred
        for k, inst in enumerate(kept):
            n_instances += 1
            ious.append(_iou(_raster(by_instance[str(k)], h, w), _fill_holes(decode_rle(inst["segmentation"]))))
    assert n_instances == stats.instances_written and np.mean(ious) > 0.9


# ----------------------------------------------------------------------------- FiftyOne


def read_like_fiftyone_coco_importer(labels_path: Path, data_path: Path) -> list[tuple[str, list[dict]]]:
    """(image path, [{label, confidence, bounding_box (relative), mask (cropped to the box)}]) per image."""
    d = json.loads(labels_path.read_text())
    classes = {c["id"]: c["name"] for c in d["categories"]}
    files = {str(p.relative_to(data_path)): str(p) for p in data_path.rglob("*") if p.is_file()}
    anns: dict[int, list] = {}
    for a in d["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    out = []
    for im in d["images"]:
        fn = os.path.normpath(im["file_name"])
        path = fn if os.path.isabs(fn) else files[fn]
        w, h = im["width"], im["height"]
        dets = []
        for a in anns.get(im["id"], []):
            x, y, bw, bh = a["bbox"]
            mask = mask_utils.decode(a["segmentation"]).astype(bool)
            dets.append(
                {
                    "label": classes[a["category_id"]],
                    "confidence": a.get("score"),
                    "bounding_box": [x / w, y / h, bw / w, bh / h],
                    "mask": mask[round(y) : round(y + bh), round(x) : round(x + bw)],
                }
            )
        out.append((path, dets))
    return out


def _fiftyone_read(labels_path: Path, data_path: Path):
    fouc = pytest.importorskip("fiftyone.utils.coco")
    imp = fouc.COCODetectionDatasetImporter(
        data_path=str(data_path), labels_path=str(labels_path), label_types=["segmentations"]
    )
    out = []
    with imp:
        for path, _meta, label in imp:
            if isinstance(label, dict):  # several label types: a dict of them
                label = label.get("segmentations")
            dets = label.detections if label is not None else []
            out.append(
                (
                    path,
                    [
                        {"label": x.label, "confidence": x.confidence, "bounding_box": x.bounding_box, "mask": x.mask}
                        for x in dets
                    ],
                )
            )
    return out


@pytest.mark.parametrize("reader", ["faithful", "fiftyone"])
def test_coco_dataset_is_what_fiftyone_imports(small_shards, small_rows, tmp_path, coco_mini, reader):
    root = coco_mini / "val2017"
    for image_root in (str(root), None):  # file_name relative to data_path, or absolute paths
        out = tmp_path / f"labels_{bool(image_root)}.json"
        merge_dataset(str(small_shards), str(out), score_threshold=0.3, image_root=image_root)
        read = (read_like_fiftyone_coco_importer if reader == "faithful" else _fiftyone_read)(out, root)
        assert [os.path.realpath(p) for p, _ in read] == [os.path.realpath(r["image_uri"]) for r in small_rows]
        for (_, dets), row in zip(read, small_rows):
            kept = [i for i in row["instances"] if np.float32(i["score"]) >= np.float32(0.3)]
            assert len(dets) == len(kept)
            for det, inst in zip(dets, kept):
                assert det["label"] == inst["category_name"] and np.float32(det["confidence"]) == np.float32(
                    inst["score"]
                )
                x, y, w, h = (int(v) for v in mask_utils.toBbox(inst["segmentation"]))  # the mask's extent
                full = decode_rle(inst["segmentation"])
                assert np.array_equal(det["mask"], full[y : y + h, x : x + w])
                assert det["mask"].sum() == full.sum()  # cropping to the box loses no mask pixel


def test_readme_fiftyone_line_names_the_field_predictions():
    """The README's FiftyOne one-liner loads the masks into `predictions` (FiftyOne's default field is
    `ground_truth`), with one label type so the field holds the detections themselves."""
    import ast

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (line,) = [x for x in readme.splitlines() if "fo.Dataset.from_dir(" in x]
    code = line.split("python -c ", 1)[1].strip().strip("'")
    calls = [
        n for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "from_dir"
    ]
    kwargs = {k.arg: ast.literal_eval(k.value) for k in calls[0].keywords if k.arg != "dataset_type"}
    assert kwargs["label_field"] == "predictions" and kwargs["label_types"] == "segmentations"
    assert kwargs["labels_path"] == "labels.json" and "--out labels.json --format dataset" in readme


# ----------------------------------------------------------------------------- thresholds in merge / visualize


def test_per_class_thresholds_in_merge_and_cli(small_shards, small_rows, tmp_path, caplog):
    th = tmp_path / "th.yaml"
    th.write_text("default: 0.6\nperson: 0.2\nPotted Plant: 0.9\nunicorn: 0.5\n")
    out = tmp_path / "r.json"
    with caplog.at_level(logging.WARNING):
        stats = merge_results(str(small_shards), str(out), score_threshold=str(th))
    limits = {"person": 0.2, "potted plant": 0.9}
    expected = [
        (r["image_id"], i["category_id"])
        for r in small_rows
        for i in r["instances"]
        if np.float32(i["score"]) >= limits.get(i["category_name"], 0.6)
    ]
    got = [(d["image_id"], d["category_id"]) for d in json.loads(out.read_text())]
    assert got == expected and stats.below_threshold == sum(len(r["instances"]) for r in small_rows) - len(expected)
    assert stats.score_threshold == {"default": 0.6, "person": 0.2, "Potted Plant": 0.9, "unicorn": 0.5}
    assert any("'unicorn'" in n and "match no class" in n for n in stats.notices)
    assert sum("match no class" in r.getMessage() for r in caplog.records) == 1
    # the CLI takes a number or a file, for every format
    for fmt, dest in (("dataset", "d.json"), ("label-studio", "ls.json"), ("yolo", "yolo_ds")):
        r = CliRunner().invoke(
            main,
            [
                "export",
                "--shards",
                str(small_shards),
                "--out",
                str(tmp_path / dest),
                "--format",
                fmt,
                "--thresholds",
                str(th),
            ],
        )
        assert r.exit_code == 0, r.output
        assert f"{len(expected)} instances" in r.output
    r = CliRunner().invoke(
        main,
        [
            "export",
            "--shards",
            str(small_shards),
            "--out",
            str(tmp_path / "x.json"),
            "--format",
            "results",
            "--thresholds",
            "0.5",
        ],
    )
    assert r.exit_code == 0 and "below the score threshold" in r.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("person: high\n")
    r = CliRunner().invoke(
        main,
        [
            "export",
            "--shards",
            str(small_shards),
            "--out",
            str(tmp_path / "y.json"),
            "--format",
            "results",
            "--thresholds",
            str(bad),
        ],
    )
    assert r.exit_code != 0 and "'person'" in r.output and "'high'" in r.output and not (tmp_path / "y.json").exists()
    r = CliRunner().invoke(
        main,
        [
            "export",
            "--shards",
            str(small_shards),
            "--out",
            str(tmp_path / "z.json"),
            "--format",
            "results",
            "--yolo-images",
            "copy",
        ],
    )
    assert r.exit_code != 0 and "--yolo-images applies to --format yolo only" in r.output


def test_visualize_applies_per_class_thresholds(tmp_path, monkeypatch):
    from ntt_batch.viz import overlay

    drawn = []
    real = overlay.render_panel
    monkeypatch.setattr(
        overlay,
        "render_panel",
        lambda img, insts, title: drawn.append((title, [i.label for i in insts])) or real(img, insts, title),
    )
    rle = _box_rle(20, 20, (2, 2, 5, 5))
    preds = [
        {"category_id": 1, "category_name": "dog", "score": 0.5, "bbox": [2, 2, 5, 5], "segmentation": rle},
        {"category_id": 2, "category_name": "cat", "score": 0.5, "bbox": [2, 2, 5, 5], "segmentation": rle},
        {"category_id": 2, "category_name": "cat", "score": 0.95, "bbox": [2, 2, 5, 5], "segmentation": rle},
    ]
    image = np.zeros((20, 20, 3), dtype=np.uint8)
    overlay.render_overlay(image, preds, score_threshold={"cat": 0.9, "default": 0.1})
    title, labels = drawn[-1]
    assert sorted(labels) == ["cat 0.95", "dog 0.50"] and "per-class" in title
    overlay.render_overlay(image, preds, score_threshold=0.7)
    assert drawn[-1] == ("prediction: 1, score >= 0.7", ["cat 0.95"])


def test_export_refuses_duplicates_for_every_format(tmp_path, small_rows):
    rows = small_rows[:3] + [dict(small_rows[1], image_uri="/elsewhere/copy.jpg")]
    shards = write_shards(tmp_path / "s", rows)
    for fmt, dest in (("yolo", "y"), ("label-studio", "t.json"), ("dataset", "d.json")):
        with pytest.raises(ValueError, match="appear in more than one row"):
            export(str(shards), str(tmp_path / dest), format=fmt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]
