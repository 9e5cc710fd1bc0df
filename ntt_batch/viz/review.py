"""`ntt-batch review`: a static HTML review page of a run's shards.

The page (``<out>/index.html``) needs no server: it works opened from disk, or copied to a bucket
and opened from there. Everything it shows lives beside it, by relative path:

    <out>/index.html        the page: data (images, instances, classes, thresholds) embedded as
                            JSON, with its CSS and JavaScript inline
    <out>/thumbs/NNNNNN.jpg the image, scaled so its longer side is ``thumb_side`` px
    <out>/masks/NNNNNN.png  the instance masks of that image at thumbnail scale: one RGBA crop
                            per instance (fill + outline in the class colour, as ``visualize``
                            draws them), stacked vertically; the page lays each over the thumbnail
    <out>/full/NNNNNN.jpg   the full overlay, drawn by :func:`ntt_batch.viz.overlay.render_overlay`
                            (instances that pass the default thresholds, ``full_side`` px)

On the page: a grid of tiles (thumbnail with each instance's mask, box and ``class score`` tag), a
class filter, a score slider (an instance shows when its score is at least the slider's value
and, when per-class thresholds are given and applied, its class's threshold), per-class counts of
what is shown (click a class to filter on it), a sort order, and per tile a link to the full
overlay and one to the original image (local files and http(s) URLs; other URIs are shown as
text). Rows with status ``error`` are listed with their causes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..exports.score_filter import ScoreThresholds
from ..output.folder import OutputFolder
from ..output.reader import dataset_categories, is_results_file, iter_image_batches
from ..output.shards import STATUS_ERROR
from ..storage.atomic import atomic_write_text
from ..storage.fs import filesystem
from ..storage.images import ImageDecodeError, decode_image
from ..storage.masks import decode_rle
from .overlay import (
    FILL_ALPHA,
    ImageFinder,
    class_color,
    mask_edges,
    render_overlay,
    resize_mask,
)

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 200
DEFAULT_THUMB_SIDE = 320
DEFAULT_FULL_SIDE = 1024
MAX_ERRORS_LISTED = 50


@dataclass
class ReviewSummary:
    """What :func:`write_review` wrote."""

    index: str
    images: int = 0  # tiles on the page
    instances: int = 0
    rows_read: int = 0
    more_rows: bool = False  # the output has more rows than --limit
    errors: int = 0  # rows with status error seen
    skipped: list[dict] = field(default_factory=list)  # {"image_id", "image_uri", "reason"}: no tile
    categories: list[dict] = field(default_factory=list)


def _scale(w: int, h: int, side: int) -> float:
    return min(1.0, side / max(w, h))


def _mask_layers(
    image_hw: tuple[int, int], size: tuple[int, int], instances: list[dict]
) -> tuple[Image.Image | None, list]:
    """One RGBA crop per instance at thumbnail ``size`` (w, h), stacked vertically.

    Returns (sprite or None, per instance [x, y, w, h] of its crop on the thumbnail and its y in
    the sprite, or None when its mask vanished at that scale).
    """
    crops, places = [], []
    line = 1
    for inst in instances:
        mask = decode_rle(inst["segmentation"])
        if mask.shape != tuple(image_hw):
            raise ValueError(
                f"a mask is {mask.shape[1]}x{mask.shape[0]} but the image is {image_hw[1]}x{image_hw[0]}: "
                "wrong image for these predictions"
            )
        m = resize_mask(mask, size)
        ys, xs = np.nonzero(m)
        if not len(xs):
            places.append(None)
            continue
        x0, x1, y0, y1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
        mc = m[y0:y1, x0:x1]
        rgba = np.zeros((y1 - y0, x1 - x0, 4), dtype=np.uint8)
        rgba[..., :3] = class_color(int(inst["category_id"]))
        rgba[..., 3] = np.where(mc, round(255 * FILL_ALPHA), 0)
        rgba[mask_edges(mc, line), 3] = 255
        crops.append(Image.fromarray(rgba, "RGBA"))
        places.append([x0, y0, x1 - x0, y1 - y0])
    if not crops:
        return None, places
    width = max(c.width for c in crops)
    sprite = Image.new("RGBA", (width, sum(c.height for c in crops)), (0, 0, 0, 0))
    y, k = 0, 0
    for p in places:
        if p is None:
            continue
        sprite.paste(crops[k], (0, y))
        p.append(y)
        y += crops[k].height
        k += 1
    return sprite, places


def _image_href(uri: str, out_dir: str) -> str | None:
    """A link to the original image from the page, or None when a browser cannot open it."""
    if uri.startswith(("http://", "https://")):
        return uri
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if "://" in uri:
        return None
    from urllib.parse import quote

    rel = os.path.relpath(os.path.abspath(uri), os.path.abspath(out_dir))
    return quote(Path(rel).as_posix())


def write_review(
    shards: str,
    out_dir: str,
    *,
    images_root: str | None = None,
    thresholds: Any = None,
    limit: int | None = DEFAULT_LIMIT,
    thumb_side: int = DEFAULT_THUMB_SIDE,
    full_side: int = DEFAULT_FULL_SIDE,
    max_instances: int | None = 100,
    title: str | None = None,
    options: dict | None = None,
    echo: Callable[[str], None] | None = None,
) -> ReviewSummary:
    """Write the review page of ``shards`` into the local folder ``out_dir``.

    Args:
        shards: the ``--out`` folder/URI of ``ntt-batch run``.
        out_dir: local folder for ``index.html`` and its images (created).
        images_root: where to look for images the rows' URIs do not reach (e.g. the shards were
            copied from another machine): by the URI's file name, then by the number in it.
        thresholds: default score thresholds (a number, a YAML/JSON map file, a dict or a
            :class:`~ntt_batch.exports.score_filter.ScoreThresholds`): they set the slider (global) or the
            per-class filter (a map), and which instances the full overlays draw.
        limit: the first ``limit`` image rows get a tile (None: all; mind the size).
        thumb_side, full_side: longer side of the thumbnails and of the full overlays, px.
        max_instances: at most this many instances per image (highest scores).
    """
    if is_results_file(shards, options):
        raise ValueError(
            f"{shards} is a JSON file; `review` reads the shards folder/URI of `ntt-batch run` "
            "(the rows say which image each result belongs to)"
        )
    if thumb_side < 32 or full_side < 32:
        raise ValueError(f"thumb_side and full_side must be >= 32 px, got {thumb_side} and {full_side}")
    th = ScoreThresholds.load(thresholds)
    out = Path(out_dir)
    _clear_page_folders(out)
    summary = ReviewSummary(index=str(out / "index.html"))
    cats = dataset_categories(shards, options) or []
    names: dict[int, str] = {int(c["id"]): str(c["name"]) for c in cats}
    finder = ImageFinder(images_root, options)
    drawing = dict(finder=finder, out=out, th=th, names=names, thumb_side=thumb_side, full_side=full_side)
    tiles, errors = _draw_tiles(shards, options, summary, limit, max_instances, drawing, echo)
    summary.images = len(tiles)
    categories = _page_categories(names, th)
    summary.categories = [{"id": c["id"], "name": c["name"]} for c in categories]
    if not th.is_global:
        th.warn_unknown([(c["id"], c["name"]) for c in categories])
    manifest = OutputFolder(shards, options).read_run(strict=False)
    data = {
        "title": title or f"ntt-batch review: {shards}",
        "shards": str(shards),
        "run": {k: manifest.get(k) for k in ("ntt_batch_version", "official_weights") if k in manifest},
        "summary": manifest.get("summary"),
        "thresholds": {
            "source": th.source,
            "global": th.default if th.is_global else None,
            "per_class": not th.is_global,
            "describe": th.describe(),
        },
        "limit": limit,
        "more_rows": summary.more_rows,
        "rows_read": summary.rows_read,
        "categories": categories,
        "images": tiles,
        "errors": errors,
        "error_count": summary.errors,
        "skipped": summary.skipped[:MAX_ERRORS_LISTED],
    }
    from .review_template import render_page

    atomic_write_text(out / "index.html", render_page(data))
    return summary


def _clear_page_folders(out: Path) -> None:
    """Create ``thumbs/``, ``masks/``, ``full/`` under ``out`` and delete a previous page's images there."""
    for sub in ("thumbs", "masks", "full"):
        (out / sub).mkdir(parents=True, exist_ok=True)
        for stale in (out / sub).glob("[0-9][0-9][0-9][0-9][0-9][0-9].*"):  # a previous page's images
            stale.unlink()


