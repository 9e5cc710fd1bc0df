"""PNG overlays of predicted (and ground-truth) instances, drawn with PIL only.

Each instance is a translucent fill in its class colour (the same colour for the same class in
every image and in both panels), a solid outline along the mask border, a thin box, and a label
``name score`` on a filled tag. With ground truth the PNG shows two panels, ground truth left and
prediction right, separated by ``PANEL_GAP`` px: size ``(2 * w + PANEL_GAP, h)``; without it
``(w, h)``, where (w, h) is the image size, scaled down so the longer side is at most
``max_side``. A title tag in each panel's bottom-left corner says what is shown and how many instances.

Where images come from (:func:`visualize`), first found wins: the shard row's ``image_uri`` (the
file the job read); the ``file_name`` of the ground-truth image under ``images_root``;
``images_root``/basename of the row's URI; a file under ``images_root`` whose name's number
equals the image id (COCO naming, ``000000000139.jpg`` for id 139).
"""

from __future__ import annotations

import colorsys
import logging
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..exports.score_filter import ScoreThresholds
from ..output.reader import is_results_file, iter_image_batches, read_json
from ..output.shards import STATUS_ERROR
from ..storage.fs import filesystem, is_local
from ..storage.images import ImageDecodeError, decode_image
from ..storage.masks import decode_rle, segmentation_to_mask
from ..storage.names import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)

PANEL_GAP = 8  # px of white between the ground-truth and prediction panels
FILL_ALPHA = 0.45
DEFAULT_MAX_SIDE = 1024
DEFAULT_MAX_INSTANCES = 50
_DIGITS = re.compile(r"(\d+)$")


