"""Peak memory and throughput of `ntt-batch export` (formerly `merge`) versus the size of the shard set.

Synthesises shard sets in the exact output schema (``SHARD_SCHEMA``) with realistic instances —
100 per image (the default ``--max-detections``), COCO compressed-RLE strings of real object-like
masks (random ellipses and polygons on 640x480 images, 40-500 characters each), float32 scores —
then runs the streaming merge in both formats, each in a fresh subprocess, and prints the
subprocess's peak RSS (``VmHWM`` in /proc/self/status), its RSS before merging
(Python + pyarrow + pycocotools imported), wall time, instances/s and output size.

For contrast, the non-streaming path (``shards_to_coco_results``: load every shard, build every
entry, ``json.dump``) is measured on the smaller sets; its memory grows with the data.

    python benchmarks/merge_memory.py                         # 20k, 200k, 2M instances
    python benchmarks/merge_memory.py --instances 50000 --keep-dir /tmp/bench   # one size, keep files

Not part of the test suite (it writes several GB and takes minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np


def _status_mb(key: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process in MB, from /proc (Linux).

    Not ``getrusage().ru_maxrss``: on Linux that inherits the parent's peak across fork + exec,
    so a child would report the memory the parent used to synthesise the shards.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # kB
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


def make_rle_pool(n: int = 512, seed: int = 0, h: int = 480, w: int = 640) -> list[str]:
    """``n`` COCO compressed-RLE strings of blob-like masks of various sizes (realistic lengths)."""
    from PIL import Image, ImageDraw

    from ntt_batch.storage.masks import encode_rle

    rng = np.random.default_rng(seed)
    pool = []
    for _ in range(n):
        img = Image.new("L", (w, h), 0)
        d = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(1, 4))):
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            r = rng.uniform(8, 200)
            if rng.random() < 0.5:
                d.ellipse([cx - r, cy - r * rng.uniform(0.3, 1.5), cx + r, cy + r * rng.uniform(0.3, 1.5)], fill=1)
            else:
                k = int(rng.integers(5, 12))
                ang = np.sort(rng.uniform(0, 2 * np.pi, k))
                rad = r * rng.uniform(0.4, 1.0, k)
                d.polygon([(cx + a * np.cos(t), cy + a * np.sin(t)) for a, t in zip(rad, ang)], fill=1)
        pool.append(encode_rle(np.asarray(img) > 0)["counts"])
    return pool


def write_shard_set(
    root: str, n_images: int, per_image: int, images_per_file: int, row_group: int, seed: int = 0
) -> dict:
    """Write ``n_images`` rows (``per_image`` instances each) as Parquet files; return sizes."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from ntt_batch.output.shards import INSTANCE_TYPE, SEGMENTATION_TYPE, SHARD_SCHEMA

    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(seed)
    pool = pa.array(make_rle_pool(seed=seed), pa.string())
    names = pa.array([f"class_{i}" for i in range(80)], pa.string())
    total_bytes = 0
    for f, start in enumerate(range(0, n_images, images_per_file)):
        n = min(images_per_file, n_images - start)
        m = n * per_image
        cat = rng.integers(0, 80, m).astype(np.int32)
        bbox = rng.uniform(0, 400, (m, 4))
        seg = pa.StructArray.from_arrays(
            [
                pa.ListArray.from_arrays(
                    pa.array(np.arange(0, 2 * m + 1, 2, dtype=np.int32)),
                    pa.array(np.tile(np.array([480, 640], np.int32), m)),
                ),
                pc.take(pool, pa.array(rng.integers(0, len(pool), m))),
            ],
            fields=list(SEGMENTATION_TYPE),
        )
        values = pa.StructArray.from_arrays(
            [
                pa.array(cat + 1),
                pc.take(names, pa.array(cat)),
                pa.array(rng.random(m).astype(np.float32)),
                pa.ListArray.from_arrays(pa.array(np.arange(0, 4 * m + 1, 4, dtype=np.int32)), pa.array(bbox.ravel())),
                pa.array(rng.integers(100, 50000, m)),
                seg,
            ],
            fields=list(INSTANCE_TYPE),
        )
        instances = pa.ListArray.from_arrays(pa.array(np.arange(0, m + 1, per_image, dtype=np.int32)), values)
        ids = np.arange(start, start + n, dtype=np.int64) + 1
        table = pa.Table.from_arrays(
            [
                pa.array(ids),
                pa.array([f"s3://bucket/images/{i:012d}.jpg" for i in ids]),
                pa.array(np.full(n, 640, np.int32)),
                pa.array(np.full(n, 480, np.int32)),
                pa.array(["ok"] * n),
                pa.array([None] * n, pa.string()),
                pa.array(np.full(n, per_image, np.int32)),
                instances,
                pa.array(["bench"] * n),
            ],
            schema=SHARD_SCHEMA,
        )
        path = os.path.join(root, f"part-{f:05d}.parquet")
        pq.write_table(table, path, row_group_size=row_group, use_dictionary=False)
        total_bytes += os.path.getsize(path)
    return {"files": (n_images + images_per_file - 1) // images_per_file, "parquet_bytes": total_bytes}


def shards_to_coco_results(shards: str) -> list[dict]:
    """The load-everything baseline: every shard read whole, every result built in memory."""
    from ntt_batch.output.shards import read_shards

    t = read_shards(shards, columns=["image_id", "instances"])
    results = []
    for image_id, instances in zip(t.column("image_id").to_pylist(), t.column("instances").to_pylist()):
        for inst in instances or []:
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(inst["category_id"]),
                    "bbox": inst["bbox"],
                    "score": float(inst["score"]),
                    "segmentation": inst["segmentation"],
                }
            )
    return results


