"""Negative references (docs/negative_references.md), pinned against the authors' code and end to end.

The ``authors_*`` functions below transcribe miquel-espinosa/no-time-to-train @ 214fc79 as plain
torch/numpy functions (the module's buffers become arguments, nothing else changes):

* ``Sam2MatchingBaseline_noAMG._compute_sim_global_avg_with_neg`` (L1117-1158) and the ``topk``
  of ``forward_test`` (L1509-1522, ``cls_num_per_mask`` 1), called there with ``sigma=0.8``;
* ``forward_fill_memory`` (L795-842, the nearest-interpolated mask) and
  ``postprocess_memory_negative`` (L1991-2005): the negative instance prototypes; and
  ``postprocess_memory`` (L1882-1898): the pooled class average ``mem_feats_avg`` the function uses;
* ``data_utils.compute_box_iou_mat`` / ``get_false_positives`` (L67-120) and the selection loop of
  ``COCORefTestDataset.sample_negative`` (L655-731).

Our implementation (``method.matching.NegativeAwareMatcher``, ``method.negatives``) is compared
with them on random tensors; then the whole path runs on random weights: mining from a bank's
references, the bank recording them, segmentation with and without ``--use-negatives``.
"""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from ntt_batch.method.config import SegmenterConfig
from ntt_batch.method.matching import (
    NegativeAwareMatcher,
    PrototypeMatcher,
    build_matcher,
    class_similarity,
    negative_decayed_similarity,
    negative_similarity,
    upsample_features,
)
from ntt_batch.method.memory_bank import MemoryBank, instance_prototype, mask_to_patch_weights
from ntt_batch.method.negatives import box_iou_matrix_xywh, false_positive_flags, select_negatives

# ----------------------------------------------------------------------------- the authors' code, transcribed


def authors_compute_sim_global_avg_with_neg(
    tar_feat, masks_feat_size_bool, mem_feats_avg, mem_feats_ins_avg_neg, mem_n_classes, mem_length_negative, sigma=1.0
):
    """``_compute_sim_global_avg_with_neg`` (self.* buffers as arguments)."""
    n_masks = masks_feat_size_bool.shape[0]
    c = tar_feat.shape[-1]

    masks = masks_feat_size_bool.to(dtype=tar_feat.dtype)
    tar_avg_feats = (masks @ tar_feat) / masks.sum(dim=-1, keepdim=True)
    tar_avg_feats = F.normalize(tar_avg_feats, p=2, dim=-1)

    mem_feats_avg = F.normalize(mem_feats_avg, p=2, dim=-1)

    mem_feats_ins_avg_neg = F.normalize(mem_feats_ins_avg_neg, p=2, dim=-1).reshape(-1, c)

    pos_neg_sim = mem_feats_avg.unsqueeze(dim=1) @ mem_feats_ins_avg_neg.reshape(mem_n_classes, -1, c).transpose(-1, -2)
    pos_neg_sim = pos_neg_sim.reshape(mem_n_classes, mem_length_negative)  # computed, unused (as theirs)

    sim_pos = tar_avg_feats @ mem_feats_avg.t()
    sim_pos = sim_pos.clamp(min=0.0)

    sim_neg = tar_avg_feats @ mem_feats_ins_avg_neg.t()
    sim_neg = sim_neg.clamp(min=0.0)
    sim_neg = sim_neg.reshape(n_masks, mem_n_classes, -1)
    sim_neg, max_inds = sim_neg.max(dim=-1)

    sim_final = sim_pos * torch.exp(-1.0 * (sim_neg - sim_pos).clamp(min=0.0) / sigma)
    return sim_final


def authors_forward_test_scores(sim_global):
    """``forward_test``'s class choice with ``cls_num_per_mask == 1``: topk(k=1), flattened."""
    top_scores, labels = torch.topk(sim_global, k=1)
    return top_scores.flatten(), labels.flatten()


def authors_fill_mask(ref_mask_crop, encoder_h, encoder_w):
    """``forward_fill_memory``: the (crop-sized) mask → the patch grid, nearest, flattened."""
    return F.interpolate(ref_mask_crop.unsqueeze(dim=0).unsqueeze(dim=0), size=(encoder_h, encoder_w), mode="nearest")[
        0
    ].reshape(1, -1)


