"""The Python API: references → memory bank → segmenter → instances, and the batch job.

Everything here is exported from :mod:`ntt_batch` (imported lazily: ``import ntt_batch`` loads
neither torch nor Ray; the first use of a name does)::

    import ntt_batch

    refs = ntt_batch.references_from_csv("refs.csv", image_root="photos/")   # or sample / from COCO
    ntt_batch.save_references(refs, "refs.json")
    ntt_batch.build_bank("refs.json", "bank/", encoder="dinov2_vitl14", sam2="sam2_hiera_large")

    seg = ntt_batch.load_segmenter("bank/", sam2="sam2_hiera_large")
    for inst in seg("photo.jpg"):                       # a path/URI, a PIL image or an RGB array
        print(inst.category_name, inst.score, inst.bbox, inst.mask.shape)

    summary = ntt_batch.run(images="photos/", memory="bank/", out="out/")   # the Ray batch job

The instances are :class:`ntt_batch.Instance` (``mask`` bool [H, W] at the image's size,
``bbox`` COCO [x, y, w, h] px, ``score``, ``category_id``, ``category_name``), the same objects
the batch job encodes into its shards.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np

from ._public import PUBLIC_NAMES
from .references.files import load_references, save_references  # noqa: F401 (re-exported)
from .references.importers import references_from_coco_annotations, references_from_csv  # noqa: F401 (re-exported)

__all__ = list(PUBLIC_NAMES)

ImageLike = Union[str, os.PathLike, bytes, np.ndarray, "PIL.Image.Image"]  # noqa: F821


def __getattr__(name: str):
    if name == "Instance":  # the one public instance type: the segmenter's (re-exported, torch on first use)
        from .method.segmenter import Instance

        return Instance
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ----------------------------------------------------------------------------- references


def sample_references(
    annotations: str | os.PathLike | Mapping,
    *,
    shots: int,
    split: str | Sequence[str | int] = "few_shot",
    seed: int = 33,
    image_root: str | os.PathLike | None = None,
    allow_fewer: bool = False,
    min_box_side: float = 32,
    border_margin: float = 10,
) -> dict:
    """K references per class sampled from a COCO file (path or dict) exactly as the paper's code does.

    ``split``: ``few_shot`` (the 20 COCO-FSOD classes), ``all``, or class names/ids (``"person,dog"``).
    ``image_root`` (the folder the file's images are in) is remembered in the result.
    """
    from .references.sampler import sample_references as _sample
    from .references.sampler import sample_references_from_file

    kw = dict(allow_fewer=allow_fewer, min_box_side=min_box_side, border_margin=border_margin)
    if isinstance(annotations, Mapping):
        refs = _sample(annotations, split, shots, seed, **kw)
    else:
        refs = sample_references_from_file(os.fspath(annotations), split, shots, seed, **kw)
    return _with_root(refs, image_root)


def references_from_coco(
    annotations: str | os.PathLike | Mapping,
    *,
    split: str | Sequence[str | int] = "all",
    max_per_class: int | None = None,
    image_root: str | os.PathLike | None = None,
) -> dict:
    """Every non-crowd annotation of your COCO file (path or dict) as a reference (polygons, RLE or boxes).

    ``image_root`` (the folder its ``file_name`` values are relative to) is remembered in the result.
    """
    from .references.coco import load_coco

    coco = load_coco(annotations) if not isinstance(annotations, Mapping) else annotations
    refs = references_from_coco_annotations(coco, split=split, max_per_class=max_per_class)
    if not isinstance(annotations, Mapping):
        refs.setdefault("source", {})["annotations"] = str(annotations)
    return _with_root(refs, image_root)


def _with_root(refs: dict, image_root) -> dict:
    if image_root is not None:
        root = os.fspath(image_root)
        refs["image_root"] = root if "://" in root else os.path.abspath(root)
    return refs


def build_bank(
    references: str | os.PathLike | Mapping | Sequence[str | os.PathLike | Mapping],
    out: str | os.PathLike,
    *,
    image_root: str | os.PathLike | None = None,
    encoder: str | None = None,
    sam2: str | None = None,
    context_ratio: float = 0.2,
    device: str = "auto",
    checkpoint_dir: str | os.PathLike | None = None,
    download: bool = True,
    notice: Callable[[str], None] | None = None,
    overwrite: bool = False,
    negatives: str | os.PathLike | Mapping | Sequence[str | os.PathLike | Mapping] | None = None,
):
    """Build a memory bank in folder ``out`` from references (a file, a dict, or several: merged by class name).

    Args:
        references: references JSON path(s) or dict(s) (``sample_references``, ``references_from_csv``, ...).
        out: the bank folder (``memory_bank.safetensors`` + ``.json`` + ``references.json``).
        image_root: where the reference images are; default: the root the references remember.
        encoder: DINOv2 model (default ``dinov2_vitl14``, the paper's).
        sam2: SAM2 model that makes masks for box-only references (needed only if there are some).
        notice: called with each merge notice (renumbered class ids).
        overwrite: replace a bank already in ``out`` (default: refused with a ValueError).
        negatives: negative references, in the same formats as ``references`` (docs/negative_references.md):
            encoded into the bank's negative memory, used by segmenters with ``use_negatives=True``.

    Returns:
        the :class:`ntt_batch.method.memory_bank.MemoryBank`.
    """
    from .bank.build import build_bank_folder as _build
    from .method.config import MemoryConfig
    from .models.registry import DEFAULT_ENCODER

    return _build(
        references,
        image_root,
        os.fspath(out),
        encoder_name=encoder or DEFAULT_ENCODER,
        checkpoint_dir=_opt_path(checkpoint_dir),
        download=download,
        device=device,
        sam2_name=sam2,
        config=MemoryConfig(context_ratio=context_ratio),
        notice=notice,
        overwrite=overwrite,
        negatives=negatives,
    )


def mine_negatives(
    bank: str | os.PathLike,
    *,
    sam2: str | None = None,
    device: str = "auto",
    checkpoint_dir: str | os.PathLike | None = None,
    download: bool = True,
    score_threshold: float = 0.2,
    max_per_class: int | None = 10,
    iou_threshold: float = 0.1,
    annotations: str | os.PathLike | None = None,
    references_only: bool = False,
    notice: Callable[[str], None] | None = None,
    **settings: Any,
) -> dict:
    """Mine negative references from the bank's own reference images and add them to the bank (in place).

    The reference images are segmented with the bank; detections that are not annotated instances of
    their class (box IoU < ``iou_threshold``) scoring at least ``score_threshold`` become negative
    references of that class, at most ``max_per_class`` (the highest) each (docs/negative_references.md).
    Segmenters loaded with ``use_negatives=True`` then use them.

    Args:
        bank: the bank folder (built by :func:`build_bank`: it holds the references).
        sam2: SAM2 proposer for that segmentation (default ``sam2_hiera_large``).
        annotations: a COCO file whose annotations of the reference images count as annotated too
            (default: the file the references were sampled from, if it is there, unless ``references_only``).
        **settings: :class:`ntt_batch.method.config.SegmenterConfig` fields for the segmentation.
    Returns:
        ``{"bank": MemoryBank, "mined": [records], "per_class", "stats", "annotations", ...}``.
    """
    from .bank.mining import mine_negatives as _mine
    from .method.config import SegmenterConfig, config_from_dict
    from .models.registry import DEFAULT_SAM2

    config = config_from_dict(SegmenterConfig, {**settings, "device": device}, "mine_negatives")
    return _mine(
        os.fspath(bank),
        sam2_name=sam2 or DEFAULT_SAM2,
        config=config,
        checkpoint_dir=_opt_path(checkpoint_dir),
        download=download,
        score_threshold=score_threshold,
        iou_threshold=iou_threshold,
        max_per_class=max_per_class,
        annotations=None if annotations is None else os.fspath(annotations),
        use_source_annotations=not references_only,
        notice=notice,
    )


def load_bank(path: str | os.PathLike):
    """Load a memory bank folder (checks its content hash)."""
    from .method.memory_bank import MemoryBank

    return MemoryBank.load(path)


def show_references(
    references: str | os.PathLike | Mapping | Sequence[str | os.PathLike | Mapping] | None,
    out: str | os.PathLike,
    *,
    memory: str | os.PathLike | None = None,
    image_root: str | os.PathLike | None = None,
    sam2: str | None = None,
    cell: int = 224,
    columns: int = 8,
    checkpoint_dir: str | os.PathLike | None = None,
    download: bool = True,
):
    """Draw references as a contact sheet image (``ntt-batch references show``); returns its summary.

    ``references=None`` uses the ``references.json`` saved in ``memory``. With ``memory``, the SAM2
    masks the bank made for box-only references are drawn; ``sam2`` makes them now instead.
    """
    import json

    from .bank.build import load_reference_sets
    from .references.files import REFERENCES_FILE
    from .viz.contact_sheet import bank_box_masks, reference_sheet

    if references is None:
        if memory is None:
            raise ValueError("give references, or memory= a bank folder holding a references.json")
        references = os.path.join(os.fspath(memory), REFERENCES_FILE)
    refs, _ = load_reference_sets(references, image_root)
    masks, ratio = {}, 0.2
    if memory is not None:
        masks = bank_box_masks(memory)
        meta = json.loads(Path(memory, "memory_bank.json").read_text())
        ratio = float(meta.get("config", {}).get("context_ratio", 0.2))
    return reference_sheet(
        refs,
        out,
        box_masks=masks,
        sam2_name=sam2,
        checkpoint_dir=_opt_path(checkpoint_dir),
        download=download,
        context_ratio=ratio,
        cell=cell,
        columns=columns,
    )


# ----------------------------------------------------------------------------- segmenting


def to_rgb_array(image: ImageLike, *, storage_options: dict | None = None) -> np.ndarray:
    """Any supported image → RGB uint8 [H, W, 3], decoded exactly like the batch job decodes files.

    * a path or fsspec URI (``s3://…``), or encoded ``bytes``: EXIF orientation applied, greyscale /
      palette / alpha (onto white) / CMYK / 16-bit converted to RGB;
    * a PIL image: the same conversions (EXIF orientation too, as a viewer shows it);
    * a numpy array: uint8 [H, W, 3] RGB as is; [H, W] or [H, W, 1] greyscale and [H, W, 4] RGBA
      (alpha dropped) are converted. Other dtypes are refused: convert to uint8 0-255 first.
    """
    from .storage.images import decode_image

    if isinstance(image, (str, os.PathLike)):
        from .storage.fs import read_bytes

        uri = os.fspath(image)
        if "://" not in uri and not os.path.isfile(uri):
            raise FileNotFoundError(f"no image file at {uri!r}")
        return decode_image(read_bytes(uri, storage_options))
    if isinstance(image, (bytes, bytearray, memoryview)):
        return decode_image(bytes(image))
    if isinstance(image, np.ndarray):
        a = image
        if a.dtype != np.uint8:
            raise ValueError(
                f"image array has dtype {a.dtype}; give RGB uint8 [H, W, 3] (values 0-255), e.g. "
                "(x * 255).round().astype(np.uint8) for floats in [0, 1]"
            )
        if a.ndim == 3 and a.shape[2] == 1:
            a = a[:, :, 0]
        if a.ndim == 2:
            a = np.repeat(a[:, :, None], 3, axis=2)
        elif a.ndim == 3 and a.shape[2] == 4:
            a = a[:, :, :3]
        if a.ndim != 3 or a.shape[2] != 3 or a.shape[0] < 1 or a.shape[1] < 1:
            raise ValueError(f"image array has shape {image.shape}; expected [H, W, 3] RGB (or [H, W] / [H, W, 4])")
        return np.ascontiguousarray(a)
    try:
        from PIL import Image, ImageOps
    except ImportError:  # pragma: no cover - PIL is a dependency
        Image = None
    if Image is not None and isinstance(image, Image.Image):
        from .storage.images import to_rgb

        return np.asarray(to_rgb(ImageOps.exif_transpose(image)), dtype=np.uint8)
    raise TypeError(
        f"cannot segment a {type(image).__name__}: give a file path or URI, encoded bytes, a PIL image "
        "or an RGB uint8 numpy array"
    )


class Segmenter:
    """A loaded segmenter (bank + SAM2 + DINOv2): call it on images, get :class:`ntt_batch.Instance` lists.

    Made by :func:`load_segmenter`. ``seg(image)`` → instances of one image, sorted by score;
    ``seg.segment_many(images)`` → one list per image (batched through the models). The same
    method as the batch job: a test checks both give the same instances.

    Attributes:
        model: the underlying :class:`ntt_batch.method.segmenter.MethodSegmenter`.
        bank: the memory bank; ``categories`` its classes ``[{"id", "name"}]``.
        provenance: model names, checkpoint sha256s, config, bank hash (what `segment` records).
    """

    def __init__(
        self, model, provenance: dict, *, score_threshold: float | None = None, storage_options: dict | None = None
    ):
        self.model = model
        self.provenance = provenance
        self.score_threshold = score_threshold
        self.storage_options = storage_options

    @property
    def bank(self):
        return self.model.bank

    @property
    def categories(self) -> list[dict]:
        return [dict(c) for c in self.model.bank.categories]

    @property
    def config(self):
        return self.model.config

    @property
    def device(self):
        return self.model.device

    def __call__(self, image: ImageLike) -> list:
        return self.segment(image)

    def segment(self, image: ImageLike) -> list:
        """Instances of one image (path/URI, bytes, PIL image or RGB array), highest score first."""
        return self.segment_many([image])[0]

    def segment_many(self, images: Iterable[ImageLike], *, batch_size: int = 4) -> list[list]:
        """Instances per image, in order; images go through the models ``batch_size`` at a time."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        out: list[list] = []
        chunk: list[np.ndarray] = []
        for im in images:
            chunk.append(to_rgb_array(im, storage_options=self.storage_options))
            if len(chunk) >= batch_size:
                out.extend(self._run(chunk))
                chunk = []
        if chunk:
            out.extend(self._run(chunk))
        return out

    def _run(self, arrays: list[np.ndarray]) -> list[list]:
        results = self.model.segment_images(arrays)
        t = self.score_threshold
        return [r if t is None else [i for i in r if i.score >= t] for r in results]

    def __repr__(self) -> str:
        names = ", ".join(c["name"] for c in self.model.bank.categories[:6])
        more = "" if len(self.model.bank.categories) <= 6 else f", … ({len(self.model.bank.categories)} classes)"
        sam = self.provenance.get("models", {}).get("sam2", {}).get("name", "?")
        return (
            f"<ntt_batch.Segmenter {sam} + {self.model.bank.encoder.get('name')} on {self.model.device}: {names}{more}>"
        )


def load_segmenter(
    memory: str | os.PathLike,
    *,
    sam2: str | None = None,
    device: str = "auto",
    checkpoint_dir: str | os.PathLike | None = None,
    download: bool = True,
    score_threshold: float | None = None,
    storage_options: dict | None = None,
    **settings: Any,
) -> Segmenter:
    """Load a memory bank and the models into a :class:`Segmenter`.

    Args:
        memory: the bank folder (:func:`build_bank`, ``ntt-batch memory build``).
        sam2: SAM2 proposer (default ``sam2_hiera_large``, the paper's); the DINOv2 encoder is
            the one the bank was built with.
        device: ``auto`` (CUDA if present), ``cpu``, ``cuda``, ``cuda:N``.
        score_threshold: drop instances scoring below this (default: keep all, like the job).
        storage_options: fsspec options for image URIs (``s3://…``).
        **settings: any :class:`ntt_batch.method.config.SegmenterConfig` field, e.g.
            ``points_per_side=16``, ``max_detections=50``, ``pred_iou_threshold=0.5``, ``bf16=True``.
    """
    from .bank.load import segmenter_from_bank as _load
    from .method.config import SegmenterConfig, config_from_dict
    from .models.registry import DEFAULT_SAM2

    config = config_from_dict(SegmenterConfig, {**settings, "device": device}, "load_segmenter")
    model, provenance = _load(
        os.fspath(memory),
        sam2_name=sam2 or DEFAULT_SAM2,
        config=config,
        checkpoint_dir=_opt_path(checkpoint_dir),
        download=download,
    )
    return Segmenter(model, provenance, score_threshold=score_threshold, storage_options=storage_options)


# ----------------------------------------------------------------------------- the batch job and after


def run(
    config: str | os.PathLike | Mapping | Any | None = None,
    *,
    dry_run: bool = False,
    echo: Callable[[str], None] | None = print,
    verbose: bool = False,
    **settings: Any,
) -> dict:
    """Run the batch job (``ntt-batch run``) from Python and return its summary.

    Args:
        config: a job YAML file, a dict of job settings, a ``JobConfig``, or None.
        **settings: job settings (the keys of a job file: ``images``/``manifest``/``annotations``
            + ``image_root``, ``memory``, ``out``, ``sam2``, ``num_actors``, ``batch_size``, ``limit``,
            ``storage_options``, ``references``, ...); they override ``config``'s. ``segmenter`` is a
            dict of segmenter settings (``{"points_per_side": 16}``), merged into the file's.
        dry_run: list what would be processed, run nothing.
        echo: where progress lines go (None: silent).
        verbose: Ray's own start-up banner, INFO logging, worker logs and progress bars (default off,
            as in ``ntt-batch run`` without ``--verbose``; errors still surface).

    Returns:
        the summary dict (``rows``, ``ok``, ``empty``, ``error``, ``instances``, ``missing``, ...),
        plus ``exit_code``: what ``ntt-batch run`` would exit with (0 success, 1 some images
        errored without ``allow_errors``, 3 rows missing or duplicated). Rerunning resumes.
    """
    from .pipeline.config import JobConfig
    from .pipeline.job import run_job
    from .pipeline.job_files import job_config_from

    if isinstance(config, JobConfig):
        if settings:
            raise ValueError("give settings either in the JobConfig or as keywords, not both")
        cfg = config
    elif config is None or isinstance(config, (str, os.PathLike, Mapping)):
        overrides = {k: (os.fspath(v) if isinstance(v, os.PathLike) else v) for k, v in settings.items()}
        cfg = job_config_from(config, overrides, where="run()")
    else:
        raise TypeError(f"config must be a job file path, a dict or a JobConfig, not {type(config).__name__}")
    result = run_job(cfg, dry_run=dry_run, echo=echo or (lambda _line: None), verbose=verbose)
    summary = dict(result.summary or {})
    summary["exit_code"] = result.exit_code
    return summary


def review(shards: str | os.PathLike, out: str | os.PathLike, **kwargs: Any):
    """Write the static review page of a run's shards (``ntt-batch review``); returns its summary.

    Keyword arguments as :func:`ntt_batch.viz.review.write_review` (``images_root``,
    ``thresholds``, ``limit``, ...). Open ``<out>/index.html`` in a browser.
    """
    from .viz.review import write_review

    return write_review(os.fspath(shards), os.fspath(out), **kwargs)


def evaluate(annotations: str | Mapping, results: str | list, **kwargs: Any) -> dict:
    """COCO evaluation (``ntt-batch eval``): ground truth vs a results JSON, shards or a list; the report dict."""
    from .eval.coco_eval import evaluate_coco

    return evaluate_coco(annotations, results, **kwargs)


def _opt_path(p) -> str | None:
    return None if p is None else os.fspath(p)
