"""The fused single-token attention kernel (CUDA path) against the eager layer code.

Run on the CPU through Triton's interpreter, in float32, in a subprocess because the
interpreter is chosen when the kernel is defined. (The interpreter truncates when it
casts to bf16, so bf16 rounding is checked on the GPU: bench/gpu_check.py.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

SCRIPT = textwrap.dedent(
    """
    import triton.runtime.interpreter as itp

    _patch = itp._patch_lang_tensor

    def _patched(tensor, scope):  # numpy 2 refuses int() of the interpreter's 1-element arrays
        _patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    itp._patch_lang_tensor = _patched

    import torch
    from fastqwen.engine.decode_attention import _decode_attention_kernel, launch
    from fastqwen.engine.layers import RopeTable, attend, attention_inputs

    torch.manual_seed(0)
    HQ, HKV, D, S, eps = 16, 8, 128, 80, 1e-6
    qkv = torch.randn(1, 1, (HQ + 2 * HKV) * D)
    q_norm, k_norm = 1 + 0.1 * torch.randn(D), 1 + 0.1 * torch.randn(D)
    rope = RopeTable(1.0 / 10000 ** (torch.arange(0, D, 2).float() / D), S, torch.float32)
    worst_out = worst_cache = 0.0
    for p in (0, 1, 31, 32, 33, 70, S - 1):
        pos = torch.tensor([p])
        cos, sin = rope.at(pos)
        kv = torch.randn(2, 1, HKV, S, D)
        expected_kv = kv.clone()
        out = launch(_decode_attention_kernel, qkv, q_norm, k_norm, cos, sin, pos, kv, HQ, eps)
        q, new_kv = attention_inputs(qkv, q_norm, k_norm, cos, sin, HQ, HKV, D, eps)
        expected_kv.index_copy_(3, pos, new_kv)
        mask = (torch.arange(S)[None, :] <= pos[:, None])[None, None].repeat(1, 1, HQ // HKV, 1)
        a = attend(q, expected_kv[0], expected_kv[1], mask)
        expected = a.reshape(1, HQ, 1, D).transpose(1, 2).reshape(1, 1, HQ * D)
        worst_out = max(worst_out, (out - expected).abs().max().item())
        worst_cache = max(worst_cache, (kv - expected_kv).abs().max().item())
    print(worst_out, worst_cache)
    """
)


def test_decode_attention_kernel_matches_eager_layer():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    worst_out, worst_cache = map(float, done.stdout.split())
    assert worst_out < 1e-5, f"attention output differs by {worst_out}"
    assert worst_cache < 1e-5, f"cache row differs by {worst_cache}"
