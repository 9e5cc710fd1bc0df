"""Lake-native inputs: WebDataset tar shards, Parquet/Arrow tables, concurrent object reads.

Real components throughout: tars written with Python's ``tarfile`` in img2dataset's layout
(``key.jpg``, ``key.json``, ``key.txt``) from the shared COCO sample, tables written with pyarrow
(a bytes column, a Hugging Face ``{bytes, path}`` image struct), a local Ray instance, moto's S3
server. The model stage is the no-op one (every decoded image becomes an ``empty`` row): these
tests are about which samples get rows, not about masks.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import job_config, rows_by_uri

from ntt_batch.method.config import ConfigError
from ntt_batch.output.folder import SHARDS, OutputFolder
from ntt_batch.output.lease import LeaseHeldError
from ntt_batch.pipeline.job import run_job
from ntt_batch.pipeline.shard_plan import load_records
from ntt_batch.pipeline.stages import NoopModelActor, decode_batch
from ntt_batch.pipeline.verify import verify_output
from ntt_batch.sources.ids import stable_image_id
from ntt_batch.sources.shards import expand_braces, split_sample_uris
from ntt_batch.storage import reads


def _noop(cfg, **kw):
    return run_job(cfg, echo=lambda s: None, model_stage=NoopModelActor, **kw)


def _rows(out, options=None) -> dict[str, dict]:
    return rows_by_uri(out, options, columns=["image_id", "image_uri", "status", "error", "run_id"])


def write_shard(path: Path, images: list[Path], first_key: int) -> list[str]:
    """A WebDataset shard as img2dataset writes it: per sample ``key.jpg``, ``key.json``, ``key.txt``."""
    keys = []
    with tarfile.open(path, "w") as tar:
        for i, img in enumerate(images):
            key = f"{first_key + i:09d}"
            keys.append(key)
            meta = json.dumps({"key": key, "url": f"https://example.com/{img.name}", "status": "success"}).encode()
            for name, data in ((f"{key}.jpg", img.read_bytes()), (f"{key}.json", meta), (f"{key}.txt", b"a caption")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return keys


@pytest.fixture(scope="module")
def images(coco_mini) -> list[Path]:
    return sorted((coco_mini / "val2017").glob("*.jpg"))[:12]


@pytest.fixture
def shards(tmp_path, images) -> tuple[Path, dict[str, list[str]]]:
    """Three shards of four samples each (keys unique across shards, as img2dataset numbers them)."""
    d = tmp_path / "shards"
    d.mkdir()
    keys = {}
    for s in range(3):
        p = d / f"{s:05d}.tar"
        keys[str(p)] = write_shard(p, images[4 * s : 4 * s + 4], 4 * s)
    return d, keys


def _expected(keys: dict[str, list[str]]) -> set[str]:
    return {f"{shard}#{k}" for shard, ks in keys.items() for k in ks}


# ----------------------------------------------------------------------------- keys and patterns


def test_brace_patterns_and_sample_uris():
    assert expand_braces("s/{00008..00011}.tar") == ["s/00008.tar", "s/00009.tar", "s/00010.tar", "s/00011.tar"]
    assert expand_braces("{a,b}/{1..2}.tar") == ["a/1.tar", "a/2.tar", "b/1.tar", "b/2.tar"]
    with pytest.raises(ValueError, match="goes backwards"):
        expand_braces("s/{9..1}.tar")
    shard, key = split_sample_uris(pa.array(["s3://b/x#y/0.tar#k%23ey", "/plain/file.jpg"]))
    assert shard.to_pylist() == ["s3://b/x#y/0.tar", "/plain/file.jpg"] and key.to_pylist() == ["k%23ey", None]


# ----------------------------------------------------------------------------- WebDataset shards


def test_every_sample_one_row_verify_and_a_complete_shard_is_not_opened(
    ray_local, shards, random_checkpoints, small_bank, tmp_path
):
    d, keys = shards
    out = tmp_path / "out"
    cfg = lambda: job_config(random_checkpoints, small_bank, images=f"{d}/{{00000..00002}}.tar", out=str(out))  # noqa: E731
    first = _noop(cfg())
    rows = _rows(out)
    assert set(rows) == _expected(keys) and first.summary["missing"] == 0
    assert {r["status"] for r in rows.values()} == {"empty"}
    assert all(r["image_id"] == stable_image_id(u) for u, r in rows.items())
    assert first.attempt["shards_to_read"] == 3 and first.attempt["to_process"] == 12
    records = load_records(OutputFolder(str(out)), consolidate=False)
    assert {s: r["samples"] for s, r in records.items()} == {s: 4 for s in keys}

    report = verify_output(str(out))
    assert report.exit_code == 0 and report.inputs == 12 and report.missing_inputs == 0, report.format()

    # every shard is complete: a rerun opens none of them, so shards that are gone now cost nothing
    gone = tmp_path / "gone"
    shutil.move(d, gone)
    again = _noop(cfg())
    assert again.attempt["shards_complete"] == 3 and again.attempt["shards_to_read"] == 0
    assert again.summary["processed_this_run"] == 0 and again.summary["rows"] == 12 and again.exit_code == 0
    shutil.move(gone, d)
    dry: list[str] = []
    run_job(cfg(), dry_run=True, echo=dry.append)
    assert any("complete (not opened): 3; partly done: 0; to read: 0" in line for line in dry)

    # rows lost with a corrupt part: the records say "read", but the shards are complete no more
    (part,) = out.glob("*.parquet")
    part.write_bytes(part.read_bytes()[:100])
    redone = _noop(cfg())
    assert redone.attempt["shards_to_read"] == 3 and redone.summary["rows"] == 12
    assert set(_rows(out)) == _expected(keys)


def test_truncated_tar_and_corrupt_member_give_error_rows_never_a_gap(
    ray_local, shards, images, random_checkpoints, small_bank, tmp_path
):
    d, keys = shards
    corrupt_shard, cut_shard = d / "00000.tar", d / "00001.tar"
    # a corrupt member: sample 000000001's jpg bytes overwritten with noise
    with tarfile.open(corrupt_shard) as tar:
        jpg = tar.getmember("000000001.jpg")
    raw = bytearray(corrupt_shard.read_bytes())
    raw[jpg.offset_data : jpg.offset_data + jpg.size] = np.random.default_rng(0).bytes(jpg.size)
    corrupt_shard.write_bytes(bytes(raw))
    # a truncated shard: cut inside the third sample's image
    full = cut_shard.read_bytes()
    with tarfile.open(cut_shard) as tar:
        third = tar.getmember("000000006.jpg")
    cut_shard.write_bytes(full[: third.offset_data + 1000])

    out = tmp_path / "out"
    cfg = lambda **kw: job_config(  # noqa: E731
        random_checkpoints, small_bank, images=f"{d}/*.tar", out=str(out), **kw
    )
    _noop(cfg())
    rows = _rows(out)
    bad = rows[f"{corrupt_shard}#000000001"]
    assert bad["status"] == "error" and bad["error"].startswith("ImageDecodeError: ")
    shard_row = rows[f"{cut_shard}#.shard"]
    assert shard_row["status"] == "error"
    assert str(cut_shard) in shard_row["error"] and "truncated inside member '000000006.jpg'" in shard_row["error"]
    assert "last complete sample: 000000005" in shard_row["error"]
    readable = {f"{cut_shard}#{k}" for k in ("000000004", "000000005")}
    assert readable <= set(rows) and {r["status"] for u, r in rows.items() if u in readable} == {"empty"}
    unread = {f"{cut_shard}#{k}" for k in ("000000006", "000000007")}
    assert not unread & set(rows)  # not rows of their own: the shard's error row stands for them
    assert len(rows) == 4 + 3 + 4  # shard 0: 4 (one error); shard 1: 2 read + its error row; shard 2: 4

    report = verify_output(str(out))
    assert report.integrity_ok and report.exit_code == 1 and report.missing_inputs == 0, report.format()

    # a plain rerun: every shard has all its rows (the error rows included), nothing is read
    assert _noop(cfg()).attempt["shards_to_read"] == 0
    # the shard is fixed; --retry-errors reads the two shards with error rows again, skipping their done samples
    cut_shard.write_bytes(full)
    retried = _noop(cfg(retry_errors=True))
    assert retried.attempt["shards_to_read"] == 2 and retried.attempt["errors_withdrawn"] == 2
    rows = _rows(out)
    assert set(rows) == _expected(keys) and rows[f"{corrupt_shard}#000000001"]["status"] == "error"
    assert retried.summary["missing"] == 0 and retried.attempt["to_process"] == 3  # 000000001, 006, 007
    report = verify_output(str(out))
    assert report.integrity_ok and report.inputs == 12 and report.missing_inputs == 0, report.format()


def test_shard_settings_are_checked(random_checkpoints, small_bank, tmp_path):
    with pytest.raises(ConfigError, match="id_column: only with a table"):
        job_config(
            random_checkpoints, small_bank, images=str(tmp_path / "a.tar"), out=str(tmp_path), id_column="k"
        ).validate()
    with pytest.raises(ConfigError, match="extensions"):
        job_config(
            random_checkpoints, small_bank, images=str(tmp_path / "a.tar"), out=str(tmp_path), extensions=["jpg"]
        ).validate()
    from ntt_batch.pipeline.validate import check_before_writing
    from ntt_batch.sources import InputSpec

    with pytest.raises(FileNotFoundError, match=r"first shard of .*nope/\{0..2\}\.tar.*does not exist"):
        check_before_writing(InputSpec(images=f"{tmp_path}/nope/{{0..2}}.tar"), None, OutputFolder(str(tmp_path / "o")))
    with pytest.raises(FileNotFoundError, match="no shards at"):
        check_before_writing(InputSpec(table=f"{tmp_path}/*.parquet"), None, OutputFolder(str(tmp_path / "o")))
    assert not (tmp_path / "o").exists()
    with pytest.raises(ConfigError, match="exactly one input"):
        job_config(
            random_checkpoints, small_bank, images=str(tmp_path), table=str(tmp_path / "t.parquet"), out=str(tmp_path)
        ).validate()


# ----------------------------------------------------------------------------- tables


def test_table_inputs_bytes_column_and_hugging_face_image_structs(
    ray_local, images, random_checkpoints, small_bank, tmp_path
):
    tables = tmp_path / "tables"
    tables.mkdir()
    # img2dataset's parquet output: a bytes column "jpg" and a text "key"; two row groups
    t = pa.table(
        {
            "key": [f"{i:09d}" for i in range(5)],
            "jpg": [p.read_bytes() for p in images[:5]],
            "caption": ["c"] * 5,
        }
    )
    pq.write_table(t, tables / "part-0.parquet", row_group_size=3)
    # a Hugging Face datasets table (Arrow IPC stream, as `datasets` caches it): image struct {bytes, path};
    # row 1 has only a path (relative to the table's folder), row 2 neither
    shutil.copy(images[6], tables / "only_path.jpg")
    hf = pa.table(
        {
            "image": pa.array(
                [
                    {"bytes": images[5].read_bytes(), "path": "a.jpg"},
                    {"bytes": None, "path": "only_path.jpg"},
                    {"bytes": None, "path": None},
                ],
                pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
            ),
            "label": [1, 2, 3],
        }
    )
    with pa.ipc.new_stream(str(tables / "data-00000.arrow"), hf.schema) as w:
        w.write_table(hf)

    out = tmp_path / "out"
    res = _noop(
        job_config(
            random_checkpoints,
            small_bank,
            table=str(tables / "part-0.parquet"),
            image_column="jpg",
            id_column="key",
            out=str(out),
        )
    )
    rows = _rows(out)
    assert set(rows) == {f"{tables}/part-0.parquet#{i:09d}" for i in range(5)} and res.summary["missing"] == 0
    assert {r["status"] for r in rows.values()} == {"empty"}
    assert verify_output(str(out)).exit_code == 0

    out2 = tmp_path / "out2"
    _noop(job_config(random_checkpoints, small_bank, table=str(tables / "*.arrow"), out=str(out2)))  # column guessed
    rows = _rows(out2)
    base = f"{tables}/data-00000.arrow"
    assert set(rows) == {f"{base}#0", f"{base}#1", f"{base}#2"}
    assert rows[f"{base}#0"]["status"] == "empty" and rows[f"{base}#1"]["status"] == "empty"
    assert rows[f"{base}#2"]["status"] == "error" and "neither bytes nor a path" in rows[f"{base}#2"]["error"]
    v = verify_output(str(out2))
    assert v.integrity_ok and v.inputs == 3 and v.missing_inputs == 0

    with pytest.raises(ValueError, match="no column 'img'.*its columns: key, jpg, caption"):
        _noop(
            job_config(
                random_checkpoints,
                small_bank,
                table=str(tables / "part-0.parquet"),
                image_column="img",
                out=str(tmp_path / "out3"),
            )
        )


# ----------------------------------------------------------------------------- a killed driver


_DRIVER = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from conftest import job_config
from ntt_batch.pipeline.job import run_job
from ntt_batch.pipeline.stages import NoopModelActor


class SlowNoop(NoopModelActor):
    def __call__(self, batch):
        time.sleep(0.7)
        return super().__call__(batch)


cfg = job_config(Path({ckpt!r}), Path({bank!r}), images={images!r}, out={out!r}, batch_size=1, block_rows=1,
                 read_concurrency=1, lease_ttl_s=5.0)
run_job(cfg, model_stage=SlowNoop, echo=print, verbose=False)
"""


