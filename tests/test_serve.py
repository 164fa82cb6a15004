"""`fastqwen serve` and `fastqwen say` on the tiny CPU models: the real server (uvicorn in a
thread on a free local port) around a tiny engine, driven with httpx and the OpenAI SDK."""

from __future__ import annotations

import base64
import contextlib
import io
import socket
import threading
import time

import numpy as np
import pytest
import soundfile as sf

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")

from fastqwen.api import FastQwen3TTS  # noqa: E402
from fastqwen.config import EngineConfig  # noqa: E402
from fastqwen.tools.serve.app import create_app  # noqa: E402
from fastqwen.tools.serve.audio import wav_header  # noqa: E402
from fastqwen.tools.serve.settings import ServeSettings  # noqa: E402

TEXT = "Hello there, this is a test."
LONG = {"max_new_tokens": 2000, "min_new_tokens": 2000}  # holds a slot for ~30 s: no EOS


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(engine, wait_ready: bool = True, **settings):
    """The app around `engine`, served by uvicorn in a thread; yields its base URL (with
    the app's `Server` state as `.server`)."""
    app = create_app(engine, ServeSettings(model_name="tiny", **settings))
    port = _free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = _Url(f"http://127.0.0.1:{port}")
    url.server = app.state.server
    _until(lambda: server.started, what="the server to start")
    if wait_ready:
        _until(lambda: httpx.get(f"{url}/health").status_code == 200, what="warm-up")
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)


class _Url(str):
    server = None


def _until(check, timeout: float = 30.0, what: str = "a condition") -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def engine(tiny_model):
    """Two slots and no queue: a third request is refused (429)."""
    eng = FastQwen3TTS(tiny_model("custom_voice").tts, EngineConfig(max_batch_size=2))
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def url(engine):
    with serving(engine, max_queue=0, request_timeout_s=120) as base:
        yield base


def _speech(url: str, **fields) -> httpx.Response:
    body = {"model": "tiny", "input": TEXT, "voice": "aiden", **fields}
    return httpx.post(f"{url}/v1/audio/speech", json=body, timeout=60)


def _pcm(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2")


def test_streamed_pcm_equals_the_whole_wav(url):
    whole = _speech(url, seed=7, max_new_tokens=30, response_format="wav")
    assert whole.status_code == 200, whole.text
    assert whole.headers["content-type"] == "audio/wav"
    audio, sr = sf.read(io.BytesIO(whole.content), dtype="int16")
    assert sr == 24000 and len(audio) > 0
    flac = _speech(url, seed=7, max_new_tokens=30, response_format="flac")
    assert flac.headers["content-type"] == "audio/flac"
    assert np.array_equal(sf.read(io.BytesIO(flac.content), dtype="int16")[0], audio)

    body = {"model": "tiny", "input": TEXT, "voice": "Aiden", "seed": 7, "max_new_tokens": 30}
    pieces = []
    with httpx.stream(
        "POST",
        f"{url}/v1/audio/speech",
        json={**body, "stream": True, "response_format": "pcm"},
        timeout=60,
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "audio/pcm"
        pieces = list(r.iter_raw())
    streamed = _pcm(b"".join(pieces))
    assert len(streamed) == len(audio)
    diff = np.abs(streamed.astype(np.int32) - audio.astype(np.int32)).max()
    assert diff <= 2, f"streamed PCM differs from the whole WAV by {diff} LSB"

    with httpx.stream(
        "POST", f"{url}/v1/audio/speech", json={**body, "stream": True}, timeout=60
    ) as r:
        wav = r.read()
    assert wav[:4] == b"RIFF" and wav[8:16] == b"WAVEfmt "
    assert wav[:44] == wav_header(24000)  # the streaming-size placeholder
    assert wav[44:] == streamed.tobytes()


def test_openai_sdk_streams_pcm(url):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    extra = {"stream": True, "seed": 7, "max_new_tokens": 30}
    with client.audio.speech.with_streaming_response.create(
        model="tiny", voice="aiden", input=TEXT, response_format="pcm", extra_body=extra
    ) as response:
        got = b"".join(response.iter_bytes())
    direct = _speech(url, seed=7, max_new_tokens=30, response_format="pcm", stream=True)
    assert got == direct.content and len(got) > 0
    with pytest.raises(openai.BadRequestError, match="speed"):
        client.audio.speech.create(model="tiny", voice="aiden", input=TEXT, speed=2.0)


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"speed": 2.0}, "speed", "2.0"),
        ({"response_format": "mp3"}, "response_format", "mp3"),
        ({"stream_format": "sse"}, "stream_format", "sse"),
        ({"response_format": "flac", "stream": True}, "response_format", "flac"),
        ({"task_type": "Base"}, "task_type", "Base"),
        ({"model": "tts-1"}, "model", "tts-1"),
        ({"ref_text": "hi"}, "ref_text", "Base"),
        ({"top_p": 1.5}, "top_p", "top_p"),
        ({"subtalker_temperature": 0}, "subtalker_temperature", "subtalker_temperature"),
        ({"voice": "nobody"}, None, "nobody"),
        ({"input": ""}, None, "text"),
        ({"language": "klingon"}, None, "klingon"),
        ({"max_new_tokens": 5000}, None, "max_seq_len"),
    ],
)
def test_unsupported_or_bad_values_are_400_naming_them(url, fields, param, words):
    r = _speech(url, **fields)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param
    assert words in error["message"]


