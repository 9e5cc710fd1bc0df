"""`ntt-batch` command line. Thin: parse flags, call one function from ``workflows``.

Typical flow (see README):

    ntt-batch checkpoints random --model sam2.1_hiera_tiny dinov2_vits14 --out ckpt/   # smoke runs only
    ntt-batch references sample --annotations instances_train2017.json --split few_shot --shots 10 \
        --seed 33 --out refs.json
    ntt-batch memory build --references refs.json --image-root train2017/ --encoder dinov2_vitl14 --out bank/
    ntt-batch segment --memory bank/ --annotations instances_val2017.json --image-root val2017/ --out results.json
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from .cli_settings import flag_names, settings_from_flags, settings_given, settings_options
from .method.config import MemoryConfig, SegmenterConfig
from .models.registry import CHECKPOINTS, DEFAULT_ENCODER, DINOV3_ACCESS, ENCODER_NAMES, SAM2_NAMES
from .pipeline.job import JobConfig
from .storage.fs import StorageOptionsError, storage_options_from

log = logging.getLogger("ntt_batch")

_KNOWN_ERRORS = (ValueError, FileNotFoundError, RuntimeError, KeyError)


class _UserError(click.ClickException):
    """An expected failure (bad input, bad configuration, missing file): ``Error: <one line>``, exit code 2."""

    exit_code = 2


def _one_line(e: BaseException) -> str:
    """The message of an expected failure on one line; a ConfigError's message already names the key."""
    from .method.config import ConfigError

    message = " ".join(line.strip() for line in str(e).splitlines() if line.strip()) or repr(e)
    return message if isinstance(e, ConfigError) else f"{type(e).__name__}: {message}"


class _Group(click.Group):
    """Turns expected failures (bad input, missing files) into one clear line and exit code 2.

    ``--debug`` shows the trace instead."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.exceptions.Exit:
            raise
        except click.ClickException:
            raise
        except Exception as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            from .storage.credentials import credentials_problem

            problem = credentials_problem(e)  # missing S3 credentials: one line naming the ways to provide them
            if problem is not None:
                raise _UserError(problem) from e
            if isinstance(e, _KNOWN_ERRORS):
                raise _UserError(_one_line(e)) from e
            raise


def _progress(label: str):
    """A stderr progress callback (n, total) -> None that prints at most ~20 lines."""
    state = {"last": -1}

    def cb(n: int, total: int) -> None:
        step = max(1, total // 20)
        if n == total or n // step != state["last"]:
            state["last"] = n // step
            click.echo(f"{label}: {n}/{total}", err=True)

    return cb


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--debug", is_flag=True, help="Show full tracebacks and debug logs.")
@click.version_option(package_name="ntt-batch")
@click.pass_context
def main(ctx, debug):
    """Training-free reference-based instance segmentation (No Time to Train!) at data-lake scale.

    A few annotated reference instances per class become a memory bank of DINOv2 (or DINOv3)
    prototypes; SAM2 proposes masks on every target image and each is matched to the prototypes.
    """
    ctx.obj = {"debug": debug}
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


# ----------------------------------------------------------------------------- checkpoints

_ckpt_dir_opt = click.option(
    "--checkpoint-dir",
    type=click.Path(file_okay=False),
    envvar="NTT_CHECKPOINT_DIR",
    default=None,
    help="Folder of pre-placed checkpoint files (official file names). Env: NTT_CHECKPOINT_DIR. "
    "Otherwise files are cached in NTT_CACHE_DIR or ~/.cache/ntt_batch.",
)
_no_download_opt = click.option("--no-download", is_flag=True, help="Never download; fail if a checkpoint is missing.")
_ENCODER_HELP = "Image encoder (DINOv2: Apache-2.0; DINOv3: DINOv3 License, gated downloads)."


@main.group()
def checkpoints():
    """List, download or fabricate (random weights) model checkpoints."""


@checkpoints.command("list")
def checkpoints_list():
    """The official checkpoints this tool knows: name, file, size, where to get it, sha256, licence.

    Gated models (DINOv3) have no download address: request access, download the file yourself
    and pass its folder as --checkpoint-dir; only a prefix of their sha256 is published.
    """
    for spec in CHECKPOINTS.values():
        size = f"{spec.size_bytes / 1e6:8.1f} MB" if spec.size_bytes is not None else f"{'size n/a':>11s}"
        where = spec.url if spec.url is not None else f"gated: request access at {DINOV3_ACCESS}"
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
@_ckpt_dir_opt
@click.argument("more_models", nargs=-1)
def checkpoints_download(models, checkpoint_dir, more_models):
    """Download (and verify) checkpoints into the cache, or find them in --checkpoint-dir."""
    from .models.checkpoints import resolve_checkpoint

    for name in _split_names(models + more_models):
        c = resolve_checkpoint(name, checkpoint_dir=checkpoint_dir)
        click.echo(f"{name}: {c.path} sha256 {c.sha256} {'(official)' if c.official else '(NOT the official file)'}")


@checkpoints.command("random")
@click.option(
    "--model",
    "models",
    multiple=True,
    required=True,
    help=f"Model name(s), repeatable or space/comma separated. SAM2: {', '.join(SAM2_NAMES)}; "
    f"encoders: {', '.join(ENCODER_NAMES)}.",
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
    from .models.loading import write_random_checkpoint

    for name in _split_names(models + more_models):
        path = write_random_checkpoint(name, out, seed=seed)
        click.echo(f"wrote {path} (random weights, seed {seed})")


def _split_names(values) -> list[str]:
    return [n for v in values for n in v.replace(",", " ").split() if n]


# ----------------------------------------------------------------------------- references


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
    from .references.files import save_references
    from .references.sampler import sample_references_from_file

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
    _remember_image_root(refs, image_root)
    save_references(refs, out)
    _echo_reference_summary(refs, out)


def _parse_prefer(value: str | None):
    """--prefer's text as a ReferencePreference (None when off); a bad value is a usage error naming the flag."""
    if value is None:
        return None
    from .references.preferences import ReferencePreference

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
    from .references.coco import load_coco
    from .references.files import save_references
    from .references.importers import references_from_coco_annotations

    refs = references_from_coco_annotations(load_coco(annotations), split=split, max_per_class=max_per_class)
    refs.setdefault("source", {})["annotations"] = str(annotations)
    _remember_image_root(refs, image_root)
    save_references(refs, out)
    _echo_reference_summary(refs, out)


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
    from .references.files import save_references
    from .references.importers import references_from_csv

    refs = references_from_csv(csv_path, image_root)
    save_references(refs, out)
    _echo_reference_summary(refs, out)


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
        from .references.preferences import ReferencePreference

        stats = refs["source"].get("prefer_stats") or {}
        kept = ", ".join(f"{name} {st.get('kept', 0)}/{st.get('candidates', 0)}" for name, st in stats.items())
        click.echo(
            f"  preference: {ReferencePreference.parse(prefer).describe()}"
            + (f" (candidates kept per class: {kept})" if kept else "")
        )
    if refs.get("image_root"):
        click.echo(f"  images under {refs['image_root']} (remembered: `memory build` needs no --image-root)")
    click.echo(f"  check them: ntt-batch references show --references {out} --out references.png")


