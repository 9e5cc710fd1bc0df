"""`memory show`: class-prototype similarity, near-duplicate classes, reference consistency, heatmap PNG.

Hand-built banks with known prototypes (orthogonal unit axes, plus a pair tilted by a known
angle), so every expected cosine is worked out by hand in the comments.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

from ntt_batch.method.memory_bank import MemoryBank
from ntt_batch.viz.memory_report import (
    MAX_LABELLED_CLASSES,
    class_consistency,
    default_heatmap_path,
    memory_bank_report,
    misplaced_references,
    near_duplicate_classes,
    prototype_similarity,
    render_similarity_heatmap,
    show_memory_bank,
)

ENCODER = {"name": "dinov2_vits14", "checkpoint_sha256": "x", "official": False}
NAMES = ["person", "rider", "bicycle", "cat"]
COS_DUP = 0.97  # person ~ rider


def _e(i: int, d: int = 8) -> torch.Tensor:
    v = torch.zeros(d)
    v[i] = 1.0
    return v


def _bank(references: dict | None = None) -> MemoryBank:
    """person = e0, rider = cos·e0 + sin·e1 (cosine 0.97 to person), bicycle = e2, cat = e3.

    Shots: person 2 (both along e0: consistency 1), rider 1, bicycle 3 (e2 + e4/2 twice,
    e2 - e4/2 once: mean e2 + e4/6), cat 1. Instance prototypes are un-normalised on purpose
    (the bank normalises the class mean; consistency normalises each instance).
    """
    s = math.sqrt(1 - COS_DUP**2)
    rider = COS_DUP * _e(0) + s * _e(1)
    protos = [
        2.0 * _e(0),
        3.0 * _e(0),
        5.0 * rider,
        _e(2) + 0.5 * _e(4),
        _e(2) - 0.5 * _e(4),
        _e(2) + 0.5 * _e(4),
        _e(3),
    ]
    labels = [0, 0, 1, 2, 2, 2, 3]
    return MemoryBank(
        categories=[{"id": i + 1, "name": n} for i, n in enumerate(NAMES)],
        instance_prototypes=torch.stack(protos),
        instance_labels=torch.tensor(labels),
        encoder=dict(ENCODER),
        references=references or {},
    )


def test_prototype_similarity_values():
    sim = prototype_similarity(_bank())
    assert sim.shape == (4, 4) and sim.dtype == torch.float32
    assert torch.allclose(sim, sim.T)
    assert torch.equal(torch.diagonal(sim), torch.ones(4))
    assert sim[0, 1] == pytest.approx(COS_DUP, abs=1e-6)
    # bicycle's prototype is normalize(e2 + e4/6): orthogonal to e0, e1 (rider) and e3 (cat)
    for i, j in [(0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]:
        assert sim[i, j] == pytest.approx(0.0, abs=1e-6)


def test_near_duplicates_detected_and_sorted():
    sim = prototype_similarity(_bank())
    pairs = near_duplicate_classes(sim, NAMES, 0.95)
    assert [(a, b) for a, b, _ in pairs] == [("person", "rider")]
    assert pairs[0][2] == pytest.approx(COS_DUP, abs=1e-6)
    assert near_duplicate_classes(sim, NAMES, 0.98) == []  # 0.97 < 0.98: not flagged
    # a hand-made matrix: sorted by similarity, highest first; the diagonal never counts
    m = torch.tensor([[1.0, 0.96, 0.99], [0.96, 1.0, 0.10], [0.99, 0.10, 1.0]])
    got = near_duplicate_classes(m, ["a", "b", "c"], 0.95)
    assert [(a, b) for a, b, _ in got] == [("a", "c"), ("a", "b")]
    with pytest.raises(ValueError, match="does not match 2 class names"):
        near_duplicate_classes(m, ["a", "b"], 0.95)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        near_duplicate_classes(m, ["a", "b", "c"], 1.5)


def test_class_consistency_and_misplaced():
    bank = _bank()
    cons = {c.name: c for c in class_consistency(bank)}
    assert cons["person"].shots == 2 and cons["person"].mean == pytest.approx(1.0)  # both along e0
    assert cons["rider"].shots == 1 and cons["rider"].mean == pytest.approx(1.0) and cons["rider"].worst is None
    # bicycle: P = normalize(e2 + e4/6) = (6 e2 + e4)/sqrt(37); references normalize(e2 ± 0.5 e4)
    # = (2 e2 ± e4)/sqrt(5): cosine (12 ± 1)/sqrt(185) → 13/sqrt(185) twice and 11/sqrt(185) once
    exp_min = 11 / math.sqrt(185)
    exp_mean = (13 + 13 + 11) / 3 / math.sqrt(185)
    assert cons["bicycle"].min == pytest.approx(exp_min, abs=1e-6)
    assert cons["bicycle"].mean == pytest.approx(exp_mean, abs=1e-6)
    assert cons["bicycle"].worst == 4  # the e2 - 0.5·e4 row
    # nothing is closer to another class than to its own here; make one reference "wrong":
    assert misplaced_references(bank) == []
    protos = bank.instance_prototypes.clone()
    protos[3] = _e(3)  # a "bicycle" reference that is really a cat: cosine 1 to cat, 1/sqrt(5) to bicycle
    bad = MemoryBank(
        categories=bank.categories,
        instance_prototypes=protos,
        instance_labels=bank.instance_labels,
        encoder=dict(ENCODER),
    )
    mis = misplaced_references(bad)
    assert [(m["row"], m["class"], m["closer_to"]) for m in mis] == [(3, "bicycle", "cat")]
    # bicycle's prototype is now normalize(2 e2 + e3) = (2 e2 + e3)/sqrt(5)
    assert mis[0]["own"] == pytest.approx(1 / math.sqrt(5), abs=1e-6) and mis[0]["other"] == pytest.approx(1.0)
    assert "references closer to another class's prototype than to their own: 1" in memory_bank_report(bad)


def test_report_mentions_pair_and_basics():
    refs = {
        "source": {"kind": "coco-sample", "annotations": "train.json", "seed": 33},
        "instances": [{"annotation_id": 100 + i, "file_name": f"{i}.jpg"} for i in range(7)],
    }
    text = memory_bank_report(_bank(refs), 0.95)
    assert "4 classes" in text and "7 reference instances" in text and "feature dim 8" in text
    assert "dinov2_vits14" in text and "not the official weights" in text
    assert "shots per class: 1-3 (ragged)" in text and "bicycle 3" in text
    assert "person ~ rider: 0.97" in text
    assert "detections between them will be confused" in text and "merge the classes" in text
    # the least consistent multi-shot class is listed with its least typical reference by annotation id
    assert "bicycle: 0.91 over 3 references" in text and "annotation 104 in 4.jpg" in text
    assert "1-shot classes" in text and "rider" in text
    assert "seed 33" in text and "preference" not in text
    refs["source"]["prefer"] = {"min_area_percentile": 50.0, "max_center_distance": None, "min_edge_distance": None}
    assert "reference preference: box area >= p50" in memory_bank_report(_bank(refs), 0.95)
    # without the pair: says none
    assert "near-duplicate classes (cosine >= 0.99): none" in memory_bank_report(_bank(), 0.99)


def test_heatmap_png(tmp_path):
    bank = _bank()
    sim = prototype_similarity(bank)
    out = render_similarity_heatmap(sim, NAMES, tmp_path / "sub" / "h.png", threshold=0.95)
    assert out == tmp_path / "sub" / "h.png" and out.is_file()
    assert [p.name for p in out.parent.iterdir()] == ["h.png"]  # no temporary file left
    with Image.open(out) as im:
        im.load()
        assert im.format == "PNG" and im.mode == "RGB"
        w, h = im.size
        a = np.asarray(im).astype(int)
    # 4 classes → 40 px cells: a 160 px grid plus labels, colour bar and title around it
    assert 160 < w < 600 and 160 < h < 600
    # find the grid: the top-left diagonal cell (person, person = 1.0) is viridis yellow, the
    # cell (person, bicycle = 0.0) two cells to the right is viridis dark purple
    yellow = np.abs(a - np.array([253, 231, 37])).sum(axis=2) < 6
    ys, xs = np.nonzero(yellow)
    # the grid's first row of yellow starts at its left edge: the smallest x among yellow pixels
    # that have 30+ yellow pixels below them in the same column
    top, left = None, None
    for y, x in sorted(zip(ys.tolist(), xs.tolist())):
        if yellow[y : y + 30, x].all() and yellow[y, x : x + 30].all():
            top, left = y, x
            break
    assert top is not None, "no 40 px yellow diagonal cell found"
    cell = 40
    hi = a[top + cell // 2, left + cell // 2]  # (person, person) = 1.0
    lo = a[top + cell // 2, left + 2 * cell + cell // 2]  # (person, bicycle) = 0.0
    dup = a[top + cell // 2, left + cell + cell // 2]  # (person, rider) = 0.97, inside the red frame
    assert np.abs(hi - lo).sum() > 200, (hi, lo)
    assert tuple(lo) == (68, 1, 84)  # viridis low end (scale 0..1 here: no negative cosine)
    assert np.abs(dup - hi).sum() < 40  # 0.97 is nearly as yellow as 1.0
    # the red near-duplicate frame is on the (person, rider) cell's border
    assert tuple(a[top + cell // 2, left + cell + 1]) == (230, 30, 30)
    assert tuple(a[top + 2 * cell + cell // 2, left + 2 * cell + 1]) != (230, 30, 30)  # bicycle diagonal: no frame


def test_heatmap_many_classes_unlabelled(tmp_path):
    c = MAX_LABELLED_CLASSES + 20
    torch.manual_seed(0)
    bank = MemoryBank(
        categories=[{"id": i + 1, "name": f"class {i}"} for i in range(c)],
        instance_prototypes=torch.randn(c, 16),
        instance_labels=torch.arange(c),
        encoder=dict(ENCODER),
    )
    out = render_similarity_heatmap(prototype_similarity(bank), bank.category_names, tmp_path / "big.png")
    with Image.open(out) as im:
        w, h = im.size
    cell = 960 // c  # 9 px: unlabelled cells shrink below the 12 px labelled minimum
    assert w >= c * cell and h >= c * cell and h < c * cell + 100  # no rotated-label band on top
    # labelled at 80 classes: 12 px cells and the rotated names make it taller than wide-grid + title
    bank80 = MemoryBank(
        categories=bank.categories[:80],
        instance_prototypes=bank.instance_prototypes[:80],
        instance_labels=torch.arange(80),
        encoder=dict(ENCODER),
    )
    out80 = render_similarity_heatmap(prototype_similarity(bank80), bank80.category_names, tmp_path / "b80.png")
    with Image.open(out80) as im:
        assert im.size[1] > 80 * 12 + 40


def test_show_memory_bank_round_trip(tmp_path, monkeypatch):
    bank_dir = _bank().save(tmp_path / "banks" / "my-bank")
    before = sorted(os.listdir(bank_dir))
    res = show_memory_bank(bank_dir, tmp_path / "sim.png", threshold=0.95)
    assert [(a, b) for a, b, _ in res["pairs"]] == [("person", "rider")]
    assert res["png"] == tmp_path / "sim.png" and res["png"].is_file()
    assert "person ~ rider: 0.97" in res["report"] and "memory bank my-bank" in res["report"]
    assert res["labelled"] is True
    assert torch.allclose(res["similarity"], prototype_similarity(MemoryBank.load(bank_dir)))
    # default: ./<bank name>-similarity.png in the current folder, never inside the bank
    monkeypatch.chdir(tmp_path)
    res = show_memory_bank(bank_dir)
    assert res["png"] == tmp_path / "my-bank-similarity.png" == default_heatmap_path(bank_dir)
    assert res["png"].is_file()
    assert sorted(os.listdir(bank_dir)) == before
    # report only
    res = show_memory_bank(bank_dir, tmp_path / "none.png", png=False)
    assert res["png"] is None and not (tmp_path / "none.png").exists()
    with pytest.raises(FileNotFoundError, match="not a memory bank"):
        show_memory_bank(tmp_path)
