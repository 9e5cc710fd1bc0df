"""Find, download and verify checkpoint files.

Which checkpoints exist: :func:`all_checkpoints` and :func:`checkpoint_spec` read every model
family, built-in (``models/registry.py``) and plug-in (``ENCODERS``, ``PROPOSERS``).

Lookup order for a model ``name`` (file name from its :class:`CheckpointSpec`):

1. ``checkpoint_dir`` (CLI ``--checkpoint-dir`` or env ``NTT_CHECKPOINT_DIR``): pre-placed files,
   for offline clusters. Nothing is downloaded into it.
2. the cache directory (``NTT_CACHE_DIR``, default ``~/.cache/ntt_batch``).
3. a download into the cache, with a progress bar, written to a temporary file, verified against
   the registry's SHA-256, then renamed into place (so a killed download never leaves a file
   that looks complete).

A file found locally whose digest is not the official one is used, but loudly: a warning is
logged and the returned :class:`ResolvedCheckpoint` has ``official=False``, which every output
records (random-weight smoke checkpoints are exactly such files).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from ..hashing import file_sha256
from ..storage.atomic import atomic_local_file
from .checkpoint_files import CheckpointFileError, check_checkpoint_file, load_checkpoint_file  # noqa: F401 (re-exported)
from .encoders import encoder_models, encoder_spec
from .proposers import proposer_models, proposer_spec
from .registry import CheckpointSpec

log = logging.getLogger(__name__)

ENV_CHECKPOINT_DIR = "NTT_CHECKPOINT_DIR"
ENV_CACHE_DIR = "NTT_CACHE_DIR"
_CHUNK = 1 << 20


class CheckpointNotFoundError(FileNotFoundError):
    """A checkpoint is neither pre-placed, cached, nor downloadable."""


class ChecksumMismatchError(RuntimeError):
    """A downloaded file does not have the registry's SHA-256."""


@dataclass(frozen=True)
class ResolvedCheckpoint:
    """A checkpoint file on local disk, with its provenance (recorded in every output)."""

    name: str
    path: str
    sha256: str
    official: bool

    def to_json(self) -> dict:
        return asdict(self)


def checkpoint_spec(name: str, kind: str | None = None) -> CheckpointSpec:
    """The checkpoint of model ``name``, of any family (plug-ins included); an unknown name lists the valid ones.

    ``kind``: ``"encoder"`` or ``"proposer"`` to accept only those.
    """
    finders = {None: (proposer_spec, encoder_spec), "encoder": (encoder_spec,), "proposer": (proposer_spec,)}
    if kind not in finders:
        raise ValueError(f"unknown model kind {kind!r}: use 'encoder' or 'proposer'")
    for find in finders[kind]:
        try:
            return find(name)
        except ValueError:
            if kind is not None:
                raise
    raise ValueError(f"unknown model {name!r}; valid names: {', '.join(s.name for s in all_checkpoints())}")


def all_checkpoints() -> list[CheckpointSpec]:
    """Every known checkpoint: the built-in table's (in its order), then the plug-in families'."""
    return [proposer_spec(n) for n in proposer_models()] + [encoder_spec(n) for n in encoder_models()]


def default_cache_dir() -> Path:
    return Path(os.environ.get(ENV_CACHE_DIR) or Path.home() / ".cache" / "ntt_batch")


def cached_file_sha256(path: Path) -> str:
    """SHA-256 of ``path``, memoised in a ``<file>.sha256.json`` sidecar keyed by size and mtime.

    Hashing a 900 MB checkpoint takes seconds; every worker of a batch job resolves the same
    files, so the digest is computed once per file version. The sidecar is best effort: a
    read-only directory just means hashing every time.
    """
    st = path.stat()
    key = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    sidecar = path.with_name(path.name + ".sha256.json")
    try:
        data = json.loads(sidecar.read_text())
        if data.get("size") == key["size"] and data.get("mtime_ns") == key["mtime_ns"]:
            return str(data["sha256"])
    except (OSError, ValueError, KeyError):
        pass
    digest = file_sha256(path)
    try:
        sidecar.write_text(json.dumps({**key, "sha256": digest}))
    except OSError:
        pass
    return digest


