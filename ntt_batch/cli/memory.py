"""`ntt-batch memory build | show | info`: the memory bank (class prototypes from the references)."""

from __future__ import annotations

import json

import click

from ..method.config import MemoryConfig
from ..models.encoders import encoder_models
from ..models.proposers import proposer_models
from ..models.registry import DEFAULT_ENCODER
from .app import main, progress
from .options import (
    ENCODER_HELP,
    checkpoint_dir_option,
    no_download_option,
    segmenter_config_from_flags,
    segmenter_options,
)
from .settings_options import settings_from_flags, settings_options


@main.group()
def memory():
    """Build or inspect a memory bank (class prototypes from references)."""


@memory.command("build")
@click.option(
    "--references",
    "references_path",
    required=True,
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="References JSON; repeat to merge several (classes merged by name; clashing ids renumbered, with a notice).",
)
@click.option(
    "--negatives",
    "negatives_path",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Negative references (same formats as --references; repeatable): instances a class must NOT match, "
    "encoded into the bank's negative memory (docs/negative_references.md; used by `segment`/`run` with "
    "--use-negatives). Their classes must be bank classes.",
)
@click.option(
    "--image-root",
    default=None,
    type=click.Path(exists=True, file_okay=False),
    help="Folder holding the reference images. Default: the folder each references file remembers.",
)
@click.option(
    "--encoder", default=DEFAULT_ENCODER, show_default=True, type=click.Choice(encoder_models()), help=ENCODER_HELP
)
@click.option(
    "--sam2",
    "sam2_name",
    default=None,
    type=click.Choice(proposer_models()),
    help="SAM2 model for box-only references (their masks come from box prompts).",
)
@settings_options(MemoryConfig)
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@checkpoint_dir_option
@no_download_option
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output bank folder.")
@click.option("--overwrite", is_flag=True, help="Replace the memory bank already in --out (refused otherwise).")
def memory_build(
    references_path,
    negatives_path,
    image_root,
    encoder,
    sam2_name,
    device,
    checkpoint_dir,
    no_download,
    out,
    overwrite,
    **kw,
):
    """Encode the references with the image encoder and save per-instance/class prototypes (method.md §2-3).

    The (merged) references are saved in the bank folder as references.json; masks SAM2 made for
    box-only references are recorded in the bank (`references show --memory BANK` draws them).
    """
    from ..bank.build import build_bank_folder

    config = MemoryConfig(**settings_from_flags(MemoryConfig, kw)).validate()
    bank = build_bank_folder(
        list(references_path),
        image_root,
        out,
        encoder_name=encoder,
        checkpoint_dir=checkpoint_dir,
        download=not no_download,
        device=device,
        sam2_name=sam2_name,
        config=config,
        progress=progress("references"),
        notice=lambda n: click.echo(f"notice: {n}"),
        overwrite=overwrite,
        negatives=list(negatives_path) or None,
    )
    click.echo(
        f"wrote memory bank {out}: {len(bank.categories)} classes, {int(bank.instance_labels.numel())} instances, "
        f"dim {bank.instance_prototypes.shape[1]}, hash {bank.content_hash[:16]}"
    )
    if bank.has_negatives:
        click.echo(f"  negative references: {int(bank.negative_labels.numel())} (see `ntt-batch memory show {out}`)")
    for note in bank.notes:
        click.echo(f"  note: {note}")


@memory.command("show")
@click.argument("bank", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--out",
    "out_png",
    default=None,
    type=click.Path(dir_okay=False),
    help="Heatmap PNG of the class-prototype cosine similarities. [default: ./<bank folder name>-similarity.png; "
    "never inside the bank, which `memory build` owns]",
)
@click.option(
    "--threshold",
    default=None,
    type=click.FloatRange(-1, 1),
    help="Cosine similarity at or above which two classes are flagged as near-duplicates. [default: 0.95]",
)
def memory_show(bank, out_png, threshold):
    """Is BANK fit to segment with? Near-duplicate classes, inconsistent references, a similarity heatmap.

    Detection picks the class prototype a mask's feature is most similar to (method.md §3-4), so
    two classes whose prototypes are nearly the same (cosine >= --threshold) get confused, and a
    reference closer to another class than to its own is often a wrong label or a bad crop. Prints
    the report and writes the heatmap (near-duplicate pairs framed in red).

    \b
      ntt-batch memory show bank/ --out bank-similarity.png
    """
    from ..viz.memory_report import show_memory_bank

    result = show_memory_bank(bank, out_png, *(() if threshold is None else (threshold,)))
    click.echo(result["report"])
    if result.get("png"):
        click.echo(f"wrote {result['png']}")


