"""Image decoding to RGB uint8, robust to the formats found in real image stores.

Handles EXIF orientation (the pixels are rotated as a viewer shows them), palette/greyscale/
alpha/CMYK/16-bit modes, and refuses images above a pixel limit (decompression bombs) before
decoding them. Errors are :class:`ImageDecodeError` with a message naming the cause.
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 100_000_000  # 10k × 10k


class ImageDecodeError(ValueError):
    """The bytes are not a usable image; the message says why."""


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, exif_transpose: bool = True) -> np.ndarray:
    """Encoded image bytes → RGB uint8 array [H, W, 3]."""
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise ImageDecodeError(f"image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels} "
                                       "(raise max_pixels if this is intended)")
            img.load()
    except ImageDecodeError:
        raise
    except UnidentifiedImageError as e:
        raise ImageDecodeError("not an image file (format not recognised)") from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageDecodeError(f"corrupt or truncated image: {e}") from e
    if exif_transpose:
        img = ImageOps.exif_transpose(img)
    return np.asarray(_to_rgb(img), dtype=np.uint8)


def _to_rgb(img: Image.Image) -> Image.Image:
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
