"""Engine behaviour beyond plain parity: EOS, min_new_tokens, streaming, limits, bad input."""

from __future__ import annotations

import dataclasses
import inspect
import threading

import numpy as np
import pytest
import soundfile as sf
import torch

from fastqwen import EngineConfig, FastQwen3TTS, GenerationStopped
from fastqwen.codec.decoder import frames_to_samples
from fastqwen.config import SamplingParams
from fastqwen.models.sources import load_model
from fastqwen.prompts.builder import VoiceRequest
from fastqwen.verify.parity import compare_codes
from fastqwen.verify.reference import run_reference

TEXT = "On Tuesday morning I missed the bus, so I walked home through the park."


def eos_favouring(scale: float, config: EngineConfig | None = None) -> FastQwen3TTS:
    """A fresh tiny CustomVoice model whose codec head leans towards EOS (2150).

    The EOS row is set along the sign pattern of the final norm weight, so its logit
    grows with the hidden state's alignment: early stops happen for real, at
    different frames for different seeds.
    """
    tts = load_model("random:tiny-custom_voice", device="cpu", dtype="float32").tts
    head = tts.model.talker.codec_head.weight.data
    direction = torch.ones(head.shape[1]) * tts.model.talker.model.norm.weight.data.sign()
    head[2150] = direction * head[:2048].std() * scale
    return FastQwen3TTS(tts, config)


@pytest.fixture(scope="module")
def custom(tiny_model):
    return FastQwen3TTS(tiny_model("custom_voice").tts)


@pytest.fixture(scope="module")
def eos_engine():
    return eos_favouring(3.0)


@pytest.mark.parametrize("do_sample", [False, True], ids=["greedy", "sampled"])
@pytest.mark.parametrize("seed", [2, 3])
def test_early_eos_matches_reference(eos_engine, do_sample, seed):
    request = VoiceRequest("custom_voice", TEXT, "english", speaker="vivian")
    params = SamplingParams(max_new_tokens=80, do_sample=do_sample)
    static = eos_engine.generate(request, params, seed)
    dynamic = run_reference(eos_engine.tts, request, params, seed)
    parity = compare_codes(static, dynamic)
    assert parity.identical, parity.describe()
    assert static.eos_reached and dynamic.eos_reached
    assert 2 <= static.frames < 79
    assert len(static.audio) == frames_to_samples(static.frames)


def test_min_new_tokens_holds_back_eos():
    engine = eos_favouring(40.0)  # greedy stops after a handful of frames
    request = VoiceRequest("custom_voice", TEXT, "english", speaker="aiden")
    frames = {}
    for min_new_tokens in (0, 2, 9, 15):
        params = SamplingParams(max_new_tokens=40, min_new_tokens=min_new_tokens, do_sample=False)
        static = engine.generate(request, params, 0)
        dynamic = run_reference(engine.tts, request, params, 0)
        assert torch.equal(static.codes, dynamic.codes), compare_codes(static, dynamic).describe()
        assert static.eos_reached and dynamic.eos_reached
        assert static.frames >= min_new_tokens
        frames[min_new_tokens] = static.frames
    natural = frames[0]
    assert natural < 9, f"fixture should stop early, stopped after {natural} frames"
    assert frames[9] >= 9 > natural and frames[15] >= 15  # the setting really held EOS back


def test_max_new_tokens_gives_n_minus_one_frames(custom):
    request = VoiceRequest("custom_voice", TEXT, "english", speaker="aiden")
    result = custom.generate(request, SamplingParams(max_new_tokens=9), 1)
    assert result.frames == 8 and not result.eos_reached


