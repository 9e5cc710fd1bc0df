"""The output data-lake layout: Parquet shards with one row per input image, plus ``run.json``.

Row schema (``SHARD_SCHEMA``), readable by pyarrow / pandas / DuckDB without this package:

    image_id      int64
    image_uri     string      the input's URI: the identity used for resume (exactly one row each)
    width, height int32       original image size (null when the image could not be decoded)
    status        string      "ok" (≥1 instance) | "empty" (decoded, no instance) | "error"
    error         string      null unless status == "error": what went wrong, naming the cause
    num_instances int32
    instances     list<struct<category_id int32, category_name string, score float32,
                              bbox list<float64> (COCO xywh, px), area int64 (mask pixels),
                              segmentation struct<size list<int32> [h, w], counts string>>>
                  ``segmentation`` is COCO compressed RLE: pycocotools.mask.decode reads it.
    run_id        string      which attempt wrote the row

Shards are the checkpoint: a row means "done". Resume reads only the ``image_uri`` column of the
existing shards; a shard whose footer cannot be read (a write cut off by a crash) is moved to
``_quarantine/`` — never deleted — and its images are processed again.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from .storage import filesystem

log = logging.getLogger(__name__)

STATUS_OK, STATUS_EMPTY, STATUS_ERROR = "ok", "empty", "error"

SEGMENTATION_TYPE = pa.struct([("size", pa.list_(pa.int32())), ("counts", pa.string())])
INSTANCE_TYPE = pa.struct([
    ("category_id", pa.int32()),
    ("category_name", pa.string()),
    ("score", pa.float32()),
    ("bbox", pa.list_(pa.float64())),
    ("area", pa.int64()),
    ("segmentation", SEGMENTATION_TYPE),
])
SHARD_SCHEMA = pa.schema([
    ("image_id", pa.int64()),
    ("image_uri", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("status", pa.string()),
    ("error", pa.string()),
    ("num_instances", pa.int32()),
    ("instances", pa.list_(INSTANCE_TYPE)),
    ("run_id", pa.string()),
])
QUARANTINE_DIR = "_quarantine"


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Output rows (dicts with the schema's fields) → a table with exactly ``SHARD_SCHEMA``."""
    return pa.Table.from_pylist(rows, schema=SHARD_SCHEMA)


def shard_paths(out_uri: str, options: dict | None = None) -> tuple[Any, list[str]]:
    fs, root = filesystem(out_uri, options)
    fs.invalidate_cache()  # listings are cached per filesystem instance (s3fs): never resume from a stale one
    if not fs.exists(root):
        return fs, []
    paths = [p for p in fs.find(root) if p.endswith(".parquet") and f"/{QUARANTINE_DIR}/" not in p]
    return fs, sorted(paths)


def completed_uris(out_uri: str, options: dict | None = None) -> set[str]:
    """URIs that already have a row in a readable shard under ``out_uri`` (resume), quarantining broken shards."""
    fs, paths = shard_paths(out_uri, options)
    done: set[str] = set()
    for p in paths:
        try:
            with fs.open(p, "rb") as f:
                table = pq.read_table(f, columns=["image_uri"])
        except Exception as e:  # truncated / corrupt footer: a write cut off by a crash
            _quarantine(fs, out_uri, p, e, options)
            continue
        done.update(table.column("image_uri").to_pylist())
    return done


def _quarantine(fs, out_uri: str, path: str, error: Exception, options) -> None:
    _, root = filesystem(out_uri, options)
    dest = f"{root.rstrip('/')}/{QUARANTINE_DIR}/{path.rsplit('/', 1)[-1]}"
    log.warning("shard %s is unreadable (%s); moved to %s and its images will be processed again", path, error, dest)
    fs.makedirs(dest.rsplit("/", 1)[0], exist_ok=True)
    fs.mv(path, dest)


def read_shards(out_uri: str, options: dict | None = None, columns: Iterable[str] | None = None) -> pa.Table:
    """All readable shards as one table (empty table with the schema if there are none)."""
    fs, paths = shard_paths(out_uri, options)
    cols = list(columns) if columns else None
    tables = []
    for p in paths:
        with fs.open(p, "rb") as f:
            tables.append(pq.read_table(f, columns=cols))
    if not tables:
        schema = pa.schema([SHARD_SCHEMA.field(c) for c in cols]) if cols else SHARD_SCHEMA
        return schema.empty_table()
    return pa.concat_tables(tables, promote_options="default")


def summarize(out_uri: str, options: dict | None = None) -> dict[str, int]:
    """Counts over the whole output: rows, per status, instances, duplicate URIs (must be 0)."""
    t = read_shards(out_uri, options, columns=["image_uri", "status", "num_instances"])
    statuses = t.column("status").to_pylist()
    uris = t.column("image_uri").to_pylist()
    return {
        "rows": len(statuses),
        "ok": statuses.count(STATUS_OK),
        "empty": statuses.count(STATUS_EMPTY),
        "error": statuses.count(STATUS_ERROR),
        "instances": int(sum(n or 0 for n in t.column("num_instances").to_pylist())),
        "duplicate_uris": len(uris) - len(set(uris)),
    }


def shards_to_coco_results(out_uri: str, options: dict | None = None) -> list[dict]:
    """COCO results entries (``COCO.loadRes`` format) from the shards' instances."""
    t = read_shards(out_uri, options, columns=["image_id", "instances"])
    results = []
    for image_id, instances in zip(t.column("image_id").to_pylist(), t.column("instances").to_pylist()):
        for inst in instances or []:
            results.append({"image_id": int(image_id), "category_id": int(inst["category_id"]), "bbox": inst["bbox"],
                            "score": float(inst["score"]), "segmentation": inst["segmentation"]})
    return results
