"""§4.6-4.8 with bounded memory computes exactly what the full-resolution version computes.

``old_finalize`` below is the full-resolution code as it was before the bounded path (commit
79d6427: every NMS survivor upsampled to the original size as float32, float32 Gram matrix for
the intersections). It is kept here, verbatim, as the pin: the fast path's ``_finalize`` must
return the same detections, the same masks, boxes and RLE, and scores within 1 ulp.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ntt_batch.method.config import SegmenterConfig
from ntt_batch.method.segmenter import Instance, MethodSegmenter, TargetImage, masks_to_boxes_inclusive
from ntt_batch.storage.masks import encode_rle, xyxy_to_coco_xywh

# ----------------------------------------------------------------------------- the pinned baseline


def old_soft_merge_scores(masks, mask_features, labels, semantic_scores, exponent=0.5):
    final = semantic_scores.clone()
    flat = masks.flatten(1)
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        if idx.numel() < 2:
            continue
        mf = flat[idx].to(torch.float32)
        inter = mf @ mf.T
        area = mf.sum(dim=1)
        ios = torch.tril(inter, diagonal=-1) / area[:, None]
        sim = (mask_features[idx] @ mask_features[idx].T).clamp(min=0)
        ios_max = (ios * sim).amax(dim=1)
        final[idx] = semantic_scores[idx] * (1.0 - ios_max).clamp(min=0) ** exponent
    return final


def old_to_original(seg, logits, target):
    lh, lw = logits.shape[-2:]
    vh, vw = target.valid_hw
    s = seg.config.image_size
    if (vh, vw) != (s, s):
        logits = logits[:, : max(1, round(vh * lh / s)), : max(1, round(vw * lw / s))]
    up = F.interpolate(logits[:, None], size=target.orig_hw, mode="bilinear", align_corners=False, antialias=True)
    return up[:, 0] > 0


def old_finalize(seg, logits, keep, feats, sem, label, target):
    cfg = seg.config
    masks = old_to_original(seg, logits[keep], target)
    nonempty = masks.flatten(1).any(dim=1)
    keep, masks = keep[nonempty], masks[nonempty]
    if keep.numel() == 0:
        return []
    final = old_soft_merge_scores(masks, feats[keep], label[keep], sem[keep], cfg.merge_exponent)
    order = torch.argsort(final, descending=True, stable=True)[: cfg.max_detections]
    boxes_full = masks_to_boxes_inclusive(masks[order]).cpu().numpy()
    masks_np = masks[order].cpu().numpy()
    scores = final[order].cpu().numpy()
    labels = label[keep][order].cpu().numpy()
    return [
        Instance(
            mask=masks_np[j],
            bbox=xyxy_to_coco_xywh(boxes_full[j].tolist()),
            score=float(scores[j]),
            category_id=seg.bank.category_ids[int(labels[j])],
            category_name=seg.bank.category_names[int(labels[j])],
        )
        for j in range(len(order))
    ]


def assert_same_instances(got: list[Instance], want: list[Instance], dense: bool = True):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.category_id == w.category_id and g.category_name == w.category_name
        assert g.bbox == w.bbox
        s32, w32 = np.float32(g.score), np.float32(w.score)
        assert abs(s32 - w32) <= np.spacing(w32), (g.score, w.score)  # within 1 ulp (float32)
        assert g.rle == encode_rle(w.mask)
        assert g.mask_loaded == dense
        np.testing.assert_array_equal(g.binary_mask(), w.mask)
        assert g.mask_loaded == dense  # binary_mask() decodes without keeping
        assert g.mask.dtype == bool and g.mask.shape == w.mask.shape
        np.testing.assert_array_equal(g.mask, w.mask)  # decoded on first access when not held


# ----------------------------------------------------------------------------- hand-built inputs


class _Proposer:
    """Never called: these tests start after NMS."""

    image_size = 1024

    def to(self, device):
        return self

    def encode(self, images):
        raise AssertionError("not used")

    def decode_points(self, features, points):
        raise AssertionError("not used")

    def point_decoder(self):
        return None


class _Encoder(torch.nn.Identity):
    """Never called either; declares the encoder interface's patch grid."""

    patch_size = 14
    native_image_size = 518


def _segmenter(**cfg) -> MethodSegmenter:
    from ntt_batch.benchmark import random_bank

    bank = random_bank("dinov2_vits14", 8, num_classes=3)
    return MethodSegmenter(_Proposer(), _Encoder(), bank, SegmenterConfig(device="cpu", **cfg))


