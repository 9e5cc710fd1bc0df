"""`ntt-batch segment`: segment images in this process into a COCO results JSON."""

from __future__ import annotations

import click

from .app import main, progress
from .options import segmenter_config_from_flags, segmenter_options


@main.command()
@click.option("--memory", required=True, type=click.Path(exists=True, file_okay=False), help="Memory bank folder.")
@click.option("--images", default=None, help="Target images: a folder, a file or a glob ('dir/*.jpg').")
@click.option(
    "--annotations",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="COCO JSON listing the targets (image ids from it, so results evaluate directly); needs --image-root.",
)
@click.option("--image-root", type=click.Path(exists=True, file_okay=False), default=None)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N images.")
@click.option("--batch-size", default=1, show_default=True, help="Images per model call.")
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False),
    help="COCO results JSON (provenance goes to <out stem>.meta.json).",
)
@segmenter_options
def segment(memory, images, annotations, image_root, limit, batch_size, out, **kw):
    """Segment images in this process and write COCO results JSON (method.md §4).

    The DINOv2 encoder is the one recorded in the bank. The batch job (`ntt-batch run`)
    scales the same segmenter out over Ray.
    """
    from ..bank.load import segmenter_from_bank as load_segmenter
    from ..workflows import meta_path_for, resolve_targets, segment_to_coco_results

    config = segmenter_config_from_flags(kw)
    entries = resolve_targets(images, annotations, image_root, limit)
    segmenter, provenance = load_segmenter(
        memory,
        sam2_name=kw["sam2"],
        config=config,
        checkpoint_dir=kw["checkpoint_dir"],
        download=not kw["no_download"],
    )
    if not provenance["official_weights"]:
        click.secho(
            "WARNING: running on checkpoints that are NOT the official weights (recorded in the output)",
            fg="yellow",
            err=True,
        )
    summary = segment_to_coco_results(
        segmenter, entries, out, provenance, batch_size=batch_size, progress=progress("images")
    )
    click.echo(
        f"wrote {out} ({summary['instances']} instances on {summary['images_ok']} images, "
        f"{summary['images_empty']} empty, {summary['images_error']} unreadable; "
        f"{summary['images_per_s']} images/s); provenance in {meta_path_for(out)}"
    )
