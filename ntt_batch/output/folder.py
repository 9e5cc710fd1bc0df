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
on a transient read error) and the lease live here and nowhere else.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..storage.atomic import atomic_write_bytes
from ..storage.fs import filesystem, is_local
from .crashpoints import crash_point
from .fencing import LeaseLostError, RunFence, lease_generation

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


class LeaseHeldError(RuntimeError):
    """Another run holds the output's lease."""


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

    # ------------------------------------------------------------------ lease

    def lease(self, holder: dict, ttl_s: float = 120.0) -> Lease:
        return Lease(self, holder, ttl_s)

    def lock_status(self) -> tuple[dict | None, str | None]:
        """(``_ntt/lock.json`` or None, why that lock is stale or None when its run may hold it).

        Stale: on a local folder, its pid is not running on this host (the flock died with it); on an
        object store, its ``expires_at`` has passed. Either way the next run takes it over.
        """
        try:
            lock = self.read_json(LOCK_JSON)
        except ValueError:
            lock = {}
        if lock is None:
            return None, None
        if self.is_local:
            pid = lock.get("pid")
            if lock.get("host") == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid):
                return lock, f"pid {pid} is not running on this host"
            return lock, None
        expires = _parse_time(lock.get("expires_at"))
        if expires is not None and expires <= _dt.datetime.now(_dt.timezone.utc):
            return lock, f"it expired at {expires.isoformat(timespec='seconds')}"
        return lock, None

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


