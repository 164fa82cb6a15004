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

from fastqwen.engine.cache import StaticKVCache

try:  # Triton comes with CUDA builds of torch; only the compiled CUDA path uses it
    from fastqwen.engine.triton.decode_attention import decode_attention
    from fastqwen.engine.triton.matvec import matvec
except ImportError:  # pragma: no cover
    decode_attention = matvec = None

MATVEC_ROWS = frozenset({1, 2})  # token counts whose layer products use the matvec kernel


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


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear`. Under `torch.compile` on CUDA, for one or two tokens, it is written as
    a float32 multiply-and-sum (one rounding, like cuBLAS), which Inductor turns into a
    bandwidth-bound Triton reduction fused with its neighbours instead of a GEMM call."""
    if x.is_cuda and x.shape[-2] <= 2 and torch.compiler.is_compiling():
        y = (x.unsqueeze(-2).float() * w.float()).sum(-1)
        return (y if b is None else y + b.float()).to(x.dtype)
    return F.linear(x, w, b)


def project(x: torch.Tensor, w: tuple[torch.Tensor | None, torch.Tensor | None]) -> torch.Tensor:
    """`linear(x, *w)`, or x itself when w is (None, None) (an Identity projection)."""
    return x if w[0] is None else linear(x, *w)


FOLD_MAX_WEIGHT = 2**23  # elements; see `norm_linear`


def folds_norm(w: torch.Tensor) -> bool:
    """Whether `norm_linear` folds the norm into a product with weight w (when compiled)."""
    return w.numel() <= FOLD_MAX_WEIGHT


def norm_linear(x: torch.Tensor, norm: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """`linear(rms_norm(x, norm, eps), w)`.

    Compiled, for one or two tokens and a weight of at most `FOLD_MAX_WEIGHT` elements,
    the row's sum of squares is accumulated in the same reduction as the product and the
    scale applied after it (x * r @ w = r * (x @ w)), so the norm costs no kernel of its
    own (bf16 then skips the reference's rounding of the normed row: the teacher-forced
    KL in bench/gpu_check.py covers it). On an H100 that made the 1.7B talker's QKV 7.9 us
    against 9.9 for norm + product, but its gate and up (2 x 6144 x 2048) 28 us against
    21: the extra work per weight element no longer hides behind the memory reads.
    """
    if folds_norm(w) and x.shape[-2] <= 2 and torch.compiler.is_compiling():
        xf = x.float().unsqueeze(-2)  # (1, T, 1, K)
        prod = xf * (w.float() * norm.float())  # (1, T, N, K)
        ssq = (xf * xf).expand_as(prod).sum(-1)  # the same for every n, fused with the product
        y = prod.sum(-1) * torch.rsqrt(ssq / x.shape[-1] + eps)
        return y.to(x.dtype)
    return linear(rms_norm(x, norm, eps), w)


def layer_product(
    x: torch.Tensor,
    w: torch.Tensor,
    norm: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    eps: float = 0.0,
    swiglu: bool = False,
) -> torch.Tensor:
    """A decoder layer's product: [residual +] [rms_norm](x) @ w.T, or silu(gate) * up
    with `swiglu` (w = gate and up stacked).

    Compiled on CUDA for the token counts in `MATVEC_ROWS`, one `matvec_kernel` launch
    that reads the weight once for both rows of a two-token pass; otherwise the
    multiply-and-sum forms of `linear` and `norm_linear` that Inductor fuses, or eager
    `F.linear`.
    """
    if (
        matvec is not None
        and x.is_cuda
        and x.shape[-2] in MATVEC_ROWS
        and torch.compiler.is_compiling()
    ):
        return matvec(x, w, norm, residual, eps, swiglu)
    if swiglu:
        return norm_swiglu(x, norm, w, eps)
    y = linear(x, w) if norm is None else norm_linear(x, norm, w, eps)
    return y if residual is None else residual + y


def attention_inputs(
    qkv_out: torch.Tensor,
    q_norm: torch.Tensor,
    k_norm: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head q/k norm and RoPE on the fused QKV projection (1, T, (Hq + 2 Hkv) D).

    Returns q (1, Hkv, rep * T, D) with the query heads that share a KV head stacked as
    extra rows of that head (GQA without copying the cache), and k and v stacked as
    (2, 1, Hkv, T, D), the layout of a cache layer.
    """
    T = qkv_out.shape[1]
    hq, hkv, d = num_heads, num_kv_heads, head_dim
    q, k, v = qkv_out.split([hq * d, hkv * d, hkv * d], dim=-1)
    q = rms_norm(q.view(1, T, hq, d), q_norm, eps).transpose(1, 2)  # (1, Hq, T, D)
    k = rms_norm(k.view(1, T, hkv, d), k_norm, eps).transpose(1, 2)  # (1, Hkv, T, D)
    v = v.view(1, T, hkv, d).transpose(1, 2)
    q = q * cos + rotate_half(q) * sin
    k = k * cos + rotate_half(k) * sin
    return q.reshape(1, hkv, (hq // hkv) * T, d), torch.stack((k, v))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Float32 attention of q (1, Hkv, R, D) over k, v (1, Hkv, S, D); masked keys get
    exactly zero weight.

    Eagerly it is two matmuls, as in the reference. Under `torch.compile` the products
    are written as multiply-and-sum, which Inductor turns into a few fused reductions
    that read the bf16 cache directly, instead of cast kernels and GEMM library calls.
    """
    scale = q.shape[-1] ** -0.5
    q32, k32, v32 = q.float(), k.float(), v.float()
    if torch.compiler.is_compiling():
        scores = (q32.unsqueeze(-2) * k32.unsqueeze(-3)).sum(-1) * scale  # (1, Hkv, R, S)
    else:
        scores = torch.matmul(q32, k32.transpose(-1, -2)) * scale
    weights = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
    if torch.compiler.is_compiling():
        return (weights.unsqueeze(-1) * v32.unsqueeze(-3)).sum(-2)  # (1, Hkv, R, D)
    return torch.matmul(weights, v32)


def decoder_layer(
    x: torch.Tensor,
    kv: torch.Tensor,
    pos: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    mask: torch.Tensor,
    input_norm: torch.Tensor,
    qkv: torch.Tensor,
    q_norm: torch.Tensor,
    k_norm: torch.Tensor,
    o: torch.Tensor,
    post_norm: torch.Tensor,
    gate_up: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A decoder layer on x (1, T, H) at positions `pos` (T,) up to the MLP activation,
    writing its keys and values into the cache layer `kv` (2, 1, Hkv, S, D) in place.
    Returns x after the attention residual and h = silu(gate) * up; `mlp_down` finishes.

    Compiled on CUDA for one or two tokens, a layer is five kernels: four products
    (`layer_product`: QKV with the input norm, O with the residual, gate/up with the
    norm and activation, down with the residual) and the attention (norms, RoPE, cache
    write, softmax: `decode_attention`). The layer ends at h, so h is stored; this also
    kept Inductor (without the matvec kernel) from evaluating the activation inside the
    down product once per output row (10-17 us at 1.7B on an H100 instead of ~8).
    """
    T = x.shape[1]
    qkv_out = layer_product(x, qkv, input_norm, eps=eps)
    if T <= 2 and x.is_cuda and decode_attention is not None and torch.compiler.is_compiling():
        a = decode_attention(qkv_out, q_norm, k_norm, cos, sin, pos, kv, num_heads, eps)
    else:
        q, new_kv = attention_inputs(
            qkv_out, q_norm, k_norm, cos, sin, num_heads, num_kv_heads, head_dim, eps
        )
        kv.index_copy_(3, pos, new_kv)
        a = attend(q, kv[0], kv[1], mask).to(x.dtype)  # (1, Hkv, rep T, D)
        a = a.reshape(1, num_heads, T, head_dim).transpose(1, 2).reshape(1, T, -1)
    x = layer_product(a, o, residual=x)
    return x, layer_product(x, gate_up, post_norm, eps=eps, swiglu=True)


def mlp_down(x: torch.Tensor, h: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """The rest of a decoder layer after `decoder_layer`: the down product and residual."""
    return layer_product(h, down, residual=x)


def norm_swiglu(
    x: torch.Tensor, norm: torch.Tensor, gate_up: torch.Tensor, eps: float
) -> torch.Tensor:
    """silu(gate(h)) * up(h) for h = rms_norm(x), with the fused (2 I, H) weight.

    Compiled, gate and up are two products of the same shape, which Inductor computes in
    one kernel with the activation, the norm folded into each where `norm_linear` folds it
    (otherwise normed once for both).
    """
    if torch.compiler.is_compiling():
        gate_w, up_w = gate_up.chunk(2, dim=0)
        if folds_norm(gate_w):
            gate, up = norm_linear(x, norm, gate_w, eps), norm_linear(x, norm, up_w, eps)
        else:
            h = rms_norm(x, norm, eps)
            gate, up = linear(h, gate_w), linear(h, up_w)
        return F.silu(gate) * up
    gate, up = F.linear(rms_norm(x, norm, eps), gate_up).chunk(2, dim=-1)
    return F.silu(gate) * up


@dataclass
class Positions:
    """Where T tokens go: positions (T,), their RoPE cos/sin (T, D) and the attention mask.

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
    layer: Callable = decoder_layer,
    down: Callable = mlp_down,
    final_norm: Callable | None = rms_norm,
) -> torch.Tensor:
    """Run T tokens at positions `at.pos` through the decoder, updating `cache` in place.

    Args:
        x: (1, T, H) input embeddings.
        layer, down, final_norm: `decoder_layer`, `mlp_down` and `rms_norm`, or compiled
            versions of them;
            final_norm=None leaves the norm to the caller (folded into the next product).
    Returns:
        (1, T, H) final-normed hidden states (un-normed when final_norm is None).
    """
    for i, lw in enumerate(w.layers):
        # tensors, not the LayerWeights object, so one compiled graph serves every layer
        x, h = layer(
            x,
            cache.layer(i),
            at.pos,
            at.cos,
            at.sin,
            at.mask,
            lw.input_norm,
            lw.qkv,
            lw.q_norm,
            lw.k_norm,
            lw.o,
            lw.post_norm,
            lw.gate_up,
            w.num_heads,
            w.num_kv_heads,
            w.head_dim,
            w.eps,
        )
        x = down(x, h, lw.down)
    return x if final_norm is None else final_norm(x, w.final_norm, w.eps)
