"""Shared fixtures: the shared COCO sample, random-weight checkpoints in official layouts, a small bank,
a local Ray instance and a real S3 API on loopback (moto's server mode)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest


def shared_data_dir() -> Path:
    env = os.environ.get("NTT_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def coco_mini() -> Path:
    d = shared_data_dir() / "coco_mini"
    if not (d / "annotations" / "instances_val2017.json").is_file():
        pytest.skip(f"shared COCO sample not found at {d} (set NTT_SHARED_DATA to the shared data folder)")
    return d


@pytest.fixture(scope="session")
def random_checkpoints(tmp_path_factory) -> Path:
    """sam2.1_hiera_tiny + dinov2_vits14 random weights, written by the real writer."""
    from ntt_batch.models.loading import write_random_checkpoint

    d = tmp_path_factory.mktemp("random_ckpt")
    for name in ("sam2.1_hiera_tiny", "dinov2_vits14"):
        write_random_checkpoint(name, d, seed=0)
    return d


@pytest.fixture(scope="session")
def small_bank(tmp_path_factory, random_checkpoints, coco_mini) -> Path:
    """A 2-class (person, car) 1-shot bank from coco_mini train, built by the real builder."""
    from ntt_batch.bank.build import build_bank_folder as build_bank
    from ntt_batch.references.files import save_references
    from ntt_batch.references.sampler import sample_references_from_file

    d = tmp_path_factory.mktemp("bank")
    refs = sample_references_from_file(str(coco_mini / "annotations/instances_train2017.json"), "person,car", 1, 33)
    save_references(refs, d / "refs.json")
    build_bank(
        str(d / "refs.json"),
        str(coco_mini / "train2017"),
        str(d / "bank"),
        encoder_name="dinov2_vits14",
        checkpoint_dir=str(random_checkpoints),
        download=False,
        device="cpu",
    )
    return d / "bank"


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray instance with 2 CPUs for the tests of one module (shut down after them)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server():
    """A real S3 API on loopback (moto's server mode, as s3fs's own tests use); yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


SEG = {"points_per_side": 2, "device": "cpu"}  # the tests' segmenter: a 2x2 point grid on the CPU


def job_config(random_checkpoints: Path, small_bank: Path, **kw):
    """A batch-job config over the random-weight checkpoints and ``small_bank``; ``kw`` overrides any setting."""
    from ntt_batch.method.config import SegmenterConfig
    from ntt_batch.pipeline.config import JobConfig

    base = dict(
        memory=str(small_bank),
        sam2="sam2.1_hiera_tiny",
        checkpoint_dir=str(random_checkpoints),
        download=False,
        segmenter=SegmenterConfig(**SEG),
        batch_size=2,
        allow_errors=True,
    )
    base.update(kw)
    return JobConfig(**base)


def rows_by_uri(out, options=None, columns=None) -> dict[str, dict]:
    """An output's rows by image URI (``columns``: those only), checking that no image has two rows."""
    from ntt_batch.output.shards import read_shards

    rows = read_shards(str(out), options, columns=columns).to_pylist()
    assert len({r["image_uri"] for r in rows}) == len(rows), "an image has two rows"
    return {r["image_uri"]: r for r in rows}
