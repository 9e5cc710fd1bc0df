"""`ntt-batch memory show BANK`: is this memory bank fit to segment with?

What the check is for. Detection in this method is "which class prototype is this mask's feature
most similar to" (method.md §3-4). Two things in a bank make that go wrong, and both can be seen
before running anything on a target image:

* **near-duplicate classes** — two class prototypes so close (cosine >= ``threshold``, 0.95 by
  default) that the encoder cannot tell the classes apart from these references; detections of one
  are labelled as the other more or less at random. Fix: more distinctive references, or merge
  the classes.
* **inconsistent references** — a class whose references disagree with each other: the
  *consistency* of a class is the mean cosine of each reference's normalised instance prototype
  to the class prototype (1 = all references alike). A reference that is closer to *another*
  class's prototype than to its own is listed too (often a wrong label or a bad crop).

This is the bank-level counterpart of the authors' memory visualisations: their
``forward_vis_memory`` (``Sam2MatchingBaseline_noAMG.py:L844-900``: PCA/k-means colourings of
reference patch features), ``visualize_memory_dataset`` (``few_shot_sampling.py:L176-221``: the
sampled reference images with their masks — ours is ``references show``) and the per-class
"instance similarity" ``mem_ins_sim_avg`` (``Sam2MatchingBaseline_noAMG.py:L1939-1957``:
leave-one-out cosine of each reference's pooled feature to the rest of its class, mapped to
[0, 1], computed at post-processing and unused by inference). Our *consistency* is the same idea
computed from what the bank stores (the instance prototypes; the full patch maps are not kept,
§8.7), on the plain cosine scale, against the class prototype rather than leave-one-out.

Outputs: a text report (:func:`memory_bank_report`) and a PNG heatmap of the class-prototype
cosine similarities (:func:`render_similarity_heatmap`), drawn with PIL and numpy only. The
heatmap is written to ``./<bank folder name>-similarity.png`` unless told otherwise — never into
the bank folder, which ``memory build`` owns (it is a content-hashed artefact that may be shared
or read-only).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from ..method.memory_bank import MemoryBank
from ..references.preferences import ReferencePreference
from ..storage.atomic import atomic_local_file
from .overlay import label_font

__all__ = [
    "DEFAULT_NEAR_DUPLICATE_THRESHOLD",
    "MAX_LABELLED_CLASSES",
    "ClassConsistency",
    "class_consistency",
    "default_heatmap_path",
    "memory_bank_report",
    "misplaced_references",
    "near_duplicate_classes",
    "negative_references_lines",
    "prototype_similarity",
    "render_similarity_heatmap",
    "show_memory_bank",
]

DEFAULT_NEAR_DUPLICATE_THRESHOLD = 0.95
MAX_LABELLED_CLASSES = 80  # above this, the heatmap is drawn without class names
LABEL_CHARS = 18  # class names longer than this are shortened with "…"

# viridis, 9 anchors (dark blue = low similarity, yellow = high); interpolated linearly
_VIRIDIS = np.array(
    [
        [68, 1, 84],
        [71, 44, 122],
        [59, 81, 139],
        [44, 113, 142],
        [33, 144, 141],
        [39, 173, 129],
        [92, 200, 99],
        [170, 220, 50],
        [253, 231, 37],
    ],
    dtype=np.float64,
)
_DUPLICATE_FRAME = (230, 30, 30)
_BACKGROUND = (255, 255, 255)
_INK = (30, 30, 30)


# ----------------------------------------------------------------------------- numbers


def prototype_similarity(bank: MemoryBank) -> Tensor:
    """Cosine similarity between the class prototypes: ``P @ P.T``, ``[C, C]`` float32 in [-1, 1].

    ``bank.class_prototypes`` are unit vectors (method.md §3 step 3), so this is the cosine; the
    product is taken in float64, clamped to [-1, 1] and the diagonal set to exactly 1.
    """
    p = bank.class_prototypes.to(torch.float64)
    p = p / p.norm(dim=1, keepdim=True)
    sim = (p @ p.T).clamp_(-1.0, 1.0)
    sim.fill_diagonal_(1.0)
    return sim.to(torch.float32)


def _check_threshold(threshold: float) -> float:
    t = float(threshold)
    if not -1.0 <= t <= 1.0:
        raise ValueError(f"near-duplicate threshold must be a cosine similarity in [-1, 1], got {threshold}")
    return t


def near_duplicate_classes(
    sim: Tensor, names: Sequence[str], threshold: float = DEFAULT_NEAR_DUPLICATE_THRESHOLD
) -> list[tuple[str, str, float]]:
    """Pairs of distinct classes whose prototypes have cosine similarity >= ``threshold``.

    Args:
        sim: ``[C, C]`` from :func:`prototype_similarity`.
        names: the C class names, in class-index order.
        threshold: cosine similarity at or above which a pair is flagged (0.95).
    Returns:
        ``[(name_i, name_j, similarity), ...]`` with i < j (class-index order within a pair),
        sorted by similarity, highest first (ties: class-index order).
    """
    threshold = _check_threshold(threshold)
    s = torch.as_tensor(sim, dtype=torch.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1] or s.shape[0] != len(names):
        raise ValueError(f"similarity matrix of shape {tuple(s.shape)} does not match {len(names)} class names")
    i, j = torch.triu_indices(s.shape[0], s.shape[0], offset=1)
    vals = s[i, j]
    keep = vals >= threshold
    pairs = [(int(a), int(b), float(v)) for a, b, v in zip(i[keep].tolist(), j[keep].tolist(), vals[keep].tolist())]
    pairs.sort(key=lambda t: (-t[2], t[0], t[1]))
    return [(str(names[a]), str(names[b]), v) for a, b, v in pairs]


@dataclass(frozen=True)
class ClassConsistency:
    """How alike one class's references are, as the encoder sees them.

    ``mean``/``min``: cosine of each normalised instance prototype to the class prototype
    (1.0 for a 1-shot class, by definition); ``worst``: the bank's instance row of the least
    typical reference (None for 1 shot).
    """

    index: int
    name: str
    shots: int
    mean: float
    min: float
    worst: int | None


def class_consistency(bank: MemoryBank) -> list[ClassConsistency]:
    """Per class, the spread of its own references around its prototype (class-index order)."""
    inst = F.normalize(bank.instance_prototypes.to(torch.float64), dim=1)
    protos = bank.class_prototypes.to(torch.float64)
    labels = bank.instance_labels
    cos = (inst * protos[labels]).sum(dim=1)  # [R] cosine to own class prototype
    out = []
    for c, name in enumerate(bank.category_names):
        rows = torch.nonzero(labels == c).flatten()
        vals = cos[rows]
        k = int(rows.numel())
        worst = int(rows[int(torch.argmin(vals))]) if k > 1 else None
        out.append(ClassConsistency(c, name, k, float(vals.mean()), float(vals.min()), worst))
    return out


def misplaced_references(bank: MemoryBank) -> list[dict]:
    """References whose instance prototype is closer to another class's prototype than to its own.

    Returns ``[{"row", "class", "closer_to", "own", "other"}, ...]`` (cosines), largest gap first.
    A 1-shot class's reference *is* its prototype, so it is never listed.
    """
    inst = F.normalize(bank.instance_prototypes.to(torch.float64), dim=1)
    cos = inst @ bank.class_prototypes.to(torch.float64).T  # [R, C]
    labels = bank.instance_labels
    own = cos.gather(1, labels[:, None])[:, 0]
    best = cos.argmax(dim=1)
    names = bank.category_names
    out = []
    for r in torch.nonzero(best != labels).flatten().tolist():
        out.append(
            {
                "row": r,
                "class": names[int(labels[r])],
                "closer_to": names[int(best[r])],
                "own": float(own[r]),
                "other": float(cos[r, best[r]]),
            }
        )
    out.sort(key=lambda d: d["own"] - d["other"])
    return out


# ----------------------------------------------------------------------------- heatmap


def _colormap(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map values to viridis RGB uint8 over [lo, hi] (clipped)."""
    t = np.clip((np.asarray(values, dtype=np.float64) - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    x = t * (len(_VIRIDIS) - 1)
    k = np.minimum(np.floor(x).astype(int), len(_VIRIDIS) - 2)
    f = (x - k)[..., None]
    rgb = _VIRIDIS[k] * (1 - f) + _VIRIDIS[k + 1] * f
    return np.round(rgb).astype(np.uint8)


def _short(name: str, n: int = LABEL_CHARS) -> str:
    name = str(name)
    return name if len(name) <= n else name[: n - 1] + "…"


def _atomic_save(img: Image.Image, path: Path) -> Path:
    """Write a PNG atomically (a temporary name in the same folder, then renamed into place)."""
    with atomic_local_file(path) as f:
        img.save(f, format="PNG")
    return path


# 81 lines, 21 of them the signature and docstring: the drawing is one canvas, laid out in order.


def render_similarity_heatmap(
    sim: Tensor,
    names: Sequence[str],
    path: str | os.PathLike,
    *,
    threshold: float | None = DEFAULT_NEAR_DUPLICATE_THRESHOLD,
    title: str | None = None,
    max_labelled: int = MAX_LABELLED_CLASSES,
) -> Path:
    """Draw the ``[C, C]`` similarity matrix as a PNG heatmap and write it atomically.

    Layout: a title line; class names down the left (rows) and, rotated, along the top (columns),
    shortened to 18 characters with "…"; square cells (40 px for a few classes, down to 12 px at
    80); a colour bar on the right. Colour: viridis over [min(0, lowest value), 1] — dark = unlike,
    yellow = alike — so 0..1 keeps the same colours from bank to bank. Cells of near-duplicate
    pairs (>= ``threshold``, off the diagonal) get a red frame. With more than ``max_labelled``
    classes the names are left out (the title says so; the text report names the pairs) and
    cells shrink to as little as 1 px.

    The PNG is written to a temporary name in the same folder, then ``os.replace``-d into place.
    """
    path = Path(path)
    s = torch.as_tensor(sim, dtype=torch.float64).numpy()
    c = len(names)
    if s.ndim != 2 or s.shape != (c, c) or c == 0:
        raise ValueError(f"similarity matrix of shape {s.shape} does not match {c} class names")
    labelled = c <= max_labelled
    if labelled:
        cell = int(np.clip(960 // c, 12, 40))
        font_px = int(np.clip(cell - 3, 9, 14))
    else:
        cell = max(1, 960 // c)
        font_px = 12
    font = label_font(font_px)
    small = label_font(12)
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    labels = [_short(n) for n in names] if labelled else []
    label_w = int(max((scratch.textlength(t, font=font) for t in labels), default=0)) + 8 if labelled else 0
    lo = float(min(0.0, s.min()))
    hi = 1.0
    if title is None:
        title = "class prototype cosine similarity"
    notes = []
    if threshold is not None:
        notes.append(f"red frame: >= {threshold:g} (near-duplicate)")
    if not labelled:
        notes.append(f"{c} classes: names left out (more than {max_labelled}); see the text report")
    title_h = 20 + (16 if notes else 0)

    grid = c * cell
    bar_w, bar_gap, tick_w = 16, 14, 44
    pad = 10
    left = pad + label_w
    top = pad + title_h + (label_w if labelled else 0)
    width = max(
        left + grid + bar_gap + bar_w + tick_w + pad,
        pad + int(scratch.textlength(title, font=small)) + pad,
        pad + int(scratch.textlength("; ".join(notes), font=small)) + pad,
    )
    height = top + grid + pad
    img = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(img)
    draw.text((pad, pad), title, fill=_INK, font=small)
    if notes:
        draw.text((pad, pad + 16), "; ".join(notes), fill=(90, 90, 90), font=small)

    # cells: one coloured pixel per class pair, scaled up with NEAREST (exact cell boundaries)
    rgb = _colormap(s, lo, hi)
    cells = Image.fromarray(rgb, "RGB").resize((grid, grid), Image.NEAREST)
    img.paste(cells, (left, top))
    if threshold is not None and cell >= 3:
        ii, jj = np.nonzero((s >= threshold) & ~np.eye(c, dtype=bool))
        for i, j in zip(ii.tolist(), jj.tolist()):
            x0, y0 = left + j * cell, top + i * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], outline=_DUPLICATE_FRAME, width=max(1, cell // 8))

    if labelled:
        _draw_class_names(img, labels, font, font_px, cell, (left, top), label_w)
    _draw_colour_bar(draw, img, (left + grid + bar_gap, top), (bar_w, max(grid, 2)), lo, hi, threshold, small)
    return _atomic_save(img, path)


def _draw_class_names(
    img: Image.Image,
    labels: Sequence[str],
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    font_px: int,
    cell: int,
    corner: tuple[int, int],
    label_w: int,
) -> None:
    """Class names beside the grid whose top-left corner is ``corner`` (px): rows right-aligned left of
    it, columns along its top (drawn on a strip, rotated 90°: reads bottom to top)."""
    left, top = corner
    draw, scratch = ImageDraw.Draw(img), ImageDraw.Draw(Image.new("RGB", (1, 1)))
    for k, text in enumerate(labels):  # rows: right-aligned left of the grid
        tw = scratch.textlength(text, font=font)
        y = top + k * cell + (cell - font_px) // 2 - 1
        draw.text((left - 4 - tw, y), text, fill=_INK, font=font)
    strip = Image.new("RGB", (label_w, len(labels) * cell), _BACKGROUND)
    sd = ImageDraw.Draw(strip)
    for k, text in enumerate(labels):
        sd.text((4, k * cell + (cell - font_px) // 2 - 1), text, fill=_INK, font=font)
    img.paste(strip.rotate(90, expand=True), (left, top - label_w))


def _draw_colour_bar(
    draw: ImageDraw.ImageDraw,
    img: Image.Image,
    corner: tuple[int, int],
    size: tuple[int, int],
    lo: float,
    hi: float,
    threshold: float | None,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
) -> None:
    """The colour bar (``size`` = (width, height) px at ``corner``), ticks at ``lo``, the middle, ``hi``
    and the threshold (red); a tick label that would overlap the previous one moves down."""
    bx, top = corner
    bar_w, bar_h = size
    ramp = np.linspace(hi, lo, bar_h)[:, None].repeat(bar_w, axis=1)
    img.paste(Image.fromarray(_colormap(ramp, lo, hi), "RGB"), (bx, top))
    draw.rectangle([bx - 1, top - 1, bx + bar_w, top + bar_h], outline=(120, 120, 120))
    ticks = [hi, (hi + lo) / 2, lo]
    if threshold is not None and lo < threshold < hi:
        ticks.append(threshold)
    marks = sorted((top + round((hi - v) / (hi - lo) * (bar_h - 1)), v) for v in ticks)
    text_y = top - 6 - 13
    for y, v in marks:  # top to bottom
        colour = _DUPLICATE_FRAME if threshold is not None and v == threshold else _INK
        draw.line([bx + bar_w, y, bx + bar_w + 3, y], fill=colour)
        text_y = max(y - 6, text_y + 13)
        draw.text((bx + bar_w + 5, text_y), f"{v:.2f}", fill=colour, font=font)


# ----------------------------------------------------------------------------- report


def _instance_label(bank: MemoryBank, row: int) -> str:
    inst = (bank.references or {}).get("instances") or []
    if len(inst) == int(bank.instance_labels.numel()) and isinstance(inst[row], dict):
        ref = inst[row]
        bits = []
        if ref.get("annotation_id") is not None:
            bits.append(f"annotation {ref['annotation_id']}")
        if ref.get("file_name"):
            bits.append(f"in {ref['file_name']}")
        if bits:
            return " ".join(bits)
    return f"instance row {row}"


def _shots_line(shots: dict[str, int]) -> str:
    counts = sorted(set(shots.values()))
    if len(counts) == 1:
        return f"shots per class: {counts[0]} for every class"
    shown = ", ".join(f"{n} {k}" for n, k in list(shots.items())[:12])
    more = f", ... ({len(shots)} classes)" if len(shots) > 12 else ""
    return f"shots per class: {min(counts)}-{max(counts)} (ragged): {shown}{more}"


def memory_bank_report(
    bank: MemoryBank,
    threshold: float = DEFAULT_NEAR_DUPLICATE_THRESHOLD,
    *,
    name: str | None = None,
    lowest: int = 5,
    sim: Tensor | None = None,
) -> str:
    """A short plain-text report: size, encoder, near-duplicate class pairs, least consistent classes.

    Args:
        bank: the memory bank.
        threshold: cosine similarity at or above which two classes are flagged (0.95).
        name: how to call the bank in the first line (default: "memory bank").
        lowest: how many least-consistent classes (and misplaced references) to list.
        sim: a precomputed :func:`prototype_similarity` (computed if None).
    """
    threshold = _check_threshold(threshold)
    sim = prototype_similarity(bank) if sim is None else sim
    lines = _report_head(bank, name)
    lines += _similarity_lines(sim, bank.category_names, threshold)
    lines += _consistency_lines(bank, lowest)
    lines += negative_references_lines(bank)
    return "\n".join(lines)


def _report_head(bank: MemoryBank, name: str | None) -> list[str]:
    """The report's first lines: size, encoder, hash, shots, and where sampled references came from."""
    enc = bank.encoder or {}
    official = enc.get("official")
    enc_txt = str(enc.get("name", "unknown encoder"))
    if official is not None:
        enc_txt += " (official weights)" if official else " (not the official weights)"
    c = len(bank.category_names)
    r = int(bank.instance_labels.numel())
    head = (
        f"{name or 'memory bank'}: {c} class{'es' if c != 1 else ''}, {r} reference instance{'s' if r != 1 else ''}, "
        f"feature dim {int(bank.instance_prototypes.shape[1])}, encoder {enc_txt}, hash {bank.content_hash[:16]}"
    )
    lines = [head, _shots_line(bank.shots)]
    src = (bank.references or {}).get("source") or {}
    if src.get("kind") == "coco-sample":
        extra = f"references: sampled from {src.get('annotations') or 'a COCO file'}, seed {src.get('seed')}"
        if src.get("prefer"):
            try:
                pref = ReferencePreference.parse(src["prefer"])
                extra += f", reference preference: {pref.describe() if pref else 'off'}"
            except (TypeError, ValueError):
                extra += f", reference preference {src['prefer']}"
        lines.append(extra)
    return lines


def _similarity_lines(sim: Tensor, names: Sequence[str], threshold: float) -> list[str]:
    """Between classes: the median and the most similar pair, then the near-duplicate pairs (the first 20)."""
    c = len(names)
    if c < 2:
        return ["one class only: nothing to confuse it with"]
    off = sim.to(torch.float64)[~torch.eye(c, dtype=torch.bool)]
    i, j = divmod(int(torch.argmax(torch.where(torch.eye(c, dtype=torch.bool), -2.0, sim.to(torch.float64)))), c)
    lines = [
        f"class prototype similarity (cosine, between classes): median {float(off.median()):.2f}, "
        f"max {float(sim[i, j]):.2f} ({names[i]} ~ {names[j]})"
    ]
    pairs = near_duplicate_classes(sim, names, threshold)
    if not pairs:
        return lines + [f"near-duplicate classes (cosine >= {threshold:g}): none"]
    lines.append(f"near-duplicate classes (cosine >= {threshold:g}): {len(pairs)} pair{'s' if len(pairs) != 1 else ''}")
    for a, b, v in pairs[:20]:
        lines.append(
            f"  {a} ~ {b}: {v:.2f} — their references look alike to the encoder; detections between "
            "them will be confused. Add more distinctive references or merge the classes"
        )
    if len(pairs) > 20:
        lines.append(f"  ... and {len(pairs) - 20} more pair(s)")
    return lines


def _consistency_lines(bank: MemoryBank, lowest: int) -> list[str]:
    """Within classes: the ``lowest`` least consistent classes, the 1-shot ones, and the references closer
    to another class's prototype than to their own (the first ``lowest``)."""
    lines = []
    c = len(bank.category_names)
    cons = class_consistency(bank)
    multi = sorted((x for x in cons if x.shots > 1), key=lambda x: (x.mean, x.index))
    one = [x.name for x in cons if x.shots == 1]
    if multi and lowest > 0:
        lines.append(
            "reference consistency (mean cosine of each reference to its class prototype; 1 = all alike, "
            "low = the references disagree), lowest first:"
        )
        for x in multi[:lowest]:
            lines.append(
                f"  {x.name}: {x.mean:.2f} over {x.shots} references; least typical "
                f"{_instance_label(bank, x.worst)}: {x.min:.2f}"
            )
    if one:
        lines.append(
            f"1-shot classes (consistency 1 by definition): {len(one)}"
            + (f" ({', '.join(one[:8])}{', ...' if len(one) > 8 else ''})" if len(one) < c else "")
        )
    mis = misplaced_references(bank)
    if mis:
        lines.append(f"references closer to another class's prototype than to their own: {len(mis)}")
        for m in mis[:lowest]:
            lines.append(
                f"  {m['class']} {_instance_label(bank, m['row'])}: {m['own']:.2f} to {m['class']}, "
                f"{m['other']:.2f} to {m['closer_to']} — check its label and mask"
            )
    return lines


def negative_references_lines(bank: MemoryBank, per_class: int = 5) -> list[str]:
    """The report's lines on the bank's negative references (docs/negative_references.md): how many,
    where from, and per class the first ``per_class`` (image, score when mined, and the cosine to the
    class's own prototype: a negative as close as the references themselves will also suppress true
    detections). No lines for a bank without negatives."""
    if not bank.has_negatives:
        return []
    records = (bank.negatives or {}).get("instances") or []
    n = int(bank.negative_labels.numel())
    by_source: dict[str, int] = {}
    for r in records:
        by_source[r.get("source", "?")] = by_source.get(r.get("source", "?"), 0) + 1
    how = ", ".join(f"{k} {v}" for k, v in sorted(by_source.items()))
    lines = [
        f"negative references: {n} ({how}); segment/run use them with --use-negatives "
        "(score x exp(-max(sim_neg - sim_pos, 0) / sigma))"
    ]
    mined = [s for s in (bank.negatives or {}).get("sources") or [] if s.get("kind") == "mined"]
    for s in mined:
        lines.append(
            f"  mined from {s.get('images')} reference image(s): score >= {s.get('score_threshold')}, box IoU < "
            f"{s.get('iou_threshold')} with every annotated instance of the class, at most {s.get('max_per_class')} "
            "per class"
        )
    cos = (F.normalize(bank.negative_prototypes, dim=1) * bank.class_prototypes[bank.negative_labels]).sum(dim=1)
    for c, name in enumerate(bank.category_names):
        rows = torch.nonzero(bank.negative_labels == c).flatten().tolist()
        if not rows:
            lines.append(f"  {name}: none")
            continue
        items = []
        for row in rows[:per_class]:
            r = records[row] if row < len(records) else {}
            bits = [str(r.get("file_name") or f"row {row}")]
            if r.get("score") is not None:
                bits.append(f"score {float(r['score']):.2f}")
            bits.append(f"cos {float(cos[row]):.2f} to {name}")
            items.append(" ".join(bits))
        more = f"; ... and {len(rows) - per_class} more" if len(rows) > per_class else ""
        lines.append(f"  {name}: {len(rows)} — " + "; ".join(items) + more)
    return lines


def default_heatmap_path(bank_dir: str | os.PathLike) -> Path:
    """``./<bank folder name>-similarity.png`` in the current folder (never inside the bank)."""
    stem = Path(os.path.abspath(bank_dir)).name or "memory-bank"
    return Path.cwd() / f"{stem}-similarity.png"


def show_memory_bank(
    bank_dir: str | os.PathLike,
    out_png: str | os.PathLike | None = None,
    threshold: float = DEFAULT_NEAR_DUPLICATE_THRESHOLD,
    *,
    png: bool = True,
    lowest: int = 5,
) -> dict:
    """Load a bank, write its similarity heatmap and return the report.

    Args:
        bank_dir: a memory bank folder (``memory build --out``).
        out_png: heatmap path; default :func:`default_heatmap_path` = ``./<bank name>-similarity.png``.
            Not the bank folder: ``memory build`` owns it, and it may be shared or read-only.
        threshold: near-duplicate cosine threshold (0.95).
        png: False = report only, no file written.
        lowest: how many least-consistent classes / misplaced references to list.
    Returns:
        ``{"report": str, "pairs": [(a, b, cos)], "png": Path | None, "labelled": bool,
        "similarity": Tensor [C, C], "consistency": [ClassConsistency], "misplaced": [dict]}``.
    """
    threshold = _check_threshold(threshold)
    bank = MemoryBank.load(bank_dir)
    sim = prototype_similarity(bank)
    names = bank.category_names
    bank_name = Path(os.path.abspath(bank_dir)).name
    path = None
    if png:
        path = Path(out_png) if out_png is not None else default_heatmap_path(bank_dir)
        enc = (bank.encoder or {}).get("name", "?")
        render_similarity_heatmap(
            sim,
            names,
            path,
            threshold=threshold,
            title=f"class prototype cosine similarity: {bank_name} ({len(names)} classes, {enc})",
        )
    return {
        "report": memory_bank_report(bank, threshold, name=f"memory bank {bank_name}", lowest=lowest, sim=sim),
        "pairs": near_duplicate_classes(sim, names, threshold),
        "png": path,
        "labelled": len(names) <= MAX_LABELLED_CLASSES,
        "similarity": sim,
        "consistency": class_consistency(bank),
        "misplaced": misplaced_references(bank),
    }
