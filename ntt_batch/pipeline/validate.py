"""Nothing is written until a job is known valid (issue 19; issue 18's "a typo in --images").

Two halves, both called by :func:`ntt_batch.pipeline.job.run_job`:

* :func:`check_before_writing`, before the lease is taken (and by ``--dry-run``): cheap checks that
  need no planning. The input exists and lists at least one input (the first input is read: a
  listing stops at its first match, a manifest at its first block; a COCO file is only checked to
  exist, it is parsed by the planner); the output holds no Parquet files that are not ntt-batch
  parts (their footer lacks ``image_uri``/``status``/``num_instances``, or, in a folder with no run
  record, cannot be read). Each failure is a one-line ``FileNotFoundError``/``ConfigError`` (exit 2).
* :func:`undo_refused_attempt`, when an attempt fails after it started writing: errors only the
  planner can find (duplicate URIs or ids in a 100M-row manifest, a listing whose every file the
  extension filter skips, an empty COCO file). When the output held no ``_ntt/`` before this
  attempt and the attempt left nothing of value there (only the lock, ``run.json`` without parts,
  todo files and temporary files), ``_ntt/`` is removed, and so is the output folder if this
  attempt created it: the user's folder is as it was, and the corrected rerun is a new job. When
  the output held a job (or this attempt committed or staged anything), the attempt is recorded as
  ``failed: <type>: <one line>`` in ``run.json`` instead of staying ``running``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from ..method.config import ConfigError
from ..output.folder import LEGACY_RUN_JSON, LOCK_JSON, META, RUN_JSON, SHARDS, OutputFolder, utc_now_iso
from ..sources import InputSpec, iter_inputs
from ..sources.base import SourceStats

log = logging.getLogger(__name__)

#: Columns every ntt-batch part has had since the first layout (what the planner's scan reads).
PART_COLUMNS = ("image_uri", "status", "num_instances")
#: Kinds whose first input is not read before the job starts (reading it costs as much as planning).
_NOT_PEEKED = ("coco",)


# ----------------------------------------------------------------------------- before the first write


def check_before_writing(spec: InputSpec, options: dict | None, folder: OutputFolder) -> None:
    """Refuse a job whose input or output is unusable, before anything is written (module docstring).

    Raises:
        FileNotFoundError: the input does not exist or lists no input.
        ConfigError: the output holds Parquet files that ntt-batch did not write.
    """
    check_output_parts(folder)
    check_inputs_exist(spec, options, folder)


def check_inputs_exist(spec: InputSpec, options: dict | None, folder: OutputFolder | None = None) -> None:
    """The input exists and gives at least one input (a COCO file: exists; shards: they name at least
    one, and the first exists unless ``folder`` already holds shard records: complete shards may be gone)."""
    from ..sources.shards import ShardedSource

    source = spec.source()
    if isinstance(source, ShardedSource):  # planned shard by shard: nothing is opened here
        try:
            source.check_exists(options)
        except FileNotFoundError:
            if folder is None or not folder.fs.exists(folder.path(SHARDS)):
                raise
        return
    if spec.kind in _NOT_PEEKED:
        from ..storage.fs import filesystem

        for key, uri in spec.uris().items():
            if key == spec.source().main_key():
                fs, path = filesystem(uri, options)
                if not fs.isfile(path):
                    raise FileNotFoundError(f"{key}: {uri} does not exist (or is not a file)")
        return
    stats = SourceStats()
    for batch in iter_inputs(spec, options, chunk_rows=1, stats=stats):
        if batch.num_rows:
            return
    extra = f" ({stats.skipped_by_extension} skipped by the extension filter)" if stats.skipped_by_extension else ""
    raise FileNotFoundError(f"no inputs found at {spec.location!r}{extra}")


def check_output_parts(folder: OutputFolder) -> None:
    """Refuse an output whose ``*.parquet`` files (directly under it) include some ntt-batch did not write.

    Files that ``run.json`` records are ours and not read. Others are read for their footer only: a
    readable footer without the part columns is foreign; an unreadable one is foreign when the
    folder has no run record (a new output), else left to the planner's unreadable-file policy
    (quarantine of proven corruption).
    """
    if not folder.exists() or not folder.fs.isdir(folder.root):
        return
    parts = folder.parts()
    if not parts:
        return
    has_record = folder.fs.exists(folder.path(RUN_JSON)) or folder.fs.exists(folder.path(LEGACY_RUN_JSON))
    recorded = (folder.read_run().get("parts") or {}) if has_record else {}
    foreign: list[str] = []
    for part in parts:
        if part.name in recorded:
            continue
        try:
            with folder.fs.open(part.path, "rb") as f:
                names = pq.ParquetFile(f).schema_arrow.names
        except pa.ArrowInvalid:  # the bytes do not parse (read errors, OSError, propagate)
            if not has_record:
                foreign.append(f"{part.name} (not readable as Parquet)")
            continue
        missing = [c for c in PART_COLUMNS if c not in names]
        if missing:
            foreign.append(f"{part.name} (no column {', '.join(missing)})")
    if foreign:
        raise ConfigError(
            f"out: {folder.uri} holds {len(foreign)} Parquet file(s) that ntt-batch did not write, e.g. "
            f"{', '.join(foreign[:3])}; nothing was written. Give --out (out:) a new or empty folder, or move "
            "those files away"
        )


# ----------------------------------------------------------------------------- after a refused attempt


@dataclass
class OutputBefore:
    """What the output was before an attempt wrote anything (:func:`output_before`)."""

    existed: bool  # the output folder/prefix existed
    had_meta: bool  # it held _ntt/ (a job, or a lock of one) or a 0.1-layout run.json
    undone: bool = False  # undo_refused_attempt removed what the attempt wrote


def output_before(folder: OutputFolder) -> OutputBefore:
    """Snapshot the output before the lease is taken."""
    existed = folder.exists()
    had_meta = existed and (folder.fs.exists(folder.path(META)) or folder.fs.exists(folder.path(LEGACY_RUN_JSON)))
    return OutputBefore(existed=existed, had_meta=had_meta)


# Files an attempt may leave under _ntt/ that hold nothing of value (relative to _ntt/).
_DISPOSABLE_PREFIXES = ("todo/", "tmp/")


def _only_disposable(folder: OutputFolder) -> bool:
    """Whether ``_ntt/`` holds only the lock, a run.json without parts, todo and temporary files."""
    for f in folder.files_under(META):
        rel = f.path[len(folder.path(META)) + 1 :]
        if rel in ("lock", "lock.json", "run.json") or rel.startswith(_DISPOSABLE_PREFIXES):
            continue
        if "/" not in rel and rel.startswith(".") and rel.endswith(".tmp"):  # an atomic write's temporary file
            continue
        return False
    run = folder.read_run(strict=False)
    return not run.get("parts")


def undo_refused_attempt(folder: OutputFolder, lease, run_id: str, before: OutputBefore, error: BaseException) -> None:
    """Call while still holding ``lease``, when the attempt ``run_id`` raised ``error`` (module docstring).

    Never raises: a failure here is logged, the attempt's own error is what the user sees.
    """
    try:
        if lease.lost:
            return  # another run holds the output: nothing is ours to change
        if not before.had_meta and _only_disposable(folder):
            for f in folder.files_under(META):
                if not f.path.endswith("/" + LOCK_JSON.split("/")[-1]):  # the lease's own file: release removes it
                    folder.remove(f.path)
            before.undone = True
            return
        _record_failure(lease, run_id, error)
    except Exception:  # pragma: no cover - best effort, the original error matters more
        log.exception("could not tidy up after the refused attempt %s", run_id)


def _record_failure(lease, run_id: str, error: BaseException) -> None:
    """Mark the attempt ``run_id`` failed in run.json (fenced write) if it is still recorded as running."""
    from ..storage.fs import redact_urls

    run = lease.read_run()
    for a in run.get("attempts", []):
        if a.get("run_id") == run_id and a.get("status") == "running":
            a["status"] = (
                "interrupted"
                if isinstance(error, KeyboardInterrupt)
                else f"failed: {type(error).__name__}: {redact_urls(' '.join(str(error).split()))}"
            )
            a["finished_at"] = utc_now_iso()
            lease.write_run(run)
            return


def tidy_after_release(folder: OutputFolder, before: OutputBefore) -> None:
    """After the lease is released: remove the empty ``_ntt/`` (and the output folder if this attempt
    created it) when :func:`undo_refused_attempt` undid the attempt. Local folders only; empty ones only."""
    if not before.undone or not folder.is_local:
        return
    import os

    for dirpath, _, _ in sorted(os.walk(folder.path(META)), key=lambda w: -len(w[0])):  # deepest first
        try:
            os.rmdir(dirpath)
        except OSError:  # not empty (another run started meanwhile): left alone
            pass
    if not before.existed:
        folder.remove_empty_dir("")


__all__ = [
    "OutputBefore",
    "check_before_writing",
    "check_inputs_exist",
    "check_output_parts",
    "output_before",
    "tidy_after_release",
    "undo_refused_attempt",
]


def verify_bank(memory: str, echo) -> None:
    """``--dry-run``: load the bank at ``memory`` when there is one, so a damaged or edited bank is
    refused (``MemoryBank.load`` checks its content and metadata hashes and required fields)."""
    from .bank_prep import bank_exists

    if not bank_exists(memory):
        return  # a references: block builds it (prepare_memory_bank said so), or the run names it missing
    from ..method.memory_bank import MemoryBank  # torch: only when there is a bank to check

    bank = MemoryBank.load(memory)
    echo(f"memory bank: {memory} verified ({len(bank.categories)} classes, hash {bank.content_hash[:16]})")
