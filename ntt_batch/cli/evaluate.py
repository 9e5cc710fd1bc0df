"""`ntt-batch eval | thresholds`: score results against COCO ground truth, tune per-class thresholds."""

from __future__ import annotations

import click

from .app import main
from .options import storage_flags, storage_options_from_flags


@main.command("eval")
@click.option("--annotations", required=True, help="COCO ground-truth annotation JSON (local path or URI).")
@click.option(
    "--results",
    required=True,
    help="A COCO results JSON (`ntt-batch export --format results`, `ntt-batch segment`) or the shards "
    "folder/URI of `ntt-batch run`.",
)
@click.option(
    "--split",
    default="all",
    show_default=True,
    help="Classes to score: 'few_shot' (the 20 COCO-FSOD classes, method.md §5.1), 'all', or comma-separated "
    "names/ids.",
)
@click.option("--iou-type", "iou_type", default="bbox,segm", show_default=True, help="bbox, segm or bbox,segm.")
@click.option(
    "--restrict-to-processed",
    is_flag=True,
    help="Shards only: score only the images the job processed (status ok/empty), for partial runs. "
    "Default: every ground-truth image counts, unprocessed ones as misses.",
)
@click.option("--report", default=None, help="Write the full report (numbers, per-class AP, notices) as JSON here.")
@storage_flags
def eval_cmd(annotations, results, split, iou_type, restrict_to_processed, report, **kw):
    """Score results against COCO ground truth with pycocotools COCOeval (the paper's protocol).

    For a split other than 'all' the ground truth keeps only that split's annotations while every
    image stays in, so false positives on the other images count (method.md §5.1). Prints the
    standard 12-number summary per IoU type and a per-class AP table. Ground truth without masks
    gives a bbox-only evaluation, no detections give AP 0, and detections on unknown image ids
    are counted and reported, each with a notice. Example:

    \b
      ntt-batch eval --annotations instances_val2017.json --results results.json --split few_shot --report report.json
    """
    from ..eval.coco_eval import evaluate_coco, format_report, write_report

    options = storage_options_from_flags(kw)
    rep = evaluate_coco(
        annotations,
        results,
        split=split,
        iou_types=iou_type,
        restrict_to_processed=restrict_to_processed,
        options=options,
    )
    click.echo(format_report(rep))
    if report:
        write_report(rep, report, options)
        click.echo(f"wrote {report}")


@main.command("thresholds")
@click.option("--annotations", required=True, help="COCO ground truth of a small labelled set (local path or URI).")
@click.option("--shards", required=True, help="Output folder/URI of `ntt-batch run` on those images.")
@click.option(
    "--target",
    default="f1",
    show_default=True,
    help="'f1': per class, the threshold with the best F1. 'precision=P': the lowest threshold reaching "
    "precision P (highest recall); a class that never reaches it gets 1.0.",
)
@click.option(
    "--iou",
    "iou_threshold",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True),
    help="IoU a detection needs to match a ground-truth instance.",
)
@click.option(
    "--iou-type",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "segm", "bbox"]),
    help="Mask IoU (segm), box IoU (bbox), or segm when the ground truth has masks (auto).",
)
@click.option(
    "--default",
    "default_threshold",
    type=click.FloatRange(0, 1),
    default=None,
    help="Also write 'default: T' for classes that were not tuned (default: they keep everything).",
)
@click.option("--out", required=True, help="Thresholds file to write (.yaml, or .json), for --thresholds.")
@storage_flags
def thresholds_cmd(annotations, shards, target, iou_threshold, iou_type, default_threshold, out, **kw):
    """Pick per-class score thresholds on a small labelled set and write them as a map.

    Detections are matched to the ground truth per image and class (greedy by score, one match
    per ground-truth instance, IoU >= --iou, crowd regions ignored); classes are matched by name.
    Prints a table (class, threshold, precision, recall, F1, #GT) and writes {class: threshold}
    for `export`, `visualize` and `review` (--thresholds FILE). Example:

    \b
      ntt-batch thresholds --annotations val_small.json --shards out_val/ --out thresholds.yaml
      ntt-batch export --shards out/ --out labels.json --format dataset --thresholds thresholds.yaml
    """
    from ..eval.threshold_fit import format_table, tune_thresholds, write_thresholds

    options = storage_options_from_flags(kw)
    rep = tune_thresholds(
        annotations, shards, target=target, iou_threshold=iou_threshold, iou_type=iou_type, options=options
    )
    click.echo(format_table(rep))
    for n in rep.notices:
        click.echo(f"  notice: {n}")
    data = write_thresholds(rep, out, default=default_threshold, options=options)
    tuned = sum(1 for k in data if k != "default")
    click.echo(
        f"wrote {out}: {tuned} class threshold(s)"
        + (f", default {default_threshold:g}" if default_threshold is not None else "")
    )
