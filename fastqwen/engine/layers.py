"""A Qwen3 decoder forward over a static cache, on the weights of the loaded `qwen_tts` modules.

Both the talker (28 layers) and the code predictor (5 layers) are Qwen3 decoders:
RMSNorm, attention with per-head q/k RMSNorm and RoPE, SwiGLU MLP. The talker's
"interleaved M-RoPE" gives all three position axes the same index, so it is plain
RoPE here. Q, K and V (and gate and up) are fused into one matmul each; the original
modules are re-pointed at views of the fused weights, so nothing is stored twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .cache import StaticKVCache


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm in float32, cast back before the weight, as the reference does."""
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class RopeTable:
    """cos/sin for every position, computed in float32 like the reference, then cast."""

    def __init__(self, inv_freq: torch.Tensor, max_len: int, dtype: torch.dtype):
        pos = torch.arange(max_len, device=inv_freq.device, dtype=torch.float32)
        freqs = pos[:, None] * inv_freq.float()[None, :]  # (S, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (S, D)
        self.cos = emb.cos().to(dtype)
        self.sin = emb.sin().to(dtype)

    def at(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cos[pos], self.sin[pos]  # (T, D) each


@dataclass
class LayerWeights:
    input_norm: torch.Tensor  # (H,)
    qkv: torch.Tensor  # ((Hq + 2 Hkv) D, H)
    q_norm: torch.Tensor  # (D,)
    k_norm: torch.Tensor  # (D,)
    o: torch.Tensor  # (H, Hq D)
    post_norm: torch.Tensor  # (H,)
    gate_up: torch.Tensor  # (2 I, H)
    down: torch.Tensor  # (H, I)


def _fuse(linears: list[torch.nn.Linear]) -> torch.Tensor:
    """Concatenate Linear weights along the output dim and make the modules views of it."""
    fused = torch.cat([lin.weight.data for lin in linears], dim=0)
    start = 0
    for lin in linears:
        rows = lin.weight.shape[0]
        lin.weight.data = fused[start : start + rows]
        start += rows
    return fused


@dataclass
class DecoderWeights:
    layers: list[LayerWeights]
    final_norm: torch.Tensor
    inv_freq: torch.Tensor
    num_heads: int
    num_kv_heads: int
    head_dim: int
    eps: float

    @classmethod
    def from_module(cls, model: torch.nn.Module) -> DecoderWeights:
        """Take the weights of a qwen_tts decoder (`talker.model` or `code_predictor.model`)."""
        layers = []
        for layer in model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            if attn.q_proj.bias is not None:
                raise ValueError("attention biases are not supported (attention_bias must be False)")
            layers.append(
                LayerWeights(
                    input_norm=layer.input_layernorm.weight.data,
                    qkv=_fuse([attn.q_proj, attn.k_proj, attn.v_proj]),
                    q_norm=attn.q_norm.weight.data,
                    k_norm=attn.k_norm.weight.data,
                    o=attn.o_proj.weight.data,
                    post_norm=layer.post_attention_layernorm.weight.data,
                    gate_up=_fuse([mlp.gate_proj, mlp.up_proj]),
                    down=mlp.down_proj.weight.data,
                )
            )
        cfg = model.config
        attn0 = model.layers[0].self_attn
        return cls(
            layers=layers,
            final_norm=model.norm.weight.data,
            inv_freq=model.rotary_emb.inv_freq,
            num_heads=cfg.num_attention_heads,
            num_kv_heads=cfg.num_key_value_heads,
            head_dim=attn0.head_dim,
            eps=cfg.rms_norm_eps,
        )


def decoder_forward(
    w: DecoderWeights, x: torch.Tensor, pos: torch.Tensor, cache: StaticKVCache, rope: RopeTable
) -> torch.Tensor:
    """Run T tokens at positions `pos` through the decoder, updating `cache` in place.

    Args:
        x: (1, T, H) input embeddings.
        pos: (T,) int64 positions, on the device.
    Returns:
        (1, T, H) final-normed hidden states.
    """
    T = x.shape[1]
    hq, hkv, d = w.num_heads, w.num_kv_heads, w.head_dim
    cos, sin = rope.at(pos)  # (T, D)
    rep = hq // hkv
    mask = cache.causal_mask(pos).repeat(1, 1, rep, 1)  # (1, 1, rep * T, S)
    for i, lw in enumerate(w.layers):
        h = rms_norm(x, lw.input_norm, w.eps)
        q, k, v = F.linear(h, lw.qkv).split([hq * d, hkv * d, hkv * d], dim=-1)
        q = rms_norm(q.view(1, T, hq, d), lw.q_norm, w.eps).transpose(1, 2)  # (1, Hq, T, D)
        k = rms_norm(k.view(1, T, hkv, d), lw.k_norm, w.eps).transpose(1, 2)  # (1, Hkv, T, D)
        v = v.view(1, T, hkv, d).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k_all, v_all = cache.update(i, pos, k, v)  # (1, Hkv, S, D)
        # GQA without copying the cache: the query heads sharing a KV head become extra
        # query rows of that head, (1, Hkv, rep * T, D); every SDPA backend accepts this.
        a = F.scaled_dot_product_attention(
            q.reshape(1, hkv, rep * T, d), k_all, v_all, attn_mask=mask, scale=d**-0.5
        ).view(1, hq, T, d)
        x = x + F.linear(a.transpose(1, 2).reshape(1, T, hq * d), lw.o)
        h = rms_norm(x, lw.post_norm, w.eps)
        gate, up = F.linear(h, lw.gate_up).chunk(2, dim=-1)
        x = x + F.linear(F.silu(gate) * up, lw.down)
    return rms_norm(x, w.final_norm, w.eps)
