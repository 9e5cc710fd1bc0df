"""Label Studio export fidelity: one brush region per instance, read back by the REAL label-studio-sdk.

* Our brush RLE encoder (``ntt_batch.exports.brush_rle``) against the SDK: the committed
  ``tests/data/label_studio_brush/sdk/`` holds what ``label-studio-sdk`` 2.1.2 itself made of the committed
  ``tasks.json`` (``benchmarks/label_studio_brush_check.py``: its ``Converter`` "BRUSH_TO_PNG" export, one PNG per
  region, and its ``mask2rle`` bytes of each decoded mask). The test rebuilds the tasks from the
  masks below, checks they are the committed ones, and compares the SDK's PNGs pixel for pixel with
  the masks and its bytes with ours. With ``LS_SDK_PYTHON`` naming the Python of a virtualenv that
  has label-studio-sdk, the script is rerun on the fresh export as well.
* A transcription of the SDK's ``decode_rle`` (``label_studio_sdk/converter/brush.py``, below) reads
  every region too, so CI needs no virtualenv.
* 15 instances → 15 regions (the polygon mode gave one region per 4-connected part: a speckled
  instance alone gives hundreds); ``--ls-mask polygons`` with ``--min-part-area``; the warning
  for local paths Label Studio cannot serve; boxes = the masks' extent (pycocotools ``toBbox``).
"""

from __future__ import annotations

import json
import os
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from pycocotools import mask as mask_utils
from scipy import ndimage
from test_merge_eval_viz import _instance, _row, write_shards

from ntt_batch.cli import main
from ntt_batch.exports import export
from ntt_batch.exports.brush_rle import brush_rle_to_mask, encode_brush_values, mask_to_brush_rle
from ntt_batch.storage.masks import encode_rle, mask_to_box_xyxy_inclusive, xyxy_to_coco_xywh

DATA = Path(__file__).parent / "data" / "label_studio_brush"
H, W = 240, 320
CATS = [{"id": 1, "name": "boat"}, {"id": 2, "name": "person"}, {"id": 3, "name": "bird"}]


# ----------------------------------------------------------------------------- the SDK's decoder, transcribed


