"""Serving under load: `fastqwen loadtest` results at several request rates, as one run.

`bench/serve_device_run.sh` starts `fastqwen serve` on the GPU and load-tests it at a list
of rates, writing one `LoadtestResult.to_dict()` per rate (`loadtest-<rate>.json`) and the
server's start-up facts (`serve-health.json`) into one folder; committed under
`bench/results/<run>/`, that folder is a serving run. Here: loading such runs, the table
(achieved rate, TTFA percentiles, underruns, errors per requested rate), the two charts
(p95 TTFA and throughput against the requested rate, with the published serving figures of
other engines as references), and a tiny CPU run for when no serving run is committed, so
the notebook always shows the same pieces. Builders return DataFrames, text or PNG bytes,
so they are tested without a kernel.

The bench notebook's loader (`records`) skips these folders: their JSON has no bench schema.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fastqwen.tools.bench.records import results_root
from fastqwen.tools.env import project_dir, project_path

log = logging.getLogger(__name__)

HEALTH_FILE = "serve-health.json"
RESULT_GLOB = "loadtest-*.json"


@dataclass(frozen=True)
class Reference:
    """A published serving result: p95 time to first audible audio at a request rate.

    Measured elsewhere (another GPU, another harness run), so it is a bar to compare against,
    not a number from this run."""

    engine: str
    rate: float
    p95_ttfa_ms: float
    where: str


# Open-loop Poisson arrivals, streamed PCM, 1.7B CustomVoice, one H100 (nari-labs/benchmarks).
REFERENCES: tuple[Reference, ...] = (
    Reference("Nari Qwen3-TTS server", 1.0, 26.5, "H100, FP8 MLP weights, FlashInfer"),
    Reference("Nari Qwen3-TTS server", 10.0, 34.0, "H100, FP8 MLP weights, FlashInfer"),
    Reference("Nari Qwen3-TTS server", 20.0, 77.0, "H100, FP8 MLP weights, FlashInfer"),
    Reference("vLLM-Omni", 1.0, 57.0, "H100, same harness"),
    Reference("vLLM-Omni", 10.0, 136.0, "H100, same harness"),
    Reference("vLLM-Omni", 20.0, 397.0, "H100, same harness"),
)


@dataclass
class ServingRun:
    """The load-test results of one folder, sorted by requested rate, and the server's
    start-up facts (`serve-health.json`: model, device, time to healthy), if any."""

    name: str
    path: Path | None
    results: list[dict] = field(default_factory=list)
    health: dict | None = None
    skipped: list[str] = field(default_factory=list)

    @property
    def newest(self) -> str:
        """The latest `started_at` of its results (ISO 8601 sorts as text)."""
        return max((str(r.get("started_at") or "") for r in self.results), default="")


def is_loadtest_result(data) -> bool:
    """A `LoadtestResult.to_dict()`: settings with a rate, and a summary."""
    return (
        isinstance(data, dict)
        and isinstance(data.get("settings"), dict)
        and isinstance(data.get("summary"), dict)
        and data["settings"].get("rate") is not None
    )


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("skipping %s: %s", path, exc)
        return None


def load_serving_run(directory: str | Path) -> ServingRun:
    """The load-test results (`loadtest-*.json`) and `serve-health.json` of one folder."""
    directory = Path(directory).resolve()
    if not directory.is_dir():
        raise ValueError(f"serving results directory {directory} does not exist")
    results, skipped = [], []
    for path in sorted(directory.glob(RESULT_GLOB)):
        data = _read_json(path)
        if is_loadtest_result(data):
            results.append(data)
        else:
            skipped.append(path.name)
    results.sort(key=lambda r: float(r["settings"]["rate"]))
    health_path = directory / HEALTH_FILE
    health = _read_json(health_path) if health_path.is_file() else None
    return ServingRun(directory.name, directory, results, health, skipped)


def list_serving_runs(root: str | Path | None = None) -> list[ServingRun]:
    """The folders under `root` (default `bench/results`) holding load-test results, oldest
    first by their results' start times."""
    root = results_root(root)
    subdirs = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    runs = [load_serving_run(p) for p in subdirs if any(p.glob(RESULT_GLOB))]
    runs = [run for run in runs if run.results]
    return sorted(runs, key=lambda run: (run.newest, run.name))


def select_serving_run(
    results_dir: str | Path | None = None, root: str | Path | None = None
) -> ServingRun | None:
    """The run in `results_dir` (a name under `root`, or a path from the project folder), or
    the newest under `root`; None when `results_dir` is None and there is none."""
    if results_dir is None:
        runs = list_serving_runs(root)
        return runs[-1] if runs else None
    base = results_root(root)
    candidates = (base / results_dir, project_path(results_dir))
    path = next((p for p in candidates if p.is_dir()), None)
    if path is None:
        names = ", ".join(run.name for run in list_serving_runs(root)) or "none"
        raise ValueError(
            f"results_dir {results_dir!r} is not a directory under {base} or "
            f"{project_dir()}; serving runs there: {names}"
        )
    run = load_serving_run(path)
    if not run.results:
        raise ValueError(f"{path} holds no load-test results ({RESULT_GLOB})")
    return run


