"""Codec decoding: codes (T, 16) -> 24 kHz audio, in full or streamed.

`decode_codes` calls the reference path (`Qwen3TTSTokenizer.decode`) unchanged.
`StreamingDecoder` turns frames, pushed as the engine makes them, into audio
that equals that full decode up to float rounding.

Why streaming can be exact (qwen-tts 0.1.1, `Qwen3TTSTokenizerV2Decoder`):
- The decoder is causal: output sample t depends only on frames <= t // 1920.
  Every conv pads on the left only, and each transposed conv trims its right
  overhang, so there is no lookahead.
- Its look-back, in frames (`receptive_field`):
  * `pre_conv` (kernel 3): 2 frames;
  * the transformer: each of its 8 sliding-window layers sees 71 earlier
    frames (window 72 includes the query), so 8 * 71 = 568 frames;
  * the upsampling and vocoder convs after it: ~9.4 frames, rounded up to 10.
  That makes 580 frames (46 s) in all. The anchor's 25 frames of context is not
  enough for exactness.
- The reference never uses that much history itself. `chunked_decode` runs the
  decoder on 300-frame windows, each with 25 frames of left context.
  So frame f of the reference's audio is a function of the codes from
  `reference_window_start(f)` to f, with positions counted from that start.

How the streamer matches it: each chunk is decoded on a window that starts where
the reference's window starts. A chunk that crosses a 300-frame boundary is
split there. So the streamer makes the same computation as the reference, with
the same rotary positions. Cost is kept down by splitting the decoder in two:
- quantizer + pre_conv + transformer: cheap, run at 12.5 Hz on the whole window;
- upsampling + vocoder convs: nearly all the FLOPs. They run on the new frames
  plus only `conv_frames` (10) frames of context, because nothing earlier can
  reach the new samples.
So each chunk costs about (chunk + 10) frames of conv work plus a transformer pass
over at most 325 + chunk frames.

Differences left over are float rounding only: a conv or an attention kernel run
on a different length rounds differently. The reference has the same effect:
decoding codes[:n] is not bit-identical to the first n frames of decoding more.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import (
    Qwen3TTSTokenizerV2CausalConvNet,
    Qwen3TTSTokenizerV2CausalTransConvNet,
    Qwen3TTSTokenizerV2Decoder,
)

from fastqwen.codec.batch import Span, decode_spans
from fastqwen.constants import NUM_CODEBOOKS, SAMPLES_PER_FRAME

logger = logging.getLogger(__name__)

# `Qwen3TTSTokenizerV2Decoder.chunked_decode` defaults in qwen-tts 0.1.1; the wrapper's
# `decode` always uses them. tests/test_codec.py checks them against the installed package.
REFERENCE_CHUNK_FRAMES = 300
REFERENCE_LEFT_CONTEXT_FRAMES = 25


def frames_to_samples(n: int) -> int:
    """Number of 24 kHz samples the codec makes from `n` frames (1920 per frame)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"frames_to_samples: n={n!r} must be an int >= 0")
    return n * SAMPLES_PER_FRAME


def reference_window_start(frame: int) -> int:
    """First frame of the window on which the reference decodes `frame`.

    The reference decodes 300-frame chunks, each with 25 frames of left context
    (none for the first chunk).
    """
    chunk_start = frame - frame % REFERENCE_CHUNK_FRAMES
    return max(0, chunk_start - REFERENCE_LEFT_CONTEXT_FRAMES)


@dataclass(frozen=True)
class DecoderReceptiveField:
    """Frames of history that one output frame of the codec decoder depends on."""

    pre_conv_frames: int  # causal conv on the dequantized codes (kernel 3 -> 2)
    transformer_frames: int  # layers * (sliding_window - 1)
    conv_frames: int  # upsampling + vocoder convs after the transformer, rounded up

    @property
    def total_frames(self) -> int:
        return self.pre_conv_frames + self.transformer_frames + self.conv_frames


