"""The corrections' files in ``dest_dir``: ``reviewed.json`` (gold labels), ``negatives.json`` /
``positives.json`` (references), ``thresholds.yaml`` (refit on the gold), ``report.md`` / ``report.json``
(the module docstring of :mod:`.core` says what each holds)."""

from __future__ import annotations

import json
import os
import tempfile

import pyarrow.parquet as pq
import yaml
from pycocotools import mask as mask_utils

from ..eval.threshold_fit import ThresholdReport, tune_thresholds
from ..eval.threshold_fit import format_table as format_fit_table
from ..exports.score_filter import ScoreThresholds
from ..output.shards import rows_to_table
from ..references.files import REFERENCES_FORMAT, REFERENCES_VERSION, save_references
from ..storage.atomic import atomic_write_text
from .judge import ClassNames, ReviewedImage
from .report import (
    NEGATIVES_FILE,
    POSITIVES_FILE,
    REPORT_JSON,
    REPORT_MD,
    REVIEWED_FILE,
    CorrectionsReport,
    format_markdown,
)
from .rows import Row, base_name


def _rle_bbox_area(rle: dict) -> tuple[list[float], int]:
    r = {"size": rle["size"], "counts": rle["counts"].encode() if isinstance(rle["counts"], str) else rle["counts"]}
    return [float(v) for v in mask_utils.toBbox(r)], int(mask_utils.area(r))


def _split_uri(uri: str) -> tuple[str, str]:
    """(image_root, file_name) of an image URI: its folder (or URI prefix) and base name."""
    name = base_name(uri)
    root = uri.split("?", 1)[0]
    root = root[: len(root) - len(name)].rstrip("/") if root.endswith(name) else os.path.dirname(root)
    if "://" not in root:
        root = os.path.abspath(root or ".")
    return root, name


def _reference(row: Row, cid: int, rle: dict, review: dict) -> dict | None:
    bbox, area = _rle_bbox_area(rle)
    if area == 0:
        return None
    root, name = _split_uri(row.image_uri)
    return {
        "category_id": cid,
        "image_id": row.image_id,
        "file_name": name,
        "image_root": root,
        "width": row.width,
        "height": row.height,
        "bbox": bbox,
        "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"]},
        "review": review,
    }


def _references_doc(refs: list[dict], classes: ClassNames, source: dict) -> dict:
    used = {r["category_id"] for r in refs}
    cats = [c for c in classes.categories() if c["id"] in used]
    order = {c["id"]: k for k, c in enumerate(cats)}
    refs = sorted(refs, key=lambda r: order[r["category_id"]])  # grouped per category, id order
    return {
        "format": REFERENCES_FORMAT,
        "version": REFERENCES_VERSION,
        "categories": cats,
        "references": refs,
        "source": source,
    }


def write_reviewed(
    images: list[ReviewedImage], classes: ClassNames, kind: str, source: dict, created: str, dest: str
) -> tuple[str, list[dict]]:
    """Write ``reviewed.json`` (COCO) of the reviewed images' gold instances; returns (its path, its annotations)."""
    coco_images, coco_anns = [], []
    for im in images:
        r = im.row
        entry = {
            "id": r.image_id,
            "file_name": r.image_uri,
            "width": r.width,
            "height": r.height,
            "image_uri": r.image_uri,
        }
        if kind == "decisions":
            entry["review"] = {"undecided": im.undecided}
        coco_images.append(entry)
        for g in im.gold:
            bbox, area = _rle_bbox_area(g.rle)
            coco_anns.append(
                {
                    "id": len(coco_anns) + 1,
                    "image_id": r.image_id,
                    "category_id": classes.by_name[g.name],
                    "segmentation": {"size": [int(v) for v in g.rle["size"]], "counts": g.rle["counts"]},
                    "bbox": bbox,
                    "area": area,
                    "iscrowd": int(g.iscrowd),
                    "review": g.review,
                }
            )
    reviewed = {
        "info": {"description": "reviewed labels (ntt-batch corrections)", "date_created": created, **source},
        "licenses": [],
        "images": coco_images,
        "annotations": coco_anns,
        "categories": [{**c, "supercategory": ""} for c in classes.categories()],
    }
    reviewed_path = os.path.join(dest, REVIEWED_FILE)
    atomic_write_text(reviewed_path, json.dumps(reviewed) + "\n")
    return reviewed_path, coco_anns


