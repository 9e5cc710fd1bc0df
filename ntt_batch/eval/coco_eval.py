"""COCO evaluation with class splits (method.md §5.1), on real pycocotools.

Protocol (the paper's, COCO-FSOD): for a split other than ``all`` the ground truth keeps only the
split's annotations (crowd ones included; COCOeval ignores them as usual) while **every image and
every category stays in**, so false positives on images without those classes count. Detections
of other classes are dropped (they could only fall on classes without ground truth, which COCOeval
leaves out of the means anyway). Then ``COCOeval(gt, gt.loadRes(dets), iou_type)`` with
``params.imgIds`` = all ground-truth image ids and default ``catIds``; the 12 standard numbers come
from ``summarize()`` unchanged. Per-class AP is read from the same ``eval["precision"]`` array
(area ``all``, 100 detections) COCOeval averages.

Edge cases, each reported as a notice rather than a crash:

* ground truth without ``segmentation`` (or results without it) → bbox-only evaluation;
* no detections → every class with ground truth gets AP 0 (COCOeval run on an empty result set);
* detections on image ids absent from the ground truth → dropped, counted (``loadRes`` would
  refuse the whole file), and so are detections with unknown category ids;
* ``restrict_to_processed`` (shards only): ground truth restricted to images the job processed,
  for evaluating a partial run.

The report is plain JSON (see :func:`evaluate_coco`); :func:`format_report` renders it as text.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import numbers
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..output.reader import is_results_file, read_json
from ..references.coco import resolve_categories

STAT_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
IOU_TYPES = ("bbox", "segm")
REPORT_FORMAT = "ntt-batch/eval-report"
_MAX_EXAMPLES = 5


def parse_iou_types(value: str | Sequence[str]) -> tuple[str, ...]:
    """'bbox,segm' (or a sequence) → a validated tuple, in the given order, without repeats."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[str] = []
    for t in (s.strip() for s in items):
        if not t:
            continue
        if t not in IOU_TYPES:
            raise ValueError(f"unknown IoU type {t!r}: use bbox, segm or bbox,segm")
        if t not in out:
            out.append(t)
    if not out:
        raise ValueError("no IoU type given: use bbox, segm or bbox,segm")
    return tuple(out)


def _check_detections(dets: list, where: str, gt_images: Sequence[dict] = ()) -> None:
    """Refuse a results file pycocotools would crash on or score silently wrong, naming the entry and field.

    Each detection: ``image_id``/``category_id`` integers; ``score`` a finite number (NaN would be
    ranked arbitrarily); ``bbox`` 4 finite numbers with w, h >= 0; ``segmentation`` an RLE
    ``{"size": [h, w], "counts"}`` whose size is its ground-truth image's (``gt_images``), or
    polygons of at least 3 finite x, y pairs.
    """
    if not isinstance(dets, list):
        raise ValueError(
            f"{where}: a COCO results file is a JSON array of detections, got {type(dets).__name__} "
            "(an annotation file? pass it as --annotations, and `ntt-batch export --format results` output "
            "or the shards as --results)"
        )
    sizes = {}
    for im in gt_images:
        try:
            sizes[int(im["id"])] = [int(im["height"]), int(im["width"])]
        except (KeyError, TypeError, ValueError):
            pass

    def is_num(v: Any) -> bool:
        return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))

    def is_int(v: Any) -> bool:
        return is_num(v) and float(v).is_integer()

    def finite(values: Any) -> bool:
        return all(is_num(v) and math.isfinite(v) for v in values)

    def problem_of(d: dict) -> str | None:
        for key in ("image_id", "category_id"):
            if not is_int(d[key]):
                return f"'{key}': expected an integer, got {d[key]!r} ({type(d[key]).__name__})"
        score, box, seg = d["score"], d.get("bbox"), d.get("segmentation")
        if not is_num(score) or not math.isfinite(score):
            return f"'score': expected a finite number, got {score!r} ({type(score).__name__})"
        if box is not None and (
            not isinstance(box, (list, tuple)) or len(box) != 4 or not finite(box) or box[2] < 0 or box[3] < 0
        ):
            return f"'bbox': expected 4 finite numbers [x, y, w, h] with w, h >= 0, got {box!r}"
        if isinstance(seg, dict):
            size, expected = seg.get("size"), sizes.get(int(d["image_id"]))
            if (
                "counts" not in seg
                or not isinstance(size, (list, tuple))
                or len(size) != 2
                or not all(is_int(v) for v in size)
            ):
                return "'segmentation': an RLE needs 'size' [height, width] and 'counts'"
            if expected is not None and [int(v) for v in size] != expected:
                return (
                    f"'segmentation': RLE size {list(size)} differs from image {int(d['image_id'])}'s [height, width] "
                    f"{expected} in the ground truth"
                )
        elif seg is not None and not (
            isinstance(seg, list)
            and all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 and finite(p) for p in seg)
        ):
            return "'segmentation': expected an RLE object or polygons (lists of >= 3 finite x, y pairs)"
        return None

    for k, d in enumerate(dets):
        if not isinstance(d, dict):
            raise ValueError(f"{where}: detection [{k}] is not an object")
        missing = [key for key in ("image_id", "category_id", "score") if key not in d]
        if "bbox" not in d and "segmentation" not in d:
            missing.append("bbox or segmentation")
        if missing:
            raise ValueError(f"{where}: detection [{k}] lacks {', '.join(missing)}")
        problem = problem_of(d)
        if problem:
            raise ValueError(f"{where}: detection [{k}] field {problem}")


