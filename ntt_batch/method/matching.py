"""Matchers: how candidate masks are compared with the memory bank (method.md §4.3-4.4).

A matcher takes one image's candidate masks on the low-res grid and the encoder's patch features
and returns, per candidate, its feature vector, its best class and that class's score:

    match(masks [N, h, w] bool, patch_features [gh, gw, D], prototypes [C, D], fast) ->
        (mask_features [N, D] unit vectors, semantic_scores [N] float32 >= 0, labels [N] int64)

``semantic_scores`` 0 means "no similarity" (dropped after NMS, §4.5). The method's matcher is
:class:`PrototypeMatcher`; :class:`NegativeAwareMatcher` is the authors' negative-reference mode
(docs/negative_references.md), used only when the settings ask for it (``use_negatives``) and the
bank holds negatives (:func:`build_matcher`). Another (e.g. a k-NN over instance prototypes) is one
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


def negative_similarity(
    mask_features: Tensor, negative_prototypes: Tensor, negative_labels: Tensor, num_classes: int
) -> Tensor:
    """Per class, the best clamped cosine to that class's negative references: [N, D] → [N, C].

    ``sim_neg[n, c] = max_k max(0, f_n · q[c,k])`` (the authors' ``sim_neg.clamp(min=0).max(-1)``
    in ``_compute_sim_global_avg_with_neg``), 0 for a class without negatives.

    Args:
        mask_features: [N, D] unit vectors.
        negative_prototypes: [Rn, D] unit vectors (normalised negative instance prototypes).
        negative_labels: [Rn] int64 class index of each.
        num_classes: C.
    """
    sim = (mask_features @ negative_prototypes.T).clamp(min=0.0)  # [N, Rn]
    out = sim.new_zeros(sim.shape[0], num_classes)
    index = negative_labels[None].expand(sim.shape[0], -1)
    return out.scatter_reduce(1, index, sim, reduce="amax", include_self=True)  # sim >= 0: max(0, ·) changes nothing


def negative_decayed_similarity(sim_pos: Tensor, sim_neg: Tensor, sigma: float) -> Tensor:
    """``sim_pos · exp(−max(sim_neg − sim_pos, 0) / σ)``, elementwise on [N, C] (the authors' formula,
    written as their code writes it). A class without negatives (sim_neg 0) keeps sim_pos exactly."""
    return sim_pos * torch.exp(-1.0 * (sim_neg - sim_pos).clamp(min=0.0) / sigma)


def _pooled_features(masks: Tensor, patch_features: Tensor, fast: bool) -> Tensor:
    """§4.3-4.4 mask features [N, D] (NaN rows for empty masks), by either pooling (see PrototypeMatcher)."""
    if fast:
        return pool_mask_features_separable(masks, patch_features)  # [N, D]
    dense = upsample_features(patch_features, tuple(masks.shape[-2:]))  # [h·w, D]
    return pool_mask_features(masks, dense)  # [N, D]; NaN rows for empty masks


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
        feats = _pooled_features(masks, patch_features, fast)  # [N, D]
        sim = class_similarity(feats, prototypes)  # [N, C]
        sim = torch.nan_to_num(sim, nan=0.0)  # empty mask: no similarity (dropped after NMS)
        sem, label = sim.topk(1, dim=1)  # topk, not argmax: the reference's tie-breaking (§8.19)
        return feats, sem[:, 0], label[:, 0]


@dataclass(frozen=True, eq=False)
class NegativeAwareMatcher:
    """The authors' negative-reference matching (``_compute_sim_global_avg_with_neg``, called with
    σ = 0.8; docs/negative_references.md): the same mask features as :class:`PrototypeMatcher`,
    each class's clamped cosine decayed by how much closer the mask is to that class's negative
    references, then the best class by ``topk``::

        sim_pos = max(0, f · P[c]);  sim_neg = max_k max(0, f · q[c,k])
        score[c] = sim_pos · exp(−max(sim_neg − sim_pos, 0) / σ)

    A class without negatives scores exactly as with :class:`PrototypeMatcher`.

    Args:
        negative_prototypes: [Rn, D] unit vectors (the bank's negative instance prototypes, normalised).
        negative_labels: [Rn] int64 class index of each.
        sigma: σ > 0.
    """

    negative_prototypes: Tensor
    negative_labels: Tensor
    sigma: float = 0.8
    name: str = "negative-aware"

    def match(
        self, masks: Tensor, patch_features: Tensor, prototypes: Tensor, fast: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        feats = _pooled_features(masks, patch_features, fast)  # [N, D]
        sim_pos = class_similarity(feats, prototypes)  # [N, C]
        sim_neg = negative_similarity(feats, self.negative_prototypes, self.negative_labels, prototypes.shape[0])
        sim = negative_decayed_similarity(sim_pos, sim_neg, self.sigma)
        sim = torch.nan_to_num(sim, nan=0.0)  # empty mask: no similarity (dropped after NMS)
        sem, label = sim.topk(1, dim=1)  # as the authors' forward_test: topk over the decayed scores
        return feats, sem[:, 0], label[:, 0]


MATCHERS: dict[str, type] = {"prototype": PrototypeMatcher, "negative-aware": NegativeAwareMatcher}


def check_negatives_available(config, bank, where: str = "the memory bank") -> None:
    """Refuse ``use_negatives`` with a bank that has no negative references (callers check it before loading
    any model); the message says how to get some."""
    if config.use_negatives and not bank.has_negatives:
        raise ValueError(
            f"use_negatives is set but {where} has no negative references: mine them with "
            "`ntt-batch memory negatives BANK`, or build the bank with `memory build --negatives FILE` "
            "(or leave --use-negatives off)"
        )


def build_matcher(config, bank, device: torch.device | str = "cpu") -> Matcher:
    """The matcher a segmenter's settings ask for: :class:`PrototypeMatcher` (the method's) unless
    ``config.use_negatives``, which needs a bank with negative references.

    Args:
        config: a ``SegmenterConfig`` (``use_negatives``, ``negative_sigma``).
        bank: the ``MemoryBank``.
        device: where the negative prototypes go (the segmenter's device).
    """
    if not config.use_negatives:
        return PrototypeMatcher()
    check_negatives_available(config, bank)
    return NegativeAwareMatcher(
        negative_prototypes=F.normalize(bank.negative_prototypes, p=2, dim=-1).to(device),
        negative_labels=bank.negative_labels.to(device),
        sigma=float(config.negative_sigma),
    )


__all__ = [
    "MATCHERS",
    "Matcher",
    "NegativeAwareMatcher",
    "PrototypeMatcher",
    "build_matcher",
    "check_negatives_available",
    "class_similarity",
    "linear_interpolation_matrix",
    "negative_decayed_similarity",
    "negative_similarity",
    "pool_mask_features",
    "pool_mask_features_separable",
    "upsample_features",
]
