"""Corrections back in: a review's outcome as gold labels, negative and positive references, refit thresholds.

:func:`apply_corrections` reads one review of a job output — the review page's decisions file,
Label Studio's JSON export of reviewed tasks, or a COCO file of the reviewed images — and writes
into ``dest_dir``:

``reviewed.json``
    COCO dataset of the reviewed images (the gold labels): accepted and relabelled predictions
    (the shard's mask; a relabelled one with its new class) and, from Label Studio or COCO, the
    reviewer's instances as drawn (their masks, not the prediction's). Rejected predictions are
    not in it. Each annotation's ``review`` says where it came from (``status``: accepted,
    relabelled, missed, crowd; the prediction's ``instance`` index and ``score``). ``file_name``
    is the row's image URI; ``id`` the row's image id.
``negatives.json``
    Rejected detections, each a reference **of the class it was predicted as** (the references
    format of :mod:`ntt_batch.references`, shard mask + its box): for ``memory build --negatives``.
    A relabelled detection (class A → B) is a negative of A too.
``positives.json``
    Relabelled instances (of their new class) and missed ones (gold instances no judged
    prediction matched at IoU >= ``iou_match``), as new positive references
    (``memory build --references BANK/references.json --references positives.json``).
``thresholds.yaml``
    Per-class thresholds refit on the reviewed images with the gold labels
    (:func:`ntt_batch.eval.threshold_fit.tune_thresholds`, target ``f1`` or ``precision=P``).
    Classes it could not tune keep their current threshold; the current ``default`` is kept.
``report.md`` / ``report.json``
    Counts, and per class precision/recall on the reviewed set **before** (the current
    thresholds) and **after** (the refit ones), detections matched to the gold at IoU >=
    ``iou_match`` (mask IoU; :mod:`.match`).

A references file needs at least one reference: with no negative (or positive) the file is not
written (and a previous one in ``dest_dir`` is removed); the report says so.

What each input means:

* **decisions** (``docs/review_decisions.md``) — the images reviewed are those with at least one
  decision. An instance without a decision is **undecided**: it is neither gold nor a reference,
  and it is left out of the evaluation and of the threshold fit (counted as ``undecided``). The
  page's "accept all shown" key writes one explicit ``accept`` per shown instance, so a fully
  reviewed image has no undecided instance. A reject that overlaps an accepted (or relabelled-to)
  instance of its class at IoU >= ``iou_match`` is a **duplicate** (a second detection of a real
  object): not a negative. Decisions cannot add missed objects.
* **Label Studio / COCO** — each reviewed image's labels are complete. The predictions judged are
  those kept at the current thresholds (``thresholds``, default: all; give the thresholds the
  export was made with); they are matched to the gold (:func:`.match.classify`): same class →
  accepted; another class → relabelled; over an already matched gold instance of their class →
  duplicate (not a negative); on a crowd region → ignored; else rejected. Predictions under the
  current thresholds are not judged (no reference) but are evaluated (the refit may lower a
  threshold).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow.parquet as pq
import yaml
from pycocotools import mask as mask_utils

from ..eval.threshold_fit import ThresholdReport, parse_target, tune_thresholds
from ..eval.threshold_fit import format_table as format_fit_table
from ..exports.score_filter import ScoreThresholds
from ..output.folder import OutputFolder
from ..output.reader import run_categories
from ..output.shards import rows_to_table
from ..references.files import REFERENCES_FORMAT, REFERENCES_VERSION, save_references
from ..storage.atomic import atomic_write_text
from .inputs import GoldImage, ReviewInput, read_coco, read_decisions, read_label_studio
from .match import ClassCounts, classify, count_matches, mask_iou
from .rows import Pred, Row, base_name

REVIEWED_FILE = "reviewed.json"
NEGATIVES_FILE = "negatives.json"
POSITIVES_FILE = "positives.json"
THRESHOLDS_FILE = "thresholds.yaml"
REPORT_MD = "report.md"
REPORT_JSON = "report.json"


@dataclass
class ClassRow:
    """One class of the before/after table (precision/recall None where undefined: no detection / no gold)."""

    name: str
    category_id: int
    gold: int
    before_threshold: float | None
    before_detections: int
    before_true_positives: int
    before_precision: float | None
    before_recall: float | None
    after_threshold: float | None
    after_detections: int
    after_true_positives: int
    after_precision: float | None
    after_recall: float | None
    negatives: int = 0
    positives: int = 0
    note: str = ""


@dataclass
class CorrectionsReport:
    """What :func:`apply_corrections` read and wrote."""

    input_kind: str
    input_path: str
    shards: str
    dest_dir: str
    iou_match: float
    target: str
    current_thresholds: str
    images_reviewed: int = 0
    decisions_in: int = 0
    input_counts: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    negatives: int = 0
    positives: int = 0
    gold_instances: int = 0
    classes: list[ClassRow] = field(default_factory=list)
    files: dict[str, str | None] = field(default_factory=dict)
    thresholds: dict[str, float | None] = field(default_factory=dict)
    threshold_fit: dict[str, Any] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class _Classes:
    """Class names ↔ ids: the run's bank first, then names met in the rows and the input."""

    def __init__(self, run_cats: list[dict]):
        self.by_id: dict[int, str] = {int(c["id"]): str(c["name"]) for c in run_cats}
        self.by_name: dict[str, int] = {n: i for i, n in self.by_id.items()}
        self.renamed: dict[str, str] = {}

    def resolve(self, name: str, wanted_id: int | None = None) -> str:
        """The known name for ``name`` (exact, then case-insensitive); a new class otherwise."""
        if name in self.by_name:
            return name
        folded = [n for n in self.by_name if n.casefold() == name.casefold()]
        if folded:
            self.renamed[name] = folded[0]
            return folded[0]
        cid = wanted_id if wanted_id is not None and wanted_id not in self.by_id else max(self.by_id, default=0) + 1
        self.by_id[cid] = name
        self.by_name[name] = cid
        return name

    def pred_name(self, p: Pred) -> str:
        if p.category_name:
            return self.resolve(str(p.category_name), p.category_id)
        if p.category_id in self.by_id:
            return self.by_id[p.category_id]
        return self.resolve(f"class {p.category_id}", p.category_id)

    def categories(self, names: set[str] | None = None) -> list[dict]:
        return [{"id": i, "name": n} for i, n in sorted(self.by_id.items()) if names is None or n in names]


