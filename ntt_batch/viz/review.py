"""`ntt-batch review`: a static HTML page to review a run's auto-labels, at any output size.

The page (``<out>/index.html``) needs no server: it works opened from disk, or copied to a bucket
and opened from there. Everything it uses lives beside it, by relative path:

    <out>/index.html                 the page (CSS and JavaScript inline) and the index below
    <out>/data/index.json            the index: counts per status and per class, thresholds, the
                                     orderings and their page counts (format ``ntt-batch/review-index``)
    <out>/data/<ordering>/page-NNNNN.js   one page of ``page_size`` image entries of an ordering:
                                     ``__nttReviewPage({"ordering": ..., "page": n, "images": [...]});``
                                     (a script, not JSON: browsers refuse ``fetch`` of ``file://``
                                     URLs but load scripts from disk and from buckets alike)
    <out>/img/...                    per drawn row, the thumbnail, the full-size image and their
                                     mask sprites (:mod:`.review_draw`)

Orderings (each paged):

* ``file``: every row of the output in file order (sorted shard paths, then row order), or the
  first ``max_rows`` rows. Error rows are listed with their cause.
* ``sample``, ``low``, ``class-<id>``: a seeded random sample, the lowest-confidence images first,
  and a seeded sample per class, each of at most ``limit`` images (the review budget K), chosen in
  one streaming pass with bounded heaps (:mod:`.review_select`).

The driver reads the shards twice, streaming (:func:`ntt_batch.output.reader.iter_image_batches`):
pass 1 counts and chooses; pass 2 draws the rows the orderings hold (and only those) and writes
the ``file`` pages as it goes (one page of entries in memory). The entries of the chosen rows
go to a spool file on disk, from which the other orderings' pages are assembled, so the memory
stays O(page_size + K x (2 + classes)) however many rows there are. The time is linear in the
rows drawn (one image read each): for a very large output, ``max_rows`` bounds the ``file``
ordering (the sampled orderings still see every row).

On the page: keyboard review (accept, reject, change class, undo; ``?`` lists the keys), with
the decisions kept in the browser (localStorage) and downloaded as ``decisions.json`` (format:
``docs/review_decisions.md``), or saved by ``ntt-batch review --serve`` (:mod:`.review_server`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..exports.score_filter import ScoreThresholds
from ..output.folder import OutputFolder, utc_now_iso
from ..output.reader import dataset_categories, is_results_file
from ..output.shards import STATUS_EMPTY, STATUS_ERROR, STATUS_OK
from ..storage.atomic import atomic_write_text
from .overlay import ImageFinder, class_color
from .review_draw import row_entry
from .review_select import MAX_ERRORS_LISTED, Selection, iter_rows, row_instances

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 200
DEFAULT_PAGE_SIZE = 48
DEFAULT_THUMB_SIDE = 320
DEFAULT_FULL_SIDE = 1024
INDEX_FORMAT = "ntt-batch/review-index"
PAGE_CALLBACK = "__nttReviewPage"


@dataclass
class ReviewSummary:
    """What :func:`write_review` wrote."""

    index: str
    images: int = 0  # rows drawn (thumbnail and full view)
    instances: int = 0  # instances of the drawn rows
    rows_read: int = 0  # rows in the output
    more_rows: bool = False  # the file ordering stops before the last row (max_rows)
    errors: int = 0  # rows with status error
    pages: int = 0  # data pages written, all orderings
    orderings: dict[str, int] = field(default_factory=dict)  # ordering -> images in it
    skipped: list[dict] = field(default_factory=list)  # {"image_id", "image_uri", "reason"}: not drawn
    categories: list[dict] = field(default_factory=list)


class _Pages:
    """Writes one ordering's entries as ``data/<key>/page-NNNNN.js``, ``page_size`` at a time."""

    def __init__(self, out: Path, key: str, page_size: int) -> None:
        self.dir, self.key, self.page_size = out / "data" / key, key, page_size
        self.dir.mkdir(parents=True, exist_ok=True)
        self.buf: list[dict] = []
        self.pages = self.images = 0

    def add(self, entry: dict) -> None:
        self.buf.append(entry)
        self.images += 1
        if len(self.buf) == self.page_size:
            self._flush()

    def _flush(self) -> None:
        page = {"ordering": self.key, "page": self.pages, "images": self.buf}
        text = json.dumps(page, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
        atomic_write_text(self.dir / f"page-{self.pages:05d}.js", f"{PAGE_CALLBACK}({text});\n")
        self.pages += 1
        self.buf = []

    def close(self) -> int:
        if self.buf:
            self._flush()
        return self.pages


def _prepare_out(out: Path) -> None:
    """Create ``out``; remove a previous review's ``data/`` and ``img/`` (and nothing else)."""
    out.mkdir(parents=True, exist_ok=True)
    index = out / "data" / "index.json"
    previous = False
    if index.is_file():
        try:
            previous = json.loads(index.read_text()).get("format") == INDEX_FORMAT
        except ValueError:
            previous = False
    for sub in ("data", "img"):
        d = out / sub
        if d.exists() and any(d.iterdir()):
            if not previous:
                raise ValueError(
                    f"{d} exists and was not written by `ntt-batch review`: pass an empty or new --out folder"
                )
            shutil.rmtree(d)
    for sub in ("thumbs", "masks", "full"):  # the single-page layout of earlier versions
        for stale in (out / sub).glob("[0-9][0-9][0-9][0-9][0-9][0-9].*"):
            stale.unlink()


def write_review(
    shards: str,
    out_dir: str,
    *,
    images_root: str | None = None,
    thresholds: Any = None,
    limit: int | None = DEFAULT_LIMIT,
    page_size: int = DEFAULT_PAGE_SIZE,
    seed: int = 0,
    max_rows: int | None = None,
    thumb_side: int = DEFAULT_THUMB_SIDE,
    full_side: int = DEFAULT_FULL_SIDE,
    max_instances: int | None = 100,
    title: str | None = None,
    options: dict | None = None,
    echo: Callable[[str], None] | None = None,
) -> ReviewSummary:
    """Write the review page of ``shards`` into the local folder ``out_dir`` (see the module docstring).

    Args:
        shards: the ``--out`` folder/URI of ``ntt-batch run``.
        out_dir: local folder for ``index.html``, ``data/`` and ``img/`` (created; a previous
            review there is replaced).
        images_root: where to look for images the rows' URIs do not reach (e.g. the shards were
            copied from another machine): by the URI's file name, then by the number in it.
        thresholds: default score thresholds (a number, a YAML/JSON map file, a dict or a
            :class:`~ntt_batch.exports.score_filter.ScoreThresholds`): they set the slider (global)
            or the per-class filter (a map), and which instances count for ``low`` and ``class-<id>``.
        limit: the review budget K: images in each of ``sample``, ``low`` and every ``class-<id>``
            (None: every row qualifying; the memory then grows with the rows).
        page_size: images per data page (and per screen on the page).
        seed: the random sample's seed.
        max_rows: the ``file`` ordering holds the first ``max_rows`` rows (None: every row).
        thumb_side, full_side: longer side of the thumbnails and of the full view's image, px.
        max_instances: at most this many instances per image (highest scores).
    """
    if is_results_file(shards, options):
        raise ValueError(
            f"{shards} is a JSON file; `review` reads the shards folder/URI of `ntt-batch run` "
            "(the rows say which image each result belongs to)"
        )
    if thumb_side < 32 or full_side < 32:
        raise ValueError(f"thumb_side and full_side must be >= 32 px, got {thumb_side} and {full_side}")
    for name, v in (("limit", limit), ("page_size", page_size), ("max_rows", max_rows)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{name} must be a whole number >= 1, got {v!r}")
    th = ScoreThresholds.load(thresholds)
    out = Path(out_dir)
    _prepare_out(out)
    summary = ReviewSummary(index=str(out / "index.html"))
    sel = Selection(limit=sys.maxsize if limit is None else limit, seed=int(seed))
    for row, b, i in iter_rows(shards, options):
        sel.add(row, b, i, th, max_instances)
    for c in dataset_categories(shards, options) or []:
        sel.names.setdefault(int(c["id"]), str(c["name"]))
    if echo:
        echo(f"review: {sel.rows} rows read; drawing the pages")
    file_n = sel.rows if max_rows is None else min(sel.rows, max_rows)
    summary.rows_read, summary.more_rows, summary.errors = sel.rows, file_n < sel.rows, sel.status[STATUS_ERROR]
    finder = ImageFinder(images_root, options)
    counts = _write_pages(
        shards, options, out, sel, file_n, page_size, max_instances, finder, (thumb_side, full_side), summary, echo
    )
    index = _index(
        shards, options, sel, th, counts, summary, title=title, page_size=page_size, limit=limit, max_rows=max_rows
    )
    atomic_write_text(out / "data" / "index.json", json.dumps(index, indent=1, allow_nan=False) + "\n")
    from .review_template import render_page

    atomic_write_text(out / "index.html", render_page(index))
    return summary


def _write_pages(
    shards, options, out: Path, sel: Selection, file_n: int, page_size: int, max_instances, finder, sizes, summary, echo
) -> dict[str, tuple[int, int]]:
    """Pass 2: draw the rows the orderings hold, write every ordering's pages; key -> (images, pages)."""
    orderings = sel.orderings()
    chosen = {r for rows in orderings.values() for r in rows}
    last = max([file_n - 1, *chosen], default=-1)
    confidence = sel.low_confidence()
    file_pages = _Pages(out, "file", page_size)
    where: dict[int, tuple[int, int]] = {}
    seen = 0
    with open(out / "data" / ".spool.jsonl", "w+b") as spool:
        try:
            for row, b, i in iter_rows(shards, options):
                seen = row + 1
                if row > last:
                    continue  # keep counting: a changed output is detected below
                if row >= file_n and row not in chosen:
                    continue
                e = row_entry(row, b, i, row_instances(b, i, max_instances), finder, out, sizes, options)
                _count_drawn(e, summary, echo)
                if row < file_n:
                    file_pages.add(e)
                if row in chosen:
                    line = json.dumps(e, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode()
                    where[row] = (spool.tell(), len(line))
                    spool.write(line + b"\n")
            if seen != sel.rows:
                raise RuntimeError(
                    f"{shards} changed while review read it ({sel.rows} rows, then {seen}): rerun review when "
                    "the job is done"
                )
            counts = {"file": (file_pages.images, file_pages.close())}
            for key, rows in orderings.items():
                pages = _Pages(out, key, page_size)
                for r in rows:
                    spool.seek(where[r][0])
                    e = json.loads(spool.read(where[r][1]))
                    if key == "low":
                        e["conf"] = confidence[r]
                    pages.add(e)
                counts[key] = (pages.images, pages.close())
        finally:
            spool.close()
            os.unlink(spool.name)
    summary.pages = sum(p for _, p in counts.values())
    summary.orderings = {k: n for k, (n, _) in counts.items()}
    return counts


def _count_drawn(e: dict, summary: ReviewSummary, echo) -> None:
    if e.get("problem"):
        summary.skipped.append({"image_id": e["id"], "image_uri": e["uri"], "reason": e["problem"]})
    if "t" in e:
        summary.images += 1
        summary.instances += len(e["inst"])
        if echo and summary.images % 100 == 0:
            echo(f"review: {summary.images} images drawn")


def _ordering_label(key: str, sel: Selection) -> str:
    if key == "file":
        return "file order"
    if key == "sample":
        return f"random sample (seed {sel.seed})"
    if key == "low":
        return "lowest confidence first"
    cid = int(key.split("-", 1)[1])
    return f"class {sel.names.get(cid, cid)}"


def _index(shards, options, sel: Selection, th: ScoreThresholds, counts, summary, **settings) -> dict:
    """The page's index (``data/index.json``, embedded in ``index.html`` too)."""
    categories = []
    for cid in sorted(set(sel.names) | set(sel.per_class)):
        name = sel.names.get(cid, f"class {cid}")
        r, g, bl = class_color(cid)
        n = sel.per_class.get(cid, [0, 0, 0])
        categories.append(
            {
                "id": cid,
                "name": name,
                "color": f"#{r:02x}{g:02x}{bl:02x}",
                "threshold": th.threshold(cid, name),
                "instances": n[0],
                "kept": n[1],
                "images": n[2],
            }
        )
    summary.categories = [{"id": c["id"], "name": c["name"]} for c in categories]
    if not th.is_global:
        th.warn_unknown([(c["id"], c["name"]) for c in categories])
    manifest = OutputFolder(shards, options).read_run(strict=False)
    run_ids = [a.get("run_id") for a in manifest.get("attempts", []) if a.get("run_id")]
    output = shards if "://" in str(shards) else os.path.abspath(shards)
    return {
        "format": INDEX_FORMAT,
        "version": 1,
        "title": settings["title"] or f"ntt-batch review: {shards}",
        "output": output,
        "key": hashlib.sha256(output.encode()).hexdigest()[:16],  # the page's localStorage key
        "run_id": run_ids[-1] if run_ids else None,
        "run_ids": run_ids,
        "memory_bank_hash": (manifest.get("memory_bank") or {}).get("content_hash"),
        "ntt_batch_version": manifest.get("ntt_batch_version"),
        "official_weights": manifest.get("official_weights"),
        "summary": manifest.get("summary"),
        "created_at": utc_now_iso(),
        "thresholds": {
            "source": th.source,
            "global": th.default if th.is_global else None,
            "per_class": not th.is_global,
            "describe": th.describe(),
        },
        "rows": sel.rows,
        "status": {s: sel.status[s] for s in (STATUS_OK, STATUS_EMPTY, STATUS_ERROR)},
        "page_size": settings["page_size"],
        "limit": settings["limit"],
        "seed": sel.seed,
        "max_rows": settings["max_rows"],
        "categories": categories,
        "orderings": [
            {"key": k, "label": _ordering_label(k, sel), "images": n, "pages": p} for k, (n, p) in counts.items()
        ],
        "errors": sel.errors,
        "error_count": sel.status[STATUS_ERROR],
        "skipped": summary.skipped[:MAX_ERRORS_LISTED],
        "skipped_count": len(summary.skipped),
    }
