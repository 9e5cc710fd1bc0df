"""Publishing to a Delta Lake table with delta-rs: add/remove actions over the committed files, one version
per publish (:mod:`ntt_batch.output.publish`)."""

from __future__ import annotations

import datetime as _dt
import json
import os
import time

import pyarrow as pa
import pyarrow.parquet as pq

from .folder import OutputFolder
from .shards import SHARD_SCHEMA
from .table_common import (
    PROPERTY_OUTPUT,
    Part,
    PublishError,
    PublishSpec,
    TablePublish,
    map_threads,
    s3_settings,
    url_protocol,
)


def delta_storage_options(options: dict | None) -> dict[str, str]:
    """delta-rs (object_store) storage options for fsspec storage options."""
    s = s3_settings(options)
    names = {
        "endpoint": "AWS_ENDPOINT_URL",
        "key": "AWS_ACCESS_KEY_ID",
        "secret": "AWS_SECRET_ACCESS_KEY",
        "token": "AWS_SESSION_TOKEN",
        "region": "AWS_REGION",
        "profile": "AWS_PROFILE",
    }
    opts = {names[k]: str(v) for k, v in s.items() if k in names}
    if s.get("anon"):
        opts["AWS_SKIP_SIGNATURE"] = "true"
    if str(s.get("endpoint", "")).startswith("http://"):
        opts["AWS_ALLOW_HTTP"] = "true"
    if "endpoint" in s and "region" not in s:
        opts["AWS_REGION"] = "us-east-1"
    return opts


def _delta_root(folder: OutputFolder, delta: bool | str) -> tuple[str, str]:
    """(table root URI as delta-rs takes it, the output's path relative to it: "" or "sub/dir/")."""
    if delta is True or delta == folder.uri:
        root_uri = folder.uri
    else:
        root_uri = str(delta).rstrip("/")
        if "://" not in root_uri or root_uri.startswith("file://"):
            root_uri = os.path.abspath(os.path.expanduser(root_uri.removeprefix("file://")))
    root_fs = OutputFolder(root_uri, folder.options)
    same_store = url_protocol(root_fs) == url_protocol(folder)
    if not same_store or not (folder.root == root_fs.root or folder.root.startswith(root_fs.root + "/")):
        raise PublishError(
            f"--delta {delta}: a Delta table must hold the output's part files under its root (delta-rs resolves "
            f"every file path relative to the table root and does not read absolute paths): use --delta with no "
            f"value (a table at the output folder {folder.uri}) or a folder above it"
        )
    rel = folder.root[len(root_fs.root) :].strip("/")
    return root_uri, (rel + "/" if rel else "")


def _delta_stats(meta: pq.FileMetaData) -> str:
    """Delta ``add.stats`` of a Parquet footer: numRecords, and nullCount/minValues/maxValues of the top-level
    primitive columns, where every row group has them (exact values: pyarrow never truncates its statistics)."""
    stats: dict = {"numRecords": meta.num_rows, "nullCount": {}, "minValues": {}, "maxValues": {}}
    if not meta.num_row_groups:
        return json.dumps(stats)
    nested = {f.name for f in SHARD_SCHEMA if pa.types.is_nested(f.type)}
    for i in range(meta.num_columns):
        name = meta.row_group(0).column(i).path_in_schema
        if name not in SHARD_SCHEMA.names or name in nested:
            continue
        groups = [
            (meta.row_group(g).column(i).statistics, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)
        ]
        if any(s is None or not s.has_null_count for s, _ in groups):
            continue
        stats["nullCount"][name] = sum(s.null_count for s, _ in groups)
        valued = [s for s, n in groups if s.null_count < n]
        if valued and all(s.has_min_max for s in valued):
            stats["minValues"][name] = min(s.min for s in valued)
            stats["maxValues"][name] = max(s.max for s in valued)
    return json.dumps(stats, default=str)


