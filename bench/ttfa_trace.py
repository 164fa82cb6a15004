"""Where a streamed request's time to first audio goes, as host timestamps.

Why: on an H200 the time to first audio of a lone custom-voice stream was 22-24 ms at
b4f3d3b (one request at a time) and 50-74 ms since the scheduler and the codec thread
(510976a, 04f1f3c), for a prefill of ~6 ms and two frames of ~4 ms each. This runs lone
streams on one engine and records, relative to the call, when each part of the path began
and ended: the scheduler's admission (prompt loads and prefill), each block of frames, the
codec worker's hand-over and decode, and the first chunk's arrival.

Each stream runs in one of two ways: `idle` (the engine has been idle for 0.3 s, as for a
first user) and `after_cancel` (right after closing the previous stream, as the bench's
`ttfa_ms` measures it: the cancelled request may still hold the loop for a block).

    PYTHONPATH=. python bench/ttfa_trace.py OUT.json --model random:1.7b-custom_voice
    PYTHONPATH=. python bench/ttfa_trace.py /tmp/t.json --model random:tiny-custom_voice \\
        --device cpu --runs 2                                              # smoke test
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

from fastqwen import EngineConfig, FastQwen3TTS
from fastqwen.codec import batch as codec_batch
from fastqwen.config import SamplingParams
from fastqwen.device import synchronize
from fastqwen.engine import runner as runner_mod
from fastqwen.engine import scheduler as scheduler_mod
from fastqwen.prompts.builder import VoiceRequest

TEXT = "We met at the corner cafe after work and talked about weekend plans."


class Trace:
    """Timestamped (name, thread, start, end) spans, relative to `t0`."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.spans: list[tuple[str, str, float, float]] = []
        self.lock = threading.Lock()

    def add(self, name: str, start: float, end: float) -> None:
        with self.lock:
            self.spans.append(
                (
                    name,
                    threading.current_thread().name,
                    1e3 * (start - self.t0),
                    1e3 * (end - self.t0),
                )
            )

    def wrap(self, owner, attr: str, name: str, sync: bool = False):
        original = getattr(owner, attr)
        trace = self

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                trace.add(name, start, time.perf_counter())

        setattr(owner, attr, timed)
        return original


def run(args) -> dict:
    device = torch.device(args.device)
    options = {}
    for item in args.engine_option:
        key, value = item.split("=", 1)
        options[key] = {"true": True, "false": False}.get(value.lower(), value)
    config = EngineConfig(**options)
    t_load = time.perf_counter()
    fast = FastQwen3TTS.from_pretrained(
        args.model, device=args.device, dtype=args.dtype, config=config
    )
    load_s = time.perf_counter() - t_load
    speaker = (fast.get_supported_speakers() or [None])[0]
    request = VoiceRequest("custom_voice", TEXT, "english", speaker=speaker)
    params = SamplingParams(max_new_tokens=args.tokens, min_new_tokens=args.tokens)

    t_warm = time.perf_counter()
    fast.generate(request, params, 1)
    for _ in range(2):  # stream warm-up
        chunks = fast.stream(request, params, 1)
        next(chunks)
        chunks.close()
    synchronize(device)
    time.sleep(0.3)
    warm_s = time.perf_counter() - t_warm

    runs = []
    for kind in ("idle", "after_cancel"):
        for i in range(args.runs):
            if kind == "idle":
                time.sleep(0.3)
            trace = Trace()
            restore = [
                (owner, attr, trace.wrap(owner, attr, name))
                for owner, attr, name in (
                    (scheduler_mod.Scheduler, "_admit", "admit"),
                    (runner_mod.FrameRunner, "prefill", "prefill"),
                    (runner_mod.FrameRunner, "run_block", "block"),
                    (codec_batch.CodecWorker, "decode", "codec_wait"),
                    (codec_batch, "decode_spans", "decode_spans"),
                    (fast, "submit", "submit"),
                )
            ]
            try:
                synchronize(device)
                trace.t0 = time.perf_counter()
                chunks = fast.stream(request, params, 1 + i)
                first = next(chunks)
                ttfa = 1e3 * (time.perf_counter() - trace.t0)
                chunks.close()
            finally:
                for owner, attr, original in restore:
                    if owner is fast:
                        del fast.submit
                    else:
                        setattr(owner, attr, original)
            runs.append(
                {
                    "kind": kind,
                    "ttfa_ms": round(ttfa, 3),
                    "first_chunk_samples": int(len(first.audio))
                    if hasattr(first, "audio")
                    else None,
                    "spans": [
                        (n, th, round(a, 3), round(b, 3))
                        for n, th, a, b in sorted(trace.spans, key=lambda s: s[2])
                        if a <= ttfa + 5
                    ],
                }
            )
            print(kind, i, round(ttfa, 2), runs[-1]["spans"], flush=True)
    fast.close()
    summary = {
        kind: statistics.median(r["ttfa_ms"] for r in runs if r["kind"] == kind)
        for kind in ("idle", "after_cancel")
    }
    return {
        "schema": "fastqwen-ttfa-trace/1",
        "model": args.model,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": args.dtype,
        "engine_config": {k: getattr(fast.config, k) for k in fast.config.__dataclass_fields__},
        "load_s": round(load_s, 3),
        "warm_s": round(warm_s, 3),
        "ttfa_median_ms": summary,
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--model", default="random:1.7b-custom_voice")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--tokens", type=int, default=48)
    p.add_argument("--engine-option", action="append", default=[], help="KEY=VALUE EngineConfig")
    args = p.parse_args(argv)
    record = run(args)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record["ttfa_median_ms"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
