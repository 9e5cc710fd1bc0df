"""Tests for ntt_batch.references (method.md §1 sampler, references.json, custom refs).

Filter checks use independent inline arithmetic on the raw annotations; expected samples on a
hand-built COCO dict come from Python's own RNG (a separate random.Random instance).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ntt_batch.hashing import file_sha256
from ntt_batch.references.coco import FEW_SHOT_CLASS_NAMES, load_coco, resolve_categories
from ntt_batch.references.files import load_references, save_references
from ntt_batch.references.importers import references_from_coco_annotations, references_from_csv
from ntt_batch.references.sampler import is_valid_reference, sample_references, sample_references_from_file
from ntt_batch.storage.masks import decode_rle

# method.md §5.1 table: COCO ids of the 20 few-shot classes in class-index order.
FEW_SHOT_IDS = [1, 2, 3, 4, 5, 6, 7, 9, 16, 17, 18, 19, 20, 21, 44, 62, 63, 64, 67, 72]
# /work/shared/data/README.md: valid references per class in coco_mini train2017, counted as
# distinct images holding at least one valid instance (= the most shots the sampler can give).
README_VALID = {
    "person": 42, "bicycle": 3, "car": 7, "motorcycle": 3, "airplane": 1, "bus": 4,
    "train": 1, "boat": 1, "bird": 3, "cat": 3, "dog": 5, "horse": 1, "sheep": 2, "cow": 2,
    "bottle": 6, "chair": 14, "couch": 1, "potted plant": 7, "dining table": 7, "tv": 5,
}  # fmt: skip
ONE_VALID = ["airplane", "train", "boat", "horse", "couch"]


def _data_dir() -> Path:
    env = os.environ.get("NTT_SHARED_DATA")
    base = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return base / "coco_mini"


TRAIN_JSON = _data_dir() / "annotations" / "instances_train2017.json"
VAL_JSON = _data_dir() / "annotations" / "instances_val2017.json"
needs_data = pytest.mark.skipif(
    not TRAIN_JSON.is_file(),
    reason=f"shared coco_mini data not found at {_data_dir()} (set NTT_SHARED_DATA to 'data')",
)


@pytest.fixture(scope="module")
def train() -> dict[str, Any]:
    with open(TRAIN_JSON) as f:
        return json.load(f)


def _valid_inline(ann: dict[str, Any], img: dict[str, Any]) -> bool:
    """method.md §1 filter, written out independently of the code under test."""
    x, y, w, h = ann["bbox"]
    return (
        ann.get("iscrowd", 0) != 1
        and w >= 32
        and h >= 32
        and x >= 10
        and y >= 10
        and img["width"] - (x + w) >= 10
        and img["height"] - (y + h) >= 10
    )


# --------------------------------------------------------------------------------------------
# Real data (coco_mini train2017)
# --------------------------------------------------------------------------------------------


@needs_data
def test_readme_valid_counts_match_inline_filter(train: dict[str, Any]) -> None:
    imgs = {im["id"]: im for im in train["images"]}
    names = {c["id"]: c["name"] for c in train["categories"]}
    images_with_valid: dict[str, set[int]] = {}
    for a in train["annotations"]:
        n = names[a["category_id"]]
        if n in README_VALID and _valid_inline(a, imgs[a["image_id"]]):
            images_with_valid.setdefault(n, set()).add(a["image_id"])
    assert {n: len(v) for n, v in images_with_valid.items()} == README_VALID
    # and the sampler reaches exactly these counts when asked for more shots than exist
    refs = sample_references(train, "few_shot", 1000, 0, allow_fewer=True)
    got: dict[str, int] = {}
    for r in refs["references"]:
        got[names[r["category_id"]]] = got.get(names[r["category_id"]], 0) + 1
    assert got == README_VALID


@needs_data
def test_few_shot_one_shot_all_classes(train: dict[str, Any]) -> None:
    refs = sample_references(train, "few_shot", 1, 33)
    assert refs["format"] == "ntt-batch/references" and refs["version"] == 1
    assert [c["id"] for c in refs["categories"]] == FEW_SHOT_IDS
    assert [c["name"] for c in refs["categories"]] == list(FEW_SHOT_CLASS_NAMES)
    # one reference per class, grouped in category-id order
    assert [r["category_id"] for r in refs["references"]] == FEW_SHOT_IDS
    imgs = {im["id"]: im for im in train["images"]}
    anns = {a["id"]: a for a in train["annotations"]}
    for r in refs["references"]:
        a = anns[r["annotation_id"]]
        im = imgs[r["image_id"]]
        assert a["category_id"] == r["category_id"] and a["image_id"] == r["image_id"]
        assert r["file_name"] == im["file_name"]
        assert (r["width"], r["height"]) == (im["width"], im["height"])
        assert r["bbox"] == a["bbox"] and r["segmentation"] == a["segmentation"]
    src = refs["source"]
    assert src["kind"] == "coco-sample" and src["shots"] == 1 and src["seed"] == 33
    assert src["split"] == "few_shot"
    assert (src["min_box_side"], src["border_margin"]) == (32, 10)


@needs_data
def test_determinism_and_seed_dependence(train: dict[str, Any]) -> None:
    a = sample_references(train, "few_shot", 1, 33)
    b = sample_references(train, "few_shot", 1, 33)
    assert a == b
    p0 = sample_references(train, "person", 5, 0)
    p0_again = sample_references(train, "person", 5, 0)
    p1 = sample_references(train, "person", 5, 1)
    assert p0 == p0_again
    ids0 = [r["annotation_id"] for r in p0["references"]]
    ids1 = [r["annotation_id"] for r in p1["references"]]
    assert ids0 != ids1  # person has 42 valid candidates
    # global random state is not touched
    random.seed(123)
    expected = random.random()
    random.seed(123)
    sample_references(train, "few_shot", 1, 7)
    assert random.random() == expected


@needs_data
@pytest.mark.parametrize("split,shots", [("few_shot", 1), ("person", 10), ("chair,dog", 3)])
def test_sampled_references_pass_filters_one_per_image(train: dict[str, Any], split: str, shots: int) -> None:
    refs = sample_references(train, split, shots, 5)
    imgs = {im["id"]: im for im in train["images"]}
    anns = {a["id"]: a for a in train["annotations"]}
    per_cat: dict[int, list[int]] = {}
    for r in refs["references"]:
        a = anns[r["annotation_id"]]
        assert _valid_inline(a, imgs[a["image_id"]]), r
        per_cat.setdefault(r["category_id"], []).append(r["image_id"])
    for cid, image_ids in per_cat.items():
        assert len(image_ids) == shots
        assert len(set(image_ids)) == len(image_ids), f"two references of {cid} share an image"
    assert sorted(per_cat) == [c["id"] for c in refs["categories"]]


@needs_data
def test_two_shot_fails_for_one_valid_classes(train: dict[str, Any]) -> None:
    with pytest.raises(ValueError) as e:
        sample_references(train, "few_shot", 2, 33)
    msg = str(e.value)
    for name in ONE_VALID:
        assert f"'{name}'" in msg
    assert "--allow-fewer-shots" in msg
    assert "'person'" not in msg and "'sheep'" not in msg

    refs = sample_references(train, "few_shot", 2, 33, allow_fewer=True)
    names = {c["id"]: c["name"] for c in refs["categories"]}
    counts: dict[str, int] = {}
    for r in refs["references"]:
        counts[names[r["category_id"]]] = counts.get(names[r["category_id"]], 0) + 1
    assert counts == {n: (1 if n in ONE_VALID else 2) for n in FEW_SHOT_CLASS_NAMES}
    assert refs["source"]["allow_fewer_shots"] is True


@needs_data
def test_allow_fewer_takes_all_distinct_images(train: dict[str, Any]) -> None:
    refs = sample_references(train, "bus,sheep", 50, 3, allow_fewer=True)
    imgs = {im["id"]: im for im in train["images"]}
    for cid in (6, 20):
        valid_imgs = {
            a["image_id"]
            for a in train["annotations"]
            if a["category_id"] == cid and _valid_inline(a, imgs[a["image_id"]])
        }
        got = [r["image_id"] for r in refs["references"] if r["category_id"] == cid]
        assert sorted(got) == sorted(valid_imgs)


@needs_data
def test_sample_from_file_records_sha(tmp_path: Path) -> None:
    refs = sample_references_from_file(TRAIN_JSON, "cat", 2, 1)
    assert refs["source"]["annotations"] == str(TRAIN_JSON)
    sha = hashlib.sha256(TRAIN_JSON.read_bytes()).hexdigest()
    assert refs["source"]["annotations_sha256"] == sha == file_sha256(TRAIN_JSON)
    first_id = json.loads(TRAIN_JSON.read_text())["annotations"][0]["id"]
    assert load_coco(TRAIN_JSON)["annotations"][0]["id"] == first_id


# --------------------------------------------------------------------------------------------
# Hand-built COCO: exact sample, category order of first annotation
# --------------------------------------------------------------------------------------------


def _tiny_coco() -> dict[str, Any]:
    def ann(i: int, cat: int, img: int, bbox: list[float], crowd: int = 0) -> dict[str, Any]:
        x, y, w, h = bbox
        return {
            "id": i, "category_id": cat, "image_id": img, "bbox": bbox, "iscrowd": crowd,
            "area": w * h, "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
        }  # fmt: skip

    good = [20.0, 20.0, 50.0, 50.0]  # inside a 200 x 100 image with margins >= 10
    return {
        "images": [{"id": i, "file_name": f"{i:04d}.jpg", "width": 200, "height": 100} for i in (10, 11, 12, 13)],
        "categories": [
            {"id": 1, "name": "apple"},
            {"id": 2, "name": "bear"},
            {"id": 3, "name": "cup"},
            {"id": 4, "name": "dune"},
        ],
        # "bear" (id 2) appears first in the file, so the reference shuffles it before "apple"
        "annotations": [
            ann(100, 2, 10, good),
            ann(101, 1, 10, good),
            ann(102, 2, 11, good),
            ann(103, 1, 11, good),
            ann(104, 1, 12, good),
            ann(105, 2, 12, good),
            ann(106, 1, 12, [100.0, 30.0, 40.0, 40.0]),  # valid, same image as 104
            ann(107, 1, 13, [5.0, 20.0, 50.0, 50.0]),  # x = 5 < 10: invalid
            ann(108, 1, 13, good, crowd=1),  # crowd: invalid
            ann(109, 4, 13, [20.0, 20.0, 31.0, 50.0]),  # w = 31 < 32: invalid ("dune")
        ],
    }


def _simulate(pairs: list[tuple[int, int]], rng: random.Random, shots: int) -> list[int]:
    """Shuffle with Python's RNG, then take valid (known by hand) pairs, one per image."""
    invalid = {107, 108, 109}
    pairs = list(pairs)
    rng.shuffle(pairs)
    used: set[int] = set()
    out: list[int] = []
    for img, a in pairs:
        if a in invalid or img in used:
            continue
        used.add(img)
        out.append(a)
        if len(out) == shots:
            break
    return out


