"""Matchers: how candidate masks are compared with the memory bank (method.md §4.3-4.4).

A matcher takes one image's candidate masks on the low-res grid and the encoder's patch features
and returns, per candidate, its feature vector, its best class and that class's score:

    match(masks [N, h, w] bool, patch_features [gh, gw, D], prototypes [C, D], fast) ->
        (mask_features [N, D] unit vectors, semantic_scores [N] float32 >= 0, labels [N] int64)

``semantic_scores`` 0 means "no similarity" (dropped after NMS, §4.5). The one matcher today is
the method's (:class:`PrototypeMatcher`); another (e.g. a k-NN over instance prototypes) is one
class here plus one :data:`MATCHERS` entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor


def upsample_features(patch_features: Tensor, size: tuple[int, int]) -> Tensor:
    """[gh, gw, D] patch features → [h·w, D] by bilinear upsampling (align_corners=False) (§4.3)."""
    x = patch_features.permute(2, 0, 1)[None]  # [1, D, gh, gw]
    up = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return up[0].flatten(1).T  # [h·w, D]


def pool_mask_features(masks: Tensor, dense_features: Tensor) -> Tensor:
    """Uniform average of the features under each binary mask, L2-normalised (§4.4).

    Args:
        masks: [N, h, w] bool.
        dense_features: [h·w, D].
    Returns:
        [N, D] unit vectors; an empty mask gives a row of NaN (as in the reference), which the
        caller treats as "no similarity".
    """
    m = masks.flatten(1).to(dense_features.dtype)  # [N, h·w]
    summed = m @ dense_features  # [N, D]
    mean = summed / m.sum(dim=1, keepdim=True)
    return mean / mean.norm(dim=1, keepdim=True)


def linear_interpolation_matrix(n_in: int, n_out: int, device=None) -> Tensor:
    """[n_out, n_in] weights W with ``W @ x`` = 1-D linear interpolation of x (align_corners=False).

    Bilinear upsampling is separable, so ``F.interpolate(X, (h, w), mode="bilinear")`` equals
    ``Wy @ X @ Wxᵀ`` with these matrices (up to float rounding).
    """
    eye = torch.eye(n_in, dtype=torch.float32, device=device)[None]  # [1, n_in (channels), n_in]
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0].T.contiguous()


def pool_mask_features_separable(masks: Tensor, patch_features: Tensor) -> Tensor:
    """:func:`pool_mask_features` over :func:`upsample_features`, without the upsampled features.

    ``Σ_q m[q]·Fup[q] = Σ_p (Wyᵀ·m·Wx)[p]·F[p]``: the mask is pushed down onto the patch grid with
    the transposed interpolation weights (N·h·w·gw MACs) instead of pulling the features up to
    h×w (N·h·w·D MACs plus a [h·w, D] buffer). Same result up to float rounding.

    Args:
        masks: [N, h, w] bool.
        patch_features: [gh, gw, D].
    Returns:
        [N, D] unit vectors; NaN rows for empty masks (as :func:`pool_mask_features`).
    """
    n, h, w = masks.shape
    gh, gw, d = patch_features.shape
    wy = linear_interpolation_matrix(gh, h, masks.device)  # [h, gh]
    wx = linear_interpolation_matrix(gw, w, masks.device)  # [w, gw]
    m = masks.to(patch_features.dtype)
    on_grid = wy.T @ (m @ wx)  # [N, gh, gw]
    summed = on_grid.reshape(n, gh * gw) @ patch_features.reshape(gh * gw, d)  # [N, D]
    mean = summed / m.flatten(1).sum(dim=1, keepdim=True)
    return mean / mean.norm(dim=1, keepdim=True)


def class_similarity(mask_features: Tensor, class_prototypes: Tensor) -> Tensor:
    """Cosine similarity to each class prototype, clamped at 0: [N, D] × [C, D] → [N, C] (§4.4)."""
    return (mask_features @ class_prototypes.T).clamp(min=0)


class Matcher(Protocol):
    """Candidate masks × memory bank → (features [N, D], semantic scores [N], labels [N])."""

    name: str

    def match(
        self, masks: Tensor, patch_features: Tensor, prototypes: Tensor, fast: bool
    ) -> tuple[Tensor, Tensor, Tensor]: ...


@dataclass(frozen=True)
class PrototypeMatcher:
    """The method's matching (§4.3-4.4): bilinear-upsampled patch features, uniform mask pooling,
    clamped cosine to each class prototype, best class by ``topk`` (the reference's tie-breaking,
    §8.19). ``fast`` pools through the separable interpolation weights (same values up to float
    rounding) instead of materialising the [h·w, D] upsampled features."""

    name: str = "prototype"

    def match(
        self, masks: Tensor, patch_features: Tensor, prototypes: Tensor, fast: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        if fast:
            feats = pool_mask_features_separable(masks, patch_features)  # [N, D]
        else:
            dense = upsample_features(patch_features, tuple(masks.shape[-2:]))  # [h·w, D]
            feats = pool_mask_features(masks, dense)  # [N, D]; NaN rows for empty masks
        sim = class_similarity(feats, prototypes)  # [N, C]
        sim = torch.nan_to_num(sim, nan=0.0)  # empty mask: no similarity (dropped after NMS)
        sem, label = sim.topk(1, dim=1)  # topk, not argmax: the reference's tie-breaking (§8.19)
        return feats, sem[:, 0], label[:, 0]


MATCHERS: dict[str, type] = {"prototype": PrototypeMatcher}


__all__ = [
    "MATCHERS",
    "Matcher",
    "PrototypeMatcher",
    "class_similarity",
    "linear_interpolation_matrix",
    "pool_mask_features",
    "pool_mask_features_separable",
    "upsample_features",
]
