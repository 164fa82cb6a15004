"""HF's top-k test as one Triton kernel (CUDA, compiled path).

A score survives top-k when fewer than k scores are strictly larger
(`sampling.in_top_k_counted`). Written as a V x V comparison and sum, Inductor makes one
looped reduction per score, the largest single kernel of a predictor step. Here each
program takes a block of scores and counts, in registers, the scores larger than each of
them, a tile of the vocabulary at a time; the vocabulary is read from L2 by every
program. The result is the same boolean mask: only comparisons.

Batched: scores (B, V), one row per request, with k shared or one per row. The grid
has a second axis over the rows; a program compares scores of its own row only, so a
row's mask is the same whatever B is (and, being only comparisons, exact anyway).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from fastqwen.engine.triton import traceable


@triton.jit
def _top_k_mask_kernel(
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


def launch(kernel, scores: torch.Tensor, top_k: torch.Tensor, **config) -> torch.Tensor:
    """Run `kernel` (the Triton kernel, or it wrapped for torch.compile); `config` overrides
    BLOCK_I, BLOCK_J and num_warps. The defaults were the fastest in bench/kernel_configs.py
    (results in bench/results/), and do not depend on the number of rows."""
    config = {"BLOCK_I": 8, "BLOCK_J": 1024, "num_warps": 4, **config}
    v = scores.shape[-1]
    rows = scores.numel() // v
    if top_k.numel() not in (1, rows):
        raise ValueError(f"top_k {tuple(top_k.shape)}: one k, or one per row of {rows}")
    top_k = top_k.reshape(-1).contiguous()  # (1,) shared or (B,) one per row
    stride_k = 1 if top_k.numel() > 1 else 0
    mask = torch.empty(scores.shape, dtype=torch.bool, device=scores.device)
    kernel[(triton.cdiv(v, config["BLOCK_I"]), rows)](scores, top_k, mask, stride_k, V=v, **config)
    return mask


@triton_op("fastqwen::top_k_mask", mutates_args={})
def top_k_mask(scores: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """(B, V) bool: fewer than k of the row's float32 `scores` (B, V) are larger.

    top_k: int64, 0-d (one k for every row) or (B,) / (B, 1) (a k per row); k is top_k,
    or V where top_k is 0 or above V (keep all).
    """
    return launch(traceable(_top_k_mask_kernel), scores.contiguous(), top_k)
