"""Inputs from a manifest: Parquet, CSV or JSONL with a column ``image_uri`` (or ``uri``/``path``)
and an optional ``image_id`` (``manifest:``), read with Arrow's streaming readers (vectorised; no
Python rows unless a batch holds a local path to normalise).

URIs are normalised before they become identities (:mod:`.uris`): local paths with ``.``/``..``
segments or doubled slashes are written once (``a/./x.jpg`` = ``a//x.jpg`` = ``a/x.jpg``, so a
manifest listing all three is refused as listing one file three times); object-store keys are
literal and kept as written.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import PurePosixPath

import pyarrow as pa

from ..storage.fs import filesystem
from .base import INPUT_SCHEMA, Source, SourceStats
from .uris import normalise_uri_array

URI_COLUMNS = ("image_uri", "uri", "path")


class ManifestSource(Source):
    """``manifest``: a Parquet/CSV/JSONL file listing image URIs (and optionally their ids)."""

    keys = {"manifest": "a Parquet/CSV/JSONL file with a column image_uri (optional image_id)"}
    uri_keys = ("manifest",)

    def batches(self, options, *, chunk_rows, stats, extensions=None, exclude_prefix=None) -> Iterator[pa.RecordBatch]:
        return iter_manifest(self.settings["manifest"], options, chunk_rows=chunk_rows, stats=stats)


def _uri_column(names: list[str], where: str) -> str:
    col = next((c for c in URI_COLUMNS if c in names), None)
    if col is None:
        raise ValueError(f"manifest {where!r} needs a column 'image_uri' (or 'uri'/'path'); has {sorted(names)}")
    return col


def _manifest_batch(batch: pa.RecordBatch, where: str) -> pa.RecordBatch:
    col = _uri_column(batch.schema.names, where)
    uris = batch.column(col).cast(pa.string())
    if uris.null_count:
        raise ValueError(f"manifest {where!r}: column {col!r} has empty values")
    uris = normalise_uri_array(uris)  # one spelling per file: a/./x.jpg, a//x.jpg → a/x.jpg (sources.uris)
    if "image_id" in batch.schema.names:
        raw = batch.column("image_id")
        try:
            ids = raw.cast(pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise ValueError(f"manifest {where!r}: column 'image_id' must hold integers ({e})") from None
    else:
        ids = pa.nulls(len(uris), pa.int64())
    return pa.RecordBatch.from_arrays([ids, uris], schema=INPUT_SCHEMA)


def iter_manifest(
    manifest: str, options: dict | None = None, *, chunk_rows: int = 65536, stats: SourceStats | None = None
) -> Iterator[pa.RecordBatch]:
    """A Parquet, CSV or JSONL manifest, streamed with Arrow's readers (vectorised; no Python rows)."""
    stats = stats if stats is not None else SourceStats()
    fs, path = filesystem(manifest, options)
    suffix = PurePosixPath(path).suffix.lower()
    if suffix not in (".parquet", ".csv", ".jsonl", ".ndjson"):
        raise ValueError(f"manifest {manifest!r}: unsupported type {suffix!r} (use .parquet, .csv or .jsonl)")
    if not fs.isfile(path):
        raise FileNotFoundError(f"manifest {manifest!r} does not exist")
    with fs.open(path, "rb") as f:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(f)
            _uri_column(pf.schema_arrow.names, manifest)
            cols = [c for c in pf.schema_arrow.names if c in URI_COLUMNS + ("image_id",)]
            batches: Iterable[pa.RecordBatch] = pf.iter_batches(batch_size=chunk_rows, columns=cols)
        elif suffix == ".csv":
            import pyarrow.csv as pcsv

            # all columns as strings first: ids are cast (and checked) below, URIs stay verbatim
            reader = pcsv.open_csv(
                f,
                read_options=pcsv.ReadOptions(block_size=8 << 20),
                convert_options=pcsv.ConvertOptions(
                    column_types={c: pa.string() for c in URI_COLUMNS}, strings_can_be_null=False
                ),
            )
            batches = reader
        else:
            import pyarrow.json as pjson

            batches = pjson.open_json(f, read_options=pjson.ReadOptions(block_size=8 << 20))
        empty = True
        for batch in batches:
            if not batch.num_rows:
                continue
            empty = False
            out = _manifest_batch(batch, manifest)
            for start in range(0, out.num_rows, chunk_rows):
                part = out.slice(start, chunk_rows)
                stats.listed += part.num_rows
                yield part
        if empty:
            raise ValueError(f"manifest {manifest!r} is empty")
