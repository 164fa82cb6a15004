"""The bench record schema and measuring helpers, shared by the bench and the anchor script.

Only torch and the standard library: `bench/anchor_bench.py` imports this module in the
anchor's own environment (faster-qwen3-tts, transformers 5), where qwen-tts 0.1.1 must not load.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable, Iterable

import torch

SCHEMA = "fastqwen-bench/1"
# The seed's prompt 1 (shared/anchors.md measured the anchor on it).
PROMPT_1 = (
    "We met at the corner cafe after work and talked about weekend plans. The street was quiet, "
    "the lights were warm, and the time passed quickly. We stayed a bit longer."
)
# Every record has these keys, in this order (bench/README.md says what each one means);
# the anchor script writes the same. A field an engine cannot measure is null.
FIELDS = (
    "schema engine model model_path size kind random_weights dtype device device_name "
    "torch cuda transformers package python git_commit git_dirty source_hash timestamp "
    "text speaker language seed max_new_tokens runs engine_config load_s warmup_s warmup_frames "
    "frames frames_all_runs eos_reached audio_s ms_per_frame ms_per_frame_min ms_per_frame_max "
    "ms_per_frame_runs rtf generate_s wall_s prefill_ms ttfa_ms ttfa_ms_min ttfa_ms_max "
    "ttfa_warmup_ms ttfa_first_chunk_frames chunk_frames weight_bytes talker_weight_bytes "
    "kv_cache_bytes peak_gpu_bytes peak_over_weights_kv kernels_per_frame memops_per_frame "
    "gpu_busy_ms_per_frame launches_per_frame graph_launches_per_frame syncs_per_frame "
    "profile_frames profile_error error"
).split()
PROFILE_TOKENS = (8, 24)  # two short generations; their difference gives per-frame counts
# CUDA runtime/driver calls worth counting per frame (host side of the profile).
_LAUNCH_CALLS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx")
_GRAPH_CALLS = ("cudaGraphLaunch", "cuGraphLaunch")
_SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")


def spread(values: list[float], digits: int = 3) -> tuple[float, ...]:
    """(median, min, max), rounded."""
    return tuple(round(f(values), digits) for f in (statistics.median, min, max))


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
