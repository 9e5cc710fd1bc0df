"""`ntt-batch review | visualize`: look at the results (a static HTML page, PNG overlays)."""

from __future__ import annotations

from pathlib import Path

import click

from .app import main
from .options import storage_flags, storage_options_from_flags, thresholds_option


@main.command()
@click.option(
    "--shards",
    default=None,
    help="Output folder/URI of `ntt-batch run` (holds *.parquet and run.json). "
    "Leave out with --serve to serve a page written before.",
)
@click.option(
    "--out", required=True, type=click.Path(file_okay=False), help="Local folder for index.html and its images."
)
@click.option(
    "--images",
    "images_root",
    default=None,
    help="Folder/URI holding the images, when the rows' image URIs do not reach them (shards copied elsewhere).",
)
@thresholds_option(
    "Default score thresholds: a number, or a YAML/JSON map {class: threshold, default: t} "
    "(`ntt-batch thresholds` writes one). Sets the page's slider / per-class filter."
)
@click.option(
    "--limit",
    default=200,
    show_default=True,
    type=click.IntRange(min=1),
    help="Review budget: images in the random sample, in lowest-confidence-first and in each class's sample.",
)
@click.option(
    "--page-size", default=48, show_default=True, type=click.IntRange(min=1), help="Images per page of the review page."
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the random samples.")
@click.option(
    "--max-rows",
    default=None,
    type=click.IntRange(min=1),
    help="The file-order listing holds the first N rows (default: every row; each is drawn, so this bounds the time).",
)
@click.option(
    "--serve",
    is_flag=True,
    help="Then serve OUT on 127.0.0.1 (Ctrl-C stops): the page saves its decisions to OUT/decisions.json.",
)
@click.option(
    "--port", default=8000, show_default=True, type=click.IntRange(min=0, max=65535), help="Port for --serve."
)
@click.option(
    "--thumb-side",
    default=320,
    show_default=True,
    type=click.IntRange(min=32),
    help="Thumbnail size (longer side, px).",
)
@click.option(
    "--full-side",
    default=1024,
    show_default=True,
    type=click.IntRange(min=32),
    help="Full overlay size (longer side, px).",
)
@click.option("--title", default=None, help="Page title (default: the shards URI).")
@storage_flags
def review(
    shards,
    out,
    images_root,
    thresholds,
    limit,
    page_size,
    seed,
    max_rows,
    serve,
    port,
    thumb_side,
    full_side,
    title,
    **kw,
):
    """Write a static HTML review page: every row in pages, a random sample, lowest confidence first,
    per class; filters; keyboard review (accept, reject, change class) and a decisions file.

    No server needed: open OUT/index.html from disk, or copy OUT to a bucket and open it there;
    "Download decisions" saves decisions.json (docs/review_decisions.md). With --serve, the page
    is served on 127.0.0.1 and saves its decisions to OUT/decisions.json itself.

    \b
      ntt-batch review --shards out/ --out review/ --thresholds thresholds.yaml
      ntt-batch review --shards out/ --out review/ --serve --port 8000
    """
    from ..viz.review import write_review

    if shards is None:
        if not serve:
            raise click.UsageError("--shards is required (or --serve, to serve a page written before)")
        _serve_review(out, port)
        return
    options = storage_options_from_flags(kw)
    s = write_review(
        shards,
        out,
        images_root=images_root,
        thresholds=thresholds,
        limit=limit,
        page_size=page_size,
        seed=seed,
        max_rows=max_rows,
        thumb_side=thumb_side,
        full_side=full_side,
        title=title,
        options=options,
        echo=lambda m: click.echo(m, err=True),
    )
    for sk in s.skipped[:10]:
        click.echo(f"not drawn: image {sk['image_id']} ({sk['image_uri']}): {sk['reason']}", err=True)
    more = f" (file order: the first {max_rows} of {s.rows_read} rows)" if s.more_rows else ""
    click.echo(
        f"wrote {s.index}: {s.rows_read} rows, {s.images} images drawn, {s.instances} instances, "
        f"{len(s.categories)} classes, {s.pages} pages{more}"
        + (f"; {s.errors} error rows listed" if s.errors else "")
        + (f"; {len(s.skipped)} not drawn" if s.skipped else "")
    )
    if serve:
        _serve_review(out, port)
    else:
        click.echo(f"  open it: file://{Path(s.index).resolve()}")


def _serve_review(out: str, port: int) -> None:
    from ..viz.review_server import serve

    try:
        serve(out, port, echo=click.echo)
    except (OSError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from None


@main.command()
@click.option("--shards", "source", required=True, help="Shards folder/URI of `ntt-batch run`, or a COCO results JSON.")
@click.option(
    "--images",
    "images_root",
    default=None,
    help="Folder/URI with the images. Needed for a results JSON; with shards the rows' image URIs are tried first.",
)
@click.option(
    "--annotations", default=None, help="COCO ground truth: draws it beside the prediction, and names classes."
)
@click.option(
    "--ids", multiple=True, help="Image ids to draw (repeatable or comma-separated). Default: the first --limit images."
)
@click.option(
    "--limit", default=20, show_default=True, type=click.IntRange(min=1), help="Images to draw when --ids is not given."
)
@thresholds_option("Draw predictions with score >= T only: one number, or a per-class thresholds file (YAML/JSON).")
@click.option(
    "--max-instances",
    default=50,
    show_default=True,
    type=click.IntRange(min=1),
    help="Draw at most this many predictions per image (highest scores).",
)
@click.option(
    "--max-side",
    default=1024,
    show_default=True,
    type=click.IntRange(min=16),
    help="Scale images down so the longer side is at most this (px).",
)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the PNGs (<image_id>.png).")
@storage_flags
def visualize(source, images_root, annotations, ids, limit, thresholds, max_instances, max_side, out, **kw):
    """PNG overlays: masks in class colours with 'name score' tags (ground truth left when given).

    \b
      ntt-batch visualize --shards out/ --images val2017/ --annotations instances_val2017.json --limit 10 --out viz/
    """
    from ..viz.overlay import visualize as draw

    options = storage_options_from_flags(kw)
    summary = draw(
        source,
        out,
        images_root=images_root,
        annotations=annotations,
        ids=ids or None,
        limit=limit,
        score_threshold=thresholds,
        max_instances=max_instances,
        max_side=max_side,
        options=options,
        echo=click.echo,
    )
    for s in summary.skipped:
        click.echo(f"skipped image {s['image_id']}: {s['reason']}", err=True)
    click.echo(
        f"wrote {len(summary.written)} overlay(s) to {out}"
        + (f"; {len(summary.skipped)} skipped" if summary.skipped else "")
    )
    if not summary.written:
        raise click.ClickException("no overlay was written (see the skipped images above)")
