"""Time the Triton kernels of the CUDA path per launch configuration, on the device.

Each configuration is launched 50 times inside one CUDA graph (so launch overhead is not
counted): the single-token attention at the cache lengths the predictor (16) and the
talker (256..2048) use, bf16, and the top-k mask at both vocabularies (2048, 3072).

usage: python bench/kernel_configs.py OUT.json
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Callable

import torch

from fastqwen.engine import decode_attention, top_k_kernel


def time_graph(launch: Callable[[], object], repeat: int = 50) -> float:
    """Microseconds per launch of `launch`, replayed from a CUDA graph."""

    def run():
        for _ in range(repeat):
            launch()

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
    rows = sweep(
        "attention",
        attention,
        {"S": (16, 256, 2048), "BLOCK_S": (32, 64, 128), "num_warps": (4, 8)},
    )
    rows += sweep("attention", attention, {"S": (16, 256, 2048)})  # the defaults
    rows += sweep(
        "top_k",
        top_k,
        {
            "V": (2048, 3072),
            "BLOCK_I": (2, 4, 8, 16),
            "BLOCK_J": (512, 1024, 2048),
            "num_warps": (2, 4, 8),
        },
    )
    rows += sweep("top_k", top_k, {"V": (2048, 3072)})  # the defaults
    with open(sys.argv[1], "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