def _has_segmentation(seg: Any) -> bool:
    return isinstance(seg, dict) and "counts" in seg or isinstance(seg, list) and len(seg) > 0


# 88 lines, 34 of them the signature and the report's documentation: the steps are the helpers below.
def evaluate_coco(
    annotations: str | dict,
    results: str | list,
    *,
    split: str = "all",
    iou_types: Sequence[str] | str = IOU_TYPES,
    restrict_to_processed: bool = False,
    options: dict | None = None,
    result_categories: Sequence[dict] | None = None,
) -> dict:
    """Run COCOeval on ground truth vs results; return the JSON report.

    Args:
        annotations: COCO annotation file (path/URI) or its parsed dict.
        results: a COCO results JSON (path/URI), a shards folder/URI from ``ntt-batch run``,
            or an in-memory list of detections.
        split: ``few_shot`` (20 classes, method.md §5.1), ``all``, or comma-separated names/ids.
        iou_types: ``("bbox", "segm")`` or a subset ("bbox,segm" string accepted).
        restrict_to_processed: only with shards — evaluate only images the job processed
            (rows with status ok/empty); for partial runs.
        options: fsspec storage options for remote URIs.
        result_categories: the results' classes ``[{"id", "name"}]``. Default: the memory bank's
            in the shards' ``run.json`` (else the category names in the shards), or in a results
            file's ``<stem>.meta.json`` (``ntt-batch segment``). When known, detections are matched
            to the ground truth's classes **by name** (:func:`align_categories`).

    Returns:
        ``{"format", "annotations", "results", "split", "categories": [{"id", "name"}],
        "category_ids", "num_images", "num_gt", "num_detections", "detections": {...counts...},
        "notices": [...], "iou_types": [...], "bbox"/"segm": {"stats": {AP, AP50, ...: float},
        "summary": str, "per_class": [{"id", "name", "num_gt", "num_detections", "AP", "AP50",
        "AP75"}]}}``. AP values are in [0, 1]; -1 (stats) / null (per class) means "no ground
        truth for that class", as in pycocotools.
    """
    iou_types = parse_iou_types(iou_types)
    notices: list[str] = []
    ann_name, gt_json = _read_ground_truth(annotations, options)
    gt_cats = gt_json["categories"]
    cats = resolve_categories(gt_cats, split)
    keep_ids = {int(c["id"]) for c in cats}

    res_name, dets, processed = _read_detections(results, options, restrict_to_processed, notices)
    _check_detections(dets, res_name, gt_json["images"])
    # classes: results' ids → the ground truth's, by name, whenever the results' names are known
    warnings: list[str] = []
    res_cats, cats_from = _result_categories(results, result_categories, options)
    alignment = None
    if res_cats:
        dets, alignment = align_categories(dets, res_cats, gt_cats, cats_from, notices, warnings)
    if restrict_to_processed and processed is None:
        raise ValueError(
            "restrict_to_processed needs the shards as results (a results JSON does not say which images "
            "were processed: images without detections are absent from it)"
        )

    gt = _split_ground_truth(gt_json, keep_ids, processed, restrict_to_processed, notices)
    if not gt["annotations"]:
        notices.append(f"the ground truth has no annotation of the selected classes ({split}): AP is undefined (-1)")
    gt_image_ids = {int(im["id"]) for im in gt["images"]}
    kept, det_info = _evaluated_detections(
        dets, gt_image_ids, {int(c["id"]) for c in gt_cats}, keep_ids, restrict_to_processed, notices
    )
    if alignment is not None:
        det_info["not_in_ground_truth"] = alignment["dropped_detections"]
    if not kept:
        notices.append("no detections to evaluate: AP = 0 for every class with ground truth")
    run_types = _runnable_iou_types(iou_types, gt["annotations"], kept, notices)

    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "version": 1,
        "annotations": ann_name,
        "results": res_name,
        "split": split,
        "categories": [{"id": int(c["id"]), "name": str(c["name"])} for c in cats],
        "category_ids": sorted(keep_ids),
        "num_images": len(gt["images"]),
        "num_gt": len(gt["annotations"]),
        "num_detections": len(kept),
        "detections": det_info,
        "notices": notices,
        "iou_types": run_types,
        "restricted_to_processed": bool(restrict_to_processed),
        "class_alignment": alignment,
        "warnings": warnings,
    }
    report.update(_run_cocoeval(gt, kept, cats, run_types))
    return report


