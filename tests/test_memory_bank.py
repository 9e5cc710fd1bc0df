"""Tests for ntt_batch.method.memory_bank (method.md §2-3, §8.6).

Expected values are worked out by hand (arithmetic in the comments); the end-to-end build uses
fake encoders whose output is predictable (a constant mean-colour feature, or a one-hot of the
patch position so that the prototype *is* the normalised patch-weight map).
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from ntt_batch.method.config import MemoryConfig
from ntt_batch.method.memory_bank import (
    META_FILE,
    TENSORS_FILE,
    MemoryBank,
    build_memory_bank,
    class_prototypes,
    context_crop_box,
    crop_reference,
    instance_prototype,
    mask_to_patch_weights,
)
from ntt_batch.references.files import validate_references
from ntt_batch.storage.masks import encode_rle

# ============================================================================ context_crop_box (§2.1)


def test_context_crop_box_hand_case():
    # box [10, 20, 30, 40] → x1=10, y1=20, x2=40, y2=60; S = 1.2·max(30, 40) = 48;
    # centre (25, 40) → cols [int(25−24), int(25+24)) = [1, 49), rows [int(40−24), int(64)) = [16, 64)
    assert context_crop_box([10, 20, 30, 40], 200, 200) == (1, 49, 16, 64)


def test_context_crop_box_float_box_truncated():
    # int() truncation: x1 = int(10.7) = 10, y1 = int(20.9) = 20, x2 = int(40.2) = 40,
    # y2 = int(60.1) = 60 → same as the integer case. (Rounding would give x1 = 11, y1 = 21.)
    assert context_crop_box([10.7, 20.9, 29.5, 39.2], 200, 200) == (1, 49, 16, 64)


def test_context_crop_box_clipped_non_square():
    # box [0, 0, 50, 20] in W=60, H=100: x2=50, y2=20; S = 1.2·50 = 60; centre (25, 10):
    # cols [max(0, int(−5)), min(60, int(55))) = [0, 55); rows [max(0, int(−20)), min(100, int(40))) = [0, 40)
    x0, x1, y0, y1 = context_crop_box([0, 0, 50, 20], 60, 100)
    assert (x0, x1, y0, y1) == (0, 55, 0, 40)
    assert (x1 - x0) != (y1 - y0)  # 55 × 40: clipping made it non-square
    # Clipping at the far border: box [180, 150, 20, 50] in W=200, H=190: x2 = 200, y2 = 200,
    # S = 1.2·50 = 60, centre (190, 175) → cols [160, min(200, 220)) = [160, 200),
    # rows [145, min(190, 205)) = [145, 190)
    assert context_crop_box([180, 150, 20, 50], 200, 190) == (160, 200, 145, 190)


def test_context_crop_box_context_ratio():
    # ratio 0: S = 40, centre (25, 40) → cols [5, 45), rows [20, 60)
    assert context_crop_box([10, 20, 30, 40], 200, 200, context_ratio=0.0) == (5, 45, 20, 60)


# ============================================================================ crop_reference (§2.1 step 5)


def test_crop_reference_shapes_and_location():
    cfg = MemoryConfig(crop_size=28)
    image = torch.zeros(3, 200, 200)
    # The crop of box [10, 20, 30, 40] is cols [1, 49), rows [16, 64) (see above). Fill exactly
    # that region with a constant colour: a bicubic resize of a constant is that constant, so an
    # off-by-one in the crop window would pull in zeros at the edges.
    image[:, 16:64, 1:49] = torch.tensor([0.2, 0.5, 0.9])[:, None, None]
    mask = torch.zeros(200, 200)
    mask[16:64, 1:49] = 1.0
    img, m = crop_reference(image, mask, [10, 20, 30, 40], cfg)
    assert img.shape == (3, 28, 28) and m.shape == (28, 28)
    for ch, v in enumerate([0.2, 0.5, 0.9]):
        assert torch.allclose(img[ch], torch.full((28, 28), v), atol=1e-5)
    assert torch.allclose(m, torch.ones(28, 28), atol=1e-6)


def test_crop_reference_all_ones_mask_stays_one():
    cfg = MemoryConfig(crop_size=42)
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 37, 53, generator=g)
    img, m = crop_reference(image, torch.ones(37, 53), [5.5, 3.2, 20.0, 17.9], cfg)
    assert img.shape == (3, 42, 42) and m.shape == (42, 42)
    assert torch.allclose(m, torch.ones(42, 42), atol=1e-6)


def test_crop_reference_soft_mask_in_unit_interval():
    cfg = MemoryConfig(crop_size=28)
    mask = torch.zeros(50, 50)
    mask[20:30, 20:30] = 1.0
    _, m = crop_reference(torch.rand(3, 50, 50), mask, [20, 20, 10, 10], cfg)
    assert m.min() >= 0 and m.max() <= 1
    assert ((m > 0) & (m < 1)).any()  # bilinear → soft edges, not binarised


def test_crop_reference_empty_crop_raises():
    # box [250, 20, 10, 10] in a 200-wide image: cols [int(255−6)=249, min(200, 261)=200) → empty
    with pytest.raises(ValueError):
        crop_reference(torch.zeros(3, 200, 200), torch.zeros(200, 200), [250, 20, 10, 10], MemoryConfig(crop_size=28))


# ============================================================================ mask_to_patch_weights (§2.2)


def test_mask_to_patch_weights_nearest_samples_top_left_pixel():
    m = torch.zeros(28, 28)
    m[14, 14] = 1.0  # the top-left pixel of patch (1, 1)
    w, fell_back = mask_to_patch_weights(m, 2)
    assert w.tolist() == [[0.0, 0.0], [0.0, 1.0]]
    assert fell_back is False


def test_mask_to_patch_weights_keeps_soft_values():
    m = torch.zeros(28, 28)
    m[0, 14] = 0.25
    m[14, 0] = 0.75
    m[1:14, 1:14] = 1.0  # inside patch (0, 0) but not its top-left pixel → ignored
    w, fell_back = mask_to_patch_weights(m, 2)
    assert w.tolist() == [[0.0, 0.25], [0.75, 0.0]]
    assert fell_back is False


def test_mask_to_patch_weights_area_fallback():
    m = torch.zeros(28, 28)
    m[15, 15] = 1.0  # not a sampled pixel → nearest gives all zeros
    w, fell_back = mask_to_patch_weights(m, 2, fallback="area")
    # area pooling: patch (1, 1) covers rows/cols 14..27 → 1 / (14·14) = 1/196
    assert fell_back is True
    assert w[1, 1].item() == pytest.approx(1 / 196)
    assert w[0, 0].item() == 0 and w[0, 1].item() == 0 and w[1, 0].item() == 0


def test_mask_to_patch_weights_error_fallback():
    m = torch.zeros(28, 28)
    m[15, 15] = 1.0
    with pytest.raises(ValueError):
        mask_to_patch_weights(m, 2, fallback="error")


# ============================================================================ instance_prototype (§3 step 2)


def test_instance_prototype_soft_weights():
    feats = torch.tensor([[[1.0, 0.0], [0.0, 2.0]], [[100.0, 100.0], [4.0, 4.0]]])  # [2, 2, D=2]
    w = torch.tensor([[1.0, 0.5], [0.0, 0.25]])
    # Σw = 1.75; Σ w·F = 1·(1,0) + 0.5·(0,2) + 0·(100,100) + 0.25·(4,4) = (2, 2) → (8/7, 8/7)
    p = instance_prototype(feats, w)
    assert p.tolist() == pytest.approx([8 / 7, 8 / 7])
    # Flat [n, D] / [n] input gives the same.
    assert instance_prototype(feats.reshape(4, 2), w.reshape(4)).tolist() == pytest.approx([8 / 7, 8 / 7])


# ============================================================================ class_prototypes (§3 step 3)


def test_class_prototypes_mean_of_unnormalised_then_normalise():
    protos = torch.tensor([[3.0, 0.0], [0.0, -2.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 0])  # ragged: class 0 has 2 instances, class 1 has 1
    P = class_prototypes(protos, labels, 2)
    # class 0: mean((3,0), (0,1)) = (1.5, 0.5) → (3, 1)/√10 = (0.9487, 0.3162)
    #   (mean of the normalised ones would be (0.5, 0.5) → (0.7071, 0.7071): different)
    # class 1: (0, −2) → (0, −1)
    s10 = math.sqrt(10)
    assert P[0].tolist() == pytest.approx([3 / s10, 1 / s10], abs=1e-6)
    assert P[1].tolist() == pytest.approx([0.0, -1.0], abs=1e-6)
    assert P[0].tolist() != pytest.approx([1 / math.sqrt(2), 1 / math.sqrt(2)], abs=1e-3)


def test_class_prototypes_missing_class_raises():
    with pytest.raises(ValueError, match=r"\[2\]"):
        class_prototypes(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1]), 3)


# ============================================================================ MemoryBank


def _bank(protos=None, categories=None) -> MemoryBank:
    return MemoryBank(
        categories=categories or [{"id": 2, "name": "a"}, {"id": 5, "name": "b"}],
        instance_prototypes=protos if protos is not None else torch.tensor([[3.0, 0.0], [0.0, -2.0], [0.0, 1.0]]),
        instance_labels=torch.tensor([0, 1, 0]),
        encoder={"name": "fake", "checkpoint_sha256": "0" * 64, "official": False},
        config={"crop_size": 28},
        references={"source": {"kind": "test"}},
        notes=["hello"],
    )


def test_memory_bank_properties():
    bank = _bank()
    assert bank.category_ids == [2, 5]
    assert bank.category_names == ["a", "b"]
    assert bank.shots == {"a": 2, "b": 1}
    s10 = math.sqrt(10)
    assert bank.class_prototypes[0].tolist() == pytest.approx([3 / s10, 1 / s10], abs=1e-6)
    assert bank.class_prototypes[1].tolist() == pytest.approx([0.0, -1.0], abs=1e-6)
    assert bank.instance_prototypes.dtype == torch.float32
    assert bank.instance_labels.dtype == torch.int64


def test_memory_bank_save_load_round_trip(tmp_path):
    bank = _bank()
    d = bank.save(tmp_path / "bank")
    assert (d / TENSORS_FILE).is_file() and (d / META_FILE).is_file()
    meta = json.loads((d / META_FILE).read_text())
    assert meta["shots"] == {"a": 2, "b": 1}
    assert meta["feature_dim"] == 2
    assert meta["content_hash"] == bank.content_hash
    loaded = MemoryBank.load(d)
    assert torch.equal(loaded.instance_prototypes, bank.instance_prototypes)
    assert torch.equal(loaded.instance_labels, bank.instance_labels)
    assert torch.equal(loaded.class_prototypes, bank.class_prototypes)
    assert loaded.categories == bank.categories
    assert loaded.shots == {"a": 2, "b": 1}
    assert loaded.encoder == bank.encoder
    assert loaded.config == bank.config
    assert loaded.references == bank.references
    assert loaded.notes == ["hello"]
    assert loaded.content_hash == bank.content_hash


def test_memory_bank_content_hash_stable_and_sensitive():
    h = _bank().content_hash
    assert len(h) == 64 and all(ch in "0123456789abcdef" for ch in h)
    assert _bank().content_hash == h  # same content → same hash
    changed = torch.tensor([[3.0, 0.0], [0.0, -2.0], [0.0, 1.5]])
    assert _bank(protos=changed).content_hash != h
    renamed = [{"id": 2, "name": "a"}, {"id": 5, "name": "c"}]
    assert _bank(categories=renamed).content_hash != h


def test_memory_bank_load_detects_tampered_tensors(tmp_path):
    from safetensors.torch import load_file, save_file

    d = _bank().save(tmp_path / "bank")
    tensors = load_file(str(d / TENSORS_FILE))
    tensors["instance_prototypes"][2, 1] = 7.0
    save_file(tensors, str(d / TENSORS_FILE), metadata={"format": "ntt-batch/memory-bank"})
    with pytest.raises(ValueError, match="hash"):
        MemoryBank.load(d)


def test_memory_bank_load_detects_tampered_metadata(tmp_path):
    d = _bank().save(tmp_path / "bank")
    meta = json.loads((d / META_FILE).read_text())
    meta["categories"][1]["name"] = "zzz"
    (d / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="hash"):
        MemoryBank.load(d)


def test_memory_bank_load_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        MemoryBank.load(tmp_path / "nothing")


def test_memory_bank_unsorted_or_duplicate_categories_raise():
    with pytest.raises(ValueError):
        _bank(categories=[{"id": 5, "name": "b"}, {"id": 2, "name": "a"}])
    with pytest.raises(ValueError):
        _bank(categories=[{"id": 2, "name": "a"}, {"id": 2, "name": "b"}])


# ============================================================================ build_memory_bank


class MeanColourEncoder:
    """[B, 3, S, S] → [B, S/14, S/14, 3]: every patch gets the crop's mean colour."""

    patch_size = 14
    native_image_size = 518

    def __init__(self):
        self.batch_shapes = []

    def __call__(self, x):
        self.batch_shapes.append(tuple(x.shape))
        g = x.shape[-1] // 14
        return x.mean(dim=(2, 3))[:, None, None, :].expand(-1, g, g, -1)