def _draw_tiles(
    shards: str,
    options: dict | None,
    summary: ReviewSummary,
    limit: int | None,
    max_instances: int | None,
    drawing: dict[str, Any],
    echo: Callable[[str], None] | None,
) -> tuple[list[dict], list[dict]]:
    """Read the first ``limit`` rows and draw a tile per image (:func:`_tile`, given ``drawing``'s
    arguments); returns (tiles, the first error rows). Counts into ``summary``; the predicted class
    names fill ``drawing["names"]`` where ``run.json`` had none."""
    names = drawing["names"]
    tiles: list[dict] = []
    errors: list[dict] = []
    for b in iter_image_batches(shards, options, batch_rows=64):
        for i in range(len(b)):
            if limit is not None and summary.rows_read >= limit:
                summary.more_rows = True
                break
            summary.rows_read += 1
            iid, uri = int(b.image_id[i]), b.image_uri[i]
            if b.status[i] == STATUS_ERROR:
                summary.errors += 1
                if len(errors) < MAX_ERRORS_LISTED:
                    errors.append({"id": iid, "uri": uri, "error": b.error[i] or "error"})
                continue
            preds = sorted(b.instances(i), key=lambda p: -float(p["score"]))[: max_instances or None]
            for p in preds:
                if p.get("category_name"):
                    names.setdefault(int(p["category_id"]), str(p["category_name"]))
            tile = _tile(len(tiles), iid, uri, preds, options=options, skipped=summary.skipped, **drawing)
            if tile is not None:
                tiles.append(tile)
                summary.instances += len(tile["inst"])
                if echo and len(tiles) % 25 == 0:
                    echo(f"review: {len(tiles)} images drawn")
        if summary.more_rows:
            break
    return tiles, errors


