"""Shared fixtures: the shared COCO sample and random-weight checkpoints in official layouts."""

from __future__ import annotations

import os
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
