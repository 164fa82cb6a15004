"""The compiled frame kernels (what the CUDA path captures) against the reference, on CPU.

Inductor's CPU backend runs the same traced functions as its GPU backend: the whole
decoder layer with its in-place cache write, the multiply-and-sum attention that only
runs under `torch.compile`, and the fused head-plus-warp of every sampled token. The
fp32 codes must stay identical to qwen-tts; the CUDA run of the same check is
bench/gpu_check.py.
"""

from __future__ import annotations

import pytest
import torch

from fastqwen import FastQwen3TTS
from fastqwen.config import SamplingParams
from fastqwen.engine.kernels import FrameKernels
from fastqwen.prompts.builder import VoiceRequest
from fastqwen.verify.parity import compare_codes
from fastqwen.verify.reference import run_reference

FRAMES = 40
REQUEST = VoiceRequest("custom_voice", "A short line to compile.", "english", speaker="aiden")


@pytest.fixture(scope="module")
def compiled(tiny_model):
    engine = FastQwen3TTS(tiny_model("custom_voice").tts)
    engine.engine.kernels = FrameKernels.compiled()
    yield engine
    torch._dynamo.reset()


@pytest.mark.parametrize("do_sample", [False, True], ids=["greedy", "sampled"])
def test_compiled_kernels_match_reference(compiled, do_sample):
    params = SamplingParams(
        max_new_tokens=FRAMES + 1, do_sample=do_sample, subtalker_dosample=do_sample
    )
    static = compiled.generate(REQUEST, params, seed=3)
    dynamic = run_reference(compiled.tts, REQUEST, params, seed=3)
    parity = compare_codes(static, dynamic)
    assert parity.identical, parity.describe()
    assert static.frames >= FRAMES - 1
    assert compiled.engine.kernels.layer is not FrameKernels().layer  # really the compiled path


def test_top_k_by_counting_equals_top_k_by_sort():
    """The compiled top-k mask (count larger scores) against the eager one (k-th of a sort),
    with ties and masked tokens, for every k."""
    from fastqwen.engine.sampling import in_top_k

    counted = torch.compile(in_top_k, fullgraph=True, dynamic=False)
    inf = float("inf")
    scores = torch.tensor([[3.0, 1.0, 3.0, -inf, 2.0, 2.0, 0.0, -inf]])
    masks = set()
    for k in range(1, scores.shape[1] + 1):
        eager = in_top_k(scores, torch.tensor(k))
        assert torch.equal(counted(scores, torch.tensor(k)), eager), k
        masks.add(tuple(eager[0].tolist()))
    assert len(masks) >= 5  # the test really moves the threshold through the ties
