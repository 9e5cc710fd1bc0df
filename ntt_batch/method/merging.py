"""Mergers: how overlapping candidates of one class lower each other's scores (method.md §4.7).

A merger turns the NMS survivors' semantic scores into final scores. It receives the survivors
**in NMS order** (predicted IoU descending) with their exact same-class intersection counts
(:func:`ntt_batch.method.fullres.same_class_intersections`, or :func:`intersection_counts` from
dense masks) and returns one float32 score each. Two are offered:

* ``"soft"`` — :class:`SoftMerger`, the method's semantic-aware soft merging (§4.7, the default):
  ios_i = max_{j<i} |M_i ∩ M_j| / |M_i| · max(0, f_i·f_j); final_i = sem_i · (1 − ios_i)^exponent.
  It is :func:`ntt_batch.method.fullres.soft_merge_scores_from_counts`, called as is.
* ``"graph-diffusion"`` — :class:`GraphDiffusionMerger`, FSOD-VFM's graph-diffusion rescoring
  (Feng et al., "Few-Shot Object Detection with Vision Foundation Models and Graph Diffusion",
  ICLR 2026, arXiv 2602.03137; code: ``metric.py``, ``graph_diffusion_ios``). Per class, with the
  masks in rank order:

  * overlap graph E_ij = |M_i ∩ M_j| / |M_i| for j ranked above i (j < i), 0 elsewhere (the
    diagonal too);
  * prior w_i = max_j E_ij (0 for the first mask of a class);
  * π starts at 1/n_class; then π ← α·P·π + (1 − α)·w, at most ``steps`` times, stopping after
    the first iteration whose update has ||π − π_old||₂ < ``tol`` (per class);
  * final_i = sem_i · max(0, 1 − π_i)^exponent (FSOD-VFM's ``lamb``; defaults α = 0.3,
    steps = 30, exponent = 0.5 as its run scripts).

  The transition matrix P comes in two versions (``transition``):

  * ``"code"`` (default) — what ``metric.py`` computes: P = E. Its "row normalisation"
    ``P[idx] = iou_matrix[idx] / valid_rows[idx]`` divides by a boolean (i.e. by 1), so P is
    the overlap matrix itself; rows may sum to more than 1 (a mask covered by several
    higher-ranked masks) and π may exceed 1, which the max(0, ·) then turns into a score of 0.
  * ``"paper"`` — what the paper writes: P = E with each row divided by its sum (rows sum to 1,
    a zero row stays zero), a proper random-walk transition.

  Both Ps are strictly lower triangular (nilpotent), so the iteration reaches its fixed point
  exactly after at most n_class + 1 steps; ``steps`` and ``tol`` only matter for longer chains.
  Unlike soft merging, the DINOv2 features play no part (FSOD-VFM's rescoring uses masks only).

The arithmetic is float32 like the reference code (counts and areas as float32; exact whenever
every count is < 2^24), one class at a time, with the reference's operations in its order, so
the penalties and scores equal ``graph_diffusion_ios``'s (and its caller's score decay) bit for
bit: ``tests/test_merging.py`` checks this on CPU against a transcription of it (not run on CUDA,
where the same operations should agree as well). Cost: per class with ≥ 2 candidates, up to
``steps`` iterations of an n×n mat-vec, each with one host sync for the stopping test.

Adding a merger: one class with ``name``, ``from_config`` and ``merge_scores``, plus one entry in
:data:`ntt_batch.method.mergers.MERGERS` (the registry the ``merger`` setting, its validation and
``--merger`` read; torch-free, so it lives beside this module).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor

from .fullres import soft_merge_scores_from_counts

__all__ = [
    "soft_merge_scores",
    "GraphDiffusionMerger",
    "Merger",
    "SoftMerger",
    "graph_diffusion_penalty",
    "intersection_counts",
]

TRANSITIONS = ("code", "paper")


@runtime_checkable
class Merger(Protocol):
    """Turns semantic scores into final scores, given the candidates' same-class overlaps."""

    name: str

    @classmethod
    def from_config(cls, config: Any) -> Merger:
        """The merger with its parameters from a ``SegmenterConfig``-like object."""
        ...

    def merge_scores(
        self, inter: Tensor, areas: Tensor, mask_features: Tensor, labels: Tensor, semantic_scores: Tensor
    ) -> Tensor:
        """Final scores of the NMS survivors (all inputs in NMS order, predicted IoU descending).

        Args:
            inter: [M, M] int64 same-class intersection counts |M_i ∩ M_j| (0 across classes
                and on the diagonal).
            areas: [M] int64 mask areas |M_i| (all > 0).
            mask_features: [M, D] unit vectors f_i (pooled DINOv2 features).
            labels: [M] int64 class index per candidate.
            semantic_scores: [M] float32 sem_i (clamped cosine similarity to the class).
        Returns:
            [M] float32 final scores.
        """
        ...


