"""Object storage through fsspec: filesystems, input listing (URI / glob / manifest / COCO file).

Every input becomes a :class:`InputImage` (``image_id``, ``image_uri``). ``image_uri`` is the
identity used for resume: each input URI gets exactly one output row.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import fsspec

from .sources import IMAGE_EXTENSIONS, safe_join

_DIGITS = re.compile(r"(\d+)$")


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


def stable_image_id(uri: str) -> int:
    """A 63-bit id from the URI (for inputs without ids whose names carry no unique number)."""
    return int.from_bytes(hashlib.sha256(uri.encode()).digest()[:8], "big") >> 1


def _ids_from_names(uris: list[str]) -> list[int]:
    """COCO-style numeric stems (000000000139.jpg → 139) when unique across the input, else URI hashes."""
    stems = [_DIGITS.search(PurePosixPath(u).stem) for u in uris]
    if all(stems) and len({int(m.group(1)) for m in stems}) == len(uris):
        return [int(m.group(1)) for m in stems]
    return [stable_image_id(u) for u in uris]


def list_image_uris(uri: str, options: dict[str, Any] | None = None) -> list[str]:
    """Image files under a prefix/folder, a glob, or one file — sorted, full URIs.

    Files are selected by extension (``IMAGE_EXTENSIONS``); a non-image file with an image
    extension is still listed and gets an error row when it fails to decode.
    """
    fs, path = filesystem(uri, options)
    fs.invalidate_cache()
    if fsspec.core.has_magic(path):
        found = fs.glob(path)
    elif fs.isdir(path):
        found = fs.find(path)
    elif fs.isfile(path):
        found = [path]
    else:
        raise FileNotFoundError(f"no images at {uri!r}: not a folder/prefix, file or glob that matches anything")
    paths = sorted(p for p in found if p.lower().endswith(IMAGE_EXTENSIONS))
    if not paths:
        raise FileNotFoundError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {uri!r}")
    return [_unstrip(fs, p) for p in paths]


def inputs_from_uri(uri: str, options: dict[str, Any] | None = None) -> list[InputImage]:
    uris = list_image_uris(uri, options)
    return [InputImage(i, u) for i, u in zip(_ids_from_names(uris), uris)]


def inputs_from_manifest(manifest: str, options: dict[str, Any] | None = None) -> list[InputImage]:
    """A Parquet, CSV or JSONL manifest with column ``image_uri`` (or ``uri``/``path``) and optional ``image_id``."""
    fs, path = filesystem(manifest, options)
    suffix = PurePosixPath(path).suffix.lower()
    with fs.open(path, "rb") as f:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(f).to_pylist()
        elif suffix == ".csv":
            import csv
            import io

            rows = list(csv.DictReader(io.TextIOWrapper(f, encoding="utf-8")))
        elif suffix in (".jsonl", ".ndjson"):
            rows = [json.loads(line) for line in f.read().decode("utf-8").splitlines() if line.strip()]
        else:
            raise ValueError(f"manifest {manifest!r}: unsupported type {suffix!r} (use .parquet, .csv or .jsonl)")
    if not rows:
        raise ValueError(f"manifest {manifest!r} is empty")
    col = next((c for c in ("image_uri", "uri", "path") if c in rows[0]), None)
    if col is None:
        raise ValueError(f"manifest {manifest!r} needs a column 'image_uri' (or 'uri'/'path'); has {sorted(rows[0])}")
    uris = [str(r[col]) for r in rows]
    if len(set(uris)) != len(uris):
        dup = next(u for u in uris if uris.count(u) > 1)
        raise ValueError(f"manifest {manifest!r} lists {dup!r} more than once")
    if all(r.get("image_id") not in (None, "") for r in rows):
        ids = [int(r["image_id"]) for r in rows]
        if len(set(ids)) != len(ids):
            raise ValueError(f"manifest {manifest!r}: image_id values are not unique")
    else:
        ids = _ids_from_names(uris)
    return [InputImage(i, u) for i, u in zip(ids, uris)]


def inputs_from_coco(annotations: str, image_root: str, options: dict[str, Any] | None = None) -> list[InputImage]:
    """Images listed in a COCO JSON (ids from it, sorted) under ``image_root`` (any fsspec URI)."""
    fs, path = filesystem(annotations, options)
    with fs.open(path, "rb") as f:
        coco = json.load(f)
    images = sorted(coco.get("images", []), key=lambda im: int(im["id"]))
    if not images:
        raise ValueError(f"{annotations}: no 'images' in the annotation file")
    root = image_root.rstrip("/")
    out = []
    for im in images:
        rel = safe_join("", im["file_name"]).as_posix()  # refuses absolute names and '..'
        out.append(InputImage(int(im["id"]), f"{root}/{rel}"))
    return out


def read_bytes(uri: str, options: dict[str, Any] | None = None) -> bytes:
    fs, path = filesystem(uri, options)
    with fs.open(path, "rb") as f:
        return f.read()
