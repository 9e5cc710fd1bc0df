"""Reference-set creation (method.md §1) and the ``references.json`` file format.

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

Three ways to build one:

* :func:`sample_references` — the authors' few-shot sampler (``FSS:L16-102``), reproduced
  exactly, including its RNG consumption order (method.md §1). An optional
  :class:`ReferencePreference` (off by default) narrows each class's candidates to large,
  centred objects well inside the image before that same seeded walk.
* :func:`references_from_coco_annotations` — every non-crowd annotation of a user's COCO file.
* :func:`references_from_csv` — a CSV of ``image,category,mask`` and/or ``x,y,w,h`` rows.

:func:`merge_references` joins several reference sets (classes merged by name).

Pure Python + numpy + :mod:`ntt_batch.storage.masks` (PIL only, lazily, for CSV references); no torch.
"""

from __future__ import annotations

import copy
import csv
import difflib
import json
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..hashing import file_sha256
from ..storage.atomic import atomic_write_text
from ..storage.masks import encode_rle, segmentation_bbox_xywh
from ..storage.names import safe_join

REFERENCES_FILE = "references.json"  # the (merged) references, saved beside the bank they built (memory build, the job)

__all__ = [
    "FEW_SHOT_CLASS_NAMES",
    "REFERENCES_FILE",
    "REFERENCES_FORMAT",
    "REFERENCES_VERSION",
    "is_valid_reference",
    "resolve_categories",
    "ReferencePreference",
    "sample_references",
    "sample_references_from_file",
    "load_coco",
    "file_sha256",
    "validate_references",
    "save_references",
    "load_references",
    "references_from_coco_annotations",
    "references_from_csv",
    "merge_references",
    "reference_image_root",
    "resolve_image_root",
]

REFERENCES_FORMAT = "ntt-batch/references"
REFERENCES_VERSION = 1

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

_REQUIRED_TOP_KEYS = ("format", "version", "categories", "references")
_REQUIRED_REF_KEYS = ("category_id", "file_name", "width", "height")


# --------------------------------------------------------------------------------------------
# Filters and class selection
# --------------------------------------------------------------------------------------------


