"""The report: `python -m fastqwen.tools.report` arguments, offline HTML, the index, and what the
notebooks display (players, tables, plots) on a tiny generated set; the listening panel's
tests are in test_listen.py.
"""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

import nbformat
import pytest

from fastqwen.tools import report
from fastqwen.tools.notebook import plots, views
from fastqwen.tools.samplesets import artifacts as A
from fastqwen.tools.samplesets import run as R
from fastqwen.tools.samplesets.settings import resolve_settings

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


# ------------------------------------------------------------------ command line


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("6", 6),
        ("0.5", 0.5),
        ("aiden", "aiden"),
        ("aiden,serena", "aiden,serena"),
        ('["a", "b"]', '["a", "b"]'),  # as papermill -p: list parameters parse it later
        ("False", False),
        ("true", "true"),
        ("None", None),
    ],
)
def test_parse_value(text, value):
    assert report.parse_value(text) == value


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("speakers", '["vivian"]', ("vivian",)),
        ("speakers", "vivian,ryan", ("vivian", "ryan")),
        ("speakers", '["vivian", "ryan"]', ("vivian", "ryan")),
        ("prompts", '["One, two.", "Three."]', ("One, two.", "Three.")),
        ("max_new_tokens", "12", 12),
        ("do_sample", "false", False),
        ("do_sample", "False", False),
        ("top_p", "0.5", 0.5),
    ],
)
def test_report_and_papermill_read_values_alike(name, text, expected):
    # Issue 15, item 8: -p speakers '["vivian"]' worked in fastqwen.tools.report but not
    # under papermill ("unknown speaker(s) ['[\"vivian\"]']").
    from papermill.cli import _resolve_type  # what `papermill -p` passes to the notebook

    def value(settings):
        if name == "speakers":
            return settings.voices
        return getattr(settings.sampling if name != "prompts" else settings, name)

    ours = resolve_settings("customvoice", {name: report.parse_value(text)}, env={})
    theirs = resolve_settings("customvoice", {name: _resolve_type(text)}, env={})
    assert value(ours) == value(theirs) == expected
    with pytest.raises(ValueError, match="speakers"):
        resolve_settings("customvoice", {"speakers": _resolve_type('["vivian"')}, env={})


def test_parameters_go_only_to_notebooks_that_declare_them():
    given = {"speakers": "aiden", "max_new_tokens": 6, "ref_texts": ["a", None, None]}
    cv = report.notebook_parameters(NOTEBOOKS / "customvoice_parity.ipynb", given)
    icl = report.notebook_parameters(NOTEBOOKS / "icl_parity.ipynb", given)
    assert cv == {"speakers": "aiden", "max_new_tokens": 6, "interactive": False}
    assert icl == {"max_new_tokens": 6, "ref_texts": ["a", None, None], "interactive": False}


def test_default_notebooks_are_in_the_project_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("FASTQWEN_PROJECT_DIR", raising=False)
    monkeypatch.chdir(ROOT)
    paths = report.default_notebooks()
    assert [p.name for p in paths][:2] == ["customvoice_parity.ipynb", "icl_parity.ipynb"]
    assert paths[0] == NOTEBOOKS / "customvoice_parity.ipynb"
    assert ("benchmark.ipynb" in [p.name for p in paths]) == (
        NOTEBOOKS / "benchmark.ipynb"
    ).is_file()
    monkeypatch.chdir(tmp_path)  # elsewhere: that folder's notebooks/, never this checkout's
    assert report.default_notebooks()[0] == tmp_path / "notebooks" / "customvoice_parity.ipynb"
    monkeypatch.setenv("FASTQWEN_PROJECT_DIR", str(ROOT))
    assert report.default_notebooks()[0] == paths[0]


