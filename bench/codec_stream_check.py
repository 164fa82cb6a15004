"""Streamed codec audio against the whole-utterance decode, on the GPU, in bf16 and fp32.

The question: is the difference between `StreamingDecoder` output and `decode_codes` on the
same codes only the codec's own rounding, or a bug (graph capture, window edges)? The codec
is a deterministic function of its input *shape*: decoding the same codes twice gives the
same samples, but decoding a prefix of them (a shorter input) rounds differently, as any
conv or attention kernel run on another length does. So the yardstick is the reference's
own decode of prefixes: `decode_codes(codes[:n])` against the first n frames of
`decode_codes(codes)`. Streaming, eager or graphed, should differ from the whole decode by
no more than that.

    PYTHONPATH=$REF_PYTHONPATH python3 bench/codec_stream_check.py --out codec_stream.json

Random codes stand in for generated ones (the codec decodes any code in 0..2047), so no
engine compile is needed. Writes one JSON with every figure, and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import numpy as np
import torch

from fastqwen.codec import graphs as codec_graphs
from fastqwen.codec.decoder import StreamingDecoder, decode_codes
from fastqwen.constants import CODEBOOK_SIZE, NUM_CODEBOOKS, SAMPLES_PER_FRAME
from fastqwen.models.sources import load_model


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b))
    return float(np.abs(a[:n].astype(np.float64) - b[:n].astype(np.float64)).max()) if n else 0.0


def stream(speech_tokenizer, codes: torch.Tensor, first: int, chunk: int) -> np.ndarray:
    decoder = StreamingDecoder(speech_tokenizer, first_chunk_frames=first, chunk_frames=chunk)
    pieces = []
    for i in range(codes.shape[0]):  # one frame at a time, as the engine pushes on CPU
        out = decoder.push(codes[i : i + 1])
        if out is not None:
            pieces.append(out)
    tail = decoder.flush()
    if tail is not None:
        pieces.append(tail)
    return np.concatenate(pieces)


def per_chunk(a: np.ndarray, b: np.ndarray, first: int, chunk: int) -> list[float]:
    """Max |a - b| per streamed chunk (first chunk, then each later one)."""
    out, start = [], 0
    size = first
    while start * SAMPLES_PER_FRAME < min(len(a), len(b)):
        lo, hi = start * SAMPLES_PER_FRAME, (start + size) * SAMPLES_PER_FRAME
        out.append(round(max_diff(a[lo:hi], b[lo:hi]), 6))
        start += size
        size = chunk
    return out


def check(speech_tokenizer, codes: torch.Tensor, first: int, chunk: int) -> dict:
    codec_graphs._graphs.clear()  # graphs hold the weights' storage: recapture per dtype
    whole = decode_codes(speech_tokenizer, codes)
    again = decode_codes(speech_tokenizer, codes)
    prefixes = {}
    for n in (2, 14, 26, 50, 100, 167, 300, 301, 350):
        if n <= codes.shape[0]:
            prefixes[n] = max_diff(decode_codes(speech_tokenizer, codes[:n]), whole)
    graphed = stream(speech_tokenizer, codes, first, chunk)
    saved = codec_graphs.GRAPH_MAX_WINDOW
    codec_graphs.GRAPH_MAX_WINDOW = 0
    try:
        eager = stream(speech_tokenizer, codes, first, chunk)
    finally:
        codec_graphs.GRAPH_MAX_WINDOW = saved
    return {
        "samples": len(whole),
        "peak": float(np.abs(whole).max()),
        "rms": float(np.sqrt(np.mean(whole.astype(np.float64) ** 2))),
        "clipped_fraction": float(np.mean(np.abs(whole) >= 1.0)),
        "whole_vs_whole_again": max_diff(whole, again),
        "prefix_decode_vs_whole": {str(k): v for k, v in prefixes.items()},
        "prefix_bound": max(prefixes.values()),
        "stream_graphed_vs_whole": max_diff(graphed, whole),
        "stream_eager_vs_whole": max_diff(eager, whole),
        "stream_graphed_vs_eager": max_diff(graphed, eager),
        "stream_graphed_per_chunk": per_chunk(graphed, whole, first, chunk),
        "stream_eager_per_chunk": per_chunk(eager, whole, first, chunk),
        "lengths": {"whole": len(whole), "graphed": len(graphed), "eager": len(eager)},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="random:0.6b-custom_voice")
    p.add_argument("--frames", type=int, default=350, help="crosses the 300-frame window")
    p.add_argument("--first-chunk-frames", type=int, default=2)
    p.add_argument("--chunk-frames", type=int, default=12)
    p.add_argument("--device", default="cuda", help="cpu for a smoke run (tiny model)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    tts = load_model(args.model, device=args.device, dtype="bfloat16").tts
    st = tts.model.speech_tokenizer
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, CODEBOOK_SIZE, (args.frames, NUM_CODEBOOKS), generator=gen)
    codes = codes.to(args.device)
    record = {
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "model": args.model,
        "frames": args.frames,
        "first_chunk_frames": args.first_chunk_frames,
        "chunk_frames": args.chunk_frames,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "codec_dtype_loaded": str(next(st.model.parameters()).dtype),
    }
    record["bfloat16"] = check(st, codes, args.first_chunk_frames, args.chunk_frames)
    st.model.float()
    record["float32"] = check(st, codes, args.first_chunk_frames, args.chunk_frames)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    record["float32_no_tf32"] = check(st, codes, args.first_chunk_frames, args.chunk_frames)
    record["wall_s"] = round(time.perf_counter() - t0, 1)
    with open(args.out, "w") as f:
        json.dump(record, f, indent=1)
    for key in ("bfloat16", "float32", "float32_no_tf32"):
        r = record[key]
        print(f"{key:16} peak {r['peak']:.3f} rms {r['rms']:.3f}")
        for name in ("whole_vs_whole_again", "prefix_bound", "stream_graphed_vs_whole"):
            print(f"   {name:24} {r[name]:.2e}")
        for name in ("stream_eager_vs_whole", "stream_graphed_vs_eager"):
            print(f"   {name:24} {r[name]:.2e}")
        print("   per chunk graphed:", r["stream_graphed_per_chunk"][:8], "...")
        print("   prefix:", r["prefix_decode_vs_whole"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