def is_valid_reference(
    ann: Mapping[str, Any],
    image_width: int,
    image_height: int,
    min_box_side: float = 32,
    border_margin: float = 10,
) -> bool:
    """The authors' reference filter (method.md §1 step 3, ``DU:L35-55``).

    Args:
        ann: COCO annotation with ``bbox`` = ``[x, y, w, h]`` (pixels) and optional ``iscrowd``.
        image_width: W of the annotation's image, pixels.
        image_height: H of the annotation's image, pixels.
        min_box_side: minimum box width **and** height, pixels (32).
        border_margin: minimum distance of the box to every image border, pixels (10).

    Returns:
        True iff ``iscrowd != 1``, ``w >= 32 and h >= 32``, and ``x >= 10``, ``y >= 10``,
        ``W - (x + w) >= 10``, ``H - (y + h) >= 10``.
    """
    if ann.get("iscrowd", 0) == 1:
        return False
    bbox = ann.get("bbox")
    if bbox is None or len(bbox) != 4:
        return False
    x, y, w, h = (float(v) for v in bbox)
    if not (w >= min_box_side and h >= min_box_side):
        return False
    return (
        x >= border_margin
        and y >= border_margin
        and image_width - (x + w) >= border_margin
        and image_height - (y + h) >= border_margin
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


# --------------------------------------------------------------------------------------------
# COCO file helpers
# --------------------------------------------------------------------------------------------


def load_coco(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a COCO annotation JSON file (plain ``json.load``; keeps annotation file order)."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a COCO annotation file must hold a JSON object")
    return data


def _images_by_id(coco: Mapping[str, Any]) -> dict[int, Mapping[str, Any]]:
    return {int(im["id"]): im for im in coco.get("images", [])}


def _copy_segmentation(seg: Any) -> Any:
    """Deep-copy a COCO segmentation, turning compressed-RLE bytes counts into str."""
    seg = copy.deepcopy(seg)
    if isinstance(seg, dict) and isinstance(seg.get("counts"), (bytes, bytearray)):
        seg["counts"] = bytes(seg["counts"]).decode("ascii")
    return seg


def _has_segmentation(ann: Mapping[str, Any]) -> bool:
    seg = ann.get("segmentation")
    if seg is None:
        return False
    if isinstance(seg, list):
        return len(seg) > 0
    return isinstance(seg, dict)


def _reference_entry(ann: Mapping[str, Any], image: Mapping[str, Any]) -> dict[str, Any]:
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
    has_seg = _has_segmentation(ann)
    if ann.get("bbox") is not None:
        entry["bbox"] = [float(v) for v in ann["bbox"]]
    elif has_seg:
        entry["bbox"] = segmentation_bbox_xywh(ann["segmentation"], height, width)
    if has_seg:
        entry["segmentation"] = _copy_segmentation(ann["segmentation"])
    return entry


# --------------------------------------------------------------------------------------------
# Optional reference-selection preference (off by default)
# --------------------------------------------------------------------------------------------


_PREFER_KEYS = {
    "area": "min_area_percentile",
    "center": "max_center_distance",
    "centre": "max_center_distance",
    "edge": "min_edge_distance",
}


@dataclass(frozen=True)
class ReferencePreference:
    """Prefer large, centred references well inside their image (all criteria optional; None = off).

    Applied per class, on top of the authors' filter (non-crowd, box sides >= 32 px, box >= 10 px
    from every border, ``DU:L35-55``), to the annotations that pass it (the class's *candidates*):

    * ``min_area_percentile`` P in [0, 100]: keep a candidate whose box area ``w * h`` (pixels) is
      at least the P-th percentile (``numpy.percentile``, linear) of its class's candidates' box
      areas. 50 keeps the larger half of each class. Box area, like the authors' size filter
      (``DU:L41-46``), so box-only references are judged the same way.
    * ``max_center_distance`` d in [0, 1]: keep a candidate whose box centre ``(cx, cy)`` has
      ``max(|cx / W - 0.5|, |cy / H - 0.5|) * 2 <= d``: 0 = exactly at the image centre, 1 = on the
      border. 0.5 keeps box centres in the middle half of the image along both axes.
    * ``min_edge_distance`` e in [0, 0.5): keep a candidate whose box is at least ``e * W`` from
      the left and right borders and ``e * H`` from the top and bottom ones — the authors' 10 px
      border margin (``DU:L47-54``) made relative to the image size. 0.05 = 5 % of each side.

    What the authors' code has: only the fixed filter above. Its comment at ``DU:L47`` says
    "Ignore objects that are too far away from the image center", but the code under it
    (``DU:L48-54``) tests the 10 px border margin, not a distance to the centre; the other
    samplers (``sample_memory_semantic_ref.py:L29-65``: whole images, no filter; the LVIS path of
    ``few_shot_sampling.py:L86-98``: invalid and duplicate references allowed) and the plotting
    scripts (``make_plots/plot_reference_images.py``, ``few_shot_sampling.py:L176-221``) choose
    nothing. So the area percentile and the centre distance are ours, written to do what that
    comment intends (large objects, not cut by the border, near the centre, give context crops
    that are mostly object); the edge distance is the authors' margin, relative.

    How it combines with the sampler: the seeded walk is unchanged — each class's annotation list
    is shuffled exactly as without a preference (same RNG consumption, so every seed keeps its
    meaning), and a candidate the preference rejects is skipped like an invalid one. A class
    whose candidates all pass therefore gets the very references of the plain sampler, and the
    other classes get the first preferred candidates in that same shuffled order.
    """

    min_area_percentile: float | None = None
    max_center_distance: float | None = None
    min_edge_distance: float | None = None

    def __post_init__(self):
        checks = (
            ("min_area_percentile", 0.0, 100.0, True),
            ("max_center_distance", 0.0, 1.0, True),
            ("min_edge_distance", 0.0, 0.5, False),
        )
        for name, lo, hi, hi_inclusive in checks:
            v = getattr(self, name)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
                raise ValueError(f"{name} must be a number or None, got {v!r}")
            ok = lo <= v <= hi if hi_inclusive else lo <= v < hi
            if not ok:
                raise ValueError(f"{name} must be in [{lo:g}, {hi:g}{']' if hi_inclusive else ')'}, got {v}")
            object.__setattr__(self, name, float(v))

    @property
    def active(self) -> bool:
        """True if any criterion is set."""
        return any(v is not None for v in asdict(self).values())

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)

    def describe(self) -> str:
        """Short text, e.g. ``area >= p50, centre distance <= 0.6`` (``off`` if none is set)."""
        bits = []
        if self.min_area_percentile is not None:
            bits.append(f"box area >= p{self.min_area_percentile:g} of the class's candidates")
        if self.max_center_distance is not None:
            bits.append(f"box centre distance <= {self.max_center_distance:g}")
        if self.min_edge_distance is not None:
            bits.append(f"box >= {self.min_edge_distance:g} x image side from every border")
        return ", ".join(bits) or "off"

    @classmethod
    def parse(cls, value: ReferencePreference | Mapping[str, Any] | str | None) -> ReferencePreference | None:
        """Coerce ``prefer``: None / ``""`` / ``"off"`` → None; a dict of the field names; or a
        string ``"area=50,center=0.6,edge=0.05"`` (keys ``area``, ``center``/``centre``, ``edge``
        or the field names; any subset)."""
        if value is None or isinstance(value, ReferencePreference):
            return value
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - set(cls.__dataclass_fields__))
            if unknown:
                raise ValueError(
                    f"unknown reference preference key(s) {unknown}; known: {sorted(cls.__dataclass_fields__)}"
                )
            return cls(**value)
        if not isinstance(value, str):
            raise TypeError(
                f"prefer must be a ReferencePreference, a dict, a string or None, got {type(value).__name__}"
            )
        text = value.strip()
        if text.lower() in ("", "off", "none"):
            return None
        kwargs: dict[str, float] = {}
        for part in text.split(","):
            if not part.strip():
                continue
            key, sep, num = part.partition("=")
            key = key.strip().lower().replace("-", "_")
            field_name = _PREFER_KEYS.get(key, key if key in cls.__dataclass_fields__ else None)
            if not sep or field_name is None:
                raise ValueError(
                    f"bad reference preference {part.strip()!r} in {value!r}: use e.g. "
                    "'area=50,center=0.6,edge=0.05' (keys area, center, edge)"
                )
            try:
                kwargs[field_name] = float(num)
            except ValueError as e:
                raise ValueError(f"bad number {num.strip()!r} for {key!r} in reference preference {value!r}") from e
        return cls(**kwargs)


