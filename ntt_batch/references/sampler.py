"""The authors' few-shot reference sampler (method.md §1, ``FSS:L16-102``), reproduced exactly,
including its RNG consumption order.

:func:`sample_references` walks one class at a time: the class's annotations (file order) are
shuffled by one seeded ``random.Random``, and the first K valid ones (:func:`is_valid_reference`,
one per image) are kept. An optional :class:`~ntt_batch.references.preferences.ReferencePreference`
(off by default) skips candidates in that same walk, so the shuffles, and every seed's meaning,
are unchanged.

Pure Python + numpy; no torch.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..hashing import file_sha256
from .coco import images_by_id, load_coco, reference_entry, resolve_categories
from .files import REFERENCES_FORMAT, REFERENCES_VERSION
from .preferences import ReferencePreference, preference_filter, rejection_summary

# (annotation, image record) -> does it pass the authors' filter (is_valid_reference with the sampler's sizes)
ValidCheck = Callable[[Mapping[str, Any], Mapping[str, Any]], bool]


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


# 93 lines, 43 of them the signature and docstring: the body calls the steps below (method.md §1
# steps 2-4 and the optional preference) and writes the provenance record.
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
    images = images_by_id(coco)
    annotations, per_cat = _annotations_per_class(coco, {c["id"] for c in categories})

    is_valid = _authors_filter(min_box_side, border_margin)
    # Optional preference: decided per class over the candidates that pass the authors' filter,
    # before the walk; it consumes no randomness, so the walk's shuffles are the authors'.
    rejected: set[int] | None = None
    prefer_stats: dict[str, dict[str, Any]] = {}
    if preference is not None:
        names = {c["id"]: c["name"] for c in categories}
        rejected, prefer_stats = _preference_rejections(preference, per_cat, annotations, images, names, is_valid)

    sampled = _seeded_walk(per_cat, annotations, images, shots, seed, is_valid, rejected)
    _check_enough(categories, sampled, shots, allow_fewer, preference, prefer_stats, (min_box_side, border_margin))

    chosen = [annotations[ann_id] for c in categories for ann_id in sampled[c["id"]]]  # per class, id order
    references = [reference_entry(ann, images[int(ann["image_id"])]) for ann in chosen]

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


def _authors_filter(min_box_side: float, border_margin: float) -> ValidCheck:
    """:func:`is_valid_reference` with these sizes, as a check of (annotation, image record)."""

    def is_valid(ann: Mapping[str, Any], image: Mapping[str, Any]) -> bool:
        return is_valid_reference(
            ann, int(image["width"]), int(image["height"]), min_box_side=min_box_side, border_margin=border_margin
        )

    return is_valid


def _annotations_per_class(
    coco: Mapping[str, Any], selected_ids: set[int]
) -> tuple[dict[int, Mapping[str, Any]], dict[int, list[tuple[int, int]]]]:
    """method.md §1 step 2: the selected classes' annotations by id, and per class its
    ``(image_id, annotation_id)`` pairs in file order.

    Classes enter the per-class dict in order of their FIRST annotation in the file: this order
    fixes the RNG consumption of :func:`_seeded_walk`, so it matters.
    """
    annotations: dict[int, Mapping[str, Any]] = {}
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
    return annotations, per_cat


def _image_of(images: Mapping[int, Mapping[str, Any]], img_id: int, ann_id: int) -> Mapping[str, Any]:
    image = images.get(img_id)
    if image is None:
        raise ValueError(f"annotation {ann_id} refers to image id {img_id}, which is not in 'images'")
    return image


def _preference_rejections(
    preference: ReferencePreference,
    per_cat: Mapping[int, list[tuple[int, int]]],
    annotations: Mapping[int, Mapping[str, Any]],
    images: Mapping[int, Mapping[str, Any]],
    names: Mapping[int, str],
    is_valid: ValidCheck,
) -> tuple[set[int], dict[str, dict[str, Any]]]:
    """The annotation ids the preference rejects among each class's valid candidates, and per
    class name its statistics (candidates, kept, kept images, rejected per criterion, the area
    threshold in px²). Consumes no randomness."""
    rejected: set[int] = set()
    prefer_stats: dict[str, dict[str, Any]] = {}
    for cat_id, pairs in per_cat.items():
        cands = []
        for img_id, ann_id in pairs:
            image = _image_of(images, img_id, ann_id)
            ann = annotations[ann_id]
            if is_valid(ann, image):
                cands.append((ann_id, ann, image))
        keep, removed, area_thr = preference_filter(preference, [(a, im) for _, a, im in cands])
        rejected.update(ann_id for (ann_id, _, _), k in zip(cands, keep) if not k)
        kept_images = {int(a["image_id"]) for (_, a, _), k in zip(cands, keep) if k}
        prefer_stats[names[cat_id]] = {
            "candidates": len(cands),
            "kept": int(sum(keep)),
            "kept_images": len(kept_images),
            "rejected_by": removed,
            "area_threshold_px2": area_thr,
        }
    return rejected, prefer_stats


def _seeded_walk(
    per_cat: Mapping[int, list[tuple[int, int]]],
    annotations: Mapping[int, Mapping[str, Any]],
    images: Mapping[int, Mapping[str, Any]],
    shots: int,
    seed: int,
    is_valid: ValidCheck,
    rejected: set[int] | None,
) -> dict[int, list[int]]:
    """method.md §1 step 3: per class (first-annotation order), shuffle its pairs with the one
    seeded RNG and keep the first ``shots`` valid, not rejected annotations, one per image.

    method.md §1 "Random state": only Python's random, seeded once. A private instance gives the
    same sequence as ``random.seed(seed)`` without touching global state.
    """
    rng = random.Random(seed)
    sampled: dict[int, list[int]] = {}
    for cat_id, pairs in per_cat.items():
        pairs = list(pairs)
        rng.shuffle(pairs)
        accepted: list[int] = []
        used_images: set[int] = set()
        for img_id, ann_id in pairs:
            image = _image_of(images, img_id, ann_id)
            if not is_valid(annotations[ann_id], image):
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
    return sampled


def _check_enough(
    categories: Sequence[Mapping[str, Any]],
    sampled: Mapping[int, list[int]],
    shots: int,
    allow_fewer: bool,
    preference: ReferencePreference | None,
    prefer_stats: Mapping[str, Mapping[str, Any]],
    sizes: tuple[float, float],
) -> None:
    """method.md §1 step 4: too few references is an error (COCO path), naming each short class.

    Categories without any annotation never enter the reference's dict; for us they are classes
    with 0 references, always an error. ``sizes``: (min box side, border margin) in pixels.
    """
    problems = []
    for c in categories:
        n = len(sampled.get(c["id"], []))
        if n == 0 or (n < shots and not allow_fewer):
            problem = f"'{c['name']}' (id {c['id']}): {n} valid reference(s) found"
            st = prefer_stats.get(c["name"])
            if st is not None and st["kept"] < st["candidates"]:
                problem += (
                    f" after the reference preference rejected {st['candidates'] - st['kept']} of its "
                    f"{st['candidates']} candidate(s) that pass the filters ({rejection_summary(st['rejected_by'])})"
                )
            problems.append(problem)
    if not problems:
        return
    min_box_side, border_margin = sizes
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