def authors_postprocess_memory_negative(mem_feats_neg, mem_masks_neg):
    """``postprocess_memory_negative``: ([C, L, n, c], [C, L, n]) → (mem_feats_avg_neg, mem_feats_ins_avg_neg)."""
    mem_feats_avg_neg = torch.sum(mem_feats_neg * mem_masks_neg.unsqueeze(dim=-1), dim=(1, 2)) / mem_masks_neg.sum(
        dim=(1, 2)
    ).unsqueeze(dim=1)
    mem_feats_ins_avg_neg = torch.sum(mem_feats_neg * mem_masks_neg.unsqueeze(dim=-1), dim=2) / mem_masks_neg.sum(
        dim=2
    ).unsqueeze(dim=2)
    return mem_feats_avg_neg, mem_feats_ins_avg_neg


def authors_mem_feats_avg(mem_feats, mem_masks):
    """``postprocess_memory``'s ``mem_feats_avg``: the mask-weighted mean over all patches of all shots."""
    return torch.sum(mem_feats * mem_masks.unsqueeze(dim=-1), dim=(1, 2)) / mem_masks.sum(dim=(1, 2)).unsqueeze(dim=1)


def authors_compute_box_iou_mat(bboxes1, bboxes2):
    n, m = bboxes1.shape[0], bboxes2.shape[0]
    _bboxes1 = np.tile(bboxes1[:, None, :], (1, m, 1))
    _bboxes2 = np.tile(bboxes2[None, :, :], (n, 1, 1))
    int_x1 = np.maximum(_bboxes1[:, :, 0], _bboxes2[:, :, 0])
    int_y1 = np.maximum(_bboxes1[:, :, 1], _bboxes2[:, :, 1])
    int_x2 = np.minimum(_bboxes1[:, :, 2], _bboxes2[:, :, 2])
    int_y2 = np.minimum(_bboxes1[:, :, 3], _bboxes2[:, :, 3])
    int_w = (int_x2 - int_x1).clip(min=0.0)
    int_h = (int_y2 - int_y1).clip(min=0.0)
    int_area = int_w * int_h
    area_1 = (_bboxes1[:, :, 2] - _bboxes1[:, :, 0]) * (_bboxes1[:, :, 3] - _bboxes1[:, :, 1])
    area_2 = (_bboxes2[:, :, 2] - _bboxes2[:, :, 0]) * (_bboxes2[:, :, 3] - _bboxes2[:, :, 1])
    return int_area / (area_1 + area_2 - int_area + 1e-10)


def authors_box_xywh_to_xyxy(bboxes):
    new_bboxes = np.zeros_like(bboxes)
    new_bboxes[:, 0] += bboxes[:, 0]
    new_bboxes[:, 1] += bboxes[:, 1]
    new_bboxes[:, 2] += bboxes[:, 0] + bboxes[:, 2]
    new_bboxes[:, 3] += bboxes[:, 1] + bboxes[:, 3]
    return new_bboxes


def authors_get_false_positives(results, annotations, cat_ids, iou_thr):
    false_positives = {cat_id: [] for cat_id in cat_ids}
    anns_by_cat = {}
    for ann in annotations:
        if ann["category_id"] not in cat_ids:
            continue
        anns_by_cat.setdefault(ann["category_id"], []).append(ann)
    for res_ann in results:
        if res_ann["category_id"] not in anns_by_cat:
            false_positives[res_ann["category_id"]].append(res_ann)
            continue
        res_box = authors_box_xywh_to_xyxy(np.array([res_ann["bbox"]]).reshape(1, 4))
        ann_bboxes = authors_box_xywh_to_xyxy(
            np.array([x["bbox"] for x in anns_by_cat[res_ann["category_id"]]]).reshape(-1, 4)
        )
        if authors_compute_box_iou_mat(res_box, ann_bboxes).max() < iou_thr:
            false_positives[res_ann["category_id"]].append(res_ann)
    return false_positives


def authors_sample_negative_selection(fp_results, cat_ids, sample_num):
    """The selection loop of ``sample_negative`` (per class: shuffle, sort by -score, first sample_num)."""
    out = {}
    for cat_id in cat_ids:
        random.shuffle(fp_results[cat_id])
        sorted_inds = np.argsort(-1.0 * np.array([x["score"] for x in fp_results[cat_id]])).tolist()
        out[cat_id] = [fp_results[cat_id][j] for j in sorted_inds][:sample_num]
        if len(out[cat_id]) < sample_num:
            raise RuntimeError("Category %d does not have enough valid false positives!" % cat_id)  # noqa: UP031
    return out


# ----------------------------------------------------------------------------- (a) against the transcription