_PREFER_TEXT = {
    "min_area_percentile": "box area below the class's percentile",
    "max_center_distance": "box centre too far from the image centre",
    "min_edge_distance": "box too close to an image border",
}


def _preference_filter(
    prefer: ReferencePreference, candidates: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]]
) -> tuple[list[bool], dict[str, int], float | None]:
    """Which of a class's candidates (annotation, image) the preference keeps.

    Returns (keep flags, per criterion the count of candidates it rejects — a candidate can fail
    several —, the area threshold in px² or None).
    """
    boxes = np.array([[float(v) for v in a["bbox"]] for a, _ in candidates], dtype=np.float64).reshape(-1, 4)
    wh = np.array([[float(im["width"]), float(im["height"])] for _, im in candidates], dtype=np.float64).reshape(-1, 2)
    keep = np.ones(len(candidates), dtype=bool)
    removed: dict[str, int] = {}
    area_thr = None
    if prefer.min_area_percentile is not None and len(candidates):
        area = boxes[:, 2] * boxes[:, 3]
        area_thr = float(np.percentile(area, prefer.min_area_percentile))
        ok = area >= area_thr
        removed["min_area_percentile"] = int((~ok).sum())
        keep &= ok
    if prefer.max_center_distance is not None:
        cx = (boxes[:, 0] + boxes[:, 2] / 2) / wh[:, 0]
        cy = (boxes[:, 1] + boxes[:, 3] / 2) / wh[:, 1]
        dist = np.maximum(np.abs(cx - 0.5), np.abs(cy - 0.5)) * 2
        ok = dist <= prefer.max_center_distance + 1e-12
        removed["max_center_distance"] = int((~ok).sum())
        keep &= ok
    if prefer.min_edge_distance is not None:
        x, y, w, h = boxes.T
        W, H = wh.T
        edge = np.minimum.reduce([x / W, (W - (x + w)) / W, y / H, (H - (y + h)) / H]) if len(boxes) else np.zeros(0)
        ok = edge >= prefer.min_edge_distance - 1e-12
        removed["min_edge_distance"] = int((~ok).sum())
        keep &= ok
    return keep.tolist(), removed, area_thr


# --------------------------------------------------------------------------------------------
# The authors' sampler (method.md §1)
# --------------------------------------------------------------------------------------------


