"""Method configuration as plain data. Every constant of the reference is a field with its default.

Field docs cite method.md (§ numbers). Validation errors name the field, so a bad value from a
CLI flag or a YAML file points straight at what to fix.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""


@dataclass
class MemoryConfig:
    """Reference encoding (method.md §2.1-2.2, §3)."""

    crop_size: int = 518  # square side the reference crop is resized to (§2.1 step 5)
    context_ratio: float = 0.2  # crop side = (1 + ratio) · max(box w, h) (§2.1 step 4)
    # Fallback when the nearest-sampled 37×37 mask misses every patch (§8.6): "area" pooling of
    # the 518² mask onto the patch grid; the reference would produce a NaN prototype instead.
    empty_mask_fallback: Literal["area", "error"] = "area"

    def validate(self) -> "MemoryConfig":
        _check(self.crop_size > 0 and self.crop_size % 14 == 0, "crop_size", self.crop_size,
               "a positive multiple of the DINOv2 patch size 14")
        _check(self.context_ratio >= 0, "context_ratio", self.context_ratio, ">= 0")
        _check(self.empty_mask_fallback in ("area", "error"), "empty_mask_fallback",
               self.empty_mask_fallback, "'area' or 'error'")
        return self


@dataclass
class SegmenterConfig:
    """Target inference (method.md §4, defaults from §7)."""

    image_size: int = 1024  # SAM2 input side (§4.1)
    encoder_image_size: int = 518  # DINOv2 input side for targets (§4.3)
    # "squash" = the reference's aspect-ignoring resize (§8.2); "letterbox" = SAM's longest-side
    # resize with zero padding at the bottom/right.
    resize_mode: Literal["squash", "letterbox"] = "squash"
    points_per_side: int = 32  # 32×32 = 1024 prompts (§4.2)
    # "reference": linspace(0, S-1, n) + 0.5 with x as the outer index (§4.2, §8.3);
    # "amg": SAM's automatic-mask-generator grid (cell centres, y outer).
    point_grid: Literal["reference", "amg"] = "reference"
    # "fast": the same function computed with far less work (exact re-arrangements: shared
    # first decoder layer, filter before upscaling, separable mask pooling, merge restricted to
    # overlapping pairs); "reference": the straightforward path as method.md §4 describes it.
    implementation: Literal["fast", "reference"] = "fast"
    # Prompts per decoder call on the reference path (testing_point_bs). The fast path sizes its
    # decoder batches to free GPU memory instead; on CPU it uses min(this, 64).
    points_batch_size: int = 256
    add_no_mem_embed: bool = False  # the reference skips it (§8.1)
    pred_iou_threshold: float = 0.4  # keep predicted IoU > thr, strict (§4.2)
    nms_iou_threshold: float = 0.5  # class-aware box NMS on 256-grid boxes (§4.5)
    nms_keep_factor: int = 8  # keep at most factor · max_detections NMS survivors (§4.5)
    # §8.19: the reference labels candidates whose similarity is 0 to every class with
    # torch.topk's tie-breaking and lets them suppress detections in NMS before dropping them.
    # True drops such candidates before NMS instead (saner, differs from the reference).
    drop_unmatched_before_nms: bool = False
    merge_exponent: float = 0.5  # final = sem · (1 − IoS)^exponent (§4.7)
    max_detections: int = 100  # num_out_instance (§4.8)
    device: str = "auto"  # "auto" (CUDA if present), "cpu", "cuda", "cuda:N"
    bf16: bool = False  # bf16 autocast for the model forwards on CUDA (the reference is fp32)

    def validate(self) -> "SegmenterConfig":
        _check(self.image_size > 0 and self.image_size % 16 == 0, "image_size", self.image_size,
               "a positive multiple of 16 (SAM2 stride); the models are trained at 1024")
        _check(self.encoder_image_size > 0 and self.encoder_image_size % 14 == 0,
               "encoder_image_size", self.encoder_image_size, "a positive multiple of 14")
        _check(self.resize_mode in ("squash", "letterbox"), "resize_mode", self.resize_mode,
               "'squash' or 'letterbox'")
        _check(self.points_per_side >= 1, "points_per_side", self.points_per_side, ">= 1")
        _check(self.point_grid in ("reference", "amg"), "point_grid", self.point_grid,
               "'reference' or 'amg'")
        _check(self.implementation in ("fast", "reference"), "implementation", self.implementation,
               "'fast' or 'reference'")
        _check(self.points_batch_size >= 1, "points_batch_size", self.points_batch_size, ">= 1")
        _check(0.0 <= self.pred_iou_threshold <= 1.0, "pred_iou_threshold",
               self.pred_iou_threshold, "in [0, 1]")
        _check(0.0 < self.nms_iou_threshold <= 1.0, "nms_iou_threshold", self.nms_iou_threshold,
               "in (0, 1]")
        _check(self.nms_keep_factor >= 1, "nms_keep_factor", self.nms_keep_factor, ">= 1")
        _check(self.merge_exponent >= 0, "merge_exponent", self.merge_exponent, ">= 0")
        _check(self.max_detections >= 1, "max_detections", self.max_detections, ">= 1")
        _check(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
               "device", self.device, "'auto', 'cpu', 'cuda' or 'cuda:N'")
        return self


def _check(ok: bool, name: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"invalid value for {name}: {value!r} (expected {expected})")


def config_from_dict(cls, data: dict[str, Any], where: str = "config"):
    """Build dataclass ``cls`` from a dict; unknown keys are errors that name the key."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; valid keys: {', '.join(sorted(names))}"
        )
    return cls(**data).validate()


def config_to_dict(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


__all__ = ["ConfigError", "MemoryConfig", "SegmenterConfig", "config_from_dict", "config_to_dict", "field"]