class Lease:
    """Exclusive right to write an output folder, for one run.

    Local folders: an advisory ``flock`` on ``_ntt/lock``, released by the kernel when the process
    dies (so a SIGKILLed run never blocks the next one); ``_ntt/lock.json`` says who holds it. A
    local lease cannot be taken over while its holder lives (a frozen holder keeps the flock).

    Object stores (S3 and S3-compatible): ``_ntt/lock.json`` created with a conditional write
    (``If-None-Match: *``), renewed by a background thread every ``ttl_s / 4`` with
    ``If-Match: <ETag>``; a lock whose ``expires_at`` has passed (the holder died) is taken over
    with ``If-Match`` on the expired version, so of two runs taking it over only one succeeds. A
    holder that fails to renew marks the lease lost; :meth:`check` (before every step of a commit)
    also renews on the spot when the last confirmed renewal is older than ``ttl_s / 2``, so a
    holder that was frozen past its expiry learns it lost the lease before it writes anything.

    Each acquisition gets a **generation** one above every generation recorded before (the lock's,
    run.json's); the holder's run.json writes go through :attr:`fence` and are refused once a later
    generation wrote (``output.fencing``).
    """

    def __init__(self, folder: OutputFolder, holder: dict, ttl_s: float):
        self.folder = folder
        self.holder = {**holder, "lease_id": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid()}
        self.ttl_s = float(ttl_s)
        self.generation = 0
        self.fence: RunFence | None = None
        self._fd: int | None = None
        self._etag: str | None = None
        self._lost: str | None = None
        self._confirmed = 0.0  # time.monotonic() when the last confirmed renewal was sent
        self._put_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------- public

    def acquire(self) -> Lease:
        if self.folder.is_local:
            self._acquire_local()
        else:
            self._acquire_remote()
        self.fence = RunFence(
            self.folder,
            self.folder.path(RUN_JSON),
            self.generation,
            str(self.holder.get("run_id")),
            conditional=not self.folder.is_local and _supports_conditional_writes(self.folder.fs),
        )
        return self

    @property
    def lost(self) -> bool:
        return self._lost is not None

    def check(self) -> None:
        """Raise :class:`LeaseLostError` if the lease was lost (remote stores: renewing first when it is due)."""
        if self._lost:
            raise LeaseLostError(self._lost)
        if not self.folder.is_local and self._thread is not None:
            if time.monotonic() - self._confirmed > self.ttl_s / 2:
                self._renew()
            if self._lost:
                raise LeaseLostError(self._lost)

    def read_run(self) -> dict:
        """run.json as this holder's base ({} when new); its version is remembered for fenced writes."""
        return self.fence.read()

    def write_run(self, run: dict) -> None:
        """Write run.json, fenced: refused (:class:`LeaseLostError`) once the lease is lost or a later holder wrote."""
        self.check()
        try:
            self.fence.write(run)
        except LeaseLostError as e:
            self._lost = self._lost or str(e)
            raise

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        if self.folder.is_local:
            if self._fd is not None:
                import fcntl

                try:
                    self.folder.remove(self.folder.path(LOCK_JSON))
                finally:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
                    os.close(self._fd)
                    self._fd = None
        elif self._etag and not self._lost:
            current = self._read_remote()
            if current and current[0].get("lease_id") == self.holder["lease_id"]:
                self.folder.remove(self.folder.path(LOCK_JSON))

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _recorded_generation(self) -> int:
        return lease_generation(self.folder.read_run(strict=False))

    # -------------------------------------------------------------- local

    def _acquire_local(self) -> None:
        import fcntl

        os.makedirs(self.folder.path(META), exist_ok=True)
        fd = os.open(self.folder.path(LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            other = self.folder.read_json(LOCK_JSON) or {}
            raise LeaseHeldError(_held_message(self.folder, other, None)) from None
        self._fd = fd
        try:
            stale = self.folder.read_json(LOCK_JSON) or {}  # a killed holder's
        except ValueError:
            stale = {}
        self.generation = max(_int(stale.get("generation")), self._recorded_generation()) + 1
        self.holder["generation"] = self.generation
        self.folder.write_json(LOCK_JSON, {**self.holder, "acquired_at": utc_now_iso()})

    # -------------------------------------------------------------- remote

    def _body(self) -> bytes:
        expires = _dt.datetime.now(_dt.timezone.utc) + _dt.timedelta(seconds=self.ttl_s)
        return json.dumps(
            {
                **self.holder,
                "ttl_s": self.ttl_s,
                "renewed_at": utc_now_iso(),
                "expires_at": expires.isoformat(timespec="milliseconds"),
            }
        ).encode()

    def _read_remote(self) -> tuple[dict, str] | None:
        path = self.folder.path(LOCK_JSON)
        try:
            self.folder.fs.invalidate_cache(path)
            info = self.folder.fs.info(path)
            data = json.loads(self.folder.read_bytes(path))
        except FileNotFoundError:
            return None
        except ValueError:
            data = {}
        return data, str(info.get("ETag") or "")

    def _put(self, **conditions) -> str:
        out = self.folder.fs.pipe_file(self.folder.path(LOCK_JSON), self._body(), **conditions)
        etag = (out or {}).get("ETag") if isinstance(out, dict) else None
        if not etag:
            etag = str(self.folder.fs.info(self.folder.path(LOCK_JSON)).get("ETag") or "")
        return etag

    def _acquire_remote(self) -> None:
        if not _supports_conditional_writes(self.folder.fs):
            log.warning(
                "%s: this object store has no conditional writes here; the lock is best-effort "
                "(do not start two runs on one output)",
                self.folder.uri,
            )
        recorded = self._recorded_generation()
        for _ in range(3):
            self.generation = recorded + 1
            self.holder["generation"] = self.generation
            sent = time.monotonic()
            try:
                self._etag = self._put(mode="create")
                self._confirmed = sent
                break
            except FileExistsError:
                pass
            current = self._read_remote()
            if current is None:
                continue  # released between our attempts: try to create again
            data, etag = current
            expires = _parse_time(data.get("expires_at"))
            if expires is not None and expires > _dt.datetime.now(_dt.timezone.utc):
                raise LeaseHeldError(_held_message(self.folder, data, expires))
            self.generation = max(recorded, _int(data.get("generation"))) + 1
            self.holder["generation"] = self.generation
            sent = time.monotonic()
            try:  # expired (or unreadable): take it over, only if nobody else did in the meantime
                self._etag = self._put(IfMatch=etag)
                self._confirmed = sent
                log.warning(
                    "%s: took over an expired lock of run %s (host %s); lease generation %d",
                    self.folder.uri,
                    data.get("run_id"),
                    data.get("host"),
                    self.generation,
                )
                break
            except OSError:
                continue
        else:
            current = self._read_remote() or ({}, "")
            raise LeaseHeldError(_held_message(self.folder, current[0], _parse_time(current[0].get("expires_at"))))
        self._thread = threading.Thread(target=self._renew_loop, name="ntt-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        """One renewal (``If-Match`` on our last version); marks the lease lost when another run holds it."""
        with self._put_lock:
            if self._lost:
                return
            sent = time.monotonic()
            try:
                self._etag = self._put(IfMatch=self._etag)
                self._confirmed = sent
                return
            except Exception as e:  # 412: someone took it over; anything else: retry until it expires
                current = self._read_remote()
                if current is None or current[0].get("lease_id") != self.holder["lease_id"]:
                    self._lost = self._lost_message(current)
                    log.error(self._lost)
                    return
                if current[1] != self._etag:  # our write landed but its answer was lost
                    self._etag, self._confirmed = current[1], sent
                    return
                if time.monotonic() - self._confirmed > self.ttl_s:
                    self._lost = (
                        f"the lock on {self.folder.uri} could not be renewed before it expired ({e}); "
                        f"this run ({self.holder.get('run_id')}) stops writing"
                    )
                    log.error(self._lost)
                    return
                log.warning("renewing the lock on %s failed (%s); retrying", self.folder.uri, e)

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            self._renew()
            if self._lost:
                return

    def _lost_message(self, current: tuple[dict, str] | None) -> str:
        """Who holds the output now: the lock's holder, else the run that wrote run.json with a later generation."""
        who, gen = None, None
        if current is not None and current[0].get("lease_id") != self.holder["lease_id"]:
            who, gen = current[0].get("run_id"), current[0].get("generation")
        if not who:
            run = self.folder.read_run(strict=False)
            if lease_generation(run) > self.generation:
                who, gen = (run.get("lease") or {}).get("run_id"), lease_generation(run)
        holder = f"{who}, lease generation {gen}" if who else "unknown: no lock, and run.json names no later run"
        return (
            f"the lock on {self.folder.uri} was taken over by another run ({holder}); this run "
            f"({self.holder.get('run_id')}, lease generation {self.generation}) lost it and stops writing"
        )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _int(value) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _supports_conditional_writes(fs) -> bool:
    return type(fs).__name__ == "S3FileSystem"


def _parse_time(text: str | None) -> _dt.datetime | None:
    try:
        return _dt.datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def _held_message(folder: OutputFolder, holder: dict, expires: _dt.datetime | None) -> str:
    who = (
        f"run {holder.get('run_id', '?')} (host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, "
        f"since {holder.get('acquired_at') or holder.get('renewed_at') or '?'})"
    )
    if expires is not None:
        left = max(0, int((expires - _dt.datetime.now(_dt.timezone.utc)).total_seconds()))
        tail = (
            f"If that run is dead, its lock expires at {expires.isoformat(timespec='seconds')} "
            f"(in {left} s): rerun after then."
        )
    else:
        tail = "Wait for it to finish (or stop it), then rerun; a dead run's lock is released with its process."
    return f"output {folder.uri} is being written by another {who}; two runs on one output are not allowed. {tail}"


def table_bytes(table: pa.Table, **kwargs) -> bytes:
    """A table as Parquet bytes (small metadata side files)."""
    sink = io.BytesIO()
    pq.write_table(table, sink, **kwargs)
    return sink.getvalue()
