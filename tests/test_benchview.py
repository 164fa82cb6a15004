"""The benchmark notebook's library: loading runs (`records`), tables, speedups and targets
(`tables`), charts, settings and the live run (`live`), and what is shown (`view`).

Fake records in temporary run directories, plus one check of the committed `bench/results`.
"""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import nbformat
import papermill
import pytest

from fastqwen.config import SamplingParams
from fastqwen.tools.bench import charts, live, records, tables, view
from fastqwen.tools.bench import run as bench
from fastqwen.tools.defaults import BENCH_RUNS, DEMO_MAX_NEW_TOKENS
from fastqwen.tools.notebook import display

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "benchmark.ipynb"


def record(engine: str, size: str = "1.7b", ms: float | None = 10.0, **extra) -> dict:
    """A bench record with the fields the views read; the rest of `bench.FIELDS` null."""
    rec = dict.fromkeys(bench.FIELDS)
    rec.update(
        schema=bench.SCHEMA,
        engine=engine,
        model=f"random:{size}-custom_voice",
        size=size,
        dtype="bfloat16",
        device_name="NVIDIA Fake",
        git_commit="abc1234",
        git_dirty=False,
        random_weights=True,
        timestamp="2026-01-01T00:00:00Z",
        frames=167,
        runs=3,
        ms_per_frame=ms,
        ms_per_frame_min=None if ms is None else ms * 0.9,
        ms_per_frame_max=None if ms is None else ms * 1.1,
        rtf=None if ms is None else 80.0 / ms,
        engine_config={"cuda_graph": True, "compile": True} if engine == "static" else None,
    )
    rec.update(extra)
    return rec


def write_dir(path, records: dict[str, dict], extra_files: dict[str, str] | None = None):
    path.mkdir(parents=True)
    for name, rec in records.items():
        (path / name).write_text(json.dumps(rec))
    for name, text in (extra_files or {}).items():
        (path / name).write_text(text)
    return path


@pytest.fixture
def run_dir(tmp_path):
    """One device call: static, anchor and dynamic at 1.7B, static and anchor at 0.6B."""
    records = {
        "static-1.7b.json": record(
            "static",
            ms=4.0,
            ttfa_ms=40.0,
            kernels_per_frame=1400.0,
            peak_gpu_bytes=3 * 2**30,
            peak_over_weights_kv=1.25,
            timestamp="2026-01-01T00:05:00Z",
        ),
        "static-eager-1.7b.json": record(
            "static", ms=80.0, engine_config={"cuda_graph": False, "compile": False}
        ),
        "anchor-1.7b.json": record("anchor", ms=20.0, ttfa_ms=280.0),
        "dynamic-1.7b.json": record("dynamic", ms=120.0),
        "static-0.6b.json": record("static", "0.6b", ms=3.5, ttfa_ms=60.0),
        "anchor-0.6b.json": record("anchor", "0.6b", ms=None, error="RuntimeError: boom"),
    }
    extra = {
        "profile_frame_1.7b.json": json.dumps({"size": "1.7b", "kernels": []}),
        "broken.json": "{not json",
        "device_run.log": "log",
    }
    return write_dir(tmp_path / "results" / "2026-01-01_fake_abc1234", records, extra)


@pytest.fixture
def run(run_dir):
    return records.load_run(run_dir)


@pytest.fixture
def in_project(monkeypatch):
    """The checkout as the project folder (relative folders such as bench/results)."""
    monkeypatch.delenv("FASTQWEN_PROJECT_DIR", raising=False)
    monkeypatch.chdir(ROOT)


def test_one_schema_for_writing_and_reading():
    assert records.SCHEMA is bench.SCHEMA and records.FIELDS is bench.FIELDS


# ------------------------------------------------------------------ loading