def _random_memory(seed: int, n_classes=3, length=4, grid=5, dim=16, n_masks=9, hw=(20, 24)):
    g = torch.Generator().manual_seed(seed)
    # A shared positive offset: cosines spread over (0, 1) so that sim_neg > sim_pos and < sim_pos both occur.
    patch = torch.randn(grid, grid, dim, generator=g) + 0.8  # target patch features [gh, gw, D]
    masks = torch.rand(n_masks, *hw, generator=g) > 0.6  # [N, h, w]
    masks[:, 0, 0] = True  # no empty mask
    mem_feats = torch.randn(n_classes, 2, grid * grid, dim, generator=g) + 0.8  # positives [C, K, n, D]
    mem_masks = (torch.rand(n_classes, 2, grid * grid, generator=g) > 0.5).float()
    neg_feats = torch.randn(n_classes, length, grid * grid, dim, generator=g) + 0.8  # [C, L, n, D]
    neg_masks = (torch.rand(n_classes, length, grid * grid, generator=g) > 0.5).float()
    neg_masks[..., 0] = 1.0
    return patch, masks, mem_feats, mem_masks, neg_feats, neg_masks


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("sigma", [0.8, 0.3])
def test_matcher_equals_authors_sim_global_avg_with_neg(seed, sigma):
    patch, masks, mem_feats, mem_masks, neg_feats, neg_masks = _random_memory(seed)
    n_classes, length, _, dim = neg_feats.shape
    mem_feats_avg = authors_mem_feats_avg(mem_feats, mem_masks)  # [C, D]
    _, ins_avg_neg = authors_postprocess_memory_negative(neg_feats, neg_masks)  # [C, L, D]

    tar_feat = upsample_features(patch, tuple(masks.shape[-2:]))  # [h·w, D], the dense features both use
    theirs = authors_compute_sim_global_avg_with_neg(
        tar_feat, masks.reshape(masks.shape[0], -1), mem_feats_avg, ins_avg_neg, n_classes, length, sigma=sigma
    )
    their_scores, their_labels = authors_forward_test_scores(theirs)

    # Ours, from the same memory: the bank stores un-normalised instance prototypes; the matcher normalises.
    matcher = NegativeAwareMatcher(
        negative_prototypes=F.normalize(ins_avg_neg.reshape(-1, dim), p=2, dim=-1),
        negative_labels=torch.arange(n_classes).repeat_interleave(length),
        sigma=sigma,
    )
    prototypes = F.normalize(mem_feats_avg, p=2, dim=-1)
    feats, sem, label = matcher.match(masks, patch, prototypes, fast=False)
    ours = negative_decayed_similarity(
        class_similarity(feats, prototypes),
        negative_similarity(feats, matcher.negative_prototypes, matcher.negative_labels, n_classes),
        sigma,
    )
    ulp = np.spacing(theirs.abs().numpy().astype(np.float32))
    assert np.all(np.abs(ours.numpy() - theirs.numpy()) <= ulp), (ours - theirs).abs().max()
    assert torch.equal(label, their_labels)
    assert np.all(np.abs(sem.numpy() - their_scores.numpy()) <= np.spacing(their_scores.numpy()))
    # The cases the formula distinguishes both occur: decayed (sim_neg > sim_pos) and untouched classes.
    sim_pos = class_similarity(feats, prototypes)
    sim_neg = negative_similarity(feats, matcher.negative_prototypes, matcher.negative_labels, n_classes)
    assert (sim_neg > sim_pos).any() and (sim_neg < sim_pos).any()
    # The fast pooling gives the same decisions up to float rounding.
    _, sem_fast, label_fast = matcher.match(masks, patch, prototypes, fast=True)
    torch.testing.assert_close(sem_fast, sem, rtol=1e-5, atol=1e-6)


def test_negative_prototypes_equal_authors_fill_and_postprocess():
    """Per negative: the nearest-sampled crop mask (forward_fill_memory) and the mask-weighted mean of the
    patch features (postprocess_memory_negative) — ours is the positive references' instance_prototype."""
    g = torch.Generator().manual_seed(5)
    n_classes, length, grid, dim, crop = 2, 3, 6, 8, 42
    crops = (torch.rand(n_classes, length, crop, crop, generator=g) > 0.3).float()  # bilinear-resized masks, binarised
    crops = crops * torch.rand(n_classes, length, crop, crop, generator=g)  # soft values, as after the bilinear resize
    feats = torch.randn(n_classes, length, grid * grid, dim, generator=g)
    masks = torch.stack(
        [torch.cat([authors_fill_mask(crops[c, k], grid, grid) for k in range(length)]) for c in range(n_classes)]
    )
    _, theirs = authors_postprocess_memory_negative(feats, masks)  # [C, L, D]
    for c in range(n_classes):
        for k in range(length):
            w, fell_back = mask_to_patch_weights(crops[c, k], grid)
            assert not fell_back
            ours = instance_prototype(feats[c, k].reshape(grid, grid, dim), w)
            torch.testing.assert_close(
                ours, theirs[c, k], rtol=0, atol=float(np.spacing(np.float32(theirs.abs().max())))
            )


