"""`python -m fastqwen.tools.report` (`make report`): run the notebooks, convert them, index them.

Each notebook (the two parity notebooks, and `notebooks/benchmark.ipynb` when it exists) is
executed by papermill into `reports/<name>.ipynb` with `interactive=False`, then converted
to `reports/<name>.html` with the code hidden. Each notebook's run and its conversion are
independent: a failing notebook keeps papermill's error notebook (and its HTML, which shows
the error), a failing conversion loses only that HTML, and the others still run. The index
names what failed and why, and the exit status is 1.

Folders are relative to the project folder (`fastqwen.tools.env.project_dir`: the working
directory, or `$FASTQWEN_PROJECT_DIR`), and papermill runs the kernels there too, so the
notebooks' relative defaults (`samples/parity`, `bench/results`) land in the same place
as when `make report` is run from the project root.

The HTML is self-contained and opens offline: audio players and figures are embedded as
data URIs, tables are plain HTML, and the template's CDN scripts (require.js, MathJax,
mermaid, the widget manager) are left out, since no content needs them. Text streams
(progress bars, warnings, import chatter) stay in the `.ipynb` and out of the HTML.
`reports/index.html` links every report with the run date, git commit and models.
"""

from __future__ import annotations

import argparse
import html
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fastqwen.tools.env import git_commit, project_dir
from fastqwen.tools.quiet import KERNEL_ARGUMENTS
from fastqwen.tools.samplesets import artifacts as A
from fastqwen.tools.samplesets.settings import NOTEBOOKS, SETS, rel, resolve_settings

log = logging.getLogger(__name__)

BENCHMARK_NOTEBOOK = "benchmark.ipynb"
NOTEBOOK_DIR = Path("notebooks")  # relative to the project folder
REPORTS_DIR = Path("reports")
SET_OF_NOTEBOOK = {Path(nb).stem: name for name, nb in NOTEBOOKS.items()}
# An nbconvert template: the lab template without its CDN scripts (require.js, MathJax,
# mermaid and the widget manager); content here never needs them.
OFFLINE_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
"""


def default_notebooks(project: Path | None = None) -> list[Path]:
    """The parity notebooks, plus the benchmark notebook when it exists, under `project`'s
    `notebooks/` (default: the project folder)."""
    folder = (project or project_dir()) / NOTEBOOK_DIR
    paths = [folder / NOTEBOOKS[name] for name in SETS]
    bench = folder / BENCHMARK_NOTEBOOK
    return paths + ([bench] if bench.is_file() else [])


def parse_value(text: str):
    """A `-p` value exactly as `papermill -p` reads it (True/False/None, an int, a float, else
    the string), so both commands pass a notebook the same value; list-valued parameters
    then accept a JSON list string in either (`fastqwen.tools.samplesets.settings`)."""
    aliases = {"True": True, "False": False, "None": None}
    if text in aliases:
        return aliases[text]
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def declared_parameters(notebook: Path) -> set[str]:
    """Names in a notebook's `parameters` cell, as papermill infers them."""
    import papermill

    return set(papermill.inspect_notebook(str(notebook)))


def notebook_parameters(notebook: Path, given: dict) -> dict:
    """The given parameters this notebook declares, plus `interactive=False` when it has it."""
    declared = declared_parameters(notebook)
    params = {k: v for k, v in given.items() if k in declared}
    if "interactive" in declared:
        params["interactive"] = False
    return params


# ------------------------------------------------------------------ HTML


def _strip_streams(nb) -> None:
    """Drop stdout/stderr text from every cell; rich outputs and errors stay."""
    for cell in nb.cells:
        if cell.get("cell_type") == "code":
            cell["outputs"] = [o for o in cell.get("outputs", []) if o.output_type != "stream"]


def notebook_html(ipynb: Path) -> str:
    """An executed notebook as self-contained HTML with the code inputs hidden."""
    import nbformat
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(ipynb), as_version=4)
    nb.metadata.pop("widgets", None)  # widget state would pull the widget manager from a CDN
    _strip_streams(nb)
    exporter = HTMLExporter(
        template_name="lab",
        extra_loaders=[DictLoader({"fastqwen_offline.html.j2": OFFLINE_TEMPLATE})],
        template_file="fastqwen_offline.html.j2",
        exclude_input=True,
        exclude_input_prompt=True,
        exclude_output_prompt=True,
    )
    body, _ = exporter.from_notebook_node(nb)
    return body


# ------------------------------------------------------------------ running


