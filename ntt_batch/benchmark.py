"""`ntt-batch bench`: per-stage timing of the fast path against the reference path, same run.

For each image (interleaved, so machine load hits both paths alike):

* **decode**: read bytes, decode, EXIF-orient, squash/letterbox to the SAM2 input (CPU, as the
  job's decode tasks do);
* the segmenter's stages (:class:`ntt_batch.method.segmenter.StageTimer`): ``sam2_encoder``,
  ``encoder`` (DINOv2/DINOv3), ``mask_decoder``, ``matching_nms`` (pooling, similarity, NMS), ``upsample_merge``
  (full-resolution masks, soft merging, top-k);
* **rle**: COCO RLE of every output mask; **write**: the Parquet row written to a shard.

The *reference path* is ``SegmenterConfig(implementation="reference")`` with the reference's
fixed decoder batches of 256 prompts, fp32: method.md §4 as written. The *fast path* is the
default implementation. Both use the same weights, bank and images, so they pass the same
candidates through the same filters; the run checks that their detections agree (per image,
greedy matching by class with box IoU ≥ ``agree_iou`` and |Δscore| ≤ ``agree_score``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import torch

from ._version import __version__
from .method.config import ConfigError, SegmenterConfig
from .method.memory_bank import MemoryBank
from .method.segmenter import Instance, MethodSegmenter, StageTimer, TargetImage
from .models.encoders import encoder_embed_dim
from .models.registry import SMALLEST_ENCODER, SMALLEST_SAM2
from .output.folder import utc_now_iso
from .output.shards import STATUS_EMPTY, STATUS_OK, rows_to_table
from .pipeline.stages import instance_record
from .references.coco import FEW_SHOT_CLASS_NAMES
from .storage.fs import InputImage, read_bytes
from .storage.images import decode_image

STAGES = ["decode", "sam2_encoder", "mask_decoder", "encoder", "matching_nms", "upsample_merge", "rle", "write"]

# Detection agreement tolerances (greedy same-class matching, see :func:`match_detections`).
# fp32 options (fast vs reference path, compiled vs eager): the same function up to float
# rounding, so the same detections: box IoU >= 0.99, scores within 1e-3.
FP32_TOLERANCE = {"box_iou": 0.99, "score": 1e-3}
# bf16 autocast vs fp32: the forwards round to 8 significant bits. Measured on CPU with the tiny
# models over an 8×8 prompt grid: predicted IoUs move by <= 5e-4, low-res mask IoU with the fp32
# mask >= 0.99, pooled similarities by <= 5e-4 (tests/test_throughput_options.py asserts 5e-3
# and 0.97; benchmarks/gpu_check.py reports the same figures on the GPU). A flipped boundary pixel of the 256² mask
# moves a full-size box edge by W/256 px, so boxes are matched at IoU >= 0.9 and scores (a
# similarity times a merge factor) within 0.01. A candidate whose IoU, similarity or NMS overlap
# lies within that rounding of a threshold can still go the other way: counts may then differ.
BF16_TOLERANCE = {"box_iou": 0.9, "score": 1e-2}


class PeakRSS:
    """Peak resident set size (bytes) of this process while the block runs, sampled every 5 ms."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def current() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            self._stop.wait(0.005)

    def __enter__(self):
        self.peak = self.current()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current())


