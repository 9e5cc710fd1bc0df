"""Per-class score thresholds tuned on a small labelled set (``ntt-batch thresholds``).

For every class the job predicted that the ground truth also has (matched by **name**: exactly,
then case-insensitively), the detections on the labelled images are matched to the ground truth
COCO-style at one IoU threshold (default 0.5): per image and class, detections in decreasing
score order each take the unmatched non-crowd ground-truth instance they overlap most (IoU >= the
threshold; one match per ground truth); a detection left unmatched that overlaps a crowd region
(intersection over the detection's area >= the threshold) is ignored, any other is a false
positive. IoU is mask IoU (pycocotools) when the ground truth has masks, box IoU otherwise.

Sweeping the score threshold over the detections' scores gives precision, recall and F1 per class;
the chosen threshold

* ``target="f1"``: maximises F1 (ties: the higher threshold);
* ``target="precision=0.9"``: reaches that precision with the highest recall (ties: the higher
  threshold); where no threshold reaches it the class gets 1.0 (keeps almost nothing) and the
  table says "target not reached".

The value written is the shortest decimal in (next lower detection score, cut score], so applying
it reproduces the table's numbers exactly on this set.

A class whose detections are all false positives (F1 = 0 at every threshold: not one matches)
gets a cut-off *above* its highest score (the next 0.01 step; 1.0 at most), so applying the map
drops every one of them; the table says "no useful threshold: every detection is a false
positive". That is what a labeling team reviewing auto-labels wants: each of those detections
would be a click to reject, and a class with no labels at all is visible in review (label it by
hand, or add references). Leaving the class out of the map instead would keep them all (or hand
them to ``default``). Edit the line to change it; ``row.all_false_positives`` marks such rows.

Ground-truth classes the memory bank does not have (its categories are in the run record,
``_ntt/run.json``) cannot be predicted at all: they are listed apart, as "not in the memory
bank" (``report.not_in_bank``), not as rows of the table; "never predicted" is for classes the
bank has that got no detection on these images. Without a run record (shards written elsewhere)
the two cannot be told apart and every such class is "never predicted". Only images the job processed (status
ok/empty) count; ground-truth images without a row are left out (reported). Rows are matched
to ground-truth images by file name (the basename of the row's URI; unique basenames only),
else by image id.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from ..output.reader import dataset_categories, iter_image_batches, read_json
from ..output.shards import STATUS_ERROR
from ..storage.masks import segmentation_to_rle

log = logging.getLogger(__name__)


@dataclass
class ClassThreshold:
    """One row of the table."""

    name: str
    gt_category_id: int | None
    num_gt: int
    num_detections: int
    threshold: float | None = None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    true_positives: int = 0
    note: str = ""
    all_false_positives: bool = False  # every detection is a false positive: threshold above its max score
    in_bank: bool | None = None  # whether the run's memory bank has the class (None: no run record)


@dataclass
class ThresholdReport:
    target: str
    iou_threshold: float
    iou_type: str
    images: int
    classes: list[ClassThreshold] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    not_in_bank: list[ClassThreshold] = field(default_factory=list)  # GT classes the memory bank lacks

    def to_map(self, default: float | None = None) -> dict[str, float]:
        """``{class name: threshold}`` for the tuned classes (+ ``default`` when given)."""
        out: dict[str, Any] = {}
        if default is not None:
            out["default"] = default
        out.update({c.name: c.threshold for c in self.classes if c.threshold is not None})
        return out

    def to_dict(self) -> dict:
        return asdict(self)


def parse_target(target: str) -> tuple[str, float | None]:
    """``"f1"`` → ("f1", None); ``"precision=0.9"`` → ("precision", 0.9); ValueError otherwise."""
    t = str(target).strip().lower()
    if t == "f1":
        return "f1", None
    key, sep, value = t.partition("=")
    if key.strip() == "precision" and sep:
        try:
            p = float(value)
        except ValueError:
            p = math.nan
        if 0.0 < p <= 1.0:
            return "precision", p
    raise ValueError(f"--target must be 'f1' or 'precision=P' with 0 < P <= 1, got {target!r}")


def _nice_threshold(score: float, lower: float | None) -> float:
    """The shortest decimal t with lower < t <= score (score itself when none has <= 9 digits)."""
    for k in range(1, 10):
        t = math.floor(score * 10**k) / 10**k
        if t <= score and (lower is None or t > lower):
            return t
    return float(score)


def above_score(score: float) -> float:
    """The next 0.01 step strictly above ``score``, at most 1.0 (1.0 for a score of 1 or more)."""
    return min(1.0, (math.floor(score * 100 + 1e-9) + 1) / 100)


def choose_threshold(
    scores: np.ndarray, tp: np.ndarray, num_gt: int, target: str = "f1"
) -> tuple[float | None, float | None, float, float, int, str]:
    """Pick a threshold from one class's detections (``scores``; ``tp`` True for a match; ignored
    detections already removed). Returns (threshold, precision, recall, F1, TPs, note).

    No detection matching (F1 = 0 everywhere): a threshold above the highest score
    (:func:`above_score`), precision None (nothing kept), recall and F1 0."""
    kind, goal = parse_target(target)
    if num_gt == 0:
        return None, 0.0, 0.0, 0.0, 0, "no ground truth on these images: not tuned"
    if len(scores) == 0:
        return None, 0.0, 0.0, 0.0, 0, "no detection: not tuned"
    order = np.argsort(-scores, kind="stable")
    s, hit = scores[order], tp[order].astype(np.int64)
    ctp, cfp = np.cumsum(hit), np.cumsum(1 - hit)
    ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True])  # last index of each group of equal scores
    precision = ctp[ends] / (ctp[ends] + cfp[ends])
    recall = ctp[ends] / num_gt
    denom = precision + recall
    f1 = np.where(denom > 0, 2 * precision * recall / np.where(denom > 0, denom, 1), 0.0)
    note = ""
    if ctp[-1] == 0:  # F1 = 0 at every threshold: drop them all (see the module docstring)
        top = float(s[0])
        t = above_score(top)
        kept = "drops them" if t > top else f"keeps only those scoring {top:g}"
        return (
            t,
            None,
            0.0,
            0.0,
            0,
            f"no useful threshold: every detection is a false positive ({len(s)}); "
            f"cut-off above its highest score ({top:.4g}) {kept}",
        )
    if kind == "f1":
        best = f1.max()
        k = int(np.flatnonzero(f1 == best)[0])  # earliest cut = highest threshold among ties
    else:
        ok = np.flatnonzero(precision >= goal - 1e-12)
        if ok.size == 0:
            return 1.0, 0.0, 0.0, 0.0, 0, f"target not reached (best precision {precision.max():.3f}): keeps ~nothing"
        best_r = recall[ok].max()
        k = int(ok[recall[ok] == best_r][0])
    cut = ends[k]
    lower = float(s[cut + 1]) if cut + 1 < len(s) else None
    t = _nice_threshold(float(s[cut]), lower)
    return t, float(precision[k]), float(recall[k]), float(f1[k]), int(ctp[cut]), note


def _lookup_name(name: str | None, exact: dict[str, int], folded: dict[str, int]) -> int | None:
    if name is None:
        return None
    if name in exact:
        return exact[name]
    return folded.get(name.casefold())


def tune_thresholds(
    annotations: str,
    shards: str,
    *,
    target: str = "f1",
    iou_threshold: float = 0.5,
    iou_type: str = "auto",
    options: dict | None = None,
) -> ThresholdReport:
    """Per-class thresholds for the job output ``shards`` against COCO ground truth ``annotations``."""
    parse_target(target)
    if not 0.0 < float(iou_threshold) <= 1.0:
        raise ValueError(f"IoU threshold must be in (0, 1], got {iou_threshold!r}")
    if iou_type not in ("auto", "segm", "bbox"):
        raise ValueError(f"iou type must be auto, segm or bbox, got {iou_type!r}")
    gt = read_json(annotations, options)
    if not isinstance(gt, dict) or not {"images", "annotations", "categories"} <= set(gt):
        raise ValueError(f"{annotations}: not a COCO annotation file (needs images, annotations and categories)")
    index = _GroundTruthIndex.of(gt)

    report = ThresholdReport(target=target, iou_threshold=float(iou_threshold), iou_type=iou_type, images=0)
    found = _collect_detections(shards, options, index)
    report.images = len(found.processed)
    if not found.processed:
        raise ValueError(
            f"no row of {shards} is an image of {annotations} (matched by file name, then image id): "
            "run the job on the labelled images first"
        )
    report.notices += found.notices(len(index.images))

    gts: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for a in gt["annotations"]:
        if int(a["image_id"]) in found.processed:
            gts[(int(a["image_id"]), int(a["category_id"]))].append(a)
    mode = iou_type
    if mode == "auto":
        has_masks = all(a.get("segmentation") for v in gts.values() for a in v if not a.get("iscrowd"))
        mode = "segm" if has_masks else "bbox"
        if not has_masks:
            report.notices.append("some ground-truth instances have no mask: using box IoU")
    report.iou_type = mode
    rows = _class_thresholds(
        found.dets, gts, index, float(iou_threshold), mode, target, _bank_class_matcher(shards, options)
    )
    report.classes = [r for r in rows if r.in_bank is not False]
    report.not_in_bank = [r for r in rows if r.in_bank is False]  # ground-truth classes the bank lacks
    return report


@dataclass
class _GroundTruthIndex:
    """Lookups into a COCO annotation dict: classes by exact and case-folded name, class names by id,
    images by id, and image ids by file base name (only base names that are unique in the file)."""

    exact: dict[str, int]
    folded: dict[str, int]
    names: dict[int, str]
    images: dict[int, dict]
    by_base: dict[str, int]

    @classmethod
    def of(cls, gt: dict) -> _GroundTruthIndex:
        exact = {str(c["name"]): int(c["id"]) for c in gt["categories"]}
        folded: dict[str, int] = {}
        for n, i in exact.items():
            folded.setdefault(n.casefold(), i)
        base_count: dict[str, int] = defaultdict(int)
        for im in gt["images"]:
            base_count[PurePosixPath(str(im["file_name"])).name] += 1
        by_base = {
            PurePosixPath(str(im["file_name"])).name: int(im["id"])
            for im in gt["images"]
            if base_count[PurePosixPath(str(im["file_name"])).name] == 1
        }
        return cls(
            exact=exact,
            folded=folded,
            names={int(c["id"]): str(c["name"]) for c in gt["categories"]},
            images={int(im["id"]): im for im in gt["images"]},
            by_base=by_base,
        )


@dataclass
class _Detections:
    """The shards' detections matched to the ground truth, and what did not match.

    ``dets``: per (ground-truth image id, ground-truth category id), ``(score, segmentation RLE,
    bbox)`` tuples; ``processed``: the ground-truth image ids with a row; ``unmatched_names``:
    predicted class name → count of its detections with no ground-truth class; ``renamed``: predicted
    name → the ground truth's, matched case-insensitively; ``rows_unknown``: rows of other images.
    """

    dets: dict[tuple[int, int], list[tuple[float, dict, list[float]]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    processed: set[int] = field(default_factory=set)
    unmatched_names: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    renamed: dict[str, str] = field(default_factory=dict)
    rows_unknown: int = 0

    def notices(self, num_gt_images: int) -> list[str]:
        """What was left out of the tuning, for the report."""
        out = []
        if len(self.processed) < num_gt_images:
            out.append(
                f"{num_gt_images - len(self.processed)} ground-truth image(s) have no processed row in the shards "
                "and were left out"
            )
        if self.rows_unknown:
            out.append(f"{self.rows_unknown} processed row(s) are not images of the ground truth and were left out")
        if self.unmatched_names:
            shown = ", ".join(f"{n!r} ({k})" for n, k in sorted(self.unmatched_names.items()))
            out.append(f"predicted classes absent from the ground truth (not tuned): {shown}")
        for a, g in sorted(self.renamed.items()):
            out.append(f"class {a!r} matched the ground truth's {g!r} (case-insensitive)")
        return out


def _collect_detections(shards: str, options: dict | None, index: _GroundTruthIndex) -> _Detections:
    """Read the shards' non-error rows: each row's image is matched by file base name, then by image id;
    each instance's class by name (exact, then case-insensitive)."""
    found = _Detections()
    for b in iter_image_batches(shards, options):
        for i in range(len(b)):
            if b.status[i] == STATUS_ERROR:
                continue
            gid = index.by_base.get(PurePosixPath(str(b.image_uri[i]).split("?", 1)[0]).name)
            if gid is None and int(b.image_id[i]) in index.images:
                gid = int(b.image_id[i])
            if gid is None:
                found.rows_unknown += 1
                continue
            found.processed.add(gid)
            for j in range(int(b.offsets[i]), int(b.offsets[i + 1])):
                name = b.category_name[j]
                cid = _lookup_name(name, index.exact, index.folded)
                if cid is None:
                    found.unmatched_names[name or f"id {b.category_id[j]}"] += 1
                    continue
                if name != index.names[cid]:
                    found.renamed[name] = index.names[cid]
                found.dets[(gid, cid)].append((b.score[j], {"size": b.size[j], "counts": b.counts[j]}, b.bbox[j]))
    return found