class PositionEncoder:
    """[B, 3, S, S] → [B, g, g, g²]: patch (i, j) gets the one-hot e_{i·g + j} (image ignored).

    Then p = Σ_n w_n e_n / Σ_n w_n = the flattened patch weights divided by their sum.
    """

    patch_size = 14
    native_image_size = 518

    def __call__(self, x):
        g = x.shape[-1] // 14
        return torch.eye(g * g).reshape(g, g, g * g).expand(x.shape[0], -1, -1, -1)


def _solid(h, w, rgb):
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[:] = rgb
    return img


def _ref(cat, image_id, ann_id, file_name, h, w, seg, bbox):
    return {
        "category_id": cat,
        "image_id": image_id,
        "file_name": file_name,
        "width": w,
        "height": h,
        "annotation_id": ann_id,
        "bbox": bbox,
        "segmentation": seg,
    }


def _colour_references():
    refs = {
        "format": "ntt-batch/references",
        "version": 1,
        # listed unsorted on purpose: class index = rank of the sorted id (a=2 → 0, b=5 → 1)
        "categories": [{"id": 5, "name": "b"}, {"id": 2, "name": "a"}],
        "references": [
            _ref(2, 1, 11, "one.jpg", 20, 30, [[5, 5, 15, 5, 15, 12, 5, 12]], [5.0, 5.0, 10.0, 7.0]),
            _ref(2, 2, 12, "two.jpg", 24, 16, [[3, 4, 12, 4, 12, 20, 3, 20]], [3.0, 4.0, 9.0, 16.0]),
            _ref(5, 3, 13, "three.jpg", 16, 16, [[4, 4, 12, 4, 12, 12, 4, 12]], [4.0, 4.0, 8.0, 8.0]),
        ],
        "source": {"kind": "test"},
    }
    validate_references(copy.deepcopy(refs))  # a valid references dict...
    return refs  # ...but keep the unsorted category list: the builder must sort by id itself


