"""Products of one or two token rows with a weight matrix, as one Triton kernel (CUDA).

Decode is a chain of (T, K) x (K, N) products with T = 1 (every step) or 2 (the code
predictor's first pass of a frame). Written as multiply-and-sum, Inductor fuses them
well for T = 1 but reads the weight once per row for T = 2. Here a program takes BLOCK_N
weight rows and every token row at once, so the weight is read once whatever T is, with
what surrounds a product in a decoder folded in:

- NORM: the RMSNorm of x (its sum of squares is accumulated from the same x chunks and
  the scale applied after the sum: x * r @ w = r * (x @ w));
- SWIGLU: the weight is gate and up stacked (2 N, K); the output is silu(gate) * up;
- RESIDUAL: the output is res + x @ w, the product rounded to the model dtype first.

Float32 accumulation; the product is rounded to the model dtype where the reference's
Linear output is (gate and up before the activation, the product before the residual).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from fastqwen.engine.triton import traceable


@triton.jit
def _rows_times(acc, w, x_ptr, norm_ptr, k, k_ok, NORM: tl.constexpr):
    """acc + w * x (the chunk k of one token row, normed by weight if NORM)."""
    x = tl.load(x_ptr + k, mask=k_ok, other=0.0).to(tl.float32)
    if NORM:
        x = x * tl.load(norm_ptr + k, mask=k_ok, other=0.0).to(tl.float32)
    return acc + w * x[None, :]


@triton.jit
def _sum_squares(ssq, x_ptr, k, k_ok):
    x = tl.load(x_ptr + k, mask=k_ok, other=0.0).to(tl.float32)
    return ssq + x * x


@triton.jit
def _finish(acc, acc_up, ssq, res_ptr, y_ptr, n, n_ok, eps, K: tl.constexpr,
            NORM: tl.constexpr, SWIGLU: tl.constexpr, RESIDUAL: tl.constexpr):  # fmt: skip
    """Reduce one token row's accumulators and write its output row."""
    dtype = y_ptr.dtype.element_ty
    y = tl.sum(acc, axis=1)
    if NORM:
        r = tl.math.rsqrt(tl.sum(ssq, axis=0) / K + eps)
        y = y * r
    y = y.to(dtype).to(tl.float32)
    if SWIGLU:
        up = tl.sum(acc_up, axis=1)
        if NORM:
            up = up * r
        up = up.to(dtype).to(tl.float32)
        y = y * tl.sigmoid(y) * up
    if RESIDUAL:
        y = y + tl.load(res_ptr + n, mask=n_ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + n, y.to(dtype), mask=n_ok)


