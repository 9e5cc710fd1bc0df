#!/usr/bin/env python3
"""The GPU check: model-stage throughput of the reference and fast paths on one GPU, in one run.

Run through ``benchmarks/gpu_check.sh`` on the GPU machine (it installs the prepared wheels
first); ``python3 benchmarks/gpu_check.py --device cpu --tiny`` runs the same code end to end on
a CPU with the tiny models (what the tests do). No Ray, no network, no dataset: random-weight
checkpoints in the official layouts are written first and the images are synthetic (shapes on a
textured background, JPEG-encoded and decoded like real inputs).

What it measures (paper settings by default: ``sam2_hiera_large`` + ``dinov2_vitl14``, 32×32
prompts, IoU filter 0.4, NMS 0.5, top 100):

* ``paths``: images/s of the model stage (``MethodSegmenter.segment_targets`` on prepared 1024²
  targets, ``--batch`` images per call, CUDA synchronised, after one warm-up call) for the
  reference path (fp32), the fast path in fp32, in bf16 and compiled (bf16), with the peak GPU
  memory of each;
* ``stages``: seconds per image per stage (decode, SAM2 encoder, mask decoder, DINOv2, matching
  + NMS, upsampling + merging, RLE, Parquet write), from ``ntt_batch.benchmark.run_benchmark``
  (reference vs fast fp32, one image at a time) and from a timed pass of the fast bf16 path;
* ``agreement``: fast fp32 vs reference and compiled vs eager (fp32 tolerance: box IoU ≥ 0.99,
  |Δscore| ≤ 1e-3), bf16 vs fp32 (box IoU ≥ 0.9, |Δscore| ≤ 0.01), plus the bf16 decoder's
  candidate-level differences (predicted IoU, low-res mask IoU, filter decisions);
* ``batch_sweep``: images per call 1, 2, 4, … on the fast bf16 path until out of memory (or
  ``--max-batch``): images/s and peak memory of each, and the largest that fits;
* ``rle``: COCO RLE of the final masks computed on the device (``ntt_batch.method.rle``) vs
  pycocotools on the host: seconds and byte identity.

The report is rewritten after every phase (``<out>/gpu_check.json``), so a run stopped by its
time limit keeps what it measured; a phase that fails records its traceback and the run goes on.
Phases that would not fit in ``--budget-s`` are skipped and say so.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

T_START = time.time()


def _now() -> float:
    return time.time() - T_START


class Report:
    """The JSON report, written atomically after every phase."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict = {"status": "running", "phases": {}}

    def __setitem__(self, key, value):
        self.data[key] = value
        self.write()

    def __getitem__(self, key):
        return self.data[key]

    def write(self):
        self.data["elapsed_s"] = round(_now(), 1)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        os.replace(tmp, self.path)


def say(msg: str) -> None:
    print(f"[{_now():6.1f}s] {msg}", flush=True)


# ----------------------------------------------------------------------------- inputs