def _remember_image_root(refs: dict, image_root: str | None) -> None:
    if image_root:
        import os

        refs["image_root"] = image_root if "://" in image_root else os.path.abspath(image_root)


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
    type=click.Choice(SAM2_NAMES),
    help="Make masks for box-only references now with this SAM2 model (when --memory does not have them).",
)
@click.option("--cell", default=224, show_default=True, type=click.IntRange(min=32), help="Cell size in px.")
@click.option("--columns", default=8, show_default=True, type=click.IntRange(min=1), help="Cells per row.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N (for --sam2)")
@_ckpt_dir_opt
@_no_download_opt
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
    from .bank.build import load_reference_sets
    from .references.files import REFERENCES_FILE
    from .viz.contact_sheet import bank_box_masks, reference_sheet

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


# ----------------------------------------------------------------------------- memory bank


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
    "--image-root",
    default=None,
    type=click.Path(exists=True, file_okay=False),
    help="Folder holding the reference images. Default: the folder each references file remembers.",
)
@click.option(
    "--encoder", default=DEFAULT_ENCODER, show_default=True, type=click.Choice(ENCODER_NAMES), help=_ENCODER_HELP
)
@click.option(
    "--sam2",
    "sam2_name",
    default=None,
    type=click.Choice(SAM2_NAMES),
    help="SAM2 model for box-only references (their masks come from box prompts).",
)
@settings_options(MemoryConfig)
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@_ckpt_dir_opt
@_no_download_opt
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output bank folder.")
@click.option("--overwrite", is_flag=True, help="Replace the memory bank already in --out (refused otherwise).")
def memory_build(
    references_path, image_root, encoder, sam2_name, device, checkpoint_dir, no_download, out, overwrite, **kw
):
    """Encode the references with the image encoder and save per-instance/class prototypes (method.md §2-3).

    The (merged) references are saved in the bank folder as references.json; masks SAM2 made for
    box-only references are recorded in the bank (`references show --memory BANK` draws them).
    """
    from .bank.build import build_bank_folder

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
        progress=_progress("references"),
        notice=lambda n: click.echo(f"notice: {n}"),
        overwrite=overwrite,
    )
    click.echo(
        f"wrote memory bank {out}: {len(bank.categories)} classes, {int(bank.instance_labels.numel())} instances, "
        f"dim {bank.instance_prototypes.shape[1]}, hash {bank.content_hash[:16]}"
    )
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
    from .viz.memory_report import show_memory_bank

    result = show_memory_bank(bank, out_png, *(() if threshold is None else (threshold,)))
    click.echo(result["report"])
    if result.get("png"):
        click.echo(f"wrote {result['png']}")


