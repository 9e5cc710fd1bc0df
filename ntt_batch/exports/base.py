"""One writer interface for every export format, and the one streaming loop that feeds it.

In the spirit of img2dataset's ``writer.py``: a format is a small class with one constructor,
``write(row)`` and ``close()`` (plus ``abort()``); everything else lives once, in
:func:`run_export`:

* shards are read through :func:`ntt_batch.output.reader.iter_image_batches` only (one record batch
  at a time, bounded in rows and instances);
* rows are counted (ok / empty / error; error rows are skipped, with the first few kept as
  examples), image ids are collected compactly and duplicates refused before anything appears
  under the output name;
* per-class score thresholds (:class:`~ntt_batch.exports.score_filter.ScoreThresholds`) are applied, so a
  writer only ever sees the instances to export (``row.kept``);
* categories come from the run's ``run.json`` (the memory bank), else from the caller, else from
  the instances; :meth:`ExportContext.final_categories` gives the list to write at the end;
* on any error the writer's ``abort()`` runs, so no half-written output is left behind.

A writer::

    class MyWriter(Writer):
        format = "my-format"
        def __init__(self, out, ctx, **options): ...   # open temporary output
        def write(self, row) -> int: ...               # one image row; returns instances written
        def close(self) -> None: ...                   # finish and move into place atomically
        def abort(self) -> None: ...                   # discard temporary output
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..output.folder import OutputFolder
from ..output.reader import ImageBatch, iter_image_batches, run_categories
from ..storage.fs import absolute_uri
from ..storage.masks import decode_rle, mask_utils
from .accounting import ExportStats, IdChecker, count_row, finish_stats
from .score_filter import ScoreThresholds

log = logging.getLogger(__name__)

_MISSING = object()


class ExportRow:
    """One image row handed to a writer: the image fields and the indices of the instances to export.

    ``kept`` indexes the per-instance columns of ``batch`` (an :class:`ImageBatch`); writers that
    format text straight from those columns (the COCO writers) use them directly, others call
    :meth:`instances` / :meth:`mask`.
    """

    __slots__ = ("batch", "i", "kept")

    def __init__(self, batch: ImageBatch, i: int, kept: list[int]) -> None:
        self.batch, self.i, self.kept = batch, i, kept

    @property
    def image_id(self) -> int:
        return int(self.batch.image_id[self.i])

    @property
    def image_uri(self) -> str:
        return self.batch.image_uri[self.i]

    @property
    def width(self) -> int:
        return int(self.batch.width[self.i])

    @property
    def height(self) -> int:
        return int(self.batch.height[self.i])

    @property
    def status(self) -> str:
        return self.batch.status[self.i]

    def instances(self) -> list[dict[str, Any]]:
        """The kept instances as shard-schema dicts (``segmentation`` = {size, counts})."""
        b = self.batch
        return [
            {
                "category_id": int(b.category_id[j]),
                "category_name": b.category_name[j],
                "score": b.score[j],
                "score_text": b.score_text[j],
                "bbox": b.bbox[j],
                "area": b.area[j],
                "segmentation": {"size": b.size[j], "counts": b.counts[j]},
            }
            for j in self.kept
        ]

    def mask_boxes(self) -> list[list[float]]:
        """The kept instances' boxes ``[x, y, w, h]`` taken from their masks' extent (pycocotools ``toBbox``).

        A mask covering columns x1..x2 gives ``w = x2 - x1 + 1``: what a label export writes, so a
        consumer that crops the mask to the box (FiftyOne) keeps every pixel. The shards' ``bbox``
        is the reference code's box, one pixel smaller (method.md §4.8); ``results`` keeps that one
        for evaluation. An empty mask gives ``[0, 0, 0, 0]``.
        """
        b = self.batch
        if not self.kept:
            return []
        rles = [{"size": [int(v) for v in b.size[j]], "counts": b.counts[j].encode("ascii")} for j in self.kept]
        return np.asarray(mask_utils.toBbox(rles), dtype=np.float64).reshape(-1, 4).tolist()

    def mask(self, j: int) -> np.ndarray:
        """Instance ``j``'s (an index from ``kept``) mask, bool [h, w]."""
        b = self.batch
        return decode_rle({"size": b.size[j], "counts": b.counts[j]})


@dataclass
class ExportContext:
    """What every writer may need besides the rows. Built by :func:`run_export`."""

    shards: str
    out: str
    options: dict | None
    stats: ExportStats
    thresholds: ScoreThresholds
    manifest: dict
    known_categories: list[dict] | None  # from run.json or the caller; None: from the instances
    image_root: str | None = None
    seen: dict[int, str] = field(default_factory=dict)  # category id -> name of every exported instance
    _names: dict[int, str] | None = field(default=None, repr=False)

    def category_name(self, category_id: int, name: str | None) -> str:
        """The name to export for a class: the category list's, else the shard's, else ``class_<id>``."""
        if self._names is None:
            self._names = {int(c["id"]): str(c["name"]) for c in self.known_categories or ()}
        return self._names.get(int(category_id)) or name or f"class_{int(category_id)}"

    def final_categories(self) -> list[dict]:
        """The category list to write: the known list (plus ids only the instances use, with a notice)
        or, without one, the (id, name) pairs of the exported instances (with a notice)."""
        stats = self.stats
        known = {int(c["id"]): c for c in self.known_categories or []}
        if not known:
            cats = [{"id": c, "name": self.seen[c]} for c in sorted(self.seen)]
            if stats.instances_written:
                stats.notices.append(
                    "categories taken from the instances (no run.json with the memory bank beside the "
                    "shards): classes that were never predicted are absent"
                )
        else:
            cats = [dict(c) for c in sorted(known.values(), key=lambda c: int(c["id"]))]
            extra = sorted(set(self.seen) - set(known))
            if extra:
                stats.notices.append(
                    f"instances use category id(s) {extra} absent from the category list; added them "
                    "with the names found in the shards"
                )
                cats = sorted(cats + [{"id": c, "name": self.seen[c]} for c in extra], key=lambda c: int(c["id"]))
        cats = [
            {"id": int(c["id"]), "name": str(c["name"]), "supercategory": str(c.get("supercategory", ""))} for c in cats
        ]
        stats.categories = [{"id": c["id"], "name": c["name"]} for c in cats]
        return cats


