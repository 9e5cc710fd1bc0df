"""`ray job submit` end to end against a real Ray head started by the test (loopback only).

The head runs in its own process session (`ray start --head --block`), on free ports and a
private temp dir, with a marker resource so the test can tell that the job ran on *this* cluster
and not on a local Ray instance it started by itself. It is stopped by signalling that process,
never with `ray stop` (which would stop every Ray instance of this user on the machine).

The job is submitted the way the README says (`ray job submit --working-dir . -- ntt-batch run
--config JOB`); its memory bank comes from a `references:` block, so the bank is built by a
task on the cluster. A second submission (Job Submission SDK, no working dir) must resume:
nothing left to process, the bank reused.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from ntt_batch.output.shards import read_shards, summarize

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
MARKER = "ntt_test_head"  # custom resource only this test's head has


def _free_ports(n: int) -> list[int]:
    """n distinct free ports (all held open while choosing, so none is handed out twice)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _session_pids(sid: int) -> list[int]:
    """Processes in session ``sid`` (the head's `ray start` and everything it spawned)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid:
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def _env() -> dict[str, str]:
    """Environment of the head and the CLI: no inherited RAY_ADDRESS; Ray's token auth explicitly off.

    Ray >= 2.5x turns token auth on for a head started where ~/.ray/auth_token exists (any local
    ray.init() writes one), which would make the outcome depend on what ran on this machine
    before. The head listens on loopback only.
    """
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_AUTH_MODE"] = "disabled"
    return env


@dataclass
class Head:
    url: str  # dashboard / job server
    proc: subprocess.Popen
    temp_dir: str
    log: Path


@pytest.fixture(scope="module")
def ray_head():
    from ray.job_submission import JobSubmissionClient

    names = (
        "port",
        "dashboard-port",
        "ray-client-server-port",
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "runtime-env-agent-port",
        "metrics-export-port",
        "node-manager-port",
        "object-manager-port",
    )
    ports = dict(zip(names, _free_ports(len(names))))  # nothing on Ray's fixed defaults: other clusters may run here
    temp_dir = tempfile.mkdtemp(prefix="ntt-ray-", dir="/tmp")  # short: Ray's unix socket paths are length-limited
    log = Path(temp_dir) / "head.log"
    cmd = [
        "ray",
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        "--include-dashboard=true",
        "--num-cpus=2",
        "--num-gpus=0",
        f"--resources={json.dumps({MARKER: 1})}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ] + [f"--{k}={v}" for k, v in ports.items()]
    env = _env()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{ports['dashboard-port']}"
    head = Head(url, proc, temp_dir, log)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ray head exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                JobSubmissionClient(url).list_jobs()
                break
            except Exception:
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"ray head's job server did not answer at {url} within 120 s:\n{log.read_text()[-4000:]}"
                    )
                time.sleep(1)
        yield head
    finally:
        _stop_head(head)


def _stop_head(head: Head) -> None:
    """SIGTERM the `ray start --block` process (it drains and stops what it started); check nothing is left."""
    sid = head.proc.pid
    if head.proc.poll() is None:
        head.proc.send_signal(signal.SIGTERM)
        try:
            head.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            head.proc.kill()
    deadline = time.monotonic() + 30
    while _session_pids(sid) and time.monotonic() < deadline:
        time.sleep(0.5)
    leftover = _session_pids(sid)
    for pid in leftover:  # only processes of the session this test started
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    shutil.rmtree(head.temp_dir, ignore_errors=True)
    assert not leftover, f"Ray processes still running 30 s after the head was stopped: {leftover}"


def _wait(client, job_id: str, timeout_s: float = 300) -> str:
    from ray.job_submission import JobStatus

    deadline = time.monotonic() + timeout_s
    while True:
        status = client.get_job_status(job_id)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            return status
        if time.monotonic() > deadline:
            client.stop_job(job_id)
            pytest.fail(
                f"job {job_id} still {status} after {timeout_s} s; logs:\n{client.get_job_logs(job_id)[-6000:]}"
            )
        time.sleep(2)


def test_submit_job_to_a_real_ray_head(ray_head, tmp_path, coco_mini, random_checkpoints):
    from ray.job_submission import JobStatus, JobSubmissionClient

    images = tmp_path / "images"
    images.mkdir()
    for p in sorted((coco_mini / "val2017").glob("*.jpg"))[:2]:
        shutil.copy(p, images / p.name)
    out, bank = tmp_path / "out", tmp_path / "banks" / "person-car-1shot"
    job = tmp_path / "job.yaml"
    job.write_text(f"""\
