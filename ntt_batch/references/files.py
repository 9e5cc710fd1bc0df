"""The ``references.json`` file format: validation, save, load, merge, and where the images are.

A *reference set* says which annotated instances describe each class.  It is a plain JSON-able
dict (no pickle)::

    {"format": "ntt-batch/references", "version": 1,
     "categories": [{"id": 1, "name": "person"}, ...],          # sorted by id = class index order
     "references": [{"category_id": 1, "image_id": 123, "file_name": "000000000123.jpg",
                     "width": 640, "height": 480, "annotation_id": 456,
                     "bbox": [x, y, w, h],                        # COCO xywh, pixels
                     "segmentation": <COCO polygons or RLE dict>}, # optional (box-only refs)
                    ...],                                         # grouped per category, id order
     "image_root": "images",                                      # optional: where file_name lives
     "source": {...}}                                             # provenance, optional on load

``image_root`` (optional) is remembered so that ``memory build`` needs no ``--image-root``: a
local folder inside the references file's folder is written relative to that folder, anything
else (another local folder, an ``s3://`` prefix) as it is; :func:`load_references` turns a
relative one back into an absolute path. In memory it is always absolute (or a URI). A reference
may carry its own ``image_root`` (references merged from several files, :func:`merge_references`).

Class index = rank of the category id among the sorted ids (method.md §2.3, §8.18).

:func:`merge_references` joins several reference sets (classes merged by name).

Pure Python; no torch, no PIL.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..storage.atomic import atomic_write_text

REFERENCES_FILE = "references.json"  # the (merged) references, saved beside the bank they built (memory build, the job)

REFERENCES_FORMAT = "ntt-batch/references"
REFERENCES_VERSION = 1

_REQUIRED_TOP_KEYS = ("format", "version", "categories", "references")
_REQUIRED_REF_KEYS = ("category_id", "file_name", "width", "height")


def is_json_int(v: Any) -> bool:
    """True for a JSON integer (``bool`` excluded, though Python counts it as an ``int``)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_json_number(v: Any) -> bool:
    """True for a JSON number, integer or float (``bool`` excluded)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def validate_references(refs: Any, where: str = "<references>") -> dict[str, Any]:
    """Check a references dict; return it with ``categories`` sorted by id.

    Args:
        refs: the dict to check.
        where: the file (or other origin) named in error messages.

    Raises:
        ValueError: wrong format/version, missing keys, bad types, duplicate category ids or
            names, a reference whose ``category_id`` is not in ``categories``, a reference with
            neither ``bbox`` nor ``segmentation``, or a category without any reference.
    """
    _check_header(refs, where)
    cats = refs["categories"]
    _check_categories(cats, where)
    items = refs["references"]
    if not isinstance(items, list):
        raise ValueError(f"{where}: 'references' must be a list")
    counts = {c["id"]: 0 for c in cats}
    for i, r in enumerate(items):
        _check_reference(r, f"{where}: references[{i}]", counts)
        counts[r["category_id"]] += 1
    if refs.get("image_root") is not None and (not isinstance(refs["image_root"], str) or not refs["image_root"]):
        raise ValueError(
            f"{where}: 'image_root' must be a non-empty string (the folder or URI the file names are relative to)"
        )
    empty = [c for c in cats if counts[c["id"]] == 0]
    if empty:
        names = ", ".join(f"{c['name']!r} (id {c['id']})" for c in empty)
        raise ValueError(f"{where}: no reference for category {names}")
    out = dict(refs)
    out["categories"] = sorted(cats, key=lambda c: c["id"])
    return out


def _check_header(refs: Any, where: str) -> None:
    """A JSON object with the top-level keys, this format and this version."""
    if not isinstance(refs, dict):
        raise ValueError(f"{where}: a references file must hold a JSON object")
    missing = [k for k in _REQUIRED_TOP_KEYS if k not in refs]
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing} (not an ntt-batch references file?)")
    if refs["format"] != REFERENCES_FORMAT:
        raise ValueError(f"{where}: format is {refs['format']!r}, expected {REFERENCES_FORMAT!r}")
    if refs["version"] != REFERENCES_VERSION:
        raise ValueError(
            f"{where}: unsupported references version {refs['version']!r} "
            f"(this ntt-batch reads version {REFERENCES_VERSION})"
        )


def _check_categories(cats: Any, where: str) -> None:
    """A non-empty list of ``{"id": int, "name": str}`` with unique ids and unique names."""
    if not isinstance(cats, list) or not cats:
        raise ValueError(f"{where}: 'categories' must be a non-empty list")
    seen_ids: set[int] = set()
    seen_names: set[str] = set()
    for i, c in enumerate(cats):
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            raise ValueError(f"{where}: categories[{i}] must be an object with 'id' and 'name'")
        if not is_json_int(c["id"]) or not isinstance(c["name"], str):
            raise ValueError(f"{where}: categories[{i}] needs an integer 'id' and a string 'name'")
        if c["id"] in seen_ids:
            raise ValueError(f"{where}: duplicate category id {c['id']}")
        if c["name"] in seen_names:
            raise ValueError(f"{where}: duplicate category name {c['name']!r}")
        seen_ids.add(c["id"])
        seen_names.add(c["name"])


def _check_reference(r: Any, where: str, category_ids: Mapping[int, int]) -> None:
    """One ``references[i]`` entry (``where`` names it); ``category_ids``: the categories' ids."""
    if not isinstance(r, dict):
        raise ValueError(f"{where} must be an object")
    miss = [k for k in _REQUIRED_REF_KEYS if k not in r]
    if miss:
        raise ValueError(f"{where} is missing key(s) {miss}")
    if not is_json_int(r["category_id"]):
        raise ValueError(f"{where}.category_id must be an integer")
    if r["category_id"] not in category_ids:
        raise ValueError(
            f"{where} has category_id {r['category_id']}, which is not in 'categories' (ids {sorted(category_ids)})"
        )
    if not isinstance(r["file_name"], str) or not r["file_name"]:
        raise ValueError(f"{where}.file_name must be a non-empty string")
    for k in ("width", "height"):
        if not is_json_int(r[k]) or r[k] <= 0:
            raise ValueError(f"{where}.{k} must be a positive integer")
    has_bbox = "bbox" in r and r["bbox"] is not None
    has_seg = "segmentation" in r and r["segmentation"] is not None
    if not has_bbox and not has_seg:
        raise ValueError(f"{where} has neither 'bbox' nor 'segmentation'")
    if has_bbox:
        b = r["bbox"]
        if not isinstance(b, list) or len(b) != 4 or not all(is_json_number(v) for v in b):
            raise ValueError(f"{where}.bbox must be [x, y, w, h] numbers")
        if b[2] <= 0 or b[3] <= 0:
            raise ValueError(f"{where}.bbox has a non-positive size {b}")
    if has_seg:
        s = r["segmentation"]
        if isinstance(s, dict):
            if "size" not in s or "counts" not in s:
                raise ValueError(f"{where}.segmentation RLE needs 'size' and 'counts'")
            if list(s["size"]) != [r["height"], r["width"]]:
                raise ValueError(
                    f"{where}.segmentation size {s['size']} does not match "
                    f"[height, width] = [{r['height']}, {r['width']}]"
                )
        elif not (isinstance(s, list) and s and all(isinstance(p, list) for p in s)):
            raise ValueError(f"{where}.segmentation must be a non-empty list of polygons or an RLE object")
    if r.get("image_root") is not None and (not isinstance(r["image_root"], str) or not r["image_root"]):
        raise ValueError(f"{where}.image_root must be a non-empty string")


