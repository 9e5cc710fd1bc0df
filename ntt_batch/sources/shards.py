"""Sharded inputs: WebDataset tar shards and Parquet/Arrow tables, where the input is the *sample*.

A sharded source is a list of shard URIs; each shard holds samples. Every sample gets exactly one
output row, keyed ``<shard uri>#<sample key>``:

* **WebDataset** (``--images`` naming ``.tar`` files: ``shards/{00000..00999}.tar``, ``shards/*.tar``
  or one ``.tar``; ``.tar.gz``/``.tgz`` too): a sample is a run of consecutive members sharing a key,
  the member path up to the first dot of its base name (``000123.jpg`` + ``000123.json`` → key
  ``000123``, as webdataset and img2dataset do); its image is the member with the extension given
  by ``image_column`` (``jpg``, ``png``, ``seg.png``...), else the first of :data:`IMAGE_EXTENSIONS`.
* **Tables** (``--table``: one Parquet or Arrow IPC file, a folder of them, a glob or a brace
  pattern): a sample is a row; its key is the ``id_column`` value, else its row number in the
  file; the image is ``image_column``: binary, or a Hugging Face image struct ``{bytes, path}``.

``#`` and ``%`` in a key are written ``%23`` and ``%25``, so the last ``#`` of a row's URI always
separates shard and key. A shard that breaks (truncated, corrupt header, unreadable) gives its
readable samples plus one ``error`` row keyed ``<shard uri>#.shard`` (:data:`SHARD_ERROR_KEY`,
a key no sample can have: WebDataset keys end before the first dot) naming where it broke.

Image ids are :func:`~ntt_batch.sources.ids.stable_image_id` of the row's URI, as for objects
whose names carry no unique number.
"""

from __future__ import annotations

import itertools
import re
from abc import abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar

import fsspec
import pyarrow as pa
import pyarrow.compute as pc

from ..storage.fs import filesystem, is_local
from .base import Source

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
TABLE_SUFFIXES = (".parquet", ".arrow", ".feather", ".ipc")
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "tif", "tiff", "bmp", "gif", "jp2", "ppm", "pgm")
SHARD_ERROR_KEY = ".shard"

_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


@dataclass
class Shard:
    uri: str
    size: int | None = None  # from the listing (None for brace patterns: nothing is listed)


@dataclass
class Sample:
    """One sample of a shard: its key and its image bytes, or the reason it has none."""

    key: str
    data: bytes | None = None
    error: str | None = None


@dataclass
class ShardCensus:
    """What one read of a shard found (written under ``_ntt/shards/`` by the reading task)."""

    shard: str
    samples: int = 0  # distinct row keys the shard gives, the shard error row included
    emitted: int = 0  # rows handed on by this read (samples not already done)
    skipped: int = 0  # samples that already had a row
    duplicates: int = 0  # repeated keys (a key has one row: later repeats are not read)
    duplicate_examples: list[str] = field(default_factory=list)
    broken: str | None = None  # where and why the shard broke; None: read to its end
    bytes: int = 0


def is_tar_uri(uri: str | None) -> bool:
    return bool(uri) and uri.lower().rstrip("/").endswith(TAR_SUFFIXES)


def is_sharded(spec) -> bool:
    """Whether an :class:`~ntt_batch.sources.InputSpec` names a sharded kind (planned shard by shard)."""
    return isinstance(spec.source(), ShardedSource)


# ----------------------------------------------------------------------------- keys


def escape_key(key: str) -> str:
    return key.replace("%", "%25").replace("#", "%23")