def test_bad_arguments_fail_before_running_anything(tmp_path, capsys):
    assert report.main(["--reports-dir", str(tmp_path), "-p", "speker", "aiden"]) == 2
    assert "no notebook has parameter(s) ['speker']" in capsys.readouterr().err
    assert report.main(["--notebooks", str(tmp_path / "nope.ipynb")]) == 2
    assert "not found" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_html_is_offline_without_code_or_streams(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    cell = nbformat.v4.new_code_cell("secret_code_line = 1")
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stderr", text="progress 50%"),
        nbformat.v4.new_output(
            "display_data",
            data={
                "text/html": '<audio controls data-wav="a.wav" src="data:audio/wav;base64,AAAA">'
                "</audio>",
                "text/plain": "<audio>",
            },
        ),
    ]
    nb.cells = [nbformat.v4.new_markdown_cell("# Title"), cell]
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, str(path))
    text = report.notebook_html(path)
    assert "Title" in text and 'data-wav="a.wav"' in text
    assert "secret_code_line" not in text and "progress 50%" not in text
    assert not re.search(r"""(src|href)=["']https?:""", text)
    assert "cdnjs" not in text and "unpkg" not in text and "require.js" not in text


def test_index_links_reports_with_date_commit_and_models(tmp_path):
    run = report.NotebookRun(
        Path("notebooks/customvoice_parity.ipynb"),
        tmp_path / "customvoice_parity.ipynb",
        tmp_path / "customvoice_parity.html",
        {},
        ran=True,
        wall_s=12.3,
        models=["auto:X → random:tiny-custom_voice (random weights)"],
        pairs="4/4",
    )
    run.html.write_text("x")
    failed = report.NotebookRun(
        Path("notebooks/icl_parity.ipynb"),
        tmp_path / "icl_parity.ipynb",
        tmp_path / "icl_parity.html",
        {},
        error="ValueError: y",
    )
    text = report.index_html([run, failed], "2026-01-01 10:00:00 UTC", "abc123-dirty")
    assert '<a href="customvoice_parity.html">' in text
    assert "2026-01-01 10:00:00 UTC" in text and "abc123-dirty" in text
    assert "random:tiny-custom_voice" in text and "4/4" in text
    assert "FAILED: run failed: ValueError: y" in text


def _notebook(path: Path, parameters: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    cell = nbformat.v4.new_code_cell(parameters)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell]
    nbformat.write(nb, str(path))
    return path


def test_a_failed_conversion_does_not_stop_the_other_notebooks(tmp_path, monkeypatch):
    # Issue 11: an nbconvert error on the first notebook ended the report before the
    # second ran. Each run and each conversion is independent; the index and the exit
    # status say which failed.
    monkeypatch.chdir(tmp_path)
    first = _notebook(tmp_path / "first.ipynb", "x: int = 1  # a parameter")
    second = _notebook(tmp_path / "second.ipynb", "x: int = 1  # a parameter")
    executed, converted = [], []

    def execute(notebook, output, params, kernel, cwd):
        executed.append((notebook.name, params, cwd))
        nbformat.write(nbformat.read(str(notebook), as_version=4), str(output))

    def convert(ipynb):
        converted.append(ipynb.name)
        if ipynb.name == "first.ipynb":
            raise RuntimeError("nbconvert: template\nnot found")
        return "<html>second</html>"

    argv = ["--notebooks", str(first), str(second), "--reports-dir", "out", "-p", "x", "2"]
    status = report.main(argv, execute=execute, convert=convert)
    assert status == 1
    assert executed == [("first.ipynb", {"x": 2}, tmp_path), ("second.ipynb", {"x": 2}, tmp_path)]
    assert converted == ["first.ipynb", "second.ipynb"]
    out = tmp_path / "out"  # relative to the project folder (here the working directory)
    assert not (out / "first.html").exists()
    assert (out / "second.html").read_text() == "<html>second</html>"
    index = (out / "index.html").read_text()
    rows = {
        m[0]: m[1]
        for m in re.findall(r"<tr><td>(?:<a [^>]*>)?(\w+)(?:</a>)?</td><td>([^<]*)", index)
    }
    assert (
        rows["first"]
        == "FAILED: HTML conversion failed: RuntimeError: nbconvert: template not found"
    )
    assert rows["second"] == "ok"


