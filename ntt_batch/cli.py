"""`ntt-batch` command line. Thin: parse flags, call one function from ``workflows``.

Typical flow (see README):

    ntt-batch checkpoints random --model sam2.1_hiera_tiny dinov2_vits14 --out ckpt/   # smoke runs only
    ntt-batch references sample --annotations instances_train2017.json --split few_shot --shots 10 --seed 33 --out refs.json
    ntt-batch memory build --references refs.json --image-root train2017/ --encoder dinov2_vitl14 --out bank/
    ntt-batch segment --memory bank/ --annotations instances_val2017.json --image-root val2017/ --out results.json
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from .models.registry import CHECKPOINTS, DEFAULT_ENCODER, DEFAULT_SAM2, DINOV2_NAMES, SAM2_NAMES

log = logging.getLogger("ntt_batch")

_KNOWN_ERRORS = (ValueError, FileNotFoundError, RuntimeError, KeyError)


class _Group(click.Group):
    """Turns expected failures (bad input, missing files) into one clear line and exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.exceptions.Exit:
            raise
        except click.ClickException:
            raise
        except _KNOWN_ERRORS as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            raise click.ClickException(f"{type(e).__name__}: {e}") from e


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

    A few annotated reference instances per class become a memory bank of DINOv2 prototypes;
    SAM2 proposes masks on every target image and each is matched to the prototypes.
    """
    ctx.obj = {"debug": debug}
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


# ----------------------------------------------------------------------------- checkpoints

_ckpt_dir_opt = click.option(
    "--checkpoint-dir", type=click.Path(file_okay=False), envvar="NTT_CHECKPOINT_DIR", default=None,
    help="Folder of pre-placed checkpoint files (official file names). Env: NTT_CHECKPOINT_DIR. "
         "Otherwise files are cached in NTT_CACHE_DIR or ~/.cache/ntt_batch.",
)
_no_download_opt = click.option("--no-download", is_flag=True, help="Never download; fail if a checkpoint is missing.")


@main.group()
def checkpoints():
    """List, download or fabricate (random weights) model checkpoints."""


@checkpoints.command("list")
def checkpoints_list():
    """The official checkpoints this tool knows: name, file, URL, sha256."""
    for spec in CHECKPOINTS.values():
        click.echo(f"{spec.name:24s} {spec.filename:34s} {spec.size_bytes / 1e6:8.1f} MB  {spec.url}\n{'':24s} sha256 {spec.sha256}")


@checkpoints.command("download")
@click.option("--model", "models", multiple=True, required=True, help="Model name(s): --model A B or --model A --model B.")
@_ckpt_dir_opt
@click.argument("more_models", nargs=-1)
def checkpoints_download(models, checkpoint_dir, more_models):
    """Download (and verify) checkpoints into the cache, or find them in --checkpoint-dir."""
    from .models.checkpoints import resolve_checkpoint

    for name in _split_names(models + more_models):
        c = resolve_checkpoint(name, checkpoint_dir=checkpoint_dir)
        click.echo(f"{name}: {c.path} sha256 {c.sha256} {'(official)' if c.official else '(NOT the official file)'}")


@checkpoints.command("random")
@click.option("--model", "models", multiple=True, required=True,
              help=f"Model name(s), repeatable or space/comma separated. SAM2: {', '.join(SAM2_NAMES)}; DINOv2: {', '.join(DINOV2_NAMES)}.")
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


@main.group()
def references():
    """Create the reference set (the few annotated examples per class)."""


@references.command("sample")
@click.option("--annotations", required=True, type=click.Path(exists=True, dir_okay=False), help="COCO instances JSON to sample from.")
@click.option("--split", default="few_shot", show_default=True,
              help="'few_shot' (the 20 COCO-FSOD classes), 'all', or comma-separated class names and/or ids.")
@click.option("--shots", required=True, type=click.IntRange(min=1), help="Reference instances per class (K).")
@click.option("--seed", default=33, show_default=True, help="Python `random` seed (the paper's headline run uses 33).")
@click.option("--allow-fewer-shots", is_flag=True, help="Keep classes with fewer than K valid references (ragged shots).")
@click.option("--min-box-side", default=32, show_default=True, help="Minimum reference box width and height (px).")
@click.option("--border-margin", default=10, show_default=True, help="Minimum distance of the box from every border (px).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output references JSON.")
def references_sample(annotations, split, shots, seed, allow_fewer_shots, min_box_side, border_margin, out):
    """Sample K references per class exactly as the reference code does (method.md §1).

    Per class: shuffle its annotations with the seeded RNG, keep non-crowd instances with a box of
    at least 32x32 px at least 10 px from the borders, one instance per image per class.
    """
    from .method.references import sample_references_from_file, save_references

    refs = sample_references_from_file(annotations, split, shots, seed, allow_fewer=allow_fewer_shots,
                                       min_box_side=min_box_side, border_margin=border_margin)
    save_references(refs, out)
    _echo_reference_summary(refs, out)


@references.command("from-coco")
@click.option("--annotations", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Your own COCO JSON: every non-crowd annotation becomes a reference (polygon, RLE or box only).")
@click.option("--split", default="all", show_default=True, help="'all' or comma-separated class names/ids.")
@click.option("--max-per-class", type=int, default=None, help="Cap references per class.")
@click.option("--out", required=True, type=click.Path(dir_okay=False))
def references_from_coco(annotations, split, max_per_class, out):
    """Use your own annotated images (COCO format) as references. Box-only ones get SAM2 masks at `memory build`."""
    from .method.references import load_coco, references_from_coco_annotations, save_references

    refs = references_from_coco_annotations(load_coco(annotations), split=split, max_per_class=max_per_class)
    refs.setdefault("source", {})["annotations"] = str(annotations)
    save_references(refs, out)
    _echo_reference_summary(refs, out)


@references.command("from-csv")
@click.option("--csv", "csv_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="CSV with header 'image,category,mask' (PNG masks) or 'image,category,x,y,w,h' (boxes).")
@click.option("--image-root", type=click.Path(file_okay=False), default=None, help="Folder the image paths are relative to (default: the CSV's folder).")
@click.option("--out", required=True, type=click.Path(dir_okay=False))
def references_from_csv_cmd(csv_path, image_root, out):
    """Use your own images with PNG masks or boxes as references."""
    from .method.references import references_from_csv, save_references

    refs = references_from_csv(csv_path, image_root)
    save_references(refs, out)
    _echo_reference_summary(refs, out)


def _echo_reference_summary(refs: dict, out: str) -> None:
    counts: dict[int, int] = {}
    for r in refs["references"]:
        counts[r["category_id"]] = counts.get(r["category_id"], 0) + 1
    names = {c["id"]: c["name"] for c in refs["categories"]}
    click.echo(f"wrote {out}: {len(refs['references'])} references, {len(counts)} classes")
    click.echo("  " + ", ".join(f"{names[c]}={n}" for c, n in counts.items()))


# ----------------------------------------------------------------------------- memory bank


@main.group()
def memory():
    """Build or inspect a memory bank (class prototypes from references)."""


@memory.command("build")
@click.option("--references", "references_path", required=True, type=click.Path(exists=True, dir_okay=False), help="References JSON.")
@click.option("--image-root", required=True, type=click.Path(exists=True, file_okay=False), help="Folder holding the reference images.")
@click.option("--encoder", default=DEFAULT_ENCODER, show_default=True, type=click.Choice(DINOV2_NAMES), help="DINOv2 feature encoder.")
@click.option("--sam2", "sam2_name", default=None, type=click.Choice(SAM2_NAMES),
              help="SAM2 model for box-only references (their masks come from box prompts).")
@click.option("--context-ratio", default=0.2, show_default=True, help="Crop side = (1 + ratio) x max(box w, h).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@_ckpt_dir_opt
@_no_download_opt
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output bank folder.")
def memory_build(references_path, image_root, encoder, sam2_name, context_ratio, device, checkpoint_dir, no_download, out):
    """Encode the references with DINOv2 and save per-instance/class prototypes (method.md §2-3)."""
    from .method.config import MemoryConfig
    from .workflows import build_bank

    bank = build_bank(references_path, image_root, out, encoder_name=encoder, checkpoint_dir=checkpoint_dir,
                      download=not no_download, device=device, sam2_name=sam2_name,
                      config=MemoryConfig(context_ratio=context_ratio), progress=_progress("references"))
    click.echo(f"wrote memory bank {out}: {len(bank.categories)} classes, {int(bank.instance_labels.numel())} instances, "
               f"dim {bank.instance_prototypes.shape[1]}, hash {bank.content_hash[:16]}")
    for note in bank.notes:
        click.echo(f"  note: {note}")


@memory.command("info")
@click.argument("bank", type=click.Path(exists=True, file_okay=False))
def memory_info(bank):
    """Print a bank's metadata (classes, shots, encoder, hash)."""
    from .method.memory_bank import MemoryBank

    b = MemoryBank.load(bank)
    meta = b.metadata()
    meta["references"] = {"source": meta["references"].get("source"), "instances": len(meta["references"].get("instances", []))}
    click.echo(json.dumps(meta, indent=2))