def checkpoint_search_dirs(checkpoint_dir: str | os.PathLike | None, cache_dir: Path) -> list[Path]:
    """Where checkpoint files are looked for, in order: ``checkpoint_dir`` (else ``NTT_CHECKPOINT_DIR``),
    then the cache."""
    dirs: list[Path] = []
    explicit = checkpoint_dir or os.environ.get(ENV_CHECKPOINT_DIR)
    if explicit:
        dirs.append(Path(explicit).expanduser())
    dirs.append(cache_dir)
    return dirs


def _download(spec: CheckpointSpec, dest: Path, timeout_s: float) -> None:
    """Download ``spec.url`` to ``dest`` atomically, verifying SHA-256."""
    from tqdm.auto import tqdm

    h = hashlib.sha256()
    # The file becomes ``dest`` only when the block succeeds (the digest matched): an interrupted or
    # corrupt download never leaves a file that looks complete.
    with atomic_local_file(dest) as out, urllib.request.urlopen(spec.url, timeout=timeout_s) as resp:
        total = int(resp.headers.get("Content-Length") or spec.size_bytes or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {spec.filename}") as bar:
            for chunk in iter(lambda: resp.read(_CHUNK), b""):
                out.write(chunk)
                h.update(chunk)
                bar.update(len(chunk))
        digest = h.hexdigest()
        if not spec.matches_official(digest):
            raise ChecksumMismatchError(
                f"downloaded {spec.url} has sha256 {digest}, expected {spec.official_digest}; "
                "the file was discarded (corrupt transfer or a changed upstream file)"
            )


def resolve_checkpoint(
    name: str,
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    download: bool = True,
    timeout_s: float = 30.0,
) -> ResolvedCheckpoint:
    """Return a local, hashed checkpoint for model ``name``; download it if allowed and needed.

    Raises:
        CheckpointNotFoundError: with the file name, the URL and every directory looked in.
    """
    spec = checkpoint_spec(name)
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    dirs = checkpoint_search_dirs(checkpoint_dir, cache)
    for d in dirs:
        candidate = d / spec.filename
        if candidate.is_file():
            return _verified(spec, candidate)

    looked = ", ".join(str(d) for d in dirs)
    if not download:
        raise CheckpointNotFoundError(_missing_message(spec, looked, "downloads are disabled"))
    if spec.url is None:
        raise CheckpointNotFoundError(
            _missing_message(spec, looked, "its downloads are gated, there is no public address")
        )
    try:
        log.info("downloading %s from %s into %s", spec.filename, spec.url, cache)
        _download(spec, cache / spec.filename, timeout_s)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise CheckpointNotFoundError(_missing_message(spec, looked, f"download failed: {e}")) from e
    return ResolvedCheckpoint(spec.name, str(cache / spec.filename), spec.sha256, True)


def _verified(spec: CheckpointSpec, path: Path) -> ResolvedCheckpoint:
    digest = cached_file_sha256(path)
    official = spec.matches_official(digest)
    if not official:
        check_checkpoint_file(path)  # fail here (e.g. on the job's driver) rather than in every model worker
        log.warning(
            "CHECKPOINT NOT OFFICIAL: %s has sha256 %s but the official %s is %s. Results from these "
            "weights are not the paper's; this is recorded in every output (expected only for "
            "random-weight smoke checkpoints from `ntt-batch checkpoints random`).",
            path,
            digest,
            spec.filename,
            spec.official_digest,
        )
    return ResolvedCheckpoint(spec.name, str(path), digest, official)


def _missing_message(spec: CheckpointSpec, looked: str, why: str) -> str:
    if spec.url is None:
        digest = f"sha256 starts with {spec.sha256_prefix}" if spec.sha256_prefix else f"sha256 {spec.official_digest}"
        where = (
            f"request access at {spec.access or 'its publisher'} (licence: {spec.license}), download "
            f"{spec.filename} ({digest})"
        )
    else:
        where = f"download {spec.url} (sha256 {spec.sha256})"
    return (
        f"checkpoint {spec.filename!r} for model {spec.name!r} not found ({why}). "
        f"Looked in: {looked}. Either {where} and place it "
        f"as <dir>/{spec.filename}, then pass --checkpoint-dir <dir> or set {ENV_CHECKPOINT_DIR}; "
        f"or, for a smoke run without real weights, write random-initialised checkpoints with "
        f"`ntt-batch checkpoints random --model {spec.name} --out <dir>`."
    )
