"""The parity notebooks: committed form, papermill parameters, and a full report run.

`pytest --nbmake notebooks/` (in `make test`) runs the notebooks themselves with the smoke
environment of `notebooks/conftest.py`; here papermill runs them with explicit parameters
through `python -m fastqwen.tools.report`, and we check what lands on disk.
"""

from __future__ import annotations

import ast
import json
import os
import re
from pathlib import Path

import nbformat
import papermill
import pytest

from fastqwen.tools import report
from fastqwen.tools.samplesets.settings import NOTEBOOKS, PARAMS, SAMPLING_FIELDS

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
SMOKE = {"max_new_tokens": "6", "speakers": "aiden", "prompt_limit": "1"}


@pytest.fixture
def clean_env(monkeypatch):
    """No PARITY_* / QWEN_TTS_* variables (nbmake's smoke settings may be in os.environ), and
    the checkout as the project folder, as for `make report` run from its root."""
    for name in list(os.environ):
        if name.startswith(("PARITY_", "QWEN_TTS_", "FASTQWEN_PROJECT_DIR")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(ROOT)


@pytest.mark.parametrize("set_name", sorted(NOTEBOOKS))
def test_committed_notebook_form(set_name):
    nb = nbformat.read(str(NB_DIR / NOTEBOOKS[set_name]), as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "strip outputs"
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1


@pytest.mark.parametrize("set_name", sorted(NOTEBOOKS))
def test_parameters_cell_matches_the_library(set_name):
    declared = papermill.inspect_notebook(str(NB_DIR / NOTEBOOKS[set_name]))
    assert list(declared) == [p.name for p in PARAMS[set_name]]
    for p in PARAMS[set_name]:
        d = declared[p.name]
        assert d["help"], f"{p.name} needs a comment"
        default = ast.literal_eval(d["default"])
        if p.env:  # None means "the environment variable, else the built-in default"
            assert default is None, f"{p.name} has ${p.env}, so it must default to None"
            assert f"${p.env}" in d["help"], f"{p.name}: the comment must name ${p.env}"
        elif p.name in SAMPLING_FIELDS:  # defaults live in SamplingParams only
            assert default is None, f"{p.name} must default to None (SamplingParams' default)"
        else:
            assert default is None or default == p.default, p.name
        if p.name in SAMPLING_FIELDS:  # the same scope as the library's help text
            for scope in ("codebook 0", "codebooks 1-15"):
                assert (scope in d["help"]) == (scope in p.help), (p.name, d["help"])


def _run_report(tmp_path, *extra):
    out = tmp_path / "parity"
    args = ["--reports-dir", str(tmp_path / "reports"), "-p", "output_dir", str(out)]
    for name, value in SMOKE.items():
        args += ["-p", name, value]
    return report.main(args + list(extra)), out, tmp_path / "reports"


@pytest.mark.slow
def test_report_end_to_end(tmp_path, clean_env):
    status, out, reports = _run_report(
        tmp_path, "--notebooks", *(str(NB_DIR / n) for n in NOTEBOOKS.values())
    )
    assert status == 0
    expected = {
        "customvoice": {f"custom_aiden_gen1_{s}.wav" for s in ("static", "dynamic")},
        "icl": {
            f"icl_{r}_gen1_{s}.wav"
            for r in ("ref_audio", "ref_audio_2", "ref_audio_3")
            for s in ("static", "dynamic")
        },
    }
    wavs = {p.name for p in out.glob("*.wav")}
    assert wavs == expected["customvoice"] | expected["icl"]
    assert (out / "icl_transcripts.txt").is_file()

    summary = json.loads((out / "summary.json").read_text())
    for set_name, n_pairs in (("customvoice", 1), ("icl", 3)):
        rows = summary["sets"][set_name]["rows"]
        assert len(rows) == n_pairs and all(r["status"] == "ok" for r in rows)
        page = (reports / f"{NOTEBOOKS[set_name].removesuffix('.ipynb')}.html").read_text()
        players = re.findall(r'<audio [^>]*data-wav="([^"]+)"', page)
        assert sorted(players) == sorted(expected[set_name])  # one player per WAV
        refs = re.findall(r'<audio [^>]*data-ref="([^"]+)"', page)
        assert page.count("<audio") == len(players) + len(refs)
        assert len(refs) == (3 if set_name == "icl" else 0)
        assert "audio is noise" in page  # random-weights banner
        assert "notebook_settings(" not in page  # code hidden
        assert not re.search(r"""(src|href)=["']https?:""", page)

    readme = (out / "README.md").read_text()
    for path in out.iterdir():  # hidden: the sets' lock files
        if path.name != "README.md" and not path.name.startswith("."):
            assert path.name in readme, f"README does not list {path.name}"
    index = (reports / "index.html").read_text()
    assert 'href="customvoice_parity.html"' in index and 'href="icl_parity.html"' in index
    assert "random:tiny-base" in index


@pytest.mark.slow
def test_unknown_papermill_parameter_stops_the_notebook(tmp_path, clean_env):
    with pytest.raises(papermill.PapermillExecutionError) as err:
        papermill.execute_notebook(
            str(NB_DIR / NOTEBOOKS["customvoice"]),
            str(tmp_path / "out.ipynb"),
            parameters={"speker": "aiden", "output_dir": str(tmp_path)},
            kernel_name="python3",
            progress_bar=False,
        )
    assert "unknown notebook parameter(s) ['speker']" in err.value.evalue
    assert "speakers" in err.value.evalue  # the valid names are listed
    assert not list(tmp_path.glob("*.wav"))


@pytest.mark.slow
def test_failed_notebook_keeps_the_error_notebook(tmp_path, clean_env):
    status, out, reports = _run_report(
        tmp_path, "--notebooks", str(NB_DIR / NOTEBOOKS["customvoice"]), "-p", "speakers", "bob"
    )
    assert status == 1
    executed = nbformat.read(str(reports / "customvoice_parity.ipynb"), as_version=4)
    errors = [
        o
        for c in executed.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.output_type == "error"
    ]
    assert errors and "unknown speaker(s) ['bob']" in errors[0].evalue
    assert "unknown speaker" in (reports / "customvoice_parity.html").read_text()
    assert "FAILED: run failed: ValueError: unknown speaker" in (reports / "index.html").read_text()


@pytest.mark.slow
def test_a_run_whose_pairs_fail_exits_non_zero_and_keeps_the_earlier_set(tmp_path, clean_env):
    # Issue 15, item 1: every pair failing gave exit 0, "ok" in the index, and no WAVs left.
    nb = str(NB_DIR / NOTEBOOKS["customvoice"])
    status, out, reports = _run_report(tmp_path, "--notebooks", nb)
    assert status == 0
    before = sorted(p.name for p in out.glob("*.wav"))
    assert before == ["custom_aiden_gen1_dynamic.wav", "custom_aiden_gen1_static.wav"]
    status, out, reports = _run_report(tmp_path, "--notebooks", nb, "-p", "language", "klingon")
    assert status == 1
    assert sorted(p.name for p in out.glob("*.wav")) == before
    index = (reports / "index.html").read_text()
    assert "FAILED: run failed: IncompleteSetError: 1 of 1 pairs" in index
    assert (out / "failed" / "customvoice" / "summary.json").is_file()
