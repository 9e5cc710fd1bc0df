"""Planning a batch-job attempt: what is done, what is left, without holding the input list.

Two streamed passes over the inputs and one over the committed parts:

* **scan** (:func:`scan_output`): the ``image_uri`` and ``status`` columns of every committed part,
  hashed into a :class:`~ntt_batch.sources.ids.UriHashes` (16 bytes per row). A part that run.json
  does not know, or whose size or version (mtime / ETag) changed since it was committed, is
  checked first: when its bytes still hash to the sha256 recorded at commit (``storage.checksums``; a
  copy or a touch) it is trusted again, else it is decoded completely (every page, with
  checksums): a corrupt one is quarantined and its images are redone. Unchanged parts are trusted
  without being re-read (``ntt-batch verify --check full`` re-hashes them all).
* **pass 1** (:func:`plan_inputs`): the input source streamed in Arrow batches to a local
  temporary Parquet file with each URI's digest; duplicates are found from the sorted digests
  and refused, naming a few.
* **pass 2**: the temporary file streamed again; inputs whose digest is done are dropped, ids
  assigned, and the rest written as ``todo`` files under ``_ntt/todo/<run_id>/`` that Ray Data
  reads (``read_parquet``), so the driver never holds the list either.

Driver memory: 16 bytes per input (digests) + 16 per committed row + 8 per input for ids when
they must be checked for uniqueness; nothing else grows with the input count.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..output.folder import TODO, FileInfo, OutputFolder
from ..output.parts import PartStats, stats_of_file
from ..output.shards import STATUS_ERROR
from ..sources import InputSpec, iter_inputs
from ..sources.base import SourceStats
from ..sources.ids import HashAccumulator, UriHashes, name_numbers, stable_image_id, uri_digests
from ..storage.checksums import file_sha256
from ..storage.fs import InputImage

log = logging.getLogger(__name__)

TODO_SCHEMA = pa.schema([("image_id", pa.int64()), ("image_uri", pa.string())])
_PASS1_SCHEMA = pa.schema(
    [
        ("image_id", pa.int64()),
        ("image_uri", pa.string()),
        ("number", pa.int64()),
        ("hi", pa.uint64()),
        ("lo", pa.uint64()),
    ]
)


@dataclass
class OutputScan:
    """What the committed parts hold."""

    parts: list[FileInfo] = field(default_factory=list)
    done: UriHashes = field(default_factory=UriHashes)  # every committed row's URI
    errors: UriHashes = field(default_factory=UriHashes)  # URIs whose row is status error
    error_parts: dict[str, FileInfo] = field(default_factory=dict)  # parts holding error rows
    verified: dict[str, PartStats] = field(default_factory=dict)  # parts (re)checked now, with stats
    quarantined: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)  # read-only scans: what would be quarantined
    rows: int = 0


def scan_output(
    folder: OutputFolder,
    recorded_parts: dict[str, dict],
    *,
    read_only: bool = False,
    echo: Callable[[str], None] | None = None,
) -> OutputScan:
    """Scan the committed parts (module docstring). ``read_only``: never move anything."""
    scan = OutputScan()
    done, errors = HashAccumulator(), HashAccumulator()
    for part in folder.parts():
        rec = recorded_parts.get(part.name)
        if rec is None or int(rec.get("bytes", -1)) != part.size or str(rec.get("version", "")) != part.version:
            if _same_bytes(folder, part, rec):  # copied or touched: the very bytes that were committed
                stats = PartStats(**{k: v for k, v in rec.items() if k in PartStats.__dataclass_fields__})
                stats.version = part.version
                scan.verified[part.name] = stats
            else:
                moved = folder.quarantine_if_corrupt(part.path, dry_run=read_only)
                if moved is not None:
                    if read_only:
                        scan.corrupt.append(part.name)
                    else:
                        scan.quarantined.append(moved)
                    continue
                stats = stats_of_file(folder, part.path)
                stats.bytes, stats.version = part.size, part.version
                stats.run_id = (rec or {}).get("run_id", "")
                stats.sha256 = "" if read_only else file_sha256(folder.fs, part.path)
                scan.verified[part.name] = stats
        scan.parts.append(part)
        with folder.fs.open(part.path, "rb") as f:
            pf = pq.ParquetFile(f)
            for batch in pf.iter_batches(batch_size=65536, columns=["image_uri", "status"]):
                hi, lo = uri_digests(batch.column("image_uri").to_pylist())
                done.add(hi, lo)
                is_err = pc.equal(batch.column("status"), STATUS_ERROR).to_numpy(zero_copy_only=False)
                if is_err.any():
                    errors.add(hi[is_err], lo[is_err])
                    scan.error_parts[part.name] = part
                scan.rows += batch.num_rows
    scan.done, scan.errors = done.freeze(), errors.freeze()
    if echo and (scan.verified or scan.quarantined):
        echo(f"checked {len(scan.verified)} new or changed file(s) completely; quarantined {len(scan.quarantined)}")
    return scan


def _same_bytes(folder: OutputFolder, part: FileInfo, rec: dict | None) -> bool:
    """Whether a part whose size/version changed still has the bytes committed (its recorded sha256)."""
    want = (rec or {}).get("sha256")
    if not want or int(rec.get("bytes", -1)) != part.size:
        return False
    return file_sha256(folder.fs, part.path) == want


@dataclass
class Plan:
    inputs: int = 0
    already_done: int = 0
    to_process: int = 0
    retry_errors: int = 0  # error rows to redo (--retry-errors)
    listed: int = 0
    skipped_by_extension: int = 0
    ids_from: str = ""
    todo_paths: list[str] = field(default_factory=list)
    sample: list[tuple[int, str]] = field(default_factory=list)  # first todo entries (dry runs)
    retry: UriHashes = field(default_factory=UriHashes)

    def to_record(self) -> dict:
        return {
            "inputs": self.inputs,
            "already_done": self.already_done,
            "to_process": self.to_process,
            "retry_errors": self.retry_errors,
            "listed": self.listed,
            "skipped_by_extension": self.skipped_by_extension,
            "ids_from": self.ids_from,
        }


class DuplicateInputError(ValueError):
    pass


def list_inputs(spec: InputSpec, options: dict | None = None, *, limit: int | None = None) -> list[InputImage]:
    """The inputs of ``spec`` as a list (small input sets: ``ntt-batch segment``, the benchmark, tests).

    A thin wrapper over :func:`plan_inputs` with nothing done: the same streamed sources, the same
    duplicate checks and the same image ids as the batch job (the source's, else unique file-name
    numbers, else URI hashes). An empty source gives [].
    """
    plan = plan_inputs(
        spec, options, OutputScan(), folder=None, run_id="list", limit=limit, sample=sys.maxsize, allow_empty=True
    )
    return [InputImage(int(i), u) for i, u in plan.sample]


def plan_inputs(
    spec: InputSpec,
    options: dict | None,
    scan: OutputScan,
    *,
    folder: OutputFolder | None,
    run_id: str,
    limit: int | None = None,
    retry_errors: bool = False,
    block_rows: int = 16,
    max_todo_files: int = 256,
    sample: int = 50,
    echo: Callable[[str], None] | None = None,
    allow_empty: bool = False,
) -> Plan:
    """Passes 1 and 2 (module docstring). ``folder=None`` is a dry run: nothing is written.
    ``allow_empty``: a source without inputs gives an empty plan instead of an error.

    Todo files hold ``max(block_rows, ceil(to_process / max_todo_files))`` rows: one Ray Data read
    task (and block) each, so small jobs get small blocks and huge ones a bounded number of files.
    """
    plan = Plan()
    stats = SourceStats()
    with tempfile.TemporaryDirectory(prefix="ntt-plan-") as tmp:
        pass1 = os.path.join(tmp, "inputs.parquet")
        any_missing_id, all_numbered = _list_inputs(spec, options, stats, plan, pass1, limit, echo)
        plan.listed, plan.skipped_by_extension = stats.listed, stats.skipped_by_extension
        if not plan.inputs:
            if allow_empty:
                return plan
            where = spec.location
            extra = (
                f" ({stats.skipped_by_extension} skipped by the extension filter)" if stats.skipped_by_extension else ""
            )
            raise FileNotFoundError(f"no inputs found at {where!r}{extra}")
        dups = _repeated_digests(pass1)
        if len(dups):
            raise DuplicateInputError(_duplicate_message(pass1, dups, spec))
        mode = _id_mode(spec, pass1, any_missing_id, all_numbered)
        plan.ids_from = mode

        retry_hits = HashAccumulator() if retry_errors and len(scan.errors) else None
        todo_total = 0
        for batch in pq.ParquetFile(pass1).iter_batches(batch_size=262144, columns=["hi", "lo"]):
            todo_total += int((~scan.done.contains(batch.column("hi").to_numpy(), batch.column("lo").to_numpy())).sum())
        if retry_hits is not None:
            todo_total += len(scan.errors)  # an upper bound: sizes the todo files only
        rows_per_file = max(block_rows, -(-todo_total // max_todo_files))
        _write_todo(pass1, scan, plan, mode, retry_hits, rows_per_file, folder, run_id, sample)
        if retry_hits is not None:
            plan.retry = retry_hits.freeze()
            plan.retry_errors = len(plan.retry)
    return plan


def _list_inputs(
    spec: InputSpec,
    options: dict | None,
    stats: SourceStats,
    plan: Plan,
    pass1: str,
    limit: int | None,
    echo: Callable[[str], None] | None,
) -> tuple[bool, bool]:
    """Pass 1: stream the inputs (up to ``limit``) into the local file ``pass1`` (ids, URIs, file-name
    numbers, URI digests), counting them in ``plan.inputs``. Returns (some input has no id, every
    file name has a number)."""
    with pq.ParquetWriter(pass1, _PASS1_SCHEMA, compression="lz4") as writer:
        any_missing_id, all_numbered = False, True
        for batch in iter_inputs(spec, options, stats=stats):
            if limit is not None and plan.inputs + batch.num_rows > limit:
                batch = batch.slice(0, max(0, limit - plan.inputs))
            if not batch.num_rows:
                break
            uris = batch.column("image_uri")
            hi, lo = uri_digests(uris.to_pylist())
            ids = batch.column("image_id")
            any_missing_id |= ids.null_count > 0
            nums = name_numbers(uris)
            all_numbered &= nums.null_count == 0
            writer.write_batch(
                pa.RecordBatch.from_arrays([ids, uris, nums, pa.array(hi), pa.array(lo)], schema=_PASS1_SCHEMA)
            )
            plan.inputs += batch.num_rows
            if echo and plan.inputs % 1_000_000 < batch.num_rows:
                echo(f"  listed {plan.inputs:,} inputs ...")
            if limit is not None and plan.inputs >= limit:
                break
    return any_missing_id, all_numbered


def _id_mode(spec: InputSpec, pass1: str, any_missing_id: bool, all_numbered: bool) -> str:
    """ids: the source's when all inputs have one (unique), else file-name numbers when unique, else URI hashes."""
    mode = "uri hashes"
    if not any_missing_id:
        repeated = _repeated_values(pass1, "image_id")
        if repeated:
            raise DuplicateInputError(
                f"{spec.location}: image_id values are not unique "
                f"(e.g. {', '.join(map(str, repeated))}); each input needs its own id"
            )
        mode = "source"
    elif all_numbered and not _repeated_values(pass1, "number"):
        mode = "file names"
    return mode


