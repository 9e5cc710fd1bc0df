"""Flags shared by several commands: checkpoints, object storage, segmenter and job settings.

Only click and the settings dataclasses are imported here: ``ntt-batch --help`` stays fast.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import click

from ..method.config import SegmenterConfig
from ..pipeline.config import JobConfig
from ..storage.fs import StorageOptionsError, storage_options_from
from .settings_options import flag_names, settings_from_flags, settings_options

checkpoint_dir_option = click.option(
    "--checkpoint-dir",
    type=click.Path(file_okay=False),
    envvar="NTT_CHECKPOINT_DIR",
    default=None,
    help="Folder of pre-placed checkpoint files (official file names). Env: NTT_CHECKPOINT_DIR. "
    "Otherwise files are cached in NTT_CACHE_DIR or ~/.cache/ntt_batch.",
)
no_download_option = click.option(
    "--no-download", is_flag=True, help="Never download; fail if a checkpoint is missing."
)
ENCODER_HELP = "Image encoder (DINOv2: Apache-2.0; DINOv3: DINOv3 License, gated downloads)."
# The object-store flags (`storage_flags`), as keyword argument names.
STORAGE_FLAGS = ("endpoint_url", "anon", "profile", "storage_option")


def storage_flags(f):
    """Object-store flags for commands that read shards/files by URI (same meaning as for `run`)."""
    opts = [
        click.option("--endpoint-url", default=None, help="S3-compatible endpoint (MinIO, Ceph, ...)."),
        click.option("--anon", is_flag=True, default=False, help="Anonymous object-store access."),
        click.option("--profile", default=None, help="AWS profile for s3:// URIs."),
        click.option(
            "--storage-option", "storage_option", multiple=True, help="Extra fsspec option KEY=VALUE (repeatable)."
        ),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def storage_options_from_flags(kw: dict) -> dict:
    """fsspec storage options from the `storage_flags` values (removed from ``kw``)."""
    flags = {k: kw.pop(k, None) for k in STORAGE_FLAGS}
    try:
        return storage_options_from(flags)
    except StorageOptionsError as e:
        raise click.BadParameter(str(e), param_hint="--storage-option") from None


def segmenter_options(f):
    """Model, threshold and device flags shared by `segment` and `run`: `--sam2` (``JobConfig.sam2``),
    one flag per ``SegmenterConfig`` field marked as a flag (generated from the dataclass: name, type,
    default and help; see ``settings_options``), and where the checkpoints come from."""
    f = no_download_option(f)
    f = checkpoint_dir_option(f)
    f = settings_options(SegmenterConfig)(f)
    return settings_options(JobConfig, only=("sam2",))(f)


def job_options(f):
    """`run`'s job flags, one per ``JobConfig`` field marked as a flag (generated like the segmenter's;
    `--sam2` comes with :func:`segmenter_options`)."""
    return settings_options(JobConfig, only=tuple(n for n in flag_names(JobConfig) if n != "sam2"))(f)


# The SegmenterConfig fields that are flags of `segment` and `run` (`run`: given ones override the job file).
SEGMENTER_FLAGS = flag_names(SegmenterConfig)


def segmenter_config_from_flags(kw: dict) -> SegmenterConfig:
    """The segmenter settings of a command's flag values (a flag missing from ``kw`` keeps its default), validated."""
    return SegmenterConfig(**settings_from_flags(SegmenterConfig, kw)).validate()


def split_names(values) -> list[str]:
    """Model names from repeated and/or space- or comma-separated values."""
    return [n for v in values for n in v.replace(",", " ").split() if n]


def key_values(items, flag: str) -> dict:
    """``KEY=VALUE`` flag items → a dict (values read as YAML scalars: ``delta=true`` is a boolean)."""
    from ..storage.fs import yaml_scalar

    out = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint=flag)
        out[key.strip()] = yaml_scalar(value)
    return out


# ----------------------------------------------------------------------------- score thresholds

THRESHOLDS_FLAG = "--thresholds"
OLD_THRESHOLDS_FLAGS = ("--score-threshold",)  # its former name on export (merge) and visualize
THRESHOLDS_HELP = (
    "Keep instances with score >= T: one number for every class, or a YAML/JSON file of per-class "
    "thresholds {class name or id: T, default: T} (e.g. written by `ntt-batch thresholds`). "
    "Default: keep all."
)


def thresholds_option(help_text: str = THRESHOLDS_HELP) -> Callable:
    """The one score-threshold flag of every command that filters by score (export, visualize, review):
    ``--thresholds T|FILE``, passed to the command as ``thresholds`` (None when not given).

    The old name ``--score-threshold`` keeps working, hidden from ``--help``: it prints a one-line
    notice on stderr and fills ``thresholds``; giving both is a usage error.
    """

    def decorate(f: Callable) -> Callable:
        @functools.wraps(f)
        def command(*args, **kw):
            old = kw.pop("old_score_threshold", None)
            if old is not None:
                if kw.get("thresholds") is not None:
                    raise click.UsageError(f"give {THRESHOLDS_FLAG} only ({OLD_THRESHOLDS_FLAGS[0]} is its old name)")
                click.echo(
                    f"notice: {OLD_THRESHOLDS_FLAGS[0]} is now {THRESHOLDS_FLAG}; the old name keeps working", err=True
                )
                kw["thresholds"] = old
            return f(*args, **kw)

        command = click.option(*OLD_THRESHOLDS_FLAGS, "old_score_threshold", default=None, hidden=True)(command)
        return click.option(THRESHOLDS_FLAG, "thresholds", default=None, metavar="T|FILE", help=help_text)(command)

    return decorate
