"""The Triton kernels of the CUDA path against the eager code they replace.

Run on the CPU through Triton's interpreter, in float32, each in a subprocess because the
interpreter is chosen when a kernel is defined. (The interpreter truncates when it
casts to bf16, so bf16 rounding is checked on the GPU: bench/gpu_check.py.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

PRELUDE = textwrap.dedent(
    """
    import triton.runtime.interpreter as itp

    _patch = itp._patch_lang_tensor

    def _patched(tensor, scope):  # numpy 2 refuses int() of the interpreter's 1-element arrays
        _patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    itp._patch_lang_tensor = _patched
    """
)


def interpreted(script: str) -> str:
    """stdout of `script` run with TRITON_INTERPRET=1 after the interpreter patch."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


ATTENTION = textwrap.dedent(
    """
    import torch
    from fastqwen.engine.layers import RopeTable, attention_inputs
    from fastqwen.engine.model import LayerDims
    from fastqwen.engine.ops import attend
    from fastqwen.engine.triton.decode_attention import _decode_attention_kernel, launch

    torch.manual_seed(0)
    HQ, HKV, D, S, eps = 16, 8, 128, 80, 1e-6
    q_norm, k_norm = 1 + 0.1 * torch.randn(D), 1 + 0.1 * torch.randn(D)
    rope = RopeTable(1.0 / 10000 ** (torch.arange(0, D, 2).float() / D), S, torch.float32)
    worst_out = worst_cache = 0.0
    for T, p, config in CASES:  # T new tokens at positions p .. p + T - 1
        qkv = torch.randn(1, T, (HQ + 2 * HKV) * D)
        pos = torch.arange(p, p + T)
        cos, sin = rope.at(pos)
        kv = torch.randn(2, 1, HKV, S, D)
        expected_kv = kv.clone()
        out = launch(
            _decode_attention_kernel, qkv, q_norm, k_norm, cos, sin, pos, kv, HQ, eps, **config
        )
        dims = LayerDims(HQ, HKV, D, eps)
        q, new_kv = attention_inputs(qkv, q_norm, k_norm, cos[None], sin[None], dims)
        expected_kv.index_copy_(3, pos, new_kv)
        mask = (torch.arange(S)[None, :] <= pos[:, None])[None, None].repeat(1, 1, HQ // HKV, 1)
        a = attend(q, expected_kv[0], expected_kv[1], mask)
        expected = a.reshape(1, HQ, T, D).transpose(1, 2).reshape(1, T, HQ * D)
        worst_out = max(worst_out, (out - expected).abs().max().item())
        worst_cache = max(worst_cache, (kv - expected_kv).abs().max().item())
    print(worst_out, worst_cache)
    """
)


def attention_worst(cases: list[tuple[int, int, dict]]) -> tuple[float, float]:
    """Largest output and cache differences of the kernel against the eager layer."""
    worst_out, worst_cache = map(float, interpreted(f"CASES = {cases!r}" + ATTENTION).split())
    return worst_out, worst_cache


def test_decode_attention_kernel_matches_eager_layer():
    cases = [(1, p, {}) for p in (0, 1, 31, 32, 33, 70, 79)]  # default: one 128-row block
    cases += [(1, p, {"BLOCK_S": 32}) for p in (0, 31, 32, 33, 70, 79)]  # several blocks
    worst_out, worst_cache = attention_worst(cases)
    assert worst_out < 1e-5, f"attention output differs by {worst_out}"
    assert worst_cache < 1e-5, f"cache row differs by {worst_cache}"


def test_decode_attention_kernel_two_rows_see_each_other():
    """The predictor's first pass: row 1 attends to the key row 0 wrote in the same launch."""
    cases = [(2, 0, {}), (2, 5, {}), (2, 31, {"BLOCK_S": 32}), (2, 32, {"BLOCK_S": 32})]
    worst_out, worst_cache = attention_worst(cases)
    assert worst_out < 1e-5, f"attention output differs by {worst_out}"
    assert worst_cache < 1e-5, f"cache row differs by {worst_cache}"


