"""Target inference: SAM2 point-grid proposals → DINOv2 matching → NMS → soft merging → top-k.

method.md §4 step by step. The small functions are the math, each testable on hand-built
tensors; :class:`Segmenter` strings them together around two models:

* a *proposer* with ``image_size``, ``encode(images [B,3,S,S] in [0,1])`` and
  ``decode_points(features_of_one_image, points [N,2]) -> (logits [N,3,h,w], iou [N,3])``
  (:class:`ntt_batch.models.sam2_proposer.Sam2Proposer`);
* an *encoder* ``encoder(images [B,3,E,E] in [0,1]) -> [B, E/14, E/14, D]`` patch features
  (:class:`ntt_batch.models.dinov2.DinoV2Encoder`).

Shapes: N candidates, C classes, D feature channels, (h, w) = low-res mask grid (256²),
(H, W) = original image size.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..io.masks import encode_rle, xyxy_to_coco_xywh
from .config import SegmenterConfig
from .memory_bank import MemoryBank

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- math (method.md §4)


def point_grid(points_per_side: int, image_size: int = 1024, style: str = "reference") -> Tensor:
    """Prompt points in input-pixel coordinates, [n², 2] as (x, y) float32.

    ``reference`` (§4.2): coordinates ``linspace(0, S-1, n) + 0.5`` (0.5, 33.5, …, 1023.5 for
    n=32, S=1024), x the outer index and y the inner (meshgrid 'ij'). ``amg``: SAM's automatic
    mask generator grid, cell centres ``(i + 0.5)/n · S`` with y outer, x inner.
    """
    n = points_per_side
    if style == "reference":
        coords = torch.linspace(0, image_size - 1, n, dtype=torch.float64) + 0.5
        xs, ys = torch.meshgrid(coords, coords, indexing="ij")
    elif style == "amg":
        coords = (torch.arange(n, dtype=torch.float64) + 0.5) / n * image_size
        ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    else:
        raise ValueError(f"unknown point grid style {style!r}")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1).float()


def select_best_multimask(logits: Tensor, iou_pred: Tensor) -> tuple[Tensor, Tensor]:
    """Per prompt, the multimask output with the highest predicted IoU (§4.2).

    Args:
        logits: [N, 3, h, w] mask logits of the three multimask tokens (tokens 1..3).
        iou_pred: [N, 3].
    Returns:
        ([N, h, w] logits, [N] predicted IoU).
    """
    best = iou_pred.argmax(dim=1)
    idx = torch.arange(logits.shape[0], device=logits.device)
    return logits[idx, best], iou_pred[idx, best]


def masks_to_boxes_inclusive(masks: Tensor) -> Tensor:
    """xyxy boxes with inclusive max coordinates of boolean masks [N, h, w] → [N, 4] float.

    Same convention as ``sam2.utils.amg.batched_mask_to_box``: an empty mask gives [0, 0, 0, 0].
    """
    n, h, w = masks.shape
    if n == 0:
        return torch.zeros(0, 4, device=masks.device)
    cols = masks.any(dim=1)  # [N, w]
    rows = masks.any(dim=2)  # [N, h]
    ar_w = torch.arange(w, device=masks.device)
    ar_h = torch.arange(h, device=masks.device)
    x2 = torch.where(cols, ar_w, -1).amax(dim=1)
    y2 = torch.where(rows, ar_h, -1).amax(dim=1)
    x1 = torch.where(cols, ar_w, w).amin(dim=1)
    y1 = torch.where(rows, ar_h, h).amin(dim=1)
    boxes = torch.stack([x1, y1, x2, y2], dim=1)
    empty = ~cols.any(dim=1)
    boxes[empty] = 0
    return boxes.float()


def upsample_features(patch_features: Tensor, size: tuple[int, int]) -> Tensor:
    """[gh, gw, D] patch features → [h·w, D] by bilinear upsampling (align_corners=False) (§4.3)."""
    x = patch_features.permute(2, 0, 1)[None]  # [1, D, gh, gw]
    up = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return up[0].flatten(1).T  # [h·w, D]


def pool_mask_features(masks: Tensor, dense_features: Tensor) -> Tensor:
    """Uniform average of the features under each binary mask, L2-normalised (§4.4).

    Args:
        masks: [N, h, w] bool.
        dense_features: [h·w, D].
    Returns:
        [N, D] unit vectors; an empty mask gives a row of NaN (as in the reference), which the
        caller treats as "no similarity".
    """
    m = masks.flatten(1).to(dense_features.dtype)  # [N, h·w]
    summed = m @ dense_features  # [N, D]
    mean = summed / m.sum(dim=1, keepdim=True)
    return mean / mean.norm(dim=1, keepdim=True)


def linear_interpolation_matrix(n_in: int, n_out: int, device=None) -> Tensor:
    """[n_out, n_in] weights W with ``W @ x`` = 1-D linear interpolation of x (align_corners=False).

    Bilinear upsampling is separable, so ``F.interpolate(X, (h, w), mode="bilinear")`` equals
    ``Wy @ X @ Wxᵀ`` with these matrices (up to float rounding).
    """
    eye = torch.eye(n_in, dtype=torch.float32, device=device)[None]  # [1, n_in (channels), n_in]
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0].T.contiguous()


def pool_mask_features_separable(masks: Tensor, patch_features: Tensor) -> Tensor:
    """:func:`pool_mask_features` over :func:`upsample_features`, without the upsampled features.

    ``Σ_q m[q]·Fup[q] = Σ_p (Wyᵀ·m·Wx)[p]·F[p]``: the mask is pushed down onto the patch grid with
    the transposed interpolation weights (N·h·w·gw MACs) instead of pulling the features up to
    h×w (N·h·w·D MACs plus a [h·w, D] buffer). Same result up to float rounding.

    Args:
        masks: [N, h, w] bool.
        patch_features: [gh, gw, D].
    Returns:
        [N, D] unit vectors; NaN rows for empty masks (as :func:`pool_mask_features`).
    """
    n, h, w = masks.shape
    gh, gw, d = patch_features.shape
    wy = linear_interpolation_matrix(gh, h, masks.device)  # [h, gh]
    wx = linear_interpolation_matrix(gw, w, masks.device)  # [w, gw]
    m = masks.to(patch_features.dtype)
    on_grid = wy.T @ (m @ wx)  # [N, gh, gw]
    summed = on_grid.reshape(n, gh * gw) @ patch_features.reshape(gh * gw, d)  # [N, D]
    mean = summed / m.flatten(1).sum(dim=1, keepdim=True)
    return mean / mean.norm(dim=1, keepdim=True)


def class_similarity(mask_features: Tensor, class_prototypes: Tensor) -> Tensor:
    """Cosine similarity to each class prototype, clamped at 0: [N, D] × [C, D] → [N, C] (§4.4)."""
    return (mask_features @ class_prototypes.T).clamp(min=0)


def soft_merge_scores(
    masks: Tensor, mask_features: Tensor, labels: Tensor, semantic_scores: Tensor, exponent: float = 0.5
) -> Tensor:
    """Semantic-aware soft merging (§4.7). Inputs are in NMS order (predicted IoU descending).

    For each class, for mask i: ios_i = max_{j<i, same class} |M_i ∩ M_j| / |M_i| · max(0, f_i·f_j)
    (0 for the first mask of a class); final_i = sem_i · (1 − ios_i)^exponent.

    Args:
        masks: [M, H, W] bool at original resolution (all non-empty).
        mask_features: [M, D] unit vectors f_i.
        labels: [M] class indices.
        semantic_scores: [M] sem_i.
    Returns:
        [M] final scores.
    """
    final = semantic_scores.clone()
    flat = masks.flatten(1)
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()  # ascending = NMS order
        if idx.numel() < 2:
            continue
        mf = flat[idx].to(torch.float32)  # [m, H·W]
        inter = mf @ mf.T  # [m, m] pixel counts
        area = mf.sum(dim=1)  # [m]
        ios = torch.tril(inter, diagonal=-1) / area[:, None]  # row i: |M_i ∩ M_j| / |M_i|, j < i
        sim = (mask_features[idx] @ mask_features[idx].T).clamp(min=0)
        ios_max = (ios * sim).amax(dim=1)
        # Guard: rounding can push ios a hair above 1, and a negative base gives NaN.
        final[idx] = semantic_scores[idx] * (1.0 - ios_max).clamp(min=0) ** exponent
    return final


# ----------------------------------------------------------------------------- preprocessing


def prepare_target(image: np.ndarray, image_size: int = 1024, resize_mode: str = "squash") -> tuple[np.ndarray, tuple[int, int]]:
    """Original RGB uint8 [H, W, 3] → SAM2 input uint8 [S, S, 3] and the valid (h, w) inside it.

    ``squash`` (§4.1): PIL bicubic resize to S×S ignoring aspect ratio; valid = (S, S).
    ``letterbox``: longest side → S, bicubic, zero padding at the bottom/right.
    The uint8 result is what the reference divides by 255 (PIL resizes in uint8).
    """
    from PIL import Image

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 [H, W, 3] image, got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    pil = Image.fromarray(image)
    if resize_mode == "squash":
        return np.array(pil.resize((image_size, image_size), Image.BICUBIC)), (image_size, image_size)
    if resize_mode != "letterbox":
        raise ValueError(f"unknown resize_mode {resize_mode!r}")
    scale = image_size / max(h, w)
    nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    out = np.zeros((image_size, image_size, 3), dtype=np.uint8)
    out[:nh, :nw] = np.asarray(pil.resize((nw, nh), Image.BICUBIC))
    return out, (nh, nw)


# ----------------------------------------------------------------------------- orchestration


class Proposer(Protocol):
    image_size: int

    def encode(self, images: Tensor) -> Any: ...

    def decode_points(self, features: Any, points: Tensor) -> tuple[Tensor, Tensor]: ...


@dataclass
class Instance:
    """One detected instance in original-image pixels.

    ``mask`` is the dense [H, W] bool mask. The fast path always sets ``rle`` (the COCO RLE of
    the same mask) and builds the dense arrays only while the image's final masks fit in
    ``merge_memory_mb`` (100 masks of a 50 MP image would be 5 GB); otherwise ``mask`` is
    decoded from ``rle`` on first access (and kept). ``mask_loaded`` says whether it is held;
    :meth:`binary_mask` decodes without keeping, :meth:`coco_rle` gives the RLE either way.
    """

    mask: np.ndarray | None  # [H, W] bool (see the class docstring: may be decoded lazily from rle)
    bbox: list[float]  # COCO [x, y, w, h] from the inclusive xyxy box (§4.8)
    score: float
    category_id: int
    category_name: str
    rle: dict | None = None  # COCO compressed RLE {"size": [H, W], "counts": str} of the mask

    @property
    def mask_loaded(self) -> bool:
        """Whether the dense mask is held (else it is decoded from ``rle`` when asked for)."""
        return self.__dict__.get("_mask") is not None

    def coco_rle(self) -> dict:
        """The mask as COCO compressed RLE (the stored one, else encoded from ``mask``)."""
        return self.rle if self.rle is not None else encode_rle(self.mask)

    def binary_mask(self) -> np.ndarray:
        """The dense [H, W] bool mask; decoded from ``rle`` (and not kept) when not held."""
        held = self.__dict__.get("_mask")
        if held is not None or self.rle is None:
            return held
        from ..io.masks import decode_rle

        return decode_rle(self.rle)

    def to_coco_result(self, image_id: int) -> dict:
        """A COCO results entry (``COCO.loadRes`` format) with a compressed-RLE segmentation."""
        return {
            "image_id": int(image_id),
            "category_id": int(self.category_id),
            "bbox": [float(v) for v in self.bbox],
            "score": float(self.score),
            "segmentation": self.coco_rle(),
        }


def _instance_mask(self: Instance) -> np.ndarray | None:
    m = self.__dict__.get("_mask")
    if m is None and self.__dict__.get("rle") is not None:
        m = self.__dict__["_mask"] = self.binary_mask()
    return m


def _set_instance_mask(self: Instance, value: np.ndarray | None) -> None:
    self.__dict__["_mask"] = value


# ``mask`` is a dataclass field (constructor argument, repr, eq) backed by a lazy property.
Instance.mask = property(_instance_mask, _set_instance_mask, doc="[H, W] bool mask (decoded from rle on first use)")


@dataclass
class TargetImage:
    """A target prepared for the segmenter: the resized SAM2 input and the original size."""

    resized: np.ndarray  # [S, S, 3] uint8, from prepare_target
    valid_hw: tuple[int, int]  # region of ``resized`` that holds the image (letterbox)
    orig_hw: tuple[int, int]  # (H, W) of the original image
    # The original pixels of an image to be segmented tile by tile (``config.tile_size``, see
    # method/tiling.py); ``resized`` is then a blank placeholder and is not used.
    source: np.ndarray | None = None

    @classmethod
    def from_image(cls, image: np.ndarray, config: SegmenterConfig) -> "TargetImage":
        hw = (int(image.shape[0]), int(image.shape[1]))
        from .tiling import needs_tiling

        if needs_tiling(hw, config):
            s = config.image_size
            return cls(np.zeros((s, s, 3), dtype=np.uint8), (s, s), hw, source=image)
        resized, valid = prepare_target(image, config.image_size, config.resize_mode)
        return cls(resized, valid, hw)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    return torch.device(device)


class StageTimer:
    """Accumulates wall seconds per named stage; synchronises CUDA so GPU time lands in the right stage."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        import time

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


