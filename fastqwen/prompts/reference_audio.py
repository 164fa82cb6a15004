"""Reference audio for voice cloning: load, check, mix down to mono, resample to 24 kHz.

The Base (voice clone) models take a reference recording twice: the codec encoder turns it
into reference codes (ICL mode) and the speaker encoder turns it into an x-vector. Both run
at 24 kHz on mono float32 audio.

The official `qwen-tts` 0.1.1 runner loads a path with `librosa.load(path, sr=None,
mono=True)` (soundfile underneath), mixes channels down by their mean and resamples with
`librosa.resample`, whose default is soxr at "HQ" quality plus a length fix-up. We do the
same steps with soundfile and soxr directly (librosa is slow to import), so the engine and
the reference see the same samples (a test checks this against librosa), and we add the
checks the reference lacks: a clear error for a missing, unreadable, empty, non-finite or
too-short recording.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from fastqwen.constants import SAMPLE_RATE

logger = logging.getLogger(__name__)

# What libsndfile (bundled in the soundfile wheels) reads; MP3 needs libsndfile >= 1.1.
SUPPORTED_FORMATS = ("wav", "flac", "ogg", "mp3", "aiff", "au")
# librosa.resample's default res_type, passed straight through to soxr.
RESAMPLE_QUALITY = "soxr_hq"
URL_SCHEMES = ("http://", "https://", "ftp://", "s3://", "gs://")  # refused with a clear error

AudioInput = str | Path | tuple[np.ndarray, int]


def load_reference_audio(
    audio: AudioInput,
    *,
    target_sr: int | None = SAMPLE_RATE,
    min_seconds: float = 1.0,
) -> tuple[np.ndarray, int]:
    """Load a reference recording as float32 mono at `target_sr`.

    Args:
        audio: a path to an audio file, or a `(samples, sample_rate)` tuple. A 2-D array is
            taken to hold channels on its shorter axis, so both `(frames, channels)`
            (soundfile) and `(channels, frames)` (torchaudio) work. Integer arrays are
            scaled from their full range to [-1, 1].
        target_sr: sample rate to return; Qwen3-TTS's codec and speaker encoder use 24 kHz.
            None keeps the recording's own rate (checked, mixed to mono, not resampled).
        min_seconds: shortest duration accepted.

    Returns:
        `(wav, sr)`, where `wav` is a 1-D float32 array and `sr` is `target_sr` (or the
        recording's rate when `target_sr` is None).

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the file is not readable audio, or the audio is empty, contains NaN or
            infinity, or is shorter than `min_seconds`.
        TypeError: `audio` is neither a path nor a `(np.ndarray, int)` tuple.
    """
    if target_sr is not None and target_sr <= 0:
        raise ValueError(f"target_sr must be a positive sample rate in Hz, got {target_sr}")
    if isinstance(audio, str) and audio.lower().startswith(URL_SCHEMES):
        raise ValueError(
            f"reference audio {audio} is a URL; URLs are not supported: download the file "
            "and pass its path, or pass (samples, sample_rate)"
        )
    if isinstance(audio, (str, Path)):
        wav, sr, source = *_read_file(Path(audio)), str(audio)
    elif isinstance(audio, tuple) and len(audio) == 2 and isinstance(audio[0], np.ndarray):
        wav, sr, source = audio[0], audio[1], "the given array"
        if isinstance(sr, bool) or not isinstance(sr, (int, np.integer)) or sr <= 0:
            raise ValueError(
                f"sample rate must be a positive integer in Hz, got {sr!r}; "
                "pass the array as (samples, sample_rate)"
            )
        sr = int(sr)
    else:
        raise TypeError(
            f"reference audio must be a path or a (np.ndarray, sample_rate) tuple, "
            f"got {type(audio).__name__}"
        )

    wav = _to_mono_float32(wav, source)
    if wav.size == 0:
        raise ValueError(f"reference audio from {source} is empty (0 samples)")
    if not np.isfinite(wav).all():
        raise ValueError(
            f"reference audio from {source} contains NaN or infinite samples; "
            "re-export the recording"
        )
    duration = wav.size / sr
    if duration < min_seconds:
        raise ValueError(
            f"reference audio from {source} is {duration:.2f} s long, shorter than the "
            f"minimum of {min_seconds:.2f} s; use a recording of a few seconds of speech"
        )
    if not np.any(wav):
        logger.warning("reference audio from %s is all zeros (silence)", source)

    if target_sr is None:
        return np.ascontiguousarray(wav, dtype=np.float32), sr
    if sr != target_sr:
        logger.info("resampling reference audio from %s: %d Hz -> %d Hz", source, sr, target_sr)
        wav = _resample_like_librosa(wav, sr, target_sr)
    return np.ascontiguousarray(wav, dtype=np.float32), target_sr


def append_silence(wav: np.ndarray, sr: int, seconds: float = 0.5) -> np.ndarray:
    """Return `wav` followed by `seconds` of zeros.

    The anchor pads ICL reference audio with 0.5 s of silence so that the last reference
    phoneme does not bleed into the start of the generated speech.

    Args:
        wav: 1-D audio.
        sr: its sample rate in Hz.
        seconds: length of the silence; 0 returns a copy.

    Returns:
        A new 1-D array of the same dtype, `round(seconds * sr)` samples longer.
    """
    if wav.ndim != 1:
        raise ValueError(f"append_silence expects 1-D mono audio, got shape {wav.shape}")
    if seconds < 0:
        raise ValueError(f"seconds must be >= 0, got {seconds}")
    pad = np.zeros(round(seconds * sr), dtype=wav.dtype)
    return np.concatenate([wav, pad])


def _resample_like_librosa(wav: np.ndarray, sr: int, target_sr: int) -> np.ndarray:
    out = soxr.resample(wav, sr, target_sr, quality=RESAMPLE_QUALITY)
    # librosa then fixes the length to ceil(n * ratio) computed in floating point, which can
    # be one sample more than soxr returns (88200 * 24000/44100 = 48000.000000000004), and
    # pads with zeros. Do the same so the codec sees exactly the reference runner's samples.
    n_out = int(np.ceil(wav.size * (float(target_sr) / sr)))
    if out.size < n_out:
        out = np.pad(out, (0, n_out - out.size))
    return out[:n_out].astype(np.float32, copy=False)


def _read_file(path: Path) -> tuple[np.ndarray, int]:
    if not path.exists():
        raise FileNotFoundError(f"reference audio file not found: {path}")
    if path.is_dir():
        raise ValueError(f"reference audio path is a directory, not an audio file: {path}")
    try:
        wav, sr = sf.read(path, dtype="float32", always_2d=False)
    except RuntimeError as err:  # soundfile.LibsndfileError: not audio, or a format it lacks
        raise ValueError(
            f"cannot read {path} as audio ({err}); supported formats: "
            f"{', '.join(SUPPORTED_FORMATS)}"
        ) from err
    return wav, int(sr)


def _to_mono_float32(wav: np.ndarray, source: str) -> np.ndarray:
    if np.issubdtype(wav.dtype, np.integer):
        # Full-scale integer PCM -> [-1, 1), as soundfile does when it reads int files.
        wav = wav.astype(np.float32) / np.float32(-np.iinfo(wav.dtype).min)
    elif not np.issubdtype(wav.dtype, np.floating):
        raise ValueError(
            f"reference audio from {source} has dtype {wav.dtype}; expected float or int"
        )
    wav = wav.astype(np.float32, copy=False)
    if wav.size == 0:
        return wav.reshape(0)
    if wav.ndim == 2:
        channel_axis = 0 if wav.shape[0] < wav.shape[1] else 1
        channels = wav.shape[channel_axis]
        if channels > 1:
            logger.info("mixing %d-channel reference audio from %s down to mono", channels, source)
        wav = wav.mean(axis=channel_axis, dtype=np.float32)
    elif wav.ndim != 1:
        raise ValueError(
            f"reference audio from {source} has shape {wav.shape}; expected 1-D mono or "
            "2-D (frames, channels)"
        )
    return wav
