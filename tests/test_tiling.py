"""Tiled inference: the grid, the cross-tile merge on hand-built masks, and a tiled run end to end."""

from __future__ import annotations

import numpy as np
import pytest

from ntt_batch.method.config import ConfigError, SegmenterConfig
from ntt_batch.method.tiling import (
    TILE_BATCH,
    Piece,
    merge_pieces,
    needs_tiling,
    paint,
    runs_from_dense,
    tile_grid,
    tile_starts,
)
from ntt_batch.storage.masks import decode_rle, encode_rle


def test_tile_starts_cover_and_end_flush():
    assert tile_starts(500, 512, 64) == [0]
    assert tile_starts(1000, 512, 128) == [0, 384, 488]  # stride 384, the last one shifted back to end at 1000
    assert tile_starts(896, 512, 128) == [0, 384]
    for length, tile, ov in [(1000, 512, 128), (10000, 1024, 205), (1025, 1024, 0)]:
        starts = tile_starts(length, tile, ov)
        assert starts[0] == 0 and starts[-1] + tile == length
        assert all(b - a <= tile - ov for a, b in zip(starts, starts[1:]))  # neighbours overlap by ≥ ov
    grid = tile_grid((700, 1000), 512, 128)
    assert len(grid) == 2 * 3 and grid[0] == (0, 0, 512, 512) and grid[-1] == (188, 488, 700, 1000)


def test_tile_config_fields():
    cfg = SegmenterConfig(tile_size=1024, tile_overlap=0.25).validate()
    assert cfg.tile_overlap_px() == 256
    assert SegmenterConfig(tile_size=1024, tile_overlap=100).validate().tile_overlap_px() == 100
    assert needs_tiling((1025, 800), cfg) and not needs_tiling((1024, 1024), cfg)
    assert not needs_tiling((50000, 50000), SegmenterConfig())  # off by default
    assert not needs_tiling((50000, 50000), SegmenterConfig(tile_size=0))
    with pytest.raises(ConfigError, match="tile_overlap"):
        SegmenterConfig(tile_size=512, tile_overlap=512).validate()
    with pytest.raises(ConfigError, match="tile_size"):
        SegmenterConfig(tile_size=10).validate()
    with pytest.raises(ConfigError, match="tile_merge_threshold"):
        SegmenterConfig(tile_merge_threshold=1.5).validate()


def _piece(mask: np.ndarray, score: float, tile: int, cat: int = 1) -> Piece:
    col, start, end = runs_from_dense(mask)
    return Piece.from_runs(col, start, end, score, cat, f"c{cat}", tile)


def _rect(h, w, y0, y1, x0, x1) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_runs_roundtrip():
    rng = np.random.default_rng(0)
    m = rng.random((37, 23)) > 0.6
    col, start, end = runs_from_dense(m)
    np.testing.assert_array_equal(paint((col, start, end), (0, 0, 37, 23)), m)
    np.testing.assert_array_equal(paint((col, start, end), (5, 3, 30, 20)), m[5:30, 3:20])


def test_cross_border_merge_hand_built():
    """Tiles 0 (x 0..99) and 1 (x 60..159) of a 40 × 160 image overlap on x 60..99."""
    h, w = 40, 160
    # An object x 50..119 cut by both tiles' borders: tile 0 sees x 50..99, tile 1 sees x 60..119.
    cut_left = _piece(_rect(h, w, 10, 30, 50, 100), 0.9, tile=0)
    cut_right = _piece(_rect(h, w, 10, 30, 60, 120), 0.8, tile=1)
    # A small object inside the overlap, found whole by both tiles (slightly different masks).
    dup_a = _piece(_rect(h, w, 2, 8, 70, 80), 0.5, tile=1)
    dup_b = _piece(_rect(h, w, 2, 9, 70, 80), 0.6, tile=0)
    # Same place as the cut object, other class: never merged with it.
    other_class = _piece(_rect(h, w, 10, 30, 60, 120), 0.7, tile=1, cat=2)
    # Two overlapping instances of the same tile: the segmenter already ruled, left alone.
    same_tile_a = _piece(_rect(h, w, 32, 40, 0, 30), 0.4, tile=0)
    same_tile_b = _piece(_rect(h, w, 32, 40, 0, 25), 0.3, tile=0)
    # Overlapping the cut object's left part from another tile, but little: IoS 20/200 = 0.1 < 0.5.
    graze = _piece(_rect(h, w, 29, 39, 80, 100), 0.2, tile=1)
    pieces = [cut_left, cut_right, dup_a, dup_b, other_class, same_tile_a, same_tile_b, graze]
    out = merge_pieces(pieces, threshold=0.5)
    assert [p.score for p in out] == [0.9, 0.7, 0.6, 0.4, 0.3, 0.2]
    merged = out[0]
    np.testing.assert_array_equal(paint(merged.runs, (0, 0, h, w)), _rect(h, w, 10, 30, 50, 120))
    assert merged.box == (50, 10, 119, 29) and merged.area == 20 * 70 and merged.category_id == 1
    np.testing.assert_array_equal(paint(out[2].runs, (0, 0, h, w)), _rect(h, w, 2, 9, 70, 80))  # union of the dups
    assert out[1].category_id == 2
    # A higher threshold than the duplicates' IoS (60/60 = 1.0 is not > 1.0) keeps everything apart.
    assert len(merge_pieces(pieces, threshold=1.0)) == len(pieces)


