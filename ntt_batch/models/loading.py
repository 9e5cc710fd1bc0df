"""Resolve, verify and load the models; write random-weight checkpoints in official layouts.

Every model is found through its family (``ENCODERS``, ``PROPOSERS``: built-ins and plug-ins alike).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..storage.atomic import atomic_local_file
from .checkpoints import ResolvedCheckpoint, checkpoint_spec, resolve_checkpoint
from .encoders import build_encoder, encoder_models, load_encoder_state_dict, random_encoder_state_dict
from .proposers import MaskProposer, proposer_family


def load_proposer(
    name: str, *, checkpoint_dir: str | None = None, download: bool = True, **options: Any
) -> tuple[MaskProposer, ResolvedCheckpoint]:
    """The mask proposer ``name`` (any ``PROPOSERS`` family) from its (verified) checkpoint file.

    ``options``: the family's build options (SAM 2: ``add_no_mem_embed``)."""
    backend = proposer_family(name).implementation()
    ckpt = resolve_checkpoint(name, checkpoint_dir=checkpoint_dir, download=download)
    return backend.build(name, backend.load_state_dict(ckpt.path), **options), ckpt


def load_sam2(
    name: str, *, checkpoint_dir: str | None = None, download: bool = True, add_no_mem_embed: bool = False
) -> tuple[MaskProposer, ResolvedCheckpoint]:
    """The SAM 2 proposer ``name`` from its (verified) checkpoint file (:func:`load_proposer`)."""
    checkpoint_spec(name, "proposer")
    return load_proposer(name, checkpoint_dir=checkpoint_dir, download=download, add_no_mem_embed=add_no_mem_embed)


def load_encoder(
    name: str, *, checkpoint_dir: str | None = None, download: bool = True
) -> tuple[torch.nn.Module, ResolvedCheckpoint]:
    """The image encoder ``name`` (any ``ENCODERS`` family) from its (verified) checkpoint file."""
    checkpoint_spec(name, "encoder")
    ckpt = resolve_checkpoint(name, checkpoint_dir=checkpoint_dir, download=download)
    return build_encoder(name, load_encoder_state_dict(name, ckpt.path)).eval(), ckpt


def write_random_checkpoint(name: str, out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """Random-initialised weights for ``name`` saved exactly as the official file would be.

    SAM2: ``{"model": state_dict}`` in ``<name>.pt``; encoders: a plain state dict under the
    official file name (``dinov2_vits14_pretrain.pth``, ``dinov3_vits16_pretrain_lvd1689m-08c60483.pth``).
    Written to a temporary name and renamed, so a partial file never looks complete.
    """
    spec = checkpoint_spec(name)
    if name in encoder_models():
        obj = random_encoder_state_dict(name, seed)
    else:
        obj = proposer_family(name).implementation().random_checkpoint(name, seed)
    dest = Path(out_dir) / spec.filename
    with atomic_local_file(dest) as f:
        torch.save(obj, f)
    return dest
