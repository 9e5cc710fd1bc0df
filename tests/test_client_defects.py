"""Defects real clients found (issue 18), each with the test that would have caught it.

* Banks, references files, exports and a run's files are readable by the group and others under a
  umask of 022 (safetensors' ``save_file`` made the bank 0600, ``mkdtemp`` the YOLO folder 0700).
* ``memory build`` into a folder that holds a bank refuses (exit 2, one line naming the folder and
  ``--overwrite``) instead of replacing a 20-class bank by a 2-class one of another encoder.
* ``ntt_batch.run()`` from Python is as quiet as the CLI: no Ray INFO lines (136 for one image before).
* ``eval --split few-shot`` suggests ``few_shot``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ntt_batch.cli import main
from ntt_batch.exports import export
from ntt_batch.method.memory_bank import MemoryBank

ROOT = Path(__file__).resolve().parents[1]
# Ray's log lines: "2026-12-07 22:36:57,213\tINFO worker.py:2029 -- Started a local Ray instance."
RAY_INFO = re.compile(r"\b(INFO|DEBUG)\s+[\w.]+\.py:\d+ -- ")
RAY_WORKER = re.compile(r"^\((\w+ )?pid=\d+")  # forwarded worker output: "(SegmentActor pid=123) ..."


def _modes(folder: Path) -> dict[str, int]:
    """Permission bits of ``folder`` and everything under it, by path relative to it ('.' for itself)."""
    out = {".": stat.S_IMODE(folder.stat().st_mode)}
    for p in folder.rglob("*"):
        if not p.is_symlink():
            out[str(p.relative_to(folder))] = stat.S_IMODE(p.stat().st_mode)
    return out


def _assert_shared(modes: dict[str, int], folder: Path) -> None:
    """Under umask 022: folders 0755, files 0644 (group and others read)."""
    for rel, mode in modes.items():
        want = 0o755 if (folder / rel).is_dir() else 0o644
        assert mode == want, f"{rel}: {oct(mode)}, expected {oct(want)}"


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _memory_build(refs: Path, image_root: Path, out: Path, ckpt: Path, *extra: str):
    return CliRunner().invoke(
        main,
        ["memory", "build", "--references", str(refs), "--image-root", str(image_root), "--device", "cpu"]
        + ["--checkpoint-dir", str(ckpt), "--no-download", "--out", str(out), *extra],
    )


def _one_class_refs(coco_mini: Path, dest: Path) -> Path:
    from ntt_batch.references.files import save_references
    from ntt_batch.references.sampler import sample_references_from_file

    refs = sample_references_from_file(str(coco_mini / "annotations/instances_train2017.json"), "dog", 1, 33)
    save_references(refs, dest)
    return dest


# ----------------------------------------------------------------------------- memory build --overwrite


@pytest.mark.slow
def test_memory_build_refuses_an_existing_bank_unless_overwrite(
    tmp_path, small_bank, random_checkpoints, coco_mini, umask_022
):
    bank = tmp_path / "bank"
    shutil.copytree(small_bank, bank)
    before = _digest(bank)
    refs = _one_class_refs(coco_mini, tmp_path / "dog.json")
    # another encoder (its weights are not even here: the refusal comes first)
    r = _memory_build(refs, coco_mini / "train2017", bank, random_checkpoints, "--encoder", "dinov2_vitb14")
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert r.exit_code == 2, r.output
    assert len(lines) == 1 and str(bank) in lines[0] and "--overwrite" in lines[0], r.output
    assert "2 classes, encoder dinov2_vits14" in lines[0]
    assert _digest(bank) == before  # untouched
    # the Python API refuses the same way
    import ntt_batch

    with pytest.raises(ValueError, match="overwrite=True"):
        ntt_batch.build_bank(refs, bank, image_root=coco_mini / "train2017", encoder="dinov2_vitb14")
    # --overwrite replaces it
    r = _memory_build(
        refs, coco_mini / "train2017", bank, random_checkpoints, "--encoder", "dinov2_vits14", "--overwrite"
    )
    assert r.exit_code == 0, r.output
    rebuilt = MemoryBank.load(bank)
    assert [c["name"] for c in rebuilt.categories] == ["dog"] and _digest(bank) != before
    files = {k: v for k, v in _modes(bank).items() if k != "."}  # the folder: pytest's copy, 0700
    _assert_shared(files, bank)  # and a teammate can read the files (umask 022)


# ----------------------------------------------------------------------------- the umask


@pytest.mark.slow
def test_banks_references_and_exports_respect_the_umask(tmp_path, random_checkpoints, coco_mini, umask_022):
    refs = _one_class_refs(coco_mini, tmp_path / "refs.json")
    bank = tmp_path / "bank"
    r = _memory_build(refs, coco_mini / "train2017", bank, random_checkpoints, "--encoder", "dinov2_vits14")
    assert r.exit_code == 0, r.output
    modes = _modes(bank)
    assert set(modes) == {".", "memory_bank.json", "memory_bank.safetensors", "references.json"}
    _assert_shared(modes, bank)
    assert stat.S_IMODE(refs.stat().st_mode) == 0o644
    # exports of a run's shards (rows from the ground truth, no model)
    from test_merge_eval_viz import gt_rows, write_shards

    gt = json.loads((coco_mini / "annotations/instances_val2017.json").read_text())
    shards = write_shards(tmp_path / "shards", gt_rows(gt, str(coco_mini / "val2017"))[:3])
    outs = tmp_path / "exports"
    outs.mkdir()
    for fmt, name in (("results", "r.json"), ("dataset", "d.json"), ("label-studio", "t.json"), ("yolo", "yolo")):
        export(str(shards), str(outs / name), format=fmt)
    for fmt in ("copy", "link"):  # a second YOLO export replaces the first: still readable
        export(str(shards), str(outs / "yolo"), format="yolo", images=fmt)
    modes = _modes(outs)
    assert {"r.json", "d.json", "t.json", "t.label_config.xml", "yolo", "yolo/data.yaml", "yolo/labels"} <= set(modes)
    assert not [p for p in modes if p.startswith(".") and p != "."]  # no temporary leftovers
    _assert_shared(modes, outs)


# ----------------------------------------------------------------------------- run() from Python: quiet, readable


@pytest.mark.slow
def test_run_from_python_prints_no_ray_info_and_writes_readable_files(
    tmp_path, small_bank, random_checkpoints, coco_mini
):
    """A one-image job through ``ntt_batch.run()`` in a fresh process (its own local Ray) under umask 022."""
    images = tmp_path / "img"
    images.mkdir()
    shutil.copy(coco_mini / "val2017" / "000000000139.jpg", images)
    out = tmp_path / "out"
    code = (
        "import ntt_batch\n"
        f"s = ntt_batch.run(images={str(images)!r}, memory={str(small_bank)!r}, out={str(out)!r}, "
        f"sam2='sam2.1_hiera_tiny', checkpoint_dir={str(random_checkpoints)!r}, download=False, limit=1, "
        "segmenter={'points_per_side': 2, 'device': 'cpu'})\n"
        "print('EXIT', s['exit_code'], s['rows'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    res = subprocess.run(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        timeout=540,
        preexec_fn=lambda: os.umask(0o022),
    )
    lines = res.stdout.splitlines()
    assert res.returncode == 0 and "EXIT 0 1" in lines, res.stdout[-3000:]
    noisy = [x for x in lines if RAY_INFO.search(x) or RAY_WORKER.match(x)]
    assert noisy == [], noisy[:10]
    assert any(x.startswith("summary: 1 ok") for x in lines)  # our own progress lines still come
    modes = _modes(out)
    assert any(p.endswith(".parquet") for p in modes) and "_ntt/run.json" in modes
    _assert_shared(modes, out)


def test_the_ray_info_pattern_matches_what_ray_prints(tmp_path):
    """The counter above is not blind: a plain ``ray.init()`` prints lines it matches."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    code = "import ray; ray.init(num_cpus=1, include_dashboard=False); ray.shutdown()"
    res = subprocess.run(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, timeout=300
    )
    assert res.returncode == 0, res.stdout[-2000:]
    assert any(RAY_INFO.search(x) and "Started a local Ray instance" in x for x in res.stdout.splitlines()), res.stdout


# ----------------------------------------------------------------------------- eval --split typo


def test_eval_split_typo_suggests_the_closest_value(tmp_path, coco_mini):
    results = tmp_path / "r.json"
    results.write_text("[]")
    ann = str(coco_mini / "annotations/instances_val2017.json")
    for typo, hint in (("few-shot", "few_shot"), ("fewshot", "few_shot"), ("persn", "person"), ("alll", "all")):
        r = CliRunner().invoke(main, ["eval", "--annotations", ann, "--results", str(results), "--split", typo])
        lines = [x for x in r.output.splitlines() if x.strip()]
        assert r.exit_code == 2 and len(lines) == 1, r.output
        assert f"did you mean {hint!r}?" in lines[0] and repr(typo) in lines[0]
    r = CliRunner().invoke(main, ["eval", "--annotations", ann, "--results", str(results), "--split", "zzzz"])
    assert r.exit_code == 2 and "did you mean" not in r.output and "'few_shot', 'all'" in r.output