def _ms(value) -> float | None:
    return None if value is None else 1000.0 * float(value)


def rate_rows(run: ServingRun) -> list[dict]:
    """One plain row per requested rate (what the table, the charts and the script's summary
    print): latencies in ms, counts, and audio seconds produced per second."""
    rows = []
    for result in run.results:
        s = result["summary"]
        ttfa, ttfb = s.get("ttfa_s") or {}, s.get("ttfb_s") or {}
        rows.append(
            {
                "rate": float(result["settings"]["rate"]),
                "window s": float(s.get("duration_s") or result["settings"]["duration_s"]),
                "achieved rate": s.get("achieved_rate"),
                "sent": s.get("sent"),
                "completed": s.get("completed"),
                "ttfa p50 ms": _ms(ttfa.get("p50")),
                "ttfa p95 ms": _ms(ttfa.get("p95")),
                "ttfa p99 ms": _ms(ttfa.get("p99")),
                "ttfb p95 ms": _ms(ttfb.get("p95")),
                "e2e p95 ms": _ms((s.get("e2e_s") or {}).get("p95")),
                "underruns": s.get("underruns"),
                "underrun requests": s.get("underrun_requests"),
                "errors": s.get("error_count"),
                "error kinds": ", ".join(f"{k} {v}" for k, v in (s.get("errors") or {}).items()),
                "dropped": s.get("dropped"),
                "audio s/s": s.get("audio_s_per_s"),
            }
        )
    return rows


def rates_text(run: ServingRun) -> str:
    """The requested rates of a run, e.g. `1, 5, 10`."""
    return ", ".join(f"{float(r['settings']['rate']):g}" for r in run.results)


def serving_table(run: ServingRun):
    """The rows of `rate_rows` as a DataFrame, one row per requested rate."""
    import pandas as pd

    return pd.DataFrame(rate_rows(run))