def _class_thresholds(
    dets: dict[tuple[int, int], list[tuple[float, dict, list[float]]]],
    gts: dict[tuple[int, int], list[dict]],
    index: _GroundTruthIndex,
    iou_threshold: float,
    mode: str,
    target: str,
    in_bank=None,
) -> list[ClassThreshold]:
    """One row per class predicted or with ground truth: match each image's detections of the class
    (:func:`_match`), then choose the threshold for ``target`` (:func:`choose_threshold`).
    ``in_bank`` (name -> bool, see :func:`_bank_class_matcher`) sets each row's ``in_bank``."""
    predicted = {cid for (_, cid) in dets}
    num_gt: dict[int, int] = defaultdict(int)
    for (_, cid), anns in gts.items():
        num_gt[cid] += sum(1 for a in anns if not a.get("iscrowd"))
    per_class_scores: dict[int, list[float]] = defaultdict(list)
    per_class_tp: dict[int, list[bool]] = defaultdict(list)
    for (gid, cid), dl in dets.items():
        im = index.images[gid]
        anns = gts.get((gid, cid), [])
        scores, tp = _match(dl, anns, int(im["height"]), int(im["width"]), iou_threshold, mode)
        per_class_scores[cid] += scores
        per_class_tp[cid] += tp
    rows = []
    for cid in sorted(predicted | {c for c, n in num_gt.items() if n}):
        scores = np.asarray(per_class_scores.get(cid, []), dtype=np.float64)
        tp = np.asarray(per_class_tp.get(cid, []), dtype=bool)
        n_det = sum(len(v) for (g, c), v in dets.items() if c == cid)
        row = ClassThreshold(name=index.names[cid], gt_category_id=cid, num_gt=num_gt.get(cid, 0), num_detections=n_det)
        if in_bank is not None:
            row.in_bank = cid in predicted or in_bank(row.name)
        if cid not in predicted:
            row.note = "never predicted: not tuned" if row.in_bank is not False else "not in the memory bank"
        else:
            (row.threshold, row.precision, row.recall, row.f1, row.true_positives, row.note) = choose_threshold(
                scores, tp, row.num_gt, target
            )
            row.all_false_positives = row.num_gt > 0 and len(tp) > 0 and not tp.any()
        rows.append(row)
    return rows


