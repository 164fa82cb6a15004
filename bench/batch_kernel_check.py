"""Time and check the batched Triton kernels on the device, for B requests per step.

For the 1.7B talker's and the code predictor's decoder shapes in bf16 and M rows in
`ROWS` (one token per request, so M = B):

- layer products: `tiled_product` at each of a few tile configurations (`TILE_CONFIGS`),
  against `matvec` (M = 1 only: it serves one or two rows) and `F.linear` (cuBLAS, the
  bare GEMM: no norm, activation or residual, so a lower bound for the eager form). Each
  call takes the next of several weight copies, together larger than the L2 cache, so the
  weight comes from memory as it does when a frame runs its layers;
- accuracy: the default tiles at the largest M against the eager reference maths
  (`ops.layer_product`, bf16), as the largest absolute difference;
- batch invariance, on the GPU: for every configuration and M, row 0 and row M - 1 (a
  different tile and tile offset once M > 64) hold the same input as the M = 1 call and
  must give a bit-identical output row; the others are random;
- torch.compile: the three ops traced in one function (fullgraph) give the eager numbers;
- `decode_attention` at B rows: the talker's step (T = 1, each row at its own position,
  window S = 512, all rows at the window's end so the whole window is read) and the
  predictor's first pass (T = 2, positions shared, window 16), with the same invariance
  check on the output row and the row's cache;
- the top-k mask at B in `TOP_K_ROWS` and V in (2048, 3072) (float32 scores, k = 50 for
  every row, as a (B, 1) tensor): the bisection kernel `top_k_mask` runs (at a few
  num_warps, one and two bits a step: `TOP_K_CONFIGS`), the earlier pairwise kernel, a
  torch.topk threshold and the eager sort (`in_top_k`). Exactness: the bisection kernel's
  mask against `in_top_k` and `in_top_k_counted` on random rows, rows of ties, mostly
  -inf rows, rows mixing +0.0 and -0.0, rows of subnormals, extremes and infinities, at
  k = 0, 1, 2, 50, V - 1, V, V + 1 and a k per row; and `top_k_mask` replayed from a
  CUDA graph against its eager call.

Times are CUDA events around each call, the median of `--repeat` (50) calls after 10
warm-up calls; a busy-wait kernel queued before each call keeps the launch out of them.
The fastest configuration is printed per shape and M, and the one configuration per shape
with the smallest mean slowdown over every M (batch invariance needs one tiling for all
M, so that is the one to put in `tiled_product.CONFIGS`).

usage: python bench/batch_kernel_check.py OUT.json [--rows 1,8,...] [--repeat 50]
        [--quick | --grid] [--shapes talker/qkv,...] [--no-attention] [--no-top-k]
        [--top-k-only] [--compiled-only] [--dry-run]

--quick tries only the default configuration, --grid every combination of `GRID` (for a
shape or two); --top-k-only runs the torch.compile check and the top-k part only;
--dry-run needs no GPU: it checks the arguments and writes the plan
(shapes, configurations, rows) without running anything.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

ROWS = (1, 8, 32, 64, 128, 256)

# name: (H, Hq, Hkv, D, I)
MODELS = {"talker": (2048, 16, 8, 128, 6144), "predictor": (1024, 16, 8, 128, 3072)}

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages); None is `tiled_product.default_config`.
# Any of them is batch-invariant as long as the same one serves every M of a shape.
TILE_CONFIGS = (  # the front-runners of a --grid run on an H200 (1.7B talker shapes)
    None,
    (16, 32, 256, 4, 4),
    (16, 32, 512, 4, 3),
    (16, 64, 128, 8, 4),
    (16, 64, 256, 4, 3),
    (16, 128, 128, 8, 3),
    (32, 64, 128, 8, 3),
    (32, 64, 256, 4, 3),
    (32, 64, 256, 4, 4),
    (32, 128, 128, 8, 3),
    (32, 128, 256, 4, 3),
    (64, 32, 64, 4, 4),
    (64, 64, 64, 4, 2),
    (64, 128, 64, 4, 4),
    (64, 128, 128, 8, 3),
)

# --grid: every combination (slow: for one shape or two, see --shapes)
GRID = {
    "BLOCK_M": (16, 32, 64),
    "BLOCK_N": (16, 32, 64, 128),
    "BLOCK_K": (64, 128, 256, 512),
    "num_warps": (4, 8),
    "num_stages": (2, 3, 4),
}

ATTENTION_CASES = {  # name: (T, window S, positions shared by every row)
    "talker_step": (1, 512, False),
    "predictor_first_pass": (2, 16, True),
}


TOP_K_ROWS = (1, 8, 64, 128)
TOP_K_VOCABS = (2048, 3072)  # the code predictor's and the talker's codebook sizes
TOP_K_CONFIGS = tuple(  # {} is the default of `top_k.launch`: 8 warps, a bit a step
    [{}, {"num_warps": 2}, {"num_warps": 4}, {"num_warps": 16}]
    + [{"STEP_BITS": 2, "num_warps": w} for w in (2, 4, 8, 16)]
)


def products(model: str) -> dict[str, tuple[int, int, bool, bool, bool]]:
    """A decoder layer's products: name -> (N, K, norm, residual, swiglu)."""
    H, hq, hkv, d, inter = MODELS[model]
    return {
        "qkv": ((hq + 2 * hkv) * d, H, True, False, False),
        "o": (H, hq * d, False, True, False),
        "gate_up": (inter, H, True, False, True),
        "down": (H, inter, False, True, False),
    }


