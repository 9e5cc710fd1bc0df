"""Lake-native inputs (issue 17): the same images three ways on a slow S3, against today's per-object path.

A real S3 API (moto's server, in its own process) behind a latency-injecting TCP proxy (its own
process: every HTTP request waits ``--latency-ms`` before it is forwarded; GET, LIST and HEAD
requests are counted), holding the same ``--images`` COCO images (the shared sample, repeated under
new names) three ways:

* one object each (``s3://bench/objs/<n>.jpg``);
* WebDataset shards of ``--shard-size`` samples, img2dataset's layout (``key.jpg``, ``key.json``,
  ``key.txt``), read through ``{00000..000NN}.tar`` (no listing);
* Parquet tables of ``--shard-size`` rows (``key`` + ``jpg`` bytes columns, as img2dataset writes).

Measured, in one run:

1. **read + decode stage, images/s per task** (one process) and **per 2 cores** (two processes,
   each half the inputs): today's per-object path (``decode_batch_sequential``: one blocking
   ``open`` + ``read`` per image, batches of 2 as ``batch_size`` defaults to) on the first
   ``--baseline-images``; the new per-object path (``decode_batch``: ``read_concurrency`` 16, batches
   of 16); the shards and the table (``shard_plan.read_shard_batch`` → ``decode_batch``, the
   job's own stages). Requests per 1,000 images from the proxy's counts.
2. **planning 1M samples in 1,000 shards** (fresh output): ``plan_shards`` over
   ``s3://bench/plan/{00000..00999}.tar`` (nothing listed, nothing opened), and over a glob of
   1,000 tiny objects (one LIST page); against today's planning of 1M object inputs:
   ``plan_inputs`` over a 1M-row Parquet manifest (its best case: no listing) plus, for a listed
   prefix, 1,000 LIST pages (measured per page through the proxy, times 1,000).
3. **resume after half the shards are done**: a local output holding 500k committed rows (the 500
   first shards' samples, rows in the output schema with 1-6 RLE instances each, committed by
   ``output.parts``, as ``benchmarks/scale.py`` builds them) and those shards' census; timed:
   ``scan_output`` + ``plan_shards`` (what a rerun does before Ray starts); against today's
   ``scan_output`` + ``plan_inputs`` over a manifest of the same 1M URIs.

    python benchmarks/lake_inputs.py                           # defaults: 2,000 images, 20 ms
    python benchmarks/lake_inputs.py --images 400 --plan-samples 100000 --quick

Not a test. Prints a Markdown table (and ``--json FILE``).
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import platform
import socket
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BUCKET = "bench"
COUNTERS = ("GET", "LIST", "HEAD", "OTHER")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- S3 + latency proxy


def _moto_main(port: int, ready) -> None:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    ready.set()
    while True:
        time.sleep(3600)


_METHODS = (b"GET", b"HEAD", b"PUT", b"POST", b"DELETE")


def _classify(head: bytes) -> int:
    line = head.split(b"\r\n", 1)[0]
    parts = line.split(b" ")
    method, target = parts[0], parts[1] if len(parts) > 1 else b"/"
    path, _, query = target.partition(b"?")
    if method == b"HEAD":
        return 2
    if method == b"GET":
        key = path.lstrip(b"/").partition(b"/")[2]
        return 1 if (not key or b"list-type" in query) else 0
    return 3


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(1 << 16)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _proxy_conn(client: socket.socket, upstream: int, latency: float, counts) -> None:
    up = socket.create_connection(("127.0.0.1", upstream))
    for s in (client, up):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    threading.Thread(target=_pump, args=(up, client), daemon=True).start()
    try:
        while True:
            data = client.recv(1 << 16)
            if not data:
                break
            if data.split(b" ", 1)[0] in _METHODS:  # a request starts: count it, then hold it back
                with counts.get_lock():
                    counts[_classify(data)] += 1
                time.sleep(latency)
            up.sendall(data)
    except OSError:
        pass
    finally:
        try:
            up.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _proxy_main(port: int, upstream: int, latency: float, counts, ready) -> None:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(512)
    ready.set()
    while True:
        c, _ = srv.accept()
        threading.Thread(target=_proxy_conn, args=(c, upstream, latency, counts), daemon=True).start()


class Lake:
    """moto (direct endpoint, for uploads) and the slow proxy in front of it (for the measured reads)."""

    def __init__(self, latency_ms: float):
        ctx = mp.get_context("spawn")
        self.moto_port, self.proxy_port = free_port(), free_port()
        self.counts = ctx.Array("q", len(COUNTERS))
        r1, r2 = ctx.Event(), ctx.Event()
        self.procs = [
            ctx.Process(target=_moto_main, args=(self.moto_port, r1), daemon=True),
            ctx.Process(
                target=_proxy_main,
                args=(self.proxy_port, self.moto_port, latency_ms / 1000, self.counts, r2),
                daemon=True,
            ),
        ]
        for p in self.procs:
            p.start()
        r1.wait(60)
        r2.wait(60)

    def options(self, *, direct: bool = False) -> dict:
        port = self.moto_port if direct else self.proxy_port
        return {
            "key": "testing",
            "secret": "testing-secret",
            "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}", "region_name": "us-east-1"},
        }

    def reset(self) -> None:
        with self.counts.get_lock():
            for i in range(len(COUNTERS)):
                self.counts[i] = 0

    def snapshot(self) -> dict:
        return dict(zip(COUNTERS, list(self.counts)))

    def close(self) -> None:
        for p in self.procs:
            p.terminate()


# ----------------------------------------------------------------------------- data


def coco_images() -> list[Path]:
    root = Path(os.environ.get("NTT_SHARED_DATA", REPO.parent / "shared" / "data")) / "coco_mini" / "val2017"
    found = sorted(root.glob("*.jpg"))
    if not found:
        sys.exit(f"no COCO images under {root} (set NTT_SHARED_DATA)")
    return found


def upload(lake: Lake, n: int, shard_size: int) -> dict:
    import boto3
    import pyarrow as pa
    import pyarrow.parquet as pq

    s3 = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{lake.moto_port}",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing-secret",
    )
    s3.create_bucket(Bucket=BUCKET)
    src = coco_images()
    blobs = [src[i % len(src)].read_bytes() for i in range(n)]
    objs = []
    for i, b in enumerate(blobs):
        key = f"objs/{i:09d}.jpg"
        s3.put_object(Bucket=BUCKET, Key=key, Body=b)
        objs.append(f"s3://{BUCKET}/{key}")
    shards, tables = [], []
    for s, start in enumerate(range(0, n, shard_size)):
        part = blobs[start : start + shard_size]
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for i, b in enumerate(part):
                key = f"{start + i:09d}"
                meta = json.dumps({"key": key, "status": "success"}).encode()
                for name, data in ((f"{key}.jpg", b), (f"{key}.json", meta), (f"{key}.txt", b"a caption")):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        s3.put_object(Bucket=BUCKET, Key=f"wds/{s:05d}.tar", Body=buf.getvalue())
        shards.append(f"s3://{BUCKET}/wds/{s:05d}.tar")
        t = pa.table({"key": [f"{start + i:09d}" for i in range(len(part))], "jpg": part})
        sink = pa.BufferOutputStream()
        pq.write_table(t, sink, row_group_size=shard_size)
        s3.put_object(Bucket=BUCKET, Key=f"table/part-{s:05d}.parquet", Body=sink.getvalue().to_pybytes())
        tables.append(f"s3://{BUCKET}/table/part-{s:05d}.parquet")
    for i in range(1000):  # tiny objects for the listing and glob measurements
        s3.put_object(Bucket=BUCKET, Key=f"plan/{i:05d}.tar", Body=b"")
    return {
        "objects": objs,
        "shards": shards,
        "tables": tables,
        "bytes_per_image": sum(map(len, blobs)) / n,
    }


# ----------------------------------------------------------------------------- the read + decode stage


def _work(args: tuple) -> int:
    """One decode task's work (run in this process or a pool worker): returns the images decoded."""
    mode, items, options, conc = args
    import numpy as np

    from ntt_batch.pipeline.stages import decode_batch, decode_batch_sequential

    done = 0
    if mode in ("old", "new"):
        batch = 2 if mode == "old" else 16
        for i in range(0, len(items), batch):
            b = {"image_id": np.arange(i, i + len(items[i : i + batch])), "image_uri": np.array(items[i : i + batch])}
            if mode == "old":
                out = decode_batch_sequential(b, storage_options=options, max_pixels=10**8)
            else:
                out = decode_batch(b, storage_options=options, max_pixels=10**8, read_concurrency=conc)
            assert not any(out["error"]), [e for e in out["error"] if e][:2]
            done += len(out["error"])
        return done
    from ntt_batch.pipeline.shard_plan import read_shard_batch

    kind = {"wds": "webdataset", "table": "table"}[mode]
    settings = {"images": items[0]} if kind == "webdataset" else {"table": items[0], "image_column": "jpg"}
    with tempfile.TemporaryDirectory() as out_dir:
        for shard in items:
            for chunk in read_shard_batch(
                {"shard": [shard], "done_keys": [[]]},
                kind=kind,
                settings=settings,
                out=out_dir,
                storage_options=options,
                run_id="bench",
            ):
                out = decode_batch(chunk, storage_options=options, max_pixels=10**8)
                assert not any(out["error"]), [e for e in out["error"] if e][:2]
                done += len(out["error"])
    return done