def child(mode: str, shards: str, out: str) -> None:
    """Run one merge in this (fresh) process; print a JSON line with its figures."""
    from ntt_batch import exports as merge_mod

    before = _status_mb("VmRSS")
    t0 = time.perf_counter()
    if mode == "results":
        s = merge_mod.merge_results(shards, out)
        n = s.instances_written
    elif mode == "dataset":
        s = merge_mod.merge_dataset(shards, out)
        n = s.instances_written
    elif mode == "naive":
        res = shards_to_coco_results(shards)
        with open(out, "w") as f:
            json.dump(res, f)
        n = len(res)
    else:
        raise SystemExit(f"unknown mode {mode}")
    dt = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "mode": mode,
                "instances": n,
                "seconds": round(dt, 2),
                "rss_before_mb": round(before, 1),
                "peak_rss_mb": round(_status_mb("VmHWM"), 1),
                "out_bytes": os.path.getsize(out),
            }
        )
    )


def run_child(mode: str, shards: str, out: str) -> dict:
    p = subprocess.run([sys.executable, __file__, "--child", mode, shards, out], capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(p.stderr)
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instances", type=int, nargs="*", default=[20_000, 200_000, 2_000_000])
    ap.add_argument("--per-image", type=int, default=100)
    ap.add_argument("--images-per-file", type=int, default=1000)
    ap.add_argument("--row-group", type=int, default=128, help="rows per Parquet row group")
    ap.add_argument(
        "--naive-max", type=int, default=200_000, help="largest size to also run the non-streaming baseline on"
    )
    ap.add_argument("--keep-dir", default=None, help="write here and keep the files (default: a temp dir, removed)")
    ap.add_argument("--child", nargs=3, metavar=("MODE", "SHARDS", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    base = args.keep_dir or tempfile.mkdtemp(prefix="ntt-merge-bench-")
    os.makedirs(base, exist_ok=True)
    print(
        f"{'instances':>10} {'images':>7} {'parquet MB':>10} {'mode':>8} {'seconds':>8} {'inst/s':>9} "
        f"{'out MB':>8} {'RSS before MB':>13} {'peak RSS MB':>11}"
    )
    try:
        for total in args.instances:
            n_images = max(1, total // args.per_image)
            shards = os.path.join(base, f"shards_{total}")
            if not os.path.isdir(shards):
                info = write_shard_set(shards, n_images, args.per_image, args.images_per_file, args.row_group)
            else:
                info = {"parquet_bytes": sum(os.path.getsize(os.path.join(shards, f)) for f in os.listdir(shards))}
            modes = ["results", "dataset"] + (["naive"] if total <= args.naive_max else [])
            for mode in modes:
                out = os.path.join(base, f"{mode}_{total}.json")
                r = run_child(mode, shards, out)
                print(
                    f"{r['instances']:>10} {n_images:>7} {info['parquet_bytes'] / 1e6:>10.1f} {mode:>8} "
                    f"{r['seconds']:>8.2f} "
                    f"{r['instances'] / max(r['seconds'], 1e-9):>9.0f} {r['out_bytes'] / 1e6:>8.1f} "
                    f"{r['rss_before_mb']:>13.1f} {r['peak_rss_mb']:>11.1f}",
                    flush=True,
                )
                if not args.keep_dir:
                    os.remove(out)
            if not args.keep_dir:
                shutil.rmtree(shards)
    finally:
        if not args.keep_dir:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
