"""Where target images come from, for the single-process commands: local paths, globs, COCO files.

(The Ray job reads object stores through fsspec; this module covers local files.)
"""

from __future__ import annotations

import glob
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class ImageEntry:
    image_id: int
    path: str
    file_name: str


def safe_join(root: str | os.PathLike, relative: str) -> Path:
    """``root / relative`` for a name taken from an annotation file, refusing escapes.

    Absolute names and ``..`` components are errors: a file name in a user's JSON must not
    point outside the image root.
    """
    p = PurePosixPath(relative.replace("\\", "/"))
    if p.is_absolute() or any(part == ".." for part in p.parts) or not p.parts:
        raise ValueError(f"unsafe image file name {relative!r}: must be relative, without '..'")
    return Path(root) / Path(*p.parts)


_DIGITS = re.compile(r"(\d+)$")


def list_images(path_or_glob: str) -> list[ImageEntry]:
    """Images from a folder, a single file, or a glob, sorted by path.

    Image ids: the number in a COCO-style stem (``000000000139.jpg`` → 139) when every stem has
    one and they are unique; otherwise 1..N in path order.
    """
    p = Path(path_or_glob).expanduser()
    if p.is_dir():
        paths = sorted(str(q) for q in p.rglob("*") if q.suffix.lower() in IMAGE_EXTENSIONS)
    elif p.is_file():
        paths = [str(p)]
    else:
        paths = sorted(q for q in glob.glob(str(p), recursive=True) if Path(q).is_file())
    if not paths:
        raise FileNotFoundError(f"no images found at {path_or_glob!r} (a folder, an image file or a glob like 'dir/*.jpg')")
    stems = [_DIGITS.search(Path(q).stem) for q in paths]
    if all(stems) and len({int(m.group(1)) for m in stems}) == len(paths):
        ids = [int(m.group(1)) for m in stems]
    else:
        ids = list(range(1, len(paths) + 1))
    return [ImageEntry(i, q, Path(q).name) for i, q in zip(ids, paths)]


def coco_images(annotations: str | os.PathLike, image_root: str | os.PathLike) -> list[ImageEntry]:
    """The images of a COCO annotation file (sorted by id, as the reference's test set, §5.1)."""
    with open(annotations) as f:
        coco = json.load(f)
    images = sorted(coco.get("images", []), key=lambda im: int(im["id"]))
    if not images:
        raise ValueError(f"{annotations}: no 'images' in the annotation file")
    return [ImageEntry(int(im["id"]), str(safe_join(image_root, im["file_name"])), im["file_name"]) for im in images]
