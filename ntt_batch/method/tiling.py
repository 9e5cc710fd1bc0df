"""Tiled inference for very large images (aerial and satellite scenes, scanned pages).

The method resizes the whole target to 1024² (§4.1): on a 10k × 10k scene an object of 50 px
becomes 5 px and is lost. With ``SegmenterConfig.tile_size`` set, an image with a side over
``tile_size`` is cut into overlapping tiles instead, and each tile is segmented as an image by
the same :class:`~ntt_batch.method.segmenter.MethodSegmenter` (its own resize, prompt grid, matching,
NMS, soft merging and top ``max_detections``).

* **Grid.** Tiles are ``tile_size`` × ``tile_size`` (smaller only where the image is), at a
  stride of ``tile_size - overlap``; the last tile of a row/column is shifted back to end at the
  image border, so no tile is a thin sliver. ``tile_overlap`` < 1 is a fraction of the tile.
* **Merge across tile borders.** Instances are shifted into image coordinates (as column-major
  runs; no full-size mask is built). Then, greedily by score (descending) and per class, an
  instance *absorbs* every lower-scored instance from *another* tile whose mask overlaps it with
  intersection / min(area) > ``tile_merge_threshold``: masks and boxes are united, the score is
  the absorber's. A duplicate found whole in two overlapping tiles, and an object cut by a tile
  border (each part a near-subset of the other's region in the overlap), both end as one
  instance. This is mask NMS with intersection-over-smaller, merging instead of dropping (SAHI's
  "greedy NMM"). Instances of the same tile never merge: the segmenter already ruled on those.
* The top ``max_detections`` by score are returned, with RLE masks (dense arrays built too only
  if they fit in ``merge_memory_mb``; else ``Instance.mask`` decodes on first access).

Memory: one batch of tiles at a time plus the run lists of the tiles' instances (bounded by
tiles × max_detections × object perimeter), independent of the full image's pixel count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

TILE_BATCH = 4  # tiles per segment_targets call (the encoders run on the batch)


def needs_tiling(orig_hw: tuple[int, int], config: Any) -> bool:
    """Whether an image of this size is tiled under ``config`` (a ``SegmenterConfig``: a side over ``tile_size``).

    ``config`` is not annotated with the class: ``method.config`` reads the merger registry, whose
    built-ins import this module's users, so an import of ``config`` here would close a cycle."""
    return bool(config.tile_size) and (orig_hw[0] > config.tile_size or orig_hw[1] > config.tile_size)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles covering [0, length): stride ``tile - overlap``, last one flush with the end."""
    if length <= tile:
        return [0]
    stride = max(1, tile - overlap)
    starts = list(range(0, length - tile, stride))
    if not starts or starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def tile_grid(orig_hw: tuple[int, int], tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Tiles as (y0, x0, y1, x1), row by row."""
    h, w = orig_hw
    return [
        (y, x, min(h, y + tile), min(w, x + tile))
        for y in tile_starts(h, tile, overlap)
        for x in tile_starts(w, tile, overlap)
    ]


# ----------------------------------------------------------------------------- runs (numpy)


