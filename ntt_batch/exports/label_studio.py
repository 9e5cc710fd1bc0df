"""Label Studio tasks with predictions (``merge --format label-studio``): pre-annotations to review.

``OUT`` is one JSON array of tasks, importable in Label Studio (Import → upload the file, or
``POST /api/projects/<id>/import``)::

    [{"data": {"image": "<image URL>", "image_id": 139, "image_uri": "<URI the job read>"},
      "predictions": [{"model_version": "ntt-batch", "score": 0.81,
                       "result": [{"id": "139_0", "from_name": "label", "to_name": "image",
                                   "type": "polygonlabels", "original_width": 640, "original_height": 426,
                                   "image_rotation": 0, "score": 0.93,
                                   "value": {"points": [[x%, y%], ...], "closed": true,
                                             "polygonlabels": ["dog"]}}, ...]}]}, ...]

``value.points`` are percentages (0-100) of the image width/height. Every instance is one
``polygonlabels`` region per part of its mask (holes filled; see :mod:`.polygons`); a region id
is ``<image id>_<instance>`` (``_<part>`` appended for the second part on). ``predictions[0].score``
is the mean instance score (tasks sort by it in the Data Manager). Images without instances get a
prediction with an empty result.

``data.image`` is the image URI, or with ``image_root`` the path relative to it, prefixed with
``image_url_prefix``: e.g. images served by Label Studio's local storage
(``--image-root /data/photos --image-url-prefix "/data/local-files/?d=photos/"``), an HTTP
server, or ``s3://bucket/`` URIs with cloud storage connected to the project.

Beside ``OUT`` the writer puts ``<OUT stem>.label_config.xml``: the labeling config whose
``from_name``/``to_name`` and labels match the tasks (paste it under Settings → Labeling
Interface).
"""

from __future__ import annotations

from json import dumps
from json.encoder import encode_basestring_ascii as _json_str
from xml.sax.saxutils import quoteattr

import numpy as np

from ..output.reader import AtomicFile, relative_file_name
from .base import ExportContext, ExportRow, Writer
from .polygons import mask_polygons


def label_config(names: list[str], from_name: str = "label", to_name: str = "image") -> str:
    """A Label Studio labeling config (XML) for polygon tasks with these class names."""
    labels = "\n".join(f"    <Label value={quoteattr(n)}/>" for n in names)
    return (
        f'<View>\n  <Image name={quoteattr(to_name)} value="$image" zoom="true"/>\n'
        f'  <PolygonLabels name={quoteattr(from_name)} toName={quoteattr(to_name)} strokeWidth="2">\n'
        f"{labels}\n  </PolygonLabels>\n</View>\n"
    )


def config_path(out: str) -> str:
    """Where the labeling config goes: ``<OUT without .json>.label_config.xml``."""
    base = out[: -len(".json")] if out.lower().endswith(".json") else out
    return base + ".label_config.xml"


class LabelStudioWriter(Writer):
    """Tasks JSON with ``polygonlabels`` predictions (see the module docstring)."""

    format = "label-studio"
    option_names = ("image_url_prefix", "from_name", "to_name", "model_version", "simplify")

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
    ) -> None:
        super().__init__(out, ctx)
        self.prefix = image_url_prefix or ""
        self.from_name, self.to_name, self.simplify = from_name, to_name, float(simplify)
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
        scale = np.array([100.0 / w, 100.0 / h])
        results, scores = [], []
        for k, j in enumerate(row.kept):
            polys = mask_polygons(row.mask(j), self.simplify)
            if not polys:
                self.empty_masks += 1
                continue
            name = self.ctx.category_name(int(b.category_id[j]), b.category_name[j])
            scores.append(b.score[j])
            for p, poly in enumerate(polys):
                pts = np.round(np.clip(poly * scale, 0.0, 100.0), 4).tolist()
                results.append(
                    {
                        "id": f"{row.image_id}_{k}" + (f"_{p}" if p else ""),
                        "from_name": self.from_name,
                        "to_name": self.to_name,
                        "type": "polygonlabels",
                        "original_width": w,
                        "original_height": h,
                        "image_rotation": 0,
                        "score": float(b.score_text[j]),
                        "value": {"points": pts, "closed": True, "polygonlabels": [name]},
                    }
                )
        prediction = {"model_version": self.model_version}
        if scores:
            prediction["score"] = round(float(np.mean(scores)), 6)
        prediction["result"] = results
        uri = row.image_uri
        image = self.prefix + relative_file_name(uri, self.ctx.image_root)
        self.f.write(
            ("\n" if self.first else ",\n") + f'{{"data": {{"image": {_json_str(image)}, "image_id": {row.image_id}, '
            f'"image_uri": {_json_str(uri)}}}, "predictions": [{dumps(prediction)}]}}'
        )
        self.first = False
        return len(scores)

    def close(self) -> None:
        ctx = self.ctx
        self.f.write("\n]\n")
        ctx.stats.bytes_written = self.f.tell()
        cats = ctx.final_categories()
        if self.empty_masks:
            ctx.stats.notices.append(f"{self.empty_masks} instance(s) with an empty mask were skipped (no polygon)")
        cfg = AtomicFile(config_path(self.out), ctx.options)
        try:
            cfg.file.write(label_config([c["name"] for c in cats], self.from_name, self.to_name))
        except BaseException:
            cfg.abort()
            raise
        self.file.commit()
        cfg.commit()
        ctx.stats.notices.append(
            f"labeling config for these tasks: {config_path(self.out)} "
            f"(PolygonLabels name={self.from_name!r}, Image name={self.to_name!r})"
        )

    def abort(self) -> None:
        self.file.abort()


__all__ = ["LabelStudioWriter", "config_path", "label_config"]
