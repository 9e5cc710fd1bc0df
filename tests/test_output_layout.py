"""The data-lake output: layout, one job per output, the lease, retry/repair, and readers without this package.

Real components throughout: a local Ray instance, real Parquet files read back by pandas, pyarrow
and DuckDB, a real S3 API (moto's server mode on loopback). The model stage is the no-op one
(:class:`NoopModelActor`: every decoded image becomes an ``empty`` row) where the models do not
matter, so these tests exercise the job's bookkeeping in seconds; ``test_pipeline.py`` runs the
real models.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import job_config, rows_by_uri
from PIL import Image

from ntt_batch.method.config import SegmenterConfig
from ntt_batch.output.folder import RUN_JSON, OutputFolder
from ntt_batch.output.intents import commit, recover_commits
from ntt_batch.output.lease import Lease, LeaseHeldError
from ntt_batch.output.parts import PartAssembler
from ntt_batch.output.shards import SHARD_SCHEMA
from ntt_batch.pipeline.config import JobConfig
from ntt_batch.pipeline.fingerprint import JobMismatchError
from ntt_batch.pipeline.job import run_job
from ntt_batch.pipeline.plan import DuplicateInputError, OutputScan, plan_inputs
from ntt_batch.pipeline.stages import NoopModelActor
from ntt_batch.pipeline.verify import verify_output
from ntt_batch.sources import InputSpec
from ntt_batch.sources.ids import UriHashes, uri_digests
from ntt_batch.sources.manifest import iter_manifest


def _job(random_checkpoints, small_bank, **kw) -> JobConfig:
    return job_config(random_checkpoints, small_bank, **kw)


def _noop(cfg: JobConfig):
    return run_job(cfg, echo=lambda s: None, model_stage=NoopModelActor)


def _rows(out, options=None) -> dict[str, dict]:
    return rows_by_uri(out, options, columns=["image_uri", "status", "error", "run_id"])


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory, coco_mini) -> Path:
    """Images of several formats plus files that are not images, some without an extension."""
    d = tmp_path_factory.mktemp("inputs") / "mixed"
    (d / "sub").mkdir(parents=True)
    for p in sorted((coco_mini / "val2017").glob("*.jpg"))[:2]:
        shutil.copy(p, d / p.name)
    rgb = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(d / "anim.gif")
    Image.fromarray(rgb).save(d / "sub" / "photo.webp")
    Image.fromarray(rgb).save(d / "noext", format="PNG")
    (d / "README.txt").write_text("not an image")
    (d / "labels.json").write_text("{}")
    (d / ".DS_Store").write_bytes(b"\0")  # hidden files are not inputs
    return d


@pytest.fixture(scope="module")
def mixed_run(ray_local, mixed_folder, random_checkpoints, small_bank, tmp_path_factory):
    """One finished run over the mixed folder; tests that change it work on a copy (:func:`_copy`)."""
    out = tmp_path_factory.mktemp("mixed_run") / "out"
    res = _noop(_job(random_checkpoints, small_bank, images=str(mixed_folder), out=str(out), target_file_mb=1))
    return out, res


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ----------------------------------------------------------------------------- inputs


def test_every_listed_object_gets_a_row_and_extensions_is_explicit(
    mixed_run, mixed_folder, random_checkpoints, small_bank, tmp_path
):
    out, res = mixed_run
    rows = _rows(out)
    names = sorted(Path(u).relative_to(mixed_folder).as_posix() for u in rows)
    assert names == sorted(
        ["000000000139.jpg", "000000000802.jpg", "anim.gif", "sub/photo.webp", "noext", "README.txt", "labels.json"]
    )
    assert rows[str(mixed_folder / "README.txt")]["status"] == "error"
    assert "not an image" in rows[str(mixed_folder / "README.txt")]["error"]
    assert rows[str(mixed_folder / "anim.gif")]["status"] == "empty"  # decoded (no-op model: no instances)
    assert rows[str(mixed_folder / "noext")]["status"] == "empty"
    assert res.summary["rows"] == 7 and res.summary["missing"] == 0

    lines: list[str] = []
    dry = run_job(
        _job(
            random_checkpoints,
            small_bank,
            images=str(mixed_folder),
            out=str(tmp_path / "o"),
            extensions=["JPG", ".gif"],
        ),
        dry_run=True,
        echo=lines.append,
    )
    assert dry.summary["to_process"] == 3 and dry.summary["skipped_by_extension"] == 4
    assert any("4 skipped by --extensions" in line for line in lines) and not (tmp_path / "o").exists()


def test_manifest_duplicates_are_refused_naming_them(tmp_path):
    uris = [f"s3://bucket/img/{i:08d}.jpg" for i in range(50_000)] + ["s3://bucket/img/00001234.jpg"]
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"image_uri": uris}), manifest, row_group_size=7_000)
    with pytest.raises(DuplicateInputError, match=r"1 input URI\(s\) are listed more than once.*00001234\.jpg"):
        plan_inputs(InputSpec(manifest=str(manifest)), None, OutputScan(), folder=None, run_id="t")
    csv = tmp_path / "m.csv"
    csv.write_text("image_uri,image_id\n/a.jpg,7\n/b.jpg,7\n")
    with pytest.raises(DuplicateInputError, match="image_id values are not unique.*7"):
        plan_inputs(InputSpec(manifest=str(csv)), None, OutputScan(), folder=None, run_id="t")


def test_manifest_formats_stream_with_ids(tmp_path):
    rows = [{"image_uri": f"/x/{i}.jpg", "image_id": i * 10} for i in range(5)]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "m.csv").write_text("uri\n" + "".join(f"/y/p{i}.png\n" for i in range(3)))
    got = [b for b in iter_manifest(str(tmp_path / "m.jsonl"), chunk_rows=2)]
    assert [b.num_rows for b in got] == [2, 2, 1]
    assert pa.Table.from_batches(got).column("image_id").to_pylist() == [0, 10, 20, 30, 40]
    plan = plan_inputs(InputSpec(manifest=str(tmp_path / "m.csv")), None, OutputScan(), folder=None, run_id="t")
    assert plan.ids_from == "file names" and [i for i, _ in plan.sample] == [0, 1, 2]


def test_uri_hash_set_is_exact():
    a = [f"uri-{i}" for i in range(1000)]
    s = UriHashes.from_chunks([uri_digests(a[:600]), uri_digests(a[600:])])
    hi, lo = uri_digests(a[500:] + ["other", "uri-1000"])
    assert s.contains(hi, lo).tolist() == [True] * 500 + [False, False]
    # equal high halves with different low halves (forced) are told apart
    forced = UriHashes(np.array([5, 5, 9], np.uint64), np.array([1, 2, 3], np.uint64))
    assert forced.contains(np.array([5, 5, 5], np.uint64), np.array([2, 1, 7], np.uint64)).tolist() == [
        True,
        True,
        False,
    ]
    assert len(UriHashes.from_chunks([uri_digests(["a", "b", "a", "a"])]).duplicated()[0]) == 1


# ----------------------------------------------------------------------------- readers


def test_output_folder_reads_as_a_dataset_with_pandas_pyarrow_and_duckdb(mixed_run):
    out, _ = mixed_run
    assert (out / RUN_JSON).is_file() and not (out / "run.json").exists()
    code = """
