"""cluster.yaml against Ray's schema, the shipped job files, `ntt-batch config check`, the `references:` block."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from click.testing import CliRunner

from ntt_batch.cli import main
from ntt_batch.method.config import ConfigError, SegmenterConfig
from ntt_batch.pipeline.bank_prep import ReferencesSpec, bank_mismatches, prepare_memory_bank
from ntt_batch.pipeline.config import JobConfig
from ntt_batch.pipeline.fingerprint import fingerprint_differences, job_fingerprint
from ntt_batch.pipeline.job_files import job_config_from_file, load_job_file

REPO = Path(__file__).resolve().parents[1]
JOB_FILES = sorted((REPO / "jobs").glob("*.yaml"))


def _invoke(args):
    return CliRunner().invoke(main, args)


# ----------------------------------------------------------------------------- cluster.yaml


def _cluster_config() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_cluster_yaml_validates_against_rays_schema():
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = _cluster_config()
    jsonschema.validate(config, schema)
    # The schema is strict about top-level keys: a misspelling is caught, so the check is real.
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        jsonschema.validate({**config, "max_worker": 3}, schema)


def test_cluster_yaml_passes_rays_own_preparation():
    """What `ray up` does before touching AWS: fill defaults, merge setup commands, validate."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(_cluster_config()))
    validate_config(prepared)
    types = prepared["available_node_types"]
    head = prepared["head_node_type"]
    assert types[head]["resources"] == {"CPU": 0} and types[head]["max_workers"] == 0
    gpu_types = [t for t in types if t != head]
    assert len(gpu_types) >= 2 and all(types[t]["max_workers"] >= 1 for t in gpu_types)
    assert any(types[t]["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot" for t in gpu_types)
    assert any(types[t]["min_workers"] >= 1 for t in gpu_types), "a job on a fresh cluster must see a GPU"
    assert sum(types[t]["min_workers"] for t in types) <= prepared["max_workers"]
    setup = " ".join(prepared["worker_setup_commands"])
    assert "scripts/install.sh" in setup and "checkpoints download" in setup
    assert "NTT_CACHE_DIR=/mnt/ntt/checkpoints" in " ".join(prepared["docker"]["run_options"])
    for cmds in (prepared["head_start_ray_commands"], prepared["worker_start_ray_commands"]):
        assert "--object-spilling-directory=/mnt/ntt/spill" in " ".join(cmds)
    assert prepared["docker"]["image"].startswith("rayproject/ray:2.60.0-")


def test_cluster_yaml_node_configs_are_valid_ec2_run_instances_arguments():
    """node_config goes to EC2 RunInstances as is; Ray's schema leaves it free-form, botocore's model does not."""
    botocore_session = pytest.importorskip("botocore.session")
    from botocore.validate import ParamValidator

    shape = botocore_session.get_session().get_service_model("ec2").operation_model("RunInstances").input_shape
    for name, node_type in _cluster_config()["available_node_types"].items():
        report = ParamValidator().validate({**node_type["node_config"], "MinCount": 1, "MaxCount": 1}, shape)
        assert not report.has_errors(), f"{name}: {report.generate_report()}"


def test_install_pins_in_cluster_setup_match_the_install_script():
    script = (REPO / "scripts" / "install.sh").read_text()
    for pin in (
        '"torch==2.14.1"',
        '"torchvision==0.29.1"',
        '"sam2==1.1.0"',
        "SAM2_BUILD_CUDA=0",
        "--no-build-isolation",
    ):
        assert pin in script
    import ray

    assert f"rayproject/ray:{ray.__version__}-" in _cluster_config()["docker"]["image"]


# ----------------------------------------------------------------------------- jobs/


def test_jobs_folder_has_the_promised_jobs():
    names = {p.stem for p in JOB_FILES}
    assert {"coco-fsod-1shot", "coco-fsod-10shot", "coco-fsod-30shot", "autolabel-s3"} <= names


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: p.name)
def test_every_job_file_parses_into_a_valid_config(path, tmp_path):
    cfg = job_config_from_file(path)
    assert cfg.out.startswith("s3://") and cfg.references is not None
    # The only thing left to the user is the bucket placeholder: the check refuses it, naming the keys.
    res = _invoke(["config", "check", str(path)])
    assert res.exit_code == 2, res.output
    assert "'YOUR-BUCKET' looks like a placeholder" in res.output and "out" in res.output
    # with a bucket of one's own, the file is a valid job config
    real = tmp_path / path.name
    real.write_text(path.read_text().replace("YOUR-BUCKET", "my-data-lake"))
    res = _invoke(["config", "check", str(real)])
    assert res.exit_code == 0, res.output
    assert "valid job config" in res.output and "\nerrors:" not in res.output