COLOUR_IMAGES = {
    "one.jpg": _solid(20, 30, (255, 0, 0)),  # → (1, 0, 0)
    "two.jpg": _solid(24, 16, (0, 51, 0)),  # → (0, 0.2, 0)
    "three.jpg": _solid(16, 16, (0, 0, 255)),  # → (0, 0, 1)
}


def test_build_memory_bank_mean_colour_encoder():
    refs = _colour_references()
    enc = MeanColourEncoder()
    bank = build_memory_bank(
        refs,
        lambda r: COLOUR_IMAGES[r["file_name"]],
        enc,
        encoder_info={"name": "fake-colour"},
        config=MemoryConfig(crop_size=28),
        batch_size=2,
    )
    # batch_size 2 → encoder calls of 2 and 1 crops, each [3, 28, 28]
    assert enc.batch_shapes == [(2, 3, 28, 28), (1, 3, 28, 28)]
    assert bank.categories == [{"id": 2, "name": "a"}, {"id": 5, "name": "b"}]
    assert bank.instance_labels.tolist() == [0, 0, 1]
    assert bank.shots == {"a": 2, "b": 1}
    # A solid image's crop is solid (bicubic of a constant), so p = its colour whatever the weights.
    exp = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.2, 0.0], [0.0, 0.0, 1.0]])
    assert torch.allclose(bank.instance_prototypes, exp, atol=1e-5)
    # class a: mean((1,0,0), (0,0.2,0)) = (0.5, 0.1, 0) → (5, 1, 0)/√26
    #   (mean of normalised instances would be (1, 1, 0)/√2)
    s26 = math.sqrt(26)
    assert bank.class_prototypes[0].tolist() == pytest.approx([5 / s26, 1 / s26, 0.0], abs=1e-5)
    assert bank.class_prototypes[1].tolist() == pytest.approx([0.0, 0.0, 1.0], abs=1e-5)
    assert bank.encoder == {"name": "fake-colour", "checkpoint_sha256": None}  # recorded even when unknown
    assert bank.config["crop_size"] == 28
    assert [r["annotation_id"] for r in bank.references["instances"]] == [11, 12, 13]
    assert bank.references["source"] == {"kind": "test"}
    assert bank.notes == []


