"""COCO annotation files as a source of references: loading, class selection, annotation → entry.

* :func:`load_coco` reads a COCO annotation JSON (file order kept: the sampler depends on it).
* :func:`resolve_categories` turns a split (``"few_shot"``, ``"all"``, names and/or ids) into
  the selected categories in class-index order; :data:`FEW_SHOT_CLASS_NAMES` is the
  ``few_shot`` split (method.md §5.1).
* :func:`reference_entry` makes one ``references[]`` entry (see :mod:`.files`) from an
  annotation and its image record; :func:`coco_annotation_problem` says what is wrong with an
  annotation's geometry before it gets that far.

Pure Python + numpy + :mod:`ntt_batch.storage.masks`; no torch.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ..storage.masks import segmentation_bbox_xywh
from .files import is_json_number

# method.md §5.1 table (META['few_shot_classes'], the 20 VOC-overlap classes), in class-index
# order (COCO ids 1, 2, 3, 4, 5, 6, 7, 9, 16, 17, 18, 19, 20, 21, 44, 62, 63, 64, 67, 72).
FEW_SHOT_CLASS_NAMES: tuple[str, ...] = (
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "boat",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "bottle",
    "chair",
    "couch",
    "potted plant",
    "dining table",
    "tv",
)


def _split_tokens(split: str | Sequence[str | int]) -> list[str | int]:
    """Turn a comma-separated split string (or a sequence) into name/id tokens."""
    raw: Iterable[str | int]
    if isinstance(split, str):
        raw = split.split(",")
    else:
        raw = split
    tokens: list[str | int] = []
    for tok in raw:
        if isinstance(tok, bool):
            raise ValueError(f"invalid class selector {tok!r}")
        if isinstance(tok, int):
            tokens.append(tok)
            continue
        t = str(tok).strip()
        if not t:
            continue
        if t.lstrip("+-").isdigit():
            tokens.append(int(t))
        else:
            tokens.append(t)
    return tokens


def _few_valid_names(categories: Sequence[Mapping[str, Any]], n: int = 8) -> str:
    names = [str(c["name"]) for c in sorted(categories, key=lambda c: int(c["id"]))]
    shown = ", ".join(repr(x) for x in names[:n])
    return shown + (f", ... ({len(names)} in all)" if len(names) > n else "")


def _did_you_mean(token: str, categories: Sequence[Mapping[str, Any]]) -> str:
    """' (did you mean 'few_shot'?)' for the closest of the split keywords and class names; '' when none is close."""
    choices = ["few_shot", "all"] + [str(c["name"]) for c in categories]
    lower = {c.lower(): c for c in reversed(choices)}  # first spelling wins
    key = token.strip().lower().replace("-", "_")
    close = difflib.get_close_matches(key, list(lower), n=1, cutoff=0.75)
    if not close:
        close = difflib.get_close_matches(token.strip().lower(), list(lower), n=1, cutoff=0.75)
    return f" (did you mean {lower[close[0]]!r}?)" if close else ""


def resolve_categories(
    coco_categories: Sequence[Mapping[str, Any]], split: str | Sequence[str | int]
) -> list[dict[str, Any]]:
    """Select categories by split name, names and/or ids.

    Args:
        coco_categories: the COCO ``categories`` list (dicts with ``id`` and ``name``).
        split: ``"few_shot"`` (the 20 VOC classes, method.md §5.1), ``"all"``, or a
            comma-separated list of category names and/or integer ids, mixed allowed
            (e.g. ``"person,18,potted plant"``).  A sequence of names/ids is also accepted.

    Returns:
        ``[{"id": int, "name": str}, ...]`` sorted by id, i.e. in class-index order
        (method.md §2.3: class index = rank of the sorted category id).

    Raises:
        ValueError: unknown name or id (the message names it and lists a few valid names), or an
            empty selection.
    """
    by_id: dict[int, dict[str, Any]] = {}
    by_name: dict[str, dict[str, Any]] = {}
    for c in coco_categories:
        entry = {"id": int(c["id"]), "name": str(c["name"])}
        if entry["id"] in by_id:
            raise ValueError(f"duplicate category id {entry['id']} in the categories list")
        by_id[entry["id"]] = entry
        by_name.setdefault(entry["name"], entry)

    if isinstance(split, str) and split.strip() == "all":
        selected = list(by_id.values())
    elif isinstance(split, str) and split.strip() == "few_shot":
        missing = [n for n in FEW_SHOT_CLASS_NAMES if n not in by_name]
        if missing:
            raise ValueError(
                f"split 'few_shot' needs the 20 COCO few-shot classes, but the categories lack "
                f"{missing!r}; valid names include {_few_valid_names(coco_categories)}"
            )
        selected = [by_name[n] for n in FEW_SHOT_CLASS_NAMES]
    else:
        tokens = _split_tokens(split)
        if not tokens:
            raise ValueError(f"empty class selection {split!r}: use 'few_shot', 'all' or names/ids")
        chosen: dict[int, dict[str, Any]] = {}
        for tok in tokens:
            if isinstance(tok, int):
                if tok not in by_id:
                    raise ValueError(
                        f"unknown category id {tok} in split {split!r}; "
                        f"valid ids are {sorted(by_id)[:8]}... and names include "
                        f"{_few_valid_names(coco_categories)}"
                    )
                entry = by_id[tok]
            else:
                if tok not in by_name:
                    raise ValueError(
                        f"unknown category name {tok!r} in split {split!r}{_did_you_mean(tok, coco_categories)}; "
                        f"use 'few_shot', 'all' or class names/ids: valid names include "
                        f"{_few_valid_names(coco_categories)}"
                    )
                entry = by_name[tok]
            chosen[entry["id"]] = entry
        selected = list(chosen.values())
    if not selected:
        raise ValueError(f"split {split!r} selects no category (the categories list is empty)")
    return [dict(c) for c in sorted(selected, key=lambda c: c["id"])]


def load_coco(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a COCO annotation JSON file (plain ``json.load``; keeps annotation file order)."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a COCO annotation file must hold a JSON object")
    return data


def images_by_id(coco: Mapping[str, Any]) -> dict[int, Mapping[str, Any]]:
    """The COCO file's image records by id."""
    return {int(im["id"]): im for im in coco.get("images", [])}


