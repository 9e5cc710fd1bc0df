"""Input sources at any size: streamed as Arrow record batches, identified by 128-bit URI hashes.

A batch job's inputs come from one of three sources, each read in bounded chunks so the driver's
memory does not grow with the number of inputs (only the 16-byte hash of each URI is kept):

* a **listing** of a prefix/folder/glob on any fsspec store (:func:`iter_listing`);
* a **manifest**: Parquet, CSV or JSONL with a column ``image_uri`` (or ``uri``/``path``) and an
  optional ``image_id`` (:func:`iter_manifest`), read with Arrow's streaming readers;
* a **COCO annotation file** with an image root (:func:`iter_coco`).

Every listed object is an input: there is no silent extension filter (a file that is not an
image gets an ``error`` row). ``extensions`` is an explicit, opt-in filter whose skipped count is
reported.

:class:`UriHashes` is the compact set used for duplicate detection and resume: two uint64 halves
of a BLAKE2b-128 digest per URI (16 bytes per image), sorted; membership is exact up to a 2^-128
collision chance.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa

from ..storage.fs import filesystem, is_local
from ..storage.names import safe_join

INPUT_SCHEMA = pa.schema([("image_id", pa.int64()), ("image_uri", pa.string())])
URI_COLUMNS = ("image_uri", "uri", "path")
# The number a file name ends with, before its extension: 000000000139.jpg → 139 (at most 18 digits: int64).
NAME_NUMBER = r"(?P<n>\d{1,18})(?:\.[^./]*)?$"
_NAME_NUMBER = re.compile(NAME_NUMBER)


# ----------------------------------------------------------------------------- hashing


def uri_digests(uris: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
    """BLAKE2b-128 of each URI's UTF-8 bytes as two uint64 arrays (high, low), [N] each."""
    raw = b"".join(hashlib.blake2b(u.encode("utf-8"), digest_size=16).digest() for u in uris)
    pairs = np.frombuffer(raw, dtype=">u8").reshape(-1, 2)
    return pairs[:, 0].astype(np.uint64), pairs[:, 1].astype(np.uint64)


@dataclass
class UriHashes:
    """A set of URI digests (:func:`uri_digests`), sorted by (high, low); 16 bytes per URI."""

    hi: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    lo: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))

    @classmethod
    def from_chunks(cls, chunks: Iterable[tuple[np.ndarray, np.ndarray]]) -> UriHashes:
        chunks = list(chunks)
        if not chunks:
            return cls()
        hi = np.concatenate([c[0] for c in chunks])
        lo = np.concatenate([c[1] for c in chunks])
        order = np.lexsort((lo, hi))
        return cls(hi[order], lo[order])

    def __len__(self) -> int:
        return int(self.hi.size)

    def contains(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        """Boolean [N]: which of the queried digests are in the set (vectorised; exact)."""
        if not len(self) or not hi.size:
            return np.zeros(hi.shape, dtype=bool)
        left = np.searchsorted(self.hi, hi, side="left")
        right = np.searchsorted(self.hi, hi, side="right")
        span = right - left
        found = np.zeros(hi.shape, dtype=bool)
        one = span == 1
        found[one] = self.lo[left[one]] == lo[one]
        for i in np.nonzero(span > 1)[0]:  # equal high halves: rare (2^-64 per pair)
            found[i] = bool(np.any(self.lo[left[i] : right[i]] == lo[i]))
        return found

    def duplicated(self) -> tuple[np.ndarray, np.ndarray]:
        """Digests present more than once (each reported once)."""
        if len(self) < 2:
            return np.zeros(0, np.uint64), np.zeros(0, np.uint64)
        same = (self.hi[1:] == self.hi[:-1]) & (self.lo[1:] == self.lo[:-1])
        hi, lo = self.hi[1:][same], self.lo[1:][same]
        if hi.size:
            keep = np.ones(hi.size, dtype=bool)
            keep[1:] = (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])
            hi, lo = hi[keep], lo[keep]
        return hi, lo

    def union(self, other: UriHashes) -> UriHashes:
        return UriHashes.from_chunks([(self.hi, self.lo), (other.hi, other.lo)])