def test_tiny_exact_sample_and_first_annotation_order() -> None:
    coco = _tiny_coco()
    bear = [(10, 100), (11, 102), (12, 105)]
    apple = [(10, 101), (11, 103), (12, 104), (12, 106), (13, 107), (13, 108)]
    order_matters = False
    for seed in range(30):
        for shots in (1, 2, 3):
            rng = random.Random(seed)
            exp_bear = _simulate(bear, rng, shots)  # bear's list is shuffled first
            exp_apple = _simulate(apple, rng, shots)
            refs = sample_references(coco, "apple,bear", shots, seed)
            got = [(r["category_id"], r["annotation_id"]) for r in refs["references"]]
            # output grouped by category id (apple = 1 first), each in sampled order
            assert got == [(1, a) for a in exp_apple] + [(2, a) for a in exp_bear], (seed, shots)
            rng_wrong = random.Random(seed)  # shuffling in category-id order instead
            wrong_apple = _simulate(apple, rng_wrong, shots)
            wrong_bear = _simulate(bear, rng_wrong, shots)
            if (wrong_apple, wrong_bear) != (exp_apple, exp_bear):
                order_matters = True
    assert order_matters, "the tiny data set should exercise the first-annotation ordering"


def test_tiny_categories_and_fields() -> None:
    refs = sample_references(_tiny_coco(), "bear,apple", 1, 0)
    assert refs["categories"] == [{"id": 1, "name": "apple"}, {"id": 2, "name": "bear"}]
    r = refs["references"][0]
    assert set(r) == {
        "category_id", "image_id", "file_name", "width", "height", "annotation_id", "bbox",
        "segmentation",
    }  # fmt: skip
    assert r["file_name"] == f"{r['image_id']:04d}.jpg" and (r["width"], r["height"]) == (200, 100)
    json.dumps(refs)  # plain JSON-able