def sample_references(
    coco: Mapping[str, Any],
    split: str | Sequence[str | int],
    shots: int,
    seed: int,
    *,
    min_box_side: float = 32,
    border_margin: float = 10,
    allow_fewer: bool = False,
    annotations_path: str | os.PathLike[str] | None = None,
    annotations_sha256: str | None = None,
    prefer: ReferencePreference | Mapping[str, Any] | str | None = None,
) -> dict[str, Any]:
    """Sample a K-shot reference set exactly like the authors' ``FSS`` sampler (method.md §1).

    Args:
        coco: a loaded COCO annotation dict (``images``, ``annotations``, ``categories``).
        split: class selection, see :func:`resolve_categories`.
        shots: K, the number of references per class (one instance per distinct image).
        seed: seed of Python's ``random`` (the only randomness of the reference sampler).
        min_box_side: minimum box side in pixels for a valid reference (32).
        border_margin: minimum box distance to every image border in pixels (10).
        allow_fewer: keep classes with 1..K-1 valid references (ragged shot counts) instead of
            raising.  A class with zero usable references is always an error.
        annotations_path: recorded in ``source.annotations`` (as given); if set and
            ``annotations_sha256`` is not, the file's SHA-256 is computed.
        annotations_sha256: recorded in ``source.annotations_sha256``.
        prefer: an optional :class:`ReferencePreference` (or its dict / ``"area=50,center=0.6,
            edge=0.05"`` string form, :meth:`ReferencePreference.parse`): per class, candidates
            that pass the authors' filter but not the preference are skipped in the same seeded
            walk. None (default), ``"off"`` or a preference with no criterion set = the authors'
            sampler, bit for bit, and nothing is added to ``source``. When active, ``source``
            records ``prefer`` (the criteria) and ``prefer_stats`` (per class: candidates, kept,
            rejected per criterion, the area threshold in px²), and a class left with too few
            references names the criteria that removed its candidates.

    Returns:
        a references dict (module docstring).  References are grouped per category in
        category-id order; within a category they keep the sampled order.

    Raises:
        ValueError: a selected class with too few valid references (named, with its count).
    """
    preference = ReferencePreference.parse(prefer)
    if preference is not None and not preference.active:
        preference = None
    if int(shots) < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    shots = int(shots)
    categories = resolve_categories(coco.get("categories", []), split)
    selected_ids = {c["id"] for c in categories}
    images = _images_by_id(coco)

    annotations: dict[int, Mapping[str, Any]] = {}
    # method.md §1 step 2: walk annotations in file order, keep those of the selected classes,
    # one (image_id, ann_id) list per category; categories enter the dict in order of their
    # FIRST annotation (this order fixes the RNG consumption, so it matters).
    per_cat: dict[int, list[tuple[int, int]]] = {}
    for ann in coco.get("annotations", []):
        cat_id = int(ann["category_id"])
        if cat_id not in selected_ids:
            continue
        ann_id = int(ann["id"])
        if ann_id in annotations:
            raise ValueError(f"duplicate annotation id {ann_id} in the COCO annotations")
        annotations[ann_id] = ann
        per_cat.setdefault(cat_id, []).append((int(ann["image_id"]), ann_id))

    # method.md §1 "Random state": only Python's random, seeded once.  A private instance gives
    # the same sequence as random.seed(seed) without touching global state.
    # Optional preference: decided per class over the candidates that pass the authors' filter,
    # before the walk; it consumes no randomness, so the shuffles below are the authors'.
    rejected: set[int] | None = None
    prefer_stats: dict[str, dict[str, Any]] = {}
    if preference is not None:
        rejected = set()
        names = {c["id"]: c["name"] for c in categories}
        for cat_id, pairs in per_cat.items():
            cands = []
            for img_id, ann_id in pairs:
                image = images.get(img_id)
                if image is None:
                    raise ValueError(f"annotation {ann_id} refers to image id {img_id}, which is not in 'images'")
                ann = annotations[ann_id]
                if is_valid_reference(
                    ann,
                    int(image["width"]),
                    int(image["height"]),
                    min_box_side=min_box_side,
                    border_margin=border_margin,
                ):
                    cands.append((ann_id, ann, image))
            keep, removed, area_thr = _preference_filter(preference, [(a, im) for _, a, im in cands])
            rejected.update(ann_id for (ann_id, _, _), k in zip(cands, keep) if not k)
            kept_images = {int(a["image_id"]) for (_, a, _), k in zip(cands, keep) if k}
            prefer_stats[names[cat_id]] = {
                "candidates": len(cands),
                "kept": int(sum(keep)),
                "kept_images": len(kept_images),
                "rejected_by": removed,
                "area_threshold_px2": area_thr,
            }

    rng = random.Random(seed)
    sampled: dict[int, list[int]] = {}
    for cat_id, pairs in per_cat.items():  # method.md §1 step 3, in first-annotation order
        pairs = list(pairs)
        rng.shuffle(pairs)
        accepted: list[int] = []
        used_images: set[int] = set()
        for img_id, ann_id in pairs:
            image = images.get(img_id)
            if image is None:
                raise ValueError(f"annotation {ann_id} refers to image id {img_id}, which is not in 'images'")
            if not is_valid_reference(
                annotations[ann_id],
                int(image["width"]),
                int(image["height"]),
                min_box_side=min_box_side,
                border_margin=border_margin,
            ):
                continue
            if rejected is not None and ann_id in rejected:  # the preference (off by default)
                continue
            if img_id in used_images:  # one instance per image per class
                continue
            used_images.add(img_id)
            accepted.append(ann_id)
            if len(accepted) >= shots:
                break
        sampled[cat_id] = accepted

    # method.md §1 step 4: too few references is an error (COCO path).  Categories without any
    # annotation never enter the reference's dict; for us they are classes with 0 references.
    problems = []
    for c in categories:
        n = len(sampled.get(c["id"], []))
        if n == 0 or (n < shots and not allow_fewer):
            problem = f"'{c['name']}' (id {c['id']}): {n} valid reference(s) found"
            st = prefer_stats.get(c["name"])
            if st is not None and st["kept"] < st["candidates"]:
                why = ", ".join(f"{_PREFER_TEXT[k]}: {v}" for k, v in st["rejected_by"].items() if v)
                problem += (
                    f" after the reference preference rejected {st['candidates'] - st['kept']} of its "
                    f"{st['candidates']} candidate(s) that pass the filters ({why})"
                )
            problems.append(problem)
    if problems:
        zero_only = all(": 0 valid" in p for p in problems)
        hint = (
            "Every selected class needs at least one usable reference; drop these classes"
            if zero_only
            else "Use fewer shots, or pass --allow-fewer-shots to keep ragged shot counts"
            " (classes with 0 references still fail)"
        )
        if preference is not None:
            hint += f". The reference preference ({preference.describe()}) is on: loosen it, or sample without it"
        raise ValueError(
            f"not enough references for {shots}-shot sampling "
            f"(filters: non-crowd, box >= {min_box_side} px, >= {border_margin} px from the "
            f"borders, one instance per image"
            + (f"; preference: {preference.describe()}" if preference is not None else "")
            + "): "
            + "; ".join(problems)
            + f". {hint}"
        )

    references = []
    for c in categories:  # grouped per category in category-id order
        for ann_id in sampled[c["id"]]:
            ann = annotations[ann_id]
            references.append(_reference_entry(ann, images[int(ann["image_id"])]))

    if annotations_path is not None and annotations_sha256 is None:
        annotations_sha256 = file_sha256(annotations_path)
    source: dict[str, Any] = {
        "kind": "coco-sample",
        "annotations": None if annotations_path is None else str(annotations_path),
        "annotations_sha256": annotations_sha256,
        "split": split if isinstance(split, str) else list(split),
        "shots": shots,
        "seed": seed,
        "min_box_side": min_box_side,
        "border_margin": border_margin,
        "allow_fewer_shots": bool(allow_fewer),
    }
    if preference is not None:  # absent when off: the authors' sampler's provenance, unchanged
        source["prefer"] = preference.to_dict()
        source["prefer_stats"] = {
            c["name"]: prefer_stats.get(c["name"], {"candidates": 0, "kept": 0}) for c in categories
        }
    return {
        "format": REFERENCES_FORMAT,
        "version": REFERENCES_VERSION,
        "categories": categories,
        "references": references,
        "source": source,
    }