def _add_action(folder: OutputFolder, part: Part, rel: str):
    from deltalake.transaction import AddAction

    with folder.fs.open(part.path, "rb") as f:
        meta = pq.read_metadata(f)
    info = folder.fs.info(part.path)
    mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified")
    if isinstance(mtime, _dt.datetime):
        ms = int(mtime.timestamp() * 1000)
    elif isinstance(mtime, (int, float)):
        ms = int(mtime * 1000)
    else:
        ms = int(time.time() * 1000)
    return AddAction(
        path=rel + part.name,
        size=part.size,
        partition_values={},
        modification_time=ms,
        data_change=True,
        stats=_delta_stats(meta),
    )


def publish_delta(folder: OutputFolder, parts: list[Part], spec: PublishSpec) -> TablePublish:
    from deltalake import DeltaTable
    from deltalake.transaction import CommitProperties, RemoveAction, create_table_with_add_actions

    t0 = time.perf_counter()
    root, rel = _delta_root(folder, spec.delta)
    opts = delta_storage_options(folder.options)
    res = TablePublish("delta", root, root)
    meta = {PROPERTY_OUTPUT: folder.uri}
    if not DeltaTable.is_deltatable(root, storage_options=opts or None):
        adds = map_threads(lambda p: _add_action(folder, p, rel), parts)
        create_table_with_add_actions(
            root,
            _delta_schema(),
            adds,
            mode="error",
            name=root.rstrip("/").rsplit("/", 1)[-1],
            description="ntt-batch output: one row per image; instances[].segmentation is COCO compressed RLE",
            storage_options=opts or None,
            commit_properties=CommitProperties(custom_metadata={**meta, "ntt-batch.added-parts": len(adds)}),
        )
        res.added = [p.name for p in parts]
    else:
        dt = DeltaTable(root, storage_options=opts or None)
        current = {
            r["path"]: r for r in pa.table(dt.get_add_actions(flatten=True)).select(["path", "size_bytes"]).to_pylist()
        }
        ours = {p: r for p, r in current.items() if p.startswith(rel) and "/" not in p[len(rel) :]}
        res.foreign_files = len(current) - len(ours)
        wanted = {rel + p.name: p for p in parts}
        changed = {k for k, p in wanted.items() if k in ours and int(ours[k]["size_bytes"]) != p.size}
        to_add = [p for k, p in wanted.items() if k not in ours or k in changed]
        to_remove = [k for k in ours if k not in wanted or k in changed]
        if changed:  # delta-rs refuses a path added and removed in one commit; a changed file is not expected here
            raise PublishError(
                f"{', '.join(sorted(changed)[:5])}: same name, other size than the file the Delta table registered; "
                "the output was modified by hand: check it with `ntt-batch verify`"
            )
        if not to_add and not to_remove:
            res.up_to_date = True
            res.snapshot = dt.version()
            res.table_rows = _delta_rows(dt)
            res.seconds = time.perf_counter() - t0
            return res
        now = int(time.time() * 1000)
        actions = [
            RemoveAction(path=k, data_change=True, deletion_timestamp=now, size=int(ours[k]["size_bytes"]))
            for k in to_remove
        ]
        actions += map_threads(lambda p: _add_action(folder, p, rel), to_add)
        dt.create_write_transaction(
            actions,
            mode="append",
            schema=_delta_schema(),
            commit_properties=CommitProperties(
                custom_metadata={
                    **meta,
                    "ntt-batch.added-parts": len(to_add),
                    "ntt-batch.removed-parts": len(to_remove),
                }
            ),
        )
        res.added = [p.name for p in to_add]
        res.removed = sorted(k[len(rel) :] for k in to_remove)
    dt = DeltaTable(root, storage_options=opts or None)
    res.snapshot = dt.version()
    res.table_rows = _delta_rows(dt)
    res.seconds = time.perf_counter() - t0
    return res


def _delta_schema():
    from deltalake import Schema

    return Schema.from_arrow(SHARD_SCHEMA)


def _delta_rows(dt) -> int:
    t = pa.table(dt.get_add_actions(flatten=True)).select(["num_records"])
    return int(sum(v or 0 for v in t.column("num_records").to_pylist()))