def runs_from_dense(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[h, w] bool → column-major runs (col, start, end), int64."""
    h, w = mask.shape
    x = np.zeros((w, h + 2), dtype=np.int8)
    x[:, 1 : h + 1] = mask.T
    d = np.diff(x, axis=1)
    col, start = np.nonzero(d > 0)
    _, end = np.nonzero(d < 0)
    return col.astype(np.int64), start.astype(np.int64), end.astype(np.int64)


def paint(runs: tuple[np.ndarray, np.ndarray, np.ndarray], box: tuple[int, int, int, int]) -> np.ndarray:
    """The part of a run-encoded mask inside ``box`` = (y0, x0, y1, x1), as a bool [y1-y0, x1-x0] array."""
    col, start, end = runs
    y0, x0, y1, x1 = box
    sel = (col >= x0) & (col < x1) & (end > y0) & (start < y1)
    c = col[sel] - x0
    s = np.clip(start[sel], y0, y1) - y0
    e = np.clip(end[sel], y0, y1) - y0
    diff = np.zeros((x1 - x0, y1 - y0 + 1), dtype=np.int8)
    np.add.at(diff, (c, s), 1)
    np.add.at(diff, (c, e), -1)
    return np.cumsum(diff, axis=1, dtype=np.int8)[:, :-1].T.astype(bool)


@dataclass
class Piece:
    """One tile's instance in image coordinates: runs relative to ``origin`` (its box's top-left
    corner), int16 where the box allows (6 bytes a run), plus its box, area, score and class."""

    col: np.ndarray
    start: np.ndarray
    end: np.ndarray
    origin: tuple[int, int]  # (y, x) added to start/end and col
    box: tuple[int, int, int, int]  # inclusive xyxy, image coordinates
    area: int
    score: float
    category_id: int
    category_name: str
    tile: int

    @classmethod
    def from_runs(cls, col, start, end, score, category_id, category_name, tile, origin=(0, 0)) -> Piece:
        """From column-major runs in the frame whose top-left corner is ``origin`` (y, x) in the image."""
        x0, y0 = int(col.min()), int(start.min())
        x1, y1 = int(col.max()), int(end.max()) - 1
        small = np.int16 if max(x1 - x0, y1 - y0 + 1) < 2**15 else np.int32
        oy, ox = int(origin[0]) + y0, int(origin[1]) + x0
        return cls(
            (col - x0).astype(small),
            (start - y0).astype(small),
            (end - y0).astype(small),
            (oy, ox),
            (ox, oy, ox + x1 - x0, oy + y1 - y0),
            int((end - start).sum()),
            float(score),
            int(category_id),
            category_name,
            tile,
        )

    @property
    def runs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(col, start, end) in image coordinates, int64."""
        oy, ox = self.origin
        return (self.col.astype(np.int64) + ox, self.start.astype(np.int64) + oy, self.end.astype(np.int64) + oy)

    def runs_in(self, region: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The runs inside ``region`` (y0, x0, y1, x1), clipped, relative to the region's corner (int64)."""
        y0, x0, y1, x1 = region
        oy, ox = self.origin
        a, b = np.searchsorted(self.col, [x0 - ox, x1 - ox])  # runs are sorted by column
        col = self.col[a:b].astype(np.int64) + (ox - x0)
        start = np.clip(self.start[a:b].astype(np.int64) + oy, y0, y1) - y0
        end = np.clip(self.end[a:b].astype(np.int64) + oy, y0, y1) - y0
        keep = end > start
        return col[keep], start[keep], end[keep]


def _boxes_meet(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def _paint_stack(pieces: list[Piece], region: tuple[int, int, int, int]):
    """The pieces' masks inside ``region`` (y0, x0, y1, x1) as a float32 tensor [n, width · height] of 0/1."""
    import torch

    y0, x0, y1, x1 = region
    rh, rw = y1 - y0, x1 - x0
    parts = [p.runs_in(region) for p in pieces]
    n = len(pieces)
    buf = torch.zeros(n, rw, rh, dtype=torch.float32)
    idx = np.repeat(np.arange(n), [c.size for c, _, _ in parts])
    if idx.size:
        col, start, end = (torch.from_numpy(np.concatenate([q[k] for q in parts])) for k in range(3))
        ai = torch.from_numpy(idx)
        buf.index_put_((ai, col, start), torch.ones(ai.numel()), accumulate=True)
        inside = end < rh  # a run reaching the region's last row needs no -1
        buf.index_put_((ai[inside], col[inside], end[inside]), -torch.ones(int(inside.sum())), accumulate=True)
    return buf.cumsum_(dim=2).view(n, -1)


def cross_tile_intersections(pieces: list[Piece], budget: int = 256 * 2**20) -> dict[tuple[int, int], int]:
    """|P_i ∩ P_j| > 0 for pieces of different tiles and the same class: {(i, j): count}, i < j.

    Tile pair by tile pair: pieces of two tiles can only meet where the tiles' extents (the union
    of their pieces' boxes) do; both tiles' pieces are painted there (in column chunks of at most
    ``budget`` bytes and 2^24 pixels, so float32 sums stay exact) and one matmul gives every count.
    """
    import torch

    by_tile: dict[int, list[int]] = {}
    for k, p in enumerate(pieces):
        by_tile.setdefault(p.tile, []).append(k)
    extent = {
        t: (
            min(pieces[k].box[0] for k in ks),
            min(pieces[k].box[1] for k in ks),
            max(pieces[k].box[2] for k in ks),
            max(pieces[k].box[3] for k in ks),
        )
        for t, ks in by_tile.items()
    }
    tiles = sorted(by_tile)
    out: dict[tuple[int, int], int] = {}
    for a_i, ta in enumerate(tiles):
        for tb in tiles[a_i + 1 :]:
            ea, eb = extent[ta], extent[tb]
            if not _boxes_meet(ea, eb):
                continue
            x0, y0 = max(ea[0], eb[0]), max(ea[1], eb[1])
            x1, y1 = min(ea[2], eb[2]) + 1, min(ea[3], eb[3]) + 1
            ka = [k for k in by_tile[ta] if _boxes_meet(pieces[k].box, (x0, y0, x1 - 1, y1 - 1))]
            kb = [k for k in by_tile[tb] if _boxes_meet(pieces[k].box, (x0, y0, x1 - 1, y1 - 1))]
            cats_b = {pieces[k].category_id for k in kb}
            ka = [k for k in ka if pieces[k].category_id in cats_b]
            cats_a = {pieces[k].category_id for k in ka}
            kb = [k for k in kb if pieces[k].category_id in cats_a]
            if not ka or not kb:
                continue
            rh = y1 - y0
            cw = max(1, min(2**24 // rh, budget // max(1, 4 * (len(ka) + len(kb)) * rh)))
            counts = torch.zeros(len(ka), len(kb), dtype=torch.int64)
            for c0 in range(x0, x1, cw):
                sub = (y0, c0, y1, min(x1, c0 + cw))
                counts += (
                    (_paint_stack([pieces[k] for k in ka], sub) @ _paint_stack([pieces[k] for k in kb], sub).T)
                    .round()
                    .to(torch.int64)
                )
            for r, c in torch.nonzero(counts).tolist():
                i, j = ka[r], kb[c]
                if pieces[i].category_id == pieces[j].category_id:
                    out[(min(i, j), max(i, j))] = int(counts[r, c])
    return out


def _union(a: Piece, others: list[Piece]) -> Piece:
    x0 = min(p.box[0] for p in [a, *others])
    y0 = min(p.box[1] for p in [a, *others])
    x1 = max(p.box[2] for p in [a, *others]) + 1
    y1 = max(p.box[3] for p in [a, *others]) + 1
    win = (y0, x0, y1, x1)
    m = paint(a.runs, win)
    for p in others:
        m |= paint(p.runs, win)
    col, start, end = runs_from_dense(m)
    return Piece.from_runs(col, start, end, a.score, a.category_id, a.category_name, a.tile, origin=(y0, x0))


def merge_pieces(pieces: list[Piece], threshold: float, budget: int = 256 * 2**20) -> list[Piece]:
    """Greedy cross-tile merge (module docstring), highest score first; returns the survivors by score."""
    order = sorted(range(len(pieces)), key=lambda k: -pieces[k].score)  # stable: ties keep tile order
    pieces = [pieces[k] for k in order]
    n = len(pieces)
    if n == 0:
        return []
    overlaps: dict[int, list[tuple[int, int]]] = {}
    for (i, j), count in cross_tile_intersections(pieces, budget).items():
        overlaps.setdefault(i, []).append((j, count))  # i < j: j scores no higher than i
    alive = np.ones(n, dtype=bool)
    out = []
    for i in range(n):
        if not alive[i]:
            continue
        a = pieces[i]
        absorbed = []
        for j, inter in sorted(overlaps.get(i, [])):
            b = pieces[j]
            if alive[j] and inter / min(a.area, b.area) > threshold:
                absorbed.append(b)
                alive[j] = False
        out.append(_union(a, absorbed) if absorbed else a)
    return out


__all__ = [
    "TILE_BATCH",
    "Piece",
    "cross_tile_intersections",
    "merge_pieces",
    "needs_tiling",
    "paint",
    "runs_from_dense",
    "tile_grid",
    "tile_starts",
]
