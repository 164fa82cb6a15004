"""Streamed audio against the whole-utterance decode, judged by the codec's own rounding.

The codec is deterministic for a given input length, but a conv or attention kernel run on
another length rounds differently, so `decode(codes[:n])` is not bit-identical to the first
n frames of `decode(codes)`, in the reference too. A stream decodes windows of other lengths
than the whole utterance, so it can only be "equal" up to that rounding. We measure it on
the same codes, by decoding prefixes the way the reference decodes (`decode_codes`), and
call the stream equal when its difference stays within `BOUND_FACTOR` times that.

How big that rounding is depends on the precision: on CPU in float32 it is ~1e-5; on CUDA in
bfloat16 (the codec's dtype when the model loads in bf16), or float32 with TF32 convolutions
(cuDNN's default), random-weight codecs that saturate at +-1 reach 0.05-0.35, and the
stream's difference measured there was the same size (bench/results/*/codec_stream_check.json).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fastqwen.codec.decoder import decode_codes
from fastqwen.constants import SAMPLES_PER_FRAME

BOUND_FACTOR = 2.0  # prefix decodes sample a few lengths; the stream decodes many more
BOUND_FLOOR = 1e-5  # float32 rounding where the codec is otherwise exact (CPU)


@dataclass(frozen=True)
class StreamParity:
    """Streamed audio vs the non-streamed audio of the same codes."""

    max_abs_diff: float  # over the common length
    codec_rounding: float  # max |decode(prefix) - decode(all)| over the prefixes tried
    same_length: bool

    @property
    def bound(self) -> float:
        return BOUND_FACTOR * self.codec_rounding + BOUND_FLOOR

    @property
    def within_bound(self) -> bool:
        return self.same_length and self.max_abs_diff <= self.bound

    def describe(self) -> str:
        verdict = "within" if self.within_bound else "OUTSIDE"
        length = "" if self.same_length else " (lengths differ)"
        return (
            f"stream vs whole: max |diff| {self.max_abs_diff:.2e}, {verdict} the bound "
            f"{self.bound:.2e} ({BOUND_FACTOR:g} x codec rounding {self.codec_rounding:.2e})"
            f"{length}"
        )

    def summary(self) -> dict:
        return {
            "max_abs_diff_vs_generate": self.max_abs_diff,
            "codec_rounding": self.codec_rounding,
            "bound": self.bound,
            "within_bound": self.within_bound,
            "same_length": self.same_length,
        }


def chunk_ends(frames: int, first_chunk_frames: int, chunk_frames: int) -> list[int]:
    """Frame counts at which a stream with these chunk sizes has emitted audio."""
    ends, end = [], first_chunk_frames
    while end < frames:
        ends.append(end)
        end += chunk_frames
    return ends


def codec_rounding(
    speech_tokenizer,
    codes: torch.Tensor,
    ref_codes: torch.Tensor | None = None,
    lengths: list[int] | None = None,
) -> float:
    """Max |decode(codes[:n]) - decode(codes)[:n]| over `lengths` (frames of `codes`).

    ICL reference codes, if given, are prepended as the reference decodes them, and both
    sides are cut exactly at the reference/generated boundary.
    """
    frames = int(codes.shape[0])
    lengths = [n for n in (lengths or []) if 0 < n < frames]
    if not lengths:
        return 0.0
    ref = 0 if ref_codes is None else int(ref_codes.shape[0])

    def decode(n: int) -> np.ndarray:
        part = (
            codes[:n] if ref_codes is None else torch.cat([ref_codes.to(codes.device), codes[:n]])
        )
        return decode_codes(speech_tokenizer, part)[ref * SAMPLES_PER_FRAME :]

    whole = decode(frames)
    worst = 0.0
    for n in lengths:
        prefix = decode(n)
        worst = max(worst, float(np.abs(prefix - whole[: len(prefix)]).max()))
    return worst


def compare_stream(
    streamed: np.ndarray,
    whole: np.ndarray,
    speech_tokenizer,
    codes: torch.Tensor,
    ref_codes: torch.Tensor | None = None,
    *,
    first_chunk_frames: int = 2,
    chunk_frames: int = 12,
    prefixes: int = 4,
) -> StreamParity:
    """Judge a stream's audio against the whole decode of the same `codes` (frames, 16).

    `prefixes` chunk ends (the first ones, where a stream's windows differ most from the
    whole utterance's, and the last) are decoded to measure the codec's rounding; each
    costs one decode of that length.
    """
    n = min(len(streamed), len(whole))
    diff = float(np.abs(streamed[:n] - whole[:n]).max()) if n else 0.0
    ends = chunk_ends(int(codes.shape[0]), first_chunk_frames, chunk_frames)
    picked = sorted(set(ends[: max(prefixes - 1, 1)] + ends[-1:]))
    return StreamParity(
        max_abs_diff=diff,
        codec_rounding=codec_rounding(speech_tokenizer, codes, ref_codes, picked),
        same_length=len(streamed) == len(whole),
    )
