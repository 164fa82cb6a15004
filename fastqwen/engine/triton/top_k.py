"""HF's top-k test as one Triton kernel (CUDA, compiled path).

A score survives top-k when it is at least the k-th largest score of its row
(`sampling.in_top_k`), or, the same thing, when fewer than k scores are strictly larger
(`sampling.in_top_k_counted`).

`_top_k_mask_kernel` (the one `top_k_mask` runs) finds the k-th largest score itself, by
bisection, one program per row with the row in registers:

1. each float32 score becomes an int32 key with the same order: the bits of a
   non-negative float already order as integers; a negative float's low 31 bits are
   flipped, so that a larger magnitude gives a smaller key. -0.0's bits are first made
   +0.0's (the two compare equal as floats, so they must have one key); -inf gets the
   smallest key of any float that is not a NaN, +inf the largest;
2. the k-th largest key is the largest t with at least k keys >= t. Built a bit at a time
   from the top (the sign bit first, as "t >= 0?"), each bit kept when at least k keys
   are >= the candidate: 32 counts, each a reduction over the row. (STEP_BITS = 2 takes
   two bits a step instead: the counts for the three candidates with the two bits 01, 10
   and 11 are packed in 16-bit fields of one int64 sum, 17 reductions in all);
3. mask = key >= that key.

Only comparisons of keys that order exactly as the floats do: the mask is bit-identical to
the sorted threshold, ties kept. k is the row's top_k, or V where top_k is 0 or above V
(keep all: the bisection then ends at the smallest key). A NaN orders like the sort does
with a positive NaN (above +inf); the engine's scores hold none.

Batched: scores (B, V), one row per request, with k shared or one per row; program b
reads its own row only, so a row's mask is the same whatever B is.

`_top_k_mask_pairwise_kernel` is the earlier form: every score compared with every other
of its row, O(V^2) per row, the count of larger scores per score. Spread over many
programs, it is still the faster one for one or two rows, so `top_k_mask` keeps it there
(the tests and bench/batch_kernel_check.py time and check the two).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from fastqwen.engine.triton import traceable

PAIRWISE_MAX_ROWS = 2  # up to this many rows the pairwise kernel is the faster one
INT32_MIN: tl.constexpr = tl.constexpr(-(2**31))


@triton.jit
def _top_k_mask_kernel(
    scores_ptr, top_k_ptr, mask_ptr, stride_k,
    V: tl.constexpr, BLOCK_V: tl.constexpr, STEP_BITS: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)  # the row; its k is at top_k_ptr + b * stride_k (stride 0: shared)
    scores_ptr += b * V
    mask_ptr += b * V
    top_k_ptr += b * stride_k
    i = tl.arange(0, BLOCK_V)
    s = tl.load(scores_ptr + i, mask=i < V, other=0.0)
    bits = s.to(tl.int32, bitcast=True)
    # -0.0 == +0.0: one key for both. -0.0 is the one float with the bits of INT32_MIN; an
    # integer test, which no float optimisation (signed zeros ignored) can drop
    bits = tl.where(bits == INT32_MIN, 0, bits)
    key = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # arithmetic shift: negatives flip 31 bits
    # padding gets INT32_MIN, below every candidate tried (each is above INT32_MIN), so it
    # is never counted
    key = tl.where(i < V, key, tl.full([BLOCK_V], INT32_MIN, tl.int32))
    k = tl.sum(tl.load(top_k_ptr + tl.arange(0, 1)), axis=0)  # 0-d, also interpreted
    k = tl.where((k <= 0) | (k > V), V, k)  # top_k = 0 keeps all
    # the sign bit: is the k-th largest key >= 0? (all V keys are >= INT32_MIN)
    at_least = tl.sum((key >= 0).to(tl.int32), axis=0)
    kth = tl.where(at_least >= k, 0, INT32_MIN)
    if STEP_BITS == 1:
        for bit in tl.static_range(30, -1, -1):  # then the other bits, largest first
            candidate = kth | (1 << bit)
            at_least = tl.sum((key >= candidate).to(tl.int32), axis=0)
            kth = tl.where(at_least >= k, candidate, kth)
    else:  # two bits a step: the counts of three candidates (< 2**16 each) in one sum
        for low in tl.static_range(29, 0, -2):  # bits 30-29, 28-27, ..., 2-1
            counts = tl.sum(
                (key >= (kth | (1 << low))).to(tl.int64)
                + ((key >= (kth | (2 << low))).to(tl.int64) << 16)
                + ((key >= (kth | (3 << low))).to(tl.int64) << 32),
                axis=0,
            )
            digit = ((counts & 0xFFFF) >= k).to(tl.int32)  # the count falls with the digit
            digit += (((counts >> 16) & 0xFFFF) >= k).to(tl.int32)
            digit += ((counts >> 32) >= k).to(tl.int32)
            kth = kth | (digit << low)
        at_least = tl.sum((key >= (kth | 1)).to(tl.int32), axis=0)  # and bit 0
        kth = tl.where(at_least >= k, kth | 1, kth)
    tl.store(mask_ptr + i, key >= kth, mask=i < V)


def launch(kernel, scores: torch.Tensor, top_k: torch.Tensor, **config) -> torch.Tensor:
    """Run `kernel` (`_top_k_mask_kernel`, or it wrapped for torch.compile), one program
    per row; `config` overrides num_warps, STEP_BITS (1: 32 counts, one per bit of the
    k-th key; 2: 17 counts, three candidates counted in one sum) and BLOCK_V (at least V,
    below 2**16)."""
    v = scores.shape[-1]
    config = {"BLOCK_V": triton.next_power_of_2(v), "STEP_BITS": 1, "num_warps": 8, **config}
    if not v <= config["BLOCK_V"] < 2**16 or config["STEP_BITS"] not in (1, 2):
        raise ValueError(f"top-k of {v} scores: {config} (BLOCK_V >= V, < 2**16; 1 or 2 bits)")
    top_k, stride_k, rows = _per_row(scores, top_k)
    mask = torch.empty(scores.shape, dtype=torch.bool, device=scores.device)
    kernel[(rows,)](scores, top_k, mask, stride_k, V=v, **config)
    return mask


def _per_row(scores: torch.Tensor, top_k: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """top_k as (1,) shared (stride 0) or (B,) one per row (stride 1), and B."""
    rows = scores.numel() // scores.shape[-1]
    if top_k.numel() not in (1, rows):
        raise ValueError(f"top_k {tuple(top_k.shape)}: one k, or one per row of {rows}")
    top_k = top_k.reshape(-1).contiguous()
    return top_k, 1 if top_k.numel() > 1 else 0, rows


@triton.jit
def _top_k_mask_pairwise_kernel(
    scores_ptr, top_k_ptr, mask_ptr, stride_k,
    V: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(1)  # the row; its k is at top_k_ptr + b * stride_k (stride 0: shared)
    scores_ptr += b * V
    mask_ptr += b * V
    top_k_ptr += b * stride_k
    i = tl.program_id(0) * BLOCK_I + tl.arange(0, BLOCK_I)
    s_i = tl.load(scores_ptr + i, mask=i < V, other=float("-inf"))
    larger = tl.zeros([BLOCK_I], dtype=tl.int32)
    for j0 in tl.static_range(0, V, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        s_j = tl.load(scores_ptr + j, mask=j < V, other=float("-inf"))  # -inf is never larger
        larger += tl.sum((s_j[None, :] > s_i[:, None]).to(tl.int32), axis=1)
    k = tl.sum(tl.load(top_k_ptr + tl.arange(0, 1)), axis=0)  # 0-d, also interpreted
    k = tl.where((k <= 0) | (k > V), V, k)  # top_k = 0 keeps all
    tl.store(mask_ptr + i, larger < k, mask=i < V)


def launch_pairwise(kernel, scores: torch.Tensor, top_k: torch.Tensor, **config) -> torch.Tensor:
    """Run the pairwise kernel (the earlier form, for comparison); `config` overrides
    BLOCK_I, BLOCK_J and num_warps (the defaults were its fastest on an H200)."""
    config = {"BLOCK_I": 8, "BLOCK_J": 1024, "num_warps": 4, **config}
    v = scores.shape[-1]
    top_k, stride_k, rows = _per_row(scores, top_k)
    mask = torch.empty(scores.shape, dtype=torch.bool, device=scores.device)
    kernel[(triton.cdiv(v, config["BLOCK_I"]), rows)](scores, top_k, mask, stride_k, V=v, **config)
    return mask


@triton_op("fastqwen::top_k_mask", mutates_args={})
def top_k_mask(scores: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """(B, V) bool: the row's float32 `scores` (B, V) at least its k-th largest score.

    top_k: int64, 0-d (one k for every row) or (B,) / (B, 1) (a k per row); k is top_k,
    or V where top_k is 0 or above V (keep all).

    One or two rows take the pairwise kernel (5.4 against 9.7 us at V = 2048 on an H200,
    bench/results/2026-12-02_h200_1740928/top_k.json), more rows the bisection (10 against
    60 us at B = 64). Both give the exact mask, so which one ran never shows.
    """
    scores = scores.contiguous()
    if scores.numel() // scores.shape[-1] <= PAIRWISE_MAX_ROWS:
        return launch_pairwise(traceable(_top_k_mask_pairwise_kernel), scores, top_k)
    return launch(traceable(_top_k_mask_kernel), scores, top_k)