def test_build_memory_bank_patch_weights_through_position_encoder():
    # 100×100 image; mask = rows 40..59 × cols 40..59 minus the quadrant rows ≥ 50 & cols ≥ 50
    # (an L shape), given as an exact RLE; bbox [40, 40, 20, 20].
    mask = np.zeros((100, 100), dtype=bool)
    mask[40:60, 40:60] = True
    mask[50:60, 50:60] = False
    refs = validate_references(
        {
            "format": "ntt-batch/references",
            "version": 1,
            "categories": [{"id": 1, "name": "thing"}],
            "references": [_ref(1, 1, 1, "img.png", 100, 100, encode_rle(mask), [40.0, 40.0, 20.0, 20.0])],
        }
    )
    bank = build_memory_bank(
        refs,
        lambda r: np.zeros((100, 100, 3), dtype=np.uint8),
        PositionEncoder(),
        encoder_info={"name": "fake-pos"},
        config=MemoryConfig(crop_size=56),
    )
    # Crop: S = 1.2·20 = 24, centre 50 → rows/cols [38, 62): crop index = image index − 38, so the
    # mask is crop rows/cols 2..21 minus crop rows ≥ 12 & cols ≥ 12.
    # Mask 24 → 56 bilinear; nearest 56 → 4 samples output pixels 0, 14, 28, 42, i.e. crop
    # coordinates (k + 0.5)·24/56 − 0.5 = −0.29 → 0 (clamped), 5.714, 11.714, 17.714 (frac 5/7).
    #  * any 0 coordinate → crop row/col 0 = image 38, outside the mask → 0
    #  * (11.714, 11.714): rows 11/12, cols 11/12: only m[12,12] = 0 → 1 − (5/7)² = 24/49
    #  * (11.714, 17.714): m[11, 17..18] = 1, m[12, 17..18] = 0 → 2/7; (17.714, 11.714) likewise
    #  * (17.714, 17.714): all four in the removed quadrant → 0; the rest → 1
    w = torch.tensor(
        [[0, 0, 0, 0], [0, 1, 1, 1], [0, 1, 24 / 49, 2 / 7], [0, 1, 2 / 7, 0]], dtype=torch.float32
    ).reshape(-1)
    # p = w / Σw with Σw = 5 + 24/49 + 4/7 = 297/49
    assert w.sum().item() == pytest.approx(297 / 49)
    assert torch.allclose(bank.instance_prototypes[0], w / (297 / 49), atol=1e-5)
    assert torch.allclose(bank.class_prototypes[0], w / w.norm(), atol=1e-5)
    assert bank.notes == []