def test_class_without_negatives_scores_as_the_paper_and_authors_give_nan_there():
    """Ours: a class with no negatives keeps the prototype matcher's score bit for bit. The authors' fixed
    [C, length_negative] memory has no such case: an unfilled slot is 0/0 = NaN (why sample_negative raises
    when a class has fewer than length_negative false positives)."""
    patch, masks, mem_feats, mem_masks, neg_feats, neg_masks = _random_memory(7)
    n_classes, length, _, dim = neg_feats.shape
    prototypes = F.normalize(authors_mem_feats_avg(mem_feats, mem_masks), p=2, dim=-1)
    _, ins_avg_neg = authors_postprocess_memory_negative(neg_feats, neg_masks)
    only_class0 = NegativeAwareMatcher(F.normalize(ins_avg_neg[0], p=2, dim=-1), torch.zeros(length, dtype=torch.int64))
    feats, _, _ = only_class0.match(masks, patch, prototypes, fast=True)
    sim_pos = class_similarity(feats, prototypes)
    sim = negative_decayed_similarity(
        sim_pos, negative_similarity(feats, only_class0.negative_prototypes, only_class0.negative_labels, 3), 0.8
    )
    assert torch.equal(sim[:, 1:], sim_pos[:, 1:])  # exp(-0) = 1: untouched
    assert not torch.equal(sim[:, 0], sim_pos[:, 0])
    # No negatives anywhere: identical to the prototype matcher.
    none = NegativeAwareMatcher(torch.zeros(0, dim), torch.zeros(0, dtype=torch.int64))
    for fast in (False, True):
        a, b = none.match(masks, patch, prototypes, fast), PrototypeMatcher().match(masks, patch, prototypes, fast)
        assert all(torch.equal(x, y) for x, y in zip(a, b))

    neg_masks[1, 2] = 0.0  # class 1 has only 3 of its 4 negatives
    _, ins_avg_neg = authors_postprocess_memory_negative(neg_feats, neg_masks)
    theirs = authors_compute_sim_global_avg_with_neg(
        upsample_features(patch, tuple(masks.shape[-2:])),
        masks.reshape(masks.shape[0], -1),
        authors_mem_feats_avg(mem_feats, mem_masks),
        ins_avg_neg,
        n_classes,
        length,
        sigma=0.8,
    )
    assert torch.isnan(theirs[:, 1]).all() and not torch.isnan(theirs[:, 0]).any()


def test_false_positives_and_selection_equal_authors():
    rng = np.random.default_rng(0)
    cat_ids = [1, 3, 7]
    for trial in range(20):
        anns = [
            {
                "category_id": int(rng.choice(cat_ids[:2])),
                "bbox": [float(v) for v in rng.uniform(0, 200, 2)] + [float(v) for v in rng.uniform(5, 150, 2)],
            }
            for _ in range(rng.integers(0, 4))
        ]
        dets = [
            {
                "category_id": int(rng.choice(cat_ids)),
                "bbox": [float(v) for v in rng.uniform(0, 200, 2)] + [float(v) for v in rng.uniform(5, 150, 2)],
                "score": float(rng.uniform()),
                "k": k,
            }
            for k in range(12)
        ]
        if trial % 4 == 0 and anns:  # a near-copy of an annotation: IoU well above 0.1
            dets[0] = {**dets[0], "category_id": anns[0]["category_id"], "bbox": [v + 1.0 for v in anns[0]["bbox"]]}
        theirs = authors_get_false_positives(dets, anns, cat_ids, 0.1)
        flags = false_positive_flags(dets, anns, 0.1)
        ours = {c: [d for d, f in zip(dets, flags) if f and d["category_id"] == c] for c in cat_ids}
        assert {c: [d["k"] for d in v] for c, v in ours.items()} == {c: [d["k"] for d in v] for c, v in theirs.items()}
        # The IoU matrix itself.
        a, b = np.array([d["bbox"] for d in dets]), np.array([d["bbox"] for d in dets[:5]])
        np.testing.assert_array_equal(
            box_iou_matrix_xywh(a, b),
            authors_compute_box_iou_mat(authors_box_xywh_to_xyxy(a), authors_box_xywh_to_xyxy(b)),
        )
        # Selection: distinct scores, so the authors' shuffle cannot matter; classes with >= 2 false positives.
        full = [c for c in cat_ids if len(theirs[c]) >= 2]
        random.seed(trial)
        their_sel = authors_sample_negative_selection({c: list(theirs[c]) for c in full}, full, 2)
        ours_sel = select_negatives([d for c in full for d in ours[c]], max_per_class=2, score_threshold=0.0)
        assert [d["k"] for d in ours_sel] == [d["k"] for c in sorted(full) for d in their_sel[c]]
    # Our score threshold (read, unlike the authors' negative_score_thr) and fewer than max_per_class.
    cands = [{"category_id": 1, "score": s, "k": k} for k, s in enumerate([0.1, 0.5, 0.5, 0.3])]
    assert [c["k"] for c in select_negatives(cands, 10, 0.3)] == [1, 2, 3]  # stable: ties keep their order


