"""Tests for ntt_batch.method.merging: the merger interface, NTT soft merging and FSOD-VFM's
graph-diffusion rescoring.

The oracle for graph diffusion is a transcription of FSOD-VFM's ``metric.py: graph_diffusion_ios``
(Intellindust-AI-Lab/FSOD-VFM, arXiv 2602.03137) run on dense binary masks, plus the score decay
of its caller (``generate_coco_style_predictions_upn``). The small cases are worked out by hand
(arithmetic in the comments); all of them use dyadic overlaps so most values are exact in float32.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from ntt_batch.method.fullres import soft_merge_scores_from_counts
from ntt_batch.method.mergers import MERGERS, build_merger
from ntt_batch.method.merging import (
    GraphDiffusionMerger,
    Merger,
    SoftMerger,
    graph_diffusion_penalty,
    intersection_counts,
    soft_merge_scores,
)

# ============================================================================ the oracle


def fsod_vfm_graph_diffusion_ios(masks_binary, labels, class_num, max_iter, alpha, rank_score=True, tol=1e-6):
    """FSOD-VFM ``metric.py: graph_diffusion_ios``, transcribed (comments and blank lines dropped)."""
    n_masks = masks_binary.shape[0]
    masks = masks_binary.reshape(n_masks, -1).to(dtype=torch.float32)
    rw_ios = torch.zeros((n_masks,), device=masks_binary.device, dtype=torch.float32)
    if n_masks == 1:
        return rw_ios
    for cat_ind in range(class_num):
        cat_ind_tensor = torch.tensor(cat_ind, device=labels.device, dtype=labels.dtype)
        select_idxs = labels == cat_ind_tensor
        if select_idxs.sum() == 0:
            continue
        _masks = masks[select_idxs]
        if _masks.shape[0] == 0:
            continue
        n_cat = _masks.shape[0]
        pos_num = _masks.sum(dim=-1).to(dtype=torch.float32)
        pos_num = torch.clamp(pos_num, min=1e-6)
        inter_num = _masks @ _masks.t()
        inter_num.fill_diagonal_(0.0)
        if rank_score:
            inter_num = torch.tril(inter_num, diagonal=0)
        iou_matrix = inter_num / pos_num[:, None]
        personal_vector = iou_matrix.max(dim=-1)[0]
        P = torch.zeros_like(iou_matrix)
        row_sums = iou_matrix.sum(dim=1)
        valid_rows = row_sums > 1e-10
        if valid_rows.any():
            valid_indices = torch.where(valid_rows)[0]
            for idx in valid_indices:
                P[idx] = iou_matrix[idx] / valid_rows[idx]
        pi = torch.ones(n_cat, device=P.device, dtype=P.dtype) / n_cat
        for _ in range(max_iter):
            pi_old = pi.clone()
            pi = alpha * (P @ pi) + (1 - alpha) * personal_vector
            if torch.norm(pi - pi_old) < tol:
                break
        rw_ios[select_idxs] += pi
    return rw_ios


def fsod_vfm_scores(masks, labels, scores, diffusion_steps, alp, lamb):
    """FSOD-VFM's caller: category ids mapped to 0..C-1, then score · max(0, 1 − ios)^lamb."""
    unique_categories = list(set(labels.tolist()))
    category_to_idx = {cat: idx for idx, cat in enumerate(unique_categories)}
    stacked_categories = torch.tensor([category_to_idx[c] for c in labels.tolist()], dtype=torch.long)
    ios = fsod_vfm_graph_diffusion_ios(
        masks[:, None], stacked_categories, len(unique_categories), max_iter=diffusion_steps, alpha=alp
    )
    out = []
    for i, s in enumerate(scores.tolist()):
        score_decay = 1 - ios[i]
        if score_decay < 0:
            score_decay = torch.tensor(0.0)
        out.append(float(s * torch.pow(score_decay, lamb)))
    return ios, torch.tensor(out, dtype=torch.float32)


# ============================================================================ helpers


