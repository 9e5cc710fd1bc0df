"""DINOv3 encoder: official checkpoint layout, key mapping to timm's Eva, and numerics vs. a plain-torch
re-implementation of the official DinoVisionTransformer forward (facebookresearch/dinov3)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ntt_batch.models import dinov2
from ntt_batch.models import dinov3 as dv
from ntt_batch.models.dinov2 import IMAGENET_MEAN, IMAGENET_STD
from ntt_batch.models.dinov3 import (
    DINOV3_MODELS,
    NATIVE_IMAGE_SIZE,
    PATCH_SIZE,
    DinoV3Encoder,
    build_dinov3,
    load_state_dict_file,
    official_key_shapes,
    official_to_timm_state_dict,
    random_official_state_dict,
)
from ntt_batch.models.encoders import encoder_family
from ntt_batch.models.registry import DINOV3_NAMES, get_spec

ATOL = 1e-4

# Written out by hand from the official DinoVisionTransformer (n_storage_tokens=4, mask_k_bias=True,
# RoPE, no pos_embed) / SelfAttentionBlock layout, in state_dict() order.
GLOBAL_KEYS_HEAD = {
    "cls_token": lambda d: (1, 1, d),
    "storage_tokens": lambda d: (1, 4, d),
    "mask_token": lambda d: (1, d),
    "patch_embed.proj.weight": lambda d: (d, 3, 16, 16),
    "patch_embed.proj.bias": lambda d: (d,),
    "rope_embed.periods": lambda d: (16,),  # head_dim 64 for all five -> 64 // 4
}
GLOBAL_KEYS_TAIL = {"norm.weight": lambda d: (d,), "norm.bias": lambda d: (d,)}
BLOCK_KEYS_MLP = [
    "norm1.weight",
    "norm1.bias",
    "attn.qkv.weight",
    "attn.qkv.bias",
    "attn.qkv.bias_mask",
    "attn.proj.weight",
    "attn.proj.bias",
    "ls1.gamma",
    "norm2.weight",
    "norm2.bias",
    "mlp.fc1.weight",
    "mlp.fc1.bias",
    "mlp.fc2.weight",
    "mlp.fc2.bias",
    "ls2.gamma",
]
BLOCK_KEYS_SWIGLU = [
    "norm1.weight",
    "norm1.bias",
    "attn.qkv.weight",
    "attn.qkv.bias",
    "attn.qkv.bias_mask",
    "attn.proj.weight",
    "attn.proj.bias",
    "ls1.gamma",
    "norm2.weight",
    "norm2.bias",
    "mlp.w1.weight",
    "mlp.w1.bias",
    "mlp.w2.weight",
    "mlp.w2.bias",
    "mlp.w3.weight",
    "mlp.w3.bias",
    "ls2.gamma",
]
# dinov3/hub/backbones.py: embed_dim, depth, num_heads, ffn_ratio, ffn_layer
OFFICIAL_HPARAMS = {
    "dinov3_vits16": (384, 12, 6, 4, "mlp"),
    "dinov3_vits16plus": (384, 12, 6, 6, "swiglu"),
    "dinov3_vitb16": (768, 12, 12, 4, "mlp"),
    "dinov3_vitl16": (1024, 24, 16, 4, "mlp"),
    "dinov3_vith16plus": (1280, 32, 20, 6, "swiglu"),
}


# --------------------------------------------------------------------------------------
# Independent reference: the official forward, in plain torch, from the official state dict
# --------------------------------------------------------------------------------------


def _ref_rope(periods, H, W):
    """RopePositionEmbedding.forward(H=H, W=W) in eval mode, normalize_coords='separate', fp32."""
    dd = {"dtype": torch.float32}
    coords_h = torch.arange(0.5, H, **dd) / H
    coords_w = torch.arange(0.5, W, **dd) / W
    coords = torch.stack(torch.meshgrid(coords_h, coords_w, indexing="ij"), dim=-1)
    coords = coords.flatten(0, 1)
    coords = 2.0 * coords - 1.0
    angles = 2 * math.pi * coords[:, :, None] / periods.float()[None, None, :]
    angles = angles.flatten(1, 2)
    angles = angles.tile(2)
    return torch.sin(angles), torch.cos(angles)


def _ref_rope_apply(x, sin, cos):
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def reference_forward(sd, images, num_heads):
    """Official DINOv3 forward_features(x)["x_norm_patchtokens"] on already-normalised images."""
    ln = lambda x, p: F.layer_norm(x, x.shape[-1:], sd[p + ".weight"], sd[p + ".bias"], eps=1e-5)  # noqa: E731
    lin = lambda x, p: F.linear(x, sd[p + ".weight"], sd[p + ".bias"])  # noqa: E731

    B = images.shape[0]
    x = F.conv2d(images, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=16)
    H, W = x.shape[-2:]
    x = x.flatten(2).transpose(1, 2)  # [B, HW, D]
    cls_token = sd["cls_token"] + 0 * sd["mask_token"]
    storage = sd["storage_tokens"]
    x = torch.cat([cls_token.expand(B, -1, -1), storage.expand(B, -1, -1), x], dim=1)
    sin, cos = _ref_rope(sd["rope_embed.periods"], H, W)

    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    _, N, C = x.shape
    for i in range(depth):
        p = f"blocks.{i}."
        y = ln(x, p + "norm1")
        masked_bias = sd[p + "attn.qkv.bias"] * sd[p + "attn.qkv.bias_mask"]
        qkv = F.linear(y, sd[p + "attn.qkv.weight"], masked_bias)
        qkv = qkv.reshape(B, N, 3, num_heads, C // num_heads)
        q, k, v = [t.transpose(1, 2) for t in torch.unbind(qkv, 2)]
        prefix = N - sin.shape[-2]
        q = torch.cat((q[:, :, :prefix], _ref_rope_apply(q[:, :, prefix:], sin, cos)), dim=-2)
        k = torch.cat((k[:, :, :prefix], _ref_rope_apply(k[:, :, prefix:], sin, cos)), dim=-2)
        attn = torch.softmax((q @ k.transpose(-2, -1)) / math.sqrt(C // num_heads), dim=-1)
        y = (attn @ v).transpose(1, 2).reshape(B, N, C)
        x = x + sd[p + "ls1.gamma"] * lin(y, p + "attn.proj")
        y = ln(x, p + "norm2")
        if p + "mlp.w1.weight" in sd:
            y = lin(F.silu(lin(y, p + "mlp.w1")) * lin(y, p + "mlp.w2"), p + "mlp.w3")
        else:
            y = lin(F.gelu(lin(y, p + "mlp.fc1")), p + "mlp.fc2")
        x = x + sd[p + "ls2.gamma"] * y
    x = ln(x, "norm")
    n_storage = sd["storage_tokens"].shape[1]
    return x[:, 1 + n_storage :].reshape(B, H, W, C)


def normalise(images):
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def rand_images(b, h, w, seed=0):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------
# Registry / files / layout
# --------------------------------------------------------------------------------------


def test_registry_matches_official_hparams_and_timm():
    import timm

    assert list(DINOV3_MODELS) == list(OFFICIAL_HPARAMS)
    for name, (dim, depth, heads, ratio, ffn) in OFFICIAL_HPARAMS.items():
        arch = DINOV3_MODELS[name]
        assert (arch.embed_dim, arch.depth, arch.num_heads, arch.ffn_ratio) == (dim, depth, heads, ratio), name
        assert arch.swiglu == (ffn == "swiglu")
        assert arch.num_register_tokens == 4
        assert timm.is_model(arch.timm_name), arch.timm_name
    assert DINOV3_MODELS["dinov3_vitl16"].timm_name == "vit_large_patch16_dinov3_qkvb"
    assert DINOV3_MODELS["dinov3_vith16plus"].timm_name == "vit_huge_plus_patch16_dinov3_qkvb"
    # SwiGLUFFN: d = int(int(D * ratio) * 2 / 3), rounded up to a multiple of 8
    assert DINOV3_MODELS["dinov3_vits16plus"].ffn_hidden == 1536
    assert DINOV3_MODELS["dinov3_vith16plus"].ffn_hidden == 5120
    assert DINOV3_MODELS["dinov3_vitl16"].ffn_hidden == 4096
    assert PATCH_SIZE == 16 and NATIVE_IMAGE_SIZE == 512 and NATIVE_IMAGE_SIZE % PATCH_SIZE == 0


def test_checkpoint_files_and_license():
    expected = {  # dinov3/hub/backbones.py hash defaults, LVD-1689M weights
        "dinov3_vits16": "dinov3_vits16_pretrain_lvd1689m-08c60483.pth",
        "dinov3_vits16plus": "dinov3_vits16plus_pretrain_lvd1689m-4057cbaa.pth",
        "dinov3_vitb16": "dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth",
        "dinov3_vitl16": "dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth",
        "dinov3_vith16plus": "dinov3_vith16plus_pretrain_lvd1689m-7c1da9a5.pth",
    }
    assert set(DINOV3_NAMES) == set(DINOV3_MODELS) == set(expected)
    for name, filename in expected.items():
        spec = get_spec(name, "encoder")
        assert spec.filename == filename and spec.family == "dinov3"
        assert spec.sha256_prefix == filename[-12:-4] and spec.sha256 is None and spec.url is None  # gated
        assert spec.matches_official(spec.sha256_prefix + "0" * 56) and not spec.matches_official("0" * 64)
        assert "DINOv3 License" in spec.license and "not Apache-2.0" in spec.license
        assert "https://ai.meta.com/resources/models-and-libraries/dinov3-license/" in spec.license
    family = encoder_family("dinov3_vits16")  # the family's facts are the module's
    assert (family.patch_size, family.native_image_size) == (dv.PATCH_SIZE, dv.NATIVE_IMAGE_SIZE)
    assert (dv.DinoV3Encoder.patch_size, dv.DinoV3Encoder.native_image_size) == (16, 512)


def _expected_layout(d, depth, block_keys):
    keys = [k for k in GLOBAL_KEYS_HEAD]
    for i in range(depth):
        keys += [f"blocks.{i}.{k}" for k in block_keys]
    keys += list(GLOBAL_KEYS_TAIL)
    shapes = {k: f(d) for k, f in {**GLOBAL_KEYS_HEAD, **GLOBAL_KEYS_TAIL}.items()}
    return keys, shapes


def test_official_layout_vits16():
    sd = random_official_state_dict("dinov3_vits16")
    d = 384
    keys, shapes = _expected_layout(d, 12, BLOCK_KEYS_MLP)
    assert len(keys) == 6 + 12 * 15 + 2 == 188
    assert list(sd) == keys  # same keys, official state_dict() order
    for k, shape in shapes.items():
        assert tuple(sd[k].shape) == shape, k
    assert tuple(sd["blocks.0.attn.qkv.weight"].shape) == (3 * d, d)
    assert tuple(sd["blocks.0.attn.qkv.bias"].shape) == (3 * d,)
    assert tuple(sd["blocks.0.attn.qkv.bias_mask"].shape) == (3 * d,)
    assert tuple(sd["blocks.11.mlp.fc1.weight"].shape) == (4 * d, d)
    assert tuple(sd["blocks.11.mlp.fc2.weight"].shape) == (d, 4 * d)
    assert tuple(sd["blocks.5.ls2.gamma"].shape) == (d,)
    assert all(v.dtype == torch.float32 for v in sd.values())
    assert torch.count_nonzero(sd["mask_token"]) == 0
    # Official buffers as init_weights leaves them: periods = 100 ** (2i / 32), bias_mask zero on k only.
    torch.testing.assert_close(sd["rope_embed.periods"], 100.0 ** (torch.arange(16.0) / 16), rtol=1e-6, atol=0)
    mask = sd["blocks.3.attn.qkv.bias_mask"]
    assert torch.equal(mask, torch.cat([torch.ones(d), torch.zeros(d), torch.ones(d)]))
    assert {k: tuple(v) for k, v in official_key_shapes("dinov3_vits16").items()} == {
        k: tuple(v.shape) for k, v in sd.items()
    }


@pytest.mark.parametrize("name, d, hidden", [("dinov3_vith16plus", 1280, 5120), ("dinov3_vits16plus", 384, 1536)])
def test_official_layout_swiglu(name, d, hidden):
    sd = random_official_state_dict(name, depth=2)
    keys, shapes = _expected_layout(d, 2, BLOCK_KEYS_SWIGLU)
    assert list(sd) == keys
    for k, shape in shapes.items():
        assert tuple(sd[k].shape) == shape, k
    for w in ("w1", "w2"):
        assert tuple(sd[f"blocks.1.mlp.{w}.weight"].shape) == (hidden, d)
        assert tuple(sd[f"blocks.1.mlp.{w}.bias"].shape) == (hidden,)
    assert tuple(sd["blocks.1.mlp.w3.weight"].shape) == (d, hidden)
    assert tuple(sd["blocks.1.mlp.w3.bias"].shape) == (d,)
    assert tuple(sd["blocks.0.attn.qkv.weight"].shape) == (3 * d, d)


def test_random_state_dict_deterministic_and_rng_clean():
    before = torch.get_rng_state()
    a = random_official_state_dict("dinov3_vits16", seed=3, depth=1)
    b = random_official_state_dict("dinov3_vits16", seed=3, depth=1)
    c = random_official_state_dict("dinov3_vits16", seed=4, depth=1)
    assert torch.equal(before, torch.get_rng_state())
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["blocks.0.attn.qkv.weight"], c["blocks.0.attn.qkv.weight"])
    # The k third of the bias is random too (the official bias_mask is what zeroes it).
    assert torch.count_nonzero(a["blocks.0.attn.qkv.bias"][384:768]) == 384


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="dinov3_vith16plus"):
        build_dinov3("dinov3_vitx16")
    with pytest.raises(ValueError, match="valid names"):
        random_official_state_dict("vit_small_patch16_dinov3")
    with pytest.raises(ValueError, match="valid names"):
        official_key_shapes("dinov2_vits14")


# --------------------------------------------------------------------------------------
# Mapping
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dinov3_vits16", "dinov3_vits16plus"])
def test_timm_key_set_matches_timm_model(name):
    sd = random_official_state_dict(name, seed=1, depth=2)
    keep = {k: v.clone() for k, v in sd.items()}
    tm = official_to_timm_state_dict(sd, name)
    assert all(torch.equal(sd[k], keep[k]) for k in keep) and list(sd) == list(keep)  # input untouched
    enc = build_dinov3(name, depth=2)
    persistent = enc.vit.state_dict()
    buffers = {"rope.periods", "blocks.0.attn.k_bias", "blocks.1.attn.k_bias"}
    assert set(tm) == set(persistent) | buffers
    assert all(tm[k].shape == persistent[k].shape for k in persistent)
    assert "mask_token" not in tm and "reg_token" in tm
    d = DINOV3_MODELS[name].embed_dim
    assert torch.equal(tm["blocks.1.attn.q_bias"], sd["blocks.1.attn.qkv.bias"][:d])
    assert torch.equal(tm["blocks.1.attn.v_bias"], sd["blocks.1.attn.qkv.bias"][2 * d :])
    assert torch.count_nonzero(tm["blocks.1.attn.k_bias"]) == 0
    assert torch.equal(tm["blocks.0.gamma_2"], sd["blocks.0.ls2.gamma"])
    if DINOV3_MODELS[name].swiglu:
        assert torch.equal(tm["blocks.0.mlp.fc1_g.weight"], sd["blocks.0.mlp.w1.weight"])
        assert torch.equal(tm["blocks.0.mlp.fc1_x.weight"], sd["blocks.0.mlp.w2.weight"])
        assert torch.equal(tm["blocks.0.mlp.fc2.weight"], sd["blocks.0.mlp.w3.weight"])


def test_loaded_buffers():
    name = "dinov3_vitb16"
    sd = random_official_state_dict(name, seed=2, depth=1)
    sd["rope_embed.periods"] = sd["rope_embed.periods"] * 1.5
    sd["blocks.0.attn.qkv.bias_mask"] = torch.ones(3 * 768)
    enc = build_dinov3(name, sd, depth=1)
    assert torch.equal(enc.vit.rope.periods, sd["rope_embed.periods"])
    assert torch.equal(enc.vit.blocks[0].attn.k_bias, sd["blocks.0.attn.qkv.bias"][768:1536])
    # Casting keeps the checkpoint's periods in fp32 (timm alone would recompute them below fp32).
    enc.half()
    assert enc.vit.rope.periods.dtype == torch.float32
    assert torch.equal(enc.vit.rope.periods, sd["rope_embed.periods"])
    assert "rope.periods" not in enc.vit.state_dict()  # still a non-persistent buffer


# --------------------------------------------------------------------------------------
# Numerics vs the official architecture
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(DINOV3_MODELS))
def test_matches_official_forward_all_archs(name):
    """Every arch (real dims, depth 1), a non-square and a square input."""
    sd = random_official_state_dict(name, seed=11, depth=1)
    enc = build_dinov3(name, sd, depth=1)
    heads = DINOV3_MODELS[name].num_heads
    for b, h, w in ((2, 32, 48), (1, 64, 64)):
        images = rand_images(b, h, w, seed=h + w)
        with torch.no_grad():
            out = enc(images)
            ref = reference_forward(sd, normalise(images), heads)
        assert out.shape == (b, h // 16, w // 16, DINOV3_MODELS[name].embed_dim)
        assert out.std() > 0.5  # not degenerate
        torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)


def test_matches_official_forward_depth2_nonsquare():
    name = "dinov3_vits16plus"
    sd = random_official_state_dict(name, seed=7, depth=2)
    enc = build_dinov3(name, sd, depth=2)
    images = rand_images(2, 48, 80, seed=1)
    with torch.no_grad():
        out = enc(images)
        ref = reference_forward(sd, normalise(images), 6)
        # timm's own Eva forward (its RoPE module, fed the same periods) agrees as well.
        timm_out = enc.vit.forward_features(normalise(images))[:, 5:].reshape(out.shape)
    assert out.shape == (2, 3, 5, 384)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(out, timm_out, atol=ATOL, rtol=0)
    # Transposed input is not a transposed output (RoPE distinguishes h from w), but stays exact.
    with torch.no_grad():
        out_t = enc(images.transpose(-1, -2))
        ref_t = reference_forward(sd, normalise(images.transpose(-1, -2)), 6)
    torch.testing.assert_close(out_t, ref_t, atol=ATOL, rtol=0)


def test_every_part_matters():
    """Perturbing the checkpoint's RoPE periods (e.g. bf16-rounded, as released checkpoints reportedly
    hold them), the k-bias mask or the storage tokens changes the output, and the encoder follows the
    official forward in each case (it uses the stored values, not a recomputed formula)."""
    name = "dinov3_vits16"
    sd = random_official_state_dict(name, seed=5, depth=2)
    images = rand_images(1, 64, 48, seed=9)
    with torch.no_grad():
        base = build_dinov3(name, sd, depth=2)(images)
    variants = {
        "bf16 periods": {**sd, "rope_embed.periods": sd["rope_embed.periods"].to(torch.bfloat16)},
        "unmasked k bias": {**sd, "blocks.0.attn.qkv.bias_mask": torch.ones(3 * 384)},
        "storage tokens": {**sd, "storage_tokens": sd["storage_tokens"] + torch.linspace(-1, 1, 384)},
        "mask_token (0 * mask_token)": {**sd, "mask_token": torch.full((1, 384), 3.0)},
    }
    for label, variant in variants.items():
        with torch.no_grad():
            out = build_dinov3(name, variant, depth=2)(images)
            ref = reference_forward({k: v.float() for k, v in variant.items()}, normalise(images), 6)
        torch.testing.assert_close(out, ref, atol=ATOL, rtol=0, msg=label)
        diff = (out - base).abs().max().item()
        if label.startswith("mask_token"):
            assert diff == 0, label  # unused at inference, as in the official model
        else:
            assert diff > 1e-3, f"{label}: {diff}"


def test_mask_token_optional():
    name = "dinov3_vits16"
    sd = random_official_state_dict(name, depth=1)
    images = rand_images(1, 32, 32)
    without = {k: v for k, v in sd.items() if k != "mask_token"}
    with torch.no_grad():
        torch.testing.assert_close(
            build_dinov3(name, without, depth=1)(images), build_dinov3(name, sd, depth=1)(images), atol=0, rtol=0
        )


def test_normalisation_applied_once():
    name = "dinov3_vits16"
    enc = build_dinov3(name, random_official_state_dict(name, depth=1), depth=1)
    mean_image = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1).expand(1, 3, 64, 64).clone()
    with torch.no_grad():
        out = enc(mean_image)
        raw = enc.vit.forward_features(torch.zeros(1, 3, 64, 64))[:, 5:].reshape(out.shape)
        not_normalised = enc.vit.forward_features(mean_image)[:, 5:].reshape(out.shape)
    torch.testing.assert_close(out, raw, atol=1e-5, rtol=0)
    assert (out - not_normalised).abs().max() > 1e-2


def test_input_validation():
    enc = build_dinov3("dinov3_vits16", depth=1)
    with pytest.raises(ValueError, match="multiple"):
        enc(torch.rand(1, 3, 40, 48))
    with pytest.raises(ValueError):
        enc(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError):
        enc(torch.rand(3, 32, 32))
    with pytest.raises(TypeError):
        enc(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    assert isinstance(enc, DinoV3Encoder)
    assert enc.patch_size == 16 and enc.embed_dim == 384 and enc.name == "dinov3_vits16"
    assert enc.num_register_tokens == 4 and enc.depth == 1
    norms = [m for m in enc.vit.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 3 and all(m.eps == 1e-5 for m in norms)  # official "layernormbf16"
    assert build_dinov3("dinov3_vits16plus", depth=2).depth == 2
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())


# --------------------------------------------------------------------------------------
# Loading / errors
# --------------------------------------------------------------------------------------


def test_load_state_dict_file(tmp_path, monkeypatch):
    assert load_state_dict_file is dinov2.load_state_dict_file  # reused, not copied
    name = "dinov3_vits16"
    sd = random_official_state_dict(name, depth=1)
    sd["rope_embed.periods"] = sd["rope_embed.periods"].to(torch.bfloat16)
    plain, teacher = tmp_path / "plain.pth", tmp_path / "teacher.pth"
    torch.save(sd, plain)
    torch.save({"teacher": {f"backbone.{k}": v for k, v in sd.items()}, "iteration": 3}, teacher)
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: calls.append(kw) or real_load(*a, **kw))
    for path in (plain, teacher):
        loaded = load_state_dict_file(path)
        assert list(loaded) == list(sd), path
        assert all(torch.equal(loaded[k], sd[k]) and loaded[k].dtype == sd[k].dtype for k in sd)
    assert len(calls) == 2
    assert all(kw.get("weights_only") is True and kw.get("map_location") == "cpu" for kw in calls)
    images = rand_images(1, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(
            build_dinov3(name, load_state_dict_file(plain), depth=1)(images),
            build_dinov3(name, sd, depth=1)(images),
            atol=0,
            rtol=0,
        )


def test_missing_and_unexpected_keys_are_named():
    name = "dinov3_vits16"
    sd = random_official_state_dict(name, depth=1)
    for key in ("blocks.0.ls1.gamma", "rope_embed.periods", "blocks.0.attn.qkv.bias_mask", "storage_tokens"):
        broken = {k: v for k, v in sd.items() if k != key}
        with pytest.raises(RuntimeError, match=rf"^{name}: .*missing keys.*{key.replace('.', '[.]')}"):
            build_dinov3(name, broken, depth=1)
    with pytest.raises(RuntimeError, match=r"blocks\.1\.norm1\.weight"):
        build_dinov3(name, sd, depth=2)  # checkpoint has 1 block, model 2
    with pytest.raises(RuntimeError, match=r"unexpected keys.*blocks\.1\.ls2\.gamma"):
        build_dinov3(name, random_official_state_dict(name, depth=2), depth=1)
    with pytest.raises(RuntimeError, match="extra.thing"):
        build_dinov3(name, {**sd, "extra.thing": torch.zeros(1)}, depth=1)
    with pytest.raises(RuntimeError, match=r"size mismatch.*storage_tokens"):
        build_dinov3(name, {**sd, "storage_tokens": torch.zeros(1, 5, 384)}, depth=1)
    with pytest.raises(RuntimeError, match=r"unexpected keys.*pos_embed"):  # a DINOv2-style key
        build_dinov3(name, {**sd, "pos_embed": torch.zeros(1, 1370, 384)}, depth=1)
    with pytest.raises(RuntimeError, match=r"mlp\.w1\.weight"):  # S+ (SwiGLU) weights into S (MLP)
        build_dinov3(name, random_official_state_dict("dinov3_vits16plus", depth=1), depth=1)
    with pytest.raises(ValueError, match="bias_mask"):
        build_dinov3(name, {**sd, "blocks.0.attn.qkv.bias_mask": torch.full((3 * 384,), math.nan)}, depth=1)


def test_module_exports():
    for attr in (
        "DINOV3_MODELS",
        "PATCH_SIZE",
        "NATIVE_IMAGE_SIZE",
        "DinoV3Encoder",
        "build_dinov3",
        "random_official_state_dict",
        "official_key_shapes",
        "load_state_dict_file",
    ):
        assert hasattr(dv, attr) and attr in dv.__all__, attr
    assert dv.DinoV3Encoder.patch_size == 16
