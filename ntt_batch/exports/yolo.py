"""Ultralytics YOLO segmentation dataset writer (``export --format yolo``).

Output folder (local)::

    OUT/
      data.yaml        path: <absolute OUT>, train: images.txt, val: images.txt, nc, names: {0: dog, ...}
      images.txt       ./images/<name>.<ext>, one line per image (status ok or empty)
      images/<name>.<ext>   symlink to the image (default), or a copy (``images="copy"``)
      labels/<name>.txt     one line per instance: ``<class index> x1 y1 x2 y2 ...`` (normalised to [0, 1])

This is the layout Ultralytics reads (``yolo segment train data=OUT/data.yaml``): a ``train``
entry that is a ``.txt`` file lists image paths (``./`` = the file's folder), and each image's
labels are found by replacing the last ``/images/`` in its path with ``/labels/`` and the
extension with ``.txt``. Images without instances get an empty label file (background images).

``<name>`` is the image file's stem, or ``<stem>_<image id>`` when two images share a stem.
Class indices are 0..n-1 in category id order (the memory bank's categories from ``run.json``;
ids only seen in the instances are appended). Polygons come from the masks as described in
:mod:`.polygons`: holes are filled, a multi-part mask becomes one polygon whose parts are joined by
zero-width bridges (as Ultralytics' own COCO converter does), simplified with a 1 px tolerance.
Instances whose mask is empty are skipped (counted in a notice).

There is no mode that lists the original image URIs: Ultralytics derives each label path from the
image path alone (``img2label_paths`` in ``ultralytics/data/utils.py``: the last ``/images/`` →
``/labels/``, suffix → ``.txt``), so the labels of ``/data/photos/a.jpg`` or ``s3://b/a.jpg`` would
have to sit beside the source images, and the dataset read as 0 instances, all backgrounds (an
``images="uri"`` mode did that; it is now refused with a pointer to ``link`` / ``copy``). Scores
are not part of the format (filter with ``--thresholds``).

The folder is built beside ``OUT`` under a temporary name and renamed into place at the end; an
existing ``OUT`` is replaced only if it is empty or an earlier export (holds ``data.yaml``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import PurePosixPath

import numpy as np
import yaml

from ..output.folder import utc_now_iso
from ..storage.atomic import make_unique_dir
from ..storage.fs import filesystem, is_local
from .base import ExportContext, ExportRow, Writer
from .polygons import bridge_polygons, mask_polygons

IMAGE_MODES = ("link", "copy")
_URI_REMOVED = (
    "yolo: images='uri' (--yolo-images uri) was removed: Ultralytics finds each label file by replacing "
    "/images/ with /labels/ in the image's own path, so a list of the original image URIs gives 0 instances "
    "(all backgrounds). Use images='link' (symlinks to local images, the default) or images='copy' "
    "(copies, also from s3:// and other URIs)"
)


class YoloSegmentationWriter(Writer):
    """Masks → ``labels/*.txt`` polygons + ``images.txt`` + ``data.yaml`` (see the module docstring)."""

    format = "yolo"
    single_file = False
    option_names = ("images", "simplify")

    def __init__(self, out: str, ctx: ExportContext, *, images: str = "link", simplify: float = 1.0) -> None:
        super().__init__(out, ctx)
        if images == "uri":
            raise ValueError(_URI_REMOVED)
        if images not in IMAGE_MODES:
            raise ValueError(f"yolo: images must be one of {', '.join(IMAGE_MODES)}, got {images!r}")
        if not is_local(out):
            raise ValueError(f"yolo: --out must be a local folder (Ultralytics trains from local files), got {out!r}")
        self.images, self.simplify = images, float(simplify)
        self.final = os.path.abspath(out.removeprefix("file://"))
        parent = os.path.dirname(self.final)
        if not os.path.isdir(parent):
            raise FileNotFoundError(f"output folder {parent!r} does not exist: create it first")
        if os.path.exists(self.final) and not self._replaceable(self.final):
            raise ValueError(
                f"{self.final} exists and is not an earlier YOLO export (no data.yaml): "
                "choose another --out or remove it"
            )
        # not mkdtemp: its 0700 would survive the rename and lock teammates out of the dataset
        self.tmp = make_unique_dir(parent, prefix=f".{os.path.basename(self.final)}.", suffix=".tmp")
        os.makedirs(os.path.join(self.tmp, "labels"))
        os.makedirs(os.path.join(self.tmp, "images"))
        self.list = open(os.path.join(self.tmp, "images.txt"), "w", encoding="utf-8")  # noqa: SIM115 - closed in close/abort
        self.names: set[str] = set()
        self.index: dict[int, int] = {}
        for k, c in enumerate(sorted(ctx.known_categories or [], key=lambda c: int(c["id"]))):
            self.index[int(c["id"])] = k
        self.empty_masks = 0

    @staticmethod
    def _replaceable(path: str) -> bool:
        return os.path.isdir(path) and (not os.listdir(path) or os.path.isfile(os.path.join(path, "data.yaml")))

    def _name(self, row: ExportRow) -> tuple[str, str]:
        base = PurePosixPath(row.image_uri.split("?", 1)[0]).name
        stem, ext = os.path.splitext(base)
        stem = stem or str(row.image_id)
        name = stem if stem not in self.names else f"{stem}_{row.image_id}"
        self.names.add(name)
        return name, ext or ".jpg"

    def _class_index(self, category_id: int) -> int:
        if category_id not in self.index:
            self.index[category_id] = len(self.index)
        return self.index[category_id]

    def write(self, row: ExportRow) -> int:
        name, ext = self._name(row)
        self._place_image(row.image_uri, os.path.join(self.tmp, "images", name + ext))
        self.list.write(f"./images/{name}{ext}\n")
        w, h = row.width, row.height
        lines = []
        b = row.batch
        for j in row.kept:
            polys = mask_polygons(row.mask(j), self.simplify)
            if not polys:
                self.empty_masks += 1
                continue
            poly = bridge_polygons(polys) / np.array([w, h], dtype=np.float64)
            np.clip(poly, 0.0, 1.0, out=poly)
            coords = " ".join(f"{v:.6f}" for v in poly.ravel())
            lines.append(f"{self._class_index(int(b.category_id[j]))} {coords}\n")
        with open(os.path.join(self.tmp, "labels", name + ".txt"), "w", encoding="utf-8") as f:
            f.writelines(lines)
        return len(lines)

    def _place_image(self, uri: str, dest: str) -> None:
        if self.images == "link":
            if not is_local(uri):
                raise ValueError(
                    f"yolo: cannot symlink the remote image {uri!r}: use images='copy' "
                    "(--yolo-images copy) to download the images into the dataset"
                )
            os.symlink(os.path.abspath(uri.removeprefix("file://")), dest)
        else:
            fs, path = filesystem(uri, self.ctx.options)
            with fs.open(path, "rb") as src, open(dest, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)

    def close(self) -> None:
        ctx = self.ctx
        self.list.close()
        cats = ctx.final_categories()
        names = {c["id"]: c["name"] for c in cats}
        for cid in sorted(names):
            self._class_index(cid)
        by_index = {k: names.get(cid, f"class_{cid}") for cid, k in sorted(self.index.items(), key=lambda kv: kv[1])}
        header = (
            f"# Ultralytics YOLO segmentation dataset written by ntt-batch export --format yolo\n"
            f"# from {ctx.shards} on {utc_now_iso()}; "
            f"score threshold: {ctx.thresholds.describe()}\n"
            f"# class index -> category id: {dict(sorted((k, cid) for cid, k in self.index.items()))}\n"
        )
        data = {"path": self.final, "train": "images.txt", "val": "images.txt", "nc": len(by_index), "names": by_index}
        with open(os.path.join(self.tmp, "data.yaml"), "w", encoding="utf-8") as f:
            f.write(header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
        if self.empty_masks:
            ctx.stats.notices.append(f"{self.empty_masks} instance(s) with an empty mask were skipped (no polygon)")
        ctx.stats.bytes_written = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(self.tmp) for f in fs)
        old = None
        if os.path.exists(self.final):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(self.final)}.old.", dir=os.path.dirname(self.final))
            os.rename(self.final, os.path.join(old, "x"))
        os.rename(self.tmp, self.final)
        if old:
            shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        self.list.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
