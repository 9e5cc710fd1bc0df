"""`ntt-batch run`: the Ray Data batch job.

Data flow (streaming, bounded memory)::

    input list (driver; minus URIs that already have a row)  ── from_items
      └─ map_batches(decode_batch)      CPU tasks: read bytes (fsspec), decode, EXIF-orient, RGB,
                                        pixel limit; bad inputs → error rows
      └─ map_batches(SegmentActor)      actor pool: resize to the SAM2 input and segment; models
                                        loaded once per actor in __init__, the memory bank
                                        broadcast once with ray.put; instances are
                                        RLE-encoded inside the actor (full-res masks never travel)
      └─ write_parquet(out URI)         one row per input image (see ``io.shards``)

Resume: the shards are the checkpoint. Before building the dataset the driver reads the
``image_uri`` column of the existing shards and drops those inputs, so a rerun after a crash,
a killed worker or Ctrl-C processes only images without a row and never writes one twice.
Ray Data's own ``CheckpointConfig`` (beta in Ray 2.60) was not used: it keeps a second record
beside the output, wants a cluster-shared path, and could disagree with the shards after a
crash; here "has a row" and "is done" are the same fact, on any fsspec store.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Callable


from .. import __version__
from ..io.images import DEFAULT_MAX_PIXELS
from ..io.shards import completed_uris, summarize
from ..io.storage import InputImage, absolute_uri, filesystem, inputs_from_coco, inputs_from_manifest, inputs_from_uri
from ..method.config import ConfigError, SegmenterConfig, config_from_dict
from ..models.registry import DEFAULT_SAM2, get_spec
from .bank_prep import ReferencesSpec, prepare_memory_bank
from .stages import NoopModelActor, SegmentActor, decode_batch, instance_record  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)


@dataclass
class JobConfig:
    """All settings of a batch job. YAML files (``--config``) hold the same keys as the CLI flags."""

    memory: str = ""  # memory-bank folder
    out: str = ""  # output URI (local folder, s3://bucket/prefix, ...)
    images: str | None = None  # URI of images: prefix/folder, glob or one file
    manifest: str | None = None  # Parquet/CSV/JSONL of image URIs (+ optional image_id)
    annotations: str | None = None  # COCO JSON listing the images (with image_root)
    image_root: str | None = None
    storage_options: dict = field(default_factory=dict)  # fsspec options: endpoint_url, anon, profile, key/secret
    sam2: str = DEFAULT_SAM2
    checkpoint_dir: str | None = None
    download: bool = True
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    num_actors: int = 1  # segment actors (one GPU each where GPUs exist)
    batch_size: int = 2  # images per actor call
    actor_num_cpus: float = 1.0  # CPUs reserved per actor (and torch threads on CPU)
    max_pixels: int = DEFAULT_MAX_PIXELS  # decompression-bomb limit
    limit: int | None = None
    allow_errors: bool = False  # exit 0 even if some images errored
    ray_address: str | None = None  # None: RAY_ADDRESS or a local instance
    references: ReferencesSpec | None = None  # build the bank from these when `memory` holds none (see bank_prep)

    def validate(self) -> "JobConfig":
        if not self.memory:
            raise ConfigError("memory: required (a memory-bank folder from `ntt-batch memory build`)")
        if not self.out:
            raise ConfigError("out: required (output URI for the shards)")
        sources = [k for k in ("images", "manifest", "annotations") if getattr(self, k)]
        if len(sources) != 1:
            raise ConfigError(f"give exactly one input: images, manifest or annotations (+ image_root); got {sources or 'none'}")
        if self.annotations and not self.image_root:
            raise ConfigError("image_root: required with annotations (the URI holding the images it lists)")
        get_spec(self.sam2, "sam2")
        for name in ("memory", "out", "images", "manifest", "annotations", "image_root", "checkpoint_dir"):
            setattr(self, name, absolute_uri(getattr(self, name)))
        for name in ("num_actors", "batch_size", "max_pixels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if not isinstance(self.segmenter, SegmenterConfig):
            raise ConfigError("segmenter: must be a mapping of segmenter settings")
        self.segmenter.validate()
        if self.references is not None:
            if not isinstance(self.references, ReferencesSpec):
                raise ConfigError("references: must be a mapping of reference settings (see jobs/*.yaml)")
            self.references.validate()
        from .job_files import check_storage_options

        check_storage_options(self)
        return self

    @classmethod
    def from_dict(cls, data: dict, where: str = "job config") -> "JobConfig":
        data = dict(data)
        seg = data.pop("segmenter", None) or {}
        refs = data.pop("references", None)
        if refs is not None and not isinstance(refs, dict):
            raise ConfigError(f"{where}: references must be a mapping, got {type(refs).__name__}")
        if not isinstance(seg, dict):
            raise ConfigError(f"{where}: segmenter must be a mapping, got {type(seg).__name__}")
        names = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; valid keys: {', '.join(sorted(names))}")
        if refs is not None:
            data["references"] = config_from_dict(ReferencesSpec, refs, f"{where}: references")
        return cls(segmenter=config_from_dict(SegmenterConfig, seg, f"{where}: segmenter"), **data)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["storage_options"] = _redact(self.storage_options)
        return d


_SECRET_KEYS = ("secret", "token", "password", "key", "credential")


def _redact(options: dict) -> dict:
    """Storage options safe to log/record: credential values replaced."""
    out = {}
    for k, v in (options or {}).items():
        if isinstance(v, dict):
            out[k] = _redact(v)
        elif any(s in k.lower() for s in _SECRET_KEYS) and k.lower() not in ("endpoint_url",):
            out[k] = "***"
        else:
            out[k] = v
    return out


# ----------------------------------------------------------------------------- driver


def resolve_inputs(cfg: JobConfig) -> list[InputImage]:
    if cfg.images:
        inputs = inputs_from_uri(cfg.images, cfg.storage_options)
    elif cfg.manifest:
        inputs = inputs_from_manifest(cfg.manifest, cfg.storage_options)
    else:
        inputs = inputs_from_coco(cfg.annotations, cfg.image_root, cfg.storage_options)
    return inputs[: cfg.limit] if cfg.limit else inputs


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _pyarrow_fs(uri: str, options: dict):
    """A pyarrow filesystem over fsspec (so custom S3 endpoints/credentials work for the writer)."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri, options)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def _read_run_manifest(out: str, options: dict) -> dict:
    fs, root = filesystem(out, options)
    path = f"{root.rstrip('/')}/run.json"
    if fs.exists(path):
        with fs.open(path, "rb") as f:
            return json.load(f)
    return {}


