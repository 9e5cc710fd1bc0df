"""The per-batch stages of the batch job: decode (CPU tasks) and segment (actor pool).

Both take and return column batches; neither knows about the driver, the output layout or resume
(``pipeline.job``). Bad inputs and per-image model failures become ``error`` rows, never raised.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

import numpy as np

from ..io.images import decode_image
from ..io.masks import encode_rle, mask_area
from ..io.shards import STATUS_EMPTY, STATUS_ERROR, STATUS_OK, rows_to_table
from ..io.storage import read_bytes
from ..method.config import SegmenterConfig

log = logging.getLogger(__name__)


def decode_batch(batch: dict[str, np.ndarray], *, storage_options: dict, max_pixels: int) -> dict[str, Any]:
    """CPU stage: read + decode each image (EXIF-oriented RGB uint8); failures become error rows (never raised).

    The resize to the model input happens in the actor: shipping the original pixels is lighter
    on the object store (a 640×480 image is 0.9 MB, its 1024² squash 3 MB) and keeps this stage
    model-agnostic.
    """
    out: dict[str, list] = {k: [] for k in ("image_id", "image_uri", "width", "height", "error", "pixels")}
    for image_id, uri in zip(batch["image_id"], batch["image_uri"]):
        uri = str(uri)
        width = height = 0
        pixels, error = b"", ""
        try:
            image = decode_image(read_bytes(uri, storage_options), max_pixels=max_pixels)
            height, width = image.shape[:2]
            pixels = image.tobytes()
        except FileNotFoundError as e:
            error = f"missing: {uri} does not exist ({e})"
        except Exception as e:  # ImageDecodeError, permissions, network, ...
            error = f"{type(e).__name__}: {e}"
        for k, v in (("image_id", int(image_id)), ("image_uri", uri), ("width", width), ("height", height),
                     ("error", error), ("pixels", pixels)):
            out[k].append(v)
    return {k: np.array(v, dtype=object) if k in ("pixels", "image_uri", "error") else np.array(v) for k, v in out.items()}


def batch_columns(batch) -> dict[str, list]:
    """A decoded batch (pyarrow Table, or dict of numpy arrays) → per-column Python lists.

    From a pyarrow batch the ``pixels`` are zero-copy buffers over the object store's memory:
    no image is copied between the decode stage and the model.
    """
    if isinstance(batch, dict):
        return {k: list(v) for k, v in batch.items()}
    cols = {k: batch.column(k).to_pylist() for k in batch.column_names if k != "pixels"}
    px = batch.column("pixels")
    cols["pixels"] = [px[i].as_buffer() for i in range(len(px))]
    return cols


def batch_image(cols: dict[str, list], i: int) -> np.ndarray:
    """The decoded RGB image [H, W, 3] uint8 of row ``i`` of :func:`batch_columns` (read-only view)."""
    return np.frombuffer(cols["pixels"][i], dtype=np.uint8).reshape(int(cols["height"][i]), int(cols["width"][i]), 3)


class SegmentActor:
    """Holds SAM2 + DINOv2 + the broadcast memory bank; segments batches of decoded images."""

    def __init__(self, *, bank_holder: list, sam2_name: str, segmenter: dict, checkpoint_dir: str | None,
                 download: bool, run_id: str, num_threads: int | None = None):
        import ray
        import torch

        from ..method.segmenter import Segmenter
        from ..models.loading import load_encoder, load_sam2

        if num_threads and not torch.cuda.is_available():
            torch.set_num_threads(int(num_threads))
        bank = ray.get(bank_holder[0])  # broadcast: one object-store copy shared by all actors on a node
        config = SegmenterConfig(**segmenter)
        encoder, _ = load_encoder(bank.encoder["name"], checkpoint_dir=checkpoint_dir, download=download)
        proposer, _ = load_sam2(sam2_name, checkpoint_dir=checkpoint_dir, download=download,
                                add_no_mem_embed=config.add_no_mem_embed)
        self.segmenter = Segmenter(proposer, encoder, bank, config)
        self.run_id = run_id

    def __call__(self, batch):
        from ..method.segmenter import TargetImage

        batch = batch_columns(batch)
        n = len(batch["image_id"])
        rows = [_base_row(batch, i, self.run_id) for i in range(n)]
        ready = [i for i in range(n) if not batch["error"][i]]
        targets = [TargetImage.from_image(batch_image(batch, i), self.segmenter.config) for i in ready]
        try:
            results = self.segmenter.segment_targets(targets)
        except Exception:  # isolate the failing image: retry one by one
            results = []
            for i, t in zip(ready, targets):
                try:
                    results.append(self.segmenter.segment_targets([t])[0])
                except Exception as e:
                    log.error("segmenting %s failed:\n%s", rows[i]["image_uri"], traceback.format_exc())
                    rows[i].update(status=STATUS_ERROR, error=f"segmentation failed: {type(e).__name__}: {e}")
                    results.append(None)
        for i, instances in zip(ready, results):
            if instances is None:
                continue
            rows[i]["instances"] = [instance_record(inst) for inst in instances]
            rows[i]["num_instances"] = len(instances)
            rows[i]["status"] = STATUS_OK if instances else STATUS_EMPTY
        return rows_to_table(rows)



class NoopModelActor:
    """The model stage replaced by nothing: every decoded image becomes an ``empty`` row.

    Same constructor arguments and output as :class:`SegmentActor`, no models. The pipeline
    benchmark uses it to measure what the framework itself costs (read, decode, move, write).
    """

    def __init__(self, *, run_id: str, **_ignored):
        self.run_id = run_id

    def __call__(self, batch):
        batch = batch_columns(batch)
        return rows_to_table([_base_row(batch, i, self.run_id) for i in range(len(batch["image_id"]))])


def _base_row(batch, i: int, run_id: str) -> dict:
    err = str(batch["error"][i])
    ok = not err
    return {
        "image_id": int(batch["image_id"][i]),
        "image_uri": str(batch["image_uri"][i]),
        "width": int(batch["width"][i]) if ok else None,
        "height": int(batch["height"][i]) if ok else None,
        "status": STATUS_ERROR if not ok else STATUS_EMPTY,
        "error": err or None,
        "num_instances": 0,
        "instances": [],
        "run_id": run_id,
    }


def instance_record(inst) -> dict:
    """One :class:`Instance` as a shard ``instances`` entry (mask → COCO compressed RLE)."""
    rle = encode_rle(inst.mask)
    return {
        "category_id": int(inst.category_id),
        "category_name": inst.category_name,
        "score": float(inst.score),
        "bbox": [float(v) for v in inst.bbox],
        "area": mask_area(rle),
        "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"]},
    }
