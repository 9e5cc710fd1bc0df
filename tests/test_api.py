"""The Python API (`import ntt_batch`): lazy names, references → bank → segmenter → typed instances, run()."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ntt_batch


def test_import_is_cheap_and_exports_the_api():
    code = (
        "import sys, ntt_batch; names = ntt_batch.__all__; "
        "assert 'torch' not in sys.modules and 'ray' not in sys.modules, 'import pulled in torch/ray'; "
        "print(ntt_batch.__version__, len(names))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    for name in (
        "Instance",
        "Segmenter",
        "load_segmenter",
        "build_bank",
        "sample_references",
        "references_from_csv",
        "references_from_coco",
        "save_references",
        "load_references",
        "run",
        "review",
        "show_references",
        "evaluate",
        "load_bank",
    ):
        assert name in ntt_batch.__all__ and callable(getattr(ntt_batch, name)), name
    from ntt_batch.method.segmenter import Instance

    assert ntt_batch.Instance is Instance  # one public instance type, re-exported, not a copy
    with pytest.raises(AttributeError):
        ntt_batch.no_such_name  # noqa: B018


def test_image_inputs_decode_alike(tmp_path, coco_mini):
    from ntt_batch.api import to_rgb_array

    path = sorted((coco_mini / "val2017").glob("*.jpg"))[0]
    arr = to_rgb_array(path)
    assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3
    assert np.array_equal(to_rgb_array(str(path)), arr)
    assert np.array_equal(to_rgb_array(path.read_bytes()), arr)
    assert np.array_equal(to_rgb_array(Image.open(path)), arr)
    assert np.array_equal(to_rgb_array(arr), arr)
    grey = arr[:, :, 0]
    assert np.array_equal(to_rgb_array(grey)[:, :, 2], grey)
    rgba = np.concatenate([arr, np.full(arr.shape[:2] + (1,), 255, np.uint8)], axis=2)
    assert np.array_equal(to_rgb_array(rgba), arr)
    # EXIF orientation is applied to PIL images as to files (the batch job's decoding)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when shown
    rotated = tmp_path / "rot.jpg"
    Image.fromarray(arr).save(rotated, exif=exif)
    assert to_rgb_array(Image.open(rotated)).shape[:2] == arr.shape[1::-1]
    assert to_rgb_array(rotated).shape[:2] == arr.shape[1::-1]
    with pytest.raises(ValueError, match="uint8"):
        to_rgb_array(arr.astype(np.float32) / 255)
    with pytest.raises(FileNotFoundError):
        to_rgb_array(tmp_path / "nope.jpg")
    with pytest.raises(TypeError):
        to_rgb_array(42)


def test_sample_references_remembers_the_image_root(tmp_path, coco_mini):
    ann = coco_mini / "annotations" / "instances_train2017.json"
    refs = ntt_batch.sample_references(ann, split="dog,cat", shots=1, image_root=coco_mini / "train2017")
    assert Path(refs["image_root"]).resolve() == (coco_mini / "train2017").resolve()  # absolute (symlinks aside)
    assert [c["name"] for c in refs["categories"]] == ["cat", "dog"]
    ntt_batch.save_references(refs, tmp_path / "refs.json")
    assert ntt_batch.load_references(tmp_path / "refs.json")["image_root"] == refs["image_root"]
    coco = ntt_batch.references_from_coco(ann, split="dog", max_per_class=2, image_root="imgs")
    assert coco["image_root"] == os.path.abspath("imgs") and len(coco["references"]) == 2


def _readme_block(heading: str, index: int = 0) -> str:
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text[text.index(heading) :]
    section = section[: section.index("\n## ", 1)]
    blocks = section.split("```python\n")[1:]
    return blocks[index].split("```")[0]


def _readme_photos(root: Path, coco_mini: Path) -> None:
    """The README's photos/ + masks/ + refs.csv, made from coco_mini images and rectangle masks."""
    vals = [
        p
        for p in sorted((coco_mini / "val2017").glob("*.jpg"))
        if Image.open(p).width >= 520 and Image.open(p).height >= 400
    ]  # the README's boxes fit in these
    sizes = []
    for name, src in (("kitchen_01.jpg", vals[0]), ("kitchen_02.jpg", vals[1]), ("shelf/s_07.png", vals[2])):
        im = Image.open(src).convert("RGB")
        (root / "photos" / name).parent.mkdir(parents=True, exist_ok=True)
        im.save(root / "photos" / name)
        sizes.append(im.size)
    (root / "masks").mkdir()
    for name, (w, h), box in (
        ("mug_01.png", sizes[0], (100, 120, 150, 140)),
        ("kettle_07.png", sizes[2], (200, 80, 180, 200)),
    ):
        m = np.zeros((h, w), np.uint8)
        m[box[1] : box[1] + box[3], box[0] : box[0] + box[2]] = 255
        Image.fromarray(m).save(root / "masks" / name)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    csv_lines = [
        line.split()[-1]
        for line in readme.splitlines()
        if "image,category,mask,x,y,w,h" in line or ",mug," in line or ",kettle," in line
    ]
    assert len(csv_lines) == 5, csv_lines
    (root / "refs.csv").write_text("\n".join(csv_lines) + "\n")