def test_a_failed_run_does_not_stop_the_other_notebooks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = _notebook(tmp_path / "first.ipynb", "x = 1")
    second = _notebook(tmp_path / "second.ipynb", "x = 1")

    def execute(notebook, output, params, kernel, cwd):
        if notebook.name == "first.ipynb":
            raise RuntimeError("Kernel died before replying to kernel_info")
        nbformat.write(nbformat.read(str(notebook), as_version=4), str(output))

    status = report.main(
        ["--notebooks", str(first), str(second)], execute=execute, convert=lambda p: "ok"
    )
    assert status == 1
    index = (tmp_path / "reports" / "index.html").read_text()
    assert "FAILED: run failed: RuntimeError: Kernel died" in index
    assert (tmp_path / "reports" / "second.html").is_file()
    assert report.main(["--notebooks", str(second)], execute=execute, convert=str) == 0


def test_an_interrupted_report_leaves_an_index_that_says_so(tmp_path, monkeypatch):
    # Issue 15, item 4: after a kill, index.html was the earlier report's, as if complete.
    monkeypatch.chdir(tmp_path)
    first = _notebook(tmp_path / "first.ipynb", "x = 1")
    second = _notebook(tmp_path / "second.ipynb", "x = 1")
    seen = {}

    def execute(notebook, output, params, kernel, cwd):
        seen[notebook.name] = (tmp_path / "reports" / "index.html").read_text()
        if notebook.name == "second.ipynb":
            raise KeyboardInterrupt  # killed while the second notebook runs
        nbformat.write(nbformat.read(str(notebook), as_version=4), str(output))

    with pytest.raises(KeyboardInterrupt):
        report.main(["--notebooks", str(first), str(second)], execute=execute, convert=str)
    assert seen["first.ipynb"].count("NOT FINISHED") == 2
    index = (tmp_path / "reports" / "index.html").read_text()
    assert index == seen["second.ipynb"]  # what a kill leaves behind
    rows = dict(re.findall(r"<tr><td>(?:<a [^>]*>)?(\w+)(?:</a>)?</td><td>([^<]*)</td>", index))
    assert rows["first"] == "ok" and rows["second"].startswith("NOT FINISHED")


def test_a_second_report_into_one_folder_fails_at_once(tmp_path, monkeypatch, capsys):
    # Issue 15, item 2: two reports at once also wrote the same reports/ files.
    monkeypatch.chdir(tmp_path)
    nb = _notebook(tmp_path / "first.ipynb", "x = 1")

    def execute(notebook, output, params, kernel, cwd):
        raise AssertionError("must not run a notebook")

    with A.folder_lock(tmp_path / "reports", "report", "the first report", "wait"):
        assert report.main(["--notebooks", str(nb)], execute=execute, convert=str) == 2
    assert "another fastqwen.tools.report is writing to" in capsys.readouterr().err
    assert not (tmp_path / "reports" / "index.html").exists()


# ------------------------------------------------------------------ what the notebooks show


def test_players_embed_the_wav_files(tiny_run):
    outcome = tiny_run.outcomes[0]
    page = views.players_html(outcome)
    assert page.count("<audio") == 2
    for side in ("static", "dynamic"):
        path = outcome.files[side]
        assert f'data-wav="{path.name}"' in page
        assert base64.b64encode(path.read_bytes()).decode() in page  # the file's own bytes