def _is_uri(root: str) -> bool:
    return "://" in root


def resolve_image_root(root: str | os.PathLike[str] | None, base_dir: str | os.PathLike[str]) -> str | None:
    """An ``image_root`` as read from a references file → absolute path (URIs unchanged).

    A relative local path is relative to ``base_dir``, the references file's folder.
    """
    if root is None:
        return None
    root = os.fspath(root)
    if _is_uri(root):
        return root
    return os.path.abspath(os.path.join(os.fspath(base_dir), root))


def _portable_image_root(root: str | None, refs_dir: str | os.PathLike[str]) -> str | None:
    """What :func:`save_references` writes: relative to the file's folder when inside it, else absolute."""
    if root is None or _is_uri(root):
        return root
    a, d = os.path.abspath(root), os.path.abspath(refs_dir)
    if a == d:
        return "."
    if a.startswith(d.rstrip(os.sep) + os.sep):
        return Path(os.path.relpath(a, d)).as_posix()
    return a


def reference_image_root(
    refs: Mapping[str, Any], ref: Mapping[str, Any], override: str | os.PathLike[str] | None = None
) -> str | None:
    """Where ``ref["file_name"]`` lives: ``override`` (a ``--image-root`` flag), else the reference's
    own ``image_root`` (merged sets), else the set's ``image_root``; None when nothing says."""
    if override is not None:
        return os.fspath(override)
    return ref.get("image_root") or refs.get("image_root")