@pytest.mark.slow
def test_readme_python_api_example(tmp_path, coco_mini, random_checkpoints, monkeypatch, capsys):
    """The README's first Python API block, verbatim except for tiny models (random weights) and a 2x2 grid."""
    code = _readme_block("## Python API")
    for big, small in (
        ("dinov2_vitl14", "dinov2_vits14"),
        ("sam2_hiera_large", "sam2.1_hiera_tiny"),
        ("points_per_side=32", "points_per_side=2"),
    ):
        assert big in code
        code = code.replace(big, small)
    _readme_photos(tmp_path, coco_mini)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NTT_CHECKPOINT_DIR", str(random_checkpoints))
    from ntt_batch.api import Segmenter

    calls: list = []
    original = Segmenter.segment_many
    monkeypatch.setattr(
        Segmenter, "segment_many", lambda self, *a, **k: calls.append(original(self, *a, **k)) or calls[-1]
    )
    ns: dict = {}
    exec(compile(code, "README.md (Python API)", "exec"), ns)  # noqa: S102 - the documented example
    printed = capsys.readouterr().out
    monkeypatch.setattr(Segmenter, "segment_many", original)

    refs, seg = ns["refs"], ns["seg"]
    assert [c["name"] for c in refs["categories"]] == ["mug", "kettle"]
    assert sum(r.get("segmentation") is None for r in refs["references"]) == 2  # two box rows
    assert (tmp_path / "bank" / "references.json").is_file() and (tmp_path / "references.png").is_file()
    meta = json.loads((tmp_path / "bank" / "memory_bank.json").read_text())
    assert len(meta["references"]["box_masks"]) == 2
    (found,) = calls[0]  # what the README's loop printed
    assert printed.count("\n") == len(found)
    h, w = np.asarray(Image.open(tmp_path / "photos" / "kitchen_01.jpg")).shape[:2]
    for inst in found:
        assert isinstance(inst, ntt_batch.Instance)
        assert inst.mask.dtype == bool and inst.mask.shape == (h, w)
        assert len(inst.bbox) == 4 and 0.0 <= inst.score <= 1.0
        assert (inst.category_id, inst.category_name) in {(1, "mug"), (2, "kettle")}
        assert inst.to_coco_result(7)["image_id"] == 7
    assert [i.score for i in found] == sorted((i.score for i in found), reverse=True)
    assert "mug" in repr(seg) and seg.config.points_per_side == 2
    # a PIL image gives the same instances as the path (arrays, bytes: test_image_inputs_decode_alike)
    other = seg(Image.open(tmp_path / "photos" / "kitchen_01.jpg"))
    assert [(i.category_id, round(i.score, 4)) for i in other] == [(i.category_id, round(i.score, 4)) for i in found]
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(other, found))
    with pytest.raises(ValueError, match="points_per_side"):
        ntt_batch.load_segmenter("bank", sam2="sam2.1_hiera_tiny", points_per_side=0)


def test_segmenter_batches_and_score_threshold():
    from ntt_batch.api import Segmenter
    from ntt_batch.method.segmenter import Instance

    class Model:
        calls: list = []

        def segment_images(self, images):
            self.calls.append(len(images))
            return [
                [Instance(np.zeros(im.shape[:2], bool), [0, 0, 1, 1], s, 1, "a") for s in (0.9, 0.4)] for im in images
            ]

    seg = Segmenter(Model(), {}, score_threshold=0.5)
    out = seg.segment_many([np.zeros((4, 5, 3), np.uint8)] * 5, batch_size=2)
    assert Model.calls == [2, 2, 1] and [[i.score for i in r] for r in out] == [[0.9]] * 5
    seg.score_threshold = None
    assert [i.score for i in seg(np.zeros((4, 5), np.uint8))] == [0.9, 0.4]
    with pytest.raises(ValueError, match="batch_size"):
        seg.segment_many([], batch_size=0)


def test_run_dry_run_from_python(tmp_path, coco_mini, small_bank):
    summary = ntt_batch.run(
        images=str(coco_mini / "val2017"),
        memory=small_bank,
        out=tmp_path / "out",
        limit=3,
        sam2="sam2.1_hiera_tiny",
        segmenter={"points_per_side": 2},
        dry_run=True,
        echo=None,
    )
    assert summary["exit_code"] == 0 and summary["to_process"] == 3
    with pytest.raises(ValueError, match="segmenter"):
        ntt_batch.run(
            images=str(coco_mini / "val2017"),
            memory=small_bank,
            out=tmp_path / "out",
            segmenter={"point_per_side": 2},
            dry_run=True,
            echo=None,
        )


@pytest.mark.slow
def test_run_job_from_python_then_review(tmp_path, coco_mini, small_bank, random_checkpoints):
    env_addr = os.environ.pop("RAY_ADDRESS", None)
    try:
        lines: list[str] = []
        summary = ntt_batch.run(
            images=str(coco_mini / "val2017"),
            memory=small_bank,
            out=tmp_path / "out",
            limit=1,
            sam2="sam2.1_hiera_tiny",
            checkpoint_dir=str(random_checkpoints),
            download=False,
            segmenter={"points_per_side": 2, "device": "cpu"},
            echo=lines.append,
        )
    finally:
        if env_addr is not None:
            os.environ["RAY_ADDRESS"] = env_addr
    assert summary["exit_code"] == 0, lines
    assert summary["rows"] == 1 and summary["error"] == 0
    page = ntt_batch.review(tmp_path / "out", tmp_path / "review")
    assert page.images == 1 and Path(page.index).is_file()
    data = _first_page(Path(page.index).parent)
    assert data["images"][0]["uri"].endswith(".jpg") and len(data["images"][0]["inst"]) == page.instances


def _first_page(review: Path) -> dict:
    """The review page's first data page in file order (a script calling ``__nttReviewPage``)."""
    text = (review / "data" / "file" / "page-00000.js").read_text()
    return json.loads(text[text.index("(") + 1 : text.rindex(")")])
