"""Launch settings of the talker's decode attention at batch 1, 64 and 256 (CUDA).

The kernel's settings depend on the window and dtype only, never on B (batch invariance),
so one setting must serve every batch size: this times each candidate at each B, with
every row at its own position (~200 of a 512 window, as a 168-frame request is), bf16,
replayed from a CUDA graph.

usage: PYTHONPATH=$REF_PYTHONPATH python3 bench/attention_batch_sweep.py OUT.json
"""

from __future__ import annotations

import itertools
import json
import sys

import torch

from fastqwen.engine.triton import decode_attention

sys.path.insert(0, "bench")
from kernel_configs import time_graph  # noqa: E402


def attention(B: int, S: int = 512, **config) -> float:
    hq, hkv, d = 16, 8, 128
    dev, dt = "cuda", torch.bfloat16
    gen = torch.Generator(device=dev).manual_seed(0)
    qkv = torch.randn(B, 1, (hq + 2 * hkv) * d, device=dev, dtype=dt, generator=gen)
    norm = torch.ones(d, device=dev, dtype=dt)
    cos = torch.ones(B, 1, d, device=dev, dtype=dt)
    sin = torch.zeros(B, 1, d, device=dev, dtype=dt)
    pos = torch.randint(180, 230, (B, 1), device=dev, generator=gen)
    kv = torch.randn(2, B, hkv, S, d, device=dev, dtype=dt, generator=gen)
    kernel = decode_attention._decode_attention_kernel
    return time_graph(
        lambda: decode_attention.launch(
            kernel, qkv, norm, norm, cos, sin, pos, kv, hq, 1e-6, **config
        )  # fmt: skip
    )


def main() -> None:
    out = {"device": torch.cuda.get_device_name(), "us_per_launch": []}
    for block, warps, stages in itertools.product((32, 64, 128), (4, 8), (1, 2)):
        config = {"BLOCK_S": block, "num_warps": warps, "num_stages": stages}
        row = dict(config)
        for B in (1, 64, 256):
            try:
                row[f"B{B}"] = round(attention(B, **config), 2)
            except Exception as exc:  # noqa: BLE001 - a setting that does not fit
                row[f"B{B}"] = f"{type(exc).__name__}"
        out["us_per_launch"].append(row)
        print(json.dumps(row), flush=True)
    with open(sys.argv[1], "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
