"""Where a batch round's time goes: the frame loop, the codec, and the GPU's two streams.

A timed round of `fastqwen bench --batch-sizes` delivers far less audio than its frame
step allows. This script runs the same rounds (`run._batch_round`: B custom-voice requests
at once, read by B threads, decode included) and, for each batch size:

- the round's breakdown (scheduler admit / frames / deliver, codec busy, wall);
- one more round under torch.profiler, summarised per CUDA stream: kernel time, busy time
  (union of kernel intervals), the top kernels; and the GPU's busy time over both streams;
- the same round with `sys.setswitchinterval` at 0.5 ms (GIL hand-offs ten times as often):
  if the wall drops, threads are waiting for the GIL.

Then the codec alone: `decode_spans` on N spans of 48 new frames (window 96, conv context
10), eager, as audio seconds per second of new audio.

    PYTHONPATH=$REF_PYTHONPATH python3 bench/profile_round.py OUT.json [--sizes 64,256]
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import gzip
import json
import os
import sys
import tempfile
import time

import torch
from torch.profiler import ProfilerActivity, profile

from fastqwen import EngineConfig, FastQwen3TTS
from fastqwen.codec.batch import Span, decode_spans
from fastqwen.config import SamplingParams
from fastqwen.device import synchronize
from fastqwen.tools.bench.run import _batch_round
from fastqwen.tools.bench.throughput import request_mix


def kernel_summary(trace_path: str) -> dict:
    """Per-stream kernel time and busy time (union of intervals) from a chrome trace."""
    opener = gzip.open if trace_path.endswith(".gz") else open
    with opener(trace_path, "rt") as f:
        events = json.load(f)["traceEvents"]
    kernels = [e for e in events if e.get("cat") == "kernel" and "dur" in e]
    if not kernels:
        return {"kernels": 0}
    t0 = min(e["ts"] for e in kernels)
    t1 = max(e["ts"] + e["dur"] for e in kernels)

    def busy(evs) -> float:
        spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in evs)
        total, start, end = 0.0, None, None
        for a, b in spans:
            if end is None or a > end:
                if end is not None:
                    total += end - start
                start, end = a, b
            else:
                end = max(end, b)
        if end is not None:
            total += end - start
        return total

    streams = collections.defaultdict(list)
    for e in kernels:
        streams[e.get("args", {}).get("stream", -1)].append(e)
    out = {"kernels": len(kernels), "span_ms": (t1 - t0) / 1000, "busy_ms": busy(kernels) / 1000}
    out["streams"] = {}
    for sid, evs in sorted(streams.items(), key=lambda kv: -len(kv[1])):
        names = collections.Counter()
        for e in evs:
            names[e["name"][:100]] += e["dur"]
        out["streams"][str(sid)] = {
            "kernels": len(evs),
            "kernel_ms": sum(e["dur"] for e in evs) / 1000,
            "busy_ms": busy(evs) / 1000,
            "top": [{"name": n, "ms": d / 1000} for n, d in names.most_common(8)],
        }
    return out


def round_record(rnd) -> dict:
    return {
        "wall_s": round(rnd.wall_s, 4),
        "audio_seconds_per_second": round(rnd.audio_seconds_per_second, 2),
        "steps": rnd.steps,
        "breakdown": rnd.breakdown,
    }


def codec_alone(engine: FastQwen3TTS, counts: list[int], repeat: int = 5) -> list[dict]:
    decoder = engine.codec.decoder
    out = []
    gen = torch.Generator().manual_seed(0)
    for n in counts:
        spans = [
            Span(torch.randint(0, 2048, (96, 16), generator=gen), context=48, conv_context=10)
            for _ in range(n)
        ]
        decode_spans(decoder, spans)
        synchronize(engine.device)
        t0 = time.perf_counter()
        for _ in range(repeat):
            decode_spans(decoder, spans)
        synchronize(engine.device)
        dt = (time.perf_counter() - t0) / repeat
        audio = n * 48 * 0.08
        out.append({"spans": n, "ms": round(dt * 1000, 2), "audio_s_per_s": round(audio / dt, 1)})
        print(json.dumps(out[-1]), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--model", default="random:1.7b-custom_voice")
    p.add_argument("--sizes", default="64,256")
    p.add_argument("--frames", type=int, default=168, help="max_new_tokens of each request")
    p.add_argument("--profile-frames", type=int, default=64)
    p.add_argument("--codec-spans", default="1,16,64,128")
    p.add_argument("--engine-option", action="append", default=[], help="KEY=VALUE")
    p.add_argument("--device", default="cuda")
    args = p.parse_args(argv)
    sizes = sorted({int(x) for x in args.sizes.split(",")})
    options = {}
    for item in args.engine_option:
        k, v = item.split("=", 1)
        options[k] = json.loads(v) if v not in ("true", "false") else v == "true"
    config = EngineConfig(
        **{"max_batch_size": max(sizes), "batch_buckets": tuple(sizes), "max_seq_len": 512,
           **options}
    )  # fmt: skip
    t0 = time.perf_counter()
    engine = FastQwen3TTS.from_pretrained(
        args.model, device=args.device, dtype="bfloat16", config=config
    )
    record = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else args.device,
        "model": args.model,
        "git_commit": os.environ.get("FASTQWEN_GIT_COMMIT"),
        "engine_config": dataclasses.asdict(engine.config),
        "load_s": round(time.perf_counter() - t0, 2),
        "rounds": [],
    }

    def save() -> None:
        with open(args.out, "w") as f:
            json.dump(record, f, indent=1)

    dev = torch.device(args.device)
    params = SamplingParams(max_new_tokens=args.frames, min_new_tokens=args.frames)
    short = dataclasses.replace(
        params, max_new_tokens=args.profile_frames, min_new_tokens=args.profile_frames
    )
    try:
        for B in sizes:
            requests = request_mix(B, 1000)
            t0 = time.perf_counter()
            _batch_round(engine, requests, params, dev)  # capture, compile
            entry = {"batch_size": B, "warmup_s": round(time.perf_counter() - t0, 2)}
            entry["timed"] = [round_record(_batch_round(engine, requests, params, dev))]
            print(json.dumps(entry), flush=True)
            old = sys.getswitchinterval()
            sys.setswitchinterval(0.0005)
            try:
                entry["switch_interval_0.5ms"] = round_record(
                    _batch_round(engine, requests, params, dev)
                )
            finally:
                sys.setswitchinterval(old)
            print(json.dumps(entry["switch_interval_0.5ms"]), flush=True)
            if dev.type != "cuda":
                record["rounds"].append(entry)
                continue
            with tempfile.TemporaryDirectory() as tmp:
                trace = f"{tmp}/trace.json"
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    rnd = _batch_round(engine, requests, short, dev)
                prof.export_chrome_trace(trace)
                entry["profiled"] = round_record(rnd)
                entry["profiled"]["frames"] = args.profile_frames
                entry["profiled"]["gpu"] = kernel_summary(trace)
            print(json.dumps(entry["profiled"], indent=1)[:3000], flush=True)
            record["rounds"].append(entry)
            save()
        record["codec_alone"] = codec_alone(engine, [int(x) for x in args.codec_spans.split(",")])
        save()
    finally:
        engine.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