def _write_run_manifest(out: str, options: dict, manifest: dict) -> None:
    """Write run.json via a temporary name + rename, so a crash mid-write never loses the attempt history."""
    fs, root = filesystem(out, options)
    fs.makedirs(root, exist_ok=True)
    final, tmp = f"{root.rstrip('/')}/run.json", f"{root.rstrip('/')}/.run.json.tmp"
    with fs.open(tmp, "wb") as f:
        f.write(json.dumps(manifest, indent=2).encode())
    fs.mv(tmp, final)


@dataclass
class JobResult:
    summary: dict
    attempt: dict
    exit_code: int


def run_job(cfg: JobConfig, *, dry_run: bool = False, echo: Callable[[str], None] = print,
            model_stage: type | None = None) -> JobResult:
    """Run (or resume) a batch job; returns the summary over the whole output and an exit code.

    ``model_stage`` replaces :class:`SegmentActor` (the pipeline benchmark passes :class:`NoopModelActor`).
    """
    import ray

    from ..method.memory_bank import MemoryBank
    from ..models.checkpoints import resolve_checkpoint

    cfg.validate()
    inputs = resolve_inputs(cfg)
    done = completed_uris(cfg.out, cfg.storage_options)
    todo = [i for i in inputs if i.image_uri not in done]
    echo(f"inputs: {len(inputs)} images; already done: {len(inputs) - len(todo)}; to process: {len(todo)}")
    bank_build = prepare_memory_bank(cfg, dry_run=dry_run, echo=echo)  # only with `references:` and no bank yet
    if dry_run:
        for i in todo[:50]:
            echo(f"  would process image_id={i.image_id} {i.image_uri}")
        if len(todo) > 50:
            echo(f"  ... and {len(todo) - 50} more")
        return JobResult({"to_process": len(todo), "inputs": len(inputs)}, {}, 0)

    bank = MemoryBank.load(cfg.memory)
    sam_ckpt = resolve_checkpoint(cfg.sam2, checkpoint_dir=cfg.checkpoint_dir, download=cfg.download)
    enc_ckpt = resolve_checkpoint(bank.encoder["name"], checkpoint_dir=cfg.checkpoint_dir, download=cfg.download)
    if bank.encoder.get("checkpoint_sha256") and enc_ckpt.sha256 != bank.encoder["checkpoint_sha256"]:
        raise ValueError(f"memory bank {cfg.memory} was built with {bank.encoder['name']} weights sha256 "
                         f"{bank.encoder['checkpoint_sha256']} but {enc_ckpt.path} has {enc_ckpt.sha256}; rebuild the bank")
    run_id = f"{_dt.datetime.now(_dt.timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
    manifest = _read_run_manifest(cfg.out, cfg.storage_options)
    attempt = {"run_id": run_id, "started_at": _now(), "status": "running", "inputs": len(inputs),
               "already_done": len(inputs) - len(todo), "to_process": len(todo)}
    manifest.update({
        "format": "ntt-batch/run", "ntt_batch_version": __version__, "config": cfg.to_dict(),
        "models": {"sam2": sam_ckpt.to_json(), "encoder": enc_ckpt.to_json()},
        "official_weights": sam_ckpt.official and enc_ckpt.official,
        "memory_bank": {"path": cfg.memory, "content_hash": bank.content_hash, "categories": bank.categories, "shots": bank.shots},
    })
    if bank_build:
        attempt["memory_bank_build"] = bank_build
    manifest.setdefault("attempts", []).append(attempt)
    _write_run_manifest(cfg.out, cfg.storage_options, manifest)

    t0 = time.perf_counter()
    try:
        if todo:
            _execute(cfg, todo, bank, run_id, ray, model_stage)
        attempt["status"] = "completed"
    except BaseException as e:
        attempt["status"] = "interrupted" if isinstance(e, KeyboardInterrupt) else f"failed: {type(e).__name__}: {e}"
        raise
    finally:
        elapsed = time.perf_counter() - t0
        attempt["finished_at"] = _now()
        attempt["seconds"] = round(elapsed, 3)
        attempt["images_per_s"] = round(len(todo) / elapsed, 4) if elapsed > 0 and todo else None
        summary = summarize(cfg.out, cfg.storage_options)
        manifest["summary"] = summary
        if ray.is_initialized():
            manifest["cluster_resources"] = {k: v for k, v in ray.cluster_resources().items() if not k.startswith("node:")}
        _write_run_manifest(cfg.out, cfg.storage_options, manifest)

    missing = len({i.image_uri for i in inputs} - completed_uris(cfg.out, cfg.storage_options))
    summary = {**summary, "missing": missing, "processed_this_run": len(todo), "seconds": attempt["seconds"],
               "images_per_s": attempt["images_per_s"]}
    echo(f"summary: {summary['ok']} ok, {summary['empty']} empty, {summary['error']} error "
         f"({summary['rows']} rows, {summary['instances']} instances); this run: {len(todo)} images "
         f"in {attempt['seconds']} s ({attempt['images_per_s']} images/s)")
    code = 0
    if missing or summary["duplicate_uris"]:
        code = 3
    elif summary["error"] and not cfg.allow_errors:
        code = 1
    return JobResult(summary, attempt, code)