def config_dict(config: tuple[int, ...] | None) -> dict:
    if config is None:
        return {}
    return dict(zip(GRID, config, strict=True))


def chosen_configs(quick: bool, grid: bool) -> tuple:
    """The configurations to try: the default only, every `GRID` one, or `TILE_CONFIGS`."""
    if quick:
        return (None,)
    if grid:
        return (None, *itertools.product(*GRID.values()))
    return TILE_CONFIGS


def plan(rows: tuple[int, ...], configs: tuple, shapes: set[str] | None) -> dict:
    """Everything the run will measure, as plain data (what --dry-run writes)."""
    return {
        "rows": list(rows),
        "models": {name: list(dims) for name, dims in MODELS.items()},
        "products": {
            model: {
                name: list(shape)
                for name, shape in products(model).items()
                if shapes is None or f"{model}/{name}" in shapes
            }
            for model in MODELS
        },
        "tile_configs": [config_dict(c) for c in configs],
        "attention": {name: list(case) for name, case in ATTENTION_CASES.items()},
        "top_k": {
            "rows": list(TOP_K_ROWS),
            "vocabs": list(TOP_K_VOCABS),
            "configs": list(TOP_K_CONFIGS),
        },  # fmt: skip
    }


BUSY_CYCLES = 1_000_000  # ~0.5 ms of GPU clock: longer than a launch from Python takes


def median_us(call: Callable[[int], object], repeat: int, warmup: int = 10) -> float:
    """Median microseconds of `call(i)` over `repeat` calls, each between CUDA events.

    Before each call the GPU gets a busy-wait kernel, so it is still busy while Python
    launches the call and the events time the kernel itself, not the launch (small
    kernels take less GPU time than a launch from Python takes CPU time)."""
    for i in range(warmup):
        call(i)
    torch.cuda.synchronize()
    marks = [
        (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        for _ in range(repeat)
    ]
    for i, (start, end) in enumerate(marks):
        torch.cuda._sleep(BUSY_CYCLES)
        start.record()
        call(i)
        end.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) * 1000 for start, end in marks)


