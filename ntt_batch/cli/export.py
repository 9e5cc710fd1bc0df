"""`ntt-batch export` (formerly `merge`): the shards streamed into COCO, YOLO or Label Studio files.

The formats are the keys of ``ntt_batch.exports.WRITERS``; a writer's own options (its
``option_names``) are the flags that apply to it.
"""

from __future__ import annotations

import click

from ..exports import WRITERS
from .app import main, progress
from .options import storage_flags, storage_options_from_flags, thresholds_option


@main.command("export")
@click.option(
    "--shards",
    required=True,
    help="Output folder/URI of `ntt-batch run` (holds *.parquet and run.json), or one .parquet file.",
)
@click.option(
    "--out",
    required=True,
    help="Output: a JSON file (results, dataset, label-studio; local path or s3://..., written atomically: temp "
    "file, then rename/upload) or a local folder (yolo, built under a temporary name, then renamed).",
)
@click.option(
    "--format",
    "fmt",
    required=True,
    type=click.Choice(WRITERS.names()),
    help="results: COCO results array for COCOeval/`ntt-batch eval`. dataset: a complete COCO annotation file "
    "(images, categories, annotations with RLE masks and scores) to train other models on; FiftyOne "
    "loads it with its COCO importer. yolo: an Ultralytics YOLO segmentation dataset folder. "
    "label-studio: Label Studio tasks with one brush region per instance (+ the labeling config beside it).",
)
@thresholds_option()
@click.option(
    "--image-root",
    default=None,
    help="dataset, label-studio: write image names relative to this folder/URI prefix (default: the full image "
    "URI). For FiftyOne pass the same folder as data_path.",
)
@click.option(
    "--image-url-prefix",
    default=None,
    help="label-studio: prepended to data.image, e.g. '/data/local-files/?d=photos/' for Label Studio's "
    "local storage (with --image-root), or 'https://host/images/'.",
)
@click.option(
    "--yolo-images",
    type=click.Choice(["link", "copy", "uri"]),
    default=None,
    help="yolo: put the images in OUT/images/ as symlinks (default; local images) or as copies (works for "
    "s3:// images too). 'uri' was removed (Ultralytics finds no label for an original URI) and is refused.",
)
@click.option(
    "--ls-mask",
    type=click.Choice(["brush", "polygons"]),
    default=None,
    help="label-studio: one brush region per instance, the exact mask (default), or polygon regions, one per "
    "part of a mask (holes filled).",
)
@click.option(
    "--min-part-area",
    type=click.FloatRange(min=0),
    default=None,
    metavar="PX",
    help="label-studio --ls-mask polygons: drop mask parts smaller than PX pixels (an instance's largest part "
    "is always kept). Default 0: keep all.",
)
@click.option(
    "--simplify",
    type=click.FloatRange(min=0),
    default=None,
    help="yolo, label-studio --ls-mask polygons: polygon simplification tolerance in px (default 1; 0 = exact "
    "pixel outline).",
)
@click.option(
    "--batch-rows",
    default=64,
    show_default=True,
    type=click.IntRange(min=1),
    help="Shard rows read per step (memory: about one Parquet row group + this many rows, handled "
    "in slices of at most 2048 instances).",
)
@storage_flags
def export(
    shards,
    out,
    fmt,
    thresholds,
    image_root,
    image_url_prefix,
    yolo_images,
    ls_mask,
    min_part_area,
    simplify,
    batch_rows,
    **kw,
):
    """Stream the batch job's shards into one export (COCO JSON, YOLO dataset, Label Studio tasks), in bounded memory.

    (Formerly `merge`, which still works as an alias.)

    \b
    --format results   [{"image_id", "category_id", "bbox", "score", "segmentation": RLE}, ...]
                       exactly what pycocotools COCO.loadRes and `ntt-batch eval` read.
    --format dataset   {"info", "images": [{"id", "file_name", "width", "height", "image_uri"}],
                        "annotations": [{"id", "image_id", "category_id", "segmentation": RLE, "bbox",
                        "area", "iscrowd": 0, "score"}], "categories"}: the auto-labeling product.
                       Categories come from the memory bank recorded in run.json (else from the
                       instances); images whose row has status error are skipped and counted.
                       FiftyOne: fo.Dataset.from_dir(dataset_type=fo.types.COCODetectionDataset,
                       data_path=IMAGE_ROOT, labels_path=OUT, label_types="segmentations", label_field="predictions")
    --format yolo      OUT/data.yaml, images.txt, images/, labels/<name>.txt: `yolo segment train
                       data=OUT/data.yaml`. Polygons from the masks (holes filled, parts joined).
    --format label-studio  tasks [{"data": {"image"}, "predictions": [{"result": [brushlabels]}]}]
                       to import in Label Studio, and OUT's .label_config.xml to paste in the project.
                       Local images: add Local Storage to the project and pass --image-root and
                       --image-url-prefix "/data/local-files/?d=..." (see the README).

    Memory stays bounded however many instances there are: shards are read one record batch at a
    time and entries are written as they are formatted. Example:

    \b
      ntt-batch export --shards out/ --out results.json --format results
      ntt-batch export --shards s3://bucket/run1/ --out labels.json --format dataset --thresholds 0.5
      ntt-batch export --shards out/ --out yolo_ds/ --format yolo --thresholds thresholds.yaml
    """
    from ..exports import export as export_shards

    writer_options = _writer_options(
        fmt,
        image_root,
        {
            "images": yolo_images,
            "image_url_prefix": image_url_prefix,
            "simplify": simplify,
            "mask": ls_mask,
            "min_part_area": min_part_area,
        },
    )
    stats = export_shards(
        shards,
        out,
        format=fmt,
        options=storage_options_from_flags(kw),
        score_threshold=thresholds,
        image_root=image_root,
        batch_rows=batch_rows,
        progress=progress("shards"),
        **writer_options,
    )
    size = f"{stats.bytes_written / 1e6:.1f} MB"
    click.echo(
        f"wrote {out} ({fmt}): {stats.instances_written} instances on {stats.images_written} images "
        f"from {stats.rows} rows in {stats.shards} shards ({stats.images_ok} ok, {stats.images_empty} empty, "
        f"{stats.images_error} error skipped); {stats.below_threshold} below the score threshold; {size}"
    )
    if fmt != "results":
        click.echo(f"  {len(stats.categories)} categories (from {stats.categories_source})")
    for n in stats.notices:
        click.echo(f"  notice: {n}")


# The writer options that have a flag of their own: option name → flag.
_WRITER_FLAGS = {
    "images": "--yolo-images",
    "image_url_prefix": "--image-url-prefix",
    "simplify": "--simplify",
    "mask": "--ls-mask",
    "min_part_area": "--min-part-area",
}


def _writer_options(fmt: str, image_root: str | None, values: dict) -> dict:
    """The given writer flags as options of format ``fmt``'s writer; a flag its writer does not take
    is a usage error naming the formats that do (read from ``exports.WRITERS``)."""
    for option, value in values.items():
        if value is not None and option not in WRITERS[fmt].option_names:
            formats = [f for f, w in WRITERS.items() if option in w.option_names]
            raise click.UsageError(f"{_WRITER_FLAGS[option]} applies to --format {' or '.join(formats)} only")
    # --image-root rewrites the image names written into a JSON export (a YOLO folder lists its own files)
    if image_root is not None and not WRITERS[fmt].single_file:
        formats = [f for f, w in WRITERS.items() if w.single_file]
        raise click.UsageError(f"--image-root applies to --format {' or '.join(formats)} only")
    return {k: v for k, v in values.items() if v is not None}
