"""`ntt-batch run`: the Ray Data batch job, resumable, one job per output.

Attempt, start to end (the output's layout is described in ``output.folder``)::

    take the output's lease (one run at a time; output.folder.Lease)
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
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .._version import __version__
from ..method.config import (
    ConfigError,
    SegmenterConfig,
    check_config_types,
    config_from_dict,
    setting,
)
from ..models.encoders import encoder_family  # torch-free at import (dry runs, config check)
from ..models.registry import DEFAULT_SAM2, SAM2_NAMES, get_spec
from ..output.fencing import FencedFSHandler, LeaseLostError, staging_generation, staging_name
from ..output.folder import (
    COMMITS,
    LEGACY_RUN_JSON,
    LOCK_JSON,
    RETRIED,
    STAGING,
    TMP,
    OutputFolder,
    new_run_id,
    utc_now_iso,
)
from ..output.parts import (
    PartStats,
    RunRecord,
    commit_staging,
    compact,
    recover_commits,
    withdraw_rows,
)
from ..output.publish import publish_folder
from ..output.table_common import PublishError, PublishSpec
from ..sources.inputs import HashAccumulator, InputSpec, normalise_extensions
from ..storage.fs import (
    InputImage,
    StorageOptionsError,
    absolute_uri,
    check_storage_options,
    redact_options,
)
from ..storage.images import DEFAULT_MAX_PIXELS
from .bank_prep import ReferencesSpec, prepare_memory_bank
from .cluster import init_ray
from .exit_codes import EXIT_IMAGE_ERRORS, EXIT_INTEGRITY, EXIT_OK  # the table of every command's exit codes
from .placeholders import refuse_placeholders
from .plan import TODO, OutputScan, Plan, list_inputs, plan_inputs, scan_output
from .shard_plan import ShardPlan, check_shard_settings, finish_attempt, is_sharded, plan_shards, shard_dataset
from .stages import (  # noqa: F401 (re-exported)
    NoopModelActor,
    ProgressCounter,
    SegmentActor,
    decode_batch,
    instance_record,
)
from .validate import check_before_writing, output_before, tidy_after_release, undo_refused_attempt, verify_bank

log = logging.getLogger(__name__)


@dataclass
class JobConfig:
    """All settings of a batch job. YAML files (``--config``) hold the same keys as the CLI flags."""

    memory: str = setting(
        "",
        flag=True,
        default_text="required (here or in --config)",
        help="Memory bank folder (`ntt-batch memory build`; or built by the job from a references: block).",
    )
    out: str = setting(
        "",
        flag=True,
        default_text="required (here or in --config)",
        help="Output URI for the Parquet part files and _ntt/ (local folder or s3://...).",
    )
    images: str | None = setting(
        None,
        flag=True,
        default_text="unset",
        help="Input images: fsspec URI of a prefix/folder, a glob, or one file (s3://bucket/prefix/, gs://..., "
        "/data/imgs); or WebDataset tar shards: a URI ending in .tar (shards/{00000..00999}.tar, shards/*.tar), each "
        "sample one input keyed <shard>#<key>. Give exactly one of --images, --manifest, --annotations, --table.",
    )
    manifest: str | None = setting(
        None,
        flag=True,
        default_text="unset",
        help="Parquet/CSV/JSONL listing image URIs (column image_uri, optional image_id).",
    )
    annotations: str | None = setting(
        None, flag=True, default_text="unset", help="COCO JSON listing the images (ids from it); needs --image-root."
    )
    image_root: str | None = setting(
        None, flag=True, default_text="unset", help="URI the COCO file names are relative to."
    )
    table: str | None = setting(
        None,
        flag=True,
        default_text="unset",
        help="Table of images: Parquet or Arrow IPC file(s) (a file, folder, glob or brace pattern) with a column of "
        "image bytes; each row one input, keyed <file>#<id> (--id-column) or <file>#<row number>.",
    )
    image_column: str | None = setting(
        None,
        flag=True,
        default_text="the table's one bytes column; for tars the first image member",
        help="With --table: the column holding the images (bytes, or a Hugging Face {bytes, path} struct). With "
        "WebDataset shards: the image member's extension (jpg, png, seg.png, ...).",
    )
    id_column: str | None = setting(
        None,
        flag=True,
        default_text="row numbers",
        help="With --table: the column whose values (text or integers, unique per file) key the rows.",
    )
    # Any kind of input, plug-ins' included: {kind: <a ntt_batch.sources.SOURCES name>, <its settings>}
    # (instead of images / manifest / annotations above, which name the built-in kinds).
    source: dict | None = None
    # fsspec options: endpoint_url, anon, profile, key/secret
    # (flags: --endpoint-url, --anon, --profile, --storage-option)
    storage_options: dict = field(default_factory=dict)
    sam2: str = setting(DEFAULT_SAM2, flag=True, choices=tuple(SAM2_NAMES), help="SAM 2 proposer (method.md §6).")
    checkpoint_dir: str | None = None  # flag --checkpoint-dir (shared with the other commands, env NTT_CHECKPOINT_DIR)
    download: bool = True  # flag --no-download
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    num_actors: int = setting(1, flag=True, min=1, help="Segment actors (one GPU each where GPUs exist).")
    batch_size: int = setting(2, flag=True, min=1, help="Images per actor call.")
    actor_num_cpus: float = 1.0  # CPUs reserved per actor (and torch threads on CPU)
    max_pixels: int = setting(
        DEFAULT_MAX_PIXELS, flag=True, min=1, help="Refuse images with more pixels (decompression bombs)."
    )
    limit: int | None = setting(None, flag=True, min=1, default_text="all", help="Only the first N inputs.")
    allow_errors: bool = setting(False, flag=True, help="Exit 0 even if some images got status error.")
    ray_address: str | None = setting(
        None, flag=True, default_text="RAY_ADDRESS, else a local Ray instance", help="Ray cluster address."
    )
    references: ReferencesSpec | None = None  # build the bank from these when `memory` holds none (see bank_prep)
    extensions: list[str] | None = None  # opt-in filter for listings (e.g. [jpg, png]); flag --extensions 'jpg,png'
    retry_errors: bool = setting(
        False,
        flag=True,
        help="Also redo inputs whose row has status error (e.g. a file that arrived late); their old rows are "
        "replaced (kept under _ntt/retried/), never duplicated.",
    )
    allow_job_change: bool = setting(
        False,
        flag=True,
        help="Write into an output whose job fingerprint (inputs, bank, segmenter settings, weights) differs; "
        "without it such a run is refused with the differences named.",
    )
    block_rows: int = setting(
        16,
        flag=True,
        min=1,
        help="Rows per Ray Data block and staging file (more for jobs over 256 blocks): what a crash can lose; "
        "progress granularity.",
    )
    target_file_mb: int = setting(512, flag=True, min=1, help="Size of the committed part files (MB).")
    # Performance only (never part of the job fingerprint, like PERFORMANCE_ONLY_SETTINGS): how objects are read.
    read_concurrency: int = setting(
        16, flag=True, min=1, help="Object reads in flight per decode task (one object per image inputs)."
    )
    read_buffer_mb: int = setting(
        64,
        flag=True,
        min=1,
        help="Bytes of objects in flight per decode task at most (MB; a larger object is read alone).",
    )
    lease_ttl_s: float = 120.0  # object stores: a dead run's lock expires after this (renewed every ttl/4)
    # publish the output to an Iceberg/Delta table at the end of each completed attempt (output.publish;
    # flag --publish KEY=VALUE); not part of the job fingerprint
    publish: PublishSpec | None = None

    def validate(self) -> JobConfig:
        check_config_types(self)  # also for configs built in Python: types first, then values
        if not self.memory:
            raise ConfigError("memory: required (a memory-bank folder from `ntt-batch memory build`)")
        if not self.out:
            raise ConfigError("out: required (output URI for the shards)")
        try:
            spec = input_spec(self)  # exactly one input, of a known kind, with its required settings
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.source:
            self.source = {"kind": spec.kind, **spec.absolute().settings}
        check_shard_settings(self, spec)
        get_spec(self.sam2, "sam2")
        for name in ("memory", "out", "images", "manifest", "annotations", "image_root", "checkpoint_dir", "table"):
            setattr(self, name, absolute_uri(getattr(self, name)))
        for name in (
            "num_actors",
            "batch_size",
            "max_pixels",
            "limit",
            "block_rows",
            "target_file_mb",
            "read_concurrency",
            "read_buffer_mb",
        ):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.actor_num_cpus <= 0:
            raise ConfigError(f"actor_num_cpus: must be > 0, got {self.actor_num_cpus}")
        if not isinstance(self.segmenter, SegmenterConfig):
            raise ConfigError("segmenter: must be a mapping of segmenter settings")
        self.segmenter.validate()
        if self.references is not None:
            if not isinstance(self.references, ReferencesSpec):
                raise ConfigError("references: must be a mapping of reference settings (see jobs/*.yaml)")
            self.references.validate()
        if self.publish is not None:
            try:
                self.publish.check()
            except PublishError as e:
                raise ConfigError(f"publish: {e}") from None
        try:
            check_storage_options(self.storage_options, self.uris().values())
        except StorageOptionsError as e:
            raise ConfigError(str(e)) from None
        return self

    def uris(self) -> dict[str, str]:
        """Every URI of the job, by the key that holds it (``references.<key>`` for the references block)."""
        inputs = input_spec(self).uris()
        out = {f"source.{k}" if self.source else k: v for k, v in inputs.items()}
        out.update({k: getattr(self, k) for k in ("out", "memory", "checkpoint_dir")})
        if self.references is not None:
            out.update({f"references.{k}": getattr(self.references, k) for k in ("annotations", "file", "image_root")})
        return {k: v for k, v in out.items() if v}

    @classmethod
    def from_dict(cls, data: dict, where: str = "job config") -> JobConfig:
        """Settings from a job file or the flags, every value type-checked against the annotations above
        (``limit: three`` is an error naming key, value and type; see ``config_from_dict``). An empty
        ``segmenter:`` or ``storage_options:`` block means the defaults. Call :meth:`validate` next."""
        if isinstance(data, dict):
            check_job_blocks(data, where)
            data = {k: v for k, v in data.items() if not (k in ("segmenter", "storage_options") and v is None)}
        return config_from_dict(cls, data, where, validate=False)

    @property
    def target_file_bytes(self) -> int:
        return int(self.target_file_mb) << 20

    def to_dict(self) -> dict:
        d = asdict(self)
        d["storage_options"] = redact_options(self.storage_options)
        if d.get("publish"):
            d["publish"]["catalog_properties"] = redact_options(d["publish"]["catalog_properties"])
        return d


def check_job_blocks(data: Mapping, where: str = "") -> None:
    """Refuse a ``segmenter:`` or ``storage_options:`` block that is not a mapping (None is: the defaults).

    Run on a job file before it is merged with flags (``job_files.job_config_from``) and by
    :meth:`JobConfig.from_dict`, so ``config check`` and ``run`` give the same one line. The value of
    a ``storage_options:`` block is never shown: ``"secret=..."`` or ``[secret, ...]`` may be a credential.
    """
    prefix = f"{where}: " if where else ""
    segmenter = data.get("segmenter")
    if segmenter is not None and not isinstance(segmenter, Mapping):
        shown = repr(segmenter) if len(repr(segmenter)) <= 80 else repr(segmenter)[:77] + "..."
        raise ConfigError(
            f"{prefix}segmenter: expected a mapping of settings, got {shown} ({type(segmenter).__name__}); "
            "write one setting per line under it, e.g. 'segmenter: {points_per_side: 16}'"
        )
    options = data.get("storage_options")
    if options is not None and not isinstance(options, Mapping):
        raise ConfigError(
            f"{prefix}storage_options: expected a mapping, got a {type(options).__name__} (value not shown: it may "
            "hold a credential); write KEY: VALUE lines under it, e.g. 'storage_options: {profile: NAME}'"
        )


# ----------------------------------------------------------------------------- driver


def input_spec(cfg: JobConfig) -> InputSpec:
    """Where the job's inputs come from (the job's own output is never an input)."""
    return InputSpec.from_job(cfg, extensions=normalise_extensions(cfg.extensions), exclude_prefix=cfg.out)


def resolve_inputs(cfg: JobConfig) -> list[InputImage]:
    """The job's inputs as a list (small jobs and tests; the job itself streams them, see ``plan``)."""
    return list_inputs(input_spec(cfg), cfg.storage_options, limit=cfg.limit)


