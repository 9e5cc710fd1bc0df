"""The three kinds of review input, read into one shape: the gold labels (or decisions) per row.

* :func:`read_decisions` — the review page's ``decisions.json`` (``docs/review_decisions.md``):
  explicit accept / reject / relabel decisions on instances of the output's rows.
* :func:`read_label_studio` — Label Studio's JSON export of reviewed tasks
  (Export → JSON, or ``GET /api/projects/<id>/export?exportType=JSON``): per task the **latest
  non-cancelled annotation** (by ``updated_at``, then ``created_at``, then id) is the image's
  complete gold labelling; a task without one was not reviewed. Regions of type
  ``polygonlabels`` (``value.points``, percentages of the width/height) and ``brushlabels``
  (``value.rle``, Label Studio's RLE, :mod:`.brush`) are read; other result types are counted
  and ignored. The parts of one instance that ntt-batch's polygon export wrote as separate
  regions (ids ``<id>``, ``<id>_1``, ``<id>_2`` ... with one label) are joined back into one.
* :func:`read_coco` — a COCO annotation file: each listed image's annotations are its complete
  gold labelling (``iscrowd`` ones are crowd regions; box-only annotations are used as box masks).

A task or image is tied to its row by the row's URI (``data.image_uri`` of ntt-batch's tasks; a
COCO ``file_name`` equal to it), else its image id (``data.image_id``; the COCO image id), else its
file name (the base name of ``data.image`` / ``file_name``, when one row has it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from ..output.reader import read_json
from ..storage.masks import encode_rle, segmentation_to_rle
from ..viz.review_decisions import validate_decisions
from .brush import brush_mask
from .rows import Row, RowIndex, base_name, collect_rows

LABEL_TYPES = ("polygonlabels", "brushlabels", "labels")


@dataclass
class GoldRegion:
    """One gold instance: its class name as the reviewer gave it, its mask (compressed RLE at the row size)."""

    name: str
    rle: dict[str, Any]
    iscrowd: bool = False
    origin: dict[str, Any] = field(default_factory=dict)


@dataclass
class GoldImage:
    """A reviewed image whose gold labels are complete (Label Studio, COCO)."""

    row: Row
    regions: list[GoldRegion]
    origin: dict[str, Any] = field(default_factory=dict)


@dataclass
class Decision:
    """A decision on prediction ``pred`` (index in the row's instances) of a row."""

    pred: int
    action: str  # accept | reject | relabel
    name: str  # the class after the decision
    decision: dict[str, Any]


@dataclass
class DecidedImage:
    """A reviewed image of a decisions file: the decisions on some of its predictions."""

    row: Row
    decisions: list[Decision]


@dataclass
class ReviewInput:
    """What one input says, tied to rows; ``counts`` and ``notices`` for the report."""

    kind: str  # decisions | label-studio | coco
    path: str
    gold_images: list[GoldImage] = field(default_factory=list)
    decided_images: list[DecidedImage] = field(default_factory=list)
    categories: list[dict] = field(default_factory=list)  # classes the input names (id, name), as it numbers them
    counts: dict[str, int] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


def _bump(counts: dict[str, int], key: str, n: int = 1) -> None:
    counts[key] = counts.get(key, 0) + n


# ----------------------------------------------------------------------------- decisions


def _same_instance(p, original: dict) -> bool:
    return (
        p.category_id == int(original["category_id"])
        and [float(v) for v in original["bbox"]] == p.bbox
        and np.float32(original["score"]) == np.float32(p.score)
    )


def read_decisions(path: str, shards: str, run_categories: dict[int, str], options: dict | None = None) -> ReviewInput:
    """The review page's decisions file, its decisions tied to the rows' instances.

    An instance is found at (``image_uri``, ``instance``) when it still matches ``original``;
    else by ``original``'s class, box and score in that row; else the decision is stale (counted,
    named in a notice, not used).
    """
    doc = read_json(path, options)
    try:
        validate_decisions(doc)
    except ValueError as e:
        raise ValueError(f"{path}: {e} (see docs/review_decisions.md)") from e
    inp = ReviewInput(kind="decisions", path=path, meta={k: doc.get(k) for k in ("output", "run_ids", "reviewer")})
    names = dict(run_categories)
    for c in doc.get("categories") or []:
        if isinstance(c, dict) and isinstance(c.get("id"), int) and isinstance(c.get("name"), str):
            names.setdefault(c["id"], c["name"])
            inp.categories.append({"id": c["id"], "name": c["name"]})
    decisions = doc["decisions"]
    _bump(inp.counts, "decisions", len(decisions))
    for d in decisions:
        _bump(inp.counts, d["action"])
    if not decisions:
        raise ValueError(f"{path} holds no decision: review some instances on the page first (keys a, r, c)")
    rows = collect_rows(shards, uris={d["image_uri"] for d in decisions}, options=options)
    per_row: dict[str, list[Decision]] = {}
    stale: list[str] = []
    moved = 0
    for d in decisions:
        row = rows.by_uri.get(d["image_uri"])
        if row is None:
            stale.append(
                f"{d['image_uri']} #{d['instance']} (no such row"
                + (", an error row)" if d["image_uri"] in rows.error_rows else ")")
            )
            continue
        k = d["instance"]
        if not (k < len(row.preds) and _same_instance(row.preds[k], d["original"])):
            found = [p.index for p in row.preds if _same_instance(p, d["original"])]
            if not found:
                stale.append(f"{d['image_uri']} #{k} (no instance matches its original class, box and score)")
                continue
            k, moved = found[0], moved + 1
        name = names.get(d["category_id"]) or d.get("category_name")
        if not name:
            stale.append(f"{d['image_uri']} #{k} (class id {d['category_id']} has no name in the file or the run)")
            continue
        per_row.setdefault(row.image_uri, []).append(Decision(pred=k, action=d["action"], name=str(name), decision=d))
    for uri, decs in per_row.items():
        seen: dict[int, Decision] = {}
        for dec in decs:  # two decisions landing on one instance (after a move): the later wins
            if dec.pred not in seen or dec.decision["decided_at"] >= seen[dec.pred].decision["decided_at"]:
                seen[dec.pred] = dec
        inp.decided_images.append(
            DecidedImage(row=rows.by_uri[uri], decisions=sorted(seen.values(), key=lambda x: x.pred))
        )
    if moved:
        inp.notices.append(f"{moved} decision(s) found their instance at another index (output rewritten since?)")
    if stale:
        _bump(inp.counts, "stale", len(stale))
        inp.notices.append(
            f"{len(stale)} stale decision(s) not used: " + "; ".join(stale[:5]) + (" ..." if len(stale) > 5 else "")
        )
    if not inp.decided_images:
        raise ValueError(
            f"none of the decisions in {path} refers to an instance of {shards}: "
            f"was the review made of another output ({doc.get('output')!r})?"
        )
    return inp


# ----------------------------------------------------------------------------- Label Studio


def _final_annotation(task: dict) -> dict | None:
    anns = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
    if not anns:
        return None
    return max(anns, key=lambda a: (str(a.get("updated_at") or ""), str(a.get("created_at") or ""), a.get("id") or 0))


def _region_label(res: dict) -> tuple[str | None, str]:
    """(class name, problem) of one result; name None with the reason when it cannot be used."""
    value = res.get("value") or {}
    labels = value.get(res.get("type")) or value.get("labels")
    if not isinstance(labels, list) or not labels or not isinstance(labels[0], str):
        return None, "no label"
    if len(labels) > 1:
        return None, f"several labels {labels}"
    return labels[0], ""


def _region_mask(res: dict, h: int, w: int) -> np.ndarray | dict:
    """A result's mask as a compressed RLE (polygon) or a bool (h, w) array (brush); ValueError when unusable."""
    value = res["value"]
    ow, oh = res.get("original_width"), res.get("original_height")
    if int(res.get("image_rotation") or 0) != 0:
        raise ValueError(f"image_rotation {res.get('image_rotation')} (rotated images are not supported)")
    if "points" in value:
        pts = value["points"]
        if not isinstance(pts, list) or len(pts) < 3:
            raise ValueError("a polygon needs at least 3 points")
        flat = [float(c) for x, y in pts for c in (x * w / 100.0, y * h / 100.0)]
        return segmentation_to_rle([flat], h, w)
    if "rle" in value:
        if value.get("format", "rle") != "rle":
            raise ValueError(f"brush format {value.get('format')!r} (only 'rle' is read)")
        if (ow, oh) != (w, h):
            raise ValueError(f"brush canvas {ow}x{oh} is not the image's {w}x{h}")
        return brush_mask(value["rle"], h, w)
    raise ValueError("neither polygon points nor a brush rle")


def _union(rles: list[dict]) -> dict:
    merged = mask_utils.merge(
        [
            {"size": r["size"], "counts": r["counts"].encode() if isinstance(r["counts"], str) else r["counts"]}
            for r in rles
        ]
    )
    counts = merged["counts"]
    return {
        "size": [int(v) for v in merged["size"]],
        "counts": counts.decode() if isinstance(counts, bytes) else counts,
    }


_PART = re.compile(r"^(.+)_(\d+)$")


def _task_regions(task: dict, ann: dict, row: Row, counts: dict[str, int], problems: list[str]) -> list[GoldRegion]:
    """The annotation's regions as gold instances (parts of one ntt-batch instance joined)."""
    regions: dict[str, tuple[str, list[dict], list[str]]] = {}
    order: list[str] = []
    for n, res in enumerate(ann.get("result") or []):
        if not isinstance(res, dict) or res.get("type") not in LABEL_TYPES:
            _bump(counts, "other_results")
            continue
        where = f"task {task.get('id')} region {res.get('id', n)!r}"
        name, why = _region_label(res)
        if name is None:
            problems.append(f"{where}: {why}")
            continue
        try:
            mask = _region_mask(res, row.height, row.width)
        except (ValueError, TypeError, KeyError) as e:
            problems.append(f"{where}: {e}")
            continue
        rle = mask if isinstance(mask, dict) else encode_rle(mask)
        rid = str(res.get("id") if res.get("id") is not None else f"#{n}")
        if rid in regions:  # one region, several results (e.g. a second control tag): join
            regions[rid][1].append(rle)
            continue
        regions[rid] = (name, [rle], [rid])
        order.append(rid)
    # ntt-batch's polygon export: instance <id> and its further parts <id>_1, <id>_2, ... (same label)
    for rid in list(order):
        m = _PART.match(rid)
        if m and m.group(1) in regions and m.group(1) != rid and regions[m.group(1)][0] == regions[rid][0]:
            base = regions[m.group(1)]
            base[1].extend(regions[rid][1])
            base[2].append(rid)
            del regions[rid]
            order.remove(rid)
            _bump(counts, "joined_parts")
    out = []
    for rid in order:
        name, rles, ids = regions[rid]
        rle = rles[0] if len(rles) == 1 else _union(rles)
        if int(mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode()})) == 0:
            problems.append(f"task {task.get('id')} region {rid!r}: empty mask")
            continue
        out.append(
            GoldRegion(
                name=name,
                rle=rle,
                origin={"task_id": task.get("id"), "annotation_id": ann.get("id"), "region_ids": ids},
            )
        )
    return out