def random_bank(encoder_name: str, dim: int, num_classes: int = 20, seed: int = 0) -> MemoryBank:
    """A bank of random unit prototypes (the few-shot class names): enough to time the matching."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.nn.functional.normalize(torch.randn(num_classes, dim, generator=g), dim=1)
    names = FEW_SHOT_CLASS_NAMES[:num_classes]
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
    return MemoryBank(
        categories=cats,
        instance_prototypes=protos,
        instance_labels=torch.arange(num_classes),
        encoder={"name": encoder_name, "checkpoint_sha256": None, "official": False},
        notes=["random prototypes for benchmarking"],
    )


def _box_iou(a: list[float], b: list[float]) -> float:
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    if union <= 0:  # degenerate (zero-area) boxes: equal or not
        return 1.0 if a == b else 0.0
    return inter / union


def match_detections(fast: list[Instance], ref: list[Instance], iou_min: float, score_tol: float) -> dict:
    """Greedy one-to-one matching (reference order, best box IoU) of same-class detections."""
    used: set[int] = set()
    matched, worst_iou, worst_score = 0, 1.0, 0.0
    for r in ref:
        best, best_iou = None, -1.0
        for j, f in enumerate(fast):
            if j in used or f.category_id != r.category_id or abs(f.score - r.score) > score_tol:
                continue
            iou = _box_iou(f.bbox, r.bbox)
            if iou > best_iou:
                best, best_iou = j, iou
        if best is not None and best_iou >= iou_min:
            used.add(best)
            matched += 1
            worst_iou = min(worst_iou, best_iou)
            worst_score = max(worst_score, abs(fast[best].score - r.score))
    return {
        "reference": len(ref),
        "fast": len(fast),
        "matched": matched,
        "agree": matched == len(ref) == len(fast),
        "min_box_iou": worst_iou,
        "max_score_diff": worst_score,
    }


@dataclasses.dataclass
class PathResult:
    seconds: dict[str, float]
    images: int
    peak_rss: int
    peak_gpu: int | None

    @property
    def total(self) -> float:
        return sum(self.seconds.values())

    def to_json(self) -> dict:
        return {
            "images": self.images,
            "seconds_total": self.total,
            "images_per_s": self.images / self.total if self.total else None,
            "seconds_per_image": {k: v / max(1, self.images) for k, v in self.seconds.items()},
            "peak_rss_bytes": self.peak_rss,
            "peak_gpu_bytes": self.peak_gpu,
        }


def _process(
    segmenter: MethodSegmenter, image: InputImage, timer: StageTimer, shard_dir: str, tag: str
) -> list[Instance]:
    """One image through decode → segment → RLE → Parquet write, timing each stage."""
    cfg = segmenter.config
    with timer("decode"):
        decoded = decode_image(read_bytes(image.image_uri))
        target = TargetImage.from_image(decoded, cfg)
    segmenter.timer = timer
    try:
        (instances,) = segmenter.segment_targets([target])
    finally:
        segmenter.timer = None
    with timer("rle"):
        records = [instance_record(inst) for inst in instances]  # exactly what the job's actor writes
    with timer("write"):
        import pyarrow.parquet as pq

        row = {
            "image_id": image.image_id,
            "image_uri": image.image_uri,
            "width": int(decoded.shape[1]),
            "height": int(decoded.shape[0]),
            "status": STATUS_OK if records else STATUS_EMPTY,
            "error": None,
            "num_instances": len(records),
            "instances": records,
            "run_id": "bench",
        }
        pq.write_table(rows_to_table([row]), os.path.join(shard_dir, f"{tag}-{image.image_id}.parquet"))
    return instances


def run_benchmark(
    fast: MethodSegmenter,
    reference: MethodSegmenter,
    images: list[InputImage],
    *,
    warmup: int = 0,
    agree_iou: float = 0.99,
    agree_score: float = 1e-3,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Time both segmenters on ``images`` (interleaved per image); return the report dict."""
    say = progress or (lambda msg: None)
    import pyarrow.parquet  # noqa: F401  (imported here so its first-import cost is not charged to a path)

    device = fast.device
    shard_dir = tempfile.mkdtemp(prefix="ntt-bench-")
    for im in images[:warmup]:
        say(f"warm-up on {im.image_uri}")
        for seg, tag in ((fast, "warm-f"), (reference, "warm-r")):
            _process(seg, im, StageTimer(device), shard_dir, tag)
    timers = {"fast": StageTimer(device), "reference": StageTimer(device)}
    peaks = {"fast": [0, 0], "reference": [0, 0]}
    agreement = []
    for n, im in enumerate(images, 1):
        out = {}
        for name, seg in (("fast", fast), ("reference", reference)):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            with PeakRSS() as rss:
                out[name] = _process(seg, im, timers[name], shard_dir, name)
            peaks[name][0] = max(peaks[name][0], rss.peak)
            if device.type == "cuda":
                peaks[name][1] = max(peaks[name][1], torch.cuda.max_memory_allocated(device))
        m = match_detections(out["fast"], out["reference"], agree_iou, agree_score)
        m["image_uri"] = im.image_uri
        agreement.append(m)
        say(
            f"[{n}/{len(images)}] {Path(im.image_uri).name}: fast {sum(timers['fast'].seconds.values()):.1f}s, "
            f"reference {sum(timers['reference'].seconds.values()):.1f}s cumulative; "
            f"{m['matched']}/{m['reference']} detections agree"
        )
    res = {
        k: PathResult(dict(timers[k].seconds), len(images), peaks[k][0], peaks[k][1] if device.type == "cuda" else None)
        for k in timers
    }
    fps, rps = (len(images) / res[k].total for k in ("fast", "reference"))
    return {
        "images_per_s": fps,
        "reference_images_per_s": rps,
        "speedup_vs_reference": fps / rps,
        "detections_agree": all(a["agree"] for a in agreement),
        "agreement": {"box_iou_min": agree_iou, "score_tolerance": agree_score, "per_image": agreement},
        "fast": res["fast"].to_json(),
        "reference": res["reference"].to_json(),
        "stages": STAGES,
        "config": {"fast": dataclasses.asdict(fast.config), "reference": dataclasses.asdict(reference.config)},
        "environment": environment(device),
    }


