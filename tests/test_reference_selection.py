"""Optional reference-selection preference of `sample_references` (off by default).

Off must be the authors' sampler bit for bit (tests/test_references.py pins that sampler on COCO
and a hand-built set; here: off == no argument == an independent simulation of ``FSS``, for many
seeds). On: each criterion removes exactly the candidates worked out by hand below, the seeded
walk is unchanged (a skipped candidate is skipped like an invalid one), the choice is recorded in
``source`` (and so in the bank), and too few candidates give an error naming the class and the
criterion.

Synthetic COCO: images 400 x 300 (W x H), image centre (200, 150). Hand geometry of the "apple"
candidates (all pass the authors' filter: sides >= 32 px, >= 10 px from the borders):

====  ===============  =====  ===================  ===================================
ann   bbox x,y,w,h      area   centre distance*     edge distance** (min of x/W, y/H, ...)
====  ===============  =====  ===================  ===================================
201   150,100,100,100  10000  0                    min(.375, .333, .375, .333) = .333
202   180,130,40,40     1600  0                    min(.45, .433, .45, .433) = .433
203   20,110,80,80      6400  |60/400-.5|*2 = .7   20/400 = .05
204   150,12,120,90    10800  |57/300-.5|*2 = .62  12/300 = .04
205   160,120,60,60     3600  |190/400-.5|*2=.05   .4
208   30,30,40,40       1600  |50/400-.5|*2 = .75  30/400 = .075
====  ===============  =====  ===================  ===================================

\\* max(|cx/W - .5|, |cy/H - .5|) * 2;  ** as a fraction of the image side.
Not candidates: 206 (w = 20 < 32), 207 (crowd). 208 shares image 1 with 201.
Areas sorted: 1600, 1600, 3600, 6400, 10000, 10800 → p50 = (3600 + 6400) / 2 = 5000.
"bear": four identical large centred boxes — no criterion here ever rejects one.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
import torch

from ntt_batch.method.config import MemoryConfig
from ntt_batch.method.memory_bank import build_memory_bank
from ntt_batch.references.files import load_references, save_references
from ntt_batch.references.preferences import ReferencePreference
from ntt_batch.references.sampler import sample_references, sample_references_from_file

CENTRED = [150.0, 100.0, 100.0, 100.0]


def _coco() -> dict[str, Any]:
    def ann(i: int, cat: int, img: int, bbox: list[float], crowd: int = 0) -> dict[str, Any]:
        x, y, w, h = bbox
        return {
            "id": i,
            "category_id": cat,
            "image_id": img,
            "bbox": bbox,
            "iscrowd": crowd,
            "area": w * h,
            "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
        }

    return {
        "images": [{"id": i, "file_name": f"{i:03d}.jpg", "width": 400, "height": 300} for i in range(1, 9)],
        "categories": [{"id": 1, "name": "apple"}, {"id": 2, "name": "bear"}],
        # "bear" appears first in the file: its list is shuffled first (the authors' order)
        "annotations": [
            ann(101, 2, 1, CENTRED),
            ann(201, 1, 1, CENTRED),
            ann(202, 1, 2, [180.0, 130.0, 40.0, 40.0]),
            ann(102, 2, 2, CENTRED),
            ann(203, 1, 3, [20.0, 110.0, 80.0, 80.0]),
            ann(204, 1, 4, [150.0, 12.0, 120.0, 90.0]),
            ann(103, 2, 3, CENTRED),
            ann(205, 1, 5, [160.0, 120.0, 60.0, 60.0]),
            ann(206, 1, 6, [200.0, 150.0, 20.0, 50.0]),  # w < 32: not a candidate
            ann(207, 1, 7, CENTRED, crowd=1),  # crowd: not a candidate
            ann(208, 1, 1, [30.0, 30.0, 40.0, 40.0]),  # same image as 201
            ann(104, 2, 8, CENTRED),
        ],
    }


BEAR = [(1, 101), (2, 102), (3, 103), (8, 104)]
APPLE = [(1, 201), (2, 202), (3, 203), (4, 204), (5, 205), (6, 206), (7, 207), (1, 208)]
NOT_CANDIDATES = {206, 207}


def _simulate(pairs, rng: random.Random, shots: int, skip: set[int]) -> list[int]:
    """The authors' walk (FSS:L67-85): shuffle, skip invalid (here: + rejected), one per image."""
    pairs = list(pairs)
    rng.shuffle(pairs)
    used: set[int] = set()
    out: list[int] = []
    for img, a in pairs:
        if a in skip or img in used:
            continue
        used.add(img)
        out.append(a)
        if len(out) == shots:
            break
    return out


def _expected(seed: int, shots: int, apple_rejected: set[int] = frozenset()) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    bear = _simulate(BEAR, rng, shots, set())
    apple = _simulate(APPLE, rng, shots, NOT_CANDIDATES | set(apple_rejected))
    return [(1, a) for a in apple] + [(2, a) for a in bear]


