"""`ntt-batch demo`: the whole method on a small COCO sample, with embedded defaults."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .method.config import SegmenterConfig
from .models.checkpoints import CheckpointNotFoundError, resolve_checkpoint
from .models.registry import get_spec
from .references.files import save_references
from .references.sampler import sample_references_from_file

# The demo's point grid: 8 x 8 = 64 prompts per image keeps the CPU demo to seconds per image
# (the paper's 32 x 32 = 1024, SegmenterConfig's default, takes minutes on CPU).
CPU_SIZED_POINTS_PER_SIDE = 8


def default_data_dir() -> Path:
    env = os.environ.get("NTT_SHARED_DATA")
    candidates = [Path(env) / "coco_mini"] if env else []
    candidates += [
        Path.cwd().parent / "shared" / "data" / "coco_mini",
        Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_mini",
    ]
    for c in candidates:
        if (c / "annotations").is_dir():
            return c
    raise FileNotFoundError(
        "no sample data found: pass --data DIR (with annotations/, train2017/, val2017/) or set NTT_SHARED_DATA"
    )


def run_demo(
    *,
    data,
    out,
    random_weights,
    sam2_name,
    encoder_name,
    shots,
    limit,
    points_per_side,
    device,
    checkpoint_dir,
    echo: Callable[[str], None] = print,
) -> dict:
    """The demo's four steps on the sample in ``data`` (None: :func:`default_data_dir`), everything written
    under ``out``: references → memory bank → batch job on local Ray → COCO evaluation, then the review
    page and the references' contact sheet. Returns the paths and the job summary and eval report."""
    data = Path(data) if data else default_data_dir()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint_dir = _demo_checkpoints(out, [sam2_name, encoder_name], random_weights, checkpoint_dir, echo)
    ann_val = data / "annotations" / "instances_val2017.json"
    bank_dir = _demo_bank(data, out, shots, encoder_name, checkpoint_dir, device, echo)
    echo(
        f"[demo] 3/4 batch job on local Ray: {limit} val images, {sam2_name}, "
        f"{points_per_side}x{points_per_side} points"
    )
    result, shards, results = _demo_job(
        data, out, bank_dir, sam2_name, checkpoint_dir, limit, points_per_side, device, echo
    )
    echo("[demo] 4/4 COCO evaluation (few-shot classes, the images the job processed)")
    report = _demo_eval(ann_val, shards, out, echo)
    page, sheet = _demo_pages(shards, out, bank_dir, limit, echo)
    if random_weights:
        echo("[demo] NOTE: random weights — the pipeline ran end to end, the AP is meaningless.")
    echo(
        f"[demo] next: open file://{Path(page.index).resolve()} in a browser; then label your own images: make "
        "references (README: 'Custom references'), `ntt-batch memory build`, `ntt-batch run --images YOUR_FOLDER "
        "--memory BANK --out OUT`, and `ntt-batch review --shards OUT --out review/`"
    )
    return {
        "summary": result.summary,
        "report": report,
        "results": str(results),
        "shards": str(shards),
        "review": page.index,
        "references_sheet": str(sheet),
    }


def _demo_checkpoints(out: Path, names: list[str], random_weights: bool, checkpoint_dir, echo) -> str | None:
    """The checkpoint folder to use: random-weight checkpoints written under ``out`` (``random_weights``),
    else ``checkpoint_dir`` once every model in ``names`` is found there (an error lists the missing ones)."""
    if random_weights:
        from .models.loading import write_random_checkpoint  # torch: imported when the demo runs, not for --help

        checkpoint_dir = str(out / "random_checkpoints")
        for n in names:
            if not (Path(checkpoint_dir) / get_spec(n).filename).is_file():
                echo(f"[demo] writing random-weight checkpoint for {n}")
                write_random_checkpoint(n, checkpoint_dir)
        return checkpoint_dir
    missing = []
    for n in names:
        try:
            resolve_checkpoint(n, checkpoint_dir=checkpoint_dir)
        except CheckpointNotFoundError as e:
            missing.append(str(e))
    if missing:
        raise CheckpointNotFoundError("\n".join(missing) + "\nOr rerun the demo with --random-weights.")
    return checkpoint_dir


