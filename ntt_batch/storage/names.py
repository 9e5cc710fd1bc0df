"""Names that come from users' files: image extensions and safe joining of annotation file names."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def safe_join(root: str | os.PathLike, relative: str) -> Path:
    """``root / relative`` for a name taken from an annotation file, refusing escapes.

    Absolute names and ``..`` components are errors: a file name in a user's JSON must not
    point outside the image root.
    """
    p = PurePosixPath(relative.replace("\\", "/"))
    if p.is_absolute() or any(part == ".." for part in p.parts) or not p.parts:
        raise ValueError(f"unsafe image file name {relative!r}: must be relative, without '..'")
    return Path(root) / Path(*p.parts)