import sys, pandas, pyarrow.dataset as ds, duckdb
out = sys.argv[1]
df = pandas.read_parquet(out)
t = ds.dataset(out, format="parquet").to_table()
n = duckdb.sql(f"select count(*), count(distinct image_uri), sum(case when status = 'error' then 1 else 0 end) "
               f"from read_parquet('{out}/*.parquet')").fetchall()[0]
print(len(df), t.num_rows, n)
"""
    res = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, check=True)
    assert res.stdout.split() == ["7", "7", "(7,", "7,", "2)"], res.stdout + res.stderr


# ----------------------------------------------------------------------------- one job per output


def test_another_bank_or_settings_is_refused_naming_the_difference(
    mixed_run, mixed_folder, random_checkpoints, small_bank, tmp_path, coco_mini
):
    from ntt_batch.bank.build import build_bank_folder as build_bank
    from ntt_batch.references.files import save_references
    from ntt_batch.references.sampler import sample_references_from_file

    out = _copy(mixed_run[0], tmp_path / "out")
    with pytest.raises(
        JobMismatchError, match=r"segmenter\.points_per_side: 2 in the output, 3 now.*--allow-job-change"
    ):
        _noop(
            _job(
                random_checkpoints,
                small_bank,
                images=str(mixed_folder),
                out=str(out),
                segmenter=SegmenterConfig(points_per_side=3, device="cpu"),
            )
        )
    refs = sample_references_from_file(str(coco_mini / "annotations/instances_train2017.json"), "person", 1, 33)
    save_references(refs, tmp_path / "refs.json")
    other = build_bank(
        str(tmp_path / "refs.json"),
        str(coco_mini / "train2017"),
        str(tmp_path / "bank2"),
        encoder_name="dinov2_vits14",
        checkpoint_dir=str(random_checkpoints),
        download=False,
        device="cpu",
    )
    with pytest.raises(JobMismatchError, match="memory_bank"):
        _noop(_job(random_checkpoints, tmp_path / "bank2", images=str(mixed_folder), out=str(out)))
    # performance-only settings are the same job; an explicit flag adopts a changed one
    _noop(
        _job(
            random_checkpoints,
            small_bank,
            images=str(mixed_folder),
            out=str(out),
            batch_size=1,
            segmenter=SegmenterConfig(points_per_side=2, device="cpu", points_batch_size=7),
        )
    )
    res = _noop(
        _job(random_checkpoints, tmp_path / "bank2", images=str(mixed_folder), out=str(out), allow_job_change=True)
    )
    run = json.loads((out / RUN_JSON).read_text())
    assert run["fingerprint"]["memory_bank"] == other.content_hash
    assert "memory_bank" in run["fingerprint_history"][-1]["changes"][0] and res.summary["rows"] == 7


def _concurrent(cfgs):
    """Start run_job on every config at the same moment; returns the results and the errors."""
    barrier = threading.Barrier(len(cfgs))
    results, errors = [], []

    def go(cfg):
        barrier.wait()
        try:
            results.append(_noop(cfg))
        except Exception as e:  # noqa: BLE001 - collected and asserted on
            errors.append(e)

    threads = [threading.Thread(target=go, args=(c,)) for c in cfgs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors


def test_two_concurrent_runs_on_one_local_output(ray_local, mixed_folder, random_checkpoints, small_bank, tmp_path):
    out = tmp_path / "out"
    results, errors = _concurrent(
        [_job(random_checkpoints, small_bank, images=str(mixed_folder), out=str(out)) for _ in range(2)]
    )
    assert len(results) == 1 and len(errors) == 1 and isinstance(errors[0], LeaseHeldError)
    assert "being written by another run" in str(errors[0])
    assert len(_rows(out)) == 7
    run = json.loads((out / RUN_JSON).read_text())
    assert [a["status"] for a in run["attempts"]] == ["completed"]


@pytest.fixture(scope="module")
def s3(s3_server):
    """Storage options for the S3 API of ``s3_server``, with one bucket ``lake``."""
    import boto3

    boto3.client(
        "s3",
        endpoint_url=s3_server,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing-secret",
    ).create_bucket(Bucket="lake")
    return {
        "key": "testing",
        "secret": "testing-secret",
        "client_kwargs": {"endpoint_url": s3_server, "region_name": "us-east-1"},
    }


def test_two_concurrent_runs_on_one_s3_output(ray_local, s3, mixed_folder, random_checkpoints, small_bank):
    out = "s3://lake/concurrent/"
    cfgs = [
        _job(random_checkpoints, small_bank, images=str(mixed_folder), out=out, storage_options=s3) for _ in range(2)
    ]
    results, errors = _concurrent(cfgs)
    assert len(results) == 1 and len(errors) == 1 and isinstance(errors[0], LeaseHeldError)
    assert len(_rows(out, s3)) == 7
    folder = OutputFolder(out, s3)
    assert not folder.fs.exists(folder.path("_ntt/lock.json"))  # released at the end


def test_s3_lease_expires_and_is_taken_over_once(s3):
    folder = OutputFolder("s3://lake/lease/", s3)
    a = Lease(folder, {"run_id": "A"}, ttl_s=1.0).acquire()
    with pytest.raises(LeaseHeldError, match="run A"):
        Lease(folder, {"run_id": "B"}, ttl_s=1.0).acquire()
    a._stop.set()  # A dies: no more renewals
    a._thread.join()
    import time

    time.sleep(1.5)
    b1 = Lease(folder, {"run_id": "B1"}, ttl_s=30).acquire()  # takes the expired lock over
    with pytest.raises(LeaseHeldError, match="run B1"):
        Lease(folder, {"run_id": "B2"}, ttl_s=30).acquire()
    a._stop.clear()  # A wakes up again: its next renewal must fail and mark the lease lost
    a.ttl_s = 0.04
    t = threading.Thread(target=a._renew_loop)
    t.start()
    time.sleep(0.3)
    a._stop.set()
    t.join()
    with pytest.raises(Exception, match="taken over"):
        a.check()
    b1.release()
    Lease(folder, {"run_id": "C"}, ttl_s=30).acquire().release()


# ----------------------------------------------------------------------------- retry, corruption, repair


def test_retry_errors_after_a_missing_file_appears(
    ray_local, mixed_folder, random_checkpoints, small_bank, tmp_path, coco_mini
):
    late = tmp_path / "arrives_later" / "late.jpg"  # not in mixed_folder: other tests list that folder
    late.parent.mkdir()
    manifest = tmp_path / "m.csv"
    manifest.write_text("image_uri\n" + "".join(f"{p}\n" for p in [mixed_folder / "anim.gif", late]))
    out = tmp_path / "out"
    cfg = _job(random_checkpoints, small_bank, manifest=str(manifest), out=str(out))
    first = _noop(cfg)
    assert _rows(out)[str(late)]["status"] == "error" and first.summary["error"] == 1
    shutil.copy(sorted((coco_mini / "val2017").glob("*.jpg"))[3], late)
    again = _noop(cfg)  # an error row is a row: a plain rerun does nothing
    assert again.attempt["to_process"] == 0
    retried = _noop(_job(random_checkpoints, small_bank, manifest=str(manifest), out=str(out), retry_errors=True))
    rows = _rows(out)
    assert retried.attempt["to_process"] == 1 and retried.attempt["errors_withdrawn"] == 1
    assert rows[str(late)]["status"] == "empty" and len(rows) == 2 and retried.summary["error"] == 0
    kept = list((out / "_ntt" / "retried").glob("*.parquet"))
    assert len(kept) == 1 and pq.read_table(kept[0]).column("status").to_pylist() == ["error"]
    assert verify_output(str(out)).exit_code == 0


def _corrupt_a_data_page(path: Path) -> None:
    """Flip bytes inside the compressed payload of the image_uri dictionary page (past its header),
    keeping the file's size and footer intact: only decoding the page (or its CRC) can tell."""
    col = pq.read_metadata(path).row_group(0).column(1)
    assert col.path_in_schema == "image_uri" and col.dictionary_page_offset is not None
    start = col.dictionary_page_offset + (col.data_page_offset - col.dictionary_page_offset) * 2 // 3
    data = bytearray(path.read_bytes())
    for i in range(start, start + 8):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_pages_are_detected_by_verify_and_redone_by_run(
    mixed_run, mixed_folder, random_checkpoints, small_bank, tmp_path
):
    out = _copy(mixed_run[0], tmp_path / "out")
    cfg = _job(random_checkpoints, small_bank, images=str(mixed_folder), out=str(out))
    (part,) = out.glob("part-*.parquet")
    _corrupt_a_data_page(part)
    pq.read_metadata(part)  # the footer still reads: only a full read finds it
    report = verify_output(str(out))
    assert report.exit_code == 3 and report.corrupt == [part.name]
    res = _noop(cfg)
    assert res.attempt["to_process"] == 7 and res.summary["rows"] == 7
    assert (out / "_ntt" / "quarantine" / part.name).exists()
    assert verify_output(str(out)).exit_code == 1  # consistent; two rows are (genuine) decode errors


