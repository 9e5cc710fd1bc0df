"""Checksums of committed part files: sha256 of the whole file's bytes, recorded in run.json.

The hash is computed while the part is written (:class:`HashingWriter` sits between the Parquet
writer and the file), so committing costs no extra read; publishing moves the bytes unchanged
(local rename, object-store copy), so the record holds for the final file. Checked by
:func:`file_sha256` where reading the file again is worth it: on resume for a part whose size or
mtime/ETag no longer match the record (a byte-identical copy is then trusted again without a full
decode), and for every part by ``ntt-batch verify --check full`` (bit rot that leaves size and
mtime alone). Records written before checksums existed have none and are checked as before.
"""

from __future__ import annotations

import hashlib
from typing import IO

CHUNK = 8 << 20


class HashingWriter:
    """A binary file opened for writing, wrapped so every byte written also updates a sha256.

    Only sequential writes (Parquet writers never seek back). ``hexdigest()`` after ``close()``.
    """

    def __init__(self, raw: IO[bytes]):
        self.raw = raw
        self._sha = hashlib.sha256()
        self._pos = 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self._sha.update(view)
        self.raw.write(view)
        self._pos += view.nbytes
        return view.nbytes

    def tell(self) -> int:
        return self._pos

    def flush(self) -> None:
        self.raw.flush()

    def close(self) -> None:
        self.raw.close()

    @property
    def closed(self) -> bool:
        return self.raw.closed

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def file_sha256(fs, path: str) -> str:
    """sha256 (hex) of a file's bytes, read in 8 MiB chunks (``fs``: an fsspec filesystem)."""
    sha = hashlib.sha256()
    with fs.open(path, "rb") as f:
        while True:
            chunk = f.read(CHUNK)
            if not chunk:
                break
            sha.update(chunk)
    return sha.hexdigest()


__all__ = ["HashingWriter", "file_sha256"]
