"""Fencing: a run that lost the output's lease can no longer change it.

A lease (``output.lease.Lease``) can be lost while its holder still runs: on S3 a holder that
was frozen (SIGSTOP, a VM pause, a long GC) past ``expires_at`` finds, when it wakes, that another
run took the lock over. Checking the lease before each step is not enough (the holder can freeze
right after a check), so every write a holder makes to the output's metadata carries its **lease
generation** (the fencing token) and is refused once a later generation is recorded:

* The generation is one more than the highest recorded anywhere (the lock being taken over, and
  ``run.json``'s ``lease.generation``), fixed when the lease is taken, written into ``_ntt/lock.json``.
* Every ``run.json`` write by a holder (:class:`RunFence`) is conditional on the version it last
  read or wrote: ``If-Match: <ETag>`` on S3 (``If-None-Match: *`` for a new record), a compare of
  (inode, mtime, size) under the flock on local disks, a read-compare elsewhere. A refused write
  raises :class:`LeaseLostError` naming the run that holds the output now; a stale driver's
  ``finally`` therefore cannot rewrite the record.
* Staged files carry the generation in their folder name (``_ntt/staging/g<generation>-<run_id>/``,
  :func:`staging_name`). The Ray workers write them through :class:`FencedFSHandler`, which opens a
  file only while ``_ntt/lock.json`` still names the writer's generation. The next holder commits
  the staged files of earlier generations once, when it starts, then records
  ``staging_accepted_from`` = its own generation: files of an older generation that appear later
  were written by a run that had lost the lease, and are never committed (they are removed).

The remaining window: a holder frozen between a lease check and a file move (publishing a part, or
moving one aside). The commit protocol (``output.parts``) makes every such move idempotent and of one
direction only, so the new holder's recovery and the stale holder's move cannot show an image twice.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re

import pyarrow.fs as pafs

log = logging.getLogger(__name__)

_STAGING_NAME = re.compile(r"^g(\d+)-")


class LeaseLostError(RuntimeError):
    """This run's lease expired or was taken over; it must stop writing."""


def lease_generation(run: dict | None) -> int:
    """The lease generation recorded in a run.json dict (0 when none: a new output, or an older version's)."""
    try:
        return int(((run or {}).get("lease") or {}).get("generation") or 0)
    except (TypeError, ValueError):
        return 0


def staging_name(generation: int, run_id: str) -> str:
    """The staging folder name of a run: ``g<generation>-<run_id>`` (its generation is readable from the name)."""
    return f"g{int(generation)}-{run_id}"


