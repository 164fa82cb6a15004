"""What the benchmark notebook shows: bench records loaded per device call, tables, charts.

Records are the JSON files `fastqwen.tools.bench.run` and `bench/anchor_bench.py` write (schema
`fastqwen-bench/1`, fields in bench/README.md). Timings compare only within one device call,
so everything here works on one `BenchRun`: the records of one directory under
`bench/results/` (or of one live run in this process). The newest run is the directory whose
latest record `timestamp` is newest; names do not sort by time (`..._h100_<commit>`).
Files without the schema (`profile_frame_*.json`, `gpu_check_*.json`) are skipped.

Builders return pandas DataFrames or PNG bytes, so they are tested without a kernel; the
`show_*` functions display them. Torch is imported only for a live run.
"""

from __future__ import annotations

import json
import logging
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

log = logging.getLogger(__name__)

SCHEMA = (
    "fastqwen-bench/1"  # fastqwen.tools.bench.run.SCHEMA (a test checks; that module imports torch)
)
PROJECT_ROOT = Path(__file__).resolve().parents[3]
RESULTS_DIR = PROJECT_ROOT / "bench" / "results"
ENGINE_ORDER = ("static", "static-eager", "anchor", "dynamic")
SIZE_ORDER = ("1.7b", "0.6b", "tiny")
BASELINES = ("anchor", "dynamic")  # what the static engine's speedup is measured against
_COLORS = {
    "static": "tab:blue",
    "static-eager": "tab:cyan",
    "anchor": "tab:orange",
    "dynamic": "tab:red",
}


@dataclass(frozen=True)
class Target:
    """A goal from issue 4: `field` of the static engine's record (or a speedup) vs a limit."""

    name: str
    size: str
    field: str  # a record field, or "speedup_vs_anchor" (anchor ms/frame / static ms/frame)
    limit: float
    op: str  # "<=" or ">="
    unit: str


TARGETS = (
    Target("decode", "1.7b", "ms_per_frame", 4.0, "<=", "ms/frame"),
    Target("decode", "0.6b", "ms_per_frame", 3.0, "<=", "ms/frame"),
    Target("time to first audio", "1.7b", "ttfa_ms", 50.0, "<=", "ms"),
    Target("time to first audio", "0.6b", "ttfa_ms", 50.0, "<=", "ms"),
    Target("kernels per frame", "1.7b", "kernels_per_frame", 1500, "<=", ""),
    Target("kernels per frame", "0.6b", "kernels_per_frame", 1500, "<=", ""),
    Target("peak / (weights + KV)", "1.7b", "peak_over_weights_kv", 1.3, "<=", "x"),
    Target("peak / (weights + KV)", "0.6b", "peak_over_weights_kv", 1.3, "<=", "x"),
    Target("speedup over the anchor", "1.7b", "speedup_vs_anchor", 5.0, ">=", "x"),
    Target("speedup over the anchor", "0.6b", "speedup_vs_anchor", 5.0, ">=", "x"),
)
_OPS = {"<=": operator.le, ">=": operator.ge}


# ------------------------------------------------------------------ loading


@dataclass
class BenchRun:
    """The records of one device call (one results directory, or one live run)."""

    name: str
    records: list[dict]
    path: Path | None = None
    skipped: list[str] = field(default_factory=list)  # files that are not bench records

    def values(self, key: str) -> list:
        """The distinct non-null values of `key` over the records, in first-seen order."""
        return list(dict.fromkeys(r[key] for r in self.records if r.get(key) is not None))

    @property
    def newest_timestamp(self) -> str:
        return max((r.get("timestamp") or "" for r in self.records), default="")

    def find(self, label: str, size: str) -> dict | None:
        """The record of engine `label` (see `label`) at `size` that has no error."""
        for r in self.records:
            if r["label"] == label and r.get("size") == size and not r.get("error"):
                return r
        return None


def label(record: Mapping) -> str:
    """Engine name for tables: `static` (CUDA graph), `static-eager` (none), `anchor`, ..."""
    engine = record.get("engine") or "?"
    config = record.get("engine_config") or {}
    if engine == "static" and config.get("cuda_graph") is False:
        return "static-eager"
    return engine


def config_text(record: Mapping) -> str:
    """The engine's settings in a few words: `graph+compile`, `eager`, `torch/sdpa`, ..."""
    config = record.get("engine_config") or {}
    if record.get("engine") == "static":
        parts = ["graph" if config.get("cuda_graph", True) else "eager"]
        return "+".join(parts + (["compile"] if config.get("compile") else []))
    if record.get("engine") == "anchor":
        return "/".join(str(config[k]) for k in ("backend", "attn_implementation") if k in config)
    return ""


