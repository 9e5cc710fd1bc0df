"""`ntt-batch publish`: the committed part files registered in Iceberg and Delta Lake tables, in step with the output.

Real components throughout: outputs written by the real job (local Ray, the no-op model stage
where the models do not matter) or, where only the table bookkeeping matters, by the real commit
code (``output.parts``); pyiceberg with a SQL catalog on a SQLite file and delta-rs, read back with
their own readers (``table.scan().to_arrow()``, ``DeltaTable.to_pyarrow_table()``); S3 is moto's
server in a separate process (delta-rs holds the GIL while it waits on HTTP, so an in-process
server would never answer it). The invariant checked everywhere: the table's rows are exactly the
output's rows (``verify``'s count, the same rows), with no duplicate, and every publish that
changes something is exactly one Iceberg snapshot and one Delta version.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import free_port, job_config
from pycocotools import mask as mask_utils

from ntt_batch.output.delta_table import delta_storage_options
from ntt_batch.output.folder import COMMITS, OutputFolder
from ntt_batch.output.iceberg_table import load_catalog
from ntt_batch.output.intents import commit
from ntt_batch.output.lease import Lease, LeaseHeldError
from ntt_batch.output.parts import PartAssembler, RunRecord
from ntt_batch.output.publish import publish
from ntt_batch.output.shards import SHARD_SCHEMA, read_shards
from ntt_batch.output.table_common import PublishError, PublishSpec
from ntt_batch.pipeline.job import run_job
from ntt_batch.pipeline.stages import NoopModelActor
from ntt_batch.pipeline.verify import compact_output, verify_output

TABLE = "labels.masks"


def _quiet(_line: str) -> None:
    pass


# ----------------------------------------------------------------------------- readers of the tables


def _iceberg(out, spec: PublishSpec | None = None, options=None):
    """The Iceberg table as a reader opens it: the catalog the publish used, pyiceberg's own scan."""
    spec = spec or PublishSpec(table=TABLE)
    return load_catalog(spec, OutputFolder(str(out), options)).load_table(spec.table)


def _delta(root, options=None):
    from deltalake import DeltaTable

    return DeltaTable(str(root), storage_options=delta_storage_options(options) or None)


def _sorted_rows(table: pa.Table) -> list[dict]:
    return sorted(table.select(SHARD_SCHEMA.names).to_pylist(), key=lambda r: r["image_uri"])


def _assert_table_is_the_output(out, options=None, *, spec: PublishSpec | None = None, delta_root=None) -> int:
    """The Iceberg table (and the Delta table at ``delta_root``) hold exactly the output's rows; returns their count."""
    report = verify_output(str(out), options, inputs=False)
    assert report.integrity_ok, report.format()
    expected = _sorted_rows(read_shards(str(out), options))
    assert len(expected) == report.rows
    got = _sorted_rows(_iceberg(out, spec, options).scan().to_arrow())
    assert len({r["image_uri"] for r in got}) == len(got), "a duplicate row in the Iceberg table"
    assert got == expected
    if delta_root is not None:
        got = _sorted_rows(_delta(delta_root, options).to_pyarrow_table())
        assert got == expected
    return report.rows


def _snapshots(out, spec=None, options=None) -> list:
    return list(_iceberg(out, spec, options).snapshots())


# ----------------------------------------------------------------------------- outputs written by the commit code