@triton.jit
def _matvec_kernel(
    x_ptr, w_ptr, norm_ptr, res_ptr, y_ptr, eps,
    T: tl.constexpr, K: tl.constexpr, N: tl.constexpr,
    NORM: tl.constexpr, SWIGLU: tl.constexpr, RESIDUAL: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    acc0 = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    acc1 = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)  # second token row (T = 2)
    up0 = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)  # SWIGLU's up rows
    up1 = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    ssq0 = tl.zeros([BLOCK_K], dtype=tl.float32)
    ssq1 = tl.zeros([BLOCK_K], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < K
        tile_ok = n_ok[:, None] & k_ok[None, :]
        w = tl.load(w_ptr + n[:, None] * K + k[None, :], mask=tile_ok, other=0.0).to(tl.float32)
        acc0 = _rows_times(acc0, w, x_ptr, norm_ptr, k, k_ok, NORM)
        if T == 2:
            acc1 = _rows_times(acc1, w, x_ptr + K, norm_ptr, k, k_ok, NORM)
        if SWIGLU:
            w_up = tl.load(w_ptr + (n + N)[:, None] * K + k[None, :], mask=tile_ok, other=0.0)
            w_up = w_up.to(tl.float32)
            up0 = _rows_times(up0, w_up, x_ptr, norm_ptr, k, k_ok, NORM)
            if T == 2:
                up1 = _rows_times(up1, w_up, x_ptr + K, norm_ptr, k, k_ok, NORM)
        if NORM:
            ssq0 = _sum_squares(ssq0, x_ptr, k, k_ok)
            if T == 2:
                ssq1 = _sum_squares(ssq1, x_ptr + K, k, k_ok)
    _finish(acc0, up0, ssq0, res_ptr, y_ptr, n, n_ok, eps, K, NORM, SWIGLU, RESIDUAL)
    if T == 2:
        _finish(acc1, up1, ssq1, res_ptr + N, y_ptr + N, n, n_ok, eps, K, NORM, SWIGLU, RESIDUAL)


# (T, N, K, swiglu) -> (BLOCK_N, BLOCK_K, num_warps): the fastest in bench/kernel_configs.py
# on an H100 with the weights read from memory, not L2 (the layers of a frame stream).
# Predictor (and 0.6B talker): N, K of QKV, O, gate/up, down; then the 1.7B talker's.
CONFIGS = {
    (1, 4096, 1024, False): (2, 1024, 4),
    (1, 1024, 2048, False): (2, 1024, 4),
    (1, 3072, 1024, True): (4, 256, 4),
    (1, 1024, 3072, False): (1, 256, 4),
    (2, 4096, 1024, False): (4, 256, 4),
    (2, 1024, 2048, False): (1, 512, 4),
    (2, 3072, 1024, True): (8, 256, 8),
    (2, 1024, 3072, False): (1, 1024, 8),
    (1, 4096, 2048, False): (2, 1024, 4),
    (1, 2048, 2048, False): (1, 1024, 4),
    (1, 6144, 2048, True): (1, 512, 8),
    (1, 2048, 6144, False): (1, 512, 4),
}
FALLBACK = (2, 1024, 4)  # within 15% of the best on every shape above (0-1% on 5 of 12)


def default_config(T: int, N: int, K: int, swiglu: bool) -> dict:
    """Launch configuration for a shape: `CONFIGS`, else `FALLBACK`."""
    block_n, block_k, warps = CONFIGS.get((T, N, K, swiglu), FALLBACK)
    return {"BLOCK_N": block_n, "BLOCK_K": block_k, "num_warps": warps}


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
    """Run `kernel` (the Triton kernel, or it wrapped for torch.compile) on x (1, T, K)
    and w (N, K) ((2 N, K) with swiglu); `config` overrides BLOCK_N, BLOCK_K, num_warps."""
    T, K = x.shape[-2], x.shape[-1]
    N = w.shape[0] // 2 if swiglu else w.shape[0]
    if T > 2 or w.shape[1] != K:
        raise ValueError(f"matvec takes 1 or 2 rows of K = {w.shape[1]}; got x {tuple(x.shape)}")
    config = {**default_config(T, N, K, swiglu), **config}
    y = torch.empty((1, T, N), dtype=x.dtype, device=x.device)
    kernel[(triton.cdiv(N, config["BLOCK_N"]),)](
        x, w, x if norm is None else norm, y if residual is None else residual, y, eps,
        T=T, K=K, N=N, NORM=norm is not None, SWIGLU=swiglu, RESIDUAL=residual is not None,
        **config,
    )  # fmt: skip
    return y


@triton_op("fastqwen::matvec", mutates_args={})
def matvec(
    x: torch.Tensor,
    w: torch.Tensor,
    norm: torch.Tensor | None,
    residual: torch.Tensor | None,
    eps: float,
    swiglu: bool,
) -> torch.Tensor:
    """(1, T, N) = [residual +] [rms_norm](x) @ w.T, T <= 2, or silu(gate) * up when
    `swiglu` (w = gate and up stacked, (2 N, K)). x, w, norm, residual contiguous."""
    kernel = traceable(_matvec_kernel)
    return launch(kernel, x.contiguous(), w, norm, residual, eps, swiglu)