@pytest.mark.parametrize("shots", [1, 10, 30])
def test_coco_fsod_jobs_are_the_paper_setting(shots):
    cfg = job_config_from_file(REPO / "jobs" / f"coco-fsod-{shots}shot.yaml")
    refs = cfg.references
    assert (refs.split, refs.shots, refs.seed, refs.encoder) == ("few_shot", shots, 33, "dinov2_vitl14")
    assert refs.annotations.endswith("instances_train2017.json") and refs.image_root.rstrip("/").endswith("train2017")
    assert cfg.annotations.endswith("instances_val2017.json") and cfg.image_root.rstrip("/").endswith("val2017")
    assert cfg.limit is None and cfg.sam2 == "sam2_hiera_large"
    seg = cfg.segmenter
    assert (seg.points_per_side, seg.pred_iou_threshold, seg.nms_iou_threshold, seg.max_detections, seg.bf16) == (
        32,
        0.4,
        0.5,
        100,
        False,
    )
    assert f"{shots}shot" in cfg.memory and f"{shots}shot" in cfg.out


def test_job_files_hold_no_credentials():
    for path in JOB_FILES:
        opts = load_job_file(path).get("storage_options") or {}
        assert not {k for k in opts if any(s in k.lower() for s in ("key", "secret", "token", "password"))}, path


def test_jobs_with_a_real_bucket_check_clean(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text((REPO / "jobs" / "coco-fsod-10shot.yaml").read_text().replace("YOUR-BUCKET", "my-data-lake"))
    res = _invoke(["config", "check", "--strict", str(job)])
    assert res.exit_code == 0, res.output
    assert "s3://my-data-lake/coco/val2017/ (remote; not opened by the check)" in res.output
    assert "the first run builds it from sampling 10 shot(s) per class of split 'few_shot' (seed 33)" in res.output


# ----------------------------------------------------------------------------- config check


def _write(tmp_path, text: str) -> Path:
    p = tmp_path / "job.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "text, named",
    [
        ("num_actor: 2\n", "'num_actor'"),
        ("segmenter:\n  point_per_side: 4\n", "segmenter: unknown key(s) 'point_per_side'"),
        ("references:\n  image_root: /x\n  annotations: /a.json\n  shot: 3\n", "references: unknown key(s) 'shot'"),
        ("references:\n  image_root: /x\n  annotations: /a.json\n", "references.shots: required"),
        (
            "references:\n  image_root: /x\n  file: /r.json\n  annotations: /a.json\n  shots: 1\n",
            "exactly one of annotations",
        ),
        (
            "references:\n  image_root: /x\n  file: /r.json\n  encoder: dinov2_vitx14\n",
            "unknown encoder model 'dinov2_vitx14'",
        ),
        ("sam2: sam2_hiera_huge\n", "unknown sam2 model 'sam2_hiera_huge'"),
        ("storage_options:\n  anno: true\n", "'storage_options.anno'"),
        ("segmenter:\n  pred_iou_threshold: 2\n", "pred_iou_threshold"),
        ("limit: 3\nlimit: 4\n", "key 'limit' is given twice"),
        ("images: [unclosed\n", "not valid YAML"),
    ],
)
def test_config_check_names_the_bad_key(tmp_path, text, named):
    base = "images: s3://bucket/in/\nmemory: bank\nout: s3://bucket/out/\n"
    if text.startswith("images:"):
        base = "memory: bank\nout: s3://bucket/out/\n"
    path = _write(tmp_path, base + text)
    res = _invoke(["config", "check", str(path)])
    assert res.exit_code != 0
    assert named in res.output, res.output
    assert str(path) in res.output  # the message names the file too