def summary_text(run: ServingRun) -> str:
    """A plain-text table for the terminal (the device script prints it last): no pandas,
    since it runs in the GPU machine's bare Python."""

    def f(value, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    head = (
        f"{'rate':>6} {'achieved':>9} {'sent':>5} {'ok':>5} {'ttfa p50':>9} {'p95':>8} "
        f"{'p99':>8} {'underruns':>9} {'errors':>6}  kinds"
    )
    lines = [f"serving run {run.name}: time to first audible audio in ms", head]
    if run.health:
        lines.insert(1, health_text(run.health))
    for r in rate_rows(run):
        lines.append(
            f"{r['rate']:>6g} {f(r['achieved rate'], '.2f'):>9} {f(r['sent'], 'd'):>5} "
            f"{f(r['completed'], 'd'):>5} {f(r['ttfa p50 ms'], '.1f'):>9} "
            f"{f(r['ttfa p95 ms'], '.1f'):>8} {f(r['ttfa p99 ms'], '.1f'):>8} "
            f"{f(r['underruns'], 'd'):>9} {f(r['errors'], 'd'):>6}  {r['error kinds']}"
        )
    return "\n".join(lines)


def health_text(health: Mapping) -> str:
    """One line on the server: model, device, batch size, and how long it took to be healthy."""
    healthy = health.get("time_to_healthy_s")
    parts = [
        f"model {health.get('model', '?')}",
        f"device {health.get('device_name') or health.get('device', '?')}",
        f"max batch {health.get('max_batch_size', '?')}",
        f"healthy after {healthy:.1f} s" if healthy is not None else "never healthy",
        f"commit {health.get('git_commit') or 'unknown'}",
    ]
    return ", ".join(parts)


def _positive(values: Sequence[float | None]) -> bool:
    return any(v is not None and v > 0 for v in values)


def ttfa_figure(run: ServingRun, references: Sequence[Reference] = REFERENCES) -> bytes:
    """PNG: p95 (and p50) time to first audible audio against the requested rate, log-log,
    with each published engine's p95 as a dashed reference line."""
    from matplotlib.figure import Figure

    from fastqwen.tools.notebook.display import png

    rows = [r for r in rate_rows(run) if r["ttfa p95 ms"] is not None]
    fig = Figure(figsize=(7, 3.8), layout="constrained")
    ax = fig.subplots()
    rates = [r["rate"] for r in rows]
    ax.plot(rates, [r["ttfa p95 ms"] for r in rows], "o-", color="tab:blue", label="p95 (this run)")
    ax.plot(rates, [r["ttfa p50 ms"] for r in rows], "o:", color="tab:cyan", label="p50 (this run)")
    for engine, points in _by_engine(references).items():
        color = _REFERENCE_COLORS.get(engine, "tab:gray")
        ax.plot(
            [p.rate for p in points],
            [p.p95_ttfa_ms for p in points],
            "s--",
            color=color,
            alpha=0.7,
            label=f"{engine} p95 ({points[0].where.split(',')[0]}, published)",
        )
    if rows or references:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel("requested rate (requests/s, Poisson)")
    ax.set_ylabel("time to first audible audio (ms)")
    ax.set_title(f"Time to first audible audio under load, {run.name}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return png(fig)


_REFERENCE_COLORS = {"Nari Qwen3-TTS server": "tab:green", "vLLM-Omni": "tab:red"}


def _by_engine(references: Sequence[Reference]) -> dict[str, list[Reference]]:
    groups: dict[str, list[Reference]] = {}
    for ref in sorted(references, key=lambda r: r.rate):
        groups.setdefault(ref.engine, []).append(ref)
    return groups


def throughput_figure(run: ServingRun) -> bytes:
    """PNG, two panels against the requested rate: the achieved rate (with the line where it
    equals the requested one: below it, requests were refused or dropped) and the audio
    seconds produced per second."""
    from matplotlib.figure import Figure

    from fastqwen.tools.notebook.display import png

    rows = rate_rows(run)
    rates = [r["rate"] for r in rows]
    fig = Figure(figsize=(9, 3.4), layout="constrained")
    left, right = fig.subplots(1, 2)
    completed = [None if r["completed"] is None else r["completed"] / r["window s"] for r in rows]
    left.plot(rates, [r["achieved rate"] for r in rows], "o-", label="sent / s")
    left.plot(rates, completed, "o:", label="completed / s")
    left.plot(rates, rates, "k--", lw=0.8, label="= requested")
    left.set_xlabel("requested rate (requests/s)")
    left.set_ylabel("requests/s")
    left.legend(fontsize=8)
    audio = [r["audio s/s"] for r in rows]
    right.plot(rates, audio, "o-", color="tab:purple")
    right.set_xlabel("requested rate (requests/s)")
    right.set_ylabel("audio seconds per second")
    for ax in (left, right):
        if rates and min(rates) > 0 and max(rates) / min(rates) >= 10:
            ax.set_xscale("log")
            if ax is left:  # requests/s span the same decades as the rates
                ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    if _positive(audio):
        right.set_ylim(bottom=0)
    fig.suptitle(f"Throughput under load, {run.name}")
    return png(fig)


# Frames (12.5 per second) per word of English read aloud at about 150 words a minute.
SPEECH_FRAMES_PER_WORD = 5.0


def fixed_length_prompts(
    prompts: Sequence[Mapping], frames_per_word: float = SPEECH_FRAMES_PER_WORD
) -> list[dict]:
    """The prompts with `min_new_tokens` = `max_new_tokens` = their text's length in frames
    when read aloud (at least 12, one second).

    A random-weight model almost never emits EOS, so unbounded its every request would run
    to the engine's cap (minutes of audio) and the load would say nothing about real
    traffic; fixing each request's length to what a trained model would say keeps the
    audio per request, and so the load per request/s, realistic. A prompt that sets either
    field keeps its own."""
    out = []
    for prompt in prompts:
        frames = max(12, round(len(str(prompt["input"]).split()) * frames_per_word))
        body = dict(prompt)
        if "max_new_tokens" not in body and "min_new_tokens" not in body:
            body.update(max_new_tokens=frames, min_new_tokens=frames)
        out.append(body)
    return out


def write_fixed_length_prompts(path: str | Path, source: str | Path | None = None) -> Path:
    """`fixed_length_prompts` of the JSONL prompts in `source` (None: the load tester's
    shipped set) written as JSONL to `path`, for `fastqwen loadtest --prompts`."""
    from fastqwen.tools.loadtest import load_prompts

    path = Path(path)
    lines = [json.dumps(p) for p in fixed_length_prompts(load_prompts(source))]
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m fastqwen.tools.bench.serving DIR`: print a serving run's summary table
    (`--write-prompts FILE`: write the fixed-length prompts for a random-weight model)."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("directory", type=Path, nargs="?", help="folder with loadtest-<rate>.json")
    p.add_argument(
        "--write-prompts",
        type=Path,
        default=None,
        help="instead: write the shipped prompts with fixed lengths (random weights) here",
    )
    args = p.parse_args(argv)
    if args.write_prompts is not None:
        print(write_fixed_length_prompts(args.write_prompts))
        return 0
    if args.directory is None:
        p.error("give a results folder (or --write-prompts FILE)")
    run = load_serving_run(args.directory)
    print(summary_text(run))
    return 0 if run.results else 1


if __name__ == "__main__":
    raise SystemExit(main())
