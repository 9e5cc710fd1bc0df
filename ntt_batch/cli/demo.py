"""`ntt-batch demo`: the whole method end to end on a small sample (``ntt_batch.demo``)."""

from __future__ import annotations

import click

from ..demo import CPU_SIZED_POINTS_PER_SIDE
from ..method.config import SegmenterConfig
from ..models.encoders import encoder_models
from ..models.proposers import proposer_models
from ..models.registry import SMALLEST_ENCODER, SMALLEST_SAM2
from .app import main
from .options import ENCODER_HELP, checkpoint_dir_option


@main.command()
@click.option(
    "--data",
    type=click.Path(file_okay=False),
    default=None,
    help="COCO-style data folder (annotations/, train2017/, val2017/). Default: $NTT_SHARED_DATA/coco_mini or "
    "../shared/data/coco_mini.",
)
@click.option("--out", default="runs/demo", show_default=True, type=click.Path(file_okay=False))
@click.option(
    "--random-weights",
    is_flag=True,
    help="Use random-initialised checkpoints (machines without the real weights). Results are meaningless but "
    "exercise everything.",
)
@click.option("--sam2", "sam2_name", default=SMALLEST_SAM2, show_default=True, type=click.Choice(proposer_models()))
@click.option(
    "--encoder", default=SMALLEST_ENCODER, show_default=True, type=click.Choice(encoder_models()), help=ENCODER_HELP
)
@click.option("--shots", default=1, show_default=True)
@click.option("--limit", default=8, show_default=True, help="Target images.")
@click.option(
    "--points-per-side",
    default=CPU_SIZED_POINTS_PER_SIDE,
    show_default=True,
    type=click.IntRange(min=1),
    help=f"{CPU_SIZED_POINTS_PER_SIDE} keeps the CPU demo to seconds per image; the paper uses "
    f"{SegmenterConfig.points_per_side}.",
)
@click.option("--device", default="auto", show_default=True)
@checkpoint_dir_option
def demo(data, out, random_weights, sam2_name, encoder, shots, limit, points_per_side, device, checkpoint_dir):
    """End to end on a small sample: references -> memory bank -> segment -> COCO eval.

    Defaults are CPU-sized: few-shot split, 1 shot, 8 val images, the smallest SAM2 and encoder.
    """
    from ..demo import run_demo

    run_demo(
        data=data,
        out=out,
        random_weights=random_weights,
        sam2_name=sam2_name,
        encoder_name=encoder,
        shots=shots,
        limit=limit,
        points_per_side=points_per_side,
        device=device,
        checkpoint_dir=checkpoint_dir,
        echo=click.echo,
    )