@pytest.mark.parametrize(
    "fields", [{"input": 123}, {"speed": "fast"}, {"stream": "maybe"}, {"volume": 2}]
)
def test_wrong_types_and_unknown_fields_are_422(url, fields):
    assert _speech(url, **fields).status_code == 422


def test_models_and_voices(url):
    models = httpx.get(f"{url}/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["tiny"]
    voices = httpx.get(f"{url}/v1/audio/voices").json()
    assert "aiden" in voices["voices"] and voices["task_type"] == "CustomVoice"


def _hold(url: str, stack: contextlib.ExitStack):
    """A long stream, open and started (its first bytes read); keep the returned iterator
    alive, since closing it closes the response."""
    body = {"model": "tiny", "input": TEXT, "voice": "aiden", "stream": True, **LONG}
    body["response_format"] = "pcm"
    r = stack.enter_context(httpx.stream("POST", f"{url}/v1/audio/speech", json=body, timeout=60))
    assert r.status_code == 200, r.read()
    chunks = r.iter_raw()
    next(chunks)
    return chunks


def test_queue_bound_is_429_and_disconnects_free_slots(url, engine):
    with contextlib.ExitStack() as stack:
        held = [_hold(url, stack), _hold(url, stack)]
        assert engine.scheduler.active == 2
        busy = _speech(url, max_new_tokens=5)
        assert busy.status_code == 429, busy.text
        assert busy.headers["retry-after"] == "1"
        assert engine.scheduler.active == 2 and all(held)
    # both clients went away: their requests are cancelled and the slots freed
    _until(lambda: engine.scheduler.active == 0, timeout=15, what="the slots to be freed")
    assert _speech(url, max_new_tokens=5).status_code == 200


def test_request_timeout_is_504(engine):
    with serving(engine, request_timeout_s=0.5) as base:
        r = _speech(base, **LONG)
        assert r.status_code == 504, r.text
        _until(lambda: engine.scheduler.active == 0, timeout=15, what="the slot to be freed")


def test_health_is_503_until_warmed_up(engine):
    with engine.scheduler.exclusive():  # the warm-up request waits: not ready yet
        with serving(engine, wait_ready=False) as base:
            time.sleep(0.3)
            health = httpx.get(f"{base}/health")
            assert health.status_code == 503 and health.json()["status"] == "warming up"
            assert _speech(base).status_code == 503
    # (the context above ended the server; warm-up then runs on a fresh one)
    with serving(engine, wait_ready=False) as base:
        _until(lambda: httpx.get(f"{base}/health").status_code == 200, what="warm-up")


def test_voice_design(tiny_model):
    eng = FastQwen3TTS(tiny_model("voice_design").tts, EngineConfig(max_batch_size=1))
    try:
        with serving(eng) as base:
            ok = _speech(
                base,
                voice="default",
                task_type="VoiceDesign",
                instructions="A warm, low voice.",
                max_new_tokens=10,
            )
            assert ok.status_code == 200, ok.text
            assert sf.read(io.BytesIO(ok.content))[1] == 24000
            assert _speech(base, voice=None, max_new_tokens=10).json()["error"]["param"] == (
                "instructions"
            )
            named = _speech(base, instructions="calm", voice="aiden")
            assert named.status_code == 400 and named.json()["error"]["param"] == "voice"
    finally:
        eng.close()


def _data_url(seconds: float = 2.0, sr: int = 16000) -> str:
    t = np.arange(int(seconds * sr)) / sr
    wav = 0.2 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))
    out = io.BytesIO()
    sf.write(out, wav.astype(np.float32), sr, format="WAV")
    return "data:audio/wav;base64," + base64.b64encode(out.getvalue()).decode()


