"""Find, download and verify checkpoint files.

Lookup order for a model ``name`` (file name from the registry):

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
from .registry import CheckpointSpec, get_spec

log = logging.getLogger(__name__)

ENV_CHECKPOINT_DIR = "NTT_CHECKPOINT_DIR"
ENV_CACHE_DIR = "NTT_CACHE_DIR"
_CHUNK = 1 << 20


class CheckpointNotFoundError(FileNotFoundError):
    """A checkpoint is neither pre-placed, cached, nor downloadable."""


class ChecksumMismatchError(RuntimeError):
    """A downloaded file does not have the registry's SHA-256."""


class CheckpointFileError(ValueError):
    """A file that should hold model weights is not a readable PyTorch checkpoint (the message names it)."""


@dataclass(frozen=True)
class ResolvedCheckpoint:
    """A checkpoint file on local disk, with its provenance (recorded in every output)."""

    name: str
    path: str
    sha256: str
    official: bool

    def to_json(self) -> dict:
        return asdict(self)


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
    spec = get_spec(name)
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
        from .registry import DINOV3_ACCESS

        where = (
            f"request access at {DINOV3_ACCESS} (licence: {spec.license}), download {spec.filename} "
            f"(sha256 starts with {spec.sha256_prefix})"
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


_CHECKED: set[tuple[str, int, int]] = set()  # (path, size, mtime_ns) of files check_checkpoint_file accepted


def check_checkpoint_file(path: str | os.PathLike) -> None:
    """Raise :class:`CheckpointFileError` unless ``path`` loads as a weights-only checkpoint; cheap.

    A zip-format checkpoint (what ``torch.save`` writes) is loaded memory-mapped: the pickle is
    checked, the tensor data is not read. Official files need no check (their sha256 is known);
    ``_verified`` calls this for the others, so a bad file stops a job on the driver, in one line.
    """
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key in _CHECKED:
        return
    with open(path, "rb") as f:
        zipped = f.read(4) == b"PK\x03\x04"
    load_checkpoint_file(path, mmap=zipped)
    _CHECKED.add(key)


def load_checkpoint_file(path: str | os.PathLike, *, mmap: bool = False):
    """``torch.load(path, map_location="cpu", weights_only=True)``, failing with one line that names the file.

    A file that is not a checkpoint (random bytes, a text or HTML page saved under the name, an
    empty or truncated download, a pickle carrying Python objects) raises
    :class:`CheckpointFileError` saying what the file is and how to get the right one, instead
    of PyTorch's long advice to load it with ``weights_only=False`` (which would execute it).
    """
    import warnings

    import torch

    path = os.fspath(path)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*pickle protocol.*")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except OSError:
        raise  # missing file, permissions: the OS message names the path
    except Exception as e:  # noqa: BLE001 - torch.load fails in many ways on a non-checkpoint
        raise CheckpointFileError(f"{path}: {_unreadable_reason(path, e)}; {_fix_hint(path)}") from None


def _unreadable_reason(path: str, error: Exception) -> str:
    import pickle
    import re

    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        head = b""
    text = str(error)
    if not head:
        return "not a checkpoint: the file is empty"
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if isinstance(error, pickle.UnpicklingError) and found:
        return (
            f"not a plain weights file: it holds Python objects ({found.group(1)}), which "
            "torch.load(weights_only=True) "
            "refuses to run"
        )
    if head.startswith(b"PK\x03\x04"):
        return "a damaged PyTorch checkpoint (incomplete or corrupt zip archive: an interrupted download or copy?)"
    if head[:1] == b"\x80":
        return "not a PyTorch checkpoint: a pickle that torch.load(weights_only=True) cannot read as tensors"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "not a checkpoint: the file is text (an error page or a placeholder saved under this name?)"
    return "not a PyTorch checkpoint (unrecognised content)"


def _fix_hint(path: str) -> str:
    from .registry import CHECKPOINTS

    name = next((s.name for s in CHECKPOINTS.values() if s.filename == Path(path).name), None)
    if name is None:
        return "use the official checkpoint file (`ntt-batch checkpoints list` shows names, URLs and sha256)"
    return (
        f"delete it and run `ntt-batch checkpoints download --model {name}` (the official file, sha256-verified), "
        f"or for a smoke run `ntt-batch checkpoints random --model {name} --out DIR`"
    )
