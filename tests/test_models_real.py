"""Real sam2 / timm models with random weights: shapes and the paths the CLI test does not reach."""

from __future__ import annotations

import pytest
import torch

from ntt_batch.storage.images import load_image

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def proposer(random_checkpoints):
    from ntt_batch.models.loading import load_sam2

    p, ckpt = load_sam2("sam2.1_hiera_tiny", checkpoint_dir=str(random_checkpoints), download=False)
    assert not ckpt.official
    return p


def test_sam2_shapes_and_multimask(proposer):
    x = torch.rand(2, 3, 1024, 1024)
    feats = proposer.encode(x)
    assert feats.image_embed.shape == (2, 256, 64, 64)
    assert [tuple(h.shape) for h in feats.high_res] == [(2, 32, 256, 256), (2, 64, 128, 128)]
    logits, iou = proposer.decode_points(feats.select(1), torch.tensor([[0.5, 0.5], [512.0, 700.0]]))
    assert logits.shape == (2, 3, 256, 256) and iou.shape == (2, 3)
    assert ((iou >= 0) & (iou <= 1)).all()  # sigmoid IoU head (iou_prediction_use_sigmoid)


def test_no_mem_embed_flag_changes_embedding(proposer):
    x = torch.rand(1, 3, 1024, 1024)
    with torch.no_grad():
        proposer.model.no_mem_embed.fill_(0.25)
    a = proposer.encode(x).image_embed
    proposer.add_no_mem_embed = True
    try:
        b = proposer.encode(x).image_embed
    finally:
        proposer.add_no_mem_embed = False
    torch.testing.assert_close(b - a, torch.full_like(a, 0.25), rtol=0, atol=1e-5)


def test_box_only_reference_masks_from_sam2(proposer, coco_mini):
    from ntt_batch.method.memory_bank import sam2_box_masks

    path = sorted((coco_mini / "train2017").glob("*.jpg"))[0]
    image = load_image(path)
    masks = sam2_box_masks(proposer, image, [[10, 20, 100, 80], [0, 0, 50, 50]])
    assert len(masks) == 2 and all(m.shape == image.shape[:2] and m.dtype == bool for m in masks)


def test_batch_equals_one_by_one(proposer, random_checkpoints, coco_mini):
    """Batching images through the encoders must not change any answer."""
    from ntt_batch.method.config import SegmenterConfig
    from ntt_batch.method.memory_bank import MemoryBank
    from ntt_batch.method.segmenter import MethodSegmenter
    from ntt_batch.models.loading import load_encoder

    encoder, _ = load_encoder("dinov2_vits14", checkpoint_dir=str(random_checkpoints), download=False)
    g = torch.Generator().manual_seed(0)
    bank = MemoryBank(
        categories=[{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        instance_prototypes=torch.randn(3, 384, generator=g),
        instance_labels=torch.tensor([0, 1, 1]),
        encoder={"name": "dinov2_vits14"},
    )
    seg = MethodSegmenter(proposer, encoder, bank, SegmenterConfig(points_per_side=2, device="cpu"))
    images = [load_image(p) for p in sorted((coco_mini / "val2017").glob("*.jpg"))[:2]]
    together = seg.segment_images(images)
    apart = [seg.segment_images([im])[0] for im in images]
    for t, a in zip(together, apart):
        assert len(t) == len(a)
        for x, y in zip(t, a):
            assert x.category_id == y.category_id and abs(x.score - y.score) < 1e-4
            assert (x.mask != y.mask).mean() < 1e-3
