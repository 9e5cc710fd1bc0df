"""Image preprocessing shared by the memory bank (§2) and the segmenter (§4): uint8 arrays to model inputs."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import Tensor


def prepare_target(
    image: np.ndarray, image_size: int = 1024, resize_mode: str = "squash"
) -> tuple[np.ndarray, tuple[int, int]]:
    """Original RGB uint8 [H, W, 3] → proposer input uint8 [S, S, 3] and the valid (h, w) inside it.

    ``squash`` (§4.1): PIL bicubic resize to S×S ignoring aspect ratio; valid = (S, S).
    ``letterbox``: longest side → S, bicubic, zero padding at the bottom/right.
    The uint8 result is what the reference divides by 255 (PIL resizes in uint8).
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 [H, W, 3] image, got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    pil = Image.fromarray(image)
    if resize_mode == "squash":
        return np.array(pil.resize((image_size, image_size), Image.BICUBIC)), (image_size, image_size)
    if resize_mode != "letterbox":
        raise ValueError(f"unknown resize_mode {resize_mode!r}")
    scale = image_size / max(h, w)
    nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    out = np.zeros((image_size, image_size, 3), dtype=np.uint8)
    out[:nh, :nw] = np.asarray(pil.resize((nw, nh), Image.BICUBIC))
    return out, (nh, nw)


def image_to_tensor(image: np.ndarray) -> Tensor:
    """RGB uint8 [H, W, 3] → float [3, H, W] in [0, 1]."""
    return torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1).float() / 255.0


__all__ = ["image_to_tensor", "prepare_target"]
