"""The row schema of the batch job's output: one row per input image (layout: ``output.folder``).

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

A row means "done": resume reads the ``image_uri`` and ``status`` columns of the committed
files (``pipeline.plan``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..storage.fs import filesystem
from .folder import OutputFolder

STATUS_OK, STATUS_EMPTY, STATUS_ERROR = "ok", "empty", "error"

SEGMENTATION_TYPE = pa.struct([("size", pa.list_(pa.int32())), ("counts", pa.string())])
INSTANCE_TYPE = pa.struct(
    [
        ("category_id", pa.int32()),
        ("category_name", pa.string()),
        ("score", pa.float32()),
        ("bbox", pa.list_(pa.float64())),
        ("area", pa.int64()),
        ("segmentation", SEGMENTATION_TYPE),
    ]
)
SHARD_SCHEMA = pa.schema(
    [
        ("image_id", pa.int64()),
        ("image_uri", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("num_instances", pa.int32()),
        ("instances", pa.list_(INSTANCE_TYPE)),
        ("run_id", pa.string()),
    ]
)


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Output rows (dicts with the schema's fields) → a table with exactly ``SHARD_SCHEMA``."""
    return pa.Table.from_pylist(rows, schema=SHARD_SCHEMA)


def shard_paths(out_uri: str, options: dict | None = None) -> tuple[Any, list[str]]:
    """(filesystem, committed shard paths) of an output URI, or of one ``.parquet`` file.

    Only the committed ``*.parquet`` files directly under the output count (see
    ``output.folder``); staging, temporary and quarantined files live under ``_ntt/``.
    """
    if out_uri.lower().endswith(".parquet"):
        fs, path = filesystem(out_uri, options)
        return fs, [path] if fs.exists(path) else []
    folder = OutputFolder(out_uri, options)
    return folder.fs, [p.path for p in folder.parts()]


def read_shards(out_uri: str, options: dict | None = None, columns: Iterable[str] | None = None) -> pa.Table:
    """All committed shards as one table (empty table with the schema if there are none). Small outputs only."""
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
    """Counts read from the files: rows, per status, instances, duplicate URIs (must be 0). Small outputs only;
    `ntt-batch verify` does this at any size."""
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
