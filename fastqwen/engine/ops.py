"""The maths of each op a frame runs, as an explicit choice: reference or fused.

A decoder layer and a token's sampling call five ops: a plain product (`linear`), a
product after an RMSNorm (`norm_linear`), a decoder layer's product with what surrounds
it (`layer_product`), the attention with its cache write (`attention`) and the top-k mask
(`top_k`). `Ops` holds one implementation of each; the runner picks one set, once:

- `REFERENCE`: the reference's maths (F.linear, matmul attention, the k-th value off a
  sort). Eager runs use it, so CPU codes are bit-identical to `qwen_tts`.
- `FUSED`: the same maths written for Inductor. For one or two token rows the products are
  float32 multiply-and-sums (one rounding, like a GEMV), which Inductor turns into
  bandwidth-bound reductions fused with their neighbours instead of GEMM library calls; a
  small enough weight takes its RMSNorm inside the product (`folds_norm`); the attention
  products are multiply-and-sums that read the cache in its own dtype; top-k counts the
  larger scores instead of sorting. Compiled runs without Triton use it.
- `TRITON_INVARIANT`: `TRITON` with every product through `triton.tiled_product`, one tiling
  for any number of rows, so a request's numbers do not depend on its batch.
- `TRITON`: `FUSED` with three hand-written kernels for what Inductor did poorly: the layer
  products of one or two rows (`triton.matvec`), the attention of one or two new tokens
  (`triton.decode_attention`) and the top-k mask (`triton.top_k`). Compiled CUDA runs use
  it; None where Triton is missing. The kernels also run on the CPU under Triton's
  interpreter (TRITON_INTERPRET=1), which is how the tests check them.
- `KERNELS`: for CUDA frames that are replayed from graphs but not compiled, in bfloat16
  or float16: the same three kernels, `matvec` for the one- or two-row heads too, the
  library's fused RMSNorm and GEMMs for larger batches, and each token's sampling as one
  kernel (`triton.sample`). Nothing is left for a compiler to fuse, so a frame launches
  about as many kernels as a compiled one and costs no compile time.

- `PROMPT`: for a whole prompt at once (a prefill), in bfloat16 or float16: the library's
  kernels for whole-prompt work (`F.rms_norm`, `F.scaled_dot_product_attention`, a GEMM
  that adds the residual in its epilogue). The reference ops spend about 65 kernels a
  layer on a prompt, most of them tiny elementwise ones (RMSNorm alone is 8); in a graph
  replay each still costs a few microseconds, so on an H200 a 64-token prefill of the
  1.7B talker took 5.8 ms and was almost all launch cost. These take about 20 a layer.
  Their rounding is not the reference's (the weight is applied before the norm's cast,
  the residual is added before the product's), so float32 runs keep `REFERENCE`.

Every set gives the same tokens up to float rounding; `REFERENCE` gives the reference's
exact numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from fastqwen.engine.layers import Positions, attention_inputs, rms_norm, rotate_half
from fastqwen.engine.sampling import in_top_k, in_top_k_counted

if TYPE_CHECKING:
    from fastqwen.engine.model import LayerDims, LayerWeights

try:  # Triton comes with CUDA builds of torch
    from fastqwen.engine.triton.decode_attention import decode_attention
    from fastqwen.engine.triton.matvec import matvec
    from fastqwen.engine.triton.sample import sample_rows
    from fastqwen.engine.triton.tiled_product import tiled_product
    from fastqwen.engine.triton.top_k import top_k_mask
except ImportError:  # pragma: no cover
    decode_attention = matvec = sample_rows = tiled_product = top_k_mask = None

MATVEC_ROWS = frozenset({1, 2})  # token counts whose layer products use the matvec kernel
FOLD_MAX_WEIGHT = 2**23  # elements; see `fused_norm_linear`


@dataclass(frozen=True)
class Ops:
    """One implementation of each op a frame runs (signatures as the reference ones)."""

    name: str
    linear: Callable  # (x, w, b=None) -> x @ w.T + b
    norm_linear: Callable  # (x, norm, w, eps) -> rms_norm(x) @ w.T
    layer_product: Callable  # (x, w, norm=None, residual=None, eps=0.0, swiglu=False)
    attention: Callable  # (qkv_out, kv, at, w, dims) -> (B, T, Hq D), writes the cache
    top_k: Callable  # (scores (B, V), top_k (B, 1) or 0-d) -> (B, V) bool
    # Whether a row's numbers are the same whatever the number of rows: then the frame
    # also routes the products outside the compiled functions through `linear`.
    invariant: bool = False
    # A token's warp and pick in one call, for sampling without top-p:
    # (scores (B, V), temperature (B, 1), top_k (B, 1), noise (B, V), sampled (B,)) -> (B,).
    # None: `sampling.warp_scores` and `sampling.pick_token`, op by op (compiled, fused).
    sample: Callable | None = None


# ---- reference ---------------------------------------------------------------------------
def rows(x: torch.Tensor) -> int:
    """Token rows of x (B, T, K): the M of its product with a weight."""
    return x.numel() // x.shape[-1]


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear`, one batch row at a time when each row has only one or two tokens.

    The reference runs one request, so its decode products have one or two rows, which
    the CPU BLAS computes as a matrix-vector product with its own summation order; a
    product of B such rows at once is a matrix product that rounds differently. Row by
    row, each request's numbers are exactly the reference's whatever the batch
    (a prompt of many tokens is a matrix product either way).
    """
    if x.dim() == 3 and x.shape[0] > 1 and x.shape[1] <= 2:
        return torch.cat([F.linear(x[i : i + 1], w, b) for i in range(x.shape[0])])
    return F.linear(x, w, b)