def test_tiny_zero_reference_classes_always_error() -> None:
    coco = _tiny_coco()
    # "cup" has no annotation at all; "dune" has only an invalid one
    for split in ("cup", "apple,cup", "dune"):
        for allow in (False, True):
            with pytest.raises(ValueError) as e:
                sample_references(coco, split, 1, 0, allow_fewer=allow)
            assert ("'cup'" in str(e.value)) or ("'dune'" in str(e.value))
            assert "0 valid" in str(e.value)
    # 3-shot apple: 3 distinct valid images (10, 11, 12) -> fine; 4-shot -> error unless allowed
    assert len(sample_references(coco, "apple", 3, 0)["references"]) == 3
    with pytest.raises(ValueError, match="'apple'.*3 valid"):
        sample_references(coco, "apple", 4, 0)
    assert len(sample_references(coco, "apple", 4, 0, allow_fewer=True)["references"]) == 3
    with pytest.raises(ValueError):
        sample_references(coco, "apple", 0, 0)


def test_custom_filter_thresholds() -> None:
    coco = _tiny_coco()
    # with a 31 px minimum side, "dune"'s 31 x 50 box becomes valid
    refs = sample_references(coco, "dune", 1, 0, min_box_side=31)
    assert [r["annotation_id"] for r in refs["references"]] == [109]
    # with a 5 px border margin, annotation 107 (x = 5) becomes a candidate for image 13
    refs = sample_references(coco, "apple", 4, 0, border_margin=5)
    assert sorted(r["image_id"] for r in refs["references"]) == [10, 11, 12, 13]


