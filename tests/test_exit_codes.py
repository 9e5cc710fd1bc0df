"""The exit-code contract (``ntt_batch.pipeline.exit_codes``), through the real `ntt-batch` program.

Each bad job file or argument runs `ntt-batch` in a subprocess and must exit with its documented
code, print exactly one line on stderr (``Error: ...``) naming the key or path, never a
traceback, and never a secret. The exception → code mapping is unit-tested for the failures that
cannot be staged here (a full disk, a read-only file system).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ntt_batch.cli.errors import failure_of
from ntt_batch.pipeline.exit_codes import (
    EXIT_ENVIRONMENT,
    EXIT_INTERRUPTED,
    EXIT_LOCKED,
    EXIT_USAGE,
)

REPO = Path(__file__).resolve().parents[1]
CLOSED_PORT = "http://127.0.0.1:9"  # discard: nothing listens on loopback port 9


def ntt(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run the `ntt-batch` program (this checkout's package) and capture its output; no AWS
    credentials reach it from this machine's environment or files."""
    program = shutil.which("ntt-batch")
    cmd = [program] if program else [sys.executable, "-m", "ntt_batch.cli"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS" and not k.startswith("AWS_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    env.update(AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull, AWS_EC2_METADATA_DISABLED="true")
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout, env=env)


def one_error_line(res: subprocess.CompletedProcess, code: int) -> str:
    """The only line on stderr, after checking the exit code and that no traceback was printed."""
    assert res.returncode == code, f"exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    assert "Traceback" not in res.stderr + res.stdout, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    return lines[0]


@pytest.fixture
def job(tmp_path):
    """Write a job file: base keys (a local image folder, a bank folder, an output) + ``extra`` text."""
    images = tmp_path / "imgs"
    images.mkdir()
    from PIL import Image

    Image.new("RGB", (32, 24)).save(images / "000000000005.jpg")

    def write(extra: str, *, images_uri: str | None = None, out: str | None = None) -> Path:
        path = tmp_path / "job.yaml"
        path.write_text(
            f"images: {images_uri or images}\nmemory: {tmp_path / 'bank'}\nout: {out or tmp_path / 'out'}\n{extra}"
        )
        return path

    return write


# ----------------------------------------------------------------------------- usage and configuration: 2


@pytest.mark.parametrize(
    "block, shown",
    [("segmenter: [1, 2]", "[1, 2] (list)"), ("segmenter: 5", "5 (int)"), ("segmenter: fast", "'fast' (str)")],
)
def test_a_segmenter_block_that_is_not_a_mapping(job, block, shown):
    path = job(block + "\n")
    for args in (["run", "--config", str(path), "--dry-run", "--points-per-side", "4"], ["config", "check", str(path)]):
        line = one_error_line(ntt(*args), EXIT_USAGE)
        assert f"{path}: segmenter: expected a mapping of settings, got {shown}" in line, line
        assert "points_per_side: 16" in line  # the fix, by example


def test_out_pointing_at_a_regular_file(job, tmp_path):
    target = tmp_path / "results.parquet"
    target.write_bytes(b"not a folder")
    for dry in (["--dry-run"], []):
        line = one_error_line(ntt("run", "--config", str(job("", out=str(target))), *dry), EXIT_USAGE)
        assert f"out: {target} is a file, not a folder" in line, line
    assert target.read_bytes() == b"not a folder"


def test_config_check_on_an_invalid_file(job):
    line = one_error_line(ntt("config", "check", str(job("limit: three\n"))), EXIT_USAGE)
    assert "limit: expected an integer, got 'three' (str)" in line


def test_a_truncated_bank_file_is_named(tmp_path, job):
    from ntt_batch.benchmark import random_bank
    from ntt_batch.method.memory_bank import TENSORS_FILE

    bank = tmp_path / "bank"
    random_bank("dinov2_vits14", 384, num_classes=2).save(bank)
    tensors = bank / TENSORS_FILE
    tensors.write_bytes(tensors.read_bytes()[:100])
    for args in (["memory", "info", str(bank)], ["run", "--config", str(job("")), "--device", "cpu"]):
        line = one_error_line(ntt(*args), EXIT_USAGE)
        assert f"{tensors}: damaged safetensors file" in line and "memory build" in line, line
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_verify_on_what_is_not_a_job_output(tmp_path):
    a_file = tmp_path / "part-0.parquet"
    a_file.write_bytes(b"PAR1")
    line = one_error_line(ntt("verify", str(a_file)), EXIT_USAGE)
    assert f"{a_file} is a file, not the output folder of `ntt-batch run`" in line, line
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(b"x")
    line = one_error_line(ntt("verify", str(folder)), EXIT_USAGE)
    assert f"{folder} is not the output of `ntt-batch run`" in line and "found 1 entry (cat.jpg)" in line, line
    line = one_error_line(ntt("verify", str(tmp_path / "nothing-here")), EXIT_USAGE)
    assert f"{tmp_path / 'nothing-here'} does not exist" in line, line


