"""The static engine against the qwen_tts reference: exact codes in fp32 on CPU.

Every test prints the first mismatching frame and codebook when it fails.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from fastqwen import FastQwen3TTS
from fastqwen.config import SamplingParams
from fastqwen.prompts.builder import VoiceRequest
from fastqwen.verify.parity import compare_codes, teacher_forced
from fastqwen.verify.reference import run_reference

FRAMES = 120  # >= 100 frames compared per mode
TEXT = "We met at the corner cafe after work and talked about weekend plans."

GREEDY = SamplingParams(max_new_tokens=FRAMES + 1, do_sample=False, subtalker_dosample=False)
SAMPLED = SamplingParams(max_new_tokens=FRAMES + 1)


@pytest.fixture(scope="module")
def custom(tiny_model):
    return FastQwen3TTS(tiny_model("custom_voice").tts)


@pytest.fixture(scope="module")
def design(tiny_model):
    return FastQwen3TTS(tiny_model("voice_design").tts)


@pytest.fixture(scope="module")
def base(tiny_model):
    return FastQwen3TTS(tiny_model("base").tts)


@pytest.fixture(scope="module")
def ref_wav(tmp_path_factory):
    """A 3 s, 24 kHz voiced-ish test signal (no real recording needed for parity)."""
    sr = 24000
    t = np.arange(3 * sr) / sr
    wav = 0.3 * np.sin(2 * np.pi * 140 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    path = tmp_path_factory.mktemp("ref") / "ref.wav"
    sf.write(path, wav.astype(np.float32), sr)
    return str(path)


def assert_same(engine, request, params, seed, min_frames=FRAMES):
    static = engine.generate(request, params, seed)
    dynamic = run_reference(engine.tts, request, params, seed)
    parity = compare_codes(static, dynamic)
    assert parity.identical, parity.describe()
    assert static.eos_reached == dynamic.eos_reached
    assert static.frames >= min_frames, f"only {static.frames} frames compared"
    return static, dynamic


@pytest.mark.parametrize("params", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
@pytest.mark.parametrize("non_streaming_mode", [True, False])
def test_custom_voice(custom, params, non_streaming_mode):
    request = VoiceRequest(
        "custom_voice", TEXT, "english", speaker="aiden", non_streaming_mode=non_streaming_mode
    )
    assert_same(custom, request, params, seed=1337)


@pytest.mark.parametrize("params", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_custom_voice_instruct(custom, params):
    request = VoiceRequest(
        "custom_voice", TEXT, "auto", speaker="serena", instruct="Speak slowly and warmly."
    )
    assert_same(custom, request, params, seed=7)


@pytest.mark.parametrize("params", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_voice_design(design, params):
    request = VoiceRequest("voice_design", TEXT, "english", instruct="A calm, deep male voice.")
    assert_same(design, request, params, seed=3)


@pytest.mark.parametrize("params", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
@pytest.mark.parametrize("x_vector_only", [False, True], ids=["icl", "xvector"])
def test_voice_clone(base, ref_wav, params, x_vector_only):
    items = base.create_voice_clone_prompt(ref_wav, "A short reference sentence.", x_vector_only)
    request = VoiceRequest("voice_clone", TEXT, "english", voice_clone_prompt=items)
    static, dynamic = assert_same(base, request, params, seed=11)
    assert np.allclose(static.audio, dynamic.audio, atol=1e-4)


def test_other_seed_differs(custom):
    request = VoiceRequest("custom_voice", TEXT, "english", speaker="aiden")
    a = custom.generate(request, SAMPLED, seed=1)
    b = custom.generate(request, SAMPLED, seed=2)
    again = custom.generate(request, SAMPLED, seed=1)
    assert torch.equal(a.codes, again.codes)
    assert not torch.equal(a.codes, b.codes)


@pytest.mark.parametrize(
    "change",
    [
        dict(temperature=0.5),
        dict(top_k=5),
        dict(top_p=0.8),
        dict(repetition_penalty=2.0),
        dict(subtalker_temperature=0.5),
        dict(subtalker_top_k=3),
        dict(subtalker_top_p=0.7),
        dict(do_sample=False),
        dict(subtalker_dosample=False),
    ],
    ids=lambda d: next(iter(d)),
)
def test_each_parameter_matches_reference(custom, change):
    params = SamplingParams(max_new_tokens=60, **change)
    request = VoiceRequest("custom_voice", TEXT, "english", speaker="ryan")
    static, _ = assert_same(custom, request, params, seed=5, min_frames=59)
    baseline = custom.generate(request, SamplingParams(max_new_tokens=60), seed=5)
    assert not torch.equal(static.codes, baseline.codes), f"{change} had no effect"


@pytest.mark.parametrize("mode", ["custom_voice", "voice_design"])
def test_teacher_forced_logits(custom, design, mode):
    engine = custom if mode == "custom_voice" else design
    request = VoiceRequest(
        mode,
        TEXT,
        "english",
        speaker="aiden" if mode == "custom_voice" else None,
        instruct=None if mode == "custom_voice" else "bright voice",
    )
    dynamic = run_reference(engine.tts, request, SAMPLED, seed=21)
    forced = teacher_forced(engine, engine.tts, request, dynamic.codes)
    summary = forced.summary()
    print(summary)
    assert summary["frames"] == dynamic.frames >= FRAMES
    assert forced.max_abs < 1e-4, summary
    assert summary["cb0_argmax_agree"] == 1.0 and summary["sub_argmax_agree"] == 1.0
