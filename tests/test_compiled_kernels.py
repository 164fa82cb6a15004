"""The compiled frame functions against the reference, on CPU.

`EngineConfig(compile=True, cuda_graph=False)` compiles on the CPU too (Inductor's C++
backend), with the fused op set: the whole decoder layer with its in-place cache write, the
multiply-and-sum products and attention, the counted top-k and the fused head-plus-warp of
every sampled token. The fp32 codes must stay identical to qwen-tts; the CUDA run of the
same check (with the Triton kernels) is bench/gpu_check.py.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from fastqwen import EngineConfig, FastQwen3TTS
from fastqwen.config import SamplingParams
from fastqwen.engine.model import LayerWeights
from fastqwen.engine.ops import FUSED
from fastqwen.engine.step import FrameFunctions
from fastqwen.prompts.builder import VoiceRequest
from fastqwen.verify.parity import compare_codes
from fastqwen.verify.reference import run_reference

FRAMES = 40
REQUEST = VoiceRequest("custom_voice", "A short line to compile.", "english", speaker="aiden")


@pytest.fixture(scope="module")
def compiled(tiny_model):
    engine = FastQwen3TTS(tiny_model("custom_voice").tts, EngineConfig(compile=True))
    yield engine
    torch._dynamo.reset()


@pytest.mark.parametrize("do_sample", [False, True], ids=["greedy", "sampled"])
def test_compiled_functions_match_reference(compiled, do_sample):
    params = SamplingParams(
        max_new_tokens=FRAMES + 1, do_sample=do_sample, subtalker_dosample=do_sample
    )
    graphs = counters["stats"]["unique_graphs"]
    static = compiled.generate(REQUEST, params, seed=3)
    dynamic = run_reference(compiled.tts, REQUEST, params, seed=3)
    parity = compare_codes(static, dynamic)
    assert parity.identical, parity.describe()
    assert static.frames >= FRAMES - 1
    if not do_sample:  # the first run compiles: really the compiled path
        assert counters["stats"]["unique_graphs"] > graphs


def test_decoder_layer_compiles_once_for_every_layer(compiled):
    """A layer's weights are a NamedTuple of tensors, so Dynamo guards their shapes, not
    their identity: one graph serves every layer (copies included), and a real change
    of shape is still caught."""
    m = compiled.runner.model.rows(1)
    layer = FrameFunctions.of(FUSED).compile().layer
    w = m.talker
    layers = list(w.layers) + [LayerWeights(*(t.clone() for t in lw)) for lw in w.layers]
    x = torch.randn(1, 1, w.layers[0].qkv.shape[1])
    at = m.talker_positions(torch.tensor([3]))
    layer(x, m.talker_cache.layer(0), at, layers[0], w.dims)  # compiles
    graphs = counters["stats"]["unique_graphs"]
    with torch._dynamo.config.patch(error_on_recompile=True):
        for i, lw in enumerate(layers):
            layer(x, m.talker_cache.layer(i % len(w.layers)), at, lw, w.dims)
        assert counters["stats"]["unique_graphs"] == graphs
        with pytest.raises(torch._dynamo.exc.RecompileError):  # the check can fail
            layer(torch.cat((x, x), dim=1), m.talker_cache.layer(0), at, layers[0], w.dims)


def test_top_k_by_counting_equals_top_k_by_sort():
    """The compiled top-k mask (count larger scores) against the eager one (k-th of a sort),
    with ties and masked tokens, for every k."""
    from fastqwen.engine.sampling import in_top_k, in_top_k_counted

    counted = torch.compile(in_top_k_counted, fullgraph=True, dynamic=False)
    inf = float("inf")
    scores = torch.tensor([[3.0, 1.0, 3.0, -inf, 2.0, 2.0, 0.0, -inf]])
    masks = set()
    for k in range(1, scores.shape[1] + 1):
        eager = in_top_k(scores, torch.tensor(k))
        assert torch.equal(counted(scores, torch.tensor(k)), eager), k
        masks.add(tuple(eager[0].tolist()))
    assert len(masks) >= 5  # the test really moves the threshold through the ties


@pytest.mark.slow
def test_dynamic_windows_compile_once_for_every_shorter_window(tiny_model, compiled):
    """`dynamic_windows`: a request that needs a longer talker cache window (512 positions
    after 256) compiles nothing new, and its codes are the reference's; without it (the
    default), the new window recompiles, so the check can fail. (Dynamo keeps compiled
    graphs per function, whichever engine compiled them: each part starts from a reset.)"""
    greedy = dict(do_sample=False, subtalker_dosample=False)

    def new_graphs(eng, tokens: int):
        before = counters["stats"]["unique_graphs"]
        result = eng.generate(REQUEST, SamplingParams(max_new_tokens=tokens, **greedy), seed=3)
        return result, counters["stats"]["unique_graphs"] - before

    torch._dynamo.reset()
    new_graphs(compiled, 20)
    _, static_longer = new_graphs(compiled, 300)  # the default: one compile per window
    assert static_longer > 0
    torch._dynamo.reset()
    tts = tiny_model("custom_voice").tts
    config = EngineConfig(compile=True, max_seq_len=1024, dynamic_windows=True)
    engine = FastQwen3TTS(tts, config)
    try:
        _, first = new_graphs(engine, 20)  # window 256: compiles
        long, longer = new_graphs(engine, 300)  # window 512
        assert first > 0 and longer == 0, (first, longer)
        assert engine.runner.views.keys() >= {(1, 256), (1, 512)}
        expected = run_reference(tts, REQUEST, SamplingParams(max_new_tokens=300, **greedy), 3)
        assert torch.equal(long.codes, expected.codes)
    finally:
        torch._dynamo.reset()