@memory.command("info")
@click.argument("bank", type=click.Path(exists=True, file_okay=False))
def memory_info(bank):
    """Print a bank's metadata (classes, shots, encoder, hash)."""
    from .method.memory_bank import MemoryBank

    b = MemoryBank.load(bank)
    meta = b.metadata()
    meta["references"] = {
        "source": meta["references"].get("source"),
        "instances": len(meta["references"].get("instances", [])),
    }
    click.echo(json.dumps(meta, indent=2))


# ----------------------------------------------------------------------------- segment


def storage_flags(f):
    """Object-store flags for commands that read shards/files by URI (same meaning as for `run`)."""
    opts = [
        click.option("--endpoint-url", default=None, help="S3-compatible endpoint (MinIO, Ceph, ...)."),
        click.option("--anon", is_flag=True, default=False, help="Anonymous object-store access."),
        click.option("--profile", default=None, help="AWS profile for s3:// URIs."),
        click.option(
            "--storage-option", "storage_option", multiple=True, help="Extra fsspec option KEY=VALUE (repeatable)."
        ),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def segmenter_options(f):
    """Model, threshold and device flags shared by `segment` and `run`: `--sam2` (``JobConfig.sam2``),
    one flag per ``SegmenterConfig`` field marked as a flag (generated from the dataclass: name, type,
    default and help; see ``cli_settings``), and where the checkpoints come from."""
    f = _no_download_opt(f)
    f = _ckpt_dir_opt(f)
    f = settings_options(SegmenterConfig)(f)
    return settings_options(JobConfig, only=("sam2",))(f)


def job_options(f):
    """`run`'s job flags, one per ``JobConfig`` field marked as a flag (generated like the segmenter's;
    `--sam2` comes with :func:`segmenter_options`)."""
    return settings_options(JobConfig, only=tuple(n for n in flag_names(JobConfig) if n != "sam2"))(f)


# The SegmenterConfig fields that are flags of `segment` and `run` (`run`: given ones override the job file).
_SEGMENTER_FLAGS = flag_names(SegmenterConfig)


def segmenter_config_from_flags(kw: dict) -> SegmenterConfig:
    """The segmenter settings of a command's flag values (a flag missing from ``kw`` keeps its default), validated."""
    return SegmenterConfig(**settings_from_flags(SegmenterConfig, kw)).validate()


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
    from .bank.load import segmenter_from_bank as load_segmenter
    from .workflows import meta_path_for, resolve_targets, segment_to_coco_results

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
        segmenter, entries, out, provenance, batch_size=batch_size, progress=_progress("images")
    )
    click.echo(
        f"wrote {out} ({summary['instances']} instances on {summary['images_ok']} images, "
        f"{summary['images_empty']} empty, {summary['images_error']} unreadable; "
        f"{summary['images_per_s']} images/s); provenance in {meta_path_for(out)}"
    )


# ----------------------------------------------------------------------------- batch job


