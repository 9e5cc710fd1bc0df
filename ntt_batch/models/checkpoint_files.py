"""Reading checkpoint files safely: ``torch.load(weights_only=True)`` with one-line errors.

The model implementations (``dinov2``, ``dinov3``, ``sam2_proposer``) read their files through
:func:`load_checkpoint_file`; ``checkpoints`` (find, download, verify) and the model families'
registries sit above them, so this module depends on the built-in checkpoint table only.
"""

from __future__ import annotations

import os
from pathlib import Path


class CheckpointFileError(ValueError):
    """A file that should hold model weights is not a readable PyTorch checkpoint (the message names it)."""


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
    from .registry import CHECKPOINTS  # the built-in models (a plug-in's file gets the general advice)

    name = next((s.name for s in CHECKPOINTS.values() if s.filename == Path(path).name), None)
    if name is None:
        return "use the official checkpoint file (`ntt-batch checkpoints list` shows names, URLs and sha256)"
    return (
        f"delete it and run `ntt-batch checkpoints download --model {name}` (the official file, sha256-verified), "
        f"or for a smoke run `ntt-batch checkpoints random --model {name} --out DIR`"
    )
