"""Inputs listed by a COCO annotation file under an image root (``annotations:`` + ``image_root:``),
with the file's image ids.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pyarrow as pa

from ..storage.fs import filesystem
from ..storage.names import safe_join
from .base import Source, SourceStats, input_batch
from .uris import normalise_uri


class CocoSource(Source):
    """``annotations`` + ``image_root``: the images a COCO JSON lists (ids from it, sorted by id)."""

    keys = {
        "annotations": "a COCO JSON listing the images",
        "image_root": "the URI the COCO file names are relative to",
    }
    required = ("annotations", "image_root")
    uri_keys = ("annotations", "image_root")

    def batches(self, options, *, chunk_rows, stats, extensions=None, exclude_prefix=None) -> Iterator[pa.RecordBatch]:
        return iter_coco(
            self.settings["annotations"], self.settings["image_root"], options, chunk_rows=chunk_rows, stats=stats
        )


def iter_coco(
    annotations: str,
    image_root: str,
    options: dict | None = None,
    *,
    chunk_rows: int = 65536,
    stats: SourceStats | None = None,
) -> Iterator[pa.RecordBatch]:
    """Images listed in a COCO JSON (ids from it, sorted by id) under ``image_root`` (any fsspec URI).

    The file is parsed whole (COCO files list images and annotations in one JSON document);
    only the ``images`` entries are kept.
    """
    stats = stats if stats is not None else SourceStats()
    fs, path = filesystem(annotations, options)
    with fs.open(path, "rb") as f:
        images = json.load(f).get("images", [])
    if not images:
        raise ValueError(f"{annotations}: no 'images' in the annotation file")
    images.sort(key=lambda im: int(im["id"]))
    root = image_root.rstrip("/")
    for start in range(0, len(images), chunk_rows):
        part = images[start : start + chunk_rows]
        # refuses '..' and absolute names; one spelling per file (sources.uris: local roots normalised)
        uris = [normalise_uri(f"{root}/{safe_join('', im['file_name']).as_posix()}") for im in part]
        stats.listed += len(part)
        yield input_batch(uris, [int(im["id"]) for im in part])
