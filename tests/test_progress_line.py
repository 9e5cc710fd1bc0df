"""The batch job's progress line counts images as the model stage finishes them (issue 18: it stayed at
"0/N, ETA ?" for a whole small job, because only staged/committed rows were counted and a small job
stages its one block at the very end).

Real components: a local Ray instance, the real job driver and Ray Data pipeline; the model stage is
the no-op one slowed down (a fraction of a second per image) so that the job lasts a few progress
intervals while its single block is still in the model stage.
"""

from __future__ import annotations

import re
import sys
import time

import ray.cloudpickle
from conftest import job_config

from ntt_batch.pipeline import job as job_mod
from ntt_batch.pipeline.job import run_job
from ntt_batch.pipeline.stages import NoopModelActor

LINE = re.compile(r"^progress: (\d+)/(\d+) images")


class SlowNoopActor(NoopModelActor):
    """:class:`NoopModelActor` taking 0.4 s per image (so a progress line can see the job mid-way)."""

    def __call__(self, batch):
        time.sleep(0.4 * batch.num_rows)
        return super().__call__(batch)


# Ray workers cannot import this test module: ship the class by value
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _progress(lines: list[str]) -> list[tuple[int, int]]:
    return [(int(m[1]), int(m[2])) for m in (LINE.match(s) for s in lines) if m]


def test_progress_counts_images_before_the_block_is_written(
    ray_local, random_checkpoints, small_bank, coco_mini, tmp_path, monkeypatch
):
    monkeypatch.setattr(job_mod.ProgressLine, "intervals_s", (0.1, 0.1))
    n = 8
    cfg = job_config(
        random_checkpoints,
        small_bank,
        images=str(coco_mini / "val2017"),
        out=str(tmp_path / "out"),
        limit=n,
        batch_size=1,
        block_rows=64,  # all 8 images in one block: staged only once all are done
    )
    lines: list[str] = []
    res = run_job(cfg, echo=lines.append, model_stage=SlowNoopActor, verbose=False)
    assert res.summary["rows"] == n and res.summary["missing"] == 0
    progress = _progress(lines)
    assert progress, lines
    assert all(total == n for _, total in progress)
    mid = [done for done, _ in progress if 0 < done < n]
    assert mid, f"no progress line saw the job mid-way: {progress}"
    dones = [done for done, _ in progress]
    assert dones == sorted(dones)  # never goes back
    # the last progress line, before the summary, says all images are done
    summary_at = next(i for i, s in enumerate(lines) if s.startswith("summary:"))
    last_at = max(i for i, s in enumerate(lines) if LINE.match(s))
    assert last_at < summary_at and progress[-1] == (n, n)


def test_progress_line_is_printed_for_a_job_shorter_than_one_interval(
    ray_local, random_checkpoints, small_bank, coco_mini, tmp_path
):
    """With the default 30 s interval (not a terminal), a short job still ends with its final count."""
    cfg = job_config(
        random_checkpoints, small_bank, images=str(coco_mini / "val2017"), out=str(tmp_path / "out"), limit=3
    )
    lines: list[str] = []
    run_job(cfg, echo=lines.append, model_stage=NoopModelActor, verbose=False)
    progress = _progress(lines)
    assert progress and progress[-1] == (3, 3), lines