class HashAccumulator:
    """Collects digests chunk by chunk; :meth:`freeze` sorts them into a :class:`UriHashes`."""

    def __init__(self) -> None:
        self._chunks: list[tuple[np.ndarray, np.ndarray]] = []
        self.count = 0

    def add(self, hi: np.ndarray, lo: np.ndarray) -> None:
        if hi.size:
            self._chunks.append((hi, lo))
            self.count += int(hi.size)

    def freeze(self) -> UriHashes:
        out = UriHashes.from_chunks(self._chunks)
        self._chunks = [(out.hi, out.lo)] if len(out) else []
        return out


# ----------------------------------------------------------------------------- ids


def stable_image_id(uri: str) -> int:
    """A 63-bit id from the URI (for inputs without ids whose names carry no unique number)."""
    return int.from_bytes(hashlib.sha256(uri.encode()).digest()[:8], "big") >> 1


def name_number(uri: str) -> int | None:
    """The number a COCO-style file name ends with, before its extension (``000000000139.jpg`` → 139), else None."""
    m = _NAME_NUMBER.search(uri)
    return int(m.group(1)) if m else None


def name_numbers(uris: pa.Array) -> pa.Array:
    """:func:`name_number` of every URI, vectorised: int64 array, null where a name has no number."""
    import pyarrow.compute as pc

    found = pc.extract_regex(uris, NAME_NUMBER)
    return pc.cast(pc.struct_field(found, "n"), pa.int64())


# ----------------------------------------------------------------------------- sources


@dataclass
class InputSpec:
    """Where a job's inputs come from (exactly one of images / manifest / annotations / table).

    ``images`` naming ``.tar`` files and ``table`` are sharded sources (``sources.shards``):
    ``image_column`` picks the image (a table column, or a WebDataset member extension), and
    ``id_column`` a table's sample keys.
    """

    images: str | None = None
    manifest: str | None = None
    annotations: str | None = None
    image_root: str | None = None
    extensions: tuple[str, ...] | None = None  # opt-in filter for listings, lower-case with dot
    exclude_prefix: str | None = None  # never list files under this URI (the job's own output)
    table: str | None = None
    image_column: str | None = None
    id_column: str | None = None

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for k in ("images", "manifest", "annotations", "image_root", "table", "image_column", "id_column"):
            if getattr(self, k):
                d[k] = getattr(self, k)
        if self.extensions:
            d["extensions"] = list(self.extensions)
        return d


@dataclass
class SourceStats:
    listed: int = 0  # objects seen
    skipped_by_extension: int = 0
    ids_from: str = ""  # "column", "coco", "file names", "uri hashes" (decided by the planner)


def normalise_extensions(values: Iterable[str] | str | None) -> tuple[str, ...] | None:
    """``"jpg, .PNG"`` / ``["jpg", "png"]`` → ``(".jpg", ".png")``; None or empty → None (no filter)."""
    if values is None:
        return None
    if isinstance(values, str):
        values = values.replace(",", " ").split()
    out = tuple(sorted({("." + v.strip().lower().lstrip(".")) for v in values if v.strip().strip(".")}))
    return out or None


def iter_inputs(
    spec: InputSpec, options: dict | None = None, *, chunk_rows: int = 65536, stats: SourceStats | None = None
) -> Iterator[pa.RecordBatch]:
    """Record batches with columns ``image_uri`` (string) and ``image_id`` (int64, null when the
    source has none), at most ``chunk_rows`` rows each, in the source's order."""
    stats = stats if stats is not None else SourceStats()
    from .shards import is_sharded

    if is_sharded(spec):
        raise ValueError(
            f"{spec.table or spec.images}: a sharded input (WebDataset tars or a table) is planned by shard, not "
            "listed image by image (pipeline.shard_plan)"
        )
    if spec.images:
        yield from iter_listing(
            spec.images,
            options,
            extensions=spec.extensions,
            exclude_prefix=spec.exclude_prefix,
            chunk_rows=chunk_rows,
            stats=stats,
        )
    elif spec.manifest:
        yield from iter_manifest(spec.manifest, options, chunk_rows=chunk_rows, stats=stats)
    elif spec.annotations:
        if not spec.image_root:
            raise ValueError("annotations need image_root (the URI holding the images the COCO file lists)")
        yield from iter_coco(spec.annotations, spec.image_root, options, chunk_rows=chunk_rows, stats=stats)
    else:
        raise ValueError("no input: give images (a prefix/folder/glob), manifest, or annotations + image_root")