def _read_ground_truth(annotations: str | dict, options: dict | None) -> tuple[str, dict]:
    """(name for messages, the parsed COCO annotation dict), refusing a file that is not one or has no classes."""
    ann_name = annotations if isinstance(annotations, str) else "<in memory>"
    gt_json = read_json(annotations, options) if isinstance(annotations, str) else annotations
    if not isinstance(gt_json, dict) or "images" not in gt_json or "annotations" not in gt_json:
        raise ValueError(
            f"{ann_name}: not a COCO annotation file (needs 'images', 'annotations' and 'categories'); "
            "a results file goes to --results"
        )
    if not gt_json.get("categories"):
        raise ValueError(f"{ann_name}: the annotation file has no 'categories'")
    return ann_name, gt_json


def _read_detections(
    results: str | list, options: dict | None, restrict_to_processed: bool, notices: list[str]
) -> tuple[str, list, set[int] | None]:
    """(name for messages, the detections, the processed image ids — shards only, else None).

    A notice counts the shards' error rows (their images have no detections)."""
    if not isinstance(results, str):
        return "<in memory>", results, None
    if is_results_file(results, options):
        return results, read_json(results, options), None
    from .shard_results import coco_results_from_shards

    sr = coco_results_from_shards(results, options)
    if sr.error_image_ids:
        notices.append(
            f"{len(sr.error_image_ids)} image(s) have status 'error' in the shards: no detections "
            "on them" + ("" if restrict_to_processed else " (they count as misses)")
        )
    return results, sr.results, sr.processed_image_ids


def _split_ground_truth(
    gt_json: dict, keep_ids: set[int], processed: set[int] | None, restrict_to_processed: bool, notices: list[str]
) -> dict:
    """The ground truth COCOeval scores against: the split's annotations on every image (or only the
    processed ones with ``restrict_to_processed``), every category (see the module docstring)."""
    images = list(gt_json["images"])
    gt_image_ids = {int(im["id"]) for im in images}
    if restrict_to_processed:
        images = [im for im in images if int(im["id"]) in processed]
        notices.append(f"ground truth restricted to the {len(images)} of {len(gt_image_ids)} images the job processed")
        gt_image_ids = {int(im["id"]) for im in images}
    elif processed is not None:
        unprocessed = len(gt_image_ids - processed)
        if unprocessed:
            notices.append(
                f"{unprocessed} ground-truth image(s) have no processed row in the shards: their objects "
                "count as misses (use --restrict-to-processed to evaluate a partial run)"
            )
    gt_anns = [
        a for a in gt_json["annotations"] if int(a["category_id"]) in keep_ids and int(a["image_id"]) in gt_image_ids
    ]
    return {
        "info": gt_json.get("info", {}),
        "licenses": gt_json.get("licenses", []),
        "images": images,
        "annotations": gt_anns,
        "categories": gt_json["categories"],
    }