def test_verify_repair_removes_duplicates_keeping_the_good_row(mixed_run, tmp_path):
    out = _copy(mixed_run[0], tmp_path / "out")
    (part,) = out.glob("part-*.parquet")
    t = pq.read_table(part)
    extra = (
        t.slice(0, 2)
        .set_column(4, "status", pa.array(["error", "error"]))
        .set_column(8, "run_id", pa.array(["older", "older"]))
    )
    pq.write_table(extra.cast(SHARD_SCHEMA), out / "part-foreign.parquet")  # e.g. a copy made by hand
    report = verify_output(str(out))
    assert report.exit_code == 3 and report.duplicate_uris == 2 and report.duplicate_examples
    assert any("part-foreign.parquet is not in run.json" in m for m in report.record_mismatches)
    fixed = verify_output(str(out), repair=True)
    assert any("removed 2 duplicate row(s)" in r for r in fixed.repaired)
    again = verify_output(str(out))
    assert again.duplicate_uris == 0 and not again.record_mismatches and again.rows == 7
    assert {r["run_id"] for r in _rows(out).values()} != {"older"}


# ----------------------------------------------------------------------------- the commit protocol


def _table(uris: list[str], run_id: str = "r") -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "image_id": i,
                "image_uri": u,
                "width": 1,
                "height": 1,
                "status": "empty",
                "error": None,
                "num_instances": 0,
                "instances": [],
                "run_id": run_id,
            }
            for i, u in enumerate(uris)
        ],
        schema=SHARD_SCHEMA,
    )


