"""Single-process segmentation behind ``ntt-batch segment``: resolve targets, segment, write COCO results.

Each function takes plain arguments, does one job, and returns what it produced; the CLI only
parses flags and calls one of these. Every output records its provenance (config, model names,
checkpoint sha256s and whether they are the official files, memory-bank hash, package version).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from .method.segmenter import MethodSegmenter, TargetImage
from .output.folder import utc_now_iso
from .pipeline.plan import list_inputs
from .sources import InputSpec
from .storage.atomic import atomic_local_file
from .storage.fs import InputImage, read_bytes
from .storage.images import ImageDecodeError, decode_image

log = logging.getLogger(__name__)


def resolve_targets(
    images: str | None,
    annotations: str | None,
    image_root: str | None,
    limit: int | None,
    *,
    source: Mapping[str, Any] | None = None,
) -> list[InputImage]:
    """Target list from ``--images`` (folder/glob/file/URI), ``--annotations`` + ``--image-root``, or
    ``source``: any kind of input, plug-ins included (``{"kind": <a SOURCES name>, <its settings>}``).

    The same resolution (and so the same image ids) as the batch job's.
    """
    if source:
        if images or annotations:
            raise ValueError("give one input: --images, --annotations or a source, not several")
        spec = InputSpec(source.get("kind"), {k: v for k, v in source.items() if k != "kind"})
    elif annotations:
        if not image_root:
            raise ValueError("--annotations needs --image-root (the folder holding the images it lists)")
        spec = InputSpec(annotations=annotations, image_root=image_root)
    elif images:
        spec = InputSpec(images=images)
    else:
        raise ValueError("give --images PATH_OR_GLOB, or --annotations ANN.json with --image-root ROOT")
    return list_inputs(spec, limit=limit)


def segment_to_coco_results(
    segmenter: MethodSegmenter,
    entries: Iterable[InputImage],
    out: str,
    provenance: dict,
    *,
    batch_size: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Segment ``entries`` and write a COCO results JSON to ``out``; provenance to ``<out>.meta.json``.

    An image that cannot be read is recorded in the meta file's ``errors`` and skipped, so one
    bad file does not lose the others' results.
    """
    entries = list(entries)
    started, t0 = utc_now_iso(), time.perf_counter()
    results: list[dict] = []
    errors: list[dict] = []
    per_image: list[dict] = []
    done = 0
    for start in range(0, len(entries), batch_size):
        chunk = entries[start : start + batch_size]
        targets, ok_entries = [], []
        for e in chunk:
            try:
                targets.append(TargetImage.from_image(decode_image(read_bytes(e.image_uri)), segmenter.config))
                ok_entries.append(e)
            except (OSError, ImageDecodeError) as exc:
                errors.append(
                    {"image_id": e.image_id, "image_uri": e.image_uri, "error": f"{type(exc).__name__}: {exc}"}
                )
        for e, instances in zip(ok_entries, segmenter.segment_targets(targets)):
            results.extend(inst.to_coco_result(e.image_id) for inst in instances)
            per_image.append({"image_id": e.image_id, "image_uri": e.image_uri, "instances": len(instances)})
        done += len(chunk)
        if progress:
            progress(done, len(entries))
    _write_json(out, results)
    elapsed = time.perf_counter() - t0
    summary = {
        "images": len(entries),
        "images_ok": len(per_image),
        "images_empty": sum(1 for p in per_image if p["instances"] == 0),
        "images_error": len(errors),
        "instances": len(results),
        "seconds": round(elapsed, 3),
        "images_per_s": round(len(entries) / elapsed, 4) if elapsed > 0 else None,
    }
    meta = {
        **provenance,
        "started_at": started,
        "finished_at": utc_now_iso(),
        "results": str(out),
        "summary": summary,
        "errors": errors,
        "images": per_image,
    }
    _write_json(meta_path_for(out), meta, indent=2)
    return summary


def _write_json(path: str | os.PathLike, obj, indent: int | None = None) -> None:
    """``obj`` as JSON, streamed into ``path`` atomically (results can be large: not built as one string)."""
    with atomic_local_file(path, "w") as f:
        json.dump(obj, f, indent=indent)


def meta_path_for(results_path: str | os.PathLike) -> Path:
    p = Path(results_path)
    return p.with_name(p.stem + ".meta.json")