def test_tables(tiny_run):
    outcome = tiny_run.outcomes[0]
    timing = views.timing_table(outcome)
    assert len(timing) == 2 and "time to first audio ms (streaming)" in timing.columns
    assert timing.iloc[0]["frames"] == outcome.report.static.frames
    assert timing.iloc[1]["time to first audio ms (streaming)"] == "-"  # reference: no streaming
    parity = views.parity_table(outcome)["value"]
    assert parity["first divergent frame"] == "none (identical codes)"
    assert parity["static: end"].startswith("cut at max_new_tokens")
    assert "teacher-forced KL cb0: mean / max" in parity.index
    summary = views.summary_table(tiny_run)
    assert list(summary.index) == ["custom_aiden_gen1", "custom_aiden_gen2"]
    assert set(summary["status"]) == {"ok"}
    settings = views.settings_table(tiny_run.settings)
    assert settings.loc["max_new_tokens", "value"] == 5
    assert settings.loc["max_new_tokens", "from"] == "parameter"
    # Issue 15 (report polish): prompts were joined with " | ", values right-aligned.
    assert " | " not in settings.loc["prompts", "value"]
    listed = views.prompts_markdown(tiny_run.settings)
    assert all(f"{k}. {p}" in listed for k, p in enumerate(tiny_run.settings.prompts, 1))
    html_table = views.left_aligned(settings).to_html()
    assert "text-align: left" in html_table and "max_new_tokens" in html_table


def test_banner_and_error_box(tiny_run):
    assert "audio is noise" in views.banner_html(tiny_run.banner)
    assert views.banner_html("") == ""
    failed = R.PairOutcome(
        "customvoice", "aiden", 1, "text", error="RuntimeError: x", traceback="Traceback ..."
    )
    box = views.error_html(failed)
    assert "custom_aiden_gen1 failed" in box and "RuntimeError: x" in box


def test_plots_are_png(tiny_run):
    rep = tiny_run.outcomes[0].report
    png = plots.audio_figure(rep.static.audio, rep.dynamic.audio, rep.static.sample_rate, "t")
    assert png.startswith(b"\x89PNG")
    curve = plots.divergence_figure(rep.forced.cb0_kl, rep.forced.sub_kl, 2, "t")
    assert curve.startswith(b"\x89PNG")
    # The legend sits beside the axes, never over the curves (issue 15, report polish).
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = plots.divergence_plot([1e-3] * 40, [1e-2] * 40, 2, "t")
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    (ax,) = fig.axes
    legend = ax.get_legend().get_window_extent(renderer)
    assert legend.x0 >= ax.get_window_extent(renderer).x1
    assert plots.audio_figure(rep.static.audio[:10], rep.dynamic.audio[:0], 24000, "short")


def test_known_noise_stays_out_of_the_terminal(monkeypatch, caplog):
    # Issue 15 (report polish): "SoX could not be found!", "Kernel is running over TCP
    # without encryption" and "Setting `pad_token_id`..." flooded the progress bars.
    import logging
    import subprocess
    import sys

    env = dict(os.environ, PATH=os.path.dirname(sys.executable))  # no sox program on PATH
    code = "import fastqwen.tools.samplesets, qwen_tts; print('imported')"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.stdout.strip().endswith("imported"), out.stderr
    assert "SoX could not be found" not in out.stderr and "sox: not found" not in out.stderr
    assert "flash-attn is not installed" not in out.stdout + out.stderr  # issue 18, item 7
    with caplog.at_level(logging.WARNING):
        logging.getLogger("transformers.generation.utils").warning(
            "Setting `pad_token_id` to `eos_token_id`:2150 for open-end generation."
        )
        logging.getLogger("transformers.generation.utils").warning("something new")
    assert "pad_token_id" not in caplog.text and "something new" in caplog.text

    seen = {}
    monkeypatch.setattr("papermill.execute_notebook", lambda *a, **kw: seen.update(kw))
    report.execute_with_papermill(Path("a.ipynb"), Path("b.ipynb"), {}, "python3", Path("."))
    assert "--IPKernelApp.log_level=ERROR" in seen["extra_arguments"]
