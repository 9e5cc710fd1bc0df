"""The `references:` block of a job: build the memory bank on the cluster when it does not exist yet.

A job file can name the references instead of a ready bank, so one command runs the whole job::

    memory: ~/ntt-banks/coco-fsod-10shot      # where the bank is cached (driver's local disk)
    references:                                # used only while that folder holds no bank
      annotations: s3://bucket/coco/annotations/instances_train2017.json
      image_root: s3://bucket/coco/train2017/
      split: few_shot
      shots: 10
      seed: 33
      encoder: dinov2_vitl14

The driver checks ``memory``; if it holds no bank, one Ray task (one GPU where the cluster has
GPUs) samples the references exactly like ``ntt-batch references sample`` (or reads a ready
references file), copies just the reference images it needs from ``image_root`` to its local
disk, and runs the same builder as ``ntt-batch memory build``; the driver then saves the bank
(plus ``references.json``) into ``memory`` and the run goes on as usual. A later run finds the
bank and reuses it, after checking that it was built with the same settings.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..method.config import ConfigError, MemoryConfig
from ..models.encoders import encoder_family
from ..models.registry import DEFAULT_ENCODER, get_spec
from ..references.files import REFERENCES_FILE, save_references, validate_references
from ..references.sampler import sample_references
from ..storage.fs import absolute_uri, filesystem, is_local, read_bytes
from ..storage.names import safe_join
from .cluster import init_ray

BANK_META_FILE = "memory_bank.json"  # the file whose presence makes a folder a bank (method.memory_bank.META_FILE)


@dataclass
class ReferencesSpec:
    """How to build the job's memory bank (``references:`` in a job file); used only when ``memory`` holds no bank."""

    image_root: str = ""  # URI the reference images' file names are relative to (local path, s3://...)
    annotations: str | None = None  # COCO JSON to sample K shots per class from (as `references sample`)
    file: str | None = None  # or a ready references JSON (`references sample` / `from-coco` / `from-csv`)
    split: str = "few_shot"  # with annotations: 'few_shot' (20 COCO-FSOD classes), 'all', or class names/ids
    shots: int | None = None  # with annotations: K references per class (required)
    seed: int = 33  # with annotations: sampler seed (the paper's headline run uses 33)
    allow_fewer_shots: bool = False  # with annotations: keep classes with fewer than K valid references
    min_box_side: int = 32  # with annotations: minimum reference box side (px)
    border_margin: int = 10  # with annotations: minimum box distance from the borders (px)
    encoder: str = DEFAULT_ENCODER  # DINOv2 model the prototypes are computed with
    sam2: str | None = None  # SAM2 model that makes masks for box-only references
    context_ratio: float = 0.2  # reference crop side = (1 + ratio) x max(box w, h)

    def validate(self) -> ReferencesSpec:
        from ..method.config import check_config_types

        where = "references"
        check_config_types(self, path=where)  # every field's type, strictly (a job file's references: block)
        if not self.image_root:
            raise ConfigError(
                f"{where}.image_root: required (the URI the reference images' file names are relative to)"
            )
        if bool(self.annotations) == bool(self.file):
            raise ConfigError(
                f"{where}: give exactly one of annotations (a COCO file to sample `shots` per class from) "
                f"or file (a ready references JSON); got {'both' if self.annotations else 'neither'}"
            )
        if self.annotations:
            if self.shots is None:
                raise ConfigError(
                    f"{where}.shots: required with {where}.annotations (references per class, e.g. 1, 10 or 30)"
                )
            if not isinstance(self.shots, int) or self.shots < 1:
                raise ConfigError(f"{where}.shots: must be an integer >= 1, got {self.shots!r}")
        elif self.shots is not None:
            raise ConfigError(
                f"{where}.shots: only applies when sampling from {where}.annotations; {where}.file is used as it is"
            )
        if not isinstance(self.split, str) or not self.split.strip():
            raise ConfigError(
                f"{where}.split: must be 'few_shot', 'all' or comma-separated class names/ids, got {self.split!r}"
            )
        for name in ("seed", "min_box_side", "border_margin"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ConfigError(f"{where}.{name}: must be an integer >= 0, got {getattr(self, name)!r}")
        if not isinstance(self.context_ratio, (int, float)) or self.context_ratio < 0:
            raise ConfigError(f"{where}.context_ratio: must be a number >= 0, got {self.context_ratio!r}")
        try:
            encoder_family(self.encoder)  # any ENCODERS family, plug-ins included
            if self.sam2:
                get_spec(self.sam2, "sam2")
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
        for name in ("image_root", "annotations", "file"):
            setattr(self, name, absolute_uri(getattr(self, name)))
        return self


def bank_exists(memory: str) -> bool:
    return (Path(memory) / BANK_META_FILE).is_file()


def memory_folder_problem(memory: str) -> str | None:
    """Why ``memory`` cannot hold a bank built by the job (None if it can)."""
    if not is_local(memory):
        return (
            f"memory: {memory} must be a local folder on the machine that runs the driver "
            "(the bank is small; the driver broadcasts it to the workers)"
        )
    path = Path(memory)
    if path.exists() and not path.is_dir():
        return f"memory: {memory} is a file, not a folder for the memory bank"
    if path.is_dir() and any(path.iterdir()) and not bank_exists(memory):
        return (
            f"memory: {memory} is a non-empty folder without a memory bank ({BANK_META_FILE} missing); "
            "empty it or point memory: at a new folder, and the run builds the bank there"
        )
    return None


def bank_mismatches(spec: ReferencesSpec, bank_meta: dict) -> list[str]:
    """Settings of ``spec`` that an existing bank (its ``memory_bank.json``) was not built with."""
    problems = []
    encoder = (bank_meta.get("encoder") or {}).get("name")
    if encoder != spec.encoder:
        problems.append(f"encoder={encoder!r} (references: asks for {spec.encoder!r})")
    if encoder == spec.encoder:
        problems += _memory_config_mismatches(spec, bank_meta.get("config") or {})
    source = (bank_meta.get("references") or {}).get("source") or {}
    if spec.annotations and source.get("kind") == "coco-sample":
        for key, want in (
            ("split", spec.split),
            ("shots", spec.shots),
            ("seed", spec.seed),
            ("allow_fewer_shots", spec.allow_fewer_shots),
            ("min_box_side", spec.min_box_side),
            ("border_margin", spec.border_margin),
        ):
            have = source.get(key)
            if have is not None and have != want:
                problems.append(f"{key}={have!r} (references: asks for {want!r})")
    elif spec.annotations and source.get("kind") not in (None, "coco-sample"):
        problems.append(f"references of kind {source.get('kind')!r}, not sampled from a COCO file")
    return problems


def bank_memory_config(spec: ReferencesSpec) -> MemoryConfig:
    """The reference-encoding settings a job's bank is built with (``build_bank_task``), unresolved."""
    return MemoryConfig(context_ratio=float(spec.context_ratio))


def _memory_config_mismatches(spec: ReferencesSpec, recorded: dict) -> list[str]:
    """Settings of the bank's recorded ``config`` that differ from what ``spec`` would build, compared
    resolved for the encoder (``crop_size: null`` is the encoder's native side, e.g. 518 for DINOv2).
    A setting the bank does not record (it predates it) is not a difference."""
    fam = encoder_family(spec.encoder)
    want = bank_memory_config(spec).for_encoder(fam.patch_size, fam.native_image_size)
    unresolved = MemoryConfig()
    problems = []
    for f in fields(MemoryConfig):
        if f.name not in recorded:
            continue
        have, wanted = recorded[f.name], getattr(want, f.name)
        if have is None and getattr(unresolved, f.name) is None:  # recorded unresolved: the encoder's default
            have = getattr(MemoryConfig().for_encoder(fam.patch_size, fam.native_image_size), f.name)
        same = (
            abs(float(have) - float(wanted)) <= 1e-9
            if isinstance(wanted, float) and isinstance(have, (int, float))
            else have == wanted
        )
        if not same:
            problems.append(f"{f.name}={have!r} (references: asks for {wanted!r})")
    return problems


def read_bank_meta(memory: str) -> dict:
    return json.loads((Path(memory) / BANK_META_FILE).read_text())


def prepare_memory_bank(
    cfg, *, dry_run: bool = False, echo: Callable[[str], None] = print, verbose: bool = True
) -> dict | None:
    """Make sure ``cfg.memory`` holds a bank: build it from ``cfg.references`` if it does not.
    ``verbose``: Ray's own output, as for the job (see ``cluster.init_ray``).

    Returns a record of the build (for run.json), or None when nothing was built.

    Raises:
        ConfigError: the folder holds a bank built with other settings than ``references:`` asks for.
    """
    spec: ReferencesSpec | None = getattr(cfg, "references", None)
    if spec is None:
        return None  # MemoryBank.load reports a missing bank with the commands that build one
    problem = memory_folder_problem(cfg.memory)
    if problem:
        raise ConfigError(problem)
    if bank_exists(cfg.memory):
        problems = bank_mismatches(spec, read_bank_meta(cfg.memory))
        if problems:
            raise ConfigError(
                f"memory: the bank in {cfg.memory} was built with {', '.join(problems)}. Point memory: at another "
                "folder (one bank per reference setting) or delete this one to rebuild it"
            )
        echo(f"memory bank: {cfg.memory} (exists; built with the same reference settings)")
        return None
    source = spec.annotations or spec.file
    how = (
        f"sampling {spec.shots} shot(s) per class of split {spec.split!r} with seed {spec.seed} from {source}"
        if spec.annotations
        else f"the references in {source}"
    )
    if dry_run:
        echo(
            f"memory bank: {cfg.memory} does not exist; the run would build it first from {how} "
            f"(images under {spec.image_root}, encoder {spec.encoder})"
        )
        return None

    import ray

    init_ray(cfg.ray_address, verbose=verbose)
    gpus = ray.cluster_resources().get("GPU", 0)
    num_cpus = max(1.0, float(getattr(cfg, "actor_num_cpus", 1.0)))
    echo(
        f"memory bank: {cfg.memory} does not exist; building it from {how} "
        f"(images under {spec.image_root}, encoder {spec.encoder}, {'1 GPU' if gpus >= 1 else 'CPU'})"
    )
    t0 = time.perf_counter()
    task = ray.remote(num_gpus=1 if gpus >= 1 else 0, num_cpus=num_cpus, max_retries=2)(build_bank_task)
    bank, refs, info = ray.get(
        task.remote(
            asdict(spec),
            storage_options=cfg.storage_options,
            checkpoint_dir=cfg.checkpoint_dir,
            download=cfg.download,
            num_threads=int(num_cpus),
        )
    )
    _save_bank(bank, refs, cfg.memory)
    seconds = round(time.perf_counter() - t0, 3)
    echo(
        f"memory bank: built {cfg.memory} in {seconds} s: {len(bank.categories)} classes, "
        f"{int(bank.instance_labels.numel())} references, hash {bank.content_hash[:16]}"
    )
    return {
        "path": cfg.memory,
        "references": asdict(spec),
        "seconds": seconds,
        "content_hash": bank.content_hash,
        "classes": len(bank.categories),
        "instances": int(bank.instance_labels.numel()),
        **info,
    }


def _save_bank(bank, refs: dict, memory: str) -> None:
    """Save into a temporary sibling folder, then rename it into place.

    A concurrent build loses the race harmlessly."""
    target = Path(memory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        bank.save(tmp)
        save_references(refs, tmp / REFERENCES_FILE)
        if target.exists() and not any(target.iterdir()):
            target.rmdir()  # an empty folder made beforehand counts as "no bank"
        try:
            os.rename(tmp, target)
        except OSError:
            if not bank_exists(memory):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_bank_task(
    spec: dict, *, storage_options: dict, checkpoint_dir: str | None, download: bool, num_threads: int = 1
):
    """Ray task: references (sampled or read) → reference images staged locally → ``bank.build.build_bank_folder``.

    Returns (MemoryBank, references dict, info about where it ran).
    """
    import torch

    from ..bank.build import build_bank_folder  # torch and the models: only inside the Ray task

    spec = ReferencesSpec(**spec)
    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, num_threads))
    work = Path(tempfile.mkdtemp(prefix="ntt-bank-"))
    try:
        if spec.annotations:
            data = read_bytes(spec.annotations, storage_options)
            import hashlib

            refs = sample_references(
                json.loads(data),
                spec.split,
                spec.shots,
                spec.seed,
                min_box_side=spec.min_box_side,
                border_margin=spec.border_margin,
                allow_fewer=spec.allow_fewer_shots,
                annotations_path=spec.annotations,
                annotations_sha256=hashlib.sha256(data).hexdigest(),
            )
            del data
        else:
            refs = validate_references(json.loads(read_bytes(spec.file, storage_options)), where=spec.file)
        refs_path = work / REFERENCES_FILE
        save_references(refs, refs_path)
        image_root = _stage_reference_images(refs, spec.image_root, storage_options, work / "images")
        t0 = time.perf_counter()
        step = max(1, len(refs["references"]) // 10)

        def progress(n: int, total: int) -> None:
            if n == total or n % step == 0:
                print(f"memory bank: encoded {n}/{total} references", flush=True)

        bank = build_bank_folder(
            str(refs_path),
            image_root,
            str(work / "bank"),
            encoder_name=spec.encoder,
            checkpoint_dir=checkpoint_dir,
            download=download,
            device="auto",
            sam2_name=spec.sam2,
            config=bank_memory_config(spec),
            progress=progress,
        )
        info = {
            "node": platform.node(),
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "encode_seconds": round(time.perf_counter() - t0, 3),
        }
        return bank, refs, info
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _stage_reference_images(refs: dict, image_root: str, storage_options: dict, dest: Path) -> str:
    """A local folder holding the reference images: ``image_root`` itself when local, else a copy of
    just those files."""
    fs, root = filesystem(image_root, storage_options)
    if is_local(fs):
        return root
    names = sorted({r["file_name"] for r in refs["references"]})
    base = image_root.rstrip("/")

    def fetch(name: str) -> None:
        target = safe_join(dest, name)  # refuses absolute names and '..'
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(read_bytes(f"{base}/{safe_join('', name).as_posix()}", storage_options))

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(fetch, names))
    print(f"memory bank: copied {len(names)} reference images from {image_root}", flush=True)
    return str(dest)
