"""The Ray Data graph of an attempt: todo files → read + decode (CPU tasks) → model actors → staged Parquet."""

from __future__ import annotations

import logging
from dataclasses import asdict

import pyarrow as pa

from ..output.fencing import FencedFSHandler
from ..output.folder import (
    LOCK_JSON,
    OutputFolder,
)
from .background import ProgressLine
from .cluster import init_ray
from .config import JobConfig
from .plan import Plan
from .shard_plan import ShardPlan, shard_dataset
from .stages import (
    ProgressCounter,
    SegmentActor,
    decode_batch,
)

log = logging.getLogger(__name__)


def decode_rows(cfg: JobConfig) -> int:
    """Images per decode task call: enough to keep ``read_concurrency`` reads in flight, within a block."""
    return max(cfg.batch_size, min(cfg.read_concurrency, cfg.block_rows))


def decode_memory_bytes(cfg: JobConfig, cluster_memory: float | None = None) -> int:
    """Memory to reserve per decode task.

    A task decodes its batch one image at a time: at most one image at the pixel limit (capped at
    50 MP) is in flight, twice over while PIL converts it, plus the batch's decoded outputs
    (budgeted at 12 MP each) and the bytes of the reads in flight (``read_buffer_mb``). Capped at
    a quarter of the cluster's memory resource, so a large batch can never ask for more than a
    node has (the task would wait forever).
    """
    one = min(cfg.max_pixels, 50_000_000) * 3
    need = 2 * one + decode_rows(cfg) * 12_000_000 * 3 + (cfg.read_buffer_mb << 20) + (64 << 20)
    if cluster_memory:
        need = min(need, int(cluster_memory / 4))
    return int(need)


def read_todo_file(batch: dict, *, out: str, storage_options: dict):
    """Ray Data stage: one todo file (``_ntt/todo/<run_id>/todo-*.parquet``) → its rows (image_id, image_uri)."""
    import pyarrow.parquet as _pq

    folder = OutputFolder(out, storage_options)
    tables = []
    for path in batch["todo"]:
        with folder.fs.open(str(path), "rb") as f:
            tables.append(_pq.read_table(f))
    return pa.concat_tables(tables)


def _input_dataset(cfg: JobConfig, plan: Plan, run_id: str):
    """The graph's first stage: the inputs to decode, one block per todo file (or per shard)."""
    import ray.data

    if isinstance(plan, ShardPlan):  # one reading task per shard (pipeline.shard_plan)
        return shard_dataset(cfg, plan, run_id)
    ds = ray.data.from_items([{"todo": p} for p in plan.todo_paths], override_num_blocks=len(plan.todo_paths))
    return ds.map_batches(
        read_todo_file,
        batch_size=1,
        batch_format="numpy",
        num_cpus=0.25,
        fn_kwargs={"out": cfg.out, "storage_options": cfg.storage_options},
    )


def execute(
    cfg: JobConfig,
    plan: Plan,
    bank,
    run_id: str,
    folder: OutputFolder,
    model_stage=None,
    *,
    verbose: bool = True,
    staging: str | None = None,
    lease=None,
    progress: ProgressLine | None = None,
) -> None:
    """The Ray Data pipeline over the plan's todo files; rows land in ``<out>/<staging>``
    (``_ntt/staging/g<generation>-<run_id>/``), written through a filesystem that refuses new files
    once ``lease``'s generation no longer holds the output (:class:`~ntt_batch.output.fencing.FencedFSHandler`).
    The model stage reports the rows it produces to a :class:`ProgressCounter` that ``progress`` reads."""
    import ray
    import ray.data

    model_stage = model_stage or SegmentActor
    init_ray(cfg.ray_address, verbose=verbose)
    gpus = ray.cluster_resources().get("GPU", 0)
    bank_ref = ray.put(bank)  # broadcast once; actors receive the reference, never a copy per batch
    counter = ray.remote(num_cpus=0)(ProgressCounter).remote()
    if progress is not None:
        progress.counter = counter
    import pyarrow.fs as _pafs

    if lease is not None:  # the writer's filesystem (custom S3 endpoints and credentials work), fenced
        handler = FencedFSHandler(folder.fs, folder.path(LOCK_JSON), lease.generation, folder.uri)
        pafs = _pafs.PyFileSystem(handler)
    else:
        pafs, _ = folder.pyarrow_fs()
    # One todo file is one block (plan sizes them: block_rows rows, or more for huge jobs), read by a
    # small task of its own: decoding starts at once and fans out, no per-file metadata pass on the
    # driver (read_parquet's) and no repartition stage competing with decoding for CPUs.
    ds = _input_dataset(cfg, plan, run_id)
    # Decode tasks reserve memory for a full-size decode; that remote arg also differs from the
    # actors', so Ray does not fuse decoding into the actors: CPU decoding overlaps with model work.
    ds = ds.map_batches(
        decode_batch,
        batch_size=decode_rows(cfg),
        batch_format="numpy",
        num_cpus=1,
        memory=decode_memory_bytes(cfg, ray.cluster_resources().get("memory")),
        fn_kwargs={
            "storage_options": cfg.storage_options,
            "max_pixels": cfg.max_pixels,
            "read_concurrency": cfg.read_concurrency,
            "read_buffer_mb": cfg.read_buffer_mb,
        },
    )
    ds = ds.map_batches(
        model_stage,
        batch_size=cfg.batch_size,
        batch_format="pyarrow",
        # up to 4 batches queued per actor: decoded images wait at the GPU instead of the GPU waiting for them
        compute=ray.data.ActorPoolStrategy(size=cfg.num_actors, max_tasks_in_flight_per_actor=4),
        num_gpus=1 if gpus >= 1 else 0,
        num_cpus=cfg.actor_num_cpus,
        fn_constructor_kwargs={
            "bank_holder": [bank_ref],
            "sam2_name": cfg.sam2,
            "segmenter": asdict(cfg.segmenter),
            "checkpoint_dir": cfg.checkpoint_dir,
            "download": cfg.download,
            "run_id": run_id,
            "num_threads": max(1, int(cfg.actor_num_cpus)),
            "progress": counter,
        },
    )
    # Workers write small staging files as blocks finish; the driver commits them into large parts.
    target = folder.path(staging) if staging else folder.staging(run_id)
    ds.write_parquet(target, filesystem=pafs, max_rows_per_file=cfg.block_rows)
