"""Image decoding to RGB uint8, robust to the formats found in real image stores.

Handles EXIF orientation (the pixels are rotated as a viewer shows them), palette/greyscale/
alpha/CMYK/16-bit modes, and refuses images above a pixel limit (decompression bombs) before
decoding them. Errors are :class:`ImageDecodeError` with a message naming the cause.

``max_pixels`` is the one pixel limit: Pillow's own decompression-bomb check
(``Image.MAX_IMAGE_PIXELS``, 89.5 MP by default; it warns above it and refuses above twice it,
in ``open`` and, for some formats, while loading frames or tiles) is set to ``max_pixels`` for
the duration of each call, under a lock, so it neither refuses an image our limit allows nor
lets one through that it refuses. Every refusal gives our message.
"""

from __future__ import annotations

import io
import os
import threading
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 100_000_000  # 10k × 10k


class ImageDecodeError(ValueError):
    """The bytes are not a usable image; the message says why."""


# Pillow's limit is a module global: calls that set it hold this lock while they open and load.
_PIL_LIMIT_LOCK = threading.RLock()


def _over_limit(pixels: int | str, size: str, max_pixels: int) -> ImageDecodeError:
    return ImageDecodeError(
        f"image is {size}{pixels} pixels, over the limit of {max_pixels} "
        "(raise max_pixels / --max-pixels if this is intended)"
    )


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, exif_transpose: bool = True) -> np.ndarray:
    """Encoded image bytes → RGB uint8 array [H, W, 3].

    Refuses (:class:`ImageDecodeError`) an image of more than ``max_pixels`` pixels before
    decoding it, whatever Pillow's own limit was.
    """
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    max_pixels = int(max_pixels)
    try:
        with _PIL_LIMIT_LOCK, warnings.catch_warnings():
            saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = max_pixels  # Pillow warns above it, refuses above twice it
            try:
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked just below
                img = Image.open(io.BytesIO(data))
                w, h = img.size
                if w * h > max_pixels:
                    raise _over_limit(w * h, f"{w}x{h} = ", max_pixels)
                warnings.simplefilter("error", Image.DecompressionBombWarning)  # frames/tiles over it
                img.load()
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except ImageDecodeError:
        raise
    except UnidentifiedImageError as e:
        raise ImageDecodeError("not an image file (format not recognised)") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # From open() (over twice the limit) or a frame/tile checked while loading.
        raise _over_limit(_bomb_pixels(e), "", max_pixels) from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageDecodeError(f"corrupt or truncated image: {e}") from e
    if exif_transpose:
        img = ImageOps.exif_transpose(img)
    return np.asarray(to_rgb(img), dtype=np.uint8)


def _bomb_pixels(e: Exception) -> str:
    """The pixel count in Pillow's bomb message ("Image size (N pixels) exceeds ..."), else 'more'."""
    import re

    m = re.search(r"\((\d+) pixels\)", str(e))
    return m.group(1) if m else "more than that many"


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode as RGB: 16-bit greyscale scaled to 8 bits, transparency composited onto white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        return Image.fromarray(np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))  # composite transparency onto white
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(path: str | os.PathLike, **kwargs) -> np.ndarray:
    """Read and decode a local image file (see :func:`decode_image`)."""
    with open(path, "rb") as f:
        return decode_image(f.read(), **kwargs)