def _batch(uris: list[str], ids: list[int | None] | None = None) -> pa.RecordBatch:
    ids_arr = pa.array(ids if ids is not None else [None] * len(uris), type=pa.int64())
    return pa.RecordBatch.from_arrays([ids_arr, pa.array(uris, type=pa.string())], schema=INPUT_SCHEMA)


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
            yield _batch(chunk)
            chunk = []
    if chunk:
        yield _batch(chunk)


def _uri_column(names: list[str], where: str) -> str:
    col = next((c for c in URI_COLUMNS if c in names), None)
    if col is None:
        raise ValueError(f"manifest {where!r} needs a column 'image_uri' (or 'uri'/'path'); has {sorted(names)}")
    return col


def _manifest_batch(batch: pa.RecordBatch, where: str) -> pa.RecordBatch:
    col = _uri_column(batch.schema.names, where)
    uris = batch.column(col).cast(pa.string())
    if uris.null_count:
        raise ValueError(f"manifest {where!r}: column {col!r} has empty values")
    if "image_id" in batch.schema.names:
        raw = batch.column("image_id")
        try:
            ids = raw.cast(pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise ValueError(f"manifest {where!r}: column 'image_id' must hold integers ({e})") from None
    else:
        ids = pa.nulls(len(uris), pa.int64())
    return pa.RecordBatch.from_arrays([ids, uris], schema=INPUT_SCHEMA)


def iter_manifest(
    manifest: str, options: dict | None = None, *, chunk_rows: int = 65536, stats: SourceStats | None = None
) -> Iterator[pa.RecordBatch]:
    """A Parquet, CSV or JSONL manifest, streamed with Arrow's readers (vectorised; no Python rows)."""
    stats = stats if stats is not None else SourceStats()
    fs, path = filesystem(manifest, options)
    suffix = PurePosixPath(path).suffix.lower()
    if suffix not in (".parquet", ".csv", ".jsonl", ".ndjson"):
        raise ValueError(f"manifest {manifest!r}: unsupported type {suffix!r} (use .parquet, .csv or .jsonl)")
    if not fs.isfile(path):
        raise FileNotFoundError(f"manifest {manifest!r} does not exist")
    with fs.open(path, "rb") as f:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(f)
            _uri_column(pf.schema_arrow.names, manifest)
            cols = [c for c in pf.schema_arrow.names if c in URI_COLUMNS + ("image_id",)]
            batches: Iterable[pa.RecordBatch] = pf.iter_batches(batch_size=chunk_rows, columns=cols)
        elif suffix == ".csv":
            import pyarrow.csv as pcsv

            # all columns as strings first: ids are cast (and checked) below, URIs stay verbatim
            reader = pcsv.open_csv(
                f,
                read_options=pcsv.ReadOptions(block_size=8 << 20),
                convert_options=pcsv.ConvertOptions(
                    column_types={c: pa.string() for c in URI_COLUMNS}, strings_can_be_null=False
                ),
            )
            batches = reader
        else:
            import pyarrow.json as pjson

            batches = pjson.open_json(f, read_options=pjson.ReadOptions(block_size=8 << 20))
        empty = True
        for batch in batches:
            if not batch.num_rows:
                continue
            empty = False
            out = _manifest_batch(batch, manifest)
            for start in range(0, out.num_rows, chunk_rows):
                part = out.slice(start, chunk_rows)
                stats.listed += part.num_rows
                yield part
        if empty:
            raise ValueError(f"manifest {manifest!r} is empty")


def iter_coco(
    annotations: str,
    image_root: str,
    options: dict | None = None,
    *,
    chunk_rows: int = 65536,
    stats: SourceStats | None = None,
) -> Iterator[pa.RecordBatch]:
    """Images listed in a COCO JSON (ids from it, sorted by id) under ``image_root`` (any fsspec URI).

    The file is parsed whole (COCO files list images and annotations in one JSON document);
    only the ``images`` entries are kept.
    """
    stats = stats if stats is not None else SourceStats()
    fs, path = filesystem(annotations, options)
    with fs.open(path, "rb") as f:
        images = json.load(f).get("images", [])
    if not images:
        raise ValueError(f"{annotations}: no 'images' in the annotation file")
    images.sort(key=lambda im: int(im["id"]))
    root = image_root.rstrip("/")
    for start in range(0, len(images), chunk_rows):
        part = images[start : start + chunk_rows]
        uris = [f"{root}/{safe_join('', im['file_name']).as_posix()}" for im in part]  # refuses '..' and absolute names
        stats.listed += len(part)
        yield _batch(uris, [int(im["id"]) for im in part])
