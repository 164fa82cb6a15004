"""Measuring helpers shared by the bench and the anchor script: spread, bytes, profiler counts.

Only torch and the standard library (plus the record schema of `records` and the demo
request of `fastqwen.tools.defaults`, both standard library only): `bench/anchor_bench.py`
imports this module in the anchor's own environment (faster-qwen3-tts, transformers 5),
where qwen-tts 0.1.1 must not load.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable

import torch

from fastqwen.device import synchronize
from fastqwen.tools.bench.records import FIELDS, SCHEMA
from fastqwen.tools.defaults import SEED_PROMPTS

PROMPT_1 = SEED_PROMPTS[0]  # the seed's prompt 1 (shared/anchors.md measured the anchor on it)
PROFILE_TOKENS = (8, 24)  # two short generations; their difference gives per-frame counts
# CUDA runtime/driver calls worth counting per frame (host side of the profile).
_LAUNCH_CALLS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx")
_GRAPH_CALLS = ("cudaGraphLaunch", "cuGraphLaunch")
_SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")


def spread(values: list[float], digits: int = 3) -> tuple[float, ...]:
    """(median, min, max), rounded."""
    return tuple(round(f(values), digits) for f in (statistics.median, min, max))


def time_calls(
    fn: Callable[[], object], device: torch.device, repeat: int
) -> tuple[list[float], object]:
    """Seconds of each of `repeat` calls (synced before and after each), and the last output."""
    times, out = [], None
    for _ in range(repeat):
        synchronize(device)
        t0 = time.perf_counter()
        out = fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return times, out


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of distinct storages (tied or shared weights count once)."""
    seen: set[int] = set()
    total = 0
    for t in tensors:
        if t is None or t.device.type == "meta":
            continue
        key = t.untyped_storage().data_ptr()
        if key in seen:
            continue
        seen.add(key)
        total += t.untyped_storage().nbytes()
    return total


def module_tensors(*modules) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for m in modules:
        if isinstance(m, torch.nn.Module):
            out += [p.data for p in m.parameters()] + list(m.buffers())
    return out


def profile_counts(
    generate: Callable[[int], int], tokens: tuple[int, int] = PROFILE_TOKENS
) -> dict:
    """Kernels, GPU-busy ms and host calls per frame, from two profiled generations.

    `generate(max_new_tokens)` runs one CUDA generation and returns its frame count. Counting
    the difference between a short and a longer run cancels prefill, codec decode and
    per-call setup, leaving the steady-state cost of one frame.
    """
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    for n in tokens:  # unprofiled first: capture and compile (autotuning!) would be counted
        generate(n)
    runs = []
    for n in tokens:
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            frames = generate(n)
            torch.cuda.synchronize()
        kernels, memops, busy_ns, calls = 0, 0, 0, Counter()
        # The raw kineto events: building FunctionEvent trees for ~1e5 events is far slower.
        for e in prof.profiler.kineto_results.events():
            name = e.name()
            if e.device_type() == DeviceType.CUDA:
                if name.startswith(("Memcpy", "Memset")):
                    memops += 1
                else:
                    kernels += 1
                    busy_ns += e.duration_ns()
            else:
                calls[name] += 1
        runs.append((frames, kernels, memops, busy_ns, calls))
        del prof
    (f0, k0, m0, b0, c0), (f1, k1, m1, b1, c1) = runs
    if f1 <= f0:
        raise RuntimeError(
            f"profile runs gave {f0} and {f1} frames; need the second longer (EOS too early?)"
        )
    df = f1 - f0

    def per_frame(names: tuple[str, ...]) -> float:
        return round(sum(c1[n] - c0[n] for n in names) / df, 2)

    return {
        "kernels_per_frame": round((k1 - k0) / df, 1),
        "memops_per_frame": round((m1 - m0) / df, 2),
        "gpu_busy_ms_per_frame": round((b1 - b0) / df / 1e6, 3),
        "launches_per_frame": per_frame(_LAUNCH_CALLS),
        "graph_launches_per_frame": per_frame(_GRAPH_CALLS),
        "syncs_per_frame": per_frame(_SYNC_CALLS),
        "profile_frames": [f0, f1],
    }


__all__ = [
    "FIELDS",
    "PROFILE_TOKENS",
    "PROMPT_1",
    "SCHEMA",
    "module_tensors",
    "profile_counts",
    "spread",
    "tensor_bytes",
]
