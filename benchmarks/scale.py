"""Data-lake scale of the batch job's driver (issue 10): the new code against the old, one run.

Five cases, each measured in a fresh subprocess (peak RSS = the subprocess's ``VmHWM``), with the
NEW code (this checkout, or ``--new-root``) and the OLD code (commit fc59ce1, ``--old-root``; make
it with ``git worktree add /tmp/ntt-old fc59ce1``) in the same run:

1. ``run --dry-run`` (``run_job(..., dry_run=True)``) on a 10M-row Parquet manifest
   (``s3://bucket/images/<12 digits>.jpg``, nothing is read): seconds and peak RSS.
   Target: <= 2 GB, <= 120 s.
2. Time to the first image dispatched on a 1M-row manifest: the real ``run_job`` (local Ray,
   2 CPUs) with a model stage that writes a timestamp file on its first call; the parent kills
   the process group as soon as the file appears. URIs are local paths that do not exist (the
   decode stage turns them into error rows at once). Target: <= 60 s from the ``run_job`` call.
3. Resume over a 1M-row output: a 1M-row output in ``SHARD_SCHEMA`` (1-6 instances per row,
   RLE strings 100-400 characters of random 6-bit characters, which compress like real masks
   do or worse) committed through the new path (staging files + ``output.parts.commit_staging``,
   so ``_ntt/run.json`` records the parts), then ``run_job(..., dry_run=True)`` over a manifest
   of the same 1M URIs (all done: 0 to process), and the full resume (``run_job`` with lease,
   recovery, scan, plan; exits without starting Ray since nothing is left). Target: <= 15 s.
4. File count of that output at the defaults (``target_file_mb=512``). Target: <= 100 files.
5. A duplicate near the end of a 10M-row manifest (the last row repeats row N-100): the dry run
   must raise ``DuplicateInputError`` naming it. Target: refused within 60 s.

The old code is run at smaller sizes where it would take too long or too much memory, and
extrapolated from two sizes (a straight line through both; for the O(N²) duplicate check a line
in N²). Every extrapolated figure is marked ``~`` and says from which sizes.

    python benchmarks/scale.py --json scale.json                 # the real figures (~20-30 min)
    python benchmarks/scale.py --quick                           # smoke version (small sizes, < 1 min idle)
    python benchmarks/scale.py --new-root /tmp/ntt-new --old-root /tmp/ntt-old --work /tmp/scale

Not part of the test suite. Needs ~4 GB of disk for the default sizes (under ``--work``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GB = 1 << 30

# ----------------------------------------------------------------------------- helpers (both sides)


def _status_mb(key: str) -> float:
    """VmRSS / VmHWM of this process in MB (not ru_maxrss: that inherits the parent's peak on fork)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def write_manifest(path: str, n: int, prefix: str, *, dup_at: int | None = None, chunk: int = 1_000_000) -> None:
    """A Parquet manifest of ``n`` URIs ``<prefix><12-digit number>.jpg`` written in chunks (column
    ``image_uri`` only). ``dup_at``: the last row repeats row ``dup_at``."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    schema = pa.schema([("image_uri", pa.string())])
    tmp = path + ".tmp"
    with pq.ParquetWriter(tmp, schema) as w:
        for start in range(0, n, chunk):
            nums = np.arange(start, min(n, start + chunk), dtype=np.int64) + 1
            if dup_at is not None and start + nums.size == n:
                nums[-1] = dup_at + 1
            digits = pc.utf8_lpad(pc.cast(pa.array(nums), pa.string()), 12, "0")
            uris = pc.binary_join_element_wise(prefix, digits, ".jpg", "")
            w.write_table(pa.table({"image_uri": uris}, schema=schema))
    os.replace(tmp, path)


def uri_list(prefix: str, start: int, n: int) -> list[str]:
    return [f"{prefix}{i:012d}.jpg" for i in range(start + 1, start + n + 1)]


def synth_rows(uris: list[str], seed: int, run_id: str = "bench"):
    """Rows in the exact output schema: 1-6 instances per image (1% error rows, 4% empty), each
    with an RLE string of 100-400 random characters from COCO's RLE alphabet (chr 48..111)."""
    import numpy as np
    import pyarrow as pa

    from ntt_batch.output.shards import INSTANCE_TYPE, SEGMENTATION_TYPE, SHARD_SCHEMA

    rng = np.random.default_rng(seed)
    n = len(uris)
    kind = rng.random(n)
    k = rng.integers(1, 7, n).astype(np.int32)
    k[kind < 0.05] = 0
    status = np.where(kind < 0.01, "error", np.where(kind < 0.05, "empty", "ok"))
    m = int(k.sum())
    lens = rng.integers(100, 401, m)
    offs = np.zeros(m + 1, np.int32)
    np.cumsum(lens, out=offs[1:])
    chars = rng.integers(48, 112, int(offs[-1]), dtype=np.uint8)
    counts = pa.StringArray.from_buffers(m, pa.py_buffer(offs.tobytes()), pa.py_buffer(chars.tobytes()))
    cat = rng.integers(0, 80, m).astype(np.int32)
    names = pa.array([f"class_{i}" for i in range(80)]).take(pa.array(cat))
    seg = pa.StructArray.from_arrays(
        [
            pa.ListArray.from_arrays(
                pa.array(np.arange(0, 2 * m + 1, 2, dtype=np.int32)),
                pa.array(np.tile(np.array([480, 640], np.int32), m)),
            ),
            counts,
        ],
        fields=list(SEGMENTATION_TYPE),
    )
    values = pa.StructArray.from_arrays(
        [
            pa.array(cat + 1),
            names,
            pa.array(rng.random(m).astype(np.float32)),
            pa.ListArray.from_arrays(
                pa.array(np.arange(0, 4 * m + 1, 4, dtype=np.int32)), pa.array(rng.uniform(0, 400, 4 * m))
            ),
            pa.array(rng.integers(100, 50000, m)),
            seg,
        ],
        fields=list(INSTANCE_TYPE),
    )
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(k, out=offsets[1:])
    instances = pa.ListArray.from_arrays(pa.array(offsets), values)
    err = status == "error"
    ids = np.array([int(u.rsplit("/", 1)[-1].split(".")[0]) for u in uris], np.int64)
    return pa.Table.from_arrays(
        [
            pa.array(ids),
            pa.array(uris, pa.string()),
            pa.array(np.where(err, 0, 640).astype(np.int32), mask=err),
            pa.array(np.where(err, 0, 480).astype(np.int32), mask=err),
            pa.array(status.tolist(), pa.string()),
            pa.array(["missing: image does not exist" if e else None for e in err], pa.string()),
            pa.array(k),
            instances,
            pa.array([run_id] * n, pa.string()),
        ],
        schema=SHARD_SCHEMA,
    )


class _FirstImageStage:
    """A model stage (NoopModelActor's constructor kwargs) whose first call writes ``marker``."""

    marker = ""

    def __init__(self, *, run_id: str, **kwargs):
        from ntt_batch.pipeline.stages import NoopModelActor

        self.inner = NoopModelActor(run_id=run_id, **kwargs)
        self.called = False

    def __call__(self, batch):
        if not self.called:
            self.called = True
            tmp = f"{self.marker}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump({"t": time.time(), "rows": len(batch)}, f)
            os.replace(tmp, self.marker)
        return self.inner(batch)


# ----------------------------------------------------------------------------- child cases


def _job_config(a: dict):
    from ntt_batch.pipeline.config import JobConfig

    kw = {"memory": a["memory"], "out": a["out"], "manifest": a["manifest"]}
    if a.get("ckpt"):
        kw.update(sam2="sam2.1_hiera_tiny", checkpoint_dir=a["ckpt"], download=False)
    return JobConfig(**kw)


def child_dry_run(a: dict) -> dict:
    """run_job(dry_run=True) or the full run_job (``a['real']``: resume with nothing left).

    ``seconds`` = the lazy imports run_job does first (torch, via the memory bank module; timed
    separately as ``import_s``) + the run_job call itself (``run_job_s``).
    """
    t0 = time.perf_counter()
    import ntt_batch.method.memory_bank
    import ntt_batch.models.checkpoints  # noqa: F401
    from ntt_batch.pipeline.job import run_job

    import_s = time.perf_counter() - t0
    rss0 = _status_mb("VmRSS")
    lines: list[str] = []
    out = {"error": None}
    prof = None
    if a.get("profile"):
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    t0 = time.perf_counter()
    try:
        res = run_job(_job_config(a), dry_run=not a.get("real"), echo=lines.append)
        out["summary"] = {k: v for k, v in res.summary.items() if isinstance(v, (int, float, str)) or v is None}
        out["exit_code"] = res.exit_code
    except Exception as e:  # noqa: BLE001  (the error is the figure: case 5 expects DuplicateInputError)
        out["error"] = f"{type(e).__name__}: {str(e)[:400]}"
    run_s = time.perf_counter() - t0
    if prof is not None:
        import io
        import pstats

        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(14)
        out["profile_tottime"] = [ln.rstrip() for ln in buf.getvalue().splitlines() if ln.strip()][-16:]
    out.update(
        seconds=round(import_s + run_s, 2),
        import_s=round(import_s, 2),
        run_job_s=round(run_s, 2),
        rss_after_imports_mb=round(rss0, 1),
        peak_rss_mb=round(_status_mb("VmHWM"), 1),
        echo=[ln[:200] for ln in lines[:8]],
    )
    return out


def child_first_image(a: dict) -> dict:
    """The real run_job with _FirstImageStage; the parent kills this process group at its first call."""
    import ray

    def sample():
        while True:
            try:
                with open(a["rss_file"] + ".tmp", "w") as f:
                    f.write(str(_status_mb("VmHWM")))
                os.replace(a["rss_file"] + ".tmp", a["rss_file"])
            except OSError:
                pass
            time.sleep(0.25)

    threading.Thread(target=sample, daemon=True).start()
    from ntt_batch.pipeline.job import run_job

    cfg = _job_config(a)
    if a.get("todo_file_rows"):  # diagnostic variant (--diagnose): smaller todo files, nothing else changed
        import ntt_batch.pipeline.plan as plan_mod

        plan_mod.plan_inputs.__kwdefaults__["todo_file_rows"] = int(a["todo_file_rows"])
    t = time.time()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=400 << 20, log_to_driver=False)
    t_ray = time.time() - t
    stage = type("FirstImageStage", (_FirstImageStage,), {"marker": a["marker"]})
    with open(a["start_file"], "w") as f:
        json.dump({"ray_init_s": t_ray, "t_run_job": time.time()}, f)
    res = run_job(cfg, model_stage=stage, echo=lambda s: None)
    return {"finished": True, "exit_code": res.exit_code}


