"""Object storage through fsspec: filesystems, byte reads, and small input lists (``segment``).

Every input becomes a :class:`InputImage` (``image_id``, ``image_uri``). ``image_uri`` is the
identity used for resume: each input URI gets exactly one output row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import fsspec


@dataclass(frozen=True)
class InputImage:
    image_id: int
    image_uri: str


def absolute_uri(uri: str | None) -> str | None:
    """Local relative paths → absolute (Ray workers need not share the driver's cwd); URIs unchanged."""
    if uri is None or fsspec.utils.get_protocol(uri) not in ("file", "local"):
        return uri
    import os

    return os.path.abspath(os.path.expanduser(uri.removeprefix("file://")))


def storage_options_for(uri: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """fsspec storage options for ``uri``: only remote protocols take them (local ignores them)."""
    protocol = fsspec.utils.get_protocol(uri)
    return dict(options or {}) if protocol not in ("file", "local") else {}


def filesystem(uri: str, options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path without protocol) for a URI. ``options`` e.g. {"endpoint_url": ..., "anon": True}."""
    fs, path = fsspec.core.url_to_fs(uri, **storage_options_for(uri, options))
    return fs, path


def _unstrip(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """Full URI for a path the filesystem returned (local paths stay plain paths)."""
    from fsspec.implementations.local import LocalFileSystem

    return path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)


def assign_ids(uris: list[str], ids: list[int | None]) -> list[int]:
    """Image ids for a list of inputs: the source's when every input has one; else the numbers
    COCO-style file names end with when present and unique; else a hash of each URI.

    The batch job's planner applies the same rule without holding the list (``pipeline.plan``).
    """
    from .inputs import name_number, stable_image_id

    if ids and all(i is not None for i in ids):
        return [int(i) for i in ids]
    numbers = [name_number(u) for u in uris]
    if all(n is not None for n in numbers) and len(set(numbers)) == len(numbers):
        return [int(n) for n in numbers]
    return [stable_image_id(u) for u in uris]


def _collect(batches) -> list[InputImage]:
    uris: list[str] = []
    ids: list[int | None] = []
    for b in batches:
        uris += b.column("image_uri").to_pylist()
        ids += b.column("image_id").to_pylist()
    if len(set(uris)) != len(uris):
        seen: set[str] = set()
        dup = next(u for u in uris if u in seen or seen.add(u))
        raise ValueError(f"input {dup!r} is listed more than once")
    final = assign_ids(uris, ids)
    if len(set(final)) != len(final):
        raise ValueError("image_id values are not unique")
    return [InputImage(i, u) for i, u in zip(final, uris)]


def inputs_from_uri(uri: str, options: dict[str, Any] | None = None) -> list[InputImage]:
    """Every object under a prefix/folder, a glob's matches or one file (sorted), as inputs.

    For small lists (``ntt-batch segment``); the batch job streams the same source instead.
    """
    from .inputs import iter_listing

    return _collect(iter_listing(uri, options))


def inputs_from_manifest(manifest: str, options: dict[str, Any] | None = None) -> list[InputImage]:
    """A Parquet, CSV or JSONL manifest with column ``image_uri`` (or ``uri``/``path``) and optional ``image_id``."""
    from .inputs import iter_manifest

    return _collect(iter_manifest(manifest, options))


def inputs_from_coco(annotations: str, image_root: str, options: dict[str, Any] | None = None) -> list[InputImage]:
    """Images listed in a COCO JSON (ids from it, sorted) under ``image_root`` (any fsspec URI)."""
    from .inputs import iter_coco

    return _collect(iter_coco(annotations, image_root, options))


def read_bytes(uri: str, options: dict[str, Any] | None = None) -> bytes:
    fs, path = filesystem(uri, options)
    with fs.open(path, "rb") as f:
        return f.read()
