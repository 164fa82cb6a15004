"""A Qwen3 decoder forward over a static cache, on the weights of the loaded `qwen_tts` modules.

Both the talker (28 layers) and the code predictor (5 layers) are Qwen3 decoders:
RMSNorm, attention with per-head q/k RMSNorm and RoPE, SwiGLU MLP. The talker's
"interleaved M-RoPE" gives all three position axes the same index, so it is plain
RoPE here. Q, K and V (and gate and up) are fused into one matmul each; the original
modules are re-pointed at views of the fused weights, so nothing is stored twice.
"""

from __future__ import annotations

from collections.abc import Callable
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
                raise ValueError(
                    "attention biases are not supported (attention_bias must be False)"
                )
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


def attention_inputs(
    x: torch.Tensor,
    input_norm: torch.Tensor,
    qkv: torch.Tensor,
    q_norm: torch.Tensor,
    k_norm: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Norm, fused QKV projection, per-head q/k norm and RoPE.

    Returns q (1, Hkv, rep * T, D) with the query heads that share a KV head stacked as
    extra rows of that head (GQA without copying the cache; every SDPA backend takes it),
    and k, v (1, Hkv, T, D).
    """
    T = x.shape[1]
    hq, hkv, d = num_heads, num_kv_heads, head_dim
    h = rms_norm(x, input_norm, eps)
    q, k, v = F.linear(h, qkv).split([hq * d, hkv * d, hkv * d], dim=-1)
    q = rms_norm(q.view(1, T, hq, d), q_norm, eps).transpose(1, 2)  # (1, Hq, T, D)
    k = rms_norm(k.view(1, T, hkv, d), k_norm, eps).transpose(1, 2)  # (1, Hkv, T, D)
    v = v.view(1, T, hkv, d).transpose(1, 2)
    q = q * cos + rotate_half(q) * sin
    k = k * cos + rotate_half(k) * sin
    return q.reshape(1, hkv, (hq // hkv) * T, d), k, v


def attention_output_and_mlp(
    x: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    o: torch.Tensor,
    post_norm: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    num_heads: int,
    eps: float,
) -> torch.Tensor:
    """Attention over the cache, output projection and residual, then the SwiGLU MLP.

    q is (1, Hkv, rep * T, D), k and v (1, Hkv, S, D), mask (1, 1, rep * T, S). The
    attention is written out (float32 scores and softmax, masked keys get exactly zero
    weight) so it compiles into the same fused kernels as the rest of the layer instead
    of several library calls per layer.
    """
    T = x.shape[1]
    d = q.shape[-1]
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * d**-0.5  # (1, Hkv, rep T, S)
    weights = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
    a = torch.matmul(weights, v.float()).to(x.dtype)  # (1, Hkv, rep T, D)
    a = a.reshape(1, num_heads, T, d).transpose(1, 2).reshape(1, T, num_heads * d)
    x = x + F.linear(a, o)
    h = rms_norm(x, post_norm, eps)
    gate, up = F.linear(h, gate_up).chunk(2, dim=-1)
    return x + F.linear(F.silu(gate) * up, down)


@dataclass(frozen=True)
class LayerKernels:
    """The two halves of a layer around the cache write: plain functions on
    the CPU, `torch.compile`d on CUDA. Compiling per half keeps compile time to seconds
    (one graph per shape, shared by all layers) while fusing the small elementwise ops."""

    before_attention: Callable = attention_inputs
    after_attention: Callable = attention_output_and_mlp
    final_norm: Callable = rms_norm

    @classmethod
    def compiled(cls) -> LayerKernels:
        def fuse(fn: Callable) -> Callable:
            return torch.compile(fn, dynamic=False, fullgraph=True)

        return cls(fuse(attention_inputs), fuse(attention_output_and_mlp), fuse(rms_norm))


EAGER = LayerKernels()


@dataclass
class Positions:
    """Where T tokens go: positions (T,), their RoPE cos/sin (T, D) and the SDPA mask.

    The talker's position is a device tensor that moves every frame, so its Positions are
    computed in the step (a few tiny kernels); the code predictor always uses positions
    0..15, so its Positions are built once and reused for free.
    """

    pos: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    mask: torch.Tensor  # (1, 1, rep * T, S) bool

    @classmethod
    def at(cls, pos: torch.Tensor, rope: RopeTable, cache: StaticKVCache, rep: int) -> Positions:
        cos, sin = rope.at(pos)
        return cls(pos, cos, sin, cache.causal_mask(pos).repeat(1, 1, rep, 1))


def decoder_forward(
    w: DecoderWeights,
    x: torch.Tensor,
    at: Positions,
    cache: StaticKVCache,
    kernels: LayerKernels = EAGER,
) -> torch.Tensor:
    """Run T tokens at positions `at.pos` through the decoder, updating `cache` in place.

    Args:
        x: (1, T, H) input embeddings.
    Returns:
        (1, T, H) final-normed hidden states.
    """
    for i, lw in enumerate(w.layers):
        # tensors, not the LayerWeights object, so one compiled graph serves every layer
        q, k, v = kernels.before_attention(
            x,
            lw.input_norm,
            lw.qkv,
            lw.q_norm,
            lw.k_norm,
            at.cos,
            at.sin,
            w.num_heads,
            w.num_kv_heads,
            w.head_dim,
            w.eps,
        )
        k_all, v_all = cache.update(i, at.pos, k, v)  # (1, Hkv, S, D)
        x = kernels.after_attention(
            x, q, k_all, v_all, at.mask, lw.o, lw.post_norm, lw.gate_up, lw.down, w.num_heads, w.eps
        )
    return kernels.final_norm(x, w.final_norm, w.eps)