def synthetic_images(n: int, seed: int = 0) -> list:
    """``n`` RGB uint8 images of a few common sizes: textured background, filled ellipses and
    rectangles of random colours, JPEG round-tripped (so they carry real compression artefacts)."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    sizes = [(640, 480), (480, 640), (800, 600), (1024, 768), (640, 427), (500, 375)]
    out = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        yy, xx = np.mgrid[0:h, 0:w]
        base = rng.integers(40, 200, 3)
        grad = (np.sin(xx / rng.uniform(20, 80)) + np.cos(yy / rng.uniform(20, 80)))[..., None] * 20
        arr = np.clip(base + grad + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
        im = Image.fromarray(arr)
        draw = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(4, 12))):
            x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
            x1, y1 = x0 + int(rng.integers(30, w // 2)), y0 + int(rng.integers(30, h // 2))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=90)
        out.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    return out


# ----------------------------------------------------------------------------- measurements


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device):
    import torch

    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def time_path(seg, targets, batch: int, warmup: bool | None = None) -> tuple[dict, list]:
    """Model-stage throughput of ``seg`` on prepared ``targets``, ``batch`` images per call, after
    one untimed warm-up call (default: on CUDA and for compiled segmenters)."""
    dev = seg.device
    t_warm = None
    if warmup is None:
        warmup = dev.type == "cuda" or seg.config.compile
    if warmup:
        t0 = time.perf_counter()
        seg.segment_targets(targets[:batch])
        _sync(dev)
        t_warm = time.perf_counter() - t0
    _reset_peak(dev)
    results = []
    t0 = time.perf_counter()
    for i in range(0, len(targets), batch):
        results.extend(seg.segment_targets(targets[i : i + batch]))
    _sync(dev)
    secs = time.perf_counter() - t0
    return {
        "images": len(targets),
        "images_per_call": batch,
        "seconds": secs,
        "images_per_s": len(targets) / secs,
        "first_call_seconds": t_warm,
        "peak_gpu_bytes": _peak(dev),
        "detections": sum(len(r) for r in results),
    }, results


def stage_pass(seg, targets, batch: int) -> dict:
    """Seconds per image per segmenter stage (the timer synchronises CUDA around each stage)."""
    from ntt_batch.method.segmenter import StageTimer

    timer = StageTimer(seg.device)
    seg.timer = timer
    try:
        for i in range(0, len(targets), batch):
            seg.segment_targets(targets[i : i + batch])
    finally:
        seg.timer = None
    return {k: v / len(targets) for k, v in timer.seconds.items()}


def agreement(a: list, b: list, tol: dict) -> dict:
    """Per-image greedy matching of ``a`` against ``b`` (``b`` is the baseline), summed."""
    from ntt_batch.benchmark import match_detections

    per = [match_detections(x, y, tol["box_iou"], tol["score"]) for x, y in zip(a, b)]
    return {
        "agree": all(p["agree"] for p in per),
        "images": len(per),
        "matched": sum(p["matched"] for p in per),
        "baseline_detections": sum(p["reference"] for p in per),
        "detections": sum(p["fast"] for p in per),
        "images_disagreeing": sum(not p["agree"] for p in per),
        "min_box_iou": min((p["min_box_iou"] for p in per), default=1.0),
        "max_score_diff": max((p["max_score_diff"] for p in per), default=0.0),
        "tolerance": tol,
    }


def bf16_candidates(proposer, encoder, target, pps: int, device, iou_threshold: float) -> dict:
    """The fast decoder's outputs for every prompt of one image, fp32 vs bf16 autocast."""
    import torch
    import torch.nn.functional as F

    from ntt_batch.method.matching import pool_mask_features_separable
    from ntt_batch.method.segmenter import point_grid

    x = torch.from_numpy(target.resized).to(device).permute(2, 0, 1)[None].float() / 255.0
    pts = point_grid(pps, proposer.image_size).to(device)
    dec = proposer.point_decoder()
    out = {}
    for name, on in (("fp32", False), ("bf16", True)):
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=on):
            f = proposer.encode(x)
            state = dec.prepare(f.image_embed, f.high_res)
            ious, logits = [], []
            for s in range(0, pts.shape[0], 256):
                _, lg, iou = dec.decode(state, pts[s : s + 256], -1.0)
                ious.append(iou.float())
                logits.append(lg.float())
            pf = encoder(F.interpolate(x, size=(518, 518), mode="bicubic", align_corners=False))
        out[name] = (torch.cat(logits), torch.cat(ious), pf.float()[0])
    (la, ia, fa), (lb, ib, fb) = out["fp32"], out["bf16"]
    ma, mb = la > 0, lb > 0
    inter = (ma & mb).flatten(1).sum(1).float()
    union = (ma | mb).flatten(1).sum(1).float()
    miou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    pa = pool_mask_features_separable(ma, fa)
    pb = pool_mask_features_separable(ma, fb)
    cos = (pa * pb).sum(1)
    cos = cos[~torch.isnan(cos)]
    return {
        "prompts": int(pts.shape[0]),
        "max_abs_iou_diff": float((ia - ib).abs().max()),
        "iou_range_fp32": [float(ia.min()), float(ia.max())],
        "filter_decisions_changed": int(((ia > iou_threshold) != (ib > iou_threshold)).sum()),
        "min_lowres_mask_iou": float(miou.min()),
        "mean_lowres_mask_iou": float(miou.mean()),
        "min_pooled_feature_cosine": float(cos.min()) if cos.numel() else None,
    }