def measure_stage(lake: Lake, name: str, mode: str, items: list[str], *, images: int, procs: int) -> dict:
    opts = lake.options()
    lake.reset()
    t0 = time.perf_counter()
    if procs == 1:
        _warm(0)
        lake.reset()
        t0 = time.perf_counter()
        n = _work((mode, items, opts, 16))
    else:
        halves = [items[i::procs] for i in range(procs)]
        with mp.get_context("spawn").Pool(procs) as pool:
            warm = pool.map(_warm, range(procs))  # imports done before the clock matters
            assert all(warm)
            lake.reset()
            t0 = time.perf_counter()
            n = sum(pool.map(_work, [(mode, h, opts, 16) for h in halves]))
    dt = time.perf_counter() - t0
    counts = lake.snapshot()
    assert n == images, (name, n, images)
    per_k = {k: round(v * 1000 / n, 1) for k, v in counts.items()}
    return {"case": name, "procs": procs, "images": n, "seconds": round(dt, 2), "images_per_s": round(n / dt, 1)} | {
        f"{k}_per_1000": v for k, v in per_k.items()
    }


def _warm(_: int) -> bool:
    import ntt_batch.pipeline.shard_plan  # noqa: F401
    import ntt_batch.pipeline.stages  # noqa: F401

    return True


