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
are briefly missing. :func:`recover_commits` (run by the next lease holder before anything else)
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

from ..sources.inputs import HashAccumulator, UriHashes, uri_digests
from ..storage.checksums import HashingWriter
from .crashpoints import crash_point
from .folder import (
    COMMITS,
    PART_PREFIX,
    REPLACED,
    TMP,
    CorruptFileError,
    FileInfo,
    OutputFolder,
    table_bytes,
    utc_now_iso,
)
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


RunUpdater = Callable[[Callable[[dict], None]], None]


def _no_check() -> None:
    return None


def _visible(folder: OutputFolder, path: str) -> bool:
    """Whether a file is in the dataset readers see (directly under the output, not under ``_ntt/``)."""
    return path.rsplit("/", 1)[0] == folder.root


def commit(
    folder: OutputFolder,
    new_parts: list[NewPart],
    replaced: list[str],
    update_run: RunUpdater,
    *,
    kind: str,
    before_publish: Callable[[], None] | None = None,
) -> None:
    """Publish ``new_parts`` in place of ``replaced`` (paths) as one recoverable step (module docstring).

    ``kind``: ``staging``, ``compaction``, ``retry-errors`` or ``repair`` (the intent records it, and
    it names the crash points). ``update_run(fn)`` applies ``fn(run_dict)`` to run.json under the
    caller's lock and writes it. ``before_publish`` (the lease's ``check``) runs before the intent
    is written and before every file move: a run that lost its lease moves nothing more.

    A failure after the intent is written leaves it for :func:`recover_commits` (the next lease
    holder finishes or undoes it); nothing is undone here, because a run that lost its lease must
    not touch files the new holder may already have recovered.
    """
    if not new_parts and not replaced:
        return
    check = before_publish or _no_check
    crash_point(f"{kind}.assembled")
    check()
    intent_id = f"{utc_now_iso().replace(':', '')}-{uuid.uuid4().hex[:8]}"
    intent = {
        "id": intent_id,
        "kind": kind,
        "created_at": utc_now_iso(),
        "parts": [{"name": p.name, "tmp": p.tmp_path, "stats": p.stats.to_dict()} for p in new_parts],
        "replaced": [
            {
                "path": r,
                "hold": folder.path(f"{REPLACED}/{intent_id}/{r.rsplit('/', 1)[-1]}") if _visible(folder, r) else None,
            }
            for r in replaced
        ],
    }
    folder.write_json(f"{COMMITS}/{intent_id}.json", intent)
    crash_point(f"{kind}.intent")
    _finish(folder, intent, update_run, step=kind, check=check)


def _normalise(intent: dict) -> dict:
    """Intents of older versions list replaced files as plain paths (deleted after publishing)."""
    intent["replaced"] = [r if isinstance(r, dict) else {"path": r, "hold": None} for r in intent.get("replaced", [])]
    intent.setdefault("parts", [])
    return intent


def _exists(folder: OutputFolder, path: str) -> bool:
    return bool(path) and folder.fs.exists(path)


def _finish(
    folder: OutputFolder, intent: dict, update_run: RunUpdater, *, step: str, check: Callable[[], None]
) -> None:
    """Steps 3-6 (module docstring); every step is idempotent, so recovery can repeat any of them."""
    folder.fs.invalidate_cache()
    held = [r for r in intent["replaced"] if r["hold"]]
    to_retire = [r for r in held if _exists(folder, r["path"])]
    for i, r in enumerate(to_retire):
        check()  # before every move: a holder frozen between two moves stops at the next one
        folder.move(r["path"], r["hold"])
        if i == 0:
            crash_point(f"{step}.retiring")
    if held:
        crash_point(f"{step}.retired")
    to_publish = [p for p in intent["parts"] if _exists(folder, p["tmp"])]
    for i, p in enumerate(to_publish):
        check()
        folder.move(p["tmp"], folder.path(p["name"]))
        if i == 0:
            crash_point(f"{step}.publishing")
    if intent["parts"]:
        crash_point(f"{step}.published")
    infos = {p["name"]: folder.info(folder.path(p["name"])) for p in intent["parts"]}
    replaced_names = {r["path"].rsplit("/", 1)[-1] for r in intent["replaced"]}

    def apply(run: dict) -> None:
        parts = run.setdefault("parts", {})
        for name in replaced_names:
            parts.pop(name, None)
        for p in intent["parts"]:
            info = infos[p["name"]]
            stats = dict(p["stats"])
            if info is not None:
                stats["bytes"], stats["version"] = info.size, info.version
            parts[p["name"]] = stats

    update_run(apply)
    crash_point(f"{step}.recorded")
    for r in intent["replaced"]:
        folder.remove(r["hold"] or r["path"])
    folder.remove(folder.path(f"{COMMITS}/{intent['id']}.json"))
    folder.remove_empty_dir(f"{REPLACED}/{intent['id']}")


