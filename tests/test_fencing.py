"""Fencing: a lease holder that lost the output changes nothing (issue 19, item 1).

The frozen holder is made on purpose: the run stops itself (``NTT_CRASH_SIGNAL=SIGSTOP``) at a
named step, past its lease expiry a second run takes the output over and finishes, then the first
is resumed (SIGCONT). On S3 (moto's server on loopback) the second run takes the lease over; the
first must exit with ``LeaseLostError`` naming the second and leave every object as the second left
it. On local disk the flock cannot be taken over while its holder lives: the second run is refused.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import forked
import numpy as np
import pytest
from conftest import job_config
from PIL import Image

from ntt_batch.output.fencing import FencedFSHandler, LeaseLostError, RunFence
from ntt_batch.output.folder import LOCK_JSON, RUN_JSON, OutputFolder
from ntt_batch.output.lease import Lease, LeaseHeldError, lock_status
from ntt_batch.pipeline.job import run_job
from ntt_batch.pipeline.stages import NoopModelActor
from ntt_batch.pipeline.verify import verify_output


@pytest.fixture(scope="module")
def s3(s3_server):
    """Storage options for the S3 API of ``s3_server``, with one bucket ``fence``."""
    import boto3

    boto3.client(
        "s3",
        endpoint_url=s3_server,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing-secret",
    ).create_bucket(Bucket="fence")
    return {
        "key": "testing",
        "secret": "testing-secret",
        "client_kwargs": {"endpoint_url": s3_server, "region_name": "us-east-1"},
    }


@pytest.fixture(scope="module")
def ray_address(ray_local) -> str:
    import ray

    return ray.get_runtime_context().gcs_address


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> tuple[Path, list[str]]:
    d = tmp_path_factory.mktemp("fence_inputs")
    rng = np.random.default_rng(1)
    uris = []
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (10, 8 + i, 3), dtype=np.uint8)).save(d / f"i{i}.png")
        uris.append(str(d / f"i{i}.png"))
    (d / "m.csv").write_text("image_uri\n" + "".join(f"{u}\n" for u in uris))
    return d / "m.csv", uris


@pytest.fixture(scope="module")
def make_cfg(random_checkpoints, small_bank, manifest, ray_address):
    def make(out, **kw):
        return job_config(
            random_checkpoints, small_bank, manifest=str(manifest[0]), out=str(out), ray_address=ray_address, **kw
        )

    return make


def _noop(cfg):
    return run_job(cfg, echo=lambda s: None, model_stage=NoopModelActor, verbose=False)


def _snapshot(folder: OutputFolder) -> dict[str, str]:
    """Every object under the output (``_ntt/`` included) with its ETag / mtime."""
    folder.fs.invalidate_cache()
    return {f.path: f.version for f in folder.files_under("")}


def _wait_until_expired(folder: OutputFolder, timeout_s: float = 30) -> None:
    import datetime as dt

    from ntt_batch.output.lease import parse_time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        lock, _ = lock_status(folder)
        expires = parse_time((lock or {}).get("expires_at"))
        if lock and expires and expires < dt.datetime.now(dt.timezone.utc):
            return
        time.sleep(0.1)
    raise AssertionError("the frozen holder's lock did not expire")


@pytest.mark.parametrize("stop_at", ["staging.assembled", "compaction.retiring"])
def test_a_frozen_s3_holder_changes_nothing_after_a_takeover(s3, make_cfg, manifest, tmp_path, stop_at):
    """SIGSTOP past expires_at, takeover, SIGCONT: the stale writer exits naming the new holder, writes nothing."""
    out = f"s3://fence/frozen-{stop_at.replace('.', '-')}/"
    folder = OutputFolder(out, s3)
    if stop_at.startswith("compaction"):  # a first part, so the frozen run's closing compaction has two to merge
        _noop(make_cfg(out, storage_options=s3, limit=2))
    said = tmp_path / "a.txt"
    a = forked.start(
        "run",
        out,
        make_cfg(out, storage_options=s3, lease_ttl_s=2.0),
        stop_at,
        signal_name="SIGSTOP",
        result_file=str(said),
    )
    try:
        forked.wait_stopped(a)
        _wait_until_expired(folder)
        b = _noop(make_cfg(out, storage_options=s3, lease_ttl_s=30.0))  # takes the lease over and finishes
        b_id = b.attempt["run_id"]
        before = _snapshot(folder)
        run_before = folder.read_bytes(folder.path(RUN_JSON))
    finally:
        os.kill(a.pid, signal.SIGCONT)
        a.join(timeout=120)
    assert a.exitcode == forked.EXIT_LEASE, a.exitcode
    message = said.read_text()
    assert message.startswith("LeaseLostError:") and "taken over by another run" in message
    assert b_id in message, message  # the new holder is named
    assert _snapshot(folder) == before  # not one object written, moved or deleted after the takeover
    assert folder.read_bytes(folder.path(RUN_JSON)) == run_before
    run = json.loads(run_before)
    assert run["attempts"][-1]["run_id"] == b_id and run["attempts"][-1]["status"] == "completed"
    assert run["attempts"][-2]["status"] == "died" and run["lease"]["run_id"] == b_id
    assert run["parts"] and run["summary"]["rows"] == 4
    assert not folder.files_under("_ntt/staging") and not folder.files_under("_ntt/tmp")
    report = verify_output(out, s3)
    assert report.integrity_ok and report.rows == 4 and report.missing_inputs == 0, report.format()


def test_a_frozen_local_holder_keeps_its_lease(make_cfg, manifest, tmp_path):
    """On local disk the flock stays with a frozen holder: the second run is refused and writes nothing;
    resumed, the holder finishes normally."""
    out = tmp_path / "out"
    a = forked.start("run", out, make_cfg(out), "staging.assembled", signal_name="SIGSTOP")
    try:
        forked.wait_stopped(a)
        folder = OutputFolder(str(out))
        before = _snapshot(folder)
        with pytest.raises(LeaseHeldError, match=r"being written by another run .*pid " + str(a.pid)):
            _noop(make_cfg(out))
        assert _snapshot(folder) == before
    finally:
        os.kill(a.pid, signal.SIGCONT)
        a.join(timeout=120)
    assert a.exitcode == 0
    run = json.loads((out / RUN_JSON).read_text())
    assert [x["status"] for x in run["attempts"]] == ["completed"] and run["lease"]["generation"] == 1
    assert verify_output(str(out)).integrity_ok


def test_run_json_writes_are_fenced_by_generation(s3, tmp_path):
    """A holder's run.json write is refused once a later generation wrote it (S3: If-Match; local: compare)."""
    for uri, opts in ((str(tmp_path / "local"), None), ("s3://fence/record/", s3)):
        folder = OutputFolder(uri, opts)
        if folder.is_local:
            os.makedirs(folder.path("_ntt"))
        conditional = not folder.is_local
        a = RunFence(folder, folder.path(RUN_JSON), 1, "run-A", conditional=conditional)
        run = a.read()
        run["attempts"] = [{"run_id": "run-A"}]
        a.write(run)
        b = RunFence(folder, folder.path(RUN_JSON), 2, "run-B", conditional=conditional)
        taken = b.read()
        taken["attempts"].append({"run_id": "run-B", "status": "completed"})
        b.write(taken)
        with pytest.raises(LeaseLostError, match=r"taken over by another run \(run-B, lease generation 2\)"):
            a.write({"attempts": [{"run_id": "run-A", "status": "failed"}], "parts": {}})
        kept = json.loads(folder.read_bytes(folder.path(RUN_JSON)))
        assert [x["run_id"] for x in kept["attempts"]] == ["run-A", "run-B"] and kept["lease"]["generation"] == 2


