"""`ntt-batch publish`: register an output's committed part files in an Iceberg or Delta Lake table.

The part files are never copied or rewritten: the table points at the Parquet files the job
committed (``<out>/part-*.parquet``, see ``output.folder``). Publishing is a diff between the
files the table holds now and the parts run.json records as committed:

* parts the table does not hold yet are added;
* table files of this output that are no longer committed (merged by ``compact``, rewritten by
  ``--retry-errors`` or ``verify --repair``, moved to quarantine) are removed;
* both in ONE table commit: one Iceberg snapshot, one Delta version. Nothing to do: no commit
  (the table says "up to date").

So after every publish the table's rows are exactly the output's rows (``ntt-batch verify``'s),
with no duplicate and no gap. The output's lease is held while publishing, so no run, compaction
or repair changes the files meanwhile; ``run --publish`` publishes at the end of each completed
attempt, under the run's own lease.

Iceberg (pyiceberg): ``iceberg`` is a catalog — ``sqlite:///path/catalog.db`` (a SQL catalog in a
SQLite file: no service; warehouse ``<its folder>/warehouse`` unless ``warehouse`` is given;
``postgresql://...`` works the same with a ``warehouse``), ``http(s)://...`` (REST catalog),
``glue`` / ``glue://REGION`` (AWS Glue), or the name of a catalog configured in ``~/.pyiceberg.yaml``
or ``PYICEBERG_CATALOG__<NAME>__*`` variables. Omitted (``table`` alone), the embedded catalog is
``<out>/_ntt/iceberg/catalog.db`` with its warehouse ``<out>/_ntt/iceberg/warehouse``: local outputs
only, since SQLite needs a local file (an s3:// output names a local ``sqlite:///`` file or a
service). The table (created when missing, schema = ``SHARD_SCHEMA`` with Iceberg field ids) maps
the part files' columns by name (``schema.name-mapping.default``): the job's files carry no field ids.

Delta Lake (delta-rs ``deltalake``): the table's root must be the output folder itself (``delta=True``)
or a folder above it: delta-rs (1.6) resolves every file path relative to the table root and does
not read absolute paths, so the part files must lie under it. The log goes to ``<root>/_delta_log/``,
which Parquet readers of the output skip like ``_ntt/``.

Object-store credentials: the output's fsspec storage options (``key``/``secret``/``token``,
``client_kwargs.endpoint_url``/``region_name``, ``anon``, ``profile``) are passed to pyiceberg's
and delta-rs's S3 clients; anything else comes from their usual environment variables.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from .folder import COMMITS, META, OutputFolder, new_run_id
from .shards import SHARD_SCHEMA

EMBEDDED = "embedded"  # --iceberg without a value: the embedded SQLite catalog under <out>/_ntt/iceberg/
EMBEDDED_DIR = f"{META}/iceberg"
PROPERTY_OUTPUT = "ntt-batch.output"  # table property / snapshot property: the output a table publishes


class PublishError(ValueError):
    """The output cannot be published as it is, or the target is not usable; the message says what to do."""


@dataclass
class PublishSpec:
    """Where to publish an output (``publish:`` in a job file, ``--publish KEY=VALUE`` on ``run``).

    ``table`` (``NAMESPACE.NAME``) selects Iceberg, in the catalog ``iceberg`` (a URI or a configured
    catalog name; unset or ``embedded``: the SQLite catalog under ``<out>/_ntt/iceberg/``);
    ``warehouse`` is where new Iceberg tables put their metadata. ``delta`` (true: the output folder;
    or a folder above it) selects Delta Lake. Both may be given. ``catalog_properties`` are extra
    pyiceberg catalog properties (e.g. a REST catalog's ``token`` or ``credential``).
    """

    iceberg: str | None = None
    table: str | None = None
    warehouse: str | None = None
    delta: bool | str | None = None
    catalog_properties: dict = field(default_factory=dict)

    @property
    def wants_iceberg(self) -> bool:
        return bool(self.table)

    @property
    def wants_delta(self) -> bool:
        return self.delta is not None and self.delta is not False and self.delta != ""

    def check(self) -> PublishSpec:
        """Raise :class:`PublishError` naming the bad key (not ``validate``: a job file's block is checked by
        ``JobConfig.validate``, which prefixes ``publish:``)."""
        if self.iceberg and not self.table:
            raise PublishError(
                f"iceberg: the catalog {self.iceberg!r} needs a table: give table NAMESPACE.NAME (--table)"
            )
        if self.warehouse and not self.table:
            raise PublishError("warehouse: only applies to an Iceberg table: give table NAMESPACE.NAME (--table)")
        if self.table is not None:
            table_identifier(self.table)
        if not (self.wants_iceberg or self.wants_delta):
            raise PublishError(
                "nothing to publish to: give table NAMESPACE.NAME (Iceberg; iceberg CATALOG picks the catalog) "
                "and/or delta (true: a Delta table at the output folder)"
            )
        for k, v in self.catalog_properties.items():
            if not isinstance(v, (str, int, float, bool)):
                raise PublishError(f"catalog_properties.{k}: expected a string, got {type(v).__name__}")
        return self


@dataclass
class TablePublish:
    """What one publish did to one table."""

    format: str  # "iceberg" | "delta"
    table: str  # the Iceberg identifier or the Delta table's root
    location: str  # Iceberg: the current metadata file; Delta: the table root
    added: list[str] = field(default_factory=list)  # part names added
    removed: list[str] = field(default_factory=list)  # part names removed (replaced in the output)
    foreign_files: int = 0  # files of the table that are not under this output (left as they are)
    snapshot: int | None = None  # Iceberg snapshot id / Delta version after the publish
    table_rows: int | None = None  # rows of the table after the publish (from its own metadata)
    up_to_date: bool = False  # nothing to do: no snapshot / version was written
    seconds: float = 0.0

    def line(self) -> str:
        what = "snapshot" if self.format == "iceberg" else "version"
        rows = f", {self.table_rows:,} rows" if self.table_rows is not None else ""
        if self.up_to_date:
            return f"{self.format} {self.table}: up to date ({what} {self.snapshot}{rows})"
        return (
            f"{self.format} {self.table}: added {len(self.added)} file(s), removed {len(self.removed)} "
            f"({what} {self.snapshot}{rows}; {self.seconds:.1f} s)"
        )


@dataclass
class PublishResult:
    output: str
    parts: int  # committed part files of the output
    rows: int  # their rows (run.json's per-part record)
    tables: list[TablePublish] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- entry points


def publish(
    out: str,
    *,
    iceberg: str | None = None,
    table: str | None = None,
    warehouse: str | None = None,
    delta: bool | str | None = None,
    catalog_properties: dict | None = None,
    storage_options: dict | None = None,
    echo: Callable[[str], None] = print,
) -> PublishResult:
    """Publish output ``out`` to an Iceberg table and/or a Delta table (module docstring), holding its lease.

    Raises :class:`PublishError` (output inconsistent, bad target), ``FileNotFoundError`` (no output),
    :class:`~ntt_batch.output.folder.LeaseHeldError` (a run is writing the output).
    """
    spec = PublishSpec(
        iceberg=iceberg,
        table=table,
        warehouse=warehouse,
        delta=delta,
        catalog_properties=dict(catalog_properties or {}),
    ).check()
    folder = OutputFolder(out, storage_options)
    if not folder.exists() or not folder.read_run():
        raise FileNotFoundError(f"{out!r} holds no ntt-batch output (no _ntt/run.json): pass the --out of a run")
    with folder.lease({"run_id": f"publish-{new_run_id()}"}):
        return publish_folder(folder, spec, echo=echo)


def publish_folder(folder: OutputFolder, spec: PublishSpec, *, echo: Callable[[str], None] = print) -> PublishResult:
    """Publish ``folder`` as described by ``spec``; the caller holds the output's lease."""
    spec.check()
    parts = committed_parts(folder)
    result = PublishResult(folder.uri, len(parts), sum(p.rows for p in parts))
    if spec.wants_iceberg:
        result.tables.append(_publish_iceberg(folder, parts, spec))
        echo(result.tables[-1].line())
    if spec.wants_delta:
        result.tables.append(_publish_delta(folder, parts, spec))
        echo(result.tables[-1].line())
    return result


# ----------------------------------------------------------------------------- the output side


@dataclass(frozen=True)
class Part:
    name: str
    path: str  # fsspec path (no protocol)
    uri: str  # full URI (file:///..., s3://...)
    size: int
    rows: int


def committed_parts(folder: OutputFolder) -> list[Part]:
    """The committed part files, as run.json records them, after checking they are exactly the files there.

    Raises :class:`PublishError` when a commit is half done or run.json and the folder disagree:
    publishing then could register files that are about to go, or miss some.
    """
    run = folder.read_run()
    if folder.files_under(COMMITS, ".json"):
        raise PublishError(
            f"{folder.uri} has a half-done commit (an interrupted run): run the same `ntt-batch run` again "
            f"or `ntt-batch verify {folder.uri} --repair` first, then publish"
        )
    recorded = dict(run.get("parts") or {})
    listed = {p.name: p for p in folder.parts()}
    extra = sorted(set(listed) - set(recorded))
    missing = sorted(set(recorded) - set(listed))
    if extra or missing:
        what = "; ".join(
            s
            for s in (
                f"not in run.json: {', '.join(extra[:5])}" if extra else "",
                f"in run.json but not in the output: {', '.join(missing[:5])}" if missing else "",
            )
            if s
        )
        raise PublishError(
            f"{folder.uri}: the part files and run.json's record disagree ({what}); run `ntt-batch verify "
            f"{folder.uri} --repair` (or rerun the job), then publish"
        )
    protocol = _protocol(folder)
    out = []
    for name in sorted(recorded):
        info = listed[name]
        out.append(Part(name, info.path, _uri(protocol, info.path), int(info.size), int(recorded[name].get("rows", 0))))
    return out


def _protocol(folder: OutputFolder) -> str:
    if folder.is_local:
        return "file"
    proto = folder.fs.protocol
    proto = proto[0] if isinstance(proto, (list, tuple)) else proto
    return {"s3a": "s3"}.get(proto, proto)


def _uri(protocol: str, path: str) -> str:
    return f"file://{path}" if protocol == "file" else f"{protocol}://{path}"


def _prefix(folder: OutputFolder) -> str:
    """URI prefix of this output's part files (what the table lists for them)."""
    return _uri(_protocol(folder), folder.root) + "/"


def _is_part_of(path: str, prefix: str) -> bool:
    """Whether a table file path is a file directly under this output (not under a sub-folder)."""
    if path.startswith("/") and prefix.startswith("file://"):
        path = "file://" + path
    return path.startswith(prefix) and "/" not in path[len(prefix) :]


# ----------------------------------------------------------------------------- object-store credentials


def _s3_settings(options: dict | None) -> dict:
    """The S3 settings of fsspec/s3fs storage options: endpoint, key, secret, token, region, anon, profile."""
    o = dict(options or {})
    ck = dict(o.get("client_kwargs") or {})
    return {
        k: v
        for k, v in {
            "endpoint": ck.get("endpoint_url") or o.get("endpoint_url"),
            "key": o.get("key") or ck.get("aws_access_key_id"),
            "secret": o.get("secret") or ck.get("aws_secret_access_key"),
            "token": o.get("token") or ck.get("aws_session_token"),
            "region": ck.get("region_name") or o.get("region_name"),
            "anon": bool(o.get("anon")) or None,
            "profile": o.get("profile"),
        }.items()
        if v
    }


def iceberg_io_properties(options: dict | None) -> dict[str, str]:
    """pyiceberg FileIO properties (``s3.*``) for fsspec storage options."""
    s = _s3_settings(options)
    names = {
        "endpoint": "s3.endpoint",
        "key": "s3.access-key-id",
        "secret": "s3.secret-access-key",
        "token": "s3.session-token",
        "region": "s3.region",
        "profile": "s3.profile-name",
    }
    props = {names[k]: str(v) for k, v in s.items() if k in names}
    if s.get("anon"):
        props["s3.anonymous"] = "true"
    if "endpoint" in s and "region" not in s:
        props["s3.region"] = "us-east-1"  # S3-compatible stores: pyarrow would otherwise try to resolve one
    return props


def delta_storage_options(options: dict | None) -> dict[str, str]:
    """delta-rs (object_store) storage options for fsspec storage options."""
    s = _s3_settings(options)
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


# ----------------------------------------------------------------------------- Iceberg


def table_identifier(table: str) -> tuple[str, ...]:
    """``"ns.name"`` / ``"a.b.name"`` → ("ns", "name") / ("a", "b", "name")."""
    parts = tuple(str(table).split("."))
    if len(parts) < 2 or not all(parts):
        raise PublishError(f"table: {table!r} is not NAMESPACE.NAME (e.g. labels.coco_masks)")
    return parts


def _sqlite_path(catalog: str) -> str | None:
    """The database file of a ``sqlite:///...`` URI or of a path to a ``.db``/``.sqlite`` file, made absolute."""
    if catalog.startswith("sqlite:///"):
        path = catalog[len("sqlite:///") :]
    elif "://" not in catalog and catalog.endswith((".db", ".sqlite", ".sqlite3")):
        path = catalog
    else:
        return None
    return os.path.abspath(os.path.expanduser(path))


def load_catalog(spec: PublishSpec, folder: OutputFolder):
    """The pyiceberg catalog ``spec.iceberg`` names (module docstring), with the output's S3 credentials."""
    from pyiceberg.catalog import load_catalog as _load

    quiet = logging.getLogger("pyiceberg.io")  # "Loaded FileIO: ..." at INFO on every table load
    if quiet.level == logging.NOTSET:
        quiet.setLevel(logging.WARNING)
    props: dict[str, str] = iceberg_io_properties(folder.options)
    catalog = spec.iceberg or EMBEDDED
    warehouse = spec.warehouse
    if catalog == EMBEDDED:
        if not folder.is_local:
            raise PublishError(
                f"{folder.uri} is not a local folder, and the embedded Iceberg catalog is a SQLite file (it must be "
                "local): name one with --iceberg sqlite:////local/path/catalog.db (--warehouse s3://... to keep the "
                "table's metadata in the object store), or a REST/Glue catalog"
            )
        catalog = "sqlite:///" + folder.path(f"{EMBEDDED_DIR}/catalog.db")
    db = _sqlite_path(catalog)
    if db is not None:
        os.makedirs(os.path.dirname(db), exist_ok=True)
        warehouse = warehouse or "file://" + os.path.join(os.path.dirname(db), "warehouse")
        kind, name, props = "sql", "ntt", {**props, "uri": f"sqlite:///{db}"}
    elif catalog.startswith(("postgresql://", "postgresql+", "mysql://", "mysql+")):
        if not warehouse:
            raise PublishError(f"--warehouse: required with the SQL catalog {catalog.split('@')[-1]!r} (e.g. s3://...)")
        kind, name, props = "sql", "ntt", {**props, "uri": catalog}
    elif catalog.startswith(("http://", "https://")):
        kind, name, props = "rest", "rest", {**props, "uri": catalog}
    elif catalog == "glue" or catalog.startswith("glue://"):
        region = catalog[len("glue://") :].strip("/") if catalog.startswith("glue://") else ""
        kind, name = "glue", "glue"
        if region:
            props["glue.region"] = region
    else:  # a catalog configured in ~/.pyiceberg.yaml or PYICEBERG_CATALOG__<NAME>__* variables
        kind, name = None, catalog
    if warehouse:
        props["warehouse"] = _absolute_local(warehouse)
    # fsspec (s3fs) for the table's files, as for every other file of the output: the same endpoints and
    # credentials, and S3-compatible stores whose multipart uploads pyarrow's own S3 client mis-reads
    props.setdefault("py-io-impl", "pyiceberg.io.fsspec.FsspecFileIO")
    props.update({k: str(v) for k, v in spec.catalog_properties.items()})
    try:
        return _load(name, **({"type": kind} if kind else {}), **props)
    except ModuleNotFoundError as e:
        extra = {"glue": "glue", "rest": "", "sql": "sql-sqlite"}.get(kind or "", "")
        hint = f" (pip install 'pyiceberg[{extra}]')" if extra else ""
        raise PublishError(f"the Iceberg catalog {catalog!r} needs {e.name}{hint}") from None
    except ValueError as e:
        raise PublishError(
            f"--iceberg {catalog!r}: {e}. Give sqlite:///path/catalog.db, http(s)://REST-catalog, glue[://REGION], "
            "or the name of a catalog in ~/.pyiceberg.yaml"
        ) from None


def _absolute_local(uri: str) -> str:
    if "://" in uri:
        return uri
    return "file://" + os.path.abspath(os.path.expanduser(uri))


def _iceberg_files(tbl) -> dict[str, object]:
    """The current snapshot's data files, by path (``DataFile`` objects: what a delete needs)."""
    from pyiceberg.manifest import DataFileContent, ManifestContent

    snap = tbl.current_snapshot()
    if snap is None:
        return {}
    out = {}
    for manifest in snap.manifests(tbl.io):
        if manifest.content != ManifestContent.DATA:
            continue
        for entry in manifest.fetch_manifest_entry(tbl.io, discard_deleted=True):
            if entry.data_file.content == DataFileContent.DATA:
                out[entry.data_file.file_path] = entry.data_file
    return out


def _publish_iceberg(folder: OutputFolder, parts: list[Part], spec: PublishSpec) -> TablePublish:
    from pyiceberg.exceptions import NoSuchTableError
    from pyiceberg.io.pyarrow import parquet_file_to_data_file
    from pyiceberg.table import TableProperties

    t0 = time.perf_counter()
    ident = table_identifier(spec.table)
    catalog = load_catalog(spec, folder)
    catalog.create_namespace_if_not_exists(ident[:-1])
    try:
        tbl = catalog.load_table(ident)
    except NoSuchTableError:
        tbl = catalog.create_table(
            ident,
            schema=SHARD_SCHEMA,
            properties={
                PROPERTY_OUTPUT: folder.uri,
                "comment": "ntt-batch output: one row per image; instances[].segmentation is COCO compressed RLE",
            },
        )
    current = _iceberg_files(tbl)
    prefix = _prefix(folder)
    ours = {p: df for p, df in current.items() if _is_part_of(p, prefix)}
    by_uri = {p.uri: p for p in parts}
    # a managed file whose size changed is not the file the table registered: replace it
    changed = {u for u, p in by_uri.items() if u in ours and int(ours[u].file_size_in_bytes) != p.size}
    to_add = [p for u, p in by_uri.items() if u not in ours or u in changed]
    to_remove = [df for u, df in ours.items() if u not in by_uri or u in changed]
    res = TablePublish("iceberg", ".".join(ident), tbl.metadata_location, foreign_files=len(current) - len(ours))
    if not to_add and not to_remove:
        snap = tbl.current_snapshot()
        res.up_to_date = True
        res.snapshot = snap.snapshot_id if snap else None
        res.table_rows = int(snap.summary["total-records"]) if snap and snap.summary else 0
        res.seconds = time.perf_counter() - t0
        return res
    props = {
        PROPERTY_OUTPUT: folder.uri,
        "ntt-batch.added-parts": str(len(to_add)),
        "ntt-batch.removed-parts": str(len(to_remove)),
    }
    with tbl.transaction() as tx:
        if tx.table_metadata.name_mapping() is None:  # the part files carry no field ids: map columns by name
            tx.set_properties(
                **{TableProperties.DEFAULT_NAME_MAPPING: tx.table_metadata.schema().name_mapping.model_dump_json()}
            )
        new_files = _map_threads(lambda p: parquet_file_to_data_file(tbl.io, tx.table_metadata, p.uri), to_add)
        update = tx.update_snapshot(snapshot_properties=props)
        with update.overwrite() if to_remove else update.fast_append() as op:
            for df in to_remove:
                op.delete_data_file(df)
            for df in new_files:
                op.append_data_file(df)
    tbl = catalog.load_table(ident)
    snap = tbl.current_snapshot()
    res.location = tbl.metadata_location
    res.added = [p.name for p in to_add]
    res.removed = sorted(df.file_path.rsplit("/", 1)[-1] for df in to_remove)
    res.snapshot = snap.snapshot_id
    res.table_rows = int(snap.summary["total-records"])
    res.seconds = time.perf_counter() - t0
    return res


def _map_threads(fn, items: list) -> list:
    """``[fn(x) for x in items]`` on a few threads (footer reads are I/O bound)."""
    if len(items) < 2:
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(8, len(items))) as pool:
        return list(pool.map(fn, items))


