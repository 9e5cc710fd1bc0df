"""DINOv2 encoder: official checkpoint layout, key mapping to timm, and numerics vs. a plain-torch
re-implementation of the official DinoVisionTransformer forward (facebookresearch/dinov2)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ntt_batch.models import dinov2 as dv
from ntt_batch.models.dinov2 import (
    DINOV2_MODELS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_dinov2,
    load_state_dict_file,
    official_to_timm_state_dict,
    random_official_state_dict,
    timm_to_official_state_dict,
)

ATOL = 1e-4

# Written out by hand from the official DinoVisionTransformer / NestedTensorBlock layout.
GLOBAL_KEYS = {
    "cls_token": lambda d: (1, 1, d),
    "pos_embed": lambda d: (1, 1370, d),  # 1 + 37*37 (trained at 518 px, patch 14)
    "mask_token": lambda d: (1, d),
    "patch_embed.proj.weight": lambda d: (d, 3, 14, 14),
    "patch_embed.proj.bias": lambda d: (d,),
    "norm.weight": lambda d: (d,),
    "norm.bias": lambda d: (d,),
}
BLOCK_KEYS_MLP = [
    "norm1.weight",
    "norm1.bias",
    "attn.qkv.weight",
    "attn.qkv.bias",
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
BLOCK_KEYS_SWIGLU = [k.replace("fc1", "w12").replace("fc2", "w3") for k in BLOCK_KEYS_MLP]


# --------------------------------------------------------------------------------------
# Independent reference: the official forward, in plain torch, from the official state dict
# --------------------------------------------------------------------------------------


def _ref_interpolate_pos_encoding(pos_embed, npatch, w, h):
    """DinoVisionTransformer.interpolate_pos_encoding (offset 0.1, no antialias); w, h = dims 2, 3."""
    n = pos_embed.shape[1] - 1
    if npatch == n and w == h:
        return pos_embed
    cls_pos, patch_pos = pos_embed[:, 0], pos_embed[:, 1:]
    dim = pos_embed.shape[-1]
    w0, h0 = w // 14, h // 14
    m = int(math.sqrt(n))
    patch_pos = F.interpolate(
        patch_pos.reshape(1, m, m, dim).permute(0, 3, 1, 2),
        scale_factor=(float(w0 + 0.1) / m, float(h0 + 0.1) / m),
        mode="bicubic",
        antialias=False,
    )
    assert (w0, h0) == patch_pos.shape[-2:]
    patch_pos = patch_pos.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((cls_pos.unsqueeze(0), patch_pos), dim=1)


def reference_forward(sd, images, num_heads):
    """Official DINOv2 forward_features()["x_norm_patchtokens"] on already-normalised images."""
    ln = lambda x, p: F.layer_norm(x, x.shape[-1:], sd[p + ".weight"], sd[p + ".bias"], eps=1e-6)  # noqa: E731
    lin = lambda x, p: F.linear(x, sd[p + ".weight"], sd[p + ".bias"])  # noqa: E731

    b, _, w, h = images.shape
    x = F.conv2d(images, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=14)
    gh, gw = x.shape[-2:]
    x = x.flatten(2).transpose(1, 2)  # [B, N, D]
    x = torch.cat((sd["cls_token"].expand(b, -1, -1), x), dim=1)
    x = x + _ref_interpolate_pos_encoding(sd["pos_embed"], x.shape[1] - 1, w, h)
    n_reg = 0
    if "register_tokens" in sd:
        n_reg = sd["register_tokens"].shape[1]
        x = torch.cat((x[:, :1], sd["register_tokens"].expand(b, -1, -1), x[:, 1:]), dim=1)

    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    bsz, n, d = x.shape
    hd = d // num_heads
    for i in range(depth):
        p = f"blocks.{i}."
        y = ln(x, p + "norm1")
        qkv = lin(y, p + "attn.qkv").reshape(bsz, n, 3, num_heads, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.softmax((q @ k.transpose(-2, -1)) / math.sqrt(hd), dim=-1)
        y = (attn @ v).transpose(1, 2).reshape(bsz, n, d)
        x = x + sd[p + "ls1.gamma"] * lin(y, p + "attn.proj")
        y = ln(x, p + "norm2")
        if p + "mlp.w12.weight" in sd:
            x1, x2 = lin(y, p + "mlp.w12").chunk(2, dim=-1)
            y = lin(F.silu(x1) * x2, p + "mlp.w3")
        else:
            y = lin(F.gelu(lin(y, p + "mlp.fc1")), p + "mlp.fc2")
        x = x + sd[p + "ls2.gamma"] * y
    x = ln(x, "norm")
    return x[:, 1 + n_reg :].reshape(b, gh, gw, d)


def normalise(images):
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def rand_images(b, h, w, seed=0):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------
# Registry / layout
# --------------------------------------------------------------------------------------


def test_registry_matches_timm_model_names():
    import timm

    assert set(DINOV2_MODELS) == {f"dinov2_vit{s}14{r}" for s in "sblg" for r in ("", "_reg4")}
    for name, arch in DINOV2_MODELS.items():
        assert timm.is_model(arch.timm_name), arch.timm_name
        assert arch.swiglu == ("vitg" in name)
        assert arch.num_register_tokens == (4 if name.endswith("_reg4") else 0)
    assert DINOV2_MODELS["dinov2_vitl14"].timm_name == "vit_large_patch14_dinov2"
    assert DINOV2_MODELS["dinov2_vitg14_reg4"].timm_name == "vit_giant_patch14_reg4_dinov2"
    g = DINOV2_MODELS["dinov2_vitg14"]
    assert (g.embed_dim, g.depth, g.num_heads, g.ffn_hidden) == (1536, 40, 24, 4096)


def test_official_layout_vits14():
    sd = random_official_state_dict("dinov2_vits14")
    d = 384
    expected = {k: f(d) for k, f in GLOBAL_KEYS.items()}
    for i in range(12):
        for k in BLOCK_KEYS_MLP:
            expected[f"blocks.{i}.{k}"] = None
    assert len(expected) == 12 * 14 + 7 == 175
    assert set(sd) == set(expected)
    for k, shape in expected.items():
        if shape is not None:
            assert tuple(sd[k].shape) == shape, k
    assert tuple(sd["blocks.0.attn.qkv.weight"].shape) == (3 * d, d)
    assert tuple(sd["blocks.11.mlp.fc1.weight"].shape) == (4 * d, d)
    assert tuple(sd["blocks.11.mlp.fc2.weight"].shape) == (d, 4 * d)
    assert tuple(sd["blocks.5.ls2.gamma"].shape) == (d,)
    assert all(v.dtype == torch.float32 for v in sd.values())
    assert torch.count_nonzero(sd["mask_token"]) == 0


def test_official_layout_vitg14_swiglu():
    sd = random_official_state_dict("dinov2_vitg14", depth=1)
    assert set(sd) == set(GLOBAL_KEYS) | {f"blocks.0.{k}" for k in BLOCK_KEYS_SWIGLU}
    assert tuple(sd["blocks.0.mlp.w12.weight"].shape) == (8192, 1536)
    assert tuple(sd["blocks.0.mlp.w12.bias"].shape) == (8192,)
    assert tuple(sd["blocks.0.mlp.w3.weight"].shape) == (1536, 4096)
    assert tuple(sd["blocks.0.mlp.w3.bias"].shape) == (1536,)
    assert tuple(sd["pos_embed"].shape) == (1, 1370, 1536)


def test_official_layout_reg4():
    sd = random_official_state_dict("dinov2_vitb14_reg4", depth=1)
    assert tuple(sd["register_tokens"].shape) == (1, 4, 768)
    assert tuple(sd["pos_embed"].shape) == (1, 1370, 768)  # registers get no positional embedding
    assert set(sd) == set(GLOBAL_KEYS) | {"register_tokens"} | {f"blocks.0.{k}" for k in BLOCK_KEYS_MLP}


def test_random_state_dict_deterministic_and_rng_clean():
    before = torch.get_rng_state()
    a = random_official_state_dict("dinov2_vits14", seed=3, depth=1)
    b = random_official_state_dict("dinov2_vits14", seed=3, depth=1)
    c = random_official_state_dict("dinov2_vits14", seed=4, depth=1)
    assert torch.equal(before, torch.get_rng_state())
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["blocks.0.attn.qkv.weight"], c["blocks.0.attn.qkv.weight"])


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="dinov2_vitl14_reg4"):
        build_dinov2("dinov2_vitx14")
    with pytest.raises(ValueError, match="valid names"):
        random_official_state_dict("vit_large_patch14_dinov2")


# --------------------------------------------------------------------------------------
# Mapping
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dinov2_vits14", "dinov2_vitg14"])
def test_round_trip_identity(name):
    sd = random_official_state_dict(name, seed=1, depth=2)
    tm = official_to_timm_state_dict(sd, name)
    assert "mask_token" not in tm
    if "vitg" in name:
        assert "blocks.1.mlp.fc1.weight" in tm and "blocks.1.mlp.w12.weight" not in tm
    back = timm_to_official_state_dict(tm, name)
    assert list(back) == list(sd)  # same keys, same (official state_dict) order
    for k in sd:
        assert torch.equal(back[k], sd[k]), k
    assert set(random_official_state_dict(name, depth=2)) == set(sd)  # input untouched


def test_round_trip_reg4_folds_cls_pos():
    name = "dinov2_vits14_reg4"
    sd = random_official_state_dict(name, seed=2, depth=1)
    tm = official_to_timm_state_dict(sd, name)
    assert torch.equal(tm["cls_token"], sd["cls_token"] + sd["pos_embed"][:, :1])
    assert torch.equal(tm["pos_embed"], sd["pos_embed"][:, 1:])
    assert torch.equal(tm["reg_token"], sd["register_tokens"])
    back = timm_to_official_state_dict(tm, name)
    assert set(back) == set(sd)
    # The (cls_token, pos_embed[:, 0]) split is not recoverable; their sum and everything else is.
    assert torch.equal(back["cls_token"] + back["pos_embed"][:, :1], sd["cls_token"] + sd["pos_embed"][:, :1])
    assert torch.equal(back["pos_embed"][:, 1:], sd["pos_embed"][:, 1:])
    for k in set(sd) - {"cls_token", "pos_embed"}:
        assert torch.equal(back[k], sd[k]), k
    # timm -> official -> timm is exact.
    again = official_to_timm_state_dict(back, name)
    assert set(again) == set(tm) and all(torch.equal(again[k], tm[k]) for k in tm)


def test_timm_key_set_matches_timm_model():
    for name in ("dinov2_vits14", "dinov2_vitg14_reg4"):
        enc = build_dinov2(name, depth=1)
        tm = official_to_timm_state_dict(random_official_state_dict(name, depth=1), name)
        ref = enc.vit.state_dict()
        assert set(tm) == set(ref)
        assert all(tm[k].shape == ref[k].shape for k in ref)


def test_chunked_checkpoint_loads_same():
    name, depth, chunk = "dinov2_vits14", 4, 2
    sd = random_official_state_dict(name, seed=5, depth=depth)
    chunked = {}
    for k, v in sd.items():
        if k.startswith("blocks."):
            i = int(k.split(".")[1])
            k = k.replace(f"blocks.{i}.", f"blocks.{i // chunk}.{i}.", 1)
        chunked[k] = v
    assert "blocks.1.3.ls1.gamma" in chunked and "blocks.3.ls1.gamma" not in chunked
    images = rand_images(1, 56, 70)
    a = build_dinov2(name, sd, depth=depth)(images)
    b = build_dinov2(name, chunked, depth=depth)(images)
    assert torch.equal(a, b)


# --------------------------------------------------------------------------------------
# Numerics vs the official architecture
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, depth",
    [("dinov2_vits14", 2), ("dinov2_vits14_reg4", 2), ("dinov2_vitg14", 1), ("dinov2_vitg14_reg4", 1)],
)
def test_matches_official_forward_518(name, depth):
    sd = random_official_state_dict(name, seed=7, depth=depth)
    enc = build_dinov2(name, sd, depth=depth)
    images = rand_images(2 if "vits" in name else 1, 518, 518, seed=1)
    with torch.no_grad():
        out = enc(images)
        ref = reference_forward(sd, normalise(images), DINOV2_MODELS[name].num_heads)
        # At the trained size our token assembly equals timm's own forward_features too.
        timm_out = enc.vit.forward_features(normalise(images))[:, enc.vit.num_prefix_tokens :]
    d = DINOV2_MODELS[name].embed_dim
    assert out.shape == (images.shape[0], 37, 37, d)
    assert out.std() > 0.5  # not degenerate
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(out, timm_out.reshape(out.shape), atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", list(DINOV2_MODELS))
def test_matches_official_forward_all_archs_small_inputs(name):
    """Every arch (depth 1, real dims), non-native sizes: pos-embed interpolation as official."""
    sd = random_official_state_dict(name, seed=11, depth=1)
    enc = build_dinov2(name, sd, depth=1)
    for h, w in ((56, 84), (70, 70)):
        images = rand_images(1, h, w, seed=h + w)
        with torch.no_grad():
            out = enc(images)
            ref = reference_forward(sd, normalise(images), DINOV2_MODELS[name].num_heads)
        assert out.shape == (1, h // 14, w // 14, DINOV2_MODELS[name].embed_dim)
        torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)


def test_normalisation_applied_once():
    name = "dinov2_vits14"
    enc = build_dinov2(name, random_official_state_dict(name, depth=1), depth=1)
    mean_image = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1).expand(1, 3, 518, 518).clone()
    with torch.no_grad():
        out = enc(mean_image)
        raw = enc.vit.forward_features(torch.zeros(1, 3, 518, 518))[:, 1:].reshape(out.shape)
        not_normalised = enc.vit.forward_features(mean_image)[:, 1:].reshape(out.shape)
    torch.testing.assert_close(out, raw, atol=1e-5, rtol=0)
    assert (out - not_normalised).abs().max() > 1e-2


def test_input_validation():
    enc = build_dinov2("dinov2_vits14", depth=1)
    with pytest.raises(ValueError, match="multiple"):
        enc(torch.rand(1, 3, 50, 56))
    with pytest.raises(ValueError):
        enc(torch.rand(1, 1, 56, 56))
    assert enc.patch_size == 14 and enc.embed_dim == 384 and enc.name == "dinov2_vits14"
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())


# --------------------------------------------------------------------------------------
# Loading / errors
# --------------------------------------------------------------------------------------


def test_load_state_dict_file(tmp_path, monkeypatch):
    name = "dinov2_vits14"
    sd = random_official_state_dict(name, depth=1)
    plain, wrapped, teacher = tmp_path / "plain.pth", tmp_path / "model.pth", tmp_path / "teacher.pth"
    torch.save(sd, plain)
    torch.save({"model": sd}, wrapped)
    torch.save(
        {"teacher": {**{f"backbone.{k}": v for k, v in sd.items()}, "dino_head.w": torch.zeros(2)}, "iteration": 3},
        teacher,
    )
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: calls.append(kw) or real_load(*a, **kw))
    for path in (plain, wrapped, teacher):
        loaded = load_state_dict_file(path)
        assert set(loaded) == set(sd), path
        assert all(torch.equal(loaded[k], sd[k]) for k in sd)
    assert all(kw.get("weights_only") is True and kw.get("map_location") == "cpu" for kw in calls)
    assert len(calls) == 3
    images = rand_images(1, 28, 28)
    torch.testing.assert_close(
        build_dinov2(name, load_state_dict_file(plain), depth=1)(images),
        build_dinov2(name, sd, depth=1)(images),
        atol=0,
        rtol=0,
    )


def test_missing_and_unexpected_keys_are_named():
    name = "dinov2_vits14"
    sd = random_official_state_dict(name, depth=1)
    broken = {k: v for k, v in sd.items() if k != "blocks.0.ls1.gamma"}
    with pytest.raises(RuntimeError, match=r"blocks\.0\.ls1\.gamma"):
        build_dinov2(name, broken, depth=1)
    with pytest.raises(RuntimeError, match=r"blocks\.1\.norm1\.weight"):
        build_dinov2(name, sd, depth=2)  # checkpoint has 1 block, model 2
    with pytest.raises(RuntimeError, match="extra.thing"):
        build_dinov2(name, {**sd, "extra.thing": torch.zeros(1)}, depth=1)
    with pytest.raises(RuntimeError, match="pos_embed"):
        build_dinov2(name, {**sd, "pos_embed": torch.zeros(1, 257, 384)}, depth=1)


def test_register_mismatch_errors():
    plain = random_official_state_dict("dinov2_vits14", depth=1)
    reg = random_official_state_dict("dinov2_vits14_reg4", depth=1)
    with pytest.raises(ValueError, match="register_tokens"):
        build_dinov2("dinov2_vits14_reg4", plain, depth=1)
    with pytest.raises(ValueError, match="_reg4"):
        build_dinov2("dinov2_vits14", reg, depth=1)


def test_module_exports():
    assert dv.IMAGENET_MEAN == (0.485, 0.456, 0.406)
    assert dv.IMAGENET_STD == (0.229, 0.224, 0.225)
    assert dv.DinoV2Encoder.patch_size == 14
