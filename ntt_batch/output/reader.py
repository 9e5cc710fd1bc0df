"""Reading the batch job's Parquet shards, and the streaming merge into COCO results or a COCO dataset.

This module is the one place that reads shard files (:func:`list_shards`,
:func:`iter_image_batches`; the run record is ``OutputFolder.read_run``); the writers of every export format live
in :mod:`ntt_batch.exports` (``yolo`` and ``label-studio`` besides the two below) and are fed
by one loop, :func:`ntt_batch.exports.base.run_export`.

Two COCO products (``ntt-batch merge --format ...``):

``results``
    A COCO *results* file: one JSON array of ``{"image_id", "category_id", "bbox", "score",
    "segmentation"}`` entries (compressed RLE), exactly what ``COCO.loadRes`` and COCOeval read.
``dataset``
    A complete COCO *annotation* file — the auto-labeling product::

        {"info": {...provenance...}, "licenses": [],
         "images": [{"id", "file_name", "width", "height", "image_uri"}, ...],
         "annotations": [{"id", "image_id", "category_id", "segmentation": {"size", "counts"},
                          "bbox", "area", "iscrowd": 0, "score"}, ...],
         "categories": [{"id", "name", "supercategory"}, ...]}

    ``file_name`` is the image URI as the job read it (absolute path or ``s3://…``), or, with
    ``image_root``, the path relative to that prefix. Every image whose row is ``ok`` or
    ``empty`` is listed — images left without a label above the score threshold stay in as
    negatives; ``error`` rows are skipped and counted. ``bbox`` and ``area`` are the shard's
    (the method's box convention, method.md §4.8; ``area`` = mask pixels).

Bounded memory: shards are read one record batch at a time (``ParquetFile.iter_batches``), every
entry is written to disk as soon as it is formatted, and nothing per instance is kept. What stays
in memory is one Parquet row group plus one batch of rows, the category list, and 8 bytes per
image (the image ids, to refuse duplicates at the end). Score thresholds may be per class
(:class:`~ntt_batch.exports.score_filter.ScoreThresholds`). ``dataset`` writes its ``images`` and
``annotations`` arrays to two temporary files in the same single pass and concatenates them at the
end. The output appears atomically (temporary file + rename, or one upload for object stores):
a crash or an error never leaves a half-written file under the final name.

Scores are written in the shortest decimal form that round-trips the stored float32 (``0.8125``,
not ``0.8125000119...``); that mapping is monotonic, so rankings — and therefore AP — are the
same as on the shards.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from array import array
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..storage.atomic import AtomicLocalFile, commit_on_success
from ..storage.fs import filesystem, is_local
from .folder import OutputFolder
from .shards import STATUS_EMPTY, STATUS_ERROR, STATUS_OK, shard_paths

log = logging.getLogger(__name__)

DATASET_FORMAT = "ntt-batch/auto-labels"
_COLUMNS = ["image_id", "image_uri", "width", "height", "status", "error", "instances"]
_MAX_EXAMPLES = 5


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


@dataclass
class MergeStats:
    """What a merge read and wrote. ``notices`` are human-readable remarks worth showing."""

    format: str
    out: str
    shards: int = 0
    rows: int = 0
    images_ok: int = 0
    images_empty: int = 0
    images_error: int = 0
    images_written: int = 0
    instances_read: int = 0
    instances_written: int = 0
    below_threshold: int = 0
    score_threshold: float | dict | None = None  # one number, or the per-class map
    categories: list[dict] = field(default_factory=list)
    categories_source: str | None = None
    error_examples: list[dict] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    bytes_written: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def _count_row(self, b: ImageBatch, i: int) -> bool:
        """Count row i; False if it is an error row (skipped by every product)."""
        self.rows += 1
        status = b.status[i]
        if status == STATUS_ERROR:
            self.images_error += 1
            if len(self.error_examples) < _MAX_EXAMPLES:
                self.error_examples.append(
                    {"image_id": b.image_id[i], "image_uri": b.image_uri[i], "error": b.error[i]}
                )
            return False
        if status == STATUS_OK:
            self.images_ok += 1
        elif status == STATUS_EMPTY:
            self.images_empty += 1
        else:
            raise ValueError(
                f"shard {b.shard}: row for {b.image_uri[i]!r} has unknown status {status!r} "
                f"(expected {STATUS_OK}, {STATUS_EMPTY} or {STATUS_ERROR})"
            )
        return True


class _IdChecker:
    """Collects image ids compactly (8 bytes each) and reports duplicates at the end."""

    def __init__(self) -> None:
        self.ids = array("q")

    def add(self, image_id: int) -> None:
        self.ids.append(int(image_id))

    def check(self, shards: str) -> None:
        if not self.ids:
            return
        ids = np.frombuffer(self.ids, dtype=np.int64)
        uniq, counts = np.unique(ids, return_counts=True)
        dup = uniq[counts > 1]
        if dup.size:
            shown = ", ".join(str(int(x)) for x in dup[:_MAX_EXAMPLES])
            raise ValueError(
                f"{shards}: {dup.size} image id(s) appear in more than one row (e.g. {shown}); nothing was "
                'written. Each image must have exactly one row: find them with e.g. duckdb -c "select image_id, '
                f"image_uri from '{shards.rstrip('/')}/*.parquet' where image_id in ({shown})\" and give those "
                "inputs unique ids (a manifest with an image_id column)"
            )


# ----------------------------------------------------------------------------- writing


class AtomicFile:
    """A temporary local file that becomes ``out`` on :meth:`commit` and vanishes on :meth:`abort`.

    Local ``out``: :class:`~ntt_batch.storage.atomic.AtomicLocalFile` (a hidden temporary file in the
    same folder, then ``os.replace``). Object stores: a local temporary file, then one upload (an
    object appears whole or not at all). ``file`` is the open text (or binary, ``mode="wb"``) file
    to write to.
    """

    def __init__(self, out: str, options: dict | None = None, *, mode: str = "w") -> None:
        fs, path = filesystem(out, options)
        self.fs, self.path, self.local = fs, path, is_local(fs)
        self._local: AtomicLocalFile | None = None
        self.tmp: str | None = None
        if self.local:
            parent = os.path.dirname(os.path.abspath(path)) or "."
            if not os.path.isdir(parent):
                raise FileNotFoundError(f"output folder {parent!r} does not exist: create it first")
            self._local = AtomicLocalFile(path, mode)
            self.file = self._local.file
            return
        fd, self.tmp = tempfile.mkstemp(prefix="ntt-merge-", suffix=".tmp")
        try:
            self.file = os.fdopen(fd, mode, encoding="utf-8" if "b" not in mode else None)
        except BaseException:
            os.close(fd)
            self._remove()
            raise

    def commit(self) -> None:
        """Close the file and move it to ``out``."""
        if self._local is not None:
            self._local.commit()
            return
        try:
            self.file.close()
            self.fs.put_file(self.tmp, self.path)
        finally:
            self._remove()

    def abort(self) -> None:
        """Close and delete the temporary file; ``out`` is left as it was."""
        if self._local is not None:
            self._local.abort()
            return
        try:
            self.file.close()
        finally:
            self._remove()

    def _remove(self) -> None:
        if self.tmp and os.path.exists(self.tmp):
            os.remove(self.tmp)


def atomic_output(out: str, options: dict | None = None, *, mode: str = "w"):
    """Context manager: a temporary local file that becomes ``out`` only when the block succeeds.

    See :class:`AtomicFile`."""
    return commit_on_success(AtomicFile(out, options, mode=mode))


def _bbox_json(b: list[float]) -> str:
    return f"[{b[0]!r}, {b[1]!r}, {b[2]!r}, {b[3]!r}]"


def _check_threshold(score_threshold: float | None) -> float | None:
    if score_threshold is None:
        return None
    t = float(score_threshold)
    if not np.isfinite(t):
        raise ValueError(f"score threshold must be a finite number, got {score_threshold!r}")
    return t


def _finish_stats(stats: MergeStats) -> None:
    if stats.images_error:
        stats.notices.append(
            f"{stats.images_error} image(s) with status 'error' were skipped "
            f"(e.g. {stats.error_examples[0]['image_uri']}: {stats.error_examples[0]['error']})"
        )
    if stats.rows and not stats.instances_written:
        stats.notices.append(
            "no instance was written"
            + (
                f" (all {stats.below_threshold} are below the score threshold {stats.score_threshold})"
                if stats.below_threshold
                else ""
            )
        )


def dataset_categories(shards: str, options: dict | None = None) -> list[dict] | None:
    """The memory bank's categories recorded in the run's ``run.json`` (None when unavailable)."""
    return run_categories(OutputFolder(shards, options).read_run(strict=False))


def run_categories(run: dict) -> list[dict] | None:
    """The memory bank's categories in a run record (``OutputFolder.read_run``), by id; None when absent."""
    cats = (run.get("memory_bank") or {}).get("categories")
    if not cats:
        return None
    return [{"id": int(c["id"]), "name": str(c["name"])} for c in sorted(cats, key=lambda c: int(c["id"]))]


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


