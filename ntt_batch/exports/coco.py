"""COCO results and COCO dataset writers (``export --format results|dataset``).

Entries are formatted as text straight from the shard columns and written as they come; the
dataset writer keeps its ``images`` and ``annotations`` arrays in two temporary files (beside a
local output) and concatenates them at the end. Scores are the shortest decimal that round-trips
the stored float32. See :mod:`ntt_batch.output.reader` for the two products.

The dataset file is also what FiftyOne's COCO importer reads (``fo.types.COCODetectionDataset``:
``file_name`` absolute, or relative to ``data_path`` = ``--image-root``; RLE masks; ``score`` →
``confidence``).

Boxes: the **dataset** file's ``bbox`` is the mask's extent (pycocotools ``toBbox``: a mask over
columns x1..x2 is ``x2 - x1 + 1`` wide), so a consumer that crops the mask to the box (FiftyOne
does) keeps every pixel. The **results** file keeps the box the job stored, the reference code's
``[x1, y1, x2 - x1, y2 - y1]`` from inclusive corners (one pixel smaller; method.md §4.8), so that
``bbox`` AP is computed exactly as the authors' evaluation does.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from json.encoder import encode_basestring_ascii as _json_str

from ..output.folder import utc_now_iso
from ..storage.atomic import AtomicFile
from ..storage.fs import filesystem, is_local
from .base import DATASET_FORMAT, ExportContext, ExportRow, Writer, relative_file_name


def _bbox_json(b: list[float]) -> str:
    """``[x, y, w, h]`` as JSON text, each number the shortest decimal that round-trips (``repr``)."""
    return f"[{b[0]!r}, {b[1]!r}, {b[2]!r}, {b[3]!r}]"


def _spill_dir(out: str, options: dict | None) -> str | None:
    """Where the dataset writer keeps its two temporary arrays: beside a local output, else the temp dir."""
    fs, path = filesystem(out, options)
    if is_local(fs):
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise FileNotFoundError(f"output folder {parent!r} does not exist: create it first")
        return parent
    return None


class CocoResultsWriter(Writer):
    """One JSON array of ``{"image_id", "category_id", "bbox", "score", "segmentation"}`` (``COCO.loadRes``)."""

    format = "results"

    def __init__(self, out: str, ctx: ExportContext) -> None:
        super().__init__(out, ctx)
        self.file = AtomicFile(out, ctx.options)
        self.f = self.file.file
        self.f.write("[")
        self.first = True

    def write(self, row: ExportRow) -> int:
        if not row.kept:
            return 0
        b = row.batch
        prefix = f'{{"image_id": {row.image_id}, "category_id": '
        parts = []
        for j in row.kept:
            h, w = b.size[j]
            parts.append(
                f'{prefix}{int(b.category_id[j])}, "bbox": {_bbox_json(b.bbox[j])}, "score": {b.score_text[j]}, '
                f'"segmentation": {{"size": [{h}, {w}], "counts": {_json_str(b.counts[j])}}}}}'
            )
        self.f.write(("\n" if self.first else ",\n") + ",\n".join(parts))
        self.first = False
        return len(parts)

    def close(self) -> None:
        self.f.write("\n]\n")
        self.ctx.stats.bytes_written = self.f.tell()
        self.file.commit()

    def abort(self) -> None:
        self.file.abort()


class CocoDatasetWriter(Writer):
    """A complete COCO annotation file (images, annotations with RLE masks and scores, categories)."""

    format = "dataset"

    def __init__(self, out: str, ctx: ExportContext) -> None:
        super().__init__(out, ctx)
        self.spill = tempfile.mkdtemp(prefix=".ntt-merge-", dir=_spill_dir(out, ctx.options))
        self.fi = open(os.path.join(self.spill, "images.json"), "w", encoding="utf-8")  # noqa: SIM115 - closed in close/abort
        self.fa = open(os.path.join(self.spill, "annotations.json"), "w", encoding="utf-8")  # noqa: SIM115
        self.first_image = self.first_ann = True
        self.ann_id = 0

    def write(self, row: ExportRow) -> int:
        b, image_id, uri = row.batch, row.image_id, row.image_uri
        self.fi.write(
            ("\n" if self.first_image else ",\n")
            + f'{{"id": {image_id}, "file_name": {_json_str(relative_file_name(uri, self.ctx.image_root))}, '
            f'"width": {row.width}, "height": {row.height}, "image_uri": {_json_str(uri)}}}'
        )
        self.first_image = False
        if not row.kept:
            return 0
        parts = []
        for j, box in zip(row.kept, row.mask_boxes()):
            self.ann_id += 1
            h, w = b.size[j]
            parts.append(
                f'{{"id": {self.ann_id}, "image_id": {image_id}, "category_id": {int(b.category_id[j])}, '
                f'"segmentation": {{"size": [{h}, {w}], "counts": {_json_str(b.counts[j])}}}, '
                f'"bbox": {_bbox_json(box)}, "area": {int(b.area[j])}, "iscrowd": 0, '
                f'"score": {b.score_text[j]}}}'
            )
        self.fa.write(("\n" if self.first_ann else ",\n") + ",\n".join(parts))
        self.first_ann = False
        return len(parts)

    def close(self) -> None:
        ctx = self.ctx
        self.fi.close()
        self.fa.close()
        try:
            cats = ctx.final_categories()
            manifest = ctx.manifest
            info = {
                "description": "ntt-batch auto-labels (training-free reference-based instance segmentation)",
                "format": DATASET_FORMAT,
                "date_created": utc_now_iso(),
                "shards": ctx.shards,
                "score_threshold": ctx.stats.score_threshold,
                "file_name": "relative to " + ctx.image_root if ctx.image_root else "image URI",
                "memory_bank_hash": (manifest.get("memory_bank") or {}).get("content_hash"),
                "official_weights": manifest.get("official_weights"),
                "run_ids": [a.get("run_id") for a in manifest.get("attempts", [])],
                "ntt_batch_version": manifest.get("ntt_batch_version"),
            }
            out = AtomicFile(self.out, ctx.options)
            try:
                f = out.file
                f.write('{"info": ' + json.dumps(info) + ',\n"licenses": [],\n"images": [')
                with open(self.fi.name, encoding="utf-8") as src:
                    shutil.copyfileobj(src, f, 1 << 20)
                f.write('\n],\n"annotations": [')
                with open(self.fa.name, encoding="utf-8") as src:
                    shutil.copyfileobj(src, f, 1 << 20)
                f.write('\n],\n"categories": ' + json.dumps(cats) + "\n}\n")
                ctx.stats.bytes_written = f.tell()
            except BaseException:
                out.abort()
                raise
            out.commit()
        finally:
            shutil.rmtree(self.spill, ignore_errors=True)

    def abort(self) -> None:
        self.fi.close()
        self.fa.close()
        shutil.rmtree(self.spill, ignore_errors=True)
