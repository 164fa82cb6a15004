"""`fastqwen warmup --model M`: pay the kernel builds and graph captures once, ahead of time.

It loads the model and runs every batch bucket once: Triton builds each hand-written
kernel at its first launch, and with `--compile` Inductor compiles the frame functions;
both land in the on-disk compile cache (`engine.compile_cache`), so the next process on
this machine, or a container image built with this step, starts from the cache. Prints
what it did as one JSON line with `--json`.
"""

from __future__ import annotations

import argparse
import json
import time

WARMUP_FRAMES = 4


def _parse_buckets(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--batch-buckets must be comma-separated integers, got {text!r}"
        ) from None


def run(args: argparse.Namespace) -> int:
    import torch
    from torch._dynamo.utils import counters

    from fastqwen import EngineConfig, FastQwen3TTS
    from fastqwen.engine.compile_cache import compile_cache_dir

    options = {"max_batch_size": args.max_batch_size, "batch_buckets": args.batch_buckets}
    if args.compile is not None:
        options["compile"] = args.compile
    if args.max_seq_len:
        options["max_seq_len"] = args.max_seq_len
    t0 = time.perf_counter()
    engine = FastQwen3TTS.from_pretrained(
        args.model, device=args.device, dtype=args.dtype, config=EngineConfig(**options)
    )
    loaded_s = time.perf_counter() - t0
    try:
        buckets = engine.warmup(frames=WARMUP_FRAMES)
    finally:
        engine.close()
    inductor = counters["inductor"]
    report = {
        "model": args.model,
        "device": str(engine.device),
        "execution": engine.runner.execution.name,
        "load_s": round(loaded_s, 2),
        "bucket_s": {str(k): round(v, 2) for k, v in buckets.items()},
        "total_s": round(time.perf_counter() - t0, 2),
        "compile_cache": str(compile_cache_dir())
        if engine.device.type == "cuda" or engine.runner.execution.compiled
        else None,
        "fx_graph_cache_hits": int(inductor.get("fxgraph_cache_hit", 0)),
        "fx_graph_cache_misses": int(inductor.get("fxgraph_cache_miss", 0)),
        "cuda_graphs": len(engine.runner.frame_graphs) + len(engine.runner.prefill_graphs),
        "torch": torch.__version__,
    }
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:22} {value}")
    return 0


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "warmup",
        help="compile and capture a model's batch buckets into the on-disk caches",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="model string, e.g. random:1.7b-custom_voice")
    p.add_argument("--device", default="cuda", help="default: cuda")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--max-batch-size", type=int, default=8, help="slots (default: 8)")
    p.add_argument(
        "--batch-buckets",
        type=_parse_buckets,
        default=None,
        help="batch sizes to capture, e.g. 1,8,64 (default: powers of two up to the max)",
    )
    p.add_argument("--max-seq-len", type=int, default=None, help="cache positions per slot")
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="compile the frame functions with torch.compile (default: off, EngineConfig)",
    )
    p.add_argument("--json", action="store_true", help="print the report as one JSON line")
    p.set_defaults(func=run)
    return p