def load_record(path: Path) -> dict | None:
    """The record in `path` with `label` and `file` added; None if it is not a bench record."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("skipping %s: %s", path, exc)
        return None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        return None
    return {**data, "label": label(data), "file": Path(path).name}


def _sort_key(record: Mapping) -> tuple:
    size, lab = record.get("size"), record["label"]
    return (
        SIZE_ORDER.index(size) if size in SIZE_ORDER else len(SIZE_ORDER),
        str(size),
        ENGINE_ORDER.index(lab) if lab in ENGINE_ORDER else len(ENGINE_ORDER),
        lab,
        record["file"],
    )


def load_run(directory: str | Path) -> BenchRun:
    """Every bench record of one directory, sorted by size, then engine."""
    directory = Path(directory).resolve()
    if not directory.is_dir():
        raise ValueError(f"results directory {directory} does not exist")
    records, skipped = [], []
    for path in sorted(directory.glob("*.json")):
        record = load_record(path)
        if record is None:
            skipped.append(path.name)
        else:
            records.append(record)
    return BenchRun(directory.name, sorted(records, key=_sort_key), directory, skipped)


def list_runs(root: str | Path = RESULTS_DIR) -> list[BenchRun]:
    """The run directories under `root` that hold bench records, oldest first."""
    root = Path(root)
    subdirs = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    runs = [run for run in map(load_run, subdirs) if run.records]
    return sorted(runs, key=lambda run: (run.newest_timestamp, run.name))


def _in_project(path: str | Path) -> Path:
    """A relative path from the project root (papermill runs in notebooks/); absolute as is."""
    return PROJECT_ROOT / path


def select_run(results_dir: str | Path | None = None, root: str | Path = RESULTS_DIR):
    """The run in `results_dir` (a path, relative to here or to the project root, or a
    directory name under `root`), or the newest.

    Returns None when `results_dir` is None and `root` holds no run.
    """
    if results_dir is None:
        runs = list_runs(root)
        return runs[-1] if runs else None
    candidates = (Path(results_dir), Path(root) / results_dir, _in_project(results_dir))
    path = next((p for p in candidates if p.is_dir()), None)
    if path is None:
        names = ", ".join(run.name for run in list_runs(root)) or "none"
        raise ValueError(f"results_dir {results_dir!r} is not a directory; runs in {root}: {names}")
    run = load_run(path)
    if not run.records:
        raise ValueError(f"{path} holds no {SCHEMA} records (skipped: {run.skipped})")
    return run


# ------------------------------------------------------------------ tables


def _num(value) -> float:
    return math.nan if value is None else float(value)


def engines_table(run: BenchRun):
    """DataFrame, one row per record: speed, spread, TTFA, kernels, memory, error."""
    import pandas as pd

    rows = []
    for r in run.records:
        peak = r.get("peak_gpu_bytes")
        rows.append(
            {
                "engine": r["label"],
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
                    "static vs": base,
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


def measure(run: BenchRun, target: Target) -> float | None:
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
        value = measure(run, t)
        met = "not measured" if value is None else ("yes" if _OPS[t.op](value, t.limit) else "no")
        digits = 0 if t.field == "kernels_per_frame" else 2
        rows.append(
            {
                "target": f"{t.name} ({t.size.upper()})",
                "limit": f"{t.op.replace('<=', '≤').replace('>=', '≥')} {t.limit:,g} {t.unit}",
                "measured": "-" if value is None else f"{value:,.{digits}f} {t.unit}",
                "met?": met,
            }
        )
    return pd.DataFrame(rows)


_INTEGER_COLUMNS = ("frames", "runs", "first chunk frames", "kernels/frame")


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
    if any(r.get("random_weights") for r in run.records):
        lines.append("- random weights: audio is noise, but every shape and timing is real")
    if len(run.values("device_name")) > 1 or len(run.values("git_commit")) > 1:
        lines.append("- **mixed devices or commits: these timings may not be comparable**")
    if run.skipped:
        lines.append(f"- skipped (not bench records): {', '.join(run.skipped)}")
    return "\n".join(lines)


# ------------------------------------------------------------------ charts


def _png(fig) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    return buf.getvalue()


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

    rows = [r for r in run.records if r.get(key) is not None and not r.get("error")]
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
    return _png(fig)


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


# ------------------------------------------------------------------ settings, live run


@dataclass(frozen=True)
class BenchSettings:
    """The notebook's parameters (see its `parameters` cell)."""

    results_dir: str | None = None
    run_live: bool | None = None
    model: str = "random:1.7b-custom_voice"
    live_engines: tuple[str, ...] = ("static", "dynamic")
    runs: int = 3
    max_new_tokens: int = 168
    static_compile: bool = True  # as bench/device_run.sh, whose results are committed
    live_out: str | None = None

    def live_wanted(self, cuda_available: bool) -> bool:
        """Run the bench here? False: never. True: yes (needs CUDA). None: when CUDA is
        present and no results_dir was asked for."""
        if self.run_live is None:
            return cuda_available and self.results_dir is None
        if self.run_live and not cuda_available:
            raise ValueError("run_live=True needs CUDA, which is not available; pass False")
        return bool(self.run_live)


PARAMETERS = tuple(f.name for f in fields(BenchSettings))  # the notebook's, in order


