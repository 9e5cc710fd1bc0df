"""Tests for ntt_batch.method.segmenter (method.md §4, §8.19): the math and the MethodSegmenter pipeline.

Every expected value is worked out by hand (arithmetic in the comments) or by an explicit
pixel loop; nothing is computed by calling the function under test. The pipeline tests use a
tiny deterministic fake proposer (8×8 low-res logits per grid point) and a fake encoder that
returns hand-chosen per-pixel features on the same 8×8 grid, so every similarity is known.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ntt_batch.method.config import SegmenterConfig
from ntt_batch.method.matching import class_similarity, pool_mask_features, upsample_features
from ntt_batch.method.memory_bank import MemoryBank
from ntt_batch.method.merging import soft_merge_scores
from ntt_batch.method.preprocess import prepare_target
from ntt_batch.method.segmenter import (
    MethodSegmenter,
    TargetImage,
    masks_to_boxes_inclusive,
    point_grid,
    select_best_multimask,
)

# ============================================================================ point_grid (§4.2)


def test_point_grid_reference_n2():
    pts = point_grid(2, 1024, "reference")
    # linspace(0, 1023, 2) + 0.5 = {0.5, 1023.5}; x outer, y inner (meshgrid 'ij').
    assert pts.dtype == torch.float32
    assert pts.tolist() == [[0.5, 0.5], [0.5, 1023.5], [1023.5, 0.5], [1023.5, 1023.5]]


def test_point_grid_reference_n32():
    pts = point_grid(32, 1024, "reference")
    assert pts.shape == (1024, 2)
    # §4.2: coordinates 0.5 + 33·i, i = 0..31 (1023/31 = 33 exactly); x outer, y inner.
    expected = [[0.5 + 33 * i, 0.5 + 33 * j] for i in range(32) for j in range(32)]
    assert pts.tolist() == expected
    assert pts[0].tolist() == [0.5, 0.5]
    assert pts[1].tolist() == [0.5, 33.5]  # y moves first
    assert pts[32].tolist() == [33.5, 0.5]  # then x
    assert pts[-1].tolist() == [1023.5, 1023.5]


def test_point_grid_amg_n2():
    pts = point_grid(2, 1024, "amg")
    # SAM AMG: cell centres (i + 0.5)/2 · 1024 = 256, 768; y is the outer index, x the inner.
    assert pts.tolist() == [[256.0, 256.0], [768.0, 256.0], [256.0, 768.0], [768.0, 768.0]]


def test_point_grid_unknown_style():
    with pytest.raises(ValueError):
        point_grid(2, 1024, "nope")


# ============================================================================ select_best_multimask


def test_select_best_multimask_hand():
    # logits[n, k] is the constant map 10·n + k, so the value tells which (prompt, token) came back.
    logits = torch.stack([torch.stack([torch.full((2, 2), 10.0 * n + k) for k in range(3)]) for n in range(3)])
    iou = torch.tensor(
        [
            [0.1, 0.9, 0.5],  # prompt 0 → token 1
            [0.7, 0.2, 0.3],  # prompt 1 → token 0
            [0.3, 0.4, 0.8],
        ]
    )  # prompt 2 → token 2
    best_logits, best_iou = select_best_multimask(logits, iou)
    assert best_logits.shape == (3, 2, 2)
    assert best_logits[:, 0, 0].tolist() == [1.0, 10.0, 22.0]  # 10·0+1, 10·1+0, 10·2+2
    assert torch.allclose(best_iou, torch.tensor([0.9, 0.7, 0.8]))


# ============================================================================ masks_to_boxes_inclusive


def test_masks_to_boxes_inclusive():
    m = torch.zeros(4, 6, 7, dtype=torch.bool)
    m[0, 1:4, 2:5] = True  # rows 1..3, cols 2..4 → [2, 1, 4, 3]
    # m[1] empty → [0, 0, 0, 0]
    m[2, 5, 6] = True  # single pixel row 5 col 6 → [6, 5, 6, 5]
    m[3, 0, 0] = True
    m[3, 4, 6] = True  # two far pixels → [0, 0, 6, 4]
    boxes = masks_to_boxes_inclusive(m)
    assert boxes.dtype.is_floating_point
    assert boxes.tolist() == [[2, 1, 4, 3], [0, 0, 0, 0], [6, 5, 6, 5], [0, 0, 6, 4]]


def test_masks_to_boxes_inclusive_no_masks():
    assert masks_to_boxes_inclusive(torch.zeros(0, 5, 5, dtype=torch.bool)).shape == (0, 4)


# ============================================================================ upsample + pool (§4.3-4.4)

# 2×2 grid, D = 2. Channel 0: f[r, c] = 8r + 4c (values 0, 4 / 8, 12); channel 1: 1 at (0,0) only.
GRID_2x2 = torch.tensor([[[0.0, 1.0], [4.0, 0.0]], [[8.0, 0.0], [12.0, 0.0]]])  # [gh=2, gw=2, D=2]
# align_corners=False, 2 → 4: output k samples source (k + 0.5)/2 − 0.5 = −0.25, 0.25, 0.75, 1.25,
# clamped to [0, 1]: weights on source index 1 (the "t" of lerp) are 0, 0.25, 0.75, 1.
T = [0.0, 0.25, 0.75, 1.0]


def test_upsample_features_2x2_by_hand():
    up = upsample_features(GRID_2x2, (4, 4))
    assert up.shape == (16, 2)  # [h·w, D], row-major pixels
    for r in range(4):
        for c in range(4):
            # channel 0 is bilinear in (r, c) → 8·T[r] + 4·T[c]; channel 1 = (1−T[r])·(1−T[c]).
            exp0 = 8 * T[r] + 4 * T[c]
            exp1 = (1 - T[r]) * (1 - T[c])
            assert up[r * 4 + c, 0].item() == pytest.approx(exp0, abs=1e-6)
            assert up[r * 4 + c, 1].item() == pytest.approx(exp1, abs=1e-6)
    # Spot checks written out: pixel (1, 2): ch0 = 8·0.25 + 4·0.75 = 5; ch1 = 0.75·0.25 = 0.1875.
    assert up[1 * 4 + 2].tolist() == pytest.approx([5.0, 0.1875])
    # Corner (0, 0) is clamped to the source pixel: (0, 1); corner (3, 3) → (12, 0).
    assert up[0].tolist() == pytest.approx([0.0, 1.0])
    assert up[15].tolist() == pytest.approx([12.0, 0.0])


def _bilinear_loop(grid: np.ndarray, oh: int, ow: int) -> np.ndarray:
    """Textbook bilinear, align_corners=False, edge-clamped, one pixel at a time."""
    gh, gw, d = grid.shape
    out = np.zeros((oh, ow, d))
    for r in range(oh):
        sy = max((r + 0.5) * gh / oh - 0.5, 0.0)
        y0 = min(int(math.floor(sy)), gh - 1)
        y1 = min(y0 + 1, gh - 1)
        ty = sy - y0 if y1 != y0 else 0.0
        for c in range(ow):
            sx = max((c + 0.5) * gw / ow - 0.5, 0.0)
            x0 = min(int(math.floor(sx)), gw - 1)
            x1 = min(x0 + 1, gw - 1)
            tx = sx - x0 if x1 != x0 else 0.0
            out[r, c] = (
                (1 - ty) * (1 - tx) * grid[y0, x0]
                + (1 - ty) * tx * grid[y0, x1]
                + ty * (1 - tx) * grid[y1, x0]
                + ty * tx * grid[y1, x1]
            )
    return out


def test_upsample_features_matches_pixel_loop_non_integer_scale():
    g = torch.Generator().manual_seed(0)
    grid = torch.randn(3, 2, 4, generator=g)
    up = upsample_features(grid, (5, 7))
    exp = _bilinear_loop(grid.numpy().astype(np.float64), 5, 7).reshape(35, 4)
    np.testing.assert_allclose(up.numpy(), exp, atol=1e-5)


def test_pool_mask_features_by_hand():
    dense = upsample_features(GRID_2x2, (4, 4))
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[0, 1, 1] = True
    masks[0, 1, 2] = True
    # (1,1): ch0 = 8·0.25 + 4·0.25 = 3, ch1 = 0.75·0.75 = 0.5625
    # (1,2): ch0 = 5,                   ch1 = 0.1875
    # mean = (4, 0.375); normalised by sqrt(16 + 0.140625)
    n = math.sqrt(4.0**2 + 0.375**2)
    # masks[1] is empty → NaN row (as in the reference).
    f = pool_mask_features(masks, dense)
    assert f.shape == (2, 2)
    assert f[0].tolist() == pytest.approx([4.0 / n, 0.375 / n], abs=1e-6)
    assert torch.isnan(f[1]).all()


# ============================================================================ class_similarity (§4.4)


def test_class_similarity_clamps_negatives():
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-0.6, 0.8]])
    protos = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    s = class_similarity(f, protos)
    # raw dots: [1, −1], [0, 0], [0.6, −0.6], [−0.6, 0.6]; negatives → 0
    exp = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.6, 0.0], [0.0, 0.6]])
    assert torch.allclose(s, exp, atol=1e-6)
    assert (s >= 0).all()


# ============================================================================ soft_merge_scores (§4.7)


def _row_mask(width: int, cols: range) -> torch.Tensor:
    m = torch.zeros(1, width, dtype=torch.bool)
    m[0, list(cols)] = True
    return m


def test_soft_merge_scores_hand_case():
    W = 10
    masks = torch.stack(
        [
            _row_mask(W, range(0, 4)),  # M0 class 0, cols 0..3 (area 4)
            _row_mask(W, range(0, 6)),  # M1 class 1, cols 0..5: overlaps M0, other class
            _row_mask(W, range(2, 6)),  # M2 class 0, cols 2..5 (area 4)
            _row_mask(W, range(2, 10)),  # M3 class 0, cols 2..9 (area 8)
        ]
    )
    f = torch.tensor(
        [
            [1.0, 0.0, 0.0],  # f0
            [1.0, 0.0, 0.0],  # f1 (= f0, cos 1, but different class → no effect)
            [0.6, 0.8, 0.0],  # f2: cos(2,0) = 0.6
            [0.8, 0.6, 0.0],  # f3: cos(3,0) = 0.8, cos(3,2) = 0.48 + 0.48 = 0.96
        ]
    )
    labels = torch.tensor([0, 1, 0, 0])
    sem = torch.tensor([0.9, 0.7, 0.8, 0.5])
    out = soft_merge_scores(masks, f, labels, sem, 0.5)
    # M0: first of class 0 → 0.9.   M1: only class-1 mask → 0.7.
    # M2: j=0: |M2∩M0| = |{2,3}| = 2, /|M2| = 2/4 = 0.5, × 0.6 = 0.3 → 0.8·sqrt(0.7)
    # M3: j=0: |{2,3}|/8 = 0.25 × 0.8 = 0.2; j=2: |{2..5}|/8 = 0.5 × 0.96 = 0.48 → max 0.48
    #     → 0.5·sqrt(0.52). (Over |M_j| instead of |M_i| the j=2 term would be 1·0.96.)
    exp = [0.9, 0.7, 0.8 * math.sqrt(0.7), 0.5 * math.sqrt(0.52)]
    assert out.tolist() == pytest.approx(exp, abs=1e-6)
    # Inputs are not modified in place.
    assert sem.tolist() == pytest.approx([0.9, 0.7, 0.8, 0.5])


def test_soft_merge_scores_only_earlier_masks_count():
    # M0 ⊂ M1 (same class). M0 is first → unchanged, although it lies inside M1.
    # M1: |M1∩M0|/|M1| = 2/6, cos = 1 → 0.6·sqrt(1 − 1/3).
    masks = torch.stack([_row_mask(6, range(0, 2)), _row_mask(6, range(0, 6))])
    f = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    out = soft_merge_scores(masks, f, torch.tensor([4, 4]), torch.tensor([0.5, 0.6]), 0.5)
    assert out.tolist() == pytest.approx([0.5, 0.6 * math.sqrt(2.0 / 3.0)], abs=1e-6)


def test_soft_merge_scores_negative_cosine_no_penalty():
    # M1 ⊂ M0 fully (IoS = 1) but f1 = −f0: cos −1 → clamp 0 → no penalty.
    masks = torch.stack([_row_mask(6, range(0, 6)), _row_mask(6, range(1, 3))])
    f = torch.tensor([[0.0, 1.0], [0.0, -1.0]])
    out = soft_merge_scores(masks, f, torch.tensor([0, 0]), torch.tensor([0.3, 0.8]), 0.5)
    assert out.tolist() == pytest.approx([0.3, 0.8], abs=1e-6)


def test_soft_merge_scores_exponent():
    # M0 = cols 0..2, M1 = cols 2..3, same class, cos 1.
    masks = torch.stack([_row_mask(6, range(0, 3)), _row_mask(6, range(2, 4))])
    f = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # IoS of M1 = |{2}|/2 = 0.5 → exponent 1: 0.8·0.5 = 0.4; exponent 2: 0.8·0.25 = 0.2
    out1 = soft_merge_scores(masks, f, torch.tensor([0, 0]), torch.tensor([0.3, 0.8]), 1.0)
    out2 = soft_merge_scores(masks, f, torch.tensor([0, 0]), torch.tensor([0.3, 0.8]), 2.0)
    assert out1.tolist() == pytest.approx([0.3, 0.4], abs=1e-6)
    assert out2.tolist() == pytest.approx([0.3, 0.2], abs=1e-6)


# ============================================================================ prepare_target (§4.1)


def test_prepare_target_squash():
    img = np.full((10, 20, 3), 123, dtype=np.uint8)
    out, valid = prepare_target(img, 32, "squash")
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert valid == (32, 32)
    assert (out == 123).all()  # a resize of a constant image is that constant


def test_prepare_target_letterbox():
    img = np.full((10, 20, 3), 200, dtype=np.uint8)
    out, valid = prepare_target(img, 32, "letterbox")
    # longest side 20 → 32: scale 1.6, new size (h, w) = (16, 32); padding at the bottom.
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert valid == (16, 32)
    assert (out[:16] == 200).all()
    assert (out[16:] == 0).all()


def test_prepare_target_rejects_non_rgb_uint8():
    with pytest.raises(ValueError):
        prepare_target(np.zeros((4, 4), dtype=np.uint8), 32)
    with pytest.raises(ValueError):
        prepare_target(np.zeros((4, 4, 3), dtype=np.float32), 32)


# ============================================================================ MethodSegmenter with fakes

LOW = 8  # low-res mask grid of the fake proposer (the real one is 256)
POS, NEG = 10.0, -10.0
# Grid points for image_size=32, points_per_side=2, 'reference' style: linspace(0, 31, 2) + 0.5.
P0, P1, P2, P3 = (0.5, 0.5), (0.5, 31.5), (31.5, 0.5), (31.5, 31.5)  # in grid order


def logits_on(pixels) -> torch.Tensor:
    """8×8 logits: POS on the given (row, col) pixels, NEG elsewhere."""
    m = torch.full((LOW, LOW), NEG)
    for r, c in pixels:
        m[r, c] = POS
    return m


def rect(rows, cols):
    return [(r, c) for r in rows for c in cols]


class FakeSamFeatures:
    """Batch 'features' with the select(i) interface of Sam2Features; remembers the image index."""

    def __init__(self, images: torch.Tensor, index: int | None = None):
        self.images = images
        self.index = index

    def select(self, i: int) -> FakeSamFeatures:
        return FakeSamFeatures(self.images[i : i + 1], i)


class FakeProposer:
    """image_size 32; decode_points returns hand-designed [N,3,8,8] logits and [N,3] IoUs.

    ``specs[image][point] = (token, logits_8x8, iou)``: the designed mask sits at ``token``; the
    two other tokens are a full-image mask with a lower IoU (so a wrong selection would show).
    Points without a spec get three full masks with IoU 0.1, 0.2, 0.3 (all filtered out).
    """

    image_size = 32

    def __init__(self, specs):
        self.specs = specs
        self.batch_sizes = []
        self.encoded_shapes = []

    def to(self, device):
        return self

    def point_decoder(self):
        return None  # no faster decoder: the segmenter runs decode_points

    def encode(self, x):
        self.encoded_shapes.append(tuple(x.shape))
        return FakeSamFeatures(x)

    def decode_points(self, features, points):
        image = features.index
        self.batch_sizes.append(points.shape[0])
        logits = torch.empty(points.shape[0], 3, LOW, LOW)
        iou = torch.empty(points.shape[0], 3)
        for n, (x, y) in enumerate(points.tolist()):
            spec = self.specs[image].get((x, y))
            if spec is None:
                logits[n] = POS
                iou[n] = torch.tensor([0.1, 0.2, 0.3])
                continue
            token, lg, score = spec
            for k in range(3):
                logits[n, k] = lg if k == token else torch.full((LOW, LOW), POS)
                iou[n, k] = score if k == token else score / 2
        return logits, iou


class FakeEncoder:
    """Returns a hand-chosen [8, 8, D] per-pixel feature map per image (whatever the input).

    The grid equals the 8×8 low-res mask grid, so the bilinear upsampling in the segmenter is the
    identity (scale 1: source coordinate = (k + 0.5)·1 − 0.5 = k) and each low-res pixel's feature
    is exactly the value written here.
    """

    patch_size = 14
    native_image_size = 518

    def __init__(self, maps):
        self.maps = maps
        self.input_shapes = []

    def to(self, device):
        return self

    def __call__(self, x):
        self.input_shapes.append(tuple(x.shape))
        return torch.stack(self.maps[: x.shape[0]])


def feature_map(default, overrides=()) -> torch.Tensor:
    fm = torch.tensor(default, dtype=torch.float32).expand(LOW, LOW, -1).clone()
    for pixels, vec in overrides:
        for r, c in pixels:
            fm[r, c] = torch.tensor(vec, dtype=torch.float32)
    return fm


def make_bank(num_classes: int, names=None, ids=None) -> MemoryBank:
    ids = ids or list(range(1, num_classes + 1))
    names = names or [f"class{i}" for i in ids]
    # Instance prototypes are scaled one-hot vectors (2, 3, 4, ...): the class prototypes are the
    # normalised one-hots e_c.
    protos = torch.diag(torch.arange(2.0, 2.0 + num_classes))
    return MemoryBank(
        categories=[{"id": i, "name": n} for i, n in zip(ids, names)],
        instance_prototypes=protos,
        instance_labels=torch.arange(num_classes),
        encoder={"name": "fake"},
    )


def make_segmenter(specs, maps, bank, **cfg) -> tuple[MethodSegmenter, FakeProposer, FakeEncoder]:
    config = SegmenterConfig(
        image_size=32, encoder_image_size=14, points_per_side=2, points_batch_size=3, device="cpu", **cfg
    )
    proposer, encoder = FakeProposer(specs), FakeEncoder(maps)
    return MethodSegmenter(proposer, encoder, bank, config), proposer, encoder


def blank(h: int, w: int) -> np.ndarray:
    return np.zeros((h, w, 3), dtype=np.uint8)


# Main scenario: 2 classes ("cat" id 3 = class 0, "dog" id 7 = class 1), D = 2.
# Features: cols 0..3 = e0, cols 4..7 = e1 (all rows).
E0, E1 = [1.0, 0.0], [0.0, 1.0]
MAIN_MAP = feature_map(E0, [(rect(range(8), range(4, 8)), E1)])
# X (P0): cols 0..3 → f = e0, sem 1, class 0.                          box [0,0,3,7], iou 0.8
# Y (P1): cols 0..4 → 32 e0 + 8 e1 px → f = (4,1)/√17, sem 4/√17, cl 0. box [0,0,4,7], iou 0.9
# W (P2): col 0 + cols 4..5 → 8 e0 + 16 e1 → f = (1,2)/√5, sem 2/√5, class 1. box [0,0,5,7], iou 0.95
# V (P3, the remainder batch): rows 0..1 × cols 0..3 → f = e0, sem 1, cl 0. box [0,0,3,1], iou 0.6
X_LOG = logits_on(rect(range(8), range(0, 4)))
Y_LOG = logits_on(rect(range(8), range(0, 5)))
W_LOG = logits_on(rect(range(8), [0]) + rect(range(8), [4, 5]))
V_LOG = logits_on(rect(range(0, 2), range(0, 4)))
MAIN_SPECS = {P0: (1, X_LOG, 0.8), P1: (0, Y_LOG, 0.9), P2: (2, W_LOG, 0.95), P3: (1, V_LOG, 0.6)}
SEM_Y = 4 / math.sqrt(17)  # 0.9701
SEM_W = 2 / math.sqrt(5)  # 0.8944
# V lies inside Y at any resolution (V needs bilinear(x-indicator) > 0.5 → src x < 3.5, Y has
# src x < 4.5 on every row), so IoS(V | Y) = 1, × cos(f_V, f_Y) = e0·(4,1)/√17 = 4/√17:
FINAL_V = 1.0 * math.sqrt(1 - 4 / math.sqrt(17))  # 0.1728


def _main_bank():
    return make_bank(2, names=["cat", "dog"], ids=[3, 7])


def test_segmenter_main_scenario():
    seg, proposer, encoder = make_segmenter([MAIN_SPECS], [MAIN_MAP], _main_bank())
    (res,) = seg.segment_images([blank(16, 24)])
    # Batching: 4 points in batches of 3 → calls of 3 and 1; the remainder point (V) is used.
    assert proposer.batch_sizes == [3, 1]
    assert proposer.encoded_shapes == [(1, 3, 32, 32)]
    assert encoder.input_shapes == [(1, 3, 14, 14)]
    # NMS (class-aware, ranked by predicted IoU): class 0 order Y (0.9), X (0.8), V (0.6).
    # IoU(Y, X) boxes [0,0,4,7] vs [0,0,3,7] = 21/28 = 0.75 > 0.5 → X suppressed although its sem
    # (1.0) beats Y's (0.97). IoU(Y, V) = 3/28 → V kept. W is class 1 and overlaps Y's box by
    # 28/35 = 0.8 but survives (different class).
    # Final scores: Y 4/√17 = 0.970, W 2/√5 = 0.894, V 0.173 → sorted Y, W, V (NMS order was W, Y, V).
    assert [r.category_id for r in res] == [3, 7, 3]
    assert [r.category_name for r in res] == ["cat", "dog", "cat"]
    assert [r.score for r in res] == pytest.approx([SEM_Y, SEM_W, FINAL_V], abs=1e-5)
    scores = [r.score for r in res]
    assert scores == sorted(scores, reverse=True)


def test_segmenter_geometry_at_original_size():
    seg, _, _ = make_segmenter([MAIN_SPECS], [MAIN_MAP], _main_bank())
    (res,) = seg.segment_images([blank(16, 24)])
    y, w, v = res
    for r in res:
        assert r.mask.shape == (16, 24) and r.mask.dtype == bool
    # 8 → 24 columns (scale 3): output col c samples source x = (c + 0.5)/3 − 0.5.
    # Y (+10 on src cols 0..4, −10 on 5..7) is positive where x < 4.5 → c + 0.5 < 15 → c ≤ 14;
    # rows are uniform → all 16 rows.
    exp_y = np.zeros((16, 24), dtype=bool)
    exp_y[:, 0:15] = True
    np.testing.assert_array_equal(y.mask, exp_y)
    # COCO bbox [x1, y1, x2 − x1, y2 − y1] from the inclusive box [0, 0, 14, 15].
    assert y.bbox == [0.0, 0.0, 14.0, 15.0]
    # W: src col 0 → x < 0.5 → c ≤ 2; src cols 4..5 → 3.5 < x < 5.5 → 12 ≤ c ≤ 17.
    exp_w = np.zeros((16, 24), dtype=bool)
    exp_w[:, 0:3] = True
    exp_w[:, 12:18] = True
    np.testing.assert_array_equal(w.mask, exp_w)
    assert w.bbox == [0.0, 0.0, 17.0, 15.0]
    # V ⊂ Y (the basis of FINAL_V), non-empty.
    assert v.mask.any() and not (v.mask & ~y.mask).any()


def test_segmenter_left_half_upsampled_covers_left_half():
    # A single candidate covering the left half of the 8×8 grid, upsampled to 16×24 → left half
    # (cols 0..11: x = (c+0.5)/3 − 0.5 < 3.5 ⟺ c ≤ 11), all rows.
    seg, _, _ = make_segmenter([{P0: (0, X_LOG, 0.9)}], [MAIN_MAP], _main_bank())
    (res,) = seg.segment_images([blank(16, 24)])
    assert len(res) == 1
    exp = np.zeros((16, 24), dtype=bool)
    exp[:, :12] = True
    np.testing.assert_array_equal(res[0].mask, exp)
    assert res[0].bbox == [0.0, 0.0, 11.0, 15.0]
    assert res[0].score == pytest.approx(1.0, abs=1e-6)
    # Top-left quadrant (rows 0..3, cols 0..3): the upsampled logit is 20·ty·tx − 10 with ty, tx
    # the 1-D interpolated indicators. Rows (8 → 16, scale 2): y = (r+0.5)/2 − 0.5, ty = 1 for
    # r ≤ 6, 0.75 at r = 7, ≤ 0.25 for r ≥ 8. Cols as above: tx = 1 for c ≤ 10, 0.667 at c = 11,
    # ≤ 0.333 for c ≥ 12. Positive iff ty·tx > 0.5. Row 0 → cols 0..11; col 0 → rows 0..7;
    # nothing at r ≥ 8 or c ≥ 12. (The corner (7, 11) is 0.75·0.667 = 0.5 exactly → not checked.)
    q = logits_on(rect(range(4), range(4)))
    seg, _, _ = make_segmenter([{P0: (0, q, 0.9)}], [MAIN_MAP], _main_bank())
    (res,) = seg.segment_images([blank(16, 24)])
    m = res[0].mask
    assert m[0].nonzero()[0].tolist() == list(range(12))
    assert m[:, 0].nonzero()[0].tolist() == list(range(8))
    assert not m[8:].any() and not m[:, 12:].any()


def test_segmenter_max_detections_caps():
    seg, _, _ = make_segmenter([MAIN_SPECS], [MAIN_MAP], _main_bank(), max_detections=2)
    (res,) = seg.segment_images([blank(16, 24)])
    assert [r.category_id for r in res] == [3, 7]  # Y, W; V (lowest final score) cut
    assert [r.score for r in res] == pytest.approx([SEM_Y, SEM_W], abs=1e-5)


def test_segmenter_predicted_iou_filter_is_strict():
    left = logits_on(rect(range(8), range(0, 4)))  # class 0 (e0)
    right = logits_on(rect(range(8), range(4, 8)))  # class 1 (e1)
    specs = {
        P0: (0, left, 0.4),  # exactly 0.4 → dropped (> 0.4 is required)
        P1: (1, right, 0.41),
    }  # kept
    seg, _, _ = make_segmenter([specs], [MAIN_MAP], _main_bank())
    (res,) = seg.segment_images([blank(32, 32)])
    assert [r.category_id for r in res] == [7]
    # Lower the threshold below 0.4 and the left mask comes back.
    seg, _, _ = make_segmenter([specs], [MAIN_MAP], _main_bank(), pred_iou_threshold=0.39)
    (res,) = seg.segment_images([blank(32, 32)])
    assert sorted(r.category_id for r in res) == [3, 7]


def test_segmenter_nothing_passes_iou_filter_returns_empty_list():
    seg, _, _ = make_segmenter([{}], [MAIN_MAP], _main_bank())  # all points: IoU ≤ 0.3
    assert seg.segment_images([blank(20, 20)]) == [[]]


@pytest.mark.parametrize("drop", [False, True])
def test_segmenter_all_zero_similarity_returns_empty_list(drop):
    # Every pixel's feature is (−1, −1)/… → negative cosine to both classes → sem 0 everywhere.
    neg_map = feature_map([-1.0, -1.0])
    specs = {P0: (0, X_LOG, 0.9), P3: (2, logits_on(rect(range(8), range(4, 8))), 0.8)}
    seg, _, _ = make_segmenter([specs], [neg_map], _main_bank(), drop_unmatched_before_nms=drop)
    assert seg.segment_images([blank(20, 20)]) == [[]]


def test_segmenter_empty_low_res_mask_is_dropped():
    # An all-negative logit map with a high predicted IoU: NaN feature → no similarity → dropped.
    specs = {P0: (0, logits_on([]), 0.99), P1: (0, logits_on(rect(range(8), range(4, 8))), 0.5)}
    seg, _, _ = make_segmenter([specs], [MAIN_MAP], _main_bank())
    (res,) = seg.segment_images([blank(20, 20)])
    assert [r.category_id for r in res] == [7]
    assert res[0].score == pytest.approx(1.0, abs=1e-6)


def test_segmenter_batch_of_two_images():
    right = logits_on(rect(range(8), range(4, 8)))
    seg, proposer, encoder = make_segmenter([{P2: (0, right, 0.9)}, {}], [MAIN_MAP, MAIN_MAP], _main_bank())
    res = seg.segment_images([blank(16, 16), blank(8, 12)])
    assert len(res) == 2
    assert [r.category_id for r in res[0]] == [7]
    assert res[1] == []
    assert proposer.encoded_shapes == [(2, 3, 32, 32)]
    assert encoder.input_shapes == [(2, 3, 14, 14)]
    assert proposer.batch_sizes == [3, 1, 3, 1]


def test_segmenter_to_coco_result():
    seg, _, _ = make_segmenter([{P0: (0, X_LOG, 0.9)}], [MAIN_MAP], _main_bank())
    (res,) = seg.segment_images([blank(16, 24)])
    d = res[0].to_coco_result(image_id=42)
    assert d["image_id"] == 42 and d["category_id"] == 3
    assert d["bbox"] == [0.0, 0.0, 11.0, 15.0]
    assert d["segmentation"]["size"] == [16, 24]
    assert isinstance(d["segmentation"]["counts"], str)


# ---------------------------------------------------------------------------- §8.19


def _topk_tie_label(num_classes: int) -> int:
    """The label torch.topk(k=1) gives an all-zero similarity row (the reference's tie-break)."""
    idx = torch.zeros(4, num_classes).topk(1, dim=1).indices[:, 0]
    assert (idx == idx[0]).all()
    return int(idx[0])


@pytest.mark.parametrize("drop", [False, True])
def test_segmenter_zero_similarity_candidate_suppresses_in_nms(drop):
    C = 4  # with 4 classes CPU topk ties at a non-zero index (2 at the time of writing)
    tie = _topk_tie_label(C)
    other = (tie + 1) % C
    e = torch.eye(C).tolist()
    neg = [-0.5] * C  # cosine −0.5 to every one-hot prototype → sem 0 for every class
    # Features: e_tie everywhere, except the corners (0,0), (7,7) (negative) and row 7 cols 2..5
    # (e_other).
    fmap = feature_map(e[tie], [([(0, 0), (7, 7)], neg), (rect([7], range(2, 6)), e[other])])
    # Z: the two corner pixels → f = normalize(neg) → all similarities 0 → label `tie` (topk),
    #    box [0,0,7,7], predicted IoU 0.95 (highest).
    # R: rows 1..6, all cols → f = e_tie → label tie, sem 1; box [0,1,7,6], IoU 0.9.
    #    Box IoU(Z, R) = (7·5)/(7·7) = 35/49 = 0.71 > 0.5 → same group → Z suppresses R.
    # Q: row 7 cols 1..5 → 1 px e_tie + 4 px e_other → f = (1, 4)/√17 → label other, sem 4/√17.
    z = logits_on([(0, 0), (7, 7)])
    r = logits_on(rect(range(1, 7), range(8)))
    q = logits_on(rect([7], range(1, 6)))
    specs = {P0: (0, z, 0.95), P1: (1, r, 0.9), P2: (2, q, 0.85)}
    ids = [10, 20, 30, 40]
    seg, _, _ = make_segmenter([specs], [fmap], make_bank(C, ids=ids), drop_unmatched_before_nms=drop)
    (res,) = seg.segment_images([blank(32, 32)])
    if not drop:
        # Reference behaviour: R is gone (suppressed by Z, which is then dropped for sem 0).
        assert [x.category_id for x in res] == [ids[other]]
        assert res[0].score == pytest.approx(4 / math.sqrt(17), abs=1e-5)
    else:
        # Z is removed before NMS → R survives, and ranks first (1.0 > 0.970).
        assert [x.category_id for x in res] == [ids[tie], ids[other]]
        assert [x.score for x in res] == pytest.approx([1.0, 4 / math.sqrt(17)], abs=1e-5)
        # R at 32×32 (scale 4): rows y = (r + 0.5)/4 − 0.5 in (0.5, 6.5) → r = 4..27, all cols.
        exp = np.zeros((32, 32), dtype=bool)
        exp[4:28] = True
        np.testing.assert_array_equal(res[0].mask, exp)
        assert res[0].bbox == [0.0, 4.0, 31.0, 23.0]


# ---------------------------------------------------------------------------- misc


def test_segmenter_rejects_proposer_size_mismatch():
    config = SegmenterConfig(image_size=64, encoder_image_size=14, points_per_side=2, device="cpu")
    with pytest.raises(ValueError):
        MethodSegmenter(FakeProposer([{}]), FakeEncoder([MAIN_MAP]), _main_bank(), config)


def test_segment_targets_empty_input():
    seg, _, _ = make_segmenter([{}], [MAIN_MAP], _main_bank())
    assert seg.segment_targets([]) == []


def test_target_image_from_image_records_sizes():
    cfg = SegmenterConfig(image_size=32, encoder_image_size=14, device="cpu")
    t = TargetImage.from_image(blank(10, 20), cfg)
    assert t.resized.shape == (32, 32, 3)
    assert t.valid_hw == (32, 32)
    assert t.orig_hw == (10, 20)