def receptive_field(speech_tokenizer) -> DecoderReceptiveField:
    """Work out the decoder's look-back from its modules and config.

    The conv part walks the upsampling and vocoder modules in forward order and
    keeps track of the sample rate, in samples per frame, at each point. A causal
    conv with effective kernel k looks (k - 1) samples back. A transposed conv
    with kernel k and stride s looks ceil(k / s) - 1 input samples back. The
    residual units form a chain, so their look-backs add up.
    """
    decoder = _decoder_of(speech_tokenizer)
    cfg = decoder.config
    if any(t != "sliding_attention" for t in cfg.layer_types):
        raise ValueError(f"decoder layer_types={cfg.layer_types}: expected sliding_attention only")
    rate = 1  # samples per frame at the current point of the conv stack
    lookback = 0.0  # in frames
    for module in [*decoder.upsample.modules(), *decoder.decoder.modules()]:
        if isinstance(module, Qwen3TTSTokenizerV2CausalConvNet):
            if module.stride != 1:
                raise ValueError(f"decoder conv stride={module.stride}: expected 1")
            lookback += (module.kernel_size - 1) / rate
        elif isinstance(module, Qwen3TTSTokenizerV2CausalTransConvNet):
            kernel, stride = module.conv.kernel_size[0], module.conv.stride[0]
            lookback += (math.ceil(kernel / stride) - 1) / rate
            rate *= stride
    if rate != decoder.total_upsample:
        raise ValueError(f"convs upsample {rate}x, decoder says {decoder.total_upsample}x")
    return DecoderReceptiveField(
        pre_conv_frames=decoder.pre_conv.kernel_size - 1,
        transformer_frames=cfg.num_hidden_layers * (cfg.sliding_window - 1),
        conv_frames=math.ceil(lookback - 1e-9),
    )


def decode_codes(speech_tokenizer, codes: torch.Tensor) -> np.ndarray:
    """Decode a whole utterance exactly as `qwen_tts` does after generation.

    Args:
        speech_tokenizer: the reference wrapper `qwen_tts.Qwen3TTSTokenizer`
            (`Qwen3TTSModel.model.speech_tokenizer`).
        codes: (T, 16) integer codes.

    Returns:
        (T * 1920,) float32 waveform at 24 kHz.
    """
    codes = _check_codes(codes)
    if codes.shape[0] == 0:
        return np.zeros(0, dtype=np.float32)
    wavs, _ = speech_tokenizer.decode([{"audio_codes": codes}])
    return wavs[0]


def decode_utterance(
    speech_tokenizer, codes: torch.Tensor, ref_codes: torch.Tensor | None = None
) -> tuple[np.ndarray, int]:
    """Decode generated codes as `generate_voice_clone` does: ICL reference codes are
    prepended for context, and the waveform is cut at ref_len / total_len."""
    if ref_codes is None:
        wavs, sr = speech_tokenizer.decode([{"audio_codes": codes}])
        return wavs[0], sr
    full = torch.cat([ref_codes.to(codes.device), codes], dim=0)
    wavs, sr = speech_tokenizer.decode([{"audio_codes": full}])
    cut = int(ref_codes.shape[0] / max(full.shape[0], 1) * wavs[0].shape[0])
    return wavs[0][cut:], sr


