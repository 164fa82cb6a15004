"""The fused SnakeBeta + causal conv vocoder (`codec.snake`) against the reference modules.

The kernel runs under Triton's interpreter in a subprocess (as in tests/test_triton_kernels.py),
in float32, where the fused path must equal the reference up to float rounding; the
layout check runs here.
"""

from __future__ import annotations

import copy
import json
import textwrap

import pytest
import torch

from tests import test_codec
from tests.test_triton_kernels import interpreted

pytest.importorskip("triton")

_one_thread = test_codec._one_thread
codec = test_codec.codec


def summary(script: str) -> dict:
    """The JSON dict `script` prints on its last line, run under the interpreter."""
    return json.loads(interpreted(textwrap.dedent(script)).strip().splitlines()[-1])


SNAKE = """
    import json
    import torch
    from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import SnakeBeta
    from fastqwen.codec.snake import snake

    torch.manual_seed(0)
    torch.set_num_threads(1)
    C, T = 7, 1301  # odd, and T not a multiple of the block
    act = SnakeBeta(C)
    with torch.no_grad():
        act.alpha.uniform_(-0.5, 0.5)
        act.beta.uniform_(-0.5, 0.5)
    x = 2 * torch.randn(3, C, T)
    result = {"diff": 0.0, "margin": 0.0}
    with torch.no_grad():
        for pad in (0, 6, 18):
            out = snake(act, x, pad=pad)
            assert out.shape == (3, C, pad + T), out.shape
            result["diff"] = max(result["diff"], (out[..., pad:] - act(x)).abs().max().item())
            margin = out[..., :pad].abs().max().item() if pad else 0.0
            result["margin"] = max(result["margin"], margin)
        result["snake_term"] = (act(x) - x).abs().max().item()
        act.alpha.add_(0.25)  # edited weights: the cached constants must follow
        result["after_edit"] = (snake(act, x, pad=6)[..., 6:] - act(x)).abs().max().item()
    print(json.dumps(result))
"""


def test_snake_kernel_equals_snakebeta_with_zero_margin():
    result = summary(SNAKE)
    assert result["snake_term"] > 0.1, "SnakeBeta is near identity here: the check has no teeth"
    assert result["diff"] < 1e-6, f"kernel differs from SnakeBeta.forward by {result['diff']}"
    assert result["margin"] == 0, f"pad columns hold {result['margin']}"
    assert result["after_edit"] < 1e-6, f"stale constants after an edit: {result['after_edit']}"


WAVEFORM = """
    import json
    import torch
    from fastqwen.codec.batch import _latents, _waveform
    from fastqwen.codec.decoder import codec_decoder
    from fastqwen.codec.snake import fast_waveform
    from tests.test_codec import _codes, _tiny_codec

    torch.set_num_threads(1)
    decoder = codec_decoder(_tiny_codec())
    # biases the random checkpoint leaves at zero: fast_waveform moves every conv's bias
    # into the next kernel, which a zero bias would not check
    gen = torch.Generator().manual_seed(5)
    convs = (torch.nn.Conv1d, torch.nn.ConvTranspose1d)
    with torch.no_grad():
        for m in decoder.modules():
            if isinstance(m, convs) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.05)
    codes = torch.stack([_codes(3, seed).T for seed in range(3)])  # (3, 16, 3): 5760 samples
    with torch.inference_mode():
        latents = _latents(decoder, codes)
        expected = _waveform(decoder, latents)
        ours = fast_waveform(decoder, latents)
    diff = (ours - expected).abs()
    print(json.dumps({
        "shape": list(ours.shape), "expected_shape": list(expected.shape),
        "diff": diff.max().item(), "worst_sample": int(diff.flatten().argmax()),
        "rms": expected.pow(2).mean().sqrt().item(),
        "rows_differ": (expected[0] - expected[1]).abs().max().item(),
    }))
"""


def test_fast_waveform_equals_waveform():
    result = summary(WAVEFORM)
    assert result["shape"] == result["expected_shape"] == [3, 1, 3 * 1920]
    assert result["rms"] > 1e-2, "the tiny codec is silent: nothing would be compared"
    assert result["rows_differ"] > 1e-2, "rows are alike: a mixed-up row would pass"
    assert result["diff"] < 1e-5, (
        f"fast_waveform differs by {result['diff']} at flat sample {result['worst_sample']}"
    )


def _replace(decoder, path: str, module: torch.nn.Module) -> None:
    parent_path, _, last = path.rpartition(".")
    parent = decoder.get_submodule(parent_path)
    if last.isdigit():
        parent[int(last)] = module
    else:
        setattr(parent, last, module)


@pytest.mark.parametrize(
    ("path", "named"),
    [
        ("decoder.2.block.3.act1", "decoder.decoder[2].block[3].act1 is Identity"),
        ("decoder.1.block.0", "decoder.decoder[1].block[0] is Identity"),
        ("decoder.5", "decoder.decoder[5] is Identity"),
    ],
)
def test_an_unexpected_layout_names_the_module(codec, path, named):
    from fastqwen.codec.decoder import codec_decoder
    from fastqwen.codec.snake import vocoder_layout

    decoder = copy.deepcopy(codec_decoder(codec))
    vocoder_layout(decoder)  # the real layout passes
    _replace(decoder, path, torch.nn.Identity())
    with pytest.raises(ValueError, match=named.replace("[", r"\[").replace("]", r"\]")):
        vocoder_layout(decoder)


def test_a_strided_conv_is_refused(codec):
    from fastqwen.codec.decoder import codec_decoder
    from fastqwen.codec.snake import vocoder_layout

    decoder = copy.deepcopy(codec_decoder(codec))
    decoder.decoder[3].block[2].conv1.stride = 2
    with pytest.raises(ValueError, match=r"decoder.decoder\[3\].block\[2\].conv1 has stride 2"):
        vocoder_layout(decoder)