def _evaluated_detections(
    dets: list,
    gt_image_ids: set[int],
    all_cat_ids: set[int],
    keep_ids: set[int],
    restrict_to_processed: bool,
    notices: list[str],
) -> tuple[list, dict]:
    """The detections COCOeval can and should use, and the report's ``detections`` counts of those
    dropped (on unknown images, of unknown categories, of classes outside the split)."""
    counts = Counter()
    kept, unknown_img_examples = [], []
    for d in dets:
        iid, cid = int(d["image_id"]), int(d["category_id"])
        if iid not in gt_image_ids:
            counts["unknown_image"] += 1
            if len(unknown_img_examples) < _MAX_EXAMPLES and iid not in unknown_img_examples:
                unknown_img_examples.append(iid)
        elif cid not in all_cat_ids:
            counts["unknown_category"] += 1
        elif cid not in keep_ids:
            counts["other_classes"] += 1
        else:
            kept.append(d)
    det_info = {
        "total": len(dets),
        "evaluated": len(kept),
        "unknown_image": counts["unknown_image"],
        "unknown_category": counts["unknown_category"],
        "other_classes": counts["other_classes"],
        "unknown_image_examples": unknown_img_examples,
    }
    if counts["unknown_image"]:
        where = "the processed images" if restrict_to_processed else "the ground truth"
        notices.append(
            f"{counts['unknown_image']} detection(s) are on image ids not in {where} (e.g. "
            f"{', '.join(map(str, unknown_img_examples))}): not evaluated"
        )
    if counts["unknown_category"]:
        notices.append(
            f"{counts['unknown_category']} detection(s) have category ids not in the ground truth: not evaluated"
        )
    return kept, det_info


def _runnable_iou_types(iou_types: Sequence[str], gt_anns: list, kept: list, notices: list[str]) -> list[str]:
    """The requested IoU types the data allows: ``segm`` needs segmentations on both sides, ``bbox`` boxes."""
    run_types = list(iou_types)
    if "segm" in run_types:
        no_seg = sum(1 for a in gt_anns if not _has_segmentation(a.get("segmentation")))
        if no_seg:
            run_types.remove("segm")
            what = "has no" if no_seg == len(gt_anns) else f"lacks it on {no_seg} of {len(gt_anns)} annotations:"
            notices.append(f"ground truth {what} 'segmentation': bbox-only evaluation (segm skipped)")
        elif kept and any(not _has_segmentation(d.get("segmentation")) for d in kept):
            run_types.remove("segm")
            notices.append("results without 'segmentation': bbox-only evaluation (segm skipped)")
    if "bbox" in run_types and any(not d.get("bbox") for d in kept):
        run_types.remove("bbox")
        notices.append("results without 'bbox': bbox evaluation skipped")
    return run_types


def _run_cocoeval(gt: dict, kept: list, cats: list[dict], run_types: Sequence[str]) -> dict[str, dict]:
    """``{iou type: {"stats", "summary", "per_class"}}`` from pycocotools' COCOeval over every ground-truth
    image (its printout captured, not shown); empty when no type can run."""
    if not run_types:
        return {}
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        if kept:
            coco_dt = coco_gt.loadRes([dict(d) for d in kept])
        else:
            coco_dt = COCO()
            coco_dt.dataset = {"images": gt["images"], "categories": gt["categories"], "annotations": []}
            coco_dt.createIndex()
    gt_per_class = Counter(int(a["category_id"]) for a in gt["annotations"] if not a.get("iscrowd", 0))
    dt_per_class = Counter(int(d["category_id"]) for d in kept)
    out = {}
    for t in run_types:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            ev = COCOeval(coco_gt, coco_dt, t)
            ev.params.imgIds = sorted({int(im["id"]) for im in gt["images"]})
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        out[t] = {
            "stats": dict(zip(STAT_NAMES, map(float, ev.stats))),
            "summary": _summary_lines(buf.getvalue()),
            "per_class": _per_class(ev, cats, gt_per_class, dt_per_class),
        }
    return out


