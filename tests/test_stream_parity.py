"""The stream check: streamed audio judged against the codec's own rounding on the same codes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastqwen.codec.decoder import StreamingDecoder, decode_codes
from fastqwen.constants import NUM_CODEBOOKS, SAMPLES_PER_FRAME
from fastqwen.verify.streaming import (
    BOUND_FACTOR,
    StreamParity,
    chunk_ends,
    codec_rounding,
    compare_stream,
)


def _codes(frames: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2048, (frames, NUM_CODEBOOKS), generator=gen)


def _stream(speech_tokenizer, codes, ref_codes=None) -> np.ndarray:
    decoder = StreamingDecoder(speech_tokenizer, first_chunk_frames=2, chunk_frames=12)
    if ref_codes is not None:
        decoder.prime(ref_codes)
    pieces = [decoder.push(codes[i : i + 1]) for i in range(codes.shape[0])]
    pieces.append(decoder.flush())
    return np.concatenate([p for p in pieces if p is not None])


@pytest.fixture(scope="module")
def speech_tokenizer(tiny_model):
    return tiny_model("custom_voice").tts.model.speech_tokenizer


def test_chunk_ends():
    assert chunk_ends(30, 2, 12) == [2, 14, 26]
    assert chunk_ends(2, 2, 12) == []
    assert chunk_ends(3, 2, 12) == [2]


def test_stream_is_within_the_codec_rounding(speech_tokenizer):
    codes = _codes(40, seed=3)
    whole = decode_codes(speech_tokenizer, codes)
    check = compare_stream(_stream(speech_tokenizer, codes), whole, speech_tokenizer, codes)
    print(check.describe())
    assert check.same_length
    assert check.codec_rounding < 1e-3  # float32 on the CPU
    assert check.within_bound, check.describe()
    assert check.summary()["within_bound"] is True


def test_a_wrong_chunk_is_caught(speech_tokenizer):
    codes = _codes(40, seed=4)
    whole = decode_codes(speech_tokenizer, codes)
    streamed = _stream(speech_tokenizer, codes)
    streamed[14 * SAMPLES_PER_FRAME : 26 * SAMPLES_PER_FRAME] *= 0.5  # one chunk at half level
    check = compare_stream(streamed, whole, speech_tokenizer, codes)
    assert not check.within_bound
    assert "OUTSIDE" in check.describe()


def test_lengths_must_match():
    check = StreamParity(max_abs_diff=0.0, codec_rounding=0.0, same_length=False)
    assert not check.within_bound
    assert check.bound > 0


def test_icl_reference_codes_are_context(speech_tokenizer):
    ref, codes = _codes(20, seed=5), _codes(30, seed=6)
    whole = decode_codes(speech_tokenizer, torch.cat([ref, codes]))[20 * SAMPLES_PER_FRAME :]
    streamed = _stream(speech_tokenizer, codes, ref_codes=ref)
    check = compare_stream(streamed, whole, speech_tokenizer, codes, ref)
    assert check.within_bound, check.describe()
    # decoded without the reference codes, the same frames sound different: the check notices
    alone = decode_codes(speech_tokenizer, codes)
    assert not compare_stream(alone, whole, speech_tokenizer, codes, ref).within_bound


def test_rounding_grows_the_bound_linearly():
    check = StreamParity(max_abs_diff=0.3, codec_rounding=0.2, same_length=True)
    assert check.bound == pytest.approx(BOUND_FACTOR * 0.2 + 1e-5)
    assert check.within_bound


def test_codec_rounding_without_prefixes_is_zero(speech_tokenizer):
    assert codec_rounding(speech_tokenizer, _codes(5, seed=1), lengths=[]) == 0.0