def _spill_dir(out: str, options: dict | None) -> str | None:
    """Where the dataset writer keeps its two temporary arrays: beside a local output, else the temp dir."""
    fs, path = filesystem(out, options)
    if is_local(fs):
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise FileNotFoundError(f"output folder {parent!r} does not exist: create it first")
        return parent
    return None


# ----------------------------------------------------------------------------- in memory (eval)


@dataclass
class ShardResults:
    """COCO results read from shards for evaluation, with the per-image status it saw."""

    results: list[dict]
    processed_image_ids: set[int]  # rows with status ok or empty
    error_image_ids: set[int]
    rows: int


def coco_results_from_shards(
    shards: str, options: dict | None = None, *, score_threshold: float | None = None
) -> ShardResults:
    """All instances as COCO results dicts in memory (COCOeval needs them all at once anyway)."""
    t = _check_threshold(score_threshold)
    results: list[dict] = []
    processed: set[int] = set()
    errors: set[int] = set()
    rows = 0
    for b in iter_image_batches(shards, options):
        for i in range(len(b)):
            rows += 1
            image_id = int(b.image_id[i])
            if b.status[i] == STATUS_ERROR:
                errors.add(image_id)
                continue
            processed.add(image_id)
            for j in range(int(b.offsets[i]), int(b.offsets[i + 1])):
                if t is not None and b.score[j] < t:
                    continue
                results.append(
                    {
                        "image_id": image_id,
                        "category_id": int(b.category_id[j]),
                        "bbox": b.bbox[j],
                        "score": float(b.score_text[j]),
                        "segmentation": {"size": b.size[j], "counts": b.counts[j]},
                    }
                )
    return ShardResults(results, processed, errors, rows)
