"""`ntt-batch bench`: per-stage timing of the fast path against the reference path (``ntt_batch.benchmark``)."""

from __future__ import annotations

import sys

import click

from ..method.config import SegmenterConfig
from ..models.encoders import encoder_models
from ..models.proposers import proposer_models
from ..models.registry import SMALLEST_ENCODER, SMALLEST_SAM2
from .app import main
from .options import ENCODER_HELP, checkpoint_dir_option, no_download_option


@main.command()
@click.option(
    "--sam2",
    "sam2_name",
    default=SMALLEST_SAM2,
    show_default=True,
    type=click.Choice(proposer_models()),
    help="SAM2 proposer.",
)
@click.option(
    "--encoder", default=SMALLEST_ENCODER, show_default=True, type=click.Choice(encoder_models()), help=ENCODER_HELP
)
@click.option("--images", required=True, help="Images to time on: folder, glob or file (fsspec URI).")
@click.option(
    "--limit",
    default=None,
    type=click.IntRange(min=1),
    help="Timed images [default: 3; the reference path costs minutes per image on CPU]. With --pipeline-noop: "
    "distinct images used [default: all].",
)
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option(
    "--points-per-side",
    default=SegmenterConfig.points_per_side,
    show_default=True,
    type=click.IntRange(min=1),
    help="Point grid side (the segmenter's default: the paper's 32 x 32 = 1024 prompts).",
)
@click.option(
    "--memory",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Memory bank to match against. Default: 20 random prototypes (fine for timing).",
)
@click.option(
    "--bf16",
    is_flag=True,
    help="bf16 autocast on the fast path (CUDA, or CPU for testing); agreement is then checked with the bf16 "
    "tolerance (box IoU >= 0.9, |score diff| <= 0.01).",
)
@click.option(
    "--compile",
    "compile",
    is_flag=True,
    help="torch.compile the fast path's encoders and decoder (the warm-up image pays the compile time).",
)
@click.option("--warmup", type=int, default=None, help="Untimed images first (default: 1 on CUDA, 0 on CPU).")
@click.option(
    "--random-weights",
    is_flag=True,
    help="Write random-initialised checkpoints (official layouts) into --checkpoint-dir or a temp folder when missing.",
)
@click.option(
    "--pipeline-noop",
    is_flag=True,
    help="Instead: time the Ray job with the model stage replaced by a no-op (read, decode, write).",
)
@click.option(
    "--repeat",
    default=8,
    show_default=True,
    help="--pipeline-noop: each image appears this many times (distinct names).",
)
@click.option("--batch-size", default=16, show_default=True, help="--pipeline-noop: images per batch.")
@click.option(
    "--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Also write the report as JSON here."
)
@checkpoint_dir_option
@no_download_option
def bench(**kw):
    """Time every stage of the fast path against the reference path on the same images and weights.

    Prints seconds per image per stage (decode, SAM2 encoder, mask decoder, DINOv2, matching + NMS,
    upsampling + merging, RLE, write), images/s of both paths and their ratio, peak host RSS (and
    GPU memory), and whether the two paths' detections agree (same class, box IoU >= 0.99, scores
    within 1e-3 in fp32). The reference path is method.md §4 as written: fp32, decoder batches of
    256 prompts, every kept mask upsampled to full size before merging.

    \b
    Examples:
      ntt-batch bench --images ../shared/data/coco_mini/val2017 --limit 3 --device cpu --random-weights \
          --json bench.json
      ntt-batch bench --sam2 sam2_hiera_large --encoder dinov2_vitl14 --images s3://bucket/val/ --device cuda --limit 50
      ntt-batch bench --pipeline-noop --images ../shared/data/coco_mini/val2017 --random-weights
    """
    from ..benchmark import BenchOptions
    from ..benchmark import bench as run_bench

    download = not kw.pop("no_download")
    options = BenchOptions(**kw, download=download, command=" ".join(["ntt-batch"] + sys.argv[1:]))
    run_bench(options, echo=click.echo, note=lambda m: click.echo(m, err=True))
