"""A Qwen3 decoder forward over a static cache, on the weights of the loaded `qwen_tts` modules.

Both the talker and the code predictor are Qwen3 decoders: RMSNorm, attention with
per-head q/k RMSNorm and RoPE, SwiGLU MLP. The talker's "interleaved M-RoPE" gives all
three position axes the same index, so it is plain RoPE here.

The products and the attention are not called directly: a layer takes an `Ops` (see
`ops`), the reference maths or the fused forms, chosen once by the runner.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import torch

from fastqwen.engine.cache import StaticKVCache

if TYPE_CHECKING:
    from fastqwen.engine.model import DecoderWeights, LayerDims, LayerWeights
    from fastqwen.engine.ops import Ops


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
        return self.cos[pos], self.sin[pos]  # pos's shape + (D,) each


class Positions(NamedTuple):
    """Where T tokens of each row go: positions (P, T), their RoPE cos/sin (P, T, D) and
    the attention mask (P, 1, rep * T, S). P is B when every row has its own positions (the
    talker: each slot is at its own point of its utterance) or 1 when all rows share them
    (the code predictor, and a prefill), broadcast over the rows.

    The talker's position is a device tensor that moves every frame, so its Positions are
    computed in the step (a few tiny kernels); the code predictor always uses positions
    0..15, so its Positions are built once and reused for free. A NamedTuple, so a
    compiled layer sees four tensors, not an object to guard.
    """

    pos: torch.Tensor  # (P, T) int64
    cos: torch.Tensor  # (P, T, D)
    sin: torch.Tensor
    mask: torch.Tensor  # (P, 1, rep * T, S) bool

    @classmethod
    def at(cls, pos: torch.Tensor, rope: RopeTable, cache: StaticKVCache, rep: int) -> Positions:
        """Positions (P, T), or (T,) shared by every row."""
        pos = pos if pos.dim() == 2 else pos.view(1, -1)
        cos, sin = rope.at(pos)
        return cls(pos, cos, sin, cache.mark_length(cache.causal_mask(pos).repeat(1, 1, rep, 1), 3))


def project(
    x: torch.Tensor,
    w: tuple[torch.Tensor | None, torch.Tensor | None],
    linear: Callable[..., torch.Tensor],
) -> torch.Tensor:
    """`linear(x, *w)`, or x itself when w is (None, None) (an Identity projection)."""
    return x if w[0] is None else linear(x, *w)


def attention_inputs(
    qkv_out: torch.Tensor,
    q_norm: torch.Tensor,
    k_norm: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    dims: LayerDims,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head q/k norm and RoPE on the fused QKV projection (B, T, (Hq + 2 Hkv) D), with
    cos and sin (P, T, D), P = B or 1.

    Returns q (B, Hkv, rep * T, D) with the query heads that share a KV head stacked as
    extra rows of that head (GQA without copying the cache), and k and v stacked as
    (2, B, Hkv, T, D), the layout of a cache layer.
    """
    B, T = qkv_out.shape[0], qkv_out.shape[1]
    hq, hkv, d = dims.num_heads, dims.num_kv_heads, dims.head_dim
    cos, sin = cos[:, None], sin[:, None]  # (P, 1, T, D): the same for every head
    q, k, v = qkv_out.split([hq * d, hkv * d, hkv * d], dim=-1)
    q = rms_norm(q.view(B, T, hq, d), q_norm, dims.eps).transpose(1, 2)  # (B, Hq, T, D)
    k = rms_norm(k.view(B, T, hkv, d), k_norm, dims.eps).transpose(1, 2)  # (B, Hkv, T, D)
    v = v.view(B, T, hkv, d).transpose(1, 2)
    q = q * cos + rotate_half(q) * sin
    k = k * cos + rotate_half(k) * sin
    return q.reshape(B, hkv, (hq // hkv) * T, d), torch.stack((k, v))


def decoder_layer(
    x: torch.Tensor,
    kv: torch.Tensor,
    at: Positions,
    w: LayerWeights,
    dims: LayerDims,
    ops: Ops,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A decoder layer on x (B, T, H) at positions `at.pos` up to the MLP activation,
    writing its keys and values into the cache layer `kv` (2, B, Hkv, S, D) in place.

    Returns x after the attention residual and h = silu(gate) * up; `mlp_down` finishes.
    The layer ends at h, so h is materialised: a compiled down product then reads it
    instead of recomputing the activation for every output row.
    """
    qkv_out = ops.layer_product(x, w.qkv, norm=w.input_norm, eps=dims.eps)
    a = ops.attention(qkv_out, kv, at, w, dims)  # (1, T, Hq D)
    x = ops.layer_product(a, w.o, residual=x)
    return x, ops.layer_product(x, w.gate_up, norm=w.post_norm, eps=dims.eps, swiglu=True)


def mlp_down(x: torch.Tensor, h: torch.Tensor, down: torch.Tensor, ops: Ops) -> torch.Tensor:
    """The rest of a decoder layer after `decoder_layer`: the down product and residual."""
    return ops.layer_product(h, down, residual=x)


def decoder_forward(
    w: DecoderWeights,
    x: torch.Tensor,
    at: Positions,
    cache: StaticKVCache,
    layer: Callable,
    down: Callable,
    final_norm: Callable | None,
) -> torch.Tensor:
    """Run T tokens at positions `at.pos` through the decoder, updating `cache` in place.

    Args:
        x: (B, T, H) input embeddings, one row per slot.
        layer, down, final_norm: `decoder_layer` and `mlp_down` with their ops bound, and
            `rms_norm` (each possibly compiled); final_norm=None leaves the norm to the
            caller (folded into the next product).
    Returns:
        (B, T, H) final-normed hidden states (un-normed when final_norm is None).
    """
    for i, lw in enumerate(w.layers):
        x, h = layer(x, cache.layer(i), at, lw, w.dims)
        x = down(x, h, lw.down)
    return x if final_norm is None else final_norm(x, w.final_norm, w.dims.eps)
