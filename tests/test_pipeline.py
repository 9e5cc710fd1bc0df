"""The Ray Data batch job on a real local Ray instance, real Parquet, real S3 API (moto server).

Models are the real sam2 / timm ones with random weights and a 2×2 point grid, so each decoded
image costs a SAM2 + DINOv2 forward (~8 s on 2 CPU cores): the corpora are kept small.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import SEG, job_config, rows_by_uri
from PIL import Image

from ntt_batch.method.config import SegmenterConfig
from ntt_batch.pipeline.config import JobConfig
from ntt_batch.pipeline.job import run_job
from ntt_batch.storage.masks import decode_rle

pytestmark = pytest.mark.slow


def _job(random_checkpoints, small_bank, **kw) -> JobConfig:
    return job_config(random_checkpoints, small_bank, **{"batch_size": 1, **kw})


def _rows(out, options=None) -> dict[str, dict]:
    return rows_by_uri(out, options)


# ----------------------------------------------------------------------------- bad inputs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, coco_mini) -> tuple[Path, Path, dict[str, str]]:
    """Good coco_mini images mixed with every kind of bad input; a CSV manifest lists them all."""
    d = tmp_path_factory.mktemp("corpus")
    good = sorted((coco_mini / "val2017").glob("*.jpg"))[:2]
    for p in good:
        shutil.copy(p, d / p.name)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    expect = {p.name: "ok" for p in good}
    (d / "zero.jpg").write_bytes(b"")
    expect["zero.jpg"] = "0 bytes"
    data = good[0].read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 3])
    expect["truncated.jpg"] = "truncated"
    (d / "notimage.jpg").write_text("this is a text file, not a JPEG\n")
    expect["notimage.jpg"] = "not an image"
    Image.fromarray(rgb[..., 0]).save(d / "gray.png")
    Image.fromarray(rgb).convert("CMYK").save(d / "cmyk.jpg")
    Image.fromarray(np.dstack([rgb, np.full((48, 64), 128, np.uint8)])).save(d / "rgba.png")
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(d / "sixteen.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display: the decoded image must be 48 wide, 64 high
    Image.fromarray(rgb).save(d / "exif_rot.jpg", exif=exif.tobytes())
    for name in ("gray.png", "cmyk.jpg", "rgba.png", "sixteen.png", "exif_rot.jpg"):
        expect[name] = "ok"
    Image.new("L", (2000, 1500)).save(d / "bomb.png")  # over the job's 1,000,000-pixel limit
    expect["bomb.png"] = "pixels, over the limit"
    manifest = d / "manifest.csv"
    names = sorted(expect) + ["missing.jpg"]
    expect["missing.jpg"] = "missing"
    manifest.write_text("image_uri\n" + "".join(f"{d / n}\n" for n in names))
    return d, manifest, expect


@pytest.fixture(scope="module")
def corpus_run(ray_local, corpus, random_checkpoints, small_bank, tmp_path_factory):
    d, manifest, expect = corpus
    out = tmp_path_factory.mktemp("corpus_out") / "shards"
    cfg = _job(random_checkpoints, small_bank, manifest=str(manifest), out=str(out), max_pixels=1_000_000, batch_size=2)
    result = run_job(cfg, echo=lambda s: None)
    return out, result, cfg


def test_every_input_gets_exactly_one_status_row(corpus, corpus_run):
    d, _, expect = corpus
    out, result, _ = corpus_run
    rows = _rows(out)
    assert set(rows) == {str(d / n) for n in expect}
    for name, want in expect.items():
        r = rows[str(d / name)]
        if want == "ok":
            assert r["status"] in ("ok", "empty") and r["error"] is None, (name, r["error"])
        else:
            assert r["status"] == "error" and want in r["error"], (name, r["error"])
    assert result.summary["error"] == 5 and result.summary["missing"] == 0 and result.exit_code == 0


def test_decoded_modes_and_exif_orientation(corpus, corpus_run):
    d, _, _ = corpus
    rows = _rows(corpus_run[0])
    for name in ("gray.png", "cmyk.jpg", "rgba.png", "sixteen.png"):
        assert (rows[str(d / name)]["width"], rows[str(d / name)]["height"]) == (64, 48)
    assert (rows[str(d / "exif_rot.jpg")]["width"], rows[str(d / "exif_rot.jpg")]["height"]) == (48, 64)


def test_instances_are_valid_rle_and_boxes(corpus_run):
    rows = _rows(corpus_run[0])
    n = 0
    for r in rows.values():
        assert r["num_instances"] == len(r["instances"])
        assert (r["status"] == "ok") == (r["num_instances"] > 0) or r["status"] == "error"
        for inst in r["instances"]:
            m = decode_rle(inst["segmentation"])
            assert m.shape == (r["height"], r["width"]) and m.sum() == inst["area"] > 0
            ys, xs = np.nonzero(m)
            assert inst["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()]
            assert inst["category_name"] in ("person", "car") and inst["category_id"] in (1, 3)
            n += 1
    assert n > 0


def test_rerun_adds_nothing_and_run_json_records_provenance(corpus_run):
    import json

    out, first, cfg = corpus_run
    files_before = sorted(p.name for p in Path(out).glob("*.parquet"))
    assert len(files_before) == 1 and files_before[0].startswith("part-")  # all rows in one committed file
    again = run_job(cfg, echo=lambda s: None)
    assert again.attempt["to_process"] == 0 and again.summary["rows"] == first.summary["rows"]
    assert sorted(p.name for p in Path(out).glob("*.parquet")) == files_before
    run = json.loads((Path(out) / "_ntt" / "run.json").read_text())
    assert [a["status"] for a in run["attempts"]] == ["completed", "completed"]
    assert run["models"]["sam2"]["name"] == "sam2.1_hiera_tiny" and len(run["models"]["encoder"]["sha256"]) == 64
    assert run["memory_bank"]["content_hash"] and run["official_weights"] is False
    assert run["summary"]["rows"] == first.summary["rows"] and "CPU" in run["cluster_resources"]
    assert run["fingerprint"]["segmenter"]["points_per_side"] == 2 and run["fingerprint"]["inputs"]["manifest"]
    assert run["parts"][files_before[0]]["rows"] == first.summary["rows"]


def test_shards_readable_without_this_package(corpus_run):
    """Plain pyarrow (and pandas) read the layout; nothing of ntt_batch is needed."""
    out = corpus_run[0]
    code = (
        "import pyarrow.dataset as ds, sys; t = ds.dataset(sys.argv[1], format='parquet').to_table(); "
        "df = t.to_pandas(); "
        "print(len(df), sorted(set(df['status'])), t.schema.field('instances').type)"
    )
    res = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, check=True)
    assert res.stdout.startswith("12 ['empty', 'error', 'ok']") or res.stdout.startswith("12 ['error', 'ok']")
    assert "segmentation: struct<size: list<element: int32>, counts: string>" in res.stdout


def test_ray_equals_single_process_segment(corpus, corpus_run, random_checkpoints, small_bank):
    """The actor runs the same MethodSegmenter as `ntt-batch segment`: same instances on the same images."""
    from ntt_batch.bank.load import segmenter_from_bank as load_segmenter
    from ntt_batch.storage.images import load_image

    d, _, _ = corpus
    rows = _rows(corpus_run[0])
    seg, _ = load_segmenter(
        str(small_bank),
        sam2_name="sam2.1_hiera_tiny",
        config=SegmenterConfig(**SEG),
        checkpoint_dir=str(random_checkpoints),
        download=False,
    )
    for name in sorted(p.name for p in d.glob("0*.jpg")):
        single = seg.segment_images([load_image(d / name)])[0]
        ray_inst = rows[str(d / name)]["instances"]
        assert len(single) == len(ray_inst)
        for a, b in zip(single, ray_inst):
            assert a.category_id == b["category_id"] and abs(a.score - b["score"]) < 1e-4
            mb = decode_rle(b["segmentation"])
            assert (a.mask != mb).mean() < 1e-3


def test_dry_run_lists_only(corpus, random_checkpoints, small_bank, tmp_path):
    d, manifest, expect = corpus
    lines = []
    res = run_job(
        _job(random_checkpoints, small_bank, manifest=str(manifest), out=str(tmp_path / "o")),
        dry_run=True,
        echo=lines.append,
    )
    assert res.summary["to_process"] == len(expect) and not (tmp_path / "o").exists()
    assert any("would process" in line for line in lines)


# ----------------------------------------------------------------------------- resume after a kill


def test_killed_driver_resumes_without_loss_or_duplicates(
    ray_local, coco_mini, random_checkpoints, small_bank, tmp_path
):
    """SIGKILL mid-run: readers see no partial file, a second run is refused while the first holds the
    output, and the rerun commits what the dead run staged, redoes the rest, and equals an uninterrupted run."""
    from ntt_batch.output.lease import LeaseHeldError

    images = tmp_path / "in"
    images.mkdir()
    for p in sorted((coco_mini / "val2017").glob("*.jpg"))[2:6]:
        shutil.copy(p, images / p.name)
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "ntt_batch.cli",
        "run",
        "--images",
        str(images),
        "--memory",
        str(small_bank),
        "--out",
        str(out),
        "--sam2",
        "sam2.1_hiera_tiny",
        "--checkpoint-dir",
        str(random_checkpoints),
        "--no-download",
        "--points-per-side",
        "2",
        "--device",
        "cpu",
        "--batch-size",
        "1",
        "--block-rows",
        "1",
    ]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    staged = lambda: list(out.glob("_ntt/staging/*/*.parquet"))  # noqa: E731
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not staged():
            assert proc.poll() is None, "the run finished before it could be interrupted"
            time.sleep(0.2)
        assert staged(), "no row was staged in time"
        with pytest.raises(LeaseHeldError, match="being written by another run"):  # one run per output
            run_job(_job(random_checkpoints, small_bank, images=str(images), out=str(out)), echo=lambda s: None)
        second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        assert second.returncode == 4 and "being written by another run" in second.stderr
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its local Ray die together
        proc.wait()
    assert not list(out.glob("*.parquet")), "nothing is committed before the end of a short run"
    code = "import pyarrow.dataset as ds, sys; print(ds.dataset(sys.argv[1], format='parquet').count_rows())"
    res = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "0"  # readers see no partial file
    killed_run = json.loads((out / "_ntt" / "run.json").read_text())["attempts"][0]["run_id"]

    result = run_job(_job(random_checkpoints, small_bank, images=str(images), out=str(out)), echo=lambda s: None)
    rows = _rows(out)
    recovered = [r for r in rows.values() if r["run_id"] == killed_run]
    assert recovered and result.attempt["to_process"] == 4 - len(recovered)
    assert set(rows) == {str(p) for p in images.iterdir()} and result.summary["missing"] == 0
    run = json.loads((out / "_ntt" / "run.json").read_text())
    assert [a["status"] for a in run["attempts"]] == ["died", "completed"]
    assert any("interrupted attempts had staged" in n for n in run["attempts"][1]["notes"])

    # the resumed output equals an uninterrupted run over the same images
    full = run_job(
        _job(random_checkpoints, small_bank, images=str(images), out=str(tmp_path / "full")), echo=lambda s: None
    )
    assert full.summary["rows"] == 4
    reference = _rows(tmp_path / "full")
    for uri, r in rows.items():
        a, b = r["instances"], reference[uri]["instances"]
        assert [(i["category_id"], i["segmentation"]["counts"]) for i in a] == [
            (i["category_id"], i["segmentation"]["counts"]) for i in b
        ]
        assert np.allclose([i["score"] for i in a], [i["score"] for i in b], atol=1e-4)


def test_truncated_shard_is_quarantined_and_redone(ray_local, coco_mini, random_checkpoints, small_bank, tmp_path):
    images = tmp_path / "in"
    images.mkdir()
    src = sorted((coco_mini / "val2017").glob("*.jpg"))[6]
    shutil.copy(src, images / src.name)
    out = tmp_path / "out"
    cfg = _job(random_checkpoints, small_bank, images=str(images), out=str(out))
    run_job(cfg, echo=lambda s: None)
    (shard,) = out.glob("*.parquet")
    shard.write_bytes(shard.read_bytes()[:100])  # e.g. a file cut short by a copy tool: no footer
    result = run_job(cfg, echo=lambda s: None)
    assert result.attempt["to_process"] == 1 and result.summary["rows"] == 1
    assert (out / "_ntt" / "quarantine" / shard.name).exists()  # kept, never deleted


# ----------------------------------------------------------------------------- S3 (moto server)


def test_s3_input_and_output(ray_local, s3_server, coco_mini, random_checkpoints, small_bank):
    import json

    import s3fs

    opts = {
        "key": "testing",
        "secret": "testing-secret",
        "client_kwargs": {"endpoint_url": s3_server, "region_name": "us-east-1"},
    }
    import boto3

    boto3.client(
        "s3",
        endpoint_url=s3_server,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing-secret",
    ).create_bucket(Bucket="ntt-test")
    fs = s3fs.S3FileSystem(**opts)
    good = sorted((coco_mini / "val2017").glob("*.jpg"))[:1]
    for p in good:
        fs.put_file(str(p), f"ntt-test/in/{p.name}")
    fs.pipe_file("ntt-test/in/broken.jpg", b"\xff\xd8\xff\xe0 not really a jpeg")
    cfg = _job(
        random_checkpoints, small_bank, images="s3://ntt-test/in/", out="s3://ntt-test/out/", storage_options=opts
    )
    first = run_job(cfg, echo=lambda s: None)
    assert first.summary["rows"] == 2 and first.summary["error"] == 1 and first.summary["missing"] == 0
    rows = _rows("s3://ntt-test/out/", opts)
    assert rows["s3://ntt-test/in/broken.jpg"]["status"] == "error"
    assert rows[f"s3://ntt-test/in/{good[0].name}"]["status"] in ("ok", "empty")
    again = run_job(cfg, echo=lambda s: None)
    assert again.attempt["to_process"] == 0 and again.summary["rows"] == 2
    run = fs.cat_file("ntt-test/out/_ntt/run.json").decode()
    assert "testing-secret" not in run and json.loads(run)["config"]["storage_options"]["secret"] == "***"
