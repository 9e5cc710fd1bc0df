"""Custom reference sets: every annotation of a user's COCO file, or the rows of a CSV of
PNG masks and/or boxes.

* :func:`references_from_coco_annotations` — every non-crowd annotation of a user's COCO file
  (polygons, RLE or box only), checked by :func:`~ntt_batch.references.coco.coco_annotation_problem`.
* :func:`references_from_csv` — a CSV of ``image,category,mask`` and/or ``x,y,w,h`` rows.

Pure Python + numpy + :mod:`ntt_batch.storage.masks` (PIL only, lazily, for CSV references); no torch.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..hashing import file_sha256
from ..storage.masks import encode_rle, segmentation_bbox_xywh
from ..storage.names import safe_join
from .coco import coco_annotation_problem, has_segmentation, images_by_id, reference_entry, resolve_categories
from .files import REFERENCES_FORMAT, REFERENCES_VERSION


def references_from_coco_annotations(
    coco: Mapping[str, Any],
    *,
    split: str | Sequence[str | int] = "all",
    max_per_class: int | None = None,
) -> dict[str, Any]:
    """Use every non-crowd annotation of the chosen classes of a user's COCO file as a reference.

    No size/border filters.  Annotations may carry polygons, RLE, or only a ``bbox`` (box-only
    references: the memory-bank builder makes their masks with SAM2 box prompts).

    Args:
        coco: loaded COCO dict.
        split: class selection, see :func:`resolve_categories`.  With ``"all"``, categories that
            have no usable annotation are dropped (a COCO file often lists more categories than
            it annotates); with an explicit selection they are an error.
        max_per_class: keep at most this many references per class (the first ones in file
            order); None = all.

    Returns:
        a references dict; per class, references keep the file order.
    """
    if max_per_class is not None and int(max_per_class) < 1:
        raise ValueError(f"max_per_class must be >= 1 or None, got {max_per_class}")
    categories = resolve_categories(coco.get("categories", []), split)
    selected = {c["id"]: c for c in categories}
    images = images_by_id(coco)
    per_cat: dict[int, list[dict[str, Any]]] = {cid: [] for cid in selected}
    for ann in coco.get("annotations", []):
        cid = int(ann["category_id"])
        if cid not in selected or ann.get("iscrowd", 0) == 1:
            continue
        if ann.get("bbox") is None and not has_segmentation(ann):
            continue
        if max_per_class is not None and len(per_cat[cid]) >= int(max_per_class):
            continue
        image = images.get(int(ann["image_id"]))
        if image is None:
            raise ValueError(
                f"annotation {ann.get('id')} refers to image id {ann['image_id']}, which is not in 'images'"
            )
        problem = coco_annotation_problem(ann, image)
        if problem:
            raise ValueError(
                f"annotation id {ann.get('id')} (image id {ann['image_id']}): {problem}; fix or remove that annotation"
            )
        per_cat[cid].append(reference_entry(ann, image))

    dropped = [c for c in categories if not per_cat[c["id"]]]
    if dropped and not (isinstance(split, str) and split.strip() == "all"):
        names = ", ".join(f"'{c['name']}' (id {c['id']})" for c in dropped)
        raise ValueError(f"no usable (non-crowd) annotation for selected class(es) {names}")
    categories = [c for c in categories if per_cat[c["id"]]]
    if not categories:
        raise ValueError("the COCO file has no usable (non-crowd) annotation")
    references = [r for c in categories for r in per_cat[c["id"]]]
    return {
        "format": REFERENCES_FORMAT,
        "version": REFERENCES_VERSION,
        "categories": categories,
        "references": references,
        "source": {
            "kind": "coco-annotations",
            "split": split if isinstance(split, str) else list(split),
            "max_per_class": max_per_class,
            "dropped_categories": [c["name"] for c in dropped],
        },
    }


_CSV_BOX_COLUMNS = ("x", "y", "w", "h")
_CSV_COLUMNS = ("image", "category", "mask") + _CSV_BOX_COLUMNS


def _png_mask(path: Path) -> np.ndarray:
    """Read a mask image as bool (H, W): nonzero pixels = object (alpha channel ignored)."""
    from PIL import Image  # local import: only CSV references need PIL

    with Image.open(path) as im:
        im.load()
        if im.mode == "P":
            arr = np.asarray(im)  # palette index, 0 = background
        elif im.mode in ("RGBA", "LA", "PA"):
            arr = np.asarray(im)[..., :-1]
        else:
            arr = np.asarray(im)
    if arr.ndim == 3:
        return np.any(arr != 0, axis=2)
    return arr != 0


def _csv_header(reader: Any, csv_path: Path) -> tuple[list[str], dict[str, int]]:
    """Read the header line: (column names, stripped; column name → index), checked by :func:`_csv_columns`."""
    header = next(reader, None)
    if header is None:
        raise ValueError(f"{csv_path}: empty CSV file")
    header = [h.strip() for h in header]
    return header, _csv_columns(header, csv_path)


def _csv_columns(header: list[str], csv_path: Path) -> dict[str, int]:
    """Column name → index; checks the header (see :func:`references_from_csv`)."""
    where = f"{csv_path} line 1"
    cols = {h: k for k, h in enumerate(header)}
    unknown = [h for h in header if h not in _CSV_COLUMNS]
    repeated = sorted({h for h in header if header.count(h) > 1})
    box = [c for c in _CSV_BOX_COLUMNS if c in cols]
    problem = None
    if unknown or repeated:
        problem = (
            f"unknown column(s) {', '.join(map(repr, unknown))}"
            if unknown
            else f"repeated column(s) {', '.join(map(repr, repeated))}"
        )
    elif "image" not in cols or "category" not in cols:
        problem = "columns 'image' and 'category' are required"
    elif box and len(box) != 4:
        problem = f"box columns need all of x,y,w,h (got {','.join(box)})"
    elif "mask" not in cols and not box:
        problem = "give a 'mask' column, the box columns x,y,w,h, or both"
    if problem:
        raise ValueError(
            f"{where}: {problem}; the header must be 'image,category,mask', 'image,category,x,y,w,h' or "
            f"'image,category,mask,x,y,w,h' (any order), got {','.join(header)!r}"
        )
    return cols


# 85 lines, 31 of them the signature and docstring (the CSV format's reference): the row checks
# and the mask and box geometry are the helpers below.
def references_from_csv(csv_path: str | os.PathLike[str], image_root: str | os.PathLike[str] | None) -> dict[str, Any]:
    """Build references from a CSV file of mask rows and/or box rows.

    Columns (header line, any order): ``image``, ``category``, then ``mask``, or ``x,y,w,h``, or
    all of them. With all of them, each row fills **either** ``mask`` **or** ``x,y,w,h`` (the
    other cells empty), so one file can mix mask references and box-only references.

    * ``image``: image path relative to ``image_root`` (stored as ``file_name`` as written; no
      absolute paths, no ``..``);
    * ``category``: class name; classes get ids 1..N in order of first appearance;
    * ``mask``: a mask image (PNG) of the object: **non-zero pixels are the object** (any channel;
      an alpha channel is ignored; palette images: index 0 is background). It must have exactly
      the image's size (W x H, after no resizing or rotation). A relative path is looked up in the
      CSV's folder first, then under ``image_root``. Stored as a compressed RLE
      ``segmentation`` with its tight box;
    * ``x,y,w,h``: COCO box in pixels (a box-only reference, inside the image); ``memory build
      --sam2 NAME`` makes its mask with a SAM2 box prompt.

    Image sizes are read with PIL without decoding pixels (EXIF orientation is not applied:
    give masks and boxes in the stored pixel layout). Image ids are 1..M in order of first
    appearance; annotation ids are the data-row numbers 1..R. The image root is remembered in
    the result (``image_root``), so ``memory build`` does not need it again.

    Args:
        csv_path: the CSV file.
        image_root: folder the ``image`` paths are relative to (None = the CSV's folder).

    Raises:
        ValueError: bad header, missing files, size mismatch, empty mask, bad box, a row with
            both or neither of mask and box... — the message names the CSV file and line.
    """
    csv_path = Path(csv_path)
    csv_dir = csv_path.parent
    root = csv_dir if image_root is None else Path(image_root)
    categories: dict[str, int] = {}
    image_ids: dict[str, int] = {}
    image_sizes: dict[str, tuple[int, int]] = {}
    references: list[dict[str, Any]] = []
    kinds: dict[str, int] = {"mask": 0, "box": 0}
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header, cols = _csv_header(reader, csv_path)
        for row in reader:
            where = f"{csv_path} line {reader.line_num}"
            if not row or all(not c.strip() for c in row):
                continue
            image_name, cat_name, mask_cell, box_cells = _csv_row(row, header, cols, where)
            if image_name not in image_sizes:
                image_sizes[image_name] = _image_size(root, image_name, where)
                image_ids[image_name] = len(image_ids) + 1
            width, height = image_sizes[image_name]
            entry: dict[str, Any] = {
                "category_id": categories.setdefault(cat_name, len(categories) + 1),
                "image_id": image_ids[image_name],
                "file_name": image_name,
                "width": width,
                "height": height,
                "annotation_id": len(references) + 1,
            }
            if mask_cell:
                entry.update(_mask_geometry(mask_cell, csv_dir, root, image_name, (width, height), where))
                kinds["mask"] += 1
            else:
                entry["bbox"] = _box_geometry(box_cells, image_name, (width, height), where)
                kinds["box"] += 1
            references.append(entry)
    if not references:
        raise ValueError(f"{csv_path}: no data rows")
    cats = [{"id": cid, "name": name} for name, cid in categories.items()]
    references.sort(key=lambda r: r["category_id"])  # stable: CSV order within a class
    return {
        "format": REFERENCES_FORMAT,
        "version": REFERENCES_VERSION,
        "categories": cats,
        "references": references,
        "image_root": os.path.abspath(root),
        "source": {
            "kind": "csv",
            "csv": str(csv_path),
            "csv_sha256": file_sha256(csv_path),
            "image_root": str(root),
            "mask_rows": kinds["mask"],
            "box_rows": kinds["box"],
        },
    }


def _csv_row(row: list[str], header: list[str], cols: Mapping[str, int], where: str) -> tuple[str, str, str, list[str]]:
    """A data row's cells ``(image, category, mask, [x, y, w, h])``, stripped; ``mask`` is ``""`` and the
    box ``[]`` when the file lacks those columns. Checks that the row gives exactly one of mask and box."""
    has_mask, has_box = "mask" in cols, "x" in cols
    if len(row) != len(header):
        raise ValueError(f"{where}: expected {len(header)} columns, got {len(row)}")
    row = [c.strip() for c in row]
    image_name, cat_name = row[cols["image"]], row[cols["category"]]
    if not image_name or not cat_name:
        raise ValueError(f"{where}: empty 'image' or 'category'")
    mask_cell = row[cols["mask"]] if has_mask else ""
    box_cells = [row[cols[c]] for c in _CSV_BOX_COLUMNS] if has_box else []
    if has_mask and not has_box and not mask_cell:
        raise ValueError(f"{where}: empty 'mask'")
    if has_box and any(box_cells) and not all(box_cells):
        raise ValueError(f"{where}: fill all of x,y,w,h or none of them, got {box_cells}")
    if mask_cell and any(box_cells):
        raise ValueError(f"{where}: a row gives either a mask or a box x,y,w,h, not both")
    if not mask_cell and not any(box_cells):
        raise ValueError(f"{where}: the row has neither a mask nor a box x,y,w,h")
    return image_name, cat_name, mask_cell, box_cells


def _image_size(root: Path, image_name: str, where: str) -> tuple[int, int]:
    """(W, H) in pixels of ``root / image_name``, from its header only (PIL, no decoding, no EXIF turn)."""
    from PIL import Image  # local import: only CSV references need PIL

    try:
        img_path = safe_join(root, image_name)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from e
    try:
        with Image.open(img_path) as im:  # lazy: reads the header only
            w_img, h_img = im.size
    except FileNotFoundError as e:
        raise ValueError(f"{where}: image not found: {img_path}") from e
    except OSError as e:
        raise ValueError(f"{where}: cannot read image {img_path}: {e}") from e
    return int(w_img), int(h_img)


def _mask_geometry(
    mask_cell: str, csv_dir: Path, root: Path, image_name: str, size: tuple[int, int], where: str
) -> dict[str, Any]:
    """``{"bbox": tight xywh box, "segmentation": compressed RLE}`` of a mask row.

    The mask file is looked up in the CSV's folder, then (a relative path) under the image root;
    it must have the image's ``size`` (W, H) and at least one nonzero pixel.
    """
    width, height = size
    candidates = [csv_dir / mask_cell]
    if not Path(mask_cell).is_absolute() and root != csv_dir:
        candidates.append(root / mask_cell)
    mask_path = next((c for c in candidates if c.is_file()), None)
    if mask_path is None:
        raise ValueError(f"{where}: mask not found: looked for " + " and ".join(str(c) for c in candidates))
    try:
        mask = _png_mask(mask_path)
    except OSError as e:
        raise ValueError(f"{where}: cannot read mask {mask_path}: {e}") from e
    if mask.shape != (height, width):
        raise ValueError(
            f"{where}: mask {mask_path} has size {mask.shape[1]}x{mask.shape[0]} "
            f"(WxH) but image {image_name} has size {width}x{height}"
        )
    if not mask.any():
        raise ValueError(f"{where}: mask {mask_path} is empty (no nonzero pixel)")
    rle = encode_rle(mask)
    return {"bbox": segmentation_bbox_xywh(rle, height, width), "segmentation": rle}


def _box_geometry(box_cells: list[str], image_name: str, size: tuple[int, int], where: str) -> list[float]:
    """The ``[x, y, w, h]`` box (pixels) of a box row: finite, w, h > 0, inside the image of ``size`` (W, H)."""
    width, height = size
    try:
        x, y, w, h = (float(v) for v in box_cells)
    except ValueError as e:
        raise ValueError(f"{where}: x,y,w,h must be numbers, got {box_cells}") from e
    if not all(np.isfinite([x, y, w, h])) or w <= 0 or h <= 0:
        raise ValueError(f"{where}: box needs finite x, y and w > 0, h > 0")
    if x < 0 or y < 0 or x + w > width or y + h > height:
        raise ValueError(
            f"{where}: box [{x}, {y}, {w}, {h}] (xywh) is outside image {image_name} of size {width}x{height}"
        )
    return [x, y, w, h]