def _result_categories(results, given, options) -> tuple[list[dict] | None, str]:
    """The results' classes and where they came from (see ``evaluate_coco``'s ``result_categories``)."""
    if given is not None:
        return [{"id": int(c["id"]), "name": str(c["name"])} for c in given], "given"
    if not isinstance(results, str):
        return None, ""
    if not is_results_file(results, options):
        from ..output.reader import dataset_categories, iter_image_batches

        cats = dataset_categories(results, options)
        if cats:
            return cats, "the memory bank in run.json"
        names: dict[int, str] = {}
        for b in iter_image_batches(results, options):
            for cid, name in zip(b.category_id, b.category_name):
                if name is not None:
                    names.setdefault(int(cid), str(name))
        return ([{"id": i, "name": n} for i, n in sorted(names.items())] or None), "the category names in the shards"
    stem = results[:-5] if results.lower().endswith(".json") else results
    try:
        meta = read_json(stem + ".meta.json", options)
    except (FileNotFoundError, ValueError, OSError):
        return None, ""
    cats = ((meta or {}).get("memory_bank") or {}).get("categories") if isinstance(meta, dict) else None
    if cats:
        return [{"id": int(c["id"]), "name": str(c["name"])} for c in cats], f"the memory bank in {stem}.meta.json"
    return None, ""


def align_categories(
    dets: list, res_cats: Sequence[dict], gt_cats: Sequence[dict], source: str, notices: list[str], warnings: list[str]
) -> tuple[list, dict]:
    """Give detections the ground truth's category ids, matching classes by name.

    A bank built from custom references numbers its classes 1..N; scored by id against COCO its
    "dog" (id 1) would count as "person". Names are matched exactly, then case-insensitively.
    Detections of classes whose name is not in the ground truth are dropped (a warning says how
    many); detections whose id is not among ``res_cats`` keep their id. Returns (detections,
    record for the report: ``source``, ``aligned`` [{name, results_id, ground_truth_id}], ``absent``
    [{id, name}], ``dropped_detections``).
    """
    by_name = {str(c["name"]): int(c["id"]) for c in gt_cats}
    by_fold: dict[str, int] = {}
    for c in gt_cats:
        by_fold.setdefault(str(c["name"]).casefold(), int(c["id"]))
    mapping: dict[int, int] = {}
    absent: list[dict] = []
    for c in res_cats:
        rid, name = int(c["id"]), str(c["name"])
        gid = by_name.get(name, by_fold.get(name.casefold()))
        if gid is None:
            absent.append({"id": rid, "name": name})
        else:
            mapping[rid] = gid
    names = {int(c["id"]): str(c["name"]) for c in res_cats}
    changed = {r: g for r, g in mapping.items() if r != g}
    record = {
        "source": source,
        "aligned": [{"name": names[r], "results_id": r, "ground_truth_id": g} for r, g in sorted(mapping.items())],
        "absent": absent,
        "dropped_detections": 0,
    }
    if not changed and not absent:
        return dets, record
    absent_ids = {a["id"] for a in absent}
    out, dropped = [], Counter()
    for d in dets:
        rid = int(d["category_id"])
        if rid in absent_ids:
            dropped[rid] += 1
        elif rid in changed:
            out.append({**d, "category_id": changed[rid]})
        else:
            out.append(d)
    record["dropped_detections"] = sum(dropped.values())
    if changed:
        shown = ", ".join(f"{names[r]!r} {r} -> {g}" for r, g in sorted(changed.items())[:8])
        more = f" and {len(changed) - 8} more" if len(changed) > 8 else ""
        notices.append(
            f"classes aligned by name: the results' category ids (from {source}) differ from the ground "
            f"truth's: {shown}{more}"
        )
    if absent:
        shown = ", ".join(f"{a['name']!r} (id {a['id']}, {dropped[a['id']]} detections)" for a in absent[:8])
        more = f" and {len(absent) - 8} more" if len(absent) > 8 else ""
        warnings.append(
            f"class(es) of the results not in the ground truth (by name): {shown}{more}; their detections "
            "are not evaluated"
        )
    return out, record