# ----------------------------------------------------------------------------- settings, fingerprint, bank hash


def test_settings_off_by_default_and_old_outputs_are_the_same_job():
    from ntt_batch.pipeline.fingerprint import fingerprint_differences

    cfg = SegmenterConfig()
    assert cfg.use_negatives is False and cfg.negative_sigma == 0.8
    new = {"segmenter": {**cfg.__dict__}, "models": {"encoder": {"name": "dinov2_vits14"}}}
    old = {"segmenter": {k: v for k, v in new["segmenter"].items() if k not in ("use_negatives", "negative_sigma")}}
    old["models"] = new["models"]
    assert fingerprint_differences(old, new) == []
    on = {**new, "segmenter": {**new["segmenter"], "use_negatives": True}}
    assert fingerprint_differences(old, on) == ["segmenter.use_negatives: False in the output, True now"]
    with pytest.raises(ValueError, match="negative_sigma"):
        SegmenterConfig(negative_sigma=0.0).validate()


def _old_content_hash(bank: MemoryBank) -> str:
    """``MemoryBank.content_hash`` as it was before negatives existed."""
    import hashlib

    h = hashlib.sha256()
    h.update(json.dumps({"categories": bank.categories, "encoder": bank.encoder.get("name")}, sort_keys=True).encode())
    for t in (bank.instance_prototypes, bank.instance_labels):
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def test_bank_negatives_round_trip_and_hash(tmp_path):
    g = torch.Generator().manual_seed(0)
    bank = MemoryBank(
        categories=[{"id": 1, "name": "a"}, {"id": 4, "name": "b"}],
        instance_prototypes=torch.randn(3, 8, generator=g),
        instance_labels=torch.tensor([0, 1, 1]),
        encoder={"name": "dinov2_vits14"},
    )
    bank.save(tmp_path / "plain")
    meta = json.loads((tmp_path / "plain" / "memory_bank.json").read_text())
    assert meta["version"] == 1 and "negatives" not in meta  # a bank without negatives: as before
    assert bank.content_hash == _old_content_hash(bank) == MemoryBank.load(tmp_path / "plain").content_hash

    neg = bank.with_negatives(
        torch.randn(2, 8, generator=g),
        torch.tensor([1, 1]),
        [{"source": "file"}, {"source": "mined", "score": 0.3}],
        [{"kind": "x"}],
    )
    assert neg.has_negatives and neg.content_hash != bank.content_hash and neg.negative_shots == {"a": 0, "b": 2}
    neg.save(tmp_path / "neg")
    back = MemoryBank.load(tmp_path / "neg")
    assert back.content_hash == neg.content_hash
    assert torch.equal(back.negative_prototypes, neg.negative_prototypes)
    assert back.negatives["instances"][1]["score"] == 0.3
    meta = json.loads((tmp_path / "neg" / "memory_bank.json").read_text())
    assert meta["version"] == 2 and meta["negatives"]["per_class"] == {"a": 0, "b": 2}
    assert not neg.with_negatives(None, None, [], []).has_negatives
    assert neg.with_negatives(None, None, [], []).content_hash == bank.content_hash

    with pytest.raises(ValueError, match="no negative references"):
        build_matcher(SegmenterConfig(use_negatives=True), bank)
    assert isinstance(build_matcher(SegmenterConfig(), neg), PrototypeMatcher)  # opt-in only
    m = build_matcher(SegmenterConfig(use_negatives=True, negative_sigma=0.5), neg)
    assert isinstance(m, NegativeAwareMatcher) and m.sigma == 0.5
    torch.testing.assert_close(m.negative_prototypes.norm(dim=1), torch.ones(2))


