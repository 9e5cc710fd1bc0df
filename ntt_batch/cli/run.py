"""`ntt-batch run | verify | compact | config check`: the batch job and its output."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..method.config import SegmenterConfig
from ..pipeline.config import JobConfig
from .app import main
from .options import (
    STORAGE_FLAGS,
    job_options,
    key_values,
    segmenter_options,
    storage_flags,
    storage_options_from_flags,
)
from .settings_options import settings_given


@main.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Job YAML with the same keys as these flags (segmenter settings under 'segmenter:'); flags given on "
    "the command line override it.",
)
@job_options
@storage_flags
@click.option(
    "--extensions",
    default=None,
    help="Only list objects with these extensions, e.g. 'jpg,png' (default: every object is an input; "
    "non-images get error rows). The skipped count is printed and recorded.",
)
@click.option(
    "--dry-run", is_flag=True, help="Say what would be processed (counts and the first 50) and exit; writes nothing."
)
@click.option(
    "--verbose",
    is_flag=True,
    help="Show Ray's own start-up, status and progress output (off by default: "
    "one progress line with images/s and ETA is shown instead).",
)
@click.option(
    "--publish",
    "publish_items",
    multiple=True,
    metavar="KEY=VALUE",
    help="At the end of each completed attempt, register the committed files in a table, like `ntt-batch publish` "
    "(repeatable; the keys of a job file's publish: block): table=NS.NAME [iceberg=CATALOG] [warehouse=URI] "
    "for Iceberg, delta=true for Delta Lake. Not part of the job's fingerprint.",
)
@segmenter_options
@click.pass_context
def run(ctx, config_file, publish_items, dry_run, verbose, **kw):
    """The batch job: stream images through Ray actors into Parquet/RLE rows (resumable).

    Every listed input gets exactly one row (status ok / empty / error + message), committed
    into large part-*.parquet files directly under --out; metadata (the run record run.json,
    the lock) lives under <out>/_ntt/, so pandas, pyarrow.dataset, DuckDB and Spark read the
    folder as it is. Rerunning the same command processes only inputs without a row. An output
    belongs to one job: another bank, other segmenter settings or other weights are refused
    (--allow-job-change), and a second concurrent run on the same output is refused (exit 4).

    \b
    Exit codes:
      0  done, every input has a row (and none has status error, or --allow-errors)
      1  done, but some images have status error (see `ntt-batch verify OUT`; --retry-errors redoes them)
      2  usage or configuration error (the message names the setting or path)
      3  integrity problem: an input of this run got no row (rerun, then `ntt-batch verify`)
      4  another run holds the output's lock (or took it over from this run, which then stops writing)
      5  environment: disk full, permission denied, storage unreachable (rerun when fixed)
      130 interrupted (Ctrl-C); finished rows are committed, rerun to continue
    """
    from ..pipeline.job import run_job
    from ..pipeline.job_files import job_config_from

    overrides, defaults = _job_flags(ctx, kw)
    if publish_items:
        overrides["publish"] = key_values(publish_items, "--publish")
    cfg = job_config_from(config_file, overrides, defaults=defaults, storage_flags={k: kw[k] for k in STORAGE_FLAGS})
    debug = bool(ctx.obj and ctx.obj.get("debug"))
    ctx.exit(run_job(cfg, dry_run=dry_run, echo=click.echo, verbose=verbose or debug).exit_code)


def _job_flags(ctx: click.Context, kw: dict) -> tuple[dict, dict]:
    """`run`'s flags as job settings: (those given on the command line, which override the job
    file's; fallbacks used where the file has none: ``--checkpoint-dir`` / ``NTT_CHECKPOINT_DIR``)."""
    given = {k for k in kw if ctx.get_parameter_source(k) == click.core.ParameterSource.COMMANDLINE}
    overrides = settings_given(ctx, JobConfig, kw)
    overrides["segmenter"] = settings_given(ctx, SegmenterConfig, kw)
    if "extensions" in given:
        overrides["extensions"] = [e for e in kw["extensions"].replace(",", " ").split() if e]
    if "no_download" in given:
        overrides["download"] = not kw["no_download"]
    return overrides, {"checkpoint_dir": kw["checkpoint_dir"]}


