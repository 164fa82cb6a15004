"""The engine's host side in a burst round and a steady state, with the GPU's work replaced
by sleeps that release the GIL, on the CPU.

Why: on an H200 the batch-64 steady state ran at a fifth of the burst round's throughput
with the same frame step. This runs the real scheduler, handles, codec worker and the
bench's lanes and readers on the tiny model, but each block of frames sleeps `--frame-ms`
per frame, each prefill `--prefill-ms` and each codec span `--span-ms`, as the GPU would,
so what is left is the host's own cost: blocks per frame, hand-overs, admissions, threads.

    python bench/steady_state_sim.py --batch-size 64 --out sim.json

Prints and writes one JSON record: the burst round and the steady state, each with its
audio seconds per second of simulated audio, blocks, steps and the engine's breakdown.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

import numpy as np
import torch

import fastqwen.api as fastqwen_api
from fastqwen import EngineConfig, FastQwen3TTS
from fastqwen.codec import batch as codec_batch
from fastqwen.config import SamplingParams
from fastqwen.locking import serialized
from fastqwen.tools.bench import run as bench_run
from fastqwen.tools.bench.throughput import request_mix


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--frames", type=int, default=168, help="tokens per request (default 168)")
    p.add_argument("--sync-every", type=int, default=8, help="frames per block (CUDA: 8)")
    p.add_argument("--frame-ms", type=float, default=7.4, help="a frame step at the batch size")
    p.add_argument("--prefill-ms", type=float, default=15.0)
    p.add_argument("--span-ms", type=float, default=4.0, help="codec time per span decoded")
    p.add_argument("--waves", type=int, default=3, help="steady-state waves (as the bench)")
    p.add_argument(
        "--prompt-sync",
        action="store_true",
        help="a prompt build waits for the GPU work queued before it, as a blocking "
        "host-to-device copy on the frame loop's stream does",
    )
    p.add_argument(
        "--build-ms",
        type=float,
        default=0.0,
        help="host time a prompt build takes beyond the tiny model's (on an H200 host "
        "about 6 ms for 1.7B), inside the build's process-wide turn",
    )
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    B = args.batch_size
    config = EngineConfig(
        max_batch_size=B, max_seq_len=512, batch_buckets=(B,), sync_every=args.sync_every
    )
    fast = FastQwen3TTS.from_pretrained("random:tiny-custom_voice", device="cpu", config=config)

    blocks = [0]
    queued_until = [0.0]  # when the GPU work queued so far on the loop's stream ends

    def gpu(seconds: float) -> None:
        """Queue `seconds` of GPU work and wait for it, as a host sync does."""
        queued_until[0] = max(time.perf_counter(), queued_until[0]) + seconds
        time.sleep(max(0.0, queued_until[0] - time.perf_counter()))

    def run_block(step, rows: int, n: int, stop=None, min_frames: int = 1) -> torch.Tensor:
        blocks[0] += 1
        if stop is None:
            gpu(args.frame_ms / 1000 * n)
            return torch.zeros((rows, n, 16), dtype=torch.long)  # codebook 0 is never EOS
        frames = 0  # as the runner paces a block that may end early: a frame at a time
        while frames < n:
            gpu(args.frame_ms / 1000)
            frames += 1
            if frames < n and frames >= min_frames and stop():
                break
        return torch.zeros((rows, frames, 16), dtype=torch.long)

    def prefill(slots, prompts, capture: bool = True) -> None:
        gpu(args.prefill_ms / 1000)

    def decode_spans(decoder, spans) -> list[np.ndarray]:
        time.sleep(args.span_ms / 1000 * len(spans))
        return [np.zeros(s.frames * 1920, np.float32) for s in spans]

    # Module functions are replaced for this run only, and put back after it: the tests
    # run this in the test process.
    patches = ExitStack()
    patches.enter_context(mock.patch.object(codec_batch, "decode_spans", decode_spans))
    if args.prompt_sync or args.build_ms:
        build = fastqwen_api.build_talker_prompt

        @serialized
        def build_and_sync(tts, request):
            prompt = build(tts, request)
            time.sleep(args.build_ms / 1000)
            if args.prompt_sync:
                gpu(0.0)  # the copy waits for what the loop queued
            return prompt

        patches.enter_context(
            mock.patch.object(fastqwen_api, "build_talker_prompt", build_and_sync)
        )
    fast.runner.run_block = run_block  # this engine's own runner
    fast.runner.prefill = prefill
    params = SamplingParams(max_new_tokens=args.frames, min_new_tokens=args.frames)
    requests = request_mix(B, 1337)
    cpu = torch.device("cpu")
    try:
        steps, before = fast.scheduler.steps, blocks[0]
        burst = bench_run._batch_round(fast, requests, params, cpu)
        burst_fields = {
            "audio_seconds_per_second": round(burst.audio_seconds_per_second, 1),
            "steps": fast.scheduler.steps - steps,
            "blocks": blocks[0] - before,
            "breakdown": burst.breakdown,
        }
        steps, before = fast.scheduler.steps, blocks[0]
        steady = bench_run._steady_state(fast, requests, params, cpu, args.waves)
        steady_fields = {
            "audio_seconds_per_second": steady["audio_seconds_per_second"],
            "steps": fast.scheduler.steps - steps,
            "blocks": blocks[0] - before,
            "breakdown": steady["steady_breakdown"],
        }
    finally:
        fast.close()
        patches.close()
    record = {
        "bench": "steady_state_sim",
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "burst": burst_fields,
        "steady": steady_fields,
    }
    text = json.dumps(record, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
