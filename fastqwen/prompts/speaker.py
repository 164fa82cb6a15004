"""A reference's speaker embedding (x-vector), computed as qwen-tts computes it.

`Qwen3TTSForConditionalGeneration.extract_speaker_embedding` builds librosa's mel filter
bank and a Hann window on every call (~2 ms of host time for a 128 x 513 bank) and scans
the samples twice for a range warning, all on the path to a new voice's first audio. This
module keeps the bank and the window and runs the same ops in the same order on the same
device (the host), so the embedding is bit-identical (a test checks it).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

# qwen-tts 0.1.1's extract_speaker_embedding settings (24 kHz input)
N_FFT, NUM_MELS, SAMPLE_RATE, HOP, WIN, FMIN, FMAX = 1024, 128, 24_000, 256, 1024, 0, 12_000


@functools.lru_cache(maxsize=1)
def _filters() -> tuple[torch.Tensor, torch.Tensor]:
    from librosa.filters import mel as librosa_mel_fn

    mel = librosa_mel_fn(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=NUM_MELS, fmin=FMIN, fmax=FMAX)
    return torch.from_numpy(mel).float(), torch.hann_window(WIN)


def mel_spectrogram(wav: np.ndarray) -> torch.Tensor:
    """(1, frames, 128) log-mel of 1-D float32 24 kHz `wav`, on the host."""
    basis, window = _filters()
    y = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32)).unsqueeze(0)
    padding = (N_FFT - HOP) // 2
    y = torch.nn.functional.pad(y.unsqueeze(1), (padding, padding), mode="reflect").squeeze(1)
    spec = torch.stft(
        y,
        N_FFT,
        hop_length=HOP,
        win_length=WIN,
        window=window,
        center=False,
        pad_mode="reflect",
        normalized=False,
        onesided=True,
        return_complex=True,
    )
    spec = torch.sqrt(torch.view_as_real(spec).pow(2).sum(-1) + 1e-9)
    mel = torch.log(torch.clamp(torch.matmul(basis, spec), min=1e-5))
    return mel.transpose(1, 2)


@torch.inference_mode()
def speaker_embedding(model, wav: np.ndarray) -> torch.Tensor:
    """`model.extract_speaker_embedding(wav, 24000)` without the per-call set-up.

    model: the loaded `Qwen3TTSForConditionalGeneration` of a Base checkpoint."""
    mels = mel_spectrogram(wav)
    return model.speaker_encoder(mels.to(model.device).to(model.dtype))[0]