def _copy_segmentation(seg: Any) -> Any:
    """Deep-copy a COCO segmentation, turning compressed-RLE bytes counts into str."""
    seg = copy.deepcopy(seg)
    if isinstance(seg, dict) and isinstance(seg.get("counts"), (bytes, bytearray)):
        seg["counts"] = bytes(seg["counts"]).decode("ascii")
    return seg


def has_segmentation(ann: Mapping[str, Any]) -> bool:
    """True if the annotation has polygons (a non-empty list) or an RLE object."""
    seg = ann.get("segmentation")
    if seg is None:
        return False
    if isinstance(seg, list):
        return len(seg) > 0
    return isinstance(seg, dict)


def reference_entry(ann: Mapping[str, Any], image: Mapping[str, Any]) -> dict[str, Any]:
    """One ``references[]`` entry from a COCO annotation and its image record."""
    width, height = int(image["width"]), int(image["height"])
    entry: dict[str, Any] = {
        "category_id": int(ann["category_id"]),
        "image_id": int(image["id"]),
        "file_name": str(image["file_name"]),
        "width": width,
        "height": height,
        "annotation_id": int(ann["id"]),
    }
    has_seg = has_segmentation(ann)
    if ann.get("bbox") is not None:
        entry["bbox"] = [float(v) for v in ann["bbox"]]
    elif has_seg:
        entry["bbox"] = segmentation_bbox_xywh(ann["segmentation"], height, width)
    if has_seg:
        entry["segmentation"] = _copy_segmentation(ann["segmentation"])
    return entry


def coco_annotation_problem(ann: Mapping[str, Any], image: Mapping[str, Any]) -> str | None:
    """What is wrong with a COCO annotation's geometry for use as a reference (None if nothing).

    Checked before anything reaches pycocotools (which crashes on, or silently misreads, such
    input: a 4-number polygon is taken for a box): the image's size; ``bbox`` = 4 finite
    numbers with w, h > 0; polygons = lists of at least 3 x,y pairs (an even count) of finite
    numbers inside the image (1 px tolerance); RLE = ``size`` equal to the image's [height,
    width] and ``counts``.
    """
    try:
        width, height = image["width"], image["height"]
        if not (is_json_number(width) and is_json_number(height) and width >= 1 and height >= 1):
            raise ValueError
        width, height = int(width), int(height)
    except (KeyError, TypeError, ValueError):
        return f"its image has no valid width/height ({image.get('width')!r} x {image.get('height')!r})"
    box = ann.get("bbox")
    if box is not None:
        if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(is_json_number(v) for v in box):
            return f"bbox must be 4 numbers [x, y, w, h], got {box!r}"
        if not all(np.isfinite(box)) or box[2] <= 0 or box[3] <= 0:
            return f"bbox needs finite numbers and w, h > 0, got {list(box)}"
    seg = ann.get("segmentation")
    if seg is None or (isinstance(seg, list) and not seg):
        return None
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if counts is None or not isinstance(size, (list, tuple)) or len(size) != 2:
            return "segmentation RLE needs 'size' [height, width] and 'counts'"
        if [int(v) if is_json_number(v) else v for v in size] != [height, width]:
            return f"segmentation RLE size {list(size)} differs from the image's [height, width] [{height}, {width}]"
        return None
    if not isinstance(seg, list) or not all(isinstance(poly, list) for poly in seg):
        return "segmentation must be an RLE object or a list of polygons, each a list [x1, y1, x2, y2, ...]"
    tol = 1.0
    for k, poly in enumerate(seg):
        if not all(is_json_number(v) for v in poly):
            return f"segmentation polygon {k} holds non-numbers"
        if len(poly) % 2:
            return f"segmentation polygon {k} has an odd count of coordinates ({len(poly)}; x, y pairs expected)"
        if len(poly) < 6:
            return f"segmentation polygon {k} has {len(poly) // 2} point(s); a polygon needs at least 3"
        xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        if not np.isfinite(xy).all():
            return f"segmentation polygon {k} has a NaN or infinite coordinate"
        if (
            (xy[:, 0] < -tol).any()
            or (xy[:, 0] > width + tol).any()
            or (xy[:, 1] < -tol).any()
            or (xy[:, 1] > height + tol).any()
        ):
            return (
                f"segmentation polygon {k} has points outside the {width}x{height} image "
                f"(x in [{xy[:, 0].min():g}, {xy[:, 0].max():g}], y in [{xy[:, 1].min():g}, {xy[:, 1].max():g}])"
            )
    return None