# 85 lines: one pass over the export; each task's choices (latest annotation, row match, regions) share its state.


def read_label_studio(path: str, shards: str, options: dict | None = None) -> ReviewInput:
    """Label Studio's JSON export of reviewed tasks, tied to the output's rows (module docstring)."""
    tasks = read_json(path, options)
    if isinstance(tasks, dict) and isinstance(tasks.get("tasks"), list):
        tasks = tasks["tasks"]
    if not isinstance(tasks, list) or not all(isinstance(t, dict) and isinstance(t.get("data"), dict) for t in tasks):
        raise ValueError(
            f"{path}: not a Label Studio JSON export (a list of tasks with 'data'): "
            "export the project with Export → JSON (or /api/projects/<id>/export?exportType=JSON)"
        )
    inp = ReviewInput(kind="label-studio", path=path)
    reviewed = []
    for t in tasks:
        ann = _final_annotation(t)
        if ann is None:
            _bump(inp.counts, "tasks_not_reviewed")
            continue
        reviewed.append((t, ann))
    _bump(inp.counts, "tasks", len(tasks))
    _bump(inp.counts, "tasks_reviewed", len(reviewed))
    if not reviewed:
        raise ValueError(
            f"{path}: none of its {len(tasks)} task(s) has a submitted annotation: review the tasks in Label Studio "
            "(submit or update each task), then export again (the file given may be the tasks file ntt-batch wrote)"
        )

    def keys(t: dict) -> tuple[str | None, int | None, str | None]:
        d = t["data"]
        uri = d.get("image_uri") if isinstance(d.get("image_uri"), str) else None
        iid = (
            d.get("image_id")
            if isinstance(d.get("image_id"), int) and not isinstance(d.get("image_id"), bool)
            else None
        )
        img = d.get("image") if isinstance(d.get("image"), str) else None
        return uri, iid, img

    ks = [keys(t) for t, _ in reviewed]
    rows = collect_rows(
        shards,
        uris={k[0] for k in ks if k[0]},
        ids={k[1] for k in ks if k[1] is not None},
        names={base_name(k[2]) for k in ks if k[2]},
        options=options,
    )
    problems: list[str] = []
    unmatched: list[str] = []
    seen: set[str] = set()
    for (t, ann), (uri, iid, img) in zip(reviewed, ks):
        row = rows.find(uri, iid, img)
        if row is None:
            unmatched.append(
                f"task {t.get('id')} ({uri or img or iid})"
                + (" (ambiguous file name)" if rows.ambiguous(iid, img) else "")
            )
            continue
        if row.image_uri in seen:
            problems.append(f"task {t.get('id')}: a second reviewed task for {row.image_uri} (the first one is kept)")
            continue
        seen.add(row.image_uri)
        regions = _task_regions(t, ann, row, inp.counts, problems)
        _bump(inp.counts, "regions", len(regions))
        inp.gold_images.append(
            GoldImage(row=row, regions=regions, origin={"task_id": t.get("id"), "annotation_id": ann.get("id")})
        )
    if unmatched:
        inp.notices.append(
            f"{len(unmatched)} reviewed task(s) match no processed row of {shards} and were left out: "
            + "; ".join(unmatched[:5])
            + (" ..." if len(unmatched) > 5 else "")
        )
    if problems:
        _bump(inp.counts, "regions_skipped", len(problems))
        inp.notices.append(
            f"{len(problems)} region(s)/task(s) not used: "
            + "; ".join(problems[:5])
            + (" ..." if len(problems) > 5 else "")
        )
    if inp.counts.get("other_results"):
        inp.notices.append(f"{inp.counts['other_results']} result(s) of other types (not polygon/brush labels) ignored")
    if not inp.gold_images:
        raise ValueError(
            f"no reviewed task of {path} is an image of {shards} (matched by image_uri, image_id, file name)"
        )
    return inp