@pytest.mark.parametrize("block", ['storage_options: "secret=abc"', "storage_options: [secret, abc]"])
def test_a_storage_options_secret_of_the_wrong_shape_is_never_printed(job, block):
    path = job(block + "\n", images_uri="s3://bucket/in/")
    for args in (["config", "check", str(path)], ["run", "--config", str(path), "--dry-run"]):
        res = ntt(*args)
        line = one_error_line(res, EXIT_USAGE)
        assert f"{path}: storage_options: expected a mapping" in line, line
        assert "abc" not in res.stdout + res.stderr


def test_run_rejects_a_list_of_storage_options_exactly_as_config_check_does(job):
    path = job("storage_options: [ab]\n", images_uri="s3://bucket/in/")
    checked = one_error_line(ntt("config", "check", str(path)), EXIT_USAGE)
    ran = one_error_line(ntt("run", "--config", str(path), "--dry-run"), EXIT_USAGE)
    assert checked == ran and "storage_options: expected a mapping, got a list" in ran


def test_an_endpoint_url_with_a_password_is_never_printed(job):
    url = CLOSED_PORT.replace("://", "://user:hunter2-pw@")
    path = job(f"storage_options:\n  endpoint_url: {url}\n", images_uri="s3://bucket/in/")
    for args in (
        ["config", "check", str(path)],
        ["run", "--config", str(path), "--dry-run"],
        ["run", "--images", "s3://bucket/in/", "--memory", "m", "--out", "o", "--endpoint-url", url, "--dry-run"],
    ):
        res = ntt(*args)
        line = one_error_line(res, EXIT_USAGE)
        assert "endpoint_url: credentials in the URL are not supported" in line, line
        assert "hunter2" not in res.stdout + res.stderr


def test_the_run_record_and_messages_hide_url_credentials():
    from ntt_batch.cli.errors import one_line
    from ntt_batch.pipeline.config import JobConfig

    cfg = JobConfig(
        images="/data/in",
        memory="m",
        out="/data/out",
        storage_options={"client_kwargs": {"endpoint_url": "http://user:SECRET@host:9000"}, "secret": "s"},
    )
    recorded = cfg.to_dict()["storage_options"]  # what run.json's "config" holds
    assert recorded == {"client_kwargs": {"endpoint_url": "http://***@host:9000"}, "secret": "***"}
    assert one_line('Could not connect to "http://u:p@ss@h:1/b?x=1"\nsecond line') == (
        'Could not connect to "http://***@h:1/b?x=1" second line'
    )


def test_debug_prints_the_traceback_and_keeps_the_exit_code(job):
    res = ntt("--debug", "run", "--config", str(job("segmenter: 5\n")), "--dry-run")
    assert res.returncode == EXIT_USAGE, res.stderr
    assert "Traceback" in res.stderr and "ConfigError" in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("Error: ")


def test_missing_storage_credentials_are_a_configuration_error(s3_server):
    """Missing credentials exit 2 (the fix is a setting or an environment variable, like any
    configuration error; issue 18), in one line saying where credentials come from."""
    base = ["run", "--images", "s3://bucket/in/", "--memory", "m", "--out", "o", "--endpoint-url", s3_server]
    line = one_error_line(ntt(*base, "--dry-run"), EXIT_USAGE)
    assert "storage credentials: NoCredentialsError" in line and "AWS_ACCESS_KEY_ID" in line and "--anon" in line
    line = one_error_line(ntt(*base, "--profile", "no-such-profile", "--dry-run"), EXIT_USAGE)
    assert "ProfileNotFound" in line and "no-such-profile" in line


# ----------------------------------------------------------------------------- environment: 5


def test_an_unreachable_object_store_is_one_line_and_exit_5(job):
    path = job(
        f"storage_options:\n  endpoint_url: {CLOSED_PORT}\n  key: a\n  secret: b\n", images_uri="s3://bucket/in/"
    )
    line = one_error_line(ntt("run", "--config", str(path), "--dry-run"), EXIT_ENVIRONMENT)
    assert line.startswith("Error: storage unreachable: ") and "127.0.0.1:9" in line, line
    assert "--endpoint-url" in line  # what to check


@pytest.mark.parametrize(
    "number, says",
    [
        (errno.ENOSPC, "no space left on the device: /out/part-1.parquet; free space"),
        (errno.EACCES, "permission denied: /out/part-1.parquet; give this user access"),
        (errno.EROFS, "read-only file system: /out/part-1.parquet; write to a writable location"),
    ],
)
def test_disk_and_permission_failures_map_to_exit_5(number, says):
    failure = failure_of(OSError(number, os.strerror(number), "/out/part-1.parquet"))
    assert failure is not None and failure.code == EXIT_ENVIRONMENT and failure.message.startswith(says)
    wrapped = RuntimeError("the committer failed")  # a library's wrapper: the cause decides
    wrapped.__cause__ = OSError(number, os.strerror(number), "/out/x")
    assert failure_of(wrapped).code == EXIT_ENVIRONMENT