def split_sample_uris(uris: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Row URIs → (shard URIs, escaped keys), vectorised; a URI without ``#`` gives itself and null."""
    has = pc.match_substring(uris, "#")
    safe = pc.if_else(has, uris, pc.binary_join_element_wise(uris, pa.scalar("#"), ""))  # every list has 2 items
    parts = pc.split_pattern(safe, "#", max_splits=1, reverse=True)
    shard = pc.list_element(parts, 0)
    key = pc.if_else(has, pc.list_element(parts, 1), pa.nulls(len(uris), pa.string()))
    return shard, key


# ----------------------------------------------------------------------------- listing


def expand_braces(pattern: str) -> list[str]:
    """``a/{000..002}.tar`` → ``a/000.tar a/001.tar a/002.tar`` (zero padding kept); ``{x,y}`` lists;
    several groups give their product, in order. Text without braces is returned as is."""
    groups = _BRACE.findall(pattern)
    if not groups:
        return [pattern]
    choices = []
    for g in groups:
        m = _RANGE.match(g.strip())
        if m:
            a, b = m.group(1), m.group(2)
            lo, hi = int(a), int(b)
            if hi < lo:
                raise ValueError(f"brace range {{{g}}} in {pattern!r} goes backwards ({a} > {b})")
            width = len(a) if a.startswith("0") and len(a) > 1 else 0
            choices.append([str(i).zfill(width) for i in range(lo, hi + 1)])
        elif "," in g:
            choices.append(g.split(","))
        else:
            raise ValueError(f"brace group {{{g}}} in {pattern!r} is neither a range {{000..099}} nor a list {{a,b}}")
    pieces = _BRACE.split(pattern)  # text, group, text, group, ..., text
    texts = pieces[0::2]
    out = []
    for combo in itertools.product(*choices):
        out.append("".join(t + c for t, c in zip(texts, combo)) + texts[-1])
    return out


def list_shards(uri: str, options: dict | None, suffixes: tuple[str, ...]) -> list[Shard]:
    """The shards ``uri`` names, in order: a brace pattern (expanded, nothing listed), a glob
    (one listing), a folder (the files under it ending in one of ``suffixes``), or one file.

    Raises FileNotFoundError when a glob, folder or file names nothing.
    """
    if _BRACE.search(uri):
        return [Shard(u) for u in expand_braces(uri)]
    fs, path = filesystem(uri, options)
    local = is_local(fs)

    def full(p: str) -> str:
        return p if local else fs.unstrip_protocol(p)

    if fsspec.core.has_magic(path):
        found = fs.glob(path, detail=True)
        shards = [Shard(full(p), int(d.get("size") or 0)) for p, d in sorted(found.items()) if d.get("type") == "file"]
    elif fs.isdir(path):
        found = fs.find(path, detail=True)
        shards = [
            Shard(full(p), int(d.get("size") or 0))
            for p, d in sorted(found.items())
            if d.get("type") == "file"
            and p.lower().endswith(suffixes)
            and not p.rsplit("/", 1)[-1].startswith((".", "_"))
        ]
    elif fs.isfile(path):
        shards = [Shard(full(path), int(fs.size(path) or 0))]
    else:
        raise FileNotFoundError(f"no shards at {uri!r}: not a file, folder, glob or brace pattern that names any")
    if not shards:
        raise FileNotFoundError(
            f"no shards at {uri!r}: nothing matches" + f" (a folder is searched for {', '.join(suffixes)} files)"
        )
    return shards


class KeyTracker:
    """Counts a shard's keys into its :class:`ShardCensus`: each key once, repeats counted as duplicates."""

    def __init__(self, census: ShardCensus, done: frozenset[str] | set[str]):
        self.census, self.done = census, done
        self._seen: set[str] = set()

    def admit(self, key: str) -> str:
        """``"emit"`` (a new key to process), ``"skip"`` (it has a row already) or ``"duplicate"``."""
        c = self.census
        if key in self._seen:
            c.duplicates += 1
            if len(c.duplicate_examples) < 5:
                c.duplicate_examples.append(key)
            return "duplicate"
        self._seen.add(key)
        c.samples += 1
        if key in self.done:
            c.skipped += 1
            return "skip"
        c.emitted += 1
        return "emit"

    def broken(self, message: str) -> Sample | None:
        """The shard error row (``None`` when it has a row already: the break was recorded before)."""
        self.census.broken = message
        if self.admit(SHARD_ERROR_KEY) == "emit":
            return Sample(SHARD_ERROR_KEY, error=message)
        return None


class ShardedSource(Source):
    """A kind of input whose inputs are the samples inside shards (module docstring).

    The job plans it shard by shard (``pipeline.shard_plan``): :meth:`shards` lists them (from the
    main setting: a brace pattern, glob, folder or file), :meth:`samples` reads one in a reading
    task, :meth:`check` fails early on the first shard to read (e.g. a missing column).
    """

    suffixes: ClassVar[tuple[str, ...]] = ()  # what a folder is searched for

    def shards(self, options: dict | None) -> list[Shard]:
        return list_shards(self.location, options, self.suffixes)

    @abstractmethod
    def samples(
        self, shard: str, options: dict | None, *, done: frozenset[str] | set[str], census: ShardCensus
    ) -> Iterator[Sample]:
        """Every sample of ``shard`` whose (escaped) key is not in ``done``; a broken shard ends with
        a :data:`SHARD_ERROR_KEY` sample naming where it broke. Never raises for a bad shard."""

    def check_exists(self, options: dict | None) -> None:
        """Raise FileNotFoundError when the shards name nothing: a glob, folder or file matching no
        shard, or a brace pattern whose first shard does not exist (a typo; one stat or HEAD)."""
        shards = self.shards(options)
        if _BRACE.search(self.location):
            fs, path = filesystem(shards[0].uri, options)
            if not fs.isfile(path):
                raise FileNotFoundError(
                    f"{self.main_key()}: the first shard of {self.location!r}, {shards[0].uri}, does not exist"
                )

    def check(self, shard: str, options: dict | None) -> None:
        """Raise a clear error when ``shard`` (the first one to read) cannot be this source's input."""

    def batches(self, options, *, chunk_rows, stats, extensions=None, exclude_prefix=None):
        raise ValueError(
            f"{self.location}: a sharded input (WebDataset tars, a table) is planned shard by shard by the batch "
            "job (`ntt-batch run`); this command takes image files (--images a folder, --manifest)"
        )