# ----------------------------------------------------------------------------- Delta Lake


def _delta_root(folder: OutputFolder, delta: bool | str) -> tuple[str, str]:
    """(table root URI as delta-rs takes it, the output's path relative to it: "" or "sub/dir/")."""
    if delta is True or delta == folder.uri:
        root_uri = folder.uri
    else:
        root_uri = str(delta).rstrip("/")
        if "://" not in root_uri or root_uri.startswith("file://"):
            root_uri = os.path.abspath(os.path.expanduser(root_uri.removeprefix("file://")))
    root_fs = OutputFolder(root_uri, folder.options)
    same_store = _protocol(root_fs) == _protocol(folder)
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


def _publish_delta(folder: OutputFolder, parts: list[Part], spec: PublishSpec) -> TablePublish:
    from deltalake import DeltaTable
    from deltalake.transaction import CommitProperties, RemoveAction, create_table_with_add_actions

    t0 = time.perf_counter()
    root, rel = _delta_root(folder, spec.delta)
    opts = delta_storage_options(folder.options)
    res = TablePublish("delta", root, root)
    meta = {PROPERTY_OUTPUT: folder.uri}
    if not DeltaTable.is_deltatable(root, storage_options=opts or None):
        adds = _map_threads(lambda p: _add_action(folder, p, rel), parts)
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
        actions += _map_threads(lambda p: _add_action(folder, p, rel), to_add)
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