MATVEC = textwrap.dedent(
    """
    import torch
    import torch.nn.functional as F
    from fastqwen.engine.layers import rms_norm
    from fastqwen.engine.triton.matvec import _matvec_kernel, launch

    torch.manual_seed(0)
    worst, checked = 0.0, 0
    configs = ({"BLOCK_N": 8, "BLOCK_K": 64}, {"BLOCK_N": 1, "BLOCK_K": 128})  # ragged, one row
    for T in (1, 2):
        for N, K in ((100, 96), (64, 256)):
            for norm_on, swiglu, res_on in ((0, 0, 0), (1, 0, 0), (0, 0, 1), (1, 1, 0)):
                for config in configs:
                    x = torch.randn(1, T, K)
                    w = torch.randn(2 * N if swiglu else N, K) / K**0.5
                    norm = 1 + 0.1 * torch.randn(K) if norm_on else None
                    res = torch.randn(1, T, N) if res_on else None
                    y = launch(_matvec_kernel, x, w, norm, res, 1e-6, bool(swiglu), **config)
                    e = F.linear(rms_norm(x, norm, 1e-6) if norm_on else x, w)
                    if swiglu:
                        gate, up = e.chunk(2, dim=-1)
                        e = F.silu(gate) * up
                    e = e if res is None else res + e
                    assert y.shape == e.shape, (y.shape, e.shape)
                    worst = max(worst, (y - e).abs().max().item())
                    checked += 1
    print(checked, worst)
    """
)


def test_matvec_kernel_matches_linear_with_norm_swiglu_and_residual():
    checked, worst = interpreted(MATVEC).split()
    assert int(checked) == 32
    assert float(worst) < 1e-5, f"matvec differs by {worst}"


TOP_K = """
    import torch
    from fastqwen.engine.sampling import in_top_k
    from fastqwen.engine.triton import top_k as kernels

    torch.manual_seed(0)
    bisection = kernels.launch, kernels._top_k_mask_kernel
    pairwise = kernels.launch_pairwise, kernels._top_k_mask_pairwise_kernel
    checked = 0
    for v, (launch, kernel), config in (
        (2048, bisection, {}),
        (3072, bisection, {}),
        (100, bisection, {"BLOCK_V": 256, "num_warps": 4}),  # padded
        (3072, bisection, {"STEP_BITS": 2}),  # two bits a step
        (100, pairwise, {"BLOCK_I": 32, "BLOCK_J": 64}),  # the earlier form, ragged blocks
    ):
        scores = torch.randn(1, v)
        scores[0, ::7] = scores[0, 1::7]  # ties
        scores[0, 3::11] = float("-inf")  # suppressed tokens
        for k in (1, 2, 50, v // 2, v, 0, v + 5):  # 0 and > V keep all
            k = torch.tensor(k)
            got = launch(kernel, scores, k, **config)
            expected = in_top_k(scores, k)  # eagerly: the k-th value off a sort
            assert torch.equal(got, expected), (v, int(k), (got != expected).sum())
            checked += 1
    print(checked)
"""


def test_top_k_kernel_matches_sorted_threshold():
    assert interpreted(TOP_K).split() == ["35"]


TRITON_OPS = """
    import torch
    from fastqwen.engine.cache import StaticKVCache
    from fastqwen.engine.layers import Positions, RopeTable, decoder_layer, mlp_down
    from fastqwen.engine.model import LayerDims, LayerWeights
    from fastqwen.engine.ops import REFERENCE, TRITON

    torch.manual_seed(0)
    H, I, HQ, HKV, D, S = 64, 96, 4, 2, 16, 40
    dims = LayerDims(HQ, HKV, D, 1e-6)

    def r(*shape):
        return 0.1 * torch.randn(*shape)

    w = LayerWeights(
        1 + r(H), r((HQ + 2 * HKV) * D, H), 1 + r(D), 1 + r(D), r(H, HQ * D), 1 + r(H),
        r(2 * I, H), r(H, I),
    )
    rope = RopeTable(1.0 / 10000 ** (torch.arange(0, D, 2).float() / D), S, torch.float32)
    cache = StaticKVCache(1, HKV, D, S, dtype=torch.float32, device="cpu")
    filled = torch.randn_like(cache.kv)
    worst = 0.0
    for T, p in ((1, 7), (2, 0), (2, 20)):  # a decode step, the predictor's first passes
        at = Positions.at(torch.arange(p, p + T), rope, cache, dims.rep)
        x = torch.randn(1, T, H)
        out = []
        for ops in (REFERENCE, TRITON):
            cache.kv.copy_(filled)
            y, h = decoder_layer(x, cache.layer(0), at, w, dims, ops)
            out.append((y, h, mlp_down(y, h, w.down, ops), cache.kv.clone()))
        worst = max(worst, *((a - b).abs().max().item() for a, b in zip(*out)))
    scores = torch.randn(1, 3072)
    k = torch.tensor(50)
    print(worst, torch.equal(TRITON.top_k(scores, k), REFERENCE.top_k(scores, k)))
"""


def test_triton_op_set_matches_reference_ops():
    """`ops.TRITON` (what compiled CUDA frames use) against `ops.REFERENCE` through the public
    decoder layer, the down product and the top-k mask, every kernel interpreted."""
    worst, same_top_k = interpreted(TRITON_OPS).split()
    assert float(worst) < 1e-5, f"the Triton op set differs from the reference ops by {worst}"
    assert same_top_k == "True"