def _got(refs: dict) -> list[tuple[int, int]]:
    return [(r["category_id"], r["annotation_id"]) for r in refs["references"]]


def _all_apples(prefer) -> set[int]:
    """Every apple reference the preference leaves (one per image): many shots, ragged allowed."""
    refs = sample_references(_coco(), "apple", 10, 0, allow_fewer=True, prefer=prefer)
    return {r["annotation_id"] for r in refs["references"]}


# ----------------------------------------------------------------------------- off = the authors'


@pytest.mark.parametrize("off", [None, "off", "", ReferencePreference(), {}])
def test_off_is_the_authors_sampler(off):
    for seed in range(25):
        for shots in (1, 2, 3):
            plain = sample_references(_coco(), "apple,bear", shots, seed, allow_fewer=True)
            with_off = sample_references(_coco(), "apple,bear", shots, seed, allow_fewer=True, prefer=off)
            assert with_off == plain, (seed, shots)
            assert _got(plain) == _expected(seed, shots), (seed, shots)
            assert "prefer" not in plain["source"] and "prefer_stats" not in plain["source"]


# ----------------------------------------------------------------------------- each criterion


def test_area_percentile_keeps_the_larger_objects():
    # p50 of the candidates' box areas = 5000 → 201 (10000), 203 (6400), 204 (10800)
    assert _all_apples(ReferencePreference(min_area_percentile=50)) == {201, 203, 204}
    assert _all_apples("area=100") == {204}  # only the largest
    # p0 keeps every candidate; 201 and 208 share image 1, so one of them (seed-dependent)
    got = _all_apples(ReferencePreference(min_area_percentile=0))
    assert got - {201, 208} == {202, 203, 204, 205} and len(got & {201, 208}) == 1
    st = sample_references(_coco(), "apple", 1, 0, prefer="area=50")["source"]["prefer_stats"]["apple"]
    assert st["candidates"] == 6 and st["kept"] == 3 and st["area_threshold_px2"] == pytest.approx(5000)
    assert st["rejected_by"] == {"min_area_percentile": 3}


def test_center_distance_keeps_centred_objects():
    # distances: 201 0, 202 0, 203 .7, 204 .62, 205 .05, 208 .75
    assert _all_apples(ReferencePreference(max_center_distance=0.5)) == {201, 202, 205}
    assert _all_apples("center=0.65") == {201, 202, 204, 205}
    assert _all_apples("centre=0") == {201, 202}  # exactly centred boxes only


def test_edge_distance_keeps_objects_away_from_the_borders():
    # edge distances: 201 .333, 202 .433, 203 .05, 204 .04, 205 .4, 208 .075
    got = _all_apples(ReferencePreference(min_edge_distance=0.045))
    assert got - {201, 208} == {202, 203, 205} and 204 not in got
    assert _all_apples("edge=0.06") - {201, 208} == {202, 205}
    assert _all_apples("edge=0.4") == {202, 205}


def test_criteria_combine():
    # area p50 → {201, 203, 204}; centre <= .5 → {201, 202, 205, (208 out)}: both → 201
    assert _all_apples("area=50,center=0.5") == {201}
    st = sample_references(_coco(), "apple", 1, 0, prefer="area=50,center=0.5")["source"]["prefer_stats"]["apple"]
    assert st["rejected_by"] == {"min_area_percentile": 3, "max_center_distance": 3}  # 203, 204 fail both


# ----------------------------------------------------------------------------- same seeded walk


def test_preference_only_skips_within_the_authors_shuffle():
    """On: the references are the first preferred candidates in the authors' shuffled order; the
    RNG is consumed exactly as without a preference, so "bear" (never rejected, shuffled first) and
    every later class keep their plain references for every seed."""
    rejected = {203, 204, 208}  # centre distance > .5
    differs = False
    for seed in range(25):
        for shots in (1, 2, 3):
            refs = sample_references(_coco(), "apple,bear", shots, seed, prefer="center=0.5")
            assert _got(refs) == _expected(seed, shots, rejected), (seed, shots)
            plain = sample_references(_coco(), "apple,bear", shots, seed)
            bear = [x for x in _got(refs) if x[0] == 2]
            assert bear == [x for x in _got(plain) if x[0] == 2]
            differs |= _got(refs) != _got(plain)
    assert differs, "the preference should change some apple samples"
    # the image of a rejected annotation is not used up: 208 (rejected) shares image 1 with 201
    assert 201 in _all_apples("center=0.5")


# ----------------------------------------------------------------------------- provenance


