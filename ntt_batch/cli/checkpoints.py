"""`ntt-batch checkpoints list | download | random`: the model files."""

from __future__ import annotations

import click

from ..models.checkpoints import all_checkpoints
from ..models.encoders import encoder_models
from ..models.proposers import proposer_models
from .app import main
from .options import checkpoint_dir_option, split_names


@main.group()
def checkpoints():
    """List, download or fabricate (random weights) model checkpoints."""


@checkpoints.command("list")
def checkpoints_list():
    """The official checkpoints this tool knows: name, file, size, where to get it, sha256, licence.

    Gated models (DINOv3) have no download address: request access, download the file yourself
    and pass its folder as --checkpoint-dir; only a prefix of their sha256 is published.
    """
    for spec in all_checkpoints():
        size = f"{spec.size_bytes / 1e6:8.1f} MB" if spec.size_bytes is not None else f"{'size n/a':>11s}"
        where = spec.url if spec.url is not None else f"gated: request access at {spec.access}"
        digest = (
            spec.sha256
            if spec.sha256 is not None
            else (f"{spec.sha256_prefix}\u2026 (prefix only)" if spec.sha256_prefix else "not published")
        )
        click.echo(
            f"{spec.name:24s} {spec.filename:34s} {size}  {where}\n"
            f"{'':24s} sha256 {digest}\n{'':24s} licence {spec.license}"
        )


@checkpoints.command("download")
@click.option(
    "--model", "models", multiple=True, required=True, help="Model name(s): --model A B or --model A --model B."
)
@checkpoint_dir_option
@click.argument("more_models", nargs=-1)
def checkpoints_download(models, checkpoint_dir, more_models):
    """Download (and verify) checkpoints into the cache, or find them in --checkpoint-dir."""
    from ..models.checkpoints import resolve_checkpoint

    for name in split_names(models + more_models):
        c = resolve_checkpoint(name, checkpoint_dir=checkpoint_dir)
        click.echo(f"{name}: {c.path} sha256 {c.sha256} {'(official)' if c.official else '(NOT the official file)'}")


@checkpoints.command("random")
@click.option(
    "--model",
    "models",
    multiple=True,
    required=True,
    help=f"Model name(s), repeatable or space/comma separated. SAM2: {', '.join(proposer_models())}; "
    f"encoders: {', '.join(encoder_models())}.",
)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to write the files into.")
@click.option("--seed", default=0, show_default=True, help="Seed of the random initialisation.")
@click.argument("more_models", nargs=-1)
def checkpoints_random(models, out, seed, more_models):
    """Write RANDOM-initialised checkpoints in the exact official layouts and file names.

    For smoke runs and tests on machines without the real weights: the normal loading path
    reads them, flags them as not official, and records that in every output. Results from
    them are meaningless.
    """
    from ..models.loading import write_random_checkpoint

    for name in split_names(models + more_models):
        path = write_random_checkpoint(name, out, seed=seed)
        click.echo(f"wrote {path} (random weights, seed {seed})")
