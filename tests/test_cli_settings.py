"""Settings declared once (method/config.py), command-line flags generated from them (cli/settings_options.py).

Every SegmenterConfig field marked as a flag is a flag of both `segment` and `run`, with the
dataclass's default and help; `run` lets only flags given on the command line override the job
file; choices come from the annotations; `checkpoints list` shows licences and gated models.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing

import pytest
import yaml
from click.testing import CliRunner

from ntt_batch.cli import SEGMENTER_FLAGS, main, segmenter_config_from_flags
from ntt_batch.cli.settings_options import flag_fields, flag_name
from ntt_batch.method.config import MemoryConfig, SegmenterConfig
from ntt_batch.method.mergers import MERGERS

# The flags `segment` and `run` had before they were generated, and the ones added with the mergers.
OLD_FLAGS = {
    "points_per_side",
    "points_batch_size",
    "pred_iou_threshold",
    "nms_iou_threshold",
    "max_detections",
    "add_no_mem_embed",
    "drop_unmatched_before_nms",
    "resize_mode",
    "point_grid",
    "device",
    "bf16",
    "compile",
    "tile_size",
    "tile_overlap",
}
NEW_FLAGS = {
    "merger",
    "merge_exponent",
    "graph_diffusion_alpha",
    "graph_diffusion_steps",
    "graph_diffusion_transition",
    "encoder_image_size",
    "implementation",
    "use_negatives",  # docs/negative_references.md
    "negative_sigma",
}


def _invoke(args):
    return CliRunner().invoke(main, args)


def _params(command: str) -> dict:
    cmd = main.commands[command]
    return {p.name: p for p in cmd.params}


def test_flag_fields_are_the_old_flags_and_the_new_ones():
    assert set(SEGMENTER_FLAGS) == OLD_FLAGS | NEW_FLAGS
    assert {f.name for f in flag_fields(MemoryConfig)} == {"crop_size", "context_ratio"}


@pytest.mark.parametrize("command", ["segment", "run"])
def test_every_flag_field_is_a_flag_with_the_dataclass_default_and_help(command):
    params = _params(command)
    defaults = SegmenterConfig()
    for f in flag_fields(SegmenterConfig):
        assert f.name in params, f"{command} has no {flag_name(f.name)}"
        p = params[f.name]
        assert flag_name(f.name) in p.opts
        assert p.default == getattr(defaults, f.name), f.name
        assert p.help == f.metadata["help"] and p.help, f.name
    # unmarked fields are not flags
    for f in dataclasses.fields(SegmenterConfig):
        if not f.metadata.get("flag"):
            assert f.name not in params, f.name


def test_every_settings_field_has_help_text():
    for cls in (SegmenterConfig, MemoryConfig):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"


def test_help_shows_each_flag_with_its_default():
    out = _invoke(["segment", "--help"]).output
    for f in flag_fields(SegmenterConfig):
        assert flag_name(f.name) in out
    flat = " ".join(out.split())
    for text in (
        "[default: 32]",
        "[default: soft]",
        "[default: code]",
        "[default: 0.3]",
        "(off)",
        "(the encoder's native size)",
        "method.md §4.2",
        "graph-diffusion",
    ):
        assert text in flat, text
    run_help = " ".join(_invoke(["run", "--help"]).output.split())
    assert "--graph-diffusion-transition [code|paper]" in run_help and "[default: 0.5" in run_help
    build_help = " ".join(_invoke(["memory", "build", "--help"]).output.split())
    assert "--crop-size" in build_help and "--context-ratio" in build_help and "[default: 0.2" in build_help


def test_flag_types_follow_the_annotations():
    params = _params("segment")
    assert list(params["graph_diffusion_transition"].type.choices) == ["code", "paper"]
    assert list(params["resize_mode"].type.choices) == ["squash", "letterbox"]
    assert list(params["merger"].type.choices) == list(MERGERS.names())  # the registry is the one list
    assert params["bf16"].is_flag and params["add_no_mem_embed"].is_flag
    assert params["tile_size"].type.min == 0 and params["tile_size"].default is None
    assert params["tile_overlap"].type.min == 0
    assert params["encoder_image_size"].default is None
    hints = typing.get_type_hints(SegmenterConfig)
    assert hints["encoder_image_size"] == int | None  # annotations still resolve (from __future__ import annotations)


def test_merger_registry_is_torch_free_and_builds_the_mergers():
    code = (
        "import sys; from ntt_batch.method.config import SegmenterConfig; "
        "from ntt_batch.method.mergers import MERGERS; "
        "assert MERGERS.names()[:2] == ('soft', 'graph-diffusion'); "
        "SegmenterConfig(merger='graph-diffusion').validate(); "
        "assert 'torch' not in sys.modules, 'the merger names pulled in torch'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    merging = pytest.importorskip("ntt_batch.method.merging")
    assert type(MERGERS["graph-diffusion"](SegmenterConfig())) is merging.GraphDiffusionMerger


def _flags_kw(command="segment", **overrides):
    kw = {p.name: p.default for p in main.commands[command].params}
    kw.update(overrides)
    return kw


def test_segment_flags_build_the_config():
    cfg = segmenter_config_from_flags(
        _flags_kw(
            device="cpu",
            merger="graph-diffusion",
            graph_diffusion_steps=5,
            encoder_image_size=448,
            implementation="reference",
        )
    )
    assert (cfg.merger, cfg.graph_diffusion_steps, cfg.encoder_image_size, cfg.implementation) == (
        "graph-diffusion",
        5,
        448,
        "reference",
    )
    # a dict with only some flags: the others keep the dataclass default
    assert segmenter_config_from_flags({"points_per_side": 4}) == dataclasses.replace(
        SegmenterConfig(), points_per_side=4
    )


@pytest.fixture
def job(tmp_path, monkeypatch):
    """`run --dry-run` with run_job replaced: returns (invoke(args) -> JobConfig, job file path)."""
    import ntt_batch.pipeline.job as job_module

    seen = {}

    class _Result:
        exit_code = 0

    def fake_run_job(cfg, **_kw):
        seen["cfg"] = cfg
        return _Result()

    monkeypatch.setattr(job_module, "run_job", fake_run_job)
    images = tmp_path / "imgs"
    images.mkdir()
    path = tmp_path / "job.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "images": str(images),
                "memory": str(tmp_path),
                "out": str(tmp_path / "o"),
                "segmenter": {
                    "points_per_side": 4,
                    "merger": "graph-diffusion",
                    "graph_diffusion_alpha": 0.1,
                    "bf16": True,
                },
            }
        )
    )

    def invoke(args, whole=False):
        seen.clear()
        res = _invoke(["run", "--config", str(path), "--dry-run", *args])
        assert res.exit_code == 0, res.output
        return seen["cfg"] if whole else seen["cfg"].segmenter

    return invoke, path


def test_every_job_flag_field_is_a_run_flag_with_the_dataclass_default_and_help():
    from ntt_batch.pipeline.config import JobConfig

    params, defaults = _params("run"), JobConfig()
    names = {f.name for f in flag_fields(JobConfig)}
    assert names >= {
        "memory",
        "out",
        "images",
        "manifest",
        "annotations",
        "image_root",
        "sam2",
        "num_actors",
        "batch_size",
        "max_pixels",
        "limit",
        "allow_errors",
        "ray_address",
        "retry_errors",
        "allow_job_change",
        "block_rows",
        "target_file_mb",
    }  # today's job flags, all generated
    for f in flag_fields(JobConfig):
        p = params[f.name]
        assert flag_name(f.name) in p.opts and p.help == f.metadata["help"], f.name
        want = getattr(defaults, f.name)
        assert p.default == (None if want == "" else want), f.name  # required text settings: unset
    assert "--sam2" in _params("segment")["sam2"].opts  # one declaration for both commands


def test_run_job_flags_override_the_job_file_only_when_given(job):
    invoke, path = job
    cfg = invoke([], whole=True)
    assert (cfg.num_actors, cfg.batch_size, cfg.block_rows, cfg.allow_errors) == (1, 2, 16, False)
    cfg = invoke(
        ["--num-actors", "3", "--block-rows", "4", "--allow-errors", "--sam2", "sam2.1_hiera_tiny"], whole=True
    )
    assert (cfg.num_actors, cfg.block_rows, cfg.allow_errors, cfg.sam2) == (3, 4, True, "sam2.1_hiera_tiny")
    data = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**data, "batch_size": 5, "target_file_mb": 64}))
    cfg = invoke(["--num-actors", "2"], whole=True)
    assert (cfg.batch_size, cfg.target_file_mb, cfg.num_actors) == (5, 64, 2)  # the file's, and the flag given


def test_run_yaml_values_are_overridden_only_by_flags_given(job):
    invoke, _ = job
    seg = invoke([])  # no flag given: the job file's values, the dataclass defaults elsewhere
    assert (seg.points_per_side, seg.merger, seg.graph_diffusion_alpha, seg.bf16) == (4, "graph-diffusion", 0.1, True)
    assert seg.max_detections == SegmenterConfig().max_detections
    seg = invoke(["--points-per-side", "8", "--max-detections", "7", "--merger", "soft"])
    assert (seg.points_per_side, seg.max_detections, seg.merger) == (8, 7, "soft")
    assert seg.graph_diffusion_alpha == 0.1 and seg.bf16  # not given: the file's values stay
    # a flag given with the default's value still overrides the file
    seg = invoke(["--points-per-side", "32"])
    assert seg.points_per_side == 32


def test_merger_flag_reaches_the_config(job, tmp_path):
    invoke, _ = job
    seg = invoke(
        [
            "--merger",
            "graph-diffusion",
            "--graph-diffusion-transition",
            "paper",
            "--graph-diffusion-steps",
            "3",
            "--merge-exponent",
            "1.0",
            "--encoder-image-size",
            "224",
        ]
    )
    assert (
        seg.merger,
        seg.graph_diffusion_transition,
        seg.graph_diffusion_steps,
        seg.merge_exponent,
        seg.encoder_image_size,
    ) == ("graph-diffusion", "paper", 3, 1.0, 224)
    images = tmp_path / "imgs"
    res = _invoke(
        [
            "segment",
            "--memory",
            str(tmp_path),
            "--images",
            str(images),
            "--out",
            str(tmp_path / "r.json"),
            "--merger",
            "graph-diffusion",
            "--graph-diffusion-alpha",
            "2",
        ]
    )
    assert res.exit_code == 2 and "graph_diffusion_alpha" in res.output  # validated before any model loads


def test_bad_choice_is_rejected_naming_the_choices(tmp_path):
    res = _invoke(
        [
            "run",
            "--images",
            str(tmp_path),
            "--memory",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
            "--graph-diffusion-transition",
            "papers",
            "--dry-run",
        ]
    )
    assert res.exit_code == 2
    assert "--graph-diffusion-transition" in res.output and "'code'" in res.output and "'paper'" in res.output
    res = _invoke(["segment", "--memory", str(tmp_path), "--out", "r.json", "--merger", "graph_diffusion"])
    assert res.exit_code == 2 and "'soft'" in res.output and "'graph-diffusion'" in res.output


def test_yaml_merger_name_is_checked(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(
        f"images: {tmp_path}\nmemory: {tmp_path}\nout: {tmp_path}/o\nsegmenter:\n  merger: graph_diffusion\n"
    )
    res = _invoke(["config", "check", str(path)])
    assert res.exit_code == 2 and "merger" in res.output and "'graph-diffusion'" in res.output


def test_checkpoints_list_shows_licences_and_gated_models():
    from ntt_batch.models.registry import CHECKPOINTS, DINOV3_ACCESS, DINOV3_NAMES

    res = _invoke(["checkpoints", "list"])
    assert res.exit_code == 0, res.output
    blocks = res.output.strip().split("\n")
    assert len(blocks) == 3 * len(CHECKPOINTS)
    for i, spec in enumerate(CHECKPOINTS.values()):
        first, digest, licence = blocks[3 * i : 3 * i + 3]
        assert first.startswith(spec.name) and licence.strip() == f"licence {spec.license}"
        if spec.family == "dinov3":
            assert f"gated: request access at {DINOV3_ACCESS}" in first
            assert digest.strip() == f"sha256 {spec.sha256_prefix}\u2026 (prefix only)"
            assert "DINOv3 License" in licence
        else:
            assert spec.url in first and digest.strip() == f"sha256 {spec.sha256}" and "Apache-2.0" in licence
    assert DINOV3_NAMES


def test_checkpoints_download_of_a_gated_model_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("NTT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("NTT_CHECKPOINT_DIR", raising=False)
    res = _invoke(["checkpoints", "download", "--model", "dinov3_vits16"])
    assert res.exit_code == 2
    assert "gated" in res.output and "request access" in res.output and "--checkpoint-dir" in res.output
    assert "Traceback" not in res.output


@pytest.mark.parametrize("command", [["memory", "build"], ["demo"], ["bench"]])
def test_encoder_flags_accept_every_registry_encoder(command):
    from ntt_batch.models.registry import ENCODER_NAMES

    cmd = main
    for name in command:
        cmd = cmd.commands[name]
    (encoder,) = [p for p in cmd.params if p.name == "encoder"]
    assert list(encoder.type.choices) == list(ENCODER_NAMES)
    assert any(n.startswith("dinov3") for n in encoder.type.choices)
    assert "DINOv3 License" in encoder.help


# ----------------------------------------------------------------------------- references sample --prefer, memory show


def test_references_sample_prefer_reaches_the_sampler(tmp_path, coco_mini):
    ann = str(coco_mini / "annotations/instances_train2017.json")
    base = ["references", "sample", "--annotations", ann, "--shots", "1", "--seed", "33"]
    res = _invoke([*base, "--prefer", "area=50,center=0.8", "--out", str(tmp_path / "p.json")])
    assert res.exit_code == 0, res.output
    assert "preference: box area >= p50" in res.output
    import json

    src = json.loads((tmp_path / "p.json").read_text())["source"]
    assert src["prefer"] == {"min_area_percentile": 50.0, "max_center_distance": 0.8, "min_edge_distance": None}
    res = _invoke([*base, "--out", str(tmp_path / "plain.json")])  # off by default: nothing recorded
    assert res.exit_code == 0 and "prefer" not in json.loads((tmp_path / "plain.json").read_text())["source"]
    res = _invoke([*base, "--prefer", "area=500", "--out", str(tmp_path / "bad.json")])
    assert res.exit_code == 2 and "--prefer" in res.output and "min_area_percentile" in res.output
    assert not (tmp_path / "bad.json").exists()


def test_memory_show_prints_the_report_and_writes_the_heatmap(tmp_path, small_bank):
    from ntt_batch.viz.memory_report import DEFAULT_NEAR_DUPLICATE_THRESHOLD

    out = tmp_path / "sim.png"
    res = _invoke(["memory", "show", str(small_bank), "--out", str(out), "--threshold", "0.9"])
    assert res.exit_code == 0, res.output
    assert out.is_file() and f"wrote {out}" in res.output and "consistency" in res.output
    help_text = " ".join(_invoke(["memory", "show", "--help"]).output.split())
    assert f"[default: {DEFAULT_NEAR_DUPLICATE_THRESHOLD}]" in help_text  # the help states the function's default
    res = _invoke(["memory", "show", str(small_bank), "--out", str(out), "--threshold", "2"])
    assert res.exit_code == 2 and "--threshold" in res.output