def child_build_new_output(a: dict) -> dict:
    """A committed output through the new commit path (staging files → commit_staging → parts)."""
    import pyarrow.parquet as pq

    from ntt_batch.output.folder import STAGING, OutputFolder
    from ntt_batch.output.parts import RunRecord, commit_staging
    from ntt_batch.pipeline.config import JobConfig
    from ntt_batch.sources.ids import HashAccumulator

    folder = OutputFolder(a["out"])
    run_id = "20261130T000000Z-bench000"
    staging = folder.staging(run_id)
    os.makedirs(staging, exist_ok=True)
    t0 = time.perf_counter()
    for i, start in enumerate(range(0, a["n"], a["stage_rows"])):
        n = min(a["stage_rows"], a["n"] - start)
        pq.write_table(
            synth_rows(uri_list(a["prefix"], start, n), seed=i, run_id=run_id), f"{staging}/stage-{i:05d}.parquet"
        )
    t_stage = time.perf_counter() - t0
    record = RunRecord(folder, {"format": "ntt-batch/run", "layout": 2, "attempts": []})
    files = folder.files_under(f"{STAGING}/{run_id}", ".parquet")
    staged_bytes = sum(f.size for f in files)
    t0 = time.perf_counter()
    res = commit_staging(
        folder,
        files,
        run_id=run_id,
        seen=HashAccumulator(),
        update_run=record.update,
        final=True,
        target_bytes=JobConfig().target_file_bytes,
    )
    t_commit = time.perf_counter() - t0
    folder.rmdir_tree(STAGING)
    return {
        "staging_files": len(files),
        "staging_bytes": staged_bytes,
        "staging_write_s": round(t_stage, 1),
        "commit_s": round(t_commit, 1),
        "rows": res.stats.rows,
        "parts": res.parts,
        "peak_rss_mb": round(_status_mb("VmHWM"), 1),
    }


