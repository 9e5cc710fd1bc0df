"""The README's first command (`ntt-batch demo`), CPU-sized: references -> bank -> Ray job -> eval."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_demo_runs_end_to_end(tmp_path, coco_mini):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["NTT_SHARED_DATA"] = str(coco_mini.parent)
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "ntt_batch.cli",
            "demo",
            "--random-weights",
            "--limit",
            "1",
            "--points-per-side",
            "2",
            "--out",
            str(tmp_path / "demo"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "[demo] 4/4 COCO evaluation" in res.stdout and "segm: AP" in res.stdout
    run = json.loads((tmp_path / "demo" / "shards" / "_ntt" / "run.json").read_text())
    assert run["summary"]["rows"] == 1 and run["official_weights"] is False
    json.loads((tmp_path / "demo" / "results.json").read_text())
    # it ends with the review page and the references' contact sheet, and says where they are
    assert (tmp_path / "demo" / "review" / "index.html").is_file() and (tmp_path / "demo" / "references.png").is_file()
    assert "[demo] review page:" in res.stdout and "[demo] next:" in res.stdout