# ----------------------------------------------------------------------------- (b) end to end on random weights

MINE = {
    "points_per_side": 4,
    "device": "cpu",
    "pred_iou_threshold": 0.0,  # random weights: keep every prompt, so there is something to mine
    "nms_iou_threshold": 1.0,
}


@pytest.fixture(scope="module")
def mined_bank(tmp_path_factory, small_bank, random_checkpoints):
    """A copy of conftest's 2-class bank with negatives mined from its references (the shared one is left alone),
    through the Python API."""
    import ntt_batch

    d = tmp_path_factory.mktemp("negbank") / "bank"
    shutil.copytree(small_bank, d)
    before = MemoryBank.load(d).content_hash
    notices = []
    result = ntt_batch.mine_negatives(
        d,
        sam2="sam2.1_hiera_tiny",
        checkpoint_dir=random_checkpoints,
        download=False,
        score_threshold=0.05,
        max_per_class=4,
        references_only=True,
        notice=notices.append,
        **MINE,
    )
    return d, before, result, notices


@pytest.mark.slow
def test_mining_records_negatives_in_the_bank(mined_bank, random_checkpoints):
    from ntt_batch.references.files import load_references
    from ntt_batch.viz.memory_report import show_memory_bank

    d, before, result, notices = mined_bank
    assert any("references only" in n for n in notices)
    bank = MemoryBank.load(d)
    assert bank.has_negatives and result["mined"]
    assert bank.content_hash == result["bank"].content_hash != before == result["previous_hash"]
    n = int(bank.negative_labels.numel())
    assert n == len(result["mined"]) == len(bank.negatives["instances"])
    assert all(v <= 4 for v in bank.negative_shots.values())  # max_per_class
    meta = json.loads((d / "memory_bank.json").read_text())
    assert meta["negatives"]["per_class"] == bank.negative_shots
    (source,) = meta["negatives"]["sources"]
    assert source["kind"] == "mined" and source["score_threshold"] == 0.05 and source["positive_bank_hash"] == before

    # Every negative is a detection of its class, scoring >= the threshold, that is not the reference of its
    # class in that image (box IoU < 0.1), highest scores first per class.
    refs = load_references(d / "references.json")
    negs = load_references(d / "negatives.json")
    assert len(negs["references"]) == n
    for rec, entry in zip(bank.negatives["instances"], negs["references"]):
        assert rec["score"] >= 0.05 and rec["source"] == "mined" and rec["file_name"] == entry["file_name"]
        same = [
            r["bbox"]
            for r in refs["references"]
            if r["file_name"] == entry["file_name"] and r["category_id"] == entry["category_id"]
        ]
        if same:
            assert box_iou_matrix_xywh([entry["bbox"]], same).max() < 0.1
    for c in bank.category_ids:
        scores = [r["score"] for r in bank.negatives["instances"] if r["category_id"] == c]
        assert scores == sorted(scores, reverse=True)

    # The prototypes are what encoding negatives.json with the bank's encoder gives (a faithful record).
    from ntt_batch.method.negatives import encode_negatives
    from ntt_batch.models.loading import load_encoder
    from ntt_batch.storage.images import load_image
    from ntt_batch.storage.names import safe_join

    encoder, _ = load_encoder("dinov2_vits14", checkpoint_dir=str(random_checkpoints), download=False)
    protos, labels, _, _ = encode_negatives(
        negs, lambda r: load_image(safe_join(negs["image_root"], r["file_name"])), encoder, bank
    )
    assert torch.equal(protos, bank.negative_prototypes) and torch.equal(labels, bank.negative_labels)

    report = show_memory_bank(d, png=False)["report"]
    assert f"negative references: {n} (mined {n})" in report
    for name, k in bank.negative_shots.items():
        assert (f"  {name}: {k} — " if k else f"  {name}: none") in report