def _decode_memory_bytes(cfg: JobConfig, cluster_memory: float | None = None) -> int:
    """Memory to reserve per decode task.

    A task decodes its batch one image at a time: at most one image at the pixel limit (capped at
    50 MP) is in flight, twice over while PIL converts it, plus the batch's decoded outputs
    (budgeted at 12 MP each). Capped at a quarter of the cluster's memory resource, so a large
    batch can never ask for more than a node has (the task would wait forever).
    """
    one = min(cfg.max_pixels, 50_000_000) * 3
    need = 2 * one + cfg.batch_size * 12_000_000 * 3 + (64 << 20)
    if cluster_memory:
        need = min(need, int(cluster_memory / 4))
    return int(need)


def _execute(cfg: JobConfig, todo: list[InputImage], bank, run_id: str, ray, model_stage=None) -> None:
    model_stage = model_stage or SegmentActor
    import ray.data

    if not ray.is_initialized():
        address = cfg.ray_address or os.environ.get("RAY_ADDRESS")
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=True) if address else ray.init()
    gpus = ray.cluster_resources().get("GPU", 0)
    seg = cfg.segmenter
    bank_ref = ray.put(bank)  # broadcast once; actors receive the reference, never a copy per batch
    ds = ray.data.from_items([{"image_id": i.image_id, "image_uri": i.image_uri} for i in todo],
                             override_num_blocks=max(1, min(len(todo), (len(todo) + cfg.batch_size - 1) // cfg.batch_size)))
    # Decode tasks reserve memory for a full-size decode; that remote arg also differs from the
    # actors', so Ray does not fuse decoding into the actors: CPU decoding overlaps with model work.
    # Small batches keep blocks flowing, so shards are written as images finish (resume granularity).
    ds = ds.map_batches(decode_batch, batch_size=cfg.batch_size, batch_format="numpy", num_cpus=1,
                        memory=_decode_memory_bytes(cfg, ray.cluster_resources().get("memory")),
                        fn_kwargs={"storage_options": cfg.storage_options, "max_pixels": cfg.max_pixels})
    ds = ds.map_batches(
        model_stage, batch_size=cfg.batch_size, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=cfg.num_actors),
        num_gpus=1 if gpus >= 1 else 0, num_cpus=cfg.actor_num_cpus,
        fn_constructor_kwargs={"bank_holder": [bank_ref], "sam2_name": cfg.sam2, "segmenter": asdict(seg),
                               "checkpoint_dir": cfg.checkpoint_dir, "download": cfg.download, "run_id": run_id,
                               "num_threads": max(1, int(cfg.actor_num_cpus))},
    )
    fs, path = _pyarrow_fs(cfg.out, cfg.storage_options)
    ds.write_parquet(path, filesystem=fs, max_rows_per_file=cfg.batch_size)
