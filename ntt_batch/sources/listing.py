"""Inputs listed from a prefix/folder, a glob, or one file on any fsspec store (``images:``).

Every listed object is an input: there is no silent extension filter (a file that is not an
image gets an ``error`` row). ``extensions`` is an explicit, opt-in filter whose skipped count is
reported. Listing streams: local folders directory by directory, S3 prefixes page by page.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

import fsspec
import pyarrow as pa

from ..storage.fs import filesystem, is_local
from .base import Source, SourceStats, input_batch


class ListingSource(Source):
    """``images``: every object under a prefix/folder, a glob's matches, or one file."""

    keys = {"images": "a prefix/folder/glob or one file (fsspec URI)"}
    uri_keys = ("images",)

    def batches(self, options, *, chunk_rows, stats, extensions=None, exclude_prefix=None) -> Iterator[pa.RecordBatch]:
        return iter_listing(
            self.settings["images"],
            options,
            extensions=extensions,
            exclude_prefix=exclude_prefix,
            chunk_rows=chunk_rows,
            stats=stats,
        )


def _walk_s3(fs, path: str) -> Iterator[str]:
    """Every object under an S3 prefix, one ListObjectsV2 page (≤ 1000 keys) at a time, in key order.

    s3fs's ``find``/``walk`` collect a whole prefix before returning; this never holds more than a page.
    """
    from fsspec.asyn import sync

    bucket, key, _ = fs.split_path(path)
    kwargs = {"Bucket": bucket, "Prefix": f"{key.rstrip('/')}/" if key else "", **getattr(fs, "req_kw", {})}
    while True:
        page = sync(fs.loop, fs._call_s3, "list_objects_v2", **kwargs)
        for obj in page.get("Contents", []):
            if not obj["Key"].endswith("/"):  # folder markers are not objects
                yield f"{bucket}/{obj['Key']}"
        if not page.get("IsTruncated"):
            return
        kwargs["ContinuationToken"] = page["NextContinuationToken"]


def _walk_paths(fs, path: str) -> Iterator[str]:
    """Files under ``path``, streamed: local folders directory by directory (sorted), S3 prefixes page
    by page (key order), other stores directory by directory (``fs.walk``)."""
    if type(fs).__name__ == "S3FileSystem" and hasattr(fs, "_call_s3"):
        yield from _walk_s3(fs, path)
        return

    if is_local(fs):
        stack = [path]
        while stack:
            d = stack.pop()
            with os.scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name)
            subdirs = []
            for e in entries:
                if e.is_dir(follow_symlinks=False):
                    subdirs.append(e.path)
                elif e.is_file():
                    yield e.path
            stack.extend(reversed(subdirs))
        return
    for root, dirs, files in fs.walk(path):
        dirs.sort()
        for name in sorted(files):
            yield f"{root.rstrip('/')}/{name}"


def iter_listing(
    uri: str,
    options: dict | None = None,
    *,
    extensions: tuple[str, ...] | None = None,
    exclude_prefix: str | None = None,
    chunk_rows: int = 65536,
    stats: SourceStats | None = None,
) -> Iterator[pa.RecordBatch]:
    """Every object under a prefix/folder, a glob's matches, or one file (full URIs), streamed.

    Nothing is filtered unless ``extensions`` is given (then the skipped count is in ``stats``).
    Hidden files (a name starting with '.') and anything under ``exclude_prefix`` are not inputs.
    """
    stats = stats if stats is not None else SourceStats()
    fs, path = filesystem(uri, options)
    fs.invalidate_cache()
    local = is_local(fs)
    if fsspec.core.has_magic(path):
        found: Iterable[str] = sorted(p for p in fs.glob(path) if fs.isfile(p))
    elif fs.isdir(path):
        found = _walk_paths(fs, path.rstrip("/"))
    elif fs.isfile(path):
        found = [path]
    else:
        raise FileNotFoundError(f"no inputs at {uri!r}: not a folder/prefix, file or glob that matches anything")
    excl = None
    if exclude_prefix:
        _, excl = filesystem(exclude_prefix, options)
        excl = excl.rstrip("/") + "/"
    chunk: list[str] = []
    for p in found:
        name = p.rsplit("/", 1)[-1]
        if name.startswith(".") or (excl and (p + "/").startswith(excl)):
            continue
        stats.listed += 1
        if extensions and not name.lower().endswith(extensions):
            stats.skipped_by_extension += 1
            continue
        chunk.append(p if local else fs.unstrip_protocol(p))
        if len(chunk) >= chunk_rows:
            yield input_batch(chunk)
            chunk = []
    if chunk:
        yield input_batch(chunk)
