"""Label Studio's brush RLE: a bit-packed run-length code of an RGBA image, written with numpy.

Label Studio stores a ``brushlabels`` region as ``value = {"format": "rle", "rle": [byte, ...],
"brushlabels": [name]}`` with ``original_width`` / ``original_height`` on the result. The bytes are
thi.ng's ``rle-pack`` code (the editor decodes them with ``@thi.ng/rle-pack``) of the region's
``height x width x 4`` RGBA image, flattened row-major; a pixel belongs to the region when its
alpha byte is non-zero. The Python side is ``label_studio_sdk.converter.brush`` (formerly
``label_studio_converter.brush``): ``encode_rle`` / ``mask2rle`` write it, ``decode_rle`` reads it.

The code, read MSB first::

    header  32 bits  number of values n (= height * width * 4)
             5 bits  word size - 1 (7: bytes)
          4 x 4 bits run-length field sizes - 1 (2, 3, 7, 15: fields of 3, 4, 8 and 16 bits)
    then blocks until n values are out:
             1 bit   1 = a run of one repeated value, 0 = literal values
             2 bits  which run-length field follows (0..3)
          3..16 bits  (count - 1) in that many bits
             8 bits  the value (a run), or ``count`` values (literals)
    then zero bits up to a whole byte

:func:`mask_to_brush_rle` writes exactly the bytes of the SDK's ``mask2rle(mask * 255)`` (every
channel 255 inside the mask, 0 outside), including its quirks: a run of one value is a literal
block of one; a run longer than 65,536 values is cut into blocks of 65,536; a run of 257 values or
more always uses the 16-bit field; the padding adds a whole zero byte when the bits already end on
a byte boundary. Unlike ``mask2rle`` it never builds the ``H x W x 4`` array or a string of bits:
it works on the runs of the mask (about two per object row), so a 4000 x 3000 mask costs
milliseconds. :func:`brush_rle_to_mask` reads any such code (literal blocks included) back.

Pure numpy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["brush_rle_to_mask", "encode_brush_values", "mask_to_brush_rle"]

_WORD = 8  # bits per value
_RLE_SIZES = (3, 4, 8, 16)  # bits of the run-length fields (the SDK's default rle_sizes)
_HEADER = (32, 5, 4, 4, 4, 4)
_MAX_RUN = 1 << 16  # the longest run one block holds
_CHUNK = 1 << 16  # blocks turned into bits at a time (bounds the temporary arrays)


def _runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lengths, values) of the maximal runs of equal values of a 1-D array."""
    starts = np.concatenate([[0], np.flatnonzero(values[1:] != values[:-1]) + 1])
    lengths = np.diff(np.append(starts, values.size))
    return lengths.astype(np.int64), values[starts]


