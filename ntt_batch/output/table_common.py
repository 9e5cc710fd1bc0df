"""What publishing to Iceberg and Delta shares: the target spec, the committed parts, paths and credentials
(the entry point and the protocol: :mod:`ntt_batch.output.publish`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .folder import COMMITS, OutputFolder

EMBEDDED = "embedded"  # --iceberg without a value: the embedded SQLite catalog under <out>/_ntt/iceberg/


PROPERTY_OUTPUT = "ntt-batch.output"  # table property / snapshot property: the output a table publishes


class PublishError(ValueError):
    """The output cannot be published as it is, or the target is not usable; the message says what to do."""


def table_identifier(table: str) -> tuple[str, ...]:
    """``"ns.name"`` / ``"a.b.name"`` → ("ns", "name") / ("a", "b", "name")."""
    parts = tuple(str(table).split("."))
    if len(parts) < 2 or not all(parts):
        raise PublishError(f"table: {table!r} is not NAMESPACE.NAME (e.g. labels.coco_masks)")
    return parts


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
    protocol = url_protocol(folder)
    out = []
    for name in sorted(recorded):
        info = listed[name]
        out.append(
            Part(name, info.path, file_uri(protocol, info.path), int(info.size), int(recorded[name].get("rows", 0)))
        )
    return out


def url_protocol(folder: OutputFolder) -> str:
    if folder.is_local:
        return "file"
    proto = folder.fs.protocol
    proto = proto[0] if isinstance(proto, (list, tuple)) else proto
    return {"s3a": "s3"}.get(proto, proto)


def file_uri(protocol: str, path: str) -> str:
    return f"file://{path}" if protocol == "file" else f"{protocol}://{path}"


def part_prefix(folder: OutputFolder) -> str:
    """URI prefix of this output's part files (what the table lists for them)."""
    return file_uri(url_protocol(folder), folder.root) + "/"


def is_part_of(path: str, prefix: str) -> bool:
    """Whether a table file path is a file directly under this output (not under a sub-folder)."""
    if path.startswith("/") and prefix.startswith("file://"):
        path = "file://" + path
    return path.startswith(prefix) and "/" not in path[len(prefix) :]


def s3_settings(options: dict | None) -> dict:
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


def map_threads(fn, items: list) -> list:
    """``[fn(x) for x in items]`` on a few threads (footer reads are I/O bound)."""
    if len(items) < 2:
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(8, len(items))) as pool:
        return list(pool.map(fn, items))