def test_run_rejects_misspelled_nested_keys_like_config_check(tmp_path):
    for text, named in (
        ("storage_options:\n  anno: true\n", "'storage_options.anno'"),
        ("references:\n  image_root: /x\n  annotations: /a.json\n  shot: 3\n", "'shot'"),
    ):
        path = _write(tmp_path, f"images: s3://bucket/in/\nmemory: {tmp_path}/bank\nout: {tmp_path}/out\n" + text)
        res = _invoke(["run", "--config", str(path), "--dry-run"])
        assert res.exit_code != 0 and named in res.output, res.output
    # a storage option given as a flag is checked the same way
    res = _invoke(
        [
            "run",
            "--images",
            "s3://bucket/in/",
            "--memory",
            "m",
            "--out",
            "o",
            "--storage-option",
            "endpont_url=x",
            "--dry-run",
        ]
    )
    assert res.exit_code != 0 and "'storage_options.endpont_url'" in res.output


def test_config_check_reports_paths_bank_and_checkpoints(tmp_path, small_bank, random_checkpoints, coco_mini):
    path = _write(
        tmp_path,
        f"images: {coco_mini / 'val2017'}\nmemory: {small_bank}\nout: {tmp_path / 'out'}\n"
        f"sam2: sam2.1_hiera_tiny\ncheckpoint_dir: {random_checkpoints}\ndownload: false\n"
        "storage_options:\n  key: AKIAEXAMPLE\n  secret: hunter2\n",
    )
    res = _invoke(["config", "check", "--strict", str(path)])
    assert res.exit_code == 0, res.output
    assert "memory: bank with 2 classes (person, car), shots per class 1, encoder dinov2_vits14" in res.output
    assert f"checkpoint sam2.1_hiera_tiny: {random_checkpoints / 'sam2.1_hiera_tiny.pt'}" in res.output
    assert f"checkpoint dinov2_vits14: {random_checkpoints / 'dinov2_vits14_pretrain.pth'}" in res.output
    assert "hunter2" not in res.output and "AKIAEXAMPLE" not in res.output and "secret: '***'" in res.output
    assert "points_per_side: 32" in res.output  # defaults are filled in: the resolved settings

    # a missing bank without references: the warning says how to make one; a missing local input path warns too
    path = _write(
        tmp_path,
        f"images: {tmp_path / 'nope'}\nmemory: {tmp_path / 'no-bank'}\nout: {tmp_path / 'out'}\n"
        f"sam2: sam2.1_hiera_tiny\ncheckpoint_dir: {tmp_path / 'no-ckpt'}\ndownload: false\n",
    )
    res = _invoke(["config", "check", str(path)])
    assert res.exit_code == 0, res.output
    assert f"images: {tmp_path / 'nope'} does not exist on this machine" in res.output
    assert "holds no memory bank on this machine. Build it first: `ntt-batch references sample" in res.output
    assert "add a references: block" in res.output
    assert "checkpoint sam2.1_hiera_tiny: sam2.1_hiera_tiny.pt not found" in res.output
    assert _invoke(["config", "check", "--strict", str(path)]).exit_code == 1


def test_config_check_refuses_a_bank_built_with_other_reference_settings(tmp_path, small_bank, coco_mini):
    refs = (
        f"references:\n  annotations: {coco_mini / 'annotations/instances_train2017.json'}\n"
        f"  image_root: {coco_mini / 'train2017'}\n  split: person,car\n  encoder: dinov2_vits14\n"
    )
    base = f"images: {coco_mini / 'val2017'}\nmemory: {small_bank}\nout: {tmp_path / 'out'}\n"
    res = _invoke(["config", "check", str(_write(tmp_path, base + refs + "  shots: 1\n"))])
    assert res.exit_code == 0 and "\nerrors:" not in res.output, res.output
    res = _invoke(["config", "check", str(_write(tmp_path, base + refs + "  shots: 5\n  seed: 7\n"))])
    assert res.exit_code == 1
    assert "was built with shots=1 (references: asks for 5), seed=33 (references: asks for 7)" in res.output


# ----------------------------------------------------------------------------- references: block