def _demo_bank(data: Path, out: Path, shots, encoder_name: str, checkpoint_dir, device, echo) -> Path:
    """Steps 1-2: sample the references (few_shot split, seed 33) and build the memory bank in
    ``out/memory_bank`` (reused when built from the same references and encoder weights)."""
    from .bank.build import build_bank_folder

    ann_train = data / "annotations" / "instances_train2017.json"
    refs_path, bank_dir = out / "references.json", out / "memory_bank"
    echo(f"[demo] 1/4 sampling {shots}-shot references (few_shot split, seed 33) from {ann_train}")
    refs = sample_references_from_file(str(ann_train), "few_shot", shots, 33)
    refs["image_root"] = str((data / "train2017").resolve())
    save_references(refs, refs_path)
    bank = _unchanged_bank(bank_dir, refs, encoder_name, checkpoint_dir)
    if bank is not None:
        echo(f"[demo] 2/4 memory bank unchanged (same references, {encoder_name} weights): reusing {bank_dir}")
    else:
        echo(f"[demo] 2/4 building the memory bank with {encoder_name}")
        bank = build_bank_folder(
            str(refs_path),
            None,
            str(bank_dir),
            encoder_name=encoder_name,
            checkpoint_dir=checkpoint_dir,
            device=device,
            overwrite=True,  # the demo's own folder: rebuilt when its references or weights changed
        )
    echo(
        f"[demo]     {len(bank.categories)} classes, {int(bank.instance_labels.numel())} instances, hash "
        f"{bank.content_hash[:16]}"
    )
    return bank_dir


def _demo_job(data: Path, out: Path, bank_dir: Path, sam2_name, checkpoint_dir, limit, points_per_side, device, echo):
    """Step 3: the batch job on the first ``limit`` val images into ``out/shards``, then its COCO results
    in ``out/results.json``. Returns (the job's result, the shards folder, the results file)."""
    from .exports import merge_results
    from .pipeline.config import JobConfig
    from .pipeline.job import run_job

    shards, results = out / "shards", out / "results.json"
    job = JobConfig(
        memory=str(bank_dir),
        out=str(shards),
        annotations=str(data / "annotations" / "instances_val2017.json"),
        image_root=str(data / "val2017"),
        sam2=sam2_name,
        checkpoint_dir=checkpoint_dir,
        limit=limit,
        batch_size=2,
        segmenter=SegmenterConfig(points_per_side=points_per_side, device=device),
    )
    result = run_job(job, echo=lambda line: echo(f"[demo]     {line}"))
    merged = merge_results(str(shards), str(results))
    echo(f"[demo]     shards in {shards}; {merged.instances_written} instances as COCO results -> {results}")
    return result, shards, results


def _demo_eval(ann_val: Path, shards: Path, out: Path, echo) -> dict:
    """Step 4: COCO evaluation on the few-shot classes of the images the job processed (``out/eval_report.json``)."""
    from .eval.coco_eval import evaluate_coco, write_report

    report = evaluate_coco(str(ann_val), str(shards), split="few_shot", restrict_to_processed=True)
    write_report(report, str(out / "eval_report.json"))
    for t in ("bbox", "segm"):
        echo(f"[demo] {t}: AP {report[t]['stats']['AP']:.4f}  AP50 {report[t]['stats']['AP50']:.4f}")
    echo(
        f"[demo]     full report (12-number summaries, per-class AP): {out / 'eval_report.json'}; the same from the "
        f"command line: ntt-batch eval --annotations {ann_val} --results {shards} --split few_shot "
        "--restrict-to-processed"
    )
    return report


def _demo_pages(shards: Path, out: Path, bank_dir: Path, limit, echo):
    """The review page (``out/review``) and the references' contact sheet (``out/references.png``)."""
    from .bank.build import load_reference_sets
    from .references.files import REFERENCES_FILE
    from .viz.contact_sheet import bank_box_masks, reference_sheet
    from .viz.review import write_review

    review_dir, sheet = out / "review", out / "references.png"
    page = write_review(str(shards), str(review_dir), limit=max(1, int(limit)), title=f"ntt-batch demo: {shards}")
    drawn = reference_sheet(
        load_reference_sets(str(bank_dir / REFERENCES_FILE))[0], str(sheet), box_masks=bank_box_masks(bank_dir)
    )
    echo(
        f"[demo] review page: {page.index} ({page.images} images, {page.instances} instances; class filter, "
        "score slider, per-class counts)"
    )
    echo(f"[demo] references as the bank saw them: {sheet} ({drawn.references} references)")
    return page, sheet


def _unchanged_bank(bank_dir: Path, refs: dict, encoder_name: str, checkpoint_dir):
    """The bank already in ``bank_dir`` when it was built from these references with these encoder weights, else None.

    Makes a repeated demo fast: the job resumes (nothing left to do) and the bank is not rebuilt.
    """
    from .method.memory_bank import MemoryBank
    from .references.files import REFERENCES_FILE, load_references

    try:
        bank = MemoryBank.load(bank_dir)
        saved = load_references(bank_dir / REFERENCES_FILE)
        ckpt = resolve_checkpoint(encoder_name, checkpoint_dir=checkpoint_dir, download=False)
    except (OSError, ValueError, CheckpointNotFoundError):
        return None
    same = (
        bank.encoder.get("name") == encoder_name
        and bank.encoder.get("checkpoint_sha256") == ckpt.sha256
        and saved["categories"] == refs["categories"]
        and saved["references"] == refs["references"]
        and saved.get("image_root") == refs.get("image_root")
    )
    return bank if same else None
