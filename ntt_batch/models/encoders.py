"""Image encoders behind one interface: the feature extractor of method.md §2.2 (references) and
§4.3 (targets). DINOv2 (the paper's, §6) and DINOv3 today.

The interface (:class:`ImageEncoder`) is what the memory bank and the segmenter use, nothing more:

* ``name``, ``patch_size`` (pixels per patch side), ``embed_dim`` (D);
* ``forward(images [B, 3, H, W] float RGB in [0, 1])`` with H, W multiples of ``patch_size``
  → patch features ``[B, H/patch, W/patch, D]``. Normalisation (mean/std) happens inside.

A *family* (:class:`EncoderFamily`) is one backbone line, an entry of :data:`ENCODERS`: its facts
(patch size and the default input side, ``native_image_size``, so that settings left at their
default — ``crop_size``, ``encoder_image_size``: None — resolve per encoder and no other module
hard-codes a patch size), its checkpoints (:class:`~ntt_batch.models.registry.CheckpointSpec`) and
one callable, ``implementation``, that imports the family's module and returns its
:class:`EncoderBackend`:

* ``build(name, state_dict | None, *, depth=None) -> ImageEncoder`` (eval mode, strict load);
* ``random_state_dict(name, seed, *, depth=None)`` (random weights in the official checkpoint
  layout, for smoke runs and tests);
* ``load_state_dict(path)`` (``torch.load(weights_only=True)`` of an official file);
* ``models``: its model names → architectures (with ``embed_dim``).

Adding a backbone family: one module (see ``models/dinov3.py``) and one ``ENCODERS.register`` entry
below (its facts, its checkpoints and a two-line function importing the module); a third-party
package registers the same :class:`EncoderFamily` under the entry point group
``ntt_batch.encoders`` instead (``docs/extending.md``). The module is imported on first use, so
``import ntt_batch.models.encoders`` stays light (no torch).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..plugins import Registry
from .registry import CHECKPOINTS, CheckpointSpec, family_specs

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
class EncoderBackend:
    """What an encoder family's module provides (see the module docstring).

    Attributes:
        models: model name → architecture (any object with ``embed_dim``, the feature width D).
        build: ``build(name, state_dict | None, *, depth=None)`` → an :class:`ImageEncoder` in eval mode.
        random_state_dict: ``random_state_dict(name, seed, *, depth=None)`` → random weights in the
            official layout (deterministic for ``seed``).
        load_state_dict: ``load_state_dict(path)`` → the state dict of an official checkpoint file.
    """

    models: Mapping[str, Any]
    build: Callable[..., Any]
    random_state_dict: Callable[..., dict]
    load_state_dict: Callable[[Any], dict]


@dataclass(frozen=True)
class EncoderFamily:
    """One backbone line: the facts settings resolve against, its checkpoints, and its implementation.

    Attributes:
        name: family name (its :data:`ENCODERS` name and its checkpoints' ``CheckpointSpec.family``).
        patch_size: pixels per patch side.
        native_image_size: the default input side for targets and reference crops (px, a
            multiple of ``patch_size``).
        checkpoints: its models' checkpoint files, one :class:`CheckpointSpec` per model name.
        implementation: imports the family's module (torch) and returns its :class:`EncoderBackend`.
    """

    name: str
    patch_size: int
    native_image_size: int
    checkpoints: tuple[CheckpointSpec, ...]
    implementation: Callable[[], EncoderBackend]


def _check_family(name: str, family: EncoderFamily) -> None:
    """Refuse an :data:`ENCODERS` entry that is not a consistent :class:`EncoderFamily`."""
    if not isinstance(family, EncoderFamily):
        raise TypeError(f"encoder family {name!r}: expected an EncoderFamily, got {type(family).__name__}")
    if family.name != name:
        raise ValueError(f"encoder family registered as {name!r} is named {family.name!r}; use one name")
    if not (
        family.patch_size > 0 and family.native_image_size > 0 and family.native_image_size % family.patch_size == 0
    ):
        raise ValueError(
            f"encoder family {name!r}: native_image_size {family.native_image_size} must be a positive multiple of "
            f"patch_size {family.patch_size}"
        )
    if not family.checkpoints or not callable(family.implementation):
        raise ValueError(f"encoder family {name!r}: needs at least one checkpoint and an implementation callable")
    for spec in family.checkpoints:
        if not isinstance(spec, CheckpointSpec) or spec.family != name:
            raise ValueError(f"encoder family {name!r}: {spec!r} is not a CheckpointSpec of family {name!r}")
        if spec.name in CHECKPOINTS and CHECKPOINTS[spec.name] is not spec:
            raise ValueError(f"encoder family {name!r}: model name {spec.name!r} is taken by a built-in model")


#: Encoder families by name: the built-ins below, then the ``ntt_batch.encoders`` plug-ins.
ENCODERS: Registry[EncoderFamily] = Registry("ntt_batch.encoders", "encoder family", check=_check_family)


def _dinov2() -> EncoderBackend:
    from . import dinov2

    return EncoderBackend(
        dinov2.DINOV2_MODELS, dinov2.build_dinov2, dinov2.random_official_state_dict, dinov2.load_state_dict_file
    )


def _dinov3() -> EncoderBackend:
    from . import dinov3

    return EncoderBackend(
        dinov3.DINOV3_MODELS, dinov3.build_dinov3, dinov3.random_official_state_dict, dinov3.load_state_dict_file
    )


# §6: DINOv2 at 518 px = 37 × 37 patches of 14 px (what the positional embedding was trained at).
ENCODERS.register("dinov2", EncoderFamily("dinov2", 14, 518, family_specs("dinov2"), _dinov2))
# DINOv3 (RoPE: no positional-embedding interpolation at any size): 512 px = 32 × 32 patches of 16 px.
ENCODERS.register("dinov3", EncoderFamily("dinov3", 16, 512, family_specs("dinov3"), _dinov3))


def encoder_spec(name: str) -> CheckpointSpec:
    """The checkpoint of encoder model ``name`` (the built-in table, then the plug-in families'); an
    unknown name lists the valid ones."""
    spec = CHECKPOINTS.get(name)
    if spec is not None and spec.family in ENCODERS:
        return spec
    for family in ENCODERS.values():
        for spec in family.checkpoints:
            if spec.name == name:
                return spec
    raise ValueError(f"unknown encoder model {name!r}; valid names: {', '.join(encoder_models())}")


def encoder_family(name: str) -> EncoderFamily:
    """The family of encoder model ``name``; an unknown name lists the valid ones."""
    return ENCODERS[encoder_spec(name).family]


def encoder_models() -> list[str]:
    """Every encoder model name: the built-ins in table order, then the plug-ins'."""
    names = [n for n, s in CHECKPOINTS.items() if s.family in ENCODERS]
    names += [s.name for family in ENCODERS.values() for s in family.checkpoints]
    return list(dict.fromkeys(names))


def encoder_embed_dim(name: str) -> int:
    """The feature width D of encoder ``name`` (from its architecture; no weights loaded)."""
    return int(encoder_family(name).implementation().models[name].embed_dim)


def build_encoder(name: str, state_dict: Mapping[str, Tensor] | None = None, *, depth: int | None = None):
    """The encoder ``name`` (eval mode, no grads) from an official-layout state dict (None: random init)."""
    return encoder_family(name).implementation().build(name, state_dict, depth=depth)


def random_encoder_state_dict(name: str, seed: int = 0, *, depth: int | None = None) -> dict[str, Tensor]:
    """Random weights for ``name`` in its official checkpoint layout (deterministic for ``seed``)."""
    return encoder_family(name).implementation().random_state_dict(name, seed, depth=depth)


def load_encoder_state_dict(name: str, path) -> dict[str, Tensor]:
    """An official checkpoint file of encoder ``name`` as a state dict (weights-only load)."""
    return encoder_family(name).implementation().load_state_dict(path)


__all__ = [
    "ENCODERS",
    "EncoderBackend",
    "EncoderFamily",
    "ImageEncoder",
    "build_encoder",
    "encoder_embed_dim",
    "encoder_family",
    "encoder_models",
    "encoder_spec",
    "load_encoder_state_dict",
    "random_encoder_state_dict",
]
