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

from fastqwen.api import FastQwen3TTS
from fastqwen.engine.kernels import FrameKernels
from fastqwen.params import SamplingParams
from fastqwen.parity import compare_codes
from fastqwen.prompts import VoiceRequest
from fastqwen.reference import run_reference

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