# ----------------------------------------------------------------------------- COCO


def read_coco(path: str, shards: str, options: dict | None = None) -> ReviewInput:
    """A COCO file's images and annotations as complete gold labels, tied to the output's rows."""
    gt = read_json(path, options)
    if not isinstance(gt, dict) or not {"images", "annotations", "categories"} <= set(gt):
        raise ValueError(f"{path}: not a COCO annotation file (needs images, annotations and categories)")
    inp = ReviewInput(kind="coco", path=path)
    cats = {int(c["id"]): str(c["name"]) for c in gt["categories"]}
    inp.categories = [{"id": i, "name": n} for i, n in sorted(cats.items())]
    images = gt["images"]
    _bump(inp.counts, "images", len(images))
    _bump(inp.counts, "annotations", len(gt["annotations"]))
    rows = collect_rows(
        shards,
        uris={str(im["file_name"]) for im in images},
        ids={int(im["id"]) for im in images},
        names={base_name(str(im["file_name"])) for im in images},
        options=options,
    )
    by_image: dict[int, list[dict]] = {}
    for a in gt["annotations"]:
        by_image.setdefault(int(a["image_id"]), []).append(a)
    unmatched, problems = [], []
    seen: set[str] = set()
    for im in images:
        fname = str(im["file_name"])
        row = rows.find(fname, int(im["id"]), fname, name_first=True)
        if row is None:
            unmatched.append(fname + (" (ambiguous file name)" if rows.ambiguous(int(im["id"]), fname) else ""))
            continue
        if (int(im["width"]), int(im["height"])) != (row.width, row.height):
            raise ValueError(
                f"{path}: image {fname!r} is {im['width']}x{im['height']} but its row {row.image_uri} is "
                f"{row.width}x{row.height}: the annotations are for another version of the image"
            )
        if row.image_uri in seen:
            problems.append(f"image {fname!r}: a second COCO image for {row.image_uri} (left out)")
            continue
        seen.add(row.image_uri)
        regions = []
        for a in by_image.get(int(im["id"]), []):
            cid = int(a["category_id"])
            if cid not in cats:
                raise ValueError(f"{path}: annotation {a.get('id')} has category_id {cid}, not in categories")
            seg = a.get("segmentation")
            try:
                if seg:
                    rle = segmentation_to_rle(seg, row.height, row.width)
                elif a.get("bbox"):
                    x, y, bw, bh = (float(v) for v in a["bbox"])
                    rle = segmentation_to_rle([[x, y, x + bw, y, x + bw, y + bh, x, y + bh]], row.height, row.width)
                    _bump(inp.counts, "box_only")
                else:
                    raise ValueError("neither segmentation nor bbox")
            except ValueError as e:
                problems.append(f"annotation {a.get('id')}: {e}")
                continue
            regions.append(
                GoldRegion(
                    name=cats[cid], rle=rle, iscrowd=bool(a.get("iscrowd")), origin={"annotation_id": a.get("id")}
                )
            )
        inp.gold_images.append(GoldImage(row=row, regions=regions, origin={"image_id": im["id"], "file_name": fname}))
    if unmatched:
        inp.notices.append(
            f"{len(unmatched)} image(s) of {path} have no processed row in {shards} and were left out: "
            + "; ".join(unmatched[:5])
            + (" ..." if len(unmatched) > 5 else "")
        )
    if problems:
        inp.notices.append(f"{len(problems)} annotation(s)/image(s) not used: " + "; ".join(problems[:5]))
    if inp.counts.get("box_only"):
        inp.notices.append(f"{inp.counts['box_only']} box-only annotation(s) used as box-shaped masks")
    if not inp.gold_images:
        raise ValueError(f"no image of {path} is a processed row of {shards} (matched by file name, then image id)")
    return inp


__all__ = [
    "Decision",
    "DecidedImage",
    "GoldImage",
    "GoldRegion",
    "ReviewInput",
    "RowIndex",
    "read_coco",
    "read_decisions",
    "read_label_studio",
]