def collect_references(
    images: list[ReviewedImage], classes: ClassNames, coco_anns: list[dict]
) -> tuple[list[dict], list[dict], int]:
    """(negative references, positive references, how many were left out for an empty mask); a positive
    reference carries the ``annotation_id`` of its gold instance in ``reviewed.json`` (``coco_anns``)."""
    neg_refs, pos_refs = [], []
    empty = 0
    ann_ids = iter(a["id"] for a in coco_anns)
    gold_ann_id: dict[tuple[int, int], int] = {}
    for n_im, im in enumerate(images):
        for g in range(len(im.gold)):
            gold_ann_id[(n_im, g)] = next(ann_ids)
    for n_im, im in enumerate(images):
        for p, name, why in im.negatives:
            ref = _reference(
                im.row, classes.by_name[name], p.rle, {"status": why, "instance": p.index, "score": float(p.score_text)}
            )
            if ref is None:
                empty += 1
            else:
                neg_refs.append(ref)
        for g, _why in im.positives:
            gold = im.gold[g]
            ref = _reference(im.row, classes.by_name[gold.name], gold.rle, {k: v for k, v in gold.review.items()})
            if ref is None:
                empty += 1
            else:
                ref["annotation_id"] = gold_ann_id[(n_im, g)]
                pos_refs.append(ref)
    return neg_refs, pos_refs, empty


def write_references(
    neg_refs: list[dict], pos_refs: list[dict], classes: ClassNames, source: dict, dest: str, notices: list[str]
) -> dict[str, str | None]:
    """Write ``negatives.json`` / ``positives.json`` (or remove a previous one where there is no reference,
    with a notice); returns {"negatives": path or None, "positives": path or None}."""
    files: dict[str, str | None] = {}
    for key, fname, refs, role in (
        ("negatives", NEGATIVES_FILE, neg_refs, "negative"),
        ("positives", POSITIVES_FILE, pos_refs, "positive"),
    ):
        target_path = os.path.join(dest, fname)
        if refs:
            save_references(_references_doc(refs, classes, {**source, "role": role}), target_path)
            files[key] = target_path
        else:
            if os.path.exists(target_path):
                os.remove(target_path)  # a previous run's file would describe another review
            files[key] = None
            notices.append(f"no {role} reference: {fname} not written")
    return files


def fit_thresholds(
    images: list[ReviewedImage], classes: ClassNames, reviewed_path: str, target: str, iou_match: float
) -> ThresholdReport:
    """Tune per-class thresholds on the gold of ``reviewed_path``, over the evaluated predictions
    (written to a temporary Parquet shard in the output's row schema)."""
    with tempfile.TemporaryDirectory(prefix="ntt-corrections-") as tmp:
        eval_path = os.path.join(tmp, "evaluated.parquet")
        rows = []
        for im in images:
            insts = [
                {
                    "category_id": classes.by_name[n],
                    "category_name": n,
                    "score": p.score,
                    "bbox": p.bbox,
                    "area": p.area,
                    "segmentation": p.rle,
                }
                for p, n in im.evaluated
            ]
            r = im.row
            rows.append(
                {
                    "image_id": r.image_id,
                    "image_uri": r.image_uri,
                    "width": r.width,
                    "height": r.height,
                    "status": "ok" if insts else "empty",
                    "error": None,
                    "num_instances": len(insts),
                    "instances": insts,
                    "run_id": "corrections",
                }
            )
        pq.write_table(rows_to_table(rows), eval_path)
        return tune_thresholds(reviewed_path, eval_path, target=target, iou_threshold=iou_match, iou_type="segm")


def write_thresholds(path: str, fit: ThresholdReport, current: ScoreThresholds, table_names: dict[str, int]) -> dict:
    data: dict[str, float | None] = {}
    if current.default is not None:
        data["default"] = current.default
    tuned = fit.to_map()
    for name, cid in sorted(table_names.items(), key=lambda t: t[1]):
        if name in tuned:
            data[name] = tuned[name]
        else:
            t = current.threshold(cid, name)
            if t != current.default:
                data[name] = t
    ScoreThresholds.load(dict(data))  # must load back
    head = (
        "# per-class score thresholds refit on reviewed images by `ntt-batch corrections`; use with --score-threshold\n"
        "# classes not tuned keep their current threshold\n"
        + "".join(f"# {line}\n" for line in format_fit_table(fit).splitlines())
    )
    atomic_write_text(path, head + (yaml.safe_dump(data, sort_keys=False, allow_unicode=True) if data else "{}\n"))
    return data


def write_report(report: CorrectionsReport, dest: str) -> None:
    """Add ``report.md`` / ``report.json`` to ``report.files`` and write them."""
    report.files["report_md"] = os.path.join(dest, REPORT_MD)
    report.files["report_json"] = os.path.join(dest, REPORT_JSON)
    atomic_write_text(report.files["report_md"], format_markdown(report))
    atomic_write_text(report.files["report_json"], json.dumps(report.to_dict(), indent=1) + "\n")
