"""Exports of the batch job's shards: one writer class per format, one streaming loop for all.

========================  ==========================================================  ==========
``format``                product                                                     ``out``
========================  ==========================================================  ==========
``results``               COCO results array (``COCO.loadRes``, ``ntt-batch eval``)  JSON file
``dataset``               COCO annotation file (auto-labels; FiftyOne's COCO          JSON file
                          importer reads it as is)
``yolo``                  Ultralytics YOLO segmentation dataset: ``data.yaml``,       folder
                          ``images.txt``, ``images/``, ``labels/<name>.txt``
``label-studio``          Label Studio tasks with predictions (polygons), plus the    JSON file
                          matching labeling config beside it
========================  ==========================================================  ==========

All formats share: bounded memory (streamed record batches), atomic outputs, refusal of
duplicate image ids, error rows skipped and counted, categories from ``run.json`` and per-class
score thresholds (:class:`~ntt_batch.io.thresholds.ScoreThresholds`). See :mod:`.base`.
"""

from __future__ import annotations

from typing import Any

from ..merge import MergeStats
from .base import ExportContext, ExportRow, Writer, run_export
from .coco import CocoDatasetWriter, CocoResultsWriter
from .label_studio import LabelStudioWriter
from .yolo import YoloSegmentationWriter

WRITERS: dict[str, type[Writer]] = {w.format: w for w in (CocoResultsWriter, CocoDatasetWriter,
                                                          YoloSegmentationWriter, LabelStudioWriter)}

__all__ = ["WRITERS", "CocoDatasetWriter", "CocoResultsWriter", "ExportContext", "ExportRow", "LabelStudioWriter",
           "Writer", "YoloSegmentationWriter", "export"]


def export(shards: str, out: str, *, format: str, **kwargs: Any) -> MergeStats:
    """Stream the shards into ``out`` in ``format`` (a key of ``WRITERS``).

    Keyword arguments: those of :func:`.base.run_export` (``options``, ``score_threshold``,
    ``categories``, ``image_root``, ``batch_rows``, ``progress``) plus the writer's own options
    (``yolo``: ``images``, ``simplify``; ``label-studio``: ``image_url_prefix``, ``from_name``,
    ``to_name``, ``model_version``, ``simplify``). Options another format would use are ignored
    when None, and an error otherwise.
    """
    if format not in WRITERS:
        raise ValueError(f"unknown export format {format!r}: use one of {', '.join(WRITERS)}")
    writer = WRITERS[format]
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
