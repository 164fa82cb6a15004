"""Where a frame's time goes: kernels per frame and GPU time by kernel, on the device.

Runs the static engine's frame (compiled frame functions, or with --no-compile the
uncompiled kernel op set `ops.KERNELS`) eagerly under torch.profiler for a few frames
(kernel times equal those inside the CUDA graph; launch gaps do not), then times graph
replays with CUDA events. Prints and writes JSON.

usage: python bench/profile_frame.py OUT.json [--size 1.7b] [--frames 6]
       [--batches 1,8,64] [--modes greedy,sampled] [--invariant] [--no-compile]
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time

import torch
from torch.profiler import ProfilerActivity, profile

from fastqwen import EngineConfig, FastQwen3TTS
from fastqwen.config import SamplingParams
from fastqwen.engine.runner import capture_graph
from fastqwen.engine.sampling import SamplingMode
from fastqwen.engine.step import frame_step
from fastqwen.models.checkpoints import build_random_checkpoint
from fastqwen.prompts.builder import VoiceRequest

REQUEST = VoiceRequest(
    "custom_voice", "We met at the corner cafe after work and talked.", "english", speaker="aiden"
)


def profile_step(runner, B: int, mode: SamplingMode, frames: int, one_stream: bool) -> dict:
    """Kernels and GPU time of `frames` eager frames at batch B in `mode`, and the graph
    replay time of the same frame. `one_stream`: every row's noise from one draw of the
    default generator (not the engine's per-row streams): what per-row draws cost."""
    window = runner.view(B, 256)
    sampling = (runner.talker_sampling.rows(B), runner.sub_sampling.rows(B), mode)
    generators = None if one_stream else runner.generators[:B]
    step_args = (window, runner.state.rows(B), runner.functions, *sampling, generators)
    runner.state.park(list(range(B)))
    for _ in range(3):
        frame_step(*step_args)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(frames):
            frame_step(*step_args)
        torch.cuda.synchronize()
    by_name: dict[str, list[float]] = collections.defaultdict(list)
    kernels = [ev for ev in prof.events() if ev.device_type == torch.autograd.DeviceType.CUDA]
    for ev in kernels:
        by_name[ev.name].append(
            ev.device_time_total if hasattr(ev, "device_time_total") else ev.cuda_time_total
        )
    total_us = sum(sum(v) for v in by_name.values())
    count = sum(len(v) for v in by_name.values())
    top = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:30]
    report = {
        "batch": B,
        "mode": vars(mode) if hasattr(mode, "__dict__") else str(mode),
        "kernels_per_frame": count / frames,
        "gpu_ms_per_frame": total_us / frames / 1000,
        "top_kernels": [
            {
                "name": n[:120],
                "per_frame": len(v) / frames,
                "ms_per_frame": sum(v) / frames / 1000,
            }
            for n, v in top
        ],
        # one frame's kernels in launch order: "name | microseconds"
        "first_frame_sequence": [
            f"{ev.name[:90]} | {ev.device_time_total:.1f}"
            for ev in sorted(kernels, key=lambda e: e.time_range.start)[: len(kernels) // frames]
        ],
    }
    if one_stream:
        graph = capture_graph(lambda: frame_step(*step_args))
        replay = graph.replay
    else:
        replay = runner.step(window, mode)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    runner.state.park(list(range(B)))  # every row back at position 0: inside the window
    replay()
    start.record()
    for _ in range(20):
        replay()
    end.record()
    torch.cuda.synchronize()
    report["graph_replay_ms_per_frame"] = start.elapsed_time(end) / 20
    if not one_stream:  # the scheduler's block: replays (and stream rewinds) + the codes copy
        step = runner.step(window, mode)
        runner.state.park(list(range(B)))
        t0 = time.perf_counter()
        for _ in range(4):
            runner.run_block(step, B, 8)
        report["block_ms_per_frame"] = (time.perf_counter() - t0) * 1000 / 32
    return report


MODES = {  # name: (mode, one_stream)
    "greedy": (SamplingMode(False, False, False, False), False),
    "sampled": (SamplingMode(True, False, True, False), False),
    "sampled_one_stream": (SamplingMode(True, False, True, False), True),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--size", default="1.7b")
    ap.add_argument("--frames", type=int, default=6)
    ap.add_argument("--batches", default="1", help="comma-separated batch sizes (one engine)")
    ap.add_argument("--modes", default="sampled", help=f"comma-separated: {','.join(MODES)}")
    ap.add_argument("--invariant", action="store_true", help="EngineConfig(batch_invariant=True)")
    ap.add_argument(
        "--no-compile", dest="compile", action="store_false", help="EngineConfig(compile=False)"
    )
    args = ap.parse_args()
    from qwen_tts import Qwen3TTSModel

    batches = [int(b) for b in args.batches.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        build_random_checkpoint(args.size, "custom_voice", f"{tmp}/ck", device="cuda")
        tts = Qwen3TTSModel.from_pretrained(f"{tmp}/ck", dtype=torch.bfloat16, device_map="cuda")
    config = EngineConfig(
        compile=args.compile, max_batch_size=max(batches), batch_buckets=tuple(batches),
        max_seq_len=512, batch_invariant=args.invariant,
    )  # fmt: skip
    eng = FastQwen3TTS(tts, config)
    params = SamplingParams(max_new_tokens=40)
    t0 = time.perf_counter()
    for B in batches:
        for _ in range(2):  # compile + capture, then warm
            for h in eng.submit_many([REQUEST] * B, params, list(range(B)), streaming=False):
                h.result()
    setup_s = time.perf_counter() - t0  # compiles and captures of every batch size
    print(f"{eng.runner.execution.name} ({eng.runner.ops.name} ops): set up in {setup_s:.1f} s")
    reports = []
    with eng.scheduler.exclusive(), torch.inference_mode():
        for B in batches:
            for name in args.modes.split(","):
                r = profile_step(eng.runner, B, *MODES[name][:1], args.frames, MODES[name][1])
                r["mode"] = name
                reports.append(r)
                brief = {k: v for k, v in r.items() if k not in ("first_frame_sequence",)}
                brief["top_kernels"] = brief["top_kernels"][:12]
                print(json.dumps(brief, indent=1), flush=True)
    result = {
        "device": torch.cuda.get_device_name(),
        "size": args.size,
        "ops": eng.runner.ops.name,
        "execution": eng.runner.execution.name,
        "setup_s": setup_s,
        "runs": reports,
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
