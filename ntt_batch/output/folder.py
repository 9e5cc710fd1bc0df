"""The output folder of a batch job: one object for its layout, files, metadata and lock.

Layout (any fsspec store: a local folder, ``s3://bucket/prefix``, ...)::

    <out>/part-<run_id>-<seq>.parquet   committed data files, one row per input image (SHARD_SCHEMA)
    <out>/_ntt/run.json                 job fingerprint, config, models, bank hash, attempts, per-part stats
    <out>/_ntt/lock, _ntt/lock.json     the lease: one run at a time (flock locally, conditional writes on S3),
                                        with the holder's lease generation (the fencing token)
    <out>/_ntt/staging/g<gen>-<run_id>/ files the running attempt's workers write (not yet committed; <gen>:
                                        its lease generation, see output.fencing)
    <out>/_ntt/tmp/                     committed files being assembled (not visible to readers)
    <out>/_ntt/commits/<id>.json        commit intents (crash recovery; see output.parts)
    <out>/_ntt/quarantine/              unreadable files moved aside (never deleted)
    <out>/_ntt/retried/                 error rows replaced by ``--retry-errors`` (kept for the record)
    <out>/_ntt/replaced/<id>/           parts being replaced by commit <id>, moved out of the dataset first

Readers (pyarrow.dataset, pandas, DuckDB ``read_parquet('<out>/*.parquet')``, Spark) see only the
committed ``part-*.parquet`` files: everything else is under ``_ntt/``, which they skip by its
``_`` prefix, and a part appears under its final name only when complete (local: rename of a
finished file; object stores: one finished upload or copy).

Atomic metadata writes, the unreadable-file policy (quarantine only what is proven corrupt, never
on a transient read error) live here and nowhere else; the lease lives in ``output.lease``.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import logging
import os
import re
import uuid
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..storage.atomic import atomic_write_bytes
from ..storage.fs import filesystem, is_local
from .crashpoints import crash_point

log = logging.getLogger(__name__)

META = "_ntt"
RUN_JSON = f"{META}/run.json"
STAGING = f"{META}/staging"
TMP = f"{META}/tmp"
COMMITS = f"{META}/commits"
QUARANTINE = f"{META}/quarantine"
RETRIED = f"{META}/retried"
REPLACED = f"{META}/replaced"
LOCK = f"{META}/lock"
LOCK_JSON = f"{META}/lock.json"
TODO = f"{META}/todo"  # an attempt's planned inputs (pipeline.plan)
SHARDS = f"{META}/shards"  # the per-shard census of sharded inputs (pipeline.shard_plan)
ICEBERG = f"{META}/iceberg"  # the embedded Iceberg catalog and warehouse (output.iceberg_table)
LEGACY_RUN_JSON = "run.json"  # layout of ntt-batch 0.1 (run.json beside the shards)
PART_PREFIX = "part-"


def utc_now_iso() -> str:
    """UTC now, ISO 8601 to the second (every timestamp this package records: run.json, the lock, outputs' meta)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def new_run_id() -> str:
    """A sortable, unique attempt id: UTC time + 8 random hex digits (``20261130T215918Z-9cc54f03``)."""
    return f"{_dt.datetime.now(_dt.timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class FileInfo:
    """A file in the output: path (without protocol), base name, size in bytes, version (mtime ns or ETag)."""

    path: str
    name: str
    size: int
    version: str


class CorruptFileError(ValueError):
    """A file's bytes were read completely and do not parse as a valid shard."""


def _info_version(info: dict) -> str:
    for key in ("ETag", "etag", "mtime", "LastModified", "updated", "generation"):
        if info.get(key) is not None:
            v = info[key]
            return str(int(v * 1e9)) if key == "mtime" and isinstance(v, float) else str(v)
    return ""


class OutputFolder:
    """A batch job's output URI. ``options`` are fsspec storage options (credentials, endpoint)."""

    def __init__(self, uri: str, options: dict | None = None):
        self.uri = uri.rstrip("/")
        self.options = dict(options or {})
        self.fs, root = filesystem(self.uri, self.options)
        self.root = root.rstrip("/")
        self.is_local = is_local(self.fs)

    # ------------------------------------------------------------------ paths

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def display(self, path: str) -> str:
        """A path as the user wrote the output URI (for messages)."""
        rel = path[len(self.root) :].lstrip("/") if path.startswith(self.root) else path
        return f"{self.uri}/{rel}" if rel else self.uri

    def staging(self, run_id: str) -> str:
        return self.path(f"{STAGING}/{run_id}")

    def exists(self) -> bool:
        return self.fs.exists(self.root)

    # ------------------------------------------------------------------ listing

    def _ls(self, path: str) -> list[dict]:
        try:
            return self.fs.ls(path, detail=True, refresh=True) if not self.is_local else self.fs.ls(path, detail=True)
        except FileNotFoundError:
            return []
        except TypeError:  # filesystems without `refresh`
            self.fs.invalidate_cache(path)
            return self.fs.ls(path, detail=True)

    def _file_info(self, d: dict) -> FileInfo:
        name = d["name"].rstrip("/")
        return FileInfo(name, name.rsplit("/", 1)[-1], int(d.get("size") or 0), _info_version(d))

    def parts(self) -> list[FileInfo]:
        """Committed data files: ``*.parquet`` directly under the output (not recursive), by name."""
        self.fs.invalidate_cache()
        out = [
            self._file_info(d)
            for d in self._ls(self.root)
            if d.get("type") == "file"
            and d["name"].endswith(".parquet")
            and not d["name"].rsplit("/", 1)[-1].startswith((".", "_"))
        ]
        return sorted(out, key=lambda f: f.name)

    def files_under(self, rel: str, suffix: str = "") -> list[FileInfo]:
        """Files under ``<out>/<rel>`` (recursive), by path."""
        base = self.path(rel)
        self.fs.invalidate_cache()
        if not self.fs.exists(base):
            return []
        found = self.fs.find(base, detail=True)
        return sorted(
            (self._file_info(d) for d in found.values() if d.get("type") == "file" and d["name"].endswith(suffix)),
            key=lambda f: f.path,
        )

    def info(self, path: str) -> FileInfo | None:
        try:
            return self._file_info(self.fs.info(path))
        except FileNotFoundError:
            return None

    # ------------------------------------------------------------------ bytes and JSON

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write a whole file atomically: readers see the old file or the new one, never a part.

        Local: :func:`ntt_batch.storage.atomic.atomic_write_bytes` (temporary name, fsync, rename).
        Object stores: one PUT, which is atomic.
        """
        if self.is_local:
            atomic_write_bytes(path, data)
        else:
            self.fs.pipe_file(path, data)

    def read_bytes(self, path: str) -> bytes:
        with self.fs.open(path, "rb") as f:
            return f.read()

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(self.path(rel), json.dumps(obj, indent=2).encode())

    def read_json(self, rel: str) -> dict | None:
        """A JSON file of the output, or None when absent. A file that exists but does not parse is an error."""
        path = self.path(rel)
        try:
            data = self.read_bytes(path)
        except (FileNotFoundError, NotADirectoryError):  # NotADirectoryError: the "output" is one .parquet file
            return None
        try:
            return json.loads(data)
        except ValueError as e:
            raise ValueError(
                f"{self.display(path)} is not valid JSON ({e}); it is this output's metadata: "
                "restore it or use a new output"
            ) from None

    def read_run(self, *, strict: bool = True) -> dict:
        """``_ntt/run.json`` ({} when the output is new). An 0.1-layout ``run.json`` is read too.

        ``strict=False`` (readers that can do without the record: merge, review): a record that
        cannot be read or parsed gives {} with a warning instead of an error.
        """
        try:
            run = self.read_json(RUN_JSON)
            if run is None:
                run = self.read_json(LEGACY_RUN_JSON) or {}
            return run
        except (OSError, ValueError) as e:
            if strict:
                raise
            log.warning("could not read the run record of %s (%s); continuing without it", self.uri, e)
            return {}

    def has_legacy_run(self) -> bool:
        """Whether the output is in the 0.1 layout (``run.json`` beside the parts, no ``_ntt/run.json``)."""
        return not self.fs.exists(self.path(RUN_JSON)) and self.fs.exists(self.path(LEGACY_RUN_JSON))

    def write_run(self, run: dict) -> None:
        self.write_json(RUN_JSON, run)

    def remove(self, path: str) -> None:
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            pass

    def move(self, src: str, dst: str) -> None:
        """Rename (local: atomic) or copy+delete (object stores: the copy appears whole)."""
        if self.is_local:
            os.makedirs(dst.rsplit("/", 1)[0], exist_ok=True)
            os.replace(src, dst)
        else:
            self.fs.mv(src, dst)

    def rmdir_tree(self, rel: str) -> None:
        path = self.path(rel)
        try:
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass

    def remove_empty_dir(self, rel: str) -> None:
        """Remove ``<out>/<rel>`` if it is an empty folder (local; object stores have no folders)."""
        if self.is_local:
            try:
                os.rmdir(self.path(rel))
            except OSError:
                pass

    # ------------------------------------------------------------------ shard integrity

    def check_shard(self, path: str, *, deep: bool) -> int:
        """Number of rows of a shard, after checking it parses.

        ``deep``: decode every page of every column (with page checksums when the file has them),
        so corrupt data pages are caught, not only a missing footer. Raises
        :class:`CorruptFileError` only when the file is provably corrupt: its bytes were read
        completely into memory and do not decode (bad magic, a broken footer or page, a checksum
        mismatch). A read error (network, permission, throttling, timeout) propagates unchanged,
        so a transient failure never marks a healthy file corrupt.
        """
        try:
            with self.fs.open(path, "rb") as f:
                return _parse_shard(f, deep)
        except FileNotFoundError:
            raise
        except Exception as first:  # a read error or a decode error: tell them apart by reading the bytes first
            data = self.read_bytes(path)  # a read error here is not corruption: it propagates
            try:
                return _parse_shard(pa.BufferReader(data), deep)
            except _DECODE_ERRORS as e:  # the bytes are in memory: any error now is in the bytes themselves
                raise CorruptFileError(f"{self.display(path)}: {type(e).__name__}: {e}") from first

    def quarantine_if_corrupt(self, path: str, *, dry_run: bool = False) -> str | None:
        """The unreadable-file policy, in one place: decode ``path`` completely (:meth:`check_shard`);
        a provably corrupt file is moved to ``_ntt/quarantine/`` (never deleted; with ``dry_run``
        it stays). Returns None for a healthy file, else the quarantine path (``dry_run``: the
        reason). Read and network errors propagate: the run fails (and is retried) instead of
        quarantining a healthy file.
        """
        try:
            self.check_shard(path, deep=True)
        except CorruptFileError as e:
            return str(e) if dry_run else self.quarantine(path, str(e))
        return None

    def quarantine(self, path: str, reason: str) -> str:
        """Move an unreadable file to ``_ntt/quarantine/`` (never deleted); returns the new path."""
        dest = self.path(f"{QUARANTINE}/{path.rsplit('/', 1)[-1]}")
        if self.fs.exists(dest):
            dest = f"{dest}.{uuid.uuid4().hex[:8]}"
        log.warning(
            "%s is unreadable (%s); moved to %s and its images will be processed again",
            self.display(path),
            reason,
            self.display(dest),
        )
        crash_point("quarantine.moving")
        self.move(path, dest)
        crash_point("quarantine.moved")
        return dest

    def remove_stale_temp_files(self) -> list[str]:
        """Remove the temporary files of atomic metadata writes a killed process left under ``_ntt/``
        (``.run.json.<id>.tmp``; local folders only: object stores write in one PUT). Call only while
        holding the lease. Returns the removed paths."""
        if not self.is_local:
            return []
        removed = []
        for dirpath, dirnames, filenames in os.walk(self.path(META)):
            if dirpath == self.path(META):
                dirnames[:] = [d for d in dirnames if d not in ("staging", "todo")]  # workers' files, not ours
            for name in filenames:
                if _ATOMIC_TMP.match(name):
                    self.remove(os.path.join(dirpath, name))
                    removed.append(os.path.join(dirpath, name))
        return removed

    def pyarrow_fs(self):
        """(pyarrow filesystem, root) over this fsspec filesystem (Ray Data's readers and writers take it)."""
        import pyarrow.fs as pafs

        return pafs.PyFileSystem(pafs.FSSpecHandler(self.fs)), self.root


_ATOMIC_TMP = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")  # io.atomic's temporary names

# What decoding Parquet bytes held in memory raises on bad bytes: ArrowInvalid (a ValueError: bad magic,
# broken footer or thrift), OSError (pyarrow's checksum mismatch), EOFError/IndexError (truncated data).
_DECODE_ERRORS = (pa.ArrowException, ValueError, OSError, EOFError, IndexError)


def _parse_shard(source, deep: bool) -> int:
    with pq.ParquetFile(source, page_checksum_verification=deep) as pf:  # closed here, not by a later GC
        if deep:
            for i in range(pf.num_row_groups):
                pf.read_row_group(i)
        return pf.metadata.num_rows


def table_bytes(table: pa.Table, **kwargs) -> bytes:
    """A table as Parquet bytes (small metadata side files)."""
    sink = io.BytesIO()
    pq.write_table(table, sink, **kwargs)
    return sink.getvalue()
