"""Image encoders behind one interface: the feature extractor of method.md §2.2 (references) and
§4.3 (targets). DINOv2 (the paper's, §6) and DINOv3 today.

The interface (:class:`ImageEncoder`) is what the memory bank and the segmenter use, nothing more:

* ``name``, ``patch_size`` (pixels per patch side), ``embed_dim`` (D);
* ``forward(images [B, 3, H, W] float RGB in [0, 1])`` with H, W multiples of ``patch_size``
  → patch features ``[B, H/patch, W/patch, D]``. Normalisation (mean/std) happens inside.

A *family* (:class:`EncoderFamily`) is one module implementing a backbone line plus its facts:
patch size and the default input side (``native_image_size``), so that settings left at their
default (``crop_size``, ``encoder_image_size``: None) resolve per encoder and no other module
hard-codes a patch size. The module provides, under the names the entry gives:

* ``build(name, state_dict | None, *, depth=None) -> ImageEncoder`` (eval mode, strict load);
* ``random_official_state_dict(name, seed, *, depth=None)`` (random weights in the official
  checkpoint layout, for smoke runs and tests);
* ``load_state_dict_file(path)`` (``torch.load(weights_only=True)`` of an official file);
* a mapping of its model names to architectures.

Adding a backbone family: one module (see ``models/dinov3.py``), one :data:`ENCODER_FAMILIES`
entry here and its checkpoints in ``models/registry.py`` (file name, address, digest, licence).
The module is imported on first use, so ``import ntt_batch.models.encoders`` stays light.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Protocol

from .registry import ENCODER_NAMES, get_spec

if TYPE_CHECKING:  # importing this module does not import torch (the job's driver and dry runs use it)
    from torch import Tensor


class ImageEncoder(Protocol):
    """What an image encoder offers the method (see the module docstring)."""

    name: str
    patch_size: int
    embed_dim: int

    def __call__(self, images: Tensor) -> Tensor:
        """[B, 3, H, W] float in [0, 1] → [B, H/patch_size, W/patch_size, embed_dim]."""
        ...


@dataclass(frozen=True)
class EncoderFamily:
    """One backbone line: where it is implemented and the facts settings resolve against.

    Attributes:
        name: family name (the registry's ``CheckpointSpec.family``).
        module: the implementing module (imported on first use).
        patch_size: pixels per patch side.
        native_image_size: the default input side for targets and reference crops (px, a
            multiple of ``patch_size``).
        build: name of the module's builder function.
        models: name of the module's ``{model name: architecture}`` mapping.
    """

    name: str
    module: str
    patch_size: int
    native_image_size: int
    build: str
    models: str

    def implementation(self) -> ModuleType:
        return importlib.import_module(self.module)


ENCODER_FAMILIES: dict[str, EncoderFamily] = {
    # §6: DINOv2 at 518 px = 37 × 37 patches of 14 px (what the positional embedding was trained at).
    "dinov2": EncoderFamily("dinov2", "ntt_batch.models.dinov2", 14, 518, "build_dinov2", "DINOV2_MODELS"),
    # DINOv3 (RoPE: no positional-embedding interpolation at any size): 512 px = 32 × 32 patches of 16 px.
    "dinov3": EncoderFamily("dinov3", "ntt_batch.models.dinov3", 16, 512, "build_dinov3", "DINOV3_MODELS"),
}


def encoder_family(name: str) -> EncoderFamily:
    """The family of encoder model ``name``; an unknown name lists the valid ones."""
    return ENCODER_FAMILIES[get_spec(name, "encoder").family]


def encoder_models() -> list[str]:
    """Every encoder model name, in registry order."""
    return list(ENCODER_NAMES)


def encoder_embed_dim(name: str) -> int:
    """The feature width D of encoder ``name`` (from its architecture; no weights loaded)."""
    family = encoder_family(name)
    return int(getattr(family.implementation(), family.models)[name].embed_dim)


def build_encoder(name: str, state_dict: Mapping[str, Tensor] | None = None, *, depth: int | None = None):
    """The encoder ``name`` (eval mode, no grads) from an official-layout state dict (None: random init)."""
    family = encoder_family(name)
    return getattr(family.implementation(), family.build)(name, state_dict, depth=depth)


def random_encoder_state_dict(name: str, seed: int = 0, *, depth: int | None = None) -> dict[str, Tensor]:
    """Random weights for ``name`` in its official checkpoint layout (deterministic for ``seed``)."""
    return encoder_family(name).implementation().random_official_state_dict(name, seed, depth=depth)


def load_encoder_state_dict(name: str, path) -> dict[str, Tensor]:
    """An official checkpoint file of encoder ``name`` as a state dict (weights-only load)."""
    return encoder_family(name).implementation().load_state_dict_file(path)


__all__ = [
    "ENCODER_FAMILIES",
    "EncoderFamily",
    "ImageEncoder",
    "build_encoder",
    "encoder_embed_dim",
    "encoder_family",
    "encoder_models",
    "load_encoder_state_dict",
    "random_encoder_state_dict",
]