@main.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Job YAML with the same keys as these flags (segmenter settings under 'segmenter:'); flags given on "
    "the command line override it.",
)
@job_options
@storage_flags
@click.option(
    "--extensions",
    default=None,
    help="Only list objects with these extensions, e.g. 'jpg,png' (default: every object is an input; "
    "non-images get error rows). The skipped count is printed and recorded.",
)
@click.option(
    "--publish",
    "publish_items",
    multiple=True,
    metavar="KEY=VALUE",
    help="At the end of each completed attempt, register the committed files in a table, like `ntt-batch publish` "
    "(repeatable; the keys of a job file's publish: block): table=NS.NAME [iceberg=CATALOG] [warehouse=URI] "
    "for Iceberg, delta=true for Delta Lake. Not part of the job's fingerprint.",
)
@click.option(
    "--dry-run", is_flag=True, help="Say what would be processed (counts and the first 50) and exit; writes nothing."
)
@click.option(
    "--verbose",
    is_flag=True,
    help="Show Ray's own start-up, status and progress output (off by default: "
    "one progress line with images/s and ETA is shown instead).",
)
@segmenter_options
@click.pass_context
def run(ctx, config_file, publish_items, dry_run, verbose, **kw):
    """The batch job: stream images through Ray actors into Parquet/RLE rows (resumable).

    Every listed input gets exactly one row (status ok / empty / error + message), committed
    into large part-*.parquet files directly under --out; metadata (run.json, the lock) lives
    under <out>/_ntt/, so pandas, pyarrow.dataset, DuckDB and Spark read the folder as it is.
    Rerunning the same command processes only inputs without a row. An output belongs to one
    job: another bank, other segmenter settings or other weights are refused (--allow-job-change),
    and a second concurrent run on the same output is refused (exit 4).

    \b
    Exit codes:
      0  done, every input has a row (and none has status error, or --allow-errors)
      1  done, but some images have status error (see `ntt-batch verify OUT`; --retry-errors redoes them)
      2  usage or configuration error (the message names the setting)
      3  integrity problem: an input of this run got no row (rerun, then `ntt-batch verify`)
      4  another run holds the output's lock
      130 interrupted (Ctrl-C); finished rows are committed, rerun to continue
    """
    from .output.folder import LeaseHeldError
    from .pipeline.job import EXIT_INTERRUPTED, EXIT_LOCKED, run_job

    data: dict = {}
    if config_file:
        from .pipeline.job_files import load_job_file

        data = load_job_file(config_file)  # the same reader as `config check`: repeated keys are errors
    given = {k for k in kw if ctx.get_parameter_source(k) == click.core.ParameterSource.COMMANDLINE}
    seg = dict(data.pop("segmenter", None) or {})
    seg.update(settings_given(ctx, SegmenterConfig, kw))
    try:
        data["storage_options"] = storage_options_from(kw, data.pop("storage_options", None))
    except StorageOptionsError as e:
        raise click.BadParameter(str(e), param_hint="--storage-option") from None
    if "extensions" in given:
        data["extensions"] = [e for e in kw["extensions"].replace(",", " ").split() if e]
    data.update(settings_given(ctx, JobConfig, kw))  # job flags given on the command line override the file
    if kw["checkpoint_dir"] and "checkpoint_dir" not in data:  # the flag, or NTT_CHECKPOINT_DIR
        data["checkpoint_dir"] = kw["checkpoint_dir"]
    if "no_download" in given:
        data["download"] = not kw["no_download"]
    data["segmenter"] = seg
    if publish_items:
        data["publish"] = {**(data.get("publish") or {}), **_key_values(publish_items, "--publish")}
    cfg = JobConfig.from_dict(data, where=config_file or "flags")
    try:
        result = run_job(
            cfg, dry_run=dry_run, echo=click.echo, verbose=verbose or bool(ctx.obj and ctx.obj.get("debug"))
        )
    except LeaseHeldError as e:
        click.echo(f"Error: {e}", err=True)
        ctx.exit(EXIT_LOCKED)
    except KeyboardInterrupt:
        click.echo("interrupted: finished rows are committed; run the same command again to continue", err=True)
        ctx.exit(EXIT_INTERRUPTED)
    ctx.exit(result.exit_code)


# ----------------------------------------------------------------------------- merge / eval / visualize


def storage_options_from_flags(kw: dict) -> dict:
    """fsspec storage options from the `storage_flags` values (removed from ``kw``)."""
    flags = {k: kw.pop(k, None) for k in ("endpoint_url", "anon", "profile", "storage_option")}
    try:
        return storage_options_from(flags)
    except StorageOptionsError as e:
        raise click.BadParameter(str(e), param_hint="--storage-option") from None


_SCORE_THRESHOLD_HELP = (
    "Keep instances with score >= T: one number for every class, or a YAML/JSON file of per-class "
    "thresholds {class name or id: T, default: T} (e.g. written by `ntt-batch thresholds`). "
    "Default: keep all."
)