@dataclass
class _Gold:
    name: str
    rle: dict
    iscrowd: bool
    review: dict[str, Any]


@dataclass
class _Image:
    row: Row
    evaluated: list[tuple[Pred, str]] = field(default_factory=list)  # predictions evaluated, with class names
    gold: list[_Gold] = field(default_factory=list)
    negatives: list[tuple[Pred, str, str]] = field(default_factory=list)  # (pred, class, why)
    positives: list[tuple[int, str]] = field(default_factory=list)  # (gold index, why)
    undecided: int = 0


def _bump(d: dict[str, int], key: str, n: int = 1) -> None:
    d[key] = d.get(key, 0) + n


def _from_decisions(inp: ReviewInput, classes: _Classes, iou_match: float, counts: dict[str, int]) -> list[_Image]:
    out = []
    for di in inp.decided_images:
        im = _Image(row=di.row)
        decided = {d.pred: d for d in di.decisions}
        rejects: list[tuple[Pred, str]] = []
        for p in di.row.preds:
            d = decided.get(p.index)
            if d is None:
                im.undecided += 1
                continue
            name = classes.pred_name(p)
            im.evaluated.append((p, name))
            new = classes.resolve(d.name, d.decision["category_id"])
            review = {"status": "accepted", "instance": p.index, "score": float(p.score_text), "predicted": name}
            if d.action == "accept" or (d.action == "relabel" and new == name):
                im.gold.append(_Gold(name, p.rle, False, review))
                _bump(counts, "accepted")
            elif d.action == "relabel":
                im.gold.append(_Gold(new, p.rle, False, {**review, "status": "relabelled"}))
                im.negatives.append((p, name, "relabelled"))
                im.positives.append((len(im.gold) - 1, "relabelled"))
                _bump(counts, "relabelled")
            else:
                rejects.append((p, name))
        for p, name in rejects:
            same = [g.rle for g in im.gold if g.name == name]
            if same and mask_iou([p.rle], same).max() >= iou_match:
                _bump(counts, "duplicates")
            else:
                im.negatives.append((p, name, "rejected"))
                _bump(counts, "rejected")
        _bump(counts, "undecided", im.undecided)
        out.append(im)
    return out