@dataclass(frozen=True)
class SoftMerger:
    """The method's semantic-aware soft merging (§4.7): the reference's scores.

    final_i = sem_i · (1 − max_{j<i, same class} |M_i ∩ M_j| / |M_i| · max(0, f_i·f_j))^exponent,
    computed by :func:`ntt_batch.method.fullres.soft_merge_scores_from_counts` (bit-identical to
    ``segmenter.soft_merge_scores`` on the same masks while every count is < 2^24).
    """

    exponent: float = 0.5
    name: ClassVar[str] = "soft"

    def merge_scores(
        self, inter: Tensor, areas: Tensor, mask_features: Tensor, labels: Tensor, semantic_scores: Tensor
    ) -> Tensor:
        """See :meth:`Merger.merge_scores`."""
        return soft_merge_scores_from_counts(inter, areas, mask_features, labels, semantic_scores, self.exponent)

    @classmethod
    def from_config(cls, config: Any) -> SoftMerger:
        """From a ``SegmenterConfig``-like object (``merge_exponent``; the default when absent)."""
        return cls(exponent=getattr(config, "merge_exponent", cls.exponent))


@dataclass(frozen=True)
class GraphDiffusionMerger:
    """FSOD-VFM's graph-diffusion rescoring (arXiv 2602.03137; ``metric.py: graph_diffusion_ios``).

    final_i = sem_i · max(0, 1 − π_i)^exponent with π from :func:`graph_diffusion_penalty`.
    ``transition="code"`` reproduces FSOD-VFM's code (P = overlap matrix, unnormalised);
    ``transition="paper"`` row-normalises P as the paper states. ``mask_features`` are unused.
    """

    alpha: float = 0.3
    steps: int = 30
    exponent: float = 0.5
    transition: Literal["code", "paper"] = "code"
    tol: float = 1e-6
    name: ClassVar[str] = "graph-diffusion"

    def __post_init__(self) -> None:
        _check_diffusion_args(self.alpha, self.steps, self.transition, self.tol)
        if not self.exponent >= 0:
            raise ValueError(f"exponent must be >= 0, got {self.exponent!r}")

    def merge_scores(
        self, inter: Tensor, areas: Tensor, mask_features: Tensor, labels: Tensor, semantic_scores: Tensor
    ) -> Tensor:
        """See :meth:`Merger.merge_scores`."""
        pi = graph_diffusion_penalty(inter, areas, labels, self.alpha, self.steps, self.transition, self.tol)
        # FSOD-VFM: score_decay = 1 − ios, set to 0 if negative; score · score_decay^lamb.
        return semantic_scores.to(torch.float32) * (1.0 - pi).clamp(min=0) ** self.exponent

    @classmethod
    def from_config(cls, config: Any) -> GraphDiffusionMerger:
        """From a ``SegmenterConfig``-like object (``merge_exponent``, ``graph_diffusion_alpha``,
        ``graph_diffusion_steps``, ``graph_diffusion_transition``; each the default when absent)."""
        return cls(
            alpha=getattr(config, "graph_diffusion_alpha", cls.alpha),
            steps=getattr(config, "graph_diffusion_steps", cls.steps),
            exponent=getattr(config, "merge_exponent", cls.exponent),
            transition=getattr(config, "graph_diffusion_transition", cls.transition),
        )


def _check_diffusion_args(alpha: float, steps: int, transition: str, tol: float) -> None:
    if transition not in TRANSITIONS:
        raise ValueError(f"transition must be one of {TRANSITIONS}, got {transition!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        # steps = 0 would leave π at its 1/n start (FSOD-VFM's code does), penalising every
        # candidate of a class, the first included: not a meaningful setting.
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol!r}")


