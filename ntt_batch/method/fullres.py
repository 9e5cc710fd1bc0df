"""Full-resolution masks and soft merging with memory bounded by a budget (method.md §4.6-4.8).

The straightforward §4.6-4.7 (``MethodSegmenter._finalize_reference``) upsamples every NMS survivor —
up to 800 — to the original size as float32 and then takes a float Gram matrix of the flattened
masks: memory and time grow as M·H·W (10 GB for a 9400×9400 image). This module computes the
same masks and the same merge with buffers bounded by ``budget`` bytes:

* **Exact upsampling in pieces.** ``F.interpolate(..., mode="bilinear", antialias=True)`` is
  separable: a horizontal pass (low-res rows → W columns) then a vertical pass (h rows → H
  rows), each output element computed on its own. So the horizontal pass of a chunk of masks can
  be run alone (``size=(h, W)``; the unchanged height is a copy) and the vertical pass on any
  slice of its columns (``size=(H, band_width)``), and the result equals the one-call upsampling
  bit for bit — checked by the tests on CPU (``tests/test_memory_bounded.py``). The CUDA kernel
  has the same structure (per output pixel: horizontal taps, then vertical taps over those) but
  has not been run here (no GPU). No other interpolation arithmetic is reimplemented.
* **Masks as runs.** Each thresholded column band is turned into column-major runs (column,
  first row, one-past-last row) as soon as it is computed; that is all that is kept of a mask.
  Column-major is the COCO RLE order, so the final RLE comes straight from the runs.
* **Integer intersection counts.** |M_i ∩ M_j| for same-class pairs is accumulated tile by tile
  (runs painted into a small float buffer, one matmul per tile; every partial sum is an
  integer < 2^24, so exact) into int64 counts. The soft-merge formula is then applied to the
  counts with the reference's float32 operations (:func:`soft_merge_scores_from_counts`).
* Only the final ≤ ``max_detections`` instances become COCO RLE; dense bool masks are made only
  when they fit in the budget.

A mask whose low-res logits are all ≤ 0 is empty at full size: every upsampled value is a
combination of non-positive logits with non-negative weights. The same argument bounds each
mask's full-size support to the output rows/columns whose interpolation taps touch its low-res
positive box, so work outside it is skipped without changing any value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .tiling import TILE_BATCH, needs_tiling

DEFAULT_BUDGET_BYTES = 256 * 2**20
_EXACT_TILE_PIXELS = 2**24  # float32 holds every integer up to 2^24: tile counts stay exact


def _aa_upsample(x: Tensor, size: tuple[int, int]) -> Tensor:
    """The §4.6 interpolation (bilinear, align_corners=False, antialias=True) of [k, h, w] → [k, *size]."""
    return F.interpolate(x[:, None], size=size, mode="bilinear", align_corners=False, antialias=True)[:, 0]


def tap_ranges(n_in: int, n_out: int, device=None) -> tuple[Tensor, Tensor]:
    """For each output index of the §4.6 1-D interpolation n_in → n_out, the first and last input
    index with a nonzero weight ([n_out] each, non-decreasing).

    Read off the interpolation itself (one-hot inputs), so it is exactly what ``F.interpolate``
    uses. Memory: n_in · n_out floats (256 · 10⁴ = 10 MB).
    """
    eye = torch.eye(n_in, dtype=torch.float32, device=device)
    w = F.interpolate(eye[None, None], size=(n_in, n_out), mode="bilinear", align_corners=False, antialias=True)[
        0, 0
    ]  # [n_in, n_out]: row c = weights of input c
    nz = w != 0
    first = nz.to(torch.int8).argmax(dim=0)
    last = n_in - 1 - nz.flip(0).to(torch.int8).argmax(dim=0)
    return first, last


def _support(lo: Tensor, hi: Tensor, first: Tensor, last: Tensor) -> tuple[Tensor, Tensor]:
    """Output index range [start, stop) whose taps meet the input range [lo, hi] (per mask)."""
    start = torch.searchsorted(last.contiguous(), lo.contiguous(), right=False)
    stop = torch.searchsorted(first.contiguous(), hi.contiguous(), right=True)
    return start, stop


def _small_int(limit: int) -> torch.dtype:
    """The narrowest signed dtype holding 0..limit (run rows and columns)."""
    return torch.int16 if limit < 2**15 else torch.int32


@dataclass
class MaskRuns:
    """Binary masks [M, H, W] as column-major runs: run r covers rows ``start[r] .. end[r]-1`` of
    column ``col[r]``. Mask i owns runs ``offsets[i]:offsets[i+1]``, in column-major order (by
    column, then row); two runs of one column never touch. ``area`` and ``box`` (inclusive xyxy,
    zeros for an empty mask) are kept alongside. Rows/columns are int16 when the image allows.
    """

    size: tuple[int, int]  # (H, W)
    col: Tensor  # [R]
    start: Tensor  # [R]
    end: Tensor  # [R]
    offsets: Tensor  # [M + 1] int64
    area: Tensor  # [M] int64
    box: Tensor  # [M, 4] int64

    @property
    def num_masks(self) -> int:
        return int(self.offsets.numel()) - 1

    def runs(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Mask i's runs (col, start, end) as int64 numpy arrays."""
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return tuple(t[a:b].cpu().numpy().astype(np.int64) for t in (self.col, self.start, self.end))

    def rle(self, i: int) -> dict:
        """Mask i as COCO compressed RLE, equal to ``encode_rle`` of its dense mask."""
        return rle_from_runs(self.size, *self.runs(i))

    def dense(self, i: int) -> np.ndarray:
        """Mask i as a [H, W] bool array."""
        return dense_from_runs(self.size, *self.runs(i))