def sample_references_from_file(
    annotations_path: str | os.PathLike[str],
    split: str | Sequence[str | int],
    shots: int,
    seed: int,
    **kwargs: Any,
) -> dict[str, Any]:
    """:func:`load_coco` + :func:`sample_references`, recording the file's path and SHA-256.

    ``kwargs`` pass through (``allow_fewer``, ``min_box_side``, ``border_margin``, ``prefer``).
    """
    coco = load_coco(annotations_path)
    return sample_references(
        coco,
        split,
        shots,
        seed,
        annotations_path=annotations_path,
        annotations_sha256=file_sha256(annotations_path),
        **kwargs,
    )


# --------------------------------------------------------------------------------------------
# references.json: validation, save, load
# --------------------------------------------------------------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
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
    cats = refs["categories"]
    if not isinstance(cats, list) or not cats:
        raise ValueError(f"{where}: 'categories' must be a non-empty list")
    seen_ids: set[int] = set()
    seen_names: set[str] = set()
    for i, c in enumerate(cats):
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            raise ValueError(f"{where}: categories[{i}] must be an object with 'id' and 'name'")
        if not _is_int(c["id"]) or not isinstance(c["name"], str):
            raise ValueError(f"{where}: categories[{i}] needs an integer 'id' and a string 'name'")
        if c["id"] in seen_ids:
            raise ValueError(f"{where}: duplicate category id {c['id']}")
        if c["name"] in seen_names:
            raise ValueError(f"{where}: duplicate category name {c['name']!r}")
        seen_ids.add(c["id"])
        seen_names.add(c["name"])
    items = refs["references"]
    if not isinstance(items, list):
        raise ValueError(f"{where}: 'references' must be a list")
    counts = {c["id"]: 0 for c in cats}
    for i, r in enumerate(items):
        if not isinstance(r, dict):
            raise ValueError(f"{where}: references[{i}] must be an object")
        miss = [k for k in _REQUIRED_REF_KEYS if k not in r]
        if miss:
            raise ValueError(f"{where}: references[{i}] is missing key(s) {miss}")
        if not _is_int(r["category_id"]):
            raise ValueError(f"{where}: references[{i}].category_id must be an integer")
        if r["category_id"] not in counts:
            raise ValueError(
                f"{where}: references[{i}] has category_id {r['category_id']}, "
                f"which is not in 'categories' (ids {sorted(counts)})"
            )
        if not isinstance(r["file_name"], str) or not r["file_name"]:
            raise ValueError(f"{where}: references[{i}].file_name must be a non-empty string")
        for k in ("width", "height"):
            if not _is_int(r[k]) or r[k] <= 0:
                raise ValueError(f"{where}: references[{i}].{k} must be a positive integer")
        has_bbox = "bbox" in r and r["bbox"] is not None
        has_seg = "segmentation" in r and r["segmentation"] is not None
        if not has_bbox and not has_seg:
            raise ValueError(f"{where}: references[{i}] has neither 'bbox' nor 'segmentation'")
        if has_bbox:
            b = r["bbox"]
            if not isinstance(b, list) or len(b) != 4 or not all(_is_number(v) for v in b):
                raise ValueError(f"{where}: references[{i}].bbox must be [x, y, w, h] numbers")
            if b[2] <= 0 or b[3] <= 0:
                raise ValueError(f"{where}: references[{i}].bbox has a non-positive size {b}")
        if has_seg:
            s = r["segmentation"]
            if isinstance(s, dict):
                if "size" not in s or "counts" not in s:
                    raise ValueError(f"{where}: references[{i}].segmentation RLE needs 'size' and 'counts'")
                if list(s["size"]) != [r["height"], r["width"]]:
                    raise ValueError(
                        f"{where}: references[{i}].segmentation size {s['size']} does not match "
                        f"[height, width] = [{r['height']}, {r['width']}]"
                    )
            elif not (isinstance(s, list) and s and all(isinstance(p, list) for p in s)):
                raise ValueError(
                    f"{where}: references[{i}].segmentation must be a non-empty list of polygons or an RLE object"
                )
        counts[r["category_id"]] += 1
        if r.get("image_root") is not None and (not isinstance(r["image_root"], str) or not r["image_root"]):
            raise ValueError(f"{where}: references[{i}].image_root must be a non-empty string")
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