def graph_diffusion_penalty(
    inter: Tensor,
    areas: Tensor,
    labels: Tensor,
    alpha: float = 0.3,
    steps: int = 30,
    transition: Literal["code", "paper"] = "code",
    tol: float = 1e-6,
) -> Tensor:
    """FSOD-VFM's diffused overlap penalty π per candidate (the ``rw_ios`` of ``metric.py``).

    Per class, candidates in the given (rank) order:
    E = tril(|M_i ∩ M_j|, −1) / max(|M_i|, 1e-6) (float32), w = row max of E,
    P = E (``"code"``) or E with rows divided by their sums, zero rows kept (``"paper"``);
    rows with sum ≤ 1e-10 are zero in both (the code's ``valid_rows``).
    π = 1/n; repeat ≤ ``steps`` times: π_old = π; π = α·(P @ π) + (1 − α)·w; stop if
    ||π − π_old||₂ < ``tol``.

    Args:
        inter: [M, M] int64 intersection counts (only same-class entries below the diagonal
            are read).
        areas: [M] int64 mask areas (> 0).
        labels: [M] int64 class index per candidate.
        alpha, steps, transition, tol: see above (steps ≥ 1, 0 ≤ alpha ≤ 1).
    Returns:
        [M] float32 π (0 for a class with one candidate; for ``"code"`` it may exceed 1).
    """
    _check_diffusion_args(alpha, steps, transition, tol)
    m = labels.numel()
    pi_all = torch.zeros(m, dtype=torch.float32, device=labels.device)
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()  # ascending = rank order
        n = idx.numel()
        if n < 2:
            continue  # E = 0, w = 0: the first iteration gives π = 0 (so does the reference)
        counts = inter[idx][:, idx].to(torch.float32)
        pos = areas[idx].to(torch.float32).clamp(min=1e-6)
        iou = torch.tril(counts, diagonal=-1) / pos[:, None]  # E_ij, j < i
        prior = iou.max(dim=-1)[0]  # w
        row_sums = iou.sum(dim=1)
        valid = (row_sums > 1e-10)[:, None]
        if transition == "code":
            p = torch.where(valid, iou, torch.zeros_like(iou))
        else:
            p = torch.where(
                valid, iou / torch.where(valid, row_sums[:, None], torch.ones_like(iou)), torch.zeros_like(iou)
            )
        pi = torch.ones(n, device=p.device, dtype=p.dtype) / n
        for _ in range(steps):
            pi_old = pi
            pi = alpha * (p @ pi) + (1 - alpha) * prior
            if torch.norm(pi - pi_old) < tol:
                break
        pi_all[idx] = pi
    return pi_all


def soft_merge_scores(
    masks: Tensor, mask_features: Tensor, labels: Tensor, semantic_scores: Tensor, exponent: float = 0.5
) -> Tensor:
    """Semantic-aware soft merging (§4.7). Inputs are in NMS order (predicted IoU descending).

    For each class, for mask i: ios_i = max_{j<i, same class} |M_i ∩ M_j| / |M_i| · max(0, f_i·f_j)
    (0 for the first mask of a class); final_i = sem_i · (1 − ios_i)^exponent.

    Args:
        masks: [M, H, W] bool at original resolution (all non-empty).
        mask_features: [M, D] unit vectors f_i.
        labels: [M] class indices.
        semantic_scores: [M] sem_i.
    Returns:
        [M] final scores.
    """
    final = semantic_scores.clone()
    flat = masks.flatten(1)
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()  # ascending = NMS order
        if idx.numel() < 2:
            continue
        mf = flat[idx].to(torch.float32)  # [m, H·W]
        inter = mf @ mf.T  # [m, m] pixel counts
        area = mf.sum(dim=1)  # [m]
        ios = torch.tril(inter, diagonal=-1) / area[:, None]  # row i: |M_i ∩ M_j| / |M_i|, j < i
        sim = (mask_features[idx] @ mask_features[idx].T).clamp(min=0)
        ios_max = (ios * sim).amax(dim=1)
        # Guard: rounding can push ios a hair above 1, and a negative base gives NaN.
        final[idx] = semantic_scores[idx] * (1.0 - ios_max).clamp(min=0) ** exponent
    return final


def intersection_counts(masks: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Dense masks → the ``inter`` and ``areas`` a merger takes (for the reference path).

    Per class, the float32 Gram matrix of the flattened masks (as ``segmenter.soft_merge_scores``
    does), diagonal and cross-class entries 0; exact while every count is < 2^24.

    Args:
        masks: [M, H, W] bool.
        labels: [M] int64 class index.
    Returns:
        inter [M, M] int64, areas [M] int64.
    """
    m = masks.shape[0]
    flat = masks.reshape(m, -1)
    inter = torch.zeros(m, m, dtype=torch.int64, device=masks.device)
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        if idx.numel() < 2:
            continue
        mf = flat[idx].to(torch.float32)
        g = (mf @ mf.T).round().to(torch.int64)
        g.fill_diagonal_(0)
        inter[idx[:, None], idx[None, :]] = g
    areas = flat.sum(dim=1, dtype=torch.int64)
    return inter, areas
