"""Nothing is written until a job is known valid; one spelling per input; every bank field hashed (issue 19).

Through the real `ntt-batch run` in a subprocess: each refusal exits 2 with one line and leaves the
user's folder as it was (no ``_ntt/``, no output folder that did not exist); a refusal that only
planning finds, in an output that held a job, records the attempt as failed instead of "running";
after a typo in ``--images`` the corrected rerun is accepted (issue 18).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_exit_codes import ntt
from test_exit_codes import one_error_line as _one_error_line

from ntt_batch.pipeline.exit_codes import EXIT_OK, EXIT_USAGE


@pytest.fixture(scope="module")
def bank(tmp_path_factory) -> Path:
    """A random-prototype bank for dinov2_vits14 (checkpoint_sha256 null: no weights check)."""
    from ntt_batch.benchmark import random_bank

    d = tmp_path_factory.mktemp("bank") / "bank"
    random_bank("dinov2_vits14", 384, num_classes=2).save(d)
    return d


@pytest.fixture
def images(tmp_path) -> Path:
    from PIL import Image

    d = tmp_path / "imgs"
    d.mkdir()
    Image.new("RGB", (32, 24), (120, 30, 200)).save(d / "000000000005.jpg")
    return d


def one_error_line(res, code: int) -> str:
    """test_exit_codes' check, the random checkpoints' "CHECKPOINT NOT OFFICIAL" warnings aside."""
    kept = [x for x in res.stderr.splitlines() if "CHECKPOINT NOT OFFICIAL" not in x]
    res.stderr = "\n".join(kept)
    return _one_error_line(res, code)


def run_args(bank: Path, out: Path, ckpt: Path | None, *extra: str) -> list[str]:
    args = ["run", "--memory", str(bank), "--out", str(out), *extra]
    if ckpt is not None:
        args += ["--checkpoint-dir", str(ckpt), "--no-download", "--sam2", "sam2.1_hiera_tiny"]
        args += ["--device", "cpu", "--points-per-side", "2", "--num-actors", "1"]
    return args


def assert_untouched(out: Path, existed: bool) -> None:
    if existed:
        assert not (out / "_ntt").exists(), sorted(p.name for p in (out / "_ntt").rglob("*"))
    else:
        assert not out.exists(), sorted(p.name for p in out.rglob("*"))


# ----------------------------------------------------------------------------- refused before any write


def test_an_empty_input_folder_writes_nothing(tmp_path, bank, random_checkpoints):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    for dry in ([], ["--dry-run"]):
        line = one_error_line(ntt(*run_args(bank, out, random_checkpoints, "--images", str(empty), *dry)), EXIT_USAGE)
        assert f"no inputs found at {str(empty)!r}" in line, line
        assert_untouched(out, existed=False)


def test_a_listing_that_the_extension_filter_empties_writes_nothing(tmp_path, bank, images, random_checkpoints):
    out = tmp_path / "out"
    out.mkdir()  # an existing empty folder stays, empty
    res = ntt(*run_args(bank, out, random_checkpoints, "--images", str(images), "--extensions", "png"))
    line = one_error_line(res, EXIT_USAGE)
    assert "no inputs found" in line and "1 skipped by the extension filter" in line, line
    assert_untouched(out, existed=True)
    assert list(out.iterdir()) == []


def test_foreign_parquet_files_in_out_write_nothing(tmp_path, bank, images, random_checkpoints):
    out = tmp_path / "out"
    out.mkdir()
    pq.write_table(pa.table({"a": [1, 2], "b": ["x", "y"]}), out / "sales.parquet")
    (out / "broken.parquet").write_bytes(b"not parquet at all")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for dry in ([], ["--dry-run"]):
        line = one_error_line(ntt(*run_args(bank, out, random_checkpoints, "--images", str(images), *dry)), EXIT_USAGE)
        assert f"out: {out} holds 2 Parquet file(s) that ntt-batch did not write" in line, line
        assert "sales.parquet (no column image_uri, status, num_instances)" in line, line
        assert "broken.parquet (not readable as Parquet)" in line, line
        assert_untouched(out, existed=True)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_missing_manifest_or_coco_file_writes_nothing(tmp_path, bank, images):
    out = tmp_path / "out"
    line = one_error_line(ntt(*run_args(bank, out, None, "--manifest", str(tmp_path / "nope.csv"))), EXIT_USAGE)
    assert "nope.csv" in line and "does not exist" in line, line
    args = ["--annotations", str(tmp_path / "nope.json"), "--image-root", str(images)]
    line = one_error_line(ntt(*run_args(bank, out, None, *args)), EXIT_USAGE)
    assert f"annotations: {tmp_path / 'nope.json'} does not exist" in line, line
    assert_untouched(out, existed=False)


# ----------------------------------------------------------------------------- refused while planning


def test_a_duplicate_manifest_uri_leaves_a_new_output_as_it_was(tmp_path, bank, images, random_checkpoints):
    manifest = tmp_path / "m.csv"
    img = images / "000000000005.jpg"
    manifest.write_text(f"image_uri\n{img}\n{img}\n")
    out = tmp_path / "out"
    line = one_error_line(ntt(*run_args(bank, out, random_checkpoints, "--manifest", str(manifest))), EXIT_USAGE)
    assert "listed more than once" in line and str(img) in line, line
    assert_untouched(out, existed=False)
    out.mkdir()
    one_error_line(ntt(*run_args(bank, out, random_checkpoints, "--manifest", str(manifest))), EXIT_USAGE)
    assert_untouched(out, existed=True)
    assert list(out.iterdir()) == []


def test_a_coco_file_without_images_leaves_a_new_output_as_it_was(tmp_path, bank, images, random_checkpoints):
    """A COCO file is parsed by the planner only (not before): its refusal is undone after the fact."""
    coco = tmp_path / "empty.json"
    coco.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    out = tmp_path / "out"
    args = ["--annotations", str(coco), "--image-root", str(images)]
    line = one_error_line(ntt(*run_args(bank, out, random_checkpoints, *args)), EXIT_USAGE)
    assert "no 'images' in the annotation file" in line, line
    assert_untouched(out, existed=False)


def test_a_refusal_in_an_output_that_held_a_job_is_recorded_as_failed(tmp_path, bank, images, random_checkpoints):
    out = tmp_path / "out"
    (out / "_ntt").mkdir(parents=True)
    (out / "_ntt" / "run.json").write_text(json.dumps({"format": "ntt-batch/run", "attempts": []}))
    manifest = tmp_path / "m.csv"
    img = images / "000000000005.jpg"
    manifest.write_text(f"image_uri\n{img}\n{img}\n")
    line = one_error_line(ntt(*run_args(bank, out, random_checkpoints, "--manifest", str(manifest))), EXIT_USAGE)
    assert "listed more than once" in line
    run = json.loads((out / "_ntt" / "run.json").read_text())
    (attempt,) = run["attempts"]
    assert (
        attempt["status"].startswith("failed: DuplicateInputError: ") and "listed more than once" in attempt["status"]
    )
    assert attempt["finished_at"]
    assert not (out / "_ntt" / "lock.json").exists() and not (out / "_ntt" / "todo").exists()


@pytest.mark.slow
def test_a_typo_in_images_then_the_corrected_rerun_is_accepted(tmp_path, bank, images, random_checkpoints):
    """Issue 18: the typo left out/_ntt/run.json and the corrected rerun was refused as "another job"."""
    out = tmp_path / "out"
    typo = tmp_path / "imgz"
    line = one_error_line(ntt(*run_args(bank, out, random_checkpoints, "--images", str(typo))), EXIT_USAGE)
    assert f"no inputs at {str(typo)!r}" in line, line
    assert_untouched(out, existed=False)
    res = ntt(*run_args(bank, out, random_checkpoints, "--images", str(images)), timeout=600)
    assert res.returncode == EXIT_OK, res.stdout + res.stderr
    run = json.loads((out / "_ntt" / "run.json").read_text())
    assert [a["status"] for a in run["attempts"]] == ["completed"]
    assert run["summary"]["rows"] == 1


# ----------------------------------------------------------------------------- one spelling per input


def test_three_spellings_of_one_file_are_one_input(tmp_path, bank, images):
    from ntt_batch.pipeline.plan import list_inputs
    from ntt_batch.sources import InputSpec

    a = images / "a"
    a.mkdir()
    (images / "000000000005.jpg").rename(a / "x.jpg")
    spellings = [f"{a}/./x.jpg", f"{a}//x.jpg", f"{a}/x.jpg"]
    manifest = tmp_path / "m.csv"
    manifest.write_text("image_uri\n" + "\n".join(spellings) + "\n")
    out = tmp_path / "out"
    res = ntt(*run_args(bank, out, None, "--manifest", str(manifest), "--dry-run"))
    line = one_error_line(res, EXIT_USAGE)
    assert f"1 input URI(s) are listed more than once, e.g. {str(a / 'x.jpg')!r}" in line, line
    manifest.write_text(f"image_uri\n{spellings[0]}\n")
    assert [i.image_uri for i in list_inputs(InputSpec(manifest=str(manifest)))] == [f"{a}/x.jpg"]
    coco = tmp_path / "c.json"
    coco.write_text(json.dumps({"images": [{"id": 5, "file_name": "a//x.jpg"}]}))
    spec = InputSpec(annotations=str(coco), image_root=f"{images}/./")
    assert [i.image_uri for i in list_inputs(spec)] == [f"{a}/x.jpg"]


def test_object_store_keys_are_kept_literal():
    from ntt_batch.sources.uris import normalise_uri

    for uri in ("s3://b/a//x.jpg", "s3://b/a/./x.jpg", "gs://b/a/../x.jpg", "https://h/a//x.jpg"):
        assert normalise_uri(uri) == uri
    assert normalise_uri("file:///d/a/./b//x.jpg") == "file:///d/a/b/x.jpg"
    assert normalise_uri("imgs/../imgs/./x.jpg") == "imgs/x.jpg"  # relative stays relative


# ----------------------------------------------------------------------------- every bank field hashed

EDITS = {
    "config": lambda m: m["config"].update(context_ratio=0.5),
    "shots": lambda m: m["shots"].update({next(iter(m["shots"])): 7}),
    "notes": lambda m: m["notes"].append("edited"),
    "references": lambda m: m["references"].update(source={"kind": "edited"}),
    "feature_dim": lambda m: m.update(feature_dim=768),
    "encoder.official": lambda m: m["encoder"].update(official=True),
    "encoder.checkpoint_sha256": lambda m: m["encoder"].update(checkpoint_sha256="0" * 64),
}


def _edit(bank_dir: Path, fn) -> None:
    path = bank_dir / "memory_bank.json"
    meta = json.loads(path.read_text())
    fn(meta)
    path.write_text(json.dumps(meta, indent=2))


@pytest.fixture
def bank_copy(tmp_path, bank) -> Path:
    import shutil

    d = tmp_path / "bank"
    shutil.copytree(bank, d)
    return d


@pytest.mark.parametrize("field", sorted(EDITS))
def test_an_edited_bank_field_is_refused(bank_copy, field):
    from ntt_batch.method.memory_bank import MemoryBank

    MemoryBank.load(bank_copy)  # intact: loads
    _edit(bank_copy, EDITS[field])
    with pytest.raises(ValueError, match="the metadata was edited .*: rebuild the bank") as e:
        MemoryBank.load(bank_copy)
    assert str(bank_copy / "memory_bank.json") in str(e.value)


@pytest.mark.parametrize("field", ["encoder.checkpoint_sha256", "categories", "feature_dim", "shots"])
def test_a_missing_bank_field_is_refused_even_without_the_metadata_hash(bank_copy, field):
    from ntt_batch.method.memory_bank import MemoryBank

    def drop(meta):
        meta.pop("metadata_hash")
        holder, key = (meta["encoder"], "checkpoint_sha256") if field.startswith("encoder.") else (meta, field)
        holder.pop(key)

    _edit(bank_copy, drop)
    with pytest.raises(ValueError, match=f"required field '{field}' is missing"):
        MemoryBank.load(bank_copy)


def test_the_encoder_weights_check_cannot_be_turned_off_by_removing_the_field():
    from ntt_batch.method.memory_bank import check_encoder_weights

    with pytest.raises(ValueError, match="'encoder.checkpoint_sha256' is missing"):
        check_encoder_weights({"name": "dinov2_vits14"}, object(), "bank")


def test_a_bank_saved_before_the_metadata_hash_loads_with_a_warning(bank_copy, bank, caplog):
    from ntt_batch.method.memory_bank import MemoryBank

    _edit(bank_copy, lambda m: m.pop("metadata_hash"))
    with caplog.at_level(logging.WARNING):
        old = MemoryBank.load(bank_copy)
    assert old.content_hash == MemoryBank.load(bank).content_hash
    assert any("has no metadata_hash" in r.getMessage() for r in caplog.records)
    _edit(bank_copy, lambda m: m.update(feature_dim=768))  # an old bank still may not disagree with its tensors
    with pytest.raises(ValueError, match="feature_dim/shots .* disagree with the tensors"):
        MemoryBank.load(bank_copy)


def test_the_content_hash_is_unchanged_and_metadata_hash_is_saved(bank):
    from ntt_batch.method.memory_bank import MemoryBank, metadata_hash

    meta = json.loads((bank / "memory_bank.json").read_text())
    assert meta["metadata_hash"] == metadata_hash(meta)
    loaded = MemoryBank.load(bank)
    assert meta["content_hash"] == loaded.content_hash == loaded.metadata()["content_hash"]


def test_dry_run_verifies_the_bank(tmp_path, bank_copy, images):
    out = tmp_path / "out"
    ok = ntt(*run_args(bank_copy, out, None, "--images", str(images), "--dry-run"))
    assert ok.returncode == EXIT_OK, ok.stderr
    assert "memory bank: " in ok.stdout and "verified" in ok.stdout
    _edit(bank_copy, EDITS["encoder.official"])
    line = one_error_line(ntt(*run_args(bank_copy, out, None, "--images", str(images), "--dry-run")), EXIT_USAGE)
    assert "the metadata was edited" in line and "memory_bank.json" in line, line
    assert_untouched(out, existed=False)