@pytest.mark.parametrize("first,chunk", [(2, 12), (1, 5), (4, 7)])
def test_streaming_equals_non_streaming(custom, first, chunk):
    request = VoiceRequest("custom_voice", TEXT, "english", speaker="serena")
    params = SamplingParams(max_new_tokens=41)
    whole = custom.generate(request, params, seed=9)
    chunks = list(
        custom.stream(request, params, seed=9, first_chunk_frames=first, chunk_frames=chunk)
    )
    assert len(chunks[0].audio) == frames_to_samples(first)
    assert all(len(c.audio) == frames_to_samples(chunk) for c in chunks[1:-1])
    streamed = np.concatenate([c.audio for c in chunks])
    assert streamed.shape == whole.audio.shape
    result = custom.last_results[0]  # the stream, summed up
    assert torch.equal(result.codes, whole.codes) and result.eos_reached == whole.eos_reached
    assert result.time_to_first_audio_s == chunks[0].elapsed_s > result.prefill_s > 0
    diff = float(np.abs(streamed - whole.audio).max())
    assert diff < 1e-4, f"streamed audio differs by {diff}"


def test_streaming_voice_clone_icl(tiny_model, tmp_path):
    engine = FastQwen3TTS(tiny_model("base").tts)
    sr = 24000
    wav = 0.2 * np.sin(2 * np.pi * 180 * np.arange(2 * sr) / sr).astype(np.float32)
    sf.write(tmp_path / "ref.wav", wav, sr)
    items = engine.create_voice_clone_prompt(str(tmp_path / "ref.wav"), "Reference words here.")
    request = VoiceRequest("voice_clone", TEXT, "english", voice_clone_prompt=items)
    params = SamplingParams(max_new_tokens=25)
    whole = engine.generate(request, params, seed=4)
    streamed = np.concatenate([c.audio for c in engine.stream(request, params, seed=4)])
    # the reference's ICL cut int(ref / total * n) may fall one sample before the frame boundary
    assert abs(len(streamed) - len(whole.audio)) <= 1
    n = min(len(streamed), len(whole.audio))
    assert np.abs(streamed[-n + 1 :] - whole.audio[-n + 1 :]).max() < 1e-4


def test_cache_limit_names_the_setting(tiny_model):
    engine = FastQwen3TTS(tiny_model("custom_voice").tts, EngineConfig(max_seq_len=64))
    request = VoiceRequest("custom_voice", TEXT, "english", speaker="aiden")
    with pytest.raises(ValueError, match="max_seq_len is 64.*lower max_new_tokens"):
        engine.generate(request, SamplingParams(max_new_tokens=100), 0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(text="", speaker="aiden"), "text must be a non-empty string"),
        (dict(text="   ", speaker="aiden"), "text must be a non-empty string"),
        (dict(text="hi", speaker="bob"), "unknown speaker 'bob'; choose one of: aiden, dylan"),
        (
            dict(text="hi", speaker="aiden", language="klingon"),
            "unknown language 'klingon'; choose one of: auto",
        ),
    ],
)
def test_bad_custom_voice_input(custom, kwargs, match):
    with pytest.raises(ValueError, match=match):
        custom.generate_custom_voice(**kwargs, max_new_tokens=5)


def test_wrong_model_kind(custom):
    with pytest.raises(
        ValueError,
        match="voice_design needs a 'voice_design' model, but this model is 'custom_voice'",
    ):
        custom.generate_voice_design("hi", instruct="calm", max_new_tokens=5)
    with pytest.raises(ValueError, match="needs a 'base' model"):
        custom.generate_voice_clone("hi", ref_audio="x.wav", ref_text="x")


def test_voice_clone_input_errors(tiny_model, tmp_path):
    engine = FastQwen3TTS(tiny_model("base").tts)
    with pytest.raises(ValueError, match="ref_text is required"):
        engine.generate_voice_clone("hi", ref_audio=str(tmp_path / "x.wav"))
    with pytest.raises(FileNotFoundError, match="x.wav"):
        engine.generate_voice_clone("hi", ref_audio=str(tmp_path / "x.wav"), ref_text="words")
    (tmp_path / "bad.wav").write_bytes(b"not audio at all")
    with pytest.raises(ValueError, match="bad.wav"):
        engine.generate_voice_clone("hi", ref_audio=str(tmp_path / "bad.wav"), ref_text="words")
    sf.write(tmp_path / "short.wav", np.zeros(2400, dtype=np.float32), 24000)
    with pytest.raises(ValueError, match="short"):
        engine.generate_voice_clone("hi", ref_audio=str(tmp_path / "short.wav"), ref_text="words")


