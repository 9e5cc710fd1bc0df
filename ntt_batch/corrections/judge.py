"""A review's outcome per image: which predictions are gold, negatives, positives (:func:`from_decisions`,
:func:`from_gold`), with the class names ↔ ids they use (:class:`ClassNames`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..exports.score_filter import ScoreThresholds
from .inputs import GoldImage, ReviewInput
from .match import classify, mask_iou
from .rows import Pred, Row


class ClassNames:
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
class GoldInstance:
    name: str
    rle: dict
    iscrowd: bool
    review: dict[str, Any]


@dataclass
class ReviewedImage:
    row: Row
    evaluated: list[tuple[Pred, str]] = field(default_factory=list)  # predictions evaluated, with class names
    gold: list[GoldInstance] = field(default_factory=list)
    negatives: list[tuple[Pred, str, str]] = field(default_factory=list)  # (pred, class, why)
    positives: list[tuple[int, str]] = field(default_factory=list)  # (gold index, why)
    undecided: int = 0


def bump(d: dict[str, int], key: str, n: int = 1) -> None:
    d[key] = d.get(key, 0) + n


def from_decisions(
    inp: ReviewInput, classes: ClassNames, iou_match: float, counts: dict[str, int]
) -> list[ReviewedImage]:
    out = []
    for di in inp.decided_images:
        im = ReviewedImage(row=di.row)
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
                im.gold.append(GoldInstance(name, p.rle, False, review))
                bump(counts, "accepted")
            elif d.action == "relabel":
                im.gold.append(GoldInstance(new, p.rle, False, {**review, "status": "relabelled"}))
                im.negatives.append((p, name, "relabelled"))
                im.positives.append((len(im.gold) - 1, "relabelled"))
                bump(counts, "relabelled")
            else:
                rejects.append((p, name))
        for p, name in rejects:
            same = [g.rle for g in im.gold if g.name == name]
            if same and mask_iou([p.rle], same).max() >= iou_match:
                bump(counts, "duplicates")
            else:
                im.negatives.append((p, name, "rejected"))
                bump(counts, "rejected")
        bump(counts, "undecided", im.undecided)
        out.append(im)
    return out


def from_gold(
    images: list[GoldImage], classes: ClassNames, current: ScoreThresholds, iou_match: float, counts: dict[str, int]
) -> list[ReviewedImage]:
    out = []
    for gi in images:
        row = gi.row
        im = ReviewedImage(row=row)
        named = [(p, classes.pred_name(p)) for p in row.preds]
        im.evaluated = named
        judged = [(p, n) for p, n in named if current.keep(classes.by_name[n], n, p.score)]
        bump(counts, "below_threshold", len(named) - len(judged))
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
            im.gold.append(GoldInstance(n, r.rle, r.iscrowd, {**review, "origin": r.origin}))
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
            bump(counts, key, n)
        im.negatives.sort(key=lambda t: t[0].index)
        out.append(im)
    return out