def test_build_memory_bank_empty_mask_error_names_reference():
    refs = _colour_references()
    refs["references"][1]["segmentation"] = encode_rle(np.zeros((24, 16), dtype=bool))
    refs = validate_references(refs)
    with pytest.raises(ValueError, match=r"12.*two\.jpg|two\.jpg.*12") as ei:
        build_memory_bank(
            refs,
            lambda r: COLOUR_IMAGES[r["file_name"]],
            MeanColourEncoder(),
            encoder_info={"name": "fake"},
            config=MemoryConfig(crop_size=28),
        )
    assert "empty" in str(ei.value)


def test_build_memory_bank_image_size_mismatch():
    refs = _colour_references()
    images = dict(COLOUR_IMAGES)
    images["three.jpg"] = _solid(16, 17, (0, 0, 255))  # references say 16×16
    with pytest.raises(ValueError, match=r"three\.jpg"):
        build_memory_bank(
            refs,
            lambda r: images[r["file_name"]],
            MeanColourEncoder(),
            encoder_info={"name": "fake"},
            config=MemoryConfig(crop_size=28),
        )


def test_build_memory_bank_box_only_needs_sam():
    refs = _colour_references()
    del refs["references"][0]["segmentation"]
    refs = validate_references(refs)
    with pytest.raises(ValueError, match=r"one\.jpg"):
        build_memory_bank(
            refs,
            lambda r: COLOUR_IMAGES[r["file_name"]],
            MeanColourEncoder(),
            encoder_info={"name": "fake"},
            config=MemoryConfig(crop_size=28),
        )