def test_staged_writes_of_a_displaced_holder_are_refused(ray_local, s3):
    """Ray workers stage through FencedFSHandler: after a takeover the old generation's writes fail, writing nothing."""
    import pyarrow.fs as pafs
    import ray.data

    folder = OutputFolder("s3://fence/staged/", s3)
    a = Lease(folder, {"run_id": "A"}, ttl_s=1.0).acquire()
    fs_a = pafs.PyFileSystem(FencedFSHandler(folder.fs, folder.path(LOCK_JSON), a.generation, folder.uri))
    items = ray.data.from_items([{"x": i} for i in range(4)], override_num_blocks=2)
    items.write_parquet(folder.path("_ntt/staging/g1-A"), filesystem=fs_a)
    assert len(folder.files_under("_ntt/staging/g1-A", ".parquet")) == 2  # written while A holds the lease
    a._stop.set()  # A freezes: no more renewals
    a._thread.join()
    time.sleep(1.3)
    b = Lease(folder, {"run_id": "B"}, ttl_s=30).acquire()
    assert b.generation == a.generation + 1
    with pytest.raises(Exception, match="a run that lost its lease stages nothing more"):
        items.write_parquet(folder.path("_ntt/staging/g1-A-late"), filesystem=fs_a)
    assert not folder.files_under("_ntt/staging/g1-A-late")
    with pytest.raises(LeaseLostError, match=r"taken over by another run \(B, lease generation 2\)"):
        a.check()  # the frozen holder learns it on its next check, before any write
    b.release()
