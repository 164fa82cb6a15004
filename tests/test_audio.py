"""Reference-audio loading: every accepted input shape and every error the user can hit."""

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from fastqwen.prompts.reference_audio import SUPPORTED_FORMATS, append_silence, load_reference_audio

SR = 24_000
SAMPLES_DIR = Path(__file__).resolve().parents[1] / "samples"


def _tone(seconds: float, sr: int = SR, freq: float = 220.0) -> np.ndarray:
    t = np.arange(round(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _write(path: Path, data: np.ndarray, sr: int, subtype: str = "PCM_16") -> Path:
    sf.write(path, data, sr, subtype=subtype)
    return path


def test_mono_24k_wav_roundtrips(tmp_path):
    tone = _tone(2.0)
    wav, sr = load_reference_audio(_write(tmp_path / "a.wav", tone, SR))
    assert sr == SR
    assert wav.dtype == np.float32 and wav.ndim == 1 and wav.size == tone.size
    # 16-bit PCM quantisation is the only change.
    np.testing.assert_allclose(wav, tone, atol=1 / 2**15)


def test_str_path_is_accepted(tmp_path):
    path = _write(tmp_path / "a.wav", _tone(1.5), SR)
    wav, sr = load_reference_audio(str(path))
    assert (wav.size, sr) == (round(1.5 * SR), SR)


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.wav"
    with pytest.raises(FileNotFoundError, match="nope.wav"):
        load_reference_audio(missing)


def test_not_audio_names_path_and_formats(tmp_path):
    bogus = tmp_path / "notes.wav"
    bogus.write_text("this is not a RIFF file")
    with pytest.raises(ValueError, match="notes.wav") as err:
        load_reference_audio(bogus)
    for fmt in SUPPORTED_FORMATS:
        assert fmt in str(err.value)


def test_directory_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="directory"):
        load_reference_audio(tmp_path)


def test_stereo_file_is_mixed_down_by_mean(tmp_path, caplog):
    left, right = _tone(2.0, freq=220.0), _tone(2.0, freq=330.0)
    stereo = np.stack([left, right], axis=1)  # (frames, 2)
    path = _write(tmp_path / "stereo.wav", stereo, SR, subtype="FLOAT")
    with caplog.at_level(logging.INFO, logger="fastqwen.prompts.reference_audio"):
        wav, _ = load_reference_audio(path)
    assert wav.shape == (left.size,)
    np.testing.assert_allclose(wav, (left + right) / 2, atol=1e-6)
    assert "2-channel" in caplog.text


@pytest.mark.parametrize("layout", ["frames_channels", "channels_frames"])
def test_multichannel_array_either_layout(layout):
    chans = np.stack([_tone(1.2, freq=f) for f in (200.0, 300.0, 400.0)])  # (3, frames)
    arr = chans if layout == "channels_frames" else chans.T
    wav, sr = load_reference_audio((arr, SR))
    assert sr == SR
    np.testing.assert_allclose(wav, chans.mean(axis=0), atol=1e-6)


@pytest.mark.parametrize("orig_sr", [16_000, 22_050, 44_100, 48_000])
def test_other_rates_are_resampled_to_24k(tmp_path, orig_sr, caplog):
    seconds = 1.5
    path = _write(tmp_path / f"a_{orig_sr}.wav", _tone(seconds, sr=orig_sr), orig_sr)
    with caplog.at_level(logging.INFO, logger="fastqwen.prompts.reference_audio"):
        wav, sr = load_reference_audio(path)
    assert sr == SR
    assert abs(wav.size - seconds * SR) <= 1
    # The 220 Hz tone survives resampling: compare with a tone made at 24 kHz directly.
    core = slice(SR // 10, -SR // 10)  # skip the filter's edge transients
    np.testing.assert_allclose(wav[core], _tone(seconds)[: wav.size][core], atol=2e-3)
    assert f"{orig_sr} Hz -> 24000 Hz" in caplog.text


@pytest.mark.parametrize("orig_sr", [16_000, 22_050, 44_100, 48_000])
def test_resampling_matches_the_reference_runner(orig_sr):
    """qwen-tts 0.1.1 resamples with librosa.resample's default (soxr_hq); we must agree.

    44.1 kHz -> 24 kHz for 2 s is the case where librosa's float length rounds up by one.
    """
    librosa = pytest.importorskip("librosa")
    rng = np.random.default_rng(0)
    noise = (0.1 * rng.standard_normal(orig_sr * 2)).astype(np.float32)
    ours, _ = load_reference_audio((noise, orig_sr))
    theirs = librosa.resample(y=noise, orig_sr=orig_sr, target_sr=SR)
    np.testing.assert_array_equal(ours, theirs.astype(np.float32))


def test_target_sr_is_configurable():
    wav, sr = load_reference_audio((_tone(1.0), SR), target_sr=16_000)
    assert sr == 16_000 and wav.size == 16_000


def test_no_target_sr_keeps_the_recording_rate():
    stereo = np.stack([np.full(44100, 0.2), np.full(44100, 0.4)], axis=1).astype(np.float32)
    wav, sr = load_reference_audio((stereo, 44100), target_sr=None)
    assert sr == 44100 and wav.shape == (44100,) and np.allclose(wav, 0.3)
    with pytest.raises(ValueError, match="shorter than the minimum"):
        load_reference_audio((stereo[:1000], 44100), target_sr=None)


def test_int16_array_is_scaled_to_unit_range():
    pcm = (_tone(1.0) * 32768).astype(np.int16)
    wav, _ = load_reference_audio((pcm, SR))
    assert wav.dtype == np.float32
    np.testing.assert_allclose(wav, _tone(1.0), atol=1 / 2**15)


def test_too_short_names_duration_and_minimum(tmp_path):
    path = _write(tmp_path / "short.wav", _tone(0.4), SR)
    with pytest.raises(ValueError, match=r"0\.40 s.*minimum of 1\.00 s"):
        load_reference_audio(path)
    wav, _ = load_reference_audio(path, min_seconds=0.25)
    assert wav.size == round(0.4 * SR)


def test_too_short_is_judged_before_resampling():
    with pytest.raises(ValueError, match=r"0\.50 s"):
        load_reference_audio((_tone(0.5, sr=48_000), 48_000))


@pytest.mark.parametrize("shape", [(0,), (0, 2)])
def test_empty_array_is_rejected(shape):
    with pytest.raises(ValueError, match="empty"):
        load_reference_audio((np.zeros(shape, dtype=np.float32), SR))


def test_empty_file_is_rejected(tmp_path):
    path = _write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), SR)
    with pytest.raises(ValueError, match="empty"):
        load_reference_audio(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_samples_are_rejected(bad):
    wav = _tone(2.0)
    wav[1000] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        load_reference_audio((wav, SR))


def test_bad_sample_rate_and_input_type():
    with pytest.raises(ValueError, match="sample rate"):
        load_reference_audio((_tone(1.0), 0))
    with pytest.raises(ValueError, match="sample rate"):
        load_reference_audio((_tone(1.0), 24000.5))
    with pytest.raises(TypeError, match="path or a"):
        load_reference_audio(_tone(1.0))  # bare array: the rate is unknown


def test_append_silence():
    wav = _tone(1.0)
    padded = append_silence(wav, SR)
    assert padded.dtype == wav.dtype
    assert padded.size == wav.size + SR // 2
    np.testing.assert_array_equal(padded[: wav.size], wav)
    assert not padded[wav.size :].any()
    assert append_silence(wav, SR, seconds=0.0).size == wav.size
    with pytest.raises(ValueError, match=">= 0"):
        append_silence(wav, SR, seconds=-1)
    with pytest.raises(ValueError, match="1-D"):
        append_silence(np.zeros((2, 10), dtype=np.float32), SR)


@pytest.mark.parametrize("name", ["ref_audio.wav", "ref_audio_2.wav", "ref_audio_3.wav"])
def test_committed_reference_recordings_load(name):
    wav, sr = load_reference_audio(SAMPLES_DIR / name)
    info = sf.info(SAMPLES_DIR / name)
    assert (info.samplerate, info.channels, info.subtype) == (SR, 1, "PCM_16")
    assert sr == SR and 6.0 <= wav.size / SR <= 12.0
    assert np.abs(wav).max() > 0.1  # actual speech, not silence


def test_urls_are_refused_as_unsupported():
    # Issue 15: a URL was reported as "not found: https:/example.com/a.wav".
    with pytest.raises(ValueError, match=r"https://example\.com/a\.wav is a URL; URLs are not"):
        load_reference_audio("https://example.com/a.wav")
