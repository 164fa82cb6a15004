"""What a generation returns: `GenerationResult` (one utterance, either side of a parity
run) and `AudioChunk` (one piece of a stream); `GenerationStopped`, raised when a caller's
stop request ends a generation early."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from fastqwen.constants import FRAME_RATE_HZ


@dataclass
class GenerationResult:
    """One generated utterance with the numbers a parity report needs.

    `codes` are the generated frames only (ICL reference codes excluded), on the CPU.
    Times are wall-clock seconds; `None` where a side cannot measure them.
    """

    audio: np.ndarray  # (samples,) float32 mono
    sample_rate: int
    codes: torch.Tensor  # (frames, 16) int64
    eos_reached: bool
    engine: str  # "static" or "dynamic"
    wall_s: float  # generation + decode
    generate_s: float  # token generation only
    prefill_s: float | None = None
    time_to_first_audio_s: float | None = None
    frame_times_s: list[float] = field(default_factory=list)

    @property
    def frames(self) -> int:
        return int(self.codes.shape[0])

    @property
    def audio_seconds(self) -> float:
        return float(len(self.audio)) / self.sample_rate

    @property
    def ms_per_frame(self) -> float:
        return 1000.0 * self.generate_s / max(self.frames, 1)

    @property
    def rtf(self) -> float:
        """Seconds of audio per second of generation (> 1 is faster than real time)."""
        return (self.frames / FRAME_RATE_HZ) / max(self.generate_s, 1e-9)

    def summary(self) -> dict:
        return {
            "engine": self.engine,
            "frames": self.frames,
            "eos_reached": self.eos_reached,
            "audio_s": round(self.audio_seconds, 3),
            "wall_s": round(self.wall_s, 4),
            "generate_s": round(self.generate_s, 4),
            "ms_per_frame": round(self.ms_per_frame, 3),
            "rtf": round(self.rtf, 3),
            "prefill_ms": None if self.prefill_s is None else round(1000 * self.prefill_s, 3),
            "ttfa_ms": None
            if self.time_to_first_audio_s is None
            else round(1000 * self.time_to_first_audio_s, 3),
        }


class GenerationStopped(Exception):
    """A generation ended early because its `stop` event was set (no result is returned).

    The engine checks the event between blocks of frames (1 frame on the CPU, 8 on CUDA),
    the reference runner after every token, so a stop takes effect within one block.
    """

    def __init__(self, frames: int):
        super().__init__(f"generation stopped on request after {frames} frames")
        self.frames = frames  # frames generated before the stop was seen


@dataclass
class AudioChunk:
    """One piece of streamed audio."""

    audio: np.ndarray  # (samples,) float32
    sample_rate: int
    elapsed_s: float  # since the call started