def _bank_class_matcher(shards: str, options: dict | None):
    """``name -> bool``: whether the run's memory bank has the class (exact name, then case-insensitive);
    None when the run record does not list the bank's categories."""
    cats = dataset_categories(shards, options)  # an unreadable record is a warning and None
    if not cats:
        return None
    names = {c["name"] for c in cats}
    folded = {n.casefold() for n in names}
    return lambda name: name in names or name.casefold() in folded


def _match(
    dl: list[tuple[float, dict, list[float]]], anns: list[dict], h: int, w: int, thr: float, mode: str
) -> tuple[list[float], list[bool]]:
    """COCO-style greedy matching of one image's detections of one class; ignored ones are dropped."""
    order = sorted(range(len(dl)), key=lambda k: -dl[k][0])
    normal = [a for a in anns if not a.get("iscrowd")]
    crowd = [a for a in anns if a.get("iscrowd")]
    gts = normal + crowd
    if gts:
        if mode == "segm":
            d_obj = [dl[k][1] for k in order]
            g_obj = [
                segmentation_to_rle(a["segmentation"], h, w)
                if a.get("segmentation")
                else mask_utils.frPyObjects([_box_poly(a["bbox"])], h, w)[0]
                for a in gts
            ]
            d_obj = [
                {
                    "size": list(d["size"]),
                    "counts": d["counts"].encode() if isinstance(d["counts"], str) else d["counts"],
                }
                for d in d_obj
            ]
            g_obj = [
                {
                    "size": list(g["size"]),
                    "counts": g["counts"].encode() if isinstance(g["counts"], str) else g["counts"],
                }
                for g in g_obj
            ]
        else:
            d_obj = [list(map(float, dl[k][2])) for k in order]
            g_obj = [list(map(float, a["bbox"])) for a in gts]
        ious = np.asarray(mask_utils.iou(d_obj, g_obj, [int(bool(a.get("iscrowd"))) for a in gts]), dtype=np.float64)
        ious = ious.reshape(len(d_obj), len(gts))
    else:
        ious = np.zeros((len(order), 0))
    taken = np.zeros(len(normal), dtype=bool)
    scores, tp = [], []
    for r, k in enumerate(order):
        score = dl[k][0]
        best, best_iou = -1, thr
        for g in range(len(normal)):
            if not taken[g] and ious[r, g] >= best_iou:
                best, best_iou = g, ious[r, g]
        if best >= 0:
            taken[best] = True
            scores.append(score)
            tp.append(True)
        elif crowd and ious[r, len(normal) :].max() >= thr:
            continue  # on a crowd region: neither right nor wrong
        else:
            scores.append(score)
            tp.append(False)
    return scores, tp


