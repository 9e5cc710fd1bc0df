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

Another proposer (SAM-HQ, EfficientViT-SAM, …) is one module implementing this plus a loader entry
in ``models/loading.py``.
"""

from __future__ import annotations

from typing import Any, Protocol

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


__all__ = ["MaskProposer", "ProposerFeatures"]
