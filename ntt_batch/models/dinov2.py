"""DINOv2 image encoder as a timm ``VisionTransformer``, loading the official checkpoints.

The method (method.md §2.2, §4.3, §6) uses DINOv2 ViT-L/14 (``dinov2_vitl14_pretrain.pth``) at
518x518 and takes the patch tokens of the last block after the final LayerNorm, with the
CLS token dropped (DINOv2's ``forward_features()["x_norm_patchtokens"]``), in fp32.

Checkpoints are the *official* plain state dicts as saved by facebookresearch/dinov2
(``dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth``). Their layout:

* ``cls_token`` [1,1,D], ``pos_embed`` [1,1+37*37,D] (trained at 518 px, patch 14),
  ``mask_token`` [1,D] (only used in training), ``register_tokens`` [1,4,D] (``_reg4`` only),
  ``patch_embed.proj.{weight,bias}`` (Conv2d 3->D, kernel = stride = 14);
* per block ``blocks.i.{norm1,attn.qkv,attn.proj,norm2}.{weight,bias}``, ``blocks.i.ls{1,2}.gamma``
  and the FFN: ``blocks.i.mlp.fc{1,2}.{weight,bias}`` (GELU MLP, ratio 4), or for ViT-g the fused
  SwiGLU ``blocks.i.mlp.w12`` [8192,1536] / ``blocks.i.mlp.w3`` [1536,4096] computing
  ``w3(silu(x1) * x2)`` with ``x1, x2 = w12(x).chunk(2)``;
* ``norm.{weight,bias}``. All LayerNorms use eps 1e-6.
* Training checkpoints built with ``block_chunks > 0`` name the blocks
  ``blocks.<chunk>.<global_idx>.…``; torch-hub's are built with ``block_chunks=0``
  (``blocks.<global_idx>.…``). Both are accepted.

timm maps this 1:1 except for: ``mlp.w12``/``mlp.w3`` -> ``mlp.fc1``/``mlp.fc2`` (timm's
``SwiGLUPacked`` = ``GluMlp(act_layer=SiLU, gate_last=False)`` computes ``fc2(silu(x1) * x2)`` with
the same chunk order), and for the register models timm's ``reg_tokens=4, no_embed_class=True``
layout: ``reg_token`` = ``register_tokens``; the CLS positional embedding is folded into the CLS
token (``cls_token + pos_embed[:, 0]``) and ``pos_embed`` keeps only the 37*37 patch entries.
That is exact: the official model adds ``pos_embed`` to ``cat(cls, patches)`` and only then
inserts the register tokens after the CLS token (which get no positional embedding).

The encoder builds the token sequence itself (instead of timm's ``_pos_embed``) so that inputs
other than 518x518 interpolate the positional embedding exactly as the official code does
(bicubic, ``scale_factor=(h0 + 0.1) / 37``, no antialias); at 518x518 no interpolation happens and
the result equals timm's ``forward_features`` as well.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .normalize import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "DINOV2_MODELS",
    "DinoV2Arch",
    "DinoV2Encoder",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "OFFICIAL_IMG_SIZE",
    "PATCH_SIZE",
    "build_dinov2",
    "load_state_dict_file",
    "official_to_timm_state_dict",
    "random_official_state_dict",
    "timm_to_official_state_dict",
]

PATCH_SIZE = 14
OFFICIAL_IMG_SIZE = 518  # 37 x 37 patch grid; the size the official pos_embed was trained at
_OFFICIAL_GRID = OFFICIAL_IMG_SIZE // PATCH_SIZE
_INTERPOLATE_OFFSET = 0.1  # official DinoVisionTransformer default (torch-hub models)


@dataclass(frozen=True)
class DinoV2Arch:
    """Architecture of one official DINOv2 backbone and the timm model that represents it."""

    timm_name: str
    embed_dim: int
    depth: int
    num_heads: int
    num_register_tokens: int
    swiglu: bool

    @property
    def ffn_hidden(self) -> int:
        """Hidden width of the FFN (for SwiGLU: of the gated half, i.e. ``w3``'s input)."""
        if self.swiglu:  # official SwiGLUFFNFused: (int(4 * D * 2 / 3) + 7) // 8 * 8
            return (int(4 * self.embed_dim * 2 / 3) + 7) // 8 * 8
        return 4 * self.embed_dim


def _archs() -> dict[str, DinoV2Arch]:
    dims = {
        "s": ("small", 384, 12, 6, False),
        "b": ("base", 768, 12, 12, False),
        "l": ("large", 1024, 24, 16, False),
        "g": ("giant", 1536, 40, 24, True),
    }
    out: dict[str, DinoV2Arch] = {}
    for reg in (False, True):
        for letter, (size, dim, depth, heads, swiglu) in dims.items():
            name = f"dinov2_vit{letter}14" + ("_reg4" if reg else "")
            timm_name = f"vit_{size}_patch14_" + ("reg4_" if reg else "") + "dinov2"
            out[name] = DinoV2Arch(timm_name, dim, depth, heads, 4 if reg else 0, swiglu)
    return out


DINOV2_MODELS: dict[str, DinoV2Arch] = _archs()


def _arch(name: str) -> DinoV2Arch:
    try:
        return DINOV2_MODELS[name]
    except KeyError:
        raise ValueError(f"unknown DINOv2 model {name!r}; valid names: {', '.join(DINOV2_MODELS)}") from None


# --------------------------------------------------------------------------------------
# State-dict mapping
# --------------------------------------------------------------------------------------

_CHUNKED_BLOCK = re.compile(r"^blocks\.(\d+)\.(\d+)\.")
_OFFICIAL_SWIGLU = re.compile(r"^(blocks\.\d+\.mlp\.)(w12|w3)\.(weight|bias)$")
_TIMM_MLP = re.compile(r"^(blocks\.\d+\.mlp\.)(fc1|fc2)\.(weight|bias)$")


def _flatten_block_chunks(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``blocks.<chunk>.<i>.x`` -> ``blocks.<i>.x`` (FSDP-chunked training checkpoints)."""
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        flat = _CHUNKED_BLOCK.sub(r"blocks.\2.", key)
        if flat in out:
            raise ValueError(f"checkpoint key {key!r} collides with another key after un-chunking ({flat!r})")
        out[flat] = value
    return out


def official_to_timm_state_dict(state_dict: Mapping[str, Tensor], name: str) -> dict[str, Tensor]:
    """Map an official DINOv2 state dict onto timm's ``VisionTransformer`` key layout.

    Drops ``mask_token``, flattens chunked block keys, renames the SwiGLU ``w12``/``w3`` to
    ``fc1``/``fc2`` and, for ``_reg4`` models, folds ``pos_embed[:, 0]`` into the CLS token. Keys it
    does not know are passed through (so a strict load names them). The input is not modified.
    """
    arch = _arch(name)
    sd = _flatten_block_chunks(state_dict)
    sd.pop("mask_token", None)

    out: dict[str, Tensor] = {}
    if arch.num_register_tokens:
        missing = [k for k in ("cls_token", "pos_embed", "register_tokens") if k not in sd]
        if missing:
            raise ValueError(f"{name}: checkpoint lacks {missing} (needed for a register-token model)")
        out["cls_token"] = sd.pop("cls_token") + sd["pos_embed"][:, :1]
        out["pos_embed"] = sd.pop("pos_embed")[:, 1:]
        out["reg_token"] = sd.pop("register_tokens")
    elif "register_tokens" in sd:
        raise ValueError(
            f"{name}: checkpoint has 'register_tokens' {tuple(sd['register_tokens'].shape)}, but {name} "
            f"has no registers; use {name}_reg4"
        )

    for key, value in sd.items():
        m = _OFFICIAL_SWIGLU.match(key)
        if m:
            key = f"{m.group(1)}{'fc1' if m.group(2) == 'w12' else 'fc2'}.{m.group(3)}"
        out[key] = value
    return out


def timm_to_official_state_dict(state_dict: Mapping[str, Tensor], name: str) -> dict[str, Tensor]:
    """Inverse of :func:`official_to_timm_state_dict` (un-chunked ``blocks.<i>.`` keys).

    Adds ``mask_token`` as zeros [1,D]. For ``_reg4`` models the folded CLS token cannot be split
    back into (cls_token, pos_embed[:, 0]); it is written as ``cls_token`` with a zero
    ``pos_embed[:, 0]``, which gives identical outputs (official -> timm -> official is the identity
    except for that split and ``mask_token``; timm -> official -> timm is the exact identity).
    """
    arch = _arch(name)
    sd = dict(state_dict)
    out: dict[str, Tensor] = {}
    if arch.num_register_tokens:
        missing = [k for k in ("cls_token", "pos_embed", "reg_token") if k not in sd]
        if missing:
            raise ValueError(f"{name}: timm state dict lacks {missing}")
        cls = sd.pop("cls_token")
        pos = sd.pop("pos_embed")
        out["cls_token"] = cls
        out["pos_embed"] = torch.cat([torch.zeros_like(pos[:, :1]), pos], dim=1)
        out["register_tokens"] = sd.pop("reg_token")
    else:
        for k in ("cls_token", "pos_embed"):
            if k in sd:
                out[k] = sd.pop(k)
    ref = out.get("cls_token", sd.get("norm.weight"))
    dim = arch.embed_dim if ref is None else ref.shape[-1]
    dtype = torch.float32 if ref is None else ref.dtype
    out["mask_token"] = torch.zeros(1, dim, dtype=dtype)
    for key, value in sd.items():
        m = _TIMM_MLP.match(key) if arch.swiglu else None
        if m:
            key = f"{m.group(1)}{'w12' if m.group(2) == 'fc1' else 'w3'}.{m.group(3)}"
        out[key] = value
    return out


def official_key_shapes(name: str, *, depth: int | None = None) -> dict[str, tuple[int, ...]]:
    """The official state-dict keys and shapes (in the order ``state_dict()`` lists them)."""
    arch = _arch(name)
    d = arch.embed_dim
    shapes: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, d),
        "pos_embed": (1, 1 + _OFFICIAL_GRID * _OFFICIAL_GRID, d),
    }
    if arch.num_register_tokens:
        shapes["register_tokens"] = (1, arch.num_register_tokens, d)
    shapes["mask_token"] = (1, d)
    shapes["patch_embed.proj.weight"] = (d, 3, PATCH_SIZE, PATCH_SIZE)
    shapes["patch_embed.proj.bias"] = (d,)
    h = arch.ffn_hidden
    for i in range(arch.depth if depth is None else depth):
        b = f"blocks.{i}."
        shapes[b + "norm1.weight"] = (d,)
        shapes[b + "norm1.bias"] = (d,)
        shapes[b + "attn.qkv.weight"] = (3 * d, d)
        shapes[b + "attn.qkv.bias"] = (3 * d,)
        shapes[b + "attn.proj.weight"] = (d, d)
        shapes[b + "attn.proj.bias"] = (d,)
        shapes[b + "ls1.gamma"] = (d,)
        shapes[b + "norm2.weight"] = (d,)
        shapes[b + "norm2.bias"] = (d,)
        if arch.swiglu:
            shapes[b + "mlp.w12.weight"] = (2 * h, d)
            shapes[b + "mlp.w12.bias"] = (2 * h,)
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


def random_official_state_dict(name: str, seed: int = 0, *, depth: int | None = None) -> dict[str, Tensor]:
    """Random fp32 weights in the exact official key layout and shapes (for smoke runs / tests).

    Deterministic for ``seed`` (a private ``torch.Generator``; the global RNG is untouched). The
    scales are chosen so that every part of the network matters numerically: weights ~ N(0,
    1/fan_in), small random biases, LayerNorm affine near (1, 0), LayerScale gammas in [0.1, 0.5]
    (the official init 1e-5 would make blocks near-identities), ``mask_token`` zeros (its official
    init; it is unused at inference).
    """
    gen = torch.Generator().manual_seed(int(seed))

    def normal(shape: tuple[int, ...], std: float) -> Tensor:
        return torch.randn(shape, generator=gen, dtype=torch.float32) * std

    out: dict[str, Tensor] = {}
    for key, shape in official_key_shapes(name, depth=depth).items():
        if key == "mask_token":
            value = torch.zeros(shape, dtype=torch.float32)
        elif key in ("cls_token", "register_tokens", "pos_embed"):
            value = normal(shape, 0.5)
        elif key.endswith("gamma"):
            value = 0.1 + 0.4 * torch.rand(shape, generator=gen, dtype=torch.float32)
        elif "norm" in key and key.endswith(".weight"):
            value = 1.0 + normal(shape, 0.1)
        elif key.endswith(".bias"):
            value = normal(shape, 0.1)
        else:  # Linear / Conv weights
            fan_in = math.prod(shape[1:])
            value = normal(shape, 1.0 / math.sqrt(fan_in))
        out[key] = value
    return out


# --------------------------------------------------------------------------------------
# Checkpoint file
# --------------------------------------------------------------------------------------


def load_state_dict_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """Load an official DINOv2 checkpoint (``torch.load(..., weights_only=True)`` on CPU).

    Accepts a plain state dict (what ``dinov2_*_pretrain.pth`` is) or a wrapper dict with the
    state dict under ``"teacher"`` (the reference tries that key first), ``"model"`` or
    ``"state_dict"``. A ``backbone.`` prefix (DINOv2 training checkpoints: ``teacher.backbone.*``
    next to ``dino_head.*``/``ibot_head.*``) is stripped and the other heads dropped.
    """
    from .checkpoint_files import load_checkpoint_file

    obj: Any = load_checkpoint_file(path)  # torch.load(weights_only=True); one-line error naming a bad file
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
    for wrapper in ("teacher", "model", "state_dict"):
        inner = obj.get(wrapper)
        if isinstance(inner, Mapping):
            obj = inner
            break
    sd = dict(obj)
    if any(k.startswith("backbone.") for k in sd):
        sd = {k[len("backbone.") :]: v for k, v in sd.items() if k.startswith("backbone.")}
    bad = [k for k, v in sd.items() if not isinstance(v, Tensor)]
    if bad:
        raise ValueError(f"{path}: not a state dict of tensors (non-tensor entries: {bad[:5]})")
    return sd


# --------------------------------------------------------------------------------------
# Encoder
# --------------------------------------------------------------------------------------


def _official_patch_pos_embed(patch_pos: Tensor, grid_h: int, grid_w: int) -> Tensor:
    """Resize the [1, M*M, D] patch positional embedding to ``grid_h x grid_w`` as DINOv2 does.

    Mirrors ``DinoVisionTransformer.interpolate_pos_encoding`` (torch-hub defaults
    ``interpolate_offset=0.1``, ``interpolate_antialias=False``): bicubic with an explicit scale
    factor ``(g + 0.1) / M``, computed in fp32. Skipped (returned as is) only for a square grid of
    the trained size, exactly like the official condition.
    """
    n = patch_pos.shape[1]
    m = int(math.sqrt(n))
    if m * m != n:
        raise ValueError(f"pos_embed has {n} patch entries, not a square grid")
    if grid_h * grid_w == n and grid_h == grid_w:
        return patch_pos
    dim = patch_pos.shape[-1]
    scale = (float(grid_h + _INTERPOLATE_OFFSET) / m, float(grid_w + _INTERPOLATE_OFFSET) / m)
    resized = F.interpolate(
        patch_pos.float().reshape(1, m, m, dim).permute(0, 3, 1, 2),
        scale_factor=scale,
        mode="bicubic",
        antialias=False,
    )
    if tuple(resized.shape[-2:]) != (grid_h, grid_w):
        raise RuntimeError(f"pos_embed interpolation gave {tuple(resized.shape[-2:])}, wanted {(grid_h, grid_w)}")
    return resized.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim).to(patch_pos.dtype)


def _create_timm_vit(arch: DinoV2Arch, depth: int | None) -> nn.Module:
    import timm  # imported lazily: heavy, and only needed here

    overrides: dict[str, Any] = {"num_classes": 0, "dynamic_img_size": True}
    if depth is not None:
        overrides["depth"] = int(depth)
    return timm.create_model(arch.timm_name, pretrained=False, img_size=OFFICIAL_IMG_SIZE, **overrides)


class DinoV2Encoder(nn.Module):
    """DINOv2 patch-feature extractor (timm ``VisionTransformer`` inside, at ``self.vit``).

    ``forward(images)``: ``images`` [B,3,H,W] float RGB in [0,1], H and W multiples of 14 (518 in
    the method). ImageNet mean/std normalisation is applied here (once). Returns the last block's
    patch tokens after the final LayerNorm, CLS/register tokens dropped, as [B, H/14, W/14, D]
    (== DINOv2 ``forward_features()["x_norm_patchtokens"]`` reshaped).
    """

    patch_size: int = PATCH_SIZE
    native_image_size: int = OFFICIAL_IMG_SIZE  # §6: the input side for targets and reference crops

    def __init__(self, name: str, *, depth: int | None = None) -> None:
        super().__init__()
        self.arch = _arch(name)
        self.name = name
        self.embed_dim = self.arch.embed_dim
        self.num_register_tokens = self.arch.num_register_tokens
        self.depth = self.arch.depth if depth is None else int(depth)
        self.vit = _create_timm_vit(self.arch, depth)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def normalize(self, images: Tensor) -> Tensor:
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def _tokens(self, x: Tensor) -> tuple[Tensor, int, int]:
        """Normalised images -> token sequence [B, prefix + h*w, D] as the official model builds it."""
        vit = self.vit
        patches = vit.patch_embed(x)  # NHWC (dynamic_img_size=True)
        b, gh, gw, d = patches.shape
        patches = patches.reshape(b, gh * gw, d)
        if self.num_register_tokens:
            # timm no_embed_class layout: pos_embed holds patch entries only; the CLS token already
            # carries the official CLS positional embedding (folded at load time).
            pos = _official_patch_pos_embed(vit.pos_embed, gh, gw)
            tokens = torch.cat([vit.cls_token.expand(b, -1, -1), vit.reg_token.expand(b, -1, -1), patches + pos], dim=1)
        else:
            pos = torch.cat([vit.pos_embed[:, :1], _official_patch_pos_embed(vit.pos_embed[:, 1:], gh, gw)], dim=1)
            tokens = torch.cat([vit.cls_token.expand(b, -1, -1), patches], dim=1) + pos
        return tokens, gh, gw

    def forward(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B,3,H,W], got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {self.patch_size}")
        if not images.is_floating_point():
            raise TypeError(f"expected float images in [0,1], got {images.dtype}")
        vit = self.vit
        x, gh, gw = self._tokens(self.normalize(images))
        x = vit.norm_pre(x)
        x = vit.blocks(x)
        x = vit.norm(x)
        x = x[:, vit.num_prefix_tokens :]
        return x.reshape(x.shape[0], gh, gw, x.shape[-1])


def build_dinov2(
    name: str, state_dict: Mapping[str, Tensor] | None = None, *, depth: int | None = None
) -> DinoV2Encoder:
    """Build a DINOv2 encoder (eval mode, no grads) from an official-layout state dict.

    ``state_dict=None`` leaves timm's random init. The mapped state dict is loaded with
    ``strict=True``: a missing, unexpected or mis-shaped key raises ``RuntimeError`` naming it.
    ``depth`` overrides the number of blocks (tests with tiny models only).
    """
    encoder = DinoV2Encoder(name, depth=depth)
    if state_dict is not None:
        mapped = official_to_timm_state_dict(state_dict, name)
        try:
            encoder.vit.load_state_dict(mapped, strict=True)
        except RuntimeError as exc:
            raise RuntimeError(f"{name}: checkpoint does not match the model: {exc}") from exc
    encoder.eval()
    encoder.requires_grad_(False)
    return encoder