def test_load_run_keeps_bench_records_only_and_sorts_them(run):
    assert run.name == "2026-01-01_fake_abc1234"
    assert sorted(run.skipped) == ["broken.json", "profile_frame_1.7b.json"]
    order = [(r["label"], r["size"]) for r in run.records]
    assert order == [
        ("static", "1.7b"),
        ("static-eager", "1.7b"),
        ("anchor", "1.7b"),
        ("dynamic", "1.7b"),
        ("static", "0.6b"),
        ("anchor", "0.6b"),
    ]
    assert run.find("static", "1.7b")["file"] == "static-1.7b.json"
    assert run.find("anchor", "0.6b") is None  # the failed run is not a measurement
    assert run.newest_timestamp == "2026-01-01T00:05:00Z"


def test_labels():
    assert records.label(record("static")) == "static"
    assert records.label(record("static", engine_config={"cuda_graph": False})) == "static-eager"
    assert records.label(record("static", engine_config={"compile": False})) == "static"
    assert records.config_text(record("static")) == "graph+compile"
    assert records.config_text(record("static", engine_config={"cuda_graph": False})) == "eager"
    anchor = record("anchor", engine_config={"backend": "torch", "attn_implementation": "sdpa"})
    assert records.config_text(anchor) == "torch/sdpa"
    assert records.label(record("anchor", engine_config={"backend": "torch"})) == "anchor"


def test_newest_run_is_by_record_time_not_by_name(tmp_path):
    root = tmp_path / "results"
    write_dir(root / "b_older", {"s.json": record("static", timestamp="2026-01-01T00:00:00Z")})
    write_dir(root / "a_newer", {"s.json": record("static", timestamp="2026-02-01T00:00:00Z")})
    write_dir(root / "no_records", {}, {"gpu.json": json.dumps({"device": "x"})})
    (root / "gpu_check_x.json").write_text(json.dumps({"device": "x"}))  # not a run dir
    assert [r.name for r in records.list_runs(root)] == ["b_older", "a_newer"]
    assert records.select_run(None, root).name == "a_newer"
    assert records.select_run("b_older", root).name == "b_older"  # a name under root
    assert records.select_run(str(root / "b_older"), root).name == "b_older"  # a path
    with pytest.raises(ValueError, match="runs in .*: b_older, a_newer"):
        records.select_run("nope", root)
    with pytest.raises(ValueError, match="holds no fastqwen-bench/1 records"):
        records.select_run("no_records", root)
    assert records.select_run(None, tmp_path / "empty") is None


# ------------------------------------------------------------------ tables


def test_engines_table(run):
    table = tables.engines_table(run)
    assert len(table) == 6
    static = table.iloc[0]
    assert static["engine"] == "fastqwen static" and static["ms/frame"] == 4.0
    # readers see the engines' names, not the records' labels
    assert list(table["engine"])[2:4] == ["faster-qwen3-tts", "qwen-tts (reference)"]
    assert static["ms/frame min"] == pytest.approx(3.6) and static["peak GiB"] == 3.0
    assert math.isnan(table.iloc[2]["peak GiB"])
    assert table.iloc[5]["error"] == "RuntimeError: boom"
    shown = tables.formatted(table)
    assert shown.iloc[0]["kernels/frame"] == "1,400" and shown.iloc[0]["ms/frame"] == "4.00"
    assert shown.iloc[2]["kernels/frame"] == "-" and shown.iloc[0]["frames"] == "167"


def test_speedups_within_the_run(run):
    table = tables.speedups(run)
    # 0.6B has no anchor measurement (its run failed) and no dynamic run: no row.
    pairs = list(zip(table["size"], table["static vs"], strict=True))
    assert pairs == [("1.7b", "faster-qwen3-tts"), ("1.7b", "qwen-tts (reference)")]
    anchor, dynamic = table.iloc[0], table.iloc[1]
    assert anchor["ms/frame speedup"] == pytest.approx(5.0)
    assert anchor["TTFA speedup"] == pytest.approx(7.0)
    assert dynamic["ms/frame speedup"] == pytest.approx(30.0)
    assert math.isnan(dynamic["TTFA speedup"])  # the reference does not stream


