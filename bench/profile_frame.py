"""Where a frame's time goes: kernels per frame and GPU time by kernel, on the device.

Runs the static engine (compiled frame kernels) eagerly under torch.profiler for a few
frames (kernel times equal those inside the CUDA graph; launch gaps do not), then times
graph replays with CUDA events. Prints and writes JSON.

usage: python bench/profile_frame.py OUT.json [--size 1.7b] [--frames 6]
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile

import torch
from torch.profiler import ProfilerActivity, profile

from fastqwen import EngineConfig, FastQwen3TTS
from fastqwen.config import SamplingParams
from fastqwen.engine.sampling import SamplingMode
from fastqwen.engine.step import frame_step
from fastqwen.models.checkpoints import build_random_checkpoint
from fastqwen.prompts.builder import VoiceRequest

REQUEST = VoiceRequest(
    "custom_voice", "We met at the corner cafe after work and talked.", "english", speaker="aiden"
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--size", default="1.7b")
    ap.add_argument("--frames", type=int, default=6)
    ap.add_argument("--batch", type=int, default=1, help="rows per frame step (batch size)")
    ap.add_argument("--invariant", action="store_true", help="EngineConfig(batch_invariant=True)")
    args = ap.parse_args()
    from qwen_tts import Qwen3TTSModel

    with tempfile.TemporaryDirectory() as tmp:
        build_random_checkpoint(args.size, "custom_voice", f"{tmp}/ck", device="cuda")
        tts = Qwen3TTSModel.from_pretrained(f"{tmp}/ck", dtype=torch.bfloat16, device_map="cuda")
    B = args.batch
    config = EngineConfig(
        compile=True, max_batch_size=B, batch_buckets=(B,), max_seq_len=512,
        batch_invariant=args.invariant,
    )  # fmt: skip
    eng = FastQwen3TTS(tts, config)
    params = SamplingParams(max_new_tokens=40)
    for _ in range(2):  # compile + capture, then warm
        for h in eng.submit_many([REQUEST] * B, params, list(range(B)), streaming=False):
            h.result()
    runner = eng.runner
    window = runner.view(B, 256)
    sampling = (runner.talker_sampling.rows(B), runner.sub_sampling.rows(B), SamplingMode())
    step_args = (window, runner.state.rows(B), runner.functions, *sampling, runner.generators[:B])
    for _ in range(3):
        frame_step(*step_args)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(args.frames):
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
        "device": torch.cuda.get_device_name(),
        "size": args.size,
        "batch": B,
        "ops": runner.ops.name,
        "kernels_per_frame": count / args.frames,
        "gpu_ms_per_frame": total_us / args.frames / 1000,
        "top_kernels": [
            {
                "name": n[:120],
                "per_frame": len(v) / args.frames,
                "ms_per_frame": sum(v) / args.frames / 1000,
            }
            for n, v in top
        ],
        # one frame's kernels in launch order: "name | microseconds"
        "first_frame_sequence": [
            f"{ev.name[:90]} | {ev.device_time_total:.1f}"
            for ev in sorted(kernels, key=lambda e: e.time_range.start)[
                : len(kernels) // args.frames
            ]
        ],
    }
    # graph replay timing
    replay = runner.step(window, SamplingMode())
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    runner.state.park(list(range(B)))  # every row back at position 0: inside the window
    start.record()
    for _ in range(20):
        replay()
    end.record()
    torch.cuda.synchronize()
    report["graph_replay_ms_per_frame"] = start.elapsed_time(end) / 20
    print(json.dumps({k: v for k, v in report.items() if k != "first_frame_sequence"}, indent=1))
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
