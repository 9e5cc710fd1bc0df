"""Reading the batch job's Parquet shards: the one place that opens shard files.

:func:`list_shards` and :func:`iter_image_batches` stream the committed files one record batch at a
time into :class:`ImageBatch` columns (what every export, ``eval``, ``thresholds``, ``visualize``
and ``review`` read); :func:`dataset_categories` gives the memory bank's classes from the run record
(``OutputFolder.read_run``). The exports themselves live in :mod:`ntt_batch.exports`.

Scores are carried as the shortest decimal text that round-trips the stored float32 (``0.8125``,
not ``0.8125000119...``); that mapping is monotonic, so rankings, and therefore AP, are the same
as on the shards.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..storage.fs import filesystem
from .folder import OutputFolder
from .shards import shard_paths

log = logging.getLogger(__name__)

_COLUMNS = ["image_id", "image_uri", "width", "height", "status", "error", "instances"]


# ----------------------------------------------------------------------------- reading


@dataclass
class ImageBatch:
    """One record batch of shard rows, columnar: ``n`` images and their ``m`` instances.

    Per image ``i`` (lists of length n): ``image_id``, ``image_uri``, ``width``, ``height``,
    ``status``, ``error``; its instances are ``offsets[i]:offsets[i + 1]`` of the per-instance
    lists (length m): ``category_id`` (int), ``category_name``, ``score`` (float32 values as
    float), ``score_text`` (shortest round-trip decimal of the float32), ``bbox`` ([x, y, w, h]
    px), ``area`` (mask px), ``size`` ([h, w]) and ``counts`` (COCO compressed-RLE string).
    """

    image_id: list[int]
    image_uri: list[str]
    width: list[int | None]
    height: list[int | None]
    status: list[str]
    error: list[str | None]
    offsets: np.ndarray
    category_id: list[int]
    category_name: list[str | None]
    score: list[float]
    score_text: list[str]
    bbox: list[list[float]]
    area: list[int]
    size: list[list[int]]
    counts: list[str]
    shard: str

    def __len__(self) -> int:
        return len(self.image_id)

    def instances(self, i: int, score_threshold: float | None = None) -> list[dict[str, Any]]:
        """Row ``i``'s instances as shard-schema dicts (``segmentation`` = {size, counts})."""
        out = []
        for j in range(int(self.offsets[i]), int(self.offsets[i + 1])):
            if score_threshold is not None and self.score[j] < score_threshold:
                continue
            out.append(
                {
                    "category_id": self.category_id[j],
                    "category_name": self.category_name[j],
                    "score": self.score[j],
                    "bbox": self.bbox[j],
                    "area": self.area[j],
                    "segmentation": {"size": self.size[j], "counts": self.counts[j]},
                }
            )
        return out


def list_shards(shards: str, options: dict | None = None) -> tuple[Any, list[str]]:
    """(filesystem, sorted shard paths) of a run's output URI (or one ``.parquet`` file); error if none."""
    fs, paths = shard_paths(shards, options)
    if not paths:
        raise FileNotFoundError(
            f"no Parquet shards under {shards!r}: pass the --out folder/URI of an `ntt-batch run` "
            "(it holds run.json and *.parquet files)"
        )
    return fs, paths


