"""Method configuration as plain data. Every constant of the reference is a field with its default.

Field docs cite method.md (§ numbers). Validation errors name the field, so a bad value from a
CLI flag or a YAML file points straight at what to fix.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .mergers import MERGERS


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""


def setting(default: Any, help: str, *, flag: bool = False, **cli: Any) -> Any:
    """A settings field: its default and its help text (method.md § citations), declared once.

    The help text lives in the field's metadata (``dataclasses.fields(cls)[i].metadata["help"]``);
    ``flag=True`` makes the field a command-line flag (``--points-per-side`` for
    ``points_per_side``) of the commands that take these settings: ``ntt_batch.cli.settings_options``
    generates the click option from the annotation, this default and this help.

    Args:
        cli: extra hints for the generated flag: ``min`` (a lower bound, checked by the flag's
            type), ``choices`` (the allowed values of a ``str`` field), ``default_text`` (what
            ``--help`` shows as the default when it is None, e.g. "off").
    """
    return field(default=default, metadata={"help": help, "flag": flag, **cli})


@dataclass
class MemoryConfig:
    """Reference encoding (method.md §2.1-2.2, §3)."""

    crop_size: int | None = setting(
        None,
        flag=True,
        min=1,
        default_text="the encoder's native size",
        help="Square side the reference crop is resized to (method.md §2.1 step 5), a multiple of the encoder's "
        "patch size. Unset: the encoder's native input side (DINOv2: 518 = 37 x 14, §6; DINOv3: 512).",
    )
    context_ratio: float = setting(
        0.2,
        flag=True,
        min=0.0,
        help="Context around the reference box: crop side = (1 + ratio) x max(box w, h) (method.md §2.1 step 4).",
    )
    empty_mask_fallback: Literal["area", "error"] = setting(
        "area",
        help="When the nearest-sampled 37x37 mask misses every patch (method.md §8.6): 'area' pools the 518² mask "
        "onto the patch grid by area; 'error' refuses (the reference would produce a NaN prototype instead).",
    )

    def validate(self) -> MemoryConfig:
        _check(
            self.crop_size is None or self.crop_size > 0,
            "crop_size",
            self.crop_size,
            "a positive multiple of the encoder's patch size, or null for the encoder's native size",
        )
        _check(self.context_ratio >= 0, "context_ratio", self.context_ratio, ">= 0")
        _check(
            self.empty_mask_fallback in ("area", "error"),
            "empty_mask_fallback",
            self.empty_mask_fallback,
            "'area' or 'error'",
        )
        return self

    def for_encoder(self, patch_size: int, native_size: int) -> MemoryConfig:
        """A copy with ``crop_size`` resolved for an encoder (None → ``native_size``) and checked
        to be a multiple of its ``patch_size``."""
        return dataclasses.replace(self, crop_size=_encoder_side(self.crop_size, patch_size, native_size, "crop_size"))


def _encoder_side(size: int | None, patch_size: int, native_size: int, name: str) -> int:
    if size is None:
        return native_size
    lower, upper = max(patch_size, size // patch_size * patch_size), (size // patch_size + 1) * patch_size
    _check(
        size > 0 and size % patch_size == 0,
        name,
        size,
        f"a positive multiple of the encoder's patch size {patch_size}: {lower} or {upper}, "
        f"or null for its native size {native_size}",
    )
    return size


@dataclass
class SegmenterConfig:
    """Target inference (method.md §4, defaults from §7).

    Each field's help text (and whether it is a command-line flag of `segment` and `run`) is its
    metadata: see :func:`setting`.
    """

    image_size: int = setting(1024, help="SAM2 input side (method.md §4.1); the models are trained at 1024.")
    encoder_image_size: int | None = setting(
        None,
        flag=True,
        min=1,
        default_text="the encoder's native size",
        help="Encoder input side for targets (method.md §4.3), a multiple of its patch size. Unset: the encoder's "
        "native side (DINOv2: 518 = 37 x 14, §6; DINOv3: 512 = 32 x 16).",
    )
    resize_mode: Literal["squash", "letterbox"] = setting(
        "squash",
        flag=True,
        help="Target resize: 'squash' = the reference's aspect-ignoring resize (method.md §8.2); 'letterbox' = "
        "SAM's longest-side resize with zero padding at the bottom/right.",
    )
    points_per_side: int = setting(
        32, flag=True, help="Point grid side: 32 -> 32x32 = 1024 prompts (method.md §4.2). Tests use 2-8 on CPU."
    )
    point_grid: Literal["reference", "amg"] = setting(
        "reference",
        flag=True,
        help="Grid layout: 'reference' = linspace(0, S-1, n) + 0.5 with x as the outer index, touching the "
        "borders (method.md §4.2, §8.3); 'amg' = SAM's automatic-mask-generator grid (cell centres, y outer).",
    )
    implementation: Literal["fast", "reference"] = setting(
        "fast",
        flag=True,
        help="'fast': the same function computed with far less work (exact re-arrangements: shared first decoder "
        "layer, filter before upscaling, separable mask pooling, merge restricted to overlapping pairs); "
        "'reference': the straightforward path as method.md §4 describes it.",
    )
    points_batch_size: int = setting(
        256,
        flag=True,
        help="Prompts per SAM2 decoder call on the reference path (testing_point_bs). The fast path sizes its "
        "decoder batches to free GPU memory instead; on CPU it uses min(this, 64).",
    )
    add_no_mem_embed: bool = setting(
        False,
        flag=True,
        help="Add SAM2's no_mem_embed like the official predictors (the reference skips it, method.md §8.1).",
    )
    pred_iou_threshold: float = setting(
        0.4, flag=True, help="Keep masks whose predicted IoU is above this, strictly (method.md §4.2)."
    )
    nms_iou_threshold: float = setting(
        0.5, flag=True, help="IoU threshold of the class-aware box NMS on 256-grid boxes (method.md §4.5)."
    )
    nms_keep_factor: int = setting(
        8, help="Keep at most nms_keep_factor x max_detections NMS survivors (method.md §4.5)."
    )
    drop_unmatched_before_nms: bool = setting(
        False,
        flag=True,
        help="Drop candidates whose similarity is 0 to every class before NMS (saner, differs from the reference). "
        "The reference labels them with torch.topk's tie-breaking and lets them suppress detections in NMS "
        "before dropping them (method.md §8.19).",
    )
    use_negatives: bool = setting(
        False,
        flag=True,
        help="Score candidates against the bank's negative references too (the authors' negative-reference mode, "
        "docs/negative_references.md): score = sim_pos x exp(-max(sim_neg - sim_pos, 0) / negative_sigma), sim_neg "
        "= the best clamped cosine to that class's negatives. Needs a bank with negatives (`ntt-batch memory "
        "negatives BANK`, or `memory build --negatives FILE`). Off: the paper's matching (method.md §4.4).",
    )
    negative_sigma: float = setting(
        0.8,
        flag=True,
        help="With use_negatives: the decay's sigma, > 0 (the authors' call site passes 0.8; smaller = stronger).",
    )
    merger: str = setting(
        "soft",
        flag=True,
        choices=MERGERS,  # the registry (built-ins and plug-ins): read when the flags are made
        help="How overlapping candidates of one class lower each other's scores (method/mergers.py MERGERS): "
        "'soft' = the method's semantic-aware soft merging (method.md §4.7); 'graph-diffusion' = FSOD-VFM's "
        "rescoring (arXiv 2602.03137), a penalty diffused over the overlap graph (--graph-diffusion-*); "
        "plug-ins add theirs (entry point group ntt_batch.mergers).",
    )
    merge_exponent: float = setting(
        0.5,
        flag=True,
        min=0.0,
        help="Both mergers: final score = semantic score x (1 - penalty)^exponent (method.md §4.7; FSOD-VFM's lambda).",
    )
    graph_diffusion_alpha: float = setting(
        0.3, flag=True, help="graph-diffusion: pi <- alpha·P·pi + (1 - alpha)·w, in [0, 1) (FSOD-VFM's default)."
    )
    graph_diffusion_steps: int = setting(
        30, flag=True, min=1, help="graph-diffusion: at most this many iterations (FSOD-VFM's default)."
    )
    graph_diffusion_transition: Literal["code", "paper"] = setting(
        "code",
        flag=True,
        help="graph-diffusion transition matrix P: 'code' = the overlap matrix itself, as FSOD-VFM's metric.py "
        "computes it (its row \"normalisation\" divides by a boolean); 'paper' = row-normalised as the paper "
        "writes it.",
    )
    max_detections: int = setting(100, flag=True, help="Instances kept per image (num_out_instance, method.md §4.8).")
    device: str = setting("auto", flag=True, help="'auto' (CUDA if present), 'cpu', 'cuda' or 'cuda:N'.")
    bf16: bool = setting(
        False,
        flag=True,
        help="bf16 autocast for the model forwards (SAM2 and DINOv2/DINOv3 encoders, the mask decoder's transformer "
        "and upscaling), on CUDA and on CPU alike (CPU: for testing; it is slower there). The decisions stay "
        "fp32: the IoU head and its filter, the mask pooling and similarities, NMS and merging run in fp32 on "
        "the bf16 forwards' outputs. The reference is fp32.",
    )
    compile: bool = setting(
        False,
        flag=True,
        help="torch.compile the SAM2 image encoder, the DINOv2/DINOv3 encoder and the fast decoder's transformer "
        "(prompt batches padded to one fixed size, so the decoder compiles once). The first call per input "
        "shape pays the compile time (tens of seconds to minutes). Same detections as eager.",
    )
    merge_memory_mb: int = setting(
        256,
        help="Full-resolution work (method.md §4.6-4.8) on the fast path: the chunked upsampling of the NMS "
        "survivors and the merge's intersection counts keep their buffers under about this many MiB, whatever "
        "the image size (the reference path upsamples every survivor at once: M·H·W floats). The final "
        "instances carry dense bool masks when those fit in this budget too, else only their RLE "
        "(Instance.mask is then decoded on first access).",
    )
    memory_limit_mb: int = setting(
        0,
        help="Host-memory guard of the batch job's actor: an image whose estimated need exceeds this many MiB gets "
        'an error row ("out of memory (estimated) ...") instead of being attempted. 0 = half of this '
        "machine's physical memory.",
    )
    tile_size: int | None = setting(
        None,
        flag=True,
        min=0,
        default_text="off",
        help="Tiled inference for very large images (aerial, satellite, scanned pages): an image with a side over "
        "N px is cut into NxN tiles (the last row/column of tiles shifted back to end at the border), each "
        "segmented as an image by this same segmenter (its own resize to image_size, prompts, NMS, merging, "
        "top max_detections); the instances are shifted into image coordinates, merged across tile borders "
        "(tile_merge_threshold) and the top max_detections kept. Unset or 0 = off (the whole image is resized "
        "once, method.md §4.1).",
    )
    tile_overlap: float = setting(
        0.2,
        flag=True,
        min=0.0,
        help="Overlap of neighbouring tiles: a fraction of tile_size if < 1 (0.2 -> 20 %), else pixels. An object "
        "smaller than the overlap lies whole in at least one tile.",
    )
    tile_merge_threshold: float = setting(
        0.5,
        help="Cross-tile merge, greedy by score, per class: an instance absorbs (mask union, box union, its own "
        "score) every lower-scored instance of another tile whose mask overlaps it with intersection / "
        "(smaller mask's area) > this threshold, so a duplicate from the overlap and an object cut by a tile "
        "border both become one instance. Instances of one tile never merge (the segmenter's own NMS and soft "
        "merging already decided those).",
    )

    def for_encoder(self, patch_size: int, native_size: int) -> SegmenterConfig:
        """A copy with ``encoder_image_size`` resolved for an encoder (None → ``native_size``) and
        checked to be a multiple of its ``patch_size``."""
        side = _encoder_side(self.encoder_image_size, patch_size, native_size, "encoder_image_size")
        return dataclasses.replace(self, encoder_image_size=side)

    def tile_overlap_px(self) -> int:
        """``tile_overlap`` in pixels (a value < 1 is a fraction of ``tile_size``)."""
        if self.tile_overlap < 1:
            return int(round(self.tile_overlap * (self.tile_size or 0)))
        return int(round(self.tile_overlap))

    def validate(self) -> SegmenterConfig:
        _check(
            self.image_size > 0 and self.image_size % 16 == 0,
            "image_size",
            self.image_size,
            "a positive multiple of 16 (SAM2 stride); the models are trained at 1024",
        )
        _check(
            self.encoder_image_size is None or self.encoder_image_size > 0,
            "encoder_image_size",
            self.encoder_image_size,
            "a positive multiple of the encoder's patch size, or null for its native size",
        )
        _check(self.merger in MERGERS, "merger", self.merger, "one of " + ", ".join(map(repr, MERGERS.names())))
        _check(
            0.0 <= self.graph_diffusion_alpha < 1.0, "graph_diffusion_alpha", self.graph_diffusion_alpha, "in [0, 1)"
        )
        _check(self.graph_diffusion_steps >= 1, "graph_diffusion_steps", self.graph_diffusion_steps, ">= 1")
        _check(
            self.graph_diffusion_transition in ("code", "paper"),
            "graph_diffusion_transition",
            self.graph_diffusion_transition,
            "'code' or 'paper'",
        )
        _check(self.resize_mode in ("squash", "letterbox"), "resize_mode", self.resize_mode, "'squash' or 'letterbox'")
        _check(self.points_per_side >= 1, "points_per_side", self.points_per_side, ">= 1")
        _check(self.point_grid in ("reference", "amg"), "point_grid", self.point_grid, "'reference' or 'amg'")
        _check(
            self.implementation in ("fast", "reference"), "implementation", self.implementation, "'fast' or 'reference'"
        )
        _check(self.points_batch_size >= 1, "points_batch_size", self.points_batch_size, ">= 1")
        _check(0.0 <= self.pred_iou_threshold <= 1.0, "pred_iou_threshold", self.pred_iou_threshold, "in [0, 1]")
        _check(0.0 < self.nms_iou_threshold <= 1.0, "nms_iou_threshold", self.nms_iou_threshold, "in (0, 1]")
        _check(self.nms_keep_factor >= 1, "nms_keep_factor", self.nms_keep_factor, ">= 1")
        _check(self.merge_exponent >= 0, "merge_exponent", self.merge_exponent, ">= 0")
        _check(isinstance(self.use_negatives, bool), "use_negatives", self.use_negatives, "true or false")
        _check(self.negative_sigma > 0, "negative_sigma", self.negative_sigma, "> 0")
        _check(self.max_detections >= 1, "max_detections", self.max_detections, ">= 1")
        _check(
            self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
            "device",
            self.device,
            "'auto', 'cpu', 'cuda' or 'cuda:N'",
        )
        _check(isinstance(self.bf16, bool), "bf16", self.bf16, "true or false")
        _check(isinstance(self.compile, bool), "compile", self.compile, "true or false")
        _check(self.merge_memory_mb >= 1, "merge_memory_mb", self.merge_memory_mb, ">= 1 (MiB)")
        _check(
            self.memory_limit_mb >= 0,
            "memory_limit_mb",
            self.memory_limit_mb,
            ">= 0 (MiB; 0 = half the machine's memory)",
        )
        _check(
            self.tile_size is None or self.tile_size == 0 or self.tile_size >= 64,
            "tile_size",
            self.tile_size,
            "0 or null (off), or >= 64 pixels",
        )
        _check(self.tile_overlap >= 0, "tile_overlap", self.tile_overlap, ">= 0 (a fraction < 1, or pixels)")
        if self.tile_size:
            _check(
                self.tile_overlap_px() < self.tile_size,
                "tile_overlap",
                self.tile_overlap,
                f"less than tile_size ({self.tile_size} px)",
            )
        _check(0.0 <= self.tile_merge_threshold <= 1.0, "tile_merge_threshold", self.tile_merge_threshold, "in [0, 1]")
        return self


def _check(ok: bool, name: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"invalid value for {name}: {value!r} (expected {expected})")


def config_from_dict(cls, data: Mapping[str, Any], where: str = "config", *, validate: bool = True, path: str = ""):
    """Build dataclass ``cls`` from a mapping (a YAML block, CLI flags), type-checking every value.

    Each value must match the field's annotation (see :func:`check_value`): ``limit: three``,
    ``num_actors: "2"`` or ``allow_errors: "false"`` are errors that name the key, the value and
    the expected type, e.g. ``job.yaml: limit: expected an integer, got 'three' (str)``. Nested
    dataclass fields take a mapping, built recursively (keys reported as ``segmenter.key``).
    Unknown keys are errors that list the valid ones. With ``validate``, ``cls.validate()`` runs
    too (on nested settings always), its message prefixed with ``where`` and the block's name.

    Args:
        where: what the settings come from (a file name, "flags"); starts every message.
        path: the block's key within ``where`` ("" at the top level, "segmenter" for a nested one).
    """
    block = f"{path}: " if path else ""
    prefix = f"{where}: " if where else ""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix}{block}expected a mapping of settings, got {_describe(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted((k for k in data if k not in fields), key=str)
    if unknown:
        raise ConfigError(
            f"{prefix}{block}unknown key(s) {', '.join(map(repr, unknown))}; valid keys: {', '.join(sorted(fields))}"
        )
    hints = settings_type_hints(cls)
    kwargs = {
        name: check_value(hints.get(name, Any), value, where, f"{path}.{name}" if path else name)
        for name, value in data.items()
    }
    obj = cls(**kwargs)
    if validate and hasattr(obj, "validate"):
        try:
            obj.validate()
        except ConfigError as e:
            message = str(e)
            if where and message.startswith(where):
                raise
            if path and not message.startswith(path):
                message = f"{path}: {message}"
            raise ConfigError(f"{prefix}{message}") from None
    return obj


def check_config_types(obj, where: str = "", path: str = ""):
    """Type-check (in place) the fields of a dataclass instance built in Python, like :func:`config_from_dict`.

    Integers given for ``float`` fields become floats and mappings given for nested dataclass
    fields are built into them; anything else of the wrong type is a :class:`ConfigError`.
    """
    hints = settings_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        key = f"{path}.{f.name}" if path else f.name
        value = getattr(obj, f.name)
        setattr(obj, f.name, check_value(hints.get(f.name, Any), value, where, key))
    return obj


def check_value(tp: Any, value: Any, where: str, key: str) -> Any:
    """``value`` checked against annotation ``tp``; returns it (int → float for float fields).

    Strict: no string is taken for a number or a boolean, no number for a string, and only
    ``true``/``false`` for a boolean. Unsupported annotations pass the value through.
    """
    if tp is Any or tp is object:
        return value
    origin = typing.get_origin(tp)
    if origin is typing.Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return check_value(option, value, where, key)
            except ConfigError as e:
                errors.append(e)
        if len(options) == 1:
            raise errors[0]
        _type_error(where, key, value, " or ".join(_expected(o) for o in options))
    if origin is Literal:
        allowed = typing.get_args(tp)
        if any(type(value) is type(a) and value == a for a in allowed):
            return value
        _type_error(where, key, value, "one of " + ", ".join(map(repr, allowed)))
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return check_config_types(value, where, key)
        if isinstance(value, Mapping):
            return config_from_dict(tp, value, where, path=key)
        _type_error(where, key, value, _expected(tp))
    if tp is bool:
        if type(value) is bool:
            return value
        _type_error(where, key, value, _expected(tp))
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        _type_error(where, key, value, _expected(tp))
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                _type_error(where, key, value, "a finite number")
            return float(value)
        _type_error(where, key, value, _expected(tp))
    if tp is str:
        if isinstance(value, str):
            return value
        _type_error(where, key, value, _expected(tp))
    if tp is dict or origin is dict or tp is Mapping or origin is Mapping:
        if isinstance(value, Mapping):
            bad = [k for k in value if not isinstance(k, str)]
            if bad:
                _type_error(where, f"{key}.{bad[0]!r}", bad[0], "a string key")
            return dict(value)
        _type_error(where, key, value, _expected(tp))
    if tp is list or origin is list:
        if isinstance(value, list):
            (item,) = typing.get_args(tp) or (Any,)
            return [check_value(item, v, where, f"{key}[{i}]") for i, v in enumerate(value)]
        _type_error(where, key, value, _expected(tp))
    return value


_EXPECTED = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
    dict: "a mapping",
    list: "a list",
}


def _expected(tp: Any) -> str:
    origin = typing.get_origin(tp) or tp
    if dataclasses.is_dataclass(tp):
        return "a mapping of settings"
    if origin is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(tp)))
    if origin is Mapping:
        return "a mapping"
    return _EXPECTED.get(origin, getattr(tp, "__name__", str(tp)))


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{text if len(text) <= 80 else text[:77] + '...'} ({type(value).__name__})"


def _type_error(where: str, key: str, value: Any, expected: str) -> typing.NoReturn:
    prefix = f"{where}: " if where else ""
    raise ConfigError(f"{prefix}{key}: expected {expected}, got {_describe(value)}")


def settings_type_hints(cls) -> dict[str, Any]:
    """The resolved field annotations of dataclass ``cls`` (modules use ``from __future__ import annotations``)."""
    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - an annotation that does not resolve: leave those fields unchecked
        return {}


def config_to_dict(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


__all__ = [
    "ConfigError",
    "MemoryConfig",
    "SegmenterConfig",
    "check_config_types",
    "check_value",
    "config_from_dict",
    "config_to_dict",
    "field",
    "setting",
    "settings_type_hints",
]
