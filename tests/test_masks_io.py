"""Tests for ntt_batch.storage.masks (RLE, COCO segmentation rasterisation, boxes, areas).

Expected values are worked out by hand in the comments, not by calling the code under test.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from ntt_batch.storage.masks import (
    decode_rle,
    encode_rle,
    mask_area,
    mask_to_box_xyxy_inclusive,
    segmentation_bbox_xywh,
    segmentation_to_mask,
    segmentation_to_rle,
    xyxy_to_coco_xywh,
)


def _coco_mini() -> Path:
    env = os.environ.get("NTT_SHARED_DATA")
    base = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return base / "coco_mini"


def _rect_5x7() -> np.ndarray:
    """H=5, W=7 mask; object = rows 1..3, columns 2..5 (inclusive) -> 3 x 4 = 12 pixels."""
    m = np.zeros((5, 7), dtype=bool)
    m[1:4, 2:6] = True
    return m


def test_rectangle_box_xywh_area() -> None:
    m = _rect_5x7()
    # inclusive max coords: last object column 5, last object row 3
    assert mask_to_box_xyxy_inclusive(m) == (2, 1, 5, 3)
    # [x1, y1, x2 - x1, y2 - y1] -> one pixel short of the 4 x 3 extent (method.md §8.15)
    assert xyxy_to_coco_xywh((2, 1, 5, 3)) == [2.0, 1.0, 3.0, 2.0]
    assert mask_area(m) == 12
    assert mask_area(m.astype(np.uint8) * 255) == 12
    assert mask_area(encode_rle(m)) == 12
    # pycocotools' toBbox: exclusive extent [x1, y1, 4, 3]
    assert segmentation_bbox_xywh(encode_rle(m), 5, 7) == [2.0, 1.0, 4.0, 3.0]


def test_single_pixel_box() -> None:
    m = np.zeros((5, 7), dtype=np.uint8)
    m[4, 6] = 1  # bottom-right pixel: x = 6, y = 4
    assert mask_to_box_xyxy_inclusive(m) == (6, 4, 6, 4)
    assert xyxy_to_coco_xywh(mask_to_box_xyxy_inclusive(m)) == [6.0, 4.0, 0.0, 0.0]
    assert mask_area(m) == 1


def test_empty_mask() -> None:
    m = np.zeros((4, 3), dtype=bool)
    assert mask_to_box_xyxy_inclusive(m) == (0, 0, 0, 0)
    assert mask_area(m) == 0
    rle = encode_rle(m)
    assert rle["size"] == [4, 3]
    # 12 background pixels, no object run: counts [12] -> one char "<" (48 + 12)
    assert rle["counts"] == "<"
    assert mask_area(rle) == 0
    out = decode_rle(rle)
    assert out.dtype == bool and out.shape == (4, 3) and not out.any()


def test_encode_known_string() -> None:
    # 3x3 mask with only the centre pixel. Column-major flat index of (row 1, col 1) is 4, so
    # the runs are [4 background, 1 object, 4 background].  COCO's string codec writes each run
    # in 5-bit groups (+48); the first three runs are written as-is (no delta): "4", "1", "4".
    m = np.zeros((3, 3), dtype=bool)
    m[1, 1] = True
    rle = encode_rle(m)
    assert rle == {"size": [3, 3], "counts": "414"}
    assert isinstance(rle["counts"], str)
    # counts as bytes are accepted as well
    assert np.array_equal(decode_rle({"size": [3, 3], "counts": b"414"}), m)
    # the same mask as an uncompressed RLE (crowd-style counts list)
    unc = {"size": [3, 3], "counts": [4, 1, 4]}
    assert np.array_equal(segmentation_to_mask(unc, 3, 3), m)
    assert np.array_equal(decode_rle(unc), m)
    assert mask_area(unc) == 1


def test_column_major_order() -> None:
    # H=2, W=3; object at (row 0, col 1) only -> column-major index 2: runs [2, 1, 3] -> "213"
    m = np.zeros((2, 3), dtype=bool)
    m[0, 1] = True
    assert encode_rle(m)["counts"] == "213"
    # also for a non-contiguous (transposed) input
    mt = np.zeros((3, 2), dtype=bool)
    mt[1, 0] = True
    assert encode_rle(mt.T)["counts"] == "213"


def test_round_trip_random_masks() -> None:
    rng = np.random.default_rng(1234)
    shapes = [(1, 1), (1, 17), (23, 1), (5, 7), (64, 48), (100, 133), (480, 640)]
    for shape in shapes:
        for density in (0.0, 0.03, 0.5, 0.97, 1.0):
            m = rng.random(shape) < density
            rle = encode_rle(m)
            assert rle["size"] == [shape[0], shape[1]]
            assert isinstance(rle["counts"], str)
            back = decode_rle(rle)
            assert back.dtype == bool
            assert np.array_equal(back, m), (shape, density)
            assert mask_area(rle) == int(m.sum())
            assert segmentation_to_mask(rle, *shape).tolist() == m.tolist()


def test_polygon_square() -> None:
    from pycocotools import mask as mask_utils

    # Axis-aligned square with corners (1, 1) and (4, 4) in a 6 x 6 image.  COCO's rasteriser
    # covers x in [1, 4) and y in [1, 4) for such a polygon: columns and rows 1, 2, 3 -> 9 px.
    poly = [[1, 1, 4, 1, 4, 4, 1, 4]]
    m = segmentation_to_mask(poly, 6, 6)
    expected = np.zeros((6, 6), dtype=bool)
    expected[1:4, 1:4] = True
    assert np.array_equal(m, expected)
    # the same area as pycocotools' own area for that polygon
    own = int(mask_utils.area(mask_utils.merge(mask_utils.frPyObjects(poly, 6, 6))))
    assert own == 9 == mask_area(m)
    assert mask_to_box_xyxy_inclusive(m) == (1, 1, 3, 3)


def test_two_polygons_are_merged() -> None:
    # two disjoint squares: [1,4)x[1,4) and [6,8)x[0,2) in an 8 (H) x 10 (W) image
    polys = [[1, 1, 4, 1, 4, 4, 1, 4], [6.0, 0.0, 8.0, 0.0, 8.0, 2.0, 6.0, 2.0]]
    m = segmentation_to_mask(polys, 8, 10)
    expected = np.zeros((8, 10), dtype=bool)
    expected[1:4, 1:4] = True
    expected[0:2, 6:8] = True
    assert np.array_equal(m, expected)
    assert mask_area(m) == 9 + 4
    rle = segmentation_to_rle(polys, 8, 10)
    assert isinstance(rle["counts"], str) and rle["size"] == [8, 10]


def test_errors() -> None:
    with pytest.raises(ValueError):
        encode_rle(np.zeros((2, 2, 2), dtype=bool))
    with pytest.raises(ValueError):
        segmentation_to_mask({"size": [3, 3], "counts": "414"}, 4, 3)  # size mismatch
    with pytest.raises(ValueError):
        segmentation_to_mask([], 3, 3)
    with pytest.raises(ValueError):
        decode_rle({"counts": "414"})
    with pytest.raises(ValueError):
        xyxy_to_coco_xywh((1, 2, 3))


def test_matches_coco_ann_to_mask_on_real_annotations() -> None:
    ann_file = _coco_mini() / "annotations" / "instances_train2017.json"
    if not ann_file.is_file():
        pytest.skip(f"shared test data not found at {ann_file} (set NTT_SHARED_DATA)")
    from pycocotools.coco import COCO

    coco = COCO(str(ann_file))
    anns = list(coco.anns.values())
    crowd = [a for a in anns if a.get("iscrowd", 0) == 1]
    assert crowd, "coco_mini should contain crowd (uncompressed RLE) annotations"
    for ann in anns[:150] + crowd:
        img = coco.imgs[ann["image_id"]]
        ours = segmentation_to_mask(ann["segmentation"], img["height"], img["width"])
        ref = coco.annToMask(ann).astype(bool)
        assert np.array_equal(ours, ref), ann["id"]
        assert mask_area(ours) == int(ref.sum())
