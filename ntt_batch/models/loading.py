"""Resolve, verify and load the two models; write random-weight checkpoints in official layouts."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .checkpoints import ResolvedCheckpoint, resolve_checkpoint
from .dinov2 import DinoV2Encoder, build_dinov2, load_state_dict_file, random_official_state_dict
from .registry import get_spec
from .sam2_proposer import Sam2Proposer, build_sam2_proposer, load_sam2_state_dict, random_sam2_state_dict


def load_sam2(
    name: str, *, checkpoint_dir: str | None = None, download: bool = True, add_no_mem_embed: bool = False
) -> tuple[Sam2Proposer, ResolvedCheckpoint]:
    ckpt = resolve_checkpoint(name, checkpoint_dir=checkpoint_dir, download=download)
    get_spec(name, "sam2")
    proposer = build_sam2_proposer(name, load_sam2_state_dict(ckpt.path), add_no_mem_embed=add_no_mem_embed)
    return proposer, ckpt


def load_encoder(
    name: str, *, checkpoint_dir: str | None = None, download: bool = True
) -> tuple[DinoV2Encoder, ResolvedCheckpoint]:
    get_spec(name, "dinov2")
    ckpt = resolve_checkpoint(name, checkpoint_dir=checkpoint_dir, download=download)
    return build_dinov2(name, load_state_dict_file(ckpt.path)).eval(), ckpt


def write_random_checkpoint(name: str, out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """Random-initialised weights for ``name`` saved exactly as the official file would be.

    SAM2: ``{"model": state_dict}`` in ``<name>.pt``; DINOv2: a plain state dict in
    ``<name>_pretrain.pth``. Written to a temporary name and renamed, so a partial file never
    looks complete.
    """
    spec = get_spec(name)
    if spec.family == "sam2":
        obj = {"model": random_sam2_state_dict(name, seed)}
    else:
        obj = random_official_state_dict(name, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dest = out / spec.filename
    tmp = out / (spec.filename + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, dest)
    return dest