@memory.command("info")
@click.argument("bank", type=click.Path(exists=True, file_okay=False))
def memory_info(bank):
    """Print a bank's metadata (classes, shots, encoder, hash)."""
    from ..method.memory_bank import MemoryBank

    b = MemoryBank.load(bank)
    meta = b.metadata()
    meta["references"] = {
        "source": meta["references"].get("source"),
        "instances": len(meta["references"].get("instances", [])),
    }
    if "negatives" in meta:
        meta["negatives"] = {**meta["negatives"], "instances": len(meta["negatives"].get("instances", []))}
    click.echo(json.dumps(meta, indent=2))


@memory.command("negatives")
@click.argument("bank", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--thresholds",
    "score_threshold",
    default=0.2,
    show_default=True,
    type=click.FloatRange(0, 1),
    metavar="T",
    help="Keep detections scoring at least this (the authors' negative_score_thr; one number here).",
)
@click.option("--score-threshold", "old_score_threshold", default=None, type=click.FloatRange(0, 1), hidden=True)
@click.option(
    "--max-per-class",
    default=10,
    show_default=True,
    type=click.IntRange(min=1),
    help="The highest-scoring negatives kept per class (the authors' length_negative).",
)
@click.option(
    "--iou-threshold",
    default=0.1,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="A detection with box IoU >= this with an annotated instance of its class is that instance, not a "
    "negative (the authors' get_false_positives).",
)
@click.option(
    "--annotations",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="COCO file whose annotations of the reference images count as annotated too. [default: the file the "
    "references were sampled from, when it is still there]",
)
@click.option("--references-only", is_flag=True, help="Only the bank's references count as annotated (no COCO file).")
@segmenter_options
def memory_negatives(
    bank, score_threshold, old_score_threshold, max_per_class, iou_threshold, annotations, references_only, **kw
):
    """Mine negative references from BANK's own reference images and add them to BANK.

    The reference images are segmented with the bank (the segmenter flags below, as for `segment`);
    detections that are not annotated instances of their class score >= --thresholds become
    negative references of that class (the authors' negative-reference mode,
    docs/negative_references.md). BANK is rewritten with them (new content hash) and they are saved
    as BANK/negatives.json; `segment`/`run` use them with --use-negatives.

    \b
      ntt-batch memory negatives bank/ --sam2 sam2_hiera_large
      ntt-batch segment --memory bank/ --use-negatives ...
    """
    if old_score_threshold is not None:  # the flag's old name, as on the other commands
        click.echo("notice: --score-threshold is now --thresholds; the old name keeps working", err=True)
        score_threshold = old_score_threshold
    from ..bank.mining import mine_negatives

    config = segmenter_config_from_flags(kw)
    result = mine_negatives(
        bank,
        sam2_name=kw["sam2"],
        config=config,
        checkpoint_dir=kw["checkpoint_dir"],
        download=not kw["no_download"],
        score_threshold=score_threshold,
        iou_threshold=iou_threshold,
        max_per_class=max_per_class,
        annotations=annotations,
        use_source_annotations=not references_only,
        progress=progress("reference images"),
        notice=lambda n: click.echo(f"notice: {n}"),
    )
    new = result["bank"]
    st = result["stats"]
    click.echo(
        f"{st['images']} reference images: {st['detections']} detections, {st['false_positives']} not annotated, "
        f"{st['above_threshold']} scoring >= {score_threshold:g}; kept {len(result['mined'])} as negative references"
        + (f" (and {result['kept_from_files']} from files)" if result["kept_from_files"] else "")
    )
    for name, n in new.negative_shots.items():
        click.echo(f"  {name}: {n}")
    click.echo(f"wrote memory bank {bank}: hash {new.content_hash[:16]} (was {result['previous_hash'][:16]})")
