"""What an export counts while it streams the shards: rows by status, duplicate image ids, closing notices.

:func:`~ntt_batch.exports.base.run_export` feeds every row through :func:`count_row` and every
image id through an :class:`IdChecker`, and calls :func:`finish_stats` at the end; the numbers land
in :class:`ExportStats`, the statistics every export returns.
"""

from __future__ import annotations

from array import array
from dataclasses import asdict, dataclass, field

import numpy as np

from ..output.reader import ImageBatch
from ..output.shards import STATUS_EMPTY, STATUS_ERROR, STATUS_OK

MAX_EXAMPLES = 5  # error rows kept as examples, duplicate ids shown


@dataclass
class ExportStats:
    """What an export read and wrote. ``notices`` are human-readable remarks worth showing."""

    format: str
    out: str
    shards: int = 0
    rows: int = 0
    images_ok: int = 0
    images_empty: int = 0
    images_error: int = 0
    images_written: int = 0
    instances_read: int = 0
    instances_written: int = 0
    below_threshold: int = 0
    score_threshold: float | dict | None = None  # one number, or the per-class map
    categories: list[dict] = field(default_factory=list)
    categories_source: str | None = None
    error_examples: list[dict] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    bytes_written: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def count_row(stats: ExportStats, b: ImageBatch, i: int) -> bool:
    """Count row ``i`` of ``b`` into ``stats``; False if it is an error row (skipped by every export)."""
    stats.rows += 1
    status = b.status[i]
    if status == STATUS_ERROR:
        stats.images_error += 1
        if len(stats.error_examples) < MAX_EXAMPLES:
            stats.error_examples.append({"image_id": b.image_id[i], "image_uri": b.image_uri[i], "error": b.error[i]})
        return False
    if status == STATUS_OK:
        stats.images_ok += 1
    elif status == STATUS_EMPTY:
        stats.images_empty += 1
    else:
        raise ValueError(
            f"shard {b.shard}: row for {b.image_uri[i]!r} has unknown status {status!r} "
            f"(expected {STATUS_OK}, {STATUS_EMPTY} or {STATUS_ERROR})"
        )
    return True


class IdChecker:
    """Collects image ids compactly (8 bytes each) and reports duplicates at the end."""

    def __init__(self) -> None:
        self.ids = array("q")

    def add(self, image_id: int) -> None:
        self.ids.append(int(image_id))

    def check(self, shards: str) -> None:
        """Raise ValueError naming a few image ids that appear in more than one row (and how to find them)."""
        if not self.ids:
            return
        ids = np.frombuffer(self.ids, dtype=np.int64)
        uniq, counts = np.unique(ids, return_counts=True)
        dup = uniq[counts > 1]
        if dup.size:
            shown = ", ".join(str(int(x)) for x in dup[:MAX_EXAMPLES])
            raise ValueError(
                f"{shards}: {dup.size} image id(s) appear in more than one row (e.g. {shown}); nothing was "
                'written. Each image must have exactly one row: find them with e.g. duckdb -c "select image_id, '
                f"image_uri from '{shards.rstrip('/')}/*.parquet' where image_id in ({shown})\" and give those "
                "inputs unique ids (a manifest with an image_id column)"
            )


def finish_stats(stats: ExportStats) -> None:
    """Add the closing notices: error rows skipped, nothing written (and why)."""
    if stats.images_error:
        stats.notices.append(
            f"{stats.images_error} image(s) with status 'error' were skipped "
            f"(e.g. {stats.error_examples[0]['image_uri']}: {stats.error_examples[0]['error']})"
        )
    if stats.rows and not stats.instances_written:
        stats.notices.append(
            "no instance was written"
            + (
                f" (all {stats.below_threshold} are below the score threshold {stats.score_threshold})"
                if stats.below_threshold
                else ""
            )
        )