def test_targets_are_reported_honestly(run):
    table = tables.targets_table(run).set_index("target")
    met = table["met?"].to_dict()
    assert met["decode (1.7B)"] == "yes"  # 4.0 <= 4
    assert met["decode (0.6B)"] == "no"  # 3.5 > 3
    assert met["time to first audio (0.6B)"] == "no"
    assert met["kernels per frame (1.7B)"] == "yes"
    assert met["kernels per frame (0.6B)"] == "not measured"
    assert met["peak / (weights + KV) (1.7B)"] == "yes"
    assert met["speedup over faster-qwen3-tts (1.7B)"] == "yes"  # exactly 5x
    assert met["speedup over faster-qwen3-tts (0.6B)"] == "not measured"  # its run failed
    assert table.loc["decode (1.7B)", "measured"] == "4.00 ms/frame"
    assert table.loc["speedup over faster-qwen3-tts (0.6B)", "measured"] == "-"
    assert all(table["what"]), "every target says what it measures"
    assert "first audio chunk" in table.loc["time to first audio (1.7B)", "what"]


def test_header_names_run_device_commit_and_skips(run):
    text = tables.header_markdown(run)
    for part in (run.name, "NVIDIA Fake", "abc1234", "broken.json"):
        assert part in text
    assert tables.random_weights_banner(run).startswith("Random weights")  # a banner now
    real = records.BenchRun("real", [{**r, "random_weights": False} for r in run.records])
    assert tables.random_weights_banner(real) == ""
    assert "not be comparable" not in text
    run.records[1]["git_commit"] = "def5678"
    assert "not be comparable" in tables.header_markdown(run)


def test_charts_are_pngs(run):
    for png in (charts.ms_per_frame_figure(run), charts.ttfa_figure(run)):
        assert png.startswith(b"\x89PNG")
    empty = records.BenchRun("empty", [{**record("dynamic"), "label": "dynamic", "file": "d.json"}])
    assert charts.ttfa_figure(empty).startswith(b"\x89PNG")  # "not measured", no crash


def test_show_functions_display_tables_charts_and_notes(run, run_dir, monkeypatch):
    shown = []
    monkeypatch.setattr(display, "show", lambda *objs: shown.extend(objs))
    view.show_run(run)
    kinds = [type(o).__name__ for o in shown]
    assert kinds.count("DataFrame") == 3 and kinds.count("Image") == 2
    assert kinds[0] == "HTML" and "Random weights" in shown[0].data  # the reports' banner
    words = " ".join(getattr(o, "data", "") or "" for o in shown if type(o).__name__ != "Image")
    words += " ".join(o.to_string() for o in shown if type(o).__name__ == "DataFrame")
    # Readers do not know our issue numbers or the word "anchor".
    assert "issue" not in words.lower() and "anchor" not in words
    shown.clear()
    view.show_run(None)
    view.show_runs_list(run, run_dir.parent)
    view.show_skipped_live(live.BenchSettings())
    text = "\n".join(o.data for o in shown)
    assert "No bench results" in text and "No live run: no CUDA GPU here" in text
    assert f"`{run.name}`: NVIDIA Fake, commit abc1234" in text and "(shown above)" in text


# ------------------------------------------------------------------ settings and live run


def test_notebook_settings():
    before = {"view", "Optional"}
    ns = {"view": 0, "Optional": 0, "_hidden": 1, "runs": 2, "live_engines": "static"}
    settings = live.notebook_settings(ns, before)
    assert settings.runs == 2 and settings.live_engines == ("static",)
    defaults = live.notebook_settings({**ns, "runs": None, "max_new_tokens": None}, before)
    assert defaults.runs == BENCH_RUNS and defaults.max_new_tokens == DEMO_MAX_NEW_TOKENS
    assert defaults.sampling == SamplingParams(max_new_tokens=DEMO_MAX_NEW_TOKENS)
    with pytest.raises(ValueError, match=r"unknown notebook parameter\(s\) \['rnus'\]"):
        live.notebook_settings({**ns, "rnus": 3}, before)


@pytest.mark.parametrize(
    ("run_live", "results_dir", "cuda", "wanted"),
    [
        (None, None, True, True),
        (None, None, False, False),
        (None, "2026-01-01_fake", True, False),
        (True, "2026-01-01_fake", True, True),
        (False, None, True, False),
        (False, None, False, False),
    ],
)
def test_live_rule(run_live, results_dir, cuda, wanted):
    settings = live.BenchSettings(results_dir=results_dir, run_live=run_live)
    assert settings.live_wanted(cuda) is wanted


