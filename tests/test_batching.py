"""Continuous batching on the CPU (tiny models, float32): many requests in one frame loop,
each giving exactly its solo codes and the reference's codes with its seed."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import soundfile as sf
import torch

from fastqwen import EngineConfig, FastQwen3TTS, GenerationStopped
from fastqwen.config import SamplingParams, parse_engine_options
from fastqwen.prompts.builder import VoiceRequest
from fastqwen.verify.reference import run_reference
from tests.test_engine_behaviour import eos_favouring

TIMEOUT_S = 300.0


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.001)


def custom(speaker: str, text: str, **kw) -> VoiceRequest:
    return VoiceRequest("custom_voice", text, kw.pop("language", "english"), speaker=speaker, **kw)


# (request, params, seed): different speakers, languages, instructs, sampling settings and
# lengths; on the EOS-favouring model some stop early, at different frames.
MIXED = [
    (custom("aiden", "The train was late again."),
     SamplingParams(max_new_tokens=40, min_new_tokens=22), 1),
    (custom("vivian", "Could you pass the salt?", language="chinese"),
     SamplingParams(max_new_tokens=30, do_sample=False, subtalker_dosample=False), 2),
    (custom("ryan", "We walked along the river.", instruct="Speak slowly and softly."),
     SamplingParams(max_new_tokens=50, temperature=0.7, top_k=20, top_p=0.8, repetition_penalty=1.2,
                    subtalker_temperature=0.6, subtalker_top_k=10, subtalker_top_p=0.9), 3),
    (custom("serena", "It rained all night.", non_streaming_mode=False),
     SamplingParams(max_new_tokens=25, min_new_tokens=5, subtalker_dosample=False), 4),
]  # fmt: skip
LATE = (custom("eric", "A late arrival joins the batch."), SamplingParams(max_new_tokens=30), 5)
CANCELLED = (
    custom("aiden", "This one is cancelled half way."),
    SamplingParams(max_new_tokens=60, min_new_tokens=60),
    6,
)


@pytest.fixture(scope="module")
def eos_batch_engine() -> FastQwen3TTS:
    # batch_invariant: the codec decodes each request's chunks alone, so even the audio
    # (not only the codes) must equal the solo run's bit for bit. Blocks of 7 frames, as
    # on CUDA (8): the requests' limits fall inside blocks, and a slot runs on past its
    # limit or EOS to the block's end.
    config = EngineConfig(max_batch_size=8, max_prefill_batch=2, batch_invariant=True, sync_every=7)
    engine = eos_favouring(3.0, config)
    yield engine
    engine.close()


def test_a_mixed_batch_gives_each_request_its_solo_and_reference_codes(eos_batch_engine):
    engine = eos_batch_engine
    everyone = MIXED + [CANCELLED]
    *handles, doomed = engine.submit_many(
        [r for r, _, _ in everyone],
        [p for _, p, _ in everyone],
        [s for _, _, s in everyone],
        streaming=False,
    )
    first = handles[0].job
    wait_for(lambda: first.done_frames >= 10, "the first request's 10th frame")
    late = engine.submit(*LATE[:2], LATE[2], streaming=False)
    wait_for(lambda: doomed.job.done_frames >= 5, "the request to cancel to run a while")
    doomed.cancel()
    with pytest.raises(GenerationStopped):
        doomed.result(timeout=TIMEOUT_S)
    batched = [h.result(timeout=TIMEOUT_S) for h in handles] + [late.result(timeout=TIMEOUT_S)]

    assert late.job.joined_step - first.joined_step >= 10, "the late request joined early"
    assert engine.scheduler.peak_active >= 5, "the requests never ran together"
    wait_for(lambda: engine.scheduler.active == 0, "every slot to be freed")
    limits = [p.max_new_tokens - 1 for _, p, _ in MIXED + [LATE]]
    assert any(r.eos_reached and r.frames < n for r, n in zip(batched, limits, strict=True))

    for result, (request, params, seed) in zip(batched, MIXED + [LATE], strict=True):
        solo = engine.generate(request, params, seed)
        reference = run_reference(engine.tts, request, params, seed)
        name = request.speaker
        assert torch.equal(result.codes, solo.codes), f"{name}: batched differs from solo"
        assert torch.equal(result.codes, reference.codes), f"{name}: differs from qwen-tts"
        assert result.eos_reached == reference.eos_reached, name
        assert np.array_equal(result.audio, solo.audio), f"{name}: audio differs"


def test_bad_requests_fail_alone(eos_batch_engine):
    engine = eos_batch_engine
    request, params, seed = MIXED[0]
    running = engine.submit(request, params, seed, streaming=False)
    with pytest.raises(ValueError, match="unknown speaker 'nobody'"):
        engine.submit(custom("nobody", "Hello there."), params, 1)
    with pytest.raises(ValueError, match="text must be a non-empty string"):
        engine.submit(custom("aiden", "   "), params, 1)
    too_long = SamplingParams(max_new_tokens=engine.config.max_seq_len + 10)
    with pytest.raises(ValueError, match="max_seq_len is"):
        engine.submit(custom("aiden", "Hello there."), too_long, 1)
    assert torch.equal(
        running.result(timeout=TIMEOUT_S).codes, engine.generate(request, params, seed).codes
    )


def test_a_batched_stream_concatenates_to_its_whole_audio(eos_batch_engine):
    engine = eos_batch_engine
    request, params, seed = MIXED[2]
    others = [engine.submit(r, p, s, streaming=False) for r, p, s in MIXED[:2]]
    handle = engine.submit(request, params, seed, first_chunk_frames=2, chunk_frames=3)
    chunks = [c.audio for c in handle]
    for other in others:
        other.result(timeout=TIMEOUT_S)
    whole = engine.generate(request, params, seed)
    streamed = np.concatenate(chunks)
    assert torch.equal(handle.result().codes, whole.codes)
    assert streamed.shape == whole.audio.shape
    assert float(np.abs(streamed - whole.audio).max()) < 1e-4


def test_list_calls_run_as_one_batch(tiny_engine):
    engine = tiny_engine("custom_voice")
    texts = ["First of three.", "Second one, longer than the first.", "Third."]
    speakers = ["aiden", "serena", "ryan"]
    before = engine.scheduler.peak_active
    engine.scheduler.peak_active = 0
    try:
        wavs, _ = engine.generate_custom_voice(
            texts, speaker=speakers, language="english", seed=3, max_new_tokens=12
        )
        assert engine.scheduler.peak_active == 3, "the list did not run as one batch"
    finally:
        engine.scheduler.peak_active = max(before, engine.scheduler.peak_active)
    batched = engine.last_results
    for text, speaker, wav, result in zip(texts, speakers, wavs, batched, strict=True):
        alone, _ = engine.generate_custom_voice(
            text, speaker=speaker, language="english", seed=3, max_new_tokens=12
        )
        assert torch.equal(result.codes, engine.last_results[0].codes), speaker
        # decoded in one codec batch: the same audio up to the codec's float rounding
        assert wav.shape == alone[0].shape and np.abs(wav).max() > 1e-3, speaker
        np.testing.assert_allclose(wav, alone[0], atol=5e-5, rtol=0, err_msg=speaker)
    with pytest.raises(ValueError, match="batch size mismatch: 3 texts but 2 values of speaker"):
        engine.generate_custom_voice(texts, speaker=speakers[:2], max_new_tokens=4)


def test_voice_design_descriptions_in_one_batch(tiny_engine):
    engine = tiny_engine("voice_design")
    instructs = ["A calm low voice.", "A bright excited child.", "An old storyteller."]
    params = SamplingParams(max_new_tokens=14)
    requests = [
        VoiceRequest("voice_design", "Once upon a time.", "english", instruct=i) for i in instructs
    ]
    handles = [engine.submit(r, params, 7 + i, streaming=False) for i, r in enumerate(requests)]
    for i, (request, handle) in enumerate(zip(requests, handles, strict=True)):
        reference = run_reference(engine.tts, request, params, 7 + i)
        assert torch.equal(handle.result(timeout=TIMEOUT_S).codes, reference.codes), (
            request.instruct
        )


def test_voice_clone_icl_and_x_vector_in_one_batch(tiny_engine, tmp_path):
    engine = tiny_engine("base")
    sr = 24000
    t = np.arange(2 * sr) / sr
    refs = []
    for i, hz in enumerate((150, 220)):
        path = tmp_path / f"ref{i}.wav"
        sf.write(path, (0.2 * np.sin(2 * np.pi * hz * t)).astype(np.float32), sr)
        refs.append(str(path))
    icl = engine.create_voice_clone_prompt(refs[0], "The first reference speaking.")
    xvec = engine.create_voice_clone_prompt(refs[1], x_vector_only_mode=True)
    icl2 = engine.create_voice_clone_prompt(refs[1], "The second reference speaking.")
    params = SamplingParams(max_new_tokens=16)
    requests = [
        VoiceRequest("voice_clone", "Cloned from the first.", "english", voice_clone_prompt=icl),
        VoiceRequest("voice_clone", "Only the speaker vector.", "english", voice_clone_prompt=xvec),
        VoiceRequest("voice_clone", "Cloned from the second.", "english", voice_clone_prompt=icl2),
    ]
    handles = [engine.submit(r, params, 11 + i, streaming=False) for i, r in enumerate(requests)]
    for i, (request, handle) in enumerate(zip(requests, handles, strict=True)):
        reference = run_reference(engine.tts, request, params, 11 + i)
        assert torch.equal(handle.result(timeout=TIMEOUT_S).codes, reference.codes), request.text


def test_handles_from_asyncio(tiny_engine):
    engine = tiny_engine("custom_voice")
    params = SamplingParams(max_new_tokens=10)
    request = custom("aiden", "Awaited and streamed.")
    solo = engine.generate(request, params, 5)

    async def main():
        awaited = await engine.submit(request, params, 5, streaming=False)
        pieces = [c.audio async for c in engine.submit(request, params, 5)]
        return awaited, np.concatenate(pieces)

    awaited, streamed = asyncio.run(main())
    assert torch.equal(awaited.codes, solo.codes)
    assert float(np.abs(streamed - solo.audio).max()) < 1e-4


def test_a_handle_is_read_once(tiny_engine):
    engine = tiny_engine("custom_voice")
    handle = engine.submit(custom("aiden", "Read me once."), SamplingParams(max_new_tokens=6), 1)
    result = handle.result(timeout=TIMEOUT_S)
    assert handle.result() is result  # the result again is fine
    with pytest.raises(RuntimeError, match="already being read"):
        list(handle)


def test_buckets_and_memory_settings(tiny_model):
    assert EngineConfig(max_batch_size=6).buckets == (1, 2, 4, 6)
    assert EngineConfig(max_batch_size=8, batch_buckets=(8, 2)).buckets == (2, 8)
    with pytest.raises(ValueError, match="batch_buckets must be integers from 1 to max_batch_size"):
        EngineConfig(max_batch_size=4, batch_buckets=(8,))
    with pytest.raises(ValueError, match="max_batch_size must be an integer >= 1"):
        EngineConfig(max_batch_size=0)
    with pytest.raises(ValueError, match="codec_stream must be one of shared, separate, got 'own'"):
        EngineConfig(codec_stream="own")
    options = parse_engine_options(
        ["compile=false", "batch_buckets=[1, 4]", "codec_stream=separate"]
    )
    assert options == {"compile": False, "batch_buckets": [1, 4], "codec_stream": "separate"}
    assert EngineConfig(max_batch_size=4, **options).buckets == (1, 4)
    with pytest.raises(ValueError, match="'compiled' is no EngineConfig field; choose from: "):
        parse_engine_options(["compiled=false"])
    with pytest.raises(ValueError, match="needs KEY=VALUE, got 'compile'"):
        parse_engine_options(["compile"])
    engine = FastQwen3TTS(
        tiny_model("custom_voice").tts, EngineConfig(max_batch_size=3, max_seq_len=128)
    )
    try:
        kv = engine.runner.model.talker_cache
        assert kv.batch == 3 and kv.bytes_per_slot <= engine.kv_bytes_per_slot
        assert engine.runner.bucket(3) == 3 and engine.runner.bucket(1) == 1
    finally:
        engine.close()


def test_a_cached_voice_gives_the_same_codes_and_audio(tiny_model, tmp_path):
    """The second use of a reference skips the encoders and changes nothing."""
    engine = FastQwen3TTS(tiny_model("base").tts, EngineConfig(max_batch_size=2))
    try:
        sr = 24000
        wav = (0.2 * np.sin(2 * np.pi * 170 * np.arange(2 * sr) / sr)).astype(np.float32)
        sf.write(tmp_path / "ref.wav", wav, sr, subtype="FLOAT")  # the same samples as `wav`
        text = "A reference sentence."
        first = engine.create_voice_clone_prompt(str(tmp_path / "ref.wav"), text)
        assert engine.voice_cache.stats.misses == 1 and len(engine.voice_cache) == 1
        again = engine.create_voice_clone_prompt((wav, sr), text)  # same sound, as an array
        assert engine.voice_cache.stats.hits == 1 and again[0] is first[0]
        uncached = engine.tts.create_voice_clone_prompt(ref_audio=(wav, sr), ref_text=text)
        params = SamplingParams(max_new_tokens=12)
        results = [
            engine.generate(
                VoiceRequest("voice_clone", "Same voice.", "english", voice_clone_prompt=items),
                params,
                3,
            )  # fmt: skip
            for items in (first, again, uncached)
        ]
        for r in results[1:]:
            assert torch.equal(r.codes, results[0].codes)
            assert np.array_equal(r.audio, results[0].audio)
        louder = engine.create_voice_clone_prompt((wav * 0.5, sr), text)
        assert louder[0] is not first[0] and engine.voice_cache.stats.misses == 2
        other_text = engine.create_voice_clone_prompt((wav, sr), "Another text.")
        assert other_text[0] is not first[0] and engine.voice_cache.stats.misses == 3
    finally:
        engine.close()


def test_an_unchanged_reference_file_is_not_read_again_a_rewritten_one_is(
    tiny_model, tmp_path, monkeypatch
):
    import os

    import fastqwen.api as api

    engine = FastQwen3TTS(tiny_model("base").tts, EngineConfig(max_batch_size=2))
    reads = []
    load = api.load_reference_audio

    def counting(audio, **kwargs):
        reads.append(audio)
        return load(audio, **kwargs)

    monkeypatch.setattr(api, "load_reference_audio", counting)
    try:
        sr = 24000
        path = tmp_path / "ref.wav"
        wav = (0.2 * np.sin(2 * np.pi * 170 * np.arange(2 * sr) / sr)).astype(np.float32)
        sf.write(path, wav, sr, subtype="FLOAT")
        text = "A reference sentence."
        first = engine.create_voice_clone_prompt(str(path), text)
        assert len([r for r in reads if not isinstance(r, tuple)]) == 1
        again = engine.create_voice_clone_prompt(path, text)  # a Path this time: same file
        assert again[0] is first[0] and len([r for r in reads if not isinstance(r, tuple)]) == 1
        other = engine.create_voice_clone_prompt(str(path), "Another text.")  # keyed on text
        assert other[0] is not first[0]
        sf.write(path, wav * 0.5, sr, subtype="FLOAT")  # rewritten, same size
        stat = os.stat(path)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
        changed = engine.create_voice_clone_prompt(str(path), text)
        assert changed[0] is not first[0]
        assert not torch.equal(changed[0].ref_code, first[0].ref_code) or not torch.equal(
            changed[0].ref_spk_embedding, first[0].ref_spk_embedding
        )
    finally:
        engine.close()


def test_clone_prompts_equal_qwen_tts_and_x_vector_skips_the_codec_encoder(tiny_model, monkeypatch):
    """x-vector mode needs only the speaker embedding: the engine's prompt equals
    qwen-tts's, which also runs the codec's encoder and drops its codes."""
    engine = FastQwen3TTS(tiny_model("base").tts, EngineConfig(max_batch_size=2))
    try:
        sr = 44100  # resampled to the speaker encoder's rate, as qwen-tts does
        wav = (0.2 * np.sin(2 * np.pi * 190 * np.arange(sr) / sr)).astype(np.float32)
        reference = engine.tts.create_voice_clone_prompt(
            ref_audio=(wav, sr), x_vector_only_mode=True
        )[0]
        tokenizer = engine.tts.model.speech_tokenizer

        def no_encoder(*args, **kwargs):
            raise AssertionError("the codec encoder ran for an x-vector prompt")

        monkeypatch.setattr(tokenizer, "encode", no_encoder)
        (item,) = engine.create_voice_clone_prompt((wav, sr), x_vector_only_mode=True)
        assert item.ref_code is None and item.x_vector_only_mode and not item.icl_mode
        assert torch.equal(item.ref_spk_embedding, reference.ref_spk_embedding)
        with pytest.raises(AssertionError, match="codec encoder ran"):  # ICL still encodes
            engine.create_voice_clone_prompt((wav, sr), "Some reference text.")
        monkeypatch.undo()
        # ICL: the codec's encoder in a second thread, the same item as qwen-tts's
        text = "Some reference text."
        reference = engine.tts.create_voice_clone_prompt(ref_audio=(wav, sr), ref_text=text)[0]
        (item,) = engine.create_voice_clone_prompt((wav, sr), text)
        assert item.icl_mode and not item.x_vector_only_mode and item.ref_text == text
        assert torch.equal(item.ref_code, reference.ref_code)
        assert torch.equal(item.ref_spk_embedding, reference.ref_spk_embedding)
    finally:
        engine.close()


def test_the_voice_cache_is_bounded():
    from fastqwen.prompts.voice_cache import VoicePromptCache, voice_key

    cache = VoicePromptCache(2)
    keys = [voice_key(np.full(10, i, np.float32), 24000, "t", False) for i in range(3)]
    assert len(set(keys)) == 3
    for i, key in enumerate(keys):
        cache.put(key, [i])
        if i == 1:
            assert cache.get(keys[0]) == [0]  # touched: keys[1] is now the oldest
    assert keys[1] not in cache and keys[0] in cache and keys[2] in cache
    with pytest.raises(ValueError, match="max_entries must be an integer >= 0"):
        VoicePromptCache(-1)


@pytest.mark.parametrize("kind", ["custom_voice", "voice_design", "base"])
def test_warmup_runs_every_batch_bucket(tiny_model, kind):
    engine = FastQwen3TTS(tiny_model(kind).tts, EngineConfig(max_batch_size=3))
    try:
        took = engine.warmup(frames=2)
        assert sorted(took) == [1, 2, 3] and all(t > 0 for t in took.values())
        assert engine.scheduler.peak_active == 3 and engine.scheduler.active == 0
    finally:
        engine.close()