def test_is_valid_reference_boundaries() -> None:
    W, H = 200, 100
    assert is_valid_reference({"bbox": [10, 10, 32, 32]}, W, H)
    assert is_valid_reference({"bbox": [10, 10, 180, 80]}, W, H)  # exactly 10 px from all sides
    assert not is_valid_reference({"bbox": [10, 10, 180.5, 80]}, W, H)
    assert not is_valid_reference({"bbox": [10, 10, 180, 80.01]}, W, H)
    assert not is_valid_reference({"bbox": [9.99, 10, 32, 32]}, W, H)
    assert not is_valid_reference({"bbox": [10, 9.5, 32, 32]}, W, H)
    assert not is_valid_reference({"bbox": [10, 10, 31.9, 32]}, W, H)
    assert not is_valid_reference({"bbox": [10, 10, 32, 31.9]}, W, H)
    assert not is_valid_reference({"bbox": [10, 10, 32, 32], "iscrowd": 1}, W, H)
    assert is_valid_reference({"bbox": [10, 10, 32, 32], "iscrowd": 0}, W, H)


# --------------------------------------------------------------------------------------------
# Split parsing
# --------------------------------------------------------------------------------------------


@needs_data
def test_resolve_categories(train: dict[str, Any]) -> None:
    cats = train["categories"]
    fs = resolve_categories(cats, "few_shot")
    assert [c["id"] for c in fs] == FEW_SHOT_IDS
    assert len(resolve_categories(cats, "all")) == 80
    assert [c["id"] for c in resolve_categories(cats, "dog,person")] == [1, 18]
    assert [c["name"] for c in resolve_categories(cats, "18,1")] == ["person", "dog"]
    mixed = resolve_categories(cats, "tv, 18 ,potted plant,person,1")
    assert [c["id"] for c in mixed] == [1, 18, 64, 72]
    assert resolve_categories(cats, ["cat", 1]) == [
        {"id": 1, "name": "person"},
        {"id": 17, "name": "cat"},
    ]
    with pytest.raises(ValueError) as e:
        resolve_categories(cats, "person,unicorn")
    assert "unicorn" in str(e.value) and "person" in str(e.value)
    with pytest.raises(ValueError, match="999"):
        resolve_categories(cats, "999")
    with pytest.raises(ValueError):
        resolve_categories(cats, " , ")
    with pytest.raises(ValueError, match="unicorn"):
        sample_references(train, "cat,unicorn", 1, 0)


def test_resolve_few_shot_needs_all_classes() -> None:
    with pytest.raises(ValueError, match="few_shot"):
        resolve_categories([{"id": 1, "name": "person"}], "few_shot")


# --------------------------------------------------------------------------------------------
# references.json save / load / validation
# --------------------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path: Path) -> None:
    refs = sample_references(_tiny_coco(), "apple,bear", 2, 4)
    p = tmp_path / "references.json"
    save_references(refs, p)
    assert load_references(p) == refs
    assert json.loads(p.read_text()) == refs
    assert not (tmp_path / "references.json.tmp").exists()
    # categories out of order in the file are normalised to id order on load
    data = json.loads(p.read_text())
    data["categories"].reverse()
    p.write_text(json.dumps(data))
    assert [c["id"] for c in load_references(p)["categories"]] == [1, 2]