def notebook_settings(namespace: Mapping, names_before: set[str]) -> BenchSettings:
    """The parameters from the notebook's globals; an unknown (misspelt) name is an error."""
    new = {n for n in namespace if not n.startswith("_") and n not in names_before}
    unknown = sorted(new - set(PARAMETERS))
    if unknown:
        raise ValueError(
            f"unknown notebook parameter(s) {unknown}; valid names: {', '.join(PARAMETERS)}"
        )
    values = {n: namespace[n] for n in PARAMETERS if n in namespace}
    if "live_engines" in values:
        engines = values["live_engines"]
        values["live_engines"] = tuple(engines.split(",") if isinstance(engines, str) else engines)
    return BenchSettings(**values)


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def live_run(settings: BenchSettings, bench_fn: Callable | None = None) -> BenchRun:
    """Benchmark `settings.live_engines` on `settings.model` on CUDA in this process.

    A failing engine becomes an error record; the others still run. Each engine's peak
    memory is reset by `run_bench`, but what an earlier engine left allocated counts: for
    exact peaks use `bench/device_run.sh` (one process per engine). Records are written
    to `settings.live_out` (a new run directory) when it is set.
    """
    from fastqwen.tools.bench import run as bench

    bench_fn = bench_fn or bench.run_bench
    records = []
    for engine in settings.live_engines:
        log.info("live bench: %s on %s", engine, settings.model)
        options = {"compile": settings.static_compile} if engine == "static" else None
        try:
            found = bench_fn(
                engine,
                settings.model,
                device="cuda",
                dtype="bfloat16",
                engine_options=options,
                runs=settings.runs,
                max_new_tokens=settings.max_new_tokens,
            )
        except Exception as exc:  # one failed engine must not lose the others
            log.exception("live bench of %s failed", engine)
            found = [bench.error_record(engine, settings.model, exc, device="cuda")]
        for record in found:
            name = f"{engine}-{record.get('size') or 'model'}.json"
            records.append({**record, "label": label(record), "file": name})
    run = BenchRun("live", sorted(records, key=_sort_key))
    if settings.live_out:
        run.path = write_run(run, _in_project(settings.live_out))
    return run


def write_run(run: BenchRun, directory: str | Path) -> Path:
    """One JSON file per record in `directory` (created); never overwrites a file."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for record in run.records:
        path = directory / record["file"]
        if path.exists():
            raise ValueError(f"{path} exists; bench results are never overwritten")
        data = {k: v for k, v in record.items() if k not in ("label", "file")}
        path.write_text(json.dumps(data, indent=1) + "\n")
    return directory


# ------------------------------------------------------------------ display


def _display(*objs) -> None:
    import pandas as pd
    from IPython.display import display

    with pd.option_context("display.max_colwidth", None, "display.max_columns", None):
        display(*objs)


def show_run(run: BenchRun | None) -> None:
    """Header, engines table, the two charts, speedups and targets of one run."""
    from IPython.display import Image, Markdown

    if run is None:
        _display(Markdown(f"No bench results under `{RESULTS_DIR}`."))
        return
    _display(
        Markdown(header_markdown(run)),
        Markdown("**Engines**"),
        formatted(engines_table(run)).set_index(["engine", "size"]),
    )
    _display(
        Image(data=ms_per_frame_figure(run), format="png", alt=f"ms per frame, {run.name}"),
        Image(data=ttfa_figure(run), format="png", alt=f"time to first audio, {run.name}"),
    )
    table = speedups(run)
    _display(
        Markdown(
            "**Speedups of the static engine** (their time / ours, same device call). Time to "
            "first audio depends on the first chunk: see `first chunk frames` above."
        ),
        formatted(table).set_index(["size", "static vs"])
        if len(table)
        else Markdown("*no static/baseline pair in this run*"),
        Markdown("**Targets** (issue 4; the static engine of this run)"),
        targets_table(run).set_index("target"),
    )


def show_runs_list(shown: BenchRun | None = None, root: str | Path = RESULTS_DIR) -> None:
    """The committed runs, oldest first, so another can be picked with `results_dir`."""
    from IPython.display import Markdown

    lines = [
        f"- `{r.name}`: {', '.join(r.values('device_name'))}, commit "
        f"{', '.join(map(str, r.values('git_commit'))) or 'unknown'}, {r.newest_timestamp}"
        f"{' (shown above)' if shown is not None and r.path == shown.path else ''}"
        for r in list_runs(root)
    ]
    _display(
        Markdown(
            "**Runs in `bench/results/`** (oldest first; pick one with `results_dir`)\n\n"
            + "\n".join(lines)
        )
    )


def show_skipped_live(settings: BenchSettings) -> None:
    """One line on why there is no live run."""
    from IPython.display import Markdown

    if settings.run_live is False:
        why = "`run_live=False`"
    elif settings.results_dir is not None:
        why = f"`results_dir={settings.results_dir!r}` was given (set `run_live=True` to add one)"
    else:
        why = "no CUDA GPU here"
    _display(Markdown(f"No live run: {why}."))
