"""Binary-mask helpers: COCO RLE encode/decode, COCO segmentation rasterisation, boxes, areas.

Dependencies: numpy and pycocotools only (this module lives in ``ntt_batch.storage`` and must not
import torch, ray or click).

Conventions
-----------
* A *mask* is a 2-D numpy array of shape ``(H, W)`` (rows = y, columns = x), in pixels of the
  original image.  Functions accept bool or any integer/float dtype (nonzero = object) and return
  ``bool`` arrays.
* A *compressed RLE* is the COCO dict ``{"size": [H, W], "counts": str}``: the column-major
  (Fortran-order) run-length encoding produced by ``pycocotools.mask.encode``, with ``counts``
  decoded from bytes to ``str`` so that it is JSON-serialisable (method.md §4.8).
* An *uncompressed RLE* is ``{"size": [H, W], "counts": [int, ...]}`` (COCO crowd annotations).
* A *polygon segmentation* is a list of polygons, each a flat list ``[x0, y0, x1, y1, ...]`` in
  pixel coordinates (COCO convention: pixel centres at half-integers).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


class _LazyMaskUtils:
    """``pycocotools.mask``, imported on first use: importing this module (and so the segmenter
    and the benchmark) does not need pycocotools, e.g. in the GPU check's minimal environment."""

    def __getattr__(self, name: str):
        from pycocotools import mask

        return getattr(mask, name)


mask_utils = _LazyMaskUtils()

__all__ = [
    "encode_rle",
    "decode_rle",
    "segmentation_to_rle",
    "segmentation_to_mask",
    "segmentation_bbox_xywh",
    "mask_to_box_xyxy_inclusive",
    "xyxy_to_coco_xywh",
    "mask_area",
]


def _as_bool_mask(mask: np.ndarray) -> np.ndarray:
    """Return ``mask`` as a 2-D bool array of shape (H, W); raise ValueError otherwise."""
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D (H, W) mask, got an array of shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr
    return arr != 0


def _rle_for_pycocotools(rle: Mapping[str, Any]) -> dict[str, Any]:
    """Normalise a compressed RLE dict for pycocotools (counts as bytes, size as [int, int])."""
    if "size" not in rle or "counts" not in rle:
        raise ValueError(f"an RLE needs 'size' and 'counts' keys, got keys {sorted(rle)}")
    size = [int(v) for v in rle["size"]]
    if len(size) != 2:
        raise ValueError(f"RLE 'size' must be [height, width], got {rle['size']!r}")
    counts = rle["counts"]
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    elif isinstance(counts, (bytes, bytearray)):
        counts = bytes(counts)
    else:
        raise ValueError(
            "compressed RLE 'counts' must be str or bytes; "
            f"got {type(counts).__name__} (use segmentation_to_rle for uncompressed RLE)"
        )
    return {"size": size, "counts": counts}


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """Encode a binary mask as a COCO compressed RLE (method.md §4.8, "segmentation").

    Args:
        mask: array of shape (H, W), bool or numeric (nonzero = object).

    Returns:
        ``{"size": [H, W], "counts": str}`` — pycocotools RLE of the uint8 Fortran-order mask,
        with ``counts`` decoded from bytes to str (JSON-serialisable).
    """
    m = _as_bool_mask(mask)
    # method.md §4.8: pycocotools RLE of the uint8 Fortran-order mask, counts decoded to str.
    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": counts}


def decode_rle(rle: Mapping[str, Any]) -> np.ndarray:
    """Decode a COCO compressed RLE (``counts`` as str or bytes) to a bool mask.

    Args:
        rle: ``{"size": [H, W], "counts": str | bytes}``.  An uncompressed RLE
            (``counts`` a list of ints) is also accepted and converted first.

    Returns:
        bool array of shape (H, W).
    """
    if isinstance(rle.get("counts"), list):
        h, w = (int(v) for v in rle["size"])
        return segmentation_to_mask(dict(rle), h, w)
    decoded = mask_utils.decode(_rle_for_pycocotools(rle))
    return np.ascontiguousarray(decoded, dtype=bool)


