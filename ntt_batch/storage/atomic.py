"""Atomic writes of local files: a reader sees the old file or the new one, never a part of one.

The one implementation for every layer (standard library only, so ``method/`` and ``models/``
may use it too): the bytes go to a hidden temporary name in the target's folder, are flushed
and fsynced, and the file is renamed into place with ``os.replace`` (atomic within a file
system); on any failure the temporary file is removed and the target is left as it was.
Temporary files get the mode the umask gives (like ``open``), not ``mkstemp``'s 0600, and
:func:`make_unique_dir` is ``mkdtemp`` with the umask's mode instead of 0700: what is renamed into
place stays readable by whoever the umask lets read it (teammates, with the usual 022 or 002).

Object stores have no rename: :meth:`ntt_batch.output.folder.OutputFolder.write_bytes` (one
PUT) and :class:`ntt_batch.output.reader.AtomicFile` (one upload, built on :class:`AtomicLocalFile`
for local targets) cover them.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

from .fs import filesystem, is_local


class AtomicLocalFile:
    """A temporary file beside ``path`` (``file``, open for writing) that becomes ``path`` on
    :meth:`commit` and vanishes on :meth:`abort`.

    ``mode``: ``"wb"`` (binary) or ``"w"`` (text; ``encoding`` default UTF-8). The parent folder
    is created if missing.
    """

    def __init__(self, path: str | os.PathLike, mode: str = "wb", *, encoding: str | None = None) -> None:
        if mode not in ("wb", "w"):
            raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
        self.path = os.fspath(path)
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        self.tmp = os.path.join(parent, f".{os.path.basename(self.path)}.{uuid.uuid4().hex[:8]}.tmp")
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            self.file: IO = os.fdopen(fd, mode, encoding=(encoding or "utf-8") if mode == "w" else None)
        except BaseException:
            os.close(fd)
            self._remove()
            raise

    def commit(self) -> None:
        """Flush, fsync and close the file, then rename it to ``path``."""
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Close and delete the temporary file; ``path`` is left as it was."""
        try:
            self.file.close()
        finally:
            self._remove()

    def _remove(self) -> None:
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


@contextmanager
def commit_on_success(target) -> Iterator[IO]:
    """Yield ``target.file``; then ``target.commit()`` when the block succeeds, ``target.abort()`` when it
    raises (``target``: an :class:`AtomicLocalFile`, or :class:`ntt_batch.output.reader.AtomicFile`)."""
    try:
        yield target.file
    except BaseException:
        target.abort()
        raise
    target.commit()


def atomic_local_file(path: str | os.PathLike, mode: str = "wb", *, encoding: str | None = None):
    """Context manager: a temporary file that replaces ``path`` when the block succeeds (:class:`AtomicLocalFile`).

    An exception in the block removes the temporary file and propagates.
    """
    return commit_on_success(AtomicLocalFile(path, mode, encoding=encoding))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to the local file ``path`` atomically (module docstring)."""
    with atomic_local_file(path, "wb") as f:
        f.write(data)


def make_unique_dir(parent: str | os.PathLike, prefix: str = "", suffix: str = "") -> str:
    """A new folder ``<parent>/<prefix><random><suffix>``, mode ``0o777 & ~umask``; returns its path.

    Like ``tempfile.mkdtemp`` (never an existing folder), but not 0700: meant for folders that are
    renamed into place when complete (an export built under a temporary name).
    """
    for _ in range(100):
        path = os.path.join(os.fspath(parent), f"{prefix}{uuid.uuid4().hex[:12]}{suffix}")
        try:
            os.mkdir(path, 0o777)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"could not create a new folder in {os.fspath(parent)!r}")


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to the local file ``path`` atomically (module docstring)."""
    with atomic_local_file(path, "w", encoding=encoding) as f:
        f.write(text)


__all__ = [
    "AtomicLocalFile",
    "atomic_local_file",
    "atomic_write_bytes",
    "atomic_write_text",
    "commit_on_success",
    "make_unique_dir",
]


class AtomicFile:
    """A temporary local file that becomes ``out`` on :meth:`commit` and vanishes on :meth:`abort`.

    Local ``out``: :class:`~ntt_batch.storage.atomic.AtomicLocalFile` (a hidden temporary file in the
    same folder, then ``os.replace``). Object stores: a local temporary file, then one upload (an
    object appears whole or not at all). ``file`` is the open text (or binary, ``mode="wb"``) file
    to write to.
    """

    def __init__(self, out: str, options: dict | None = None, *, mode: str = "w") -> None:
        fs, path = filesystem(out, options)
        self.fs, self.path, self.local = fs, path, is_local(fs)
        self._local: AtomicLocalFile | None = None
        self.tmp: str | None = None
        if self.local:
            parent = os.path.dirname(os.path.abspath(path)) or "."
            if not os.path.isdir(parent):
                raise FileNotFoundError(f"output folder {parent!r} does not exist: create it first")
            self._local = AtomicLocalFile(path, mode)
            self.file = self._local.file
            return
        fd, self.tmp = tempfile.mkstemp(prefix="ntt-export-", suffix=".tmp")
        try:
            self.file = os.fdopen(fd, mode, encoding="utf-8" if "b" not in mode else None)
        except BaseException:
            os.close(fd)
            self._remove()
            raise

    def commit(self) -> None:
        """Close the file and move it to ``out``."""
        if self._local is not None:
            self._local.commit()
            return
        try:
            self.file.close()
            self.fs.put_file(self.tmp, self.path)
        finally:
            self._remove()

    def abort(self) -> None:
        """Close and delete the temporary file; ``out`` is left as it was."""
        if self._local is not None:
            self._local.abort()
            return
        try:
            self.file.close()
        finally:
            self._remove()

    def _remove(self) -> None:
        if self.tmp and os.path.exists(self.tmp):
            os.remove(self.tmp)


def atomic_output(out: str, options: dict | None = None, *, mode: str = "w"):
    """Context manager: a temporary local file that becomes ``out`` only when the block succeeds.

    See :class:`AtomicFile`."""
    return commit_on_success(AtomicFile(out, options, mode=mode))