# --------------------------------------------------------------------------------------------
# Custom references
# --------------------------------------------------------------------------------------------


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
        if not (_is_number(width) and _is_number(height) and width >= 1 and height >= 1):
            raise ValueError
        width, height = int(width), int(height)
    except (KeyError, TypeError, ValueError):
        return f"its image has no valid width/height ({image.get('width')!r} x {image.get('height')!r})"
    box = ann.get("bbox")
    if box is not None:
        if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(_is_number(v) for v in box):
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
        if [int(v) if _is_number(v) else v for v in size] != [height, width]:
            return f"segmentation RLE size {list(size)} differs from the image's [height, width] [{height}, {width}]"
        return None
    if not isinstance(seg, list) or not all(isinstance(poly, list) for poly in seg):
        return "segmentation must be an RLE object or a list of polygons, each a list [x1, y1, x2, y2, ...]"
    tol = 1.0
    for k, poly in enumerate(seg):
        if not all(_is_number(v) for v in poly):
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


def references_from_coco_annotations(
    coco: Mapping[str, Any],
    *,
    split: str | Sequence[str | int] = "all",
    max_per_class: int | None = None,
) -> dict[str, Any]:
    """Use every non-crowd annotation of the chosen classes of a user's COCO file as a reference.

    No size/border filters.  Annotations may carry polygons, RLE, or only a ``bbox`` (box-only
    references: the memory-bank builder makes their masks with SAM2 box prompts).

    Args:
        coco: loaded COCO dict.
        split: class selection, see :func:`resolve_categories`.  With ``"all"``, categories that
            have no usable annotation are dropped (a COCO file often lists more categories than
            it annotates); with an explicit selection they are an error.
        max_per_class: keep at most this many references per class (the first ones in file
            order); None = all.

    Returns:
        a references dict; per class, references keep the file order.
    """
    if max_per_class is not None and int(max_per_class) < 1:
        raise ValueError(f"max_per_class must be >= 1 or None, got {max_per_class}")
    categories = resolve_categories(coco.get("categories", []), split)
    selected = {c["id"]: c for c in categories}
    images = _images_by_id(coco)
    per_cat: dict[int, list[dict[str, Any]]] = {cid: [] for cid in selected}
    for ann in coco.get("annotations", []):
        cid = int(ann["category_id"])
        if cid not in selected or ann.get("iscrowd", 0) == 1:
            continue
        if ann.get("bbox") is None and not _has_segmentation(ann):
            continue
        if max_per_class is not None and len(per_cat[cid]) >= int(max_per_class):
            continue
        image = images.get(int(ann["image_id"]))
        if image is None:
            raise ValueError(
                f"annotation {ann.get('id')} refers to image id {ann['image_id']}, which is not in 'images'"
            )
        problem = coco_annotation_problem(ann, image)
        if problem:
            raise ValueError(
                f"annotation id {ann.get('id')} (image id {ann['image_id']}): {problem}; fix or remove that annotation"
            )
        per_cat[cid].append(_reference_entry(ann, image))

    dropped = [c for c in categories if not per_cat[c["id"]]]
    if dropped and not (isinstance(split, str) and split.strip() == "all"):
        names = ", ".join(f"'{c['name']}' (id {c['id']})" for c in dropped)
        raise ValueError(f"no usable (non-crowd) annotation for selected class(es) {names}")
    categories = [c for c in categories if per_cat[c["id"]]]
    if not categories:
        raise ValueError("the COCO file has no usable (non-crowd) annotation")
    references = [r for c in categories for r in per_cat[c["id"]]]
    return {
        "format": REFERENCES_FORMAT,
        "version": REFERENCES_VERSION,
        "categories": categories,
        "references": references,
        "source": {
            "kind": "coco-annotations",
            "split": split if isinstance(split, str) else list(split),
            "max_per_class": max_per_class,
            "dropped_categories": [c["name"] for c in dropped],
        },
    }