def sdk_decode_rle(rle) -> np.ndarray:
    """``label_studio_sdk.converter.brush.decode_rle`` (label-studio-sdk 2.1.2), transcribed: bytes → the
    flat uint8 values (an ``H x W x 4`` RGBA image, row-major). Kept line for line, slow on purpose."""

    def bytes2bit(data):
        return "".join(str((data[i // 8] & (1 << (7 - i % 8))) >> (7 - i % 8)) for i in range(len(data) * 8))

    class InputStream:
        def __init__(self, data):
            self.data, self.i = data, 0

        def read(self, size):
            out = self.data[self.i : self.i + size]
            self.i += size
            return int(out, 2)

    inp = InputStream(bytes2bit(rle))
    num = inp.read(32)
    word_size = inp.read(5) + 1
    rle_sizes = [inp.read(4) + 1 for _ in range(4)]
    i = 0
    out = np.zeros(num, dtype=np.uint8)
    while i < num:
        x = inp.read(1)
        j = i + 1 + inp.read(rle_sizes[inp.read(2)])
        if x:
            out[i:j] = inp.read(word_size)
            i = j
        else:
            while i < j:
                out[i] = inp.read(word_size)
                i += 1
    return out


def sdk_mask(result: dict) -> np.ndarray:
    """``brush.decode_from_annotation``'s layer for one region: alpha channel of the decoded RGBA image."""
    h, w = result["original_height"], result["original_width"]
    return np.reshape(sdk_decode_rle(result["value"]["rle"]), [h, w, 4])[:, :, 3] > 0


# ----------------------------------------------------------------------------- the 15 instances


def fifteen_masks() -> list[tuple[int, np.ndarray]]:
    """(category id, bool (240, 320) mask) for 15 instances of one frame, chosen to exercise the code:
    a 60-row band (a run of 76,800 RGBA values: longer than one 65,536-value block), a speckled
    instance of hundreds of 4-connected parts (like the client's boat of 921 polygons), a ring with
    a hole, single pixels, parts touching diagonally, masks on the right and bottom borders."""
    rng = np.random.default_rng(18)
    yy, xx = np.mgrid[:H, :W]
    masks = []
    band = np.zeros((H, W), bool)
    band[:60] = True
    band[60, 5:9] = True
    masks.append((1, band))
    speckle = np.zeros((H, W), bool)
    speckle[70:150, 10:110] = rng.random((80, 100)) < 0.3
    masks.append((1, speckle))
    ring = ((yy - 120) ** 2 + (xx - 200) ** 2 < 40**2) & ((yy - 120) ** 2 + (xx - 200) ** 2 >= 20**2)
    masks.append((2, ring))
    one = np.zeros((H, W), bool)
    one[200, 17] = True
    masks.append((3, one))
    diag = np.zeros((H, W), bool)
    diag[180, 150] = diag[181, 151] = diag[182, 152] = True
    masks.append((3, diag))
    right = np.zeros((H, W), bool)
    right[100:140, 300:] = True
    masks.append((2, right))
    bottom = np.zeros((H, W), bool)
    bottom[230:, 40:90] = True
    bottom[225, 60] = True
    masks.append((2, bottom))
    corner = np.zeros((H, W), bool)
    corner[-1, -1] = True
    masks.append((3, corner))
    for k in range(7):  # ellipses and boxes of various sizes, some overlapping the others
        m = ((yy - 70 - 20 * k) / (6 + 3 * k)) ** 2 + ((xx - 130 - 25 * k) / (9 + 2 * k)) ** 2 < 1
        if k % 3 == 0:
            m[150 + 5 * k : 160 + 5 * k, 230 : 240 + 4 * k] = True
        masks.append((1 + k % 3, m))
    assert len(masks) == 15 and all(m.any() for _, m in masks)
    return masks


def frame_rows(image_dir: Path) -> tuple[list[dict], list[np.ndarray]]:
    """Shard rows: the 15-instance frame and an empty image; boxes as the job stores them (method.md §4.8)."""
    names = {c["id"]: c["name"] for c in CATS}
    insts, masks = [], []
    for k, (cid, m) in enumerate(fifteen_masks()):
        box = xyxy_to_coco_xywh(mask_to_box_xyxy_inclusive(m))  # the reference code's box, 1 px short
        insts.append(_instance(cid, names[cid], 0.95 - 0.05 * k, box, encode_rle(m)))
        masks.append(m)
    rows = [
        _row(18, str(image_dir / "frame.png"), W, H, insts),
        _row(19, str(image_dir / "empty.png"), W, H, []),
    ]
    return rows, masks


@pytest.fixture(scope="module")
def frame(tmp_path_factory):
    d = tmp_path_factory.mktemp("lsframe")
    (d / "photos").mkdir()
    for name in ("frame.png", "empty.png"):
        Image.new("RGB", (W, H)).save(d / "photos" / name)
    rows, masks = frame_rows(d / "photos")
    shards = write_shards(d / "shards", rows, run_json={"memory_bank": {"categories": CATS, "content_hash": "a" * 64}})
    return d, shards, masks


def _export_tasks(shards: Path, out: Path, **kw) -> tuple[list[dict], object]:
    stats = export(str(shards), str(out), format="label-studio", **kw)
    return json.loads(out.read_text()), stats


def _committed_form(tasks: list[dict]) -> list[dict]:
    """The tasks with machine-specific paths replaced by the committed fixture's."""
    return [dict(t, data=dict(t["data"], image_uri="/data/photos/" + Path(t["data"]["image_uri"]).name)) for t in tasks]


# ----------------------------------------------------------------------------- encoder


def test_encoder_matches_the_transcribed_sdk_and_decodes_back():
    rng = np.random.default_rng(0)
    cases = [np.zeros((3, 5), bool), np.ones((130, 140), bool), rng.random((37, 41)) < 0.5]
    cases += [m for _, m in fifteen_masks()[:4]]
    for m in cases:
        rle = mask_to_brush_rle(m)
        assert all(isinstance(v, int) and 0 <= v <= 255 for v in rle)
        assert np.array_equal(
            sdk_mask({"original_height": m.shape[0], "original_width": m.shape[1], "value": {"rle": rle}}), m
        )
        assert np.array_equal(brush_rle_to_mask(rle, *m.shape), m)
        # the SDK's mask2rle is encode_rle(np.repeat(mask.ravel(), 4)): same bytes through the generic path
        assert encode_brush_values(np.repeat(m.ravel().astype(np.uint8) * 255, 4)) == rle
    # literal blocks (runs of one value) and every run-length field, through the generic encoder
    values = np.repeat(rng.integers(0, 4, 400).astype(np.uint8), rng.integers(1, 300, 400))
    values = np.concatenate([values, np.full(70_000, 9, np.uint8)])
    assert np.array_equal(sdk_decode_rle(encode_brush_values(values)), values)
    with pytest.raises(ValueError, match="do not match the RLE"):
        brush_rle_to_mask(mask_to_brush_rle(np.ones((4, 4), bool)), 4, 5)


# ----------------------------------------------------------------------------- one region per instance


def test_fifteen_instances_are_fifteen_brush_regions_read_back_by_label_studio_sdk(frame):
    d, shards, masks = frame
    out = d / "tasks.json"
    tasks, stats = _export_tasks(
        shards, out, image_root=str(d / "photos"), image_url_prefix="/data/local-files/?d=photos/"
    )
    assert stats.instances_written == 15 and not any("cannot load" in n for n in stats.notices)
    cfg = ET.fromstring((d / "tasks.label_config.xml").read_text())
    brush = cfg.find("BrushLabels")
    assert brush is not None and cfg.find("PolygonLabels") is None
    assert brush.get("name") == "label" and brush.get("toName") == cfg.find("Image").get("name") == "image"
    assert [lab.get("value") for lab in brush.findall("Label")] == ["boat", "person", "bird"]
    assert [t["data"]["image"] for t in tasks] == [
        "/data/local-files/?d=photos/frame.png",
        "/data/local-files/?d=photos/empty.png",
    ]
    result = tasks[0]["predictions"][0]["result"]
    assert len(result) == 15 and tasks[1]["predictions"][0]["result"] == []
    names = {c["id"]: c["name"] for c in CATS}
    for k, (r, m, (cid, _)) in enumerate(zip(result, masks, fifteen_masks())):
        assert r["id"] == f"18_{k}" and r["type"] == "brushlabels"
        assert (r["from_name"], r["to_name"], r["original_width"], r["original_height"]) == ("label", "image", W, H)
        assert set(r["value"]) == {"format", "rle", "brushlabels"} and r["value"]["format"] == "rle"
        assert r["value"]["brushlabels"] == [names[cid]]
        assert np.array_equal(sdk_mask(r), m)  # the SDK's decoder, transcribed: pixel-exact, holes and specks kept
        box = mask_utils.toBbox(mask_utils.encode(np.asfortranarray(sdk_mask(r).astype(np.uint8)))).tolist()
        assert box == mask_utils.toBbox(mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))).tolist()
    # the committed fixture is this very export (so the SDK's files below speak about our current bytes)
    committed = json.loads((DATA / "tasks.json").read_text())
    assert _committed_form(tasks) == committed
    assert (d / "tasks.label_config.xml").read_text() == (DATA / "tasks.label_config.xml").read_text()
    _check_sdk_output(DATA / "sdk", result, masks)


def _check_sdk_output(sdk_dir: Path, result: list[dict], masks: list[np.ndarray]) -> None:
    """What label-studio-sdk's Converter wrote (one PNG per region) and its mask2rle bytes, against ours."""
    sdk = json.loads((sdk_dir / "sdk.json").read_text())
    regions = {r["id"]: r for r in sdk["regions"]}
    assert sorted(regions) == sorted(r["id"] for r in result) and len(regions) == 15
    assert sorted(p.name for p in (sdk_dir / "png").iterdir()) == sorted(f"{rid}.png" for rid in regions)
    for r, m in zip(result, masks):
        got = regions[r["id"]]
        png = np.asarray(Image.open(sdk_dir / got["png"]))
        assert png.shape == (H, W) and np.array_equal(png > 0, m), r["id"]  # the SDK's exporter reads our mask
        assert got["alpha_values"] == [0, 255] and got["pixels"] == int(m.sum())
        assert got["sdk_mask2rle"] == r["value"]["rle"]  # byte for byte what the SDK writes for that mask


def _sdk_python() -> str | None:
    """The Python of a virtualenv with label-studio-sdk, from ``LS_SDK_PYTHON`` (None when unset or unusable)."""
    p = os.environ.get("LS_SDK_PYTHON")
    if not p or not os.path.isfile(p):
        return None
    ok = subprocess.run([p, "-c", "import label_studio_sdk.converter.brush"], capture_output=True).returncode == 0
    return p if ok else None


def test_real_label_studio_sdk_decodes_a_fresh_export(frame, tmp_path):
    """The SDK itself, in its own virtualenv, on the export just written (skipped without that venv)."""
    python = _sdk_python()
    if python is None:
        pytest.skip(
            "no virtualenv with label-studio-sdk (set LS_SDK_PYTHON); the committed SDK output is checked instead"
        )
    d, shards, masks = frame
    out = tmp_path / "t.json"
    tasks, _ = _export_tasks(shards, out, image_root=str(d / "photos"), image_url_prefix="/data/local-files/?d=photos/")
    res = subprocess.run(
        [
            python,
            str(Path(__file__).resolve().parents[1] / "benchmarks" / "label_studio_brush_check.py"),
            str(out),
            str(tmp_path / "t.label_config.xml"),
            str(tmp_path / "sdk"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "15 regions decoded by label-studio-sdk" in res.stdout
    _check_sdk_output(tmp_path / "sdk", tasks[0]["predictions"][0]["result"], masks)


# ----------------------------------------------------------------------------- polygons, warnings, CLI


def _raster(points_pct: list, h: int, w: int) -> np.ndarray:
    poly = (np.asarray(points_pct, dtype=np.float64) * [w / 100, h / 100]).ravel().tolist()
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([poly], h, w))).astype(bool)


def test_polygon_mode_and_min_part_area(frame, tmp_path):
    d, shards, masks = frame
    tasks, _ = _export_tasks(shards, tmp_path / "p.json", mask="polygons", simplify=0)
    result = tasks[0]["predictions"][0]["result"]
    per_instance: dict[str, list] = {}
    for r in result:
        assert r["type"] == "polygonlabels" and r["value"]["closed"] is True
        per_instance.setdefault(r["id"].split("_")[1], []).append(r["value"]["points"])
    assert len(per_instance) == 15 and len(result) > 100  # the speckled instance: one region per part
    for k, m in enumerate(masks):
        pts = np.concatenate([np.asarray(p) for p in per_instance[str(k)]]) * [W / 100, H / 100]
        x0, y0 = pts.min(0)
        x1, y1 = pts.max(0)
        box = mask_utils.toBbox(mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))).tolist()
        assert np.allclose([x0, y0, x1 - x0, y1 - y0], box, atol=1e-3), k  # the mask's extent
    assert ET.fromstring((tmp_path / "p.label_config.xml").read_text()).find("PolygonLabels") is not None
    # a minimum part area drops the specks, never a whole instance: per instance, the 4-connected parts
    # whose area (holes filled) reaches 20 px, or the largest one (scipy.ndimage counts them)
    tasks, _ = _export_tasks(shards, tmp_path / "q.json", mask="polygons", min_part_area=20)
    kept = tasks[0]["predictions"][0]["result"]
    counts = {k: sum(r["id"].split("_")[1] == str(k) for r in kept) for k in range(15)}
    for k, m in enumerate(masks):
        labels, n = ndimage.label(m)  # 4-connectivity (the default structure)
        full = np.ones((3, 3), bool)  # holes: background not 8-connected to the outside
        areas = [int(ndimage.binary_fill_holes(labels == i, structure=full).sum()) for i in range(1, n + 1)]
        assert counts[k] == max(1, sum(a >= 20 for a in areas)), k
    assert len(kept) < 40 < len(result)
    band = [r for r in kept if r["id"].split("_")[1] == "0"]
    assert len(band) == 1 and _raster(band[0]["value"]["points"], H, W).sum() >= 60 * W
    with pytest.raises(ValueError, match="--ls-mask polygons"):
        export(str(shards), str(tmp_path / "x.json"), format="label-studio", min_part_area=5)
    assert not (tmp_path / "x.json").exists()


def test_local_paths_warn_and_cli_flags(frame, tmp_path):
    d, shards, _ = frame
    r = CliRunner().invoke(
        main, ["export", "--shards", str(shards), "--out", str(tmp_path / "a.json"), "--format", "label-studio"]
    )
    assert r.exit_code == 0, r.output
    assert "Label Studio cannot load" in r.output and "Local Storage" in r.output and "--image-url-prefix" in r.output
    tasks = json.loads((tmp_path / "a.json").read_text())
    assert tasks[0]["data"]["image"] == str(d / "photos" / "frame.png")  # what it warned about
    assert len(tasks[0]["predictions"][0]["result"]) == 15
    r = CliRunner().invoke(
        main,
        ["export", "--shards", str(shards), "--out", str(tmp_path / "b.json"), "--format", "label-studio"]
        + ["--ls-mask", "polygons", "--min-part-area", "20", "--image-root", str(d / "photos")]
        + ["--image-url-prefix", "https://example.org/photos/"],
    )
    assert r.exit_code == 0, r.output
    assert "cannot load" not in r.output and "PolygonLabels" in r.output
    assert json.loads((tmp_path / "b.json").read_text())[0]["data"]["image"] == "https://example.org/photos/frame.png"
    r = CliRunner().invoke(
        main,
        [
            "export",
            "--shards",
            str(shards),
            "--out",
            str(tmp_path / "c.json"),
            "--format",
            "dataset",
            "--ls-mask",
            "brush",
        ],
    )
    assert r.exit_code != 0 and "--ls-mask applies to --format label-studio only" in r.output