def _encode_runs(n: int, lengths: np.ndarray, values: np.ndarray) -> list[int]:
    """The brush RLE bytes of ``n`` values given as runs (``lengths`` sum to ``n``; ``values`` uint8)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    values = np.asarray(values, dtype=np.uint64)
    if n >= 1 << 32:
        raise ValueError(f"a brush RLE holds at most 2**32 - 1 values, got {n} (image too large)")
    # a run longer than 65,536 values: (L - 1) // 65536 blocks of 65,536, then the rest
    full = np.where(lengths > _MAX_RUN, (lengths - 1) // _MAX_RUN, 0)
    rest = lengths - full * _MAX_RUN
    if full.any():
        reps = full + 1
        block_len = np.repeat(rest, reps)
        last = np.cumsum(reps) - 1
        is_rest = np.zeros(block_len.size, dtype=bool)
        is_rest[last] = True
        block_len = np.where(is_rest, block_len, _MAX_RUN)
        long_run = np.repeat(lengths > 256, reps)
        block_val = np.repeat(values, reps)
    else:
        block_len, long_run, block_val = rest, lengths > 256, values
    # field index: 0 (3 bits) for 1..8, 1 (4 bits) 9..16, 2 (8 bits) 17..256, 3 (16 bits) beyond
    idx = np.select([long_run, block_len > 16, block_len > 8], [3, 2, 1], 0).astype(np.uint64)
    size = np.array(_RLE_SIZES, dtype=np.uint64)[idx.astype(np.int64)]
    flag = (block_len > 1).astype(np.uint64)  # a single value is a literal block of one
    count = (block_len - 1).astype(np.uint64)
    nbits = 3 + size + _WORD
    codes = (flag << (nbits - 1)) | (idx << (size + _WORD)) | (count << np.uint64(_WORD)) | block_val
    header_fields = [n, _WORD - 1] + [s - 1 for s in _RLE_SIZES]
    header = 0
    for width, v in zip(_HEADER, header_fields):
        header = (header << width) | v
    parts = [_bits(np.array([header], dtype=np.uint64), np.array([sum(_HEADER)], dtype=np.uint64))]
    for k in range(0, codes.size, _CHUNK):
        parts.append(_bits(codes[k : k + _CHUNK], nbits[k : k + _CHUNK]))
    total = sum(p.size for p in parts)
    parts.append(np.zeros(8 - total % 8, dtype=np.uint8))  # the SDK pads 1..8 zero bits
    return np.packbits(np.concatenate(parts)).tolist()


def _bits(codes: np.ndarray, nbits: np.ndarray) -> np.ndarray:
    """The bits (uint8 0/1, MSB first) of each code in its ``nbits`` bits, concatenated."""
    nbits = nbits.astype(np.int64)
    ends = np.cumsum(nbits)
    pos = np.arange(int(ends[-1]) if ends.size else 0, dtype=np.int64) - np.repeat(ends - nbits, nbits)
    shift = (np.repeat(nbits, nbits) - 1 - pos).astype(np.uint64)
    return ((np.repeat(codes, nbits) >> shift) & np.uint64(1)).astype(np.uint8)


def encode_brush_values(values: np.ndarray) -> list[int]:
    """Brush RLE bytes of a flat uint8 array: the SDK's ``encode_rle(values)`` with its defaults.

    ``values``: 1-D, e.g. an ``(H, W, 4)`` RGBA image ``.ravel()``-ed. Returns a list of ints 0..255.
    """
    v = np.asarray(values)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"expected a non-empty 1-D array of values, got shape {v.shape}")
    if v.dtype != np.uint8:
        if v.size and (v.min() < 0 or v.max() > 255):
            raise ValueError("brush RLE values are bytes: 0..255")
        v = v.astype(np.uint8)
    lengths, vals = _runs(v)
    return _encode_runs(int(v.size), lengths, vals)


def mask_to_brush_rle(mask: np.ndarray) -> list[int]:
    """A bool ``(H, W)`` mask → Label Studio brush RLE bytes (``value["rle"]``).

    The RGBA image is 255 in every channel inside the mask and 0 outside, flattened row-major:
    byte for byte the SDK's ``mask2rle((mask * 255).astype(np.uint8))``.
    """
    m = np.asarray(mask)
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"expected a non-empty 2-D (H, W) mask, got shape {m.shape}")
    lengths, vals = _runs(m.reshape(-1) != 0)
    return _encode_runs(m.size * 4, lengths * 4, np.where(vals, 255, 0).astype(np.uint8))


class _BitReader:
    """MSB-first reader over a byte array."""

    def __init__(self, data: np.ndarray) -> None:
        self.bits = np.unpackbits(data)
        self.i = 0

    def read(self, n: int) -> int:
        if self.i + n > self.bits.size:
            raise ValueError("brush RLE ends early (truncated or not an RLE)")
        chunk = self.bits[self.i : self.i + n]
        self.i += n
        return int(chunk.dot(1 << np.arange(n - 1, -1, -1, dtype=np.int64))) if n else 0


def brush_rle_to_mask(rle: Sequence[int], height: int, width: int) -> np.ndarray:
    """Label Studio brush RLE bytes → bool ``(height, width)`` mask (alpha channel non-zero).

    Reads the general code (any word size, field sizes, literal blocks), as the SDK's
    ``decode_rle`` does; raises ValueError when the value count is not ``height * width * 4``.
    """
    data = np.asarray(rle, dtype=np.int64)
    if data.ndim != 1 or (data.size and (data.min() < 0 or data.max() > 255)):
        raise ValueError("a brush RLE is a list of bytes (ints 0..255)")
    r = _BitReader(data.astype(np.uint8))
    n = r.read(32)
    word = r.read(5) + 1
    sizes = [r.read(4) + 1 for _ in range(4)]
    h, w = int(height), int(width)
    if n != h * w * 4:
        raise ValueError(
            f"brush RLE holds {n} values, but a {w}x{h} RGBA image has {h * w * 4}: "
            "original_width/original_height do not match the RLE"
        )
    out = np.zeros(n, dtype=np.uint32)
    i = 0
    while i < n:
        is_run = r.read(1)
        j = min(n, i + 1 + r.read(sizes[r.read(2)]))
        if is_run:
            out[i:j] = r.read(word)
        else:
            for k in range(i, j):
                out[k] = r.read(word)
        i = j
    return out.reshape(h, w, 4)[:, :, 3] != 0