@main.command()
@click.argument("out")
@click.option(
    "--inputs/--no-inputs",
    "check_inputs",
    default=True,
    show_default=True,
    help="Also list the job's inputs (from run.json) and report those without a row.",
)
@click.option(
    "--repair",
    is_flag=True,
    help="Quarantine corrupt files (their images are redone by the next run), remove duplicate rows "
    "(keeping one per URI: a non-error row, then the newest) and resync run.json. Takes the lock.",
)
@click.option(
    "--check",
    type=click.Choice(["pages", "full"]),
    default="pages",
    show_default=True,
    help="pages: decode every page of every file (page checksums). full: also hash every file and compare it "
    "with the sha256 recorded when it was committed (bit rot that leaves size and mtime alone).",
)
@click.option(
    "--json", "json_out", default=None, type=click.Path(dir_okay=False), help="Also write the report as JSON here."
)
@storage_flags
@click.pass_context
def verify(ctx, out, check_inputs, repair, check, json_out, **kw):
    """Check a `run` output completely: rows per input, duplicates, unreadable files, attempts.

    Reads every committed file page by page (with checksums), so it finds what `export`/`eval`
    would choke on; resume only re-checks files that are new or changed.

    \b
    Exit codes (for automation):
      0  consistent: every input has exactly one row, every file reads
      1  consistent, but some rows have status error (`ntt-batch run ... --retry-errors` redoes them)
      2  OUT is not the output of `ntt-batch run` (a file, or a folder without _ntt/run.json or parts)
      3  integrity problem: corrupt files, duplicates, inputs without a row, run.json out of step, leftovers
      4  --repair: another run holds the output's lock
      5  environment: storage unreachable, permission denied
    \b
    Example:  ntt-batch verify s3://bucket/ntt-out/run1/ --json verify.json
    """
    from ..pipeline.verify import verify_output

    options = storage_options_from_flags(kw)
    report = verify_output(
        out, options, inputs=check_inputs, repair=repair, check=check, echo=lambda m: click.echo(m, err=True)
    )
    click.echo(report.format())
    if json_out:
        Path(json_out).write_text(json.dumps(report.to_dict(), indent=2))
    ctx.exit(report.exit_code)


@main.command()
@click.argument("out")
@click.option(
    "--target-file-mb",
    type=click.IntRange(min=1),
    default=512,
    show_default=True,
    help="Merge committed files smaller than half this size into files of about this size.",
)
@storage_flags
def compact(out, target_file_mb, **kw):
    """Merge a `run` output's small part files into large ones (rows unchanged; takes the lock).

    `run` already compacts at the end of every attempt; use this after changing --target-file-mb,
    or on outputs written by older versions.
    """
    from ..pipeline.verify import compact_output

    compact_output(out, storage_options_from_flags(kw), target_file_mb=target_file_mb, echo=click.echo)


@main.group("config")
def config_group():
    """Job files (YAML for `ntt-batch run --config`): validate them without running anything."""


@config_group.command("check")
@click.argument("job_file", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--strict", is_flag=True, help="Also fail (exit 1) when there are warnings, e.g. a local path that does not exist."
)
def config_check(job_file, strict):
    """Validate JOB_FILE and print its resolved settings (credentials redacted).

    Unknown or misspelled keys and bad values are errors that name the key (e.g. "segmenter:
    unknown key(s) 'point_per_side'"). Then cheap checks on this machine: local paths exist, the
    memory bank's classes and shots (or how the `references:` block will build it), where the
    checkpoints come from, S3 bucket names. Remote objects are not opened. Exit 0 when valid,
    1 when these checks find errors (and on warnings with --strict), 2 when the file itself is
    invalid (YAML syntax, unknown keys, a value of the wrong type: `limit: three`,
    `allow_errors: "false"`), in one line naming the key, the value and the expected type.

    \b
    Example:  ntt-batch config check jobs/coco-fsod-10shot.yaml
    """
    from ..pipeline.job_files import check_job_file

    report = check_job_file(job_file)
    click.echo(report.format())
    if not report.ok or (strict and report.warnings):
        raise SystemExit(1)
