"""`ServeSettings`: how the server runs around its engine. Free of FastAPI, so the command
line can read its defaults without the serve extra installed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServeSettings:
    """How the server runs around its engine (the engine's own settings are its EngineConfig).

    model_name: the name clients send as `model` and `/v1/models` lists.
    max_queue: requests that may wait for a slot beyond the engine's max_batch_size;
        past that, 429.
    request_timeout_s: longest a request may run before it is cancelled (504 when not
        streamed; a stream is cut); None for no limit.
    ref_audio_dir: the directory `ref_audio` paths may name; None refuses paths.
    clone_cache_size: voice-clone prompts kept (LRU).
    warmup: run one short generation before `/health` reports ready.
    first_chunk_frames, chunk_frames: frames in the first streamed chunk and in each later one.
    retry_after_s: the Retry-After of a 429 or 503.
    """

    model_name: str = "fastqwen"
    max_queue: int = 16
    request_timeout_s: float | None = 300.0
    ref_audio_dir: Path | None = None
    clone_cache_size: int = 32
    warmup: bool = True
    first_chunk_frames: int = 2
    chunk_frames: int = 12
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        if self.max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {self.max_queue}")
        if self.request_timeout_s is not None and not self.request_timeout_s > 0:
            raise ValueError(
                "request_timeout_s must be > 0 (or None for no limit), "
                f"got {self.request_timeout_s}"
            )
        if self.first_chunk_frames < 1 or self.chunk_frames < 1:
            raise ValueError(
                "first_chunk_frames and chunk_frames must be >= 1, got "
                f"{self.first_chunk_frames} and {self.chunk_frames}"
            )
