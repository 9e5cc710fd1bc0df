"""`ntt-batch references show`: a contact sheet of the references, to check them before a big run.

A grid of cells, references grouped by class in class order. Each cell shows the crop the memory
bank encodes (method.md §2.1: a square of ``(1 + context_ratio) x`` the box's
longer side, centred on the box), the reference's mask filled and outlined in the class colour
with its box and a ``name`` tag; under it the class (colour, name, id), where the mask came from
and the image file name.

Masks, first found wins: the reference's own ``segmentation``; for a box-only reference, the SAM2
mask the bank was built from (recorded in the bank's metadata by ``memory build``, matched by file
name and box); else a mask made now from the box with SAM2 (``sam2_name``, the same call as the
builder's); else the box alone, marked "box only". Drawing reuses :mod:`ntt_batch.viz.overlay`.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..references.files import reference_image_root
from ..storage.images import load_image
from ..storage.masks import segmentation_to_mask
from ..storage.names import safe_join
from .overlay import DrawnInstance, class_color, label_font, render_panel, resize_mask

GAP = 6  # px between cells
CAPTION_PX = 30  # caption strip under each cell (two lines)
BACKGROUND = (245, 245, 245)


@dataclass
class SheetSummary:
    path: str
    references: int = 0
    classes: int = 0
    masks: dict = field(default_factory=dict)  # source -> count: "mask", "bank SAM2 mask", "SAM2 mask", "box only"
    problems: list = field(default_factory=list)  # "file: reason" for references that could not be drawn


def _box_key(file_name: str, bbox) -> tuple:
    return (str(file_name), tuple(round(float(v), 3) for v in bbox))


def bank_box_masks(memory: str | os.PathLike) -> dict[tuple, dict]:
    """The SAM2 masks a bank was built from for its box-only references: (file name, box) → RLE."""
    import json

    path = os.path.join(os.fspath(memory), "memory_bank.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{memory} is not a memory bank (no memory_bank.json in it)")
    with open(path, encoding="utf-8") as f:
        meta = json.load(f)
    out = {}
    for m in (meta.get("references") or {}).get("box_masks") or []:
        if m.get("bbox") is not None and m.get("segmentation") is not None:
            out[_box_key(m["file_name"], m["bbox"])] = m
    return out


def _crop_box(bbox, w: int, h: int, context_ratio: float) -> tuple[int, int, int, int]:
    from ..method.memory_bank import (
        context_crop_box,  # the crop the bank encodes (§2.1)
    )

    x0, x1, y0, y1 = context_crop_box(bbox, w, h, context_ratio)
    if x1 <= x0 or y1 <= y0:
        x0, y0 = max(0, int(bbox[0])), max(0, int(bbox[1]))
        x1, y1 = min(w, max(x0 + 1, int(bbox[0] + bbox[2]))), min(h, max(y0 + 1, int(bbox[1] + bbox[3])))
    return x0, x1, y0, y1


def _cell(
    image: np.ndarray,
    mask: np.ndarray | None,
    bbox,
    category_id: int,
    name: str,
    title: str,
    cell: int,
    context_ratio: float,
) -> Image.Image:
    """The drawn crop of one reference, scaled so its longer side is ``cell`` px."""
    h, w = image.shape[:2]
    x0, x1, y0, y1 = _crop_box(bbox, w, h, context_ratio)
    crop = image[y0:y1, x0:x1]
    s = cell / max(crop.shape[0], crop.shape[1])
    size = (max(1, round(crop.shape[1] * s)), max(1, round(crop.shape[0] * s)))
    shown = np.asarray(Image.fromarray(crop).resize(size, Image.BILINEAR))
    m = resize_mask(mask[y0:y1, x0:x1], size) if mask is not None else None
    box = [(bbox[0] - x0) * s, (bbox[1] - y0) * s, bbox[2] * s, bbox[3] * s]
    return render_panel(shown, [DrawnInstance(int(category_id), name, m, box, None)], title)


def _text(draw: ImageDraw.ImageDraw, xy, text: str, px: int, fill=(40, 40, 40), max_w: int | None = None) -> None:
    font = label_font(px)
    if max_w is not None:
        while len(text) > 4 and draw.textlength(text, font=font) > max_w:
            text = "…" + text[2:]
    draw.text(xy, text, fill=fill, font=font)


class _Sam2OnDemand:
    """SAM2 box prompting for box-only references, loaded on the first box that needs it."""

    def __init__(self, name: str, checkpoint_dir: str | None, download: bool, device: str, echo) -> None:
        self.name, self.checkpoint_dir, self.download = name, checkpoint_dir, download
        self.device, self.echo = device, echo
        self.prompter = None

    def mask(self, image: np.ndarray, bbox: list[float]) -> np.ndarray:
        """The SAM2 mask (bool ``[H, W]``) of the box ``bbox`` (xywh, px) in ``image`` (RGB uint8 ``[H, W, 3]``)."""
        from ..method.memory_bank import sam2_box_masks

        if self.prompter is None:
            from ..method.segmenter import resolve_device
            from ..models.loading import load_sam2

            if self.echo:
                self.echo(f"making masks for box-only references with {self.name}")
            prompter, _ = load_sam2(
                self.name, checkpoint_dir=self.checkpoint_dir, download=self.download, add_no_mem_embed=True
            )
            self.prompter = prompter.to(resolve_device(self.device))
        return sam2_box_masks(self.prompter, image, [bbox])[0]


def _reference_mask(
    r: Mapping[str, Any],
    image: np.ndarray,
    bbox: list[float],
    box_masks: Mapping[tuple, dict],
    sam2: _Sam2OnDemand | None,
) -> tuple[np.ndarray | None, str]:
    """(mask bool ``[H, W]`` or None, where it came from): the reference's own segmentation, else the
    bank's SAM2 mask for its box, else one SAM2 makes now (``sam2``), else none ("box only")."""
    h, w = image.shape[:2]
    if r.get("segmentation") is not None:
        source = "SAM2 mask from box" if r.get("mask_source", "").startswith("sam2") else "mask"
        return segmentation_to_mask(r["segmentation"], h, w), source
    made = box_masks.get(_box_key(r["file_name"], bbox))
    if made is not None:
        return segmentation_to_mask(made["segmentation"], h, w), "SAM2 mask from box"
    if sam2 is not None:
        return sam2.mask(image, bbox), "SAM2 mask from box"
    return None, "box only"


