"""`ntt-batch verify` and `ntt-batch compact`: check and maintain a job's output without rerunning it.

``verify`` reads every committed file completely (every page, checksums where written), counts
rows per status, finds URIs with more than one row, compares run.json's per-part record with the
files, lists the attempts and anything left behind (staging files, half-done commits, a lock);
with the job's inputs (from run.json's fingerprint, or given) it also finds inputs without a row.
``--repair`` quarantines corrupt files (their images are redone by the next ``run``) and removes
duplicate rows (keeping one per URI: a non-error row over an error row, then the newest).
``--check full`` also hashes every file and compares it with the sha256 recorded when it was
committed (bit rot that leaves size, mtime and the page checksums alone; a file rewritten by
another tool): a mismatch is reported as corrupt, and ``--repair`` quarantines it.

Exit codes: 0 consistent; 1 consistent but some rows have status error; 3 integrity problem
(corrupt files, duplicates, inputs without a row, record mismatch, leftovers); 4 locked.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..output.fencing import staging_generation
from ..output.folder import COMMITS, STAGING, OutputFolder, new_run_id
from ..output.intents import commit, recover_commits
from ..output.lease import Lease, lock_status
from ..output.parts import (
    PartAssembler,
    PartStats,
    RunRecord,
    compact,
    stats_of_file,
    summary_of,
)
from ..output.shards import STATUS_ERROR
from ..sources import InputSpec, iter_inputs
from ..sources.ids import HashAccumulator, UriHashes, uri_digests
from ..storage.checksums import file_sha256
from .exit_codes import EXIT_IMAGE_ERRORS, EXIT_INTEGRITY, EXIT_LOCKED, EXIT_OK  # noqa: F401 (EXIT_LOCKED re-exported)
from .shard_plan import check_sharded_inputs, is_sharded

log = logging.getLogger(__name__)

# The table of codes: .exit_codes.
EXIT_CONSISTENT, EXIT_HAS_ERROR_ROWS = EXIT_OK, EXIT_IMAGE_ERRORS


@dataclass
class VerifyReport:
    output: str
    files: int = 0
    rows: int = 0
    stats: PartStats = field(default_factory=PartStats)
    corrupt: list[str] = field(default_factory=list)
    duplicate_uris: int = 0
    duplicate_examples: list[str] = field(default_factory=list)
    missing_inputs: int | None = None  # None: inputs not checked
    missing_examples: list[str] = field(default_factory=list)
    inputs: int | None = None
    record_mismatches: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    attempts: list[dict] = field(default_factory=list)
    lock: dict | None = None
    lock_stale: str | None = None  # why the lock's run cannot hold it any more (dead pid, expired)
    fenced_out: int = 0  # staged files of runs that had lost the lease: ignored, removed by the next run
    repaired: list[str] = field(default_factory=list)

    @property
    def integrity_ok(self) -> bool:
        return not (
            self.corrupt or self.duplicate_uris or self.missing_inputs or self.record_mismatches or self.leftovers
        )

    @property
    def exit_code(self) -> int:
        if not self.integrity_ok:
            return EXIT_INTEGRITY
        return EXIT_HAS_ERROR_ROWS if self.stats.error else EXIT_CONSISTENT

    def to_dict(self) -> dict:
        return {
            "output": self.output,
            "files": self.files,
            "rows": self.rows,
            "ok": self.stats.ok,
            "empty": self.stats.empty,
            "error": self.stats.error,
            "instances": self.stats.instances,
            "corrupt_files": self.corrupt,
            "duplicate_uris": self.duplicate_uris,
            "duplicate_examples": self.duplicate_examples,
            "inputs": self.inputs,
            "missing_inputs": self.missing_inputs,
            "missing_examples": self.missing_examples,
            "record_mismatches": self.record_mismatches,
            "leftovers": self.leftovers,
            "attempts": self.attempts,
            "lock": self.lock,
            "lock_stale": self.lock_stale,
            "fenced_out_staged_files": self.fenced_out,
            "repaired": self.repaired,
            "integrity_ok": self.integrity_ok,
            "exit_code": self.exit_code,
        }

    def format(self) -> str:
        s = self.stats
        lines = [
            f"{self.output}: {self.files} file(s), {self.rows} rows ({s.ok} ok, {s.empty} empty, {s.error} error), "
            f"{s.instances} instances"
        ]
        if self.inputs is not None:
            lines.append(
                f"  inputs: {self.inputs}; without a row: {self.missing_inputs}"
                + (f" (e.g. {', '.join(self.missing_examples)})" if self.missing_examples else "")
            )
        lines.append(
            f"  URIs with more than one row: {self.duplicate_uris}"
            + (f" (e.g. {', '.join(self.duplicate_examples)})" if self.duplicate_examples else "")
        )
        lines.append(
            f"  corrupt files: {len(self.corrupt)}" + (f" ({', '.join(self.corrupt[:5])})" if self.corrupt else "")
        )
        for m in self.record_mismatches:
            lines.append(f"  run.json record: {m}")
        for m in self.leftovers:
            lines.append(f"  left behind: {m}")
        if self.fenced_out:
            lines.append(
                f"  ignored: {self.fenced_out} file(s) staged by a run after it had lost the lease "
                "(never committed; the next run removes them)"
            )
        if self.lock and self.lock_stale:
            lines.append(
                f"  stale lock of run {self.lock.get('run_id')} (host {self.lock.get('host')}, pid "
                f"{self.lock.get('pid')}): {self.lock_stale}; the next run takes it over"
            )
        elif self.lock:
            lines.append(
                f"  locked by run {self.lock.get('run_id')} (host {self.lock.get('host')}, pid {self.lock.get('pid')})"
            )
        for a in self.attempts:
            lines.append(
                f"  attempt {a.get('run_id')}: {a.get('status')} (started {a.get('started_at')}, "
                f"{(a.get('committed') or {}).get('rows', 0)} rows committed)"
            )
        for r in self.repaired:
            lines.append(f"  repaired: {r}")
        verdict = {
            EXIT_CONSISTENT: "consistent",
            EXIT_HAS_ERROR_ROWS: "consistent; some images have status error (rerun with --retry-errors to redo them)",
            EXIT_INTEGRITY: "INTEGRITY PROBLEM (see above; "
            "`ntt-batch verify --repair` fixes corrupt files and duplicates, `ntt-batch run` redoes missing images)",
        }
        lines.append(f"verdict: {verdict[self.exit_code]}")
        return "\n".join(lines)


def verify_output(
    out: str,
    options: dict | None = None,
    *,
    inputs: InputSpec | None | bool = True,
    repair: bool = False,
    check: str = "pages",
    echo: Callable[[str], None] | None = None,
) -> VerifyReport:
    """Check an output completely (module docstring). ``inputs``: True = the job's inputs from
    run.json's fingerprint, an :class:`InputSpec` = those, False/None = skip the inputs check.
    ``check``: ``pages`` (decode every page, with checksums) or ``full`` (also compare every file's
    sha256 with the one recorded at commit)."""
    if check not in ("pages", "full"):
        raise ValueError(f"check: 'pages' or 'full', got {check!r}")
    folder = OutputFolder(out, options)
    report = VerifyReport(out)
    run = read_job_output(folder)
    report.lock, report.lock_stale = lock_status(folder)
    lease = None
    if repair:
        lease = Lease(folder, {"run_id": f"verify-repair-{new_run_id()}"}).acquire()
        report.lock = report.lock_stale = None
        run = _fenced_record(folder, lease).run
    report.attempts = [
        {k: a.get(k) for k in ("run_id", "status", "started_at", "finished_at", "committed")}
        for a in run.get("attempts", [])
    ]
    try:
        return _verify(folder, run, report, inputs, lease, echo, full=check == "full")
    finally:
        if lease is not None:
            lease.release()


class NotAJobOutputError(ValueError):
    """The folder (or file) given is not the output of ``ntt-batch run``."""


def read_job_output(folder: OutputFolder) -> dict:
    """The run record of an ``ntt-batch run`` output, after checking that ``folder`` is one.

    Raises:
        FileNotFoundError: nothing is there.
        NotAJobOutputError: a file, or a folder with neither ``_ntt/run.json`` nor part files (the
            message says what is there instead).
    """
    hint = "pass the folder given to `ntt-batch run --out`"
    if not folder.exists():
        raise FileNotFoundError(f"{folder.uri} does not exist: {hint}")
    if folder.fs.isfile(folder.root):
        raise NotAJobOutputError(f"{folder.uri} is a file, not the output folder of `ntt-batch run`: {hint}")
    run = folder.read_run()
    if run or folder.parts():
        return run
    names = sorted(str(p).rstrip("/").rsplit("/", 1)[-1] for p in folder.fs.ls(folder.root, detail=False))
    more = ", ..." if len(names) > 5 else ""
    entries = f"{len(names)} entr{'y' if len(names) == 1 else 'ies'}"
    found = f"{entries} ({', '.join(names[:5])}{more})" if names else "nothing"
    raise NotAJobOutputError(
        f"{folder.uri} is not the output of `ntt-batch run`: no _ntt/run.json and no part files, found {found}; {hint}"
    )


def _verify(
    folder: OutputFolder, run: dict, report: VerifyReport, inputs, lease, echo, *, full: bool = False
) -> VerifyReport:
    repair = lease is not None
    if repair:
        record = RunRecord(folder, run, lease=lease)
        removed = folder.remove_stale_temp_files()
        if removed:
            report.repaired.append(f"removed {len(removed)} temporary file(s) of interrupted metadata writes")
        report.repaired += recover_commits(folder, record.update, check=lease.check)
    _check_leftovers(folder, run, report)
    recorded = dict(run.get("parts", {}))
    digests = HashAccumulator()
    where: list[np.ndarray] = []  # part index per row, for naming/repairing duplicates
    parts = folder.parts()
    good = []
    for k, part in enumerate(parts):
        if folder.quarantine_if_corrupt(part.path, dry_run=not repair) is not None:
            report.corrupt.append(part.name)
            if repair:
                report.repaired.append(f"quarantined {part.name} (its images are redone by the next run)")
            continue
        want = (recorded.get(part.name) or {}).get("sha256")
        if full and want and file_sha256(folder.fs, part.path) != want:
            report.corrupt.append(part.name)
            if repair:
                folder.quarantine(part.path, "its sha256 differs from the one recorded when it was committed")
                report.repaired.append(f"quarantined {part.name} (bytes changed since commit; images redone)")
            else:
                report.record_mismatches.append(f"{part.name}: its bytes differ from the ones committed (sha256)")
            recorded.pop(part.name, None)
            continue
        good.append(part)
        with folder.fs.open(part.path, "rb") as fh:
            t = pq.read_table(fh, columns=["image_uri", "status", "num_instances"])
        st = PartStats.of_table(t)
        report.stats.add(st)
        report.files += 1
        report.rows += st.rows
        hi, lo = uri_digests(t.column("image_uri").to_pylist())
        digests.add(hi, lo)
        where.append(np.full(hi.size, k, dtype=np.int32))
        rec = recorded.pop(part.name, None)
        if rec is None:
            report.record_mismatches.append(f"{part.name} is not in run.json (written by another tool?)")
        elif int(rec.get("rows", -1)) != st.rows:
            report.record_mismatches.append(
                f"{part.name}: run.json says {rec.get('rows')} rows, the file has {st.rows}"
            )
        if echo and (k + 1) % 10 == 0:
            echo(f"  checked {k + 1}/{len(parts)} files")
    for name in recorded:
        if name not in report.corrupt:
            report.record_mismatches.append(f"{name} is in run.json but not in the output")
    all_digests = digests.freeze()
    dup_hi, dup_lo = all_digests.duplicated()
    dups = UriHashes(dup_hi, dup_lo)
    report.duplicate_uris = len(dups)
    if len(dups):
        report.duplicate_examples = _uris_with(folder, good, dups, 5)
        if repair:
            removed = _remove_duplicates(folder, good, dups, RunRecord(folder, run, lease=lease), lease.check)
            report.repaired.append(f"removed {removed} duplicate row(s), keeping one row per URI")
    spec = _input_spec(run, inputs)
    if spec is not None and is_sharded(spec):  # samples of shards: per-shard counts (pipeline.shard_plan)
        report.inputs, report.missing_inputs, report.missing_examples = check_sharded_inputs(
            folder, spec, all_digests, good, folder.options
        )
    elif spec is not None:
        _check_inputs(folder, spec, all_digests, report)
    if repair and (report.corrupt or report.duplicate_uris or report.record_mismatches):
        RunRecord(folder, run, lease=lease).update(lambda r: _resync_parts(folder, r))
        report.record_mismatches = []
        report.duplicate_uris = 0
        report.corrupt = []
    return report


def _check_leftovers(folder: OutputFolder, run: dict, report: VerifyReport) -> None:
    """Half-done commits and staged files in ``_ntt/`` (those of fenced-out runs counted apart)."""
    for f in folder.files_under(COMMITS, ".json"):
        report.leftovers.append(f"half-done commit {f.name} (the next run or --repair finishes it)")
    accepted_from = int(run.get("staging_accepted_from") or 0)
    prefix = folder.path(STAGING) + "/"
    staged = 0
    for f in folder.files_under(STAGING, ".parquet"):
        if staging_generation(f.path[len(prefix) :].split("/", 1)[0]) < accepted_from:
            report.fenced_out += 1
        else:
            staged += 1
    if staged:
        report.leftovers.append(f"{staged} staged file(s) of interrupted attempts (the next run commits them)")


def _check_inputs(folder: OutputFolder, spec, all_digests, report: VerifyReport) -> None:
    """Inputs (not sharded) without a row: counted, with up to 5 examples."""
    n = 0
    missing = 0
    for batch in iter_inputs(spec, folder.options):
        uris = batch.column("image_uri").to_pylist()
        hi, lo = uri_digests(uris)
        absent = ~all_digests.contains(hi, lo)
        n += len(uris)
        missing += int(absent.sum())
        for u, a in zip(uris, absent):
            if a and len(report.missing_examples) < 5:
                report.missing_examples.append(u)
    report.inputs, report.missing_inputs = n, missing


def _fenced_record(folder: OutputFolder, lease) -> RunRecord:
    """run.json read under ``lease`` and written back at once with its generation (the fence: a run that
    held an earlier lease can no longer write it). An 0.1-layout record is read, not moved (``run`` moves it)."""
    run = lease.read_run()
    if run:
        record = RunRecord(folder, run, lease=lease)
        record.write()
        return record
    return RunRecord(folder, folder.read_run(), lease=lease)


def _input_spec(run: dict, inputs) -> InputSpec | None:
    if isinstance(inputs, InputSpec):
        return inputs
    if not inputs:
        return None
    described = (run.get("fingerprint") or {}).get("inputs")
    if not described:
        return None
    return InputSpec.from_description(described, exclude_prefix=(run.get("config") or {}).get("out"))


def _uris_with(folder: OutputFolder, parts, wanted: UriHashes, limit: int) -> list[str]:
    found: list[str] = []
    for part in parts:
        with folder.fs.open(part.path, "rb") as fh:
            uris = pq.read_table(fh, columns=["image_uri"]).column("image_uri").to_pylist()
        hi, lo = uri_digests(uris)
        for u, hit in zip(uris, wanted.contains(hi, lo)):
            if hit and u not in found:
                found.append(u)
                if len(found) >= limit:
                    return found
    return found


def _remove_duplicates(folder: OutputFolder, parts, dups: UriHashes, record: RunRecord, check) -> int:
    """Keep one row per duplicated URI — a non-error row over an error row, then the newest run —
    by rewriting the parts that hold the others, all in one commit (kind ``repair``, the job's
    protocol: the rewritten parts replace their originals at once)."""
    rows = []
    for k, part in enumerate(parts):
        with folder.fs.open(part.path, "rb") as fh:
            t = pq.read_table(fh, columns=["image_uri", "status", "run_id"])
        hi, lo = uri_digests(t.column("image_uri").to_pylist())
        hit = np.nonzero(dups.contains(hi, lo))[0]
        for i in hit:
            rows.append(
                (
                    int(hi[i]),
                    int(lo[i]),
                    t.column("status")[i].as_py() != STATUS_ERROR,
                    t.column("run_id")[i].as_py() or "",
                    k,
                    int(i),
                )
            )
    best: dict[tuple[int, int], tuple] = {}
    for r in rows:
        key = (r[0], r[1])
        if key not in best or (r[2], r[3]) > (best[key][2], best[key][3]):
            best[key] = r
    drop: dict[int, set[int]] = {}
    for r in rows:
        if best[(r[0], r[1])] is not r:
            drop.setdefault(r[4], set()).add(r[5])
    removed = 0
    new_parts, replaced = [], []
    repair_id = f"repair-{new_run_id()}"
    try:
        for n, (k, idx) in enumerate(sorted(drop.items())):
            part = parts[k]
            with folder.fs.open(part.path, "rb") as fh:
                t = pq.read_table(fh)
            keep = np.ones(t.num_rows, dtype=bool)
            keep[list(idx)] = False
            assembler = PartAssembler(folder, repair_id, name_tag=f"d{n}")
            assembler.add(t.filter(pa.array(keep)))
            new_parts += assembler.close()
            replaced.append(part.path)
            removed += len(idx)
    except BaseException:
        for p in new_parts:
            folder.remove(p.tmp_path)
        raise
    commit(folder, new_parts, replaced, record.update, kind="repair", before_publish=check)
    return removed


def _resync_parts(folder: OutputFolder, run: dict) -> None:
    """Make run.json's per-part record match the files (after a repair)."""
    parts = {}
    for part in folder.parts():
        st = stats_of_file(folder, part.path)
        st.bytes, st.version = part.size, part.version
        old = run.get("parts", {}).get(part.name) or {}
        st.run_id = old.get("run_id", "")
        same = old.get("sha256") and int(old.get("bytes", -1)) == part.size and old.get("version") == part.version
        st.sha256 = old["sha256"] if same else file_sha256(folder.fs, part.path)
        parts[part.name] = st.to_dict()
    run["parts"] = parts
    run["summary"] = summary_of(parts)


def compact_output(
    out: str, options: dict | None = None, *, target_file_mb: int = 512, echo: Callable[[str], None] = print
) -> dict:
    """Merge small committed files into files of about ``target_file_mb`` (takes the lease; rows unchanged)."""
    folder = OutputFolder(out, options)
    run = folder.read_run()
    if not run:
        raise FileNotFoundError(f"{out!r} holds no ntt-batch output (no _ntt/run.json)")
    with Lease(folder, {"run_id": f"compact-{new_run_id()}"}) as lease:
        record = _fenced_record(folder, lease)
        folder.remove_stale_temp_files()
        notes = recover_commits(folder, record.update, check=lease.check)
        before = folder.parts()
        new = compact(
            folder,
            before,
            run_id=f"compact-{new_run_id()}",
            update_run=record.update,
            target_bytes=int(target_file_mb) << 20,
            before_publish=lease.check,
        )
        after = folder.parts()
    result = {
        "files_before": len(before),
        "files_after": len(after),
        "new_files": new,
        "notes": notes,
        "bytes": sum(p.size for p in after),
    }
    echo(
        f"{out}: {len(before)} file(s) → {len(after)} file(s)"
        + (f" ({len(new)} written)" if new else " (nothing to merge)")
    )
    return result