def test_build_memory_bank_thin_mask_uses_area_fallback_and_notes_it():
    # A 1-px-wide vertical line at image col 56, rows 30..69; bbox [50, 30, 1, 40] (x2 = 51,
    # y2 = 70): S = 1.2·40 = 48, centre (50.5, 50) → cols [int(26.5), int(74.5)) = [26, 74),
    # rows [26, 74). The line is crop col 30, crop rows 4..43.
    # Resize 48 → 28 (bilinear): output k samples crop (k + 0.5)·12/7 − 0.5.
    #  * cols: only k = 17 (→ 29.5, half on col 30) is nonzero, value 0.5; nearest samples cols
    #    0 and 14 → every sample misses → area fallback (§8.6).
    #  * rows: k = 2 → 3.786 (11/14 on row 4), k = 3..24 → 1, k = 25 → 43.214 (11/14 on row 43).
    #    Patch row 0 (k 0..13) sums 11/14 + 11; patch row 1 (k 14..27) sums 11 + 11/14: equal.
    # Area weights: patch col 0 → 0; (0, 1) = (1, 1) = 0.5·(11 + 11/14)/196. With the position
    # encoder the class prototype is the normalised weights: (0, 1, 0, 1)/√2.
    mask = np.zeros((100, 100), dtype=bool)
    mask[30:70, 56] = True
    refs = validate_references(
        {
            "format": "ntt-batch/references",
            "version": 1,
            "categories": [{"id": 1, "name": "thin"}],
            "references": [_ref(1, 1, 77, "thin.png", 100, 100, encode_rle(mask), [50.0, 30.0, 1.0, 40.0])],
        }
    )
    bank = build_memory_bank(
        refs,
        lambda r: np.zeros((100, 100, 3), dtype=np.uint8),
        PositionEncoder(),
        encoder_info={"name": "fake-pos"},
        config=MemoryConfig(crop_size=28),
    )
    assert len(bank.notes) == 1 and "77" in bank.notes[0]
    r = 1 / math.sqrt(2)
    assert bank.class_prototypes[0].tolist() == pytest.approx([0.0, r, 0.0, r], abs=1e-5)
    # p = w / Σw = (0, w01, 0, w01) / (2·w01)
    assert bank.instance_prototypes[0].tolist() == pytest.approx([0.0, 0.5, 0.0, 0.5], abs=1e-5)
    with pytest.raises(ValueError):
        build_memory_bank(
            refs,
            lambda r: np.zeros((100, 100, 3), dtype=np.uint8),
            PositionEncoder(),
            encoder_info={"name": "fake-pos"},
            config=MemoryConfig(crop_size=28, empty_mask_fallback="error"),
        )
