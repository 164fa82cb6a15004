"""Figures for the parity notebooks, as PNG bytes (no pyplot state, any backend).

- `audio_figure`: waveform and spectrogram of the static (top) and dynamic (bottom) audio
  of a pair, on shared axes and a shared colour scale, so a level or timing difference shows.
- `divergence_figure`: the teacher-forced KL(reference || static) per frame, for codebook 0
  (talker) and the mean over codebooks 1..15 (code predictor), with the first frame where
  the free-running codes differ.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from fastqwen.tools.notebook.display import png

KL_FLOOR = 1e-12  # log-scale floor: exact zeros and float-rounding negatives are drawn here
NFFT, HOP = 512, 128  # ~21 ms windows, ~5 ms hop at 24 kHz


def audio_figure(static: np.ndarray, dynamic: np.ndarray, sample_rate: int, title: str) -> bytes:
    """2x2 PNG: rows static / dynamic; columns waveform / spectrogram (dB)."""
    fig = Figure(figsize=(11, 4.6), layout="constrained")
    axes = fig.subplots(2, 2, sharex=True)
    seconds = max(len(static), len(dynamic), 1) / sample_rate
    images = []
    for row, (name, audio) in enumerate((("static", static), ("dynamic", dynamic))):
        wave_ax, spec_ax = axes[row]
        t = np.arange(len(audio)) / sample_rate
        wave_ax.plot(t, audio, linewidth=0.4, color="tab:blue" if row == 0 else "tab:orange")
        wave_ax.set_ylim(-1, 1)
        wave_ax.set_ylabel(name)
        if len(audio) >= NFFT:
            _, _, _, im = spec_ax.specgram(
                audio, NFFT=NFFT, Fs=sample_rate, noverlap=NFFT - HOP, cmap="magma"
            )
            images.append(im)
        else:
            spec_ax.text(
                0.5,
                0.5,
                "too short for a spectrogram",
                ha="center",
                va="center",
                transform=spec_ax.transAxes,
            )
        spec_ax.set_ylabel("Hz")
    if images:  # one colour scale for both rows
        lo = min(im.get_clim()[0] for im in images)
        hi = max(im.get_clim()[1] for im in images)
        for im in images:
            im.set_clim(lo, hi)
        fig.colorbar(images[-1], ax=axes[:, 1], label="dB", shrink=0.8)
    for ax in axes[1]:
        ax.set_xlabel("seconds")
        ax.set_xlim(0, seconds)
    axes[0, 0].set_title("waveform")
    axes[0, 1].set_title("spectrogram")
    fig.suptitle(title)
    return png(fig)


def divergence_figure(
    cb0_kl: list[float],
    sub_kl: list[float],
    first_divergent_frame: int | None,
    title: str,
) -> bytes:
    """PNG of the per-frame teacher-forced KL on a log scale."""
    return png(divergence_plot(cb0_kl, sub_kl, first_divergent_frame, title))


def divergence_plot(
    cb0_kl: list[float], sub_kl: list[float], first_divergent_frame: int | None, title: str
) -> Figure:
    """The `Figure` of `divergence_figure` (its legend sits right of the axes)."""
    fig = Figure(figsize=(11, 2.8), layout="constrained")
    ax = fig.subplots()
    frames = np.arange(len(cb0_kl))
    if len(frames):
        ax.semilogy(frames, np.maximum(np.asarray(cb0_kl), KL_FLOOR), label="codebook 0 (talker)")
        ax.semilogy(
            frames,
            np.maximum(np.asarray(sub_kl), KL_FLOOR),
            label="codebooks 1-15 (mean, predictor)",
        )
    else:
        ax.text(0.5, 0.5, "no frames", ha="center", va="center", transform=ax.transAxes)
    if first_divergent_frame is not None:
        ax.axvline(
            first_divergent_frame,
            color="red",
            linestyle="--",
            label=f"codes first differ (frame {first_divergent_frame})",
        )
    ax.set_xlabel("frame (80 ms)")
    ax.set_ylabel(f"KL (floor {KL_FLOOR:g})")
    ax.set_title(title)
    # Outside the axes, right of them: inside, it covered the curves of short utterances.
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, fontsize="small")
    return fig


__all__ = ["audio_figure", "divergence_figure", "divergence_plot"]
