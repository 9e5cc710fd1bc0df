"""Job files and flags are type-checked at load: strict booleans, numbers, strings and nested blocks.

Each wrong type is an error naming the key, the value and the expected type, caught by
`ntt-batch config check` (and by `run`) before anything runs; a secret is never echoed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from click.testing import CliRunner

from ntt_batch.cli import main
from ntt_batch.method.config import ConfigError, SegmenterConfig, config_from_dict
from ntt_batch.pipeline.bank_prep import ReferencesSpec
from ntt_batch.pipeline.config import JobConfig

BASE = "images: s3://bucket/in/\nmemory: bank\nout: s3://bucket/out/\n"
REFS = "references:\n  image_root: s3://bucket/imgs/\n  annotations: s3://bucket/a.json\n  shots: 1\n"


def _check(tmp_path: Path, text: str):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path, CliRunner().invoke(main, ["config", "check", str(path)])


@pytest.mark.parametrize(
    "text, message",
    [
        ("limit: three\n", "limit: expected an integer, got 'three' (str)"),
        ("limit: 2.5\n", "limit: expected an integer, got 2.5 (float)"),
        ('num_actors: "2"\n', "num_actors: expected an integer, got '2' (str)"),
        ('allow_errors: "false"\n', "allow_errors: expected true or false, got 'false' (str)"),
        ("allow_errors: 0\n", "allow_errors: expected true or false, got 0 (int)"),
        ('download: "no"\n', "download: expected true or false, got 'no' (str)"),
        ("batch_size: true\n", "batch_size: expected an integer, got True (bool)"),
        ("actor_num_cpus: one\n", "actor_num_cpus: expected a number, got 'one' (str)"),
        ("actor_num_cpus: .nan\n", "actor_num_cpus: expected a finite number, got nan (float)"),
        ("sam2: 5\n", "sam2: expected a string, got 5 (int)"),
        ("ray_address: [a]\n", "ray_address: expected a string, got ['a'] (list)"),
        (
            "segmenter:\n  pred_iou_threshold: high\n",
            "segmenter.pred_iou_threshold: expected a number, got 'high' (str)",
        ),
        ('segmenter:\n  points_per_side: "32"\n', "segmenter.points_per_side: expected an integer, got '32' (str)"),
        ('segmenter:\n  bf16: "true"\n', "segmenter.bf16: expected true or false, got 'true' (str)"),
        (
            "segmenter:\n  resize_mode: stretch\n",
            "segmenter.resize_mode: expected one of 'squash', 'letterbox', got 'stretch' (str)",
        ),
        ("segmenter: 3\n", "segmenter: expected a mapping of settings, got 3 (int)"),
        (REFS.replace("shots: 1", 'shots: "10"'), "references.shots: expected an integer, got '10' (str)"),
        (
            REFS + '  allow_fewer_shots: "yes"\n',
            "references.allow_fewer_shots: expected true or false, got 'yes' (str)",
        ),
        (REFS + "  context_ratio: wide\n", "references.context_ratio: expected a number, got 'wide' (str)"),
        (REFS + "  seed: 3.3\n", "references.seed: expected an integer, got 3.3 (float)"),
        ("references: [a, b]\n", "references: expected a mapping of settings, got ['a', 'b'] (list)"),
        (  # the value is never shown: a list or string here may be a credential
            "storage_options: [anon]\n",
            "storage_options: expected a mapping, got a list (value not shown: it may hold a credential)",
        ),
        ('storage_options:\n  anon: "false"\n', "storage_options.anon: expected true or false, got 'false' (str)"),
        (
            'storage_options:\n  max_concurrency: "4"\n',
            "storage_options.max_concurrency: expected an integer, got '4' (str)",
        ),
        (
            "storage_options:\n  client_kwargs: http://minio:9000\n",
            "storage_options.client_kwargs: expected a mapping, got 'http://minio:9000' (str)",
        ),
        (
            "storage_options:\n  client_kwargs:\n    endpoint_url: 9000\n",
            "storage_options.client_kwargs.endpoint_url: expected a string, got 9000 (int)",
        ),
    ],
)
def test_config_check_names_key_value_and_type(tmp_path, text, message):
    path, res = _check(tmp_path, BASE + text)
    assert res.exit_code == 2, res.output
    assert f"{path}: {message}" in res.output, res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1, res.output


def test_a_secret_of_the_wrong_type_is_not_echoed(tmp_path):
    _, res = _check(tmp_path, BASE + "storage_options:\n  key: AKIAEXAMPLE\n  secret: 31415926535\n")
    assert res.exit_code == 2
    assert "storage_options.secret: expected a string, got (value hidden) (int)" in res.output
    assert "31415926535" not in res.output and "AKIAEXAMPLE" not in res.output


def test_run_refuses_the_same_values_before_starting(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(
        f'images: {tmp_path}\nmemory: {tmp_path / "bank"}\nout: {tmp_path / "out"}\nallow_errors: "false"\n'
    )
    res = CliRunner().invoke(main, ["run", "--config", str(path), "--dry-run"])
    assert res.exit_code == 2 and "allow_errors: expected true or false, got 'false' (str)" in res.output, res.output
    # a flag value takes the same check: --storage-option values are read as YAML scalars
    res = CliRunner().invoke(
        main,
        [
            "run",
            "--images",
            "s3://bucket/in/",
            "--memory",
            "m",
            "--out",
            "s3://bucket/o/",
            "--storage-option",
            "use_ssl=maybe",
            "--dry-run",
        ],
    )
    assert res.exit_code == 2 and "storage_options.use_ssl: expected true or false, got 'maybe' (str)" in res.output


def test_valid_values_pass_and_are_normalised():
    cfg = JobConfig.from_dict(
        {
            "images": "s3://b/in/",
            "memory": "bank",
            "out": "s3://b/out/",
            "limit": None,
            "actor_num_cpus": 2,
            "allow_errors": False,
            "segmenter": None,
            "storage_options": None,
            "references": {"image_root": "s3://b/i/", "annotations": "s3://b/a.json", "shots": 3, "context_ratio": 0},
        }
    ).validate()
    assert cfg.actor_num_cpus == 2.0 and isinstance(cfg.actor_num_cpus, float)  # an int is fine for a float
    assert cfg.segmenter == SegmenterConfig() and cfg.storage_options == {}
    assert cfg.references.context_ratio == 0.0 and cfg.references.shots == 3


def test_configs_built_in_python_are_checked_too():
    with pytest.raises(ConfigError, match=r"^limit: expected an integer, got '3' \(str\)$"):
        JobConfig(images="s3://b/in/", memory="bank", out="s3://b/out/", limit="3").validate()
    with pytest.raises(ConfigError, match=r"^segmenter.bf16: expected true or false, got 'false' \(str\)$"):
        JobConfig(
            images="s3://b/in/", memory="bank", out="s3://b/out/", segmenter=SegmenterConfig(bf16="false")
        ).validate()
    with pytest.raises(ConfigError, match=r"^references.shots: expected an integer, got '2' \(str\)$"):
        ReferencesSpec(image_root="x", annotations="a.json", shots="2").validate()
    # a mapping for a nested block is built into its settings class
    cfg = JobConfig(images="s3://b/in/", memory="bank", out="s3://b/out/", segmenter={"points_per_side": 8}).validate()
    assert cfg.segmenter.points_per_side == 8


def test_every_field_of_the_settings_classes_has_a_checked_type():
    """A field added later (another helper adds segmenter options) is checked as long as it is annotated."""
    from ntt_batch.method.config import check_value

    for cls in (JobConfig, SegmenterConfig, ReferencesSpec):
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            hints = __import__("typing").get_type_hints(cls)
            assert check_value(hints[f.name], default, "", f.name) == default  # defaults type-check
            with pytest.raises(ConfigError, match=f"{f.name}: expected"):
                check_value(hints[f.name], object(), "", f.name)


def test_unknown_keys_and_range_errors_still_name_the_block():
    with pytest.raises(ConfigError, match=r"^job.yaml: segmenter: unknown key\(s\) 'point_per_side'"):
        JobConfig.from_dict({"segmenter": {"point_per_side": 4}}, where="job.yaml")
    with pytest.raises(ConfigError, match=r"^x: segmenter: invalid value for pred_iou_threshold: 2.0"):
        config_from_dict(SegmenterConfig, {"pred_iou_threshold": 2}, "x", path="segmenter")
