"""Job files (YAML for ``ntt-batch run --config``): loading and ``ntt-batch config check``.

A job file holds the same settings as the ``run`` flags (see ``JobConfig``); nested blocks are
``segmenter:`` (method settings), ``storage_options:`` (fsspec options) and ``references:``
(build the memory bank on first run, see ``bank_prep``). ``check_job_file`` validates a file
without running anything: it parses it into a ``JobConfig`` (unknown keys, values of the wrong
type and bad values are errors that name the key; every value is type-checked against the
settings' annotations, booleans strictly, see ``method.config.config_from_dict``; s3fs options
against s3fs's own defaults, see ``storage.fs.check_storage_options``), then does the checks that
are cheap on this machine (local paths, the memory bank's metadata, checkpoint files, S3 bucket
names). Remote objects are not opened.
A YAML syntax error is reported by line and column only: PyYAML's message quotes the text
around the error, which may be a credential.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import yaml

from ..method.config import ConfigError
from ..storage.fs import is_local, storage_options_from
from .bank_prep import (
    bank_exists,
    bank_mismatches,
    memory_folder_problem,
    read_bank_meta,
)
from .config import JobConfig, check_job_blocks
from .placeholders import refuse_placeholders

_S3 = ("s3", "s3a")
# S3 bucket names: 3-63 chars, lowercase letters, digits, dots and hyphens, starting and ending alphanumeric.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (YAML would silently keep the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: key {key!r} is given twice")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_job_file(path: str | Path) -> dict:
    """Read a job YAML into a dict (errors name the file, and the line for syntax errors / repeated keys)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read job file ({e})") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {yaml_error_summary(e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level, got {type(data).__name__}")
    return data


def yaml_error_summary(error: yaml.YAMLError) -> str:
    """One line for a YAML syntax error: where (line, column) and what, never the offending text.

    PyYAML's own message quotes the lines around the problem, which may hold a storage-option
    secret; this keeps only the positions and the parser's description of the problem.
    """
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None)
    if mark is None or not problem:
        return f"{type(error).__name__} (details withheld: they could quote a credential)"
    if "alias" in problem or "anchor" in problem:  # '*text' / '&text' in a value: the name may be a secret's text
        problem = re.sub(r"'[^']*'", "'...'", problem)
    text = f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    context, context_mark = getattr(error, "context", None), getattr(error, "context_mark", None)
    if context:
        text += f" ({context}" + (
            f" started at line {context_mark.line + 1}, column {context_mark.column + 1})"
            if context_mark is not None
            else ")"
        )
    return " ".join(text.split())


def job_config_from_file(path: str | Path) -> JobConfig:
    """Load and validate a job file into a :class:`JobConfig` (errors start with the file's name)."""
    return job_config_from(path)