def test_killed_driver_then_rerun_every_sample_exactly_one_row(
    ray_local, shards, random_checkpoints, small_bank, tmp_path
):
    d, keys = shards
    out = tmp_path / "out"
    pattern = f"{d}/{{00000..00002}}.tar"
    script = tmp_path / "driver.py"
    script.write_text(
        _DRIVER.format(
            tests=str(Path(__file__).parent),
            ckpt=str(random_checkpoints),
            bank=str(small_bank),
            images=pattern,
            out=str(out),
        )
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    staged = lambda: list(out.glob("_ntt/staging/*/*.parquet"))  # noqa: E731
    try:
        deadline = time.time() + 300
        while time.time() < deadline and len(staged()) < 3:
            assert proc.poll() is None, "the run finished before it could be interrupted"
            time.sleep(0.2)
        assert staged(), "no row was staged in time"
        with pytest.raises(LeaseHeldError):  # two runs cannot both proceed
            _noop(job_config(random_checkpoints, small_bank, images=pattern, out=str(out)))
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its local Ray die together
        proc.wait()

    result = _noop(job_config(random_checkpoints, small_bank, images=pattern, out=str(out), lease_ttl_s=5.0))
    rows = _rows(out)
    assert set(rows) == _expected(keys) and result.summary["missing"] == 0 and result.summary["rows"] == 12
    killed = {r["run_id"] for r in rows.values()} - {result.attempt["run_id"]}
    recovered = [r for r in rows.values() if r["run_id"] in killed]
    assert recovered, "the killed run's staged rows were committed by the rerun"
    assert result.attempt["to_process"] == 12 - len(recovered)  # done samples were skipped, not redone
    assert result.attempt["shards_partly_done"] + result.attempt["shards_complete"] >= 1
    report = verify_output(str(out))
    assert report.exit_code == 0 and report.inputs == 12 and report.missing_inputs == 0, report.format()


def test_two_runs_on_one_sharded_output_cannot_both_proceed(
    ray_local, shards, random_checkpoints, small_bank, tmp_path
):
    d, keys = shards
    out = tmp_path / "out"
    barrier = threading.Barrier(2)
    results, errors = [], []

    def go():
        barrier.wait()
        try:
            results.append(_noop(job_config(random_checkpoints, small_bank, images=f"{d}/*.tar", out=str(out))))
        except Exception as e:  # noqa: BLE001 - asserted on
            errors.append(e)

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 1 and len(errors) == 1 and isinstance(errors[0], LeaseHeldError)
    assert set(_rows(out)) == _expected(keys)


# ----------------------------------------------------------------------------- S3


@pytest.fixture(scope="module")
def s3(s3_server):
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


def test_s3_shard_is_one_get_and_complete_shards_are_skipped(
    ray_local, s3, shards, random_checkpoints, small_bank, tmp_path
):
    import s3fs

    d, keys = shards
    fs = s3fs.S3FileSystem(**s3)
    for p in sorted(d.glob("*.tar")):
        fs.put_file(str(p), f"lake/wds/{p.name}")
    with reads.open_stream("s3://lake/wds/00000.tar", s3) as f:  # one GET, read as a stream
        assert f.read() == (d / "00000.tar").read_bytes()

    cfg = lambda: job_config(  # noqa: E731
        random_checkpoints,
        small_bank,
        images="s3://lake/wds/{00000..00002}.tar",
        out="s3://lake/out-wds/",
        storage_options=s3,
    )
    first = _noop(cfg())
    rows = _rows("s3://lake/out-wds/", s3)
    assert set(rows) == {f"s3://lake/wds/{Path(s).name}#{k}" for s, ks in keys.items() for k in ks}
    assert first.summary["missing"] == 0
    assert fs.ls(f"lake/out-wds/{SHARDS}")  # the records are in the output
    fs.rm("lake/wds/00001.tar")  # complete: never opened again
    again = _noop(cfg())
    assert again.attempt["shards_complete"] == 3 and again.summary["rows"] == 12 and again.exit_code == 0
    report = verify_output("s3://lake/out-wds/", s3)
    assert report.exit_code == 0 and report.inputs == 12 and report.missing_inputs == 0


def test_concurrent_object_reads_keep_order_and_per_image_errors(s3, images, monkeypatch):
    import s3fs

    fs = s3fs.S3FileSystem(**s3)
    uris = []
    for i, p in enumerate(images[:6]):
        fs.put_file(str(p), f"lake/objs/{i}.jpg")
        uris.append(f"s3://lake/objs/{i}.jpg")
    uris.insert(3, "s3://lake/objs/missing.jpg")
    fs.pipe_file("lake/objs/bad.jpg", b"not an image")
    uris.append("s3://lake/objs/bad.jpg")

    live, peak = [0], [0]
    lock = threading.Lock()
    real = reads.read_object

    def counting(uri, options=None):  # the real read, with the number of reads in flight recorded
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        try:
            time.sleep(0.05)
            return real(uri, options)
        finally:
            with lock:
                live[0] -= 1

    monkeypatch.setattr(reads, "read_object", counting)
    batch = {"image_id": np.arange(len(uris)), "image_uri": np.array(uris, dtype=object)}
    out = decode_batch(batch, storage_options=s3, max_pixels=10**8, read_concurrency=4, read_buffer_mb=64)
    assert list(out["image_uri"]) == uris and list(out["image_id"]) == list(range(len(uris)))
    assert peak[0] == 4  # four reads in flight at once
    errs = list(out["error"])
    assert errs[3].startswith("missing: s3://lake/objs/missing.jpg") and "not an image" in errs[-1]
    assert not any(errs[i] for i in (0, 1, 2, 4, 5, 6))
    for i, p in zip((0, 1, 2, 4, 5, 6), images[:6]):
        from ntt_batch.storage.images import load_image

        ref = load_image(p)
        assert (int(out["height"][i]), int(out["width"][i])) == ref.shape[:2]
        assert out["pixels"][i] == ref.tobytes()

    # the byte cap: each read counts at least 256 kB (or the largest object seen), so 1 MB allows 4 in flight
    peak[0] = 0
    assert len(list(reads.read_many(uris * 3, s3, concurrency=16, buffer_bytes=64 << 20))) == 3 * len(uris)
    uncapped, peak[0] = peak[0], 0
    got = dict(reads.read_many(uris * 3, s3, concurrency=16, buffer_bytes=1 << 20))
    assert uncapped == 16 and peak[0] == 4
    assert got[0] == images[0].read_bytes() and isinstance(got[3], FileNotFoundError)


def test_a_broken_table_shard_gives_its_readable_rows_and_an_error_row(images, tmp_path):
    """No footer: the shard's error row alone. A row group whose pages do not decode: the other row
    groups' rows plus the shard's error row naming the lost rows. Done row groups are not read."""
    from ntt_batch.sources import InputSpec
    from ntt_batch.sources.shards import SHARD_ERROR_KEY, ShardCensus

    good = tmp_path / "t.parquet"
    pq.write_table(
        pa.table({"key": [f"k{i}" for i in range(6)], "jpg": [p.read_bytes() for p in images[:6]]}),
        good,
        row_group_size=2,
        compression="none",
        use_dictionary=False,
    )
    src = InputSpec(table=str(good), image_column="jpg", id_column="key").source()

    def read(path, done=frozenset()):
        census = ShardCensus(str(path))
        return [
            (s.key, s.data is not None, s.error) for s in src.samples(str(path), None, done=done, census=census)
        ], census

    rows, census = read(good)
    assert [k for k, ok, _ in rows] == [f"k{i}" for i in range(6)] and all(ok for _, ok, _ in rows)

    cut = tmp_path / "cut.parquet"
    cut.write_bytes(good.read_bytes()[:-100])  # no footer
    rows, census = read(cut)
    assert len(rows) == 1 and rows[0][0] == SHARD_ERROR_KEY and "is not a readable table" in rows[0][2]
    assert census.samples == 1 and census.broken

    md = pq.ParquetFile(good).metadata
    col = md.row_group(1).column(1)  # the second row group's image column chunk
    raw = bytearray(good.read_bytes())
    start = col.data_page_offset
    raw[start : start + 64] = b"\xff" * 64  # its page header no longer parses
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(bytes(raw))
    rows, census = read(bad)
    keys = [k for k, _, _ in rows]
    assert keys == ["k0", "k1", "k4", "k5", SHARD_ERROR_KEY]
    assert "rows 2..3 unreadable" in rows[-1][2] and census.samples == 5

    rows, census = read(good, done=frozenset({"k0", "k1", "k2"}))  # row group 0 is all done: not read
    assert [k for k, _, _ in rows] == ["k3", "k4", "k5"] and census.skipped == 3 and census.samples == 6
