"""Exports of the batch job's shards: one writer class per format, one streaming loop for all.

========================  ==========================================================  ==========
``format``                product                                                     ``out``
========================  ==========================================================  ==========
``results``               COCO results array (``COCO.loadRes``, ``ntt-batch eval``)  JSON file
``dataset``               COCO annotation file (auto-labels; FiftyOne's COCO          JSON file
                          importer reads it as is)
``yolo``                  Ultralytics YOLO segmentation dataset: ``data.yaml``,       folder
                          ``images.txt``, ``images/``, ``labels/<name>.txt``
``label-studio``          Label Studio tasks with predictions (one brush region per   JSON file
                          instance, or polygons), plus the matching labeling config
========================  ==========================================================  ==========

Label exports (``dataset``, ``yolo``, ``label-studio``) give each instance the box of its mask's
extent (pycocotools ``toBbox``); ``results`` keeps the job's box, the reference code's, for
evaluation (see :mod:`.coco`).

All formats share: bounded memory (streamed record batches), atomic outputs, refusal of
duplicate image ids, error rows skipped and counted, categories from ``run.json`` and per-class
score thresholds (:class:`~ntt_batch.exports.score_filter.ScoreThresholds`). See :mod:`.base`.

:data:`WRITERS` is the one list of formats (the command line's ``--format`` choices read
``WRITERS.names()``). Adding a format: one module with a :class:`~.base.Writer` subclass and one
``WRITERS.register`` line below; from a third-party package, an entry point in the group
``ntt_batch.writers`` naming the class (``docs/extending.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..plugins import Registry
from .accounting import ExportStats
from .base import ExportContext, ExportRow, Writer, run_export
from .coco import CocoDatasetWriter, CocoResultsWriter
from .label_studio import LabelStudioWriter
from .yolo import YoloSegmentationWriter


def _check_writer(name: str, writer: Any) -> None:
    if not (isinstance(writer, type) and issubclass(writer, Writer)):
        raise TypeError(f"export format {name!r}: expected a subclass of ntt_batch.exports.base.Writer, got {writer!r}")
    if writer.format != name:
        raise ValueError(f"export format registered as {name!r} but its writer's format is {writer.format!r}")


#: Export formats by name: the built-ins, then the ``ntt_batch.writers`` plug-ins.
WRITERS: Registry[type[Writer]] = Registry("ntt_batch.writers", "export format", check=_check_writer)
WRITERS.register("results", CocoResultsWriter)
WRITERS.register("dataset", CocoDatasetWriter)
WRITERS.register("yolo", YoloSegmentationWriter)
WRITERS.register("label-studio", LabelStudioWriter)

__all__ = [
    "WRITERS",
    "CocoDatasetWriter",
    "CocoResultsWriter",
    "ExportContext",
    "ExportRow",
    "LabelStudioWriter",
    "Writer",
    "YoloSegmentationWriter",
    "export",
    "merge",
    "merge_dataset",
    "merge_results",
]


def export(shards: str, out: str, *, format: str, **kwargs: Any) -> ExportStats:
    """Stream the shards into ``out`` in ``format`` (a :data:`WRITERS` name).

    Keyword arguments: those of :func:`.base.run_export` (``options``, ``score_threshold``,
    ``categories``, ``image_root``, ``batch_rows``, ``progress``) plus the writer's own options
    (``yolo``: ``images``, ``simplify``; ``label-studio``: ``image_url_prefix``, ``from_name``,
    ``to_name``, ``model_version``, ``mask`` (``"brush"`` or ``"polygons"``), ``simplify`` and
    ``min_part_area`` (polygons only)). Options another format would use are ignored
    when None, and an error otherwise.
    """
    writer = WRITERS.get(format)  # an unknown name: ValueError listing the known ones
    common = {"options", "score_threshold", "categories", "image_root", "batch_rows", "progress"}
    own = set(writer.option_names)
    extra = {k: v for k, v in kwargs.items() if k not in common}
    unused = sorted(k for k, v in extra.items() if k not in own and v is not None)
    if unused:
        raise ValueError(f"format {format!r} does not take option(s) {', '.join(unused)}")
    if format == "results":
        kwargs.pop("image_root", None)
        kwargs.pop("categories", None)
    passed = {k: v for k, v in kwargs.items() if k in common or (k in own and v is not None)}
    return run_export(shards, writer, out, **passed)


def merge(shards: str, out: str, *, format: str, **kwargs) -> ExportStats:
    """Export the shards in ``format`` (a :data:`WRITERS` name): :func:`export`."""
    return export(shards, out, format=format, **kwargs)


def merge_results(
    shards: str,
    out: str,
    *,
    options: dict | None = None,
    score_threshold: Any = None,
    batch_rows: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> ExportStats:
    """Shards → one COCO results JSON array (``COCO.loadRes`` format), streamed to ``out``.

    Keeps instances with ``score >= threshold`` of their class (all when None); ``score_threshold``
    is anything :meth:`ScoreThresholds.load <ntt_batch.exports.score_filter.ScoreThresholds.load>` takes (a
    number, a per-class map or a YAML/JSON path). ``error`` rows contribute nothing and are
    counted. Raises ValueError on duplicate image ids (nothing is written then).
    """
    return merge(
        shards,
        out,
        format="results",
        options=options,
        score_threshold=score_threshold,
        batch_rows=batch_rows,
        progress=progress,
    )


def merge_dataset(
    shards: str,
    out: str,
    *,
    options: dict | None = None,
    score_threshold: Any = None,
    image_root: str | None = None,
    categories: list[dict] | None = None,
    batch_rows: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> ExportStats:
    """Shards → a complete COCO annotation file (auto-labels), streamed to ``out`` in one pass.

    ``categories``: the category list to write; default: the memory bank's, from ``run.json``;
    else the (id, name) pairs found in the instances (classes never predicted are then absent:
    a notice says so). Instances with ``score >= threshold`` (per class, see :func:`merge_results`)
    become annotations with ids 1..N in shard order. Images with status ``ok``/``empty`` are all
    listed; ``error`` rows are skipped and counted.
    """
    return merge(
        shards,
        out,
        format="dataset",
        options=options,
        score_threshold=score_threshold,
        image_root=image_root,
        categories=categories,
        batch_rows=batch_rows,
        progress=progress,
    )