def child_build_old_output(a: dict) -> dict:
    """The old layout: one file per `batch_size` rows (Ray's write_parquet names), straight in the output."""
    import uuid

    import pyarrow.parquet as pq

    os.makedirs(a["out"], exist_ok=True)
    tag = uuid.uuid4().hex
    per = a["rows_per_file"]
    t0 = time.perf_counter()
    for i, start in enumerate(range(0, a["n"], per)):
        n = min(per, a["n"] - start)
        pq.write_table(synth_rows(uri_list(a["prefix"], start, n), seed=i), f"{a['out']}/{tag}_{i:06d}_000000.parquet")
    return {"files": (a["n"] + per - 1) // per, "seconds": round(time.perf_counter() - t0, 1)}


CHILDREN = {
    "dry_run": child_dry_run,
    "first_image": child_first_image,
    "build_new_output": child_build_new_output,
    "build_old_output": child_build_old_output,
}


# ----------------------------------------------------------------------------- parent


def _env(root: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    env["PYTHONPATH"] = root
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _kill_session(pid: int) -> list[int]:
    """SIGKILL the child's process group and any process left in its session (Ray's raylet, workers)."""
    killed = []
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for _ in range(20):
        left = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[3]) == pid and int(d) != os.getpid():  # field 6 (session id) of stat
                    left.append(int(d))
            except (OSError, IndexError, ValueError):
                continue
        if not left:
            break
        for p in left:
            try:
                os.kill(p, signal.SIGKILL)
                killed.append(p)
            except ProcessLookupError:
                pass
        time.sleep(0.5)
    return killed


def run_child(kind: str, args: dict, root: str, timeout: float) -> dict:
    """Run a child case in a fresh process (own session); returns its RESULT dict, or timed_out/failed."""
    t0 = time.perf_counter()
    p = subprocess.Popen(
        [sys.executable, __file__, "--child", json.dumps({"kind": kind, **args})],
        env=_env(root),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_session(p.pid)
        p.communicate()
        return {"timed_out": True, "seconds": round(time.perf_counter() - t0, 1)}
    except BaseException:  # Ctrl-C / SIGTERM of the benchmark: never leave a case running
        _kill_session(p.pid)
        raise
    _kill_session(p.pid)
    for line in reversed(out.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"failed": True, "returncode": p.returncode, "stderr": err[-3000:]}


def run_first_image(args: dict, root: str, timeout: float) -> dict:
    """Case 2: start the job, wait for the marker, kill the whole session."""
    work = tempfile.mkdtemp(prefix="first-", dir=args["work"])
    a = {
        **args,
        "kind": "first_image",
        "marker": f"{work}/first",
        "rss_file": f"{work}/rss",
        "start_file": f"{work}/start",
    }
    t_spawn = time.time()
    result: dict = {}
    with open(f"{work}/child.log", "w") as log:
        p = subprocess.Popen(
            [sys.executable, __file__, "--child", json.dumps(a)],
            env=_env(root),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            while True:
                if os.path.exists(a["marker"]):
                    break
                if p.poll() is not None:
                    result["failed"] = True
                    break
                if time.time() - t_spawn > timeout:
                    result["timed_out"] = True
                    break
                time.sleep(0.1)
            t_seen = time.time()
        finally:
            killed = _kill_session(p.pid)
            p.wait()
    try:
        start = json.loads(Path(a["start_file"]).read_text())
    except (OSError, ValueError):
        start = {}
    try:
        result["driver_peak_rss_mb"] = round(float(Path(a["rss_file"]).read_text()), 1)
    except (OSError, ValueError):
        pass
    if os.path.exists(a["marker"]):
        first = json.loads(Path(a["marker"]).read_text())
        result.update(
            seconds=round(first["t"] - start["t_run_job"], 2),
            from_process_start_s=round(first["t"] - t_spawn, 2),
            first_batch_rows=first["rows"],
        )
    elif "t_run_job" in start:
        result["seconds_lower_bound"] = round(t_seen - start["t_run_job"], 1)
    result["ray_init_s"] = round(start.get("ray_init_s", float("nan")), 2)
    result["stray_processes_killed"] = len(killed)
    if result.get("failed"):
        result["log_tail"] = Path(f"{work}/child.log").read_text()[-3000:]
    shutil.rmtree(work, ignore_errors=True)
    return result


def fit(points: list[tuple[float, float]], x_target: float, power: int = 1) -> float | None:
    """The value at ``x_target`` on the line through two (x, y) points in x**power.

    One point, or a line that does not rise (load noise at small sizes): proportional scaling of
    the largest point, y·(X/x)**power (an upper bound when y includes fixed costs).
    """
    pts = [(x**power, y) for x, y in points if y is not None]
    if not pts:
        return None
    if len(pts) >= 2:
        (x1, y1), (x2, y2) = pts[0], pts[-1]
        slope = (y2 - y1) / (x2 - x1)
        if slope > 0:
            return y1 + slope * (x_target**power - x1)
    return pts[-1][1] * x_target**power / pts[-1][0]


def fit_old(olds: list[tuple[int, dict]], key: str, x_target: float, power: int = 1) -> float | None:
    """:func:`fit` of ``key`` over the old runs. With a single size (``--quick``) the part that does not
    grow with N (``import_s`` of the seconds, ``rss_after_imports_mb`` of the peak) is kept fixed and
    only the rest is scaled."""
    fixed_key = {"seconds": "import_s", "peak_rss_mb": "rss_after_imports_mb"}.get(key)
    usable = [(n, r) for n, r in olds if r.get(key) is not None]
    if len(usable) == 1 and fixed_key and usable[0][1].get(fixed_key) is not None:
        n, r = usable[0]
        base = r[fixed_key]
        grown = fit([(n, r[key] - base)], x_target, power)
        return None if grown is None else base + grown
    return fit([(n, r.get(key)) for n, r in olds], x_target, power)


def _git(root: str, *args: str) -> str:
    try:
        return subprocess.run(["git", "-C", root, *args], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def _fmt_n(n: int) -> str:
    return (
        f"{n // 1_000_000}M"
        if n % 1_000_000 == 0 and n >= 1_000_000
        else (f"{n // 1000}k" if n % 1000 == 0 else str(n))
    )


class Bench:
    def __init__(self, ns: argparse.Namespace):
        self.ns = ns
        self.work = os.path.abspath(ns.work)
        os.makedirs(self.work, exist_ok=True)
        self.new, self.old = os.path.abspath(ns.new_root), os.path.abspath(ns.old_root)
        q = ns.quick
        # --quick: one old size per case (proportional extrapolation), small N; a smoke run of every path
        self.n_big = 100_000 if q else 10_000_000  # cases 1 and 5
        self.n_mid = 5_000 if q else 1_000_000  # cases 2, 3, 4
        self.old1 = [20_000] if q else [200_000, 1_000_000]
        self.old2 = [1_000] if q else [20_000, 100_000]
        self.old3 = [1_000] if q else [8_000, 40_000]
        self.old5 = [2_000] if q else [30_000, 100_000]
        self.timeout = 90 if q else ns.timeout
        self.cases: list[dict] = []

    # -- fixtures ----------------------------------------------------------
    def manifest(self, name: str, n: int, prefix: str, dup_at: int | None = None) -> str:
        path = os.path.join(self.work, f"{name}_{n}.parquet")
        if not os.path.exists(path):
            t = time.perf_counter()
            write_manifest(path, n, prefix, dup_at=dup_at)
            print(
                f"  (wrote {os.path.basename(path)}: {n:,} rows, {os.path.getsize(path) / 1e6:.0f} MB, "
                f"{time.perf_counter() - t:.1f} s)",
                flush=True,
            )
        return path

    def empty_out(self, name: str) -> str:
        d = os.path.join(self.work, "out", name)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        return d

    def bank_and_ckpt(self) -> tuple[str, str]:
        """Random-weight checkpoints + a 1-class bank built without models (prototypes are random)."""
        ckpt, bank = os.path.join(self.work, "ckpt"), os.path.join(self.work, "bank")
        if not (
            all(os.path.isfile(os.path.join(ckpt, f)) for f in ("sam2.1_hiera_tiny.pt", "dinov2_vits14_pretrain.pth"))
            and os.path.isfile(os.path.join(bank, "memory_bank.json"))
        ):
            code = (
                "import sys, torch\n"
                "from ntt_batch.models.loading import write_random_checkpoint\n"
                "from ntt_batch.method.memory_bank import MemoryBank\n"
                "for n in ('sam2.1_hiera_tiny', 'dinov2_vits14'):\n"
                "    write_random_checkpoint(n, sys.argv[1], seed=0)\n"
                "g = torch.Generator().manual_seed(0)\n"
                "MemoryBank(categories=[{'id': 1, 'name': 'person'}], instance_prototypes=torch.randn(2, 384, "
                "generator=g),\n"
                "           instance_labels=torch.zeros(2, dtype=torch.int64),\n"
                "           encoder={'name': 'dinov2_vits14', 'official': False}).save(sys.argv[2])\n"
            )
            subprocess.run([sys.executable, "-c", code, ckpt, bank], env=_env(self.new), check=True)
        return bank, ckpt

    # -- cases ---------------------------------------------------------------
    def add(self, case: dict) -> None:
        case["loadavg_1m_at_end"] = round(os.getloadavg()[0], 1)
        self.cases.append(case)
        print(json.dumps(case), flush=True) if self.ns.verbose else None

    def case1(self) -> None:
        print(f"[1] dry run on a {_fmt_n(self.n_big)}-row manifest", flush=True)
        bank, _ = self.bank_and_ckpt()
        new = run_child(
            "dry_run",
            {
                "manifest": self.manifest("manifest_s3", self.n_big, "s3://bucket/images/"),
                "out": self.empty_out("c1_new"),
                "memory": bank,
            },
            self.new,
            self.timeout,
        )
        olds = []
        for n in self.old1:
            r = run_child(
                "dry_run",
                {
                    "manifest": self.manifest("manifest_s3", n, "s3://bucket/images/"),
                    "out": self.empty_out("c1_old"),
                    "memory": bank,
                },
                self.old,
                self.timeout,
            )
            olds.append((n, r))
        if self.ns.profile:
            n = min(self.n_big, 1_000_000)
            new["profile_at_n"] = n
            new["profile"] = run_child(
                "dry_run",
                {
                    "manifest": self.manifest("manifest_s3", n, "s3://bucket/images/"),
                    "out": self.empty_out("c1_prof"),
                    "memory": bank,
                    "profile": True,
                },
                self.new,
                self.timeout,
            ).get("profile_tottime")
        self.add(
            {
                "case": 1,
                "name": f"dry run, {_fmt_n(self.n_big)}-row manifest",
                "n": self.n_big,
                "new": new,
                "old": [{"n": n, **r} for n, r in olds],
                "old_extrapolated": {
                    "seconds": fit_old(olds, "seconds", self.n_big),
                    "peak_rss_mb": fit_old(olds, "peak_rss_mb", self.n_big),
                },
                "targets": {"seconds": 120, "peak_rss_mb": 2 * 1024},
            }
        )

    def case2(self) -> None:
        print(f"[2] time to the first image dispatched, {_fmt_n(self.n_mid)}-row manifest", flush=True)
        bank, ckpt = self.bank_and_ckpt()
        prefix = os.path.join(self.work, "images") + "/"
        common = {"memory": bank, "ckpt": ckpt, "work": self.work}
        new = run_first_image(
            {
                **common,
                "manifest": self.manifest("manifest_local", self.n_mid, prefix),
                "out": self.empty_out("c2_new"),
            },
            self.new,
            self.timeout,
        )
        olds = []
        for n in self.old2:
            r = run_first_image(
                {**common, "manifest": self.manifest("manifest_local", n, prefix), "out": self.empty_out("c2_old")},
                self.old,
                self.timeout,
            )
            olds.append((n, r))
        if self.ns.diagnose:
            new["variant_todo_file_rows_4096"] = run_first_image(
                {
                    **common,
                    "manifest": self.manifest("manifest_local", self.n_mid, prefix),
                    "out": self.empty_out("c2_new"),
                    "todo_file_rows": 4096,
                },
                self.new,
                self.timeout,
            )
        shutil.rmtree(os.path.join(self.work, "out", "c2_new"), ignore_errors=True)
        shutil.rmtree(os.path.join(self.work, "out", "c2_old"), ignore_errors=True)
        self.add(
            {
                "case": 2,
                "name": f"first image dispatched, {_fmt_n(self.n_mid)}-row manifest",
                "n": self.n_mid,
                "new": new,
                "old": [{"n": n, **r} for n, r in olds],
                "old_extrapolated": {
                    "seconds": fit_old(olds, "seconds", self.n_mid),
                    "driver_peak_rss_mb": fit_old(olds, "driver_peak_rss_mb", self.n_mid),
                },
                "targets": {"seconds": 60},
            }
        )

    def case34(self) -> None:
        print(f"[3] resume over a {_fmt_n(self.n_mid)}-row output (+ [4] its file count)", flush=True)
        bank, ckpt = self.bank_and_ckpt()
        prefix = os.path.join(self.work, "images") + "/"
        out = os.path.join(self.work, "out", f"c3_new_{self.n_mid}")
        marker = os.path.join(out, "_ntt", "bench_built.json")
        if not os.path.exists(marker):
            shutil.rmtree(out, ignore_errors=True)
            os.makedirs(out)
            built = run_child(
                "build_new_output", {"out": out, "n": self.n_mid, "prefix": prefix, "stage_rows": 16384}, self.new, 3600
            )
            if "rows" not in built:
                raise SystemExit(f"building the 1M-row output failed: {built}")
            Path(marker).write_text(json.dumps(built))
        built = json.loads(Path(marker).read_text())
        manifest = self.manifest("manifest_local", self.n_mid, prefix)
        new_dry = run_child("dry_run", {"manifest": manifest, "out": out, "memory": bank}, self.new, self.timeout)
        if self.ns.profile:
            new_dry["profile"] = run_child(
                "dry_run", {"manifest": manifest, "out": out, "memory": bank, "profile": True}, self.new, self.timeout
            ).get("profile_tottime")
        new_real = run_child(
            "dry_run",
            {"manifest": manifest, "out": out, "memory": bank, "ckpt": ckpt, "real": True},
            self.new,
            self.timeout,
        )
        parts = sorted(f for f in os.listdir(out) if f.endswith(".parquet") and not f.startswith(("_", ".")))
        sizes = [os.path.getsize(os.path.join(out, f)) for f in parts]
        olds_dry, olds_real = [], []
        for n in self.old3:
            o = os.path.join(self.work, "out", f"c3_old_{n}")
            if not os.path.isdir(o) or len(os.listdir(o)) < n // 2:
                shutil.rmtree(o, ignore_errors=True)
                run_child("build_old_output", {"out": o, "n": n, "prefix": prefix, "rows_per_file": 2}, self.old, 3600)
            m = self.manifest("manifest_local", n, prefix)
            olds_dry.append(
                (n, run_child("dry_run", {"manifest": m, "out": o, "memory": bank}, self.old, self.timeout))
            )
            olds_real.append(
                (
                    n,
                    run_child(
                        "dry_run",
                        {"manifest": m, "out": o, "memory": bank, "ckpt": ckpt, "real": True},
                        self.old,
                        self.timeout,
                    ),
                )
            )
        self.add(
            {
                "case": 3,
                "name": f"resume, {_fmt_n(self.n_mid)}-row output, dry run",
                "n": self.n_mid,
                "new": new_dry,
                "old": [{"n": n, **r} for n, r in olds_dry],
                "old_extrapolated": {
                    "seconds": fit_old(olds_dry, "seconds", self.n_mid),
                    "peak_rss_mb": fit_old(olds_dry, "peak_rss_mb", self.n_mid),
                },
                "build": built,
                "targets": {"seconds": 15},
            }
        )
        self.add(
            {
                "case": "3b",
                "name": f"resume, {_fmt_n(self.n_mid)}-row output, full run (0 left)",
                "n": self.n_mid,
                "new": new_real,
                "old": [{"n": n, **r} for n, r in olds_real],
                "old_extrapolated": {
                    "seconds": fit_old(olds_real, "seconds", self.n_mid),
                    "peak_rss_mb": fit_old(olds_real, "peak_rss_mb", self.n_mid),
                },
                "targets": {"seconds": 15},
            }
        )
        self.add(
            {
                "case": 4,
                "name": f"files for {_fmt_n(self.n_mid)} images at the defaults",
                "n": self.n_mid,
                "new": {"files": len(parts), "bytes": sizes, "total_mb": round(sum(sizes) / 1e6, 1)},
                "old": [{"n": n, "files": n // 2} for n in self.old3],
                "old_extrapolated": {"files": self.n_mid // 2},
                "targets": {"files": 100},
            }
        )

    def case5(self) -> None:
        print(f"[5] duplicate near the end of a {_fmt_n(self.n_big)}-row manifest", flush=True)
        bank, _ = self.bank_and_ckpt()
        new = run_child(
            "dry_run",
            {
                "manifest": self.manifest("manifest_dup", self.n_big, "s3://bucket/images/", dup_at=self.n_big - 100),
                "out": self.empty_out("c5_new"),
                "memory": bank,
            },
            self.new,
            self.timeout,
        )
        want = f"s3://bucket/images/{self.n_big - 99:012d}.jpg"
        new["names_the_duplicate"] = bool(new.get("error") and want in new["error"])
        olds = []
        for n in self.old5:
            r = run_child(
                "dry_run",
                {
                    "manifest": self.manifest("manifest_dup", n, "s3://bucket/images/", dup_at=n - 100),
                    "out": self.empty_out("c5_old"),
                    "memory": bank,
                },
                self.old,
                self.ns.old_dup_timeout,
            )
            olds.append((n, r))
        self.add(
            {
                "case": 5,
                "name": f"duplicate refused, {_fmt_n(self.n_big)}-row manifest",
                "n": self.n_big,
                "new": new,
                "old": [{"n": n, **r} for n, r in olds],
                "old_extrapolated": {
                    "seconds": fit_old(olds, "seconds", self.n_big, power=2),
                    "seconds_at_100k": fit_old(olds, "seconds", 100_000, power=2),
                },
                "targets": {"seconds": 60},
            }
        )


# ----------------------------------------------------------------------------- report


def _s(v, unit="s") -> str:
    if v is None:
        return "—"
    if unit == "s":
        if v >= 86400:
            return f"{v / 86400:,.1f} d"
        if v >= 3600:
            return f"{v / 3600:,.1f} h"
        return f"{v:,.1f} s"
    if unit == "mb":
        return f"{v / 1024:,.2f} GB" if v >= 1024 else f"{v:,.0f} MB"
    return f"{v:,}"


def report(cases: list[dict]) -> list[str]:
    rows = [("case", "figure", "target", "NEW", "OLD measured", "OLD at N (~ = extrapolated)", "OLD/NEW", "target met")]

    def old_meas(c, key, unit):
        parts = []
        for o in c["old"]:
            if o.get("timed_out"):
                parts.append(f"{_fmt_n(o['n'])}: >{o.get('seconds', '?')} s (timeout)")
            elif o.get("failed"):
                parts.append(f"{_fmt_n(o['n'])}: failed")
            elif key in o:
                parts.append(f"{_fmt_n(o['n'])}: {_s(o[key], unit)}")
        return "; ".join(parts) or "—"

    for c in cases:
        new, ex, tg = c["new"], c.get("old_extrapolated", {}), c.get("targets", {})
        figs = {
            1: [("seconds", "s"), ("peak_rss_mb", "mb")],
            2: [("seconds", "s"), ("driver_peak_rss_mb", "mb")],
            3: [("seconds", "s"), ("peak_rss_mb", "mb")],
            "3b": [("seconds", "s"), ("peak_rss_mb", "mb")],
            4: [("files", "n")],
            5: [("seconds", "s")],
        }[c["case"]]
        for key, unit in figs:
            v = new.get(key)
            note = ""
            if v is None and new.get("timed_out"):
                note = f">{new.get('seconds_lower_bound', new.get('seconds'))} s (timeout)"
            elif v is None and new.get("failed"):
                note = "failed"
            if c["case"] == 5 and new.get("error") is None and key == "seconds":
                note = "NOT REFUSED"
            target = tg.get(key)
            tgt = "" if target is None else ("≤ " + (_s(target, unit) if unit != "n" else str(target)))
            e = ex.get(key)
            ratio = (f"{e / v:,.1f}×" if e / v < 10 else f"{e / v:,.0f}×") if (e and v) else "—"
            met = "" if target is None else ("yes" if (v is not None and v <= target and not note) else "NO")
            rows.append(
                (
                    str(c["case"]),
                    f"{c['name']}: {key}",
                    tgt,
                    note or _s(v, unit),
                    old_meas(c, key, unit),
                    ("~" + _s(e, unit)) if e is not None and c["case"] != 4 else _s(e, unit),
                    ratio,
                    met,
                )
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = ["| " + " | ".join(r[i].ljust(widths[i]) for i in range(len(r))) + " |" for r in rows]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run: < 1 min on an idle machine)")
    ap.add_argument("--json", default=None, help="write all figures here")
    ap.add_argument(
        "--work", default=None, help="fixtures and outputs (kept, reused by later runs); default: a temp dir"
    )
    ap.add_argument("--new-root", default=str(REPO), help="code root of the NEW ntt_batch (default: this checkout)")
    ap.add_argument("--old-root", default="/tmp/ntt-old", help="code root of the OLD ntt_batch (commit fc59ce1)")
    ap.add_argument("--cases", default="1,2,3,5", help="which cases (4 comes with 3)")
    ap.add_argument("--timeout", type=float, default=600, help="per-subprocess limit, seconds")
    ap.add_argument("--old-dup-timeout", type=float, default=400, help="limit for the old O(N²) duplicate check")
    ap.add_argument("--profile", action="store_true", help="also profile the new dry runs (cases 1 at <=1M rows, 3)")
    ap.add_argument(
        "--diagnose",
        action="store_true",
        help="case 2: also run the new code with 4,096-row todo files (plan_inputs' todo_file_rows)",
    )
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ns = ap.parse_args()
    if ns.child:
        a = json.loads(ns.child)
        print("RESULT " + json.dumps(CHILDREN[a["kind"]](a)), flush=True)
        return
    if not os.path.isdir(os.path.join(ns.old_root, "ntt_batch")):
        raise SystemExit(
            f"--old-root {ns.old_root}: no ntt_batch there; make it with `git worktree add {ns.old_root} fc59ce1`"
        )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # cleanup (children's sessions) runs on SIGTERM too
    tmp = None
    if ns.work is None:
        tmp = ns.work = tempfile.mkdtemp(prefix="ntt-scale-")
    b = Bench(ns)
    meta = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "quick": ns.quick,
        "machine": f"{os.cpu_count()} CPUs, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / GB:.1f} GiB RAM, "
        f"{platform.platform()}, Python {platform.python_version()}",
        "new": {
            "root": b.new,
            "commit": _git(b.new, "rev-parse", "HEAD"),
            "ntt_batch_dirty": bool(_git(b.new, "status", "--porcelain", "--", "ntt_batch")),
        },
        "old": {"root": b.old, "commit": _git(b.old, "rev-parse", "HEAD")},
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "loadavg_at_start": [round(v, 1) for v in os.getloadavg()],
    }
    snap = Path(b.new, "HEAD")
    if not meta["new"]["commit"] and snap.is_file():  # a copied snapshot of a working tree: HEAD + uncommitted.diff
        import hashlib

        meta["new"]["commit"] = snap.read_text().strip()
        diff = Path(b.new, "uncommitted.diff")
        meta["new"]["ntt_batch_dirty"] = diff.is_file() and diff.stat().st_size > 0
        if meta["new"]["ntt_batch_dirty"]:
            meta["new"]["uncommitted_diff_sha256"] = hashlib.sha256(diff.read_bytes()).hexdigest()
    print(
        "NEW "
        f"{meta['new']['commit'][:10]}"
        f"{' (+ uncommitted changes in ntt_batch/)' if meta['new']['ntt_batch_dirty'] else ''}"
        f" vs OLD {meta['old']['commit'][:10]}; {meta['machine']}; load average {meta['loadavg_at_start']}; "
        f"work dir {b.work}",
        flush=True,
    )
    t0 = time.perf_counter()
    try:
        for c in ns.cases.split(","):
            {"1": b.case1, "2": b.case2, "3": b.case34, "4": b.case34, "5": b.case5}[c.strip()]()
    finally:
        meta["total_s"] = round(time.perf_counter() - t0, 1)
        lines = report(b.cases)
        print("\n".join(lines))
        for c in b.cases:
            for key, label in (("profile", "profile (tottime, top)"),):
                if c["new"].get(key):
                    print(f"case {c['case']} NEW {label}:")
                    print("\n".join("    " + ln for ln in c["new"][key]))
            if c["case"] == 4:
                print(f"case 4 NEW part files (bytes): {c['new']['bytes']}")
            v = c["new"].get("variant_todo_file_rows_4096")
            if v:
                print(f"case 2 NEW with 4,096-row todo files (diagnostic): {v.get('seconds', v)} s to the first image")
        print(
            "OLD sizes are smaller where the old code would take too long or too much memory; '~' figures are the "
            "straight line through the two measured sizes, evaluated at N (case 5: a line in N², the check is O(N²)); "
            "with one size (--quick) the import time / RSS after imports is kept and the rest scaled by N. "
            "Case 2 peak RSS is the driver's only (Ray's processes excluded), sampled every 0.25 s."
        )
        if ns.json:
            Path(ns.json).write_text(json.dumps({**meta, "cases": b.cases, "table": lines}, indent=2))
            print(f"wrote {ns.json}")
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
