"""A token's whole sampling after its scores, as one Triton kernel (CUDA, uncompiled frames).

A frame samples sixteen tokens per row: codebook 0 and the code predictor's fifteen. Each
draw is temperature, top-k, softmax, the division by the exponential noise and two argmaxes
(the sample and, for a greedy row in a sampling batch, the greedy pick): about ten
elementwise and reduction kernels in eager torch. Compiled, Inductor fuses them; uncompiled
(`ops.KERNELS`: frames replayed from CUDA graphs with no compile at all, so no compile
time), this kernel does the same in one launch: one program per row, the row in registers.

It computes what `sampling.warp_scores` (without top-p) and `sampling.pick_token` do, in
their order and float32: scores / temperature, the top-k test on the tempered scores (the
k-th largest found by the bisection of `triton.top_k`, exact, ties kept), softmax, p /
noise, argmax. The one difference is `exp`: Triton's is not torch's to the last bit, so a
sampled token can differ from the eager path's where two candidates' p / noise tie to a
rounding; it never does in the float32 interpreter tests here. Top-p has no kernel: a
batch that uses it keeps the eager ops.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from fastqwen.engine.triton import traceable
from fastqwen.engine.triton.top_k import INT32_MIN


@triton.jit
def _kth_key(key, k, V: tl.constexpr):
    """The k-th largest int32 order key of a row (`triton.top_k`'s bisection, a bit at a
    time), keys of padding INT32_MIN."""
    at_least = tl.sum((key >= 0).to(tl.int32), axis=0)
    kth = tl.where(at_least >= k, 0, INT32_MIN)
    for bit in tl.static_range(30, -1, -1):
        candidate = kth | (1 << bit)
        at_least = tl.sum((key >= candidate).to(tl.int32), axis=0)
        kth = tl.where(at_least >= k, candidate, kth)
    return kth


@triton.jit
def _sample_rows_kernel(
    scores_ptr, temperature_ptr, top_k_ptr, noise_ptr, sampled_ptr, out_ptr,
    V: tl.constexpr, BLOCK_V: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    i = tl.arange(0, BLOCK_V)
    inside = i < V
    s = tl.load(scores_ptr + b * V + i, mask=inside, other=float("-inf"))
    greedy = tl.argmax(s, axis=0)
    t = s / tl.sum(tl.load(temperature_ptr + b + tl.arange(0, 1)), axis=0)
    # the top-k test on the tempered scores, as `triton.top_k` keys them
    bits = t.to(tl.int32, bitcast=True)
    bits = tl.where(bits == INT32_MIN, 0, bits)  # -0.0 keys as +0.0
    key = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    key = tl.where(inside, key, tl.full([BLOCK_V], INT32_MIN, tl.int32))
    k = tl.sum(tl.load(top_k_ptr + b + tl.arange(0, 1)), axis=0)
    k = tl.where((k <= 0) | (k > V), V, k)  # top_k = 0 keeps all
    kth = _kth_key(key, k, V)
    t = tl.where(inside & (key >= kth), t, float("-inf"))
    # softmax, then the sample multinomial makes for this noise: argmax of p / noise
    e = tl.exp(t - tl.max(t, axis=0))
    p = e / tl.sum(e, axis=0)
    noise = tl.load(noise_ptr + b * V + i, mask=inside, other=1.0)
    drawn = tl.argmax(tl.where(inside, p / noise, -1.0), axis=0)
    sampled = tl.sum(tl.load(sampled_ptr + b + tl.arange(0, 1)).to(tl.int32), axis=0)
    tl.store(out_ptr + b, tl.where(sampled != 0, drawn, greedy).to(tl.int64))


def launch(
    kernel,
    scores: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    noise: torch.Tensor,
    sampled: torch.Tensor,
) -> torch.Tensor:
    """Run `kernel` (`_sample_rows_kernel`, or it wrapped for tracing): one program per row
    of float32 scores (B, V)."""
    rows, v = scores.shape
    block = triton.next_power_of_2(v)
    if block >= 2**16 or noise.shape != scores.shape:
        raise ValueError(f"sample_rows: scores {tuple(scores.shape)}, noise {tuple(noise.shape)}")
    out = torch.empty((rows,), dtype=torch.long, device=scores.device)
    kernel[(rows,)](
        scores.contiguous(), temperature.reshape(-1).contiguous(),
        top_k.reshape(-1).contiguous(), noise.contiguous(), sampled.reshape(-1).contiguous(),
        out, V=v, BLOCK_V=block, num_warps=8,
    )  # fmt: skip
    return out


@triton_op("fastqwen::sample_rows", mutates_args={})
def sample_rows(
    scores: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    noise: torch.Tensor,
    sampled: torch.Tensor,
) -> torch.Tensor:
    """(B,) int64 tokens from float32 scores (B, V): each row's temperature (B, 1), top-k
    (B, 1) int64 (0: keep all) and exponential noise (B, V), the sample where `sampled`
    (B,) bool is set, the argmax of the untempered scores where not (a greedy row of a
    sampling batch). `sampling.pick_token(warp_scores(...))` without top-p, in one launch."""
    return launch(traceable(_sample_rows_kernel), scores, temperature, top_k, noise, sampled)
