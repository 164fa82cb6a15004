"""Every row's sampling noise in one Triton launch (CUDA): torch's `exponential_`, bit for bit.

A sampled row draws its (V,) exponential variates from its request's own CUDA generator,
one `exponential_(1, generator=g)` per row per token (`sampling.draw_noise`): at batch 64
and 16 tokens a frame that is 1,024 tiny launches. This kernel fills all B rows at once,
each row exactly as torch's call would for a generator with that row's seed and Philox
offset, read from device tensors (so it can run inside a captured CUDA graph), and moves
the offsets of the rows that draw on by what torch's call adds to its generator.

What torch 2.11 does for `torch.empty(V, device="cuda").exponential_(1, generator=g)` in
float32 (ATen/native/cuda/DistributionTemplates.h, ATen/core/TransformationHelper.h):

- Launch: blocks of 256 threads, grid = min(ceil(V / 256), SMs * (threads per SM / 256)),
  G = 256 * grid threads in all. Thread t calls `curand_init(seed, t, offset)` and, in a
  grid-stride loop, one `curand_uniform4` per pass of 4 * G elements; element
  t + G * (4 n + j) takes component j of its n-th call. So element i takes, in thread
  (subsequence) i mod G, the 32-bit word at position offset + i div G. While V <= G,
  true whenever V <= 256 * grid cap (270,336 on an H200: 132 SMs, 2048 threads each), the
  SM count does not matter and element i is word `offset` of subsequence i.
- Philox4x32-10 (curand): key = (seed lo, seed hi); word position p of subsequence t is
  word p mod 4 of the block with counter (p div 4 lo, p div 4 hi, t lo, t hi).
- Uniform: u = x * 2^-32 + 2^-33 (x the uint32 word, as float32), in (0, 1].
- Transform: -1 / lambda * log(u), log by `__logf` (ATen's `at::log` on the device), and
  -eps / 2 for the log where u >= 1 - eps / 2 (float32 eps): -log(u) here, lambda = 1.
- Offset: the generator moves by ((V - 1) div (4 G) + 1) * 4 (`calc_execution_policy`).

One program per row (its offset is read and bumped by the same program, so no race);
rows whose `drawing` flag is off get ones (as `draw_noise` leaves them) and keep their
offset.
"""

from __future__ import annotations

from functools import cache

import torch
import triton
import triton.language as tl
from torch.library import triton_op
from triton.language.extra.cuda import libdevice
from triton.runtime.interpreter import InterpretedFunction

from fastqwen.engine.triton import traceable

BLOCK_THREADS = 256  # torch's block size for distribution kernels (block_size_bound)
CALL_OFFSETS = 4  # offsets one curand_uniform4 call accounts for (max_generator_offsets_...)


@triton.jit
def _philox_round(c0, c1, c2, c3, k0, k1):
    m0 = tl.full(c0.shape, 0xD2511F53, tl.uint32)
    m1 = tl.full(c0.shape, 0xCD9E8D57, tl.uint32)
    hi0 = tl.umulhi(c0, m0)
    lo0 = c0 * m0
    hi1 = tl.umulhi(c2, m1)
    lo1 = c2 * m1
    return hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0


