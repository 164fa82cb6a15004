"""The prompt ops (`ops.PROMPT`): a whole prompt's prefill in few library kernels.

They must compute what the reference ops compute (up to rounding), be chosen only where
the engine does not promise the reference's rounding, and launch far fewer kernels.
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx

from fastqwen.engine.layers import Positions, decoder_layer, mlp_down
from fastqwen.engine.model import LayerDims, LayerWeights, StaticModel
from fastqwen.engine.ops import FUSED, PROMPT, REFERENCE, TRITON
from fastqwen.engine.step import (
    PROMPT_FUNCTIONS,
    REFERENCE_FUNCTIONS,
    FrameState,
    eager_prefill,
    prompt_functions,
)
from fastqwen.models.sources import load_model
from fastqwen.prompts.builder import VoiceRequest, build_talker_prompt

REQUEST = VoiceRequest(
    "custom_voice", "A prompt runs as one pass through the talker.", "english", speaker="ryan"
)


def _prefill(model, prompts, fns, around=None):
    """Prefill `prompts` into slots 0.. of a fresh 2-slot engine state; returns the hidden
    states the first frame starts from and the cache. `around`, a context manager factory,
    is entered for the prefill call alone (a profiler, say)."""
    m = StaticModel.from_qwen_tts(model, 256, batch=2)
    scratch = m.with_talker_cache(copy.deepcopy(m.talker_cache))
    state = FrameState(m, 256, batch=2)
    embeds = [p.to(m.device, m.dtype) for p in prompts]
    with around() if around is not None else contextlib.nullcontext():
        eager_prefill(m, state, embeds, list(range(len(prompts))), scratch, fns)
    return state.hidden.float(), m.talker_cache.kv.float()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_prompt_ops_prefill_what_the_reference_ops_prefill(tiny_model, dtype):
    """Two prompts of different lengths (so padding rows too), through both op sets: the
    hidden state each first frame starts from, and every key and value written, agree up to
    the dtype's rounding."""
    tts = tiny_model("custom_voice").tts
    model = load_model("random:tiny-custom_voice", device="cpu", dtype=str(dtype)[6:]).tts.model
    other = VoiceRequest("custom_voice", "Short.", "english", speaker="ryan")
    prompts = [build_talker_prompt(tts, r).inputs_embeds for r in (REQUEST, other)]
    assert prompts[0].shape[1] != prompts[1].shape[1]
    ref_hidden, ref_kv = _prefill(model, prompts, REFERENCE_FUNCTIONS)
    hidden, kv = _prefill(model, prompts, PROMPT_FUNCTIONS)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    scale = ref_hidden.abs().amax()
    assert (hidden - ref_hidden).abs().amax() <= tol * scale
    assert (kv - ref_kv).abs().amax() <= tol * ref_kv.abs().amax()
    assert ref_kv.abs().amax() > 0  # the cache was written at all
    cos = torch.nn.functional.cosine_similarity(hidden.flatten(1), ref_hidden.flatten(1))
    assert bool((cos > 0.999).all()), cos


def test_prompt_ops_are_chosen_only_off_the_reference_rounding():
    assert prompt_functions(REFERENCE, torch.bfloat16) is REFERENCE_FUNCTIONS
    assert prompt_functions(FUSED, torch.float32) is REFERENCE_FUNCTIONS
    assert prompt_functions(FUSED, torch.bfloat16) is PROMPT_FUNCTIONS
    assert prompt_functions(FUSED, torch.float16) is PROMPT_FUNCTIONS
    if TRITON is not None:
        assert prompt_functions(TRITON, torch.bfloat16) is PROMPT_FUNCTIONS


def test_the_runner_prefills_with_the_reference_ops_when_eager(tiny_engine):
    runner = tiny_engine("custom_voice").runner
    assert runner.ops is REFERENCE and runner.prompt_functions is REFERENCE_FUNCTIONS


def _bf16(*shape):
    return torch.empty(*shape, device="cuda", dtype=torch.bfloat16)


def prompt_layer_kernels(ops, T: int) -> list[str]:
    """The ATen kernels one 1.7B talker layer launches for a T-token prompt on a window of
    T, traced on fake CUDA tensors (no GPU); views, which launch nothing, left out."""
    dims, hidden, inter = LayerDims(16, 8, 128, 1e-6), 2048, 6144
    hq, hkv, d = dims.num_heads, dims.num_kv_heads, dims.head_dim
    with FakeTensorMode():
        w = LayerWeights(
            _bf16(hidden), _bf16((hq + 2 * hkv) * d, hidden), _bf16(d), _bf16(d),
            _bf16(hidden, hq * d), _bf16(hidden), _bf16(2 * inter, hidden), _bf16(hidden, inter),
        )  # fmt: skip
        mask = torch.ones(1, 1, dims.rep * T, T, dtype=torch.bool, device="cuda")
        at = Positions(
            torch.arange(T, device="cuda").view(1, T), _bf16(1, T, d), _bf16(1, T, d), mask
        )

        def layer(x, kv):
            y, h = decoder_layer(x, kv, at, w, dims, ops)
            return mlp_down(y, h, w.down, ops)

        graph = make_fx(layer)(_bf16(1, T, hidden), _bf16(2, 1, hkv, T, d)).graph
    views = {"view", "_unsafe_view", "transpose", "split", "split_with_sizes", "slice", "t",
             "select", "unsqueeze", "expand", "alias", "permute"}  # fmt: skip
    names = [
        getattr(n.target, "__name__", str(n.target)).split(".")[0]
        for n in graph.nodes
        if n.op == "call_function"
    ]
    return [n for n in names if n not in views and n != "getitem" and not n.startswith("sym_")]


def test_a_prompt_layer_launches_a_third_of_the_reference_kernels(monkeypatch):
    """In a graph replay each kernel costs microseconds however small it is: on an H200 the
    reference ops' 64-token prefill of the 1.7B talker took 5.8 ms, nearly all of it that.

    Without a GPU, `scaled_dot_product_attention` cannot pick its CUDA kernel and would be
    traced as its maths fallback; a stand-in (one `empty_like`) takes its place in the count.
    """
    reference = prompt_layer_kernels(REFERENCE, 192)

    def one_kernel_attention(q, k, v, **kwargs):
        return torch.empty_like(q)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", one_kernel_attention)
    prompt = prompt_layer_kernels(PROMPT, 192)
    assert len(prompt) * 2.5 <= len(reference), (len(prompt), len(reference), prompt)
    assert prompt.count("_fused_rms_norm") == 4  # input, q, k and post-attention norms
    assert prompt.count("addmm") == 2  # both residuals added by their products
    assert "bmm" not in prompt and "_softmax" not in prompt and "pow" not in prompt


def test_prompt_attention_refuses_a_window_longer_than_the_prompt():
    """It attends to the prompt's own keys only, which is right only when the window holds
    nothing else."""
    dims = LayerDims(2, 1, 4, 1e-6)
    w = LayerWeights(*(torch.ones(1) for _ in range(8)))._replace(
        q_norm=torch.ones(4), k_norm=torch.ones(4)
    )
    qkv = torch.randn(1, 3, (2 + 2) * 4)
    kv = torch.zeros(2, 1, 1, 5, 4)
    at = Positions(torch.arange(3).view(1, 3), torch.ones(1, 3, 4), torch.zeros(1, 3, 4), None)
    with pytest.raises(ValueError, match="window of 5"):
        PROMPT.attention(qkv, kv, at, w, dims)
