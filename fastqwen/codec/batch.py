"""Decoding many streams' code spans together: one codec call for every stream of a block.

At batch 64 the frame loop hands each stream a few new frames per block. Decoded one
stream at a time, the codec is launch-bound (hundreds of small kernels per call) and runs
64 times per block, and the audio delivered stops growing with the batch: the codec, not
the model, sets the throughput. Decoded together, one call serves every stream.

Why a batch gives each stream the audio it would get alone (up to float rounding): the
decoder is causal end to end (left-padded convs, causal sliding-window attention, per-step
norms; see `codec.decoder`), so frames appended after a stream's own frames cannot reach
its samples. Each span is therefore placed at the start of its row and padded on the
right: its positions count from its own window start, exactly as a solo decode's do.
The conv stage then takes, per row, the span's new frames plus its conv context, again
left-aligned and right-padded.

`CodecWorker` is the engine's one codec user: a thread that takes the spans every reader
submits, decodes what has queued up in one batch, and hands each reader its audio. By
default its GPU work goes on the frame loop's stream (`Scheduler.stream`), between two
blocks of frames, so the vocoder's large kernels never sit between the frame step's small
ones (`EngineConfig.codec_stream`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from fastqwen.codec import graphs as codec_graphs
from fastqwen.config import CODEC_STREAMS
from fastqwen.constants import NUM_CODEBOOKS, SAMPLES_PER_FRAME

log = logging.getLogger(__name__)

MAX_BATCH_FRAMES = codec_graphs.MAX_ROWS_FRAMES  # conv frames (context + new) of one batched
# decode: bounds its memory
# A batch of at most this many conv frames (a stream's two-frame first chunk, a few of them
# together) runs on a high-priority side stream beside the frames when the codec shares the
# loop's stream: its latency is the listener's time to first audio, and its kernels are too
# small to hold up the frame step.
SIDE_LANE_FRAMES = 16


@dataclass(frozen=True)
class Span:
    """One stream's decode: `codes` (W, 16) from its window start to the last new frame;
    the last `W - context` frames are new, and the convs see `conv_context` before them."""

    codes: torch.Tensor
    context: int
    conv_context: int

    @property
    def frames(self) -> int:
        """New frames: their audio is what the span returns."""
        return self.codes.shape[0] - self.context

    @property
    def conv_frames(self) -> int:
        return self.conv_context + self.frames


def _latents(decoder, codes: torch.Tensor) -> torch.Tensor:
    """First half of `Qwen3TTSTokenizerV2Decoder.forward`: (B, 16, W) codes -> (B, latent, W)."""
    hidden = decoder.quantizer.decode(codes)  # (B, codebook_dim, W)
    hidden = decoder.pre_conv(hidden).transpose(1, 2)  # (B, W, latent)
    hidden = decoder.pre_transformer(inputs_embeds=hidden).last_hidden_state  # (B, W, latent)
    return hidden.permute(0, 2, 1)  # (B, latent, W)


def _waveform(decoder, latents: torch.Tensor) -> torch.Tensor:
    """Second half of `Qwen3TTSTokenizerV2Decoder.forward`: (B, latent, W) -> (B, 1, W * 1920)."""
    hidden = latents
    for blocks in decoder.upsample:
        for block in blocks:
            hidden = block(hidden)
    for block in decoder.decoder:
        hidden = block(hidden)
    return hidden.clamp(min=-1, max=1)


def _vocoder(decoder, latents: torch.Tensor) -> torch.Tensor:
    """`_waveform`, on CUDA with each SnakeBeta fused into the conv after it
    (`codec.snake.fast_waveform`: about six elementwise passes fewer per residual unit)."""
    if latents.device.type == "cuda":
        from fastqwen.codec.snake import fast_waveform  # Triton: CUDA builds only

        return fast_waveform(decoder, latents)
    return _waveform(decoder, latents)


def _decode_rows(
    decoder, codes: torch.Tensor, first: torch.Tensor, count: torch.Tensor, conv_width: int
) -> torch.Tensor:
    """(R, 16, W) codes -> (R, 1, conv_width * 1920): row r's conv stage takes its latents
    `first[r] .. first[r] + count[r]`, left-aligned, zeros after them (`_conv_rows`)."""
    return _conv_rows(decoder, _latents(decoder, codes), first, count, conv_width)


def _conv_rows(
    decoder, latents: torch.Tensor, first: torch.Tensor, count: torch.Tensor, conv_width: int
) -> torch.Tensor:
    """(R, latent, W) latents -> (R, 1, conv_width * 1920): the conv stage of each row's
    latents `first[r] .. first[r] + count[r]`, left-aligned, zeros after them (one gather for
    every row). Device ops only, so a CUDA graph can capture it (`codec.graphs`)."""
    column = torch.arange(conv_width, device=latents.device)
    keep = column < count[:, None]  # (R, conv_width)
    index = torch.where(keep, first[:, None] + column, 0)
    rows = latents.gather(2, index[:, None, :].expand(-1, latents.shape[1], -1))
    rows = rows * keep[:, None, :].to(rows.dtype)
    return _vocoder(decoder, rows)


def _decode_batch(decoder, spans: list[Span], device: torch.device) -> list[torch.Tensor]:
    """Several spans in one eager decoder call (right-padded rows); each row's new samples."""
    width = max(s.codes.shape[0] for s in spans)
    codes = torch.zeros((len(spans), width, spans[0].codes.shape[1]), dtype=torch.long)
    for i, s in enumerate(spans):
        codes[i, : s.codes.shape[0]] = s.codes
    codes = codes.to(device, non_blocking=True).transpose(1, 2).contiguous()  # (B, 16, W)
    first = torch.tensor([s.context - s.conv_context for s in spans], device=device)
    count = torch.tensor([s.conv_frames for s in spans], device=device)
    wav = _decode_rows(decoder, codes, first, count, max(s.conv_frames for s in spans))
    return [_new_samples(wav[i, 0], s) for i, s in enumerate(spans)]


