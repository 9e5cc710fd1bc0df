"""The fast path computes the reference path's function: decoder, pooling, whole segmenter, bench."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ntt_batch.method.matching import (
    linear_interpolation_matrix,
    pool_mask_features,
    pool_mask_features_separable,
    upsample_features,
)
from ntt_batch.method.segmenter import point_grid, select_best_multimask


@pytest.mark.parametrize("n_in,n_out", [(37, 256), (16, 256), (5, 3)])
def test_linear_interpolation_matrix_matches_interpolate(n_in, n_out):
    x = torch.randn(4, n_in)
    want = F.interpolate(x[None], size=n_out, mode="linear", align_corners=False)[0]
    got = (linear_interpolation_matrix(n_in, n_out) @ x.T).T
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_separable_pooling_equals_upsampled_pooling():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(37, 37, 24, generator=g)
    masks = torch.rand(9, 64, 64, generator=g) > 0.6
    masks[3] = False  # empty mask: NaN row in both
    masks[4] = False
    masks[4, 10:12, 40:41] = True  # tiny mask
    want = pool_mask_features(masks, upsample_features(feats, (64, 64)))
    got = pool_mask_features_separable(masks, feats)
    assert torch.isnan(got[3]).all() and torch.isnan(want[3]).all()
    keep = torch.tensor([i for i in range(9) if i != 3])
    torch.testing.assert_close(got[keep], want[keep], atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def tiny_sam2(random_checkpoints):
    from ntt_batch.models.loading import load_sam2

    proposer, _ = load_sam2("sam2.1_hiera_tiny", checkpoint_dir=str(random_checkpoints), download=False)
    g = torch.Generator().manual_seed(1)
    feats = proposer.encode(torch.rand(1, 3, 1024, 1024, generator=g))
    return proposer, feats


@pytest.mark.slow
def test_point_decoder_equals_sam2_mask_decoder(tiny_sam2):
    """Same selected logits and IoUs as the official decoder; the filter is strict and applied first."""
    proposer, feats = tiny_sam2
    pts = point_grid(4)
    logits, iou = select_best_multimask(*proposer.decode_points(feats, pts))
    dec = proposer.point_decoder()
    state = dec.prepare(feats.image_embed, feats.high_res)
    kept, lg, iou_fast = dec.decode(state, pts, -1.0)
    assert kept.tolist() == list(range(16))
    torch.testing.assert_close(iou_fast, iou, atol=1e-5, rtol=0)
    torch.testing.assert_close(lg, logits, atol=1e-4, rtol=1e-4)
    # A threshold between the IoUs keeps exactly the prompts strictly above it, in grid order.
    thr = float(iou.median())
    kept, lg, iou_kept = dec.decode(state, pts, thr)
    assert kept.tolist() == torch.nonzero(iou > thr).flatten().tolist()
    torch.testing.assert_close(lg, logits[kept], atol=1e-4, rtol=1e-4)
    empty_kept, empty_lg, _ = dec.decode(state, pts, 1.0)
    assert empty_kept.numel() == 0 and empty_lg.shape == (0, 256, 256)
    assert not any(k.startswith("_point_decoder") for k in proposer.state_dict())


@pytest.mark.slow
def test_fast_and_reference_segmenters_agree_on_real_models(random_checkpoints, coco_mini):
    from ntt_batch.benchmark import match_detections, random_bank
    from ntt_batch.method.config import SegmenterConfig
    from ntt_batch.method.segmenter import MethodSegmenter
    from ntt_batch.models.loading import load_encoder, load_sam2
    from ntt_batch.storage.images import load_image

    proposer, _ = load_sam2("sam2.1_hiera_tiny", checkpoint_dir=str(random_checkpoints), download=False)
    encoder, _ = load_encoder("dinov2_vits14", checkpoint_dir=str(random_checkpoints), download=False)
    bank = random_bank("dinov2_vits14", 384, num_classes=5)
    # pred_iou_threshold 0.53 cuts through the random-weight IoUs (~0.52-0.55), so the filter matters.
    base = dict(points_per_side=4, device="cpu", pred_iou_threshold=0.53, nms_iou_threshold=0.9)
    fast = MethodSegmenter(proposer, encoder, bank, SegmenterConfig(**base))
    ref = MethodSegmenter(
        proposer, encoder, bank, SegmenterConfig(**base, implementation="reference", points_batch_size=5)
    )
    image = load_image(coco_mini / "val2017" / "000000000139.jpg")
    (a,), (b,) = fast.segment_images([image]), ref.segment_images([image])
    assert b, "the reference path found nothing: the comparison would be vacuous"
    m = match_detections(a, b, iou_min=0.99, score_tol=1e-3)
    assert m["agree"], m
    for x, y in zip(sorted(a, key=lambda i: -i.score), sorted(b, key=lambda i: -i.score)):
        assert (x.mask != y.mask).mean() < 1e-3


@pytest.mark.slow
def test_bench_cli_emits_valid_json(tmp_path, random_checkpoints, coco_mini):
    from click.testing import CliRunner

    from ntt_batch.cli import main

    out = tmp_path / "bench.json"
    r = CliRunner().invoke(
        main,
        [
            "bench",
            "--images",
            str(coco_mini / "val2017" / "000000000139.jpg"),
            "--limit",
            "1",
            "--points-per-side",
            "2",
            "--device",
            "cpu",
            "--checkpoint-dir",
            str(random_checkpoints),
            "--no-download",
            "--json",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    report = json.loads(out.read_text())
    for key in ("images_per_s", "reference_images_per_s", "speedup_vs_reference", "detections_agree"):
        assert key in report
    assert report["images_per_s"] > 0 and report["reference_images_per_s"] > 0
    assert report["detections_agree"] is True
    assert set(report["fast"]["seconds_per_image"]) >= {
        "decode",
        "sam2_encoder",
        "mask_decoder",
        "encoder",
        "rle",
        "write",
    }
    assert "speedup" in r.output and "mask_decoder" in r.output


def test_match_detections_counts_disagreements():
    from ntt_batch.benchmark import match_detections
    from ntt_batch.method.segmenter import Instance

    def inst(box, score, cat=1):
        return Instance(mask=np.zeros((2, 2), bool), bbox=box, score=score, category_id=cat, category_name="x")

    a = [inst([0, 0, 10, 10], 0.5), inst([20, 20, 5, 5], 0.4)]
    assert match_detections(a, list(a), 0.99, 1e-3)["agree"]
    moved = [inst([1, 0, 10, 10], 0.5), a[1]]  # IoU 0.82
    m = match_detections(moved, a, 0.99, 1e-3)
    assert not m["agree"] and m["matched"] == 1
    assert not match_detections([inst([0, 0, 10, 10], 0.51), a[1]], a, 0.99, 1e-3)["agree"]
    assert not match_detections([inst([0, 0, 10, 10], 0.5, cat=2), a[1]], a, 0.99, 1e-3)["agree"]
    assert not match_detections(a[:1], a, 0.99, 1e-3)["agree"]


def test_decode_memory_reservation_is_capped():
    from ntt_batch.pipeline.config import JobConfig
    from ntt_batch.pipeline.graph import decode_memory_bytes

    cfg = JobConfig(memory="m", out="o", images="i", batch_size=256)
    assert decode_memory_bytes(cfg) > 9e9  # uncapped: more than a small node's budget allows
    assert decode_memory_bytes(cfg, cluster_memory=16e9) == 4e9  # never more than a quarter of the cluster
