"""Mask proposers behind one interface: what proposes candidate masks from a prompt grid (method.md §4.2).

The segmenter needs only this of a proposer (SAM 2 / 2.1 today, :class:`~ntt_batch.models.sam2_proposer.Sam2Proposer`):

* ``image_size``: the square input side S it takes (1024 for SAM 2);
* ``to(device)``: moves its weights (an ``nn.Module``'s);
* ``encode(images [B, 3, S, S] float RGB in [0, 1])`` → batch features with ``select(i)`` giving
  image i's features (batch dimension kept, size 1);
* ``decode_points(features_of_one_image, points [N, 2] (x, y) in input pixels)`` →
  ``(logits [N, 3, h, w], predicted IoU [N, 3])``: three multimask outputs per click;
* ``point_decoder()``: an optional faster decoder computing the same thing
  (:class:`~ntt_batch.models.sam2_point_decoder.PointGridDecoder`), or None — the segmenter then
  runs ``decode_points``;
* ``decode_boxes(features_of_one_image, boxes [N, 4] xyxy in input pixels)`` →
  ``(logits [N, 1, h, w], predicted IoU [N, 1])``: only needed for references given as boxes
  (method.md §5.4).

A *proposer family* (:class:`ProposerFamily`) is an entry of :data:`PROPOSERS`: its checkpoints and
one callable, ``implementation``, that imports the family's module and returns its
:class:`ProposerBackend` (``build``, ``load_state_dict``, ``random_checkpoint``). Another proposer
(SAM-HQ, EfficientViT-SAM, …) is one module implementing this plus one ``PROPOSERS.register`` entry
below, or, from a third-party package, the same entry under the entry point group
``ntt_batch.proposers`` (``docs/extending.md``). This module does not import torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..plugins import Registry
from .registry import CHECKPOINTS, CheckpointSpec, family_specs

if TYPE_CHECKING:
    from torch import Tensor


class ProposerFeatures(Protocol):
    """A batch of encoded images."""

    def select(self, i: int) -> ProposerFeatures:
        """Image ``i``'s features (batch dimension kept, size 1)."""
        ...


class MaskProposer(Protocol):
    """See the module docstring."""

    image_size: int

    def to(self, device: Any) -> MaskProposer: ...

    def encode(self, images: Tensor) -> ProposerFeatures: ...

    def decode_points(self, features: ProposerFeatures, points: Tensor) -> tuple[Tensor, Tensor]: ...

    def point_decoder(self) -> Any | None: ...

    def decode_boxes(self, features: ProposerFeatures, boxes: Tensor) -> tuple[Tensor, Tensor]: ...


@dataclass(frozen=True)
class ProposerBackend:
    """What a proposer family's module provides.

    Attributes:
        build: ``build(name, state_dict | None, **options)`` → a :class:`MaskProposer` (eval mode);
            options: ``add_no_mem_embed`` (SAM 2's, method.md §8.1).
        load_state_dict: ``load_state_dict(path)`` → the state dict of an official checkpoint file.
        random_checkpoint: ``random_checkpoint(name, seed)`` → what the official file holds, with
            random weights (``torch.save``d under the official file name by ``checkpoints random``).
    """

    build: Callable[..., Any]
    load_state_dict: Callable[[Any], dict]
    random_checkpoint: Callable[[str, int], Any]


@dataclass(frozen=True)
class ProposerFamily:
    """One proposer line (SAM 2 / 2.1): its checkpoints and its implementation.

    Attributes:
        name: family name (its :data:`PROPOSERS` name and its checkpoints' ``CheckpointSpec.family``).
        checkpoints: its models' checkpoint files, one :class:`CheckpointSpec` per model name.
        implementation: imports the family's module (torch) and returns its :class:`ProposerBackend`.
    """

    name: str
    checkpoints: tuple[CheckpointSpec, ...]
    implementation: Callable[[], ProposerBackend]


def _check_family(name: str, family: ProposerFamily) -> None:
    if not isinstance(family, ProposerFamily):
        raise TypeError(f"proposer family {name!r}: expected a ProposerFamily, got {type(family).__name__}")
    if family.name != name or not family.checkpoints or not callable(family.implementation):
        raise ValueError(f"proposer family {name!r}: needs name {name!r}, checkpoints and an implementation callable")
    for spec in family.checkpoints:
        if not isinstance(spec, CheckpointSpec) or spec.family != name:
            raise ValueError(f"proposer family {name!r}: {spec!r} is not a CheckpointSpec of family {name!r}")
        if spec.name in CHECKPOINTS and CHECKPOINTS[spec.name] is not spec:
            raise ValueError(f"proposer family {name!r}: model name {spec.name!r} is taken by a built-in model")


#: Proposer families by name: SAM 2 / 2.1, then the ``ntt_batch.proposers`` plug-ins.
PROPOSERS: Registry[ProposerFamily] = Registry("ntt_batch.proposers", "proposer family", check=_check_family)


def _sam2() -> ProposerBackend:
    from . import sam2_proposer as sp

    return ProposerBackend(
        sp.build_sam2_proposer,
        sp.load_sam2_state_dict,
        lambda name, seed: {"model": sp.random_sam2_state_dict(name, seed)},  # the official file: {"model": ...}
    )


PROPOSERS.register("sam2", ProposerFamily("sam2", family_specs("sam2"), _sam2))


def proposer_spec(name: str) -> CheckpointSpec:
    """The checkpoint of proposer model ``name`` (the built-in table, then the plug-in families'); an
    unknown name lists the valid ones."""
    spec = CHECKPOINTS.get(name)
    if spec is not None and spec.family in PROPOSERS:
        return spec
    for family in PROPOSERS.values():
        for spec in family.checkpoints:
            if spec.name == name:
                return spec
    raise ValueError(f"unknown proposer model {name!r}; valid names: {', '.join(proposer_models())}")


def proposer_family(name: str) -> ProposerFamily:
    """The family of proposer model ``name``; an unknown name lists the valid ones."""
    return PROPOSERS[proposer_spec(name).family]


def proposer_models() -> list[str]:
    """Every proposer model name: SAM 2 / 2.1 in table order, then the plug-ins'."""
    names = [n for n, s in CHECKPOINTS.items() if s.family in PROPOSERS]
    names += [s.name for family in PROPOSERS.values() for s in family.checkpoints]
    return list(dict.fromkeys(names))


__all__ = [
    "PROPOSERS",
    "MaskProposer",
    "ProposerBackend",
    "ProposerFamily",
    "ProposerFeatures",
    "proposer_family",
    "proposer_models",
    "proposer_spec",
]
