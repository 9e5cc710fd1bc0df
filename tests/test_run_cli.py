"""`ntt-batch run` flag/config handling (no Ray needed: --dry-run and validation errors)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from ntt_batch.cli import main
from ntt_batch.pipeline.config import JobConfig
from ntt_batch.storage.fs import StorageOptionsError, redact_options, storage_options_from


def _invoke(args):
    return CliRunner().invoke(main, args)


@pytest.fixture
def images(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    from PIL import Image

    for i in (5, 7):
        Image.new("RGB", (32, 24)).save(d / f"{i:012d}.jpg")
    return d


def test_config_file_and_flag_override(tmp_path, images):
    cfg = tmp_path / "job.yaml"
    cfg.write_text(
        f"images: {images}\nmemory: {tmp_path}\nout: {tmp_path / 'out'}\nlimit: 1\nsegmenter:\n  points_per_side: 4\n"
    )
    res = _invoke(["run", "--config", str(cfg), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "to process: 1" in res.output and "image_id=5" in res.output
    res = _invoke(["run", "--config", str(cfg), "--limit", "2", "--dry-run"])  # the flag wins
    assert "to process: 2" in res.output


def test_unknown_key_is_named(tmp_path, images):
    cfg = tmp_path / "job.yaml"
    cfg.write_text(f"images: {images}\nmemory: {tmp_path}\nout: {tmp_path}\nnum_actor: 2\n")
    res = _invoke(["run", "--config", str(cfg), "--dry-run"])
    assert res.exit_code != 0 and "'num_actor'" in res.output
    cfg.write_text(f"images: {images}\nmemory: {tmp_path}\nout: {tmp_path}\nsegmenter:\n  point_per_side: 4\n")
    res = _invoke(["run", "--config", str(cfg), "--dry-run"])
    assert res.exit_code != 0 and "'point_per_side'" in res.output


def test_bad_values_name_the_field(tmp_path, images):
    res = _invoke(
        [
            "run",
            "--images",
            str(images),
            "--memory",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
            "--pred-iou-threshold",
            "1.5",
            "--dry-run",
        ]
    )
    assert res.exit_code != 0 and "pred_iou_threshold" in res.output
    res = _invoke(
        ["run", "--images", str(images), "--manifest", "m.csv", "--memory", str(tmp_path), "--out", "o", "--dry-run"]
    )
    assert res.exit_code != 0 and "exactly one input" in res.output


def test_storage_option_flags_and_redaction(tmp_path, images):
    cfg = JobConfig.from_dict(
        {
            "images": str(images),
            "memory": "m",
            "out": "o",
            "storage_options": {"key": "AKIA", "secret": "s3cr3t", "client_kwargs": {"endpoint_url": "http://x"}},
        }
    )
    d = cfg.to_dict()
    assert d["storage_options"]["secret"] == "***" and d["storage_options"]["key"] == "***"
    assert d["storage_options"]["client_kwargs"]["endpoint_url"] == "http://x"
    assert redact_options({"aws_session_token": "t", "anon": True}) == {"aws_session_token": "***", "anon": True}


def test_storage_options_from_flags_and_a_job_files_block():
    base = {"profile": "file-profile", "client_kwargs": {"region_name": "eu-west-1"}}
    opts = storage_options_from(
        {
            "endpoint_url": "http://minio:9000",
            "anon": True,
            "profile": None,
            "storage_option": ["use_ssl=false", "default_block_size=1048576", "token=[abc"],
        },
        base,
    )
    assert opts == {
        "profile": "file-profile",
        "anon": True,
        "use_ssl": False,
        "default_block_size": 1048576,
        "token": "[abc",  # not valid YAML: kept as the text it is
        "client_kwargs": {"region_name": "eu-west-1", "endpoint_url": "http://minio:9000"},
    }
    assert base == {"profile": "file-profile", "client_kwargs": {"region_name": "eu-west-1"}}  # not modified
    assert storage_options_from({"anon": False, "storage_option": ()}) == {}
    assert storage_options_from({"storage_option": ["endpoint_url=http://x"]}) == {
        "client_kwargs": {"endpoint_url": "http://x"}
    }
    with pytest.raises(StorageOptionsError) as e:
        storage_options_from({"storage_option": ["secret:hunter2"]})
    assert "hunter2" not in str(e.value) and "#1" in str(e.value)
