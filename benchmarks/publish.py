"""Time `ntt-batch publish` on a 1M-row output of two part files, to Iceberg and to Delta Lake.

Builds the output through the job's own commit code (``output.parts``: ``PartAssembler`` + ``commit``,
so run.json's per-part record is the real one) in the exact row schema: 1,000,000 rows in two
part files of 500,000 rows, every 10th row with one small instance (a real COCO compressed RLE),
every 1000th an ``error`` row, the others ``empty``. Then, for each table format:

1. first publish (creates the table, registers both files)   — the measured figure (target ≤ 30 s)
2. second publish (nothing changed: no snapshot/version)
3. ``compact`` (the two parts → one), publish again (one snapshot/version: 1 added, 2 removed)
4. what ``run --retry-errors`` does, by the same code (``withdraw_rows`` rewrites the part without its
   1,000 error rows, the redone rows are committed as a new part), publish again

and checks after each step that the table's row count (from its own metadata, and from a count
over a scan) and its error rows equal ``verify``'s, with no duplicate. Prints one line per step and a JSON summary.

    python benchmarks/publish.py                      # 1M rows, in a temporary folder
    python benchmarks/publish.py --rows 200000 --keep-dir /tmp/pub-bench

Not part of the test suite (it writes ~100 MB and takes about a minute).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa


def _uri(i: int) -> str:
    return f"s3://bench-images/{i:09d}.jpg"


def _rows(ids: np.ndarray, run_id: str, *, errors: bool = True) -> pa.Table:
    """Rows for image ids ``ids`` in SHARD_SCHEMA: every 10th has one small instance, every 1000th
    (id % 1000 == 1) is an error row when ``errors``, the rest are empty."""
    from ntt_batch.output.shards import SHARD_SCHEMA
    from ntt_batch.storage.masks import encode_rle

    m = np.zeros((48, 64), dtype=np.uint8)
    m[10:30, 12:40] = 1
    rle = encode_rle(m)
    inst = {
        "category_id": 1,
        "category_name": "person",
        "score": 0.75,
        "bbox": [12.0, 10.0, 28.0, 20.0],
        "area": int(m.sum()),
        "segmentation": {"size": [48, 64], "counts": rle["counts"]},
    }
    n = ids.size
    has = ids % 10 == 0
    err = (ids % 1000 == 1) if errors else np.zeros(n, bool)
    return pa.table(
        {
            "image_id": ids.astype(np.int64),
            "image_uri": pa.array([_uri(i) for i in ids]),
            "width": pa.array(np.where(err, 0, 64).astype(np.int32), mask=err),
            "height": pa.array(np.where(err, 0, 48).astype(np.int32), mask=err),
            "status": pa.array(np.where(err, "error", np.where(has, "ok", "empty"))),
            "error": pa.array(np.where(err, "simulated: the file arrived late", ""), mask=~err),
            "num_instances": pa.array(has.astype(np.int32)),
            "instances": pa.array([[inst] if h else [] for h in has], type=SHARD_SCHEMA.field("instances").type),
            "run_id": pa.array([run_id] * n),
        },
        schema=SHARD_SCHEMA,
    )


def retry_errors(out: str, rows: int) -> int:
    """What ``run --retry-errors`` does to the output, through the same code: the error rows are withdrawn
    from their parts (``withdraw_rows``: each part rewritten without them) and their redone rows committed
    as a new part. Returns the number of rows redone."""
    from ntt_batch.output.folder import RETRIED, OutputFolder
    from ntt_batch.output.intents import commit
    from ntt_batch.output.parts import PartAssembler, RunRecord, withdraw_rows
    from ntt_batch.sources.ids import UriHashes, uri_digests

    folder = OutputFolder(out)
    record = RunRecord(folder, folder.read_run())
    ids = np.arange(1, rows, 1000)
    hashes = UriHashes.from_chunks([uri_digests([_uri(i) for i in ids])])
    withdrawn = 0
    for part in folder.parts():
        withdrawn += withdraw_rows(
            folder,
            part,
            hashes,
            run_id="retry",
            update_run=record.update,
            retried_path=folder.path(f"{RETRIED}/retry-{part.name}"),
            target_bytes=1 << 40,
        )
    asm = PartAssembler(folder, "retry")
    asm.add(_rows(ids, "retry", errors=False))
    commit(folder, asm.close(), [], record.update, kind="staging")
    assert withdrawn == ids.size, (withdrawn, ids.size)
    return withdrawn


def build_output(out: str, rows: int, parts: int = 2, chunk: int = 50_000) -> float:
    """An output of ``rows`` rows in ``parts`` part files, committed by the job's commit code; returns seconds."""
    from ntt_batch.output.folder import OutputFolder
    from ntt_batch.output.intents import commit
    from ntt_batch.output.parts import PartAssembler, RunRecord

    t0 = time.perf_counter()
    folder = OutputFolder(out)
    record = RunRecord(folder, {"format": "ntt-batch/run", "layout": 2})
    record.write()
    per_part = rows // parts
    for k in range(parts):
        run_id = f"bench{k}"
        asm = PartAssembler(folder, run_id, target_bytes=1 << 40)  # one file per attempt
        for s in range(k * per_part, (k + 1) * per_part, chunk):
            asm.add(_rows(np.arange(s, min(s + chunk, (k + 1) * per_part)), run_id))
        commit(folder, asm.close(), [], record.update, kind="staging")
    return time.perf_counter() - t0