class StreamingDecoder:
    """Turn frames pushed one or a few at a time into audio chunks.

    The concatenated output equals `decode_codes` on all the frames, up to
    float rounding, for any way of splitting the frames into pushes and chunks.
    The module docstring explains why.

    Args:
        speech_tokenizer: `qwen_tts.Qwen3TTSTokenizer` (or its `.model`).
        first_chunk_frames: frames in the first chunk; kept small for low latency
            (2 frames = 160 ms).
        chunk_frames: frames in each later chunk.
        left_context_frames: most frames of history decoded with each chunk.
            None (the default) means all the history the reference itself uses:
            back to the start of its 300-frame window, at most 325 frames. This is
            exact. A smaller int (the anchor uses 25) shortens the transformer
            pass, but the audio is then approximate wherever the full history
            would have been longer. The decoder sees up to
            `receptive_field(...).total_frames` (580) frames back.
            The conv stage never gets more than 10 frames of context, so this
            setting changes only the cheap part of the work. On CPU, at full size,
            exact decoding costs about what 25 frames decoded in full would.
        decode: turns a list of `codec.batch.Span` into their audio; by default decoded
            here and now (`decode_spans`). An engine passes its `CodecWorker.decode`, so
            the chunks of all its streams are decoded together.
    """

    def __init__(
        self,
        speech_tokenizer,
        *,
        first_chunk_frames: int = 2,
        chunk_frames: int = 12,
        left_context_frames: int | None = None,
        decode: Callable[[list[Span]], list[np.ndarray]] | None = None,
    ):
        self._decoder = _decoder_of(speech_tokenizer)
        self._decode = decode if decode is not None else partial(decode_spans, self._decoder)
        self.first_chunk_frames = _check_count("first_chunk_frames", first_chunk_frames, minimum=1)
        self.chunk_frames = _check_count("chunk_frames", chunk_frames, minimum=1)
        if left_context_frames is not None:
            _check_count("left_context_frames", left_context_frames, minimum=0)
        self.left_context_frames = left_context_frames
        if self._decoder.total_upsample != SAMPLES_PER_FRAME:
            raise ValueError(
                f"codec makes {self._decoder.total_upsample} samples per frame, "
                f"expected SAMPLES_PER_FRAME={SAMPLES_PER_FRAME}"
            )
        self._conv_context = receptive_field(self._decoder).conv_frames
        self._codebook_size = self._decoder.config.codebook_size
        # Codes wait on the host: the range check below needs no device sync, and a
        # batched decode copies every stream's window to the device in one go.
        self._device = torch.device("cpu")
        self.reset()

    def reset(self) -> None:
        """Forget all frames and start a new utterance."""
        # (kept, 16): the history later chunks can still see, then the pending frames
        self._codes = torch.empty((0, NUM_CODEBOOKS), dtype=torch.long, device=self._device)
        self._first_kept = 0  # absolute frame index of self._codes[0]
        self._primed = 0  # frames given to prime(): context only, never returned as audio
        self._pushed = 0  # frames received (primed ones included)
        self._emitted = 0  # frames whose audio has been returned (or that are primed)

    def prime(self, codes: torch.Tensor) -> None:
        """Add frames as history only; their audio is never returned.

        This is for ICL voice clone: the reference decodes the reference-audio
        codes followed by the generated codes, then cuts the reference part off.
        Frame numbering, and so the reference's 300-frame windows, count the
        primed frames too. Call this before the first `push`.
        """
        if self._pushed > self._primed:
            pushed = self._pushed - self._primed
            raise ValueError(f"prime() after {pushed} pushed frames; call it before push()")
        codes = _check_codes(codes).to(self._device, torch.long)
        self._codes = torch.cat([self._codes, codes])  # (kept + k, 16)
        self._primed += codes.shape[0]
        self._pushed = self._emitted = self._primed

    @property
    def pending_frames(self) -> int:
        """Frames received whose audio has not been returned yet."""
        return self._pushed - self._emitted

    @property
    def frames_to_next_chunk(self) -> int:
        """Frames still to push before `push` returns the next chunk's audio."""
        return max(1, self._next_chunk_frames() - self.pending_frames)

    def push(self, codes: torch.Tensor) -> np.ndarray | None:
        """Add frames and return the audio of every chunk they complete.

        Args:
            codes: (k, 16) integer codes, or (16,) for a single frame.

        Returns:
            float32 audio of the completed chunks, or None when no chunk is complete yet.
        """
        codes = _check_codes(codes).to(self._device, torch.long)
        self._codes = torch.cat([self._codes, codes])  # (kept + k, 16)
        self._pushed += codes.shape[0]
        pieces = []
        while self.pending_frames >= (need := self._next_chunk_frames()):
            pieces.append(self._emit(self._emitted + need))
        return np.concatenate(pieces) if pieces else None

    def flush(self) -> np.ndarray | None:
        """Return the audio of all frames not yet returned (None if there are none).

        The stream may go on after a flush; the audio stays exact.
        """
        return self._emit(self._pushed) if self.pending_frames else None

    def _next_chunk_frames(self) -> int:
        return self.first_chunk_frames if self._emitted == self._primed else self.chunk_frames

    def _window_start(self, frame: int) -> int:
        start = reference_window_start(frame)
        if self.left_context_frames is not None:
            start = max(start, frame - self.left_context_frames)
        return start

    def _emit(self, end: int) -> np.ndarray:
        new = self._codes[self._emitted - self._first_kept : end - self._first_kept]  # (n, 16)
        bad = (new < 0) | (new >= self._codebook_size)
        if bad.any():  # one host sync per chunk; the audio goes to the host anyway
            frame, book = (int(i) for i in bad.nonzero()[0])
            value = int(new[frame, book])
            # Drop the pending frames so the stream stays usable.
            self._codes = self._codes[: self._emitted - self._first_kept]
            self._pushed = self._emitted
            raise ValueError(
                f"code {value} at frame {self._emitted + frame}, codebook {book} is outside "
                f"0..{self._codebook_size - 1}; push audio frames only (no EOS). "
                "The pending frames were dropped."
            )
        spans = []
        start = self._emitted
        while start < end:
            # Never let one decode span two reference windows: they see different history.
            window_end = start - start % REFERENCE_CHUNK_FRAMES + REFERENCE_CHUNK_FRAMES
            stop = min(end, window_end)
            spans.append(self._span(start, stop))
            start = stop
        pieces = self._decode(spans)
        self._emitted = end
        drop = self._window_start(end) - self._first_kept  # history no later chunk can see
        self._codes = self._codes[drop:]
        self._first_kept += drop
        return np.concatenate(pieces)

    def _span(self, start: int, stop: int) -> Span:
        """Frames start..stop, decoded on the window the reference decodes them on."""
        window = self._window_start(start)
        context = start - window
        codes = self._codes[window - self._first_kept : stop - self._first_kept]  # (W, 16)
        logger.debug("frames %d..%d: window from %d", start, stop, window)
        return Span(codes, context, min(context, self._conv_context))