# Segmenter settings that change speed only, never the rows: left out of the job fingerprint.
PERFORMANCE_ONLY_SETTINGS = frozenset(
    {"device", "points_batch_size", "implementation", "compile", "merge_memory_mb", "memory_limit_mb"}
)


class JobMismatchError(ConfigError):
    """The output belongs to a job with another fingerprint."""


def job_fingerprint(cfg: JobConfig, bank_hash: str, sam_ckpt, enc_ckpt) -> dict:
    """What makes two runs the same job: inputs, bank content, segmenter settings, model weights, pixel limit.

    Segmenter settings are recorded resolved for the bank's encoder (``encoder_image_size: null``
    → the encoder's native side, 518 for DINOv2), so a default that became encoder-dependent
    does not change the fingerprint of a job that ran before.
    """
    return {
        "inputs": input_spec(cfg).describe(),
        "memory_bank": bank_hash,
        "segmenter": _fingerprinted_settings(_resolved_segmenter(cfg.segmenter, enc_ckpt.name)),
        "models": {
            "sam2": {"name": sam_ckpt.name, "sha256": sam_ckpt.sha256},
            "encoder": {"name": enc_ckpt.name, "sha256": enc_ckpt.sha256},
        },
        "max_pixels": cfg.max_pixels,
    }


