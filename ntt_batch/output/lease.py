"""The lease on an output folder: one run at a time (flock locally, conditional writes on object stores).

``_ntt/lock`` and ``_ntt/lock.json`` (layout: ``output.folder``); each acquisition gets a lease
generation, the fencing token of ``output.fencing``.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import socket
import threading
import time
import uuid

from .fencing import LeaseLostError, RunFence, lease_generation
from .folder import LOCK, LOCK_JSON, META, RUN_JSON, OutputFolder, utc_now_iso

log = logging.getLogger(__name__)


class LeaseHeldError(RuntimeError):
    """Another run holds the output's lease."""


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

    def __init__(self, folder: OutputFolder, holder: dict, ttl_s: float = 120.0):
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
            expires = parse_time(data.get("expires_at"))
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
            raise LeaseHeldError(_held_message(self.folder, current[0], parse_time(current[0].get("expires_at"))))
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


def lock_status(folder: OutputFolder) -> tuple[dict | None, str | None]:
    """(``_ntt/lock.json`` or None, why that lock is stale or None when its run may hold it).

    Stale: on a local folder, its pid is not running on this host (the flock died with it); on an
    object store, its ``expires_at`` has passed. Either way the next run takes it over.
    """
    try:
        lock = folder.read_json(LOCK_JSON)
    except ValueError:
        lock = {}
    if lock is None:
        return None, None
    if folder.is_local:
        pid = lock.get("pid")
        if lock.get("host") == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid):
            return lock, f"pid {pid} is not running on this host"
        return lock, None
    expires = parse_time(lock.get("expires_at"))
    if expires is not None and expires <= _dt.datetime.now(_dt.timezone.utc):
        return lock, f"it expired at {expires.isoformat(timespec='seconds')}"
    return lock, None


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


def parse_time(text: str | None) -> _dt.datetime | None:
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