def _blobs(n: int, h: int = 256, w: int = 256, seed: int = 0) -> torch.Tensor:
    """Smooth random logits with rough edges: blobs of all sizes, some touching the borders."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, 1, h // 32, w // 32, generator=g) * 4 - 1
    smooth = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    return smooth + 0.3 * torch.randn(n, h, w, generator=g)


def _inputs(n: int, seed: int = 0, num_classes: int = 3):
    g = torch.Generator().manual_seed(seed + 1)
    logits = _blobs(n, seed=seed)
    logits[2] = -1.0  # empty everywhere: dropped (§8.6)
    keep = torch.randperm(n, generator=g)[: n - 1]  # NMS order ≠ index order, one candidate dropped
    feats = F.normalize(torch.randn(n, 8, generator=g), dim=1)
    sem = torch.rand(n, generator=g)
    label = torch.randint(0, num_classes, (n,), generator=g)
    return logits, keep, feats, sem, label


@pytest.mark.parametrize(
    "orig_hw,valid_hw",
    [
        ((426, 640), (1024, 1024)),  # a COCO image, squash
        ((100, 70), (1024, 1024)),  # smaller than the 256² grid: the interpolation downsamples
        ((333, 1500), (227, 1024)),  # letterbox: the padding is cropped away first
        ((1201, 997), (1024, 1024)),
    ],
)
@pytest.mark.parametrize("budget_mb", [256, 1])
def test_bounded_finalize_equals_full_resolution(orig_hw, valid_hw, budget_mb):
    seg = _segmenter(merge_memory_mb=budget_mb, resize_mode="squash" if valid_hw == (1024, 1024) else "letterbox")
    logits, keep, feats, sem, label = _inputs(14)
    target = TargetImage(np.zeros((1024, 1024, 3), np.uint8), valid_hw, orig_hw)
    want = old_finalize(seg, logits, keep, feats, sem, label, target)
    got = seg._finalize(logits, keep, feats, sem, label, target)
    assert len(want) == 13 - 1  # 14 candidates, one not kept, one empty
    # dense masks are built only when the final masks fit the budget (a 100x70 image's do even in 1 MB)
    assert_same_instances(got, want, dense=len(want) * orig_hw[0] * orig_hw[1] <= budget_mb * 2**20)


def test_scores_bit_identical_and_reference_path_unchanged():
    """Under 2^24 pixels the counts are exact in the reference's float32 too: same bits."""
    seg = _segmenter()
    ref = _segmenter(implementation="reference")
    logits, keep, feats, sem, label = _inputs(20, seed=3, num_classes=2)
    target = TargetImage(np.zeros((1024, 1024, 3), np.uint8), (1024, 1024), (480, 640))
    want = old_finalize(seg, logits, keep, feats, sem, label, target)
    got = seg._finalize(logits, keep, feats, sem, label, target)
    assert [g.score for g in got] == [w.score for w in want]
    assert len({w.score for w in want}) > 5 and min(w.score for w in want) < max(sem[keep]).item() * 0.9
    ref_out = ref._finalize(logits, keep, feats, sem, label, target)
    assert [r.score for r in ref_out] == [w.score for w in want]
    for r, w in zip(ref_out, want):
        np.testing.assert_array_equal(r.mask, w.mask)


def test_no_candidate_survives_full_size():
    seg = _segmenter()
    logits = -torch.ones(3, 256, 256)
    keep = torch.arange(3)
    out = seg._finalize(
        logits,
        keep,
        torch.eye(3, 8),
        torch.ones(3),
        torch.zeros(3, dtype=torch.long),
        TargetImage(np.zeros((1024, 1024, 3), np.uint8), (1024, 1024), (50, 60)),
    )
    assert out == []


def test_large_image_returns_rle_only():
    """Final masks that would not fit in the budget come back as RLE only (mask decoded on use)."""
    seg = _segmenter(merge_memory_mb=1)
    logits, keep, feats, sem, label = _inputs(6, seed=5)
    target = TargetImage(np.zeros((1024, 1024, 3), np.uint8), (1024, 1024), (900, 1300))
    got = seg._finalize(logits, keep, feats, sem, label, target)
    want = old_finalize(seg, logits, keep, feats, sem, label, target)
    assert got and all(not g.mask_loaded and g.rle["size"] == [900, 1300] for g in got)
    assert_same_instances(got, want, dense=False)
    assert got[0].to_coco_result(5)["segmentation"] == encode_rle(want[0].mask)


# ----------------------------------------------------------------------------- real (random-weight) models


@pytest.mark.slow
def test_bounded_finalize_pinned_on_real_models(random_checkpoints, coco_mini, monkeypatch):
    """The tiny random-weight SAM2 + DINOv2 on 2 COCO images, 4×4 prompts, every prompt kept
    (pred_iou 0, NMS 1.0), 2 classes: many overlapping candidates of one class. The fast path's
    §4.6-4.8 returns exactly what the full-resolution code returns on the same inputs."""
    from ntt_batch.benchmark import random_bank
    from ntt_batch.models.loading import load_encoder, load_sam2
    from ntt_batch.storage.images import load_image

    proposer, _ = load_sam2("sam2.1_hiera_tiny", checkpoint_dir=str(random_checkpoints), download=False)
    encoder, _ = load_encoder("dinov2_vits14", checkpoint_dir=str(random_checkpoints), download=False)
    bank = random_bank("dinov2_vits14", 384, num_classes=2)
    cfg = dict(points_per_side=4, device="cpu", pred_iou_threshold=0.0, nms_iou_threshold=1.0)
    seg = MethodSegmenter(proposer, encoder, bank, SegmenterConfig(**cfg))
    small = MethodSegmenter(proposer, encoder, bank, SegmenterConfig(**cfg, merge_memory_mb=1))
    captured = []
    real = MethodSegmenter._finalize

    def spy(self, logits, keep, feats, sem, label, target):
        captured.append((logits, keep, feats, sem, label, target))
        return real(self, logits, keep, feats, sem, label, target)

    monkeypatch.setattr(MethodSegmenter, "_finalize", spy)
    for name in ("000000000139.jpg", "000000000802.jpg"):
        (got,) = seg.segment_images([load_image(coco_mini / "val2017" / name)])
        args = captured[-1]
        want = old_finalize(seg, *args)
        labels = args[4][args[1]]
        assert int(torch.bincount(labels).max()) >= 5, "several candidates of one class: the merge matters"
        assert len({round(w.score, 6) for w in want}) > 3  # IoS lowered the later ones' scores
        assert_same_instances(got, want)
        assert [g.score for g in got] == [w.score for w in want]  # bit-identical at this size
        assert_same_instances(real(small, *args), want, dense=False)
