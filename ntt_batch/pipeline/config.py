"""The batch job's settings (:class:`JobConfig`: the job file's keys, validated at the edge) and its inputs."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from ..method.config import (
    ConfigError,
    SegmenterConfig,
    check_config_types,
    config_from_dict,
    setting,
)
from ..models.registry import DEFAULT_SAM2, SAM2_NAMES, get_spec
from ..output.table_common import PublishError, PublishSpec
from ..sources import InputSpec
from ..sources.ids import normalise_extensions
from ..storage.fs import (
    InputImage,
    StorageOptionsError,
    absolute_uri,
    check_storage_options,
    redact_options,
)
from ..storage.images import DEFAULT_MAX_PIXELS
from .bank_prep import ReferencesSpec
from .plan import list_inputs
from .shard_plan import check_shard_settings

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


def input_spec(cfg: JobConfig) -> InputSpec:
    """Where the job's inputs come from (the job's own output is never an input)."""
    return InputSpec.from_job(cfg, extensions=normalise_extensions(cfg.extensions), exclude_prefix=cfg.out)


def resolve_inputs(cfg: JobConfig) -> list[InputImage]:
    """The job's inputs as a list (small jobs and tests; the job itself streams them, see ``plan``)."""
    return list_inputs(input_spec(cfg), cfg.storage_options, limit=cfg.limit)
