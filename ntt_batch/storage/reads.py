"""Reading objects fast: many whole-object reads in flight at once, and one-request streams for shards.

* :func:`read_object`: one object's bytes in one request (``cat_file``: a single GET on S3, where
  ``open`` + ``read`` costs a HEAD and a GET).
* :func:`read_many`: the objects of a batch read by a bounded thread pool and handed back as they
  arrive (their index in the batch with the bytes or the exception), so a decode task waits for the
  slowest object instead of for the sum of first-byte latencies. At most ``concurrency`` reads are
  in flight, and a new one starts only while the in-flight reads, each counted at the largest size
  seen so far (at least 256 kB), stay under ``buffer_bytes``; one read is always allowed, so an
  object over the cap is read alone. (Object sizes are not known before they are read: a batch
  whose objects grow past the largest seen can exceed the cap by that growth, once.)
* :func:`open_stream`: a shard as a forward-only file object. On S3 it is the body of one GET
  (no HEAD, no range requests), read in chunks as the consumer asks for them: a 1,000-image tar is
  one request and holds one chunk in memory at a time. Elsewhere a buffered fsspec file.

Thread safety: fsspec's async filesystems (s3fs) are called from the pool's threads through their
own event loop, which multiplexes the requests.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from .fs import filesystem, is_local

DEFAULT_READ_CONCURRENCY = 16
DEFAULT_READ_BUFFER_MB = 64
_INITIAL_SIZE_GUESS = 256 << 10  # the least an object is counted at (a typical JPEG is smaller)


def read_object(uri: str, options: dict[str, Any] | None = None) -> bytes:
    """The bytes of one object, in one request where the store allows it (S3: one GET)."""
    fs, path = filesystem(uri, options)
    if is_local(fs):
        with open(path, "rb") as f:
            return f.read()
    if _is_s3(fs):
        return fs.cat_file(path, max_concurrency=1)  # s3fs ≥ 2025: >1 first asks the size (a HEAD)
    return fs.cat_file(path)


def _is_s3(fs) -> bool:
    return type(fs).__name__ == "S3FileSystem" and hasattr(fs, "_call_s3")


def read_many(
    uris: Sequence[str],
    options: dict[str, Any] | None = None,
    *,
    concurrency: int = DEFAULT_READ_CONCURRENCY,
    buffer_bytes: int = DEFAULT_READ_BUFFER_MB << 20,
) -> Iterator[tuple[int, bytes | BaseException]]:
    """``(index, bytes)`` or ``(index, exception)`` for every URI, in the order the reads finish.

    A failed read is yielded as its exception (never raised): one missing object costs only its
    own row. Memory: see the module docstring (``buffer_bytes`` bounds the bytes in flight).
    """
    n = len(uris)
    if n == 0:
        return
    concurrency = max(1, int(concurrency))
    if concurrency == 1 or n == 1:
        for i, uri in enumerate(uris):
            try:
                yield i, read_object(str(uri), options)
            except Exception as e:  # noqa: BLE001 - handed to the caller as this object's error
                yield i, e
        return
    largest = _INITIAL_SIZE_GUESS
    next_i = 0
    running: dict[Future, int] = {}
    with ThreadPoolExecutor(max_workers=min(concurrency, n), thread_name_prefix="ntt-read") as pool:
        try:
            while next_i < n or running:
                while (
                    next_i < n
                    and len(running) < concurrency
                    and (not running or (len(running) + 1) * largest <= buffer_bytes)
                ):
                    running[pool.submit(read_object, str(uris[next_i]), options)] = next_i
                    next_i += 1
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    i = running.pop(fut)
                    try:
                        data = fut.result()
                    except Exception as e:  # noqa: BLE001 - handed to the caller as this object's error
                        yield i, e
                        continue
                    largest = max(largest, len(data))
                    yield i, data
                    del data
        finally:  # the consumer stopped early: do not start more, let the running ones finish
            for fut in running:
                fut.cancel()


class _S3BodyStream(io.RawIOBase):
    """The body of one S3 GetObject as a blocking, forward-only raw stream (s3fs's event loop underneath)."""

    def __init__(self, fs, body, size: int | None):
        self._fs, self._body, self.size = fs, body, size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        from fsspec.asyn import sync

        chunk = sync(self._fs.loop, self._body.read, len(b))
        n = len(chunk)
        b[:n] = chunk
        self._pos += n
        return n

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        if not self.closed:
            try:
                self._body.close()
            finally:
                super().close()


def open_stream(uri: str, options: dict[str, Any] | None = None, *, buffer_bytes: int = 4 << 20):
    """A shard opened for one forward pass (module docstring); use as a context manager.

    Raises FileNotFoundError (and the store's other errors) when the object cannot be opened.
    """
    fs, path = filesystem(uri, options)
    if is_local(fs):
        return open(path, "rb", buffering=buffer_bytes)
    if _is_s3(fs):
        from fsspec.asyn import sync

        bucket, key, version = fs.split_path(path)
        kw = {"Bucket": bucket, "Key": key, **({"VersionId": version} if version else {})}
        resp = sync(fs.loop, fs._call_s3, "get_object", **kw)  # s3fs turns a missing key into FileNotFoundError
        raw = _S3BodyStream(fs, resp["Body"], resp.get("ContentLength"))
        return io.BufferedReader(raw, buffer_size=buffer_bytes)
    return fs.open(path, "rb", block_size=max(buffer_bytes, 32 << 20), cache_type="readahead")
