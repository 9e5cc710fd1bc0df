"""Bad inputs end in one clear line (exit 2) naming the file, key, entry or annotation, never a long trace.

Covered: files that are not checkpoints, YAML syntax errors near a secret, bad polygons in custom
references, malformed results files for `eval`, and the CLI's own handling (`--debug` keeps the trace).
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ntt_batch.cli import main
from ntt_batch.models.checkpoints import (
    CheckpointFileError,
    check_checkpoint_file,
    resolve_checkpoint,
)


def _invoke(args: list[str]):
    return CliRunner().invoke(main, args)


def _one_error_line(res) -> str:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("Error: ")]
    assert len(lines) == 1, res.output
    return lines[0]


# ----------------------------------------------------------------------------- checkpoints


class _Payload:
    pass


def _not_checkpoints(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {}

    def put(kind: str, data: bytes) -> None:
        files[kind] = folder / kind
        files[kind].write_bytes(data)

    put("random bytes", bytes(range(256)) * 40)
    put("text", b"<html><body>404 Not Found</body></html>\n")
    put("empty", b"")
    put("plain pickle", pickle.dumps({"model": {"w": [1, 2, 3]}, "x": {1, 2}}))
    torch.save({"model": {"w": torch.zeros(2)}, "payload": _Payload()}, folder / "objects.pt")
    files["pickled objects"] = folder / "objects.pt"
    torch.save({"model": {"w": torch.zeros(1000)}}, folder / "full.pt")
    data = (folder / "full.pt").read_bytes()
    put("truncated", data[: len(data) // 2])
    return files


@pytest.mark.parametrize(
    "kind, says",
    [
        ("random bytes", "not a PyTorch checkpoint"),
        ("text", "the file is text"),
        ("empty", "the file is empty"),
        ("plain pickle", "not a PyTorch checkpoint"),
        ("pickled objects", "it holds Python objects (test_clear_errors._Payload)"),
        ("truncated", "a damaged PyTorch checkpoint"),
    ],
)
def test_a_file_that_is_not_a_checkpoint_is_one_line_naming_it(tmp_path, kind, says):
    from ntt_batch.models.dinov2 import load_state_dict_file
    from ntt_batch.models.sam2_proposer import load_sam2_state_dict

    path = _not_checkpoints(tmp_path)[kind]
    for loader in (load_sam2_state_dict, load_state_dict_file, check_checkpoint_file):
        with pytest.raises(CheckpointFileError) as info:
            loader(str(path))
        message = str(info.value)
        assert message.startswith(f"{path}: ") and says in message, message
        assert "\n" not in message and len(message) < 400, message
        assert "checkpoints list" in message  # what to do (no model name: the file name is not an official one)


def test_a_bad_file_under_an_official_name_says_how_to_replace_it(tmp_path):
    path = tmp_path / "sam2.1_hiera_tiny.pt"
    path.write_text("placeholder\n")
    with pytest.raises(CheckpointFileError, match=r"checkpoints download --model sam2.1_hiera_tiny"):
        resolve_checkpoint("sam2.1_hiera_tiny", checkpoint_dir=tmp_path, download=False)  # checked on resolve


def test_cli_with_a_bad_checkpoint_prints_one_line_and_debug_gives_the_trace(
    tmp_path, random_checkpoints, small_bank, coco_mini
):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    shutil.copy(random_checkpoints / "dinov2_vits14_pretrain.pth", ckpt)
    (ckpt / "sam2.1_hiera_tiny.pt").write_bytes(bytes(range(256)) * 100)
    args = [
        "segment",
        "--memory",
        str(small_bank),
        "--images",
        str(coco_mini / "val2017"),
        "--limit",
        "1",
        "--sam2",
        "sam2.1_hiera_tiny",
        "--checkpoint-dir",
        str(ckpt),
        "--no-download",
        "--points-per-side",
        "2",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "r.json"),
    ]
    line = _one_error_line(_invoke(args))
    assert f"{ckpt / 'sam2.1_hiera_tiny.pt'}: not a PyTorch checkpoint" in line
    assert "weights_only=False" not in line
    res = _invoke(["--debug"] + args)
    assert isinstance(res.exception, CheckpointFileError)  # --debug: the exception (and its trace) propagates


# ----------------------------------------------------------------------------- YAML


@pytest.mark.parametrize(
    "text",
    [
        'images: s3://b/in/\nstorage_options:\n  key: AKIAEXAMPLE\n  secret: "hunter2-topsecret\n',
        "images: s3://b/in/\nstorage_options:\n  secret: hunter2-topsecret: x\n",
        "images: s3://b/in/\nstorage_options:\n  secret: [hunter2-topsecret\n",
        "images: s3://b/in/\nstorage_options:\n  secret: *hunter2-topsecret\n",
        "images: s3://b/in/\nstorage_options: {key: AKIAEXAMPLE, secret: hunter2-topsecret ]\n",
    ],
)
def test_a_yaml_error_does_not_echo_a_secret(tmp_path, text):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    for args in (["config", "check", str(path)], ["run", "--config", str(path), "--dry-run"]):
        res = _invoke(args)
        line = _one_error_line(res)
        assert f"{path}: not valid YAML: line " in line and ", column " in line, line
        assert "hunter2" not in res.output and "AKIAEXAMPLE" not in res.output, res.output


def test_a_storage_option_flag_that_is_not_yaml_stays_text_and_is_not_echoed():
    res = _invoke(
        [
            "run",
            "--images",
            "s3://bucket/in/",
            "--memory",
            "m",
            "--out",
            "s3://bucket/o/",
            "--storage-option",
            "secret=[hunter2",
            "--storage-option",
            "key=AKIAEXAMPLE",
            "--dry-run",
            "--limit",
            "1",
            "--ray-address",
            "none://x",
        ]
    )
    assert "hunter2" not in res.output and "Traceback" not in res.output, res.output


# ----------------------------------------------------------------------------- references from-coco


def _coco(tmp_path: Path, segmentation, bbox=(10.0, 10.0, 20.0, 20.0)) -> Path:
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 80}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [
            {
                "id": 7,
                "image_id": 1,
                "category_id": 1,
                "iscrowd": 0,
                "area": 1.0,
                "bbox": [10.0, 10.0, 20.0, 20.0],
                "segmentation": [[10, 10, 30, 10, 30, 30]],
            },
            {
                "id": 42,
                "image_id": 1,
                "category_id": 1,
                "iscrowd": 0,
                "area": 1.0,
                "bbox": list(bbox),
                "segmentation": segmentation,
            },
        ],
    }
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    "segmentation, bbox, says",
    [
        ([[10, 10, 30, 10]], (10, 10, 20, 20), "polygon 0 has 2 point(s); a polygon needs at least 3"),
        (
            [[10, 10, 30, 10, 30, 30], [1, 2, 3, 4, 5, 6, 7]],
            (10, 10, 20, 20),
            "polygon 1 has an odd count of coordinates (7",
        ),
        ([[10, 10, float("nan"), 10, 30, 30]], (10, 10, 20, 20), "polygon 0 has a NaN or infinite coordinate"),
        ([[10, 10, 300, 10, 30, 30]], (10, 10, 20, 20), "polygon 0 has points outside the 100x80 image"),
        ([[10, 10, 30, 10, 30, -50]], (10, 10, 20, 20), "points outside the 100x80 image"),
        ([10, 10, 30, 10, 30, 30], (10, 10, 20, 20), "segmentation must be an RLE object or a list of polygons"),
        ([["a", 10, 30, 10, 30, 30]], (10, 10, 20, 20), "polygon 0 holds non-numbers"),
        ({"size": [10, 10], "counts": "abc"}, (10, 10, 20, 20), "RLE size [10, 10] differs from the image's"),
        ([[10, 10, 30, 10, 30, 30]], (10, 10, float("nan"), 20), "bbox needs finite numbers and w, h > 0"),
        ([[10, 10, 30, 10, 30, 30]], (10, 10, 20), "bbox must be 4 numbers"),
    ],
)
def test_references_from_coco_refuses_bad_geometry_naming_the_annotation(tmp_path, segmentation, bbox, says):
    ann = _coco(tmp_path, segmentation, bbox)
    out = tmp_path / "refs.json"
    line = _one_error_line(_invoke(["references", "from-coco", "--annotations", str(ann), "--out", str(out)]))
    assert "annotation id 42 (image id 1)" in line and says in line, line
    assert "fix or remove that annotation" in line
    assert not out.exists()


def test_references_from_coco_accepts_good_polygons_on_the_border(tmp_path):
    ann = _coco(tmp_path, [[0, 0, 100, 0, 100, 80, 0, 80], [99.5, 79.5, 100.5, 79.5, 100.5, 80.5]])
    res = _invoke(["references", "from-coco", "--annotations", str(ann), "--out", str(tmp_path / "refs.json")])
    assert res.exit_code == 0, res.output


def test_the_shared_coco_sample_passes_the_reference_checks(coco_mini):
    from ntt_batch.references.coco import coco_annotation_problem, load_coco

    for split in ("train2017", "val2017"):
        coco = load_coco(coco_mini / "annotations" / f"instances_{split}.json")
        images = {im["id"]: im for im in coco["images"]}
        problems = [
            (a["id"], p)
            for a in coco["annotations"]
            if not a.get("iscrowd")
            for p in [coco_annotation_problem(a, images[a["image_id"]])]
            if p
        ]
        assert problems == []


# ----------------------------------------------------------------------------- eval


def _gt(tmp_path: Path) -> Path:
    gt = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 20, "height": 10}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "iscrowd": 0,
                "area": 16.0,
                "bbox": [2, 2, 4, 4],
                "segmentation": [[2, 2, 6, 2, 6, 6, 2, 6]],
            }
        ],
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    return path


def _rle(h: int, w: int) -> dict:
    import numpy as np
    from pycocotools import mask as mask_utils

    m = np.zeros((h, w), dtype=np.uint8, order="F")
    m[2:6, 2:6] = 1
    rle = mask_utils.encode(m)
    return {"size": [h, w], "counts": rle["counts"].decode()}


@pytest.mark.parametrize(
    "bad, says",
    [
        ({"bbox": [2, 2, 4]}, "detection [1] field 'bbox': expected 4 finite numbers"),
        ({"score": "0.9"}, "detection [1] field 'score': expected a finite number, got '0.9' (str)"),
        ({"score": float("nan")}, "detection [1] field 'score': expected a finite number, got nan (float)"),
        ({"score": True}, "detection [1] field 'score': expected a finite number, got True (bool)"),
        ({"image_id": "1"}, "detection [1] field 'image_id': expected an integer, got '1' (str)"),
        (
            {"segmentation": _rle(12, 20)},
            "detection [1] field 'segmentation': RLE size [12, 20] differs from image 1's",
        ),
        ({"segmentation": [[1, 2, 3]]}, "detection [1] field 'segmentation': expected an RLE object or polygons"),
    ],
)
def test_eval_refuses_malformed_results_naming_entry_and_field(tmp_path, bad, says):
    good = {"image_id": 1, "category_id": 1, "bbox": [2, 2, 4, 4], "score": 0.9, "segmentation": _rle(10, 20)}
    results = tmp_path / "results.json"
    results.write_text(json.dumps([good, {**good, **bad}]))
    line = _one_error_line(_invoke(["eval", "--annotations", str(_gt(tmp_path)), "--results", str(results)]))
    assert f"{results}: {says}" in line, line
    results.write_text(json.dumps([good]))
    res = _invoke(["eval", "--annotations", str(_gt(tmp_path)), "--results", str(results)])
    assert res.exit_code == 0, res.output


# ----------------------------------------------------------------------------- the CLI's handling


def test_config_errors_print_without_a_type_prefix_and_other_errors_with_it(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("images: s3://b/in/\nmemory: bank\nout: s3://b/out/\nlimit: three\n")
    line = _one_error_line(_invoke(["config", "check", str(path)]))
    assert line == f"Error: {path}: limit: expected an integer, got 'three' (str)"
    line = _one_error_line(
        _invoke(["references", "from-coco", "--annotations", str(path), "--out", str(tmp_path / "r")])
    )
    assert re.match(r"Error: \w+Error: ", line), line  # not a ConfigError: the exception's type says what went wrong
    res = _invoke(["--debug", "config", "check", str(path)])
    assert res.exception is not None and type(res.exception).__name__ == "ConfigError"