@triton.jit
def _philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 of the counter words (c0..c3) under key (k0, k1), all uint32."""
    for _ in tl.static_range(9):
        c0, c1, c2, c3 = _philox_round(c0, c1, c2, c3, k0, k1)
        k0 += 0x9E3779B9
        k1 += 0xBB67AE85
    return _philox_round(c0, c1, c2, c3, k0, k1)


@triton.jit
def _exponential_rows_kernel(
    seed_ptr, offset_ptr, drawing_ptr, out_ptr, increment, grid_threads,
    V: tl.constexpr, BLOCK: tl.constexpr, FAST_LOG: tl.constexpr, UNIFORM: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    seed = tl.load(seed_ptr + b).to(tl.uint64, bitcast=True)
    offset = tl.load(offset_ptr + b)
    drawing = tl.load(drawing_ptr + b) != 0
    k0 = (seed & 0xFFFFFFFF).to(tl.uint32)
    k1 = (seed >> 32).to(tl.uint32)
    for start in range(0, V, BLOCK):
        i = start + tl.arange(0, BLOCK)
        # element i: word offset + i // G of subsequence (thread) i % G
        position = offset.to(tl.uint64, bitcast=True) + (i // grid_threads).to(tl.uint64)
        block = position >> 2
        word = (position & 3).to(tl.int32)
        c0 = (block & 0xFFFFFFFF).to(tl.uint32)
        c1 = (block >> 32).to(tl.uint32)
        c2 = (i % grid_threads).to(tl.uint32)
        c3 = tl.zeros([BLOCK], dtype=tl.uint32)  # threads < 2^32
        r0, r1, r2, r3 = _philox4x32_10(c0, c1, c2, c3, k0, k1)
        x = tl.where(word == 0, r0, tl.where(word == 1, r1, tl.where(word == 2, r2, r3)))
        u = x.to(tl.float32) * 2.3283064365386963e-10 + 1.1641532182693481e-10  # 2^-32, 2^-33
        if UNIFORM:  # tests: the uniforms themselves
            value = u
        else:
            if FAST_LOG:
                log = libdevice.fast_logf(u)  # __logf, as torch's kernel
            else:
                log = tl.log(u)  # the interpreter has no libdevice
            log = tl.where(u >= 0.99999994039535522, -5.9604644775390625e-08, log)  # 1 - 2^-24
            value = log * -1.0  # torch's -1 / lambda * log; Triton's -x is 0 - x (+0, not -0)
        value = tl.where(drawing, value, 1.0)
        tl.store(out_ptr + b * V + i, value, mask=i < V)
    tl.store(offset_ptr + b, offset + tl.where(drawing, increment, 0))


@cache
def _grid_cap(device_index: int) -> int:
    """Most blocks torch launches for a distribution kernel on this device."""
    props = torch.cuda.get_device_properties(device_index)
    return props.multi_processor_count * (props.max_threads_per_multi_processor // BLOCK_THREADS)


def grid_threads(vocab: int, grid_cap: int | None) -> int:
    """G, the threads torch launches for `exponential_` of `vocab` elements; grid_cap is
    its block limit (SMs * max threads per SM / 256), None for no limit (any V <= G then)."""
    blocks = triton.cdiv(vocab, BLOCK_THREADS)
    return BLOCK_THREADS * (blocks if grid_cap is None else min(blocks, grid_cap))


def philox_increment(vocab: int, grid_cap: int | None = None) -> int:
    """How far torch's `exponential_` of `vocab` float32 elements moves a CUDA generator's
    offset (4 whenever V fits in one pass of the grid)."""
    return ((vocab - 1) // (grid_threads(vocab, grid_cap) * 4) + 1) * CALL_OFFSETS


def device_grid_cap(device: torch.device) -> int | None:
    """The block limit on `device`: None off CUDA (interpreted tests: no limit)."""
    if device.type != "cuda":
        return None
    return _grid_cap(device.index if device.index is not None else torch.cuda.current_device())


def launch(
    kernel, seed, offset, drawing, out, increment: int, threads: int, uniform=False, **config
):
    """Run `kernel` (the Triton kernel, or it wrapped for torch.compile) on rows (B,);
    `config` overrides BLOCK and num_warps. `uniform` writes the uniforms (tests)."""
    config = {"BLOCK": 1024, "num_warps": 4, **config}
    rows, vocab = out.shape
    fast_log = not isinstance(kernel, InterpretedFunction)
    kernel[(rows,)](
        seed, offset, drawing, out, increment, threads,
        V=vocab, FAST_LOG=fast_log, UNIFORM=uniform, **config,
    )  # fmt: skip


@triton_op("fastqwen::fill_exponential_rows", mutates_args={"offset", "out"})
def fill_exponential_rows(
    seed: torch.Tensor,
    offset: torch.Tensor,
    drawing: torch.Tensor,
    out: torch.Tensor,
    increment: int,
    threads: int,
) -> None:
    """Fill `out` (B, V) float32 with each row's exponential variates and move `offset` on
    by `increment` where `drawing`; `threads` is torch's G for V (`grid_threads`)."""
    launch(traceable(_exponential_rows_kernel), seed, offset, drawing, out, increment, threads)


def exponential_rows(
    seed: torch.Tensor,
    offset: torch.Tensor,
    drawing: torch.Tensor,
    vocab: int,
    increment: int,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, vocab) float32: row b is what `torch.empty(vocab, device="cuda").exponential_(1,
    generator=g)` gives for a generator g with seed `seed[b]` and offset `offset[b]`
    (int64 (B,), seeds above 2^63 as their two's complement); `offset[b] += increment` in
    place where `drawing[b]` (bool or int (B,)). Rows not drawing are all ones.

    `increment` is what torch's call adds to the generator's offset for this vocab
    (`philox_increment`, or measured as `runner._draw_offsets` does).
    """
    rows = seed.shape[0]
    if offset.shape != (rows,) or drawing.shape != (rows,):
        raise ValueError(
            f"seed, offset, drawing: one per row, got {seed.shape}, {offset.shape}, {drawing.shape}"
        )
    if seed.dtype != torch.int64 or offset.dtype != torch.int64:
        raise ValueError("seed and offset are int64")
    if out is None:
        out = torch.empty((rows, vocab), dtype=torch.float32, device=seed.device)
    elif out.shape != (rows, vocab) or out.dtype != torch.float32 or not out.is_contiguous():
        raise ValueError(f"out: contiguous float32 ({rows}, {vocab}), got {out.shape} {out.dtype}")
    threads = grid_threads(vocab, device_grid_cap(seed.device))
    fill_exponential_rows(seed, offset, drawing, out, increment, threads)
    return out
