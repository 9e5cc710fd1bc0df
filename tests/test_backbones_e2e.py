"""Other backbones and mergers end to end through the CLI, on random weights in the official layouts:
`memory build --encoder dinov3_vits16` and `segment --merger graph-diffusion`.

Random weights make the detections meaningless; what is tested is that a DINOv3 checkpoint file
in the official layout goes through the real resolve → load → bank build → segment path, that
the encoder's own patch size and native input side are used (16 px, 512 px: never DINOv2's 14 and
518), and that the merger setting reaches the segmenter and changes the scores as it should.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ntt_batch.cli import main

pytestmark = pytest.mark.slow

IMAGE = "000000000139.jpg"


def _run(args):
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


@pytest.fixture(scope="module")
def dinov3_bank(tmp_path_factory, coco_mini, random_checkpoints):
    d = tmp_path_factory.mktemp("dinov3")
    _run(["checkpoints", "random", "--model", "dinov3_vits16", "--out", str(random_checkpoints)])
    _run(
        [
            "references",
            "sample",
            "--annotations",
            str(coco_mini / "annotations/instances_train2017.json"),
            "--split",
            "person,car",
            "--shots",
            "2",
            "--seed",
            "3",
            "--out",
            str(d / "refs.json"),
        ]
    )
    out = _run(
        [
            "memory",
            "build",
            "--references",
            str(d / "refs.json"),
            "--image-root",
            str(coco_mini / "train2017"),
            "--encoder",
            "dinov3_vits16",
            "--checkpoint-dir",
            str(random_checkpoints),
            "--no-download",
            "--device",
            "cpu",
            "--out",
            str(d / "bank"),
        ]
    )
    return d, out


def _segment(d, coco_mini, ckpt, bank, out, *extra):
    _run(
        [
            "segment",
            "--memory",
            str(bank),
            "--images",
            str(coco_mini / "val2017" / IMAGE),
            "--sam2",
            "sam2.1_hiera_tiny",
            "--points-per-side",
            "4",
            "--pred-iou-threshold",
            "0",
            "--nms-iou-threshold",
            "1.0",
            "--checkpoint-dir",
            str(ckpt),
            "--no-download",
            "--device",
            "cpu",
            "--out",
            str(d / out),
            *extra,
        ]
    )
    return json.loads((d / out).read_text()), json.loads((d / out.replace(".json", ".meta.json")).read_text())


def test_memory_build_with_dinov3(dinov3_bank):
    d, out = dinov3_bank
    assert "2 classes, 4 instances, dim 384" in out
    meta = json.loads((d / "bank" / "memory_bank.json").read_text())
    assert meta["encoder"]["name"] == "dinov3_vits16" and meta["encoder"]["official"] is False
    assert meta["config"]["crop_size"] == 512  # DINOv3's native side, resolved and recorded (not 518)


def test_segment_with_a_dinov3_bank_and_graph_diffusion(dinov3_bank, coco_mini, random_checkpoints):
    d, _ = dinov3_bank
    soft, soft_meta = _segment(d, coco_mini, random_checkpoints, d / "bank", "soft.json")
    diffused, meta = _segment(d, coco_mini, random_checkpoints, d / "bank", "gd.json", "--merger", "graph-diffusion")
    assert meta["config"]["merger"] == "graph-diffusion" and soft_meta["config"]["merger"] == "soft"
    assert meta["models"]["encoder"]["name"] == "dinov3_vits16"
    # Same candidates (4×4 prompts, none filtered), rescored differently: the set of boxes is the
    # same, the scores are not (graph diffusion penalises overlapped candidates more, to 0 here).
    assert len(soft) == len(diffused) == 16
    assert sorted(map(tuple, (r["bbox"] for r in soft))) == sorted(map(tuple, (r["bbox"] for r in diffused)))
    assert [r["score"] for r in soft] != [r["score"] for r in diffused]
    assert max(r["score"] for r in diffused) > 0 and min(r["score"] for r in diffused) == 0.0


def test_dinov3_bank_refuses_a_mismatched_encoder_size(dinov3_bank, coco_mini, random_checkpoints):
    d, _ = dinov3_bank
    res = CliRunner().invoke(
        main,
        [
            "segment",
            "--memory",
            str(d / "bank"),
            "--images",
            str(coco_mini / "val2017" / IMAGE),
            "--sam2",
            "sam2.1_hiera_tiny",
            "--points-per-side",
            "2",
            "--encoder-image-size",
            "518",
            "--checkpoint-dir",
            str(random_checkpoints),
            "--no-download",
            "--device",
            "cpu",
            "--out",
            str(d / "bad.json"),
        ],
    )
    assert res.exit_code != 0
    assert "encoder_image_size" in res.output and "patch size 16" in res.output and "512" in res.output