def test_stereo_and_other_rates_are_accepted(tiny_model, tmp_path):
    engine = FastQwen3TTS(tiny_model("base").tts)
    sr = 44100
    t = np.arange(int(1.5 * sr)) / sr
    stereo = np.stack([np.sin(2 * np.pi * 200 * t), np.sin(2 * np.pi * 300 * t)], axis=1) * 0.2
    sf.write(tmp_path / "stereo.wav", stereo.astype(np.float32), sr)
    wavs, out_sr = engine.generate_voice_clone(
        "hi",
        ref_audio=str(tmp_path / "stereo.wav"),
        x_vector_only_mode=True,
        max_new_tokens=4,
        seed=0,
    )
    assert out_sr == 24000 and wavs[0].ndim == 1 and len(wavs[0]) == frames_to_samples(3)


def test_unknown_generation_parameter(custom):
    with pytest.raises(ValueError, match="unknown generation parameter.*top_q"):
        custom.generate_custom_voice("hi", speaker="aiden", top_q=0.5)


def test_stream_methods_mirror_generate(custom, tiny_model):
    whole, sr = custom.generate_custom_voice(
        TEXT, speaker="ryan", language="english", seed=3, max_new_tokens=13
    )
    chunks = list(
        custom.stream_custom_voice(
            TEXT,
            speaker="ryan",
            language="english",
            seed=3,
            max_new_tokens=13,
            first_chunk_frames=3,
            chunk_frames=4,
        )
    )
    assert [len(c.audio) for c in chunks] == [frames_to_samples(n) for n in (3, 4, 4, 1)]
    assert chunks[0].sample_rate == sr
    assert np.abs(np.concatenate([c.audio for c in chunks]) - whole[0]).max() < 1e-4
    design = FastQwen3TTS(tiny_model("voice_design").tts)
    streamed = list(design.stream_voice_design(TEXT, instruct="warm", seed=1, max_new_tokens=5))
    assert sum(len(c.audio) for c in streamed) == frames_to_samples(4)


@pytest.mark.parametrize("mode", ["custom_voice", "voice_design", "voice_clone"])
def test_methods_take_the_reference_arguments(mode):
    """generate_<mode> starts with qwen_tts' parameters, in order (so positional calls port),
    then seed and the generation kwargs; stream_<mode> adds the chunk sizes."""
    from qwen_tts import Qwen3TTSModel

    reference = [
        p for p in inspect.signature(getattr(Qwen3TTSModel, f"generate_{mode}")).parameters
    ]
    assert reference[-1] == "kwargs"
    ours = list(inspect.signature(getattr(FastQwen3TTS, f"generate_{mode}")).parameters)
    assert ours == reference[:-1] + ["seed", "gen"]
    streamed = list(inspect.signature(getattr(FastQwen3TTS, f"stream_{mode}")).parameters)
    assert streamed == reference[:-1] + ["seed", "first_chunk_frames", "chunk_frames", "gen"]
    signature = inspect.signature(getattr(FastQwen3TTS, f"generate_{mode}"))
    required = {
        name: "x"
        for name, p in list(signature.parameters.items())[2:]
        if p.default is inspect.Parameter.empty and p.kind is not p.VAR_KEYWORD
    }
    gen = {f.name: getattr(SamplingParams(), f.name) for f in dataclasses.fields(SamplingParams)}
    bound = signature.bind(None, "hi", seed=1, **required, **gen)  # every generation parameter
    assert bound.arguments["gen"] == gen
    assert (
        f"qwen_tts.Qwen3TTSModel.generate_{mode}" in getattr(FastQwen3TTS, f"stream_{mode}").__doc__
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(text=[]), r"text must be a string or a non-empty list of strings, got \[\]"),
        (dict(text=["hi", 3]), "non-empty list of strings"),
        (dict(text="hi", seed=2**70), r"seed must be None or an integer from .* got 1180591"),
        (dict(text="hi", seed=1.5), "seed must be None or an integer"),
    ],
)
def test_bad_text_list_or_seed_is_a_clear_error(custom, kwargs, match):
    # Issue 15: generate_custom_voice([]) raised IndexError; seed=2**70 torch's "Overflow".
    with pytest.raises(ValueError, match=match):
        custom.generate_custom_voice(**kwargs, speaker="aiden", max_new_tokens=3)
    if "seed" in kwargs:
        with pytest.raises(ValueError, match="seed must be"):
            custom.generate(
                VoiceRequest("custom_voice", "hi", "auto", speaker="aiden"),
                SamplingParams(max_new_tokens=3),
                kwargs["seed"],
            )