def counts_by_loop(masks: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Same-class |M_i ∩ M_j| (i ≠ j) and |M_i| as int64, one pair at a time."""
    m = masks.shape[0]
    inter = torch.zeros(m, m, dtype=torch.int64)
    for i in range(m):
        for j in range(m):
            if i != j and labels[i] == labels[j]:
                inter[i, j] = int((masks[i] & masks[j]).sum())
    return inter, masks.flatten(1).sum(dim=1).to(torch.int64)


def random_masks(gen: torch.Generator, m: int, h: int = 24, w: int = 24) -> torch.Tensor:
    """m non-empty bool masks: random rectangles, some with random holes, some duplicated."""
    masks = torch.zeros(m, h, w, dtype=torch.bool)
    for i in range(m):
        y0, x0 = (int(v) for v in torch.randint(0, h - 2, (2,), generator=gen))
        y1 = y0 + 1 + int(torch.randint(1, h - y0, (1,), generator=gen))
        x1 = x0 + 1 + int(torch.randint(1, w - x0, (1,), generator=gen))
        masks[i, y0:y1, x0:x1] = True
        if i % 3 == 1:
            masks[i] &= torch.rand(h, w, generator=gen) > 0.3
        if i % 5 == 4:
            masks[i] = masks[i - 2]  # exact duplicate of a higher-ranked mask
        if not masks[i].any():
            masks[i, y0, x0] = True
    return masks


def strips(width: int, *spans: tuple[int, int]) -> torch.Tensor:
    """1-pixel-high masks [len(spans), 1, width]: mask k covers columns spans[k][0] .. spans[k][1]-1."""
    masks = torch.zeros(len(spans), 1, width, dtype=torch.bool)
    for k, (a, b) in enumerate(spans):
        masks[k, 0, a:b] = True
    return masks


def unit_features(gen: torch.Generator, m: int, d: int = 8) -> torch.Tensor:
    f = torch.randn(m, d, generator=gen)
    return f / f.norm(dim=1, keepdim=True)


def graph_scores(merger, masks, labels, sem):
    inter, areas = counts_by_loop(masks, labels)
    feats = torch.zeros(len(labels), 4)  # unused by graph diffusion
    return merger.merge_scores(inter, areas, feats, labels, sem)


# 3-mask chain, one class, 16 columns: A = 0..3, B = 2..5, C = 3..10 (areas 4, 4, 8).
# |B∩A| = 2 → E_10 = 1/2; |C∩A| = 1 → E_20 = 1/8; |C∩B| = 3 → E_21 = 3/8; w = [0, 1/2, 3/8].
CHAIN = strips(16, (0, 4), (2, 6), (3, 11))


def chain_penalty(**kw) -> torch.Tensor:
    inter, areas = counts_by_loop(CHAIN, torch.zeros(3, dtype=torch.int64))
    return graph_diffusion_penalty(inter, areas, torch.zeros(3, dtype=torch.int64), **kw)


# ============================================================================ oracle comparison


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("transition_kw", [{}, {"transition": "code"}])
def test_graph_diffusion_matches_fsod_vfm_code(seed, transition_kw):
    gen = torch.Generator().manual_seed(seed)
    m = 9 + seed
    masks = random_masks(gen, m)
    n_classes = 2 + seed % 2
    class_ids = torch.tensor([3, 17, 5])[:n_classes]  # arbitrary, unsorted category indices
    labels = class_ids[torch.randint(0, n_classes, (m,), generator=gen)]
    sem = torch.rand(m, generator=gen)
    alpha, steps, lamb = [(0.3, 30, 0.5), (0.6, 4, 1.0), (0.9, 2, 0.5)][seed % 3]

    ios, expected = fsod_vfm_scores(masks, labels, sem, steps, alpha, lamb)
    inter, areas = counts_by_loop(masks, labels)
    pi = graph_diffusion_penalty(inter, areas, labels, alpha, steps, "code", 1e-6)
    merger = GraphDiffusionMerger(alpha=alpha, steps=steps, exponent=lamb, **transition_kw)
    got = merger.merge_scores(inter, areas, unit_features(gen, m), labels, sem)

    assert pi.dtype == torch.float32 and got.dtype == torch.float32
    # Same float32 operations on the same values: bit-identical on CPU.
    assert torch.equal(pi, ios)
    assert torch.equal(got, expected)
    # The random sets do exercise the diffusion (some candidates penalised, some not).
    assert (pi > 0).any() and (pi == 0).any()


def test_oracle_comparison_includes_penalties_above_one():
    # Four identical masks: the code's unnormalised P pushes π_3 past 1 (see the hand case below).
    masks = torch.ones(4, 3, 3, dtype=torch.bool)
    labels = torch.zeros(4, dtype=torch.int64)
    sem = torch.tensor([0.9, 0.8, 0.7, 0.6])
    ios, expected = fsod_vfm_scores(masks, labels, sem, 30, 0.3, 0.5)
    got = graph_scores(GraphDiffusionMerger(), masks, labels, sem)
    assert ios[3] > 1
    assert torch.equal(got, expected)
    assert got[3] == 0


# ============================================================================ hand-computed cases


@pytest.mark.parametrize("transition", ["code", "paper"])
def test_one_candidate_per_class_unchanged(transition):
    masks = strips(8, (0, 6), (1, 7), (0, 8))  # heavily overlapping, but each its own class
    labels = torch.tensor([2, 0, 1])
    sem = torch.tensor([0.3, 0.7, 0.55])
    pi = graph_diffusion_penalty(*counts_by_loop(masks, labels), labels, transition=transition)
    assert pi.tolist() == [0.0, 0.0, 0.0]
    assert torch.equal(graph_scores(GraphDiffusionMerger(transition=transition), masks, labels, sem), sem)


@pytest.mark.parametrize("transition", ["code", "paper"])
def test_two_identical_masks_second_penalised(transition):
    masks = strips(8, (2, 6), (2, 6))
    labels = torch.tensor([4, 4])
    sem = torch.tensor([0.5, 0.8])
    # E_10 = 1, w = [0, 1]; P row 1 = [1, 0] in both versions (its sum is 1).
    # π: [1/2, 1/2] → [0, 0.3·1/2 + 0.7] → [0, 0.3·0 + 0.7] → same (stop): π = [0, 0.7].
    pi = graph_diffusion_penalty(*counts_by_loop(masks, labels), labels, transition=transition)
    assert pi.tolist() == pytest.approx([0.0, 0.7], abs=1e-7)
    got = graph_scores(GraphDiffusionMerger(transition=transition), masks, labels, sem)
    assert got[0] == sem[0]
    assert got[1].item() == pytest.approx(0.8 * 0.3**0.5, abs=1e-6)


@pytest.mark.parametrize("transition", ["code", "paper"])
def test_disjoint_masks_unchanged(transition):
    masks = strips(12, (0, 3), (3, 6), (7, 12))
    labels = torch.zeros(3, dtype=torch.int64)
    sem = torch.tensor([0.2, 0.9, 0.4])
    assert graph_diffusion_penalty(*counts_by_loop(masks, labels), labels, transition=transition).tolist() == [0.0] * 3
    assert torch.equal(graph_scores(GraphDiffusionMerger(transition=transition), masks, labels, sem), sem)


def test_chain_code_vs_paper():
    # α = 1/2. Fixed points (P strictly lower triangular, so reached exactly):
    #   π_0 = 0; π_1 = α·E_10·π_0 + (1−α)·w_1 = 1/4.
    #   code:  P row 2 = [1/8, 3/8]:             π_2 = 1/2·(3/8·1/4) + 1/2·3/8 = 3/64 + 12/64 = 15/64.
    #   paper: P row 2 = [1/8, 3/8] / (1/2) = [1/4, 3/4]: π_2 = 1/2·(3/4·1/4) + 3/16 = 3/32 + 6/32 = 9/32.
    #   (Row 1 = [1/2] is [1] in the paper version, which changes nothing here as π_0 = 0.)
    code = chain_penalty(alpha=0.5, transition="code")
    paper = chain_penalty(alpha=0.5, transition="paper")
    assert code.tolist() == [0.0, 0.25, 15 / 64]
    assert paper.tolist() == [0.0, 0.25, 9 / 32]
    sem = torch.tensor([1.0, 1.0, 1.0])
    merger = GraphDiffusionMerger(alpha=0.5, transition="paper")
    got = graph_scores(merger, CHAIN, torch.zeros(3, dtype=torch.int64), sem)
    assert got.tolist() == pytest.approx([1.0, 0.75**0.5, (23 / 32) ** 0.5], abs=1e-7)


def test_code_penalty_can_exceed_one_paper_cannot():
    # Four identical masks, α = 0.3: E_ij = 1 for all j < i; w = [0, 1, 1, 1].
    #   code:  π_1 = 0.7; π_2 = 0.3·(0 + 0.7) + 0.7 = 0.91; π_3 = 0.3·(0 + 0.7 + 0.91) + 0.7 = 1.183.
    #   paper: rows averaged: π_2 = 0.3·(0.7/2) + 0.7 = 0.805; π_3 = 0.3·(1.505/3) + 0.7 = 0.8505.
    masks = torch.ones(4, 2, 2, dtype=torch.bool)
    labels = torch.zeros(4, dtype=torch.int64)
    inter, areas = counts_by_loop(masks, labels)
    assert graph_diffusion_penalty(inter, areas, labels, transition="code").tolist() == pytest.approx(
        [0.0, 0.7, 0.91, 1.183], abs=1e-6
    )
    assert graph_diffusion_penalty(inter, areas, labels, transition="paper").tolist() == pytest.approx(
        [0.0, 0.7, 0.805, 0.8505], abs=1e-6
    )
    got = GraphDiffusionMerger().merge_scores(inter, areas, torch.zeros(4, 3), labels, torch.ones(4))
    assert got[3] == 0  # max(0, 1 − 1.183)^0.5


def test_early_stopping_by_tol():
    # Code transition, α = 1/2, from π = [1/3, 1/3, 1/3]:
    #   iter 1: [0, 1/2·(1/2·1/3) + 1/4, 1/2·(1/8·1/3 + 3/8·1/3) + 3/16] = [0, 1/3, 13/48];
    #           ||Δ|| = sqrt(1/9 + 1/256) ≈ 0.339
    #   iter 2: [0, 1/4, 1/2·(3/8·1/3) + 3/16] = [0, 1/4, 1/4];  ||Δ|| = sqrt(17)/48 ≈ 0.0859
    #   iter 3: [0, 1/4, 15/64];                               ||Δ|| = 1/64 ≈ 0.0156
    #   iter 4: unchanged, ||Δ|| = 0.
    iter1, iter2, fixed = [0.0, 1 / 3, 13 / 48], [0.0, 0.25, 0.25], [0.0, 0.25, 15 / 64]
    assert chain_penalty(alpha=0.5, tol=0.5).tolist() == pytest.approx(iter1, abs=1e-7)
    assert chain_penalty(alpha=0.5, tol=0.1).tolist() == pytest.approx(iter2, abs=1e-7)
    assert chain_penalty(alpha=0.5, tol=0.02).tolist() == fixed
    assert chain_penalty(alpha=0.5, tol=0.0).tolist() == fixed
    # ... and the same iterates when ``steps`` cuts the iteration short.
    assert chain_penalty(alpha=0.5, steps=1, tol=0.0).tolist() == pytest.approx(iter1, abs=1e-7)
    assert chain_penalty(alpha=0.5, steps=2, tol=0.0).tolist() == pytest.approx(iter2, abs=1e-7)


def test_stop_is_per_class():
    # Class 7: the chain (stops at iteration 2 with tol = 0.1). Class 2: two identical masks
    # (π = [1/2, 1/2] → [0, 3/4] → [0, 1/2]: ||Δ|| = sqrt(1/4 + 1/16) ≈ 0.56 then 1/4, so it
    # runs on to its fixed point [0, 1/2] at iteration 3 (Δ = 0)). Interleaved in rank order.
    masks = torch.cat([CHAIN, strips(16, (12, 16), (12, 16))])[[0, 3, 1, 4, 2]]
    labels = torch.tensor([7, 2, 7, 2, 7])
    pi = graph_diffusion_penalty(*counts_by_loop(masks, labels), labels, alpha=0.5, tol=0.1)
    assert pi.tolist() == pytest.approx([0.0, 0.0, 0.25, 0.5, 0.25], abs=1e-7)


@pytest.mark.parametrize("transition", ["code", "paper"])
def test_classes_do_not_interact(transition):
    gen = torch.Generator().manual_seed(11)
    masks = random_masks(gen, 12)
    labels = torch.tensor([0, 1, 1, 0, 2, 0, 1, 1, 2, 0, 0, 1])
    sem = torch.rand(12, generator=gen)
    merger = GraphDiffusionMerger(transition=transition)
    together = graph_scores(merger, masks, labels, sem)
    for c in (0, 1, 2):
        sel = labels == c
        alone = graph_scores(merger, masks[sel], labels[sel], sem[sel])
        assert torch.equal(together[sel], alone)
    # Cross-class counts (which the contract says are 0) are ignored anyway.
    m = len(labels)
    flat = masks.flatten(1).to(torch.int64)
    all_pairs = (flat @ flat.T) * (1 - torch.eye(m, dtype=torch.int64))
    got = merger.merge_scores(all_pairs, flat.sum(1), torch.zeros(m, 3), labels, sem)
    assert torch.equal(got, together)


def test_graph_diffusion_ignores_features_and_empty_input():
    masks = strips(8, (0, 5), (2, 8))
    labels = torch.zeros(2, dtype=torch.int64)
    inter, areas = counts_by_loop(masks, labels)
    sem = torch.tensor([0.6, 0.6])
    gen = torch.Generator().manual_seed(0)
    a = GraphDiffusionMerger().merge_scores(inter, areas, unit_features(gen, 2), labels, sem)
    b = GraphDiffusionMerger().merge_scores(inter, areas, unit_features(gen, 2), labels, sem)
    assert torch.equal(a, b) and a[1] < sem[1]
    empty = torch.zeros(0, dtype=torch.int64)
    out = GraphDiffusionMerger().merge_scores(
        torch.zeros(0, 0, dtype=torch.int64), empty, torch.zeros(0, 4), empty, torch.zeros(0)
    )
    assert out.shape == (0,) and out.dtype == torch.float32


def test_invalid_parameters():
    with pytest.raises(ValueError, match="transition"):
        GraphDiffusionMerger(transition="row")
    with pytest.raises(ValueError, match="steps"):
        GraphDiffusionMerger(steps=0)
    with pytest.raises(ValueError, match="alpha"):
        GraphDiffusionMerger(alpha=1.5)
    with pytest.raises(ValueError, match="exponent"):
        GraphDiffusionMerger(exponent=-1.0)
    with pytest.raises(ValueError, match="transition"):
        chain_penalty(transition="Code")


# ============================================================================ soft merging


@pytest.mark.parametrize("seed", range(4))
def test_soft_merger_is_the_reference_soft_merge(seed):
    gen = torch.Generator().manual_seed(100 + seed)
    m = 14
    masks = random_masks(gen, m)
    labels = torch.randint(0, 3, (m,), generator=gen)
    feats = unit_features(gen, m)
    sem = torch.rand(m, generator=gen)
    inter, areas = counts_by_loop(masks, labels)
    for exponent in (0.5, 1.0):
        got = SoftMerger(exponent=exponent).merge_scores(inter, areas, feats, labels, sem)
        assert torch.equal(got, soft_merge_scores_from_counts(inter, areas, feats, labels, sem, exponent))
        assert torch.equal(got, soft_merge_scores(masks, feats, labels, sem, exponent))
        assert (got < sem).any()


def test_intersection_counts_matches_pixel_loop():
    gen = torch.Generator().manual_seed(5)
    masks = random_masks(gen, 10)
    labels = torch.tensor([1, 0, 1, 1, 0, 2, 1, 0, 0, 1])
    inter, areas = intersection_counts(masks, labels)
    exp_inter, exp_areas = counts_by_loop(masks, labels)
    assert inter.dtype == torch.int64 and areas.dtype == torch.int64
    assert torch.equal(inter, exp_inter) and torch.equal(areas, exp_areas)


# ============================================================================ interface


def test_registry_and_protocol():
    assert MERGERS.names()[:2] == ("soft", "graph-diffusion")  # the built-ins first, then any plug-ins
    for name, cls in (("soft", SoftMerger), ("graph-diffusion", GraphDiffusionMerger)):
        assert cls.name == name
        assert isinstance(cls(), Merger)
        built = MERGERS[name](SimpleNamespace(merge_exponent=0.5))  # the registry holds factories: config -> Merger
        assert type(built) is cls and built == cls() and isinstance(built, Merger)
    with pytest.raises(ValueError, match="already registered"):
        MERGERS.register("soft", MERGERS["soft"])


def test_build_merger():
    soft = build_merger(SimpleNamespace(merger="soft", merge_exponent=0.75))
    assert soft == SoftMerger(exponent=0.75) and soft.name == "soft"
    gd = build_merger(
        SimpleNamespace(
            merger="graph-diffusion",
            merge_exponent=1.0,
            graph_diffusion_alpha=0.4,
            graph_diffusion_steps=12,
            graph_diffusion_transition="paper",
        )
    )
    assert gd == GraphDiffusionMerger(alpha=0.4, steps=12, exponent=1.0, transition="paper")
    assert gd.name == "graph-diffusion" and gd.tol == 1e-6
    # Absent fields fall back to the defaults (soft merging, FSOD-VFM's α = 0.3, 30 steps, "code").
    assert build_merger(SimpleNamespace(merge_exponent=0.5)) == SoftMerger()
    assert build_merger(SimpleNamespace(merger="graph-diffusion", merge_exponent=0.5)) == GraphDiffusionMerger()
    with pytest.raises(ValueError, match=r"unknown merger 'nms'.*'soft'.*'graph-diffusion'"):
        build_merger(SimpleNamespace(merger="nms", merge_exponent=0.5))


def test_build_merger_from_segmenter_config():
    from ntt_batch.method.config import SegmenterConfig

    assert build_merger(SegmenterConfig()) == SoftMerger(exponent=0.5)
