"""Response encodings: raw PCM16, WAV (whole, or streamed with a placeholder size) and FLAC.

PCM and WAV are written here (FLAC from the same PCM16) so that a streamed response and a
whole one quantize each sample the same way: the chunks of a stream concatenate to exactly
the bytes of the whole file's data (up to the codec's own float rounding between the two).
"""

from __future__ import annotations

import io
import struct

import numpy as np
import soundfile as sf

FORMATS = ("wav", "pcm", "flac")
STREAM_FORMATS = ("wav", "pcm")  # FLAC needs the whole signal before its header is final
MEDIA_TYPES = {"wav": "audio/wav", "pcm": "audio/pcm", "flac": "audio/flac"}
UNKNOWN_SIZE = 0xFFFFFFFF  # RIFF and data sizes of a streamed WAV, as other servers send


def pcm16(audio: np.ndarray) -> bytes:
    """Float samples in [-1, 1] as little-endian signed 16-bit PCM (clipped, rounded)."""
    scaled = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0) * 32767.0
    return np.rint(scaled).astype("<i2").tobytes()


def wav_header(sample_rate: int, data_bytes: int | None = None) -> bytes:
    """A 44-byte mono PCM16 WAV header; `data_bytes=None` for a stream of unknown length."""
    if data_bytes is None:
        riff_size = data_size = UNKNOWN_SIZE
    else:
        riff_size, data_size = 36 + data_bytes, data_bytes
    byte_rate = sample_rate * 2
    return (
        b"RIFF"
        + struct.pack("<I", riff_size)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, byte_rate, 2, 16)
        + b"data"
        + struct.pack("<I", data_size)
    )


def encode(audio: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    """The whole utterance as one response body in `fmt` (one of FORMATS)."""
    if fmt == "pcm":
        return pcm16(audio)
    if fmt == "wav":
        data = pcm16(audio)
        return wav_header(sample_rate, len(data)) + data
    if fmt == "flac":
        out = io.BytesIO()
        # From our PCM16, so FLAC holds exactly the samples of the WAV and PCM responses
        # (libsndfile's own float conversion rounds differently).
        samples = np.frombuffer(pcm16(audio), dtype="<i2")
        sf.write(out, samples, sample_rate, format="FLAC", subtype="PCM_16")
        return out.getvalue()
    raise ValueError(f"unknown audio format {fmt!r}; choose one of: {', '.join(FORMATS)}")