def _write(p: Path, obj: Any) -> Path:
    p.write_text(json.dumps(obj))
    return p


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda d: d.update(format="something-else"), "format"),
        (lambda d: d.update(version=2), "version"),
        (lambda d: d.pop("categories"), "categories"),
        (lambda d: d.pop("references"), "references"),
        (lambda d: d["references"][0].update(category_id=77), "category_id 77"),
        (lambda d: d["references"][0].pop("file_name"), "file_name"),
        (lambda d: d["references"][0].pop("width"), "width"),
        (lambda d: [d["references"][0].pop(k) for k in ("bbox", "segmentation")], "neither"),
        (lambda d: d["categories"].append({"id": 9, "name": "zebra"}), "zebra"),
        (lambda d: d["categories"].append({"id": 1, "name": "again"}), "duplicate"),
        (lambda d: d["references"][0].update(bbox=[1, 2, 3]), "bbox"),
    ],
)
def test_load_validation_errors(tmp_path: Path, mutate: Any, match: str) -> None:
    refs = sample_references(_tiny_coco(), "apple,bear", 1, 0)
    mutate(refs)
    p = _write(tmp_path / "bad_refs.json", refs)
    with pytest.raises(ValueError, match=match) as e:
        load_references(p)
    assert "bad_refs.json" in str(e.value)


def test_load_not_json(tmp_path: Path) -> None:
    p = tmp_path / "refs.json"
    p.write_text("{not json")
    with pytest.raises(ValueError, match="refs.json"):
        load_references(p)


def test_box_only_reference_is_legal(tmp_path: Path) -> None:
    refs = sample_references(_tiny_coco(), "apple", 1, 0)
    del refs["references"][0]["segmentation"]
    p = tmp_path / "r.json"
    save_references(refs, p)
    assert "segmentation" not in load_references(p)["references"][0]