def weight_copies(rows: int, K: int, dt: torch.dtype) -> list[torch.Tensor]:
    """Copies of a (rows, K) weight that together exceed the L2 cache (> 256 MB)."""
    copies = max(2, -(-(256 << 20) // (rows * K * 2)))
    return [torch.randn(rows, K, device="cuda", dtype=dt) * 0.02 for _ in range(copies)]


def product_case(
    model: str, name: str, rows: tuple[int, ...], repeat: int, configs: tuple
) -> tuple[list, list]:
    """Timings and invariance checks of one product shape (see the module docstring)."""
    from fastqwen.engine.ops import layer_product
    from fastqwen.engine.triton import matvec as matvec_module
    from fastqwen.engine.triton import tiled_product as tiled

    N, K, norm_on, res_on, swiglu = products(model)[name]
    dt = torch.bfloat16
    ws = weight_copies(2 * N if swiglu else N, K, dt)
    norm = (1 + 0.1 * torch.randn(K, device="cuda")).to(dt) if norm_on else None
    x_row = torch.randn(K, device="cuda", dtype=dt)
    res_row = torch.randn(N, device="cuda", dtype=dt)
    case = {"model": model, "product": name, "N": N, "K": K, "swiglu": swiglu}
    timings, invariance = [], []

    def inputs(M):
        """x (M, 1, K) and residual with rows 0 and M - 1 the fixed row, the rest random."""
        x = torch.randn(M, 1, K, device="cuda", dtype=dt)
        res = torch.randn(M, 1, N, device="cuda", dtype=dt) if res_on else None
        x[0, 0] = x[-1, 0] = x_row
        if res is not None:
            res[0, 0] = res[-1, 0] = res_row
        return x, res

    def tiled_call(x, res, kw):
        kernel = tiled._tiled_product_kernel
        return lambda i: tiled.launch(kernel, x, ws[i % len(ws)], norm, res, 1e-6, swiglu, **kw)

    def matvec_call(x, res):
        kernel = matvec_module._matvec_kernel
        return lambda i: matvec_module.launch(kernel, x, ws[i % len(ws)], norm, res, 1e-6, swiglu)

    for config in configs:
        kw = config_dict(config)
        label = kw or {"default": tiled.default_config(N, K, swiglu)}
        try:
            y1 = tiled_call(*inputs(1), kw)(0)[0, 0]
            for M in rows:
                x, res = inputs(M)
                y = tiled_call(x, res, kw)(0)
                same = torch.equal(y[0, 0], y1) and torch.equal(y[-1, 0], y1)
                invariance.append({**case, "config": label, "M": M, "same": same})
                us = median_us(tiled_call(x, res, kw), repeat)
                timings.append({**case, "kernel": "tiled_product", "config": label,
                                "M": M, "us": us})  # fmt: skip
                print(timings[-1], "invariant" if same else "NOT INVARIANT", flush=True)
        except Exception as exc:  # a configuration that does not fit is a result too
            timings.append({**case, "kernel": "tiled_product", "config": label,
                            "M": None, "us": None, "error": repr(exc)[:300]})  # fmt: skip
            print(timings[-1], flush=True)
    x, res = inputs(max(rows))  # the default tiles against the eager reference maths
    got = tiled_call(x, res, {})(0).float()
    expected = layer_product(x, ws[0], norm, res, 1e-6, swiglu).float()
    timings.append({**case, "kernel": "tiled_product_vs_reference", "M": max(rows), "us": None,
                    "max_abs_diff": (got - expected).abs().max().item(),
                    "max_abs": expected.abs().max().item()})  # fmt: skip
    print(timings[-1], flush=True)
    for M in rows:
        x, res = inputs(M)
        us = median_us(lambda i, x=x: F.linear(x, ws[i % len(ws)]), repeat)
        timings.append({**case, "kernel": "F.linear", "M": M, "us": us})
        print(timings[-1], flush=True)
        if M <= 2:  # matvec's rows are tokens of one request: (1, M, K)
            rm = None if res is None else res.view(1, M, N)
            us = median_us(matvec_call(x.view(1, M, K), rm), repeat)
            timings.append({**case, "kernel": "matvec", "M": M, "us": us})
            print(timings[-1], flush=True)
    return timings, invariance


def run_products(
    rows: tuple[int, ...], repeat: int, configs: tuple, shapes: set[str] | None
) -> tuple[list, list]:
    timings, invariance = [], []
    for model in MODELS:
        for name in products(model):
            if shapes is not None and f"{model}/{name}" not in shapes:
                continue
            t, i = product_case(model, name, rows, repeat, configs)
            timings += t
            invariance += i
            torch.cuda.empty_cache()  # the weight copies of this shape are gone
    return timings, invariance


def run_attention(rows: tuple[int, ...], repeat: int) -> tuple[list, list]:
    from fastqwen.engine.triton import decode_attention as attention

    H, hq, hkv, d, _ = MODELS["talker"]
    dt, dev = torch.bfloat16, "cuda"
    timings, invariance = [], []
    q_norm = (1 + 0.1 * torch.randn(d, device=dev)).to(dt)
    k_norm = (1 + 0.1 * torch.randn(d, device=dev)).to(dt)
    kernel = attention._decode_attention_kernel
    for name, (T, S, shared) in ATTENTION_CASES.items():
        row_qkv = torch.randn(T, (hq + 2 * hkv) * d, device=dev, dtype=dt)
        row_kv = torch.randn(2, hkv, 2 * S, d, device=dev, dtype=dt)
        row_pos = torch.arange(S - T, S, device=dev)
        first = None
        for B in rows:
            qkv = torch.randn(B, T, (hq + 2 * hkv) * d, device=dev, dtype=dt)
            big = torch.randn(2, B, hkv, 2 * S, d, device=dev, dtype=dt)  # the window's buffer
            kv = big[..., :S, :]
            qkv[0], big[:, 0] = row_qkv, row_kv
            pos = row_pos[None] if shared else row_pos[None].repeat(B, 1)
            angles = pos[..., None].float() * torch.linspace(0, 1, d, device=dev)
            cos, sin = angles.cos().to(dt), angles.sin().to(dt)

            def call(i, qkv=qkv, cos=cos, sin=sin, pos=pos, kv=kv):
                return attention.launch(kernel, qkv, q_norm, k_norm, cos, sin, pos, kv, hq, 1e-6)

            out = call(0)
            got = (out[0].clone(), big[:, 0].clone())
            first = first or got
            same = all(torch.equal(a, b) for a, b in zip(first, got, strict=True))
            invariance.append({"attention": name, "B": B, "same": same})
            us = median_us(call, repeat)
            timings.append({"attention": name, "T": T, "S": S, "shared_positions": shared,
                            "B": B, "us": us})  # fmt: skip
            print(timings[-1], "invariant" if same else "NOT INVARIANT", flush=True)
    return timings, invariance


def top_k_rows(kind: str, B: int, V: int) -> torch.Tensor:
    """(B, V) float32 scores on the GPU of one kind (see the module docstring)."""
    inf = float("inf")
    if kind == "ties":
        s = torch.randint(-3, 4, (B, V)).float() / 2
    elif kind == "suppressed":
        s = torch.randn(B, V)
        s[:, torch.rand(V) < 0.9] = -inf
    elif kind == "zeros":
        s = torch.randint(-2, 3, (B, V)).float()
        s[s.abs() == 2] = 0.0
        s[torch.rand(B, V) < 0.5] *= -1  # 0.0 * -1 = -0.0
    elif kind == "special":
        big = 3.4028235e38  # the largest float32; 1e-45 is the smallest subnormal
        values = [0.0, -0.0, 1e-45, -1e-45, 1e-38, -1e-38, big, -big, inf, -inf]
        values = torch.tensor(values + [1.0, -1.0, 1.0000001, -1.0000001])
        s = values[torch.randint(0, len(values), (B, V))]
    else:
        s = 4 * torch.randn(B, V)
    return s.cuda()


def top_k_forms(scores: torch.Tensor, k: torch.Tensor) -> dict[str, Callable]:
    """The top-k mask forms timed, each a call of the timing index; k (B, 1) all 50."""
    from fastqwen.engine.sampling import in_top_k
    from fastqwen.engine.triton import top_k as kernels

    def bisection(config):
        return lambda i: kernels.launch(kernels._top_k_mask_kernel, scores, k, **config)

    forms = {f"bisection {json.dumps(c)}": bisection(c) for c in TOP_K_CONFIGS}
    forms["pairwise"] = lambda i: kernels.launch_pairwise(
        kernels._top_k_mask_pairwise_kernel, scores, k
    )
    forms["torch.topk"] = lambda i: scores >= scores.topk(50, dim=-1).values[:, -1:]
    forms["in_top_k (sort)"] = lambda i: in_top_k(scores, k)
    return forms


def run_top_k(repeat: int) -> tuple[list, list]:
    """Timings of the top-k mask forms, and the exactness checks (module docstring)."""
    from fastqwen.engine.sampling import in_top_k, in_top_k_counted
    from fastqwen.engine.triton import top_k as kernels

    timings, checks = [], []
    for V in TOP_K_VOCABS:
        for B in TOP_K_ROWS:
            scores = top_k_rows("random", B, V)
            k = torch.full((B, 1), 50, device="cuda")
            forms = top_k_forms(scores, k)
            expected = in_top_k(scores, k)
            for form, call in forms.items():
                same = torch.equal(call(0), expected)
                us = median_us(call, repeat)
                timings.append({"top_k": form, "B": B, "V": V, "us": us, "same": same})
                print(timings[-1], flush=True)
            for kind in ("random", "ties", "suppressed", "zeros", "special"):
                scores = top_k_rows(kind, B, V)
                ks = (0, 1, 2, 50, V - 1, V, V + 1)
                cases = [torch.tensor(x, device="cuda") for x in ks]
                cases.append(torch.tensor(ks, device="cuda")[torch.randint(0, len(ks), (B, 1))])
                for k in cases:
                    got = kernels.top_k_mask(scores, k)
                    k2 = k.view(-1, 1) if k.dim() else k
                    for name, reference in (("sort", in_top_k), ("counted", in_top_k_counted)):
                        if name == "counted" and B * V * V > 2**31:
                            continue  # its (B, V, V) comparison would not fit comfortably
                        same = torch.equal(got, reference(scores, k2))
                        checks.append({"top_k": kind, "B": B, "V": V, "reference": name,
                                       "k": k.view(-1)[:8].tolist(), "same": same})  # fmt: skip
                        if not same:
                            print("TOP-K MISMATCH", checks[-1], flush=True)
            # replayed from a CUDA graph, as the frame runs it
            scores, k = top_k_rows("random", B, V), torch.randint(0, V + 2, (B, 1), device="cuda")
            eager = kernels.top_k_mask(scores, k)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                captured = kernels.top_k_mask(scores, k)
            graph.replay()
            torch.cuda.synchronize()
            checks.append({"top_k": "cuda graph", "B": B, "V": V, "reference": "eager",
                           "same": torch.equal(captured, eager)})  # fmt: skip
    print("top-k checks:", len(checks), "all same:", all(c["same"] for c in checks), flush=True)
    return timings, checks


def check_compiled() -> dict[str, bool]:
    """The three ops in one function through torch.compile(fullgraph=True), as the
    compiled frame calls them, against the same function run eagerly: the launches must
    trace, and give the same numbers (and the same cache writes)."""
    from fastqwen.engine.triton.decode_attention import decode_attention
    from fastqwen.engine.triton.tiled_product import tiled_product
    from fastqwen.engine.triton.top_k import top_k_mask

    dev, dt = "cuda", torch.bfloat16
    B, H, inter, hq, hkv, d = 4, 1024, 3072, 16, 8, 128
    x = torch.randn(B, 1, H, device=dev, dtype=dt)
    gate_up = torch.randn(2 * inter, H, device=dev, dtype=dt) * 0.02
    norm = torch.ones(H, device=dev, dtype=dt)
    head_norm = torch.ones(d, device=dev, dtype=dt)
    qkv = torch.randn(B, 1, (hq + 2 * hkv) * d, device=dev, dtype=dt)
    kv = torch.randn(2, B, hkv, 64, d, device=dev, dtype=dt)
    pos = torch.tensor([[3], [10], [31], [63]], device=dev)  # each row its own position
    angles = pos[..., None].float() * torch.linspace(0, 1, d, device=dev)
    cos, sin = angles.cos().to(dt), angles.sin().to(dt)
    scores = torch.randn(B, 3072, device=dev)
    top_k = torch.tensor([1, 50, 0, 3000], device=dev)

    def frame(x, qkv, kv, scores):
        h = tiled_product(x, gate_up, norm, None, 1e-6, True)
        a = decode_attention(qkv, head_norm, head_norm, cos, sin, pos, kv, hq, 1e-6)
        return h, a, top_k_mask(scores, top_k)

    kv_eager, kv_compiled = kv.clone(), kv.clone()
    eager = frame(x, qkv, kv_eager, scores)
    got = torch.compile(frame, fullgraph=True)(x, qkv, kv_compiled, scores)
    names = ("tiled_product", "decode_attention", "top_k_mask")
    same = {name: torch.equal(e, g) for name, e, g in zip(names, eager, got, strict=True)}
    return {**same, "cache": torch.equal(kv_eager, kv_compiled)}


def best_configs(timings: list[dict]) -> dict:
    """Per product shape: the fastest configuration at each M, and the one configuration
    with the smallest mean slowdown (time / the fastest at that M) over every M."""
    tiled = [t for t in timings if t["kernel"] == "tiled_product" and t["us"] is not None]
    best = {}
    for key in sorted({(t["model"], t["product"]) for t in tiled}):
        rows = [t for t in tiled if (t["model"], t["product"]) == key]
        fastest = {}
        for t in rows:
            if t["M"] not in fastest or t["us"] < fastest[t["M"]]["us"]:
                fastest[t["M"]] = t
        labels = {json.dumps(t["config"], sort_keys=True) for t in rows}
        slowdown = {}
        for label in labels:
            mine = {
                t["M"]: t["us"] for t in rows if json.dumps(t["config"], sort_keys=True) == label
            }
            if set(mine) == set(fastest):
                slowdown[label] = statistics.mean(mine[m] / fastest[m]["us"] for m in fastest)
        overall = min(slowdown, key=slowdown.get) if slowdown else None
        best["/".join(key)] = {
            "fastest_per_M": {
                m: {"config": t["config"], "us": t["us"]} for m, t in fastest.items()
            },
            "one_config": None if overall is None else json.loads(overall),
            "mean_slowdown": None if overall is None else slowdown[overall],
        }
    return best


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="the JSON file to write")
    parser.add_argument("--rows", default=",".join(map(str, ROWS)), help="M values, e.g. 1,8,64")
    parser.add_argument("--repeat", type=int, default=50, help="timed calls per median")
    parser.add_argument("--quick", action="store_true", help="the default tiles only")
    parser.add_argument("--grid", action="store_true", help="every GRID configuration")
    parser.add_argument("--shapes", help="only these products, e.g. talker/qkv,predictor/o")
    parser.add_argument("--no-attention", action="store_true", help="no attention timings")
    parser.add_argument("--no-top-k", action="store_true", help="no top-k timings and checks")
    parser.add_argument("--top-k-only", action="store_true", help="the top-k part only")
    parser.add_argument("--compiled-only", action="store_true", help="only check_compiled")
    parser.add_argument("--dry-run", action="store_true", help="write the plan, run nothing")
    args = parser.parse_args(argv)
    try:
        args.rows = tuple(int(m) for m in args.rows.split(","))
    except ValueError:
        parser.error(f"--rows takes comma-separated integers, not {args.rows!r}")
    if not args.rows or min(args.rows) < 1 or args.repeat < 1:
        parser.error("--rows must be positive integers and --repeat at least 1")
    known = {f"{model}/{name}" for model in MODELS for name in products(model)}
    args.shapes = None if args.shapes is None else set(args.shapes.split(","))
    if args.shapes is not None and not args.shapes <= known:
        parser.error(f"--shapes: unknown {sorted(args.shapes - known)}; known {sorted(known)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(sys.argv[1:] if argv is None else argv)
    configs = chosen_configs(args.quick, args.grid)
    record = {"plan": plan(args.rows, configs, args.shapes), "dry_run": args.dry_run}
    if not args.dry_run:
        if not torch.cuda.is_available():
            raise SystemExit("needs CUDA (use --dry-run to check the arguments only)")
        import triton

        torch.manual_seed(0)
        start = time.perf_counter()
        record["device"] = torch.cuda.get_device_name()
        record["versions"] = {"torch": torch.__version__, "triton": triton.__version__}
        record["compiled_same"] = check_compiled()
        print("compiled against eager, bit-identical:", record["compiled_same"], flush=True)
        if args.compiled_only:
            with open(args.out, "w") as f:
                json.dump(record, f, indent=1, default=str)
            return
        products_us, products_same, attention_us, attention_same = [], [], [], []
        if not args.top_k_only:
            products_us, products_same = run_products(args.rows, args.repeat, configs, args.shapes)
            if not args.no_attention:
                attention_us, attention_same = run_attention(args.rows, args.repeat)
        if not args.no_top_k:
            record["top_k"], record["top_k_checks"] = run_top_k(args.repeat)
            record["top_k_exact"] = all(c["same"] for c in record["top_k_checks"])
            print("top-k exact:", record["top_k_exact"], flush=True)
        record["products"], record["attention"] = products_us, attention_us
        record["invariance"] = products_same + attention_same
        record["all_invariant"] = all(r["same"] for r in record["invariance"])
        record["best"] = best_configs(products_us)
        record["seconds"] = time.perf_counter() - start
        for shape, best in record["best"].items():
            print(shape, "one config:", best["one_config"], "mean slowdown", best["mean_slowdown"])
        print("all invariant:", record["all_invariant"])
    with open(args.out, "w") as f:
        json.dump(record, f, indent=1, default=str)


if __name__ == "__main__":
    main()