def environment(device: torch.device) -> dict:
    env = {
        "date": utc_now_iso(),
        "ntt_batch": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def format_report(report: dict) -> str:
    """The human-readable table: seconds per image per stage for both paths, then the ratios."""
    f, r = report["fast"], report["reference"]
    lines = [f"{'stage (s / image)':<20}{'fast':>12}{'reference':>12}{'ratio':>9}"]
    for s in STAGES:
        a, b = f["seconds_per_image"].get(s, 0.0), r["seconds_per_image"].get(s, 0.0)
        lines.append(f"{s:<20}{a:>12.3f}{b:>12.3f}{(b / a if a > 0 else float('nan')):>8.1f}x")
    lines.append(f"{'total':<20}{f['seconds_total'] / f['images']:>12.3f}{r['seconds_total'] / r['images']:>12.3f}")
    lines.append(
        f"images/s: fast {report['images_per_s']:.4f}, reference {report['reference_images_per_s']:.4f}, "
        f"speedup {report['speedup_vs_reference']:.2f}x"
    )
    gib = 2**30
    lines.append(
        f"peak host RSS: fast {f['peak_rss_bytes'] / gib:.2f} GiB, reference {r['peak_rss_bytes'] / gib:.2f} GiB"
        + (
            f"; peak GPU: fast {f['peak_gpu_bytes'] / gib:.2f} GiB, reference {r['peak_gpu_bytes'] / gib:.2f} GiB"
            if f["peak_gpu_bytes"] is not None
            else ""
        )
    )
    per = report["agreement"]["per_image"]
    lines.append(
        f"detections agree: {report['detections_agree']} ({sum(a['matched'] for a in per)}/"
        f"{sum(a['reference'] for a in per)} matched; box IoU >= {report['agreement']['box_iou_min']}, "
        f"|score diff| <= {report['agreement']['score_tolerance']})"
    )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- pipeline overhead


def run_pipeline_noop(
    images: list[InputImage],
    *,
    repeat: int,
    batch_size: int,
    checkpoint_dir: str,
    encoder_name: str = SMALLEST_ENCODER,
    sam2_name: str = SMALLEST_SAM2,
    echo: Callable[[str], None] = print,
) -> dict:
    """The Ray job end to end with the model stage replaced by :class:`NoopModelActor`.

    The images are hard-linked (copied across devices) ``repeat`` times under fresh names, so
    every one is a distinct input; the job reads, decodes, moves and writes them like a real run.
    Returns images/s over the job's own execution time (``run.json``'s attempt seconds: dataset
    start-up included, Ray start-up not).
    """
    import shutil

    import ray

    from .pipeline.cluster import init_ray
    from .pipeline.config import JobConfig
    from .pipeline.job import run_job
    from .pipeline.stages import NoopModelActor

    work = Path(tempfile.mkdtemp(prefix="ntt-bench-pipeline-"))
    src = work / "images"
    src.mkdir()
    n = 0
    for r in range(repeat):
        for im in images:
            dst = src / f"r{r:03d}_{Path(im.image_uri).name}"
            try:
                os.link(im.image_uri, dst)
            except OSError:
                shutil.copyfile(im.image_uri, dst)
            n += 1
    bank_dir = work / "bank"
    random_bank(encoder_name, encoder_embed_dim(encoder_name)).save(bank_dir)
    cfg = JobConfig(
        memory=str(bank_dir),
        out=str(work / "out"),
        images=str(src),
        sam2=sam2_name,
        checkpoint_dir=checkpoint_dir,
        download=False,
        batch_size=batch_size,
        actor_num_cpus=0.0,
    )  # a no-op needs no core of its own: all of them go to decoding
    init_ray(verbose=False, include_dashboard=False)  # no progress rendering: it costs a share of 2 cores
    echo(
        f"pipeline no-op: {n} images ({len(images)} distinct x {repeat}), batch size {batch_size}, "
        f"{int(ray.cluster_resources().get('CPU', 0))} CPUs"
    )
    result = run_job(cfg, echo=echo, model_stage=NoopModelActor)
    summary = result.summary
    report = {
        "images": n,
        "seconds": result.attempt["seconds"],
        "images_per_s": n / result.attempt["seconds"],
        "rows": summary["rows"],
        "errors": summary["error"],
        "batch_size": batch_size,
        "environment": environment(torch.device("cpu")),
    }
    shutil.rmtree(work, ignore_errors=True)
    return report


# ----------------------------------------------------------------------------- `ntt-batch bench`


@dataclasses.dataclass
class BenchOptions:
    """What ``ntt-batch bench`` times (its flags; see ``ntt-batch bench --help``).

    Attributes:
        images: images to time on (folder, glob or file; any fsspec URI).
        limit: timed images (default 3); with ``pipeline_noop``: distinct images used (default all).
        points_per_side: the point grid's side (SegmenterConfig's default: the paper's 32 = 1024 prompts).
        memory: a memory bank folder; None: 20 random prototypes (fine for timing).
        warmup: untimed images first (None: 1 on CUDA or with ``compile``, else 0).
        random_weights: write random checkpoints into ``checkpoint_dir`` (or a temp folder) when missing.
        pipeline_noop: time the Ray job with a no-op model stage instead (``repeat`` copies of each
            image, ``batch_size`` images per batch).
        json_out: also write the report here; ``command``: recorded in the report.
    """

    images: str
    sam2_name: str = SMALLEST_SAM2
    encoder: str = SMALLEST_ENCODER
    limit: int | None = None
    device: str = "auto"
    points_per_side: int = SegmenterConfig.points_per_side
    memory: str | None = None
    bf16: bool = False
    compile: bool = False
    warmup: int | None = None
    random_weights: bool = False
    pipeline_noop: bool = False
    repeat: int = 8
    batch_size: int = 16
    json_out: str | None = None
    checkpoint_dir: str | None = None
    download: bool = True
    command: str = ""


def bench(options: BenchOptions, *, echo: Callable[[str], None] = print, note: Callable[[str], None] = print) -> dict:
    """``ntt-batch bench``: time the fast path against the reference path (or the pipeline with a
    no-op model stage), print the report with ``echo`` (progress with ``note``), return it."""
    from .pipeline.plan import list_inputs
    from .sources import InputSpec

    o = options
    checkpoint_dir = _random_weights_for(o, note) if o.random_weights else o.checkpoint_dir
    targets = list_inputs(InputSpec(images=o.images))
    if not targets:
        raise ConfigError(f"--images: no images found at {o.images!r}")
    if o.pipeline_noop:
        report = run_pipeline_noop(
            targets[: o.limit] if o.limit else targets,
            repeat=o.repeat,
            batch_size=o.batch_size,
            checkpoint_dir=checkpoint_dir,
            encoder_name=o.encoder,
            sam2_name=o.sam2_name,
            echo=note,
        )
        echo(
            f"pipeline with a no-op model stage: {report['images']} images in {report['seconds']:.2f} s "
            f"= {report['images_per_s']:.1f} images/s ({report['errors']} errors)"
        )
    else:
        report = _bench_paths(o, checkpoint_dir, targets, note)
        echo(format_report(report))
    report["command"] = o.command
    if o.json_out:
        Path(o.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(o.json_out).write_text(json.dumps(report, indent=2))
        note(f"wrote {o.json_out}")
    return report


def _random_weights_for(o: BenchOptions, note: Callable[[str], None]) -> str:
    """The checkpoint folder for ``--random-weights``: random checkpoints written where missing."""
    from .models.checkpoints import CheckpointNotFoundError, resolve_checkpoint
    from .models.loading import write_random_checkpoint

    checkpoint_dir = o.checkpoint_dir or tempfile.mkdtemp(prefix="ntt-bench-ckpt-")
    for name in (o.sam2_name, o.encoder):
        try:
            resolve_checkpoint(name, checkpoint_dir=checkpoint_dir, download=False)
        except CheckpointNotFoundError:
            note(f"writing random {name} weights into {checkpoint_dir}")
            write_random_checkpoint(name, checkpoint_dir)
    return checkpoint_dir


def _bench_paths(o: BenchOptions, checkpoint_dir: str | None, targets: list, note: Callable[[str], None]) -> dict:
    """The fast path against the reference path on the first ``limit`` targets (same models and bank)."""
    from .models.loading import load_encoder, load_sam2

    encoder_model, _ = load_encoder(o.encoder, checkpoint_dir=checkpoint_dir, download=o.download)
    proposer, _ = load_sam2(o.sam2_name, checkpoint_dir=checkpoint_dir, download=o.download)
    bank = MemoryBank.load(o.memory) if o.memory else random_bank(o.encoder, int(encoder_model.embed_dim))
    base = dict(points_per_side=o.points_per_side, device=o.device)
    fast = MethodSegmenter(proposer, encoder_model, bank, SegmenterConfig(**base, bf16=o.bf16, compile=o.compile))
    ref = MethodSegmenter(proposer, encoder_model, bank, SegmenterConfig(**base, implementation="reference"))
    n_warm = o.warmup if o.warmup is not None else (1 if fast.device.type == "cuda" or o.compile else 0)
    limit = o.limit or 3
    note(
        f"bench: {o.sam2_name} + {o.encoder} on {fast.device}, {o.points_per_side}x{o.points_per_side} grid, "
        f"{min(limit, len(targets))} images (+{n_warm} warm-up)"
    )
    tol = BF16_TOLERANCE if o.bf16 else FP32_TOLERANCE
    report = run_benchmark(
        fast, ref, targets[:limit], warmup=n_warm, agree_iou=tol["box_iou"], agree_score=tol["score"], progress=note
    )
    report["models"] = {"sam2": o.sam2_name, "encoder": o.encoder, "random_weights": bool(o.random_weights)}
    return report