def staging_generation(name: str) -> int:
    """The lease generation in a staging folder's name (0 for folders of older versions: ``<run_id>``)."""
    m = _STAGING_NAME.match(name)
    return int(m.group(1)) if m else 0


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class RunFence:
    """The ``run.json`` reads and writes of one lease holder (module docstring).

    ``folder``: the :class:`~ntt_batch.output.folder.OutputFolder`; ``path``: run.json's path in
    it; ``conditional``: the store takes ``If-Match``/``If-None-Match`` on writes (S3).
    """

    def __init__(self, folder, path: str, generation: int, run_id: str, *, conditional: bool):
        self.folder = folder
        self.path = path
        self.generation = int(generation)
        self.run_id = run_id
        self.conditional = conditional
        self._seen: object = None  # version of run.json this holder last read or wrote (None: absent)
        self._read_once = False

    # ---------------------------------------------------------------- versions

    def _version(self):
        """Local: (inode, mtime ns, size); object stores: the ETag (or another version field); None: absent."""
        if self.folder.is_local:
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                return None
            return (st.st_ino, st.st_mtime_ns, st.st_size)
        try:
            self.folder.fs.invalidate_cache(self.path)
            info = self.folder.fs.info(self.path)
        except FileNotFoundError:
            return None
        for key in ("ETag", "etag", "VersionId", "generation", "LastModified", "mtime"):
            if info.get(key) is not None:
                return str(info[key])
        return str(info.get("size"))

    def _read_bytes(self) -> bytes | None:
        try:
            return self.folder.read_bytes(self.path)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _parse(self, data: bytes | None) -> dict:
        if data is None:
            return {}
        try:
            return json.loads(data)
        except ValueError as e:
            raise ValueError(
                f"{self.folder.display(self.path)} is not valid JSON ({e}); it is this output's metadata: "
                "restore it or use a new output"
            ) from None

    def current(self) -> tuple[dict, object]:
        """(run.json as stored now, its version): read between two identical version reads."""
        for _ in range(5):
            before = self._version()
            data = self._read_bytes()
            after = self._version()
            if before == after:
                return self._parse(data), after
        return self._parse(data), after

    # ---------------------------------------------------------------- public

    def read(self) -> dict:
        """run.json ({} when absent), remembering its version; refused if a later generation wrote it."""
        run, version = self.current()
        self._check_generation(run)
        self._seen, self._read_once = version, True
        return run

    def write(self, run: dict) -> None:
        """Write ``run`` (with ``lease`` set to this holder's generation) unless another holder wrote since."""
        run["lease"] = {"generation": self.generation, "run_id": self.run_id, "written_at": _now()}
        data = json.dumps(run, indent=2).encode()
        if not self._read_once:
            self.read()
        if self.conditional:
            self._write_conditional(data)
            return
        version = self._version()
        if version != self._seen:  # someone else wrote run.json: a later holder refuses us, anything else is kept
            other, version = self.current()
            self._check_generation(other)
            log.warning(
                "%s changed since this run last wrote it (not by a later lease holder); writing it again",
                self.folder.display(self.path),
            )
        self.folder.write_bytes(self.path, data)
        self._seen = self._version()

    # ---------------------------------------------------------------- internals

    def _write_conditional(self, data: bytes) -> None:
        cond = {"IfMatch": self._seen} if self._seen is not None else {"mode": "create"}
        try:
            out = self.folder.fs.pipe_file(self.path, data, **cond)
        except Exception as e:  # 412 / FileExistsError when another writer came between; else a store error
            other, version = self.current()
            if version == self._seen:
                raise  # nobody else wrote: an ordinary store error, not a lost lease
            self._check_generation(other)
            raise LeaseLostError(
                f"{self.folder.display(self.path)} was written by someone else since run {self.run_id} "
                f"(lease generation {self.generation}) read it (now written by "
                f"{(other.get('lease') or {}).get('run_id') or 'an unfenced writer'}); this run stops writing"
            ) from e
        etag = out.get("ETag") if isinstance(out, dict) else None
        self._seen = str(etag) if etag else self._version()

    def _check_generation(self, run: dict) -> None:
        g = lease_generation(run)
        if g > self.generation:
            holder = (run.get("lease") or {}).get("run_id") or "?"
            raise LeaseLostError(
                f"the lease on {self.folder.uri} was taken over by another run ({holder}, lease generation {g}); "
                f"this run ({self.run_id}, lease generation {self.generation}) lost it and stops writing"
            )


class FencedFSHandler(pafs.FSSpecHandler):
    """The pyarrow filesystem Ray workers write staged files through (``pafs.PyFileSystem(handler)``).

    Opening a file for writing first reads ``lock_path`` (``_ntt/lock.json``, a few hundred bytes)
    and refuses with :class:`LeaseLostError` unless it still names ``generation``: once another run
    holds the output, the workers of a run that lost it cannot stage anything more. Picklable (Ray
    ships it to every write task).
    """

    def __init__(self, fs, lock_path: str, generation: int, uri: str):
        super().__init__(fs)
        self.lock_path = lock_path
        self.generation = int(generation)
        self.uri = uri

    def check(self) -> None:
        try:
            lock = json.loads(self.fs.cat_file(self.lock_path))
        except FileNotFoundError:
            lock = None
        except ValueError:
            lock = {}
        holder_gen = (lock or {}).get("generation")
        if holder_gen != self.generation:
            who = f"run {lock.get('run_id')} (lease generation {holder_gen})" if lock else "no run (lock released)"
            raise LeaseLostError(
                f"{self.uri}: the lease is held by {who}, not by this run's generation {self.generation}: "
                "a run that lost its lease stages nothing more"
            )

    def open_output_stream(self, path, metadata):
        self.check()
        return super().open_output_stream(path, metadata)

    def __eq__(self, other) -> bool:
        return (
            isinstance(other, FencedFSHandler)
            and self.fs == other.fs
            and (self.lock_path, self.generation) == (other.lock_path, other.generation)
        )

    def __ne__(self, other) -> bool:
        return not self == other


__all__ = [
    "FencedFSHandler",
    "LeaseLostError",
    "RunFence",
    "lease_generation",
    "staging_generation",
    "staging_name",
]