def _table_count(fmt: str, out: str) -> tuple[int, int]:
    """(rows, error rows) counted over a scan of the table (not its metadata)."""
    from ntt_batch.output.folder import OutputFolder
    from ntt_batch.output.iceberg_table import load_catalog
    from ntt_batch.output.table_common import PublishSpec

    if fmt == "iceberg":
        tbl = load_catalog(PublishSpec(table="bench.masks"), OutputFolder(out)).load_table("bench.masks")
        t = tbl.scan(selected_fields=("status",)).to_arrow()
    else:
        from deltalake import DeltaTable

        t = DeltaTable(out).to_pyarrow_dataset().to_table(columns=["status"])
    return t.num_rows, t.column("status").to_pylist().count("error")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--keep-dir", default=None, help="Write the outputs here and keep them (default: a temp dir).")
    args = ap.parse_args()

    from ntt_batch.output.publish import publish
    from ntt_batch.pipeline.verify import compact_output, verify_output

    t0 = time.perf_counter()  # the libraries' import, once per process (the CLI pays it once per call)
    import deltalake  # noqa: F401
    import pyiceberg.catalog.sql  # noqa: F401
    import pyiceberg.io.fsspec  # noqa: F401
    import pyiceberg.io.pyarrow  # noqa: F401

    imported = time.perf_counter() - t0
    print(f"import pyiceberg + deltalake: {imported:.2f} s (not counted below)")
    base = Path(args.keep_dir or tempfile.mkdtemp(prefix="ntt-publish-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    summary: dict = {"rows": args.rows, "parts": 2, "import_seconds": round(imported, 2)}
    try:
        for fmt in ("iceberg", "delta"):
            out = str(base / f"out-{fmt}")
            shutil.rmtree(out, ignore_errors=True)
            built = build_output(out, args.rows)
            size = sum(p.stat().st_size for p in Path(out).glob("part-*.parquet"))
            print(f"[{fmt}] built {args.rows:,} rows in 2 part files ({size / 1e6:.1f} MB) in {built:.1f} s")
            kw = {"table": "bench.masks"} if fmt == "iceberg" else {"delta": True}
            steps = {}
            for step in ("first", "again", "after_compact", "after_retry_errors"):
                if step == "after_compact":
                    compact_output(out, target_file_mb=512, echo=lambda s: None)
                if step == "after_retry_errors":
                    retry_errors(out, args.rows)
                t0 = time.perf_counter()
                res = publish(out, **kw, echo=lambda s: None)
                secs = time.perf_counter() - t0
                (t,) = res.tables
                report = verify_output(out, inputs=False)
                scanned, scanned_errors = _table_count(fmt, out)
                verified = report.rows
                assert report.integrity_ok and report.duplicate_uris == 0, report.format()
                assert t.table_rows == verified == scanned == args.rows, (t.table_rows, verified, scanned)
                assert scanned_errors == report.stats.error, (scanned_errors, report.stats.error)
                steps[step] = {
                    "seconds": round(secs, 2),
                    "added": len(t.added),
                    "removed": len(t.removed),
                    "up_to_date": t.up_to_date,
                    "snapshot_or_version": t.snapshot,
                    "table_rows": t.table_rows,
                    "error_rows": scanned_errors,
                }
                print(
                    f"[{fmt}] publish ({step}): {secs:.2f} s; added {len(t.added)}, removed {len(t.removed)}, "
                    f"{'up to date, ' if t.up_to_date else ''}table rows {t.table_rows:,} = verify {verified:,} "
                    f"= scan {scanned:,}; error rows {scanned_errors:,} = verify {report.stats.error:,}"
                )
            summary[fmt] = {"build_seconds": round(built, 1), "part_bytes": size, **steps}
    finally:
        if not args.keep_dir:
            shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