def _write_todo(
    pass1: str,
    scan: OutputScan,
    plan: Plan,
    mode: str,
    retry_hits: HashAccumulator | None,
    rows_per_file: int,
    folder: OutputFolder | None,
    run_id: str,
    sample: int,
) -> None:
    """Pass 2: drop the inputs with a row (keeping error rows to redo, added to ``retry_hits``), give
    the rest their ids and write them to todo files of ``rows_per_file`` rows (none when ``folder`` is
    None); counts and samples go into ``plan``."""
    writer2, rows_in_file = None, 0
    try:
        for batch in pq.ParquetFile(pass1).iter_batches(batch_size=65536):
            hi = batch.column("hi").to_numpy()
            lo = batch.column("lo").to_numpy()
            done = scan.done.contains(hi, lo)
            if retry_hits is not None:
                redo = done & scan.errors.contains(hi, lo)
                if redo.any():
                    retry_hits.add(hi[redo], lo[redo])
                    done &= ~redo
            todo = ~done
            plan.already_done += int(done.sum())
            if not todo.any():
                continue
            sel = batch.filter(pa.array(todo))
            if mode == "source":
                ids_out = sel.column("image_id")
            elif mode == "file names":
                ids_out = sel.column("number")
            else:
                ids_out = pa.array([stable_image_id(u) for u in sel.column("image_uri").to_pylist()], pa.int64())
            out = pa.RecordBatch.from_arrays([ids_out, sel.column("image_uri")], schema=TODO_SCHEMA)
            plan.to_process += out.num_rows
            if len(plan.sample) < sample:
                head = out.slice(0, sample - len(plan.sample))
                plan.sample += list(zip(head.column("image_id").to_pylist(), head.column("image_uri").to_pylist()))
            if folder is None:
                continue
            start = 0
            while start < out.num_rows:
                if writer2 is None:
                    path = folder.path(f"{TODO}/{run_id}/todo-{len(plan.todo_paths):05d}.parquet")
                    folder.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
                    fh = folder.fs.open(path, "wb")
                    writer2 = (pq.ParquetWriter(fh, TODO_SCHEMA), fh)
                    plan.todo_paths.append(path)
                    rows_in_file = 0
                take = min(out.num_rows - start, rows_per_file - rows_in_file)
                writer2[0].write_batch(out.slice(start, take))
                rows_in_file += take
                start += take
                if rows_in_file >= rows_per_file:
                    writer2[0].close()
                    writer2[1].close()
                    writer2 = None
    finally:
        if writer2 is not None:
            writer2[0].close()
            writer2[1].close()