# ----------------------------------------------------------------------------- planning and resume


def plan_measurements(lake: Lake, work: Path, samples: int, shards: int) -> dict:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ntt_batch.output.folder import STAGING, OutputFolder
    from ntt_batch.output.parts import RunRecord, commit_staging
    from ntt_batch.pipeline.plan import OutputScan, plan_inputs, scan_output
    from ntt_batch.pipeline.shard_plan import load_records, plan_shards, write_census
    from ntt_batch.sources import InputSpec
    from ntt_batch.sources.ids import HashAccumulator
    from ntt_batch.sources.listing import iter_listing
    from ntt_batch.sources.shards import ShardCensus

    sys.path.insert(0, str(REPO / "benchmarks"))
    from scale import synth_rows

    per = samples // shards
    res: dict = {"samples": samples, "shards": shards}
    opts = lake.options()
    width = max(5, len(str(shards - 1)))
    pattern = f"s3://{BUCKET}/plan/{{{0:0{width}d}..{shards - 1:0{width}d}}}.tar"

    # fresh plans: shards (brace pattern: nothing listed; a glob: one LIST page per 1,000 shards)
    lake.reset()
    t0 = time.perf_counter()
    plan = plan_shards(InputSpec(images=pattern), opts, OutputScan(), folder=None, run_id="p")
    res["fresh_shards_brace_s"] = round(time.perf_counter() - t0, 3)
    res["fresh_shards_brace_requests"] = sum(lake.snapshot().values())
    assert len(plan.to_read) == shards
    lake.reset()
    t0 = time.perf_counter()
    plan = plan_shards(InputSpec(images=f"s3://{BUCKET}/plan/*.tar"), opts, OutputScan(), folder=None, run_id="p")
    res["fresh_shards_glob_s"] = round(time.perf_counter() - t0, 3)
    res["fresh_shards_glob_requests"] = lake.snapshot()
    res["fresh_shards_glob_shards"] = len(plan.to_read)

    # today: 1M objects. The listing: LIST pages through the proxy (1,000 keys each), times samples/1000
    lake.reset()
    t0 = time.perf_counter()
    listed = sum(b.num_rows for b in iter_listing(f"s3://{BUCKET}/objs/", opts)) + sum(
        b.num_rows for b in iter_listing(f"s3://{BUCKET}/plan/", opts)
    )
    dt = time.perf_counter() - t0
    pages = lake.snapshot()["LIST"]
    res["list_page_s"] = round(dt / max(pages, 1), 4)
    res["list_pages_measured"] = pages
    res["listed_measured"] = listed
    res["today_list_1m_s_est"] = round(res["list_page_s"] * samples / 1000, 1)

    uris = [
        f"s3://{BUCKET}/plan/{s:0{width}d}.tar#{k:09d}" for s in range(shards) for k in range(s * per, (s + 1) * per)
    ]
    manifest = work / "manifest.parquet"
    pq.write_table(pa.table({"image_uri": uris}), manifest)
    t0 = time.perf_counter()
    plan = plan_inputs(InputSpec(manifest=str(manifest)), None, OutputScan(), folder=None, run_id="p", sample=0)
    res["fresh_objects_manifest_s"] = round(time.perf_counter() - t0, 2)

    # resume after half the shards: 500k committed rows + the census of those shards
    out = work / "out"
    folder = OutputFolder(str(out))
    run_id = "20261207T000000Z-lakebench"
    staging = folder.staging(run_id)
    os.makedirs(staging, exist_ok=True)
    half = uris[: (shards // 2) * per]
    for i, start in enumerate(range(0, len(half), 100_000)):
        pq.write_table(synth_rows(half[start : start + 100_000], seed=i, run_id=run_id), f"{staging}/s-{i:04d}.parquet")
    record = RunRecord(folder, {"format": "ntt-batch/run", "layout": 2, "attempts": []})
    commit_staging(
        folder,
        folder.files_under(f"{STAGING}/{run_id}", ".parquet"),
        run_id=run_id,
        seen=HashAccumulator(),
        update_run=record.update,
        final=True,
        target_bytes=512 << 20,
    )
    folder.rmdir_tree(STAGING)
    for s in range(shards // 2):
        c = ShardCensus(f"s3://{BUCKET}/plan/{s:0{width}d}.tar", samples=per, emitted=per)
        write_census(folder, run_id, c)
    load_records(folder, consolidate=True)
    res["resume_rows_committed"] = len(half)
    res["resume_parts"] = len(folder.parts())

    run = folder.read_run()
    lake.reset()
    t0 = time.perf_counter()
    scan = scan_output(folder, run["parts"])
    t_scan = time.perf_counter() - t0
    plan = plan_shards(InputSpec(images=pattern), opts, scan, folder=folder, run_id="resume")
    res["resume_shards_s"] = round(time.perf_counter() - t0, 2)
    res["resume_shards_scan_s"] = round(t_scan, 2)
    res["resume_shards_requests"] = sum(lake.snapshot().values())
    assert plan.complete == shards // 2 and len(plan.to_read) == shards - shards // 2, plan.describe()

    t0 = time.perf_counter()
    scan = scan_output(folder, run["parts"])
    t_scan = time.perf_counter() - t0
    todo = OutputFolder(str(work / "todo-out"))
    plan = plan_inputs(InputSpec(manifest=str(manifest)), None, scan, folder=todo, run_id="resume", sample=0)
    res["resume_objects_s"] = round(time.perf_counter() - t0, 2)
    res["resume_objects_scan_s"] = round(t_scan, 2)
    assert plan.already_done == len(half) and plan.to_process == samples - len(half)
    del np
    return res


# ----------------------------------------------------------------------------- report


def report(r: dict) -> str:
    base1 = r["stage"]["old/1"]["images_per_s"]
    base2 = r["stage"]["old/2"]["images_per_s"]
    lines = [
        f"Latency {r['latency_ms']} ms per request (proxy in front of moto on loopback); {r['images']} COCO "
        f"images (~{r['bytes_per_image'] / 1e3:.0f} kB each); shards and tables of {r['shard_size']}; "
        f"{r['machine']}.",
        "",
        "| read + decode stage | images/s per task | vs today | images/s on 2 cores | vs today | "
        "GET / 1,000 images | HEAD / 1,000 | LIST / 1,000 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    names = {
        "old": "one object each, today (sequential open+read)",
        "new": "one object each, 16 reads in flight",
        "wds": f"WebDataset shards of {r['shard_size']}",
        "table": f"Parquet tables of {r['shard_size']} rows",
    }
    for mode, label in names.items():
        a, b = r["stage"][f"{mode}/1"], r["stage"][f"{mode}/2"]
        lines.append(
            f"| {label} | {a['images_per_s']} | {a['images_per_s'] / base1:.1f}× | {b['images_per_s']} | "
            f"{b['images_per_s'] / base2:.1f}× | {a['GET_per_1000']} | {a['HEAD_per_1000']} | {a['LIST_per_1000']} |"
        )
    p = r["plan"]
    lines += [
        "",
        f"| planning {p['samples']:,} samples in {p['shards']:,} shards | seconds | requests |",
        "|---|---|---|",
        f"| shards, brace pattern (fresh output) | {p['fresh_shards_brace_s']} | {p['fresh_shards_brace_requests']} |",
        f"| shards, glob over {p['fresh_shards_glob_shards']} objects (fresh output) | {p['fresh_shards_glob_s']} | "
        f"{p['fresh_shards_glob_requests']['LIST']} LIST |",
        f"| today: {p['samples']:,} objects from a Parquet manifest (fresh output) | "
        f"{p['fresh_objects_manifest_s']} | - |",
        f"| today: listing a {p['samples']:,}-object prefix (~{p['list_page_s'] * 1000:.0f} ms per LIST page "
        f"measured over {p['list_pages_measured']} pages, × {p['samples'] // 1000:,}) | ~{p['today_list_1m_s_est']} | "
        f"{p['samples'] // 1000:,} LIST |",
        f"| **resume**, shards: {p['resume_rows_committed']:,} rows committed in {p['resume_parts']} part(s), "
        f"{p['shards'] // 2} shards complete (scan {p['resume_shards_scan_s']} s + plan) | {p['resume_shards_s']} | "
        f"{p['resume_shards_requests']} |",
        f"| resume, today: the same output, a manifest of the same {p['samples']:,} URIs (scan "
        f"{p['resume_objects_scan_s']} s + plan) | {p['resume_objects_s']} | - |",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--baseline-images", type=int, default=200, help="images today's sequential path reads")
    ap.add_argument("--plan-samples", type=int, default=1_000_000)
    ap.add_argument("--plan-shards", type=int, default=1000)
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    lake = Lake(a.latency_ms)
    work = Path(a.work or tempfile.mkdtemp(prefix="lake-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        data = upload(lake, a.images, a.shard_size)
        r = {
            "latency_ms": a.latency_ms,
            "images": a.images,
            "shard_size": a.shard_size,
            "bytes_per_image": data["bytes_per_image"],
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start",
            "stage": {},
        }
        cases = {
            "old": data["objects"][: a.baseline_images],
            "new": data["objects"],
            "wds": data["shards"],
            "table": data["tables"],
        }
        for mode, items in cases.items():
            n = a.baseline_images if mode == "old" else a.images
            for procs in (1, 2):
                m = measure_stage(lake, mode, mode, items, images=n, procs=procs)
                r["stage"][f"{mode}/{procs}"] = m
                print(json.dumps(m), flush=True)
        r["plan"] = plan_measurements(lake, work, a.plan_samples, a.plan_shards)
        print(json.dumps(r["plan"]), flush=True)
        r["load_average_end"] = os.getloadavg()[0]
        print()
        print(report(r))
        if a.json:
            Path(a.json).write_text(json.dumps(r, indent=2))
    finally:
        lake.close()


if __name__ == "__main__":
    main()