@dataclass
class NotebookRun:
    """One notebook of the report: its run and its HTML conversion, each ok or failed."""

    notebook: Path
    ipynb: Path
    html: Path
    parameters: dict
    error: str | None = None  # why the run failed
    html_error: str | None = None  # why the HTML conversion failed
    ran: bool = False  # the run finished without error
    wall_s: float = 0.0
    models: list[str] = field(default_factory=list)
    pairs: str = ""

    @property
    def ok(self) -> bool:
        return self.ran and self.html_error is None

    @property
    def status(self) -> str:
        """ "ok", or what failed and why, in a line."""
        problems = []
        if not self.ran:
            problems.append(f"run failed: {self.error or 'no output'}")
        if self.html_error:
            problems.append(f"HTML conversion failed: {self.html_error}")
        return "; ".join(problems) or "ok"


def _brief(exc: BaseException, limit: int = 300) -> str:
    """`Type: message` on one line, cut to `limit` characters."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def execute_with_papermill(notebook: Path, output: Path, params: dict, kernel: str, cwd: Path):
    """Run `notebook` into `output` in a `kernel` started in `cwd`."""
    import papermill

    papermill.execute_notebook(
        str(notebook),
        str(output),
        parameters=params,
        kernel_name=kernel,
        cwd=str(cwd),
        stderr_file=sys.stderr,  # the kernel's progress bars (tqdm) reach the terminal
        progress_bar=False,
        extra_arguments=list(KERNEL_ARGUMENTS),  # no TCP warning from the kernel itself
    )


def run_notebook(
    notebook: Path,
    reports_dir: Path,
    params: dict,
    kernel: str,
    *,
    cwd: Path | None = None,
    execute: Callable[..., None] = execute_with_papermill,
    convert: Callable[[Path], str] = notebook_html,
) -> NotebookRun:
    """Run, then convert to HTML (also a failed run's error notebook); never raises for
    either, so the caller goes on with the next notebook.

    Args:
        cwd: the kernel's working directory (default: the project folder).
        execute: `(notebook, output, params, kernel, cwd)`, papermill by default.
        convert: executed notebook -> HTML text, `notebook_html` by default.
    """
    name = notebook.stem
    run = NotebookRun(notebook, reports_dir / f"{name}.ipynb", reports_dir / f"{name}.html", params)
    log.info("running %s with %s", rel(notebook), params)
    t0 = time.perf_counter()
    try:
        execute(notebook, run.ipynb, params, kernel, cwd or project_dir())
        run.ran = True
    except Exception as exc:  # a failed notebook must not stop the others
        ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
        run.error = f"{ename}: {evalue}" if ename else _brief(exc)  # papermill: the cell's
        log.error("%s failed: %s (see %s)", name, run.error, rel(run.ipynb))
    run.wall_s = time.perf_counter() - t0
    if run.ipynb.is_file():
        try:
            A.atomic_write_text(run.html, convert(run.ipynb))
        except Exception as exc:  # nor may a failed conversion
            run.html_error = _brief(exc)
            log.error("%s: HTML conversion failed: %s", name, run.html_error)
    return run


def _set_info(run: NotebookRun, given: dict, started: str) -> None:
    """Model names and pair counts from summary.json, for a parity notebook run now."""
    set_name = SET_OF_NOTEBOOK.get(run.notebook.stem)
    if set_name is None:
        return
    try:
        settings = resolve_settings(set_name, run.parameters)
    except ValueError:
        return
    for folder in (settings.output_dir, settings.output_dir / A.FAILED_DIR / set_name):
        section = A.read_summary(folder)["sets"].get(set_name)
        if section and section["run"]["started"] >= started:
            break  # written by this run: published, or kept as failed
    else:
        return
    model = section["model"]
    line = model["requested"]
    if model["resolved"] != model["requested"]:
        line += f" → {model['resolved']}"
    if model["is_random"]:
        line += " (random weights)"
    run.models.append(line)
    ok = sum(r["status"] == "ok" for r in section["rows"])
    run.pairs = f"{ok}/{len(section['rows'])}"


NOT_FINISHED = (
    "NOT FINISHED: the report stopped before this notebook finished (if it is not running "
    "now, it was interrupted; the HTML here, if any, is from an earlier report)"
)


def index_html(
    runs: list[NotebookRun], started: str, commit: str | None, pending: Sequence[Path] = ()
) -> str:
    """`reports/index.html`: one row per report; `pending` notebooks have not finished yet.

    The index is rewritten before and after each notebook, so a report killed halfway
    leaves an index that says which notebooks did not finish."""
    rows = []
    for r in runs:
        status = "ok" if r.ok else f"FAILED: {html.escape(r.status)}"
        link = (
            f'<a href="{r.html.name}">{r.notebook.stem}</a>'
            if r.html.is_file()
            else r.notebook.stem
        )
        rows.append(
            f"<tr><td>{link}</td><td>{status}</td><td>{r.pairs}</td>"
            f"<td>{'<br>'.join(html.escape(m) for m in r.models)}</td>"
            f'<td>{r.wall_s:.0f} s</td><td><a href="{r.ipynb.name}">{r.ipynb.name}</a></td></tr>'
        )
    rows += [
        f"<tr><td>{nb.stem}</td><td>{html.escape(NOT_FINISHED)}</td><td></td><td></td>"
        "<td></td><td></td></tr>"
        for nb in pending
    ]
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>fastqwen reports</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:4px 10px;text-align:left;
border-bottom:1px solid #ddd;vertical-align:top}}</style></head><body>
<h1>fastqwen reports: parity sample sets and benchmark</h1>
<p>Run {html.escape(started)} &middot; git commit <code>{html.escape(commit or "unknown")}</code>
&middot; <code>python -m fastqwen.tools.report</code></p>
<table><tr><th>report</th><th>status</th><th>pairs ok</th><th>models</th><th>time</th>
<th>notebook</th></tr>
{"".join(rows)}
</table>
<p>Sample files and their README: <code>samples/parity/</code> (or the chosen
<code>output_dir</code>).</p>
</body></html>
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastqwen.tools.report",
        description="Run the parity notebooks with papermill and build HTML reports. Relative "
        "folders start at the project folder: the working directory, or $FASTQWEN_PROJECT_DIR.",
    )
    p.add_argument(
        "--notebooks",
        nargs="+",
        type=Path,
        default=None,
        help="notebooks to run (default: the parity notebooks in the project folder's "
        "notebooks/, and notebooks/benchmark.ipynb when it exists)",
    )
    p.add_argument(
        "--reports-dir",
        type=Path,
        default=None,
        help="where <name>.ipynb, <name>.html and index.html go (default: reports/ in the "
        "project folder)",
    )
    p.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="a notebook parameter, passed to each notebook that declares it, read as "
        "papermill -p reads it (lists: comma-separated or a JSON list), e.g. "
        "-p max_new_tokens 64 -p speakers aiden,serena",
    )
    p.add_argument("--kernel", default="python3", help="Jupyter kernel name (default: python3)")
    return p


def main(
    argv: Sequence[str] | None = None,
    *,
    execute: Callable[..., None] = execute_with_papermill,
    convert: Callable[[Path], str] = notebook_html,
) -> int:
    """Run, convert and index the notebooks; 0 when all of them ran and converted, 1 when
    any failed, 2 for bad arguments. `execute` and `convert` are `run_notebook`'s."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    project = project_dir()
    notebooks = [n.resolve() for n in (args.notebooks or default_notebooks(project))]
    missing = [str(n) for n in notebooks if not n.is_file()]
    if missing:
        print(f"error: notebook(s) not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    given = {name: parse_value(value) for name, value in args.parameter}
    declared = set().union(*(declared_parameters(n) for n in notebooks))
    unknown = sorted(set(given) - declared)
    if unknown:
        print(
            f"error: no notebook has parameter(s) {unknown}; known: {', '.join(sorted(declared))}",
            file=sys.stderr,
        )
        return 2
    reports = (project / (args.reports_dir or REPORTS_DIR)).resolve()
    started, commit = A.utc_now(), git_commit(project)
    runs = []
    try:
        lock = A.folder_lock(
            reports, "report", "another fastqwen.tools.report", "pass another --reports-dir"
        )
        with lock:
            for i, nb in enumerate(notebooks):
                index = index_html(runs, started, commit, pending=notebooks[i:])
                A.atomic_write_text(reports / "index.html", index)
                params = notebook_parameters(nb, given)
                run = run_notebook(
                    nb, reports, params, args.kernel, cwd=project, execute=execute, convert=convert
                )
                _set_info(run, given, started)
                runs.append(run)
            A.atomic_write_text(reports / "index.html", index_html(runs, started, commit))
    except (A.SetBusyError, NotADirectoryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for r in runs:
        log.info(
            "%s: %s in %.0f s -> %s",
            r.notebook.stem,
            r.status,
            r.wall_s,
            rel(r.html),
        )
    log.info("index: %s", rel(reports / "index.html"))
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
