"""The per-batch stages of the batch job: decode (CPU tasks) and segment (actor pool).

Both take and return column batches; neither knows about the driver, the output layout or resume
(``pipeline.job``). Bad inputs and per-image model failures become ``error`` rows, never raised.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

import numpy as np

from ..method.config import SegmenterConfig
from ..output.shards import STATUS_EMPTY, STATUS_ERROR, STATUS_OK, rows_to_table
from ..storage.images import decode_image
from ..storage.masks import encode_rle, mask_area
from ..storage.reads import DEFAULT_READ_BUFFER_MB, DEFAULT_READ_CONCURRENCY, read_many

log = logging.getLogger(__name__)


def decode_batch(
    batch: dict[str, np.ndarray],
    *,
    storage_options: dict,
    max_pixels: int,
    read_concurrency: int = DEFAULT_READ_CONCURRENCY,
    read_buffer_mb: int = DEFAULT_READ_BUFFER_MB,
) -> dict[str, Any]:
    """CPU stage: read + decode each image (EXIF-oriented RGB uint8); failures become error rows (never raised).

    Objects are read ``read_concurrency`` at a time with at most ``read_buffer_mb`` of bytes in
    flight (``storage.reads.read_many``) and decoded as their bytes arrive; the rows stay in the
    batch's order. Rows that come with their bytes (a ``data`` column: samples of shards and
    tables) or with an ``error`` already (a broken shard) are not read.

    The resize to the model input happens in the actor: shipping the original pixels is lighter
    on the object store (a 640×480 image is 0.9 MB, its 1024² squash 3 MB) and keeps this stage
    model-agnostic.
    """
    ids = [int(v) for v in batch["image_id"]]
    uris = [str(u) for u in batch["image_uri"]]
    n = len(uris)
    given = batch.get("data")
    preset = batch.get("error")
    width, height = [0] * n, [0] * n
    pixels: list[bytes] = [b""] * n
    errors = [str(preset[i]) if preset is not None and preset[i] else "" for i in range(n)]

    def decode(i: int, data) -> None:
        try:
            image = decode_image(data, max_pixels=max_pixels)
            height[i], width[i] = image.shape[:2]
            pixels[i] = image.tobytes()
        except Exception as e:  # ImageDecodeError, ...
            errors[i] = f"{type(e).__name__}: {e}"

    to_read = []
    for i in range(n):
        if errors[i]:
            continue
        if given is not None and given[i] is not None and len(given[i]):
            decode(i, bytes(given[i]))
        else:
            to_read.append(i)
    got = read_many(
        [uris[i] for i in to_read],
        storage_options,
        concurrency=read_concurrency,
        buffer_bytes=int(read_buffer_mb) << 20,
    )
    for k, data in got:
        i = to_read[k]
        if isinstance(data, FileNotFoundError):
            errors[i] = f"missing: {uris[i]} does not exist ({data})"
        elif isinstance(data, BaseException):  # permissions, network, ...
            errors[i] = f"{type(data).__name__}: {data}"
        else:
            decode(i, data)
        del data
    return {
        "image_id": np.array(ids, dtype=np.int64),
        "image_uri": np.array(uris, dtype=object),
        "width": np.array(width),
        "height": np.array(height),
        "error": np.array(errors, dtype=object),
        "pixels": np.array(pixels, dtype=object),
    }


def decode_batch_sequential(batch: dict[str, np.ndarray], *, storage_options: dict, max_pixels: int) -> dict:
    """The per-object path before concurrent reads (one blocking ``open`` + ``read`` per image): the
    baseline of ``benchmarks/lake_inputs.py``, kept to measure against."""
    from ..storage.fs import read_bytes

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
        except Exception as e:
            error = f"{type(e).__name__}: {e}"
        for k, v in zip(out, (int(image_id), uri, width, height, error, pixels)):
            out[k].append(v)
    return {
        k: np.array(v, dtype=object) if k in ("pixels", "image_uri", "error") else np.array(v) for k, v in out.items()
    }


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
    """Holds SAM2 + DINOv2 + the broadcast memory bank; segments batches of decoded images.

    Memory: before an image is attempted, its need is estimated (``fullres.image_memory_estimate``:
    pixels, full-resolution work, run lists) and an image over ``memory_limit_mb`` becomes an
    ``error`` row ("out of memory (estimated) ..."). An image that still runs out of memory
    (``torch.cuda.OutOfMemoryError``, ``MemoryError``, a failed CPU allocation) becomes an
    ``error`` row "out of memory: ..." after the caches are freed; the actor lives on and the job
    goes on. (The kernel's OOM killer cannot be caught: the estimate is there to stay clear of it.)
    """

    def __init__(
        self,
        *,
        bank_holder: list,
        sam2_name: str,
        segmenter: dict,
        checkpoint_dir: str | None,
        download: bool,
        run_id: str,
        num_threads: int | None = None,
        progress=None,
    ):
        import ray
        import torch

        from ..method.segmenter import MethodSegmenter
        from ..models.loading import load_encoder, load_sam2

        if num_threads and not torch.cuda.is_available():
            torch.set_num_threads(int(num_threads))
        bank = ray.get(bank_holder[0])  # broadcast: one object-store copy shared by all actors on a node
        config = SegmenterConfig(**segmenter)
        encoder, _ = load_encoder(bank.encoder["name"], checkpoint_dir=checkpoint_dir, download=download)
        proposer, _ = load_sam2(
            sam2_name, checkpoint_dir=checkpoint_dir, download=download, add_no_mem_embed=config.add_no_mem_embed
        )
        self.segmenter = MethodSegmenter(proposer, encoder, bank, config)
        self.segmenter.dense_masks = False  # rows carry RLE only: no dense masks are built
        self.run_id = run_id
        self.progress = progress

    def __call__(self, batch):
        batch = batch_columns(batch)
        n = len(batch["image_id"])
        rows = [_base_row(batch, i, self.run_id) for i in range(n)]
        table = rows_to_table(segment_rows(self.segmenter, batch, rows))
        report_rows(self.progress, n)
        return table


def segment_rows(segmenter, batch: dict[str, list], rows: list[dict]) -> list[dict]:
    """Segment the decoded images of ``batch`` into ``rows`` (:class:`SegmentActor`'s work, without Ray).

    Images are segmented together; if that fails, one by one, so a failure (or an out-of-memory)
    costs only its own image an ``error`` row.
    """
    from ..method.fullres import host_memory_limit, image_memory_estimate
    from ..method.segmenter import TargetImage

    config = segmenter.config
    limit = host_memory_limit(config)
    ready, targets = [], []
    for i in range(len(rows)):
        if batch["error"][i]:
            continue
        image = batch_image(batch, i)
        need = image_memory_estimate(image.shape[:2], config)
        if need > limit:
            h, w = image.shape[:2]
            rows[i].update(
                status=STATUS_ERROR,
                error=(
                    f"out of memory (estimated): a {w}x{h} image needs about {need / 2**30:.1f} GiB here "
                    f"({config.implementation} path{', tiled' if _is_tiled(image.shape[:2], config) else ''}), "
                    f"over the limit of {limit / 2**30:.1f} GiB (segmenter memory_limit_mb; "
                    "the fast implementation or tile_size need less)"
                ),
            )
            continue
        try:
            targets.append(TargetImage.from_image(image, config))
            ready.append(i)
        except Exception as e:  # noqa: BLE001 - e.g. MemoryError in the resize: this image only
            _fail(rows[i], e)
    # Memory is freed *after* each except block: until it ends, the exception's traceback keeps
    # the failed call's frames (and their tensors) alive.
    results = None
    try:
        results = segmenter.segment_targets(targets)
    except Exception as e:  # isolate the failing image: retry one by one
        log.warning(
            "a batch of %d images failed (%s: %s); retrying them one by one",
            len(targets),
            type(e).__name__,
            str(e)[:200],
        )
    if results is None:
        _free_memory()
        results = []
        for i, t in zip(ready, targets):
            failed = False
            try:
                results.append(segmenter.segment_targets([t])[0])
            except Exception as e1:  # noqa: BLE001 - one image's failure is its row's error
                log.error("segmenting %s failed:\n%s", rows[i]["image_uri"], traceback.format_exc())
                _fail(rows[i], e1)
                results.append(None)
                failed = True
            if failed:
                _free_memory()
    for i, instances in zip(ready, results):
        if instances is None:
            continue
        rows[i]["instances"] = [instance_record(inst) for inst in instances]
        rows[i]["num_instances"] = len(instances)
        rows[i]["status"] = STATUS_OK if instances else STATUS_EMPTY
    return rows


def _is_tiled(hw, config) -> bool:
    from ..method.tiling import needs_tiling

    return needs_tiling(hw, config)


def _is_oom(e: BaseException) -> bool:
    """CUDA or host out-of-memory, however torch or Python reports it."""
    import torch

    if isinstance(e, MemoryError) or isinstance(e, getattr(torch.cuda, "OutOfMemoryError", ())):
        return True
    msg = str(e)
    return isinstance(e, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


def _fail(row: dict, e: BaseException) -> None:
    if _is_oom(e):
        row.update(status=STATUS_ERROR, error=f"out of memory: {type(e).__name__}: {str(e)[:500]}")
    else:
        row.update(status=STATUS_ERROR, error=f"segmentation failed: {type(e).__name__}: {e}")


def _free_memory() -> None:
    """Give back what a failed attempt left: Python garbage and the CUDA caching allocator's blocks."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class NoopModelActor:
    """The model stage replaced by nothing: every decoded image becomes an ``empty`` row.

    Same constructor arguments and output as :class:`SegmentActor`, no models. The pipeline
    benchmark uses it to measure what the framework itself costs (read, decode, move, write).
    """

    def __init__(self, *, run_id: str, progress=None, **_ignored):
        self.run_id = run_id
        self.progress = progress

    def __call__(self, batch):
        batch = batch_columns(batch)
        n = len(batch["image_id"])
        table = rows_to_table([_base_row(batch, i, self.run_id) for i in range(n)])
        report_rows(self.progress, n)
        return table


class ProgressCounter:
    """Rows the model stage has produced in this attempt; a Ray actor (``num_cpus=0``) the driver's
    progress line reads (``pipeline.job.ProgressLine``). Rows reach the staging files only when a
    whole block is written, so counting there would show 0 for most of a small job."""

    def __init__(self) -> None:
        self.rows = 0

    def add(self, n: int) -> None:
        self.rows += int(n)

    def count(self) -> int:
        return self.rows


def report_rows(progress, n: int) -> None:
    """Tell the :class:`ProgressCounter` actor handle ``progress`` (None: nobody counts) that ``n``
    rows are done; fire-and-forget, best effort (progress must never fail a batch)."""
    if progress is None or not n:
        return
    try:
        progress.add.remote(int(n))
    except Exception:  # pragma: no cover - a dead counter only stalls the progress line
        log.debug("could not report progress", exc_info=True)


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
    rle = inst.coco_rle() if hasattr(inst, "coco_rle") else encode_rle(inst.mask)
    return {
        "category_id": int(inst.category_id),
        "category_name": inst.category_name,
        "score": float(inst.score),
        "bbox": [float(v) for v in inst.bbox],
        "area": mask_area(rle),
        "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"]},
    }
