"""The reference encoder's CUDA graphs against qwen-tts' eager encode, on one model.

For each reference length: the codes from `speech_tokenizer.encode` (eager, qwen-tts) and
from `ReferenceCodes` (graphed; "padded" on CPU), how many frames differ, the capture's
time, and the median time of each way over `--runs` calls (device synced). Also the speaker
encoder's time (mel spectrogram on the host, then the encoder), which runs beside the
graphed codec encoder in `FastQwen3TTS._encode_voice`.

    PYTHONPATH=. python bench/reference_codes_check.py OUT.json          # random:1.7b-base
    PYTHONPATH=. python bench/reference_codes_check.py /tmp/r.json --model random:tiny-base \\
        --device cpu --runs 1                                           # smoke test
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fastqwen.device import synchronize
from fastqwen.models.sources import load_model
from fastqwen.prompts.reference_codes import ReferenceCodes
from fastqwen.tools.bench.measure import time_calls
from fastqwen.tools.bench.run import environment

SCHEMA = "fastqwen-reference-codes-check/1"


def _ms(dev, fn, runs: int) -> tuple[object, float, list[float]]:
    """The last output, and the median and each call's milliseconds."""
    times, out = time_calls(fn, dev, runs)
    ms = [round(1000 * t, 3) for t in times]
    return out, round(statistics.median(ms), 3), ms


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("out")
    p.add_argument("--model", default="random:1.7b-base")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--seconds", default="3,6,10,10.3,20")
    args = p.parse_args(argv)
    dev = torch.device(args.device)
    dtype = args.dtype or ("bfloat16" if dev.type == "cuda" else "float32")
    model = load_model(args.model, device=args.device, dtype=dtype).tts.model
    tokenizer = model.speech_tokenizer
    codes = ReferenceCodes(tokenizer, mode="graphed" if dev.type == "cuda" else "padded")
    rows, failures = [], 0
    rng = np.random.default_rng(0)
    for seconds in [float(s) for s in args.seconds.split(",")]:
        n = int(seconds * 24_000)
        t = np.arange(n) / 24_000  # a voiced-like tone with noise: the encoder sees varied input
        wav = (0.2 * np.sin(2 * np.pi * 140 * t) + 0.05 * rng.standard_normal(n)).astype(np.float32)
        captures = codes.captures
        synchronize(dev)
        t0 = time.perf_counter()
        first = codes.encode(wav)  # captures this bucket's graph
        synchronize(dev)
        first_ms = 1000 * (time.perf_counter() - t0)
        expected, eager_ms, eager_runs = _ms(
            dev, lambda w=wav: tokenizer.encode([w], sr=24_000).audio_codes[0], args.runs
        )
        got, graph_ms, graph_runs = _ms(dev, lambda w=wav: codes.encode(w), args.runs)
        _, speaker_ms, _ = _ms(
            dev, lambda w=wav: model.extract_speaker_embedding(w, 24_000), args.runs
        )
        differ = int((got != expected).any(1).sum()) if got.shape == expected.shape else -1
        failures += differ != 0 or not torch.equal(first, got)
        rows.append(
            {
                "seconds": seconds,
                "frames": int(expected.shape[0]),
                "frames_differing": differ,
                "codes_differing": int((got != expected).sum()) if differ >= 0 else None,
                "captured": codes.captures - captures,
                "first_call_ms": round(first_ms, 3),
                "eager_ms": eager_ms,
                "eager_runs_ms": eager_runs,
                "graphed_ms": graph_ms,
                "graphed_runs_ms": graph_runs,
                "speaker_encoder_ms": speaker_ms,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    result = {
        "schema": SCHEMA,
        "model": args.model,
        "dtype": dtype,
        "device": str(dev),
        **environment(dev),
        "mode": codes.mode,
        "eager_fallbacks": codes.eager_runs,
        "rows": rows,
    }
    codes.close()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