@pytest.mark.slow
def test_use_negatives_scores_follow_the_formula(mined_bank, random_checkpoints, coco_mini):
    """The segmenter's own candidates on a val image: the same mask features under both matchers, and the
    negative-aware scores recomputed from those features and the bank's tensors with the authors' function."""
    from ntt_batch.bank.load import segmenter_from_bank as load_segmenter
    from ntt_batch.method.segmenter import TargetImage
    from ntt_batch.storage.images import load_image

    d, _, _, _ = mined_bank
    kw = dict(sam2_name="sam2.1_hiera_tiny", checkpoint_dir=str(random_checkpoints), download=False)
    pos, _ = load_segmenter(str(d), config=SegmenterConfig(**MINE), **kw)
    neg, prov = load_segmenter(str(d), config=SegmenterConfig(**MINE, use_negatives=True), **kw)
    assert isinstance(pos.matcher, PrototypeMatcher) and isinstance(neg.matcher, NegativeAwareMatcher)
    assert prov["config"]["use_negatives"] is True and prov["memory_bank"]["negatives"] == neg.bank.negative_shots

    image = load_image(coco_mini / "val2017" / "000000000139.jpg")
    t = TargetImage.from_image(image, pos.config)
    x = torch.from_numpy(t.resized[None]).permute(0, 3, 1, 2).float() / 255.0
    sam_feats = pos.proposer.encode(x)
    e = pos.config.encoder_image_size
    patch = pos.encoder(F.interpolate(x, size=(e, e), mode="bicubic", align_corners=False))[0].float()
    logits, _ = pos._propose(sam_feats.select(0))
    masks = logits > 0
    for fast in (False, True):
        f_pos, s_pos, l_pos = pos.matcher.match(masks, patch, pos.prototypes, fast)
        f_neg, s_neg, l_neg = neg.matcher.match(masks, patch, neg.prototypes, fast)
        assert torch.equal(f_pos, f_neg)
        # sim_pos: the positive-only run's similarities; the decay from the bank's negatives.
        sim_pos = torch.nan_to_num(class_similarity(f_pos, pos.prototypes))
        torch.testing.assert_close(sim_pos.max(dim=1).values, s_pos, rtol=0, atol=0)
        bank = neg.bank
        q = F.normalize(bank.negative_prototypes, dim=1)
        sim_neg = torch.stack(
            [
                (f_pos @ q[bank.negative_labels == c].T).clamp(min=0).max(dim=1).values
                if (bank.negative_labels == c).any()
                else torch.zeros(f_pos.shape[0])
                for c in range(len(bank.categories))
            ],
            dim=1,
        )
        expect = sim_pos * torch.exp(-torch.clamp(sim_neg - sim_pos, min=0) / 0.8)
        torch.testing.assert_close(s_neg, expect.max(dim=1).values, rtol=1e-6, atol=1e-7)
        # The chosen class is a best one of the recomputed scores (equal up to float rounding on ties).
        torch.testing.assert_close(
            expect.gather(1, l_neg[:, None])[:, 0], expect.max(dim=1).values, rtol=1e-6, atol=1e-7
        )
        assert (s_neg <= s_pos).all() and (s_neg < s_pos).any()  # the negatives bite somewhere


