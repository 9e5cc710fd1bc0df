"""SAM 2 as a mask proposer: image encoder + prompt encoder + mask decoder, nothing else.

The model is the official ``sam2`` package's, built from its own hydra configs and loaded from
the official checkpoint layout (``{"model": state_dict}``) with ``torch.load(weights_only=True)``.
Only ``forward_image``, the prompt encoder and the mask decoder are used (method.md §4.2, §6);
the video/memory modules are built (they are in the checkpoint) but never run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .normalize import IMAGENET_MEAN, IMAGENET_STD
from .registry import get_spec


def _build_sam2_module(config_name: str) -> nn.Module:
    """Instantiate a randomly initialised SAM2 model from a config inside the ``sam2`` package.

    ``build_sam2_video_predictor`` as the reference does (method.md §6); its build-time overrides
    (dynamic multimask via stability, hole filling, binarised memory masks) do not touch the
    multimask point-prompt path used here.
    """
    from sam2.build_sam import build_sam2_video_predictor

    return build_sam2_video_predictor(config_name, ckpt_path=None, device="cpu", mode="eval")


def load_sam2_state_dict(path: str) -> dict[str, Tensor]:
    """Read an official SAM2 checkpoint file (``{"model": state_dict}``) safely."""
    from .checkpoint_files import load_checkpoint_file

    obj = load_checkpoint_file(path)  # torch.load(weights_only=True); one-line error naming a bad file
    if not isinstance(obj, dict) or "model" not in obj or not isinstance(obj["model"], dict):
        raise ValueError(
            f"{path}: not an official SAM2 checkpoint (expected a dict with key 'model' holding the state dict)"
        )
    return obj["model"]


def random_sam2_state_dict(name: str, seed: int = 0) -> dict[str, Tensor]:
    """Random-initialised SAM2 weights for model ``name`` in the exact official key layout."""
    spec = get_spec(name, "sam2")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _build_sam2_module(spec.sam2_config)
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


@dataclass
class Sam2Features:
    """SAM2 image features for a batch of B images at 1024² input.

    Attributes:
        image_embed: [B, 256, 64, 64] stride-16 embedding fed to the mask decoder.
        high_res: ([B, 32, 256, 256], [B, 64, 128, 128]) already through ``conv_s0``/``conv_s1``.
    """

    image_embed: Tensor
    high_res: tuple[Tensor, Tensor]

    def select(self, i: int) -> Sam2Features:
        """Features of image ``i`` only (batch dim kept, size 1)."""
        return Sam2Features(self.image_embed[i : i + 1], tuple(h[i : i + 1] for h in self.high_res))


class Sam2Proposer(nn.Module):
    """Wraps a built SAM2 model for point-grid and box prompting.

    Args:
        model: a ``sam2`` SAM2Base model (weights loaded).
        add_no_mem_embed: add the learned ``no_mem_embed`` to the image embedding as both official
            predictors do. The reference skips it (method.md §8.1), so the faithful default is
            False; set True to match ``SAM2ImagePredictor``.
    """

    def __init__(self, model: nn.Module, add_no_mem_embed: bool = False):
        super().__init__()
        self.model = model
        self.add_no_mem_embed = add_no_mem_embed
        self.image_size: int = int(model.image_size)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Sam2Features:
        """images: [B, 3, S, S] float RGB in [0, 1], S = ``image_size`` (1024). ImageNet-normalised here."""
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"SAM2 expects {self.image_size}² inputs, got {tuple(images.shape)}")
        x = (images - self.mean) / self.std
        backbone_out = self.model.forward_image(x)
        _, vision_feats, _, feat_sizes = self.model._prepare_backbone_features(backbone_out)
        if self.add_no_mem_embed:
            vision_feats[-1] = vision_feats[-1] + self.model.no_mem_embed
        b = images.shape[0]
        # [HW, B, C] -> [B, C, H, W], as SAM2ImagePredictor.set_image does.
        feats = [f.permute(1, 2, 0).reshape(b, -1, h, w) for f, (h, w) in zip(vision_feats, feat_sizes)]
        return Sam2Features(image_embed=feats[-1], high_res=(feats[0], feats[1]))

    @torch.no_grad()
    def decode_points(self, features: Sam2Features, points: Tensor) -> tuple[Tensor, Tensor]:
        """One positive click per prompt (method.md §4.2).

        Args:
            features: features of ONE image (batch 1).
            points: [N, 2] (x, y) in input-pixel coordinates (0..S); the prompt encoder adds 0.5
                and divides by S itself.
        Returns:
            low_res_logits: [N, 3, 256, 256] the three multimask outputs (tokens 1..3), logits.
            iou_pred: [N, 3] predicted IoU (sigmoid) of each.
        """
        coords = points[:, None, :].to(features.image_embed.dtype)
        labels = torch.ones(points.shape[0], 1, dtype=torch.int, device=points.device)
        return self._decode((coords, labels), None, features, multimask=True)

    def point_decoder(self):
        """The fast multimask point decoder over this model's weights (built once, shares the modules)."""
        if getattr(self, "_point_decoder", None) is None:
            from .sam2_point_decoder import PointGridDecoder

            self._point_decoder = PointGridDecoder(self.model)
        return self._point_decoder

    @torch.no_grad()
    def decode_boxes(self, features: Sam2Features, boxes: Tensor) -> tuple[Tensor, Tensor]:
        """Box prompts (used to turn box-only references into masks, method.md §5.4).

        Args:
            boxes: [N, 4] xyxy in input-pixel coordinates.
        Returns:
            low_res_logits [N, 1, 256, 256] and iou_pred [N, 1] (single-mask output).
        """
        return self._decode(None, boxes.to(features.image_embed.dtype), features, multimask=False)

    def _decode(self, points, boxes, features: Sam2Features, multimask: bool) -> tuple[Tensor, Tensor]:
        if features.image_embed.shape[0] != 1:
            raise ValueError("decode one image at a time: use Sam2Features.select(i)")
        sparse, dense = self.model.sam_prompt_encoder(points=points, boxes=boxes, masks=None)
        masks, iou_pred, _, _ = self.model.sam_mask_decoder(
            image_embeddings=features.image_embed,
            image_pe=self.model.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
            repeat_image=True,  # broadcast the single image embedding over the prompt batch
            high_res_features=list(features.high_res),
        )
        return masks, iou_pred


def build_sam2_proposer(
    name: str, state_dict: dict[str, Tensor] | None = None, *, add_no_mem_embed: bool = False
) -> Sam2Proposer:
    """Build SAM2 ``name`` from the sam2 package's config; load ``state_dict`` (official layout) strictly."""
    spec = get_spec(name, "sam2")
    model = _build_sam2_module(spec.sam2_config)
    if state_dict is not None:
        try:
            missing, unexpected = model.load_state_dict(state_dict, strict=False)
        except RuntimeError as e:  # shape mismatches
            raise ValueError(f"checkpoint does not match {name} (a different SAM2 size or version?): {e}") from e
        if missing or unexpected:
            raise ValueError(
                f"checkpoint does not match {name}: missing keys {missing[:5]}{'…' if len(missing) > 5 else ''}, "
                f"unexpected keys {unexpected[:5]}{'…' if len(unexpected) > 5 else ''} "
                "(is it a checkpoint of a different SAM2 size or version?)"
            )
    return Sam2Proposer(model.eval(), add_no_mem_embed=add_no_mem_embed)
