"""DINOv3 image encoders (ViT-S/16, S+/16, B/16, L/16, H+/16) on timm's ``Eva``, loading the official checkpoints.

The encoder returns what the official ``DinoVisionTransformer.forward_features(x)["x_norm_patchtokens"]``
returns -- the last block's patch tokens after the final LayerNorm, CLS and the 4 storage (register)
tokens dropped -- reshaped to [B, H/16, W/16, D], in fp32. ntt-batch feeds DINOv3 512x512 images by
default (a 32x32 patch grid, :data:`NATIVE_IMAGE_SIZE`). DINOv3 has no learned positional embedding:
positions enter only through axial RoPE on the patch tokens' queries and keys, so any H, W that are
multiples of 16 work without interpolation.

Source of truth: facebookresearch/dinov3 (``dinov3/models/vision_transformer.py``, ``dinov3/layers/*``,
``dinov3/hub/backbones.py``). The five LVD-1689M backbones (``dinov3_vits16`` ... ``dinov3_vith16plus``,
the torch-hub names) are all built by ``_make_dinov3_vit`` with ``patch_size=16``, ``n_storage_tokens=4``,
``layerscale_init=1e-5``, ``norm_layer="layernormbf16"`` (``nn.LayerNorm(eps=1e-5)``), ``qkv_bias=True``
with ``mask_k_bias=True``, ``proj_bias = ffn_bias = True``, RoPE ``base=100``, ``normalize_coords=
"separate"``, ``rescale_coords=2`` (training only), ``pos_embed_rope_dtype="fp32"``, and
``untie_cls_and_patch_norms = untie_global_and_local_cls_norm = False``:

==================  =====  =====  =====  =========  ===========================
name                D      depth  heads  ffn_ratio  FFN
==================  =====  =====  =====  =========  ===========================
dinov3_vits16       384    12     6      4          GELU MLP 1536
dinov3_vits16plus   384    12     6      6          SwiGLU, hidden 1536
dinov3_vitb16       768    12     12     4          GELU MLP 3072
dinov3_vitl16       1024   24     16     4          GELU MLP 4096
dinov3_vith16plus   1280   32     20     6          SwiGLU, hidden 5120
==================  =====  =====  =====  =========  ===========================

(SwiGLU hidden = ``int(int(D * ffn_ratio) * 2 / 3)`` rounded up to a multiple of 8, ``SwiGLUFFN``.)

Official state-dict layout (strict ``load_state_dict`` in ``_make_dinov3_vit``; order as ``state_dict()``):

* ``cls_token`` [1,1,D], ``storage_tokens`` [1,4,D], ``mask_token`` [1,D] (training only),
  ``patch_embed.proj.{weight,bias}`` (Conv2d 3->D, kernel = stride = 16),
  ``rope_embed.periods`` [D_head/4] (a *persistent* buffer: ``base ** (2 i / (D_head/2))``; the released
  checkpoints reportedly hold it rounded to bf16 -- timm's eva.py says so -- and the official model
  uses the stored values, so this encoder does too instead of recomputing them);
* per block ``blocks.i.norm1.{weight,bias}``, ``blocks.i.attn.qkv.{weight,bias}``,
  ``blocks.i.attn.qkv.bias_mask`` [3D] (``LinearKMaskedBias``: the qkv bias is multiplied by this buffer,
  initialised to 1 for q and v and 0 for k), ``blocks.i.attn.proj.{weight,bias}``, ``blocks.i.ls1.gamma``,
  ``blocks.i.norm2.{weight,bias}``, the FFN -- ``blocks.i.mlp.fc{1,2}.{weight,bias}`` (GELU MLP) or
  ``blocks.i.mlp.w{1,2,3}.{weight,bias}`` (``SwiGLUFFN``: ``w3(silu(w1(x)) * w2(x))``) -- and
  ``blocks.i.ls2.gamma``;
* ``norm.{weight,bias}``. No ``pos_embed``.

Official forward at inference: tokens = ``[cls, storage x4, patches]``; each block is
``x + ls1(attn(norm1(x))) ; x + ls2(mlp(norm2(x)))``; attention applies RoPE to q and k of the patch
tokens only (the 5 prefix tokens are not rotated), with coordinates ``2 * (arange(0.5, n) / n) - 1`` per
axis ("separate"), angles ``2 pi * coord / periods`` laid out ``[h-freqs, w-freqs]`` tiled twice, and
``rotate_half``; RoPE's shift/jitter/rescale augmentations are training-only.

timm 1.0.31 has these models (``vit_*_patch16_dinov3``, built on ``Eva``). Its plain variants drop the
qkv bias entirely (timm notes that the distilled models' biases ended up zero); the ``_qkvb`` variants
keep ``q_bias`` / ``v_bias`` parameters and a (non-persistent, zero) ``k_bias`` buffer. This module uses
the ``_qkvb`` variants, so any official-layout state dict is reproduced exactly:
``q_bias, k_bias, v_bias = (qkv.bias * qkv.bias_mask).chunk(3)`` (k_bias is written into the buffer,
so even a non-zero masked k bias -- which matters under RoPE -- is honoured), ``storage_tokens`` ->
``reg_token``, ``ls{1,2}.gamma`` -> ``gamma_{1,2}``, ``mlp.w1/w2/w3`` -> ``mlp.fc1_g/fc1_x/fc2`` (timm's
``SwiGLU``: ``fc2(silu(fc1_g(x)) * fc1_x(x))``), ``rope_embed.periods`` -> ``rope.periods`` (a
non-persistent buffer in timm, filled after the strict load), ``mask_token`` dropped.
The encoder builds the RoPE sin/cos itself, in fp32, exactly as the official ``RopePositionEmbedding``
does, from those periods, and runs timm's blocks and final norm.

Checkpoints (file names, digest prefixes, licence): ``models/registry.py``. They are under the DINOv3
License (not Apache-2.0) and only downloadable through the URLs Meta e-mails after its access form.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .dinov2 import IMAGENET_MEAN, IMAGENET_STD, load_state_dict_file

__all__ = [
    "DINOV3_MODELS",
    "NATIVE_IMAGE_SIZE",
    "PATCH_SIZE",
    "DinoV3Arch",
    "DinoV3Encoder",
    "build_dinov3",
    "load_state_dict_file",
    "official_key_shapes",
    "official_to_timm_state_dict",
    "random_official_state_dict",
    "rope_sin_cos",
]

PATCH_SIZE = 16
NATIVE_IMAGE_SIZE = 512  # ntt-batch's default DINOv3 input side: a 32 x 32 patch grid (RoPE: any multiple of 16 works)
NUM_STORAGE_TOKENS = 4
LAYER_NORM_EPS = 1e-5  # official norm_layer="layernormbf16" = nn.LayerNorm(eps=1e-5)
ROPE_BASE = 100.0


@dataclass(frozen=True)
class DinoV3Arch:
    """Architecture of one official DINOv3 ViT backbone and the timm model that represents it."""

    timm_name: str  # the ``_qkvb`` variant (keeps the q/v biases, see the module docstring)
    embed_dim: int
    depth: int
    num_heads: int
    ffn_ratio: float
    swiglu: bool  # official ffn_layer "swiglu" (SwiGLUFFN, align_to=8) instead of "mlp"
    num_register_tokens: int = NUM_STORAGE_TOKENS  # official n_storage_tokens
    params: str = ""  # parameter count as published in the official README

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def ffn_hidden(self) -> int:
        """Hidden width of the FFN (SwiGLU: of each of ``w1``/``w2``, i.e. ``w3``'s input)."""
        hidden = int(self.embed_dim * self.ffn_ratio)  # SelfAttentionBlock: mlp_hidden_dim = int(dim * ffn_ratio)
        if self.swiglu:  # SwiGLUFFN: d = int(hidden * 2 / 3); d + (-d % align_to), align_to = 8
            d = int(hidden * 2 / 3)
            return d + (-d % 8)
        return hidden


DINOV3_MODELS: dict[str, DinoV3Arch] = {
    "dinov3_vits16": DinoV3Arch("vit_small_patch16_dinov3_qkvb", 384, 12, 6, 4.0, False, params="21M"),
    "dinov3_vits16plus": DinoV3Arch("vit_small_plus_patch16_dinov3_qkvb", 384, 12, 6, 6.0, True, params="29M"),
    "dinov3_vitb16": DinoV3Arch("vit_base_patch16_dinov3_qkvb", 768, 12, 12, 4.0, False, params="86M"),
    "dinov3_vitl16": DinoV3Arch("vit_large_patch16_dinov3_qkvb", 1024, 24, 16, 4.0, False, params="300M"),
    "dinov3_vith16plus": DinoV3Arch("vit_huge_plus_patch16_dinov3_qkvb", 1280, 32, 20, 6.0, True, params="840M"),
}


def _arch(name: str) -> DinoV3Arch:
    try:
        return DINOV3_MODELS[name]
    except KeyError:
        raise ValueError(f"unknown DINOv3 model {name!r}; valid names: {', '.join(DINOV3_MODELS)}") from None


# --------------------------------------------------------------------------------------
# Official layout
# --------------------------------------------------------------------------------------


def official_rope_periods(head_dim: int, base: float = ROPE_BASE) -> Tensor:
    """``RopePositionEmbedding._init_weights`` (``base`` form) in fp32: ``base ** (2 i / (head_dim / 2))``."""
    return base ** (2 * torch.arange(head_dim // 4, dtype=torch.float32) / (head_dim // 2))


def official_key_shapes(name: str, depth: int | None = None) -> dict[str, tuple[int, ...]]:
    """The official state-dict keys and shapes, in the order ``DinoVisionTransformer.state_dict()`` lists them."""
    arch = _arch(name)
    d = arch.embed_dim
    shapes: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, d),
        "storage_tokens": (1, arch.num_register_tokens, d),
        "mask_token": (1, d),
        "patch_embed.proj.weight": (d, 3, PATCH_SIZE, PATCH_SIZE),
        "patch_embed.proj.bias": (d,),
        "rope_embed.periods": (arch.head_dim // 4,),
    }
    h = arch.ffn_hidden
    for i in range(arch.depth if depth is None else int(depth)):
        b = f"blocks.{i}."
        shapes[b + "norm1.weight"] = (d,)
        shapes[b + "norm1.bias"] = (d,)
        shapes[b + "attn.qkv.weight"] = (3 * d, d)
        shapes[b + "attn.qkv.bias"] = (3 * d,)
        shapes[b + "attn.qkv.bias_mask"] = (3 * d,)
        shapes[b + "attn.proj.weight"] = (d, d)
        shapes[b + "attn.proj.bias"] = (d,)
        shapes[b + "ls1.gamma"] = (d,)
        shapes[b + "norm2.weight"] = (d,)
        shapes[b + "norm2.bias"] = (d,)
        if arch.swiglu:
            for w in ("w1", "w2"):
                shapes[b + f"mlp.{w}.weight"] = (h, d)
                shapes[b + f"mlp.{w}.bias"] = (h,)
            shapes[b + "mlp.w3.weight"] = (d, h)
            shapes[b + "mlp.w3.bias"] = (d,)
        else:
            shapes[b + "mlp.fc1.weight"] = (h, d)
            shapes[b + "mlp.fc1.bias"] = (h,)
            shapes[b + "mlp.fc2.weight"] = (d, h)
            shapes[b + "mlp.fc2.bias"] = (d,)
        shapes[b + "ls2.gamma"] = (d,)
    shapes["norm.weight"] = (d,)
    shapes["norm.bias"] = (d,)
    return shapes


def random_official_state_dict(name: str, seed: int = 0, depth: int | None = None) -> dict[str, Tensor]:
    """Random fp32 weights in the exact official key layout and shapes (for smoke runs / tests).

    Deterministic for ``seed`` (a private ``torch.Generator``; the global RNG is untouched). The scales
    make every part of the network matter numerically: weights ~ N(0, 1/fan_in), small random biases
    (the k third of ``qkv.bias`` too, which the official ``bias_mask`` then zeroes), LayerNorm affine near
    (1, 0), cls/storage tokens ~ N(0, 0.25), LayerScale gammas in [0.1, 0.5] (the official init 1e-5
    would make blocks near-identities). Buffers as the official ``init_weights`` leaves them:
    ``rope_embed.periods`` = ``100 ** (2 i / (D_head / 2))`` in fp32, ``bias_mask`` = 1 for q and v, 0 for
    k; ``mask_token`` zeros (its official init; unused at inference).
    """
    arch = _arch(name)
    gen = torch.Generator().manual_seed(int(seed))

    def normal(shape: tuple[int, ...], std: float) -> Tensor:
        return torch.randn(shape, generator=gen, dtype=torch.float32) * std

    out: dict[str, Tensor] = {}
    for key, shape in official_key_shapes(name, depth=depth).items():
        if key == "mask_token":
            value = torch.zeros(shape, dtype=torch.float32)
        elif key == "rope_embed.periods":
            value = official_rope_periods(arch.head_dim)
        elif key.endswith("bias_mask"):
            value = torch.ones(shape, dtype=torch.float32)
            o = shape[0]
            value[o // 3 : 2 * o // 3] = 0.0  # init_weights_vit: bias_mask[o // 3 : 2 * o // 3] = 0
        elif key in ("cls_token", "storage_tokens"):
            value = normal(shape, 0.5)
        elif key.endswith("gamma"):
            value = 0.1 + 0.4 * torch.rand(shape, generator=gen, dtype=torch.float32)
        elif "norm" in key and key.endswith(".weight"):
            value = 1.0 + normal(shape, 0.1)
        elif key.endswith(".bias"):
            value = normal(shape, 0.1)
        else:  # Linear / Conv weights
            value = normal(shape, 1.0 / math.sqrt(math.prod(shape[1:])))
        out[key] = value
    return out


def _check_official_keys(state_dict: Mapping[str, Tensor], name: str, depth: int | None) -> None:
    """Raise ``RuntimeError`` naming missing, unexpected and mis-shaped official keys (``mask_token`` optional)."""
    expected = official_key_shapes(name, depth=depth)
    missing = [k for k in expected if k not in state_dict and k != "mask_token"]
    unexpected = [k for k in state_dict if k not in expected]
    mis_shaped = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {expected[k]}"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != expected[k]
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if mis_shaped:
        problems.append(f"size mismatches [{'; '.join(mis_shaped)}]")
    if problems:
        raise RuntimeError(f"{name}: checkpoint does not match the model: " + ", ".join(problems))


_OFFICIAL_BLOCK_RENAMES = (
    (re.compile(r"^(blocks\.\d+\.)ls1\.gamma$"), r"\1gamma_1"),
    (re.compile(r"^(blocks\.\d+\.)ls2\.gamma$"), r"\1gamma_2"),
    (re.compile(r"^(blocks\.\d+\.mlp\.)w1\.(weight|bias)$"), r"\1fc1_g.\2"),
    (re.compile(r"^(blocks\.\d+\.mlp\.)w2\.(weight|bias)$"), r"\1fc1_x.\2"),
    (re.compile(r"^(blocks\.\d+\.mlp\.)w3\.(weight|bias)$"), r"\1fc2.\2"),
)
_QKV_BIAS = re.compile(r"^(blocks\.\d+\.attn\.)qkv\.bias$")
_QKV_BIAS_MASK = re.compile(r"^blocks\.\d+\.attn\.qkv\.bias_mask$")

# timm entries that are non-persistent buffers (not part of timm's state_dict(); set after the strict load)
_TIMM_BUFFER_KEY = re.compile(r"^(rope\.periods|blocks\.\d+\.attn\.k_bias)$")


def official_to_timm_state_dict(state_dict: Mapping[str, Tensor], name: str) -> dict[str, Tensor]:
    """Map an official DINOv3 state dict onto the timm ``Eva`` ``_qkvb`` key layout.

    ``storage_tokens`` -> ``reg_token``; ``ls{1,2}.gamma`` -> ``gamma_{1,2}``; SwiGLU ``w1/w2/w3`` ->
    ``fc1_g/fc1_x/fc2``; ``qkv.bias`` and ``qkv.bias_mask`` -> ``q_bias``, ``k_bias``, ``v_bias`` (the
    official masked bias ``bias * bias_mask``, split in three); ``rope_embed.periods`` -> ``rope.periods``
    (as fp32); ``mask_token`` dropped. ``rope.periods`` and ``blocks.i.attn.k_bias`` are non-persistent
    buffers in timm: :func:`build_dinov3` loads the rest strictly and copies those two in. Keys it does not
    know are passed through. The input is not modified.
    """
    _arch(name)
    sd = dict(state_dict)
    sd.pop("mask_token", None)
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if _QKV_BIAS_MASK.match(key):
            continue  # consumed with its qkv.bias
        m = _QKV_BIAS.match(key)
        if m:
            mask_key = key + "_mask"
            if mask_key not in sd:
                raise RuntimeError(f"{name}: checkpoint does not match the model: missing keys [{mask_key!r}]")
            mask = sd[mask_key]
            if not torch.isfinite(mask).all():
                raise ValueError(f"{name}: {mask_key} is not finite (the official model would output NaN)")
            masked = value * mask.to(value.dtype)  # LinearKMaskedBias.forward
            q, k, v = masked.chunk(3, dim=0)
            out[m.group(1) + "q_bias"] = q
            out[m.group(1) + "k_bias"] = k
            out[m.group(1) + "v_bias"] = v
            continue
        if key == "storage_tokens":
            key = "reg_token"
        elif key == "rope_embed.periods":
            key, value = "rope.periods", value.float()
        else:
            for pattern, repl in _OFFICIAL_BLOCK_RENAMES:
                key, n = pattern.subn(repl, key)
                if n:
                    break
        out[key] = value
    return out


# --------------------------------------------------------------------------------------
# Encoder
# --------------------------------------------------------------------------------------


def rope_sin_cos(periods: Tensor, grid_h: int, grid_w: int) -> tuple[Tensor, Tensor]:
    """DINOv3 ``RopePositionEmbedding.forward(H=grid_h, W=grid_w)`` at inference, in fp32.

    ``normalize_coords="separate"``, no shift/jitter/rescale (training-only). Returns ``(sin, cos)``,
    each [grid_h * grid_w, head_dim] in the rotate-half layout (``[h-freqs, w-freqs]`` tiled twice).
    """
    dd = {"device": periods.device, "dtype": torch.float32}
    coords_h = torch.arange(0.5, grid_h, **dd) / grid_h
    coords_w = torch.arange(0.5, grid_w, **dd) / grid_w
    coords = torch.stack(torch.meshgrid(coords_h, coords_w, indexing="ij"), dim=-1).flatten(0, 1)  # [HW, 2]
    coords = 2.0 * coords - 1.0
    angles = 2 * math.pi * coords[:, :, None] / periods.to(torch.float32)[None, None, :]  # [HW, 2, D_head/4]
    angles = angles.flatten(1, 2).tile(2)  # [HW, D_head]
    return torch.sin(angles), torch.cos(angles)


def _create_timm_eva(arch: DinoV3Arch, depth: int | None) -> nn.Module:
    import timm  # imported lazily: heavy, and only needed here

    overrides: dict[str, Any] = {"num_classes": 0, "dynamic_img_size": True}
    if depth is not None:
        overrides["depth"] = int(depth)
    return timm.create_model(arch.timm_name, pretrained=False, img_size=NATIVE_IMAGE_SIZE, **overrides)


class DinoV3Encoder(nn.Module):
    """DINOv3 patch-feature extractor (timm ``Eva`` inside, at ``self.vit``).

    ``forward(images)``: ``images`` [B,3,H,W] float RGB in [0,1], H and W multiples of 16
    (:data:`NATIVE_IMAGE_SIZE` = 512 by default). ImageNet mean/std normalisation is applied here (once).
    Returns the last block's patch tokens after the final LayerNorm, CLS and storage tokens dropped, as
    [B, H/16, W/16, D] (== DINOv3 ``forward_features(x)["x_norm_patchtokens"]`` reshaped).

    The RoPE periods live in ``self.vit.rope.periods`` (fp32; filled from the checkpoint's
    ``rope_embed.periods`` by :func:`build_dinov3`, exactly like the official fp32 ``periods`` buffer). They
    stay fp32 and keep the checkpoint's values under ``.to()`` / ``.half()`` (timm's RoPE module would
    otherwise recompute them from its formula when cast below fp32).
    """

    patch_size: int = PATCH_SIZE
    native_image_size: int = NATIVE_IMAGE_SIZE

    def __init__(self, name: str, *, depth: int | None = None) -> None:
        super().__init__()
        self.arch = _arch(name)
        self.name = name
        self.embed_dim = self.arch.embed_dim
        self.num_heads = self.arch.num_heads
        self.num_register_tokens = self.arch.num_register_tokens
        self.depth = self.arch.depth if depth is None else int(depth)
        self.vit = _create_timm_eva(self.arch, depth)
        bad_eps = {
            n: m.eps for n, m in self.vit.named_modules() if isinstance(m, nn.LayerNorm) and m.eps != LAYER_NORM_EPS
        }
        if bad_eps:  # guard against a timm change: the official norm is LayerNorm(eps=1e-5)
            raise RuntimeError(f"{self.arch.timm_name}: LayerNorm eps {bad_eps} != official {LAYER_NORM_EPS}")
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def _apply(self, fn, *args, **kwargs):  # type: ignore[override]
        periods = self.vit.rope.periods.detach().clone()
        out = super()._apply(fn, *args, **kwargs)
        moved = self.vit.rope.periods
        self.vit.rope.periods = periods.to(device=moved.device, dtype=torch.float32)
        return out

    def normalize(self, images: Tensor) -> Tensor:
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def rope(self, grid_h: int, grid_w: int) -> Tensor:
        """RoPE table in timm's ``apply_rot_embed_cat`` format: ``cat([sin, cos], -1)``, [h*w, 2*D_head]."""
        sin, cos = rope_sin_cos(self.vit.rope.periods, grid_h, grid_w)
        return torch.cat([sin, cos], dim=-1)

    def forward(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B,3,H,W], got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {self.patch_size}")
        if not images.is_floating_point():
            raise TypeError(f"expected float images in [0,1], got {images.dtype}")
        vit = self.vit
        patches = vit.patch_embed(self.normalize(images))  # NHWC (dynamic_img_size=True)
        b, gh, gw, d = patches.shape
        x = torch.cat(
            [vit.cls_token.expand(b, -1, -1), vit.reg_token.expand(b, -1, -1), patches.reshape(b, gh * gw, d)],
            dim=1,
        )
        rope = self.rope(gh, gw)
        x = vit.norm_pre(x)  # Identity for DINOv3
        for blk in vit.blocks:
            x = blk(x, rope=rope)
        x = vit.norm(x)
        x = x[:, vit.num_prefix_tokens :]
        return x.reshape(b, gh, gw, d)


def build_dinov3(
    name: str, state_dict: Mapping[str, Tensor] | None = None, *, depth: int | None = None
) -> DinoV3Encoder:
    """Build a DINOv3 encoder (eval mode, no grads) from an official-layout state dict.

    ``state_dict=None`` leaves timm's random init. Otherwise the official keys are checked first (a
    missing, unexpected or mis-shaped key raises ``RuntimeError`` naming it; ``mask_token`` may be absent),
    then the mapped dict is loaded into timm with ``strict=True`` and the non-persistent ``rope.periods`` /
    ``k_bias`` buffers are filled. ``depth`` overrides the number of blocks (tests with tiny models only).
    """
    arch = _arch(name)
    if state_dict is not None:  # fail fast, naming official keys, before building the model
        _check_official_keys(state_dict, name, arch.depth if depth is None else int(depth))
        mapped = official_to_timm_state_dict(state_dict, name)
    encoder = DinoV3Encoder(name, depth=depth)
    if state_dict is not None:
        buffers = {k: mapped.pop(k) for k in list(mapped) if _TIMM_BUFFER_KEY.match(k)}
        try:
            encoder.vit.load_state_dict(mapped, strict=True)
        except RuntimeError as exc:
            raise RuntimeError(f"{name}: checkpoint does not match the model: {exc}") from exc
        named = dict(encoder.vit.named_buffers())
        absent = sorted(k for k in named if _TIMM_BUFFER_KEY.match(k) and k not in buffers)
        if absent:
            raise RuntimeError(f"{name}: checkpoint does not match the model: missing buffers {absent}")
        with torch.no_grad():
            for key, value in buffers.items():
                target = named[key]
                if tuple(value.shape) != tuple(target.shape):
                    raise RuntimeError(
                        f"{name}: checkpoint does not match the model: size mismatch for {key}: "
                        f"{tuple(value.shape)} vs {tuple(target.shape)}"
                    )
                target.copy_(value)
    encoder.eval()
    encoder.requires_grad_(False)
    return encoder
