"""Peak host memory of segmenting one large image: full-resolution merge (before) vs bounded (after).

Each case runs in a fresh subprocess, which loads the tiny random-weight models
(``sam2.1_hiera_tiny`` + ``dinov2_vits14``, written by ``write_random_checkpoint``), builds a
random 5-class bank, synthesises the image in memory (a textured scene with rectangles and
disks), segments it with ``MethodSegmenter.segment_images`` and encodes every instance as the batch
job's actor writes it (``instance_record``: COCO RLE). It reports its ``VmRSS`` just before
segmenting (Python + torch + models + the image) and its peak RSS (``VmHWM``) from there on: the
peak is reset once the models are loaded and the image is made, so neither's temporaries count.

Paths:

* ``reference`` — ``implementation="reference"``, which keeps the old §4.6-4.8: every NMS
  survivor upsampled to full size as float32, float32 Gram matrix, dense output masks ("before");
* ``fast`` — the default path: chunked exact upsampling to runs, integer intersection counts,
  RLE output (``ntt_batch/method/fullres.py``; "after").

Many candidates: ``pred_iou_threshold 0`` and ``nms_iou_threshold 1`` keep every prompt's mask
(the random SAM2's masks overlap heavily, so NMS would otherwise remove most), and
``points_per_side 8`` gives 64 prompts. A case that would need more memory than this machine can
give is run under an address-space cap (``--cap-gb``, default: 80 % of MemAvailable): if it
fails there, the table says so (its peak is then above the cap).

    python benchmarks/large_image_memory.py                       # 0.3, 12 and 50 MP, both paths
    python benchmarks/large_image_memory.py --sizes 12 --paths fast --points-per-side 16

Not part of the test suite (minutes; several GB for the reference path).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

# (H, W): a COCO-sized baseline, 12.0 MP (4:3) and 50.0 MP (3:2)
SIZES = {"0.3": (480, 640), "12": (3000, 4000), "50": (5774, 8660)}


def _status_mb(key: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process in MiB, from /proc (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


def _reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _mem_available_gb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return 8.0


def synthetic_image(h: int, w: int, seed: int = 0):
    """A [h, w, 3] uint8 scene: smooth colour gradients, 300 rectangles and 200 disks (cheap to make)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), dtype=np.uint8)
    ys = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    xs = np.linspace(0, 1, w, dtype=np.float32)[None, :]
    for c in range(3):
        img[:, :, c] = (60 + 80 * np.sin(6 * xs + 2 * c) * np.cos(4 * ys + c) + 60).clip(0, 255).astype(np.uint8)
    for _ in range(300):
        y, x = int(rng.integers(0, h - 10)), int(rng.integers(0, w - 10))
        img[y : y + int(rng.integers(10, h // 8)), x : x + int(rng.integers(10, w // 8))] = rng.integers(0, 256, 3)
    for _ in range(200):
        cy, cx, r = int(rng.integers(0, h)), int(rng.integers(0, w)), int(rng.integers(5, min(h, w) // 12))
        y0, y1, x0, x1 = max(0, cy - r), min(h, cy + r), max(0, cx - r), min(w, cx + r)
        yy, xx = np.ogrid[y0:y1, x0:x1]
        img[y0:y1, x0:x1][(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(0, 256, 3)
    return img


def child(spec: dict) -> None:
    """One case in this fresh process; prints a JSON line."""
    if spec.get("cap_bytes"):
        resource.setrlimit(resource.RLIMIT_AS, (spec["cap_bytes"], spec["cap_bytes"]))
    import torch

    torch.set_num_threads(spec["threads"])
    from ntt_batch.benchmark import random_bank
    from ntt_batch.method.config import SegmenterConfig
    from ntt_batch.method.segmenter import MethodSegmenter
    from ntt_batch.models.loading import load_encoder, load_sam2
    from ntt_batch.pipeline.stages import instance_record

    proposer, _ = load_sam2("sam2.1_hiera_tiny", checkpoint_dir=spec["ckpt"], download=False)
    encoder, _ = load_encoder("dinov2_vits14", checkpoint_dir=spec["ckpt"], download=False)
    cfg = SegmenterConfig(
        points_per_side=spec["points_per_side"],
        pred_iou_threshold=0.0,
        nms_iou_threshold=1.0,
        device="cpu",
        implementation=spec["path"],
        tile_size=spec.get("tile_size"),
    )
    seg = MethodSegmenter(proposer, encoder, random_bank("dinov2_vits14", 384, num_classes=5), cfg)
    if spec["path"] == "fast":
        seg.dense_masks = False  # as the batch job's actor: rows carry RLE only
    captured = {"survivors": 0, "finalize_peak_mb": 0.0, "peak_mb": 0.0}
    finalize = MethodSegmenter._finalize

    def spy(self, logits, keep, *rest):
        # §4.6-4.8 alone: the peak above the RSS at its start (the model forwards' peak is before)
        captured["survivors"] += int(keep.numel())
        captured["peak_mb"] = max(captured["peak_mb"], _status_mb("VmHWM"))
        start = _status_mb("VmRSS")
        _reset_peak()
        try:
            return finalize(self, logits, keep, *rest)
        finally:
            hwm = _status_mb("VmHWM")
            captured["peak_mb"] = max(captured["peak_mb"], hwm)
            captured["finalize_peak_mb"] = max(captured["finalize_peak_mb"], hwm - start)

    MethodSegmenter._finalize = spy
    image = synthetic_image(*spec["hw"])
    _reset_peak()  # the peak from here on: not the image synthesis's temporaries nor the model loading
    before = _status_mb("VmRSS")
    t0 = time.perf_counter()
    status = "ok"
    n = 0
    try:
        (instances,) = seg.segment_images([image])
        records = [instance_record(i) for i in instances]
        n = len(records)
    except (MemoryError, RuntimeError) as e:  # the cap: an allocation refused
        status = f"failed at the cap: {type(e).__name__}: {str(e)[:120]}"
    dt = time.perf_counter() - t0
    from ntt_batch.method.fullres import image_memory_estimate

    print(
        json.dumps(
            {
                "status": status,
                "instances": n,
                "survivors": captured["survivors"],
                "seconds": round(dt, 1),
                "rss_before_mb": round(before, 1),
                "peak_rss_mb": round(max(captured["peak_mb"], _status_mb("VmHWM")), 1),
                "finalize_peak_mb": round(captured["finalize_peak_mb"], 1),
                "estimate_mb": round(image_memory_estimate(spec["hw"], cfg) / 2**20, 1),
            }
        )
    )


def run_child(spec: dict) -> dict:
    p = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    lines = [ln for ln in p.stdout.strip().splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        return {
            "status": f"process died (exit {p.returncode}; killed for memory?) {p.stderr.strip()[-300:]}",
            "instances": 0,
            "survivors": None,
            "seconds": None,
            "rss_before_mb": None,
            "peak_rss_mb": None,
            "finalize_peak_mb": None,
            "estimate_mb": None,
        }
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="*", default=list(SIZES), choices=list(SIZES), help="megapixels")
    ap.add_argument("--paths", nargs="*", default=["reference", "fast"], choices=["reference", "fast"])
    ap.add_argument("--points-per-side", type=int, default=8)
    ap.add_argument("--tile-size", type=int, default=None, help="also run the fast path tiled (tile_size px)")
    ap.add_argument("--threads", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    ap.add_argument(
        "--cap-gb", type=float, default=None, help="address-space cap per case (default: 80%% of MemAvailable)"
    )
    ap.add_argument("--ckpt", default=None, help="random checkpoints folder (default: written to a temp dir)")
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    ckpt = args.ckpt
    if ckpt is None:
        from ntt_batch.models.loading import write_random_checkpoint

        ckpt = tempfile.mkdtemp(prefix="ntt-ckpt-")
        for name in ("sam2.1_hiera_tiny", "dinov2_vits14"):
            write_random_checkpoint(name, ckpt, seed=0)
    cap_gb = args.cap_gb or 0.8 * _mem_available_gb()
    cases = [(mp, path, None) for mp in args.sizes for path in args.paths]
    if args.tile_size:
        cases += [(mp, "fast", args.tile_size) for mp in args.sizes]
    print(
        f"points_per_side {args.points_per_side}, pred_iou_threshold 0, nms_iou_threshold 1; "
        f"{args.threads} threads; cap {cap_gb:.1f} GB"
    )
    header = (
        f"{'image':>18} {'path':>14} {'survivors':>9} {'instances':>9} {'seconds':>8} "
        f"{'RSS before MB':>13} {'peak RSS MB':>11} {'§4.6-4.8 peak MB':>16} {'guard est. MB':>13}  status"
    )
    print(header)
    rows = []
    for mp, path, tile in cases:
        h, w = SIZES[mp]
        spec = {
            "hw": [h, w],
            "path": path,
            "points_per_side": args.points_per_side,
            "threads": args.threads,
            "ckpt": ckpt,
            "tile_size": tile,
            "cap_bytes": int(cap_gb * 2**30),
        }
        r = run_child(spec)
        r.update(megapixels=mp, height=h, width=w, path=path + (f" tiled {tile}" if tile else ""))
        rows.append(r)
        fmt = lambda v, f: format(v, f) if v is not None else "-"  # noqa: E731
        print(
            f"{f'{w}x{h} ({mp} MP)':>18} {r['path']:>14} {fmt(r['survivors'], '>9')} {r['instances']:>9} "
            f"{fmt(r['seconds'], '>8.1f')} {fmt(r['rss_before_mb'], '>13.0f')} {fmt(r['peak_rss_mb'], '>11.0f')} "
            f"{fmt(r['finalize_peak_mb'], '>16.0f')} {fmt(r['estimate_mb'], '>13.0f')}  {r['status']}",
            flush=True,
        )
    for mp in args.sizes:
        ref = next((r for r in rows if r["megapixels"] == mp and r["path"] == "reference"), None)
        fast = next((r for r in rows if r["megapixels"] == mp and r["path"] == "fast"), None)
        if ref and fast and fast["peak_rss_mb"]:
            if ref["status"] == "ok":
                above = (ref["peak_rss_mb"] - ref["rss_before_mb"]) / max(
                    1.0, fast["peak_rss_mb"] - fast["rss_before_mb"]
                )
                print(
                    f"{mp} MP: peak RSS reference / fast = {ref['peak_rss_mb'] / fast['peak_rss_mb']:.1f}x; "
                    "above the pre-segmentation RSS: "
                    f"{above:.1f}x; "
                    f"§4.6-4.8 alone: {ref['finalize_peak_mb'] / max(1.0, fast['finalize_peak_mb']):.1f}x"
                )
            else:
                print(
                    f"{mp} MP: reference did not complete under a {cap_gb:.1f} GB cap; fast peaked at "
                    f"{fast['peak_rss_mb'] / 1024:.2f} GiB"
                )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