def test_the_mapping_of_other_failures():
    from botocore.exceptions import EndpointConnectionError, NoCredentialsError

    from ntt_batch.method.config import ConfigError
    from ntt_batch.output.lease import LeaseHeldError

    unreachable = failure_of(EndpointConnectionError(endpoint_url="http://user:pw@10.0.0.1:9000/b"))
    assert unreachable.code == EXIT_ENVIRONMENT and "http://***@10.0.0.1:9000/b" in unreachable.message
    assert failure_of(TimeoutError("read timed out")).code == EXIT_ENVIRONMENT
    credentials = failure_of(NoCredentialsError())
    assert credentials.code == EXIT_USAGE and "AWS_ACCESS_KEY_ID" in credentials.message  # missing credentials: 2
    assert failure_of(LeaseHeldError("held by run x")).code == EXIT_LOCKED
    assert failure_of(KeyboardInterrupt(), interrupted_hint="rerun").message == "interrupted: rerun"
    assert failure_of(KeyboardInterrupt()).code == EXIT_INTERRUPTED
    assert failure_of(ConfigError("limit: bad")).message == "limit: bad"  # names the key: no type prefix
    assert failure_of(FileNotFoundError("x.json")).message == "FileNotFoundError: x.json"
    assert failure_of(TypeError("a bug")) is None  # unexpected: traceback, exit 70


# ----------------------------------------------------------------------------- renamed command


def test_merge_is_an_alias_of_export_with_a_notice(tmp_path):
    missing = str(tmp_path / "no-such-output")
    args = ["--shards", missing, "--out", str(tmp_path / "r.json"), "--format", "results"]
    new, old = ntt("export", *args), ntt("merge", *args)
    assert new.returncode == old.returncode == EXIT_USAGE
    notice, *rest = old.stderr.strip().splitlines()
    assert notice.startswith("notice: `merge` is now `export`")
    assert rest == new.stderr.strip().splitlines() and len(rest) == 1 and missing in rest[0]


# ----------------------------------------------------------------------------- the process's end


def test_the_program_ends_after_the_exit_handlers_and_threads_with_its_code(tmp_path):
    """`ntt-batch` ends through `exit_now`: threads joined and atexit handlers run (Ray's shutdown,
    logging) as at a normal exit, then no interpreter finalization (where an Arrow I/O thread
    releasing a reader could abort the process: `verify` exited 134 about once in 25)."""
    script = f"""
import atexit, pathlib, threading, time
from ntt_batch.cli.app import exit_now
out = pathlib.Path({str(tmp_path)!r})
atexit.register(lambda: (out / "atexit").write_text("ran"))
threading.Thread(target=lambda: (time.sleep(0.3), (out / "thread").write_text("done"))).start()
from concurrent.futures import ThreadPoolExecutor
pool = ThreadPoolExecutor(2)  # idle workers, never shut down: stopped as at a normal exit, no hang
pool.submit(time.sleep, 0.1).result()
print("last line", end="")
exit_now(3)
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 3, res.stderr
    assert res.stdout == "last line"  # flushed
    assert (tmp_path / "atexit").read_text() == "ran" and (tmp_path / "thread").read_text() == "done"


def test_verify_of_a_consistent_output_exits_0_every_time(tmp_path):
    """A few `verify` runs of a small consistent output: 0 each time, never 134 (see above)."""
    import json

    import pyarrow.parquet as pq

    from ntt_batch.output.shards import SHARD_SCHEMA, rows_to_table

    out = tmp_path / "out"
    (out / "_ntt").mkdir(parents=True)
    blank = dict.fromkeys(SHARD_SCHEMA.names)
    parts = {}
    for k in range(3):
        rows = [
            {**blank, "image_id": i, "image_uri": f"/in/{i}.jpg", "status": "ok", "num_instances": 0, "instances": []}
            for i in range(k * 200, (k + 1) * 200)
        ]
        name = f"part-test-{k}.parquet"
        pq.write_table(rows_to_table(rows), out / name, row_group_size=50, write_page_checksum=True)
        parts[name] = {"rows": 200}
    (out / "_ntt" / "run.json").write_text(json.dumps({"parts": parts, "attempts": []}))
    for _ in range(5):
        res = ntt("verify", str(out), "--no-inputs")
        assert res.returncode == 0, res.stdout + res.stderr
        assert "verdict: consistent" in res.stdout and "600 rows" in res.stdout