def _resolved_segmenter(seg: SegmenterConfig, encoder_name: str | None) -> SegmenterConfig:
    """``seg`` with its encoder-dependent settings resolved for ``encoder_name`` (unchanged for an unknown name)."""
    try:
        fam = encoder_family(encoder_name)
    except (ValueError, KeyError):
        return seg
    return seg.for_encoder(fam.patch_size, fam.native_image_size)


def _fingerprinted_settings(seg: SegmenterConfig) -> dict:
    return {k: v for k, v in asdict(seg).items() if k not in PERFORMANCE_ONLY_SETTINGS}


def fingerprint_defaults(encoder_name: str | None) -> dict[str, Any]:
    """Flattened fingerprint keys → the value a setting has at its default (segmenter settings resolved
    for ``encoder_name``, and the pixel limit). A setting missing from a recorded fingerprint had this value."""
    seg = _fingerprinted_settings(_resolved_segmenter(SegmenterConfig(), encoder_name))
    return {**{f"segmenter.{k}": v for k, v in seg.items()}, "max_pixels": JobConfig.max_pixels}


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


_ABSENT = object()


def fingerprint_differences(old: dict, new: dict) -> list[str]:
    """Human-readable differences between two fingerprints, e.g. "segmenter.points_per_side: 32 → 8".

    Settings are added over time: a setting one side does not record counts as its default
    (:func:`fingerprint_defaults`, resolved for the new fingerprint's encoder), so an output
    written before the setting existed is the same job as long as the setting is at its default.
    Performance-only settings (``PERFORMANCE_ONLY_SETTINGS``) an older output recorded are ignored,
    and an encoder-dependent setting recorded as null counts as the encoder's value.
    """
    encoder = ((new.get("models") or {}).get("encoder") or {}).get("name")
    defaults = fingerprint_defaults(encoder)
    unresolved = _flatten({"segmenter": asdict(SegmenterConfig())})
    a, b = _flatten(old), _flatten(new)
    out = []
    for k in sorted(set(a) | set(b)):
        if k.startswith("segmenter.") and k.split(".", 1)[1] in PERFORMANCE_ONLY_SETTINGS:
            continue
        va, vb = a.get(k, _ABSENT), b.get(k, _ABSENT)
        if k in defaults:
            if va is _ABSENT or (va is None and unresolved.get(k, _ABSENT) is None):
                va = defaults[k]
            if vb is _ABSENT or (vb is None and unresolved.get(k, _ABSENT) is None):
                vb = defaults[k]
        if va != vb:
            va, vb = ("(absent)" if v is _ABSENT else v for v in (va, vb))
            if isinstance(va, str) and isinstance(vb, str) and len(va) == len(vb) == 64:
                va, vb = va[:12] + "…", vb[:12] + "…"
            out.append(f"{k}: {va!r} in the output, {vb!r} now")
    return out


