"""Label Studio tasks with predictions (``export --format label-studio``): pre-annotations to review.

``OUT`` is one JSON array of tasks, importable in Label Studio (Import → upload the file, or
``POST /api/projects/<id>/import``). Each instance is **one region** (``mask="brush"``, the
default): Label Studio's brush format, the whole mask in its own RLE (:mod:`.brush_rle`)::

    [{"data": {"image": "<image URL>", "image_id": 139, "image_uri": "<URI the job read>"},
      "predictions": [{"model_version": "ntt-batch-<bank hash>", "score": 0.81,
                       "result": [{"id": "139_0", "from_name": "label", "to_name": "image",
                                   "type": "brushlabels", "original_width": 640, "original_height": 426,
                                   "image_rotation": 0, "score": 0.93,
                                   "value": {"format": "rle", "rle": [0, 4, 176, ...],
                                             "brushlabels": ["dog"]}}, ...]}]}, ...]

The mask is exact (holes and every part included) and a reviewer edits it with the brush and
eraser. ``mask="polygons"`` writes ``polygonlabels`` regions instead (``value = {"points": [[x%,
y%], ...], "closed": true, "polygonlabels": [name]}``, percentages 0-100 of the image size): one
region per 4-connected part of a mask, holes filled (see :mod:`.polygons`), a region id
``<image id>_<instance>`` with ``_<part>`` appended from the second part on. A mask with many
specks gives many regions (15 instances gave 1,810 in a client's test), so ``min_part_area`` (px)
drops parts smaller than that, the largest part of an instance always kept.

``predictions[0].score`` is the mean instance score (tasks sort by it in the Data Manager). Images
without instances get a prediction with an empty result.

``data.image`` must be a URL Label Studio can serve. It is the image URI, or with ``image_root``
the path relative to it, prefixed with ``image_url_prefix``. For local images that means Label
Studio's local files: start it with ``LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true`` and
``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=/data``, add Local Storage to the project (Settings →
Cloud Storage → Add Source Storage → Local files, absolute path ``/data/photos``), and export
with ``--image-root /data/photos --image-url-prefix "/data/local-files/?d=photos/"``. HTTP(S)
URLs work as they are, and ``s3://`` / ``gs://`` URIs once that bucket is connected to the project
as cloud storage. A task whose ``data.image`` is a bare local path (no ``image_url_prefix``) is
written with a notice: Label Studio would show a broken image.

Beside ``OUT`` the writer puts ``<OUT stem>.label_config.xml``: the labeling config whose
``from_name``/``to_name``, tag (``BrushLabels`` or ``PolygonLabels``) and labels match the tasks
(paste it under Settings → Labeling Interface).
"""

from __future__ import annotations

import logging
from json import dumps
from json.encoder import encode_basestring_ascii as _json_str
from xml.sax.saxutils import quoteattr

import numpy as np

from ..storage.atomic import AtomicFile
from .base import ExportContext, ExportRow, Writer, relative_file_name
from .brush_rle import mask_to_brush_rle
from .polygons import mask_polygons

log = logging.getLogger(__name__)


MASK_MODES = ("brush", "polygons")
_SERVED = ("http://", "https://", "s3://", "gs://", "azure-blob://", "/data/")  # URLs Label Studio can load


def label_config(names: list[str], from_name: str = "label", to_name: str = "image", mask: str = "brush") -> str:
    """A Label Studio labeling config (XML) for these class names: ``BrushLabels`` (``mask="brush"``)
    or ``PolygonLabels`` (``mask="polygons"``) named ``from_name`` on the ``Image`` ``to_name``."""
    if mask not in MASK_MODES:
        raise ValueError(f"label-studio: mask must be one of {', '.join(MASK_MODES)}, got {mask!r}")
    tag, extra = ("BrushLabels", "") if mask == "brush" else ("PolygonLabels", ' strokeWidth="2"')
    labels = "\n".join(f"    <Label value={quoteattr(n)}/>" for n in names)
    return (
        f'<View>\n  <Image name={quoteattr(to_name)} value="$image" zoom="true"/>\n'
        f"  <{tag} name={quoteattr(from_name)} toName={quoteattr(to_name)}{extra}>\n"
        f"{labels}\n  </{tag}>\n</View>\n"
    )


def config_path(out: str) -> str:
    """Where the labeling config goes: ``<OUT without .json>.label_config.xml``."""
    base = out[: -len(".json")] if out.lower().endswith(".json") else out
    return base + ".label_config.xml"


