"""Reading one shard's samples, whatever its kind (the dispatcher over ``webdataset`` and ``table``)."""

from __future__ import annotations

from collections.abc import Iterator

from .shards import KIND_WEBDATASET, Sample, ShardCensus
from .table import iter_table_samples
from .webdataset import iter_tar_samples


def read_shard(
    kind: str,
    shard: str,
    options: dict | None,
    *,
    image_column: str | None,
    id_column: str | None,
    done: frozenset[str] | set[str] = frozenset(),
    census: ShardCensus,
) -> Iterator[Sample]:
    """Every sample of ``shard`` whose (escaped) key is not in ``done``; a broken shard ends with a
    :data:`SHARD_ERROR_KEY` sample naming where it broke. Never raises for a bad shard."""
    if kind == KIND_WEBDATASET:
        return iter_tar_samples(shard, options, image_ext=image_column, done=done, census=census)
    return iter_table_samples(shard, options, image_column=image_column, id_column=id_column, done=done, census=census)
