"""The benchmark's charts, as PNG bytes: ms per frame and time to first audio per engine.

Bars are grouped by model size, one colour per engine, with the min-max spread of the
timed runs as error bars and the targets of `tables.TARGETS` as dashed lines.
"""

from __future__ import annotations

from collections.abc import Mapping

from fastqwen.tools.bench.records import BenchRun
from fastqwen.tools.bench.tables import TARGETS, engine_name
from fastqwen.tools.notebook.display import png

_COLORS = {
    "static": "tab:blue",
    "static-eager": "tab:cyan",
    "anchor": "tab:orange",
    "faster-qwen3-tts": "tab:orange",
    "faster-qwen3-tts-batch": "tab:purple",
    "dynamic": "tab:red",
}


def bar_figure(
    run: BenchRun,
    key: str,
    ylabel: str,
    title: str,
    limits: Mapping[str, float] | None = None,
    log_scale: bool = False,
) -> bytes:
    """PNG: bars of `key` (with its `_min`/`_max` as error bars) grouped by size, one colour
    per engine; `limits` draws each size's target as a dashed line over its group."""
    from matplotlib.figure import Figure

    rows = [r for r in run.single if r.get(key) is not None and not r.get("error")]
    sizes = [s for s in run.values("size") if any(r.get("size") == s for r in rows)]
    fig = Figure(figsize=(8, 3.6), layout="constrained")
    ax = fig.subplots()
    labelled = set()
    for i, size in enumerate(sizes):  # each group is as wide as the engines it has
        group = [r for r in rows if r.get("size") == size]
        width = 0.8 / len(group)
        for j, r in enumerate(group):
            x, y = i - 0.4 + width * (j + 0.5), float(r[key])
            lo = y - float(r.get(f"{key}_min") or y)
            hi = float(r.get(f"{key}_max") or y) - y
            lab = r["label"]
            color = _COLORS.get(lab, "tab:gray")
            ax.bar(
                x,
                y,
                width * 0.9,
                yerr=[[lo], [hi]],
                color=color,
                label=None if lab in labelled else lab,
            )
            ax.annotate(
                f"{y:.1f}",
                (x, y + hi),
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=8,
            )
            labelled.add(lab)
    for i, size in enumerate(sizes):
        if limits and size in limits:
            ax.hlines(limits[size], i - 0.45, i + 0.45, colors="green", linestyles="dashed")
    if limits and any(s in limits for s in sizes):
        ax.plot([], [], color="green", linestyle="dashed", label="target")
    ax.set_xticks(range(len(sizes)), [s.upper() for s in sizes])
    if log_scale:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.margins(y=0.12)  # room for the value labels
    if rows:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    else:
        ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
    return png(fig)


def ms_per_frame_figure(run: BenchRun) -> bytes:
    """Median ms/frame per engine and size (log scale), min-max bars, the decode targets."""
    limits = {t.size: t.limit for t in TARGETS if t.field == "ms_per_frame"}
    title = f"ms per frame (median, min-max), {run.name}"
    return bar_figure(run, "ms_per_frame", "ms / frame (log)", title, limits, log_scale=True)


def ttfa_figure(run: BenchRun) -> bytes:
    """Median time to first audio per engine and size, min-max bars, the 50 ms target."""
    limits = {t.size: t.limit for t in TARGETS if t.field == "ttfa_ms"}
    title = f"time to first audio (median, min-max), {run.name}"
    return bar_figure(run, "ttfa_ms", "ms", title, limits)


def throughput_figure(run: BenchRun) -> bytes:
    """Audio seconds per second against batch size, one line per engine (log-log: ideal
    batching is a straight line of slope 1), with the real-time mark of one stream."""
    from matplotlib.figure import Figure

    rows = [
        r for r in run.batch if r.get("audio_seconds_per_second") is not None and not r.get("error")
    ]
    fig = Figure(figsize=(8, 3.8), layout="constrained")
    ax = fig.subplots()
    for lab in dict.fromkeys(r["label"] for r in rows):
        points = sorted(
            (int(r["batch_size"]), float(r["audio_seconds_per_second"]))
            for r in rows
            if r["label"] == lab
        )
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o", color=_COLORS.get(lab, "tab:gray"), label=engine_name(lab))
        x, y = points[-1]
        ax.annotate(f"{y:.0f}", (x, y), xytext=(4, 0), textcoords="offset points", fontsize=8)
    ax.axhline(1.0, color="gray", linestyle="dotted", linewidth=1, label="real time, one stream")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    sizes = sorted({int(r["batch_size"]) for r in rows})
    if sizes:  # ticks at the measured sizes, written as numbers
        ax.set_xticks(sizes, [str(b) for b in sizes])
        ax.minorticks_off()
    ax.margins(x=0.08)  # room for the value labels
    ax.set_xlabel("batch size (requests generated together)")
    ax.set_ylabel("audio seconds per second (log)")
    ax.set_title(f"throughput vs batch size, {run.name}")
    if rows:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    else:
        ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
    return png(fig)


__all__ = ["bar_figure", "ms_per_frame_figure", "throughput_figure", "ttfa_figure"]
