"""The benchmark's tables: engines, speedups within one run, the targets; and its header.

Each builder takes one `BenchRun` (one device call) and returns a pandas DataFrame or
Markdown text, so it is tested without a kernel.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass

from fastqwen.tools.bench.records import (
    ENGINE_ORDER,
    MODES,
    SIZE_ORDER,
    BenchRun,
    config_text,
    is_clone,
    mode_of,
)

BASELINES = ("anchor", "dynamic")  # what the static engine's speedup is measured against
# What readers see for each record label ("anchor" stays the records' name for faster-qwen3-tts).
ENGINE_NAMES = {
    "static": "fastqwen static",
    "static-eager": "fastqwen static, eager",
    "anchor": "faster-qwen3-tts",
    "faster-qwen3-tts": "faster-qwen3-tts, one after another",
    "faster-qwen3-tts-batch": "faster-qwen3-tts-batch",
    "dynamic": "qwen-tts (reference)",
}


def engine_name(label: str) -> str:
    return ENGINE_NAMES.get(label, label)


@dataclass(frozen=True)
class Target:
    """A performance goal of the static engine: `field` of its record (or a speedup) vs a
    limit; `what` says what is measured, for readers of the report."""

    name: str
    size: str
    field: str  # a record field, or "speedup_vs_anchor" (anchor ms/frame / static ms/frame)
    limit: float
    op: str  # "<=" or ">="
    unit: str
    what: str = ""


_WHAT = {
    "ms_per_frame": "median time to generate one 80 ms frame (all 16 codebooks), warm, batch 1",
    "ttfa_ms": "from the streaming call to its first audio chunk, warm",
    "kernels_per_frame": "GPU kernels launched per frame (profiler)",
    "peak_over_weights_kv": "peak GPU memory over the weights plus the KV cache",
    "speedup_vs_anchor": "faster-qwen3-tts ms/frame over ours, in the same device call",
}
TARGETS = tuple(
    Target(name, size, field, limit, op, unit, _WHAT[field])
    for name, field, limits, op, unit in (
        ("decode", "ms_per_frame", (4.0, 3.0), "<=", "ms/frame"),
        ("time to first audio", "ttfa_ms", (50.0, 50.0), "<=", "ms"),
        ("kernels per frame", "kernels_per_frame", (1500, 1500), "<=", ""),
        ("peak / (weights + KV)", "peak_over_weights_kv", (1.3, 1.3), "<=", "x"),
        ("speedup over faster-qwen3-tts", "speedup_vs_anchor", (5.0, 5.0), ">=", "x"),
    )
    for size, limit in zip(("1.7b", "0.6b"), limits, strict=True)
)
_OPS = {"<=": operator.le, ">=": operator.ge}


def _num(value) -> float:
    return math.nan if value is None else float(value)


def engines_table(run: BenchRun):
    """DataFrame, one row per record: speed, spread, TTFA, kernels, memory, error."""
    import pandas as pd

    rows = []
    for r in run.single:
        peak = r.get("peak_gpu_bytes")
        rows.append(
            {
                "engine": engine_name(r["label"]),
                "size": r.get("size"),
                "dtype": r.get("dtype"),
                "config": config_text(r),
                "frames": r.get("frames"),
                "ms/frame": _num(r.get("ms_per_frame")),
                "ms/frame min": _num(r.get("ms_per_frame_min")),
                "ms/frame max": _num(r.get("ms_per_frame_max")),
                "runs": r.get("runs"),
                "x real time": _num(r.get("rtf")),
                "TTFA ms": _num(r.get("ttfa_ms")),
                "first chunk frames": r.get("ttfa_first_chunk_frames"),
                "prefill ms": _num(r.get("prefill_ms")),
                "kernels/frame": _num(r.get("kernels_per_frame")),
                "GPU busy ms/frame": _num(r.get("gpu_busy_ms_per_frame")),
                "peak GiB": _num(None if peak is None else peak / 2**30),
                "peak/(weights+KV)": _num(r.get("peak_over_weights_kv")),
                "error": r.get("error") or r.get("profile_error") or "",
            }
        )
    return pd.DataFrame(rows)


def modes_table(run: BenchRun):
    """DataFrame, one row per single-stream record of our engine in every mode (custom voice,
    clone ICL and x-vector, each with a cached and a new reference): time to first audio
    beside custom voice's. Empty when the run has no clone records."""
    import pandas as pd

    if not any(is_clone(r) for r in run.records):
        return pd.DataFrame()

    def order(r) -> tuple:
        size, mode = r.get("size"), mode_of(r)
        return (
            SIZE_ORDER.index(size) if size in SIZE_ORDER else len(SIZE_ORDER),
            MODES.index(mode) if mode in MODES else len(MODES),
            r.get("reference_cached") is False,  # cached first
        )

    rows = []
    for r in sorted((r for r in run.modes if r.get("engine") == "static"), key=order):
        cached = r.get("reference_cached")
        rows.append(
            {
                "size": r.get("size"),
                "mode": mode_of(r),
                "reference": "-" if cached is None else ("cached" if cached else "new"),
                "TTFA ms": _num(r.get("ttfa_ms")),
                "TTFA ms min": _num(r.get("ttfa_ms_min")),
                "TTFA ms max": _num(r.get("ttfa_ms_max")),
                "first chunk frames": r.get("ttfa_first_chunk_frames"),
                "prefill ms": _num(r.get("prefill_ms")),
                "ms/frame": _num(r.get("ms_per_frame")),
                "reference s": _num(r.get("reference_s")),
                "error": r.get("error") or "",
            }
        )
    return pd.DataFrame(rows)