_CSV_BOX_COLUMNS = ("x", "y", "w", "h")
_CSV_COLUMNS = ("image", "category", "mask") + _CSV_BOX_COLUMNS


def _png_mask(path: Path) -> np.ndarray:
    """Read a mask image as bool (H, W): nonzero pixels = object (alpha channel ignored)."""
    from PIL import Image  # local import: only CSV references need PIL

    with Image.open(path) as im:
        im.load()
        if im.mode == "P":
            arr = np.asarray(im)  # palette index, 0 = background
        elif im.mode in ("RGBA", "LA", "PA"):
            arr = np.asarray(im)[..., :-1]
        else:
            arr = np.asarray(im)
    if arr.ndim == 3:
        return np.any(arr != 0, axis=2)
    return arr != 0


def _csv_columns(header: list[str], csv_path: Path) -> dict[str, int]:
    """Column name → index; checks the header (see :func:`references_from_csv`)."""
    where = f"{csv_path} line 1"
    cols = {h: k for k, h in enumerate(header)}
    unknown = [h for h in header if h not in _CSV_COLUMNS]
    repeated = sorted({h for h in header if header.count(h) > 1})
    box = [c for c in _CSV_BOX_COLUMNS if c in cols]
    problem = None
    if unknown or repeated:
        problem = (
            f"unknown column(s) {', '.join(map(repr, unknown))}"
            if unknown
            else f"repeated column(s) {', '.join(map(repr, repeated))}"
        )
    elif "image" not in cols or "category" not in cols:
        problem = "columns 'image' and 'category' are required"
    elif box and len(box) != 4:
        problem = f"box columns need all of x,y,w,h (got {','.join(box)})"
    elif "mask" not in cols and not box:
        problem = "give a 'mask' column, the box columns x,y,w,h, or both"
    if problem:
        raise ValueError(
            f"{where}: {problem}; the header must be 'image,category,mask', 'image,category,x,y,w,h' or "
            f"'image,category,mask,x,y,w,h' (any order), got {','.join(header)!r}"
        )
    return cols


