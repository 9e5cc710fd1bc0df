"""Publishing to an Iceberg table with pyiceberg: the catalog, the table, one snapshot per publish
(:mod:`ntt_batch.output.publish`)."""

from __future__ import annotations

import logging
import os
import time

from .folder import ICEBERG, OutputFolder
from .shards import SHARD_SCHEMA
from .table_common import (
    EMBEDDED,
    PROPERTY_OUTPUT,
    Part,
    PublishError,
    PublishSpec,
    TablePublish,
    is_part_of,
    map_threads,
    part_prefix,
    s3_settings,
    table_identifier,
)


def iceberg_io_properties(options: dict | None) -> dict[str, str]:
    """pyiceberg FileIO properties (``s3.*``) for fsspec storage options."""
    s = s3_settings(options)
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
        catalog = "sqlite:///" + folder.path(f"{ICEBERG}/catalog.db")
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


def publish_iceberg(folder: OutputFolder, parts: list[Part], spec: PublishSpec) -> TablePublish:
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
    prefix = part_prefix(folder)
    ours = {p: df for p, df in current.items() if is_part_of(p, prefix)}
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
        new_files = map_threads(lambda p: parquet_file_to_data_file(tbl.io, tx.table_metadata, p.uri), to_add)
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
