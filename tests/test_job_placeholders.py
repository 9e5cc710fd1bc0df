"""The shipped ``jobs/autolabel-s3.yaml`` run as it is (issue 18): its ``YOUR-BUCKET`` placeholder is
refused by ``config check`` (exit 2, naming the keys) and by ``run`` before anything is written; with
a real-looking bucket but no credentials, ``run`` fails in one line saying how to provide them
(exit 2), not with botocore's 114-line traceback.

Through the real ``ntt-batch`` command (subprocesses). Nothing leaves the machine: every credential
source is disabled, and the S3 endpoint is a closed loopback port (botocore refuses to sign a request
without credentials before it connects anywhere).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ntt_batch.pipeline.placeholders import PLACEHOLDER, find_placeholders

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "jobs" / "autolabel-s3.yaml"
CLOSED_PORT_ENDPOINT = "http://127.0.0.1:9"  # discard port: nothing listens


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """This checkout's package, a private HOME, and no AWS credentials from anywhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env.update(
        PYTHONPATH=str(REPO),
        HOME=str(home),
        AWS_CONFIG_FILE="/dev/null",
        AWS_SHARED_CREDENTIALS_FILE="/dev/null",
        AWS_EC2_METADATA_DISABLED="true",
        **extra,
    )
    return env


def _ntt(args: list[str], tmp_path: Path, timeout: float = 300, **env) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("ntt-batch")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "ntt_batch.cli"]
    return subprocess.run(
        cmd + args, cwd=tmp_path, env=_env(tmp_path, **env), capture_output=True, text=True, timeout=timeout
    )


def _error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("Error:")]


def test_shipped_job_file_is_refused_by_config_check(tmp_path):
    res = _ntt(["config", "check", str(SHIPPED)], tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    (line,) = _error_lines(res.stderr)
    assert "images, out, references.file, references.image_root: 'YOUR-BUCKET' looks like a placeholder" in line


def test_shipped_job_file_is_refused_by_run_before_writing_anything(tmp_path):
    res = _ntt(["run", "--config", str(SHIPPED)], tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    (line,) = _error_lines(res.stderr)
    assert "'YOUR-BUCKET' looks like a placeholder" in line
    # memory: ~/ntt-banks/... is not created, nor anything in the working folder
    assert list((tmp_path / "home").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]
    # the same through flags
    res = _ntt(
        ["run", "--images", "s3://YOUR-BUCKET/raw/", "--memory", str(tmp_path / "bank"), "--out", "out/"], tmp_path
    )
    assert res.returncode == 2 and "images: 'YOUR-BUCKET' looks like a placeholder" in res.stderr, res.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "bank").exists()


def _real_bucket_copy(tmp_path: Path) -> Path:
    text = SHIPPED.read_text().replace("YOUR-BUCKET", "acme-labeling-data")
    text = text.replace("~/ntt-banks/autolabel-dinov2_vitl14", str(tmp_path / "bank"))
    assert "storage_options: {}" in text
    text = text.replace("storage_options: {}", f'storage_options: {{endpoint_url: "{CLOSED_PORT_ENDPOINT}"}}')
    job = tmp_path / "job.yaml"
    job.write_text(text)
    return job


def test_run_without_credentials_is_one_line_exit_2(tmp_path):
    job = _real_bucket_copy(tmp_path)
    res = _ntt(["config", "check", str(job)], tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    res = _ntt(["run", "--config", str(job)], tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    (line,) = _error_lines(res.stderr)
    assert "storage credentials: NoCredentialsError: Unable to locate credentials; provide them with" in line
    for way in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "storage_options"):
        assert way in line
    assert len((res.stdout + res.stderr).strip().splitlines()) <= 3, res.stdout + res.stderr
    assert not (tmp_path / "bank").exists()


def test_partial_credentials_name_the_missing_variable(tmp_path):
    res = _ntt(
        [
            "export",
            "--format",
            "results",
            "--shards",
            "s3://acme-labeling-data/out/",
            "--out",
            str(tmp_path / "r.json"),
            "--endpoint-url",
            CLOSED_PORT_ENDPOINT,
        ],
        tmp_path,
        AWS_ACCESS_KEY_ID="AKIAIOSFODNN7EXAMPLE",
    )
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    (line,) = _error_lines(res.stderr)
    assert (
        "storage credentials: PartialCredentialsError: Partial credentials found in env, missing: AWS_SECRET_ACCESS_KEY"
        in line
    )


@pytest.mark.parametrize(
    "value, token",
    [
        ("s3://YOUR-BUCKET/raw/images/", "YOUR-BUCKET"),
        ("s3://data/YOUR_PREFIX/x", "YOUR_PREFIX"),
        ("s3://your-bucket/raw/", "your-bucket"),
        ("s3://<bucket>/raw/", "<bucket>"),
        ("https://<your-endpoint>:9000", "<your-endpoint>"),
        ("gs://change-me/x", "change-me"),
        ("/mnt/CHANGEME/bank", "CHANGEME"),
    ],
)
def test_placeholders_found(value, token):
    assert find_placeholders([("k", value)]) == {token: ["k"]}


@pytest.mark.parametrize(
    "value",
    ["s3://my-data-lake/raw/", "s3://yourcompany-data/x", "/home/you/your_images/", "s3://b/run=2026-01/", "a<b"],
)
def test_real_locations_are_not_placeholders(value):
    assert not PLACEHOLDER.search(value)
