"""`ntt-batch corrections`: a review's outcome back into the loop (gold labels, references, thresholds)."""

from __future__ import annotations

import click

from .app import main
from .options import storage_flags, storage_options_from_flags, thresholds_option


@main.command()
@click.option("--shards", required=True, help="Output folder/URI of `ntt-batch run` the review was made of.")
@click.option("--decisions", default=None, help="The review page's decisions.json (docs/review_decisions.md).")
@click.option("--label-studio", "label_studio", default=None, help="Label Studio JSON export of the reviewed tasks.")
@click.option("--coco", default=None, help="COCO file of the reviewed images (their complete gold labels).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Local folder for the outputs.")
@click.option("--iou", "iou_match", default=0.5, show_default=True, type=click.FloatRange(0, 1, min_open=True))
@click.option("--target", default="f1", show_default=True, help="Threshold refit: 'f1' or 'precision=P'.")
@thresholds_option(
    "Current score thresholds (the table's 'before'): a number, or a YAML/JSON map {class: T, default: T}."
)
@storage_flags
def corrections(shards, decisions, label_studio, coco, out, iou_match, target, thresholds, **kw):
    """Review outcome back in: gold labels, negative and positive references, refit thresholds.

    Writes OUT/reviewed.json (COCO), negatives.json and positives.json (references files),
    thresholds.yaml, report.md/json, and prints the before/after precision/recall table. Loop:

    \b
      ntt-batch corrections --shards out/ --decisions review/decisions.json --out corr/
      ntt-batch memory build --references bank/references.json --references corr/positives.json \\
          --negatives corr/negatives.json --out bank2/
    """
    from ..corrections import apply_corrections, format_report

    if sum(x is not None for x in (decisions, label_studio, coco)) != 1:
        raise click.UsageError("give exactly one of --decisions, --label-studio, --coco")
    rep = apply_corrections(
        shards, decisions=decisions, label_studio=label_studio, coco=coco, dest_dir=out, iou_match=iou_match,
        target=target, thresholds=thresholds, options=storage_options_from_flags(kw),
    )  # fmt: skip
    click.echo(format_report(rep))