def class_color(category_id: int) -> tuple[int, int, int]:
    """A saturated RGB colour per class id, well spread over hues (golden-ratio steps)."""
    h = (int(category_id) * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.8, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def label_font(px: int):
    try:
        return ImageFont.load_default(size=px)
    except (TypeError, OSError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def _text_color(rgb: Sequence[int]) -> tuple[int, int, int]:
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (0, 0, 0) if luminance > 140 else (255, 255, 255)


def mask_edges(mask: np.ndarray, width: int) -> np.ndarray:
    """Border pixels of a bool mask (inside pixels with a 4-neighbour outside), ``width`` px thick."""
    padded = np.pad(mask, 1)
    interior = padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    edge = mask & ~interior
    for _ in range(width - 1):
        p = np.pad(edge, 1)
        edge = edge | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]
    return edge & mask if width == 1 else edge


@dataclass
class DrawnInstance:
    """One thing to draw: ``mask`` bool [h, w] at display size (or None: box only), ``bbox`` xywh display px."""

    category_id: int
    label: str
    mask: np.ndarray | None
    bbox: Sequence[float] | None
    score: float | None = None


def render_panel(image: np.ndarray, instances: Sequence[DrawnInstance], title: str) -> Image.Image:
    """Draw ``instances`` on ``image`` (RGB uint8 [h, w, 3]); the highest scores end up on top."""
    h, w = image.shape[:2]
    canvas = image.astype(np.float32)
    order = sorted(range(len(instances)), key=lambda k: (instances[k].score is not None, instances[k].score or 0.0))
    line = max(1, round(max(h, w) / 400))
    for k in order:
        inst = instances[k]
        if inst.mask is None:
            continue
        color = np.asarray(class_color(inst.category_id), dtype=np.float32)
        m = inst.mask
        canvas[m] = canvas[m] * (1.0 - FILL_ALPHA) + color * FILL_ALPHA
        canvas[mask_edges(m, line)] = color
    img = Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    font_px = max(11, min(28, round(max(h, w) / 45)))
    font = label_font(font_px)
    taken: list[tuple[float, float, float, float]] = []
    for k in order:  # boxes first, tags after, so no box line crosses a tag
        inst = instances[k]
        if inst.bbox is not None:
            x, y, bw, bh = (float(v) for v in inst.bbox)
            draw.rectangle(
                [x, y, x + max(bw, 1.0), y + max(bh, 1.0)], outline=class_color(inst.category_id), width=line
            )
    for k in reversed(order):  # best scores choose their tag position first
        inst = instances[k]
        if inst.bbox is not None:
            _tag(
                draw,
                (float(inst.bbox[0]), float(inst.bbox[1])),
                inst.label,
                class_color(inst.category_id),
                font,
                (w, h),
                line,
                taken,
            )
    _tag(draw, (0, h), title, (32, 32, 32), font, (w, h), 0)  # bottom-left: instance labels sit near the tops
    return img


def _tag(
    draw: ImageDraw.ImageDraw,
    xy: tuple[float, float],
    text: str,
    color,
    font,
    size,
    line: int,
    taken: list | None = None,
) -> None:
    """A filled label tag at the top-left corner ``xy``, kept inside the image.

    With ``taken`` (rectangles of tags already drawn), the tag moves down until it overlaps none
    (a few steps at most), so tags of boxes sharing a corner stay readable.
    """
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = 2
    tw, th = right - left + 2 * pad, bottom - top + 2 * pad
    x = min(max(0.0, xy[0]), max(0.0, size[0] - tw))
    y = xy[1] - th if xy[1] - th >= 0 else xy[1] + line  # above the box, else just inside it
    y = min(max(0.0, y), max(0.0, size[1] - th))
    if taken is not None:
        for _ in range(8):
            hit = [r for r in taken if x < r[2] and r[0] < x + tw and y < r[3] and r[1] < y + th]
            if not hit or max(r[3] for r in hit) + th > size[1]:
                break
            y = max(r[3] for r in hit)
        taken.append((x, y, x + tw, y + th))
    draw.rectangle([x, y, x + tw, y + th], fill=tuple(color))
    draw.text((x + pad - left, y + pad - top), text, fill=_text_color(color), font=font)


def compose(panels: Sequence[Image.Image]) -> Image.Image:
    """Panels side by side, ``PANEL_GAP`` px of white between them."""
    w = sum(p.width for p in panels) + PANEL_GAP * (len(panels) - 1)
    h = max(p.height for p in panels)
    out = Image.new("RGB", (w, h), (255, 255, 255))
    x = 0
    for p in panels:
        out.paste(p, (x, 0))
        x += p.width + PANEL_GAP
    return out


def overlay_size(
    width: int, height: int, *, with_ground_truth: bool, max_side: int | None = DEFAULT_MAX_SIDE
) -> tuple[int, int]:
    """The (width, height) of the PNG :func:`render_overlay` makes for a ``width`` x ``height`` image."""
    s = _scale(width, height, max_side)
    w, h = max(1, round(width * s)), max(1, round(height * s))
    return (2 * w + PANEL_GAP, h) if with_ground_truth else (w, h)


def _scale(width: int, height: int, max_side: int | None) -> float:
    return min(1.0, max_side / max(width, height)) if max_side else 1.0


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if (mask.shape[1], mask.shape[0]) == size:
        return mask
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 0


def render_overlay(
    image: np.ndarray,
    predictions: Sequence[dict],
    ground_truth: Sequence[dict] | None = None,
    *,
    names: dict[int, str] | None = None,
    score_threshold: float | str | dict | ScoreThresholds | None = None,
    max_instances: int | None = DEFAULT_MAX_INSTANCES,
    max_side: int | None = DEFAULT_MAX_SIDE,
) -> Image.Image:
    """The overlay PNG for one image.

    Args:
        image: RGB uint8 [H, W, 3] at original size (EXIF-oriented, as the job saw it).
        predictions: dicts with ``category_id``, ``score``, ``bbox`` (xywh px) and
            ``segmentation`` (COCO compressed RLE of size [H, W]); optional ``category_name``.
        ground_truth: COCO annotations of the image (polygons / RLE / box only), or None for a
            prediction-only PNG.
        names: category id → name (falls back to ``category_name`` or ``class <id>``).
        score_threshold: draw predictions with ``score >= threshold`` of their class only: one
            number, a per-class map or thresholds file (:meth:`ScoreThresholds.load`), or None (all).
        max_instances: draw at most this many predictions (highest scores); None = all.
        max_side: scale the image down so its longer side is at most this (None = never).

    Returns:
        RGB image of size :func:`overlay_size`.
    """
    H, W = image.shape[:2]
    s = _scale(W, H, max_side)
    size = (max(1, round(W * s)), max(1, round(H * s)))
    shown = image if s == 1.0 else np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    names = names or {}
    th = ScoreThresholds.load(score_threshold)
    preds = [
        p
        for p in predictions
        if th.keep(int(p["category_id"]), p.get("category_name") or names.get(int(p["category_id"])), float(p["score"]))
    ]
    n_pass = len(preds)
    preds = sorted(preds, key=lambda p: -float(p["score"]))[: max_instances if max_instances else None]
    pred_inst = []
    for p in preds:
        seg = p.get("segmentation")
        mask = resize_mask(_prediction_mask(seg, H, W), size) if seg else None
        label = f"{_instance_name(p, names)} {float(p['score']):.2f}"
        pred_inst.append(
            DrawnInstance(int(p["category_id"]), label, mask, _scaled(p.get("bbox"), s), float(p["score"]))
        )
    title = f"prediction: {len(preds)}"
    if n_pass > len(preds):
        title += f" of {n_pass} (top scores)"
    if th.is_global and th.default is not None:
        title += f", score >= {th.default:g}"
    elif not th.is_global:
        title += ", per-class score thresholds"
    panels = [render_panel(shown, pred_inst, title)]
    if ground_truth is not None:
        gt_inst = []
        for a in ground_truth:
            seg = a.get("segmentation")
            mask = resize_mask(segmentation_to_mask(seg, H, W), size) if seg else None
            label = _instance_name(a, names) + (" (crowd)" if a.get("iscrowd") else "")
            gt_inst.append(DrawnInstance(int(a["category_id"]), label, mask, _scaled(a.get("bbox"), s)))
        panels.insert(0, render_panel(shown, gt_inst, f"ground truth: {len(gt_inst)}"))
    return compose(panels)


def _instance_name(d: dict, names: dict[int, str]) -> str:
    """A prediction's or annotation's class name: ``names``, else its ``category_name``, else ``class <id>``."""
    cid = int(d["category_id"])
    return names.get(cid) or d.get("category_name") or f"class {cid}"


def _scaled(b: Sequence[float] | None, s: float) -> list[float] | None:
    return None if not b else [float(v) * s for v in b]


def _prediction_mask(seg: dict | list, H: int, W: int) -> np.ndarray:
    """A prediction's segmentation (compressed RLE, or polygons / uncompressed RLE) as bool ``[H, W]``;
    a mask of another size means the predictions belong to another image (a clear error)."""
    mask = (
        decode_rle(seg)
        if isinstance(seg, dict) and not isinstance(seg.get("counts"), list)
        else segmentation_to_mask(seg, H, W)
    )
    if mask.shape != (H, W):
        raise ValueError(
            f"a mask is {mask.shape[1]}x{mask.shape[0]} but the image is {W}x{H}: wrong image for "
            "these predictions (check --images / the image id)"
        )
    return mask


# ----------------------------------------------------------------------------- batch of images


@dataclass
class VisualizeSummary:
    written: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # {"image_id", "reason"}


@dataclass
class _Target:
    image_id: int
    image_uri: str | None
    predictions: list[dict]


def _targets_from_shards(
    source: str, options, ids: set[int] | None, limit: int | None, skipped: list[dict]
) -> list[_Target]:
    out: list[_Target] = []
    for b in iter_image_batches(source, options, batch_rows=64):
        for i in range(len(b)):
            iid = int(b.image_id[i])
            if ids is not None and iid not in ids:
                continue
            if b.status[i] == STATUS_ERROR:
                if ids is not None:
                    skipped.append({"image_id": iid, "reason": f"status error in the shards: {b.error[i]}"})
                continue
            out.append(_Target(iid, b.image_uri[i], b.instances(i)))
            if ids is None and limit and len(out) >= limit:
                return out
        if ids is not None and len(out) + len(skipped) >= len(ids):
            break
    return out


def _targets_from_results(dets: list, gt: dict | None, ids: set[int] | None, limit: int | None) -> list[_Target]:
    by_image: dict[int, list[dict]] = defaultdict(list)
    for d in dets:
        by_image[int(d["image_id"])].append(d)
    if ids is not None:
        order = sorted(ids)
    elif gt is not None:
        order = sorted(int(im["id"]) for im in gt["images"])
    else:
        order = sorted(by_image)
    if limit and ids is None:
        order = order[:limit]
    return [_Target(i, None, by_image.get(i, [])) for i in order]


class ImageFinder:
    """Locates an image file for (image id, URI, GT file_name) — see the module docstring."""

    def __init__(self, root: str | None, options: dict | None) -> None:
        self.root = root.rstrip("/") if root else None
        self.options = options
        self._by_number: dict[int, str] | None = None

    def _exists(self, uri: str) -> bool:
        try:
            fs, path = filesystem(uri, self.options)
            return fs.isfile(path)
        except (OSError, ValueError):
            return False

    def _numbered(self) -> dict[int, str]:
        if self._by_number is None:
            self._by_number = {}
            fs, path = filesystem(self.root, self.options)
            if fs.isdir(path):
                for p in fs.find(path):
                    m = _DIGITS.search(PurePosixPath(p).stem)
                    if m and p.lower().endswith(IMAGE_EXTENSIONS):
                        self._by_number.setdefault(int(m.group(1)), p if is_local(fs) else fs.unstrip_protocol(p))
        return self._by_number

    def find(self, image_id: int, uri: str | None, file_name: str | None) -> str | None:
        candidates = [uri] if uri else []
        if self.root and file_name:
            candidates.append(f"{self.root}/{file_name.lstrip('/')}")
        if self.root and uri:
            candidates.append(f"{self.root}/{PurePosixPath(uri).name}")
        for c in candidates:
            if self._exists(c):
                return c
        if self.root:
            return self._numbered().get(int(image_id))
        return None


def _parse_ids(ids: Iterable[int | str] | None) -> set[int] | None:
    if ids is None:
        return None
    out = set()
    for v in ids:
        for tok in str(v).replace(",", " ").split():
            if not tok.lstrip("-").isdigit():
                raise ValueError(f"image id {tok!r} is not an integer")
            out.add(int(tok))
    return out or None


def _targets(
    source: str,
    options: dict | None,
    images_root: str | None,
    gt: dict | None,
    wanted: set[int] | None,
    limit: int | None,
    skipped: list[dict],
) -> list[_Target]:
    """The images to draw from a results JSON or shards; wanted ids that ``source`` lacks go to ``skipped``."""
    if is_results_file(source, options):
        dets = read_json(source, options)
        if not isinstance(dets, list):
            raise ValueError(f"{source}: a COCO results file is a JSON array of detections")
        if not images_root:
            raise ValueError("a results JSON does not say where the images are: pass --images ROOT")
        targets = _targets_from_results(dets, gt, wanted, limit)
    else:
        targets = _targets_from_shards(source, options, wanted, limit, skipped)
    if wanted is not None:
        found = {t.image_id for t in targets} | {s["image_id"] for s in skipped}
        for iid in sorted(wanted - found):
            skipped.append({"image_id": iid, "reason": f"no such image id in {source}"})
    return targets


def visualize(
    source: str,
    out_dir: str,
    *,
    images_root: str | None = None,
    annotations: str | None = None,
    ids: Iterable[int | str] | None = None,
    limit: int | None = 20,
    score_threshold: float | str | dict | ScoreThresholds | None = None,
    max_instances: int | None = DEFAULT_MAX_INSTANCES,
    max_side: int | None = DEFAULT_MAX_SIDE,
    options: dict | None = None,
    echo: Callable[[str], None] | None = None,
) -> VisualizeSummary:
    """Write ``<out_dir>/<image_id>.png`` overlays for the chosen images.

    Args:
        source: shards folder/URI of ``ntt-batch run`` or a COCO results JSON.
        out_dir: local folder for the PNGs (created).
        images_root: folder/URI holding the images (needed for a results JSON; optional for
            shards, whose rows carry the image URI).
        annotations: COCO ground truth: adds the ground-truth panel and class names.
        ids: image ids to draw (ints or comma-separated strings); else the first ``limit``.
        score_threshold, max_instances, max_side: see :func:`render_overlay`.
    """
    wanted = _parse_ids(ids)
    score_threshold = ScoreThresholds.load(score_threshold)  # a number, a per-class map/file, or None
    summary = VisualizeSummary()
    gt = read_json(annotations, options) if annotations else None
    if gt is not None and ("images" not in gt or "annotations" not in gt):
        raise ValueError(f"{annotations}: not a COCO annotation file (needs 'images' and 'annotations')")
    names = {int(c["id"]): str(c["name"]) for c in (gt or {}).get("categories", [])}
    targets = _targets(source, options, images_root, gt, wanted, limit, summary.skipped)
    gt_images = {int(im["id"]): im for im in gt["images"]} if gt else {}
    gt_anns: dict[int, list[dict]] = defaultdict(list)
    if gt:
        for a in gt["annotations"]:
            gt_anns[int(a["image_id"])].append(a)
    os.makedirs(out_dir, exist_ok=True)
    finder = ImageFinder(images_root, options)
    for t in targets:
        gt_im = gt_images.get(t.image_id)
        uri = finder.find(t.image_id, t.image_uri, gt_im.get("file_name") if gt_im else None)
        if uri is None:
            summary.skipped.append(
                {
                    "image_id": t.image_id,
                    "reason": "image file not found (looked for the shard URI, "
                    "the ground-truth file_name and a file numbered like the id under --images)",
                }
            )
            continue
        try:
            fs, path = filesystem(uri, options)
            with fs.open(path, "rb") as f:
                image = decode_image(f.read())
            gt_list = gt_anns.get(t.image_id, []) if gt is not None else None
            if gt is not None and gt_im is None:
                log.warning("image %s is not in %s: drawing predictions only", t.image_id, annotations)
                gt_list = None
            png = render_overlay(
                image,
                t.predictions,
                gt_list,
                names=names,
                score_threshold=score_threshold,
                max_instances=max_instances,
                max_side=max_side,
            )
        except (OSError, ImageDecodeError, ValueError) as e:
            summary.skipped.append({"image_id": t.image_id, "reason": f"{uri}: {e}"})
            continue
        dest = os.path.join(out_dir, f"{t.image_id}.png")
        png.save(dest)
        summary.written.append(dest)
        if echo:
            echo(f"wrote {dest} ({png.width}x{png.height}, {len(t.predictions)} predictions)")
    return summary
