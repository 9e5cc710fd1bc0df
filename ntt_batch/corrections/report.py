"""The corrections report: its data (:class:`CorrectionsReport`, one :class:`ClassRow` per class), the
before/after rows, and its text (the summary, the Markdown table, ``report.md``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..eval.threshold_fit import ThresholdReport
from ..exports.score_filter import ScoreThresholds
from .judge import ClassNames, ReviewedImage, bump
from .match import ClassCounts, count_matches

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
    """What :func:`.core.apply_corrections` read and wrote."""

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


def class_rows(
    images: list[ReviewedImage],
    classes: ClassNames,
    names_in_table: dict[str, int],
    current: ScoreThresholds,
    after: ScoreThresholds,
    fit: ThresholdReport,
    iou_match: float,
    neg_refs: list[dict],
    pos_refs: list[dict],
) -> list[ClassRow]:
    """Per class of ``names_in_table`` (id order): gold, detections, TP, precision, recall on the reviewed
    images at the ``current`` thresholds and at the refit ``after`` ones, references written, fit note."""
    eval_images = [
        ([(n, p.score, p.rle) for p, n in im.evaluated], [(g.name, g.rle, g.iscrowd) for g in im.gold]) for im in images
    ]
    before_c = count_matches(eval_images, lambda n, s: current.keep(classes.by_name[n], n, s), iou_match)
    after_c = count_matches(eval_images, lambda n, s: after.keep(classes.by_name[n], n, s), iou_match)
    notes = {c.name: c.note for c in fit.classes}
    neg_per: dict[int, int] = {}
    pos_per: dict[int, int] = {}
    for r in neg_refs:
        bump(neg_per, r["category_id"])
    for r in pos_refs:
        bump(pos_per, r["category_id"])
    rows = []
    for name, cid in sorted(names_in_table.items(), key=lambda t: t[1]):
        b = before_c.get(name, ClassCounts())
        a = after_c.get(name, ClassCounts())
        rows.append(
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
    return rows


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


def format_markdown(report: CorrectionsReport) -> str:
    """``report.md``: the summary, the before/after table, the threshold fit notes and the notices."""
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
    return "\n".join(md)