def _new_samples(row: torch.Tensor, span: Span) -> torch.Tensor:
    return row[span.conv_context * SAMPLES_PER_FRAME : span.conv_frames * SAMPLES_PER_FRAME]


def _decode_graphed(decoder, spans: list[Span], device: torch.device) -> list[torch.Tensor]:
    """`_decode_batch`'s audio from replays of bucketed CUDA graphs (`codec.graphs`): one
    replay per group of spans with the same conv bucket; spans no graph fits decode eagerly."""
    groups, eager = codec_graphs.plan_groups(
        [s.codes.shape[0] for s in spans], [s.conv_frames for s in spans], MAX_BATCH_FRAMES
    )
    out: list[torch.Tensor | None] = [None] * len(spans)
    latents = partial(_latents, decoder)
    convs = partial(_conv_rows, decoder)
    for group in groups:
        members = [spans[i] for i in group.members]
        with codec_graphs.lock(decoder):
            graph = codec_graphs.batch_graph(decoder, group, latents, convs)
            if graph is None:
                eager.extend(group.members)
                continue
            wav = graph(
                pad_sequence([s.codes for s in members], batch_first=True),
                [s.context - s.conv_context for s in members],
                [s.conv_frames for s in members],
            )
            codec_graphs.note_replay(decoder)
            # copied out now: the next replay of this shape (a later group) reuses its buffer
            new = torch.cat([_new_samples(wav[r, 0], s) for r, s in enumerate(members)])
        offsets = 0
        for i, s in zip(group.members, members, strict=True):
            n = s.frames * SAMPLES_PER_FRAME
            out[i] = new[offsets : offsets + n]
            offsets += n
    if eager:
        eager.sort()
        wavs = _decode_chunked(decoder, [spans[i] for i in eager], device)
        for i, wav in zip(eager, wavs, strict=True):
            out[i] = wav
    return out


def _decode_chunked(decoder, spans: list[Span], device: torch.device) -> list[torch.Tensor]:
    """`_decode_batch` in calls of at most `MAX_BATCH_FRAMES` conv frames."""
    wavs, part, frames = [], [], 0
    for s in spans:
        if part and frames + s.conv_frames > MAX_BATCH_FRAMES:
            wavs.extend(_decode_batch(decoder, part, device))
            part, frames = [], 0
        part.append(s)
        frames += s.conv_frames
    if part:
        wavs.extend(_decode_batch(decoder, part, device))
    return wavs


