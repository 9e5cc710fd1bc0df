"""SAM2's mask decoder, re-arranged for a grid of single clicks on one image (the fast path).

``Sam2Proposer.decode_points`` runs the official ``MaskDecoder`` as the reference does: every
prompt gets its own copy of the 64×64×256 image embedding, every matrix product is done in the
order the module writes it, all four mask tokens are upscaled to 256² for every prompt, and the
selection of the best multimask output and the ``iou_pred > 0.4`` filter (method.md §4.2)
happen afterwards. On a CPU that is memory-bound work (adds, copies and norms over
[N, 4096, 256] tensors), ~0.13–0.19 s per prompt for any SAM2 size.

:class:`PointGridDecoder` computes the same function with the same weights, in an order that
does far less work. Every change is an exact identity (up to float rounding):

1. *Shared first layer.* The dense prompt is the constant ``no_mask_embed``, so before the first
   image→token update the image tokens are identical for all prompts: their key/value/query
   projections are computed once per image, not once per prompt.
2. *Re-associated attention.* With T ≈ 8 tokens per prompt and L = 4096 image tokens,
   ``softmax(Q·(X·Wk + b)ᵀ)·(X·Wv + b)`` is computed as ``softmax((Q·Wk)·Xᵀ)·X·Wvᵀ + b``
   (the key bias is constant along the softmax axis and cancels; attention rows sum to one), and
   ``A·V·Woᵀ`` as ``A·(V·Woᵀ)``. No [N, L, 128] projection of the per-prompt image tokens is ever
   materialised.
3. *Filter before upscaling.* The predicted IoUs come from the IoU token, before any mask is
   built, so the best multimask token and the strict ``> threshold`` filter are applied first and
   only surviving prompts are upscaled, each for its one selected token.
4. *Channels-last upscaling.* ``ConvTranspose2d(k=2, s=2)`` touches each input pixel alone, so
   both upscaling steps are plain matrix products in a [pixel, sub-pixel, channel] layout;
   ``LayerNorm2d`` becomes ``F.layer_norm`` over the last axis, the high-res skip features are
   re-laid out once per image, and the 32-channel 256² map is contracted with the hypernetwork
   vector before it would ever need a transpose.

For throughput, :meth:`PointGridDecoder.decode` is split into :meth:`~PointGridDecoder.front`
(transformer + IoU head: fixed shapes, what ``torch.compile`` gets) and
:meth:`~PointGridDecoder.select_and_upscale` (filter, then upscaling of a data-dependent number
of prompts). Under bf16 autocast the IoU head runs in fp32 and the upscaling in bf16 throughout;
on CUDA each upscaling GEMM is one broadcast batched GEMM over all kept prompts of a batch.

Shapes: N prompts, T tokens per prompt, L = 64·64 image tokens, C = 256 channels, Ci = C / 2
attention channels, H heads of d = Ci / H channels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class _ImageState:
    """Per-image tensors shared by every prompt batch (all on the model's device)."""

    src: Tensor  # [L, C] image embedding + no_mask_embed
    pe: Tensor  # [L, C] dense positional encoding
    k1: Tensor  # [H, L, d] layer-1 token→image keys   (k_proj(src + pe))
    v1: Tensor  # [H, L, d] layer-1 token→image values (v_proj(src))
    q1: Tensor  # [H, L, d] layer-1 image→token queries (q_proj(src + pe))
    skip1: Tensor  # [L, 4, C/8·2] high-res stride-8 features + dc1 bias, channels last
    skip0: Tensor  # [L, 4, 4, C/8] high-res stride-4 features + dc2 bias, channels last
    hw: tuple[int, int]  # (64, 64) embedding grid


def _heads(x: Tensor, h: int) -> Tensor:
    """[..., n, h·d] → [..., h, n, d]."""
    *lead, n, c = x.shape
    return x.reshape(*lead, n, h, c // h).transpose(-3, -2)


def _merge_heads(x: Tensor) -> Tensor:
    """[..., h, n, d] → [..., n, h·d]."""
    *lead, h, n, d = x.shape
    return x.transpose(-3, -2).reshape(*lead, n, h * d)


class PointGridDecoder:
    """Multimask point-prompt decoding with early selection, for one image at a time.

    Args:
        sam2_model: a ``sam2`` SAM2Base (weights loaded). Its prompt encoder and mask decoder are
            used as they are (no weights copied, nothing registered: a plain object, so the
            proposer's state dict is unchanged); only the order of operations changes.
        upscale_batch: prompts upscaled together (bounds the [n, 4096, 16, 32] buffer:
            8 MiB per prompt in fp32).
    """

    def __init__(self, sam2_model: nn.Module, upscale_batch: int = 16):
        self.prompt_encoder = sam2_model.sam_prompt_encoder
        self.decoder = sam2_model.sam_mask_decoder
        d = self.decoder
        if not d.use_high_res_features:
            raise ValueError("PointGridDecoder needs a SAM2 mask decoder with high-res features (all SAM2/2.1 models)")
        if len(d.transformer.layers) != 2:
            raise ValueError(f"expected a 2-layer two-way transformer, got {len(d.transformer.layers)}")
        self.upscale_batch = upscale_batch
        self.token_offset = 1 if d.pred_obj_scores else 0

    # ------------------------------------------------------------------ per image

    @torch.no_grad()
    def prepare(self, image_embed: Tensor, high_res: tuple[Tensor, Tensor]) -> _ImageState:
        """image_embed [1, C, 64, 64]; high_res ([1, C/8, 256, 256], [1, C/4, 128, 128]) → shared state."""
        if image_embed.shape[0] != 1:
            raise ValueError("prepare one image at a time")
        d, t = self.decoder, self.decoder.transformer
        _, c, gh, gw = image_embed.shape
        dense = self.prompt_encoder.no_mask_embed.weight.reshape(1, c)  # the dense prompt with no mask input
        src = image_embed[0].flatten(1).T + dense  # [L, C]
        pe = self.prompt_encoder.get_dense_pe()[0].flatten(1).T.to(src.dtype)  # [L, C]
        layer1 = t.layers[0]
        nh = layer1.cross_attn_token_to_image.num_heads
        kp = src + pe
        k1 = _heads(layer1.cross_attn_token_to_image.k_proj(kp), nh)
        v1 = _heads(layer1.cross_attn_token_to_image.v_proj(src), nh)
        q1 = _heads(layer1.cross_attn_image_to_token.q_proj(kp), layer1.cross_attn_image_to_token.num_heads)
        dc1, _, _, dc2, _ = d.output_upscaling
        feat_s0, feat_s1 = high_res
        c1, c0 = feat_s1.shape[1], feat_s0.shape[1]
        # feat_s1 [c1, 2gh, 2gw] → [(y, x), (i, j), c1]: pixel (2y+i, 2x+j) of the stride-8 grid.
        skip1 = feat_s1[0].reshape(c1, gh, 2, gw, 2).permute(1, 3, 2, 4, 0).reshape(gh * gw, 4, c1) + dc1.bias
        # feat_s0 [c0, 4gh, 4gw] → [(y, x), (i, j), (i2, j2), c0]: pixel (4y+2i+i2, 4x+2j+j2).
        skip0 = (
            feat_s0[0].reshape(c0, gh, 2, 2, gw, 2, 2).permute(1, 4, 2, 5, 3, 6, 0).reshape(gh * gw, 4, 4, c0)
            + dc2.bias
        )
        return _ImageState(src, pe, k1, v1, q1, skip1.contiguous(), skip0.contiguous(), (gh, gw))

    # ------------------------------------------------------------------ per prompt batch

    @torch.no_grad()
    def decode(
        self, state: _ImageState, points: Tensor, iou_threshold: float, upscale_batch: int | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One positive click per prompt; best of the three multimask outputs; strict IoU filter.

        Args:
            state: from :meth:`prepare`.
            points: [N, 2] (x, y) in SAM2 input pixels (the prompt encoder adds 0.5 itself).
            iou_threshold: keep prompts whose selected predicted IoU is ``> iou_threshold``.
            upscale_batch: prompts upscaled together (default: the constructor's).
        Returns:
            kept [K] indices into ``points``, logits [K, 256, 256] of the selected mask, iou [K].
        """
        hs, keys, iou, best = self.front(state, points)
        return self.select_and_upscale(state, hs, keys, iou, best, iou_threshold, upscale_batch)

    @torch.no_grad()
    def front(self, state: _ImageState, points: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The two-way transformer and the IoU head (fixed shapes: the part worth ``torch.compile``).

        Returns (tokens hs [N, T, C], image tokens keys [N, L, C], selected IoU [N] fp32, index of
        the selected multimask token [N] in 0..2). The IoU head runs in fp32 with autocast off,
        so under bf16 autocast the IoU values, the argmax and the threshold filter are fp32 math
        (on the bf16 transformer's tokens).
        """
        hs, keys = self._transformer(state, points)
        s = self.token_offset
        with torch.autocast(hs.device.type, enabled=False):
            iou_all = self.decoder.iou_prediction_head(hs[:, s].float())  # [N, 4]
        iou3 = iou_all[:, 1:]  # multimask tokens 1..3 (method.md §4.2); sigmoid inside when configured
        best = iou3.argmax(dim=1)
        iou = iou3.gather(1, best[:, None])[:, 0]
        return hs, keys, iou, best

    @torch.no_grad()
    def select_and_upscale(
        self,
        state: _ImageState,
        hs: Tensor,
        keys: Tensor,
        iou: Tensor,
        best: Tensor,
        iou_threshold: float,
        upscale_batch: int | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Strict IoU filter on :meth:`front`'s outputs, then the selected token's mask for the survivors.

        Returns kept [K] indices, logits [K, 4·gh, 4·gw], iou [K] (see :meth:`decode`).
        """
        s = self.token_offset
        kept = torch.nonzero(iou > iou_threshold).flatten()
        if kept.numel() == 0:
            gh, gw = state.hw
            return kept, keys.new_zeros(0, 4 * gh, 4 * gw), iou[kept]
        mask_tokens = hs[kept, s + 1 : s + 1 + self.decoder.num_mask_tokens]  # [K, 4, C]
        sel = best[kept] + 1
        hyper = torch.stack(
            [mlp(mask_tokens[:, i]) for i, mlp in enumerate(self.decoder.output_hypernetworks_mlps)], dim=1
        )  # [K, 4, C/8]
        hyper = hyper[torch.arange(kept.numel(), device=hyper.device), sel]  # [K, C/8]
        ub = upscale_batch or self.upscale_batch
        logits = torch.cat(
            [self._upscale(state, keys[kept[i : i + ub]], hyper[i : i + ub]) for i in range(0, kept.numel(), ub)]
        )
        return kept, logits, iou[kept]

    def _transformer(self, state: _ImageState, points: Tensor) -> tuple[Tensor, Tensor]:
        """The two-way transformer → (tokens hs [N, T, C], image tokens keys [N, L, C])."""
        d, t = self.decoder, self.decoder.transformer
        n = points.shape[0]
        coords = points[:, None, :].to(state.src.dtype)
        labels = torch.ones(n, 1, dtype=torch.int, device=points.device)
        sparse, _ = self.prompt_encoder(points=(coords, labels), boxes=None, masks=None)  # [N, 2, C]
        if d.pred_obj_scores:
            out_tokens = torch.cat([d.obj_score_token.weight, d.iou_token.weight, d.mask_tokens.weight], dim=0)
        else:
            out_tokens = torch.cat([d.iou_token.weight, d.mask_tokens.weight], dim=0)
        tokens = torch.cat([out_tokens[None].expand(n, -1, -1), sparse.to(out_tokens.dtype)], dim=1)  # [N, T, C]
        src, pe = state.src, state.pe

        # Layer 1 (skip_first_layer_pe): image tokens are still the shared ``src``.
        l1 = t.layers[0]
        q = l1.norm1(l1.self_attn(q=tokens, k=tokens, v=tokens))
        a = l1.cross_attn_token_to_image
        qh = _heads(a.q_proj(q + tokens), a.num_heads)  # [N, H, T, d]
        nh, tq, dh = qh.shape[1], qh.shape[2], qh.shape[3]
        qf = qh.permute(1, 0, 2, 3).reshape(nh, n * tq, dh)  # prompts folded into the query axis
        o = F.scaled_dot_product_attention(qf, state.k1, state.v1)  # [H, N·T, d]
        o = o.reshape(nh, n, tq, dh).permute(1, 0, 2, 3)  # [N, H, T, d]
        q = l1.norm2(q + a.out_proj(_merge_heads(o)))
        q = l1.norm3(q + l1.mlp(q))
        a = l1.cross_attn_image_to_token
        keys = self._image_to_token(a, state.q1, q + tokens, q, residual=src.expand(n, -1, -1))
        keys = l1.norm4(keys)

        # Layer 2: per-prompt image tokens.
        l2 = t.layers[1]
        q = l2.norm1(q + l2.self_attn(q=q + tokens, k=q + tokens, v=q))
        kp = keys + pe  # [N, L, C], used by both cross attentions
        q = l2.norm2(q + self._token_to_image(l2.cross_attn_token_to_image, q + tokens, kp, keys))
        q = l2.norm3(q + l2.mlp(q))
        a = l2.cross_attn_image_to_token
        keys = l2.norm4(self._image_to_token_proj(a, kp, q + tokens, q, residual=keys))
        del kp

        # Final token→image attention.
        kp = keys + pe
        q = t.norm_final_attn(q + self._token_to_image(t.final_attn_token_to_image, q + tokens, kp, keys))
        return q, keys

    @staticmethod
    def _token_to_image(a: nn.Module, q_in: Tensor, k_in: Tensor, v_in: Tensor) -> Tensor:
        """``a(q=q_in, k=k_in, v=v_in)`` for [N, T, C] queries over [N, L, C] image tokens, re-associated.

        scores_h = (q_h · Wk_h) · k_inᵀ (the key bias adds a constant per row: cancels in softmax);
        out_h = (softmax · v_in) · Wv_hᵀ + bv_h (rows of the softmax sum to one).
        """
        n, tq, _ = q_in.shape
        h = a.num_heads
        dh = a.internal_dim // h
        qh = _heads(a.q_proj(q_in), h)  # [N, H, T, d]
        wk = a.k_proj.weight.reshape(h, dh, -1)  # [H, d, C]
        qk = torch.einsum("nhtd,hdc->nhtc", qh, wk).reshape(n, h * tq, -1)  # [N, H·T, C]
        scores = torch.bmm(qk, k_in.transpose(1, 2)).mul_(1.0 / math.sqrt(dh))  # [N, H·T, L]
        attn = scores.softmax(dim=-1)
        av = torch.bmm(attn, v_in).reshape(n, h, tq, -1)  # [N, H, T, C]
        wv = a.v_proj.weight.reshape(h, dh, -1)  # [H, d, C]
        o = torch.einsum("nhtc,hdc->nhtd", av, wv) + a.v_proj.bias.reshape(1, h, 1, dh)
        return a.out_proj(_merge_heads(o))

    @staticmethod
    def _image_to_token(a: nn.Module, qh_img: Tensor, k_in: Tensor, v_in: Tensor, residual: Tensor) -> Tensor:
        """``residual + a(q=image, k=k_in, v=v_in)`` with shared image queries already projected ([H, L, d]).

        Returns [N, L, C]. ``A · (V · Woᵀ)`` instead of ``(A · V) · Woᵀ``.
        """
        n, tk, _ = k_in.shape
        h = a.num_heads
        dh = a.internal_dim // h
        kh = _heads(a.k_proj(k_in), h)  # [N, H, T, d]
        vh = _heads(a.v_proj(v_in), h)  # [N, H, T, d]
        kf = kh.permute(1, 3, 0, 2).reshape(h, dh, n * tk)  # [H, d, N·T]
        scores = torch.bmm(qh_img, kf).mul_(1.0 / math.sqrt(dh))  # [H, L, N·T]
        attn = scores.reshape(h, -1, n, tk).softmax(dim=-1)  # softmax over each prompt's tokens
        return PointGridDecoder._apply_image_attention(a, attn.permute(2, 1, 0, 3), vh, residual)

    @staticmethod
    def _image_to_token_proj(a: nn.Module, q_img: Tensor, k_in: Tensor, v_in: Tensor, residual: Tensor) -> Tensor:
        """``residual + a(q=q_img, k=k_in, v=v_in)`` for per-prompt image queries q_img [N, L, C].

        scores[l, h, t] = q_img[l] · (Wq_hᵀ · k_h[t]) + bq_h · k_h[t]: no [N, L, Ci] projection.
        """
        n, tk, _ = k_in.shape
        h = a.num_heads
        dh = a.internal_dim // h
        kh = _heads(a.k_proj(k_in), h)  # [N, H, T, d]
        vh = _heads(a.v_proj(v_in), h)
        wq = a.q_proj.weight.reshape(h, dh, -1)  # [H, d, C]
        m = torch.einsum("nhtd,hdc->nhtc", kh, wq).reshape(n, h * tk, -1)  # [N, H·T, C]
        bias = torch.einsum("nhtd,hd->nht", kh, a.q_proj.bias.reshape(h, dh)).reshape(n, 1, h * tk)
        scores = torch.baddbmm(bias, q_img, m.transpose(1, 2)).mul_(1.0 / math.sqrt(dh))  # [N, L, H·T]
        attn = scores.reshape(n, -1, h, tk).softmax(dim=-1)  # [N, L, H, T]
        return PointGridDecoder._apply_image_attention(a, attn, vh, residual)

    @staticmethod
    def _apply_image_attention(a: nn.Module, attn: Tensor, vh: Tensor, residual: Tensor) -> Tensor:
        """residual + out_proj(attention output): attn [N, L, H, T], vh [N, H, T, d] → [N, L, C]."""
        n, l, h, tk = attn.shape  # noqa: E741 (L: tokens, as in the docstring)
        dh = vh.shape[-1]
        wo = a.out_proj.weight.reshape(-1, h, dh)  # [C, H, d]
        vw = torch.einsum("nhtd,chd->nhtc", vh, wo)  # [N, H, T, C]
        # The attention weights of each head sum to one over T, so over all H heads to H: adding
        # bias / H to every row of V·Woᵀ adds the output bias exactly, without a pass over [N, L, C].
        vw = (vw + a.out_proj.bias / h).reshape(n, h * tk, -1)
        return torch.baddbmm(residual, attn.reshape(n, l, h * tk), vw)

    def _upscale(self, state: _ImageState, keys: Tensor, hyper: Tensor) -> Tensor:
        """keys [k, L, C], hyper [k, C/8] → mask logits [k, 4·gh, 4·gw] for the selected token.

        Runs in one explicit dtype with autocast off: bf16 when called under bf16 autocast (the
        upscaling is the decoder's largest work), else the dtype of ``keys``.
        """
        dev = keys.device.type
        dt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else keys.dtype
        with torch.autocast(dev, enabled=False):
            return self._upscale_in(state, keys.to(dt), hyper.to(dt))

    def _upscale_in(self, state: _ImageState, keys: Tensor, hyper: Tensor) -> Tensor:
        dc1, ln1, act1, dc2, act2 = self.decoder.output_upscaling
        dt = keys.dtype
        k, l, c = keys.shape  # noqa: E741 (L: tokens)
        gh, gw = state.hw
        w1 = dc1.weight.permute(0, 2, 3, 1).reshape(c, -1).to(dt)  # [C, (i, j, c1)]
        c1 = w1.shape[1] // 4
        x = _gemm_plus(state.skip1.reshape(l, 4 * c1).to(dt), keys, w1)  # [k, L, 4·c1]
        x = x.reshape(k, l, 4, c1)
        x = act1(F.layer_norm(x, (c1,), ln1.weight.to(dt), ln1.bias.to(dt), ln1.eps))
        w2 = dc2.weight.permute(0, 2, 3, 1).reshape(c1, -1).to(dt)  # [c1, (i2, j2, c0)]
        y = _gemm_plus(state.skip0.reshape(l * 4, -1).to(dt), x.reshape(k, l * 4, c1), w2)  # [k, L·4, (i2, j2, c0)]
        x = act2(y)
        m = torch.bmm(x.reshape(k, l * 16, -1), hyper[:, :, None]).reshape(k, gh, gw, 2, 2, 2, 2)  # y x i j i2 j2
        return m.permute(0, 1, 3, 5, 2, 4, 6).reshape(k, 4 * gh, 4 * gw)


def _gemm_plus(bias: Tensor, a: Tensor, w: Tensor) -> Tensor:
    """``bias + a[p] @ w`` for every p: bias [m, n], a [k, m, c], w [c, n] → [k, m, n].

    CUDA: one batched GEMM with the broadcast bias as its added term (one kernel). CPU: one GEMM
    per prompt written in place (measured faster there than the batched form, no add pass).
    """
    if a.device.type == "cuda":
        return torch.baddbmm(bias, a, w.expand(a.shape[0], -1, -1))
    out = a.new_empty(a.shape[0], a.shape[1], w.shape[1])
    for p in range(a.shape[0]):
        torch.addmm(bias, a[p], w, out=out[p])
    return out
