"""A decoder layer's product for any number of token rows, batch-invariantly (CUDA).

With B requests decoded together, a layer product is (B T, K) x (K, N) for B T rows.
`matvec` serves one or two rows (the weight streamed once, multiply-and-sum per row); a
cuBLAS GEMM serves many, but picks its algorithm, tiles and split of K by the number of
rows, so a request's numbers change with how many others share its step. Here one
kernel serves every row count with ONE tiling: BLOCK_M rows by BLOCK_N outputs per
program, the K loop in BLOCK_K chunks in ascending order, a `tl.dot` per chunk into a
float32 accumulator, no split of K. The tile sizes depend on the weight's shape only
(`CONFIGS`), never on the row count, and M is a runtime argument kept out of Triton's
specialisation, so one compiled kernel serves every M. A row's output is then the same
sequence of operations on the same numbers whatever M is and wherever the row sits in
its tile (padding rows are zeros and only ever meet their own output row), so it is
bit-identical for every batch size and every content of the other rows (checked on the
CPU by tests/test_batch_kernels.py and on an H200 by bench/batch_kernel_check.py).

The weight is read once per BLOCK_M rows (64 by default; 16 or 32 for the shapes where
that measured faster over 1 to 256 rows): exactly once for up to BLOCK_M rows, so a
batched decode step streams each weight once as the single-row step does.

What surrounds a product in a decoder is folded in, as in `matvec`:

- NORM: the RMSNorm of x, normalised in a prologue (each program first sums the squares
  of its rows over the same BLOCK_K chunks), then each x chunk is scaled and rounded as
  the reference rounds (x * r to the model dtype, times the norm weight, rounded again)
  before it enters the dot, so the product sees the reference's normed row;
- SWIGLU: the weight is gate and up stacked (2 N, K); the output is silu(gate) * up,
  gate and up rounded to the model dtype as the reference's Linear output is, and the
  activation rounded before the multiply as the reference's `F.silu` is;
- RESIDUAL: the output is res + x @ w, the product rounded to the model dtype first.

Float32 inputs use exact float32 products (input_precision "ieee"; that is how the CPU
tests run it under Triton's interpreter); bf16 and fp16 use the tensor cores' native
products with float32 accumulation.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from fastqwen.engine.triton import traceable

BLOCK_M = 64  # rows per program unless `CONFIGS` says otherwise for a weight shape


@triton.jit
def _round(x, dtype: tl.constexpr):
    return x.to(dtype).to(tl.float32)


@triton.jit(do_not_specialize=["M"])
def _tiled_product_kernel(
    x_ptr, w_ptr, norm_ptr, res_ptr, y_ptr, M, eps,
    K: tl.constexpr, N: tl.constexpr,
    NORM: tl.constexpr, SWIGLU: tl.constexpr, RESIDUAL: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    dtype = y_ptr.dtype.element_ty
    m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = m < M
    n_ok = n < N
    x_rows = x_ptr + m.to(tl.int64)[:, None] * K  # (BLOCK_M, 1) row starts
    if NORM:  # the rows' RMS scale, summed over the same chunks for every M
        ssq = tl.zeros([BLOCK_M, BLOCK_K], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            x_ok = m_ok[:, None] & (k < K)[None, :]
            x = tl.load(x_rows + k[None, :], mask=x_ok, other=0.0).to(tl.float32)
            ssq += x * x
        r = tl.math.rsqrt(tl.sum(ssq, axis=1) / K + eps)[:, None]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_up = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)  # SWIGLU's up outputs
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < K
        x = tl.load(x_rows + k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        if NORM:
            g = tl.load(norm_ptr + k, mask=k_ok, other=0.0).to(tl.float32)[None, :]
            x = (g * _round(x.to(tl.float32) * r, dtype)).to(dtype)
        w_off = n[None, :] * K + k[:, None]  # (BLOCK_K, BLOCK_N): w transposed
        w_ok = k_ok[:, None] & n_ok[None, :]
        w = tl.load(w_ptr + w_off, mask=w_ok, other=0.0)
        acc = tl.dot(x, w, acc, input_precision=PRECISION)
        if SWIGLU:
            w_up = tl.load(w_ptr + N * K + w_off, mask=w_ok, other=0.0)
            acc_up = tl.dot(x, w_up, acc_up, input_precision=PRECISION)
    y = _round(acc, dtype)
    if SWIGLU:
        y = _round(y * tl.sigmoid(y), dtype) * _round(acc_up, dtype)
    out_off = m.to(tl.int64)[:, None] * N + n[None, :]
    out_ok = m_ok[:, None] & n_ok[None, :]
    if RESIDUAL:
        y = y + tl.load(res_ptr + out_off, mask=out_ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + out_off, y.to(dtype), mask=out_ok)


# (N, K, swiglu) -> (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages): per weight shape,
# never per row count (that would break batch invariance). Measured on an H200 with
# bench/batch_kernel_check.py (bench/results/2026-12-02_h200_8e7c008/): of the configurations
# tried, the one with the smallest mean slowdown against the fastest at each of M = 1, 8,
# 32, 64, 128, 256. Shapes not listed there took the fallback. The predictor's (and 0.6B
# talker's) QKV and gate/up, then the 1.7B talker's.
CONFIGS: dict[tuple[int, int, bool], tuple[int, int, int, int, int]] = {
    (4096, 1024, False): (16, 128, 128, 8, 3),
    (3072, 1024, True): (32, 64, 256, 4, 3),
    (4096, 2048, False): (16, 128, 128, 8, 3),
    (6144, 2048, True): (32, 64, 256, 4, 3),
}


def default_config(N: int, K: int, swiglu: bool) -> dict:
    """Launch configuration for a weight shape: `CONFIGS`, else 64-row tiles with narrow
    output tiles (16 columns up to N = 2048, else 32), so even one row keeps ~128
    programs streaming the weight, and 128-wide K chunks (the fastest for the O and down
    products of both models)."""
    fallback = (BLOCK_M, 16 if N <= 2048 else 32, 128, 4, 4)
    block_m, block_n, block_k, warps, stages = CONFIGS.get((N, K, swiglu), fallback)
    return {
        "BLOCK_M": block_m,
        "BLOCK_N": block_n,
        "BLOCK_K": block_k,
        "num_warps": warps,
        "num_stages": stages,
    }


def launch(
    kernel,
    x: torch.Tensor,
    w: torch.Tensor,
    norm: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    eps: float = 0.0,
    swiglu: bool = False,
    **config,
) -> torch.Tensor:
    """Run `kernel` (the Triton kernel, or it wrapped for torch.compile) on x (..., K) and
    w (N, K) ((2 N, K) with swiglu); returns (..., N). `config` overrides BLOCK_M, BLOCK_N,
    BLOCK_K, num_warps, num_stages: rows stay bit-identical across M only while the same
    configuration serves every M. x, w, norm, residual contiguous."""
    K = x.shape[-1]
    N = w.shape[0] // 2 if swiglu else w.shape[0]
    if w.shape[1] != K:
        raise ValueError(f"tiled_product: x {tuple(x.shape)} against w {tuple(w.shape)}")
    M = x.numel() // K
    config = {**default_config(N, K, swiglu), **config}
    precision = "ieee" if x.dtype == torch.float32 else "tf32"  # tf32 only matters for fp32
    y = torch.empty((*x.shape[:-1], N), dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(N, config["BLOCK_N"]), triton.cdiv(M, config["BLOCK_M"]))
    kernel[grid](
        x, w, x if norm is None else norm, y if residual is None else residual, y, M, eps,
        K=K, N=N, NORM=norm is not None, SWIGLU=swiglu, RESIDUAL=residual is not None,
        PRECISION=precision, **config,
    )  # fmt: skip
    return y


@triton_op("fastqwen::tiled_product", mutates_args={})
def tiled_product(
    x: torch.Tensor,
    w: torch.Tensor,
    norm: torch.Tensor | None,
    residual: torch.Tensor | None,
    eps: float,
    swiglu: bool,
) -> torch.Tensor:
    """(B, T, N) = [residual +] [rms_norm](x) @ w.T for x (B, T, K), or silu(gate) * up
    when `swiglu` (w = gate and up stacked, (2 N, K)); any number of rows, each row's
    result independent of the others and of their number. w and norm contiguous."""
    kernel = traceable(_tiled_product_kernel)
    res = None if residual is None else residual.contiguous()
    return launch(kernel, x.contiguous(), w, norm, res, eps, swiglu)
