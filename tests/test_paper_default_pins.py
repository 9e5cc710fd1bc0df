"""The paper-default path, pinned: same bank, same detections, scores, boxes and masks as before.

``tests/data/paper_default_pins.json`` was written by this test (``NTT_WRITE_PINS=1``) from the
code as it was before the encoder/proposer/merger interfaces were introduced (commit e586510),
on the random-weight tiny SAM 2.1 + DINOv2 ViT-S/14 checkpoints of ``conftest.py``: a 2-class
1-shot bank built by the real builder from coco_mini (as conftest's ``small_bank``), then 2 val
images segmented with the paper's settings except a 4×4 point grid (CPU-sized), on both
implementations, and once more with every prompt kept (``pred_iou_threshold`` 0, NMS at 1.0:
many overlapping candidates, so the soft merging decides more). A refactor or speed-up may not
change any of it: same bank content hash, same detections (class, box, RLE mask) in the same
order, scores within 1 ulp (float32).

Torch runs single-threaded here (restored afterwards): a CPU matmul's float32 sums depend on how
the work is split over threads, so the same code gives scores a few ulps apart at another thread
count (an earlier test of the suite may also have changed it). The pins were written at 1 thread.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

PINS = Path(__file__).parent / "data" / "paper_default_pins.json"
IMAGES = ("000000000139.jpg", "000000000802.jpg")
CASES = {
    "reference": {"implementation": "reference"},
    "fast": {"implementation": "fast"},
    "all_prompts_reference": {"implementation": "reference", "pred_iou_threshold": 0.0, "nms_iou_threshold": 1.0},
    "all_prompts_fast": {"implementation": "fast", "pred_iou_threshold": 0.0, "nms_iou_threshold": 1.0},
}


def _detections(seg, coco_mini) -> list[list[dict]]:
    from ntt_batch.storage.images import load_image

    out = []
    for name in IMAGES:
        (instances,) = seg.segment_images([load_image(coco_mini / "val2017" / name)])
        out.append(
            [
                {
                    "category_id": i.category_id,
                    "score": float(i.score),
                    "bbox": [float(v) for v in i.bbox],
                    "rle": i.coco_rle()["counts"],
                }
                for i in instances
            ]
        )
    return out


@pytest.mark.slow
def test_paper_default_outputs_are_pinned(random_checkpoints, coco_mini, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        got = _pinned_outputs(random_checkpoints, coco_mini, tmp_path)
    finally:
        torch.set_num_threads(threads)
    if os.environ.get("NTT_WRITE_PINS"):
        PINS.parent.mkdir(exist_ok=True)
        PINS.write_text(json.dumps(got, indent=1) + "\n")
        pytest.skip(f"wrote {PINS}")
    want = json.loads(PINS.read_text())
    assert got["bank_content_hash"] == want["bank_content_hash"]
    assert sum(len(d) for d in want["all_prompts_reference"]) >= 8
    for case in CASES:
        for g_img, w_img in zip(got[case], want[case], strict=True):
            assert len(g_img) == len(w_img) and len(w_img) > 0
            for g, w in zip(g_img, w_img):
                assert g["category_id"] == w["category_id"]
                assert g["bbox"] == w["bbox"]
                assert g["rle"] == w["rle"]
                ulp = float(np.spacing(np.float32(w["score"])))
                assert abs(g["score"] - w["score"]) <= ulp, (case, g["score"], w["score"])


def _pinned_outputs(random_checkpoints, coco_mini, tmp_path) -> dict:
    """The bank (built here, at this thread count, as conftest's small_bank) and the detections."""
    from ntt_batch.bank.build import build_bank_folder as build_bank
    from ntt_batch.method.config import SegmenterConfig
    from ntt_batch.method.memory_bank import MemoryBank
    from ntt_batch.method.segmenter import MethodSegmenter
    from ntt_batch.models.loading import load_encoder, load_sam2
    from ntt_batch.references.files import save_references
    from ntt_batch.references.sampler import sample_references_from_file

    refs = sample_references_from_file(str(coco_mini / "annotations/instances_train2017.json"), "person,car", 1, 33)
    save_references(refs, tmp_path / "refs.json")
    build_bank(
        str(tmp_path / "refs.json"),
        str(coco_mini / "train2017"),
        str(tmp_path / "bank"),
        encoder_name="dinov2_vits14",
        checkpoint_dir=str(random_checkpoints),
        download=False,
        device="cpu",
    )
    bank = MemoryBank.load(tmp_path / "bank")
    proposer, _ = load_sam2("sam2.1_hiera_tiny", checkpoint_dir=str(random_checkpoints), download=False)
    encoder, _ = load_encoder("dinov2_vits14", checkpoint_dir=str(random_checkpoints), download=False)
    got = {"bank_content_hash": bank.content_hash}
    for case, settings in CASES.items():
        seg = MethodSegmenter(proposer, encoder, bank, SegmenterConfig(points_per_side=4, device="cpu", **settings))
        got[case] = _detections(seg, coco_mini)
    return got
