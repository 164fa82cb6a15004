"""GPU check of continuous batching: batch invariance and a first look at throughput.

Every request of a full mixed batch (different speakers, languages, instructs, sampling
settings and seeds; greedy and sampled rows; half of them joining later) must give
exactly the codes the same engine gives it alone. Writes one JSON file:

    PYTHONPATH=$REF_PYTHONPATH python3 bench/batch_check.py OUT.json [--batch 64] [--frames 64]

The throughput figures here are a by-product (one round, no warm-up beyond the solo
runs); `fastqwen bench --batch-sizes` measures throughput properly.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from itertools import cycle

import torch

from fastqwen import EngineConfig, FastQwen3TTS
from fastqwen.config import SamplingParams
from fastqwen.prompts.builder import VoiceRequest
from fastqwen.tools.defaults import SEED_PROMPTS

SETTINGS = [
    {},
    {"do_sample": False, "subtalker_dosample": False},
    {"temperature": 0.7, "top_k": 20, "top_p": 0.8, "repetition_penalty": 1.2},
    {"subtalker_dosample": False},
    {"subtalker_temperature": 0.6, "subtalker_top_k": 10, "subtalker_top_p": 0.9},
]


def mixed_requests(engine: FastQwen3TTS, n: int, frames: int):
    speakers = cycle(sorted(engine.get_supported_speakers()))
    prompts = cycle(SEED_PROMPTS)
    settings = cycle(SETTINGS)
    out = []
    for i in range(n):
        instruct = "Speak slowly and calmly." if i % 3 == 0 else None
        language = "english" if i % 4 else "chinese"
        request = VoiceRequest(
            "custom_voice", next(prompts), language, speaker=next(speakers), instruct=instruct
        )
        params = SamplingParams(max_new_tokens=frames, min_new_tokens=frames, **next(settings))
        out.append((request, params, 1000 + i))
    return out


def run_batched(engine, requests, stagger_s: float):
    """Half the requests at once, the rest `stagger_s` later (they join mid-way)."""
    half = len(requests) // 2
    t0 = time.perf_counter()
    handles = engine.submit_many(
        [r for r, _, _ in requests[:half]],
        [p for _, p, _ in requests[:half]],
        [s for _, _, s in requests[:half]],
        streaming=False,
    )
    time.sleep(stagger_s)
    handles += engine.submit_many(
        [r for r, _, _ in requests[half:]],
        [p for _, p, _ in requests[half:]],
        [s for _, _, s in requests[half:]],
        streaming=False,
    )
    results = [h.result() for h in handles]
    wall = time.perf_counter() - t0
    return results, wall, [h.job.joined_step for h in handles]


def save(path: str, record: dict) -> None:
    """Write what is measured so far (a time limit may end the run)."""
    with open(path, "w") as f:
        json.dump(record, f, indent=1)


def throughput(engine: FastQwen3TTS, size: int, frames: int) -> dict:
    """`size` sampled requests of `frames` tokens at once, after a short warm-up round at the
    same size (graphs captured, functions compiled): delivered audio seconds per second,
    decode included."""
    requests = mixed_requests(engine, size, frames)
    params = [SamplingParams(max_new_tokens=frames, min_new_tokens=frames)] * size
    warm = [SamplingParams(max_new_tokens=8, min_new_tokens=8)] * size
    reqs = [r for r, _, _ in requests]
    seeds = [s for _, _, s in requests]
    for h in engine.submit_many(reqs, warm, seeds, streaming=False):
        h.result()
    steps0 = engine.scheduler.steps
    t0 = time.perf_counter()
    results = [h.result() for h in engine.submit_many(reqs, params, seeds, streaming=False)]
    wall = time.perf_counter() - t0
    generate = max(r.generate_s for r in results)
    audio = sum(r.audio_seconds for r in results)
    rtfs = sorted(r.audio_seconds / r.generate_s for r in results)
    return {
        "engine": "static",
        "batch_size": size,
        "frames": results[0].frames,
        "wall_s": round(wall, 3),
        "audio_seconds_per_second": round(audio / wall, 2),
        "generated_audio_seconds_per_second": round(audio / generate, 2),
        "step_ms": round(1000 * generate / (engine.scheduler.steps - steps0), 3),
        "per_stream_rtf_min": round(rtfs[0], 2),
        "per_stream_rtf_median": round(rtfs[len(rtfs) // 2], 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--model", default="random:1.7b-custom_voice")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--device", default="cuda")
    p.add_argument("--sizes", default="1,8,64", help="batch sizes for the throughput rounds")
    p.add_argument("--throughput-frames", type=int, default=128)
    p.add_argument(
        "--invariant",
        action="store_true",
        help="EngineConfig(batch_invariant=True): tiled products",
    )
    args = p.parse_args(argv)
    sizes = sorted({int(x) for x in args.sizes.split(",")})
    top = max(args.batch, *sizes)
    config = EngineConfig(
        max_batch_size=top,
        batch_buckets=(*sizes, args.batch),
        max_seq_len=512,
        batch_invariant=args.invariant,
    )
    t0 = time.perf_counter()
    engine = FastQwen3TTS.from_pretrained(
        args.model, device=args.device, dtype=args.dtype, config=config
    )
    cuda = engine.device.type == "cuda"
    record = {
        "model": args.model,
        "dtype": args.dtype,
        "batch": args.batch,
        "frames": args.frames,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "load_s": round(time.perf_counter() - t0, 2),
        "kv_bytes_per_slot": engine.kv_bytes_per_slot,
        "execution": engine.runner.execution.name,
        "ops": engine.runner.ops.name,
        "batch_invariant": args.invariant,
    }
    requests = mixed_requests(engine, args.batch, args.frames)
    t0 = time.perf_counter()
    solo = [engine.generate(r, p, s) for r, p, s in requests]
    record["solo_wall_s"] = round(time.perf_counter() - t0, 2)
    record["solo_ms_per_frame_median"] = round(
        1000 * sorted(r.generate_s / max(r.frames, 1) for r in solo)[len(solo) // 2], 3
    )
    rounds = []
    for stagger in (0.0, 0.05):
        results, wall, joined = run_batched(engine, requests, stagger)
        same = [torch.equal(a.codes, b.codes) for a, b in zip(results, solo, strict=True)]
        first_diff = []
        for a, b in zip(results, solo, strict=True):
            n = min(a.frames, b.frames)
            d = (a.codes[:n] != b.codes[:n]).any(-1).nonzero()
            first_diff.append(int(d[0]) if len(d) else None)
        audio_s = sum(r.audio_seconds for r in results)
        rounds.append(
            {
                "stagger_s": stagger,
                "identical": sum(same),
                "requests": len(same),
                "first_divergent_frame": first_diff,
                "greedy_identical": sum(
                    s for s, (_, p, _) in zip(same, requests, strict=True) if not p.do_sample
                ),
                "greedy_requests": sum(not p.do_sample for _, p, _ in requests),
                "joined_steps": sorted(set(joined)),
                "wall_s": round(wall, 3),
                "audio_seconds_per_second": round(audio_s / wall, 2),
                "peak_active": engine.scheduler.peak_active,
            }
        )
        print(json.dumps(rounds[-1])[:400], flush=True)
        save(args.out, {**record, "rounds": rounds})
    record["rounds"] = rounds
    record["throughput"] = []
    for size in sizes:
        record["throughput"].append(throughput(engine, size, args.throughput_frames))
        print(json.dumps(record["throughput"][-1]), flush=True)
        save(args.out, record)
    record["peak_memory_bytes"] = torch.cuda.max_memory_allocated() if cuda else None
    record["graphs"] = sorted(f"{k[0]}x{k[1]} {k[2]}" for k in engine.runner.frame_graphs)
    save(args.out, record)
    print(json.dumps({k: v for k, v in record.items() if k != "rounds"}))
    engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