def test_recorded_in_source_and_bank(tmp_path):
    refs = sample_references(_coco(), "apple,bear", 2, 3, prefer="area=50,center=0.65,edge=0.03")
    src = refs["source"]
    assert src["prefer"] == {"min_area_percentile": 50.0, "max_center_distance": 0.65, "min_edge_distance": 0.03}
    assert src["prefer_stats"]["bear"] == {
        "candidates": 4,
        "kept": 4,
        "kept_images": 4,
        "rejected_by": {"min_area_percentile": 0, "max_center_distance": 0, "min_edge_distance": 0},
        "area_threshold_px2": 10000.0,
    }
    assert src["prefer_stats"]["apple"]["kept"] == 2  # 201, 204 (203 is .7 from the centre)
    assert {r["annotation_id"] for r in refs["references"] if r["category_id"] == 1} == {201, 204}
    assert ReferencePreference.parse(src["prefer"]) == ReferencePreference(50, 0.65, 0.03)
    # through references.json ...
    save_references(refs, tmp_path / "refs.json")
    assert load_references(tmp_path / "refs.json")["source"]["prefer"] == src["prefer"]

    # ... and into the memory bank (fake constant encoder: only the provenance matters here)
    class ConstantEncoder:  # the encoder interface: patch grid and a constant [B, 2, 2, 4] output
        patch_size, native_image_size = 14, 518

        def __call__(self, x):
            return torch.ones(x.shape[0], 2, 2, 4)

    cfg = MemoryConfig(crop_size=28)
    bank = build_memory_bank(
        refs,
        lambda ref: torch.zeros(300, 400, 3, dtype=torch.uint8).numpy(),
        ConstantEncoder(),
        encoder_info={"name": "fake", "checkpoint_sha256": "x", "official": False},
        config=cfg,
    )
    assert bank.references["source"]["prefer"] == src["prefer"]
    assert bank.metadata()["references"]["source"]["prefer_stats"]["apple"]["kept"] == 2


def test_from_file_passes_it_through(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps(_coco()))
    refs = sample_references_from_file(path, "apple", 1, 5, prefer=ReferencePreference(max_center_distance=0.5))
    assert refs["source"]["prefer"]["max_center_distance"] == 0.5 and refs["source"]["annotations"] == str(path)
    assert refs["references"][0]["annotation_id"] in {201, 202, 205}
    assert sample_references_from_file(path, "apple", 1, 5) == sample_references_from_file(
        path, "apple", 1, 5, prefer=None
    )


# ----------------------------------------------------------------------------- errors


def test_too_few_names_class_and_criterion():
    # centre <= .5 leaves 3 images (201, 202, 205): 4 shots fail, naming apple and the criterion
    with pytest.raises(ValueError) as e:
        sample_references(_coco(), "apple,bear", 4, 0, prefer="center=0.5")
    msg = str(e.value)
    assert "'apple' (id 1): 3 valid reference(s) found" in msg
    assert "rejected 3 of its 6 candidate(s)" in msg and "box centre too far from the image centre: 3" in msg
    assert "preference: box centre distance <= 0.5" in msg and "loosen it" in msg
    assert "'bear'" not in msg  # bear has its 4
    # allow_fewer: apple keeps the 3
    refs = sample_references(_coco(), "apple,bear", 4, 0, prefer="center=0.5", allow_fewer=True)
    assert sorted(r["annotation_id"] for r in refs["references"] if r["category_id"] == 1) == [201, 202, 205]
    # every candidate removed: an error even with allow_fewer
    for allow in (False, True):
        with pytest.raises(
            ValueError, match=r"'apple' \(id 1\): 0 valid.*rejected 6 of its 6.*too close to an image border: 6"
        ):
            sample_references(_coco(), "apple", 1, 0, prefer="edge=0.45", allow_fewer=allow)


@pytest.mark.parametrize(
    "bad, match",
    [
        ("area=150", r"min_area_percentile must be in \[0, 100\]"),
        ("center=-0.1", r"max_center_distance must be in \[0, 1\]"),
        ("edge=0.5", r"min_edge_distance must be in \[0, 0.5\)"),
        ("size=3", "bad reference preference 'size=3'"),
        ("area", "bad reference preference 'area'"),
        ("area=big", "bad number 'big'"),
        ({"area": 50}, "unknown reference preference key"),
    ],
)
def test_bad_preferences(bad, match):
    with pytest.raises(ValueError, match=match):
        sample_references(_coco(), "apple", 1, 0, prefer=bad)


def test_parse_forms():
    want = ReferencePreference(min_area_percentile=50, max_center_distance=0.6, min_edge_distance=0.05)
    assert ReferencePreference.parse("area=50, center=0.6, edge=0.05") == want
    assert ReferencePreference.parse("min_area_percentile=50,max-center-distance=0.6,edge=0.05") == want
    assert ReferencePreference.parse(want.to_dict()) == want
    assert ReferencePreference.parse(None) is None and ReferencePreference.parse("off") is None
    assert not ReferencePreference().active and want.active
    assert want.describe().startswith("box area >= p50")
    with pytest.raises(TypeError):
        ReferencePreference.parse(3)
