"""One Triton kernel for the attention of one or two new tokens (CUDA, compiled path).

For T <= 2 (every decode step, and the code predictor's two-token first pass of a
frame), everything between the QKV projection and the output projection (per-head
q/k RMSNorm, RoPE, the cache write, scores, softmax, the weighted sum of values) is one
kernel instead of six, and it reads only the valid part of the cache (positions
<= pos), not the whole window. One program per KV head and batch row handles the query
heads that share that KV head, for that row only. The new key and value are written to
the cache and used from registers, so no program reads what it has just stored, except
that the second of two rows reads the first row's key and value after a barrier (a
program's own global stores are visible to its threads after `tl.debug_barrier`), so the
two-token pass is one kernel too.

Batched: the activations are (B, T, ...) for B independent requests, each with its own
cache row (batch dimension 1 of the layer's cache) and its own position, or one position
shared by every row (the code predictor, whose rows all stand at the same step). A
program never looks at another row, and nothing in the launch (block sizes, warps, the
order of the cache blocks) depends on B, so a row's output is bit-identical whatever B
is and whatever the other rows hold. At B = 1 it is the single-request kernel: the same
programs, the same launch configuration, the same numbers.

It rounds where the reference rounds (the normed q/k and each RoPE product go through
the model dtype). Scores and the weighted sum are tensor-core `tl.dot`s (the query rows
padded to 16) with float32 accumulation and an online softmax; as in flash attention,
the softmax weights enter the second product in the model dtype (exact float32 products
for a float32 model). The other op sets keep the plain `attention_inputs` + `attend`
(`ops`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from fastqwen.engine.triton import traceable


@triton.jit
def _round(x, dtype: tl.constexpr):
    return x.to(dtype).to(tl.float32)


@triton.jit
def _norm_rope(
    x, x_rot, w, w_rot, cos, sin, sign, eps: tl.constexpr, D: tl.constexpr, dtype: tl.constexpr
):
    """RMSNorm then RoPE of rows x (R, D); x_rot is x with its halves swapped."""
    r = tl.math.rsqrt(tl.sum(x * x, axis=1) / D + eps)[:, None]
    xn = _round(_round(x * r, dtype) * w, dtype)
    xr = _round(_round(x_rot * r, dtype) * w_rot, dtype) * sign
    return _round(_round(xn * cos, dtype) + _round(xr * sin, dtype), dtype)


@triton.jit
def _decode_attention_kernel(
    qkv_ptr, q_norm_ptr, k_norm_ptr, cos_ptr, sin_ptr, pos_ptr, kv_ptr, out_ptr,
    stride_kv, stride_h, stride_s, stride_b, stride_pos_b, stride_rope_b,
    EPS: tl.constexpr, SCALE: tl.constexpr,
    HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr, BLOCK_S: tl.constexpr,
    QR: tl.constexpr, PRECISION: tl.constexpr, T: tl.constexpr,
):  # fmt: skip
    h = tl.program_id(0)
    b = tl.program_id(1)  # the batch row; its position row is b, or 0 when shared
    REP: tl.constexpr = HQ // HKV
    dtype = kv_ptr.dtype.element_ty
    d = tl.arange(0, D)
    half: tl.constexpr = D // 2
    d_rot = (d + half) % D  # rotate_half(x)[i] = -x[i + D/2] for i < D/2, x[i - D/2] after
    sign = tl.where(d < half, -1.0, 1.0)[None, :]
    kw, kw_rot = tl.load(k_norm_ptr + d).to(tl.float32), tl.load(k_norm_ptr + d_rot).to(tl.float32)
    qw, qw_rot = tl.load(q_norm_ptr + d).to(tl.float32), tl.load(q_norm_ptr + d_rot).to(tl.float32)
    cache = kv_ptr + b.to(tl.int64) * stride_b + h * stride_h  # a big batch's cache > 2**31
    qkv_ptr += b * (T * (HQ + 2 * HKV) * D)
    out_ptr += b * (T * HQ * D)
    pos_ptr += b * stride_pos_b
    cos_ptr += b * stride_rope_b
    sin_ptr += b * stride_rope_b
    rows = tl.arange(0, QR)
    in_group = (rows < REP)[:, None]
    for t in tl.static_range(T):  # token rows in order: row t sees what rows < t wrote
        qkv_row = qkv_ptr + t * (HQ + 2 * HKV) * D
        cos = tl.load(cos_ptr + t * D + d).to(tl.float32)[None, :]
        sin = tl.load(sin_ptr + t * D + d).to(tl.float32)[None, :]
        p = tl.sum(tl.load(pos_ptr + t + tl.arange(0, 1)), axis=0).to(tl.int32)  # 0-d

        k_base = qkv_row + HQ * D + h * D
        k = tl.load(k_base + d).to(tl.float32)[None, :]
        k_rot = tl.load(k_base + d_rot).to(tl.float32)[None, :]
        k = _norm_rope(k, k_rot, kw[None, :], kw_rot[None, :], cos, sin, sign, EPS, D, dtype)
        v = tl.load(qkv_row + (HQ + HKV) * D + h * D + d).to(tl.float32)[None, :]
        tl.store(cache + p * stride_s + d[None, :], k.to(dtype))
        tl.store(cache + stride_kv + p * stride_s + d[None, :], v.to(dtype))
        if T > 1:
            tl.debug_barrier()  # the next row reads these from the cache

        # the query heads of this KV head, padded to QR rows so the products use tl.dot
        q_off = (h * REP + rows)[:, None] * D
        q = tl.load(qkv_row + q_off + d[None, :], mask=in_group, other=0.0).to(tl.float32)
        q_rot = tl.load(qkv_row + q_off + d_rot[None, :], mask=in_group, other=0.0)
        q_rot = q_rot.to(tl.float32)
        q = _norm_rope(q, q_rot, qw[None, :], qw_rot[None, :], cos, sin, sign, EPS, D, dtype)
        q_mm = q.to(dtype)  # exact: q is already rounded to the model dtype

        # online softmax, starting from the new token itself
        m = tl.sum(q * k, axis=1) * SCALE  # (QR,)
        denom = tl.full((QR,), 1.0, tl.float32)
        acc = tl.broadcast_to(v, (QR, D))
        s_idx = tl.arange(0, BLOCK_S)
        for s0 in range(0, p, BLOCK_S):
            s = s0 + s_idx
            valid = s < p
            off = s[:, None] * stride_s + d[None, :]
            kb = tl.load(cache + off, mask=valid[:, None], other=0.0)  # (BS, D)
            vb = tl.load(cache + stride_kv + off, mask=valid[:, None], other=0.0)
            scores = tl.dot(q_mm, tl.trans(kb), input_precision=PRECISION) * SCALE  # (QR, BS)
            scores = tl.where(valid[None, :], scores, float("-inf"))
            m_new = tl.maximum(m, tl.max(scores, axis=1))
            alpha = tl.exp(m - m_new)
            w = tl.exp(scores - m_new[:, None])
            denom = denom * alpha + tl.sum(w, axis=1)
            pv = tl.dot(w.to(dtype), vb, input_precision=PRECISION)  # (QR, D)
            acc = acc * alpha[:, None] + pv
            m = m_new
        out = acc / denom[:, None]
        tl.store(out_ptr + t * HQ * D + q_off + d[None, :], out.to(dtype), mask=in_group)


def launch(kernel, qkv, q_norm, k_norm, cos, sin, pos, kv, num_heads: int, eps: float, **config):
    """Run `kernel` (the Triton kernel, or it wrapped for torch.compile) on these inputs.

    Shapes as `decode_attention`'s. `config` overrides the launch (BLOCK_S, num_warps). The
    defaults are the fastest of bench/kernel_configs.py (results in bench/results/): short
    blocks for the predictor's 16-position window, 128-position blocks for the talker's.
    They depend on the window and the dtype only, never on B (batch invariance).
    """
    B, T = qkv.shape[0], qkv.shape[1]
    if pos.dim() == 1:  # the single-request form: pos (T,), cos and sin (T, D)
        pos, cos, sin = pos.view(1, T), cos.view(1, T, -1), sin.view(1, T, -1)
    P = pos.shape[0]
    if P not in (1, B) or kv.shape[1] != B or T > 2 or kv.stride(4) != 1:
        raise ValueError(
            f"decode_attention: qkv {tuple(qkv.shape)}, pos {tuple(pos.shape)}, kv "
            f"{tuple(kv.shape)} (2, B, Hkv, S, D) with unit stride along D; P must be 1 or B"
        )
    qkv, pos, cos, sin = qkv.contiguous(), pos.contiguous(), cos.contiguous(), sin.contiguous()
    long_block = 128 if kv.element_size() <= 2 else 64  # fp32 128-blocks overflow shared memory
    config = {"BLOCK_S": 32 if kv.shape[3] <= 32 else long_block, "num_warps": 8, **config}
    precision = "ieee" if qkv.dtype == torch.float32 else "tf32"  # tf32 only matters for fp32
    hkv, d = kv.shape[2], kv.shape[4]
    shared = P == 1 and B > 1  # every row at the same positions (the code predictor)
    out = torch.empty((B, T, num_heads * d), dtype=qkv.dtype, device=qkv.device)
    kernel[(hkv, B)](
        qkv, q_norm, k_norm, cos, sin, pos, kv, out,
        kv.stride(0), kv.stride(2), kv.stride(3), kv.stride(1),
        0 if shared else pos.stride(0), 0 if shared else cos.stride(0),
        EPS=eps, SCALE=d**-0.5, HQ=num_heads, HKV=hkv, D=d,
        QR=max(16, num_heads // hkv), PRECISION=precision, T=T, **config,
    )  # fmt: skip
    return out


@triton_op("fastqwen::decode_attention", mutates_args={"kv"})
def decode_attention(
    qkv: torch.Tensor,
    q_norm: torch.Tensor,
    k_norm: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    pos: torch.Tensor,
    kv: torch.Tensor,
    num_heads: int,
    eps: float,
) -> torch.Tensor:
    """Attention output (B, T, Hq * D) of B rows of T = 1 or 2 tokens at ascending positions.

    qkv: (B, T, (Hq + 2 Hkv) D) projection output; pos: (P, T) int64 and cos, sin:
    (P, T, D), where P is B (each row at its own positions) or 1 (shared by every row);
    kv: the layer's (2, B, Hkv, S, D) cache (any strides but D's, e.g. a window view of
    a longer one), each row written at its own `pos` in place. The single-request form,
    pos (T,) and cos, sin (T, D) with B = 1, is accepted too.
    """
    kernel = traceable(_decode_attention_kernel)
    return launch(kernel, qkv, q_norm, k_norm, cos, sin, pos, kv, num_heads, eps)