def _ratio(a, b) -> float:
    """a / b, NaN when either is missing or b is zero."""
    if a is None or b is None or not b:
        return math.nan
    return float(a) / float(b)


def speedups(run: BenchRun):
    """DataFrame, one row per (size, baseline): baseline / static for ms/frame and TTFA."""
    import pandas as pd

    rows = []
    for size in run.values("size"):
        static = run.find("static", size)
        for base in BASELINES:
            other = run.find(base, size)
            if static is None or other is None:
                continue
            rows.append(
                {
                    "size": size,
                    "static vs": engine_name(base),
                    "static ms/frame": _num(static.get("ms_per_frame")),
                    "their ms/frame": _num(other.get("ms_per_frame")),
                    "ms/frame speedup": _ratio(
                        other.get("ms_per_frame"), static.get("ms_per_frame")
                    ),
                    "static TTFA ms": _num(static.get("ttfa_ms")),
                    "their TTFA ms": _num(other.get("ttfa_ms")),
                    "TTFA speedup": _ratio(other.get("ttfa_ms"), static.get("ttfa_ms")),
                }
            )
    return pd.DataFrame(rows)


def target_value(run: BenchRun, target: Target) -> float | None:
    """The static engine's value for `target` in `run`, None when not measured."""
    static = run.find("static", target.size)
    if static is None:
        return None
    if target.field == "speedup_vs_anchor":
        anchor = run.find("anchor", target.size)
        ratio = _ratio(anchor and anchor["ms_per_frame"], static["ms_per_frame"])
        return None if math.isnan(ratio) else ratio
    value = static.get(target.field)
    return None if value is None else float(value)


def targets_table(run: BenchRun, targets: Sequence[Target] = TARGETS):
    """DataFrame: target / measured / met? for the static engine (strings, for display)."""
    import pandas as pd

    rows = []
    for t in targets:
        value = target_value(run, t)
        met = "not measured" if value is None else ("yes" if _OPS[t.op](value, t.limit) else "no")
        digits = 0 if t.field == "kernels_per_frame" else 2
        rows.append(
            {
                "target": f"{t.name} ({t.size.upper()})",
                "what": t.what,
                "limit": f"{t.op.replace('<=', '≤').replace('>=', '≥')} {t.limit:,g} {t.unit}",
                "measured": "-" if value is None else f"{value:,.{digits}f} {t.unit}",
                "met?": met,
            }
        )
    return pd.DataFrame(rows)


_INTEGER_COLUMNS = ("frames", "runs", "first chunk frames", "kernels/frame", "batch")