class BackgroundLoop:
    """A daemon thread calling :meth:`tick` every ``interval_s`` seconds while the ``with`` block runs.

    ``tick`` returning False ends the loop early; ``__exit__`` stops the thread and waits for it.
    """

    thread_name = "ntt-background"

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> bool | None:
        raise NotImplementedError

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            if self.tick() is False:
                return

    def __enter__(self):
        self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()


class StagingCommitter(BackgroundLoop):
    """Commits the attempt's staging files into large parts: in the background whenever a part's
    worth (``target_bytes``) has accumulated, and once more at the end (see ``output.parts``)."""

    thread_name = "ntt-committer"

    def __init__(
        self,
        folder: OutputFolder,
        run_id: str,
        seen: HashAccumulator,
        record: RunRecord,
        *,
        target_bytes: int,
        lease,
        staging: str | None = None,
        interval_s: float = 20.0,
    ):
        super().__init__(interval_s)
        self.folder, self.run_id, self.seen, self.record = folder, run_id, seen, record
        self.target_bytes, self.lease = target_bytes, lease
        self.staging = staging or f"{STAGING}/{run_id}"  # this attempt's staging folder (relative to the output)
        self.broken = False  # a commit failed after its intent may have been written: no more commits here
        self.stats = PartStats()
        self.error_examples: list[tuple[str, str]] = []
        self.duplicates_dropped = 0
        self.quarantined: list[str] = []
        self.error: BaseException | None = None
        self._lock = threading.Lock()

    def _files(self) -> list:
        return self.folder.files_under(self.staging, ".parquet")

    def commit(self, *, final: bool, min_bytes: int = 0) -> None:
        """Commit the staged files. After a failed commit this refuses (raises): that commit's intent may
        name the same staged files, and only the next run's recovery may decide whether it happened."""
        with self._lock:
            if self.broken:
                raise RuntimeError("an earlier commit of this attempt failed; the next run recovers it")
            files = self._files()
            if not files or sum(f.size for f in files) < min_bytes:
                return
            try:
                res = commit_staging(
                    self.folder,
                    files,
                    run_id=self.run_id,
                    seen=self.seen,
                    update_run=self.record.update,
                    final=final,
                    target_bytes=self.target_bytes,
                    before_publish=self.lease.check,
                )
            except BaseException:
                self.broken = True
                raise
            self.stats.add(res.stats)
            self.error_examples = (self.error_examples + res.error_examples)[:5]
            self.duplicates_dropped += res.duplicates_dropped
            self.quarantined += res.quarantined

    def tick(self) -> bool:
        try:
            self.commit(final=False, min_bytes=self.target_bytes)
        except BaseException as e:  # surfaced by the driver after the dataset finishes
            log.exception("background commit failed")
            self.error = e
            return False
        return True

    def rows_in_flight(self, cache: dict[str, int]) -> int:
        """Rows staged but not committed yet (footers only; ``cache`` remembers files already read)."""
        total = 0
        for f in self._files():
            if f.path not in cache:
                try:
                    with self.folder.fs.open(f.path, "rb") as fh:
                        cache[f.path] = pq.ParquetFile(fh).metadata.num_rows
                except Exception:  # still being written, or just committed
                    continue
            total += cache[f.path]
        return total


