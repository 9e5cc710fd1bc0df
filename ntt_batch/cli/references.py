"""`ntt-batch references sample | from-coco | from-csv | show`: the few annotated examples per class."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from ..models.proposers import proposer_models
from .app import main
from .options import checkpoint_dir_option, no_download_option

_refs_image_root_opt = click.option(
    "--image-root",
    default=None,
    help="Folder (or URI) the references' image file names are relative to; remembered in the output so "
    "`memory build` needs no --image-root.",
)


@main.group()
def references():
    """Create the reference set (the few annotated examples per class)."""


@references.command("sample")
@click.option(
    "--annotations",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="COCO instances JSON to sample from.",
)
@click.option(
    "--split",
    default="few_shot",
    show_default=True,
    help="'few_shot' (the 20 COCO-FSOD classes), 'all', or comma-separated class names and/or ids.",
)
@click.option("--shots", required=True, type=click.IntRange(min=1), help="Reference instances per class (K).")
@click.option("--seed", default=33, show_default=True, help="Python `random` seed (the paper's headline run uses 33).")
@click.option(
    "--allow-fewer-shots", is_flag=True, help="Keep classes with fewer than K valid references (ragged shots)."
)
@click.option("--min-box-side", default=32, show_default=True, help="Minimum reference box width and height (px).")
@click.option(
    "--border-margin", default=10, show_default=True, help="Minimum distance of the box from every border (px)."
)
@click.option(
    "--prefer",
    default=None,
    metavar="area=P,center=D,edge=E",
    callback=lambda ctx, param, value: _parse_prefer(value),
    help="Prefer large, centred references well inside their image (any subset of the keys): area=P keeps boxes "
    "whose area is at least the P-th percentile of the class's valid candidates (0-100); center=D keeps "
    "box centres at most D from the image centre (0 = centre, 1 = border); edge=E keeps boxes at least "
    "E x the image side from every border (0-0.5). Rejected candidates are skipped in the same seeded "
    "walk. [default: off = the reference sampler, unchanged]",
)
@_refs_image_root_opt
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output references JSON.")
def references_sample(
    annotations, split, shots, seed, allow_fewer_shots, min_box_side, border_margin, prefer, image_root, out
):
    """Sample K references per class exactly as the reference code does (method.md §1).

    Per class: shuffle its annotations with the seeded RNG, keep non-crowd instances with a box of
    at least 32x32 px at least 10 px from the borders, one instance per image per class.
    --prefer adds criteria on top (recorded in the output's source).

    \b
      ntt-batch references sample --annotations train.json --shots 5 --prefer area=50,center=0.6 --out refs.json
    """
    from ..references.sampler import sample_references_from_file

    refs = sample_references_from_file(
        annotations,
        split,
        shots,
        seed,
        allow_fewer=allow_fewer_shots,
        min_box_side=min_box_side,
        border_margin=border_margin,
        prefer=prefer,
    )
    _save(refs, out, image_root)


def _parse_prefer(value: str | None):
    """--prefer's text as a ReferencePreference (None when off); a bad value is a usage error naming the flag."""
    if value is None:
        return None
    from ..references.preferences import ReferencePreference

    try:
        return ReferencePreference.parse(value)
    except (ValueError, TypeError) as e:
        raise click.BadParameter(str(e), param_hint="--prefer") from None


@references.command("from-coco")
@click.option(
    "--annotations",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Your own COCO JSON: every non-crowd annotation becomes a reference (polygon, RLE or box only).",
)
@click.option("--split", default="all", show_default=True, help="'all' or comma-separated class names/ids.")
@click.option("--max-per-class", type=int, default=None, help="Cap references per class.")
@_refs_image_root_opt
@click.option("--out", required=True, type=click.Path(dir_okay=False))
def references_from_coco(annotations, split, max_per_class, image_root, out):
    """Use your own annotated images (COCO format) as references. Box-only ones get SAM2 masks at `memory build`."""
    from ..references.coco import load_coco
    from ..references.importers import references_from_coco_annotations

    refs = references_from_coco_annotations(load_coco(annotations), split=split, max_per_class=max_per_class)
    refs.setdefault("source", {})["annotations"] = str(annotations)
    _save(refs, out, image_root)


@references.command("from-csv")
@click.option(
    "--csv",
    "csv_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="CSV with columns image,category and mask (PNG masks), x,y,w,h (boxes), or all of them (each row "
    "fills either mask or x,y,w,h).",
)
@click.option(
    "--image-root",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder the image paths are relative to (default: the CSV's folder). Remembered in the output.",
)
@click.option("--out", required=True, type=click.Path(dir_okay=False))
def references_from_csv_cmd(csv_path, image_root, out):
    """Use your own images with PNG masks and/or boxes as references.

    \b
    Rules:
      image     path relative to --image-root (default: the CSV's folder); no absolute paths, no '..'
      category  class name; ids 1..N in order of first appearance
      mask      PNG whose NON-ZERO pixels are the object; exactly the image's size (W x H);
                a relative path is looked up in the CSV's folder, then under --image-root
      x,y,w,h   a box in pixels (COCO xywh) inside the image: a box-only reference, whose mask
                `memory build --sam2 NAME` makes with SAM2
    With columns image,category,mask,x,y,w,h each row fills either mask or the box.
    """
    from ..references.importers import references_from_csv

    refs = references_from_csv(csv_path, image_root)
    _save(refs, out)


def _echo_reference_summary(refs: dict, out: str) -> None:
    counts: dict[int, int] = {}
    for r in refs["references"]:
        counts[r["category_id"]] = counts.get(r["category_id"], 0) + 1
    names = {c["id"]: c["name"] for c in refs["categories"]}
    boxes = sum(1 for r in refs["references"] if r.get("segmentation") is None)
    click.echo(
        f"wrote {out}: {len(refs['references'])} references, {len(counts)} classes"
        + (f" ({boxes} box-only: `memory build` needs --sam2 NAME to make their masks)" if boxes else "")
    )
    click.echo("  " + ", ".join(f"{names[c]}={n}" for c, n in counts.items()))
    prefer = (refs.get("source") or {}).get("prefer")
    if prefer:
        from ..references.preferences import ReferencePreference

        stats = refs["source"].get("prefer_stats") or {}
        kept = ", ".join(f"{name} {st.get('kept', 0)}/{st.get('candidates', 0)}" for name, st in stats.items())
        click.echo(
            f"  preference: {ReferencePreference.parse(prefer).describe()}"
            + (f" (candidates kept per class: {kept})" if kept else "")
        )
    if refs.get("image_root"):
        click.echo(f"  images under {refs['image_root']} (remembered: `memory build` needs no --image-root)")
    click.echo(f"  check them: ntt-batch references show --references {out} --out references.png")


def _save(refs: dict, out: str, image_root: str | None = None) -> None:
    """Save the references (remembering ``image_root``, made absolute) and print their summary."""
    from ..references.files import save_references

    if image_root:
        refs["image_root"] = image_root if "://" in image_root else os.path.abspath(image_root)
    save_references(refs, out)
    _echo_reference_summary(refs, out)


@references.command("show")
@click.option(
    "--references",
    "references_paths",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="References JSON (repeatable; merged like `memory build` does). Default: the references.json saved in "
    "--memory.",
)
@click.option(
    "--memory",
    default=None,
    type=click.Path(exists=True, file_okay=False),
    help="A bank built from these references: its SAM2 masks of box-only references are drawn, and its crop "
    "setting used.",
)
@click.option(
    "--image-root",
    default=None,
    type=click.Path(exists=True, file_okay=False),
    help="Folder holding the reference images (default: the one the references file remembers).",
)
@click.option(
    "--sam2",
    "sam2_name",
    default=None,
    type=click.Choice(proposer_models()),
    help="Make masks for box-only references now with this SAM2 model (when --memory does not have them).",
)
@click.option("--cell", default=224, show_default=True, type=click.IntRange(min=32), help="Cell size in px.")
@click.option("--columns", default=8, show_default=True, type=click.IntRange(min=1), help="Cells per row.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N (for --sam2)")
@checkpoint_dir_option
@no_download_option
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output image (.png or .jpg).")
def references_show(
    references_paths, memory, image_root, sam2_name, cell, columns, device, checkpoint_dir, no_download, out
):
    """Draw the references as a contact sheet: check them before a big run.

    One strip per class; per reference, the crop the memory bank encodes with the mask filled and
    outlined in the class colour, the box, and where the mask came from: the reference's own mask,
    the SAM2 mask made from its box (from --memory, or made now with --sam2), or "box only".

    \b
      ntt-batch references show --references refs.json --memory bank/ --out references.png
    """
    from ..bank.build import load_reference_sets
    from ..references.files import REFERENCES_FILE
    from ..viz.contact_sheet import bank_box_masks, reference_sheet

    paths = list(references_paths)
    if not paths:
        if not memory or not (Path(memory) / REFERENCES_FILE).is_file():
            raise click.UsageError("give --references FILE (or --memory BANK holding a references.json)")
        paths = [str(Path(memory) / REFERENCES_FILE)]
    refs, notices = load_reference_sets(paths, image_root)
    for n in notices:
        click.echo(f"notice: {n}")
    masks, ratio = {}, 0.2
    if memory:
        masks = bank_box_masks(memory)
        ratio = float(
            json.loads((Path(memory) / "memory_bank.json").read_text()).get("config", {}).get("context_ratio", 0.2)
        )
    summary = reference_sheet(
        refs,
        out,
        box_masks=masks,
        sam2_name=sam2_name,
        checkpoint_dir=checkpoint_dir,
        download=not no_download,
        device=device,
        context_ratio=ratio,
        cell=cell,
        columns=columns,
        echo=click.echo,
    )
    how = ", ".join(f"{n} {k}" for k, n in summary.masks.items())
    click.echo(f"wrote {out}: {summary.references} references of {summary.classes} classes ({how})")
    for p in summary.problems:
        click.echo(f"  could not draw {p}", err=True)
    if summary.masks.get("box only"):
        click.echo(
            "  box-only references are drawn without a mask: pass --memory BANK (built with --sam2) or "
            "--sam2 NAME to see the SAM2 masks made from their boxes"
        )
