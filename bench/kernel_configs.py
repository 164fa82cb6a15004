"""Time the Triton kernels of the CUDA path per launch configuration, on the device.

Each configuration is launched 50 times inside one CUDA graph (so launch overhead is not
counted): the single-token attention at the cache lengths the predictor (16) and the
talker (256..2048) use, bf16, the top-k mask at both vocabularies (2048, 3072), and the
layer products (`matvec_kernel`) at every decoder shape for one and two tokens, against
what Inductor makes of the same product. The products cycle through copies of the weight
that together exceed the L2 cache, so each launch reads its weight from memory, as the
layers of a frame do.

usage: python bench/kernel_configs.py OUT.json [attention top_k matvec]
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Callable

import torch

from fastqwen.engine.ops import FUSED
from fastqwen.engine.step import compile_fused
from fastqwen.engine.triton import decode_attention
from fastqwen.engine.triton import matvec as matvec_kernel
from fastqwen.engine.triton import top_k as top_k_kernel


def time_graph(launch: Callable[..., object], repeat: int = 50, inputs: int = 0) -> float:
    """Microseconds per launch of `launch`, replayed from a CUDA graph; with `inputs` > 0,
    launch i is `launch(i % inputs)`."""

    def run():
        for i in range(repeat):
            launch(i % inputs) if inputs else launch()

    run()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    graph.replay()
    start.record()
    for _ in range(10):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000 / (10 * repeat)


def attention(S: int, **config) -> float:
    hq, hkv, d = 16, 8, 128
    dev, dt = "cuda", torch.bfloat16
    qkv = torch.randn(1, 1, (hq + 2 * hkv) * d, device=dev, dtype=dt)
    norm = torch.ones(d, device=dev, dtype=dt)
    cos, sin = torch.ones(1, d, device=dev, dtype=dt), torch.zeros(1, d, device=dev, dtype=dt)
    pos = torch.tensor([S - 1], device=dev)
    kv = torch.randn(2, 1, hkv, S, d, device=dev, dtype=dt)
    kernel = decode_attention._decode_attention_kernel
    return time_graph(
        lambda: decode_attention.launch(
            kernel, qkv, norm, norm, cos, sin, pos, kv, hq, 1e-6, **config
        )
    )


def top_k(V: int, **config) -> float:
    scores = torch.randn(1, V, device="cuda")
    k = torch.tensor(50, device="cuda")
    return time_graph(
        lambda: top_k_kernel.launch(top_k_kernel._top_k_mask_kernel, scores, k, **config)
    )


# name: (N, K, norm, residual, swiglu); p_ is the code predictor's (and the 0.6B talker's)
# layer, t_ the 1.7B talker's
PRODUCTS = {
    "p_qkv": (4096, 1024, True, False, False),
    "p_o": (1024, 2048, False, True, False),
    "p_gate_up": (3072, 1024, True, False, True),
    "p_down": (1024, 3072, False, True, False),
    "t_qkv": (4096, 2048, True, False, False),
    "t_o": (2048, 2048, False, True, False),
    "t_gate_up": (6144, 2048, True, False, True),
    "t_down": (2048, 6144, False, True, False),
}


def product_inputs(case: str, T: int) -> tuple:
    """x, weight copies (> 256 MB together), norm, residual for a product case."""
    N, K, norm_on, res_on, swiglu = PRODUCTS[case]
    dev, dt = "cuda", torch.bfloat16
    rows = 2 * N if swiglu else N
    copies = max(2, -(-(256 << 20) // (rows * K * 2)))
    x = torch.randn(1, T, K, device=dev, dtype=dt)
    ws = [torch.randn(rows, K, device=dev, dtype=dt) * 0.02 for _ in range(copies)]
    norm = torch.ones(K, device=dev, dtype=dt) if norm_on else None
    res = torch.randn(1, T, N, device=dev, dtype=dt) if res_on else None
    return x, ws, norm, res, swiglu


def product_inductor(case: str, T: int) -> float:
    """The same product as Inductor compiles it without the matvec kernel (`ops.FUSED`)."""
    x, ws, norm, res, swiglu = product_inputs(case, T)
    try:
        fn = compile_fused(lambda x, w, n, r: FUSED.layer_product(x, w, n, r, 1e-6, swiglu))
        return time_graph(lambda i: fn(x, ws[i], norm, res), inputs=len(ws))
    finally:
        torch._dynamo.reset()


def product(case: str, T: int, **config) -> float:
    x, ws, norm, res, swiglu = product_inputs(case, T)
    kernel = matvec_kernel._matvec_kernel
    return time_graph(
        lambda i: matvec_kernel.launch(kernel, x, ws[i], norm, res, 1e-6, swiglu, **config),
        inputs=len(ws),
    )


def sweep(name: str, fn: Callable[..., float], grid: dict[str, tuple]) -> list[dict]:
    rows = []
    for values in itertools.product(*grid.values()):
        config = dict(zip(grid, values, strict=True))
        try:
            us = fn(**config)
        except Exception as exc:  # a config that does not compile is a result too
            us = None
            print(f"{name} {config}: {exc!r}"[:200])
        rows.append({"kernel": name, **config, "us": us})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    kernels = sys.argv[2:] or ["attention", "top_k", "matvec"]
    rows = []
    if "attention" in kernels:
        rows += sweep(
            "attention",
            attention,
            {"S": (16, 256, 2048), "BLOCK_S": (32, 64, 128), "num_warps": (4, 8)},
        )
        rows += sweep("attention", attention, {"S": (16, 256, 2048)})  # the defaults
    if "top_k" in kernels:
        rows += sweep(
            "top_k",
            top_k,
            {"V": (2048, 3072), "STEP_BITS": (1, 2), "num_warps": (2, 4, 8, 16)},
        )
        rows += sweep("top_k", top_k, {"V": (2048, 3072)})  # the defaults
    if "matvec" in kernels:
        shapes = [(c, 1) for c in PRODUCTS] + [(c, 2) for c in PRODUCTS if c.startswith("p_")]
        for case, T in shapes:
            rows += sweep("matvec_inductor", product_inductor, {"case": (case,), "T": (T,)})
            rows += sweep(
                "matvec",
                product,
                {
                    "case": (case,),
                    "T": (T,),
                    "BLOCK_N": (1, 2, 4, 8),
                    "BLOCK_K": (256, 512, 1024),
                    "num_warps": (2, 4, 8),
                },
            )
            rows += sweep("matvec", product, {"case": (case,), "T": (T,)})  # the defaults
    with open(sys.argv[1], "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