def test_cross_tile_intersections_equal_brute_force():
    """Bulk counts (tile pair by tile pair, column chunks) = pairwise counts of the dense masks."""
    from ntt_batch.method.tiling import cross_tile_intersections

    rng = np.random.default_rng(1)
    h, w = 60, 90
    tiles = [(0, 0, 40, 50), (0, 40, 40, 90), (20, 0, 60, 50), (20, 40, 60, 90)]
    pieces, dense = [], []
    for t, (y0, x0, y1, x1) in enumerate(tiles):
        for _ in range(5):
            m = np.zeros((h, w), bool)
            m[y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) > rng.uniform(0.3, 0.9)
            if m.any():
                pieces.append(_piece(m, float(rng.random()), tile=t, cat=int(rng.integers(1, 3))))
                dense.append(m)
    got = cross_tile_intersections(pieces, budget=4 * 30 * 40 * 4)  # a few columns per chunk
    want = {}
    for i in range(len(pieces)):
        for j in range(i + 1, len(pieces)):
            a, b = pieces[i], pieces[j]
            inter = int((dense[i] & dense[j]).sum())
            if a.tile != b.tile and a.category_id == b.category_id and inter:
                want[(i, j)] = inter
    assert got == want and len(want) > 10
    for p, m in zip(pieces, dense):
        np.testing.assert_array_equal(paint(p.runs, (0, 0, h, w)), m)  # the compact runs round-trip
        assert p.col.dtype == np.int16


def test_merge_is_greedy_by_score_not_input_order():
    h, w = 20, 40
    low = _piece(_rect(h, w, 0, 10, 0, 20), 0.3, tile=0)
    high = _piece(_rect(h, w, 0, 10, 5, 25), 0.8, tile=1)
    (only,) = merge_pieces([low, high], 0.5)
    assert only.score == 0.8 and only.tile == 1 and only.box == (0, 0, 24, 9)


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_models(random_checkpoints):
    from ntt_batch.benchmark import random_bank
    from ntt_batch.models.loading import load_encoder, load_sam2

    proposer, _ = load_sam2("sam2.1_hiera_tiny", checkpoint_dir=str(random_checkpoints), download=False)
    encoder, _ = load_encoder("dinov2_vits14", checkpoint_dir=str(random_checkpoints), download=False)
    return proposer, encoder, random_bank("dinov2_vits14", 384, num_classes=3)