def _repeated_digests(pass1: str) -> UriHashes:
    """Digests that occur more than once in the pass-1 file, sorting (hi, lo) with ~32 bytes per input at peak."""
    t = pq.read_table(pass1, columns=["hi", "lo"])
    hi = t.column("hi").to_numpy()
    lo = t.column("lo").to_numpy()
    del t
    order = np.lexsort((lo, hi))
    hi = hi[order]
    lo = lo[order]
    del order
    return UriHashes(*UriHashes(hi, lo).duplicated())


def _repeated_values(pass1: str, column: str, show: int = 5) -> list[int]:
    """A few values of an int64 column that occur more than once (8 bytes per input, sorted in place)."""
    values = pq.read_table(pass1, columns=[column]).column(column).to_numpy().copy()
    values.sort()
    same = values[1:] == values[:-1]
    return [int(v) for v in np.unique(values[1:][same])[:show]] if same.any() else []


def _duplicate_message(pass1: str, dups: UriHashes, spec: InputSpec, show: int = 5) -> str:
    found: list[str] = []
    for batch in pq.ParquetFile(pass1).iter_batches(batch_size=65536, columns=["image_uri", "hi", "lo"]):
        hit = dups.contains(batch.column("hi").to_numpy(), batch.column("lo").to_numpy())
        for u in batch.column("image_uri").filter(pa.array(hit)).to_pylist():
            if u not in found:
                found.append(u)
        if len(found) >= show:
            break
    where = spec.location
    return (
        f"{where}: {len(dups)} input URI(s) are listed more than once, e.g. {', '.join(map(repr, found[:show]))}. "
        "Every input gets exactly one row: remove the repeated entries and run again"
    )
