"""`ntt-batch run`: the Ray Data batch job, resumable, one job per output.

Attempt, start to end (the output's layout is described in ``output.folder``)::

    take the output's lease (one run at a time; output.lease.Lease)
    check the job fingerprint against run.json (another job's output is refused)
    finish or undo half-done commits; check new/changed parts; commit what dead attempts staged
    plan (pipeline.plan): stream the inputs, drop those with a row → todo files under _ntt/todo/
      (sharded inputs, pipeline.shard_plan: list the shards, skip the complete ones unopened)
    Ray Data:
      read_parquet(todo) → repartition(block_rows)   (shards: one reading task per shard)
      └─ map_batches(decode_batch)   CPU tasks: read bytes (fsspec, read_concurrency reads in
                                     flight), decode, EXIF-orient, RGB, pixel limit; bad inputs
                                     → error rows
      └─ map_batches(SegmentActor)   actor pool: models loaded once per actor, the memory bank
                                     broadcast once with ray.put; masks RLE-encoded in the actor
      └─ write_parquet(_ntt/staging/g<generation>-<run_id>/)   fenced: refused once the lease is lost
    the committer (a driver thread) turns staging files into large part-*.parquet files as they
    accumulate and at the end (output.parts), then small parts are compacted
    with --publish: the committed parts are registered in the Iceberg/Delta table(s) (output.publish)

Resume: a row means "done". A rerun reads the ``image_uri``/``status`` columns of the committed
parts once, drops those inputs, and processes the rest: cost proportional to the output's rows
(16 bytes each in memory), not to its files. Nothing is lost on a crash: staged files of a dead
attempt are committed by the next one, and partial files are never visible to readers. Ray
Data's own ``CheckpointConfig`` (beta in Ray 2.60) was not used: it keeps a second record
beside the output, wants a cluster-shared path, and could disagree with the shards after a
crash; here "has a row" and "is done" are the same fact, on any fsspec store.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._version import __version__
from ..method.config import (
    ConfigError,
)
from ..output.fencing import LeaseLostError, staging_generation, staging_name
from ..output.folder import (
    COMMITS,
    LEGACY_RUN_JSON,
    RETRIED,
    STAGING,
    TMP,
    TODO,
    OutputFolder,
    new_run_id,
    utc_now_iso,
)
from ..output.intents import recover_commits
from ..output.lease import Lease
from ..output.parts import (
    RunRecord,
    commit_staging,
    compact,
    withdraw_rows,
)
from ..output.publish import publish_folder
from ..output.table_common import PublishError
from ..sources.ids import HashAccumulator
from .background import ProgressLine, StagingCommitter
from .bank_prep import prepare_memory_bank
from .config import JobConfig, input_spec
from .exit_codes import EXIT_IMAGE_ERRORS, EXIT_INTEGRITY, EXIT_OK  # the table of every command's exit codes
from .fingerprint import JobMismatchError, fingerprint_differences, job_fingerprint
from .graph import execute
from .placeholders import refuse_placeholders
from .plan import OutputScan, Plan, plan_inputs, scan_output
from .shard_plan import ShardPlan, finish_attempt, is_sharded, plan_shards
from .validate import check_before_writing, output_before, tidy_after_release, undo_refused_attempt, verify_bank

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- driver


@dataclass
class JobResult:
    summary: dict
    attempt: dict
    exit_code: int


def run_job(
    cfg: JobConfig,
    *,
    dry_run: bool = False,
    echo: Callable[[str], None] = print,
    model_stage: type | None = None,
    verbose: bool = True,
) -> JobResult:
    """Run (or resume) a batch job; returns the summary over the whole output and an exit code.

    Raises :class:`LeaseHeldError` when another run writes the output, :class:`JobMismatchError`
    when the output belongs to another job. ``model_stage`` replaces :class:`SegmentActor` (the
    pipeline benchmark passes :class:`NoopModelActor`). ``verbose=False`` silences Ray's own
    progress and status logging (the CLI's default; our progress line and summary remain).
    """
    cfg.validate()
    refuse_placeholders(cfg)  # a template's s3://YOUR-BUCKET/: refused before anything is read or written
    folder = OutputFolder(cfg.out, cfg.storage_options)
    if folder.fs.isfile(folder.root):
        raise ConfigError(
            f"out: {cfg.out} is a file, not a folder; give --out (out:) a new folder or the output of an earlier run"
        )
    check_before_writing(input_spec(cfg), cfg.storage_options, folder)  # nothing is written before (validate)
    if dry_run:
        return _dry_run(cfg, folder, echo)
    from ..method.matching import check_negatives_available
    from ..method.memory_bank import MemoryBank, check_encoder_weights  # torch: not needed for a dry run
    from ..models.checkpoints import resolve_checkpoint

    bank_build = prepare_memory_bank(
        cfg, dry_run=False, echo=echo, verbose=verbose
    )  # only with `references:` and no bank yet
    bank = MemoryBank.load(cfg.memory)
    check_negatives_available(cfg.segmenter, bank, f"memory bank {cfg.memory}")
    sam_ckpt = resolve_checkpoint(cfg.sam2, checkpoint_dir=cfg.checkpoint_dir, download=cfg.download)
    enc_ckpt = resolve_checkpoint(bank.encoder["name"], checkpoint_dir=cfg.checkpoint_dir, download=cfg.download)
    check_encoder_weights(bank.encoder, enc_ckpt, cfg.memory)
    run_id = new_run_id()
    fingerprint = job_fingerprint(cfg, bank.content_hash, sam_ckpt, enc_ckpt)
    before = output_before(folder)
    lease = Lease(folder, {"run_id": run_id}, ttl_s=cfg.lease_ttl_s).acquire()
    try:
        provenance = {
            "format": "ntt-batch/run",
            "layout": 2,
            "ntt_batch_version": __version__,
            "fingerprint": fingerprint,
            "config": cfg.to_dict(),
            "models": {"sam2": sam_ckpt.to_json(), "encoder": enc_ckpt.to_json()},
            "official_weights": sam_ckpt.official and enc_ckpt.official,
            "memory_bank": {
                "path": cfg.memory,
                "content_hash": bank.content_hash,
                "categories": bank.categories,
                "shots": bank.shots,
                **({"negatives": bank.negative_shots} if bank.has_negatives else {}),
            },
        }
        return _attempt(cfg, folder, lease, run_id, provenance, bank, bank_build, echo, model_stage, verbose)
    except BaseException as e:  # a refusal found while planning leaves the output as it was (validate)
        undo_refused_attempt(folder, lease, run_id, before, e)
        raise
    finally:
        lease.release()
        tidy_after_release(folder, before)


def _dry_run(cfg: JobConfig, folder: OutputFolder, echo: Callable[[str], None]) -> JobResult:
    """What a run would do, without taking the lock or writing anything."""
    prepare_memory_bank(cfg, dry_run=True, echo=echo)  # says how a `references:` block would build the bank
    verify_bank(cfg.memory, echo)  # an existing bank is loaded, so its hashes are checked
    run = folder.read_run() if folder.exists() else {}
    scan = scan_output(folder, run.get("parts", {}), read_only=True) if folder.exists() else OutputScan()
    plan = _plan(cfg, scan, folder=None, output=folder, run_id="dry-run", echo=echo)
    _echo_plan(plan, echo)
    if cfg.publish is not None:
        targets = [f"Iceberg table {cfg.publish.table}"] if cfg.publish.wants_iceberg else []
        targets += ["a Delta table"] if cfg.publish.wants_delta else []
        echo(f"  then would publish the output to {' and '.join(targets)}")
    if scan.corrupt:
        echo(
            f"  {len(scan.corrupt)} committed file(s) are corrupt and would be quarantined: "
            f"{', '.join(scan.corrupt[:5])}"
        )
    if isinstance(plan, ShardPlan):
        for t in plan.to_read[:50]:
            skip = f" (skipping its {len(t['done_keys'])} done sample(s))" if t["done_keys"] else ""
            echo(f"  would read {t['shard']}{skip}")
        if len(plan.to_read) > 50:
            echo(f"  ... and {len(plan.to_read) - 50} more shard(s)")
        return JobResult({**plan.to_record()}, {}, EXIT_OK)
    for image_id, uri in plan.sample:
        echo(f"  would process image_id={image_id} {uri}")
    if plan.to_process > len(plan.sample):
        echo(f"  ... and {plan.to_process - len(plan.sample)} more")
    return JobResult({**plan.to_record()}, {}, EXIT_OK)


def _plan(cfg: JobConfig, scan: OutputScan, *, folder: OutputFolder | None, output: OutputFolder, run_id: str, echo):
    """The attempt's plan: objects (``plan.plan_inputs``) or shards (``shard_plan.plan_shards``).
    ``folder=None``: a dry run (nothing written)."""
    spec = input_spec(cfg)
    kw = dict(limit=cfg.limit, retry_errors=cfg.retry_errors, block_rows=cfg.block_rows, echo=echo)
    if is_sharded(spec):
        return plan_shards(spec, cfg.storage_options, scan, folder=folder, output=output, run_id=run_id, **kw)
    return plan_inputs(spec, cfg.storage_options, scan, folder=folder, run_id=run_id, **kw)


def _echo_plan(plan: Plan, echo: Callable[[str], None]) -> None:
    if isinstance(plan, ShardPlan):
        echo(plan.describe())
        return
    extra = f" ({plan.skipped_by_extension} skipped by --extensions)" if plan.skipped_by_extension else ""
    retry = f" ({plan.retry_errors} error rows to redo)" if plan.retry_errors else ""
    echo(
        f"inputs: {plan.inputs} images{extra}; already done: {plan.already_done}; to process: {plan.to_process}{retry}"
    )


def _attempt(
    cfg: JobConfig,
    folder: OutputFolder,
    lease,
    run_id: str,
    provenance: dict,
    bank,
    bank_build,
    echo: Callable[[str], None],
    model_stage,
    verbose: bool,
) -> JobResult:
    """One attempt, under the lease: open it in run.json, recover → plan → execute → report."""
    record, attempt = _open_attempt(cfg, folder, lease, run_id, provenance, bank_build)
    scan, notes = _recover(cfg, folder, lease, record, run_id, echo)
    plan = _plan_attempt(cfg, folder, lease, record, attempt, scan, notes, run_id, echo)
    committer = _execute_attempt(
        cfg, folder, lease, record, attempt, plan, scan, bank, run_id, echo, model_stage, verbose
    )
    lease.check()  # a run that lost its lease (even after its last commit) does not report success
    return _report(cfg, folder, record, attempt, plan, committer, echo)


def _open_attempt(
    cfg: JobConfig, folder: OutputFolder, lease, run_id: str, provenance: dict, bank_build
) -> tuple[RunRecord, dict]:
    """Check the job fingerprint, mark dead attempts, and record this attempt in run.json (the first
    fenced write). Returns the run record and this attempt's (live) entry in it."""
    run = lease.read_run()  # fenced: its version is remembered, later writes are conditional on it
    legacy = folder.has_legacy_run()
    if legacy:
        run = folder.read_run()  # the 0.1 layout's run.json, beside the parts
    old_fp = run.get("fingerprint")
    new_fp = provenance["fingerprint"]
    changes = fingerprint_differences(old_fp, new_fp) if old_fp else []
    if changes and not cfg.allow_job_change:
        raise JobMismatchError(
            f"output {cfg.out} belongs to another job: {'; '.join(changes)}. Write to a new output (--out), or pass "
            "--allow-job-change to add this run's rows to it anyway (run.json then records both settings)"
        )
    for a in run.get("attempts", []):
        if a.get("status") == "running":  # we hold the lease: that attempt cannot be alive
            a.update(status="died", died_noticed_at=utc_now_iso(), died_noticed_by=run_id)
    if changes:
        run.setdefault("fingerprint_history", []).append(
            {"until_run": run_id, "fingerprint": old_fp, "changes": changes}
        )
    run.update(provenance)
    attempt: dict[str, Any] = {
        "run_id": run_id,
        "started_at": utc_now_iso(),
        "status": "running",
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "retry_errors_requested": cfg.retry_errors,
    }
    if bank_build:
        attempt["memory_bank_build"] = bank_build
    run.setdefault("attempts", []).append(attempt)
    attempt["lease_generation"] = lease.generation
    record = RunRecord(folder, run, lease=lease)
    record.write()  # the first fenced write: from here on a run that held an earlier lease cannot write run.json
    if legacy:
        folder.remove(folder.path(LEGACY_RUN_JSON))
        attempt.setdefault("notes", []).append("moved the 0.1 layout's run.json to _ntt/run.json")
    return record, attempt


def _recover(
    cfg: JobConfig, folder: OutputFolder, lease, record: RunRecord, run_id: str, echo
) -> tuple[OutputScan, list[str]]:
    """1. finish or undo half-done commits; 2. check the parts; 3. commit what dead attempts staged.
    Returns the scan of the committed output and the notes (already echoed)."""
    run = record.run
    notes = []
    stale_tmp = folder.remove_stale_temp_files()
    if stale_tmp:
        notes.append(f"removed {len(stale_tmp)} temporary file(s) of interrupted metadata writes")
    notes += recover_commits(folder, record.update, check=lease.check)
    scan = _scan(folder, record, echo)
    seen = HashAccumulator()
    seen.add(scan.done.hi, scan.done.lo)
    leftovers, fenced_out = _staged_leftovers(folder, run, lease.generation)
    if fenced_out:
        notes.append(
            f"ignored {fenced_out} file(s) staged by a run after it had lost the lease (their images are redone)"
        )
    if leftovers:
        res = commit_staging(
            folder,
            leftovers,
            run_id=run_id,
            seen=seen,
            update_run=record.update,
            final=True,
            target_bytes=cfg.target_file_bytes,
            before_publish=lease.check,
        )
        notes.append(
            f"committed {res.stats.rows} row(s) that interrupted attempts had staged "
            f"({res.files} file(s); {res.duplicates_dropped} duplicate(s) dropped, "
            f"{len(res.quarantined)} incomplete file(s) quarantined)"
        )
        scan = _scan(folder, record, echo)
    run["staging_accepted_from"] = lease.generation  # staged files of earlier generations: consumed or fenced out
    record.write()
    folder.rmdir_tree(STAGING)
    folder.rmdir_tree(TODO)
    if scan.quarantined:
        notes.append(f"quarantined {len(scan.quarantined)} unreadable file(s): {', '.join(scan.quarantined[:5])}")
    for n in notes:
        echo(f"note: {n}")
    return scan, notes


def _plan_attempt(
    cfg: JobConfig,
    folder: OutputFolder,
    lease,
    record: RunRecord,
    attempt: dict,
    scan: OutputScan,
    notes: list[str],
    run_id: str,
    echo,
) -> Plan | ShardPlan:
    """Plan the attempt, record the plan (and the recovery notes), withdraw error rows to redo."""
    plan = _plan(cfg, scan, folder=folder, output=folder, run_id=run_id, echo=echo)
    _echo_plan(plan, echo)
    attempt.update(plan.to_record())
    if notes:
        attempt.setdefault("notes", []).extend(notes)
    if plan.retry_errors:
        attempt["errors_withdrawn"] = withdraw_rows(
            folder,
            list(scan.error_parts.values()),
            plan.retry,
            run_id=run_id,
            update_run=record.update,
            retried_path=folder.path(f"{RETRIED}/{run_id}.parquet"),
            target_bytes=cfg.target_file_bytes,
            before_publish=lease.check,
        )
    record.write()
    return plan


def _execute_attempt(
    cfg: JobConfig,
    folder: OutputFolder,
    lease,
    record: RunRecord,
    attempt: dict,
    plan: Plan | ShardPlan,
    scan: OutputScan,
    bank,
    run_id: str,
    echo,
    model_stage,
    verbose: bool,
) -> StagingCommitter:
    """Run the Ray Data graph with the committer beside it, commit, compact; the attempt's status and
    timings are recorded whatever happens (see :func:`_close_attempt`). Returns the committer."""
    seen = HashAccumulator()  # rows this attempt commits (duplicates of a retried write are dropped)
    seen.add(scan.done.hi, scan.done.lo)
    if plan.retry_errors:
        keep = ~plan.retry.contains(scan.done.hi, scan.done.lo)
        seen = HashAccumulator()
        seen.add(scan.done.hi[keep], scan.done.lo[keep])
    staging = f"{STAGING}/{staging_name(lease.generation, run_id)}"
    committer = StagingCommitter(
        folder, run_id, seen, record, target_bytes=cfg.target_file_bytes, lease=lease, staging=staging
    )
    t0 = time.perf_counter()
    try:
        if plan.to_process:
            lease.check()
            with committer, ProgressLine(committer, plan.to_process, echo) as progress:
                execute(
                    cfg,
                    plan,
                    bank,
                    run_id,
                    folder,
                    model_stage,
                    verbose=verbose,
                    staging=staging,
                    lease=lease,
                    progress=progress,
                )
            if committer.error:
                raise committer.error
        committer.commit(final=True)
        if isinstance(plan, ShardPlan):
            _finish_shards(folder, run_id, plan, attempt, echo)
        merged = compact(
            folder,
            folder.parts(),
            run_id=run_id,
            update_run=record.update,
            target_bytes=cfg.target_file_bytes,
            before_publish=lease.check,
        )
        if merged:
            attempt["compacted_into"] = merged
        attempt["status"] = "completed"
    except BaseException as e:
        lost = _lease_lost(lease)
        if lost is not None:  # nothing more is written: another run holds the output now
            if lost is not e:
                raise lost from e
            raise
        attempt["status"] = "interrupted" if isinstance(e, KeyboardInterrupt) else f"failed: {type(e).__name__}: {e}"
        try:  # keep what finished: complete staging files are committed, partial ones wait for the next run
            committer.commit(final=False)
        except BaseException:
            log.exception("could not commit the finished rows; the next run will")
        raise
    finally:
        _close_attempt(folder, lease, record, attempt, committer, staging, run_id, time.perf_counter() - t0)
    return committer


def _close_attempt(
    folder: OutputFolder,
    lease,
    record: RunRecord,
    attempt: dict,
    committer: StagingCommitter,
    staging: str,
    run_id: str,
    elapsed: float,
) -> None:
    """Whatever the attempt's outcome: record its timings and the cluster, write run.json and tidy
    ``_ntt/`` (unless the lease was lost: then both are left as the new holder has them)."""
    run = record.run
    attempt.update(
        finished_at=utc_now_iso(),
        seconds=round(elapsed, 3),
        committed=committer.stats.to_dict() | {"duplicates_dropped": committer.duplicates_dropped},
        images_per_s=round(committer.stats.rows / elapsed, 4) if elapsed > 0 and committer.stats.rows else None,
    )
    for k in ("bytes", "version", "run_id"):
        attempt["committed"].pop(k, None)
    try:
        import ray

        if ray.is_initialized():
            run["cluster_resources"] = {k: v for k, v in ray.cluster_resources().items() if not k.startswith("node:")}
    except Exception:  # pragma: no cover
        pass
    if not lease.lost:  # a run that lost its lease leaves run.json and _ntt/ as the new holder has them
        try:
            record.write()
        except LeaseLostError as e:
            log.error("run.json was not updated: %s", e)
        else:
            folder.rmdir_tree(f"{TODO}/{run_id}")
            _remove_fenced_out_staging(folder, lease.generation)
            for rel in (TODO, TMP, staging, STAGING, COMMITS):
                folder.remove_empty_dir(rel)


def _report(
    cfg: JobConfig,
    folder: OutputFolder,
    record: RunRecord,
    attempt: dict,
    plan: Plan | ShardPlan,
    committer: StagingCommitter,
    echo,
) -> JobResult:
    """The summary over the whole output, the errors of this run, ``--publish``, and the exit code."""
    missing = plan.to_process - committer.stats.rows
    summary = {
        **record.run["summary"],
        "missing": missing,
        "duplicate_uris": 0,
        "processed_this_run": committer.stats.rows,
        "to_process": plan.to_process,
        "seconds": attempt["seconds"],
        "images_per_s": attempt["images_per_s"],
    }
    echo(
        f"summary: {summary['ok']} ok, {summary['empty']} empty, {summary['error']} error "
        f"({summary['rows']} rows in {summary['files']} file(s), {summary['instances']} instances); this run: "
        f"{committer.stats.rows} images in {attempt['seconds']} s ({attempt['images_per_s']} images/s); output "
        f"{cfg.out}"
    )
    if committer.error_examples:
        echo(f"{committer.stats.error} image(s) of this run failed, e.g.:")
        for uri, err in committer.error_examples:
            echo(f"  {uri}: {err}")
        echo(
            "  all of them: duckdb -c \"select image_uri, error from '"
            + cfg.out.rstrip("/")
            + "/*.parquet' where status = 'error'\"; "
            "to redo them (e.g. after fixing the files): the same command with --retry-errors"
        )
    if cfg.publish is not None:
        _publish_attempt(cfg, folder, record, attempt, echo)
    code = EXIT_OK
    if missing:
        echo(
            f"ERROR: {missing} image(s) of this run got no row; run the same command again, then `ntt-batch "
            f"verify {cfg.out}`"
        )
        code = EXIT_INTEGRITY
    elif summary["error"] and not cfg.allow_errors:
        code = EXIT_IMAGE_ERRORS
    return JobResult(summary, attempt, code)


def _finish_shards(folder: OutputFolder, run_id: str, plan: ShardPlan, attempt: dict, echo) -> None:
    """After a sharded attempt: the rows it had to commit (from the shards' census: exact, where the
    plan could only estimate), what broke, and the census consolidated into ``_ntt/shards/``."""
    res = finish_attempt(folder, run_id, plan)
    plan.to_process = res.rows_expected + len(res.unread)  # an unread shard counts as (at least) one missing row
    attempt.update(to_process=plan.to_process, shards_read=res.shards_read)
    notes = [f"shard broken: {b}" for b in res.broken] + [f"repeated sample keys in {d}" for d in res.duplicates]
    if res.unread:
        notes.append(f"{len(res.unread)} planned shard(s) were not read to their end, e.g. {res.unread[0]}")
    for n in notes[:10]:
        echo(f"note: {n}")
    if notes:
        attempt.setdefault("notes", []).extend(notes[:100])


def _publish_attempt(cfg: JobConfig, folder: OutputFolder, record: RunRecord, attempt: dict, echo) -> None:
    """``--publish``: register the committed parts in the table(s), under this run's lease (output.publish)."""
    try:
        res = publish_folder(folder, cfg.publish, echo=echo)
    except Exception as e:
        attempt["publish_error"] = f"{type(e).__name__}: {e}"
        record.write()
        raise PublishError(
            f"the run's rows are committed, but publishing them failed: {type(e).__name__}: {e}. "
            f"Fix that, then `ntt-batch publish {cfg.out}` with the same table settings (or rerun the job)"
        ) from e
    attempt["published"] = [
        {k: getattr(t, k) for k in ("format", "table", "snapshot", "table_rows", "up_to_date")}
        | {"added": len(t.added), "removed": len(t.removed)}
        for t in res.tables
    ]
    record.write()


def _scan(folder: OutputFolder, record: RunRecord, echo) -> OutputScan:
    """Scan the parts and bring run.json's per-part stats in line with what is there."""
    scan = scan_output(folder, record.run.get("parts", {}), echo=echo)
    present = {p.name for p in scan.parts}

    def apply(run: dict) -> None:
        parts = run.setdefault("parts", {})
        for name in list(parts):
            if name not in present:
                parts.pop(name)
        for name, stats in scan.verified.items():
            parts[name] = stats.to_dict()

    record.update(apply)
    return scan


def _staging_folders(folder: OutputFolder) -> dict[str, list]:
    """Staged files by staging folder name (``g<generation>-<run_id>``, or ``<run_id>`` of older versions)."""
    out: dict[str, list] = {}
    prefix = folder.path(STAGING) + "/"
    for f in folder.files_under(STAGING, ".parquet"):
        out.setdefault(f.path[len(prefix) :].split("/", 1)[0], []).append(f)
    return out


def _staged_leftovers(folder: OutputFolder, run: dict, generation: int) -> tuple[list, int]:
    """(staged files of dead attempts to commit now, number of files fenced out).

    Files of a generation from ``staging_accepted_from`` (run.json; 0 when absent) up to ours (not
    included) are a dead or displaced holder's and are committed once. Files of an older generation
    were staged after their run had lost the lease (a later holder already took what was there):
    they are never committed (``output.fencing``).
    """
    accepted_from = int(run.get("staging_accepted_from") or 0)
    leftovers, fenced_out = [], 0
    for name, files in _staging_folders(folder).items():
        g = staging_generation(name)
        if g >= generation:
            continue  # ours (none yet) or a later holder's: not ours to take
        if g < accepted_from:
            fenced_out += len(files)
        else:
            leftovers += files
    return leftovers, fenced_out


def _remove_fenced_out_staging(folder: OutputFolder, generation: int) -> None:
    """Remove staging folders of earlier generations: files a run staged after it had lost the lease."""
    for name in _staging_folders(folder):
        if staging_generation(name) < generation:
            folder.rmdir_tree(f"{STAGING}/{name}")


def _lease_lost(lease) -> LeaseLostError | None:
    """The lease's loss as an error (checking now), or None while it is held."""
    try:
        lease.check()
    except LeaseLostError as e:
        return e
    return None
