"""The review page's orderings, chosen in one streaming pass with bounded memory (see :mod:`.review`).

One pass over the shards (:func:`ntt_batch.output.reader.iter_image_batches`) counts rows per
status and instances/images per class, and keeps, per ordering, the row numbers of at most
``limit`` (the review budget K) rows:

* ``sample``: a seeded random sample: every row that is not an error gets the key
  ``blake2b(f"{seed}\\0{image_uri}")`` (64 bits) and the K smallest keys are kept, in key order.
  The sample depends only on the seed and the URIs (not on the shard layout or the row order),
  and a larger K extends a smaller one's sample.
* ``low``: lowest confidence first: an image's confidence is the lowest score among its instances
  that pass the default thresholds (all of them without thresholds); the K images with the lowest
  confidence are kept, ascending (ties by row number). Images with no such instance are not in it.
* ``class-<id>``: per class: the same seeded sample, restricted to the rows with at least one
  instance of that class passing the default thresholds (K per class).

Each is a bounded heap, so the memory is O(K x (2 + classes)) small tuples whatever the number
of rows. Row numbers count the rows in file order (sorted shard paths, then row order): the
second pass (drawing) meets the same rows in the same order.
"""

from __future__ import annotations

import hashlib
import heapq
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ..exports.score_filter import ScoreThresholds
from ..output.reader import ImageBatch, iter_image_batches
from ..output.shards import STATUS_ERROR

MAX_ERRORS_LISTED = 50


def sample_key(seed: int, uri: str) -> int:
    """The row's random key for the seeded sample: 64 bits of blake2b(f"{seed}\\0{uri}")."""
    digest = hashlib.blake2b(f"{seed}\0{uri}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def row_instances(b: ImageBatch, i: int, max_instances: int | None) -> list[tuple[int, dict]]:
    """Row ``i``'s instances as (index in the row's ``instances`` list, instance dict), highest score
    first, at most ``max_instances`` (None: all). The index identifies an instance in decisions."""
    preds = sorted(enumerate(b.instances(i)), key=lambda kp: (-float(kp[1]["score"]), kp[0]))
    return preds[: max_instances or None]


def iter_rows(shards: str, options: dict | None) -> Iterator[tuple[int, ImageBatch, int]]:
    """(row number in file order, batch, index in the batch) for every row of the output."""
    row = 0
    for b in iter_image_batches(shards, options, batch_rows=64):
        for i in range(len(b)):
            yield row, b, i
            row += 1


@dataclass
class Selection:
    """What the first pass found: counts, and per ordering the rows it holds (bounded heaps)."""

    limit: int
    seed: int
    rows: int = 0
    status: Counter = field(default_factory=Counter)
    # category id -> [instances, instances passing the default thresholds, images with one passing]
    per_class: dict[int, list[int]] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    errors: list[dict] = field(default_factory=list)  # the first MAX_ERRORS_LISTED error rows
    _sample: list = field(default_factory=list)  # heap of (-key, row): the K smallest keys
    _low: list = field(default_factory=list)  # heap of (-confidence, -row): the K lowest
    _by_class: dict[int, list] = field(default_factory=dict)  # id -> heap of (-key, row)

    def _push(self, heap: list, item: tuple) -> None:
        if len(heap) < self.limit:
            heapq.heappush(heap, item)
        elif item > heap[0]:
            heapq.heapreplace(heap, item)

    def add(self, row: int, b: ImageBatch, i: int, th: ScoreThresholds, max_instances: int | None) -> None:
        """Count row ``row`` (``b``'s row ``i``) and offer it to every ordering."""
        self.rows += 1
        status = b.status[i]
        self.status[status] += 1
        if status == STATUS_ERROR:
            if len(self.errors) < MAX_ERRORS_LISTED:
                self.errors.append({"row": row, "id": b.image_id[i], "uri": b.image_uri[i], "error": b.error[i]})
            return
        key = sample_key(self.seed, b.image_uri[i])
        self._push(self._sample, (-key, row))
        low, seen = None, set()
        lo, hi = int(b.offsets[i]), int(b.offsets[i + 1])
        js: Iterable[int] = range(lo, hi)  # columnar: no per-instance dict (this pass sees every row)
        if max_instances and hi - lo > max_instances:  # the instances the page shows: as row_instances()
            js = sorted(js, key=lambda j: (-b.score[j], j))[:max_instances]
        for j in js:
            cid, score, name = int(b.category_id[j]), b.score[j], b.category_name[j]
            if name:
                self.names.setdefault(cid, str(name))
            counts = self.per_class.setdefault(cid, [0, 0, 0])
            counts[0] += 1
            if not th.keep(cid, name, score):
                continue
            counts[1] += 1
            low = score if low is None else min(low, score)
            if cid not in seen:
                seen.add(cid)
                counts[2] += 1
                self._push(self._by_class.setdefault(cid, []), (-key, row))
        if low is not None:
            self._push(self._low, (-low, -row))

    def orderings(self) -> dict[str, list[int]]:
        """Ordering key -> its row numbers, in display order (``sample``, ``low``, ``class-<id>``)."""
        out = {
            "sample": [r for _, r in sorted(self._sample, reverse=True)],
            "low": [-r for _, r in sorted(self._low, reverse=True)],
        }
        for cid in sorted(self._by_class):
            out[f"class-{cid}"] = [r for _, r in sorted(self._by_class[cid], reverse=True)]
        return out

    def low_confidence(self) -> dict[int, float]:
        """Row number -> its confidence (the sort key of ``low``)."""
        return {-r: -s for s, r in self._low}