def decode_spans(decoder, spans: list[Span]) -> list[np.ndarray]:
    """Each span's new audio, (n * 1920,) float32 on the host, decoded together: on CUDA by
    replaying bucketed graphs (`codec.graphs`), otherwise in one eager call."""
    if not spans:
        return []
    device = next(decoder.parameters()).device
    with torch.inference_mode():
        if device.type == "cuda":
            wavs = _decode_graphed(decoder, spans, device)
        else:
            wavs = _decode_batch(decoder, spans, device)
        # one host copy for the batch
        lengths = [w.shape[0] for w in wavs]
        flat = torch.cat(wavs).to(torch.float32).cpu().numpy()
    return list(np.split(flat, np.cumsum(lengths)[:-1])) if len(wavs) > 1 else [flat]


def warm_stream_graphs(
    decoder, first_chunk_frames: int = 2, chunk_frames: int = 12, decode=None
) -> int:
    """Capture, before any traffic, the single-stream graphs a stream's chunks replay: a
    first chunk without history (custom voice, design), a first chunk after a reference's
    codes (ICL: any window up to the widest bucket), and a later chunk, at every window
    bucket. A new reference's first chunk then never waits for a capture. `decode` runs the
    spans (an engine passes its `CodecWorker.decode`, so captures stay on the codec's one
    thread; default: `decode_spans` here). Returns the graphs held afterwards (0 off CUDA,
    where nothing is graphed)."""
    device = next(decoder.parameters()).device
    if device.type != "cuda" or codec_graphs.GRAPH_MAX_WINDOW == 0:
        return 0
    from fastqwen.codec.decoder import receptive_field  # it imports this module

    conv = receptive_field(decoder).conv_frames
    books = NUM_CODEBOOKS
    spans = [Span(torch.zeros((first_chunk_frames, books), dtype=torch.long), 0, 0)]
    for window in codec_graphs.WINDOW_BUCKETS:
        for new in (first_chunk_frames, chunk_frames):
            if window > new + conv:
                codes = torch.zeros((window, books), dtype=torch.long)
                spans.append(Span(codes, window - new, conv))
    run = decode if decode is not None else partial(decode_spans, decoder)
    for span in spans:
        run([span])
    return codec_graphs.graph_counts(decoder)["held"]


def warm_batch_graphs(
    decoder,
    max_rows: int,
    first_chunk_frames: int = 2,
    chunk_frames: int = 12,
    decode=None,
) -> int:
    """Capture, before any traffic, the graphs batches of up to `max_rows` streams replay
    (`codec.graphs.streamed_shapes`). Left to first use, each new shape's capture (tens of
    milliseconds to a few hundred) stalls the codec, so every stream's next chunk, exactly
    when load rises: on an H200 the first seconds at 5 requests/s had 0.6-0.8 s first
    chunks. `decode` as in `warm_stream_graphs`. Returns the graphs held afterwards (0 off
    CUDA)."""
    device = next(decoder.parameters()).device
    if device.type != "cuda" or codec_graphs.GRAPH_MAX_WINDOW == 0:
        return 0
    from fastqwen.codec.decoder import receptive_field  # it imports this module

    conv_context = receptive_field(decoder).conv_frames
    run = decode if decode is not None else partial(decode_spans, decoder)
    shapes = codec_graphs.streamed_shapes(max_rows, first_chunk_frames, chunk_frames, conv_context)
    with codec_graphs.warming():
        for rows, window, conv in shapes:
            run([warm_span(window, conv, conv_context)] * rows)
    return codec_graphs.graph_counts(decoder)["held"]


def warm_span(window: int, conv: int, conv_context: int) -> Span:
    """A span of zeros whose graph shape is (window, conv): `window` codes, the last few new,
    with as much conv context as fits, and `conv` conv frames in all."""
    context = min(conv_context, conv - 1, window - 1)
    new = conv - context
    codes = torch.zeros((window, NUM_CODEBOOKS), dtype=torch.long)
    return Span(codes, window - new, context)


@dataclass(eq=False)
class _Work:
    spans: list[Span]
    done: threading.Event = field(default_factory=threading.Event)
    audio: list[np.ndarray] | None = None
    error: BaseException | None = None