def save_references(refs: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Validate and write a references dict as JSON (one reference per line; atomic replace).

    ``image_root`` is written relative to the file's folder when it lies inside it (see the
    module docstring), so a project folder holding both can be moved.
    """
    refs = validate_references(dict(refs), where=str(path))
    if refs.get("image_root") is not None:
        refs["image_root"] = _portable_image_root(refs["image_root"], Path(path).resolve().parent)
    lines = ["{"]
    head = [k for k in refs if k != "references"]
    for k in head:
        lines.append(f"  {json.dumps(k)}: {json.dumps(refs[k])},")
    items = refs["references"]
    lines.append('  "references": [')
    for i, r in enumerate(items):
        lines.append("    " + json.dumps(r) + ("," if i < len(items) - 1 else ""))
    lines.append("  ]")
    lines.append("}")
    text = "\n".join(lines) + "\n"
    atomic_write_text(path, text)


def load_references(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a references JSON file (see :func:`validate_references`)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    refs = validate_references(data, where=str(path))
    if refs.get("image_root") is not None:
        refs["image_root"] = resolve_image_root(refs["image_root"], Path(path).resolve().parent)
    return refs


def merge_references(
    parts: Sequence[tuple[Mapping[str, Any], str]],
) -> tuple[dict[str, Any], list[str]]:
    """Join several reference sets into one; classes are merged **by name**.

    Args:
        parts: ``(references dict, where)`` pairs, in order; ``where`` (usually the file name) is
            used in notices and recorded in ``source``.

    Returns:
        ``(references, notices)``. A class keeps the id it has in the first set that names it; a
        class whose id is already taken by another name gets the next free id (a notice says
        so), and a name met again under another id joins the first one (a notice says so too).
        Each reference gets its set's ``image_root`` when the sets' roots differ (the merged set
        then has no single one). A single part is returned as it is.
    """
    if not parts:
        raise ValueError("no references to merge")
    if len(parts) == 1:
        return dict(parts[0][0]), []
    notices: list[str] = []
    id_of: dict[str, int] = {}
    name_of: dict[int, str] = {}
    first_where: dict[str, str] = {}
    mapped: list[tuple[Mapping[str, Any], str, dict[int, int]]] = []
    for refs, where in parts:
        remap: dict[int, int] = {}
        for c in sorted(refs["categories"], key=lambda c: int(c["id"])):
            cid, name = int(c["id"]), str(c["name"])
            if name in id_of:
                remap[cid] = id_of[name]
                if id_of[name] != cid:
                    notices.append(
                        f"{where}: class {name!r} (id {cid}) merged into {name!r} of "
                        f"{first_where[name]} (id {id_of[name]})"
                    )
                continue
            new = cid
            if cid in name_of:
                new = max(name_of) + 1
                notices.append(
                    f"{where}: class {name!r} has id {cid}, already used by {name_of[cid]!r} of "
                    f"{first_where[name_of[cid]]}: renumbered to {new}"
                )
            id_of[name], name_of[new], first_where[name] = new, name, where
            remap[cid] = new
        mapped.append((refs, where, remap))
    roots = {r.get("image_root") for r, _, _ in mapped}
    one_root = roots.pop() if len(roots) == 1 else None
    references: list[dict[str, Any]] = []
    for refs, _where, remap in mapped:
        for r in refs["references"]:
            e = dict(r)
            e["category_id"] = remap[int(r["category_id"])]
            root = r.get("image_root") or refs.get("image_root")
            if one_root is None and root is not None:
                e["image_root"] = root
            references.append(e)
    references.sort(key=lambda r: r["category_id"])  # stable: set order, then file order, within a class
    merged: dict[str, Any] = {
        "format": REFERENCES_FORMAT,
        "version": REFERENCES_VERSION,
        "categories": [{"id": i, "name": n} for i, n in sorted(name_of.items())],
        "references": references,
        "source": {"kind": "merged", "parts": [{"from": where, "source": refs.get("source")} for refs, where in parts]},
    }
    if one_root is not None:
        merged["image_root"] = one_root
    return validate_references(merged, where="merged references"), notices
