"""A prefill's graph replay with the reference ops against the prompt ops, per prompt length.

For each padded prompt length: the replay time of a captured prefill graph (CUDA events,
median of `--runs`) with `step.REFERENCE_FUNCTIONS` and with `step.PROMPT_FUNCTIONS`, the
kernels each launches (profiled once, eagerly), and how far the prompt ops' results are
from the reference ops' (the hidden state a first frame starts from, and the cache).
The prompt rows are rows of the talker's own codec embedding, so their scale is real.

    PYTHONPATH=. python bench/prefill_check.py OUT.json              # random:1.7b-base, bf16
    PYTHONPATH=. python bench/prefill_check.py /tmp/p.json --model random:tiny-base \\
        --device cpu --lengths 16,64 --runs 1                        # smoke test (no graphs)
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from fastqwen.device import synchronize
from fastqwen.engine.model import StaticModel
from fastqwen.engine.runner import capture_graph
from fastqwen.engine.step import (
    PROMPT_FUNCTIONS,
    REFERENCE_FUNCTIONS,
    FrameState,
    padded_prompt_len,
    prefill,
)
from fastqwen.models.sources import load_model
from fastqwen.tools.bench.run import environment

SCHEMA = "fastqwen-prefill-check/1"
WAYS = {"reference": REFERENCE_FUNCTIONS, "prompt": PROMPT_FUNCTIONS}


def _kernels(dev: torch.device, fn) -> int | None:
    """CUDA kernels one eager call launches (None off CUDA)."""
    if dev.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    synchronize(dev)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        synchronize(dev)
    return sum(1 for e in prof.events() if e.device_type.name == "CUDA")


def _replay_ms(dev: torch.device, fn, runs: int) -> list[float]:
    """Milliseconds of each call: CUDA events around it on CUDA, the host clock elsewhere."""
    out = []
    for _ in range(runs):
        if dev.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            out.append(round(start.elapsed_time(end), 4))
        else:
            t0 = time.perf_counter()
            fn()
            out.append(round(1000 * (time.perf_counter() - t0), 4))
    return out


@torch.inference_mode()
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("out")
    p.add_argument("--model", default="random:1.7b-base")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--lengths", default="10,64,136,192,256,512")
    p.add_argument("--max-seq-len", type=int, default=2560)
    args = p.parse_args(argv)
    dev = torch.device(args.device)
    dtype = args.dtype or ("bfloat16" if dev.type == "cuda" else "float32")
    t0 = time.perf_counter()
    loaded = load_model(args.model, device=args.device, dtype=dtype)
    load_s = time.perf_counter() - t0
    m = StaticModel.from_qwen_tts(loaded.tts.model, args.max_seq_len, batch=1)
    scratch = m.with_talker_cache(copy.deepcopy(m.talker_cache))
    table = loaded.tts.model.talker.get_input_embeddings().weight
    gen = torch.Generator().manual_seed(0)
    rows = []
    for n in [int(x) for x in args.lengths.split(",")]:
        P = padded_prompt_len(n, m.talker_cache.max_len)
        ids = torch.randint(0, table.shape[0], (n,), generator=gen).to(dev)
        embeds = torch.zeros((1, P, table.shape[1]), dtype=m.dtype, device=dev)
        embeds[0, :n] = table[ids].to(m.dtype)
        last = torch.tensor([n - 1], device=dev)
        slots = torch.tensor([0], device=dev)
        row: dict = {"prompt_len": n, "padded_len": P}
        results = {}
        for name, fns in WAYS.items():
            state = FrameState(m, args.max_seq_len, batch=1)

            def run(state=state, fns=fns, inputs=(embeds, last, slots)):
                prefill(m, state, *inputs, scratch, fns)

            kernels = _kernels(dev, run)
            if dev.type == "cuda":
                graph = capture_graph(run)
                timed = graph.replay
            else:
                timed = run
            ms = _replay_ms(dev, timed, args.runs)
            synchronize(dev)
            results[name] = (
                state.hidden[0].float().clone(),
                m.talker_cache.kv[..., :n, :].float().clone(),
            )
            row[name] = {
                "replay_ms": round(statistics.median(ms), 4),
                "replay_runs_ms": ms,
                "kernels": kernels,
                "graphed": dev.type == "cuda",
            }
        (rh, rkv), (ph, pkv) = results["reference"], results["prompt"]
        row["hidden_cosine"] = round(float(torch.nn.functional.cosine_similarity(rh, ph)), 6)
        row["hidden_max_abs_rel"] = round(float((rh - ph).abs().amax() / rh.abs().amax()), 6)
        row["kv_max_abs_rel"] = round(float((rkv - pkv).abs().amax() / rkv.abs().amax()), 6)
        row["speedup"] = round(row["reference"]["replay_ms"] / row["prompt"]["replay_ms"], 3)
        rows.append(row)
        print(
            f"{n:4d} tokens (padded {P}): reference {row['reference']['replay_ms']:.3f} ms "
            f"({row['reference']['kernels']} kernels), prompt {row['prompt']['replay_ms']:.3f} ms "
            f"({row['prompt']['kernels']} kernels), x{row['speedup']}, "
            f"hidden cosine {row['hidden_cosine']}",
            flush=True,
        )
    record = {
        "schema": SCHEMA,
        **environment(dev),
        "dtype": dtype,
        "model": args.model,
        "load_s": round(load_s, 2),
        "runs": args.runs,
        "lengths": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    bad = [r["prompt_len"] for r in rows if r["hidden_cosine"] < 0.999]
    if bad:
        print(f"prompt ops far from the reference ops at lengths {bad}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