def _compose_sheet(
    flat: list[tuple[int, tuple[Image.Image | None, str, str, str]]], names: Mapping[int, str], cell: int, columns: int
) -> Image.Image:
    """Lay the cells ``(class id, (tile or None, caption, error, mask source))`` out in rows of ``columns``,
    each with its class (colour, name, id) and caption below, or the error where the tile is missing."""
    cols = max(1, min(columns, len(flat)))
    cw, ch = cell, cell + CAPTION_PX
    nrows = (len(flat) + cols - 1) // cols
    width, height = GAP + cols * (cw + GAP), GAP + nrows * (ch + GAP)
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for k, (cid, (tile, caption, err, source)) in enumerate(flat):
        x, y = GAP + (k % cols) * (cw + GAP), GAP + (k // cols) * (ch + GAP)
        draw.rectangle([x, y, x + cw - 1, y + cell - 1], fill=(225, 225, 225))
        if tile is not None:
            sheet.paste(tile, (x + (cw - tile.width) // 2, y + (cell - tile.height) // 2))
        else:
            _text(draw, (x + 6, y + cell // 2 - 20), "cannot draw:", 13, fill=(160, 0, 0))
            _text(draw, (x + 6, y + cell // 2), err, 12, fill=(160, 0, 0), max_w=cw - 12)
        draw.rectangle([x, y + cell + 4, x + 10, y + cell + 14], fill=class_color(cid))
        _text(draw, (x + 14, y + cell + 2), f"{names[cid]} (id {cid})", 12, fill=(20, 20, 20), max_w=cw - 16)
        _text(draw, (x + 2, y + cell + 16), f"{source}: {caption}" if source else caption, 11, max_w=cw - 4)
    return sheet


def reference_sheet(
    refs: Mapping[str, Any],
    out: str | os.PathLike,
    *,
    image_root: str | os.PathLike | None = None,
    box_masks: Mapping[tuple, dict] | None = None,
    sam2_name: str | None = None,
    checkpoint_dir: str | None = None,
    download: bool = True,
    device: str = "auto",
    context_ratio: float = 0.2,
    cell: int = 224,
    columns: int = 8,
    echo: Callable[[str], None] | None = None,
) -> SheetSummary:
    """Draw ``refs`` (a references dict) as a contact sheet PNG/JPEG at ``out``.

    Args:
        refs: a validated references dict (``load_references`` / ``bank.build.load_reference_sets``).
        image_root: overrides the image root the references remember.
        box_masks: from :func:`bank_box_masks`: the masks a bank made for box-only references.
        sam2_name: SAM2 model to make masks now for box-only references that ``box_masks`` lacks.
        context_ratio: the crop around each box (the bank's ``context_ratio``, default 0.2).
        cell: longer side of each cell in px; ``columns``: cells per row.
    """
    if cell < 32 or columns < 1:
        raise ValueError(f"cell must be >= 32 px and columns >= 1, got {cell} and {columns}")
    summary = SheetSummary(path=str(out))
    names = {int(c["id"]): str(c["name"]) for c in refs["categories"]}
    groups: OrderedDict[int, list[dict]] = OrderedDict((int(c["id"]), []) for c in refs["categories"])
    for r in refs["references"]:
        groups[int(r["category_id"])].append(r)
    box_masks = box_masks or {}
    sam2 = _Sam2OnDemand(sam2_name, checkpoint_dir, download, device, echo) if sam2_name else None
    cells: dict[int, list[tuple[Image.Image | None, str, str, str]]] = {}
    for cid, items in groups.items():
        cells[cid] = []
        for r in items:
            root = reference_image_root(refs, r, image_root)
            caption = str(r["file_name"])
            try:
                if root is None:
                    raise ValueError("no image root: pass --image-root")
                image = load_image(safe_join(root, r["file_name"]))
                bbox = [float(v) for v in r["bbox"]]
                mask, source = _reference_mask(r, image, bbox, box_masks, sam2)
                summary.masks[source] = summary.masks.get(source, 0) + 1
                tile = _cell(image, mask, bbox, cid, names[cid], source, cell, context_ratio)
                cells[cid].append((tile, caption, "", source))
            except (OSError, ValueError) as e:
                summary.problems.append(f"{r['file_name']}: {e}")
                cells[cid].append((None, caption, str(e), ""))
            summary.references += 1
    summary.classes = len(groups)
    sheet = _compose_sheet([(cid, item) for cid, items in cells.items() for item in items], names, cell, columns)
    out = os.fspath(out)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    if out.lower().endswith((".jpg", ".jpeg")):
        sheet.save(out, quality=90)
    else:
        sheet.save(out)
    return summary