def _from_gold(
    images: list[GoldImage], classes: _Classes, current: ScoreThresholds, iou_match: float, counts: dict[str, int]
) -> list[_Image]:
    out = []
    for gi in images:
        row = gi.row
        im = _Image(row=row)
        named = [(p, classes.pred_name(p)) for p in row.preds]
        im.evaluated = named
        judged = [(p, n) for p, n in named if current.keep(classes.by_name[n], n, p.score)]
        _bump(counts, "below_threshold", len(named) - len(judged))
        regions = [(classes.resolve(r.name), r) for r in gi.regions]
        oc = classify([(n, p.score, p.rle) for p, n in judged], [(n, r.rle, r.iscrowd) for n, r in regions], iou_match)
        status: dict[int, dict[str, Any]] = {}
        for k, g in oc.accepted:
            p, n = judged[k]
            status[g] = {"status": "accepted", "instance": p.index, "score": float(p.score_text), "predicted": n}
        for k, g in oc.relabelled:
            p, n = judged[k]
            status[g] = {"status": "relabelled", "instance": p.index, "score": float(p.score_text), "predicted": n}
            im.negatives.append((p, n, "relabelled"))
        for k in oc.rejected:
            im.negatives.append((judged[k][0], judged[k][1], "rejected"))
        for g in oc.missed:
            status[g] = {"status": "missed"}
        for g, (n, r) in enumerate(regions):
            review = status.get(g, {"status": "crowd"} if r.iscrowd else {"status": "missed"})
            im.gold.append(_Gold(n, r.rle, r.iscrowd, {**review, "origin": r.origin}))
            if review["status"] in ("relabelled", "missed"):
                im.positives.append((g, review["status"]))
        for key, n in (
            ("accepted", len(oc.accepted)),
            ("relabelled", len(oc.relabelled)),
            ("rejected", len(oc.rejected)),
            ("duplicates", len(oc.duplicates)),
            ("on_crowd", len(oc.crowd)),
            ("missed", len(oc.missed)),
        ):
            _bump(counts, key, n)
        im.negatives.sort(key=lambda t: t[0].index)
        out.append(im)
    return out


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