class Segmenter:
    """Segments target images against a memory bank (method.md §4).

    Args:
        proposer: SAM2 proposer (see module docstring).
        encoder: DINOv2 patch-feature encoder; must be the one the bank was built with.
        bank: the memory bank (class prototypes, category ids and names).
        config: :class:`SegmenterConfig`.
    """

    def __init__(self, proposer: Proposer, encoder: torch.nn.Module, bank: MemoryBank, config: SegmenterConfig):
        self.config = config.validate()
        self.device = resolve_device(config.device)
        self.proposer = proposer.to(self.device) if hasattr(proposer, "to") else proposer
        self.encoder = encoder.to(self.device) if hasattr(encoder, "to") else encoder
        self.bank = bank
        self.prototypes = bank.class_prototypes.to(self.device, torch.float32)  # [C, D]
        if proposer.image_size != config.image_size:
            raise ValueError(f"proposer input size {proposer.image_size} != config image_size {config.image_size}")
        self.points = point_grid(config.points_per_side, config.image_size, config.point_grid).to(self.device)
        self.timer: StageTimer | None = None  # set one to get per-stage seconds (the benchmark does)
        # The model callables. With ``compile`` they are torch.compile'd wrappers around the same
        # modules (no copies: the proposer and encoder objects, which other segmenters may share,
        # are left as they are). Static shapes: a new batch size compiles once more.
        self._sam_encode = self.proposer.encode
        self._dino = self.encoder
        self._decoder_front = None  # compiled PointGridDecoder.front, built on first use
        if self.config.compile:
            self._sam_encode = torch.compile(self.proposer.encode, dynamic=False)
            self._dino = torch.compile(self.encoder, dynamic=False)

    def _stage(self, name: str):
        return self.timer(name) if self.timer is not None else contextlib.nullcontext()

    def _autocast(self):
        """bf16 autocast for the model forwards when ``bf16`` is set (CUDA or CPU), else nothing."""
        if self.config.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _images_to_device(self, targets: Sequence[TargetImage]) -> Tensor:
        """The batch's SAM2 inputs as one uint8 [B, S, S, 3] tensor on the device.

        CUDA: staged in pinned host memory and copied with ``non_blocking``, so the copy runs
        asynchronously on the current stream (ordered before the encoder kernels queued after it)
        while the host goes on queueing work; uint8 is a quarter of the float32 bytes, the
        conversion to [0, 1] floats happens on the device. CPU: the stacked array itself.
        """
        host = torch.from_numpy(np.stack([t.resized for t in targets]))  # np.stack copies: writable
        if self.device.type != "cuda":
            return host
        return host.pin_memory().to(self.device, non_blocking=True)

    @torch.no_grad()
    def segment_images(self, images: Sequence[np.ndarray]) -> list[list[Instance]]:
        """RGB uint8 [H, W, 3] images → per image, instances sorted by score (descending)."""
        return self.segment_targets([TargetImage.from_image(im, self.config) for im in images])

    @torch.no_grad()
    def segment_targets(self, targets: Sequence[TargetImage]) -> list[list[Instance]]:
        """Batch version on prepared targets: the two image encoders run on the whole batch.

        The SAM2 and DINOv2 encoders each take all B images in one forward (that is where a GPU
        wants a batch); the mask decoder then runs per image over its prompt grid, in prompt
        batches sized to free memory (the whole 32×32 grid at once on a large GPU).
        """
        if not targets:
            return []
        x = self._images_to_device(targets)
        x = x.permute(0, 3, 1, 2).float() / 255.0  # [B, 3, S, S] in [0, 1]
        with self._autocast():
            with self._stage("sam2_encoder"):
                sam_feats = self._sam_encode(x)
            with self._stage("dinov2"):
                # §4.3: torch bicubic S → 518, no antialias, from the same [0, 1] tensor.
                e = self.config.encoder_image_size
                x_enc = F.interpolate(x, size=(e, e), mode="bicubic", align_corners=False)
                patch_feats = self._dino(x_enc)  # [B, gh, gw, D]
        patch_feats = patch_feats.float()  # pooling and similarities in fp32 (also under bf16)
        out = []
        for i, t in enumerate(targets):
            feats_i = sam_feats[i : i + 1] if isinstance(sam_feats, Tensor) else sam_feats.select(i)
            out.append(self._segment_one(feats_i, patch_feats[i], t))
        return out

    def _propose(self, sam_feats: Any) -> tuple[Tensor, Tensor]:
        """All grid prompts through the decoder in batches → ([N, h, w] logits, [N] iou) (§4.2).

        Under bf16 the decoder's outputs are cast to fp32 before the selection and the filter.
        """
        logits, ious = [], []
        bs = self.config.points_batch_size
        for start in range(0, self.points.shape[0], bs):
            with self._autocast():
                lg, iou = self.proposer.decode_points(sam_feats, self.points[start : start + bs])
            lg, iou = select_best_multimask(lg.float(), iou.float())
            keep = iou > self.config.pred_iou_threshold  # strict (§4.2)
            logits.append(lg[keep])
            ious.append(iou[keep])
        return torch.cat(logits), torch.cat(ious)

    def _propose_fast(self, sam_feats: Any) -> tuple[Tensor, Tensor]:
        """Same result as :meth:`_propose`, computed by the proposer's point decoder when it has one.

        The decoder picks the best multimask output and applies the IoU filter before it builds any
        mask, so only surviving prompts are upscaled (see ``models.sam2_point_decoder``). Batches
        are sized to memory instead of fixed at ``points_batch_size``. Under bf16 the IoU head
        and the filter run in fp32 (on the bf16 transformer's tokens). With ``compile`` the
        transformer + IoU head is compiled for one fixed prompt batch size: a short last batch is
        padded with copies of its last point and the padding dropped before the filter.
        """
        make = getattr(self.proposer, "point_decoder", None)
        if make is None or isinstance(sam_feats, Tensor):  # a proposer without the fast decoder
            return self._propose(sam_feats)
        dec = make()
        front = dec.front
        if self.config.compile:
            if self._decoder_front is None:
                self._decoder_front = torch.compile(dec.front, dynamic=False)
            front = self._decoder_front
        n = self.points.shape[0]
        bs = self._fast_decoder_batch()
        if self.config.compile:  # one compiled shape: keep the first batch size
            bs = self._compiled_batch = getattr(self, "_compiled_batch", None) or bs
        # CUDA: upscale every kept prompt of a batch at once (the batch is already sized to memory).
        upscale = bs if self.device.type == "cuda" else None
        with self._autocast():
            state = dec.prepare(sam_feats.image_embed, sam_feats.high_res)
            logits, ious = [], []
            for start in range(0, n, bs):
                pts = self.points[start : start + bs]
                m = pts.shape[0]
                if self.config.compile and m < bs:
                    pts = torch.cat([pts, pts[-1:].expand(bs - m, -1)])
                hs, keys, iou, best = front(state, pts)
                if m < pts.shape[0]:
                    hs, keys, iou, best = hs[:m], keys[:m], iou[:m], best[:m]
                _, lg, iou = dec.select_and_upscale(state, hs, keys, iou, best, self.config.pred_iou_threshold,
                                                    upscale_batch=upscale)
                logits.append(lg.float())
                ious.append(iou.float())
        return torch.cat(logits), torch.cat(ious)

    def _fast_decoder_batch(self) -> int:
        """Prompts per fast decoder call. CUDA: what fits in half the free memory (~24 MiB per prompt:
        the per-prompt image tokens and the upscaling buffers; bf16 keeps the layer norms' outputs in
        fp32, so it is budgeted the same), up to the whole grid. CPU: at most 64 (larger batches buy
        nothing there, they only raise the peak RSS), and at most ``points_batch_size``."""
        n = self.points.shape[0]
        if self.device.type != "cuda":
            return max(1, min(self.config.points_batch_size, 64, n))
        free, _ = torch.cuda.mem_get_info(self.device)
        per_prompt = 24 * 2**20
        return max(1, min(n, int(free * 0.5) // per_prompt))

    def _segment_one(self, sam_feats: Any, patch_feats: Tensor, target: TargetImage) -> list[Instance]:
        if target.source is not None:  # a large image under tile_size: its tiles are segmented as images
            from .tiling import segment_tiled

            return segment_tiled(self, target.source)
        cfg = self.config
        fast = cfg.implementation == "fast"
        with self._stage("mask_decoder"):
            logits, iou = self._propose_fast(sam_feats) if fast else self._propose(sam_feats)
        if logits.shape[0] == 0:
            return []
        with self._stage("matching_nms"):
            keep, feats, sem, label = self._match_and_nms(logits, iou, patch_feats, fast)
        if keep.numel() == 0:
            return []  # the reference raises "No masks found" here (§8.5)
        with self._stage("upsample_merge"):
            return self._finalize(logits, keep, feats, sem, label, target)

    def _match_and_nms(self, logits: Tensor, iou: Tensor, patch_feats: Tensor, fast: bool):
        """§4.3-4.5 on the 256² grid → (kept candidate indices in NMS order, features, sem, labels)."""
        cfg = self.config
        lh, lw = logits.shape[-2:]
        lr_masks = logits > 0  # [N, h, w]

        # §4.3-4.4: bilinear-upsampled DINOv2 features, uniform mask pooling, clamped cosine.
        if fast:
            feats = pool_mask_features_separable(lr_masks, patch_feats)  # [N, D]
        else:
            dense = upsample_features(patch_feats, (lh, lw))  # [h·w, D]
            feats = pool_mask_features(lr_masks, dense)  # [N, D]; NaN rows for empty masks
        sim = class_similarity(feats, self.prototypes)  # [N, C]
        sim = torch.nan_to_num(sim, nan=0.0)  # empty mask: no similarity (dropped below)
        sem, label = sim.topk(1, dim=1)  # topk, not argmax: the reference's tie-breaking (§8.19)
        sem, label = sem[:, 0], label[:, 0]

        candidates = torch.arange(logits.shape[0], device=logits.device)
        if cfg.drop_unmatched_before_nms:
            candidates = candidates[sem > 0]

        # §4.5: class-aware NMS on 256-grid boxes ranked by predicted IoU; keep ≤ 8·100.
        from torchvision.ops import batched_nms

        boxes = masks_to_boxes_inclusive(lr_masks[candidates])
        keep = batched_nms(boxes, iou[candidates], label[candidates], cfg.nms_iou_threshold)
        keep = candidates[keep[: cfg.nms_keep_factor * cfg.max_detections]]
        keep = keep[sem[keep] > 0]  # positive-score filter, after NMS (§4.5)
        return keep, feats, sem, label

    # Fast path: return dense bool masks (when the image's final masks fit in merge_memory_mb).
    # False: RLE only (``Instance.mask`` None) — for callers that only write RLE (the batch job's
    # actor, the tile merge); saves building and holding the dense arrays.
    dense_masks: bool = True

    def _finalize(self, logits, keep, feats, sem, label, target: TargetImage) -> list[Instance]:
        """§4.6-4.8: full-resolution masks, soft merging, top-k → instances.

        Fast path: :mod:`ntt_batch.method.fullres` computes the same masks, counts and scores with
        buffers bounded by ``merge_memory_mb`` (exact: same masks and boxes, scores bit-identical
        under 16.7 MP, see there). Reference path: :meth:`_finalize_reference`, all at once.
        """
        if self.config.implementation == "reference":
            return self._finalize_reference(logits, keep, feats, sem, label, target)
        from .fullres import same_class_intersections, soft_merge_scores_from_counts, upsample_to_runs

        cfg = self.config
        budget = cfg.merge_memory_mb * 2**20
        # §4.6: the kept low-res logits upsampled straight to the original size, as runs.
        runs = upsample_to_runs(self._crop_valid(logits[keep], target), target.orig_hw, budget)
        nonempty = torch.nonzero(runs.area > 0).flatten()  # §8.6: an empty full-res mask would give NaN
        if nonempty.numel() == 0:
            return []
        keep = keep[nonempty]
        labels_k = label[keep]
        # §4.7 soft merging from exact same-class intersection counts, then §4.8 top-k.
        labels_all = torch.full((runs.num_masks,), -1, dtype=labels_k.dtype, device=labels_k.device)
        labels_all[nonempty] = labels_k
        inter = same_class_intersections(runs, labels_all, budget)[nonempty][:, nonempty]
        final = soft_merge_scores_from_counts(inter, runs.area[nonempty], feats[keep], labels_k, sem[keep],
                                              cfg.merge_exponent)
        order = torch.argsort(final, descending=True, stable=True)[: cfg.max_detections]
        which = nonempty[order].tolist()  # mask indices in ``runs``
        boxes_full = runs.box[nonempty[order]].cpu().numpy()
        scores = final[order].cpu().numpy()
        labels = labels_k[order].cpu().numpy()
        h, w = target.orig_hw
        dense = self.dense_masks and len(order) * h * w <= budget
        return [
            Instance(
                mask=runs.dense(which[j]) if dense else None,
                bbox=xyxy_to_coco_xywh([float(v) for v in boxes_full[j]]),
                score=float(scores[j]),
                category_id=self.bank.category_ids[int(labels[j])],
                category_name=self.bank.category_names[int(labels[j])],
                rle=runs.rle(which[j]),
            )
            for j in range(len(order))
        ]

    def _finalize_reference(self, logits, keep, feats, sem, label, target: TargetImage) -> list[Instance]:
        """§4.6-4.8 as method.md states them: every kept mask at full size (float32, then bool),
        a float32 Gram matrix per class, top-k. Memory M·H·W; the baseline of the fast path."""
        cfg = self.config
        # §4.6: upsample the kept low-res logits straight to the original size.
        masks = self._to_original(logits[keep], target)  # [M, H, W] bool
        nonempty = masks.flatten(1).any(dim=1)  # §8.6: an empty full-res mask would give NaN
        keep, masks = keep[nonempty], masks[nonempty]
        if keep.numel() == 0:
            return []

        # §4.7 soft merging, then §4.8 top-k by final score.
        final = soft_merge_scores(masks, feats[keep], label[keep], sem[keep], cfg.merge_exponent)
        order = torch.argsort(final, descending=True, stable=True)[: cfg.max_detections]
        boxes_full = masks_to_boxes_inclusive(masks[order]).cpu().numpy()
        masks_np = masks[order].cpu().numpy()
        scores = final[order].cpu().numpy()
        labels = label[keep][order].cpu().numpy()
        return [
            Instance(
                mask=masks_np[j],
                bbox=xyxy_to_coco_xywh(boxes_full[j].tolist()),
                score=float(scores[j]),
                category_id=self.bank.category_ids[int(labels[j])],
                category_name=self.bank.category_names[int(labels[j])],
            )
            for j in range(len(order))
        ]

    def _crop_valid(self, logits: Tensor, target: TargetImage) -> Tensor:
        """[M, h, w] low-res logits → the part that covers the image (letterbox: padding cropped)."""
        lh, lw = logits.shape[-2:]
        vh, vw = target.valid_hw
        s = self.config.image_size
        if (vh, vw) != (s, s):
            logits = logits[:, : max(1, round(vh * lh / s)), : max(1, round(vw * lw / s))]
        return logits

    def _to_original(self, logits: Tensor, target: TargetImage) -> Tensor:
        """[M, h, w] low-res logits → [M, H, W] bool masks at the original size (§4.6), all at once."""
        logits = self._crop_valid(logits, target)
        up = F.interpolate(logits[:, None], size=target.orig_hw, mode="bilinear", align_corners=False, antialias=True)
        return up[:, 0] > 0