def _page_categories(names: dict[int, str], th: ScoreThresholds) -> list[dict]:
    """Per class, in id order: id, name, its overlay colour (``#rrggbb``) and its default threshold."""
    categories = []
    for cid in sorted(names):
        r, g, bl = class_color(cid)
        t = th.threshold(cid, names[cid])
        categories.append({"id": cid, "name": names[cid], "color": f"#{r:02x}{g:02x}{bl:02x}", "threshold": t})
    return categories


def _tile(
    k: int,
    iid: int,
    uri: str,
    preds: list[dict],
    finder: ImageFinder,
    out: Path,
    th: ScoreThresholds,
    names: dict[int, str],
    thumb_side: int,
    full_side: int,
    options,
    skipped: list[dict],
) -> dict | None:
    found = finder.find(iid, uri, None)
    if found is None:
        skipped.append(
            {
                "image_id": iid,
                "image_uri": uri,
                "reason": "image file not found (pass --images ROOT if the images moved)",
            }
        )
        return None
    try:
        fs, path = filesystem(found, options)
        with fs.open(path, "rb") as f:
            image = decode_image(f.read())
        h, w = image.shape[:2]
        s = _scale(w, h, thumb_side)
        size = (max(1, round(w * s)), max(1, round(h * s)))
        stem = f"{k:06d}"
        Image.fromarray(image).resize(size, Image.BILINEAR).save(out / "thumbs" / f"{stem}.jpg", quality=85)
        sprite, places = _mask_layers((h, w), size, preds)
        if sprite is not None:
            sprite.save(out / "masks" / f"{stem}.png", optimize=True)
        kept = [p for p in preds if th.keep(int(p["category_id"]), p.get("category_name"), float(p["score"]))]
        full = render_overlay(image, kept, None, names=names, max_instances=None, max_side=full_side)
        full.save(out / "full" / f"{stem}.jpg", quality=88)
    except (OSError, ImageDecodeError, ValueError) as e:
        skipped.append({"image_id": iid, "image_uri": uri, "reason": f"{found}: {e}"})
        return None
    inst = []
    for p, place in zip(preds, places):
        bx, by, bw, bh = (float(v) * s for v in p["bbox"])
        inst.append(
            {
                "c": int(p["category_id"]),
                "s": round(float(p["score"]), 4),
                "b": [round(bx, 1), round(by, 1), round(max(bw, 1.0), 1), round(max(bh, 1.0), 1)],
                "m": place,
            }
        )
    return {
        "id": iid,
        "uri": uri,
        "href": _image_href(found, str(out)),
        "w": size[0],
        "h": size[1],
        "W": w,
        "H": h,
        "thumb": f"thumbs/{stem}.jpg",
        "masks": f"masks/{stem}.png" if sprite is not None else None,
        "full": f"full/{stem}.jpg",
        "inst": inst,
    }