def test_only_a_provably_corrupt_shard_is_quarantined(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    folder = OutputFolder(str(out))
    good, truncated, bad_page = out / "part-good.parquet", out / "part-truncated.parquet", out / "part-page.parquet"
    pq.write_table(_table([f"/img/{i:04d}.jpg" for i in range(50)]), good, write_page_checksum=True, compression="none")
    truncated.write_bytes(good.read_bytes()[:-100])  # no footer: bad magic
    shutil.copy(good, bad_page)
    _corrupt_a_data_page(bad_page)  # footer intact: only the page checksum / decoding tells
    assert folder.quarantine_if_corrupt(str(good)) is None
    for f in (truncated, bad_page):
        moved = folder.quarantine_if_corrupt(str(f))
        assert moved == folder.path(f"_ntt/quarantine/{f.name}") and not f.exists() and Path(moved).exists()

    # Simulated transient store errors (monkeypatched filesystem open; no real network): never corruption.
    real_open = type(folder.fs).open
    calls = []

    def fails_once(self, path, mode="rb", **kw):
        calls.append(path)
        if len(calls) == 1:
            raise TimeoutError("simulated: read timed out")
        return real_open(self, path, mode, **kw)

    monkeypatch.setattr(type(folder.fs), "open", fails_once)
    assert folder.quarantine_if_corrupt(str(good)) is None and len(calls) == 2  # failed once, then parsed: healthy
    for error in (TimeoutError("simulated: read timed out"), OSError("simulated: connection reset by peer")):

        def always_fails(self, path, mode="rb", error=error, **kw):
            raise error

        monkeypatch.setattr(type(folder.fs), "open", always_fails)
        with pytest.raises(type(error), match="simulated"):
            folder.quarantine_if_corrupt(str(good))  # the run fails (and is retried) instead
    monkeypatch.setattr(type(folder.fs), "open", real_open)
    assert good.exists() and sorted(p.name for p in (out / "_ntt" / "quarantine").iterdir()) == [
        "part-page.parquet",
        "part-truncated.parquet",
    ]


class _Run:
    def __init__(self):
        self.run: dict = {}

    def update(self, fn):
        fn(self.run)


@pytest.mark.parametrize("crash_at", ["staging.intent", "staging.published", "lost_tmp"])
def test_interrupted_commit_is_finished_or_undone(tmp_path, crash_at, monkeypatch):
    """A crash after the intent is written is finished by the next run when the new parts are complete
    (under _ntt/tmp or already published); if they are gone, it is undone and the sources stay.
    In-process: the crash point raises instead of killing (tests/test_crash_points.py kills for real)."""
    import ntt_batch.output.intents as intents_mod

    folder = OutputFolder(str(tmp_path / "out"))
    src = folder.path("_ntt/staging/r/a.parquet")
    os.makedirs(os.path.dirname(src))
    pq.write_table(_table(["a", "b"]), src)
    asm = PartAssembler(folder, "r")
    asm.add(_table(["a", "b"]))
    new = asm.close()
    record = _Run()

    class Crash(Exception):
        pass

    def crash_point(name):
        if name == (crash_at if crash_at != "lost_tmp" else "staging.intent"):
            raise Crash(name)

    monkeypatch.setattr(intents_mod, "crash_point", crash_point)
    with pytest.raises(Crash):
        commit(folder, new, [src], record.update, kind="staging")
    monkeypatch.undo()
    if crash_at == "lost_tmp":
        os.remove(new[0].tmp_path)
    assert [p.name for p in folder.parts()] == ([new[0].name] if crash_at == "staging.published" else [])
    notes = recover_commits(folder, record.update)
    visible = sorted(p.name for p in folder.parts())
    if crash_at == "lost_tmp":
        assert "undid" in notes[0] and visible == [] and os.path.exists(src)
    else:
        assert "finished" in notes[0] and visible == [new[0].name] and not os.path.exists(src)
        assert record.run["parts"][new[0].name]["rows"] == 2
        assert (
            record.run["parts"][new[0].name]["sha256"]
            == hashlib.sha256(Path(folder.path(new[0].name)).read_bytes()).hexdigest()
        )
    assert not list((tmp_path / "out" / "_ntt" / "commits").glob("*.json"))


def test_verify_and_compact_from_the_command_line(mixed_run, tmp_path):
    from click.testing import CliRunner

    from ntt_batch.cli import main

    out = _copy(mixed_run[0], tmp_path / "out")
    (part,) = out.glob("part-*.parquet")
    t = pq.read_table(part)
    for k, start in enumerate(range(0, t.num_rows, 3)):  # three small files, e.g. from an older version
        pq.write_table(t.slice(start, 3), out / f"part-small-{k}.parquet")
    part.unlink()
    runner = CliRunner()
    res = runner.invoke(main, ["verify", str(out)])
    assert res.exit_code == 3 and "not in run.json" in res.output and "INTEGRITY PROBLEM" in res.output
    assert runner.invoke(main, ["verify", str(out), "--repair"]).exit_code in (0, 1)
    res = runner.invoke(main, ["compact", str(out), "--target-file-mb", "1"])
    assert res.exit_code == 0 and "3 file(s) → 1 file(s)" in res.output, res.output
    res = runner.invoke(main, ["verify", str(out), "--json", str(tmp_path / "v.json")])
    report = json.loads((tmp_path / "v.json").read_text())
    assert res.exit_code == 1 and report["rows"] == 7 and report["files"] == 1 and report["missing_inputs"] == 0
    assert sorted(_rows(out)) == sorted(_rows(mixed_run[0]))


def test_an_output_of_the_old_layout_is_adopted(ray_local, mixed_folder, random_checkpoints, small_bank, tmp_path):
    """ntt-batch 0.1 wrote run.json and Ray-named shards side by side (and could leave a 0-byte shard)."""
    out = tmp_path / "old"
    out.mkdir()
    jpgs = sorted(str(p) for p in mixed_folder.glob("*.jpg"))
    pq.write_table(_table(jpgs, run_id="old-run"), out / "a1b2_000000_000000.parquet")
    (out / "a1b2_000001_000000.parquet").write_bytes(b"")
    (out / "run.json").write_text(
        json.dumps({"format": "ntt-batch/run", "attempts": [{"run_id": "old-run", "status": "running"}]})
    )
    res = _noop(_job(random_checkpoints, small_bank, images=str(mixed_folder), out=str(out)))
    rows = _rows(out)
    assert res.attempt["already_done"] == 2 and res.attempt["to_process"] == 5 and len(rows) == 7
    assert {rows[u]["run_id"] for u in jpgs} == {"old-run"}
    assert not (out / "run.json").exists() and (out / "_ntt" / "quarantine" / "a1b2_000001_000000.parquet").exists()
    run = json.loads((out / RUN_JSON).read_text())
    assert [a["status"] for a in run["attempts"]] == ["died", "completed"]