def _segment(args, out):
    from ntt_batch.cli import main

    res = CliRunner().invoke(main, ["segment", *args, "--out", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads(out.read_text()), json.loads(out.with_name(out.stem + ".meta.json").read_text())


@pytest.mark.slow
def test_segment_cli_with_and_without_negatives(mined_bank, random_checkpoints, coco_mini, tmp_path):
    """`segment --use-negatives`: the same masks (merging off: exponent 0, NMS at 1.0, every detection kept), each
    scoring at most its positive-only score; provenance records the setting and the bank's negatives."""
    d, _, _, _ = mined_bank
    args = [
        "--memory", str(d), "--images", str(coco_mini / "val2017" / "000000000139.jpg"),
        "--sam2", "sam2.1_hiera_tiny", "--checkpoint-dir", str(random_checkpoints), "--no-download",
        "--device", "cpu", "--points-per-side", "4", "--pred-iou-threshold", "0", "--nms-iou-threshold", "1",
        "--merge-exponent", "0", "--max-detections", "1000",
    ]  # fmt: skip
    pos, pos_meta = _segment(args, tmp_path / "pos.json")
    neg, neg_meta = _segment([*args, "--use-negatives"], tmp_path / "neg.json")
    assert pos_meta["config"]["use_negatives"] is False and neg_meta["config"]["use_negatives"] is True
    assert neg_meta["config"]["negative_sigma"] == 0.8
    assert neg_meta["memory_bank"]["content_hash"] == MemoryBank.load(d).content_hash
    assert "negatives" in neg_meta["memory_bank"]
    by_mask = {r["segmentation"]["counts"]: r for r in pos}
    assert len(neg) == len(pos) > 0 and {r["segmentation"]["counts"] for r in neg} == set(by_mask)
    lower = 0
    for r in neg:
        p = by_mask[r["segmentation"]["counts"]]
        assert r["score"] <= p["score"] * (1 + 1e-6)
        lower += r["score"] < p["score"] * (1 - 1e-6)
    assert lower > 0

    # Without negatives in the bank, --use-negatives is refused with the command that mines them.
    from ntt_batch.cli import main

    plain = tmp_path / "plain"
    shutil.copytree(d, plain)
    bank = MemoryBank.load(plain).with_negatives(None, None, [], [])
    bank.save(plain)
    res = CliRunner().invoke(
        main, ["segment", *args[:1], str(plain), *args[2:], "--use-negatives", "--out", str(tmp_path / "x.json")]
    )
    assert res.exit_code == 2 and "memory negatives" in res.output


@pytest.mark.slow
def test_memory_build_negatives_file_and_remining_keeps_them(mined_bank, random_checkpoints, coco_mini, tmp_path):
    """`memory build --negatives FILE` (the mined bank's negatives.json): the same negative prototypes, recorded as
    coming from a file; `memory negatives` on that bank keeps them and adds mined ones; `memory show` lists them."""
    from ntt_batch.cli import main

    d, _, _, _ = mined_bank
    mined = MemoryBank.load(d)
    out = tmp_path / "bank2"
    common = ["--checkpoint-dir", str(random_checkpoints), "--no-download", "--device", "cpu"]
    res = CliRunner().invoke(
        main,
        ["memory", "build", "--references", str(d / "references.json"), "--negatives", str(d / "negatives.json"),
         "--encoder", "dinov2_vits14", *common, "--out", str(out)],
        catch_exceptions=False,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    built = MemoryBank.load(out)
    assert torch.equal(built.instance_prototypes, mined.instance_prototypes)
    assert torch.equal(built.negative_prototypes, mined.negative_prototypes)
    assert torch.equal(built.negative_labels, mined.negative_labels)
    assert built.content_hash == mined.content_hash  # same tensors, same hash, whatever their source
    assert {r["source"] for r in built.negatives["instances"]} == {"file"}
    assert (out / "negatives.json").is_file()

    res = CliRunner().invoke(
        main,
        ["memory", "negatives", str(out), "--sam2", "sam2.1_hiera_tiny", *common, "--points-per-side", "2",
         "--pred-iou-threshold", "0", "--nms-iou-threshold", "1", "--thresholds", "0", "--max-per-class", "1",
         "--references-only"],
        catch_exceptions=False,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    again = MemoryBank.load(out)
    n_file = int(mined.negative_labels.numel())
    sources = [r["source"] for r in again.negatives["instances"]]
    assert sources[:n_file] == ["file"] * n_file and set(sources[n_file:]) == {"mined"} and len(sources) > n_file
    assert torch.equal(again.negative_prototypes[:n_file], mined.negative_prototypes)
    assert [s["kind"] for s in again.negatives["sources"]] == ["file", "mined"]

    res = CliRunner().invoke(
        main, ["memory", "show", str(out), "--out", str(tmp_path / "sim.png")], catch_exceptions=False
    )
    assert (
        res.exit_code == 0
        and f"negative references: {len(sources)} (file {n_file}, mined {len(sources) - n_file})" in res.output
    )

    # A negatives file naming a class the bank lacks is refused, naming it.
    negs = json.loads((d / "negatives.json").read_text())
    negs["categories"] = [{**c, "name": f"zebra{i}"} for i, c in enumerate(negs["categories"])]
    negs["image_root"] = str(coco_mini / "train2017")
    (tmp_path / "bad.json").write_text(json.dumps(negs))
    res = CliRunner().invoke(
        main,
        ["memory", "build", "--references", str(d / "references.json"), "--negatives", str(tmp_path / "bad.json"),
         "--encoder", "dinov2_vits14", *common, "--out", str(tmp_path / "bank3")],
    )  # fmt: skip
    assert res.exit_code == 2 and "zebra" in res.output


def test_run_job_refuses_use_negatives_without_negatives_before_writing(
    tmp_path, small_bank, random_checkpoints, coco_mini
):
    """The batch job checks the bank before taking the output's lock or starting Ray (no actor fails later)."""
    from conftest import SEG, job_config

    from ntt_batch.pipeline.job import run_job

    out = tmp_path / "out"
    cfg = job_config(
        random_checkpoints,
        small_bank,
        images=str(coco_mini / "val2017"),
        out=str(out),
        segmenter=SegmenterConfig(**SEG, use_negatives=True),
    )
    with pytest.raises(ValueError, match="memory negatives"):
        run_job(cfg, echo=lambda _: None)
    assert not out.exists() or not any(out.rglob("*"))
