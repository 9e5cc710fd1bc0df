"""A memory-bank folder plus the models it needs, as one ready segmenter with its provenance record."""

from __future__ import annotations

import torch

from .._version import __version__
from ..method.config import SegmenterConfig, config_to_dict
from ..method.matching import check_negatives_available
from ..method.memory_bank import MemoryBank, check_encoder_weights
from ..method.segmenter import MethodSegmenter
from ..models.loading import load_encoder, load_sam2


def segmenter_from_bank(
    memory: str,
    *,
    sam2_name: str,
    config: SegmenterConfig,
    checkpoint_dir: str | None = None,
    download: bool = True,
) -> tuple[MethodSegmenter, dict]:
    """Load bank + models into a :class:`MethodSegmenter`; also return the provenance record."""
    bank = MemoryBank.load(memory)
    check_negatives_available(config, bank, f"memory bank {memory}")
    enc_name = bank.encoder["name"]
    encoder, enc_ckpt = load_encoder(enc_name, checkpoint_dir=checkpoint_dir, download=download)
    check_encoder_weights(bank.encoder, enc_ckpt, memory)
    proposer, sam_ckpt = load_sam2(
        sam2_name, checkpoint_dir=checkpoint_dir, download=download, add_no_mem_embed=config.add_no_mem_embed
    )
    segmenter = MethodSegmenter(proposer, encoder, bank, config)
    provenance = {
        "ntt_batch_version": __version__,
        "torch_version": torch.__version__,
        "device": str(segmenter.device),
        "config": config_to_dict(segmenter.config),  # resolved for the encoder (encoder_image_size)
        "models": {"sam2": sam_ckpt.to_json(), "encoder": enc_ckpt.to_json()},
        "memory_bank": {
            "path": str(memory),
            "content_hash": bank.content_hash,
            "categories": bank.categories,
            "shots": bank.shots,
            **({"negatives": bank.negative_shots} if bank.has_negatives else {}),
        },
        "official_weights": sam_ckpt.official and enc_ckpt.official,
    }
    return segmenter, provenance