def test_numpy_integer_seeds_still_work(custom):
    a, _ = custom.generate_custom_voice("hi", speaker="aiden", max_new_tokens=3, seed=7)
    b, _ = custom.generate_custom_voice("hi", speaker="aiden", max_new_tokens=3, seed=np.int64(7))
    assert np.array_equal(a[0], b[0])


# ------------------------------------------------------------------ stop requests (issue 18)


def counting_steps(engine, monkeypatch, stop, stop_after: int) -> list[int]:
    """Make the engine's frame step count frames and set `stop` after `stop_after` of them,
    as a Stop button pressed from another thread during that frame would."""
    frames = [0]
    real = engine.runner.step

    def step(m, mode):
        inner = real(m, mode)

        def run() -> None:
            inner()
            frames[0] += 1
            if frames[0] == stop_after:
                stop.set()

        return run

    monkeypatch.setattr(engine.runner, "step", step)
    return frames


@pytest.mark.parametrize("stop_after", [1, 3])
def test_a_stop_request_ends_generate_within_two_frames(custom, monkeypatch, stop_after):
    stop = threading.Event()
    frames = counting_steps(custom, monkeypatch, stop, stop_after)
    request = VoiceRequest("custom_voice", TEXT, "english", speaker="aiden")
    with pytest.raises(GenerationStopped) as info:
        custom.generate(request, SamplingParams(max_new_tokens=60), 1, stop=stop)
    assert stop_after <= frames[0] <= stop_after + 2, frames
    assert info.value.frames == frames[0]
    assert "stopped on request" in str(info.value)


def test_a_stop_request_ends_a_stream(custom):
    stop = threading.Event()
    request = VoiceRequest("custom_voice", TEXT, "english", speaker="aiden")
    chunks = custom.stream(request, SamplingParams(max_new_tokens=60), 1, stop=stop)
    next(chunks)  # the first chunk: 2 frames
    stop.set()
    with pytest.raises(GenerationStopped) as info:
        list(chunks)
    # The scheduler runs ahead of the reader; it sees the event at its next block.
    assert 2 <= info.value.frames < 59


def test_without_a_stop_request_nothing_changes(custom):
    request = VoiceRequest("custom_voice", TEXT, "english", speaker="aiden")
    params = SamplingParams(max_new_tokens=9)
    plain = custom.generate(request, params, 5)
    unset = custom.generate(request, params, 5, stop=threading.Event())
    assert torch.equal(plain.codes, unset.codes)


def test_a_stop_request_ends_the_reference_run(custom):
    stop = threading.Event()
    request = VoiceRequest("custom_voice", TEXT, "english", speaker="aiden")
    timer = threading.Timer(0.5, stop.set)
    timer.start()
    try:
        with pytest.raises(GenerationStopped) as info:
            run_reference(custom.tts, request, SamplingParams(max_new_tokens=2000), 1, stop=stop)
    finally:
        timer.cancel()
    assert info.value.frames < 1999