def _box_poly(b: list[float]) -> list[float]:
    x, y, w, h = (float(v) for v in b)
    return [x, y, x + w, y, x + w, y + h, x, y + h]


def format_table(report: ThresholdReport) -> str:
    """The printed table: class, threshold, precision, recall, F1, #GT, #detections, note; columns as
    wide as their longest entry (class names are never cut). Then the ground-truth classes the memory
    bank lacks, apart."""

    def num(v, fmt):
        return format(v, fmt) if v is not None else "-"

    header = ("class", "threshold", "precision", "recall", "F1", "#GT", "#det")
    cells = [
        (
            c.name,
            num(c.threshold, ".4g"),
            num(c.precision, ".3f"),
            num(c.recall, ".3f"),
            num(c.f1, ".3f"),
            str(c.num_gt),
            str(c.num_detections),
        )
        for c in report.classes
    ]
    widths = [max(len(r[k]) for r in [header, *cells]) for k in range(len(header))]

    def fmt(row, note):
        left = row[0].ljust(widths[0])
        rest = " ".join(v.rjust(w) for v, w in zip(row[1:], widths[1:]))
        return f"{left} {rest}  {note}".rstrip()

    lines = [
        (
            f"score thresholds ({report.target}; IoU >= {report.iou_threshold:g}, {report.iou_type}; "
            f"{report.images} labelled images)"
        ),
        fmt(header, "note"),
    ]
    lines += [fmt(row, c.note) for row, c in zip(cells, report.classes)]
    if report.not_in_bank:
        shown = ", ".join(f"{c.name} ({c.num_gt} GT)" for c in report.not_in_bank)
        lines.append(
            f"not in the memory bank ({len(report.not_in_bank)} ground-truth class(es), cannot be predicted; "
            f"add references for them to label them): {shown}"
        )
    return "\n".join(lines)


def write_thresholds(
    report: ThresholdReport, out: str, *, default: float | None = None, options: dict | None = None
) -> dict:
    """Write the map as YAML (JSON when ``out`` ends in .json) with the table as comments; returns it."""
    import json

    import yaml

    from ..exports.score_filter import ScoreThresholds
    from ..storage.atomic import atomic_output

    data = report.to_map(default)
    ScoreThresholds.load(data)  # the file must load back
    with atomic_output(out, options) as f:
        if out.lower().endswith(".json"):
            f.write(json.dumps(data, indent=2) + "\n")
        else:
            f.write("# per-class score thresholds written by `ntt-batch thresholds`; use with --thresholds\n")
            f.write("".join(f"# {line}\n" for line in format_table(report).splitlines()))
            f.write(yaml.safe_dump(data, sort_keys=False, allow_unicode=True) if data else "{}\n")
    return data