def _undo(folder: OutputFolder, intent: dict, check: Callable[[], None]) -> None:
    """Undo an intent whose new parts are not all there: new parts leave the dataset first, then the
    replaced parts move back (never two copies visible); staged sources were never moved."""
    folder.fs.invalidate_cache()
    check()
    for p in intent["parts"]:
        folder.remove(folder.path(p["name"]))
    crash_point("recovery.unpublished")
    restored = 0
    for r in intent["replaced"]:
        if not r["hold"] or not _exists(folder, r["hold"]):
            continue
        check()
        if _exists(folder, r["path"]):  # an object-store move copied but had not deleted yet
            folder.remove(r["hold"])
            continue
        folder.move(r["hold"], r["path"])
        restored += 1
        if restored == 1:
            crash_point("recovery.restoring")
    for p in intent["parts"]:
        folder.remove(p["tmp"])
    folder.remove(folder.path(f"{COMMITS}/{intent['id']}.json"))
    folder.remove_empty_dir(f"{REPLACED}/{intent['id']}")


def recover_commits(
    folder: OutputFolder, update_run: RunUpdater, *, check: Callable[[], None] | None = None
) -> list[str]:
    """Finish or undo the commits a crashed run left half done; returns notes for run.json.

    ``check``: the lease's check (before anything moves). Also removes what no intent refers to:
    parts assembled under ``_ntt/tmp/`` before their intent was written, and emptied ``_ntt/replaced/``
    folders.
    """
    check = check or _no_check
    notes = []
    folder.fs.invalidate_cache()
    for f in folder.files_under(COMMITS, ".json"):
        intent = folder.read_json(f.path[len(folder.root) + 1 :])
        if not intent:
            folder.remove(f.path)
            continue
        intent = _normalise(intent)
        # the temporary path first: an object-store publish copies, then deletes it
        complete = all(_exists(folder, p["tmp"]) or _exists(folder, folder.path(p["name"])) for p in intent["parts"])
        if complete:
            _finish(folder, intent, update_run, step="recovery", check=check)
            notes.append(
                f"finished an interrupted {intent.get('kind')} commit {intent['id']} ({len(intent['parts'])} part(s))"
            )
        else:
            _undo(folder, intent, check)
            notes.append(f"undid an interrupted {intent.get('kind')} commit {intent['id']} (its sources are intact)")
    folder.rmdir_tree(TMP)
    if not folder.files_under(COMMITS, ".json"):
        folder.rmdir_tree(REPLACED)
    return notes


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
    if not readable:
        return result
    all_hi = np.concatenate([r[1] for r in readable])
    all_lo = np.concatenate([r[2] for r in readable])
    drop = done.contains(all_hi, all_lo) | _dups_within(all_hi, all_lo)
    # pass 2: full rows, minus the dropped ones, into new parts
    assembler = PartAssembler(folder, run_id, target_bytes=target_bytes, row_group_rows=row_group_rows)
    consumed: list[str] = []
    offset = 0
    try:
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
                result.error_examples += list(
                    zip(errs.column("image_uri").to_pylist(), errs.column("error").to_pylist())
                )
            assembler.add(table)
            consumed.append(f.path)
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