class Writer:
    """Base class of the export formats: see the module docstring."""

    format: ClassVar[str] = ""
    #: True when the output is one file (any fsspec URI); False for a local folder
    single_file: ClassVar[bool] = True
    #: the keyword options the constructor takes besides ``out`` and ``ctx``
    option_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, out: str, ctx: ExportContext, **options: Any) -> None:
        if options:
            raise TypeError(f"{self.format}: unknown option(s) {sorted(options)}")
        self.out, self.ctx = out, ctx

    def write(self, row: ExportRow) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def abort(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError


def threshold_summary(th: ScoreThresholds) -> float | dict | None:
    """What :class:`ExportStats` and the outputs record: one number, or the per-class map."""
    return th.default if th.is_global else th.to_dict()


def run_export(
    shards: str,
    writer_cls: type[Writer],
    out: str,
    *,
    options: dict | None = None,
    score_threshold: Any = None,
    categories: list[dict] | None = None,
    image_root: str | None = None,
    batch_rows: int = 64,
    progress: Callable[[int, int], None] | None = None,
    **writer_options: Any,
) -> ExportStats:
    """Stream the shards through ``writer_cls`` into ``out``; returns the statistics.

    ``score_threshold``: anything :meth:`ScoreThresholds.load` takes (None, a number, a
    per-class map or a YAML/JSON path). ``categories``: the category list to use instead of the
    memory bank's from ``run.json``. ``image_root``: the writers' file names become relative to
    it. Raises ValueError on duplicate image ids (nothing is written then).
    """
    th = ScoreThresholds.load(score_threshold)
    stats = ExportStats(format=writer_cls.format, out=out, score_threshold=threshold_summary(th))
    manifest = OutputFolder(shards, options).read_run(strict=False)
    if categories is None:
        categories = run_categories(manifest)
        stats.categories_source = "run.json (memory bank)" if categories else "instances"
    else:
        stats.categories_source = "given"
    if categories and not th.is_global:
        _unknown_notice(th, [(int(c["id"]), str(c["name"])) for c in categories], stats)
    ctx = ExportContext(
        shards=shards,
        out=out,
        options=options,
        stats=stats,
        thresholds=th,
        manifest=manifest,
        known_categories=categories or None,
        image_root=absolute_uri(image_root) if image_root else None,
    )  # the job records absolute paths
    writer = writer_cls(out, ctx, **writer_options)
    ids = IdChecker()
    shard_names: set[str] = set()
    cache: dict[tuple[int, str | None], float | None] = {}  # (category id, name) -> threshold
    seen = ctx.seen
    try:
        for b in iter_image_batches(shards, options, batch_rows=batch_rows, progress=progress):
            cat_ids, cat_names, scores = b.category_id, b.category_name, b.score
            for i in range(len(b)):
                ids.add(b.image_id[i])
                if not count_row(stats, b, i):
                    continue
                lo, hi = int(b.offsets[i]), int(b.offsets[i + 1])
                stats.instances_read += hi - lo
                kept = []
                for j in range(lo, hi):
                    key = (cat_ids[j], cat_names[j])
                    t = cache.get(key, _MISSING)
                    if t is _MISSING:
                        t = cache[key] = th.threshold(*key)
                    if t is not None and scores[j] < t:
                        stats.below_threshold += 1
                        continue
                    kept.append(j)
                    if key[0] not in seen:
                        seen[key[0]] = key[1] or f"class_{key[0]}"
                stats.images_written += 1
                stats.instances_written += writer.write(ExportRow(b, i, kept))
            shard_names.add(b.shard)
        ids.check(shards)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    if not categories and not th.is_global:
        _unknown_notice(th, list(cache), stats)
    stats.shards = len(shard_names)
    finish_stats(stats)
    return stats


def _unknown_notice(th: ScoreThresholds, cats: list[tuple[int, str | None]], stats: ExportStats) -> None:
    unknown = th.warn_unknown(cats)
    if unknown:
        stats.notices.append(
            f"score thresholds for {', '.join(map(repr, unknown))} match no class of this run and were "
            "ignored (check the spelling against the class names)"
        )


DATASET_FORMAT = "ntt-batch/auto-labels"  # info.format of the dataset export


def relative_file_name(uri: str, image_root: str | None) -> str:
    """``uri`` relative to ``image_root`` (a folder or URI prefix); the URI itself without a root."""
    if not image_root:
        return uri
    root = image_root.rstrip("/") + "/"
    if not uri.startswith(root):
        raise ValueError(
            f"image {uri!r} is not under --image-root {image_root!r}: use a common prefix of all "
            "image URIs, or leave --image-root out to write full URIs as file_name"
        )
    return uri[len(root) :]