def norm_linear(x: torch.Tensor, norm: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
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
    with `swiglu` (w = gate and up stacked, (2 I, H); no residual)."""
    h = x if norm is None else rms_norm(x, norm, eps)
    if swiglu:
        gate, up = linear(h, w).chunk(2, dim=-1)
        return F.silu(gate) * up
    y = linear(h, w)
    return y if residual is None else residual + y


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Float32 attention of q (B, Hkv, R, D) over k, v (B, Hkv, S, D), two matmuls as in
    the reference; masked keys get exactly zero weight."""
    scale = q.shape[-1] ** -0.5
    q32, k32, v32 = q.float(), k.float(), v.float()
    scores = torch.matmul(q32, k32.transpose(-1, -2)) * scale  # (B, Hkv, R, S)
    weights = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
    return torch.matmul(weights, v32)  # (B, Hkv, R, D)


def write_cache(kv: torch.Tensor, pos: torch.Tensor, new_kv: torch.Tensor) -> None:
    """Store new keys and values (2, B, Hkv, T, D) into a cache layer (2, B, Hkv, S, D) at
    positions (P, T): the same positions for every row (P = 1), or each row its own."""
    if pos.shape[0] == 1:
        kv.index_copy_(3, pos[0], new_kv)
        return
    B, T = pos.shape
    index = pos.view(1, B, 1, T, 1).expand(new_kv.shape)
    kv.scatter_(3, index, new_kv)


def _attention(
    qkv_out: torch.Tensor,
    kv: torch.Tensor,
    at: Positions,
    w: LayerWeights,
    dims: LayerDims,
    attend_fn: Callable,
) -> torch.Tensor:
    """q/k norm, RoPE, cache write at `at.pos`, then `attend_fn` over the whole cache."""
    B, T = qkv_out.shape[0], qkv_out.shape[1]
    q, new_kv = attention_inputs(qkv_out, w.q_norm, w.k_norm, at.cos, at.sin, dims)
    write_cache(kv, at.pos, new_kv)
    a = attend_fn(q, kv[0], kv[1], at.mask).to(qkv_out.dtype)  # (B, Hkv, rep T, D)
    return a.reshape(B, dims.num_heads, T, dims.head_dim).transpose(1, 2).reshape(B, T, -1)


def attention(qkv_out, kv, at: Positions, w: LayerWeights, dims: LayerDims) -> torch.Tensor:
    """The attention of a layer on its QKV projection (B, T, (Hq + 2 Hkv) D): q/k norm,
    RoPE, cache write into kv (2, B, Hkv, S, D), then `attend`; returns (B, T, Hq D)."""
    return _attention(qkv_out, kv, at, w, dims, attend)


# ---- fused: the forms Inductor fuses -------------------------------------------------------
def fused_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear`; for one or two token rows in all a float32 multiply-and-sum, rounded
    once (a batch of rows is a matrix product: the library's GEMM)."""
    if rows(x) > 2:
        return F.linear(x, w, b)
    y = (x.unsqueeze(-2).float() * w.float()).sum(-1)
    return (y if b is None else y + b.float()).to(x.dtype)


def folds_norm(w: torch.Tensor) -> bool:
    """Whether `fused_norm_linear` folds the norm into a product with weight w.

    Folding costs a multiply per weight element: free while the product waits on memory,
    slower once the weight is large (the 1.7B talker's gate and up), where normalising the
    row once is cheaper.
    """
    return w.numel() <= FOLD_MAX_WEIGHT


def fused_norm_linear(
    x: torch.Tensor, norm: torch.Tensor, w: torch.Tensor, eps: float
) -> torch.Tensor:
    """`norm_linear`. For one or two tokens and a weight that `folds_norm`, the row's sum of
    squares is accumulated in the same reduction as the product and the scale applied
    after it (x * r @ w = r * (x @ w)), so the norm needs no kernel of its own. In bf16 this
    skips the reference's rounding of the normed row (the teacher-forced KL of
    bench/gpu_check.py covers it)."""
    if not (folds_norm(w) and rows(x) <= 2):
        return fused_linear(rms_norm(x, norm, eps), w)
    xf = x.float().unsqueeze(-2)  # (1, T, 1, K)
    prod = xf * (w.float() * norm.float())  # (1, T, N, K)
    ssq = (xf * xf).expand_as(prod).sum(-1)  # the same for every n, fused with the product
    y = prod.sum(-1) * torch.rsqrt(ssq / x.shape[-1] + eps)
    return y.to(x.dtype)


def fused_norm_swiglu(
    x: torch.Tensor, norm: torch.Tensor, gate_up: torch.Tensor, eps: float
) -> torch.Tensor:
    """silu(gate(h)) * up(h) for h = rms_norm(x): gate and up as two products of the same
    shape, which Inductor computes in one kernel with the activation, the norm folded into
    each where `folds_norm` allows (otherwise normed once for both)."""
    gate_w, up_w = gate_up.chunk(2, dim=0)
    if folds_norm(gate_w):
        gate, up = fused_norm_linear(x, norm, gate_w, eps), fused_norm_linear(x, norm, up_w, eps)
    else:
        h = rms_norm(x, norm, eps)
        gate, up = fused_linear(h, gate_w), fused_linear(h, up_w)
    return F.silu(gate) * up


def fused_layer_product(
    x: torch.Tensor,
    w: torch.Tensor,
    norm: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    eps: float = 0.0,
    swiglu: bool = False,
) -> torch.Tensor:
    """`layer_product` from `fused_linear`, `fused_norm_linear` and `fused_norm_swiglu`."""
    if swiglu:
        return fused_norm_swiglu(x, norm, w, eps)
    y = fused_linear(x, w) if norm is None else fused_norm_linear(x, norm, w, eps)
    return y if residual is None else residual + y


def fused_attend(q, k, v, mask: torch.Tensor) -> torch.Tensor:
    """`attend` with both products as multiply-and-sums, which Inductor turns into a few
    fused reductions that read the cache in its own dtype, instead of casts and GEMMs."""
    scale = q.shape[-1] ** -0.5
    q32, k32, v32 = q.float(), k.float(), v.float()
    scores = (q32.unsqueeze(-2) * k32.unsqueeze(-3)).sum(-1) * scale  # (1, Hkv, R, S)
    weights = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
    return (weights.unsqueeze(-1) * v32.unsqueeze(-3)).sum(-2)  # (1, Hkv, R, D)


def fused_attention(qkv_out, kv, at: Positions, w: LayerWeights, dims: LayerDims):
    """`attention` with `fused_attend`."""
    return _attention(qkv_out, kv, at, w, dims, fused_attend)


# ---- Triton kernels ---------------------------------------------------------------------------
def matvec_layer_product(
    x: torch.Tensor,
    w: torch.Tensor,
    norm: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    eps: float = 0.0,
    swiglu: bool = False,
) -> torch.Tensor:
    """`layer_product` as one `triton.matvec` launch for the token counts in `MATVEC_ROWS`
    (the weight read once for both rows of a two-token pass, or of two batch rows of one
    token); else `fused_layer_product`.

    The kernel takes its rows as (1, T, K): a (2, 1, K) batch is the same two rows in memory,
    so it goes in as (1, 2, K) and comes back in its own shape. (Passed as it was, the
    kernel read T = 1 and returned one row for two: a batch bucket of 2 failed on CUDA.)"""
    n = rows(x)
    if n in MATVEC_ROWS:
        res = None if residual is None else residual.reshape(1, n, residual.shape[-1])
        y = matvec(x.reshape(1, n, x.shape[-1]), w, norm, res, eps, swiglu)
        return y.view(*x.shape[:-1], y.shape[-1])
    return fused_layer_product(x, w, norm, residual, eps, swiglu)


def kernel_attention(qkv_out, kv, at: Positions, w: LayerWeights, dims: LayerDims):
    """`attention` as one `triton.decode_attention` launch for one or two new tokens (norms,
    RoPE, cache write, softmax over the valid cache only); else `fused_attention`."""
    if qkv_out.shape[1] <= 2:
        return decode_attention(
            qkv_out, w.q_norm, w.k_norm, at.cos, at.sin, at.pos, kv, dims.num_heads, dims.eps
        )
    return fused_attention(qkv_out, kv, at, w, dims)


def tiled_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear` as `triton.tiled_product`: the same tiles for any number of rows (the
    bias, where a projection has one, added after the rounded product)."""
    y = tiled_product(x, w, None, None, 0.0, False)
    return y if b is None else y + b


def tiled_norm_linear(
    x: torch.Tensor, norm: torch.Tensor, w: torch.Tensor, eps: float
) -> torch.Tensor:
    return tiled_product(x, w, norm, None, eps, False)


def tiled_layer_product(
    x: torch.Tensor,
    w: torch.Tensor,
    norm: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    eps: float = 0.0,
    swiglu: bool = False,
) -> torch.Tensor:
    return tiled_product(x, w, norm, residual, eps, swiglu)


# ---- uncompiled frames: the kernels alone ---------------------------------------------------
def kernel_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear`: one or two token rows as one `triton.matvec` launch (the library's GEMV
    rounds alike, but is slower at these shapes), more as the library's GEMM."""
    if rows(x) not in MATVEC_ROWS:
        return F.linear(x, w, b)
    y = matvec_layer_product(x, w)
    return y if b is None else y + b


def kernel_norm_linear(
    x: torch.Tensor, norm: torch.Tensor, w: torch.Tensor, eps: float
) -> torch.Tensor:
    """`norm_linear`: the norm inside the `triton.matvec` launch for one or two token rows,
    else the library's fused RMSNorm and GEMM (`kernel_layer_product`)."""
    return kernel_layer_product(x, w, norm=norm, eps=eps)


def kernel_layer_product(
    x: torch.Tensor,
    w: torch.Tensor,
    norm: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    eps: float = 0.0,
    swiglu: bool = False,
) -> torch.Tensor:
    """`layer_product`: one `triton.matvec` launch for one or two token rows (norm, residual
    and SwiGLU folded in), else the library's norm, GEMM and residual epilogue
    (`prompt_layer_product`)."""
    if rows(x) in MATVEC_ROWS:
        return matvec_layer_product(x, w, norm, residual, eps, swiglu)
    return prompt_layer_product(x, w, norm, residual, eps, swiglu)


# ---- whole prompts ----------------------------------------------------------------------------
def prompt_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm as one library kernel (CUDA has a fused one); the weight is applied in
    float32 before the result is cast, where the reference casts first."""
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


def prompt_layer_product(
    x: torch.Tensor,
    w: torch.Tensor,
    norm: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    eps: float = 0.0,
    swiglu: bool = False,
) -> torch.Tensor:
    """`layer_product` for many rows: one norm kernel, then one GEMM, which adds the residual
    in its epilogue (`addmm`) instead of in a kernel of its own."""
    h = x if norm is None else prompt_rms_norm(x, norm, eps)
    if swiglu:
        gate, up = F.linear(h, w).chunk(2, dim=-1)
        return F.silu(gate) * up
    if residual is None:
        return F.linear(h, w)
    y = torch.addmm(residual.reshape(-1, w.shape[0]), h.reshape(-1, w.shape[1]), w.t())
    return y.view(residual.shape)


def prompt_attention(qkv_out, kv, at: Positions, w: LayerWeights, dims: LayerDims):
    """`attention` for a prompt at positions 0..T-1 of a cache window of exactly T: the
    keys it attends to are its own, so the cache is only written, and the attention is one
    causal `scaled_dot_product_attention` (query heads grouped over the KV heads)."""
    B, T = qkv_out.shape[0], qkv_out.shape[1]
    if kv.shape[-2] != T:
        raise ValueError(
            f"prompt_attention runs a prompt on a cache window of its own length; got "
            f"{T} tokens on a window of {kv.shape[-2]} (use `attention` for anything else)"
        )
    hq, hkv, d = dims.num_heads, dims.num_kv_heads, dims.head_dim
    cos, sin = at.cos[:, None], at.sin[:, None]  # (P, 1, T, D)
    q, k, v = qkv_out.split([hq * d, hkv * d, hkv * d], dim=-1)
    q = prompt_rms_norm(q.view(B, T, hq, d), w.q_norm, dims.eps).transpose(1, 2)
    k = prompt_rms_norm(k.view(B, T, hkv, d), w.k_norm, dims.eps).transpose(1, 2)
    v = v.view(B, T, hkv, d).transpose(1, 2)
    q = q * cos + rotate_half(q) * sin  # (B, Hq, T, D)
    k = k * cos + rotate_half(k) * sin  # (B, Hkv, T, D)
    pos = at.pos[0]
    kv[0].index_copy_(2, pos, k)
    kv[1].index_copy_(2, pos, v)
    a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=hq != hkv)
    return a.transpose(1, 2).reshape(B, T, hq * d)


REFERENCE = Ops(
    name="reference",
    linear=linear,
    norm_linear=norm_linear,
    layer_product=layer_product,
    attention=attention,
    top_k=in_top_k,
    invariant=True,  # one matrix-vector product per row (`linear`), as the reference runs
)
FUSED = Ops(
    name="fused",
    linear=fused_linear,
    norm_linear=fused_norm_linear,
    layer_product=fused_layer_product,
    attention=fused_attention,
    top_k=in_top_k_counted,
)
TRITON = (
    None
    if matvec is None
    else Ops(
        name="triton",
        linear=fused_linear,
        norm_linear=fused_norm_linear,
        layer_product=matvec_layer_product,
        attention=kernel_attention,
        top_k=top_k_mask,
    )
)
PROMPT = Ops(
    name="prompt",
    linear=F.linear,
    norm_linear=lambda x, norm, w, eps: F.linear(prompt_rms_norm(x, norm, eps), w),
    layer_product=prompt_layer_product,
    attention=prompt_attention,
    top_k=in_top_k,  # a prefill picks no token
)
# Frames replayed from CUDA graphs with no compile: every product, the attention and the
# sampling of a token are each one launch of a hand-written kernel or of the library's, so
# a frame launches about as many kernels as a compiled one, and a cold start compiles
# nothing (`EngineConfig.compile`). bfloat16 / float16: its norms and residuals round as
# `PROMPT`'s do, so float32 keeps `REFERENCE`.
KERNELS = (
    None
    if matvec is None
    else Ops(
        name="kernels",
        linear=kernel_linear,
        norm_linear=kernel_norm_linear,
        layer_product=kernel_layer_product,
        attention=kernel_attention,
        top_k=top_k_mask,
        sample=sample_rows,
    )
)
# `TRITON` with every product (the single row included) through the tiled kernel, and the
# attention and top-k kernels, which work row by row: a row's numbers do not depend on the
# batch (`EngineConfig.batch_invariant`).
TRITON_INVARIANT = (
    None
    if tiled_product is None
    else Ops(
        name="triton-invariant",
        linear=tiled_linear,
        norm_linear=tiled_norm_linear,
        layer_product=tiled_layer_product,
        attention=kernel_attention,
        top_k=top_k_mask,
        invariant=True,
    )
)