def test_references_spec_round_trips_and_is_recorded(tmp_path):
    cfg = JobConfig.from_dict(
        {
            "images": "s3://b/in/",
            "memory": "bank",
            "out": "s3://b/out/",
            "references": {"file": "refs.json", "image_root": "imgs", "encoder": "dinov2_vits14"},
        }
    )
    cfg.validate()
    assert isinstance(cfg.references, ReferencesSpec)
    assert cfg.references.file == os.path.abspath("refs.json")  # local paths made absolute like the others
    d = cfg.to_dict()
    assert d["references"]["encoder"] == "dinov2_vits14" and d["references"]["shots"] is None
    assert JobConfig.from_dict(d).validate().references == cfg.references


def test_existing_bank_is_reused_and_a_mismatch_is_refused(small_bank, coco_mini):
    meta = json.loads((small_bank / "memory_bank.json").read_text())
    spec = ReferencesSpec(
        annotations=str(coco_mini / "annotations/instances_train2017.json"),
        image_root=str(coco_mini / "train2017"),
        split="person,car",
        shots=1,
        encoder="dinov2_vits14",
    ).validate()
    assert bank_mismatches(spec, meta) == []
    other = ReferencesSpec(**{**spec.__dict__, "shots": 3, "encoder": "dinov2_vitl14"}).validate()
    assert bank_mismatches(other, meta) == [
        "encoder='dinov2_vits14' (references: asks for 'dinov2_vitl14')",
        "shots=1 (references: asks for 3)",
    ]
    lines = []
    cfg = JobConfig(memory=str(small_bank), out="o", images="i", references=spec)
    assert prepare_memory_bank(cfg, echo=lines.append) is None and "exists" in lines[0]
    with pytest.raises(ConfigError, match="Point memory: at another folder"):
        prepare_memory_bank(JobConfig(memory=str(small_bank), out="o", images="i", references=other), echo=lines.append)