def references_from_csv(csv_path: str | os.PathLike[str], image_root: str | os.PathLike[str] | None) -> dict[str, Any]:
    """Build references from a CSV file of mask rows and/or box rows.

    Columns (header line, any order): ``image``, ``category``, then ``mask``, or ``x,y,w,h``, or
    all of them. With all of them, each row fills **either** ``mask`` **or** ``x,y,w,h`` (the
    other cells empty), so one file can mix mask references and box-only references.

    * ``image``: image path relative to ``image_root`` (stored as ``file_name`` as written; no
      absolute paths, no ``..``);
    * ``category``: class name; classes get ids 1..N in order of first appearance;
    * ``mask``: a mask image (PNG) of the object: **non-zero pixels are the object** (any channel;
      an alpha channel is ignored; palette images: index 0 is background). It must have exactly
      the image's size (W x H, after no resizing or rotation). A relative path is looked up in the
      CSV's folder first, then under ``image_root``. Stored as a compressed RLE
      ``segmentation`` with its tight box;
    * ``x,y,w,h``: COCO box in pixels (a box-only reference, inside the image); ``memory build
      --sam2 NAME`` makes its mask with a SAM2 box prompt.

    Image sizes are read with PIL without decoding pixels (EXIF orientation is not applied:
    give masks and boxes in the stored pixel layout). Image ids are 1..M in order of first
    appearance; annotation ids are the data-row numbers 1..R. The image root is remembered in
    the result (``image_root``), so ``memory build`` does not need it again.

    Args:
        csv_path: the CSV file.
        image_root: folder the ``image`` paths are relative to (None = the CSV's folder).

    Raises:
        ValueError: bad header, missing files, size mismatch, empty mask, bad box, a row with
            both or neither of mask and box... — the message names the CSV file and line.
    """
    from PIL import Image  # local import: only CSV references need PIL

    csv_path = Path(csv_path)
    csv_dir = csv_path.parent
    root = csv_dir if image_root is None else Path(image_root)
    categories: dict[str, int] = {}
    image_ids: dict[str, int] = {}
    image_sizes: dict[str, tuple[int, int]] = {}
    references: list[dict[str, Any]] = []
    kinds: dict[str, int] = {"mask": 0, "box": 0}
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{csv_path}: empty CSV file")
        header = [h.strip() for h in header]
        cols = _csv_columns(header, csv_path)
        has_mask, has_box = "mask" in cols, "x" in cols
        for row in reader:
            line = reader.line_num
            where = f"{csv_path} line {line}"
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise ValueError(f"{where}: expected {len(header)} columns, got {len(row)}")
            row = [c.strip() for c in row]
            image_name, cat_name = row[cols["image"]], row[cols["category"]]
            if not image_name or not cat_name:
                raise ValueError(f"{where}: empty 'image' or 'category'")
            mask_cell = row[cols["mask"]] if has_mask else ""
            box_cells = [row[cols[c]] for c in _CSV_BOX_COLUMNS] if has_box else []
            if has_mask and not has_box and not mask_cell:
                raise ValueError(f"{where}: empty 'mask'")
            if has_box and any(box_cells) and not all(box_cells):
                raise ValueError(f"{where}: fill all of x,y,w,h or none of them, got {box_cells}")
            if mask_cell and any(box_cells):
                raise ValueError(f"{where}: a row gives either a mask or a box x,y,w,h, not both")
            if not mask_cell and not any(box_cells):
                raise ValueError(f"{where}: the row has neither a mask nor a box x,y,w,h")
            if image_name not in image_sizes:
                try:
                    img_path = safe_join(root, image_name)
                except ValueError as e:
                    raise ValueError(f"{where}: {e}") from e
                try:
                    with Image.open(img_path) as im:  # lazy: reads the header only
                        w_img, h_img = im.size
                except FileNotFoundError as e:
                    raise ValueError(f"{where}: image not found: {img_path}") from e
                except OSError as e:
                    raise ValueError(f"{where}: cannot read image {img_path}: {e}") from e
                image_sizes[image_name] = (int(w_img), int(h_img))
                image_ids[image_name] = len(image_ids) + 1
            width, height = image_sizes[image_name]
            entry: dict[str, Any] = {
                "category_id": categories.setdefault(cat_name, len(categories) + 1),
                "image_id": image_ids[image_name],
                "file_name": image_name,
                "width": width,
                "height": height,
                "annotation_id": len(references) + 1,
            }
            if mask_cell:
                candidates = [csv_dir / mask_cell]
                if not Path(mask_cell).is_absolute() and root != csv_dir:
                    candidates.append(root / mask_cell)
                mask_path = next((c for c in candidates if c.is_file()), None)
                if mask_path is None:
                    raise ValueError(f"{where}: mask not found: looked for " + " and ".join(str(c) for c in candidates))
                try:
                    mask = _png_mask(mask_path)
                except OSError as e:
                    raise ValueError(f"{where}: cannot read mask {mask_path}: {e}") from e
                if mask.shape != (height, width):
                    raise ValueError(
                        f"{where}: mask {mask_path} has size {mask.shape[1]}x{mask.shape[0]} "
                        f"(WxH) but image {image_name} has size {width}x{height}"
                    )
                if not mask.any():
                    raise ValueError(f"{where}: mask {mask_path} is empty (no nonzero pixel)")
                rle = encode_rle(mask)
                entry["bbox"] = segmentation_bbox_xywh(rle, height, width)
                entry["segmentation"] = rle
                kinds["mask"] += 1
            else:
                try:
                    x, y, w, h = (float(v) for v in box_cells)
                except ValueError as e:
                    raise ValueError(f"{where}: x,y,w,h must be numbers, got {box_cells}") from e
                if not all(np.isfinite([x, y, w, h])) or w <= 0 or h <= 0:
                    raise ValueError(f"{where}: box needs finite x, y and w > 0, h > 0")
                if x < 0 or y < 0 or x + w > width or y + h > height:
                    raise ValueError(
                        f"{where}: box [{x}, {y}, {w}, {h}] (xywh) is outside image "
                        f"{image_name} of size {width}x{height}"
                    )
                entry["bbox"] = [x, y, w, h]
                kinds["box"] += 1
            references.append(entry)
    if not references:
        raise ValueError(f"{csv_path}: no data rows")
    cats = [{"id": cid, "name": name} for name, cid in categories.items()]
    references.sort(key=lambda r: r["category_id"])  # stable: CSV order within a class
    return {
        "format": REFERENCES_FORMAT,
        "version": REFERENCES_VERSION,
        "categories": cats,
        "references": references,
        "image_root": os.path.abspath(root),
        "source": {
            "kind": "csv",
            "csv": str(csv_path),
            "csv_sha256": file_sha256(csv_path),
            "image_root": str(root),
            "mask_rows": kinds["mask"],
            "box_rows": kinds["box"],
        },
    }
