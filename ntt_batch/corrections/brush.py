"""Label Studio's brush RLE (``brushlabels`` regions, ``value.format == "rle"``): a decoder.

Label Studio stores a brush region as ``value.rle``: a list of byte values (0-255) that packs the
region's RGBA canvas (``original_height x original_width x 4`` bytes, row-major, interleaved
channels) with the bit-level run-length scheme of thi.ng's ``rle-pack``. This decoder is
transcribed from label-studio-sdk ``src/label_studio_sdk/converter/brush.py`` (``decode_rle`` /
``decode_rle_python``, HumanSignal/label-studio-sdk; the JavaScript original is
``thi-ng/umbrella packages/rle-pack/src/index.ts``), rewritten over one bit string instead of
one Python call per bit. The stream, most significant bit of each byte first:

* header: ``num`` (32 bits, the number of decoded values), ``word_size - 1`` (5 bits), then four
  run-length field widths, each ``width - 1`` (4 bits);
* then tokens until ``num`` values are out: a flag bit, a 2-bit index ``k`` into the four widths,
  ``n - 1`` in ``widths[k]`` bits; flag 1: one ``word_size``-bit value repeated ``n`` times;
  flag 0: ``n`` values of ``word_size`` bits each.

The SDK turns a region into a mask by taking the alpha channel (``reshape(h, w, 4)[:, :, 3]``);
:func:`brush_mask` does the same and counts every pixel with alpha > 0 as the object (the SDK's
``mask2rle`` writes the mask value itself, 255 or 1, into all four channels).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["decode_brush_rle", "brush_mask"]


def decode_brush_rle(rle: Sequence[int]) -> np.ndarray:
    """Decode Label Studio's brush RLE to its flat value buffer.

    Args:
        rle: the ``value.rle`` list of a ``brushlabels`` result (ints 0-255).

    Returns:
        1-D array of ``num`` values (uint8 for word sizes <= 8 bits, else uint16/uint32):
        for a brush region the RGBA bytes of the canvas, length ``H * W * 4``.

    Raises:
        ValueError: not a list of bytes, or a stream that ends before ``num`` values.
    """
    try:
        data = np.asarray(rle, dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"brush rle must be a list of integers 0-255, got {type(rle).__name__}") from e
    if data.ndim != 1 or (data.size and (data.min() < 0 or data.max() > 255)):
        raise ValueError("brush rle must be a flat list of integers 0-255 (Label Studio's value.rle)")
    bits = (np.unpackbits(data.astype(np.uint8)) + ord("0")).tobytes().decode("ascii")
    total = len(bits)
    pos = 0

    def read(n: int) -> int:
        nonlocal pos
        if pos + n > total:
            raise ValueError("brush rle ends early: truncated or not Label Studio's RLE")
        v = int(bits[pos : pos + n], 2) if n else 0
        pos += n
        return v

    num = read(32)
    word = read(5) + 1
    widths = [read(4) + 1 for _ in range(4)]
    dtype = np.uint8 if word < 9 else np.uint16 if word < 17 else np.uint32
    out = np.zeros(num, dtype=dtype)
    i = 0
    while i < num:
        repeat = read(1)
        j = i + 1 + read(widths[read(2)])
        if j > num:
            raise ValueError(f"brush rle describes more than its {num} values: not Label Studio's RLE")
        if repeat:
            out[i:j] = read(word)
        else:
            for k in range(i, j):
                out[k] = read(word)
        i = j
    return out


def brush_mask(rle: Sequence[int], height: int, width: int) -> np.ndarray:
    """A brush region's mask: alpha channel > 0 of the decoded ``height x width`` RGBA canvas.

    Args:
        rle: ``value.rle`` of the region.
        height, width: ``original_height``, ``original_width`` of the result (pixels).

    Returns:
        bool array of shape (height, width).

    Raises:
        ValueError: the decoded length is not ``height * width * 4``.
    """
    flat = decode_brush_rle(rle)
    h, w = int(height), int(width)
    if flat.size != h * w * 4:
        raise ValueError(
            f"brush rle decodes to {flat.size} values, expected {h} x {w} x 4 = {h * w * 4} "
            "(original_height x original_width RGBA): the region does not belong to an image of this size"
        )
    return flat.reshape(h, w, 4)[:, :, 3] > 0
