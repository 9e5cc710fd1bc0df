"""The segment stage turns an out-of-memory image into an ``error`` row and goes on (no Ray needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ntt_batch.method.config import SegmenterConfig
from ntt_batch.method.fullres import image_memory_estimate
from ntt_batch.method.segmenter import Instance
from ntt_batch.output.shards import STATUS_EMPTY, STATUS_ERROR, STATUS_OK
from ntt_batch.pipeline.stages import _base_row, segment_rows


class FakeSegmenter:
    """segment_targets: fails the whole batch when it holds a poisoned image, then per image."""

    def __init__(self, config: SegmenterConfig, poison: dict[int, BaseException]):
        self.config = config
        self.poison = poison  # image width → exception
        self.calls: list[list[int]] = []

    def segment_targets(self, targets):
        widths = [t.orig_hw[1] for t in targets]
        self.calls.append(widths)
        for w in widths:
            if w in self.poison:
                raise self.poison[w]
        out = []
        for t in targets:
            h, w = t.orig_hw
            if w % 2:  # odd widths: one instance; even: none
                m = np.zeros((h, w), bool)
                m[:2, :3] = True
                out.append([Instance(mask=m, bbox=[0.0, 0.0, 2.0, 1.0], score=0.5, category_id=1, category_name="a")])
            else:
                out.append([])
        return out


def _batch(widths: list[int], h: int = 20, errors: dict[int, str] | None = None) -> tuple[dict, list[dict]]:
    errors = errors or {}
    cols = {"image_id": [], "image_uri": [], "width": [], "height": [], "error": [], "pixels": []}
    for k, w in enumerate(widths):
        cols["image_id"].append(k)
        cols["image_uri"].append(f"mem://{k}.png")
        cols["width"].append(w)
        cols["height"].append(h)
        cols["error"].append(errors.get(k, ""))
        cols["pixels"].append(np.full((h, w, 3), 100, np.uint8).tobytes())
    return cols, [_base_row(cols, i, "run") for i in range(len(widths))]


@pytest.mark.parametrize(
    "exc,kind",
    [
        (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"), "OutOfMemoryError"),
        (MemoryError("Unable to allocate 9.4 GiB"), "MemoryError"),
        (
            RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 10240000000 bytes"),
            "RuntimeError",
        ),
    ],
)
def test_out_of_memory_image_becomes_an_error_row(exc, kind):
    seg = FakeSegmenter(SegmenterConfig(device="cpu"), poison={31: exc})
    batch, rows = _batch([21, 31, 40])
    rows = segment_rows(seg, batch, rows)
    assert seg.calls == [[21, 31, 40], [21], [31], [40]]  # the batch failed: retried one by one
    assert [r["status"] for r in rows] == [STATUS_OK, STATUS_ERROR, STATUS_EMPTY]
    assert rows[1]["error"].startswith(f"out of memory: {kind}: ") and str(exc)[:20] in rows[1]["error"]
    assert rows[0]["num_instances"] == 1 and rows[0]["instances"][0]["segmentation"]["size"] == [20, 21]


def test_other_failures_keep_their_message():
    seg = FakeSegmenter(SegmenterConfig(device="cpu"), poison={31: ValueError("bad prompt")})
    batch, rows = _batch([31, 21])
    rows = segment_rows(seg, batch, rows)
    assert rows[0]["error"] == "segmentation failed: ValueError: bad prompt"
    assert rows[1]["status"] == STATUS_OK


def test_memory_guard_refuses_before_trying():
    # A 2 MiB limit: the 1 MiB merge budget fits beside a 21-wide image, not beside a 2001-wide one.
    seg = FakeSegmenter(
        SegmenterConfig(device="cpu", points_per_side=2, memory_limit_mb=2, merge_memory_mb=1), poison={}
    )
    batch, rows = _batch([21, 2001, 41], h=30, errors={2: "missing: mem://2.png does not exist"})
    rows = segment_rows(seg, batch, rows)
    assert seg.calls == [[21]]  # neither the refused nor the undecodable image reached the model
    assert rows[0]["status"] == STATUS_OK
    assert rows[1]["status"] == STATUS_ERROR
    assert rows[1]["error"].startswith("out of memory (estimated): a 2001x30 image needs about")
    assert "memory_limit_mb" in rows[1]["error"]
    assert rows[2]["error"].startswith("missing:")


def test_memory_estimates():
    fast = SegmenterConfig()
    ref = SegmenterConfig(implementation="reference")
    fifty = (5773, 8660)  # 50 MP
    assert image_memory_estimate(fifty, fast) < 2.5 * 2**30  # pixels + 256 MiB budget + runs (generous)
    assert image_memory_estimate(fifty, ref) > 100 * 2**30  # 800 full-size float masks
    tiled = SegmenterConfig(tile_size=1024)
    assert image_memory_estimate(fifty, tiled) < 3 * 2**30
    small = (480, 640)
    assert image_memory_estimate(small, ref) < 3 * 2**30
