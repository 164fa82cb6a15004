"""Time the single-token attention kernel per launch configuration, on the device.

Each configuration is launched 50 times inside one CUDA graph (so launch overhead is not
counted), at cache lengths the predictor (16) and the talker (256..2048) use, bf16.

usage: python bench/attention_configs.py OUT.json
"""

from __future__ import annotations

import itertools
import json
import sys

import torch

from fastqwen.engine.decode_attention import _decode_attention_kernel, launch


def time_config(S: int, **config) -> float:
    hq, hkv, d = 16, 8, 128
    dev, dt = "cuda", torch.bfloat16
    qkv = torch.randn(1, 1, (hq + 2 * hkv) * d, device=dev, dtype=dt)
    norm = torch.ones(d, device=dev, dtype=dt)
    cos, sin = torch.ones(1, d, device=dev, dtype=dt), torch.zeros(1, d, device=dev, dtype=dt)
    pos = torch.tensor([S - 1], device=dev)
    kv = torch.randn(2, 1, hkv, S, d, device=dev, dtype=dt)

    def run():
        for _ in range(50):
            launch(_decode_attention_kernel, qkv, norm, norm, cos, sin, pos, kv, hq, 1e-6, **config)

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
    return start.elapsed_time(end) * 1000 / 500  # us per launch


def main() -> None:
    rows = []
    for S, block, warps in itertools.product((16, 256, 512, 2048), (32, 64, 128), (4, 8)):
        try:
            us = time_config(S, BLOCK_S=block, num_warps=warps)
        except Exception as exc:  # a config that does not compile is a result too
            us = None
            print(f"S={S} BLOCK_S={block} warps={warps}: {exc!r}"[:200])
        rows.append({"S": S, "BLOCK_S": block, "num_warps": warps, "us": us})
        print(rows[-1], flush=True)
    with open(sys.argv[1], "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