def _references_doc(refs: list[dict], classes: _Classes, source: dict) -> dict:
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


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def format_table(report: CorrectionsReport) -> str:
    """The before/after table (Markdown): per class #gold, then threshold, #det, TP, precision, recall
    at the current thresholds and at the refit ones, then negatives and positives written."""
    lines = [
        "| class | #gold | thr before | #det | TP | precision | recall | thr after | #det | TP | precision | recall "
        "| negatives | positives |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for c in report.classes:
        lines.append(
            f"| {c.name} | {c.gold} | {_fmt(c.before_threshold, '.4g')} | {c.before_detections} | "
            f"{c.before_true_positives} | {_fmt(c.before_precision)} | {_fmt(c.before_recall)} | "
            f"{_fmt(c.after_threshold, '.4g')} | {c.after_detections} | {c.after_true_positives} | "
            f"{_fmt(c.after_precision)} | {_fmt(c.after_recall)} | {c.negatives} | {c.positives} |"
        )
    return "\n".join(lines)


def format_summary(report: CorrectionsReport) -> str:
    """Counts in and out, one line each (the head of report.md and of the command's output)."""
    c = report.counts
    ic = report.input_counts
    if report.input_kind == "decisions":
        what = (
            f"{report.decisions_in} decision(s) ({ic.get('accept', 0)} accept, {ic.get('reject', 0)} reject, "
            f"{ic.get('relabel', 0)} relabel; {ic.get('stale', 0)} stale)"
        )
    elif report.input_kind == "label-studio":
        what = (
            f"{ic.get('tasks_reviewed', 0)} reviewed task(s) of {ic.get('tasks', 0)}, "
            f"{report.decisions_in} region(s) in their final annotations"
        )
    else:
        what = f"{report.decisions_in} gold annotation(s) on {ic.get('images', 0)} image(s)"
    lines = [
        f"input: {report.input_kind} {report.input_path}: {what}",
        f"reviewed images: {report.images_reviewed} (output {report.shards})",
        "predictions: "
        + ", ".join(
            f"{k.replace('_', ' ')} {c.get(k, 0)}"
            for k in (
                "accepted",
                "relabelled",
                "rejected",
                "duplicates",
                "on_crowd",
                "missed",
                "undecided",
                "below_threshold",
            )
            if k in c or k in ("accepted", "relabelled", "rejected")
        ),
        f"out: {report.gold_instances} gold instance(s) in {REVIEWED_FILE}, {report.negatives} negative reference(s), "
        f"{report.positives} positive reference(s)",
        f"thresholds: before {report.current_thresholds}; refit ({report.target}, IoU >= {report.iou_match:g}) → "
        f"{THRESHOLDS_FILE}",
    ]
    return "\n".join(lines)


def format_report(report: CorrectionsReport) -> str:
    """What the command prints: the summary, the before/after table, notes, notices, the files written."""
    lines = [format_summary(report), "", format_table(report)]
    lines += [f"  note: {c.name}: {c.note}" for c in report.classes if c.note]
    lines += [f"  notice: {n}" for n in report.notices]
    lines.append("wrote " + ", ".join(v for k, v in report.files.items() if v))
    return "\n".join(lines)


def _write_thresholds(path: str, fit: ThresholdReport, current: ScoreThresholds, table_names: dict[str, int]) -> dict:
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


def apply_corrections(
    out_shards: str,
    *,
    decisions: str | None = None,
    label_studio: str | None = None,
    coco: str | None = None,
    dest_dir: str | os.PathLike,
    iou_match: float = 0.5,
    target: str = "f1",
    thresholds: Any = None,
    options: dict | None = None,
) -> CorrectionsReport:
    """Turn one review of the output ``out_shards`` into gold labels, references and thresholds.

    Args:
        out_shards: the ``--out`` folder/URI of ``ntt-batch run`` the review was made of.
        decisions, label_studio, coco: exactly one: the review page's ``decisions.json``, a
            Label Studio JSON export of reviewed tasks, or a COCO file of the reviewed images.
        dest_dir: local folder to write into (created; the files of the module docstring).
        iou_match: mask IoU a prediction needs to match a gold instance (0 < IoU <= 1).
        target: ``"f1"`` or ``"precision=P"``, as ``ntt-batch thresholds``.
        thresholds: the current score thresholds (a number, a YAML/JSON map file, a dict, or
            None = keep all): the "before" of the table, and which predictions a Label
            Studio / COCO review judged.
        options: fsspec storage options for the shards and input files.

    Returns:
        a :class:`CorrectionsReport` (also written as report.json / report.md).
    """
    given = [(k, v) for k, v in (("decisions", decisions), ("label-studio", label_studio), ("coco", coco)) if v]
    if len(given) != 1:
        raise ValueError(
            "give exactly one review input: decisions (the review page's decisions.json), label_studio "
            f"(Label Studio JSON export) or coco (COCO file); got {[k for k, _ in given] or 'none'}"
        )
    kind, path = given[0]
    path = os.fspath(path)
    if not 0.0 < float(iou_match) <= 1.0:
        raise ValueError(f"iou_match must be in (0, 1], got {iou_match!r}")
    parse_target(target)
    current = ScoreThresholds.load(thresholds)
    dest = os.path.abspath(os.fspath(dest_dir))
    if os.path.exists(dest) and not os.path.isdir(dest):
        raise ValueError(f"dest_dir {dest} is a file: give a folder for the corrections")
    run = OutputFolder(out_shards, options).read_run(strict=False)
    classes = _Classes(run_categories(run) or [])
    if kind == "decisions":
        inp = read_decisions(path, out_shards, dict(classes.by_id), options)
    elif kind == "label-studio":
        inp = read_label_studio(path, out_shards, options)
    else:
        inp = read_coco(path, out_shards, options)
    for c in inp.categories:
        classes.resolve(c["name"], c["id"])

    report = CorrectionsReport(
        input_kind=kind,
        input_path=path,
        shards=out_shards,
        dest_dir=dest,
        iou_match=float(iou_match),
        target=target,
        current_thresholds=current.describe(),
        input_counts=dict(inp.counts),
        notices=list(inp.notices),
    )
    counts: dict[str, int] = {}
    if kind == "decisions":
        images = _from_decisions(inp, classes, float(iou_match), counts)
        report.decisions_in = inp.counts.get("decisions", 0)
        out_meta = inp.meta.get("output")
        if out_meta and os.path.abspath(str(out_meta)) != os.path.abspath(out_shards) and str(out_meta) != out_shards:
            report.notices.append(f"the decisions were made on {out_meta!r}; applied to {out_shards!r}")
    else:
        images = _from_gold(inp.gold_images, classes, current, float(iou_match), counts)
        report.decisions_in = inp.counts.get("regions" if kind == "label-studio" else "annotations", 0)
    for a, b in sorted(classes.renamed.items()):
        report.notices.append(f"class {a!r} taken as the run's {b!r} (case-insensitive)")
    report.counts = counts
    report.images_reviewed = len(images)

    os.makedirs(dest, exist_ok=True)
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    source = {
        "kind": "corrections",
        "input": {"kind": kind, "path": os.path.abspath(path) if "://" not in path else path},
        "output": out_shards,
        "run_ids": [a.get("run_id") for a in run.get("attempts") or [] if isinstance(a, dict)] or None,
        "memory_bank_hash": (run.get("memory_bank") or {}).get("content_hash"),
        "created_at": created,
    }

    # ------------------------------------------------------------------ reviewed.json
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
    report.gold_instances = sum(1 for a in coco_anns if not a["iscrowd"])

    # ------------------------------------------------------------------ references
    files: dict[str, str | None] = {"reviewed": reviewed_path}
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
    if empty:
        report.notices.append(f"{empty} reference(s) with an empty mask left out")
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
            report.notices.append(f"no {role} reference: {fname} not written")
    report.negatives, report.positives = len(neg_refs), len(pos_refs)

    # ------------------------------------------------------------------ thresholds (refit on the gold)
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
        fit = tune_thresholds(reviewed_path, eval_path, target=target, iou_threshold=float(iou_match), iou_type="segm")
    report.threshold_fit = fit.to_dict()
    report.notices.extend(f"threshold fit: {n}" for n in fit.notices if "have no processed row" not in n)

    names_in_table: dict[str, int] = {}
    for im in images:
        for _p, n in im.evaluated:
            names_in_table[n] = classes.by_name[n]
        for g in im.gold:
            names_in_table[g.name] = classes.by_name[g.name]
    th_path = os.path.join(dest, THRESHOLDS_FILE)
    report.thresholds = _write_thresholds(th_path, fit, current, names_in_table)
    files["thresholds"] = th_path
    after = ScoreThresholds.load(dict(report.thresholds))

    # ------------------------------------------------------------------ before / after
    eval_images = [
        ([(n, p.score, p.rle) for p, n in im.evaluated], [(g.name, g.rle, g.iscrowd) for g in im.gold]) for im in images
    ]
    before_c = count_matches(eval_images, lambda n, s: current.keep(classes.by_name[n], n, s), float(iou_match))
    after_c = count_matches(eval_images, lambda n, s: after.keep(classes.by_name[n], n, s), float(iou_match))
    notes = {c.name: c.note for c in fit.classes}
    neg_per: dict[int, int] = {}
    pos_per: dict[int, int] = {}
    for r in neg_refs:
        _bump(neg_per, r["category_id"])
    for r in pos_refs:
        _bump(pos_per, r["category_id"])
    for name, cid in sorted(names_in_table.items(), key=lambda t: t[1]):
        b = before_c.get(name, ClassCounts())
        a = after_c.get(name, ClassCounts())
        report.classes.append(
            ClassRow(
                name=name,
                category_id=cid,
                gold=b.gold,
                before_threshold=current.threshold(cid, name),
                before_detections=b.detections,
                before_true_positives=b.true_positives,
                before_precision=b.precision,
                before_recall=b.recall,
                after_threshold=after.threshold(cid, name),
                after_detections=a.detections,
                after_true_positives=a.true_positives,
                after_precision=a.precision,
                after_recall=a.recall,
                negatives=neg_per.get(cid, 0),
                positives=pos_per.get(cid, 0),
                note=notes.get(name, ""),
            )
        )

    # ------------------------------------------------------------------ report
    files["report_md"] = os.path.join(dest, REPORT_MD)
    files["report_json"] = os.path.join(dest, REPORT_JSON)
    report.files = files
    md = [
        "# Corrections",
        "",
        "```",
        format_summary(report),
        "```",
        "",
        "Precision / recall per class on the reviewed images (mask IoU >= "
        f"{report.iou_match:g}; before: current thresholds, after: refit thresholds):",
        "",
        format_table(report),
        "",
    ]
    notes_lines = [f"- {c.name}: {c.note}" for c in report.classes if c.note]
    if notes_lines:
        md += ["Threshold fit notes:", "", *notes_lines, ""]
    if report.notices:
        md += ["Notices:", "", *[f"- {n}" for n in report.notices], ""]
    atomic_write_text(files["report_md"], "\n".join(md))
    atomic_write_text(files["report_json"], json.dumps(report.to_dict(), indent=1) + "\n")
    return report