def test_voice_clone_caches_the_reference(tiny_model, tmp_path):
    eng = FastQwen3TTS(tiny_model("base").tts, EngineConfig(max_batch_size=1))
    (tmp_path / "ref.wav").write_bytes(base64.b64decode(_data_url().split(",")[1]))
    try:
        with serving(eng, ref_audio_dir=tmp_path) as base:
            ref = {"task_type": "Base", "voice": None, "ref_audio": _data_url()}
            icl = {**ref, "ref_text": "A short reference.", "max_new_tokens": 8}
            cache = base.server.clone_cache
            for _ in range(2):
                r = _speech(base, **icl)
                assert r.status_code == 200, r.text
            assert (cache.misses, cache.hits) == (1, 1)
            from_path = _speech(base, **{**icl, "ref_audio": "ref.wav"})  # same bytes
            assert from_path.status_code == 200, from_path.text
            assert (cache.misses, cache.hits) == (1, 2)
            xvec = _speech(base, **ref, x_vector_only_mode=True, max_new_tokens=8)
            assert xvec.status_code == 200, xvec.text
            assert (cache.misses, cache.hits) == (2, 2)
            outside = _speech(base, **{**ref, "ref_audio": "../etc/passwd"}, ref_text="x")
            assert outside.status_code == 400 and "outside" in outside.json()["error"]["message"]
            short = _speech(base, **{**ref, "ref_audio": _data_url(0.3)}, ref_text="x")
            assert short.status_code == 400 and "shorter" in short.json()["error"]["message"]
            noise = _speech(base, **{**ref, "ref_audio": "data:audio/wav;base64,AAAA"})
            assert noise.status_code == 400
    finally:
        eng.close()


def test_serve_command_defaults_to_localhost():
    from fastqwen.tools import cli

    args = cli.build_parser().parse_args(["serve", "--model", "random:tiny-custom_voice"])
    assert (args.host, args.port, args.max_batch_size) == ("127.0.0.1", 8000, 8)
    assert args.ref_audio_dir is None and args.request_timeout == 300.0


def test_say_splits_sentences_and_caps_their_tokens():
    from fastqwen.tools.say import split_sentences, token_cap

    assert split_sentences("Hello there.  How are you?\nFine!") == [
        "Hello there.",
        "How are you?",
        "Fine!",
    ]
    assert split_sentences("你好。今天很好！") == ["你好。", "今天很好！"]
    assert token_cap("one two three", 2048) == 3 * 12 + 25
    assert token_cap("word " * 500, 2048) == 2048
    assert token_cap("你好", 2048) == 2 * 12 + 25


def test_say_writes_a_wav(tmp_path, monkeypatch, tiny_model):
    from fastqwen.tools import cli, say

    submitted = []
    real = FastQwen3TTS.submit_many

    def spy(self, requests, params=None, *args, **kwargs):
        submitted.append(
            [(r.text, p.max_new_tokens) for r, p in zip(requests, params, strict=True)]
        )
        return real(self, requests, params, *args, **kwargs)

    monkeypatch.setattr(FastQwen3TTS, "submit_many", spy)
    monkeypatch.setattr(
        FastQwen3TTS,
        "from_pretrained",
        classmethod(lambda cls, model, device, dtype: cls(tiny_model("custom_voice").tts)),
    )
    out = tmp_path / "out.wav"
    argv = ["say", "Hello there. How are you today?", "--voice", "Aiden", "-o", str(out)]
    assert cli.main([*argv, "--seed", "3", "--max-new-tokens", "60", "--no-progress"]) == 0
    assert submitted == [[("Hello there.", 2 * 12 + 25), ("How are you today?", 60)]]
    audio, sr = sf.read(out)
    assert sr == 24000 and audio.ndim == 1
    assert len(audio) >= int(say.PAUSE_S * sr) + 2 * 1920


def test_a_request_without_max_new_tokens_is_capped_from_its_text():
    """Omitted, max_new_tokens follows the text's length (never above the default); given,
    it is kept; a min_new_tokens above the cap raises the cap to it."""
    from fastqwen.config import SamplingParams
    from fastqwen.tools.defaults import token_cap
    from fastqwen.tools.serve.schema import SpeechRequest, check_request

    def params(**fields):
        body = SpeechRequest(input="Say these five words now.", voice="aiden", **fields)
        return check_request(body, "custom_voice", ("tiny",)).params

    assert params().max_new_tokens == token_cap("Say these five words now.", 2048) == 85
    assert params(max_new_tokens=600).max_new_tokens == 600
    assert params(min_new_tokens=300).max_new_tokens == 300
    long = SpeechRequest(input="word " * 400, voice="aiden")
    capped = check_request(long, "custom_voice", ("tiny",)).params.max_new_tokens
    assert capped == SamplingParams().max_new_tokens