def segmentation_to_rle(segmentation: Any, height: int, width: int) -> dict[str, Any]:
    """Convert any COCO segmentation to a compressed RLE (same logic as ``COCO.annToRLE``).

    Args:
        segmentation: a list of polygons (each a flat ``[x0, y0, x1, y1, ...]`` list, pixels),
            an uncompressed RLE ``{"size", "counts": list[int]}`` or a compressed RLE
            ``{"size", "counts": str | bytes}``.
        height: image height H in pixels.
        width: image width W in pixels.

    Returns:
        compressed RLE ``{"size": [H, W], "counts": str}``.
    """
    h, w = int(height), int(width)
    if isinstance(segmentation, Mapping):
        counts = segmentation.get("counts")
        if isinstance(counts, list):
            # Uncompressed RLE (crowd annotations): frPyObjects compresses it.
            rle = mask_utils.frPyObjects({"size": [int(v) for v in segmentation["size"]], "counts": counts}, h, w)
        else:
            rle = _rle_for_pycocotools(segmentation)
    elif isinstance(segmentation, Sequence) and not isinstance(segmentation, (str, bytes)):
        polygons = [[float(v) for v in poly] for poly in segmentation]
        if not polygons:
            raise ValueError("empty polygon list: the annotation has no segmentation")
        # No further checks on purpose: COCO.annToRLE passes the list straight to frPyObjects
        # (which, like COCO, treats a first "polygon" of exactly 4 numbers as a box).
        # Polygons: one RLE per polygon, then union (COCO.annToRLE).
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, h, w))
    else:
        raise ValueError(f"unsupported segmentation of type {type(segmentation).__name__}")
    if [int(rle["size"][0]), int(rle["size"][1])] != [h, w]:
        raise ValueError(f"RLE size {list(rle['size'])} does not match the image size [{h}, {w}]")
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    return {"size": [h, w], "counts": counts}


def segmentation_to_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Rasterise a COCO segmentation exactly like ``COCO.annToMask`` (frPyObjects + merge).

    Args:
        segmentation: polygons (list of flat coordinate lists), uncompressed RLE (counts list)
            or compressed RLE (counts str/bytes).
        height: image height H in pixels.
        width: image width W in pixels.

    Returns:
        bool array of shape (H, W).
    """
    rle = segmentation_to_rle(segmentation, height, width)
    return np.ascontiguousarray(mask_utils.decode(_rle_for_pycocotools(rle)), dtype=bool)


def segmentation_bbox_xywh(segmentation: Any, height: int, width: int) -> list[float]:
    """Tight COCO box ``[x, y, w, h]`` (pixels, exclusive extent) of a COCO segmentation.

    Uses ``pycocotools.mask.toBbox``: for a mask whose pixels span columns x1..x2 (inclusive)
    the box is ``[x1, y1, x2 - x1 + 1, y2 - y1 + 1]``.  Empty segmentation → ``[0, 0, 0, 0]``.
    """
    rle = _rle_for_pycocotools(segmentation_to_rle(segmentation, height, width))
    return [float(v) for v in mask_utils.toBbox(rle)]


def mask_to_box_xyxy_inclusive(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Box of a mask in xyxy with **inclusive** max coordinates (sam2 ``amg.batched_mask_to_box``).

    method.md §4.5/§4.6: ``x2``/``y2`` are the index of the last object column/row, so a mask
    covering columns 2..4 gives ``x1=2, x2=4``.

    Args:
        mask: array of shape (H, W), bool or numeric (nonzero = object).

    Returns:
        ``(x1, y1, x2, y2)`` in pixels; ``(0, 0, 0, 0)`` for an empty mask.
    """
    m = _as_bool_mask(mask)
    cols = np.flatnonzero(m.any(axis=0))
    if cols.size == 0:
        return (0, 0, 0, 0)  # method.md §4.5: an empty mask gives [0, 0, 0, 0]
    rows = np.flatnonzero(m.any(axis=1))
    return (int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1]))


def xyxy_to_coco_xywh(box: Sequence[float]) -> list[float]:
    """Convert an xyxy box to the COCO results ``bbox`` ``[x1, y1, x2 - x1, y2 - y1]``.

    method.md §4.8 and §8.15: with inclusive max coordinates this is one pixel short of the mask
    extent.  That is the reference convention and is kept on purpose.

    Args:
        box: ``(x1, y1, x2, y2)`` in pixels.

    Returns:
        ``[x, y, w, h]`` as floats.
    """
    if len(box) != 4:
        raise ValueError(f"expected a 4-element (x1, y1, x2, y2) box, got {len(box)} elements")
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def mask_area(rle_or_mask: Mapping[str, Any] | np.ndarray) -> int:
    """Number of object pixels of a mask or of a COCO RLE (compressed or uncompressed).

    Args:
        rle_or_mask: array of shape (H, W) (nonzero = object) or an RLE dict.

    Returns:
        area in pixels (int).
    """
    if isinstance(rle_or_mask, Mapping):
        rle = rle_or_mask
        if isinstance(rle.get("counts"), list):
            h, w = (int(v) for v in rle["size"])
            rle = segmentation_to_rle(dict(rle), h, w)
        return int(mask_utils.area(_rle_for_pycocotools(rle)))
    return int(np.count_nonzero(_as_bool_mask(rle_or_mask)))