def _large_image(h: int, w: int) -> np.ndarray:
    """A synthetic 'aerial' scene: textured ground with bright rectangles (roofs) and dark disks."""
    rng = np.random.default_rng(0)
    img = (rng.normal(110, 12, (h, w, 3))).clip(0, 255).astype(np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(25):
        y, x = int(rng.integers(0, h - 60)), int(rng.integers(0, w - 80))
        img[y : y + int(rng.integers(20, 60)), x : x + int(rng.integers(30, 80))] = rng.integers(170, 255, 3)
    for _ in range(15):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(10, 40)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(0, 60, 3)
    return img


@pytest.mark.slow
def test_tiled_run_end_to_end(tiny_models, monkeypatch):
    from ntt_batch.method.segmenter import MethodSegmenter, TargetImage

    proposer, encoder, bank = tiny_models
    image = _large_image(700, 1000)
    cfg = SegmenterConfig(
        points_per_side=3,
        device="cpu",
        pred_iou_threshold=0.0,
        nms_iou_threshold=0.7,
        max_detections=12,
        tile_size=512,
        tile_overlap=0.25,
    )
    seg = MethodSegmenter(proposer, encoder, bank, cfg)
    target = TargetImage.from_image(image, cfg)
    assert target.source is image and target.orig_hw == (700, 1000)
    assert TargetImage.from_image(image[:512, :400], cfg).source is None  # within one tile: not tiled
    calls = []
    real = MethodSegmenter._segment_whole  # the whole-image path: each batch of tiles goes through it

    def spy(self, targets):
        out = real(self, targets)
        calls.append(([t.orig_hw for t in targets], out))
        return out

    monkeypatch.setattr(MethodSegmenter, "_segment_whole", spy)
    (res,) = seg.segment_targets([target])  # the tiled path behind the ordinary API
    assert 0 < len(res) <= 12
    assert [r.score for r in res] == sorted((r.score for r in res), reverse=True)
    for r in res:
        assert r.rle["size"] == [700, 1000]
        m = decode_rle(r.rle)
        np.testing.assert_array_equal(r.mask, m)
        ys, xs = np.nonzero(m)
        assert r.bbox == [float(xs.min()), float(ys.min()), float(xs.max() - xs.min()), float(ys.max() - ys.min())]
    # The tiles went through the segmenter as images, TILE_BATCH at a time, RLE only; the whole
    # image itself never went through the models (no resize of it, no blank placeholder).
    grid = tile_grid((700, 1000), 512, 128)
    tile_calls = calls
    assert [hw for hws, _ in tile_calls for hw in hws] == [(y1 - y0, x1 - x0) for (y0, x0, y1, x1) in grid]
    assert all(len(hws) <= TILE_BATCH for hws, _ in tile_calls)
    tile_results = [r for _, out in tile_calls for r in out]
    assert all(not i.mask_loaded and i.rle is not None for r in tile_results for i in r)
    # The result is the hand merge of the tiles' instances shifted into the image.
    pieces = []
    for k, ((y0, x0, _, _), tile_res) in enumerate(zip(grid, tile_results)):
        for inst in tile_res:
            col, start, end = runs_from_dense(decode_rle(inst.rle))
            pieces.append(
                Piece.from_runs(col + x0, start + y0, end + y0, inst.score, inst.category_id, inst.category_name, k)
            )
    assert len(pieces) > len(res)  # there was something to merge or cut
    want = merge_pieces(pieces, cfg.tile_merge_threshold)[:12]
    assert [p.score for p in want] == [r.score for r in res]
    for p, r in zip(want, res):
        np.testing.assert_array_equal(paint(p.runs, (0, 0, 700, 1000)), r.mask)
        assert r.rle == encode_rle(r.mask)


def test_tile_flags_reach_the_job_and_the_segment_config(tmp_path, monkeypatch):
    from click.testing import CliRunner

    import ntt_batch.pipeline.job as job
    from ntt_batch.cli import main, segmenter_config_from_flags

    seen = {}

    class _Result:
        exit_code = 0

    def fake_run_job(cfg, **_kw):
        seen["cfg"] = cfg
        return _Result()

    monkeypatch.setattr(job, "run_job", fake_run_job)
    res = CliRunner().invoke(
        main,
        [
            "run",
            "--images",
            str(tmp_path),
            "--memory",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
            "--tile-size",
            "2048",
            "--tile-overlap",
            "128",
            "--dry-run",
        ],
    )
    assert res.exit_code == 0, res.output
    assert seen["cfg"].segmenter.tile_size == 2048 and seen["cfg"].segmenter.tile_overlap == 128
    res = CliRunner().invoke(
        main, ["run", "--images", str(tmp_path), "--memory", str(tmp_path), "--out", str(tmp_path / "o"), "--dry-run"]
    )
    assert seen["cfg"].segmenter.tile_size is None  # off unless asked
    res = CliRunner().invoke(
        main,
        [
            "run",
            "--images",
            str(tmp_path),
            "--memory",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
            "--tile-size",
            "512",
            "--tile-overlap",
            "600",
            "--dry-run",
        ],
    )
    assert res.exit_code != 0 and "tile_overlap" in res.output
    kw = dict(
        points_per_side=4,
        points_batch_size=8,
        pred_iou_threshold=0.4,
        nms_iou_threshold=0.5,
        max_detections=10,
        add_no_mem_embed=False,
        drop_unmatched_before_nms=False,
        resize_mode="squash",
        point_grid="reference",
        device="cpu",
        bf16=False,
        compile=False,
        tile_size=1024,
        tile_overlap=0.25,
    )
    assert segmenter_config_from_flags(kw).tile_overlap_px() == 256