def rle_check(instances_per_image: list, device) -> dict:
    """Device RLE of the final masks vs pycocotools on the host (when installed)."""
    import numpy as np
    import torch

    from ntt_batch.method.rle import encode_rle_torch

    masks = [
        inst.binary_mask() if hasattr(inst, "binary_mask") else inst.mask
        for insts in instances_per_image
        for inst in insts
    ]
    if not masks:
        return {"masks": 0}
    by_size: dict = {}
    for m in masks:
        by_size.setdefault(m.shape, []).append(m)
    dev_masks = [torch.from_numpy(np.stack(v)).to(device) for v in by_size.values()]
    _sync(device)
    t0 = time.perf_counter()
    ours = [r for t in dev_masks for r in encode_rle_torch(t)]
    _sync(device)
    t_dev = time.perf_counter() - t0
    res = {"masks": len(masks), "device_seconds": t_dev}
    try:
        from pycocotools import mask as mask_utils
    except ImportError:
        res["pycocotools"] = "not installed"
        return res
    host = [m for v in by_size.values() for m in v]
    t0 = time.perf_counter()
    theirs = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in host]
    res["pycocotools_host_seconds"] = time.perf_counter() - t0
    res["byte_identical"] = all(
        a["counts"] == b["counts"].decode() and a["size"] == list(b["size"]) for a, b in zip(ours, theirs)
    )
    return res


