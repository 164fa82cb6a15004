"""`RequestHandle`: a request submitted to the engine's scheduler (`FastQwen3TTS.submit`).

Iterate it for audio chunks as frames are decoded, call `result()` (or `await` it) for the
whole `GenerationResult`, or `cancel()` it; `async for` works too. The scheduler makes
the codes; the handle turns them into audio when it is read, so a slow reader never holds
up the frame loop. The decoding itself runs on the engine's codec thread
(`codec.batch.CodecWorker`), which decodes the chunks of every stream read at the same
time in one batch.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch

from fastqwen.codec.decoder import StreamingDecoder
from fastqwen.engine.loop import LoopStats
from fastqwen.engine.scheduler import Job
from fastqwen.prompts.builder import TalkerPrompt
from fastqwen.results import AudioChunk, GenerationResult

if TYPE_CHECKING:
    from fastqwen.api import FastQwen3TTS


# Frames per codec call when a whole result is decoded on the way. Each call after the first
# re-runs the vocoder on 10 frames of context (`codec.decoder.receptive_field`), so 96-frame
# calls spend ~10 % on context where 48-frame calls spend ~20 %; the vocoder is most of the
# codec's work.
RESULT_CHUNK_FRAMES = 96


class RequestHandle:
    """One submitted request. Read it once: iterate it (a stream) or call `result()`."""

    def __init__(
        self,
        engine: FastQwen3TTS,
        job: Job,
        prompt: TalkerPrompt,
        *,
        first_chunk_frames: int = 2,
        chunk_frames: int = 12,
    ):
        self.engine = engine
        self.job = job
        self.prompt = prompt
        self.first_chunk_frames = first_chunk_frames
        self.chunk_frames = chunk_frames
        self.submitted_s = job.submitted_s
        self._result: GenerationResult | None = None
        self._reading = threading.Lock()
        self._started = False

    # ---- control ----------------------------------------------------------------------
    def cancel(self) -> None:
        """Stop generating; the slot is freed at the next block boundary and reading the
        handle raises `GenerationStopped`."""
        self.job.cancel()

    def done(self) -> bool:
        """Whether the request has finished generating (its audio may still be decoding)."""
        return self.job.finished

    def wait_done(self, timeout: float | None = None) -> bool:
        """Wait until the request has finished generating (its slot is free again; its
        audio may still be decoding); False if `timeout` seconds passed first."""
        return self.job._finished.wait(timeout)

    @property
    def stats(self) -> LoopStats:
        return self.job.stats

    # ---- reading ----------------------------------------------------------------------
    def result(self, timeout: float | None = None) -> GenerationResult:
        """The whole utterance (blocks until the request ends).

        Without an ICL reference the codes are decoded as they arrive, `RESULT_CHUNK_FRAMES`
        at a time, so decoding overlaps generation and the utterances of a batch share
        codec batches; the audio equals one decode of all the codes up to float rounding
        (`StreamingDecoder`). With one, the reference's decode after the last frame.

        timeout: seconds to wait for each hand-over of frames (every `RESULT_CHUNK_FRAMES`,
            or the whole utterance with an ICL reference; None: no limit); on expiry the
        request is cancelled and `queue.Empty` is raised.
        """
        if self._result is not None:
            return self._result
        self._begin()
        decoder = None
        if self.prompt.ref_codes is None:
            decoder = StreamingDecoder(
                self.engine.tts.model.speech_tokenizer,
                first_chunk_frames=RESULT_CHUNK_FRAMES,
                chunk_frames=RESULT_CHUNK_FRAMES,
                decode=self.engine.codec.decode,
            )
        # wake this reader only when a chunk can be decoded (or at the end)
        self.job.wake_frames = RESULT_CHUNK_FRAMES if decoder is not None else 1 << 30
        blocks: list[torch.Tensor] = []
        pieces: list[np.ndarray] = []
        try:
            for block in self.job.blocks(timeout):
                blocks.append(block)
                if decoder is not None and (audio := decoder.push(block)) is not None:
                    pieces.append(audio)
        except BaseException:
            self.job.cancel()
            raise
        t_gen = time.perf_counter()
        codes = _concat(blocks)
        if decoder is None:
            audio, sr = self.engine._decode_utterance(codes, self.prompt.ref_codes)
        else:
            if (tail := decoder.flush()) is not None:
                pieces.append(tail)
            audio = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
            sr = self.engine.sample_rate
        t_end = time.perf_counter()
        self._result = self._make_result(audio, sr, codes, t_gen, t_end, first_audio_s=None)
        return self._result

    def __iter__(self) -> Iterator[AudioChunk]:
        """Audio chunks as they are decoded: `first_chunk_frames` first, then `chunk_frames`
        at a time. The codec decodes each chunk with left context, so the chunks concatenate
        to the non-streamed audio (up to the codec's float rounding)."""
        self._begin()
        decoder = StreamingDecoder(
            self.engine.tts.model.speech_tokenizer,
            first_chunk_frames=self.first_chunk_frames,
            chunk_frames=self.chunk_frames,
            decode=self.engine.codec.decode,
        )
        if self.prompt.ref_codes is not None:
            # ICL: the reference codes are decoding context only. The reference cuts its
            # waveform at int(ref / total * samples), which can fall one sample early;
            # streaming cuts exactly at the frame boundary.
            decoder.prime(self.prompt.ref_codes)
        sr = self.engine.sample_rate
        t0 = self.submitted_s
        blocks: list[torch.Tensor] = []
        pieces: list[np.ndarray] = []
        first_audio_s: float | None = None
        try:
            self.job.wake_frames = decoder.frames_to_next_chunk
            for block in self.job.blocks():
                blocks.append(block)
                audio = decoder.push(block)
                self.job.wake_frames = decoder.frames_to_next_chunk
                if audio is not None and len(audio):
                    elapsed = time.perf_counter() - t0
                    first_audio_s = elapsed if first_audio_s is None else first_audio_s
                    pieces.append(audio)
                    yield AudioChunk(audio=audio, sample_rate=sr, elapsed_s=elapsed)
            t_gen = time.perf_counter()
            tail = decoder.flush()
            if tail is not None and len(tail):
                elapsed = time.perf_counter() - t0
                first_audio_s = elapsed if first_audio_s is None else first_audio_s
                pieces.append(tail)
                yield AudioChunk(audio=tail, sample_rate=sr, elapsed_s=elapsed)
        except BaseException:  # closed early, cancelled or failed: free the slot
            self.job.cancel()
            raise
        audio = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
        self._result = self._make_result(
            audio, sr, _concat(blocks), t_gen, time.perf_counter(), first_audio_s
        )

    def __await__(self):
        return asyncio.to_thread(self.result).__await__()

    async def __aiter__(self) -> AsyncIterator[AudioChunk]:
        chunks = iter(self)
        end = object()
        try:
            while (chunk := await asyncio.to_thread(next, chunks, end)) is not end:
                yield chunk
        finally:
            chunks.close()

    def _begin(self) -> None:
        with self._reading:
            if self._started:
                raise RuntimeError(
                    "this request is already being read; iterate it or call result(), once"
                )
            self._started = True

    def _make_result(self, audio, sr, codes, t_gen, t_end, first_audio_s) -> GenerationResult:
        stats = self.job.stats
        return GenerationResult(
            audio=audio,
            sample_rate=sr,
            codes=codes,
            eos_reached=stats.eos_reached,
            engine="static",
            wall_s=t_end - self.submitted_s,
            generate_s=t_gen - self.submitted_s,
            prefill_s=stats.prefill_s,
            time_to_first_audio_s=first_audio_s,
            frame_times_s=per_frame_times(stats),
        )


def _concat(blocks: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(blocks) if blocks else torch.zeros((0, 16), dtype=torch.long)


def per_frame_times(stats: LoopStats) -> list[float]:
    """Each frame's share of its block's wall time."""
    out: list[float] = []
    for t, n in zip(stats.block_times_s, stats.block_frames, strict=True):
        out.extend([t / n] * n if n else [])
    return out
