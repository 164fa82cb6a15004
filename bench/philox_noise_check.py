"""Check and time the batched noise kernel (fastqwen/engine/triton/philox_noise.py) on a GPU.

Checks, each bit for bit against torch's own call for a CUDA generator with the row's seed
and offset (`g.manual_seed(s); g.set_offset(o); torch.empty(V).exponential_(1, generator=g)`):

- `exponential_rows` for several V (the 1.7B talker's 3072, the predictor's 2048, a few
  odd sizes, and one past the grid cap, where a thread makes several passes), B rows,
  seeds (some above 2^63) and offsets (multiples of 4, as torch allows, some above 2^32);
  and the offsets it leaves against `g.get_offset()` after torch's call;
- the Philox words alone: the kernel's uniforms against `uniform_` (1 read as 0, as torch
  reverses the bounds), so a mismatch in the noise tells Philox from the log apart;
- `drawing`: rows not drawing keep their offset and get ones;
- a CUDA graph capturing the launch, replayed twice (offsets moving on in the graph), and
  torch.compile of a function calling the op.

Timing (CUDA events, median of --repeat): a frame's noise at B = 64, 16 launches of the
kernel (one per token) through `exponential_rows` (the custom op), as bare Triton launches,
and captured in a CUDA graph (the GPU time alone), against 1,024 per-row `exponential_`
calls as `draw_noise` makes them; for V = 2048 and 3072.

usage: python bench/philox_noise_check.py OUT.json [--repeat 20]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys

import torch
import triton

from fastqwen.engine.triton.philox_noise import (
    _exponential_rows_kernel,
    device_grid_cap,
    exponential_rows,
    fill_exponential_rows,
    grid_threads,
    launch,
    philox_increment,
)

TOKENS = 16  # draws per frame: codebook 0 and the 15 predictor codebooks


def as_int64(value: int) -> int:
    return value - 2**64 if value >= 2**63 else value


def torch_rows(seeds, offsets, vocab, method="exponential"):
    """Torch's own draws per row, and each generator's offset afterwards."""
    rows, after = [], []
    for seed, offset in zip(seeds, offsets, strict=True):
        g = torch.Generator("cuda")
        g.manual_seed(seed)
        g.set_offset(offset)
        x = torch.empty(vocab, device="cuda")
        if method == "exponential":
            x.exponential_(1, generator=g)
        else:
            x.uniform_(generator=g)
        rows.append(x)
        after.append(g.get_offset())
    return torch.stack(rows), after


def compare(got: torch.Tensor, want: torch.Tensor) -> dict:
    same = got.view(torch.int32) == want.view(torch.int32)
    report = {"identical": bool(same.all()), "mismatches": int((~same).sum())}
    if not report["identical"]:
        where = (~same).nonzero()[:5].tolist()
        report["first"] = [
            {"at": w, "got": float(got[tuple(w)]), "want": float(want[tuple(w)])} for w in where
        ]
        report["max_abs"] = float((got - want).abs().max())
        ulps = (got.view(torch.int32).long() - want.view(torch.int32).long()).abs()
        report["max_ulps"] = int(ulps.max())
    return report


def sample_rows(rng: random.Random, rows: int) -> tuple[list[int], list[int]]:
    seeds = [rng.choice([rng.randrange(2**32), rng.randrange(2**64)]) for _ in range(rows)]
    seeds[0], seeds[-1] = 0, 2**64 - 1
    offsets = [
        4 * rng.choice([0, 1, rng.randrange(1000), rng.randrange(2**40)]) for _ in range(rows)
    ]
    return seeds, offsets


def check_case(rng: random.Random, vocab: int, rows: int) -> dict:
    seeds, offsets = sample_rows(rng, rows)
    want, after = torch_rows(seeds, offsets, vocab)
    moved = {a - o for a, o in zip(after, offsets, strict=True)}
    seed = torch.tensor([as_int64(s) for s in seeds], dtype=torch.int64, device="cuda")
    offset = torch.tensor(offsets, dtype=torch.int64, device="cuda")
    drawing = torch.ones(rows, dtype=torch.bool, device="cuda")
    increment = philox_increment(vocab, device_grid_cap(seed.device))
    got = exponential_rows(seed, offset, drawing, vocab, increment)
    result = {
        "vocab": vocab,
        "rows": rows,
        "increment": increment,
        "torch_moved": sorted(moved),
        "noise": compare(got, want),
        "offsets_equal": offset.tolist() == after,
    }
    # the words alone, as uniform_ takes them (1 -> 0)
    want_u, _ = torch_rows(seeds, offsets, vocab, method="uniform")
    uniform = torch.empty(rows, vocab, device="cuda")
    threads = grid_threads(vocab, device_grid_cap(seed.device))
    offset0 = torch.tensor(offsets, dtype=torch.int64, device="cuda")
    launch(_exponential_rows_kernel, seed, offset0, drawing, uniform, increment, threads, True)
    uniform = torch.where(uniform == 1, torch.zeros_like(uniform), uniform)
    result["uniform"] = compare(uniform, want_u)
    result["identical"] = (
        result["noise"]["identical"]
        and result["uniform"]["identical"]
        and result["offsets_equal"]
        and moved == {increment}
    )
    return result


def check_drawing(rng: random.Random, vocab: int = 3072, rows: int = 64) -> dict:
    seeds, offsets = sample_rows(rng, rows)
    flags = [r % 3 != 1 for r in range(rows)]
    want, after = torch_rows(seeds, offsets, vocab)
    seed = torch.tensor([as_int64(s) for s in seeds], dtype=torch.int64, device="cuda")
    offset = torch.tensor(offsets, dtype=torch.int64, device="cuda")
    drawing = torch.tensor(flags, device="cuda")
    got = exponential_rows(seed, offset, drawing, vocab, philox_increment(vocab))
    expect_offsets = [a if f else o for a, o, f in zip(after, offsets, flags, strict=True)]
    idle = ~drawing
    ok = (
        compare(got[drawing], want[drawing])["identical"]
        and bool((got[idle] == 1).all())
        and offset.tolist() == expect_offsets
    )
    return {"vocab": vocab, "rows": rows, "identical": ok}


def check_graph(rng: random.Random, vocab: int = 3072, rows: int = 64) -> dict:
    seeds, offsets = sample_rows(rng, rows)
    increment = philox_increment(vocab, device_grid_cap(torch.device("cuda")))
    seed = torch.tensor([as_int64(s) for s in seeds], dtype=torch.int64, device="cuda")
    offset = torch.tensor(offsets, dtype=torch.int64, device="cuda")
    drawing = torch.ones(rows, dtype=torch.bool, device="cuda")
    out = torch.empty(rows, vocab, device="cuda")
    exponential_rows(seed, offset, drawing, vocab, increment, out)  # warm-up (compiles)
    offset.copy_(torch.tensor(offsets))
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
        exponential_rows(seed, offset, drawing, vocab, increment, out)
    torch.cuda.current_stream().wait_stream(stream)
    offset.copy_(torch.tensor(offsets))
    ok = True
    current = list(offsets)
    for _ in range(2):
        graph.replay()
        torch.cuda.synchronize()
        want, after = torch_rows(seeds, current, vocab)
        ok = ok and compare(out, want)["identical"] and offset.tolist() == after
        current = after
    return {"vocab": vocab, "rows": rows, "identical": ok}


def check_compiled(rng: random.Random, vocab: int = 2048, rows: int = 8) -> dict:
    seeds, offsets = sample_rows(rng, rows)
    want, after = torch_rows(seeds, offsets, vocab)
    seed = torch.tensor([as_int64(s) for s in seeds], dtype=torch.int64, device="cuda")
    offset = torch.tensor(offsets, dtype=torch.int64, device="cuda")
    drawing = torch.ones(rows, dtype=torch.bool, device="cuda")
    threads = grid_threads(vocab, device_grid_cap(seed.device))
    increment = philox_increment(vocab, device_grid_cap(seed.device))

    @torch.compile(fullgraph=True)
    def draw(seed, offset, drawing):
        out = torch.empty(rows, vocab, device="cuda")
        fill_exponential_rows(seed, offset, drawing, out, increment, threads)
        return out * 1.0

    try:
        got = draw(seed, offset, drawing)
    except Exception as error:  # recorded, not fatal: the engine draws eagerly
        return {"identical": False, "error": repr(error)[:500]}
    ok = compare(got, want)["identical"] and offset.tolist() == after
    return {"vocab": vocab, "rows": rows, "identical": ok}


def time_frame(vocab: int, rows: int, repeat: int) -> dict:
    rng = random.Random(vocab)
    seeds, offsets = sample_rows(rng, rows)
    generators = []
    for s, o in zip(seeds, offsets, strict=True):
        g = torch.Generator("cuda")
        g.manual_seed(s)
        g.set_offset(o)
        generators.append(g)
    seed = torch.tensor([as_int64(s) for s in seeds], dtype=torch.int64, device="cuda")
    offset = torch.tensor(offsets, dtype=torch.int64, device="cuda")
    drawing = torch.ones(rows, dtype=torch.bool, device="cuda")
    increment = philox_increment(vocab, device_grid_cap(seed.device))
    out = torch.empty(rows, vocab, device="cuda")
    noise = torch.ones(rows, vocab, device="cuda")

    def kernel_frame():
        for _ in range(TOKENS):
            exponential_rows(seed, offset, drawing, vocab, increment, out)

    threads = grid_threads(vocab, device_grid_cap(seed.device))

    def direct_frame():  # the bare Triton launch, without the custom op's dispatch
        for _ in range(TOKENS):
            launch(_exponential_rows_kernel, seed, offset, drawing, out, increment, threads)

    def per_row_frame():
        for _ in range(TOKENS):
            for row, g in zip(noise, generators, strict=True):
                row.exponential_(1, generator=g)

    def timed(fn) -> float:
        for _ in range(3):
            fn()
        times = []
        for _ in range(repeat):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1000)
        return statistics.median(times)

    kernel_us, direct_us, per_row_us = (
        timed(kernel_frame),
        timed(direct_frame),
        timed(per_row_frame),
    )
    graph = torch.cuda.CUDAGraph()  # the 16 launches captured, as a graphed frame would hold them
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
        kernel_frame()
    torch.cuda.current_stream().wait_stream(stream)
    graphed_us = timed(graph.replay)
    return {
        "vocab": vocab,
        "rows": rows,
        "launches": {"kernel": TOKENS, "per_row": TOKENS * rows},
        "kernel_frame_us": kernel_us,
        "kernel_direct_frame_us": direct_us,
        "kernel_graphed_frame_us": graphed_us,
        "per_row_frame_us": per_row_us,
        "speedup": per_row_us / kernel_us,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs CUDA", file=sys.stderr)
        return 2
    props = torch.cuda.get_device_properties(0)
    cap = device_grid_cap(torch.device("cuda"))
    rng = random.Random(0)
    cases = [(2048, 64), (3072, 64), (3072, 1), (2048, 7), (1, 3), (300, 5), (4097, 9)]
    cases.append((4 * 256 * cap + 1000, 2))  # past the grid cap: several passes per thread
    checks = [check_case(rng, vocab, rows) for vocab, rows in cases]
    extra = {
        "drawing": check_drawing(rng),
        "graph": check_graph(rng),
        "compiled": check_compiled(rng),
    }
    result = {
        "device": props.name,
        "multiprocessors": props.multi_processor_count,
        "max_threads_per_multiprocessor": props.max_threads_per_multi_processor,
        "grid_cap_blocks": cap,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "all_identical": all(c["identical"] for c in checks)
        and all(e["identical"] for e in extra.values()),
        "checks": checks,
        **extra,
        "timings": [time_frame(v, 64, args.repeat) for v in (2048, 3072)],
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps({k: result[k] for k in ("device", "all_identical", "timings")}, indent=2))
    return 0 if result["all_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