# ----------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu")
    p.add_argument(
        "--tiny",
        action="store_true",
        help="sam2.1_hiera_tiny + dinov2_vits14, 2x2 prompts, 2 images: the CPU smoke run",
    )
    p.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out", help="folder for gpu_check.json")
    p.add_argument(
        "--ckpt-dir",
        default=os.environ.get("NTT_GPU_CKPT") or os.path.join(tempfile.gettempdir(), "ntt_gpu_ckpt"),
        help="random-weight checkpoints are written (once) and read here",
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="seconds from start after which no phase is started that would not end in time "
        "(default 420 on CUDA: gpu_check.sh's 8 minutes less install time; 3600 on CPU)",
    )
    p.add_argument("--points-per-side", type=int, default=None, help="default 32 (--tiny: 2)")
    p.add_argument("--images", type=int, default=None, help="images per timed run (default 32; --tiny: 2)")
    p.add_argument(
        "--batch", type=int, default=None, help="images per call for the path comparison (default 8; --tiny: 2)"
    )
    p.add_argument(
        "--ref-images", type=int, default=None, help="images through the reference path (default 4; --tiny: 1)"
    )
    p.add_argument("--max-batch", type=int, default=None, help="largest images-per-call tried (default 128; --tiny: 2)")
    p.add_argument(
        "--compile",
        choices=["auto", "on", "off"],
        default="auto",
        help="the compiled phase (auto: on for CUDA, off on CPU where inductor takes minutes)",
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    tiny = args.tiny
    pps = args.points_per_side or (2 if tiny else 32)
    n_img = args.images or (2 if tiny else 32)
    batch = args.batch or (2 if tiny else 8)
    n_ref = args.ref_images or (1 if tiny else 4)
    max_batch = args.max_batch or (2 if tiny else 128)
    sam2_name, enc_name = ("sam2.1_hiera_tiny", "dinov2_vits14") if tiny else ("sam2_hiera_large", "dinov2_vitl14")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rep = Report(out / "gpu_check.json")
    budget = args.budget_s or (3600.0 if args.device == "cpu" else 420.0)

    def fits(need_s: float) -> bool:
        return _now() + need_s <= budget

    def phase(name: str, need_s: float, fn):
        """Run one phase: skipped if it would not fit, its error recorded (the run goes on)."""
        if not fits(need_s):
            say(f"{name}: skipped (needs ~{need_s:.0f} s, {budget - _now():.0f} s left)")
            rep["phases"][name] = {"status": "skipped", "reason": f"time budget: needs ~{need_s:.0f} s"}
            rep.write()
            return None
        rep["phases"][name] = {"status": "running (a run stopped here was killed by its time limit)"}
        rep.write()
        t0 = _now()
        try:
            value = fn()
            rep["phases"][name] = {"status": "ok", "seconds": round(_now() - t0, 1)}
            return value
        except Exception as e:
            say(f"{name}: FAILED: {type(e).__name__}: {e}")
            rep["phases"][name] = {
                "status": "failed",
                "seconds": round(_now() - t0, 1),
                "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc(),
            }
            return None
        finally:
            rep.write()

    # ---- environment and imports (no Ray, no pycocotools at import time)
    import torch

    before = set(sys.modules)
    import ntt_batch
    import ntt_batch.benchmark
    import ntt_batch.method.rle
    from ntt_batch.benchmark import (
        BF16_TOLERANCE,
        FP32_TOLERANCE,
        random_bank,
        run_benchmark,
    )
    from ntt_batch.method.config import SegmenterConfig
    from ntt_batch.method.segmenter import MethodSegmenter, TargetImage, resolve_device
    from ntt_batch.models.loading import (
        load_encoder,
        load_sam2,
        write_random_checkpoint,
    )
    from ntt_batch.storage.fs import InputImage

    pulled = sorted({m.split(".")[0] for m in set(sys.modules) - before} & {"ray", "pycocotools"})
    device = resolve_device(args.device)
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ntt_batch": ntt_batch.__version__,
        "ntt_batch_from": os.path.dirname(ntt_batch.__file__),
        "device": str(device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "imported_at_import_time": pulled,
        "ray_importable": _importable("ray"),
        "pycocotools_importable": _importable("pycocotools"),
    }
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("torchvision", "timm", "sam2", "hydra-core", "numpy", "pyarrow", "pycocotools"):
        try:
            env[dist] = version(dist)
        except PackageNotFoundError:
            env[dist] = None
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update(
            gpu=p.name,
            gpu_memory_bytes=int(p.total_memory),
            cuda=torch.version.cuda,
            cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
            matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
        )
    rep["environment"] = env
    rep["settings"] = {
        "sam2": sam2_name,
        "encoder": enc_name,
        "points_per_side": pps,
        "images": n_img,
        "images_per_call": batch,
        "reference_images": n_ref,
        "max_batch": max_batch,
        "budget_s": budget,
        "random_weights": True,
        "images_source": "synthetic",
    }
    say(f"torch {torch.__version__} on {env.get('gpu', device)}; {sam2_name} + {enc_name}, {pps}x{pps} prompts")
    if pulled:
        say(f"WARNING: importing the benchmark pulled in {pulled}")

    # ---- checkpoints and models
    def load_models():
        ckpt = Path(args.ckpt_dir)
        for name in (sam2_name, enc_name):
            from ntt_batch.models.registry import get_spec

            if not (ckpt / get_spec(name).filename).is_file():
                say(f"writing random {name} weights into {ckpt}")
                write_random_checkpoint(name, ckpt)
        enc, _ = load_encoder(enc_name, checkpoint_dir=str(ckpt), download=False)
        prop, _ = load_sam2(sam2_name, checkpoint_dir=str(ckpt), download=False)
        return prop.to(device), enc.to(device)

    loaded = phase("models", 150, load_models)
    if loaded is None:
        rep["status"] = "failed: models"
        return 1
    proposer, encoder = loaded
    bank = random_bank(enc_name, int(encoder.embed_dim))
    images = synthetic_images(n_img)

    def seg(**kw):
        return MethodSegmenter(proposer, encoder, bank, SegmenterConfig(points_per_side=pps, device=args.device, **kw))

    cfg0 = SegmenterConfig(points_per_side=pps, device=args.device)
    targets = [TargetImage.from_image(im, cfg0) for im in images]
    paths: dict = {}
    results: dict = {}
    rep["paths"] = paths

    # ---- fast path, fp32 and bf16 (model stage)
    for name, kw in (("fast_fp32", {}), ("fast_bf16", {"bf16": True})):

        def run(kw=kw):
            stats, res = time_path(seg(**kw), targets, batch)
            return stats, res

        r = phase(name, 60, run)
        if r is not None:
            paths[name], results[name] = r
            say(
                f"{name}: {r[0]['images_per_s']:.2f} images/s ({batch} per call), "
                f"peak GPU {(r[0]['peak_gpu_bytes'] or 0) / 2**30:.1f} GiB, {r[0]['detections']} detections"
            )
            rep.write()

    # ---- reference path (model stage) on fewer images
    def run_ref():
        return time_path(seg(implementation="reference"), targets[:n_ref], min(batch, n_ref))

    r = phase("reference", 120, run_ref)
    if r is not None:
        paths["reference"], results["reference"] = r
        say(f"reference: {r[0]['images_per_s']:.3f} images/s, peak GPU {(r[0]['peak_gpu_bytes'] or 0) / 2**30:.1f} GiB")

    agree: dict = {}
    rep["agreement"] = agree
    if "reference" in results and "fast_fp32" in results:
        agree["fast_fp32_vs_reference"] = agreement(results["fast_fp32"][:n_ref], results["reference"], FP32_TOLERANCE)
    if "fast_bf16" in results and "fast_fp32" in results:
        agree["fast_bf16_vs_fast_fp32"] = agreement(results["fast_bf16"], results["fast_fp32"], BF16_TOLERANCE)
    rep.write()

    # ---- per-stage times: reference vs fast fp32 (decode .. write), and the fast bf16 path
    def stages():
        tmp = Path(tempfile.mkdtemp(prefix="ntt-gpu-check-"))
        from PIL import Image

        inputs = []
        for i, im in enumerate(images[:n_ref]):
            p = tmp / f"synthetic_{i:03d}.jpg"
            Image.fromarray(im).save(p, quality=95)
            inputs.append(InputImage(image_id=i, image_uri=str(p)))
        bench = run_benchmark(
            seg(),
            seg(implementation="reference"),
            inputs,
            warmup=1 if device.type == "cuda" else 0,
            agree_iou=FP32_TOLERANCE["box_iou"],
            agree_score=FP32_TOLERANCE["score"],
        )
        return {
            "per_image_reference_vs_fast_fp32": {
                k: bench[k] for k in ("fast", "reference", "speedup_vs_reference", "detections_agree")
            },
            "fast_bf16_model_stage": stage_pass(seg(bf16=True), targets, batch),
        }

    st = phase("stages", 150, stages)
    if st is not None:
        rep["stages"] = st

    def cand():
        return bf16_candidates(proposer, encoder, targets[0], pps, device, cfg0.pred_iou_threshold)

    c = phase("bf16_candidates", 30, cand)
    if c is not None:
        agree["bf16_candidates"] = c
        rep.write()

    def rle():
        return rle_check(results.get("fast_bf16") or results.get("fast_fp32") or [], device)

    r = phase("rle", 30, rle)
    if r is not None:
        rep["rle"] = r

    # ---- images per call: 1, 2, 4, ... until out of memory
    def sweep():
        s = seg(bf16=True)
        rows, largest = [], None
        b = 1
        while b <= max_batch:
            if not fits(30):
                rows.append({"images_per_call": b, "status": "skipped: time budget"})
                break
            batch_targets = [targets[i % len(targets)] for i in range(b)]
            try:
                stats, _ = time_path(s, batch_targets, b, warmup=(b == 1 and device.type == "cuda"))
                rows.append(
                    {
                        "images_per_call": b,
                        "status": "ok",
                        "images_per_s": stats["images_per_s"],
                        "peak_gpu_bytes": stats["peak_gpu_bytes"],
                    }
                )
                largest = b
                say(
                    f"sweep: {b} per call: {stats['images_per_s']:.2f} images/s, "
                    f"peak {(stats['peak_gpu_bytes'] or 0) / 2**30:.1f} GiB"
                )
            except (torch.cuda.OutOfMemoryError, RuntimeError) as e:
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                if (
                    not isinstance(e, torch.cuda.OutOfMemoryError)
                    and "out of memory" not in msg.lower()
                    and "ALLOC" not in msg
                ):
                    raise
                rows.append({"images_per_call": b, "status": f"out of memory: {msg}"})
                break
            finally:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            b *= 2
        ok = [r for r in rows if r["status"] == "ok"]
        best = max(ok, key=lambda r: r["images_per_s"]) if ok else None
        return {
            "rows": rows,
            "largest_images_per_call_that_fits": largest,
            "limited_by": "out of memory"
            if rows and rows[-1]["status"].startswith("out of memory")
            else ("time budget" if rows and "budget" in rows[-1]["status"] else f"--max-batch {max_batch}"),
            "best": best,
        }

    sw = phase("batch_sweep", 60, sweep)
    if sw is not None:
        rep["batch_sweep"] = sw

    # ---- compiled (last: compile time is the least predictable)
    do_compile = args.compile == "on" or (args.compile == "auto" and device.type == "cuda")
    if do_compile:

        def run_compiled():
            best_b = (sw or {}).get("best") or {}
            b = batch
            s = seg(bf16=True, compile=True)
            stats, res = time_path(s, targets, b)  # the warm-up call compiles
            stats["compile_and_first_call_seconds"] = stats.pop("first_call_seconds")
            stats["note"] = f"bf16 + torch.compile; uncompiled best in the sweep: {best_b}"
            return stats, res

        r = phase("compiled", 120, run_compiled)
        if r is not None:
            paths["compiled_bf16"], results["compiled_bf16"] = r
            say(
                f"compiled_bf16: {r[0]['images_per_s']:.2f} images/s (compile + first call "
                f"{r[0]['compile_and_first_call_seconds']:.0f} s)"
            )
            if "fast_bf16" in results:
                agree["compiled_bf16_vs_fast_bf16"] = agreement(
                    results["compiled_bf16"], results["fast_bf16"], BF16_TOLERANCE
                )
    else:
        rep["phases"]["compiled"] = {"status": "skipped", "reason": "--compile off (default on CPU)"}

    # ---- summary
    summary = {k: round(v["images_per_s"], 4) for k, v in paths.items()}
    if "reference" in paths:
        ref = paths["reference"]["images_per_s"]
        summary["speedup_vs_reference"] = {
            k: round(v["images_per_s"] / ref, 2) for k, v in paths.items() if k != "reference"
        }
    summary["peak_gpu_gib"] = {
        k: (round(v["peak_gpu_bytes"] / 2**30, 2) if v.get("peak_gpu_bytes") else None) for k, v in paths.items()
    }
    summary["detections_agree"] = {k: v["agree"] for k, v in agree.items() if isinstance(v, dict) and "agree" in v}
    if sw:
        summary["largest_images_per_call_that_fits"] = sw["largest_images_per_call_that_fits"]
    rep["summary"] = summary
    failed = [k for k, v in rep["phases"].items() if v["status"] == "failed"]
    rep["status"] = "ok" if not failed else f"failed phases: {failed}"
    print(json.dumps(summary, indent=2))
    say(f"wrote {rep.path}")
    return 0 if not failed else 1


def _importable(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except Exception:
        return False


if __name__ == "__main__":
    sys.exit(main())