class CodecWorker:
    """The one thread that runs an engine's codec: every stream's spans queue here, and
    what has queued up is decoded in one batch (`decode_spans`), up to `max_frames` conv
    frames per call.

    `decode(spans)` blocks its caller until its audio is ready. A failing batch fails the
    callers in it, not the worker. `close()` ends the thread; a later `decode` starts it
    again.

    A batch rounds differently from a decode alone (other kernel shapes), so a stream's
    audio then depends on what it was batched with, by float rounding (~1e-6 here); its
    codes never do. `max_spans=1` decodes each span alone, in the same shapes as a solo
    run: audio bit-identical whatever the load (`EngineConfig.batch_invariant`).

    `stream` ("shared" or "separate", `EngineConfig.codec_stream`): on CUDA, decode on
    `loop_stream`, where the frame loop runs (the device's default stream if None; a batch
    of at most `SIDE_LANE_FRAMES` conv frames on a high-priority side stream), or always
    on a side stream of normal priority.
    """

    def __init__(
        self,
        decoder: torch.nn.Module,
        max_frames: int = MAX_BATCH_FRAMES,
        max_spans: int | None = None,
        stream: str = "shared",
        loop_stream: torch.cuda.Stream | None = None,
    ):
        if stream not in CODEC_STREAMS:
            raise ValueError(f"stream must be 'shared' or 'separate', got {stream!r}")
        self.decoder = decoder  # the 12 Hz codec decoder (`codec.decoder.codec_decoder`)
        self.device = next(self.decoder.parameters()).device
        self.max_frames = max_frames
        self.max_spans = max_spans
        self.shared = stream == "shared"
        self.loop_stream = loop_stream
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._side = None
        if self.device.type == "cuda":
            priority = torch.cuda.Stream.priority_range()[1] if self.shared else 0
            self._side = torch.cuda.Stream(self.device, priority=priority)
        self.side_batches = 0  # decoder calls made on the side stream
        self.batches = 0  # decoder calls made
        self.spans = 0  # spans decoded
        self.peak_batch = 0  # most spans in one call
        self.busy_s = 0.0  # time spent decoding (host copies of the audio included)

    def decode(self, spans: list[Span]) -> list[np.ndarray]:
        """Each span's audio, decoded with whatever else is queued."""
        if not spans:
            return []
        work = _Work(list(spans))
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="fastqwen-codec", daemon=True
                )
                self._thread.start()
            self._queue.put(work)
        work.done.wait()
        if work.error is not None:
            raise work.error
        return work.audio

    def close(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is not None:
                self._queue.put(None)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)

    def _take(self, first: _Work) -> tuple[list[_Work], bool]:
        """`first` and whatever else is queued, up to `max_frames`; True if told to stop."""
        batch, frames = [first], sum(s.conv_frames for s in first.spans)
        while frames < self.max_frames:
            try:
                work = self._queue.get_nowait()
            except queue.Empty:
                break
            if work is None:
                return batch, True
            batch.append(work)
            frames += sum(s.conv_frames for s in work.spans)
        return batch, False

    def _stream_for(self, spans: list[Span]):
        """The CUDA stream a batch decodes on (None off CUDA)."""
        if self._side is None:
            return None
        if not self.shared or sum(s.conv_frames for s in spans) <= SIDE_LANE_FRAMES:
            return self._side
        return (
            self.loop_stream
            if self.loop_stream is not None
            else torch.cuda.default_stream(self.device)
        )

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = self._take(first)
            spans = [s for work in batch for s in work.spans]
            size = self.max_spans or len(spans)
            t0 = time.perf_counter()
            stream = self._stream_for(spans)
            try:
                # No wait on another stream: the codes come from the host.
                with torch.cuda.stream(stream) if stream is not None else nullcontext():
                    audio = [
                        a
                        for i in range(0, len(spans), size)
                        for a in decode_spans(self.decoder, spans[i : i + size])
                    ]
            except Exception as error:  # noqa: BLE001 - the callers get it
                log.exception("codec decode of %d spans failed", len(spans))
                for work in batch:
                    work.error = error
                    work.done.set()
                continue
            self.busy_s += time.perf_counter() - t0
            calls = -(-len(spans) // size)
            self.batches += calls
            if stream is not None and stream is self._side:
                self.side_batches += calls
            self.spans += len(spans)
            self.peak_batch = max(self.peak_batch, min(size, len(spans)))
            i = 0
            for work in batch:
                work.audio, i = audio[i : i + len(work.spans)], i + len(work.spans)
                work.done.set()


__all__ = [
    "MAX_BATCH_FRAMES",
    "SIDE_LANE_FRAMES",
    "CodecWorker",
    "Span",
    "decode_spans",
    "warm_stream_graphs",
]