def job_config_from(
    file: str | os.PathLike | Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    defaults: Mapping[str, Any] | None = None,
    storage_flags: Mapping[str, Any] | None = None,
    where: str = "flags",
) -> JobConfig:
    """A job's settings from a job file and the settings given on top of it, validated: the one
    merge behind ``ntt-batch run --config FILE --flag ...`` and ``ntt_batch.run(FILE, key=value)``.

    Args:
        file: a job YAML (read by :func:`load_job_file`: keys given twice are errors), a mapping of
            the same keys, or None.
        overrides: settings that replace the file's (job-file keys); a ``segmenter`` or ``publish``
            mapping is merged key by key into the file's block of that name.
        defaults: settings used only where neither the file nor ``overrides`` gives them (the
            CLI's ``--checkpoint-dir``, which may come from ``NTT_CHECKPOINT_DIR``).
        storage_flags: the object-store flags (``endpoint_url``, ``anon``, ``profile``,
            ``storage_option``) applied on top of ``storage_options`` (see ``storage_options_from``).
        where: what the settings come from when ``file`` is not a path (starts type errors).

    Both nested blocks are checked to be mappings before anything is merged
    (:func:`~ntt_batch.pipeline.job.check_job_blocks`, also run by ``config check``).

    Raises:
        ConfigError: the message names the key (and the file, when there is one).
    """
    if file is None or isinstance(file, Mapping):
        data = dict(file or {})
    else:
        where = os.fspath(file)
        data = load_job_file(where)
    overrides = dict(overrides or {})
    check_job_blocks(data, where)
    check_job_blocks(overrides, where)
    segmenter = {**(data.pop("segmenter", None) or {}), **(overrides.pop("segmenter", None) or {})}
    if overrides.get("publish"):
        overrides["publish"] = {**(data.get("publish") or {}), **overrides["publish"]}
    data = {**{k: v for k, v in (defaults or {}).items() if v is not None}, **data, **overrides}
    if storage_flags is not None:
        data["storage_options"] = storage_options_from(dict(storage_flags), data.get("storage_options"))
    data["segmenter"] = segmenter
    try:
        return JobConfig.from_dict(data, where=where).validate()
    except ValueError as e:  # ConfigError, unknown model names
        message = str(e)
        if where == "flags" or message.startswith(where):
            raise ConfigError(message) from None
        raise ConfigError(f"{where}: {message}") from None


# ----------------------------------------------------------------------------- config check


@dataclass
class CheckReport:
    path: str
    config: JobConfig
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def format(self) -> str:
        lines = [
            f"{self.path}: {'valid job config' if self.ok else 'INVALID job config'}",
            "resolved settings (credentials redacted; defaults filled in):",
        ]
        dumped = yaml.safe_dump(self.config.to_dict(), sort_keys=False, default_flow_style=False)
        lines += ["  " + ln for ln in dumped.rstrip().splitlines()]
        for title, items in (("notes", self.notes), ("warnings", self.warnings), ("errors", self.errors)):
            if items:
                lines.append(f"{title}:")
                lines += [f"  - {item}" for item in items]
        return "\n".join(lines)


def check_job_file(path: str | Path) -> CheckReport:
    """Validate a job file and check, cheaply and without running anything, what it points at.

    Raises:
        ConfigError: the file does not parse into a valid config, or a location in it is still a
            template's placeholder (``YOUR-BUCKET``; the message names the keys).
    """
    cfg = job_config_from_file(path)
    refuse_placeholders(cfg, str(path))  # a template's YOUR-BUCKET: exit 2 naming the keys
    report = CheckReport(str(path), cfg)
    _check_locations(cfg, report)
    encoder = _check_bank(cfg, report)
    _check_checkpoints(cfg, encoder, report)
    return report


def _check_locations(cfg: JobConfig, report: CheckReport) -> None:
    bad_buckets: dict[str, list[str]] = {}
    for key, uri in cfg.uris().items():
        protocol = fsspec.utils.get_protocol(uri)
        if is_local(uri):
            if key in ("out", "memory"):
                continue  # created by the run (memory: see _check_bank)
            if not Path(uri).exists():
                report.warnings.append(
                    f"{key}: {uri} does not exist on this machine (it must exist where the job runs)"
                )
            continue
        if protocol in _S3:
            bucket = uri.split("://", 1)[1].split("/", 1)[0]
            if not _BUCKET.match(bucket):
                bad_buckets.setdefault(bucket, []).append(key)
                continue
        report.notes.append(f"{key}: {uri} (remote; not opened by the check)")
    for bucket, keys in bad_buckets.items():
        report.warnings.append(
            f"{', '.join(keys)}: {bucket!r} is not a valid S3 bucket name (3-63 lowercase letters, digits, "
            "dots, hyphens); "
            f"if it is the placeholder of a shipped job file, replace it with your bucket before running"
        )
    problem = memory_folder_problem(cfg.memory)
    if problem and (cfg.references is not None or not is_local(cfg.memory)):
        report.errors.append(problem)
    if cfg.checkpoint_dir and not is_local(cfg.checkpoint_dir):
        report.errors.append(f"checkpoint_dir: {cfg.checkpoint_dir} must be a local folder on every node")