def utterance_spans(codes: torch.Tensor, conv_context: int, first: int = 0) -> list[Span]:
    """The spans that decode frames `first`.. of an utterance (T, 16) as the reference's
    `chunked_decode` does: each 300-frame window with its left context."""
    spans = []
    start = first
    while start < codes.shape[0]:
        window_end = start - start % REFERENCE_CHUNK_FRAMES + REFERENCE_CHUNK_FRAMES
        stop = min(codes.shape[0], window_end)
        window = reference_window_start(start)
        context = start - window
        spans.append(Span(codes[window:stop], context, min(context, conv_context)))
        start = stop
    return spans


def codec_decoder(speech_tokenizer) -> Qwen3TTSTokenizerV2Decoder:
    """The 12 Hz decoder of a `Qwen3TTSTokenizer`, of a `Qwen3TTSTokenizerV2Model`, or itself."""
    return _decoder_of(speech_tokenizer)


def _decoder_of(speech_tokenizer) -> Qwen3TTSTokenizerV2Decoder:
    """The 12 Hz decoder of a `Qwen3TTSTokenizer`, of a `Qwen3TTSTokenizerV2Model`, or itself."""
    obj = speech_tokenizer
    for _ in range(3):
        if isinstance(obj, Qwen3TTSTokenizerV2Decoder):
            return obj
        obj = getattr(obj, "model", None) if not hasattr(obj, "decoder") else obj.decoder
    raise ValueError(
        f"speech_tokenizer={type(speech_tokenizer).__name__} holds no 12 Hz codec decoder; "
        "pass Qwen3TTSModel.model.speech_tokenizer"
    )


def _check_count(name: str, value, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an int >= {minimum}")
    return value


def _check_codes(codes) -> torch.Tensor:
    codes = torch.as_tensor(codes)
    if codes.ndim == 1:
        codes = codes.unsqueeze(0)  # one frame
    if codes.ndim != 2 or codes.shape[1] != NUM_CODEBOOKS:
        raise ValueError(f"codes of shape {tuple(codes.shape)}: expected (frames, {NUM_CODEBOOKS})")
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise ValueError(f"codes of dtype {codes.dtype}: expected an integer dtype")
    return codes


def utterance_audio(
    codes: torch.Tensor,
    ref_codes: torch.Tensor | None,
    conv_context: int,
    decode: Callable[[list[Span]], list[np.ndarray]],
) -> np.ndarray:
    """`decode_utterance`'s audio through `decode` (a `CodecWorker`'s, so many utterances
    share a batch): the reference's windows, and for ICL its cut after the reference codes
    (`int(ref / total * samples)`, which can fall one sample before the frame boundary).
    Equal to `decode_utterance` up to float rounding."""
    codes = _check_codes(codes).cpu()
    if ref_codes is None:
        return _joined(decode(utterance_spans(codes, conv_context)))
    full = torch.cat([_check_codes(ref_codes).cpu(), codes])
    cut = int(ref_codes.shape[0] / max(full.shape[0], 1) * full.shape[0] * SAMPLES_PER_FRAME)
    first = cut // SAMPLES_PER_FRAME  # the frame the cut falls in: decoded from there on
    audio = _joined(decode(utterance_spans(full, conv_context, first)))
    return audio[cut - first * SAMPLES_PER_FRAME :]


def _joined(pieces: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