@main.command()
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
    type=click.Choice(["results", "dataset", "yolo", "label-studio"]),
    help="results: COCO results array for COCOeval/`ntt-batch eval`. dataset: a complete COCO annotation file "
    "(images, categories, annotations with RLE masks and scores) to train other models on; FiftyOne "
    "loads it with its COCO importer. yolo: an Ultralytics YOLO segmentation dataset folder. "
    "label-studio: Label Studio tasks with one brush region per instance (+ the labeling config beside it).",
)
@click.option("--score-threshold", default=None, metavar="T|FILE", help=_SCORE_THRESHOLD_HELP)
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
def merge(
    shards,
    out,
    fmt,
    score_threshold,
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

    \b
    --format results   [{"image_id", "category_id", "bbox", "score", "segmentation": RLE}, ...]
                       exactly what pycocotools COCO.loadRes and `ntt-batch eval` read.
    --format dataset   {"info", "images": [{"id", "file_name", "width", "height", "image_uri"}],
                        "annotations": [{"id", "image_id", "category_id", "segmentation": RLE, "bbox",
                        "area", "iscrowd": 0, "score"}], "categories"}: the auto-labeling product.
                       Categories come from the memory bank recorded in run.json (else from the
                       instances); images whose row has status error are skipped and counted.
                       FiftyOne: fo.Dataset.from_dir(dataset_type=fo.types.COCODetectionDataset,
                       data_path=IMAGE_ROOT, labels_path=OUT, label_types=["segmentations"])
    --format yolo      OUT/data.yaml, images.txt, images/, labels/<name>.txt: `yolo segment train
                       data=OUT/data.yaml`. Polygons from the masks (holes filled, parts joined).
    --format label-studio  tasks [{"data": {"image"}, "predictions": [{"result": [brushlabels]}]}]
                       to import in Label Studio, and OUT's .label_config.xml to paste in the project.
                       Local images: add Local Storage to the project and pass --image-root and
                       --image-url-prefix "/data/local-files/?d=..." (see the README).

    Memory stays bounded however many instances there are: shards are read one record batch at a
    time and entries are written as they are formatted. Example:

    \b
      ntt-batch merge --shards out/ --out results.json --format results
      ntt-batch merge --shards s3://bucket/run1/ --out labels.json --format dataset --score-threshold 0.5
      ntt-batch merge --shards out/ --out yolo_ds/ --format yolo --score-threshold thresholds.yaml
    """
    from .exports import merge as merge_shards

    options = storage_options_from_flags(kw)
    extra = {
        "yolo": {"images": yolo_images, "simplify": simplify},
        "label-studio": {
            "image_url_prefix": image_url_prefix,
            "simplify": simplify,
            "mask": ls_mask,
            "min_part_area": min_part_area,
        },
    }.get(fmt, {})
    for flag, value, formats in (
        ("--image-url-prefix", image_url_prefix, ("label-studio",)),
        ("--yolo-images", yolo_images, ("yolo",)),
        ("--ls-mask", ls_mask, ("label-studio",)),
        ("--min-part-area", min_part_area, ("label-studio",)),
        ("--simplify", simplify, ("yolo", "label-studio")),
        ("--image-root", image_root, ("results", "dataset", "label-studio")),
    ):
        if value is not None and fmt not in formats:
            raise click.UsageError(f"{flag} applies to --format {' or '.join(formats)} only")
    extra = {k: v for k, v in extra.items() if v is not None}
    stats = merge_shards(
        shards,
        out,
        format=fmt,
        options=options,
        score_threshold=score_threshold,
        image_root=image_root,
        batch_rows=batch_rows,
        progress=_progress("shards"),
        **extra,
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


@main.command("eval")
@click.option("--annotations", required=True, help="COCO ground-truth annotation JSON (local path or URI).")
@click.option(
    "--results",
    required=True,
    help="A COCO results JSON (`ntt-batch merge --format results`, `ntt-batch segment`) or the shards "
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
    from .eval.coco_eval import evaluate_coco, format_report, write_report

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
@click.option(
    "--score-threshold",
    default=None,
    metavar="T|FILE",
    help="Draw predictions with score >= T only: one number, or a per-class thresholds file (YAML/JSON).",
)
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
def visualize(source, images_root, annotations, ids, limit, score_threshold, max_instances, max_side, out, **kw):
    """PNG overlays: masks in class colours with 'name score' tags (ground truth left when given).

    \b
      ntt-batch visualize --shards out/ --images val2017/ --annotations instances_val2017.json --limit 10 --out viz/
    """
    from .viz.overlay import visualize as draw

    options = storage_options_from_flags(kw)
    summary = draw(
        source,
        out,
        images_root=images_root,
        annotations=annotations,
        ids=ids or None,
        limit=limit,
        score_threshold=score_threshold,
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
@click.option("--out", required=True, help="Thresholds file to write (.yaml, or .json), for --score-threshold.")
@storage_flags
def thresholds_cmd(annotations, shards, target, iou_threshold, iou_type, default_threshold, out, **kw):
    """Pick per-class score thresholds on a small labelled set and write them as a map.

    Detections are matched to the ground truth per image and class (greedy by score, one match
    per ground-truth instance, IoU >= --iou, crowd regions ignored); classes are matched by name.
    Prints a table (class, threshold, precision, recall, F1, #GT) and writes {class: threshold}
    for `merge`, the exports and `visualize` (--score-threshold FILE). Example:

    \b
      ntt-batch thresholds --annotations val_small.json --shards out_val/ --out thresholds.yaml
      ntt-batch merge --shards out/ --out labels.json --format dataset --score-threshold thresholds.yaml
    """
    from .eval.threshold_fit import format_table, tune_thresholds, write_thresholds

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
@click.option(
    "--thresholds",
    default=None,
    help="Default score thresholds: a number, or a YAML/JSON map {class: threshold, default: t} "
    "(`ntt-batch thresholds` writes one). Sets the page's slider / per-class filter.",
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
    from .viz.review import write_review

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
    from .viz.review_server import serve

    try:
        serve(out, port, echo=click.echo)
    except (OSError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from None


# ----------------------------------------------------------------------------- config


@main.group("config")
def config_group():
    """Job files (YAML for `ntt-batch run --config`): validate them without running anything."""


@config_group.command("check")
@click.argument("job_file", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--strict", is_flag=True, help="Also fail (exit 1) when there are warnings, e.g. a local path that does not exist."
)
def config_check(job_file, strict):
    """Validate JOB_FILE and print its resolved settings (credentials redacted).

    Unknown or misspelled keys and bad values are errors that name the key (e.g. "segmenter:
    unknown key(s) 'point_per_side'"). Then cheap checks on this machine: local paths exist, the
    memory bank's classes and shots (or how the `references:` block will build it), where the
    checkpoints come from, S3 bucket names. Remote objects are not opened. Exit 0 when valid,
    1 when these checks find errors (and on warnings with --strict), 2 when the file itself is
    invalid (YAML syntax, unknown keys, a value of the wrong type: `limit: three`,
    `allow_errors: "false"`), in one line naming the key, the value and the expected type.

    \b
    Example:  ntt-batch config check jobs/coco-fsod-10shot.yaml
    """
    from .pipeline.job_files import check_job_file

    report = check_job_file(job_file)
    click.echo(report.format())
    if not report.ok or (strict and report.warnings):
        raise SystemExit(1)


# ----------------------------------------------------------------------------- demo


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
@click.option("--sam2", "sam2_name", default="sam2.1_hiera_tiny", show_default=True, type=click.Choice(SAM2_NAMES))
@click.option(
    "--encoder", default="dinov2_vits14", show_default=True, type=click.Choice(ENCODER_NAMES), help=_ENCODER_HELP
)
@click.option("--shots", default=1, show_default=True)
@click.option("--limit", default=8, show_default=True, help="Target images.")
@click.option(
    "--points-per-side",
    default=8,
    show_default=True,
    help="8 keeps the CPU demo to seconds per image; the paper uses 32.",
)
@click.option("--device", default="auto", show_default=True)
@_ckpt_dir_opt
def demo(data, out, random_weights, sam2_name, encoder, shots, limit, points_per_side, device, checkpoint_dir):
    """End to end on a small sample: references -> memory bank -> segment -> COCO eval.

    Defaults are CPU-sized: few-shot split, 1 shot, 8 val images, sam2.1_hiera_tiny + dinov2_vits14.
    """
    from .demo import run_demo

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


# ----------------------------------------------------------------------------- bench


@main.command()
@click.option(
    "--sam2",
    "sam2_name",
    default="sam2.1_hiera_tiny",
    show_default=True,
    type=click.Choice(SAM2_NAMES),
    help="SAM2 proposer.",
)
@click.option(
    "--encoder", default="dinov2_vits14", show_default=True, type=click.Choice(ENCODER_NAMES), help=_ENCODER_HELP
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
    "--points-per-side", default=32, show_default=True, help="Point grid side; 32 is the paper's 1024 prompts."
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
    "compile_models",
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
@_ckpt_dir_opt
@_no_download_opt
def bench(
    sam2_name,
    encoder,
    images,
    limit,
    device,
    points_per_side,
    memory,
    bf16,
    compile_models,
    warmup,
    random_weights,
    pipeline_noop,
    repeat,
    batch_size,
    json_out,
    checkpoint_dir,
    no_download,
):
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
    import tempfile

    from .benchmark import BF16_TOLERANCE, FP32_TOLERANCE, format_report, random_bank, run_benchmark, run_pipeline_noop
    from .method.config import SegmenterConfig
    from .method.memory_bank import MemoryBank
    from .method.segmenter import MethodSegmenter
    from .models.checkpoints import CheckpointNotFoundError
    from .models.loading import load_encoder, load_sam2, write_random_checkpoint
    from .pipeline.plan import list_inputs
    from .sources.inputs import InputSpec

    if random_weights:
        checkpoint_dir = checkpoint_dir or tempfile.mkdtemp(prefix="ntt-bench-ckpt-")
        for name in (sam2_name, encoder):
            try:
                from .models.checkpoints import resolve_checkpoint

                resolve_checkpoint(name, checkpoint_dir=checkpoint_dir, download=False)
            except CheckpointNotFoundError:
                click.echo(f"writing random {name} weights into {checkpoint_dir}", err=True)
                write_random_checkpoint(name, checkpoint_dir)
    targets = list_inputs(InputSpec(images=images))
    if not targets:
        raise click.BadParameter(f"no images found at {images!r}", param_hint="--images")
    if pipeline_noop:
        report = run_pipeline_noop(
            targets[:limit] if limit else targets,
            repeat=repeat,
            batch_size=batch_size,
            checkpoint_dir=checkpoint_dir,
            encoder_name=encoder,
            sam2_name=sam2_name,
            echo=lambda m: click.echo(m, err=True),
        )
        click.echo(
            f"pipeline with a no-op model stage: {report['images']} images in {report['seconds']:.2f} s "
            f"= {report['images_per_s']:.1f} images/s ({report['errors']} errors)"
        )
    else:
        encoder_model, _ = load_encoder(encoder, checkpoint_dir=checkpoint_dir, download=not no_download)
        proposer, _ = load_sam2(sam2_name, checkpoint_dir=checkpoint_dir, download=not no_download)
        bank = MemoryBank.load(memory) if memory else random_bank(encoder, int(encoder_model.embed_dim))
        base = dict(points_per_side=points_per_side, device=device)
        fast = MethodSegmenter(
            proposer, encoder_model, bank, SegmenterConfig(**base, bf16=bf16, compile=compile_models)
        )
        ref = MethodSegmenter(proposer, encoder_model, bank, SegmenterConfig(**base, implementation="reference"))
        n_warm = warmup if warmup is not None else (1 if fast.device.type == "cuda" or compile_models else 0)
        limit = limit or 3
        click.echo(
            f"bench: {sam2_name} + {encoder} on {fast.device}, {points_per_side}x{points_per_side} grid, "
            f"{min(limit, len(targets))} images (+{n_warm} warm-up)",
            err=True,
        )
        tol = BF16_TOLERANCE if bf16 else FP32_TOLERANCE
        report = run_benchmark(
            fast,
            ref,
            targets[:limit],
            warmup=n_warm,
            agree_iou=tol["box_iou"],
            agree_score=tol["score"],
            progress=lambda m: click.echo(m, err=True),
        )
        report["models"] = {"sam2": sam2_name, "encoder": encoder, "random_weights": bool(random_weights)}
        click.echo(format_report(report))
    report["command"] = " ".join(["ntt-batch"] + sys.argv[1:])
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(report, indent=2))
        click.echo(f"wrote {json_out}", err=True)


# ----------------------------------------------------------------------------- verify / compact


@main.command()
@click.argument("out")
@click.option(
    "--inputs/--no-inputs",
    "check_inputs",
    default=True,
    show_default=True,
    help="Also list the job's inputs (from run.json) and report those without a row.",
)
@click.option(
    "--repair",
    is_flag=True,
    help="Quarantine corrupt files (their images are redone by the next run), remove duplicate rows "
    "(keeping one per URI: a non-error row, then the newest) and resync run.json. Takes the lock.",
)
@click.option(
    "--json", "json_out", default=None, type=click.Path(dir_okay=False), help="Also write the report as JSON here."
)
@storage_flags
@click.pass_context
def verify(ctx, out, check_inputs, repair, json_out, **kw):
    """Check a `run` output completely: rows per input, duplicates, unreadable files, attempts.

    Reads every committed file page by page (with checksums), so it finds what `merge`/`eval`
    would choke on; resume only re-checks files that are new or changed.

    \b
    Exit codes (for automation):
      0  consistent: every input has exactly one row, every file reads
      1  consistent, but some rows have status error (`ntt-batch run ... --retry-errors` redoes them)
      3  integrity problem: corrupt files, duplicates, inputs without a row, run.json out of step, leftovers
      4  --repair: another run holds the output's lock
    \b
    Example:  ntt-batch verify s3://bucket/ntt-out/run1/ --json verify.json
    """
    from .output.folder import LeaseHeldError
    from .pipeline.verify import EXIT_LOCKED, verify_output

    options = storage_options_from_flags(kw)
    try:
        report = verify_output(out, options, inputs=check_inputs, repair=repair, echo=lambda m: click.echo(m, err=True))
    except LeaseHeldError as e:
        click.echo(f"Error: {e}", err=True)
        ctx.exit(EXIT_LOCKED)
    click.echo(report.format())
    if json_out:
        Path(json_out).write_text(json.dumps(report.to_dict(), indent=2))
    ctx.exit(report.exit_code)


@main.command()
@click.argument("out")
@click.option(
    "--target-file-mb",
    type=click.IntRange(min=1),
    default=512,
    show_default=True,
    help="Merge committed files smaller than half this size into files of about this size.",
)
@storage_flags
@click.pass_context
def compact(ctx, out, target_file_mb, **kw):
    """Merge a `run` output's small part files into large ones (rows unchanged; takes the lock).

    `run` already compacts at the end of every attempt; use this after changing --target-file-mb,
    or on outputs written by older versions.
    """
    from .output.folder import LeaseHeldError
    from .pipeline.verify import EXIT_LOCKED, compact_output

    options = storage_options_from_flags(kw)
    try:
        compact_output(out, options, target_file_mb=target_file_mb, echo=click.echo)
    except LeaseHeldError as e:
        click.echo(f"Error: {e}", err=True)
        ctx.exit(EXIT_LOCKED)


def _key_values(items, flag: str) -> dict:
    """``KEY=VALUE`` flag items → a dict (values read as YAML scalars: ``delta=true`` is a boolean)."""
    from .storage.fs import yaml_scalar

    out = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint=flag)
        out[key.strip()] = yaml_scalar(value)
    return out


_DELTA_AT_OUT = "\0out"  # --delta without a value


@main.command()
@click.argument("out")
@click.option(
    "--iceberg",
    default=None,
    is_flag=False,
    flag_value="embedded",
    metavar="[CATALOG]",
    help="Iceberg catalog: sqlite:///path/catalog.db (a SQL catalog in a SQLite file, no service), "
    "http(s)://... (REST catalog), glue or glue://REGION (AWS Glue), or a catalog name from ~/.pyiceberg.yaml. "
    "Without a value (or with --table alone): the embedded catalog OUT/_ntt/iceberg/catalog.db (local outputs).",
)
@click.option("--table", default=None, metavar="NAMESPACE.NAME", help="Iceberg table (created when missing).")
@click.option(
    "--warehouse",
    default=None,
    metavar="URI",
    help="Where a new Iceberg table keeps its metadata (default for a SQLite catalog: 'warehouse' beside its file).",
)
@click.option(
    "--catalog-property",
    "catalog_property",
    multiple=True,
    metavar="KEY=VALUE",
    help="Extra pyiceberg catalog property (repeatable), e.g. token=... or credential=... for a REST catalog.",
)
@click.option(
    "--delta",
    default=None,
    is_flag=False,
    flag_value=_DELTA_AT_OUT,
    metavar="[PATH]",
    help="Delta Lake table (delta-rs): without a value at OUT itself (its log in OUT/_delta_log/); a PATH must be "
    "OUT or a folder above it (the part files must lie under the table's root).",
)
@click.option("--json", "json_out", default=None, type=click.Path(dir_okay=False), help="Also write the result here.")
@storage_flags
@click.pass_context
def publish(ctx, out, iceberg, table, warehouse, catalog_property, delta, json_out, **kw):
    """Register OUT's committed part files in an Iceberg and/or Delta Lake table, without rewriting them.

    Idempotent and in step with the output: new part files are added, files that `compact`,
    `run --retry-errors`, `verify --repair` or quarantine replaced are removed, in ONE table commit
    (one Iceberg snapshot, one Delta version), so the table's rows are exactly `verify`'s rows. With
    nothing to do, no commit is made ("up to date"). Takes OUT's lock while it runs (exit 4 if a run
    holds it). `run --publish KEY=VALUE` does the same at the end of each completed attempt.

    \b
    Examples:
      ntt-batch publish out/ --table labels.masks     # embedded SQLite catalog: out/_ntt/iceberg/
      ntt-batch publish s3://b/run1/ --table labels.masks --iceberg sqlite:///$PWD/catalog.db
      ntt-batch publish s3://b/run1/ --table labels.masks --iceberg https://catalog:8181 --catalog-property token=T
      ntt-batch publish s3://b/run1/ --delta          # a Delta table at s3://b/run1/ (log in _delta_log/)
    """
    from .output.folder import LeaseHeldError
    from .output.publish import publish as publish_output
    from .pipeline.verify import EXIT_LOCKED

    options = storage_options_from_flags(kw)
    try:
        result = publish_output(
            out,
            iceberg=iceberg,
            table=table,
            warehouse=warehouse,
            delta=True if delta == _DELTA_AT_OUT else delta,
            catalog_properties=_key_values(catalog_property, "--catalog-property"),
            storage_options=options,
            echo=click.echo,
        )
    except LeaseHeldError as e:
        click.echo(f"Error: {e}", err=True)
        ctx.exit(EXIT_LOCKED)
    if json_out:
        Path(json_out).write_text(json.dumps(result.to_dict(), indent=2))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