def _summary_lines(text: str) -> str:
    """Keep the 12 ' Average Precision/Recall ...' lines of pycocotools' printout."""
    return "\n".join(line for line in text.splitlines() if line.lstrip().startswith("Average"))


def _per_class(ev, cats: list[dict], gt_n: Counter, dt_n: Counter) -> list[dict]:
    """Per-class AP, AP50, AP75 from COCOeval's precision array (area all, maxDets 100)."""
    precision = ev.eval["precision"]  # [T iou thresholds, R recall points, K classes, A areas, M maxDets]
    cat_index = {int(c): k for k, c in enumerate(ev.params.catIds)}
    iou = np.asarray(ev.params.iouThrs)
    t50, t75 = int(np.argmin(np.abs(iou - 0.5))), int(np.argmin(np.abs(iou - 0.75)))
    m = len(ev.params.maxDets) - 1
    rows = []
    for c in cats:
        cid = int(c["id"])
        k = cat_index.get(cid)
        p = precision[:, :, k, 0, m] if k is not None else np.full((1, 1), -1.0)

        def mean(x):
            x = x[x > -1]
            return float(np.mean(x)) if x.size else None

        rows.append(
            {
                "id": cid,
                "name": str(c["name"]),
                "num_gt": int(gt_n.get(cid, 0)),
                "num_detections": int(dt_n.get(cid, 0)),
                "AP": mean(p),
                "AP50": mean(p[t50]) if k is not None else None,
                "AP75": mean(p[t75]) if k is not None else None,
            }
        )
    return rows


def _fmt(v: float | None) -> str:
    return "   n/a" if v is None or (isinstance(v, float) and (math.isnan(v) or v < 0)) else f"{v:6.3f}"


def format_report(report: dict) -> str:
    """Human-readable text: notices, the 12-number summaries per IoU type, the per-class AP table."""
    lines = [
        f"ground truth {report['annotations']}: {report['num_images']} images, {report['num_gt']} annotations "
        f"of {len(report['categories'])} classes (split {report['split']})",
        f"results {report['results']}: {report['detections']['total']} detections, "
        f"{report['num_detections']} evaluated",
    ]
    lines += [f"notice: {n}" for n in report["notices"]]
    lines += [f"WARNING: {w}" for w in report.get("warnings", [])]
    types = [t for t in report["iou_types"] if t in report]
    for t in types:
        lines += ["", f"== {t} ==", report[t]["summary"]]
    if types:
        lines += ["", "per-class AP (area all, maxDets 100; #gt without crowd); n/a = no ground truth for the class"]
        head = f"{'id':>4}  {'class':<16} {'#gt':>6} {'#det':>7}"
        for t in types:
            head += f"  {t + ' AP':>8} {'AP50':>6} {'AP75':>6}"
        lines.append(head)
        per = {t: report[t]["per_class"] for t in types}
        for k, c in enumerate(per[types[0]]):
            row = f"{c['id']:>4}  {c['name'][:16]:<16} {c['num_gt']:>6} {c['num_detections']:>7}"
            for t in types:
                r = per[t][k]
                row += f"  {_fmt(r['AP']):>8} {_fmt(r['AP50'])} {_fmt(r['AP75'])}"
            lines.append(row)
        n_gt = sum(c["num_gt"] for c in per[types[0]])
        mean_row = f"{'':>4}  {'mean (= AP)':<16} {n_gt:>6} {report['num_detections']:>7}"
        for t in types:
            s = report[t]["stats"]
            mean_row += f"  {_fmt(s['AP']):>8} {_fmt(s['AP50'])} {_fmt(s['AP75'])}"
        lines.append(mean_row)
    return "\n".join(lines)


def write_report(report: dict, path: str, options: dict | None = None) -> None:
    """Write the report JSON atomically (local path or fsspec URI)."""
    from ..storage.atomic import atomic_output

    with atomic_output(path, options) as f:
        json.dump(report, f, indent=2)
        f.write("\n")