def test_live_run_true_without_cuda_is_an_error():
    with pytest.raises(ValueError, match="run_live=True needs CUDA"):
        live.BenchSettings(run_live=True).live_wanted(False)


def test_live_run_keeps_going_after_a_failure_and_writes_records(tmp_path):
    calls = []

    def fake_bench(engine, model, **kwargs):
        calls.append((engine, model, kwargs))
        if engine == "dynamic":
            raise RuntimeError("out of memory")
        return [record(engine, ms=5.0)]

    out = tmp_path / "live"
    settings = live.BenchSettings(runs=2, max_new_tokens=20, live_out=str(out))
    run = live.live_run(settings, bench_fn=fake_bench)
    assert [c[0] for c in calls] == ["static", "dynamic"]
    sampling = SamplingParams(max_new_tokens=20)  # handed to run_bench as one object
    common = dict(device="cuda", dtype="bfloat16", runs=2, sampling=sampling)
    assert calls[0][2] == {**common, "engine_options": {"compile": False}}
    assert calls[1][2] == {**common, "engine_options": None}
    assert [r["label"] for r in run.records] == ["static", "dynamic"]
    assert run.records[1]["error"] == "RuntimeError: out of memory"
    assert run.path == out
    reloaded = records.load_run(out)
    assert sorted(r["file"] for r in reloaded.records) == ["dynamic-model.json", "static-1.7b.json"]
    assert "label" not in json.loads((out / "static-1.7b.json").read_text())
    with pytest.raises(ValueError, match="never overwritten"):
        records.write_run(run, out)


# ------------------------------------------------------------------ committed results, notebook


def test_committed_newest_run_has_static_and_anchor(in_project):
    run = records.select_run()
    assert run is not None, "no bench records under bench/results/"
    labels = {(r["label"], r["size"]) for r in run.records}
    assert {("static", "1.7b"), ("anchor", "1.7b")} <= labels
    assert len(run.values("device_name")) == 1 and run.values("git_commit")
    assert records.select_run(f"bench/results/{run.name}").path == run.path  # from the project
    table = tables.speedups(run)
    row = table[(table["size"] == "1.7b") & (table["static vs"] == "faster-qwen3-tts")]
    assert len(row) == 1 and row["ms/frame speedup"].iloc[0] > 0


def test_committed_notebook_form():
    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "strip outputs"
    assert len([c for c in code if "parameters" in c.metadata.get("tags", [])]) == 1


def test_notebook_parameters_match_the_library():
    declared = papermill.inspect_notebook(str(NOTEBOOK))
    assert tuple(declared) == live.PARAMETERS
    defaults = live.BenchSettings()
    for name, info in declared.items():
        assert info["help"], f"{name} needs a comment"
        value = ast.literal_eval(info["default"])
        expected = getattr(defaults, name)
        if name in ("runs", "max_new_tokens"):  # defined once, in fastqwen.tools.defaults
            assert value is None, f"{name} must default to None (the library's default)"
        else:
            assert (tuple(value) if isinstance(value, list) else value) == expected, name


def test_relative_folders_start_at_the_project_folder(run_dir, monkeypatch):
    results = run_dir.parent
    monkeypatch.chdir(results.parent)  # <tmp>: results/ is the folder's bench results
    monkeypatch.delenv("FASTQWEN_PROJECT_DIR", raising=False)
    assert records.results_root() == results.parent / "bench" / "results"
    assert records.select_run(None) is None  # no bench/results here, and never the checkout's
    assert records.select_run("results/2026-01-01_fake_abc1234").path == run_dir
    monkeypatch.setenv("FASTQWEN_PROJECT_DIR", str(ROOT))
    assert records.results_root() == ROOT / "bench" / "results"


def test_benchmark_notebook_speaks_to_readers():
    # Issue 15: "issue 4" and a bare "anchor" meant nothing to readers of the report.
    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    text = " ".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "issue" not in text.lower()
    assert "anchor" not in text.replace("anchor_bench", "")
    assert "faster-qwen3-tts" in text