def formatted(df):
    """A copy for display: numbers to 2 decimals (counts to integers), missing as `-`."""
    import pandas as pd

    out = df.copy()
    for col in out.columns:
        if out[col].dtype.kind not in "fi" and col not in _INTEGER_COLUMNS:
            continue
        fmt = "{:,.0f}" if col in _INTEGER_COLUMNS else "{:,.2f}"
        out[col] = ["-" if pd.isna(v) else fmt.format(v) for v in out[col]]
    return out


def batch_table(run: BenchRun):
    """DataFrame, one row per batch record (engine, batch size): throughput (and how it was
    measured: steady state or a burst round, with the burst round's figure beside a steady
    one), step time, per-stream speed, memory, and what each engine's record notes. Empty
    without batch records."""
    import pandas as pd

    rows = []
    for r in sorted(run.batch, key=lambda r: (_engine_rank(r["label"]), int(r["batch_size"]))):
        peak = r.get("peak_memory_bytes")
        kv = r.get("kv_bytes_per_slot")
        rows.append(
            {
                "engine": engine_name(r["label"]),
                "batch": int(r["batch_size"]),
                "size": r.get("size"),
                "audio s/s": _num(r.get("audio_seconds_per_second")),
                # steady state (B lanes, each refilled as it frees) or one burst round
                "measured as": (r.get("throughput_method") or "burst").replace("_", " "),
                "burst audio s/s": _num(r.get("burst_audio_seconds_per_second")),
                "step ms": _num(r.get("step_ms")),
                "stream x real time (min)": _num(r.get("per_stream_rtf_min")),
                "stream x real time (median)": _num(r.get("per_stream_rtf_median")),
                "frames": r.get("frames"),
                "wall s": _num(r.get("wall_s")),
                "peak GiB": _num(None if peak is None else peak / 2**30),
                "KV MiB/slot": _num(None if kv is None else kv / 2**20),
                "error": r.get("error") or "",
            }
        )
    return pd.DataFrame(rows)


def batch_notes(run: BenchRun) -> list[str]:
    """One line per engine whose batch records carry a note (how it was measured)."""
    notes = {}
    for r in run.batch:
        if r.get("note"):
            notes.setdefault(engine_name(r["label"]), r["note"])
    return [f"{name}: {note}" for name, note in notes.items()]


def _engine_rank(label: str) -> int:
    return ENGINE_ORDER.index(label) if label in ENGINE_ORDER else len(ENGINE_ORDER)


def random_weights_banner(run: BenchRun) -> str:
    """The report's warning when a record ran on random weights; empty otherwise."""
    if not any(r.get("random_weights") for r in run.records):
        return ""
    return (
        "Random weights: these runs used random-weight checkpoints with the real layout; "
        "shapes, kernels and timings are real, the audio is noise."
    )


def header_markdown(run: BenchRun) -> str:
    """Which run, on which device, at which commit, and what was skipped."""

    def join(key: str) -> str:
        return ", ".join(f"`{v}`" for v in run.values(key)) or "unknown"

    dirty = any(r.get("git_dirty") for r in run.records)
    stamps = sorted(r["timestamp"] for r in run.records if r.get("timestamp"))
    when = f"{stamps[0]} to {stamps[-1]}" if stamps else "unknown time"
    lines = [
        f"**Run `{run.name}`**: {len(run.records)} records, {when}",
        f"- device: {join('device_name')}; torch {join('torch')}, CUDA {join('cuda')}",
        f"- git commit: {join('git_commit')}{' (with local changes)' if dirty else ''}",
        f"- models: {join('model')}",
    ]
    if len(run.values("device_name")) > 1 or len(run.values("git_commit")) > 1:
        lines.append("- **mixed devices or commits: these timings may not be comparable**")
    if run.skipped:
        lines.append(f"- skipped (not bench records): {', '.join(run.skipped)}")
    return "\n".join(lines)


__all__ = [
    "BASELINES",
    "TARGETS",
    "Target",
    "batch_notes",
    "batch_table",
    "engine_name",
    "engines_table",
    "formatted",
    "header_markdown",
    "modes_table",
    "random_weights_banner",
    "speedups",
    "target_value",
    "targets_table",
]
