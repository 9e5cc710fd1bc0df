"""Resolve, verify and load the models; write random-weight checkpoints in official layouts."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..storage.atomic import atomic_local_file
from .checkpoints import ResolvedCheckpoint, resolve_checkpoint
from .encoders import build_encoder, load_encoder_state_dict, random_encoder_state_dict
from .registry import get_spec
from .sam2_proposer import Sam2Proposer, build_sam2_proposer, load_sam2_state_dict, random_sam2_state_dict


def load_sam2(
    name: str, *, checkpoint_dir: str | None = None, download: bool = True, add_no_mem_embed: bool = False
) -> tuple[Sam2Proposer, ResolvedCheckpoint]:
    """The SAM 2 proposer ``name`` from its (verified) checkpoint file."""
    get_spec(name, "sam2")
    ckpt = resolve_checkpoint(name, checkpoint_dir=checkpoint_dir, download=download)
    proposer = build_sam2_proposer(name, load_sam2_state_dict(ckpt.path), add_no_mem_embed=add_no_mem_embed)
    return proposer, ckpt


def load_encoder(
    name: str, *, checkpoint_dir: str | None = None, download: bool = True
) -> tuple[torch.nn.Module, ResolvedCheckpoint]:
    """The image encoder ``name`` (any family in ``models.encoders``) from its (verified) checkpoint file."""
    get_spec(name, "encoder")
    ckpt = resolve_checkpoint(name, checkpoint_dir=checkpoint_dir, download=download)
    return build_encoder(name, load_encoder_state_dict(name, ckpt.path)).eval(), ckpt


def write_random_checkpoint(name: str, out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """Random-initialised weights for ``name`` saved exactly as the official file would be.

    SAM2: ``{"model": state_dict}`` in ``<name>.pt``; encoders: a plain state dict under the
    official file name (``dinov2_vits14_pretrain.pth``, ``dinov3_vits16_pretrain_lvd1689m-08c60483.pth``).
    Written to a temporary name and renamed, so a partial file never looks complete.
    """
    spec = get_spec(name)
    if spec.family == "sam2":
        obj = {"model": random_sam2_state_dict(name, seed)}
    else:
        obj = random_encoder_state_dict(name, seed)
    dest = Path(out_dir) / spec.filename
    with atomic_local_file(dest) as f:
        torch.save(obj, f)
    return dest
