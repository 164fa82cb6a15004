"""The codec's conv stage (`codec.batch._waveform`) against its variants, on N spans at once.

For N spans of `--frames` conv frames (random codes through `_latents`), after warm-up:

- `eager`: `_waveform`, the reference's modules op by op (what `decode_spans` runs);
- `fast`: `codec.snake.fast_waveform` (SnakeBeta fused into each causal conv's input);
- `eager_cudnn_benchmark`, `fast_cudnn_benchmark`: the same inside
  `torch.backends.cudnn.flags(benchmark=True, deterministic=False, allow_tf32=True)`;
- `compiled`: `torch.compile(_waveform, dynamic=False)`, its compile time apart (skipped
  with `--no-compile`; a failure is recorded, not raised).

Each reports median and spread of ms per call, audio seconds per second
(N * frames * 0.08 / s), and max |diff| against `eager`. On CUDA, a torch.profiler table of
the top kernels of `eager` and `fast` at `--profile-spans`.

    PYTHONPATH=. python bench/codec_variants.py OUT.json
    PYTHONPATH=. python bench/codec_variants.py /tmp/x.json --device cpu \
        --model random:tiny-custom_voice --spans 2          # smoke test
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from fastqwen import FastQwen3TTS
from fastqwen.codec.batch import _latents, _waveform
from fastqwen.codec.snake import fast_waveform, kernel_runs_on
from fastqwen.constants import NUM_CODEBOOKS
from fastqwen.device import synchronize
from fastqwen.tools.bench.measure import time_calls

FRAME_S = 0.08  # one conv frame of audio: 1920 samples at 24 kHz


def cudnn_benchmark():
    return torch.backends.cudnn.flags(
        enabled=True, benchmark=True, deterministic=False, allow_tf32=True
    )


def top_kernels(fn: Callable[[], torch.Tensor], device: torch.device, count: int = 15) -> list:
    """The `count` kernels of one call of `fn` with the most GPU time, from a chrome trace."""
    with tempfile.TemporaryDirectory() as tmp:
        trace = os.path.join(tmp, "trace.json")
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            synchronize(device)
        prof.export_chrome_trace(trace)
        with open(trace) as f:
            events = json.load(f)["traceEvents"]
    total: collections.Counter = collections.Counter()
    calls: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "kernel" and "dur" in e:
            total[e["name"]] += e["dur"]
            calls[e["name"]] += 1
    all_us = sum(total.values())
    return [
        {"kernel": name[:120], "calls": calls[name], "us": round(us, 1),
         "share": round(us / all_us, 3)}
        for name, us in total.most_common(count)
    ]  # fmt: skip


def make_variants(decoder, latents: torch.Tensor, compiled) -> dict[str, tuple[Callable, Callable]]:
    """name -> (call, context manager factory for the backend flags); `eager` first: the
    others are compared with it."""
    variants = {
        "eager": (lambda: _waveform(decoder, latents), contextlib.nullcontext),
        "fast": (lambda: fast_waveform(decoder, latents), contextlib.nullcontext),
        "eager_cudnn_benchmark": (lambda: _waveform(decoder, latents), cudnn_benchmark),
        "fast_cudnn_benchmark": (lambda: fast_waveform(decoder, latents), cudnn_benchmark),
    }
    if compiled is not None:
        variants["compiled"] = (lambda: compiled(decoder, latents), contextlib.nullcontext)
    return variants


def git_commit() -> str | None:
    if os.environ.get("FASTQWEN_GIT_COMMIT"):
        return os.environ["FASTQWEN_GIT_COMMIT"]
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    except OSError:
        return None
    return done.stdout.strip() or None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="JSON record path")
    p.add_argument("--model", default="random:1.7b-custom_voice")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default=None, help="bfloat16 (default on CUDA) or float32 (CPU)")
    p.add_argument("--spans", default="16,64,128", help="N, comma-separated")
    p.add_argument("--frames", type=int, default=58, help="conv frames per span")
    p.add_argument("--repeat", type=int, default=5, help="timed calls per variant")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per variant")
    p.add_argument("--profile-spans", type=int, default=64)
    p.add_argument("--no-compile", action="store_true")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    counts = [int(x) for x in args.spans.split(",")]

    t0 = time.perf_counter()
    engine = FastQwen3TTS.from_pretrained(args.model, device=args.device, dtype=dtype)
    decoder = engine.codec.decoder
    record = {
        "bench": "codec_variants",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else args.device,
        "torch": torch.__version__,
        "git_commit": git_commit(),
        "config": {**vars(args), "dtype": dtype},
        "fast_kernel_runs": kernel_runs_on(device),  # False: `fast` is `eager` (CPU fallback)
        "load_s": round(time.perf_counter() - t0, 2),
        "runs": [],
    }

    def save() -> None:
        with open(args.out, "w") as f:
            json.dump(record, f, indent=1)

    compiled = None if args.no_compile else torch.compile(_waveform, dynamic=False)
    gen = torch.Generator().manual_seed(0)
    try:
        with torch.inference_mode():
            for n in counts:
                codes = torch.randint(0, 2048, (n, NUM_CODEBOOKS, args.frames), generator=gen)
                latents = _latents(decoder, codes.to(device))  # (N, latent, frames)
                audio_s = n * args.frames * FRAME_S
                variants = make_variants(decoder, latents, compiled)
                run = {"spans": n, "frames": args.frames, "audio_s": round(audio_s, 2)}
                reference = None
                for name, (fn, flags) in variants.items():
                    entry: dict = {}
                    try:
                        with flags():
                            t1 = time.perf_counter()
                            fn()
                            synchronize(device)
                            entry["first_call_s"] = round(time.perf_counter() - t1, 3)
                            time_calls(fn, device, args.warmup)
                            times, out = time_calls(fn, device, args.repeat)
                    except Exception as error:  # noqa: BLE001 - compile may fail: record it
                        entry["error"] = f"{type(error).__name__}: {str(error)[:500]}"
                        run[name] = entry
                        print(json.dumps({"spans": n, name: entry}), flush=True)
                        continue
                    ms = [t * 1000 for t in times]
                    median = statistics.median(ms)
                    out = out.float()
                    if reference is None:
                        reference = out
                    entry.update(
                        ms_median=round(median, 3),
                        ms_min=round(min(ms), 3),
                        ms_max=round(max(ms), 3),
                        audio_s_per_s=round(audio_s / (median / 1000), 1),
                        max_abs_diff_vs_eager=(out - reference).abs().max().item(),
                    )
                    run[name] = entry
                    print(json.dumps({"spans": n, name: entry}), flush=True)
                if device.type == "cuda" and n == args.profile_spans:
                    run["profile"] = {
                        name: top_kernels(variants[name][0], device) for name in ("eager", "fast")
                    }
                record["runs"].append(run)
                save()
    finally:
        engine.close()
    save()
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
