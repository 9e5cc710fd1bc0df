"""Table shards: Parquet or Arrow IPC files with an image column, read with column projection.

The image column holds encoded image bytes (``binary``/``large_binary``) or a Hugging Face image
struct ``{bytes, path}`` (``datasets.Image``): the bytes when present, else the file ``path``
points to (relative paths are taken from the table's folder). Only the image and id columns are
read: Parquet through ``ParquetFile.iter_batches(columns=...)`` row group by row group, Arrow IPC
(file or stream format, as Hugging Face ``datasets`` writes its ``.arrow`` files) batch by batch.

A Parquet row group that fails to decode (a corrupt page) costs its rows: the shard's error row
names it and the other row groups are still read; a file whose footer cannot be read gives the
error row alone. A row group whose rows all have a row already is not read at all.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa

from ..storage.fs import filesystem, is_local
from .shards import TABLE_SUFFIXES, KeyTracker, Sample, ShardCensus, ShardedSource, escape_key

_IPC_SUFFIXES = (".arrow", ".feather", ".ipc")


class TableColumnError(ValueError):
    """The table has no usable image (or id) column; the message lists its columns."""


class TableSource(ShardedSource):
    """``table``: Parquet or Arrow IPC files with a column of images; each row one input."""

    keys = {
        "table": "Parquet/Arrow file(s): a file, folder, glob or brace pattern",
        "image_column": "the column holding the images (default: the one bytes or {bytes, path} column)",
        "id_column": "the column keying the rows (default: row numbers)",
    }
    uri_keys = ("table",)
    suffixes = TABLE_SUFFIXES

    def samples(self, shard, options, *, done, census):
        return iter_table_samples(
            shard,
            options,
            image_column=self.settings.get("image_column"),
            id_column=self.settings.get("id_column"),
            done=done,
            census=census,
        )

    def check(self, shard, options) -> None:
        try:
            schema = open_table_schema(shard, options)
        except Exception:  # noqa: BLE001 - missing or broken: its reading task gives it an error row
            return
        column = self.settings.get("image_column") or guess_image_column(schema, shard)
        image_column_type(schema, column, shard)
        if self.settings.get("id_column"):
            check_id_column(schema, self.settings["id_column"], shard)


def image_column_type(schema: pa.Schema, name: str, where: str) -> str:
    """``"binary"`` or ``"struct"`` (an image struct with a ``bytes`` field) for column ``name``."""
    if name not in schema.names:
        raise TableColumnError(f"{where}: no column {name!r} (--image-column); its columns: {', '.join(schema.names)}")
    t = schema.field(name).type
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "binary"
    if pa.types.is_struct(t) and t.get_field_index("bytes") >= 0:
        return "struct"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        raise TableColumnError(
            f"{where}: column {name!r} holds text ({t}), not image bytes; a table of image URIs is a manifest: "
            "pass it as --manifest (column image_uri)"
        )
    raise TableColumnError(
        f"{where}: column {name!r} has type {t}; an image column holds bytes (binary) or a {{bytes, path}} struct"
    )


def guess_image_column(schema: pa.Schema, where: str) -> str:
    """The one binary or ``{bytes, path}`` column of ``schema``, for a table given without --image-column."""
    found = []
    for f in schema:
        try:
            image_column_type(schema, f.name, where)
            found.append(f.name)
        except TableColumnError:
            pass
    if len(found) != 1:
        what = f"several ({', '.join(found)})" if found else "none"
        raise TableColumnError(
            f"{where}: give --image-column: the column holding the image bytes ({what} of its columns "
            f"{', '.join(schema.names)} could be one)"
        )
    return found[0]


def check_id_column(schema: pa.Schema, name: str, where: str) -> None:
    if name not in schema.names:
        raise TableColumnError(f"{where}: no column {name!r} (--id-column); its columns: {', '.join(schema.names)}")
    t = schema.field(name).type
    if not (pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t)):
        raise TableColumnError(f"{where}: id column {name!r} has type {t}; it must hold integers or text")


def open_table_schema(shard: str, options: dict | None) -> pa.Schema:
    """The schema of a table shard (Parquet: its footer; Arrow IPC: its first message)."""
    fs, path = filesystem(shard, options)
    with fs.open(path, "rb") as f:
        if path.lower().endswith(_IPC_SUFFIXES):
            return _open_ipc(f).schema
        import pyarrow.parquet as pq

        return pq.ParquetFile(f).schema_arrow


def _open_ipc(f):
    try:
        return pa.ipc.open_file(f)
    except pa.ArrowInvalid:
        f.seek(0)
        return pa.ipc.open_stream(f)


def _ipc_batches(reader) -> Iterator[pa.RecordBatch]:
    if isinstance(reader, pa.ipc.RecordBatchFileReader):
        for i in range(reader.num_record_batches):
            yield reader.get_batch(i)
    else:
        yield from reader


# 92 lines: one streaming loop; a shard's skip/break bookkeeping (done keys, row groups, break) is its state.


def iter_table_samples(
    shard: str,
    options: dict | None,
    *,
    image_column: str | None,
    id_column: str | None,
    done: frozenset[str] | set[str],
    census: ShardCensus,
    batch_rows: int = 64,
) -> Iterator[Sample]:
    """The rows of one table shard as samples (module docstring)."""
    tracker = KeyTracker(census, done)
    fs, path = filesystem(shard, options)
    folder = shard.rsplit("/", 1)[0]
    breaks: list[str] = []
    try:
        # remote: large read-ahead blocks, so a 1,000-image file costs a few ranged GETs, not one per batch
        f = (
            pa.memory_map(path, "r")
            if is_local(fs)
            else fs.open(path, "rb", block_size=64 << 20, cache_type="readahead")
        )
    except FileNotFoundError as e:
        err = tracker.broken(f"shard {shard} does not exist ({e})")
        if err is not None:
            yield err
        return
    except Exception as e:  # noqa: BLE001 - the shard's error row
        err = tracker.broken(f"shard {shard} is unreadable ({type(e).__name__}: {e})")
        if err is not None:
            yield err
        return
    try:
        try:
            if path.lower().endswith(_IPC_SUFFIXES):
                source = _IpcSource(_open_ipc(f))
            else:
                import pyarrow.parquet as pq

                # buffered page reads: a row group's image column is streamed, not read whole (they can be GBs)
                source = _ParquetSource(pq.ParquetFile(f, buffer_size=8 << 20))
            schema = source.schema
            column = image_column or guess_image_column(schema, shard)
            kind = image_column_type(schema, column, shard)
            if id_column:
                check_id_column(schema, id_column, shard)
        except TableColumnError as e:
            err = tracker.broken(str(e))
            if err is not None:
                yield err
            return
        except Exception as e:  # noqa: BLE001 - no footer, not a table: the shard's error row
            err = tracker.broken(f"shard {shard} is not a readable table ({type(e).__name__}: {e})")
            if err is not None:
                yield err
            return
        columns = [column] + ([id_column] if id_column else [])
        for start, length, batches in source.groups(columns, id_column, batch_rows):
            row = start
            try:
                for batch in batches(tracker):
                    images = batch.column(column)
                    ids = batch.column(id_column) if id_column else None
                    for i in range(batch.num_rows):
                        n = row + i
                        if ids is not None:
                            value = ids[i].as_py()
                            key = escape_key(str(value)) if value is not None else f".row{n}"
                        else:
                            key = str(n)
                        if tracker.admit(key) != "emit":
                            continue
                        if ids is not None and ids[i].as_py() is None:
                            yield Sample(key, error=f"row {n}: id column {id_column!r} is null")
                            continue
                        yield _sample(key, images[i].as_py(), kind, column, n, folder, options)
                    row += batch.num_rows
            except Exception as e:  # noqa: BLE001 - a corrupt row group / batch: its rows are lost, the rest read
                span = f"rows {row}..{start + length - 1}" if length is not None else f"rows from {row} on"
                breaks.append(f"{span} unreadable ({type(e).__name__}: {str(e)[:200]})")
                if not source.can_skip:
                    break
        census.bytes = int(f.size() if callable(getattr(f, "size", None)) else getattr(f, "size", 0) or 0)
    finally:
        if hasattr(f, "close"):
            f.close()
    if breaks:
        err = tracker.broken(
            f"shard {shard}: " + "; ".join(breaks[:5]) + (f" (and {len(breaks) - 5} more)" if len(breaks) > 5 else "")
        )
        if err is not None:
            yield err


def _sample(key: str, value, kind: str, column: str, n: int, folder: str, options) -> Sample:
    if kind == "binary":
        if value is None:
            return Sample(key, error=f"row {n}: image column {column!r} is null")
        return Sample(key, data=bytes(value))
    if value is None:
        return Sample(key, error=f"row {n}: image column {column!r} is null")
    data, where = value.get("bytes"), value.get("path")
    if data:
        return Sample(key, data=bytes(data))
    if where:
        uri = where if ("://" in where or where.startswith("/")) else f"{folder}/{where}"
        try:
            from ..storage.reads import read_object

            return Sample(key, data=read_object(uri, options))
        except FileNotFoundError:
            return Sample(key, error=f"row {n}: the image struct has no bytes and its path {uri} does not exist")
        except Exception as e:  # noqa: BLE001 - this row's error
            return Sample(key, error=f"row {n}: reading its path {uri} failed ({type(e).__name__}: {e})")
    return Sample(key, error=f"row {n}: the image struct in {column!r} has neither bytes nor a path")


class _ParquetSource:
    """Row groups of a Parquet file; a row group whose rows all have a row already is not read."""

    can_skip = True

    def __init__(self, pf):
        self.pf = pf
        self.schema = pf.schema_arrow

    def groups(self, columns, id_column, batch_rows):
        md = self.pf.metadata
        start = 0
        for rg in range(md.num_row_groups):
            n = md.row_group(rg).num_rows

            def batches(tracker, rg=rg, start=start, n=n):
                if tracker.done and self._all_done(rg, start, n, id_column, tracker):
                    return
                yield from self.pf.iter_batches(batch_size=batch_rows, row_groups=[rg], columns=columns)

            yield start, n, batches
            start += n

    def _all_done(self, rg, start, n, id_column, tracker) -> bool:
        """Whether every row of row group ``rg`` has a row (counted into the census as skipped)."""
        if id_column:
            ids = self.pf.read_row_group(rg, columns=[id_column]).column(id_column).to_pylist()
            keys = [escape_key(str(v)) if v is not None else f".row{start + i}" for i, v in enumerate(ids)]
        else:
            keys = [str(start + i) for i in range(n)]
        if not all(k in tracker.done for k in keys):
            return False
        for k in keys:
            tracker.admit(k)
        return True


class _IpcSource:
    """Record batches of an Arrow IPC file or stream. Batch sizes are only known by reading them, so
    row numbers (the keys of a table without an id column) are lost past a broken batch: reading stops there."""

    can_skip = False

    def __init__(self, reader):
        self.reader = reader
        self.schema = reader.schema

    def groups(self, columns, id_column, batch_rows):
        def batches(tracker):
            for b in _ipc_batches(self.reader):
                yield b.select(columns)

        yield 0, None, batches
