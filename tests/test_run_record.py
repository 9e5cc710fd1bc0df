"""What passed only by luck (issue 19): stale temporary files, a dead run's lock, part checksums.

Real runs (local Ray, the no-op model stage), real files, a real SIGKILL for the dead run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import forked
import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import job_config
from PIL import Image

from ntt_batch.output.folder import RUN_JSON, OutputFolder
from ntt_batch.output.lease import Lease
from ntt_batch.pipeline.job import run_job
from ntt_batch.pipeline.stages import NoopModelActor
from ntt_batch.pipeline.verify import verify_output


@pytest.fixture(scope="module")
def ray_address(ray_local) -> str:
    import ray

    return ray.get_runtime_context().gcs_address


@pytest.fixture(scope="module")
def make_cfg(random_checkpoints, small_bank, tmp_path_factory, ray_address):
    d = tmp_path_factory.mktemp("record_inputs")
    rng = np.random.default_rng(2)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (9, 7 + i, 3), dtype=np.uint8)).save(d / f"r{i}.png")

    def make(out, **kw):
        return job_config(random_checkpoints, small_bank, images=str(d), out=str(out), ray_address=ray_address, **kw)

    return make


def _noop(cfg):
    return run_job(cfg, echo=lambda s: None, model_stage=NoopModelActor, verbose=False)


@pytest.fixture(scope="module")
def done(make_cfg, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("record_done") / "out"
    _noop(make_cfg(out))
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_a_dead_runs_lock_is_reported_stale_and_its_temp_files_removed(make_cfg, tmp_path):
    out = tmp_path / "out"
    forked.crash("run", out, make_cfg(out), "staging.published")  # a real SIGKILL: lock.json stays behind
    lock = json.loads((out / "_ntt" / "lock.json").read_text())
    report = verify_output(str(out))
    assert report.lock["pid"] == lock["pid"] and "is not running on this host" in report.lock_stale
    assert f"stale lock of run {lock['run_id']}" in report.format() and "locked by" not in report.format()
    # what a SIGKILL inside an atomic metadata write leaves: temporary names beside the targets
    leftovers = [out / "_ntt" / ".run.json.0badf00d.tmp", out / "_ntt" / "commits" / ".x.json.deadbeef.tmp"]
    for f in leftovers:
        f.write_text("{")
    res = _noop(make_cfg(out))
    assert not any(f.exists() for f in leftovers)
    assert any("removed 2 temporary file(s)" in n for n in res.attempt["notes"])
    assert any("finished an interrupted staging commit" in n for n in res.attempt["notes"])
    report = verify_output(str(out))
    assert report.lock is None and report.integrity_ok and report.rows == 3


def test_a_live_lock_is_reported_held(done, tmp_path):
    out = _copy(done, tmp_path / "out")
    folder = OutputFolder(str(out))
    with Lease(folder, {"run_id": "live"}):
        report = verify_output(str(out))
        assert report.lock["run_id"] == "live" and report.lock_stale is None
        assert "locked by run live" in report.format()


def test_parts_carry_their_sha256(done):
    run = json.loads((done / RUN_JSON).read_text())
    for name, rec in run["parts"].items():
        assert rec["sha256"] == hashlib.sha256((done / name).read_bytes()).hexdigest()


def _flip_a_footer_byte(path: Path) -> None:
    """Change one byte of the footer's ``created_by`` text, keeping size and mtime: every page still
    decodes and checks; only the file's hash tells."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    i = data.rindex(b"parquet-cpp-arrow")
    data[i] = ord("P")
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_bit_rot_with_size_and_mtime_unchanged_is_found_by_check_full(done, make_cfg, tmp_path):
    from ntt_batch.cli import main

    out = _copy(done, tmp_path / "out")
    (part,) = out.glob("part-*.parquet")
    _flip_a_footer_byte(part)
    pq.read_table(part)  # readers still read it: no page checksum covers these bytes
    assert verify_output(str(out)).integrity_ok  # decoding every page cannot tell (documented)
    runner = CliRunner()
    res = runner.invoke(main, ["verify", str(out), "--check", "full"])
    assert res.exit_code == 3 and "bytes differ from the ones committed" in res.output, res.output
    res = runner.invoke(main, ["verify", str(out), "--check", "full", "--repair"])
    assert "quarantined" in res.output and (out / "_ntt" / "quarantine" / part.name).exists(), res.output
    again = _noop(make_cfg(out))  # the quarantined file's images are redone
    assert again.attempt["to_process"] == 3
    assert verify_output(str(out), check="full").integrity_ok


def test_a_touched_part_is_trusted_by_its_checksum(done, make_cfg, tmp_path, monkeypatch):
    """Size kept, mtime changed (a copy, a touch): the recorded sha256 vouches for it, no full decode."""
    out = _copy(done, tmp_path / "out")
    (part,) = out.glob("part-*.parquet")
    os.utime(part, ns=(part.stat().st_atime_ns, part.stat().st_mtime_ns + 10**9))
    decoded = []
    real = OutputFolder.quarantine_if_corrupt

    def spy(self, path, **kw):
        decoded.append(path)
        return real(self, path, **kw)

    monkeypatch.setattr(OutputFolder, "quarantine_if_corrupt", spy)
    res = _noop(make_cfg(out))
    assert res.attempt["to_process"] == 0 and decoded == []
    rec = json.loads((out / RUN_JSON).read_text())["parts"][part.name]
    assert rec["version"] == OutputFolder(str(out)).info(str(part)).version  # the record follows the file


def test_a_record_without_checksums_is_still_read(done, make_cfg, tmp_path):
    """run.json of an older version (no sha256): a changed part is decoded as before, then gets its hash."""
    out = _copy(done, tmp_path / "out")
    run = json.loads((out / RUN_JSON).read_text())
    for rec in run["parts"].values():
        del rec["sha256"]
    (out / RUN_JSON).write_text(json.dumps(run))
    (part,) = out.glob("part-*.parquet")
    os.utime(part, ns=(part.stat().st_atime_ns, part.stat().st_mtime_ns + 10**9))
    assert verify_output(str(out), check="full").integrity_ok  # nothing to compare against: not an error
    res = _noop(make_cfg(out))
    assert res.attempt["to_process"] == 0
    rec = json.loads((out / RUN_JSON).read_text())["parts"][part.name]
    assert rec["sha256"] == hashlib.sha256(part.read_bytes()).hexdigest()