def test_save_refuses_invalid(tmp_path: Path) -> None:
    refs = sample_references(_tiny_coco(), "apple", 1, 0)
    refs["categories"].append({"id": 2, "name": "bear"})
    with pytest.raises(ValueError, match="bear"):
        save_references(refs, tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


# --------------------------------------------------------------------------------------------
# Custom references
# --------------------------------------------------------------------------------------------


def test_references_from_coco_annotations_tiny(tmp_path: Path) -> None:
    coco = _tiny_coco()
    # a box-only annotation (no segmentation) is kept without a segmentation key
    coco["annotations"].append({"id": 110, "category_id": 3, "image_id": 11, "bbox": [1, 1, 5, 5], "iscrowd": 0})
    refs = references_from_coco_annotations(coco)
    # "all": every category with a usable annotation; no size/border filters; crowd dropped
    assert [c["name"] for c in refs["categories"]] == ["apple", "bear", "cup", "dune"]
    got = [(r["category_id"], r["annotation_id"]) for r in refs["references"]]
    assert got == [
        (1, 101), (1, 103), (1, 104), (1, 106), (1, 107),
        (2, 100), (2, 102), (2, 105),
        (3, 110),
        (4, 109),
    ]  # fmt: skip
    cup = refs["references"][8]
    assert "segmentation" not in cup and cup["bbox"] == [1.0, 1.0, 5.0, 5.0]
    save_references(refs, tmp_path / "r.json")
    assert load_references(tmp_path / "r.json") == refs

    capped = references_from_coco_annotations(coco, split="apple,2", max_per_class=2)
    assert [r["annotation_id"] for r in capped["references"]] == [101, 103, 100, 102]

    del coco["annotations"][-1]
    refs = references_from_coco_annotations(coco)  # "cup" now has nothing: dropped under "all"
    assert [c["name"] for c in refs["categories"]] == ["apple", "bear", "dune"]
    assert refs["source"]["dropped_categories"] == ["cup"]
    with pytest.raises(ValueError, match="'cup'"):
        references_from_coco_annotations(coco, split="apple,cup")


@needs_data
def test_references_from_coco_annotations_val() -> None:
    val = load_coco(VAL_JSON)
    refs = references_from_coco_annotations(val, split="cat,dog")
    expected = [
        a["id"] for cid in (17, 18) for a in val["annotations"]
        if a["category_id"] == cid and a.get("iscrowd", 0) != 1
    ]  # fmt: skip
    assert [r["annotation_id"] for r in refs["references"]] == expected


def _make_image(path: Path, w: int, h: int) -> None:
    from PIL import Image

    Image.fromarray(np.full((h, w, 3), 128, dtype=np.uint8)).save(path)


def test_references_from_csv(tmp_path: Path) -> None:
    from PIL import Image

    img_dir = tmp_path / "images"
    img_dir.mkdir()
    _make_image(img_dir / "a.png", 20, 16)  # W = 20, H = 16
    _make_image(img_dir / "b.jpg", 30, 10)
    masks = tmp_path / "ann" / "masks"
    masks.mkdir(parents=True)
    m = np.zeros((16, 20), dtype=np.uint8)
    m[3:7, 5:12] = 255  # rows 3..6, cols 5..11 -> 4 x 7 = 28 px
    Image.fromarray(m).save(masks / "a_0.png")
    m2 = np.zeros((10, 30), dtype=np.uint8)
    m2[0:2, 0:3] = 1
    Image.fromarray(m2, mode="L").save(masks / "b_0.png")
    csv_path = tmp_path / "ann" / "refs.csv"
    csv_path.write_text(
        "image,category,mask\na.png,widget,masks/a_0.png\nb.jpg,gadget,masks/b_0.png\na.png,gadget,masks/a_0.png\n"
    )
    refs = references_from_csv(csv_path, img_dir)
    assert refs["categories"] == [{"id": 1, "name": "widget"}, {"id": 2, "name": "gadget"}]
    rs = refs["references"]
    assert [(r["category_id"], r["file_name"]) for r in rs] == [
        (1, "a.png"), (2, "b.jpg"), (2, "a.png")
    ]  # fmt: skip
    assert [r["image_id"] for r in rs] == [1, 2, 1]
    assert (rs[0]["width"], rs[0]["height"]) == (20, 16)
    assert np.array_equal(decode_rle(rs[0]["segmentation"]), m > 0)
    assert rs[0]["bbox"] == [5.0, 3.0, 7.0, 4.0]
    assert rs[1]["bbox"] == [0.0, 0.0, 3.0, 2.0]
    out = tmp_path / "refs.json"
    save_references(refs, out)
    assert load_references(out) == refs

    box_csv = tmp_path / "boxes.csv"
    with open(box_csv, "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["image", "category", "x", "y", "w", "h"])
        wr.writerow(["images/b.jpg", "thing", "1", "2", "10.5", "8"])
    refs = references_from_csv(box_csv, None)  # image paths relative to the CSV's folder
    (r,) = refs["references"]
    assert r["bbox"] == [1.0, 2.0, 10.5, 8.0] and "segmentation" not in r
    assert (r["width"], r["height"]) == (30, 10)
    save_references(refs, out)


@pytest.mark.parametrize(
    "body,match",
    [
        ("image,category,polygon\n", "line 1"),
        ("image,category,mask\na.png,w,masks/a_0.png\nb.png,w,masks/a_0.png\n", "line 3.*size"),
        ("image,category,mask\nnope.png,w,masks/a_0.png\n", "line 2.*not found"),
        ("image,category,mask\na.png,w,masks/none.png\n", "line 2.*not found"),
        ("image,category,mask\na.png,w,masks/empty.png\n", "line 2.*empty"),
        ("image,category,x,y,w,h\na.png,w,0,0,21,5\n", "line 2.*outside"),
        ("image,category,x,y,w,h\na.png,w,0,0,0,5\n", "line 2"),
        ("image,category,x,y,w,h\n\na.png,w,zero,0,3,5\n", "line 3.*numbers"),
        ("image,category,x,y,w,h\na.png,w,1,1\n", "line 2.*columns"),
        ("image,category,mask\n", "no data rows"),
    ],
)
def test_csv_errors(tmp_path: Path, body: str, match: str) -> None:
    from PIL import Image

    _make_image(tmp_path / "a.png", 20, 16)
    _make_image(tmp_path / "b.png", 20, 15)
    (tmp_path / "masks").mkdir()
    m = np.zeros((16, 20), dtype=np.uint8)
    m[1:3, 1:3] = 1
    Image.fromarray(m).save(tmp_path / "masks" / "a_0.png")
    Image.fromarray(np.zeros((16, 20), dtype=np.uint8)).save(tmp_path / "masks" / "empty.png")
    p = tmp_path / "refs.csv"
    p.write_text(body)
    with pytest.raises(ValueError, match=match) as e:
        references_from_csv(p, tmp_path)
    assert "refs.csv" in str(e.value)
