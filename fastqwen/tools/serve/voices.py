"""Voices: the task types of the three model kinds, reference audio from a request, and an
LRU cache of voice-clone prompts.

Encoding a reference (speaker encoder plus, for ICL, the codec's encoder) costs far more
than building a talker prompt, and a client usually clones the same few voices again and
again. So prompts are cached by what determines them: the SHA-256 of the reference audio's
bytes, the reference text and the x-vector-only switch.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import soundfile as sf

# The vLLM-Omni task type of each model kind (`FastQwen3TTS.model_kind`), and its mode.
TASK_TYPES = {"custom_voice": "CustomVoice", "voice_design": "VoiceDesign", "base": "Base"}
MODES = {"custom_voice": "custom_voice", "voice_design": "voice_design", "base": "voice_clone"}
# The `voice` that VoiceDesign and Base requests may name (the OpenAI SDK always sends one).
DEFAULT_VOICE = "default"


def read_reference(ref_audio: str, allowed_dir: Path | None) -> bytes:
    """The bytes of a reference recording given as a `data:` URL (base64) or as a path
    under `allowed_dir` (resolved, so `..` and links cannot leave it).

    Raises a ValueError naming `ref_audio` and what it may be.
    """
    if ref_audio.startswith("data:"):
        head, sep, payload = ref_audio.partition(",")
        if not sep or not head.endswith(";base64"):
            raise ValueError("ref_audio data URL must be base64, like data:audio/wav;base64,<data>")
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as err:
            raise ValueError(f"ref_audio is not valid base64 ({err})") from err
    if "://" in ref_audio:
        raise ValueError(
            "ref_audio URLs are not fetched; send the audio as a base64 data URL "
            "(data:audio/wav;base64,...)"
        )
    if allowed_dir is None:
        raise ValueError(
            "ref_audio must be a base64 data URL (data:audio/wav;base64,...); server-side "
            "paths are refused unless the server was started with --ref-audio-dir"
        )
    root = allowed_dir.resolve()
    path = (root / ref_audio).resolve()
    if not path.is_relative_to(root):
        raise ValueError(f"ref_audio path {ref_audio!r} is outside the allowed directory {root}")
    if not path.is_file():
        raise ValueError(f"ref_audio file {ref_audio!r} not found under {root}")
    return path.read_bytes()


def decode_reference(data: bytes) -> tuple[np.ndarray, int]:
    """Audio file bytes as `(samples, sample_rate)`; a ValueError if they are not audio."""
    try:
        wav, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
    except (RuntimeError, TypeError, sf.SoundFileError) as err:
        raise ValueError(f"ref_audio is not a readable audio file ({err})") from err
    return wav, int(sr)


class CloneCache:
    """Voice-clone prompts of one engine, least recently used dropped past `size`.

    `hits` and `misses` count lookups. Two threads encoding the same new reference at
    once both encode it; the result is the same either way.
    """

    def __init__(self, engine, size: int = 32):
        if size < 0:
            raise ValueError(f"clone cache size must be >= 0, got {size}")
        self.engine = engine
        self.size = size
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[tuple, list] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(data: bytes, ref_text: str | None, x_vector_only: bool) -> tuple:
        return (hashlib.sha256(data).hexdigest(), ref_text or "", bool(x_vector_only))

    def get(self, data: bytes, ref_text: str | None, x_vector_only: bool) -> list:
        """The prompt for this reference: cached, or encoded now (ValueErrors name the
        bad reference or text)."""
        key = self.key(data, ref_text, x_vector_only)
        with self._lock:
            if key in self._items:
                self.hits += 1
                self._items.move_to_end(key)
                return self._items[key]
            self.misses += 1
        prompt = self.engine.create_voice_clone_prompt(
            decode_reference(data), ref_text=ref_text, x_vector_only_mode=bool(x_vector_only)
        )
        with self._lock:
            self._items[key] = prompt
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return prompt

    def __len__(self) -> int:
        return len(self._items)