def test_dry_run_says_the_bank_will_be_built(tmp_path, coco_mini):
    path = _write(
        tmp_path,
        f"images: {coco_mini / 'val2017'}\nmemory: {tmp_path / 'bank'}\nout: {tmp_path / 'out'}\n"
        f"limit: 1\nreferences:\n  annotations: {coco_mini / 'annotations/instances_train2017.json'}\n"
        f"  image_root: {coco_mini / 'train2017'}\n  split: person,car\n  shots: 1\n"
        f"  encoder: dinov2_vits14\n",
    )
    res = _invoke(["run", "--config", str(path), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "does not exist; the run would build it first from sampling 1 shot(s) per class" in res.output
    assert not (tmp_path / "bank").exists()


def test_bank_folder_must_be_local_and_not_something_else(tmp_path):
    from ntt_batch.pipeline.bank_prep import memory_folder_problem

    assert memory_folder_problem(str(tmp_path / "new")) is None
    (tmp_path / "empty").mkdir()
    assert memory_folder_problem(str(tmp_path / "empty")) is None
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    assert "non-empty folder without a memory bank" in memory_folder_problem(str(tmp_path / "other"))
    assert "must be a local folder" in memory_folder_problem("s3://bucket/bank")
    spec = {"file": "refs.json", "image_root": "imgs"}
    cfg = JobConfig.from_dict(
        {"images": "i", "out": "o", "memory": str(tmp_path / "other"), "references": spec}
    ).validate()
    with pytest.raises(ConfigError, match="non-empty folder without a memory bank"):
        prepare_memory_bank(cfg, echo=lambda s: None)


@pytest.mark.slow
def test_bank_task_from_an_object_store_equals_memory_build(small_bank, random_checkpoints, coco_mini):
    """The job's bank build (sampling or a ready file, images fetched from a non-local store) gives
    exactly the bank `references sample` + `memory build` give. fsspec's in-process memory://
    store stands in for S3; the task function runs here, without Ray."""
    import fsspec

    from ntt_batch.method.memory_bank import MemoryBank
    from ntt_batch.pipeline.bank_prep import build_bank_task

    fs = fsspec.filesystem("memory")
    refs = json.loads((small_bank.parent / "refs.json").read_text())
    for name in {r["file_name"] for r in refs["references"]}:
        fs.pipe_file(f"/ntt-test/train2017/{name}", (coco_mini / "train2017" / name).read_bytes())
    fs.pipe_file(
        "/ntt-test/instances_train2017.json", (coco_mini / "annotations/instances_train2017.json").read_bytes()
    )
    fs.pipe_file("/ntt-test/refs.json", json.dumps(refs).encode())
    expected = MemoryBank.load(small_bank).content_hash
    common = {"image_root": "memory://ntt-test/train2017/", "encoder": "dinov2_vits14"}
    try:
        for spec in (
            {**common, "annotations": "memory://ntt-test/instances_train2017.json", "split": "person,car", "shots": 1},
            {**common, "file": "memory://ntt-test/refs.json"},
        ):
            spec = ReferencesSpec(**spec).validate()
            bank, built_refs, info = build_bank_task(
                spec.__dict__, storage_options={}, checkpoint_dir=str(random_checkpoints), download=False
            )
            assert bank.content_hash == expected
            assert [r["annotation_id"] for r in built_refs["references"]] == [
                r["annotation_id"] for r in refs["references"]
            ]
            assert info["device"] == "cpu" and info["encode_seconds"] > 0
    finally:
        fs.rm("/ntt-test", recursive=True)


# ----------------------------------------------------------------------------- one job per output


_SAM = SimpleNamespace(name="sam2.1_hiera_tiny", sha256="a" * 64)
_ENC = SimpleNamespace(name="dinov2_vits14", sha256="b" * 64)


def _fingerprint(**segmenter) -> dict:
    cfg = JobConfig(memory="m", out="/o", images="/data/images", segmenter=SegmenterConfig(**segmenter))
    return job_fingerprint(cfg, "bank-hash", _SAM, _ENC)


def test_an_output_recorded_before_new_settings_existed_is_the_same_job():
    now = _fingerprint()
    assert now["segmenter"]["encoder_image_size"] == 518  # resolved for the bank's encoder (DINOv2: 518)
    old = copy.deepcopy(now)  # as an older version recorded it: without the settings added since
    for key in ("merger", "graph_diffusion_alpha", "graph_diffusion_steps", "graph_diffusion_transition"):
        del old["segmenter"][key]
    old["segmenter"]["merge_memory_mb"] = 1024  # performance-only: recorded by a version that counted it
    assert fingerprint_differences(old, now) == []
    old["segmenter"]["encoder_image_size"] = None  # recorded unresolved: the encoder's native size
    assert fingerprint_differences(old, now) == []
    del old["segmenter"]["encoder_image_size"]  # recorded before the setting existed
    assert fingerprint_differences(old, now) == []


def test_a_real_difference_in_the_fingerprint_is_still_refused():
    old = _fingerprint()
    del old["segmenter"]["merger"]
    assert fingerprint_differences(old, _fingerprint(merger="graph-diffusion")) == [
        "segmenter.merger: 'soft' in the output, 'graph-diffusion' now"
    ]
    assert fingerprint_differences(_fingerprint(), _fingerprint(encoder_image_size=448)) == [
        "segmenter.encoder_image_size: 518 in the output, 448 now"
    ]
    assert fingerprint_differences(_fingerprint(), _fingerprint(points_per_side=8)) == [
        "segmenter.points_per_side: 32 in the output, 8 now"
    ]
    with pytest.raises(ConfigError, match="encoder_image_size"):
        _fingerprint(encoder_image_size=500)  # not a multiple of DINOv2's 14-px patches


def test_bank_reference_settings_are_compared_resolved_for_the_encoder(tmp_path):
    spec = ReferencesSpec(
        file=str(tmp_path / "refs.json"), image_root=str(tmp_path), encoder="dinov2_vits14"
    ).validate()
    meta = {
        "encoder": {"name": "dinov2_vits14"},
        "references": {"source": {"kind": "file"}},
        "config": {"crop_size": 518, "context_ratio": 0.2, "empty_mask_fallback": "area"},
    }
    assert bank_mismatches(spec, meta) == []  # crop_size: null in the job = 518 for DINOv2
    assert bank_mismatches(spec, {**meta, "config": {"crop_size": None, "context_ratio": 0.2}}) == []
    assert bank_mismatches(spec, {**meta, "config": {"context_ratio": 0.2}}) == []  # recorded before crop_size existed
    assert bank_mismatches(spec, {**meta, "config": {**meta["config"], "crop_size": 448}}) == [
        "crop_size=448 (references: asks for 518)"
    ]
    assert bank_mismatches(spec, {**meta, "config": {**meta["config"], "context_ratio": 0.5}}) == [
        "context_ratio=0.5 (references: asks for 0.2)"
    ]
