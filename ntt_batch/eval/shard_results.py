"""A run's shards as COCO results in memory, for evaluation (COCOeval needs them all at once anyway)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..output.reader import iter_image_batches
from ..output.shards import STATUS_ERROR


def _check_threshold(score_threshold: float | None) -> float | None:
    if score_threshold is None:
        return None
    t = float(score_threshold)
    if not np.isfinite(t):
        raise ValueError(f"score threshold must be a finite number, got {score_threshold!r}")
    return t


@dataclass
class ShardResults:
    """COCO results read from shards for evaluation, with the per-image status it saw."""

    results: list[dict]
    processed_image_ids: set[int]  # rows with status ok or empty
    error_image_ids: set[int]
    rows: int


def coco_results_from_shards(
    shards: str, options: dict | None = None, *, score_threshold: float | None = None
) -> ShardResults:
    """All instances as COCO results dicts in memory (COCOeval needs them all at once anyway)."""
    t = _check_threshold(score_threshold)
    results: list[dict] = []
    processed: set[int] = set()
    errors: set[int] = set()
    rows = 0
    for b in iter_image_batches(shards, options):
        for i in range(len(b)):
            rows += 1
            image_id = int(b.image_id[i])
            if b.status[i] == STATUS_ERROR:
                errors.add(image_id)
                continue
            processed.add(image_id)
            for j in range(int(b.offsets[i]), int(b.offsets[i + 1])):
                if t is not None and b.score[j] < t:
                    continue
                results.append(
                    {
                        "image_id": image_id,
                        "category_id": int(b.category_id[j]),
                        "bbox": b.bbox[j],
                        "score": float(b.score_text[j]),
                        "segmentation": {"size": b.size[j], "counts": b.counts[j]},
                    }
                )
    return ShardResults(results, processed, errors, rows)
