"""The review page's per-image files and its JSON entry for one row (see :mod:`.review`).

For a row drawn on the page (number ``r`` in file order), under ``<out>/img/<r // 1000:06d>/``:

    <r:09d>-t.jpg   the image, longer side ``thumb_side`` px (tiles)
    <r:09d>-t.png   its instances' masks at that scale: a sprite of RGBA crops (fill + outline in the
                    class colour, as ``visualize`` draws them), packed in shelves
    <r:09d>-f.jpg   the image, longer side ``full_side`` px (the full view), no overlay
    <r:09d>-f.png   the masks at that scale

The page lays each crop over the image where it belongs (``m``: [x, y, w, h, sprite x, sprite y]
in that image's pixels), so the class filter, the score slider and the thresholds apply to the
tiles and to the full view alike.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from urllib.parse import quote, urlsplit

import numpy as np
from PIL import Image

from ..output.shards import STATUS_ERROR
from ..storage.fs import filesystem
from ..storage.images import ImageDecodeError, decode_image
from ..storage.masks import decode_rle
from .overlay import FILL_ALPHA, ImageFinder, class_color, mask_edges, resize_mask

SPRITE_WIDTH = 1024  # px: mask crops are packed in shelves of at most this width (or the widest crop)


def file_name(uri: str) -> str:
    """The file name of an image URI (its last path part, no query): what a tile shows."""
    path = urlsplit(uri).path if "://" in uri else uri
    return PurePosixPath(path).name or uri


def image_href(uri: str, out_dir: str) -> str | None:
    """A link to the original image from the page, or None when a browser cannot open it."""
    if uri.startswith(("http://", "https://")):
        return uri
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if "://" in uri:
        return None
    rel = os.path.relpath(os.path.abspath(uri), os.path.abspath(out_dir))
    return quote(Path(rel).as_posix())


def _size(w: int, h: int, side: int) -> tuple[int, int]:
    s = min(1.0, side / max(w, h))
    return max(1, round(w * s)), max(1, round(h * s))


def _crop(mask: np.ndarray, size: tuple[int, int], color: tuple[int, int, int]) -> tuple[Image.Image, list] | None:
    """The RGBA crop of ``mask`` (H x W bool) resized to ``size`` (w, h), and its [x, y, w, h]; None if it vanished."""
    m = resize_mask(mask, size)
    ys, xs = np.nonzero(m)
    if not len(xs):
        return None
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
    mc = m[y0:y1, x0:x1]
    rgba = np.zeros((y1 - y0, x1 - x0, 4), dtype=np.uint8)
    rgba[..., :3] = color
    rgba[..., 3] = np.where(mc, round(255 * FILL_ALPHA), 0)
    rgba[mask_edges(mc, 1), 3] = 255
    return Image.fromarray(rgba, "RGBA"), [x0, y0, x1 - x0, y1 - y0]


def pack_sprite(crops: list[tuple[Image.Image, list] | None]) -> Image.Image | None:
    """Pack crops in shelves (tallest first); appends (sprite x, sprite y) to each crop's place list."""
    real = [c for c in crops if c is not None]
    if not real:
        return None
    width = max(SPRITE_WIDTH, max(c[0].width for c in real))
    x = y = shelf = 0
    for img, place in sorted(real, key=lambda c: -c[0].height):
        if x + img.width > width:
            x, y, shelf = 0, y + shelf, 0
        place += [x, y]
        x, shelf = x + img.width, max(shelf, img.height)
    sprite = Image.new("RGBA", (min(width, max(p[4] + p[2] for _, p in real)), y + shelf), (0, 0, 0, 0))
    for img, place in real:
        sprite.paste(img, (place[4], place[5]))
    return sprite


def _masks(image_hw: tuple[int, int], sizes: list[tuple[int, int]], preds: list[dict]) -> list[list]:
    """Per scale in ``sizes``, per instance, its crop (or None): one RLE decoded at a time."""
    out: list[list] = [[] for _ in sizes]
    for p in preds:
        mask = decode_rle(p["segmentation"])
        if mask.shape != tuple(image_hw):
            raise ValueError(
                f"a mask is {mask.shape[1]}x{mask.shape[0]} but the image is {image_hw[1]}x{image_hw[0]}: "
                "wrong image for these predictions"
            )
        color = class_color(int(p["category_id"]))
        for k, size in enumerate(sizes):
            out[k].append(_crop(mask, size, color))
    return out


def _draw(row: int, image: np.ndarray, preds: list[dict], out: Path, thumb_side: int, full_side: int) -> dict:
    """Write the row's four files; the entry's image fields and the per-instance crop places."""
    h, w = image.shape[:2]
    stem = f"img/{row // 1000:06d}/{row:09d}"
    (out / stem).parent.mkdir(parents=True, exist_ok=True)
    pil = Image.fromarray(image)
    sizes = [_size(w, h, thumb_side), _size(w, h, full_side)]
    crops = _masks((h, w), sizes, preds)
    fields: dict = {"W": w, "H": h}
    places = []
    for tag, size, cr in zip(("t", "f"), sizes, crops):
        (pil if size == (w, h) else pil.resize(size, Image.BILINEAR)).save(out / f"{stem}-{tag}.jpg", quality=86)
        sprite = pack_sprite(cr)
        if sprite is not None:
            sprite.save(out / f"{stem}-{tag}.png")
        masks = f"{stem}-{tag}.png" if sprite is not None else None
        fields[tag] = {"w": size[0], "h": size[1], "src": f"{stem}-{tag}.jpg", "masks": masks}
        places.append([c and c[1] for c in cr])
    fields["places"] = places
    return fields


def row_entry(
    row: int,
    b,
    i: int,
    preds: list[tuple[int, dict]],
    finder: ImageFinder,
    out: Path,
    sizes: tuple[int, int],
    options: dict | None,
) -> dict:
    """The page's JSON for one row (see the template module for the fields), drawing its files.

    ``preds``: (index in the row's instances, instance) as :func:`.review_select.row_instances` gives.
    A row whose image cannot be read gets ``problem`` (the reason) and no image files.
    """
    iid, uri = int(b.image_id[i]), b.image_uri[i]
    e: dict = {"r": row, "id": iid, "uri": uri, "name": file_name(uri), "status": b.status[i]}
    if b.status[i] == STATUS_ERROR:
        e.update(error=b.error[i] or "error", inst=[])
        return e
    drawn = None
    found = finder.find(iid, uri, None)
    if found is None:
        e["problem"] = "image file not found (pass --images ROOT if the images moved)"
    else:
        try:
            fs, path = filesystem(found, options)
            with fs.open(path, "rb") as f:
                image = decode_image(f.read())
            drawn = _draw(row, image, [p for _, p in preds], out, *sizes)
        except (OSError, ImageDecodeError, ValueError) as ex:
            e["problem"] = f"{found}: {ex}"
        e["href"] = image_href(found, str(out))
    places = drawn.pop("places") if drawn else [[None] * len(preds)] * 2
    if drawn:
        e.update(drawn)
    e["inst"] = [
        {
            "k": k,
            "c": int(p["category_id"]),
            "n": p.get("category_name"),
            "s": float(str(np.float32(p["score"]))),  # the float32's shortest round-trip decimal
            "b": [float(v) for v in p["bbox"]],
            "m": places[0][j],
            "fm": places[1][j],
        }
        for j, (k, p) in enumerate(preds)
    ]
    return e
