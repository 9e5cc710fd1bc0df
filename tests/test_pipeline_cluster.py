"""The batch job on a two-node Ray cluster on one machine (ray.cluster_utils.Cluster).

The worker node advertises a fake GPU resource (there is no GPU here), so the job requests
num_gpus=1 per actor and Ray must place the segment actor on that node; the models then run on
its CPU because torch sees no CUDA device.
"""

from __future__ import annotations

import json
import shutil

import pytest

from ntt_batch.method.config import SegmenterConfig
from ntt_batch.output.shards import read_shards
from ntt_batch.pipeline.config import JobConfig
from ntt_batch.pipeline.job import run_job

pytestmark = pytest.mark.slow


def test_two_node_cluster_with_fake_gpu(tmp_path, coco_mini, random_checkpoints, small_bank):
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1, num_gpus=1)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        images = tmp_path / "in"
        images.mkdir()
        for p in sorted((coco_mini / "val2017").glob("*.jpg"))[:2]:
            shutil.copy(p, images / p.name)
        cfg = JobConfig(
            memory=str(small_bank),
            out=str(tmp_path / "out"),
            images=str(images),
            sam2="sam2.1_hiera_tiny",
            checkpoint_dir=str(random_checkpoints),
            download=False,
            batch_size=1,
            actor_num_cpus=1,
            segmenter=SegmenterConfig(points_per_side=2, device="auto"),
        )
        result = run_job(cfg, echo=lambda s: None)
        assert result.exit_code == 0 and result.summary["rows"] == 2 and result.summary["error"] == 0
        run = json.loads((tmp_path / "out" / "_ntt" / "run.json").read_text())
        assert run["cluster_resources"]["GPU"] == 1 and run["cluster_resources"]["CPU"] == 2
        assert sorted(read_shards(str(tmp_path / "out")).column("status").to_pylist()) in (
            ["empty", "ok"],
            ["ok", "ok"],
            ["empty", "empty"],
        )
    finally:
        ray.shutdown()
        cluster.shutdown()
