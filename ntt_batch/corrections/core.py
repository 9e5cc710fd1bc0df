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
import os
from typing import Any

from ..eval.threshold_fit import parse_target
from ..exports.score_filter import ScoreThresholds
from ..output.folder import OutputFolder
from ..output.reader import run_categories
from .inputs import ReviewInput, read_coco, read_decisions, read_label_studio
from .judge import ClassNames, ReviewedImage, from_decisions, from_gold
from .outputs import (
    collect_references,
    fit_thresholds,
    write_references,
    write_report,
    write_reviewed,
    write_thresholds,
)
from .report import (
    NEGATIVES_FILE,
    POSITIVES_FILE,
    REPORT_JSON,
    REPORT_MD,
    REVIEWED_FILE,
    THRESHOLDS_FILE,
    ClassRow,
    CorrectionsReport,
    class_rows,
    format_report,
    format_summary,
    format_table,
)

__all__ = [
    "NEGATIVES_FILE",
    "POSITIVES_FILE",
    "REPORT_JSON",
    "REPORT_MD",
    "REVIEWED_FILE",
    "THRESHOLDS_FILE",
    "ClassRow",
    "CorrectionsReport",
    "apply_corrections",
    "format_report",
    "format_summary",
    "format_table",
]


# 83 lines, 29 of them the signature and docstring: the body is the named steps.


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
    kind, path = _the_one_input(decisions, label_studio, coco)
    if not 0.0 < float(iou_match) <= 1.0:
        raise ValueError(f"iou_match must be in (0, 1], got {iou_match!r}")
    parse_target(target)
    current = ScoreThresholds.load(thresholds)
    dest = os.path.abspath(os.fspath(dest_dir))
    if os.path.exists(dest) and not os.path.isdir(dest):
        raise ValueError(f"dest_dir {dest} is a file: give a folder for the corrections")
    run = OutputFolder(out_shards, options).read_run(strict=False)
    classes = ClassNames(run_categories(run) or [])
    inp = _read_review(kind, path, out_shards, classes, options)

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
    images = _judge(inp, report, classes, current)

    os.makedirs(dest, exist_ok=True)
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    source = _source(kind, path, out_shards, run, created)

    reviewed_path, coco_anns = write_reviewed(images, classes, kind, source, created, dest)
    report.gold_instances = sum(1 for a in coco_anns if not a["iscrowd"])

    neg_refs, pos_refs, empty = collect_references(images, classes, coco_anns)
    if empty:
        report.notices.append(f"{empty} reference(s) with an empty mask left out")
    files: dict[str, str | None] = {"reviewed": reviewed_path}
    files.update(write_references(neg_refs, pos_refs, classes, source, dest, report.notices))
    report.negatives, report.positives = len(neg_refs), len(pos_refs)

    fit = fit_thresholds(images, classes, reviewed_path, target, float(iou_match))
    report.threshold_fit = fit.to_dict()
    report.notices.extend(f"threshold fit: {n}" for n in fit.notices if "have no processed row" not in n)
    names_in_table = _names_in_table(images, classes)
    th_path = os.path.join(dest, THRESHOLDS_FILE)
    report.thresholds = write_thresholds(th_path, fit, current, names_in_table)
    files["thresholds"] = th_path
    after = ScoreThresholds.load(dict(report.thresholds))

    report.classes.extend(
        class_rows(images, classes, names_in_table, current, after, fit, float(iou_match), neg_refs, pos_refs)
    )
    report.files = files
    write_report(report, dest)
    return report


def _the_one_input(decisions: str | None, label_studio: str | None, coco: str | None) -> tuple[str, str]:
    """(kind, path) of the one review input given; a ValueError naming them otherwise."""
    given = [(k, v) for k, v in (("decisions", decisions), ("label-studio", label_studio), ("coco", coco)) if v]
    if len(given) != 1:
        raise ValueError(
            "give exactly one review input: decisions (the review page's decisions.json), label_studio "
            f"(Label Studio JSON export) or coco (COCO file); got {[k for k, _ in given] or 'none'}"
        )
    kind, path = given[0]
    return kind, os.fspath(path)


def _read_review(kind: str, path: str, out_shards: str, classes: ClassNames, options: dict | None) -> ReviewInput:
    """Read the review input of ``kind``, tied to the output's rows; its classes join ``classes``."""
    if kind == "decisions":
        inp = read_decisions(path, out_shards, dict(classes.by_id), options)
    elif kind == "label-studio":
        inp = read_label_studio(path, out_shards, options)
    else:
        inp = read_coco(path, out_shards, options)
    for c in inp.categories:
        classes.resolve(c["name"], c["id"])
    return inp


def _judge(
    inp: ReviewInput, report: CorrectionsReport, classes: ClassNames, current: ScoreThresholds
) -> list[ReviewedImage]:
    """Each reviewed image's gold, negatives and positives; fills the report's counts and notices."""
    counts: dict[str, int] = {}
    kind, out_shards = report.input_kind, report.shards
    if kind == "decisions":
        images = from_decisions(inp, classes, report.iou_match, counts)
        report.decisions_in = inp.counts.get("decisions", 0)
        out_meta = inp.meta.get("output")
        if out_meta and os.path.abspath(str(out_meta)) != os.path.abspath(out_shards) and str(out_meta) != out_shards:
            report.notices.append(f"the decisions were made on {out_meta!r}; applied to {out_shards!r}")
    else:
        images = from_gold(inp.gold_images, classes, current, report.iou_match, counts)
        report.decisions_in = inp.counts.get("regions" if kind == "label-studio" else "annotations", 0)
    for a, b in sorted(classes.renamed.items()):
        report.notices.append(f"class {a!r} taken as the run's {b!r} (case-insensitive)")
    report.counts = counts
    report.images_reviewed = len(images)
    return images


def _source(kind: str, path: str, out_shards: str, run: dict, created: str) -> dict:
    """Where the corrections come from: the ``source`` of the references files and ``info`` of reviewed.json."""
    return {
        "kind": "corrections",
        "input": {"kind": kind, "path": os.path.abspath(path) if "://" not in path else path},
        "output": out_shards,
        "run_ids": [a.get("run_id") for a in run.get("attempts") or [] if isinstance(a, dict)] or None,
        "memory_bank_hash": (run.get("memory_bank") or {}).get("content_hash"),
        "created_at": created,
    }


def _names_in_table(images: list[ReviewedImage], classes: ClassNames) -> dict[str, int]:
    """The classes of the before/after table: those of an evaluated prediction or a gold instance."""
    names_in_table: dict[str, int] = {}
    for im in images:
        for _p, n in im.evaluated:
            names_in_table[n] = classes.by_name[n]
        for g in im.gold:
            names_in_table[g.name] = classes.by_name[g.name]
    return names_in_table
