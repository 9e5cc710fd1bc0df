"""Custom references made easy: mixed CSV, remembered image root, several files, contact sheet, eval by name."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from test_merge_eval_viz import _instance, _row, write_shards

from ntt_batch.bank.build import load_reference_sets
from ntt_batch.cli import main
from ntt_batch.eval.coco_eval import evaluate_coco, format_report
from ntt_batch.references.files import load_references, merge_references, save_references
from ntt_batch.references.importers import references_from_csv
from ntt_batch.storage.masks import decode_rle, segmentation_to_rle


def _image(path: Path, w: int, h: int, value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), value, dtype=np.uint8)).save(path)


def _mask(path: Path, w: int, h: int, box) -> np.ndarray:
    m = np.zeros((h, w), dtype=np.uint8)
    x, y, bw, bh = box
    m[y : y + bh, x : x + bw] = 200
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(m).save(path)
    return m > 0


# ----------------------------------------------------------------------------- CSV


def test_csv_mixes_mask_rows_and_box_rows(tmp_path):
    photos = tmp_path / "photos"
    _image(photos / "a.jpg", 40, 30)
    _image(photos / "sub" / "b.png", 50, 20)
    m = _mask(tmp_path / "labels" / "a_widget.png", 40, 30, (5, 6, 10, 8))
    _mask(photos / "masks" / "b_gadget.png", 50, 20, (1, 1, 4, 4))  # found under the image root
    csv_path = tmp_path / "labels" / "refs.csv"
    csv_path.write_text(
        "image,category,mask,x,y,w,h\n"
        "a.jpg,widget,a_widget.png,,,,\n"
        "sub/b.png,gadget,,10,2,20.5,12\n"
        "sub/b.png,gadget,masks/b_gadget.png,,,,\n"
    )
    refs = references_from_csv(csv_path, photos)
    assert refs["categories"] == [{"id": 1, "name": "widget"}, {"id": 2, "name": "gadget"}]
    a, b_box, b_mask = refs["references"]
    assert np.array_equal(decode_rle(a["segmentation"]), m) and a["bbox"] == [5.0, 6.0, 10.0, 8.0]
    assert b_box["bbox"] == [10.0, 2.0, 20.5, 12.0] and "segmentation" not in b_box
    assert b_mask["bbox"] == [1.0, 1.0, 4.0, 4.0] and (b_mask["width"], b_mask["height"]) == (50, 20)
    assert refs["image_root"] == str(photos.resolve())
    assert refs["source"]["mask_rows"] == 2 and refs["source"]["box_rows"] == 1
    # columns in any order
    other = tmp_path / "labels" / "other.csv"
    other.write_text("category,x,y,w,h,image\nwidget,1,1,5,5,a.jpg\n")
    assert references_from_csv(other, photos)["references"][0]["bbox"] == [1.0, 1.0, 5.0, 5.0]


@pytest.mark.parametrize(
    "row,match",
    [
        ("a.jpg,w,a_widget.png,1,1,5,5", "either a mask or a box"),
        ("a.jpg,w,,,,,", "neither a mask nor a box"),
        ("a.jpg,w,,1,1,,5", "all of x,y,w,h"),
        ("../a.jpg,w,,1,1,5,5", "unsafe"),
        ("a.jpg,w,nope.png,,,,", r"mask not found: looked for .*nope.png and .*nope.png"),
    ],
)
def test_mixed_csv_errors_name_the_line(tmp_path, row, match):
    _image(tmp_path / "img" / "a.jpg", 40, 30)
    _mask(tmp_path / "a_widget.png", 40, 30, (1, 1, 3, 3))
    p = tmp_path / "refs.csv"
    p.write_text("image,category,mask,x,y,w,h\n" + row + "\n")
    with pytest.raises(ValueError, match="refs.csv line 2: .*" + match):
        references_from_csv(p, tmp_path / "img")


@pytest.mark.parametrize(
    "header,match",
    [
        ("image,category,polygon", "unknown column"),
        ("image,category,x,y,w", "all of x,y,w,h"),
        ("image,category", "mask"),
        ("image,image,category,mask", "repeated"),
    ],
)
def test_csv_header_errors(tmp_path, header, match):
    p = tmp_path / "refs.csv"
    p.write_text(header + "\n")
    with pytest.raises(ValueError, match="line 1: .*" + match):
        references_from_csv(p, None)


# ----------------------------------------------------------------------------- image root, merging


def test_image_root_is_remembered_relative_to_the_file(tmp_path, monkeypatch):
    proj = tmp_path / "project"
    _image(proj / "photos" / "a.jpg", 40, 30)
    csv_path = proj / "refs.csv"
    csv_path.write_text("image,category,x,y,w,h\na.jpg,widget,1,1,10,10\n")
    refs = references_from_csv(csv_path, proj / "photos")
    save_references(refs, proj / "refs.json")
    assert json.loads((proj / "refs.json").read_text())["image_root"] == "photos"  # inside: relative
    moved = tmp_path / "moved"
    os.rename(proj, moved)
    monkeypatch.chdir(tmp_path)
    assert load_references(moved / "refs.json")["image_root"] == str(moved / "photos")  # still found after a move
    (tmp_path / "other").mkdir()
    save_references(refs, tmp_path / "other" / "refs.json")  # not inside the file's folder: absolute
    assert json.loads((tmp_path / "other" / "refs.json").read_text())["image_root"] == str(proj / "photos")
    # the flag overrides; a file without a root needs it
    merged, _ = load_reference_sets(moved / "refs.json", image_root=tmp_path)
    assert merged["image_root"] == str(tmp_path)
    bare = dict(refs)
    bare.pop("image_root")
    save_references(bare, tmp_path / "bare.json")
    with pytest.raises(ValueError, match="bare.json does not say where its images are: pass --image-root"):
        load_reference_sets(tmp_path / "bare.json")


def _refs(names_ids, root, file_name="a.jpg"):
    return {
        "format": "ntt-batch/references",
        "version": 1,
        "image_root": root,
        "categories": [{"id": i, "name": n} for n, i in names_ids],
        "references": [
            {"category_id": i, "file_name": file_name, "width": 40, "height": 30, "bbox": [1.0, 1.0, 5.0, 5.0]}
            for _, i in names_ids
        ],
    }


def test_merge_by_name_renumbers_clashing_ids(tmp_path):
    a = _refs([("dog", 1), ("cat", 2)], "/data/a")
    b = _refs([("cat", 7), ("bird", 1)], "/data/b", "b.jpg")
    merged, notices = merge_references([(a, "a.json"), (b, "b.json")])
    assert merged["categories"] == [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}, {"id": 3, "name": "bird"}]
    assert any("'cat' (id 7) merged into 'cat' of a.json (id 2)" in n for n in notices)
    assert any("'bird' has id 1, already used by 'dog' of a.json: renumbered to 3" in n for n in notices)
    by_file = {(r["file_name"], r["category_id"]): r for r in merged["references"]}
    assert by_file[("b.jpg", 3)]["image_root"] == "/data/b" and by_file[("a.jpg", 1)]["image_root"] == "/data/a"
    assert "image_root" not in merged  # two roots: each reference keeps its own
    same, notes = merge_references([(a, "a.json"), (_refs([("dog", 1)], "/data/a", "c.jpg"), "c.json")])
    assert same["image_root"] == "/data/a" and notes == [] and len(same["references"]) == 3


@pytest.mark.slow
def test_memory_build_several_files_no_image_root_and_contact_sheet(tmp_path, coco_mini, random_checkpoints):
    """Two references files (one of them box-only) → one bank without --image-root → references show."""
    ann = json.loads((coco_mini / "annotations" / "instances_train2017.json").read_text())
    images = {im["id"]: im for im in ann["images"]}
    dog = next(a for a in ann["annotations"] if a["category_id"] == 18 and not a["iscrowd"] and a["area"] > 5000)
    cat = next(a for a in ann["annotations"] if a["category_id"] == 17 and not a["iscrowd"] and a["area"] > 5000)
    root = coco_mini / "train2017"
    masks_dir = tmp_path / "masks"
    im = images[dog["image_id"]]
    m = segmentation_to_rle(dog["segmentation"], im["height"], im["width"])
    masks_dir.mkdir()
    Image.fromarray(decode_rle(m).astype(np.uint8) * 255).save(masks_dir / "dog.png")
    (tmp_path / "dogs.csv").write_text(f"image,category,mask\n{im['file_name']},dog,masks/dog.png\n")
    cim = images[cat["image_id"]]
    x, y, w, h = cat["bbox"]
    (tmp_path / "cats.csv").write_text(f"image,category,x,y,w,h\n{cim['file_name']},cat,{x},{y},{w},{h}\n")
    r = CliRunner()
    for name in ("dogs", "cats"):
        res = r.invoke(
            main,
            [
                "references",
                "from-csv",
                "--csv",
                str(tmp_path / f"{name}.csv"),
                "--image-root",
                str(root),
                "--out",
                str(tmp_path / f"{name}.json"),
            ],
        )
        assert res.exit_code == 0, res.output
        assert "remembered" in res.output
    res = r.invoke(
        main,
        [
            "memory",
            "build",
            "--references",
            str(tmp_path / "dogs.json"),
            "--references",
            str(tmp_path / "cats.json"),
            "--encoder",
            "dinov2_vits14",
            "--sam2",
            "sam2.1_hiera_tiny",
            "--checkpoint-dir",
            str(random_checkpoints),
            "--no-download",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "bank"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "notice: " in res.output and "'cat' has id 1, already used by 'dog'" in res.output
    meta = json.loads((tmp_path / "bank" / "memory_bank.json").read_text())
    assert meta["categories"] == [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}]
    (box_mask,) = meta["references"]["box_masks"]
    assert box_mask["sam2"] == "sam2.1_hiera_tiny" and decode_rle(box_mask["segmentation"]).any()
    saved = load_references(tmp_path / "bank" / "references.json")
    assert [c["name"] for c in saved["categories"]] == ["dog", "cat"] and saved["image_root"] == str(root)

    sheet = tmp_path / "sheet.png"
    res = r.invoke(
        main, ["references", "show", "--memory", str(tmp_path / "bank"), "--out", str(sheet), "--cell", "96"]
    )
    assert res.exit_code == 0, res.output
    assert "2 references of 2 classes" in res.output and "1 SAM2 mask from box" in res.output and "1 mask" in res.output
    img = np.asarray(Image.open(sheet).convert("RGB"))
    assert img.shape[0] >= 96 and img.shape[1] >= 2 * 96
    # without the bank the box-only reference is drawn as a box, and the command says how to see its mask
    res = r.invoke(
        main, ["references", "show", "--references", str(tmp_path / "cats.json"), "--out", str(tmp_path / "cats.png")]
    )
    assert res.exit_code == 0 and "1 box only" in res.output and "--memory BANK" in res.output


# ----------------------------------------------------------------------------- eval by class name


def test_eval_aligns_classes_by_name(tmp_path, coco_mini):
    """A bank's "dog" numbered 1 (a custom references file) scored against COCO (person 1, dog 18)."""
    gt_path = coco_mini / "annotations" / "instances_val2017.json"
    gt = json.loads(gt_path.read_text())
    sizes = {im["id"]: (im["height"], im["width"]) for im in gt["images"]}
    rows, dets = [], []
    by_img: dict[int, list] = {im["id"]: [] for im in gt["images"]}
    for a in gt["annotations"]:
        if a["category_id"] == 18 and not a["iscrowd"]:
            by_img[a["image_id"]].append(a)
    for iid, anns in sorted(by_img.items()):
        insts = []
        for a in anns:
            rle = segmentation_to_rle(a["segmentation"], *sizes[iid])
            insts.append(_instance(1, "dog", 0.9, a["bbox"], rle))
            dets.append({"image_id": iid, "category_id": 1, "bbox": a["bbox"], "score": 0.9, "segmentation": rle})
        if iid == gt["images"][0]["id"]:  # a class the ground truth does not have
            rle = segmentation_to_rle([[1, 1, 30, 1, 30, 30, 1, 30]], *sizes[iid])
            insts.append(_instance(2, "widget", 0.8, [1, 1, 29, 29], rle))
        rows.append(_row(iid, f"{coco_mini}/val2017/{iid}.jpg", sizes[iid][1], sizes[iid][0], insts))
    bank_cats = [{"id": 1, "name": "dog"}, {"id": 2, "name": "widget"}]
    shards = write_shards(tmp_path / "out", rows, run_json={"memory_bank": {"categories": bank_cats}})

    rep = evaluate_coco(str(gt_path), str(shards), split="dog,person", iou_types="bbox")
    per = {c["name"]: c for c in rep["bbox"]["per_class"]}
    assert per["dog"]["AP"] == pytest.approx(1.0) and per["person"]["AP"] == pytest.approx(0.0)
    assert rep["class_alignment"]["aligned"] == [{"name": "dog", "results_id": 1, "ground_truth_id": 18}]
    assert rep["class_alignment"]["absent"] == [{"id": 2, "name": "widget"}]
    assert rep["detections"]["not_in_ground_truth"] == 1
    text = format_report(rep)
    assert "classes aligned by name" in text and "'dog' 1 -> 18" in text and "memory bank in run.json" in text
    assert "WARNING: class(es) of the results not in the ground truth (by name): 'widget' (id 2, 1 detections)" in text

    # without run.json: the names in the shards say the same
    (shards / "run.json").unlink()
    rep2 = evaluate_coco(str(gt_path), str(shards), split="dog", iou_types="bbox")
    assert rep2["bbox"]["stats"]["AP"] == pytest.approx(1.0) and "category names in the shards" in rep2["notices"][0]

    # a results JSON beside its `segment` provenance (<stem>.meta.json) is aligned too
    res = tmp_path / "results.json"
    res.write_text(json.dumps(dets))
    (tmp_path / "results.meta.json").write_text(json.dumps({"memory_bank": {"categories": bank_cats}}))
    rep3 = evaluate_coco(str(gt_path), str(res), split="dog", iou_types="bbox")
    assert rep3["bbox"]["stats"]["AP"] == pytest.approx(1.0)
    # no names known: ids as given (the old behaviour), so "dog" id 1 scores as person
    (tmp_path / "results.meta.json").unlink()
    rep4 = evaluate_coco(str(gt_path), str(res), split="dog,person", iou_types="bbox")
    assert rep4["class_alignment"] is None
    assert {c["name"]: c["AP"] for c in rep4["bbox"]["per_class"]}["dog"] == pytest.approx(0.0)
