"""Target inference: proposals → matching → NMS → merging → top-k (method.md §4).

The small functions are the math, each testable on hand-built tensors; :class:`MethodSegmenter`
strings them together around its parts, each behind an interface:

* a *proposer* (``models.proposers.MaskProposer``: SAM 2 / 2.1 point-grid prompting, §4.2);
* an *encoder* (``models.encoders.ImageEncoder``: DINOv2, DINOv3; patch features, §4.3);
* a *matcher* (``method.matching``: pooled mask features against the class prototypes, §4.4);
* a *merger* (``method.mergers.MERGERS``: soft merging §4.7, graph-diffusion rescoring, plug-ins).

Shapes: N candidates, C classes, D feature channels, (h, w) = low-res mask grid (256²),
(H, W) = original image size.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import batched_nms

from ..models.encoders import ImageEncoder
from ..models.proposers import MaskProposer, ProposerFeatures
from ..storage.masks import decode_rle, encode_rle, xyxy_to_coco_xywh
from .config import SegmenterConfig
from .fullres import dense_from_runs, rle_from_runs, same_class_intersections, upsample_to_runs
from .matching import Matcher, build_matcher
from .memory_bank import MemoryBank
from .mergers import build_merger
from .merging import intersection_counts, soft_merge_scores
from .preprocess import prepare_target
from .tiling import TILE_BATCH, Piece, merge_pieces, needs_tiling, runs_from_dense, tile_grid

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


# ----------------------------------------------------------------------------- orchestration


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

    resized: np.ndarray | None  # [S, S, 3] uint8, from prepare_target (None: tiled, see ``source``)
    valid_hw: tuple[int, int] | None  # region of ``resized`` that holds the image (letterbox)
    orig_hw: tuple[int, int]  # (H, W) of the original image
    # The original pixels of an image to be segmented tile by tile (``config.tile_size``, see
    # method/tiling.py); ``resized`` and ``valid_hw`` are then None: no resize of the whole image.
    source: np.ndarray | None = None

    @classmethod
    def from_image(cls, image: np.ndarray, config: SegmenterConfig) -> TargetImage:
        hw = (int(image.shape[0]), int(image.shape[1]))
        if needs_tiling(hw, config):
            return cls(None, None, hw, source=image)
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


class MethodSegmenter:
    """The method's segmenter (method.md §4): models + memory bank + config; in-memory images in,
    instances out. The batch job's actors, ``ntt-batch segment`` and the public
    :class:`ntt_batch.api.Segmenter` (which wraps one, adding image loading and thresholds) all run it.

    Args:
        proposer: mask proposer (``models.proposers.MaskProposer``, SAM 2 / 2.1).
        encoder: image encoder (``models.encoders.ImageEncoder``); must be the one the bank was
            built with. ``config.encoder_image_size`` None resolves to its native input side.
        bank: the memory bank (class prototypes, category ids and names).
        config: :class:`SegmenterConfig`; ``config.merger`` picks the merger (``method.merging``).
        matcher: how candidates are scored against the bank (default: what ``config`` asks for, see
            ``matching.build_matcher``: the method's, §4.3-4.4, or with ``use_negatives`` the
            negative-aware one).
    """

    def __init__(
        self,
        proposer: MaskProposer,
        encoder: ImageEncoder,
        bank: MemoryBank,
        config: SegmenterConfig,
        matcher: Matcher | None = None,
    ):
        self.config = config.validate().for_encoder(encoder.patch_size, encoder.native_image_size)
        self.device = resolve_device(config.device)
        self.proposer = proposer.to(self.device)
        self.encoder = encoder.to(self.device)
        self.bank = bank
        self.matcher = matcher or build_matcher(self.config, bank, self.device)
        self.merger = build_merger(self.config)
        self.prototypes = bank.class_prototypes.to(self.device, torch.float32)  # [C, D]
        if proposer.image_size != config.image_size:
            raise ValueError(f"proposer input size {proposer.image_size} != config image_size {config.image_size}")
        self.points = point_grid(config.points_per_side, config.image_size, config.point_grid).to(self.device)
        self.timer: StageTimer | None = None  # set one to get per-stage seconds (the benchmark does)
        # The model callables. With ``compile`` they are torch.compile'd wrappers around the same
        # modules (no copies: the proposer and encoder objects, which other segmenters may share,
        # are left as they are). Static shapes: a new batch size compiles once more.
        self._sam_encode = self.proposer.encode
        self._encode_patches = self.encoder
        self._decoder_front = None  # compiled PointGridDecoder.front, built on first use
        self._compiled_batch: int | None = None  # the prompt batch size the decoder was compiled for
        if self.config.compile:
            self._sam_encode = torch.compile(self.proposer.encode, dynamic=False)
            self._encode_patches = torch.compile(self.encoder, dynamic=False)

    def _stage(self, name: str):
        return self.timer(name) if self.timer is not None else contextlib.nullcontext()

    def _autocast(self):
        """bf16 autocast for the model forwards when ``bf16`` is set (CUDA or CPU), else nothing."""
        if self.config.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _images_to_device(self, targets: Sequence[TargetImage]) -> Tensor:
        """The batch's proposer inputs as one uint8 [B, S, S, 3] tensor on the device.

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

        The proposer's and the encoder's image encoders each take all B images in one forward
        (that is where a GPU wants a batch); the mask decoder then runs per image over its prompt
        grid, in prompt batches sized to free memory (the whole 32×32 grid at once on a large GPU).
        Targets to be tiled (``source`` set) are segmented tile by tile instead.
        """
        out: list[list[Instance] | None] = [None] * len(targets)
        whole = [i for i, t in enumerate(targets) if t.source is None]
        for i, t in enumerate(targets):
            if t.source is not None:
                out[i] = self._segment_tiled(t.source)
        if whole:
            for i, instances in zip(whole, self._segment_whole([targets[i] for i in whole])):
                out[i] = instances
        return out

    def _segment_whole(self, targets: Sequence[TargetImage]) -> list[list[Instance]]:
        x = self._images_to_device(targets)
        x = x.permute(0, 3, 1, 2).float() / 255.0  # [B, 3, S, S] in [0, 1]
        with self._autocast():
            with self._stage("sam2_encoder"):
                sam_feats = self._sam_encode(x)
            with self._stage("encoder"):
                # §4.3: torch bicubic S → encoder side (518 for DINOv2), no antialias, from the same [0, 1] tensor.
                e = self.config.encoder_image_size
                x_enc = F.interpolate(x, size=(e, e), mode="bicubic", align_corners=False)
                patch_feats = self._encode_patches(x_enc)  # [B, gh, gw, D]
        patch_feats = patch_feats.float()  # pooling and similarities in fp32 (also under bf16)
        return [self._segment_one(sam_feats.select(i), patch_feats[i], t) for i, t in enumerate(targets)]

    def _segment_tiled(self, image: np.ndarray) -> list[Instance]:
        """A large image (``tile_size``) tile by tile, merged across tile borders (method/tiling.py)."""
        cfg = self.config
        h, w = int(image.shape[0]), int(image.shape[1])
        tiles = tile_grid((h, w), int(cfg.tile_size), cfg.tile_overlap_px())
        pieces: list[Piece] = []
        for b0 in range(0, len(tiles), TILE_BATCH):
            batch = tiles[b0 : b0 + TILE_BATCH]
            targets = [TargetImage.from_image(image[y0:y1, x0:x1], cfg) for (y0, x0, y1, x1) in batch]
            dense, self.dense_masks = self.dense_masks, False  # tile masks come back as RLE only
            try:
                results = self._segment_whole(targets)
            finally:
                self.dense_masks = dense
            for k, ((y0, x0, _, _), instances) in enumerate(zip(batch, results)):
                for inst in instances:
                    col, start, end = runs_from_dense(inst.binary_mask())  # decoded, not kept
                    if col.size == 0:
                        continue
                    pieces.append(
                        Piece.from_runs(
                            col, start, end, inst.score, inst.category_id, inst.category_name, b0 + k, origin=(y0, x0)
                        )
                    )
            del results, targets
        budget = cfg.merge_memory_mb * 2**20
        merged = merge_pieces(pieces, cfg.tile_merge_threshold, budget)[: cfg.max_detections]
        dense = self.dense_masks and len(merged) * h * w <= budget
        return [
            Instance(
                mask=dense_from_runs((h, w), *p.runs) if dense else None,
                bbox=xyxy_to_coco_xywh([float(v) for v in p.box]),
                score=p.score,
                category_id=p.category_id,
                category_name=p.category_name,
                rle=rle_from_runs((h, w), *p.runs),
            )
            for p in merged
        ]

    def _propose(self, sam_feats: ProposerFeatures) -> tuple[Tensor, Tensor]:
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

    def _propose_fast(self, sam_feats: ProposerFeatures) -> tuple[Tensor, Tensor]:
        """Same result as :meth:`_propose`, computed by the proposer's point decoder when it has one.

        The decoder picks the best multimask output and applies the IoU filter before it builds any
        mask, so only surviving prompts are upscaled (see ``models.sam2_point_decoder``). Batches
        are sized to memory instead of fixed at ``points_batch_size``. Under bf16 the IoU head
        and the filter run in fp32 (on the bf16 transformer's tokens). With ``compile`` the
        transformer + IoU head is compiled for one fixed prompt batch size: a short last batch is
        padded with copies of its last point and the padding dropped before the filter.
        """
        dec = self.proposer.point_decoder()
        if dec is None:  # a proposer without a faster decoder (the interface allows it)
            return self._propose(sam_feats)
        front = dec.front
        if self.config.compile:
            if self._decoder_front is None:
                self._decoder_front = torch.compile(dec.front, dynamic=False)
            front = self._decoder_front
        n = self.points.shape[0]
        bs = self._fast_decoder_batch()
        if self.config.compile:  # one compiled shape: keep the first batch size
            bs = self._compiled_batch = self._compiled_batch or bs
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
                _, lg, iou = dec.select_and_upscale(
                    state, hs, keys, iou, best, self.config.pred_iou_threshold, upscale_batch=upscale
                )
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

    def _segment_one(self, sam_feats: ProposerFeatures, patch_feats: Tensor, target: TargetImage) -> list[Instance]:
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
        lr_masks = logits > 0  # [N, h, w]
        # §4.3-4.4: the matcher (default: bilinear features, mask pooling, clamped cosine, topk).
        feats, sem, label = self.matcher.match(lr_masks, patch_feats, self.prototypes, fast)

        candidates = torch.arange(logits.shape[0], device=logits.device)
        if cfg.drop_unmatched_before_nms:
            candidates = candidates[sem > 0]

        # §4.5: class-aware NMS on 256-grid boxes ranked by predicted IoU; keep ≤ 8·100.
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
        """§4.6-4.8: full-resolution masks, merging, top-k → instances.

        Fast path: :mod:`ntt_batch.method.fullres` computes the same masks, counts and scores with
        buffers bounded by ``merge_memory_mb`` (exact: same masks and boxes, scores bit-identical
        under 16.7 MP, see there). Reference path: :meth:`_finalize_reference`, all at once.
        """
        if self.config.implementation == "reference":
            return self._finalize_reference(logits, keep, feats, sem, label, target)
        cfg = self.config
        budget = cfg.merge_memory_mb * 2**20
        # §4.6: the kept low-res logits upsampled straight to the original size, as runs.
        runs = upsample_to_runs(self._crop_valid(logits[keep], target), target.orig_hw, budget)
        nonempty = torch.nonzero(runs.area > 0).flatten()  # §8.6: an empty full-res mask would give NaN
        if nonempty.numel() == 0:
            return []
        keep = keep[nonempty]
        labels_k = label[keep]
        # §4.7 merging from exact same-class intersection counts, then §4.8 top-k.
        labels_all = torch.full((runs.num_masks,), -1, dtype=labels_k.dtype, device=labels_k.device)
        labels_all[nonempty] = labels_k
        inter = same_class_intersections(runs, labels_all, budget)[nonempty][:, nonempty]
        final = self.merger.merge_scores(inter, runs.area[nonempty], feats[keep], labels_k, sem[keep])
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

        # §4.7 merging (soft: on the masks, as method.md writes it), then §4.8 top-k by final score.
        if cfg.merger == "soft":
            final = soft_merge_scores(masks, feats[keep], label[keep], sem[keep], cfg.merge_exponent)
        else:
            inter, areas = intersection_counts(masks, label[keep])
            final = self.merger.merge_scores(inter, areas, feats[keep], label[keep], sem[keep])
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
