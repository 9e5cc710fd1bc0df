"""Committing rows into large part files, and the crash-safe protocol that does it.

Workers write small Parquet files into ``_ntt/staging/<generation>-<run_id>/``; nobody reads
those. The driver turns them into committed ``part-*.parquet`` files of about ``target_bytes``
each. Every commit — staged files into parts, compaction (small parts → one large part),
``--retry-errors`` (parts rewritten without their error rows), ``verify --repair`` (parts
rewritten without duplicate rows) — takes the same steps (the crash-point names of
``output.crashpoints`` in brackets):

1. the new parts are written whole under ``_ntt/tmp/`` (zstd, page checksums, their sha256
   computed while writing) [``assembled``];
2. the lease is checked and an intent ``_ntt/commits/<id>.json`` is written: the new parts (name,
   temporary path, row counts, sha256) and the files they replace, each replaced part with the
   place it moves to, ``_ntt/replaced/<id>/<name>`` [``intent``];
3. **retire**: each replaced part leaves the dataset — moved to ``_ntt/replaced/<id>/`` (local:
   rename; object stores: copy, then delete) [``retiring`` after the first, ``retired``];
4. **publish**: each new part is moved to its final name (local: rename; object stores: one copy,
   which appears whole) [``publishing`` after the first, ``published``];
5. run.json's per-part record drops the replaced parts and adds the new ones (a fenced write,
   ``output.fencing``) [``recorded``];
6. the replaced files (and consumed staged files) are deleted, then the intent.

Old parts always leave the dataset before any new part enters it, so a reader of ``<out>/*.parquet``
sees each image **at most once** at every instant; between steps 3 and 4 the replaced parts' images
are briefly missing. :func:`.intents.recover_commits` (run by the next lease holder before anything else)
brings it back to **exactly once**: an intent whose new parts all exist (under ``_ntt/tmp/`` or their
final name) is finished — the remaining replaced parts retired first, then the rest published, in
that order; an intent with a new part lost is undone — its published parts leave the dataset
first, then the replaced parts move back. Staged files are never moved: they are deleted only
after the record lists the parts that hold their rows.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..sources.ids import HashAccumulator, UriHashes, uri_digests
from ..storage.checksums import HashingWriter
from .folder import (
    PART_PREFIX,
    TMP,
    CorruptFileError,
    FileInfo,
    OutputFolder,
    table_bytes,
)
from .intents import RunUpdater, commit
from .shards import SHARD_SCHEMA, STATUS_EMPTY, STATUS_ERROR, STATUS_OK

log = logging.getLogger(__name__)

DEFAULT_TARGET_BYTES = 512 << 20  # committed file size (Parquet, zstd)
DEFAULT_ROW_GROUP_ROWS = 16384


@dataclass
class PartStats:
    """What a committed part holds (recorded in run.json's ``parts``; summaries add these up)."""

    rows: int = 0
    ok: int = 0
    empty: int = 0
    error: int = 0
    instances: int = 0
    bytes: int = 0
    version: str = ""
    run_id: str = ""
    sha256: str = ""  # of the file's bytes, computed while writing it ("" in records of older versions)

    @classmethod
    def of_table(cls, table: pa.Table | pa.RecordBatch) -> PartStats:
        status = table.column("status")
        counts = {v["values"]: v["counts"] for v in pc.value_counts(status).to_pylist()} if len(status) else {}
        n_inst = pc.sum(table.column("num_instances")).as_py() if len(status) else 0
        return cls(
            rows=len(status),
            ok=int(counts.get(STATUS_OK, 0)),
            empty=int(counts.get(STATUS_EMPTY, 0)),
            error=int(counts.get(STATUS_ERROR, 0)),
            instances=int(n_inst or 0),
        )

    def add(self, other: PartStats) -> None:
        for k in ("rows", "ok", "empty", "error", "instances"):
            setattr(self, k, getattr(self, k) + getattr(other, k))

    def to_dict(self) -> dict:
        return asdict(self)


def summary_of(parts: dict[str, dict]) -> dict[str, int]:
    """Totals over run.json's ``parts`` record: rows, ok, empty, error, instances, files, bytes."""
    total = PartStats()
    size = 0
    for p in parts.values():
        total.add(PartStats(**{k: p.get(k, 0) for k in ("rows", "ok", "empty", "error", "instances")}))
        size += int(p.get("bytes", 0))
    return {
        "rows": total.rows,
        "ok": total.ok,
        "empty": total.empty,
        "error": total.error,
        "instances": total.instances,
        "files": len(parts),
        "bytes": size,
    }


def stats_of_file(folder: OutputFolder, path: str) -> PartStats:
    """Count a committed file's rows by status (reads two small columns)."""
    with folder.fs.open(path, "rb") as f:
        t = pq.read_table(f, columns=["status", "num_instances"])
    return PartStats.of_table(t)


class RunRecord:
    """An output's run.json (a running attempt's, or ``verify --repair``'s): one in-memory dict, every
    change written atomically (and fenced, given the lease).

    Thread-safe (the committer thread and the driver both update it); the summary is recomputed
    from the per-part stats on every write, so it never needs a pass over the files.
    """

    def __init__(self, folder: OutputFolder, run: dict, lease=None):
        self.folder = folder
        self.run = run
        self.lease = lease  # a held Lease: writes are fenced (refused once another run holds the output)
        self._lock = threading.RLock()

    def write(self) -> None:
        with self._lock:
            self.run["summary"] = summary_of(self.run.get("parts", {}))
            if self.lease is not None:
                self.lease.write_run(self.run)
            else:
                self.folder.write_run(self.run)

    def update(self, fn: Callable[[dict], None]) -> None:
        with self._lock:
            fn(self.run)
            self.write()


# ----------------------------------------------------------------------------- writing parts


@dataclass
class NewPart:
    tmp_path: str
    name: str
    stats: PartStats


class PartAssembler:
    """Streams shard rows into new part files of about ``target_bytes`` under ``_ntt/tmp/``."""

    def __init__(
        self,
        folder: OutputFolder,
        run_id: str,
        *,
        target_bytes: int = DEFAULT_TARGET_BYTES,
        row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
        name_tag: str = "",
    ):
        self.folder = folder
        self.run_id = run_id
        self.target_bytes = int(target_bytes)
        self.row_group_rows = int(row_group_rows)
        self.tag = name_tag or uuid.uuid4().hex[:6]
        self.parts: list[NewPart] = []
        self._writer: pq.ParquetWriter | None = None
        self._file = None
        self._current: NewPart | None = None
        self._buffer: list[pa.Table] = []
        self._buffered = 0

    def add(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        self._buffer.append(table)
        self._buffered += table.num_rows
        if self._buffered >= self.row_group_rows:
            self._flush()

    def _open(self) -> None:
        name = f"{PART_PREFIX}{self.run_id}-{self.tag}-{len(self.parts):05d}.parquet"
        tmp = self.folder.path(f"{TMP}/{name}")
        self.folder.fs.makedirs(tmp.rsplit("/", 1)[0], exist_ok=True)
        self._file = HashingWriter(self.folder.fs.open(tmp, "wb"))
        self._writer = pq.ParquetWriter(self._file, SHARD_SCHEMA, compression="zstd", write_page_checksum=True)
        self._current = NewPart(tmp, name, PartStats(run_id=self.run_id))

    def _flush(self) -> None:
        if not self._buffer:
            return
        table = pa.concat_tables(self._buffer).combine_chunks()
        self._buffer, self._buffered = [], 0
        if self._writer is None:
            self._open()
        self._writer.write_table(table, row_group_size=max(self.row_group_rows, table.num_rows))
        self._current.stats.add(PartStats.of_table(table))
        if self._file.tell() >= self.target_bytes:
            self._close_current()

    def _close_current(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        self._file.close()
        self._current.stats.sha256 = self._file.hexdigest()
        self._current.stats.bytes = int(self.folder.fs.size(self._current.tmp_path))
        self.parts.append(self._current)
        self._writer = self._file = self._current = None

    def close(self) -> list[NewPart]:
        self._flush()
        self._close_current()
        return self.parts

    def abort(self) -> None:
        try:
            if self._writer is not None:
                self._writer.close()
                self._file.close()
        finally:
            for p in self.parts + ([self._current] if self._current else []):
                self.folder.remove(p.tmp_path)


# ----------------------------------------------------------------------------- the commit protocol


# ----------------------------------------------------------------------------- staging → parts


@dataclass
class CommitResult:
    stats: PartStats = field(default_factory=PartStats)  # rows committed
    files: int = 0  # staging files consumed
    duplicates_dropped: int = 0
    quarantined: list[str] = field(default_factory=list)
    skipped_incomplete: int = 0
    parts: list[str] = field(default_factory=list)
    error_examples: list[tuple[str, str]] = field(default_factory=list)  # (image_uri, error) of a few error rows


def commit_staging(
    folder: OutputFolder,
    files: list[FileInfo],
    *,
    run_id: str,
    seen: HashAccumulator,
    update_run: RunUpdater,
    final: bool,
    target_bytes: int = DEFAULT_TARGET_BYTES,
    row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
    before_publish: Callable[[], None] | None = None,
) -> CommitResult:
    """Commit staging files into parts; rows whose URI is already in ``seen`` are dropped (and counted).

    ``final``: no writer is still running, so a file that does not parse is corrupt (quarantined);
    otherwise it may still be being written and is left for a later commit.
    """
    result = CommitResult()
    done = seen.freeze()
    # pass 1: the URIs of every readable file → which rows repeat a committed or an earlier row
    readable = _read_staged_uris(folder, files, final=final, result=result)
    if not readable:
        return result
    all_hi = np.concatenate([r[1] for r in readable])
    all_lo = np.concatenate([r[2] for r in readable])
    drop = done.contains(all_hi, all_lo) | _dups_within(all_hi, all_lo)
    # pass 2: full rows, minus the dropped ones, into new parts
    assembler = PartAssembler(folder, run_id, target_bytes=target_bytes, row_group_rows=row_group_rows)
    try:
        consumed = _assemble_staged(folder, readable, drop, assembler, result)
        new_parts = assembler.close()
    except BaseException:
        assembler.abort()
        raise
    result.duplicates_dropped = int(drop.sum())
    if not consumed:
        return result
    commit(folder, new_parts, consumed, update_run, kind="staging", before_publish=before_publish)
    seen.add(all_hi[~drop], all_lo[~drop])
    for p in new_parts:
        result.stats.add(p.stats)
    result.files = len(consumed)
    result.parts = [p.name for p in new_parts]
    if result.duplicates_dropped:
        log.warning(
            "dropped %d row(s) already committed (a retried write task wrote them twice)", result.duplicates_dropped
        )
    return result


def _read_staged_uris(
    folder: OutputFolder, files: list[FileInfo], *, final: bool, result: CommitResult
) -> list[tuple[FileInfo, np.ndarray, np.ndarray]]:
    """(file, URI digests hi, lo: (n,) uint64 each) of every readable staging file, in order.

    Unreadable files are skipped (``final`` False: still being written) or quarantined when proven
    corrupt (counted in ``result``).
    """
    readable: list[tuple[FileInfo, np.ndarray, np.ndarray]] = []
    for f in files:
        try:
            with folder.fs.open(f.path, "rb") as fh:
                uris = pq.read_table(fh, columns=["image_uri"]).column("image_uri").to_pylist()
        except FileNotFoundError:
            continue
        except Exception as e:
            if not final:
                result.skipped_incomplete += 1  # still being written by a worker: a later commit takes it
                continue
            moved = folder.quarantine_if_corrupt(f.path)  # a read error propagates: nothing is quarantined
            if moved is not None:
                result.quarantined.append(moved)
                continue
            raise RuntimeError(
                f"{folder.display(f.path)} failed to read ({e}) but parses on a second read; not committing it now"
            ) from e
        hi, lo = uri_digests(uris)
        readable.append((f, hi, lo))
    return readable


def _assemble_staged(
    folder: OutputFolder,
    readable: list[tuple[FileInfo, np.ndarray, np.ndarray]],
    drop: np.ndarray,
    assembler: PartAssembler,
    result: CommitResult,
) -> list[str]:
    """Add the rows of ``readable`` not marked in ``drop`` ((rows,) bool over all files) to
    ``assembler``; returns the staging files consumed (a few error rows are kept in ``result``)."""
    consumed: list[str] = []
    offset = 0
    for f, hi, _ in readable:
        n = hi.size
        keep = ~drop[offset : offset + n]
        offset += n
        with folder.fs.open(f.path, "rb") as fh:
            table = _conform(pq.read_table(fh))
        if table.num_rows != n:
            raise CorruptFileError(f"{folder.display(f.path)} changed while being committed")
        if not keep.all():
            table = table.filter(pa.array(keep))
        if len(result.error_examples) < 5:
            errs = table.filter(pc.equal(table.column("status"), STATUS_ERROR)).slice(0, 5)
            result.error_examples += list(zip(errs.column("image_uri").to_pylist(), errs.column("error").to_pylist()))
        assembler.add(table)
        consumed.append(f.path)
    return consumed


def _dups_within(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """Rows repeating an earlier row's URI (each later occurrence is marked)."""
    out = np.zeros(hi.shape, dtype=bool)
    if hi.size < 2:
        return out
    order = np.lexsort((lo, hi))
    same = (hi[order][1:] == hi[order][:-1]) & (lo[order][1:] == lo[order][:-1])
    out[order[1:][same]] = True
    return out


def _conform(table: pa.Table) -> pa.Table:
    """A staging table with exactly SHARD_SCHEMA's columns, order and types."""
    if table.schema.equals(SHARD_SCHEMA):
        return table
    return table.select(SHARD_SCHEMA.names).cast(SHARD_SCHEMA)


# ----------------------------------------------------------------------------- compaction


def compact(
    folder: OutputFolder,
    parts: list[FileInfo],
    *,
    run_id: str,
    update_run: RunUpdater,
    target_bytes: int = DEFAULT_TARGET_BYTES,
    row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
    small_fraction: float = 0.5,
    before_publish: Callable[[], None] | None = None,
) -> list[str]:
    """Merge parts smaller than ``small_fraction · target_bytes`` into parts of ``target_bytes``.

    Returns the names of the new parts ([] when there are fewer than two small parts). Rows are
    copied batch by batch (bounded memory), never changed.
    """
    small = [p for p in parts if p.size < small_fraction * target_bytes]
    if len(small) < 2:
        return []
    assembler = PartAssembler(folder, run_id, target_bytes=target_bytes, row_group_rows=row_group_rows, name_tag="c")
    try:
        for p in small:
            for batch in _iter_file(folder, p.path):
                assembler.add(pa.Table.from_batches([batch]))
        new_parts = assembler.close()
    except BaseException:
        assembler.abort()
        raise
    commit(folder, new_parts, [p.path for p in small], update_run, kind="compaction", before_publish=before_publish)
    return [p.name for p in new_parts]


def _iter_file(folder: OutputFolder, path: str, batch_rows: int = 4096) -> Iterator[pa.RecordBatch]:
    with folder.fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        for batch in pf.iter_batches(batch_size=batch_rows):
            yield _conform(pa.Table.from_batches([batch])).to_batches()[0] if batch.num_rows else batch


def withdraw_rows(
    folder: OutputFolder,
    parts: list[FileInfo],
    withdraw: UriHashes,
    *,
    run_id: str,
    update_run: RunUpdater,
    retried_path: str,
    target_bytes: int = DEFAULT_TARGET_BYTES,
    before_publish: Callable[[], None] | None = None,
) -> int:
    """Rewrite ``parts`` without the rows whose URI is in ``withdraw``, as one commit (kind
    ``retry-errors``): every rewritten part replaces its original at once, so a crash leaves all
    the old rows or none. The withdrawn rows go to ``retried_path`` (kept for the record, outside
    the dataset). Returns the number of rows withdrawn."""
    new_parts: list[NewPart] = []
    replaced: list[str] = []
    taken: list[pa.Table] = []
    for part in parts:
        assembler = PartAssembler(folder, run_id, target_bytes=target_bytes, name_tag=f"r{len(replaced)}")
        took = 0
        try:
            for batch in _iter_file(folder, part.path):
                t = pa.Table.from_batches([batch])
                hi, lo = uri_digests(t.column("image_uri").to_pylist())
                out = withdraw.contains(hi, lo)
                if out.any():
                    taken.append(t.filter(pa.array(out)))
                    took += int(out.sum())
                    t = t.filter(pa.array(~out))
                assembler.add(t)
            written = assembler.close()
        except BaseException:
            assembler.abort()
            for p in new_parts:
                folder.remove(p.tmp_path)
            raise
        if took:
            new_parts += written
            replaced.append(part.path)
        else:
            for p in written:
                folder.remove(p.tmp_path)
    if not replaced:
        return 0
    withdrawn = pa.concat_tables(taken)
    if before_publish:
        before_publish()
    folder.write_bytes(retried_path, table_bytes(withdrawn, compression="zstd"))
    commit(folder, new_parts, replaced, update_run, kind="retry-errors", before_publish=before_publish)
    return withdrawn.num_rows


def iter_status_columns(
    folder: OutputFolder, parts: Iterable[FileInfo], batch_rows: int = 65536
) -> Iterator[tuple[FileInfo, pa.RecordBatch]]:
    """(part, record batch of ``image_uri``, ``status``) over the given parts, streamed."""
    for p in parts:
        with folder.fs.open(p.path, "rb") as f:
            pf = pq.ParquetFile(f)
            for batch in pf.iter_batches(batch_size=batch_rows, columns=["image_uri", "status"]):
                yield p, batch