def iter_image_batches(
    shards: str,
    options: dict | None = None,
    *,
    batch_rows: int = 64,
    batch_instances: int = 2048,
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[ImageBatch]:
    """Stream the shards as :class:`ImageBatch` objects, bounded in rows and in instances.

    Reads one Parquet record batch of at most ``batch_rows`` rows at a time (never a whole shard,
    never the whole output) and hands it out in zero-copy slices of at most ``batch_instances``
    instances (at least one row each), so the Python objects alive at once stay bounded whether
    images have 0 or 1000 instances. ``progress`` is called with (shards done, shards total).
    """
    if batch_rows < 1 or batch_instances < 1:
        raise ValueError(f"batch_rows and batch_instances must be >= 1, got {batch_rows} and {batch_instances}")
    fs, paths = list_shards(shards, options)
    for k, path in enumerate(paths):
        try:
            with fs.open(path, "rb") as f, pq.ParquetFile(f) as pf:  # closed here, not by a later GC
                missing = [c for c in _COLUMNS if c not in pf.schema_arrow.names]
                if missing:
                    raise ValueError(f"shard {path} lacks column(s) {missing}: not an ntt-batch output shard")
                for batch in pf.iter_batches(batch_size=batch_rows, columns=_COLUMNS):
                    for part in _slices(batch, batch_instances):
                        yield _image_batch(part, path)
        except (TimeoutError, ConnectionError, PermissionError, FileNotFoundError):
            raise  # a read error, not a broken shard: it propagates as it is
        except (OSError, pa.ArrowInvalid) as e:  # pyarrow reports bad bytes as ArrowInvalid or OSError
            raise ValueError(
                f"shard {path} is unreadable ({e}); rerun `ntt-batch run` with the same "
                "arguments (it quarantines broken shards and redoes their images)"
            ) from e
        if progress:
            progress(k + 1, len(paths))


def _slices(batch: pa.RecordBatch, max_instances: int) -> Iterator[pa.RecordBatch]:
    """Consecutive zero-copy slices of ``batch`` holding at most ``max_instances`` instances (>= 1 row)."""
    lengths = pc.fill_null(pc.list_value_length(batch.column("instances")), 0).to_numpy(zero_copy_only=False)
    cum = np.concatenate([[0], np.cumsum(lengths)])
    n, start = len(lengths), 0
    while start < n:
        end = int(np.searchsorted(cum, cum[start] + max_instances, side="right")) - 1
        end = min(n, max(end, start + 1))
        yield batch.slice(start, end - start)
        start = end


def _image_batch(batch: pa.RecordBatch, path: str) -> ImageBatch:
    instances = batch.column("instances")
    lengths = pc.fill_null(pc.list_value_length(instances), 0).to_numpy(zero_copy_only=False)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = instances.flatten()  # respects slicing and null lists

    def field_(name):
        return pc.struct_field(values, name)

    scores = field_("score").to_numpy(zero_copy_only=False).astype(np.float32)
    if scores.size and not np.isfinite(scores).all():
        raise ValueError(f"shard {path} holds a non-finite score: not a valid ntt-batch output")
    bbox = field_("bbox")
    box_lengths = pc.list_value_length(bbox)
    if len(bbox) and (pc.min(box_lengths).as_py() != 4 or pc.max(box_lengths).as_py() != 4):
        raise ValueError(f"shard {path}: every instance bbox must have 4 numbers [x, y, w, h]")
    seg = field_("segmentation")
    size = pc.struct_field(seg, "size")
    return ImageBatch(
        image_id=batch.column("image_id").to_pylist(),
        image_uri=batch.column("image_uri").to_pylist(),
        width=batch.column("width").to_pylist(),
        height=batch.column("height").to_pylist(),
        status=batch.column("status").to_pylist(),
        error=batch.column("error").to_pylist(),
        offsets=offsets,
        category_id=field_("category_id").to_pylist(),
        category_name=field_("category_name").to_pylist(),
        score=scores.astype(np.float64).tolist(),
        # numpy prints float32 in its shortest round-trip form ("0.8125"): monotonic in the value
        score_text=scores.astype(str).tolist(),
        bbox=bbox.flatten().to_numpy(zero_copy_only=False).reshape(-1, 4).tolist(),
        area=field_("area").to_pylist(),
        size=size.flatten().to_numpy(zero_copy_only=False).reshape(-1, 2).tolist(),
        counts=pc.struct_field(seg, "counts").to_pylist(),
        shard=path,
    )


def read_json(uri: str, options: dict | None = None) -> Any:
    """Read a JSON file from a local path or any fsspec URI."""
    fs, path = filesystem(uri, options)
    if not fs.isfile(path):
        raise FileNotFoundError(f"{uri!r} does not exist (expected a JSON file)")
    with fs.open(path, "rb") as f:
        try:
            return json.load(f)
        except ValueError as e:
            raise ValueError(f"{uri!r} is not valid JSON: {e}") from e


def is_results_file(source: str, options: dict | None = None) -> bool:
    """True if ``source`` is a JSON results file; False for a shards folder/URI (or a .parquet file)."""
    if source.lower().endswith(".json"):
        return True
    if source.lower().endswith(".parquet"):
        return False
    fs, path = filesystem(source, options)
    return fs.isfile(path)


# ----------------------------------------------------------------------------- statistics


def dataset_categories(shards: str, options: dict | None = None) -> list[dict] | None:
    """The memory bank's categories recorded in the run's ``run.json`` (None when unavailable)."""
    return run_categories(OutputFolder(shards, options).read_run(strict=False))


def run_categories(run: dict) -> list[dict] | None:
    """The memory bank's categories in a run record (``OutputFolder.read_run``), by id; None when absent."""
    cats = (run.get("memory_bank") or {}).get("categories")
    if not cats:
        return None
    return [{"id": int(c["id"]), "name": str(c["name"])} for c in sorted(cats, key=lambda c: int(c["id"]))]