def _check_bank(cfg: JobConfig, report: CheckReport) -> str | None:
    """Report the bank (or how it will be made); return the encoder name it uses, if known."""
    spec = cfg.references
    if not is_local(cfg.memory):
        return spec.encoder if spec else None
    if bank_exists(cfg.memory):
        try:
            meta = read_bank_meta(cfg.memory)
        except (OSError, ValueError) as e:
            report.errors.append(f"memory: {cfg.memory}/memory_bank.json cannot be read ({e})")
            return None
        names = [c["name"] for c in meta.get("categories", [])]
        shots = sorted(set((meta.get("shots") or {}).values()))
        encoder = (meta.get("encoder") or {}).get("name")
        report.notes.append(
            f"memory: bank with {len(names)} classes ({', '.join(names[:8])}{', ...' if len(names) > 8 else ''}), "
            f"shots per class {shots[0] if len(shots) == 1 else shots}, encoder {encoder}, "
            f"hash {str(meta.get('content_hash'))[:16]}"
        )
        if spec is not None:
            problems = bank_mismatches(spec, meta)
            if problems:
                report.errors.append(
                    f"memory: the bank in {cfg.memory} was built with {', '.join(problems)}; point memory: "
                    "at another folder or delete it to rebuild"
                )
        return encoder
    if spec is not None:
        how = (
            f"sampling {spec.shots} shot(s) per class of split {spec.split!r} (seed {spec.seed}) from "
            f"{spec.annotations}"
            if spec.annotations
            else f"the references in {spec.file}"
        )
        report.notes.append(
            f"memory: {cfg.memory} holds no bank yet; the first run builds it from {how} "
            f"with {spec.encoder} (images under {spec.image_root})"
        )
        return spec.encoder
    report.warnings.append(
        f"memory: {cfg.memory} holds no memory bank on this machine. Build it first: `ntt-batch references sample "
        f"--annotations ANN.json --split few_shot --shots K --seed 33 --out refs.json` then `ntt-batch memory build "
        f"--references refs.json --image-root IMAGES/ --out {cfg.memory}`; or add a references: block so the "
        "job builds it"
    )
    return None


def _check_checkpoints(cfg: JobConfig, encoder: str | None, report: CheckReport) -> None:
    """Where the model files would come from on this machine (no hashing, no download)."""
    from ..models.checkpoints import checkpoint_search_dirs, checkpoint_spec, default_cache_dir

    names = [cfg.sam2] + ([encoder] if encoder else [])
    if cfg.references is not None and cfg.references.sam2:
        names.append(cfg.references.sam2)
    dirs = checkpoint_search_dirs(cfg.checkpoint_dir, default_cache_dir())
    for name in dict.fromkeys(names):
        try:
            spec = checkpoint_spec(name)
        except ValueError as e:
            report.errors.append(str(e))
            continue
        found = next((d / spec.filename for d in dirs if (d / spec.filename).is_file()), None)
        if found:
            report.notes.append(f"checkpoint {name}: {found}")
        elif spec.url is None:  # gated (DINOv3) or a plug-in without a public address
            report.warnings.append(
                f"checkpoint {name}: {spec.filename} not found in {', '.join(map(str, dirs))} and it has no public "
                f"download: request it at {spec.access or 'its publisher'} and place it there on every node"
            )
        elif cfg.download:
            size = f"{spec.size_bytes / 1e6:.0f} MB" if spec.size_bytes else "size not published"
            report.notes.append(
                f"checkpoint {name}: not on this machine; downloaded on first use ({size} from {spec.url})"
            )
        else:
            report.warnings.append(
                f"checkpoint {name}: {spec.filename} not found in {', '.join(map(str, dirs))} "
                "and download is false: place it there on every node, or set download: true"
            )
