"""What the benchmark and serving notebooks show: one run's header, tables, charts, and the
run list.

The pieces are built by `records` (loading), `tables` and `charts` (DataFrames, Markdown and
PNG bytes, tested without a kernel); these `show_*` functions only display them, and
`live` holds the notebook's settings and the live run.
"""

from __future__ import annotations

from pathlib import Path

from fastqwen.tools.bench import serving
from fastqwen.tools.bench.charts import ms_per_frame_figure, throughput_figure, ttfa_figure
from fastqwen.tools.bench.live import BenchSettings
from fastqwen.tools.bench.records import BenchRun, list_runs, results_root
from fastqwen.tools.bench.tables import (
    batch_notes,
    batch_table,
    engines_table,
    formatted,
    header_markdown,
    modes_table,
    random_weights_banner,
    speedups,
    targets_table,
)
from fastqwen.tools.env import rel
from fastqwen.tools.notebook import display


def show_run(run: BenchRun | None) -> None:
    """Header, engines table, the two charts, speedups and targets of one run."""
    from IPython.display import Image, Markdown

    if run is None:
        display.show(Markdown(f"No bench results under `{rel(results_root())}`."))
        return
    from IPython.display import HTML

    banner = random_weights_banner(run)
    if banner:
        display.show(HTML(display.banner_html(banner)))
    display.show(
        Markdown(header_markdown(run)),
        Markdown("**Engines**"),
        formatted(engines_table(run)).set_index(["engine", "size"]),
    )
    display.show(
        Image(data=ms_per_frame_figure(run), format="png", alt=f"ms per frame, {run.name}"),
        Image(data=ttfa_figure(run), format="png", alt=f"time to first audio, {run.name}"),
    )
    modes = modes_table(run)
    if len(modes):
        display.show(
            Markdown(
                "**Time to first audio by mode**: voice clone from a reference file (cached: "
                "its prompt from the voice cache; new: both encoders run) beside custom voice"
            ),
            formatted(modes).set_index(["size", "mode", "reference"]),
        )
    table = speedups(run)
    display.show(
        Markdown(
            "**Speedups of the static engine** (their time / ours, same device call). Time to "
            "first audio depends on the first chunk: see `first chunk frames` above."
        ),
        formatted(table).set_index(["size", "static vs"])
        if len(table)
        else Markdown("*no static/baseline pair in this run*"),
        Markdown(
            "**Targets**: what the fastqwen static engine is built to reach on one GPU at "
            "batch 1, against its numbers in this run"
        ),
        targets_table(run).set_index("target"),
    )


def show_batch_run(run: BenchRun | None) -> None:
    """Throughput against batch size (ours and the anchors): a table and a chart; nothing
    at all when `run` is None or has no batch records."""
    if run is None or not run.batch:
        return
    from IPython.display import Image, Markdown

    notes = "".join(f"\n- {line}" for line in batch_notes(run))
    display.show(
        Markdown(
            "## Throughput vs batch size\n\nB requests submitted "
            "together, each generating the same number of frames (no early EOS). *audio s/s*: "
            "all the audio over the round's wall time (submit to last decoded result); "
            "*step ms*: one frame step for the whole batch; *stream x real time*: each "
            "stream's audio over its own generation time. Best of the timed rounds." + notes
        ),
        Markdown(header_markdown(run)),
        formatted(batch_table(run)).set_index(["engine", "batch"]),
        Image(data=throughput_figure(run), format="png", alt=f"throughput, {run.name}"),
    )


def show_runs_list(shown: BenchRun | None = None, root: str | Path | None = None) -> None:
    """The committed runs under `root` (default `bench/results`), oldest first, so another
    can be picked with `results_dir`."""
    from IPython.display import Markdown

    lines = [
        f"- `{r.name}`: {', '.join(r.values('device_name'))}, commit "
        f"{', '.join(map(str, r.values('git_commit'))) or 'unknown'}, {r.newest_timestamp}"
        f"{' (shown above)' if shown is not None and r.path == shown.path else ''}"
        for r in list_runs(root)
    ]
    display.show(
        Markdown(
            f"**Runs in `{rel(results_root(root))}`** "
            "(oldest first; pick one with `results_dir`)\n\n" + "\n".join(lines)
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
    display.show(Markdown(f"No live run: {why}."))


def show_serving_run(run: serving.ServingRun | None) -> None:
    """A serving run: where it comes from, the server line, the table per requested rate,
    and the p95 TTFA and throughput charts (published figures of other servers as
    references)."""
    from IPython.display import HTML, Image, Markdown

    if run is None:
        display.show(
            Markdown(
                f"No serving run under `{rel(results_root())}` (folders with "
                f"`{serving.RESULT_GLOB}`, from `bench/serve_device_run.sh`), and no tiny "
                "run asked for."
            )
        )
        return
    if run.path is None:
        display.show(
            HTML(
                display.banner_html(
                    "Tiny CPU run, not a measurement: a random-weight tiny model on this "
                    "machine's CPU, sharing it with the load tester. The published figures "
                    "are 1.7B models on an H100."
                )
            )
        )
        where = "made here just now"
    else:
        where = f"`{rel(run.path)}`"
    lines = [f"**Serving run `{run.name}`** ({where})"]
    if run.health:
        lines.append(serving.health_text(run.health))
    if run.skipped:
        lines.append(f"Skipped (not load-test results): {', '.join(run.skipped)}")
    display.show(
        Markdown("\n\n".join(lines)),
        formatted(serving.serving_table(run)).set_index("rate"),
        Image(data=serving.ttfa_figure(run), format="png", alt=f"TTFA vs rate, {run.name}"),
        Image(data=serving.throughput_figure(run), format="png", alt=f"throughput, {run.name}"),
    )


def show_serving_runs_list(shown: serving.ServingRun | None = None) -> None:
    """The committed serving runs, oldest first, so another can be picked with `results_dir`."""
    from IPython.display import Markdown

    runs = serving.list_serving_runs()
    lines = [
        f"- `{r.name}`: rates {serving.rates_text(r)}"
        f", {r.newest}{' (shown above)' if shown is not None and r.path == shown.path else ''}"
        for r in runs
    ] or ["- none yet"]
    display.show(
        Markdown(
            f"**Serving runs in `{rel(results_root())}`** (oldest first)\n\n" + "\n".join(lines)
        )
    )


def show_cold_starts(root: str | Path | None = None) -> None:
    """The newest cold start of each engine and frame execution under `root` (default
    `bench/results`): a fresh process to the end of its first generation, with empty and
    with warm compile caches (`fastqwen bench --cold-start`, `bench/anchor_cold_start.py`)."""
    from IPython.display import Markdown

    from fastqwen.tools.bench.cold_start import (
        cold_start_markdown,
        cold_start_rows,
        load_cold_starts,
    )

    rows = cold_start_rows(load_cold_starts(root))
    display.show(Markdown("**Cold starts** (newest of each)\n\n" + cold_start_markdown(rows)))


__all__ = [
    "show_batch_run",
    "show_cold_starts",
    "show_run",
    "show_runs_list",
    "show_serving_run",
    "show_serving_runs_list",
    "show_skipped_live",
]