# ----------------------------------------------------------------------------- segment


def segmenter_options(f):
    """Model / threshold / device flags shared by `segment` (and the batch job)."""
    opts = [
        click.option("--sam2", "sam2_name", default=DEFAULT_SAM2, show_default=True, type=click.Choice(SAM2_NAMES), help="SAM2 proposer."),
        click.option("--points-per-side", default=32, show_default=True, help="Point grid side (32 -> 1024 prompts). Tests use 2-8 on CPU."),
        click.option("--points-batch-size", default=256, show_default=True, help="Prompts per SAM2 decoder call."),
        click.option("--pred-iou-threshold", default=0.4, show_default=True, help="Keep masks with predicted IoU above this."),
        click.option("--nms-iou-threshold", default=0.5, show_default=True, help="Class-aware box NMS IoU threshold."),
        click.option("--max-detections", default=100, show_default=True, help="Instances kept per image."),
        click.option("--add-no-mem-embed", is_flag=True, help="Add SAM2's no_mem_embed like the official predictors (the reference skips it)."),
        click.option("--drop-unmatched-before-nms", is_flag=True, help="Drop zero-similarity candidates before NMS (the reference drops them after, method.md §8.19)."),
        click.option("--resize-mode", default="squash", show_default=True, type=click.Choice(["squash", "letterbox"]), help="Target resize (the reference squashes)."),
        click.option("--point-grid", default="reference", show_default=True, type=click.Choice(["reference", "amg"]), help="Grid layout (reference: touches the borders)."),
        click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N"),
        click.option("--bf16", is_flag=True, help="bf16 autocast for the model forwards on CUDA (the reference is fp32)."),
        _ckpt_dir_opt,
        _no_download_opt,
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def segmenter_config_from_flags(kw: dict):
    from .method.config import SegmenterConfig

    return SegmenterConfig(
        points_per_side=kw["points_per_side"], points_batch_size=kw["points_batch_size"],
        pred_iou_threshold=kw["pred_iou_threshold"], nms_iou_threshold=kw["nms_iou_threshold"],
        max_detections=kw["max_detections"], add_no_mem_embed=kw["add_no_mem_embed"],
        drop_unmatched_before_nms=kw["drop_unmatched_before_nms"], resize_mode=kw["resize_mode"],
        point_grid=kw["point_grid"], device=kw["device"], bf16=kw["bf16"],
    ).validate()


@main.command()
@click.option("--memory", required=True, type=click.Path(exists=True, file_okay=False), help="Memory bank folder.")
@click.option("--images", default=None, help="Target images: a folder, a file or a glob ('dir/*.jpg').")
@click.option("--annotations", type=click.Path(exists=True, dir_okay=False), default=None,
              help="COCO JSON listing the targets (image ids from it, so results evaluate directly); needs --image-root.")
@click.option("--image-root", type=click.Path(exists=True, file_okay=False), default=None)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N images.")
@click.option("--batch-size", default=1, show_default=True, help="Images per model call.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="COCO results JSON (provenance goes to <out stem>.meta.json).")
@segmenter_options
def segment(memory, images, annotations, image_root, limit, batch_size, out, **kw):
    """Segment images in this process and write COCO results JSON (method.md §4).

    The DINOv2 encoder is the one recorded in the bank. The batch job (`ntt-batch run`)
    scales the same segmenter out over Ray.
    """
    from .workflows import load_segmenter, meta_path_for, resolve_targets, segment_to_coco_results

    config = segmenter_config_from_flags(kw)
    entries = resolve_targets(images, annotations, image_root, limit)
    segmenter, provenance = load_segmenter(memory, sam2_name=kw["sam2_name"], config=config,
                                           checkpoint_dir=kw["checkpoint_dir"], download=not kw["no_download"])
    if not provenance["official_weights"]:
        click.secho("WARNING: running on checkpoints that are NOT the official weights (recorded in the output)", fg="yellow", err=True)
    summary = segment_to_coco_results(segmenter, entries, out, provenance, batch_size=batch_size, progress=_progress("images"))
    click.echo(f"wrote {out} ({summary['instances']} instances on {summary['images_ok']} images, "
               f"{summary['images_empty']} empty, {summary['images_error']} unreadable; "
               f"{summary['images_per_s']} images/s); provenance in {meta_path_for(out)}")


# ----------------------------------------------------------------------------- batch job

_SEGMENTER_FLAGS = ("points_per_side", "points_batch_size", "pred_iou_threshold", "nms_iou_threshold", "max_detections",
                    "add_no_mem_embed", "drop_unmatched_before_nms", "resize_mode", "point_grid", "device", "bf16")


@main.command()
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Job YAML with the same keys as these flags (segmenter settings under 'segmenter:'); flags given on the command line override it.")
@click.option("--images", default=None, help="Input images: fsspec URI of a prefix/folder, a glob, or one file (s3://bucket/prefix/, gs://..., /data/imgs).")
@click.option("--manifest", default=None, help="Parquet/CSV/JSONL listing image URIs (column image_uri, optional image_id).")
@click.option("--annotations", default=None, help="COCO JSON listing the images (ids from it); needs --image-root.")
@click.option("--image-root", default=None, help="URI the COCO file names are relative to.")
@click.option("--memory", default=None, type=click.Path(file_okay=False), help="Memory bank folder.")
@click.option("--out", default=None, help="Output URI for the Parquet shards and run.json (local folder or s3://...).")
@click.option("--endpoint-url", default=None, help="S3-compatible endpoint (MinIO, Ceph, ...).")
@click.option("--anon", is_flag=True, default=None, help="Anonymous object-store access.")
@click.option("--profile", default=None, help="AWS profile for s3:// URIs.")
@click.option("--storage-option", "storage_option", multiple=True, help="Extra fsspec option KEY=VALUE (repeatable).")
@click.option("--num-actors", type=click.IntRange(min=1), default=None, help="Segment actors (one GPU each where GPUs exist). [default: 1]")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Images per actor call. [default: 2]")
@click.option("--max-pixels", type=click.IntRange(min=1), default=None, help="Refuse images with more pixels (decompression bombs). [default: 100M]")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N inputs.")
@click.option("--allow-errors", is_flag=True, default=None, help="Exit 0 even if some images got status error.")
@click.option("--ray-address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local instance).")
@click.option("--dry-run", is_flag=True, help="List what would be processed and exit.")
@segmenter_options
@click.pass_context
def run(ctx, config_file, dry_run, **kw):
    """The batch job: stream images through Ray actors into Parquet/RLE shards (resumable).

    Every input image gets exactly one row (status ok / empty / error + message). Rerunning
    the same command processes only images without a row. Exit code: 0 on success, 1 if some
    images errored (unless --allow-errors), 3 if rows are missing or duplicated.
    """
    from .pipeline.job import JobConfig, run_job

    data: dict = {}
    if config_file:
        import yaml

        with open(config_file) as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise click.ClickException(f"{config_file}: expected a mapping of settings at the top level")
    given = {k for k in kw if ctx.get_parameter_source(k) == click.core.ParameterSource.COMMANDLINE}
    seg = dict(data.pop("segmenter", None) or {})
    for k in given & set(_SEGMENTER_FLAGS):
        seg[k] = kw[k]
    opts = dict(data.pop("storage_options", None) or {})
    for flag, key in (("endpoint_url", "endpoint_url"), ("anon", "anon"), ("profile", "profile")):
        if flag in given:
            opts[key] = kw[flag]
    for item in kw["storage_option"]:
        k, sep, v = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--storage-option")
        opts[k] = yaml_scalar(v)
    if opts.get("endpoint_url"):
        opts.setdefault("client_kwargs", {})["endpoint_url"] = opts.pop("endpoint_url")
    data["storage_options"] = opts
    mapping = {"images": "images", "manifest": "manifest", "annotations": "annotations", "image_root": "image_root",
               "memory": "memory", "out": "out", "num_actors": "num_actors", "batch_size": "batch_size",
               "max_pixels": "max_pixels", "limit": "limit", "allow_errors": "allow_errors", "ray_address": "ray_address",
               "sam2_name": "sam2", "checkpoint_dir": "checkpoint_dir"}
    for flag, key in mapping.items():
        if flag in given or (flag == "checkpoint_dir" and kw[flag] and key not in data):
            data[key] = kw[flag]
    if "no_download" in given:
        data["download"] = not kw["no_download"]
    data["segmenter"] = seg
    cfg = JobConfig.from_dict(data, where=config_file or "flags")
    result = run_job(cfg, dry_run=dry_run, echo=click.echo)
    ctx.exit(result.exit_code)


def yaml_scalar(text: str):
    import yaml

    return yaml.safe_load(text)


# ----------------------------------------------------------------------------- demo


@main.command()
@click.option("--data", type=click.Path(file_okay=False), default=None,
              help="COCO-style data folder (annotations/, train2017/, val2017/). Default: $NTT_SHARED_DATA/coco_mini or ../shared/data/coco_mini.")
@click.option("--out", default="runs/demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--random-weights", is_flag=True, help="Use random-initialised checkpoints (machines without the real weights). Results are meaningless but exercise everything.")
@click.option("--sam2", "sam2_name", default="sam2.1_hiera_tiny", show_default=True, type=click.Choice(SAM2_NAMES))
@click.option("--encoder", default="dinov2_vits14", show_default=True, type=click.Choice(DINOV2_NAMES))
@click.option("--shots", default=1, show_default=True)
@click.option("--limit", default=8, show_default=True, help="Target images.")
@click.option("--points-per-side", default=8, show_default=True, help="8 keeps the CPU demo to seconds per image; the paper uses 32.")
@click.option("--device", default="auto", show_default=True)
@_ckpt_dir_opt
def demo(data, out, random_weights, sam2_name, encoder, shots, limit, points_per_side, device, checkpoint_dir):
    """End to end on a small sample: references -> memory bank -> segment -> COCO eval.

    Defaults are CPU-sized: few-shot split, 1 shot, 8 val images, sam2.1_hiera_tiny + dinov2_vits14.
    """
    from .demo import run_demo

    run_demo(data=data, out=out, random_weights=random_weights, sam2_name=sam2_name, encoder_name=encoder,
             shots=shots, limit=limit, points_per_side=points_per_side, device=device, checkpoint_dir=checkpoint_dir,
             echo=click.echo)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