def rle_from_runs(size: tuple[int, int], col: np.ndarray, start: np.ndarray, end: np.ndarray) -> dict:
    """COCO compressed RLE (``{"size": [H, W], "counts": str}``) of a mask given as column-major
    runs; equal to ``encode_rle`` of the dense mask (no dense mask is made; no pycocotools needed)."""
    h, w = int(size[0]), int(size[1])
    s = col.astype(np.int64) * h + start
    e = col.astype(np.int64) * h + end
    if s.size:  # runs that meet across a column boundary are one run in Fortran order
        join = s[1:] == e[:-1]
        s = np.concatenate([s[:1], s[1:][~join]])
        e = np.concatenate([e[:-1][~join], e[-1:]])
    bounds = np.empty(2 * s.size + 2, dtype=np.int64)
    bounds[0], bounds[-1] = 0, h * w
    bounds[1:-1:2], bounds[2:-1:2] = s, e
    counts = np.diff(bounds)
    if counts.size > 1 and counts[-1] == 0:  # a mask ending on a set pixel has no final run of 0s
        counts = counts[:-1]
    return {"size": [h, w], "counts": _counts_to_string(counts)}


def dense_from_runs(size: tuple[int, int], col: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """[H, W] bool mask from column-major runs."""
    h, w = int(size[0]), int(size[1])
    diff = np.zeros(h * w + 1, dtype=np.int8)
    np.add.at(diff, col.astype(np.int64) * h + start, 1)
    np.add.at(diff, col.astype(np.int64) * h + end, -1)
    flat = np.cumsum(diff[:-1], dtype=np.int8).view(np.bool_)
    return np.ascontiguousarray(flat.reshape(w, h).T)


def _counts_to_string(counts: np.ndarray) -> str:
    """COCO's compressed string of run-length counts (pycocotools' ``rleToString``)."""
    try:
        from .rle import counts_to_string
    except ImportError:  # pragma: no cover - the vectorised writer is absent: pycocotools does it
        from pycocotools import mask as mask_utils

        n = int(np.sum(counts))
        return mask_utils.frPyObjects({"size": [n, 1], "counts": [int(c) for c in counts]}, n, 1)["counts"].decode(
            "ascii"
        )
    return counts_to_string(counts)


def _ranges(starts: Tensor, counts: Tensor) -> Tensor:
    """Concatenation of arange(s, s + c) for each (s, c)."""
    total = int(counts.sum()) if counts.numel() else 0
    if total == 0:
        return torch.zeros(0, dtype=torch.int64, device=starts.device)
    rep_start = torch.repeat_interleave(starts, counts)
    first = torch.cumsum(counts, 0) - counts
    pos = torch.arange(total, device=starts.device) - torch.repeat_interleave(first, counts)
    return rep_start + pos


def _band_runs(band: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """[a, H, c] bool → runs (mask, col, start, end), column-major and grouped by mask (int64)."""
    # change[p] = band[p] != band[p-1] with rows -1 and H clear: +run start or one past a run's end
    change = torch.cat([band[:, :1], band[:, 1:] ^ band[:, :-1], band[:, -1:]], dim=1)  # [a, H+1, c]
    idx = torch.nonzero(change.transpose(1, 2))  # by (mask, col, row): start, end, start, end, ...
    del change
    return idx[0::2, 0], idx[0::2, 1], idx[0::2, 2], idx[1::2, 2]


def _column_support(logits: Tensor, big_w: int) -> tuple[Tensor, Tensor, Tensor]:
    """For [M, h, w] float logits upsampled to width ``big_w``: which masks have a positive logit
    ([M] bool), and per mask the full-res columns [x_start, x_stop) ([M] int64 each) its
    antialiased upsampling can reach from its positive low-res columns."""
    m, h, w = logits.shape
    dev = logits.device
    first_x, last_x = tap_ranges(w, big_w, dev)
    pos = logits > 0
    cols_any = pos.any(dim=1)  # [M, w]
    has = cols_any.any(dim=1)
    ar_w = torch.arange(w, device=dev)
    lx0 = torch.where(cols_any, ar_w, w).amin(dim=1)
    lx1 = torch.where(cols_any, ar_w, -1).amax(dim=1)
    x_start, x_stop = _support(lx0, lx1, first_x, last_x)  # full-res column support per mask
    return has, x_start, x_stop


def _concat_pieces(
    pieces: list[list[tuple[Tensor, Tensor, Tensor]]], small: torch.dtype, dev: torch.device
) -> tuple[list[Tensor], Tensor]:
    """Per mask, its (col, start, end) run pieces in band order → the three flat run arrays (mask
    after mask, dtype ``small``) and the [M + 1] int64 offsets of each mask's runs in them (on CPU)."""
    counts = torch.tensor([sum(p[0].numel() for p in ps) for ps in pieces], dtype=torch.int64)
    offsets = torch.zeros(len(pieces) + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(counts, 0)
    flat = [
        torch.cat([p[k] for ps in pieces for p in ps]) if int(offsets[-1]) else torch.zeros(0, dtype=small, device=dev)
        for k in range(3)
    ]
    return flat, offsets


def upsample_to_runs(logits: Tensor, out_hw: tuple[int, int], budget: int = DEFAULT_BUDGET_BYTES) -> MaskRuns:
    """``F.interpolate(logits[:, None], out_hw, bilinear, antialias) > 0`` as :class:`MaskRuns`, with
    float buffers bounded by about ``budget`` bytes (§4.6).

    Args:
        logits: [M, h, w] low-res mask logits (already cropped to the valid region).
        out_hw: (H, W) original image size.
    """
    m, h, w = logits.shape
    big_h, big_w = int(out_hw[0]), int(out_hw[1])
    dev = logits.device
    small = _small_int(max(big_h, big_w))
    logits = logits.float()
    has, x_start, x_stop = _column_support(logits, big_w)

    area = torch.zeros(m, dtype=torch.int64, device=dev)
    big = torch.iinfo(torch.int64).max
    x1b = torch.full((m,), big, dtype=torch.int64, device=dev)
    y1b = torch.full((m,), big, dtype=torch.int64, device=dev)
    x2b = torch.full((m,), -1, dtype=torch.int64, device=dev)
    y2b = torch.full((m,), -1, dtype=torch.int64, device=dev)
    pieces: list[list[tuple[Tensor, Tensor, Tensor]]] = [[] for _ in range(m)]

    half = max(1, budget // 2)
    chunk = max(1, min(m, half // max(1, h * big_w * 4)))  # masks per horizontal pass
    # per (mask, output column) of a band: float32 values, their sign, the row changes and a
    # transposed copy of those (H each), plus the run indices (a column of an object-like mask
    # has a run or two; of a noisy one, tens: 2 × 3 int64 per run)
    per_col = big_h * (4 + 1 + 1 + 1 + 1) + 64 * 48
    live = torch.nonzero(has).flatten().tolist()
    x_start_l, x_stop_l = x_start.tolist(), x_stop.tolist()
    for c0 in range(0, len(live), chunk):
        ids = live[c0 : c0 + chunk]
        rows = _aa_upsample(logits[ids], (h, big_w))  # [k, h, W]: the horizontal pass only
        lo = min(x_start_l[i] for i in ids)
        hi = max(x_stop_l[i] for i in ids)
        ids_t = torch.tensor(ids, device=dev)
        xs_t, xe_t = x_start[ids_t], x_stop[ids_t]
        band_w = max(1, half // max(1, len(ids) * per_col))
        for b0 in range(lo, hi, band_w):
            b1 = min(hi, b0 + band_w)
            active = torch.nonzero((xs_t < b1) & (xe_t > b0)).flatten()
            if active.numel() == 0:
                continue
            gid = ids_t[active]
            band = _aa_upsample(rows[active, :, b0:b1].contiguous(), (big_h, b1 - b0)) > 0  # vertical pass
            mi, col, start, end = _band_runs(band)
            del band
            if mi.numel():  # area and box from the runs (a few per column, not H·b pixels)
                g = gid[mi]
                area.index_add_(0, g, end - start)
                x1b.scatter_reduce_(0, g, col + b0, "amin")
                x2b.scatter_reduce_(0, g, col + b0, "amax")
                y1b.scatter_reduce_(0, g, start, "amin")
                y2b.scatter_reduce_(0, g, end - 1, "amax")
                del g
            counts = torch.bincount(mi, minlength=active.numel()).tolist()
            col, start, end = (col + b0).to(small), start.to(small), end.to(small)
            k = 0
            for j, n in zip(gid.tolist(), counts):
                if n:
                    pieces[j].append((col[k : k + n], start[k : k + n], end[k : k + n]))
                k += n
            del mi, col, start, end
        del rows
    flat, offsets = _concat_pieces(pieces, small, dev)
    empty = area == 0
    box = torch.stack([x1b, y1b, x2b, y2b], dim=1)
    box[empty] = 0
    return MaskRuns((big_h, big_w), flat[0], flat[1], flat[2], offsets.to(dev), area, box)


def same_class_intersections(runs: MaskRuns, labels: Tensor, budget: int = DEFAULT_BUDGET_BYTES) -> Tensor:
    """[M, M] int64 |M_i ∩ M_j| for every pair i ≠ j of the same label, for the masks with a
    label ≥ 0 (pass -1 to leave a mask out); 0 elsewhere (the diagonal too).

    Tile by tile (column bands of the masks' common box, cut in rows only when a column band of
    one pixel would not fit): the runs of the masks whose boxes meet a tile are painted into a
    float32 buffer [a, tile pixels] (≤ 2^24 pixels, so the matmul's sums are exact integers) and
    the off-diagonal of ``A @ Aᵀ`` is added to the counts. The buffer stays under ``budget`` bytes.
    """
    m = runs.num_masks
    dev = runs.col.device
    inter = torch.zeros(m, m, dtype=torch.int64, device=dev)
    big_h, big_w = runs.size
    for c in torch.unique(labels).tolist():
        if c < 0:
            continue
        idx = torch.nonzero(labels == c).flatten()
        n = idx.numel()
        if n < 2:
            continue
        bx = runs.box[idx]
        # the float32 tile buffer gets half the budget; the run indices painted into it the rest
        pixels = max(1, min(_EXACT_TILE_PIXELS, budget // (8 * n)))
        x_lo, x_hi = int(bx[:, 0].min()), int(bx[:, 2].max()) + 1
        y_lo, y_hi = int(bx[:, 1].min()), int(bx[:, 3].max()) + 1
        tile_h = min(y_hi - y_lo, pixels)
        tile_w = max(1, pixels // tile_h)
        edges = list(range(x_lo, x_hi, tile_w)) + [x_hi]
        # run index bounds of each mask at each tile edge: [n, T+1]
        edges_t = torch.tensor(edges, dtype=runs.col.dtype, device=dev)
        bounds = torch.stack(
            [
                runs.offsets[i]
                + torch.searchsorted(runs.col[runs.offsets[i] : runs.offsets[i + 1]].contiguous(), edges_t)
                for i in idx.tolist()
            ]
        )
        acc = torch.zeros(n, n, dtype=torch.int64, device=dev)
        for t in range(len(edges) - 1):
            x0, x1 = edges[t], edges[t + 1]
            for y0 in range(y_lo, y_hi, tile_h):
                y1 = min(y_hi, y0 + tile_h)
                act = torch.nonzero((bx[:, 0] < x1) & (bx[:, 2] >= x0) & (bx[:, 1] < y1) & (bx[:, 3] >= y0)).flatten()
                if act.numel() < 2:
                    continue
                lo, cnt = bounds[act, t], bounds[act, t + 1] - bounds[act, t]
                r = _ranges(lo, cnt)
                ai = torch.repeat_interleave(torch.arange(act.numel(), device=dev), cnt)
                ci = runs.col[r].long() - x0
                si = runs.start[r].long().clamp(min=y0, max=y1) - y0
                ei = runs.end[r].long().clamp(min=y0, max=y1) - y0
                keep = ei > si
                ai, ci, si, ei = ai[keep], ci[keep], si[keep], ei[keep]
                th = y1 - y0
                buf = torch.zeros(act.numel(), x1 - x0, th, dtype=torch.float32, device=dev)
                buf.index_put_((ai, ci, si), torch.ones_like(si, dtype=torch.float32), accumulate=True)
                inside = ei < th  # a run ending at the tile's last row needs no -1
                buf.index_put_(
                    (ai[inside], ci[inside], ei[inside]), -torch.ones(int(inside.sum()), device=dev), accumulate=True
                )
                tile = buf.cumsum_(dim=2).view(act.numel(), -1)
                gram = tile @ tile.T  # exact: every sum is an integer ≤ tile pixels ≤ 2^24
                del buf, tile
                acc[act[:, None], act[None, :]] += gram.round().to(torch.int64)
                del gram
        acc.fill_diagonal_(0)
        inter[idx[:, None], idx[None, :]] = acc
    return inter


def soft_merge_scores_from_counts(
    inter: Tensor,
    areas: Tensor,
    mask_features: Tensor,
    labels: Tensor,
    semantic_scores: Tensor,
    exponent: float = 0.5,
) -> Tensor:
    """``soft_merge_scores`` (§4.7) from integer intersection counts instead of masks.

    The float32 operations are the reference's, on the same values: ``inter`` and ``areas``
    become the float32 counts the reference's matmul produces whenever those are exact (every
    count < 2^24, i.e. images under 16.7 MP); so the scores are bit-identical there. Above, the
    reference's float32 sums round and these counts do not.

    Args:
        inter: [M, M] int64 same-class intersection counts (entries j < i of row i are used).
        areas: [M] int64 mask areas (all > 0).
        mask_features, labels, semantic_scores: as for ``soft_merge_scores`` (NMS order).
    """
    final = semantic_scores.clone()
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        if idx.numel() < 2:
            continue
        counts = inter[idx][:, idx].to(torch.float32)
        area = areas[idx].to(torch.float32)
        ios = torch.tril(counts, diagonal=-1) / area[:, None]
        sim = (mask_features[idx] @ mask_features[idx].T).clamp(min=0)
        ios_max = (ios * sim).amax(dim=1)
        final[idx] = semantic_scores[idx] * (1.0 - ios_max).clamp(min=0) ** exponent
    return final


# Run storage per (mask, image column): 16 runs of 3 int16 (6 bytes), twice while the runs are
# gathered. Object-like masks have 1-2 runs per column; the random-weight test models' ~35.
_RUN_BYTES_PER_MASK_COLUMN = 16 * 6 * 2
# A tile's instances after the tile merge's conversion: numpy int64 runs, ~2 per column.
_TILE_RUN_BYTES_PER_INSTANCE_COLUMN = 2 * 3 * 8


def image_memory_estimate(orig_hw: tuple[int, int], config) -> int:
    """Rough peak bytes one image of size ``orig_hw`` needs beyond the models (the actor's guard).

    The decoded pixels and their copy for the resize (3 + 3 bytes per pixel), plus §4.6-4.8 for
    the worst case of survivors M = min(prompts, nms_keep_factor · max_detections):

    * reference path: M float32 + bool full-size masks and a per-class float copy, 9·M·H·W;
    * fast path: the ``merge_memory_mb`` working budget, the horizontal pass of one mask (it runs
      whole even when over budget: 256·W floats) and the run lists (M·W·192 bytes, generous);
    * tiled (``tile_size``): the fast path's for one tile, times the tiles of a batch, plus the
      runs of every tile's instances.
    """
    h, w = int(orig_hw[0]), int(orig_hw[1])
    budget = int(config.merge_memory_mb) * 2**20
    m = min(int(config.points_per_side) ** 2, int(config.nms_keep_factor) * int(config.max_detections))
    pixels = 6 * h * w
    if needs_tiling((h, w), config):
        t = int(config.tile_size)
        stride = max(1, t - config.tile_overlap_px())
        tiles = (-(-max(1, h - t) // stride) + 1) * (-(-max(1, w - t) // stride) + 1)
        per_tile = 6 * t * t + budget + 256 * t * 4 + m * t * _RUN_BYTES_PER_MASK_COLUMN
        return (
            pixels
            + TILE_BATCH * per_tile
            + tiles * int(config.max_detections) * t * _TILE_RUN_BYTES_PER_INSTANCE_COLUMN
        )
    if config.implementation == "reference":
        return pixels + 9 * m * h * w
    return pixels + budget + 256 * w * 4 + m * w * _RUN_BYTES_PER_MASK_COLUMN


def host_memory_limit(config) -> int:
    """``memory_limit_mb`` in bytes; 0 = half of the physical memory (or of the cgroup's limit, if lower)."""
    if config.memory_limit_mb:
        return int(config.memory_limit_mb) * 2**20
    import os

    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
            if text.isdigit():
                total = min(total, int(text))
        except OSError:
            pass
    return total // 2