def _mask(seed: int, h: int = 24, w: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = np.zeros((h, w), dtype=np.uint8)
    y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
    m[y : y + rng.integers(3, h // 2), x : x + rng.integers(3, w // 2)] = 1
    m[rng.integers(0, h), :] = 1  # a second, disjoint-ish run: more than one RLE run per column
    return m


def _rows(uris: list[str], run_id: str, with_masks: bool = True) -> pa.Table:
    rows = []
    for i, uri in enumerate(uris):
        instances = []
        if with_masks:
            m = _mask(i)
            rle = mask_utils.encode(np.asfortranarray(m))
            instances.append(
                {
                    "category_id": 1 + i % 2,
                    "category_name": ["person", "car"][i % 2],
                    "score": 0.5 + i / 1000,
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "area": int(m.sum()),
                    "segmentation": {"size": [24, 32], "counts": rle["counts"].decode()},
                }
            )
        rows.append(
            {
                "image_id": i,
                "image_uri": uri,
                "width": 32,
                "height": 24,
                "status": "ok" if instances else "empty",
                "error": None,
                "num_instances": len(instances),
                "instances": instances,
                "run_id": run_id,
            }
        )
    return pa.Table.from_pylist(rows, schema=SHARD_SCHEMA)


def _write_output(out: str, batches: list[list[str]], options=None, with_masks: bool = True) -> OutputFolder:
    """An output whose parts are committed by the job's own commit code, one part per batch of URIs."""
    folder = OutputFolder(out, options)
    record = RunRecord(folder, {"format": "ntt-batch/run", "layout": 2})
    record.write()
    for k, uris in enumerate(batches):
        asm = PartAssembler(folder, f"r{k}")
        asm.add(_rows(uris, f"r{k}", with_masks))
        commit(folder, asm.close(), [], record.update, kind="staging")
    return folder


def _uris(prefix: str, n: int) -> list[str]:
    return [f"s3://images/{prefix}/{i:05d}.jpg" for i in range(n)]


# ----------------------------------------------------------------------------- bookkeeping, local


def test_publish_twice_adds_nothing_and_compact_is_one_snapshot_and_one_version(tmp_path):
    out = tmp_path / "out"
    _write_output(str(out), [_uris("a", 7), _uris("b", 5), _uris("c", 3)])
    first = publish(str(out), table=TABLE, delta=True, echo=_quiet)
    ice, dlt = first.tables
    assert (first.parts, first.rows) == (3, 15)
    assert len(ice.added) == 3 and not ice.removed and ice.table_rows == 15 and not ice.up_to_date
    assert len(dlt.added) == 3 and dlt.snapshot == 0 and dlt.table_rows == 15  # created with its files: version 0
    assert _assert_table_is_the_output(out, delta_root=out) == 15
    assert (out / "_ntt" / "iceberg" / "catalog.db").is_file() and (out / "_delta_log").is_dir()

    lines: list[str] = []
    again = publish(str(out), table=TABLE, delta=True, echo=lines.append)
    assert all(t.up_to_date and not t.added and not t.removed for t in again.tables)
    assert again.tables[0].snapshot == ice.snapshot and again.tables[1].snapshot == 0
    assert len(_snapshots(out)) == 1 and _delta(out).version() == 0
    assert lines == [
        f"iceberg {TABLE}: up to date (snapshot {ice.snapshot}, 15 rows)",
        f"delta {out}: up to date (version 0, 15 rows)",
    ]

    compact_output(str(out), target_file_mb=1, echo=_quiet)  # the three small parts → one
    after = publish(str(out), table=TABLE, delta=True, echo=_quiet)
    ice2, dlt2 = after.tables
    assert (len(ice2.added), len(ice2.removed)) == (1, 3) and sorted(ice2.removed) == sorted(ice.added)
    snaps = _snapshots(out)
    assert len(snaps) == 2 and snaps[-1].snapshot_id == ice2.snapshot and snaps[-1].parent_snapshot_id == ice.snapshot
    assert snaps[-1].summary.operation.value == "overwrite"
    assert (snaps[-1].summary["added-data-files"], snaps[-1].summary["deleted-data-files"]) == ("1", "3")
    assert dlt2.snapshot == 1 and _delta(out).version() == 1 and (len(dlt2.added), len(dlt2.removed)) == (1, 3)
    assert _assert_table_is_the_output(out, delta_root=out) == 15

    # a new part (e.g. a rerun's) is appended, one snapshot again
    folder = OutputFolder(str(out))
    record = RunRecord(folder, folder.read_run())
    asm = PartAssembler(folder, "r9")
    asm.add(_rows(_uris("d", 4), "r9"))
    commit(folder, asm.close(), [], record.update, kind="staging")
    res = publish(str(out), table=TABLE, delta=True, echo=_quiet)
    assert [(len(t.added), len(t.removed)) for t in res.tables] == [(1, 0), (1, 0)]
    assert _snapshots(out)[-1].summary.operation.value == "append" and _delta(out).version() == 2
    assert _assert_table_is_the_output(out, delta_root=out) == 19


def test_instances_and_masks_round_trip_as_nested_types(tmp_path):
    from pyiceberg.types import IntegerType, ListType, StringType, StructType

    out = tmp_path / "out"
    _write_output(str(out), [_uris("m", 6)])
    publish(str(out), table=TABLE, delta=True, echo=_quiet)
    tbl = _iceberg(out)
    instances = tbl.schema().find_field("instances").field_type
    assert isinstance(instances, ListType) and isinstance(instances.element_type, StructType)
    seg = tbl.schema().find_field("instances.element.segmentation").field_type
    assert isinstance(seg, StructType)
    assert isinstance(seg.field_by_name("size").field_type, ListType)
    assert isinstance(seg.field_by_name("size").field_type.element_type, IntegerType)
    assert isinstance(seg.field_by_name("counts").field_type, StringType)
    for table in (tbl.scan().to_arrow(), _delta(out).to_pyarrow_table()):
        rows = {r["image_uri"]: r for r in table.to_pylist()}
        for i, uri in enumerate(_uris("m", 6)):
            (inst,) = rows[uri]["instances"]
            seg = inst["segmentation"]
            decoded = mask_utils.decode({"size": list(seg["size"]), "counts": seg["counts"].encode()})
            assert decoded.shape == (24, 32) and np.array_equal(decoded, _mask(i))
            assert inst["area"] == int(_mask(i).sum())
    # a filter on a nested field, as a query engine would push it down: pyiceberg's own expression
    only = tbl.scan(row_filter="image_uri == 's3://images/m/00003.jpg'").to_arrow()
    assert only.num_rows == 1 and only.column("instances")[0].as_py()[0]["category_name"] == "car"


def test_duckdb_reads_the_published_tables(tmp_path):
    """DuckDB without its Iceberg/Delta extensions (they download at run time): pyiceberg's to_duckdb and
    delta-rs's Arrow dataset, unnesting the instances as docs/publish.md shows."""
    duckdb = pytest.importorskip("duckdb")
    out = tmp_path / "out"
    _write_output(str(out), [_uris("q", 4), _uris("r", 3)])
    publish(str(out), table=TABLE, delta=True, echo=_quiet)
    con = _iceberg(out).scan().to_duckdb("masks")
    q = (
        "select image_uri, i.category_name, i.segmentation.counts from masks, unnest(instances) as u(i) "
        "where i.category_name = 'car' order by image_uri"
    )
    via_iceberg = con.execute(q).fetchall()
    dataset = _delta(out).to_pyarrow_dataset()  # noqa: F841 (read by name by DuckDB's replacement scan)
    via_delta = duckdb.sql(q.replace("from masks", "from dataset")).fetchall()
    assert via_iceberg == via_delta and len(via_iceberg) == 3  # images 1 and 3 of the 4, 1 of the 3


def test_inconsistent_outputs_and_bad_targets_are_refused_with_the_fix(tmp_path):
    out = tmp_path / "out"
    folder = _write_output(str(out), [_uris("a", 3)])
    (part,) = out.glob("part-*.parquet")
    shutil.copy(part, out / "part-by-hand.parquet")
    with pytest.raises(PublishError, match=r"not in run.json: part-by-hand.parquet.*verify .* --repair"):
        publish(str(out), table=TABLE, echo=_quiet)
    (out / "part-by-hand.parquet").unlink()
    folder.write_json(f"{COMMITS}/x.json", {"id": "x", "parts": [], "replaced": []})
    with pytest.raises(PublishError, match="half-done commit"):
        publish(str(out), table=TABLE, echo=_quiet)
    folder.remove(folder.path(f"{COMMITS}/x.json"))
    with pytest.raises(PublishError, match="must hold the output's part files under its root"):
        publish(str(out), delta=str(tmp_path / "elsewhere"), echo=_quiet)
    with pytest.raises(PublishError, match="not NAMESPACE.NAME"):
        publish(str(out), table="masks", echo=_quiet)
    with pytest.raises(PublishError, match="needs a table"):
        publish(str(out), iceberg="sqlite:///x.db", echo=_quiet)
    with pytest.raises(PublishError, match="nothing to publish to"):
        publish(str(out), echo=_quiet)
    with pytest.raises(FileNotFoundError, match="no _ntt/run.json"):
        publish(str(tmp_path / "nothing"), table=TABLE, echo=_quiet)
    with Lease(folder, {"run_id": "someone"}):
        with pytest.raises(LeaseHeldError, match="run someone"):
            publish(str(out), table=TABLE, echo=_quiet)
    assert not (out / "_ntt" / "iceberg").exists()  # nothing was created by the refused calls
    # a Delta table one folder above the output: the files are registered as sub/part-*.parquet
    res = publish(str(out), delta=str(tmp_path), echo=_quiet)
    assert res.tables[0].table_rows == 3 and _delta(tmp_path).to_pyarrow_table().num_rows == 3
    paths = [r["path"] for r in pa.table(_delta(tmp_path).get_add_actions(flatten=True)).to_pylist()]
    assert paths and all(p.startswith("out/part-") for p in paths)


def test_publish_command_line(tmp_path):
    from click.testing import CliRunner

    from ntt_batch.cli import main

    out = tmp_path / "out"
    _write_output(str(out), [_uris("a", 3), _uris("b", 2)])
    catalog = tmp_path / "cat" / "catalog.db"
    args = ["publish", str(out), "--iceberg", f"sqlite:///{catalog}", "--table", "lake.seg", "--delta"]
    res = CliRunner().invoke(main, [*args, "--json", str(tmp_path / "p.json")])
    assert res.exit_code == 0, res.output
    assert (
        "iceberg lake.seg: added 2 file(s), removed 0" in res.output and f"delta {out}: added 2 file(s)" in res.output
    )
    written = json.loads((tmp_path / "p.json").read_text())
    assert [t["table_rows"] for t in written["tables"]] == [5, 5]
    assert (tmp_path / "cat" / "warehouse").is_dir()  # the warehouse beside the catalog file
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0 and res.output.count("up to date") == 2, res.output
    spec = PublishSpec(iceberg=f"sqlite:///{catalog}", table="lake.seg")
    assert _assert_table_is_the_output(out, spec=spec, delta_root=out) == 5
    res = CliRunner().invoke(main, ["publish", str(out), "--delta", str(tmp_path / "elsewhere")])
    assert res.exit_code == 2 and "must hold the output's part files under its root" in res.output


# ----------------------------------------------------------------------------- the real job, --publish


def _corrupt_a_data_page(path: Path) -> None:
    """Flip bytes inside the image_uri dictionary page's payload, footer intact (as test_output_layout does)."""
    import pyarrow.parquet as pq

    col = pq.read_metadata(path).row_group(0).column(1)
    assert col.path_in_schema == "image_uri" and col.dictionary_page_offset is not None
    start = col.dictionary_page_offset + (col.data_page_offset - col.dictionary_page_offset) * 2 // 3
    data = bytearray(path.read_bytes())
    for i in range(start, start + 8):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def late_manifest(tmp_path_factory, coco_mini):
    """Three images and one that does not exist yet (an error row until it arrives)."""
    d = tmp_path_factory.mktemp("late")
    imgs = sorted((coco_mini / "val2017").glob("*.jpg"))[:3]
    late = d / "arrives_later" / "late.jpg"
    late.parent.mkdir()
    manifest = d / "m.csv"
    manifest.write_text("image_uri\n" + "".join(f"{p}\n" for p in [*imgs, late]))
    return manifest, late, sorted((coco_mini / "val2017").glob("*.jpg"))[4]


def test_run_publish_keeps_the_tables_in_step_through_reruns_compaction_retry_errors_and_quarantine(
    ray_local, late_manifest, random_checkpoints, small_bank, tmp_path
):
    manifest, late, late_source = late_manifest
    out = tmp_path / "out"
    spec = {"table": TABLE, "delta": True}

    def run(**kw):
        cfg = job_config(
            random_checkpoints, small_bank, manifest=str(manifest), out=str(out), publish=PublishSpec(**spec), **kw
        )
        return run_job(cfg, echo=_quiet, model_stage=NoopModelActor)

    first = run(limit=2)  # 2 of the 4 inputs
    assert [(p["format"], p["added"], p["table_rows"]) for p in first.attempt["published"]] == [
        ("iceberg", 1, 2),
        ("delta", 1, 2),
    ]
    assert _assert_table_is_the_output(out, delta_root=out) == 2
    snaps, version = len(_snapshots(out)), _delta(out).version()

    second = run()  # the other 2 (late.jpg: an error row); the attempt compacts its part with the first one
    assert "compacted_into" in second.attempt and len(list(out.glob("part-*.parquet"))) == 1
    (ice, dlt) = second.attempt["published"]
    assert (ice["added"], ice["removed"], dlt["added"], dlt["removed"]) == (1, 1, 1, 1)
    assert len(_snapshots(out)) == snaps + 1 and _delta(out).version() == version + 1
    assert _assert_table_is_the_output(out, delta_root=out) == 4
    rows = {r["image_uri"]: r for r in _iceberg(out).scan().to_arrow().to_pylist()}
    assert rows[str(late)]["status"] == "error"

    third = run()  # nothing to do: no snapshot, no version
    assert all(p["up_to_date"] for p in third.attempt["published"])
    assert len(_snapshots(out)) == snaps + 1 and _delta(out).version() == version + 1

    shutil.copy(late_source, late)
    retried = run(retry_errors=True)  # the error row's part is rewritten without it, the new row committed
    assert retried.attempt["errors_withdrawn"] == 1
    assert len(_snapshots(out)) == snaps + 2 and _delta(out).version() == version + 2
    assert _assert_table_is_the_output(out, delta_root=out) == 4
    rows = {r["image_uri"]: r for r in _delta(out).to_pyarrow_table().to_pylist()}
    assert rows[str(late)]["status"] == "empty"  # decoded now (no-op model: no instances)

    (part,) = out.glob("part-*.parquet")  # a part turns out corrupt: the next run quarantines it and redoes its rows
    _corrupt_a_data_page(part)
    redone = run()
    assert redone.attempt["to_process"] == 4 and (out / "_ntt" / "quarantine" / part.name).exists()
    (ice, dlt) = redone.attempt["published"]
    assert (ice["added"], ice["removed"], dlt["added"], dlt["removed"]) == (1, 1, 1, 1)
    assert len(_snapshots(out)) == snaps + 3 and _delta(out).version() == version + 3
    assert _assert_table_is_the_output(out, delta_root=out) == 4
    run_json = json.loads((out / "_ntt" / "run.json").read_text())
    assert run_json["config"]["publish"] == {
        "iceberg": None,
        "table": TABLE,
        "warehouse": None,
        "delta": True,
        "catalog_properties": {},
    }
    assert "publish" not in json.dumps(run_json["fingerprint"])  # publishing is not part of the job


def test_run_publish_flag_and_job_file_block(tmp_path, random_checkpoints, small_bank, coco_mini):
    """`run --publish KEY=VALUE` (and a job file's publish: block) reach the job: the dry run says so."""
    from click.testing import CliRunner

    from ntt_batch.cli import main

    job = tmp_path / "job.yaml"
    job.write_text(
        f"images: {coco_mini / 'val2017'}\nmemory: {small_bank}\nout: {tmp_path / 'o'}\n"
        f"checkpoint_dir: {random_checkpoints}\npublish:\n  table: a.b\n"
    )
    res = CliRunner().invoke(main, ["run", "--config", str(job), "--dry-run", "--publish", "delta=true"])
    assert res.exit_code == 0, res.output
    assert "then would publish the output to Iceberg table a.b and a Delta table" in res.output
    res = CliRunner().invoke(
        main, ["run", "--config", str(job), "--dry-run", "--publish", "warehouse=/w", "--publish", "table=x"]
    )
    assert res.exit_code == 2 and "publish: table: 'x' is not NAMESPACE.NAME" in res.output, res.output


# ----------------------------------------------------------------------------- S3 (moto server, own process)


@pytest.fixture(scope="module")
def s3_process():
    """moto's S3 API in a subprocess on loopback, with a bucket ``lake``; yields fsspec storage options."""
    import boto3

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("moto server did not start")
            time.sleep(0.2)
    creds = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing-secret", "region_name": "us-east-1"}
    boto3.client("s3", endpoint_url=endpoint, **creds).create_bucket(Bucket="lake")
    yield {
        "key": "testing",
        "secret": "testing-secret",
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
    }
    proc.terminate()
    proc.wait(timeout=30)


def test_s3_output_with_an_s3_warehouse_and_a_delta_table_on_s3(s3_process, tmp_path):
    opts = s3_process
    out = "s3://lake/run1"
    _write_output(out, [_uris("a", 5), _uris("b", 4)], opts)
    with pytest.raises(PublishError, match="embedded Iceberg catalog is a SQLite file"):
        publish(out, table=TABLE, storage_options=opts, echo=_quiet)
    spec = PublishSpec(iceberg=f"sqlite:///{tmp_path}/catalog.db", table=TABLE, warehouse="s3://lake/warehouse")
    kw = dict(iceberg=spec.iceberg, table=TABLE, warehouse=spec.warehouse, delta=True, storage_options=opts)
    first = publish(out, **kw, echo=_quiet)
    assert [t.table_rows for t in first.tables] == [9, 9]
    assert first.tables[0].location.startswith("s3://lake/warehouse/labels/masks/metadata/")
    assert _assert_table_is_the_output(out, opts, spec=spec, delta_root=out) == 9
    assert all(t.up_to_date for t in publish(out, **kw, echo=_quiet).tables)
    compact_output(out, opts, target_file_mb=1, echo=_quiet)
    after = publish(out, **kw, echo=_quiet)
    assert [(len(t.added), len(t.removed)) for t in after.tables] == [(1, 2), (1, 2)]
    assert len(_snapshots(out, spec, opts)) == 2 and _delta(out, opts).version() == 1
    assert _assert_table_is_the_output(out, opts, spec=spec, delta_root=out) == 9


def test_glue_catalog_on_moto(s3_process, tmp_path, monkeypatch):
    """A Glue catalog URI works like the SQLite one (moto's Glue API; table metadata on S3)."""
    pytest.importorskip("boto3")
    opts = s3_process
    endpoint = opts["client_kwargs"]["endpoint_url"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    out = "s3://lake/run-glue"
    _write_output(out, [_uris("g", 3)], opts)
    spec = PublishSpec(
        iceberg="glue://us-east-1",
        table="gluedb.masks",
        warehouse="s3://lake/glue-warehouse",
        catalog_properties={"glue.endpoint": endpoint},
    )
    kw = dict(iceberg=spec.iceberg, table=spec.table, warehouse=spec.warehouse)
    res = publish(out, **kw, catalog_properties=spec.catalog_properties, storage_options=opts, echo=_quiet)
    assert res.tables[0].table_rows == 3 and res.tables[0].location.startswith("s3://lake/glue-warehouse/")
    assert _assert_table_is_the_output(out, opts, spec=spec) == 3