images: {images}
out: {out}
memory: {bank}
references:
  annotations: {coco_mini / "annotations" / "instances_train2017.json"}
  image_root: {coco_mini / "train2017"}
  split: person,car
  shots: 1
  seed: 33
  encoder: dinov2_vits14
sam2: sam2.1_hiera_tiny
checkpoint_dir: {random_checkpoints}
download: false
segmenter:
  points_per_side: 2
  device: cpu
num_actors: 1
batch_size: 1
actor_num_cpus: 1
""")
    env = _env()

    # 1. exactly what the README tells users to type (plus --address and an id to follow it by)
    submit = subprocess.run(
        [
            "ray",
            "job",
            "submit",
            "--address",
            ray_head.url,
            "--submission-id",
            "ntt-test-1",
            "--no-wait",
            "--working-dir",
            str(REPO),
            "--",
            "ntt-batch",
            "run",
            "--config",
            str(job),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert submit.returncode == 0, submit.stdout + submit.stderr
    client = JobSubmissionClient(ray_head.url)
    status = _wait(client, "ntt-test-1")
    logs = client.get_job_logs("ntt-test-1")
    assert status == JobStatus.SUCCEEDED, logs[-6000:]
    assert "inputs: 2 images; already done: 0; to process: 2" in logs
    assert "memory bank: " + str(bank) + " does not exist; building it from sampling 1 shot(s)" in logs
    assert "memory bank: built" in logs and "2 classes, 2 references" in logs
    assert "MapBatches(SegmentActor)" in logs  # Ray Data's progress reaches the job logs
    assert "summary: " in logs and "(2 rows in 1 file(s)," in logs and "this run: 2 images" in logs
    info = client.get_job_info("ntt-test-1")
    assert info.runtime_env.get("working_dir", "").startswith("gcs://")  # the working dir was uploaded

    # the shards, read back without Ray
    summary = summarize(str(out))
    assert summary["rows"] == 2 and summary["error"] == 0 and summary["duplicate_uris"] == 0
    table = read_shards(str(out))
    assert sorted(table.column("image_uri").to_pylist()) == sorted(str(p) for p in images.glob("*.jpg"))
    assert set(table.column("status").to_pylist()) <= {"ok", "empty"}
    run = json.loads((out / "_ntt" / "run.json").read_text())
    resources = run["cluster_resources"]
    assert resources.get(MARKER) == 1 and resources["CPU"] == 2  # this head's resources: the job joined it
    attempt = run["attempts"][-1]
    assert attempt["status"] == "completed" and attempt["to_process"] == 2
    build = attempt["memory_bank_build"]
    assert build["path"] == str(bank) and build["classes"] == 2 and build["references"]["shots"] == 1
    assert (bank / "memory_bank.json").is_file() and (bank / "references.json").is_file()
    assert run["memory_bank"]["content_hash"] == build["content_hash"]

    # 2. resubmitted through the SDK (the package is installed, no working dir): resumes, reuses the bank
    job_id = client.submit_job(entrypoint=f"ntt-batch run --config {job}", submission_id="ntt-test-2")
    status = _wait(client, job_id)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs[-6000:]
    assert "already done: 2; to process: 0" in logs
    assert f"memory bank: {bank} (exists; built with the same reference settings)" in logs
    run = json.loads((out / "_ntt" / "run.json").read_text())
    assert len(run["attempts"]) == 2 and "memory_bank_build" not in run["attempts"][-1]
    assert summarize(str(out))["rows"] == 2