class ProgressLine(BackgroundLoop):
    """Images done, images/s and ETA while the dataset runs: one line redrawn every 2 s on a terminal,
    a plain line every 30 s otherwise (``ray job logs``, CI), and a last one when the dataset ends.

    "Done" is the larger of the rows the model stage has produced (a :class:`ProgressCounter` actor
    that :func:`_execute` attaches as ``counter``) and the rows staged or committed: staging files
    appear only when a whole block is written, which in a small job is at its very end.
    """

    thread_name = "ntt-progress"
    intervals_s = (2.0, 30.0)  # (terminal, plain lines)

    def __init__(
        self, committer: StagingCommitter, total: int, echo: Callable[[str], None], *, tty: bool | None = None
    ):
        self.tty = sys.stderr.isatty() if tty is None else tty
        super().__init__(self.intervals_s[0] if self.tty else self.intervals_s[1])
        self.committer, self.total, self.echo = committer, total, echo
        self.counter = None  # a ProgressCounter actor handle, set by _execute once Ray is up
        self._produced = 0
        self._cache: dict[str, int] = {}
        self._t0 = time.perf_counter()

    def produced(self) -> int:
        """Rows the model stage reported (the last value read when the counter does not answer)."""
        if self.counter is not None:
            try:
                import ray

                self._produced = max(self._produced, int(ray.get(self.counter.count.remote(), timeout=10)))
            except Exception:  # progress is best-effort
                pass
        return self._produced

    def line(self) -> str:
        staged = self.committer.stats.rows + self.committer.rows_in_flight(self._cache)
        done = min(self.total, max(staged, self.produced()))
        elapsed = time.perf_counter() - self._t0
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else None
        eta_text = (
            "?"
            if eta is None
            else (f"{eta / 3600:.1f} h" if eta > 5400 else f"{eta / 60:.1f} min" if eta > 90 else f"{eta:.0f} s")
        )
        pct = 100.0 * done / self.total if self.total else 100.0
        return f"progress: {done:,}/{self.total:,} images ({pct:.1f}%), {rate:.2f} images/s, ETA {eta_text}"

    def tick(self) -> None:
        try:
            text = self.line()
        except Exception:  # progress is best-effort
            return
        if self.tty:
            sys.stderr.write("\r" + text.ljust(100)[:100])
            sys.stderr.flush()
        else:
            self.echo(text)

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        self.tick()  # the final count, also for a job shorter than one interval
        self.counter = None
        if self.tty:
            sys.stderr.write("\n")


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
    lease = folder.lease({"run_id": run_id}, ttl_s=cfg.lease_ttl_s).acquire()
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

    # 1. finish or undo half-done commits; 2. check the parts; 3. commit what dead attempts staged
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
                _execute(
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
        elapsed = time.perf_counter() - t0
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
                run["cluster_resources"] = {
                    k: v for k, v in ray.cluster_resources().items() if not k.startswith("node:")
                }
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
    lease.check()  # a run that lost its lease (even after its last commit) does not report success

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


def _decode_rows(cfg: JobConfig) -> int:
    """Images per decode task call: enough to keep ``read_concurrency`` reads in flight, within a block."""
    return max(cfg.batch_size, min(cfg.read_concurrency, cfg.block_rows))


def _decode_memory_bytes(cfg: JobConfig, cluster_memory: float | None = None) -> int:
    """Memory to reserve per decode task.

    A task decodes its batch one image at a time: at most one image at the pixel limit (capped at
    50 MP) is in flight, twice over while PIL converts it, plus the batch's decoded outputs
    (budgeted at 12 MP each) and the bytes of the reads in flight (``read_buffer_mb``). Capped at
    a quarter of the cluster's memory resource, so a large batch can never ask for more than a
    node has (the task would wait forever).
    """
    one = min(cfg.max_pixels, 50_000_000) * 3
    need = 2 * one + _decode_rows(cfg) * 12_000_000 * 3 + (cfg.read_buffer_mb << 20) + (64 << 20)
    if cluster_memory:
        need = min(need, int(cluster_memory / 4))
    return int(need)


def read_todo_file(batch: dict, *, out: str, storage_options: dict):
    """Ray Data stage: one todo file (``_ntt/todo/<run_id>/todo-*.parquet``) → its rows (image_id, image_uri)."""
    import pyarrow.parquet as _pq

    folder = OutputFolder(out, storage_options)
    tables = []
    for path in batch["todo"]:
        with folder.fs.open(str(path), "rb") as f:
            tables.append(_pq.read_table(f))
    return pa.concat_tables(tables)


def _execute(
    cfg: JobConfig,
    plan: Plan,
    bank,
    run_id: str,
    folder: OutputFolder,
    model_stage=None,
    *,
    verbose: bool = True,
    staging: str | None = None,
    lease=None,
    progress: ProgressLine | None = None,
) -> None:
    """The Ray Data pipeline over the plan's todo files; rows land in ``<out>/<staging>``
    (``_ntt/staging/g<generation>-<run_id>/``), written through a filesystem that refuses new files
    once ``lease``'s generation no longer holds the output (:class:`~ntt_batch.output.fencing.FencedFSHandler`).
    The model stage reports the rows it produces to a :class:`ProgressCounter` that ``progress`` reads."""
    import ray
    import ray.data

    model_stage = model_stage or SegmentActor
    init_ray(cfg.ray_address, verbose=verbose)
    gpus = ray.cluster_resources().get("GPU", 0)
    bank_ref = ray.put(bank)  # broadcast once; actors receive the reference, never a copy per batch
    counter = ray.remote(num_cpus=0)(ProgressCounter).remote()
    if progress is not None:
        progress.counter = counter
    import pyarrow.fs as _pafs

    if lease is not None:  # the writer's filesystem (custom S3 endpoints and credentials work), fenced
        handler = FencedFSHandler(folder.fs, folder.path(LOCK_JSON), lease.generation, folder.uri)
        pafs = _pafs.PyFileSystem(handler)
    else:
        pafs, _ = folder.pyarrow_fs()
    # One todo file is one block (plan sizes them: block_rows rows, or more for huge jobs), read by a
    # small task of its own: decoding starts at once and fans out, no per-file metadata pass on the
    # driver (read_parquet's) and no repartition stage competing with decoding for CPUs.
    if isinstance(plan, ShardPlan):  # one reading task per shard (pipeline.shard_plan)
        ds = shard_dataset(cfg, plan, run_id)
    else:
        ds = ray.data.from_items([{"todo": p} for p in plan.todo_paths], override_num_blocks=len(plan.todo_paths))
        ds = ds.map_batches(
            read_todo_file,
            batch_size=1,
            batch_format="numpy",
            num_cpus=0.25,
            fn_kwargs={"out": cfg.out, "storage_options": cfg.storage_options},
        )
    # Decode tasks reserve memory for a full-size decode; that remote arg also differs from the
    # actors', so Ray does not fuse decoding into the actors: CPU decoding overlaps with model work.
    ds = ds.map_batches(
        decode_batch,
        batch_size=_decode_rows(cfg),
        batch_format="numpy",
        num_cpus=1,
        memory=_decode_memory_bytes(cfg, ray.cluster_resources().get("memory")),
        fn_kwargs={
            "storage_options": cfg.storage_options,
            "max_pixels": cfg.max_pixels,
            "read_concurrency": cfg.read_concurrency,
            "read_buffer_mb": cfg.read_buffer_mb,
        },
    )
    ds = ds.map_batches(
        model_stage,
        batch_size=cfg.batch_size,
        batch_format="pyarrow",
        # up to 4 batches queued per actor: decoded images wait at the GPU instead of the GPU waiting for them
        compute=ray.data.ActorPoolStrategy(size=cfg.num_actors, max_tasks_in_flight_per_actor=4),
        num_gpus=1 if gpus >= 1 else 0,
        num_cpus=cfg.actor_num_cpus,
        fn_constructor_kwargs={
            "bank_holder": [bank_ref],
            "sam2_name": cfg.sam2,
            "segmenter": asdict(cfg.segmenter),
            "checkpoint_dir": cfg.checkpoint_dir,
            "download": cfg.download,
            "run_id": run_id,
            "num_threads": max(1, int(cfg.actor_num_cpus)),
            "progress": counter,
        },
    )
    # Workers write small staging files as blocks finish; the driver commits them into large parts.
    target = folder.path(staging) if staging else folder.staging(run_id)
    ds.write_parquet(target, filesystem=pafs, max_rows_per_file=cfg.block_rows)
