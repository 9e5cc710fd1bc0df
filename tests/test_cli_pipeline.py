"""The documented CLI flow on real COCO images with the real sam2 / timm models (random weights).

checkpoints random -> references sample -> memory build -> segment -> pycocotools loadRes.
Random weights make the detections meaningless; what is tested is that every real component
(official checkpoint layouts, loading, SAM2 decoder, DINOv2, matching, RLE, provenance) runs
end to end and produces valid COCO output. Grid 3x3 keeps it CPU-sized.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

from ntt_batch.cli import main

pytestmark = pytest.mark.slow

N_IMAGES = 3


def _run(args):
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, coco_mini):
    d = tmp_path_factory.mktemp("cli")
    ckpt = d / "ckpt"
    _run(["checkpoints", "random", "--model", "sam2.1_hiera_tiny", "dinov2_vits14", "--out", str(ckpt)])
    _run(
        [
            "references",
            "sample",
            "--annotations",
            str(coco_mini / "annotations/instances_train2017.json"),
            "--split",
            "few_shot",
            "--shots",
            "1",
            "--seed",
            "33",
            "--out",
            str(d / "refs.json"),
        ]
    )
    _run(
        [
            "memory",
            "build",
            "--references",
            str(d / "refs.json"),
            "--image-root",
            str(coco_mini / "train2017"),
            "--encoder",
            "dinov2_vits14",
            "--checkpoint-dir",
            str(ckpt),
            "--no-download",
            "--device",
            "cpu",
            "--out",
            str(d / "bank"),
        ]
    )
    out = _run(
        [
            "segment",
            "--memory",
            str(d / "bank"),
            "--annotations",
            str(coco_mini / "annotations/instances_val2017.json"),
            "--image-root",
            str(coco_mini / "val2017"),
            "--limit",
            str(N_IMAGES),
            "--sam2",
            "sam2.1_hiera_tiny",
            "--points-per-side",
            "3",
            "--checkpoint-dir",
            str(ckpt),
            "--no-download",
            "--device",
            "cpu",
            "--out",
            str(d / "results.json"),
        ]
    )
    return d, out


def test_references_and_bank(pipeline):
    d, _ = pipeline
    refs = json.loads((d / "refs.json").read_text())
    assert len(refs["categories"]) == 20 and len(refs["references"]) == 20
    meta = json.loads((d / "bank" / "memory_bank.json").read_text())
    assert meta["encoder"]["name"] == "dinov2_vits14" and meta["encoder"]["official"] is False
    assert meta["feature_dim"] == 384 and set(meta["shots"].values()) == {1}
    assert (d / "bank" / "memory_bank.safetensors").stat().st_size < 100_000  # KB, not GB


def test_results_load_in_pycocotools(pipeline, coco_mini):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    d, _ = pipeline
    results = json.loads((d / "results.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gt = COCO(str(coco_mini / "annotations/instances_val2017.json"))
        dt = gt.loadRes(str(d / "results.json")) if results else None
    few_shot_ids = {1, 2, 3, 4, 5, 6, 7, 9, 16, 17, 18, 19, 20, 21, 44, 62, 63, 64, 67, 72}
    first_ids = sorted(gt.getImgIds())[:N_IMAGES]
    for r in results:
        assert r["image_id"] in first_ids and r["category_id"] in few_shot_ids
        img = gt.imgs[r["image_id"]]
        assert r["segmentation"]["size"] == [img["height"], img["width"]]
        m = mask_utils.decode(r["segmentation"])
        assert m.any()
        ys, xs = np.nonzero(m)
        # bbox = inclusive xyxy -> [x1, y1, x2-x1, y2-y1] (method.md §4.8)
        assert r["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()]
        assert 0 < r["score"] <= 1
    if dt is not None:
        assert len(dt.getAnnIds()) == len(results)


def test_provenance_recorded(pipeline):
    d, out = pipeline
    meta = json.loads((d / "results.meta.json").read_text())
    assert meta["models"]["sam2"]["name"] == "sam2.1_hiera_tiny" and meta["models"]["sam2"]["official"] is False
    assert len(meta["models"]["encoder"]["sha256"]) == 64
    bank_meta = json.loads((d / "bank" / "memory_bank.json").read_text())
    assert meta["memory_bank"]["content_hash"] == bank_meta["content_hash"]
    assert meta["config"]["points_per_side"] == 3 and meta["official_weights"] is False
    assert meta["summary"]["images"] == N_IMAGES and meta["summary"]["images_error"] == 0
    assert "wrote" in out


def test_encoder_mismatch_is_an_error(pipeline, tmp_path, coco_mini):
    d, _ = pipeline
    from ntt_batch.models.loading import write_random_checkpoint

    other = tmp_path / "other"
    write_random_checkpoint("dinov2_vits14", other, seed=1)
    (other / "sam2.1_hiera_tiny.pt").symlink_to(d / "ckpt" / "sam2.1_hiera_tiny.pt")
    image = sorted((coco_mini / "val2017").glob("*.jpg"))[0]
    res = CliRunner().invoke(
        main,
        [
            "segment",
            "--memory",
            str(d / "bank"),
            "--images",
            str(image),
            "--sam2",
            "sam2.1_hiera_tiny",
            "--checkpoint-dir",
            str(other),
            "--no-download",
            "--out",
            str(tmp_path / "r.json"),
        ],
    )
    assert res.exit_code != 0
    assert "was built with dinov2_vits14 weights sha256" in res.output and "rebuild the bank" in res.output


def test_missing_checkpoint_message(tmp_path, coco_mini):
    res = CliRunner().invoke(
        main,
        [
            "memory",
            "build",
            "--references",
            str(tmp_path / "r.json"),
            "--image-root",
            str(tmp_path),
            "--encoder",
            "dinov2_vits14",
            "--out",
            str(tmp_path / "b"),
        ],
    )
    assert res.exit_code != 0  # references file missing -> click error naming it
    assert "r.json" in res.output
