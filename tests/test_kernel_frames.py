"""Frames with no compile: the `ops.KERNELS` set and the one-launch sampling kernel.

The kernels run on the CPU under Triton's interpreter, in float32, each script in a
subprocess (`test_triton_kernels.interpreted`). On CUDA the set is what graphed bfloat16
frames run when `EngineConfig.compile` is False; its speed and its codes against the
compiled frames are a device run (bench/profile_frame.py, tests/test_gpu.py).
"""

from __future__ import annotations

import json

import pytest
import torch

from fastqwen.config import EngineConfig
from fastqwen.engine.ops import KERNELS, REFERENCE, TRITON_INVARIANT
from fastqwen.engine.runner import Execution, default_ops
from tests.test_triton_kernels import interpreted

pytest.importorskip("triton")

SAMPLE = """
    import torch
    from fastqwen.engine.sampling import SamplingTensors, in_top_k, pick_token, warp_scores
    from fastqwen.engine.triton.sample import _sample_rows_kernel, launch

    torch.manual_seed(0)
    checked = 0
    for V in (2048, 3072, 100):  # the predictor's and the talker's vocabularies, a ragged one
        B = 6
        s = SamplingTensors("cpu", B)
        s.temperature.copy_(torch.tensor([[0.9], [0.5], [1.3], [0.9], [1.0], [0.7]]))
        s.top_k.copy_(torch.tensor([[50], [1], [0], [V], [V + 3], [7]]))
        s.do_sample.copy_(torch.tensor([True, True, True, False, True, True]))
        for trial in range(12):
            scores = 3 * torch.randn(B, V)
            tied = torch.arange(0, V - 1, 9)
            scores[:, tied + 1] = scores[:, tied]  # ties
            scores[:, 5::13] = float("-inf")  # suppressed tokens
            noise = torch.empty(B, V).exponential_(1)
            expected = pick_token(
                warp_scores(scores, s, False, in_top_k), True, noise,
                greedy_scores=scores, sampled=s.do_sample,
            )
            got = launch(_sample_rows_kernel, scores, s.temperature, s.top_k, noise, s.do_sample)
            assert torch.equal(got, expected), (V, trial, got.tolist(), expected.tolist())
            checked += B
    print(checked)
"""


def test_sample_kernel_picks_what_warp_and_pick_do():
    """Temperature, top-k (1, 7, 50, all, and 0 / above V keep all), softmax, the noise's
    sample and a greedy row's argmax, in one launch: the tokens of the op-by-op path."""
    assert interpreted(SAMPLE).split() == [str(3 * 12 * 6)]


ENGINE = """
    import json
    import torch
    from fastqwen.config import EngineConfig, SamplingParams
    from fastqwen.engine.model import StaticModel
    from fastqwen.engine.ops import KERNELS, REFERENCE
    from fastqwen.engine.runner import FrameRunner
    from fastqwen.engine.scheduler import Scheduler
    from fastqwen.models.sources import load_model
    from fastqwen.prompts.builder import VoiceRequest, build_talker_prompt

    torch.set_num_threads(1)
    tts = load_model("random:tiny-custom_voice", device="cpu", dtype="float32").tts
    texts = ["Hello there, friend.", "A second voice speaks.", "And a third one, longer still."]
    speakers = ["aiden", "ryan", "aiden"]
    prompts = [
        build_talker_prompt(tts, VoiceRequest("custom_voice", t, "english", speaker=v))
        for t, v in zip(texts, speakers)
    ]
    out = {}
    for do_sample in (False, True):
        params = SamplingParams(max_new_tokens=9, do_sample=do_sample, subtalker_dosample=do_sample)
        codes = {}
        for name, ops in (("reference", REFERENCE), ("kernels", KERNELS)):
            config = EngineConfig(max_seq_len=256, max_batch_size=3)
            model = StaticModel.from_qwen_tts(tts.model, 256, batch=3)
            scheduler = Scheduler(FrameRunner(model, config, ops=ops))
            try:
                handles = [scheduler.submit(p, params, 11 + i) for i, p in enumerate(prompts)]
                codes[name] = [torch.cat(list(h.blocks())).tolist() for h in handles]
            finally:
                scheduler.close()
        out["sampled" if do_sample else "greedy"] = codes
    print(json.dumps(out))
"""


def test_kernel_op_set_gives_the_reference_codes_in_a_batch():
    """Three requests batched (talker rows 3, predictor rows 6: the library's products; one
    row: `matvec`), greedy and sampled, every kernel interpreted: each request's codes equal
    the reference ops' run of the same batch."""
    out = json.loads(interpreted(ENGINE).strip().splitlines()[-1])
    for mode, codes in out.items():
        for i, (got, expected) in enumerate(zip(codes["kernels"], codes["reference"], strict=True)):
            assert len(got) == len(expected) == 8, (mode, i, len(got))
            assert got == expected, f"{mode} request {i}: kernels' codes differ from the reference"


CUDA = torch.device("cuda")


@pytest.mark.skipif(KERNELS is None, reason="needs Triton")
def test_uncompiled_graphs_run_the_kernels_in_bf16_and_the_reference_in_fp32():
    graphed = Execution.choose(EngineConfig(compile=False), CUDA)
    assert graphed.name == "graphed"
    assert default_ops(graphed, CUDA, dtype=torch.bfloat16) is KERNELS
    assert default_ops(graphed, CUDA, dtype=torch.float16) is KERNELS
    assert default_ops(graphed, CUDA, invariant=True, dtype=torch.bfloat16) is TRITON_INVARIANT
    assert default_ops(graphed, CUDA, dtype=torch.float32) is REFERENCE
    eager = Execution.choose(EngineConfig(compile=False, cuda_graph=False), CUDA)
    assert default_ops(eager, CUDA, dtype=torch.bfloat16) is REFERENCE