class LabelStudioWriter(Writer):
    """Tasks JSON with ``brushlabels`` (default) or ``polygonlabels`` predictions (see the module docstring)."""

    format = "label-studio"
    option_names = ("image_url_prefix", "from_name", "to_name", "model_version", "simplify", "mask", "min_part_area")

    def __init__(
        self,
        out: str,
        ctx: ExportContext,
        *,
        image_url_prefix: str | None = None,
        from_name: str = "label",
        to_name: str = "image",
        model_version: str | None = None,
        simplify: float = 1.0,
        mask: str = "brush",
        min_part_area: float = 0.0,
    ) -> None:
        super().__init__(out, ctx)
        if mask not in MASK_MODES:
            raise ValueError(f"label-studio: mask must be one of {', '.join(MASK_MODES)}, got {mask!r}")
        if mask == "brush" and (simplify != 1.0 or min_part_area):
            raise ValueError(
                "label-studio: simplify and min_part_area (--simplify, --min-part-area) shape polygons; "
                "brush regions hold the exact mask: add mask='polygons' (--ls-mask polygons) or drop them"
            )
        if not min_part_area >= 0:
            raise ValueError(f"label-studio: min_part_area must be >= 0 px, got {min_part_area!r}")
        self.prefix = image_url_prefix or ""
        self.from_name, self.to_name, self.simplify = from_name, to_name, float(simplify)
        self.mask_mode, self.min_part_area = mask, float(min_part_area)
        self.unserved: str | None = None  # the first data.image Label Studio cannot load
        bank_hash = (ctx.manifest.get("memory_bank") or {}).get("content_hash")
        self.model_version = model_version or ("ntt-batch" + (f"-{bank_hash[:12]}" if bank_hash else ""))
        self.file = AtomicFile(out, ctx.options)
        self.f = self.file.file
        self.f.write("[")
        self.first = True
        self.empty_masks = 0

    def write(self, row: ExportRow) -> int:
        b = row.batch
        w, h = row.width, row.height
        results, scores = [], []
        for k, j in enumerate(row.kept):
            name = self.ctx.category_name(int(b.category_id[j]), b.category_name[j])
            base = {
                "id": f"{row.image_id}_{k}",
                "from_name": self.from_name,
                "to_name": self.to_name,
                "type": "brushlabels" if self.mask_mode == "brush" else "polygonlabels",
                "original_width": w,
                "original_height": h,
                "image_rotation": 0,
                "score": float(b.score_text[j]),
            }
            regions = self._brush(row.mask(j), name) if self.mask_mode == "brush" else self._polygons(row, j, name)
            if not regions:
                self.empty_masks += 1
                continue
            scores.append(b.score[j])
            for p, value in enumerate(regions):
                results.append(base | {"id": base["id"] + (f"_{p}" if p else ""), "value": value})
        prediction = {"model_version": self.model_version}
        if scores:
            prediction["score"] = round(float(np.mean(scores)), 6)
        prediction["result"] = results
        uri = row.image_uri
        image = self.prefix + relative_file_name(uri, self.ctx.image_root)
        if self.unserved is None and not image.startswith(_SERVED):
            self.unserved = image
        self.f.write(
            ("\n" if self.first else ",\n") + f'{{"data": {{"image": {_json_str(image)}, "image_id": {row.image_id}, '
            f'"image_uri": {_json_str(uri)}}}, "predictions": [{dumps(prediction, separators=(",", ":"))}]}}'
        )
        self.first = False
        return len(scores)

    @staticmethod
    def _brush(mask: np.ndarray, name: str) -> list[dict]:
        """One brush region value for the whole mask ([] for an empty mask)."""
        if not mask.any():
            return []
        return [{"format": "rle", "rle": mask_to_brush_rle(mask), "brushlabels": [name]}]

    def _polygons(self, row: ExportRow, j: int, name: str) -> list[dict]:
        """One polygon region value per part of the mask (parts under ``min_part_area`` dropped)."""
        scale = np.array([100.0 / row.width, 100.0 / row.height])
        polys = mask_polygons(row.mask(j), self.simplify, self.min_part_area)
        return [
            {"points": np.round(np.clip(poly * scale, 0.0, 100.0), 4).tolist(), "closed": True, "polygonlabels": [name]}
            for poly in polys
        ]

    def close(self) -> None:
        ctx = self.ctx
        self.f.write("\n]\n")
        ctx.stats.bytes_written = self.f.tell()
        cats = ctx.final_categories()
        if self.empty_masks:
            ctx.stats.notices.append(f"{self.empty_masks} instance(s) with an empty mask were skipped (no region)")
        if self.unserved is not None:
            ctx.stats.notices.append(
                f"data.image is a local path Label Studio cannot load (e.g. {self.unserved!r}): add Local Storage "
                "to the project (Settings > Cloud Storage > Add Source Storage > Local files, with "
                "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true) and export with --image-root FOLDER "
                "--image-url-prefix '/data/local-files/?d=<FOLDER relative to LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT>/'"
            )
            log.warning("%s", ctx.stats.notices[-1])
        cfg = AtomicFile(config_path(self.out), ctx.options)
        try:
            cfg.file.write(label_config([c["name"] for c in cats], self.from_name, self.to_name, self.mask_mode))
        except BaseException:
            cfg.abort()
            raise
        self.file.commit()
        cfg.commit()
        tag = "BrushLabels" if self.mask_mode == "brush" else "PolygonLabels"
        ctx.stats.notices.append(
            f"labeling config for these tasks: {config_path(self.out)} "
            f"({tag} name={self.from_name!r}, Image name={self.to_name!r})"
        )

    def abort(self) -> None:
        self.file.abort()


__all__ = ["MASK_MODES", "LabelStudioWriter", "config_path", "label_config"]
