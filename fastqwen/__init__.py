"""fastqwen: a static-cache Qwen3-TTS engine and the tools to prove it speaks like the reference.

The public names load on first use (PEP 562), so `import fastqwen` stays cheap and a tool
that only needs `fastqwen.tools.bench.measure` (the anchor's process) never imports
`qwen_tts`.

    from fastqwen import FastQwen3TTS, SamplingParams, VoiceRequest
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> module that defines it
_PUBLIC = {
    "FastQwen3TTS": "fastqwen.api",
    "EngineConfig": "fastqwen.config",
    "SamplingParams": "fastqwen.config",
    "VoiceRequest": "fastqwen.prompts.builder",
    "GenerationResult": "fastqwen.results",
    "AudioChunk": "fastqwen.results",
    "GenerationStopped": "fastqwen.results",
}

__all__ = [
    "AudioChunk",
    "EngineConfig",
    "FastQwen3TTS",
    "GenerationResult",
    "GenerationStopped",
    "SamplingParams",
    "VoiceRequest",
    "__version__",
]

if TYPE_CHECKING:
    from fastqwen.api import FastQwen3TTS
    from fastqwen.config import EngineConfig, SamplingParams
    from fastqwen.prompts.builder import VoiceRequest
    from fastqwen.results import AudioChunk, GenerationResult, GenerationStopped


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'fastqwen' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
