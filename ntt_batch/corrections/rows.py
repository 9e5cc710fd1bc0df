"""The job output's rows a review refers to, read once in a streaming pass over the shards.

A review names its images by the row's ``image_uri`` (review decisions, ntt-batch's Label Studio
tasks), by its ``image_id``, or by the image's file name (a COCO file, other Label Studio tasks).
:func:`collect_rows` streams the shards (:func:`ntt_batch.output.reader.iter_image_batches`) and
keeps only the rows some key asks for, so memory grows with the reviewed set, not the output.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..output.reader import iter_image_batches
from ..output.shards import STATUS_ERROR


@dataclass
class Pred:
    """One predicted instance of a row: ``index`` in the row's ``instances`` list (shard order)."""

    index: int
    category_id: int
    category_name: str | None
    score: float  # the shard's float32 score as a Python float
    score_text: str  # its shortest round-trip decimal
    bbox: list[float]  # [x, y, w, h] px, as in the shard (method's box convention)
    area: int  # mask pixels
    rle: dict[str, Any]  # {"size": [H, W], "counts": str}, COCO compressed RLE


@dataclass
class Row:
    """One processed image of the output and its predictions."""

    image_id: int
    image_uri: str
    width: int
    height: int
    preds: list[Pred] = field(default_factory=list)


def base_name(name: str) -> str:
    """The file name at the end of a path, URI or Label Studio URL (``/data/local-files/?d=a/b.jpg`` → ``b.jpg``)."""
    name = str(name)
    parts = urlsplit(name)
    if parts.query:
        d = parse_qs(parts.query).get("d")
        if d:
            return PurePosixPath(d[0]).name
    path = parts.path if parts.scheme else name.split("?", 1)[0]
    return PurePosixPath(path.replace("\\", "/")).name


@dataclass
class RowIndex:
    """Rows found for a set of keys, looked up by URI, then id, then (unique) file name."""

    by_uri: dict[str, Row] = field(default_factory=dict)
    by_id: dict[int, list[Row]] = field(default_factory=lambda: defaultdict(list))
    by_base: dict[str, list[Row]] = field(default_factory=lambda: defaultdict(list))
    error_rows: set[str] = field(default_factory=set)

    def find(
        self, uri: str | None = None, image_id: int | None = None, name: str | None = None, *, name_first: bool = False
    ) -> Row | None:
        """The row for these keys: the exact URI, else a unique id, else a unique base name (or the
        base name before the id with ``name_first``: ids of a user's COCO file are its own)."""
        if uri is not None and uri in self.by_uri:
            return self.by_uri[uri]

        def by_id() -> Row | None:
            rows = self.by_id.get(int(image_id), []) if image_id is not None else []
            return rows[0] if len(rows) == 1 else None

        def by_name() -> Row | None:
            rows = self.by_base.get(base_name(name), []) if name is not None else []
            return rows[0] if len(rows) == 1 else None

        first, second = (by_name, by_id) if name_first else (by_id, by_name)
        return first() or second()

    def ambiguous(self, image_id: int | None = None, name: str | None = None) -> bool:
        return (image_id is not None and len(self.by_id.get(int(image_id), [])) > 1) or (
            name is not None and len(self.by_base.get(base_name(name), [])) > 1
        )


def collect_rows(
    shards: str,
    *,
    uris: set[str] = frozenset(),
    ids: set[int] = frozenset(),
    names: set[str] = frozenset(),
    options: dict | None = None,
) -> RowIndex:
    """Stream the shards; keep every processed row whose URI, id or base name is asked for.

    ``names`` are base names (see :func:`base_name`). Error rows are not kept (their URIs are
    recorded in ``error_rows``: they have no predictions to correct).
    """
    idx = RowIndex()
    for b in iter_image_batches(shards, options):
        for i in range(len(b)):
            uri = str(b.image_uri[i])
            iid = int(b.image_id[i])
            base = base_name(uri)
            if uri not in uris and iid not in ids and base not in names:
                continue
            if b.status[i] == STATUS_ERROR or b.width[i] is None or b.height[i] is None:
                idx.error_rows.add(uri)
                continue
            row = Row(image_id=iid, image_uri=uri, width=int(b.width[i]), height=int(b.height[i]))
            for k, j in enumerate(range(int(b.offsets[i]), int(b.offsets[i + 1]))):
                row.preds.append(
                    Pred(
                        index=k,
                        category_id=int(b.category_id[j]),
                        category_name=b.category_name[j],
                        score=float(b.score[j]),
                        score_text=b.score_text[j],
                        bbox=[float(v) for v in b.bbox[j]],
                        area=int(b.area[j]),
                        rle={"size": [int(v) for v in b.size[j]], "counts": b.counts[j]},
                    )
                )
            idx.by_uri[uri] = row
            idx.by_id[iid].append(row)
            idx.by_base[base].append(row)
    return idx
