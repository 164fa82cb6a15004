"""Serving runs (`fastqwen.tools.bench.serving`): loading folders of load-test results, the
table and charts, the fixed-length prompts, the serving notebook's form and parameters,
and `bench/serve_device_run.sh` (its syntax always; a whole CPU run of it when slow tests
run)."""

from __future__ import annotations

import ast
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import nbformat
import papermill
import pytest

from fastqwen.tools.bench import live, serving, view
from fastqwen.tools.loadtest import load_prompts

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "serving.ipynb"
SCRIPT = ROOT / "bench" / "serve_device_run.sh"


def pct(p50, p95, p99, count=10) -> dict:
    return {"count": count, "p50": p50, "p95": p95, "p99": p99, "mean": p50, "max": p99}


def result(rate: float, p95: float | None, started: str = "2026-12-02T10:00:00+00:00", **summary):
    """A hand-made `LoadtestResult.to_dict()`: TTFA p50 = p95 / 2, p99 = 2 * p95 (seconds)."""
    ttfa = pct(None, None, None, 0) if p95 is None else pct(p95 / 2, p95, 2 * p95)
    base = {
        "duration_s": 20.0,
        "scheduled": int(rate * 20),
        "sent": int(rate * 20),
        "completed": int(rate * 20),
        "errors": {},
        "error_count": 0,
        "dropped": 0,
        "achieved_rate": rate,
        "audio_s": 100.0,
        "audio_s_per_s": 5.0 * rate,
        "silent": 0,
        "underruns": 0,
        "underrun_requests": 0,
        "stall_s": 0.0,
        "max_late_s": 0.001,
        "ttfb_s": ttfa,
        "ttfa_s": ttfa,
        "e2e_s": pct(1.0, 2.0, 3.0),
        "rtf": pct(0.1, 0.2, 0.3),
    }
    return {
        "settings": {"url": "http://x", "rate": rate, "duration_s": 20.0},
        "started_at": started,
        "summary": {**base, **summary},
        "requests": [],
    }


def write_run(path: Path, results: dict[str, dict], health: dict | None = None) -> Path:
    path.mkdir(parents=True)
    for name, data in results.items():
        (path / name).write_text(json.dumps(data))
    if health is not None:
        (path / serving.HEALTH_FILE).write_text(json.dumps(health))
    return path


HEALTH = {
    "model": "random:1.7b-custom_voice",
    "device": "cuda",
    "device_name": "NVIDIA H200",
    "max_batch_size": 64,
    "time_to_healthy_s": 42.5,
    "git_commit": "abc1234",
}


@pytest.fixture
def run_dir(tmp_path):
    return write_run(
        tmp_path / "results" / "2026-12-02_h200_abc1234_serving",
        {
            # named so that file order (10 before 5) differs from rate order
            "loadtest-10.json": result(10.0, 0.060),
            "loadtest-5.json": result(5.0, 0.040),
            "loadtest-1.json": result(1.0, 0.030),
            "loadtest-80.json": result(
                80.0,
                0.900,
                achieved_rate=79.0,
                completed=1000,
                error_count=580,
                errors={"http_429": 570, "timeout": 10},
                underruns=7,
                underrun_requests=3,
            ),
            "loadtest-notes.json": {"not": "a result"},
        },
        HEALTH,
    )


def test_load_sorts_by_rate_and_skips_other_json(run_dir):
    (run_dir / "other.json").write_text("{}")  # not loadtest-*: not even looked at
    run = serving.load_serving_run(run_dir)
    assert [r["settings"]["rate"] for r in run.results] == [1.0, 5.0, 10.0, 80.0]
    assert run.skipped == ["loadtest-notes.json"]
    assert run.health["time_to_healthy_s"] == 42.5
    assert serving.rates_text(run) == "1, 5, 10, 80"
    with pytest.raises(ValueError, match="does not exist"):
        serving.load_serving_run(run_dir / "nope")


def test_rows_are_milliseconds_counts_and_error_kinds(run_dir):
    rows = serving.rate_rows(serving.load_serving_run(run_dir))
    first, last = rows[0], rows[-1]
    assert first["rate"] == 1.0 and first["ttfa p95 ms"] == pytest.approx(30.0)
    assert first["ttfa p50 ms"] == pytest.approx(15.0) and first["ttfa p99 ms"] == pytest.approx(
        60.0
    )
    assert first["errors"] == 0 and first["error kinds"] == ""
    assert last["achieved rate"] == 79.0 and last["errors"] == 580
    assert last["error kinds"] == "http_429 570, timeout 10"
    assert (last["underruns"], last["underrun requests"]) == (7, 3)
    table = serving.serving_table(serving.load_serving_run(run_dir))
    assert list(table["rate"]) == [1.0, 5.0, 10.0, 80.0]
    assert table.loc[3, "ttfa p95 ms"] == pytest.approx(900.0)


def test_a_rate_with_no_completed_request_has_no_latency(tmp_path):
    path = write_run(tmp_path / "r", {"loadtest-40.json": result(40.0, None, completed=0)})
    (row,) = serving.rate_rows(serving.load_serving_run(path))
    assert row["ttfa p95 ms"] is None and row["completed"] == 0
    text = serving.summary_text(serving.load_serving_run(path))
    assert "    40" in text and " - " in text  # printed, not a crash
    assert serving.ttfa_figure(serving.load_serving_run(path)).startswith(b"\x89PNG")


def test_summary_text_names_the_server_and_every_rate(run_dir):
    text = serving.summary_text(serving.load_serving_run(run_dir))
    assert "healthy after 42.5 s" in text and "NVIDIA H200" in text and "max batch 64" in text
    lines = text.splitlines()
    assert len(lines) == 3 + 4  # title, server, header, four rates
    assert lines[-1].split()[:2] == ["80", "79.00"] and "http_429 570" in lines[-1]
    assert lines[3].split()[4:7] == ["15.0", "30.0", "60.0"]  # p50/p95/p99 ms at 1 req/s


def test_newest_run_by_start_time_not_name(tmp_path):
    root = tmp_path / "results"
    write_run(root / "b_older", {"loadtest-1.json": result(1.0, 0.1, "2026-01-01T00:00:00+00:00")})
    write_run(root / "a_newer", {"loadtest-1.json": result(1.0, 0.1, "2026-06-01T00:00:00+00:00")})
    write_run(root / "c_bench_only", {"static-1.7b.json": {"schema": "fastqwen-bench/1"}})
    runs = serving.list_serving_runs(root)
    assert [r.name for r in runs] == ["b_older", "a_newer"]
    assert serving.select_serving_run(root=root).name == "a_newer"
    assert serving.select_serving_run("b_older", root=root).name == "b_older"
    with pytest.raises(ValueError, match="serving runs there: b_older, a_newer"):
        serving.select_serving_run("nope", root=root)
    with pytest.raises(ValueError, match="no load-test results"):
        serving.select_serving_run("c_bench_only", root=root)
    assert serving.select_serving_run(root=tmp_path / "empty") is None


def test_references_are_the_published_figures():
    by = {(r.engine, r.rate): r.p95_ttfa_ms for r in serving.REFERENCES}
    assert by[("Nari Qwen3-TTS server", 20.0)] == 77.0
    assert by[("Nari Qwen3-TTS server", 1.0)] == 26.5
    assert by[("vLLM-Omni", 10.0)] == 136.0 and by[("vLLM-Omni", 20.0)] == 397.0


def test_charts_plot_this_run_and_the_references(run_dir, monkeypatch):
    # The builders return PNG bytes only: a spy on Figure.subplots keeps the Axes they drew.
    from matplotlib.figure import Figure

    drawn = []
    original = Figure.subplots

    def spy(self, *args, **kwargs):
        axes = original(self, *args, **kwargs)
        drawn.append(axes)
        return axes

    monkeypatch.setattr(Figure, "subplots", spy)
    run = serving.load_serving_run(run_dir)
    assert serving.ttfa_figure(run).startswith(b"\x89PNG")
    ax = drawn[-1]
    lines = {line.get_label(): line for line in ax.get_lines()}
    p95 = lines["p95 (this run)"]
    assert list(p95.get_xdata()) == [1.0, 5.0, 10.0, 80.0]
    assert list(p95.get_ydata()) == pytest.approx([30.0, 40.0, 60.0, 900.0])
    nari = next(v for k, v in lines.items() if k.startswith("Nari"))
    assert list(nari.get_xdata()) == [1.0, 10.0, 20.0] and list(nari.get_ydata()) == [
        26.5,
        34.0,
        77.0,
    ]
    assert nari.get_linestyle() == "--" and "published" in nari.get_label()
    assert ax.get_yscale() == "log"

    assert serving.throughput_figure(run).startswith(b"\x89PNG")
    left, right = drawn[-1]
    sent = {line.get_label(): line for line in left.get_lines()}
    assert list(sent["sent / s"].get_ydata()) == [1.0, 5.0, 10.0, 79.0]
    assert list(sent["completed / s"].get_ydata()) == pytest.approx([1.0, 5.0, 10.0, 50.0])
    assert list(right.get_lines()[0].get_ydata()) == [5.0, 25.0, 50.0, 400.0]


def test_fixed_length_prompts():
    prompts = [
        {"input": "one two three four five six seven eight nine ten"},
        {"input": "Hi."},
        {"input": "Keep mine.", "max_new_tokens": 7},
    ]
    out = serving.fixed_length_prompts(prompts)
    assert out[0]["max_new_tokens"] == out[0]["min_new_tokens"] == 50  # 10 words x 5 frames
    assert out[1]["max_new_tokens"] == out[1]["min_new_tokens"] == 12  # at least a second
    assert out[2] == prompts[2] and "min_new_tokens" not in out[2]
    assert "max_new_tokens" not in prompts[0]  # the input is not changed


def test_written_prompts_load_back(tmp_path):
    path = serving.write_fixed_length_prompts(tmp_path / "p.jsonl")
    loaded = load_prompts(path)
    assert len(loaded) == len(load_prompts(None))
    assert all(p["max_new_tokens"] == p["min_new_tokens"] >= 12 for p in loaded)
    assert serving.main(["--write-prompts", str(tmp_path / "q.jsonl")]) == 0


def test_main_prints_the_table(run_dir, capsys):
    assert serving.main([str(run_dir)]) == 0
    assert "http_429 570" in capsys.readouterr().out


def test_show_serving_run_displays_table_and_two_charts(run_dir, monkeypatch):
    shown = []
    monkeypatch.setattr(view.display, "show", lambda *objs: shown.extend(objs))
    run = serving.load_serving_run(run_dir)
    view.show_serving_run(run)
    kinds = [type(o).__name__ for o in shown]
    assert kinds == ["Markdown", "DataFrame", "Image", "Image"]
    assert "healthy after 42.5 s" in shown[0].data
    assert list(shown[1].index) == ["1.00", "5.00", "10.00", "80.00"]
    shown.clear()
    view.show_serving_run(serving.ServingRun("tiny-cpu", None, run.results, None))
    assert "not a measurement" in shown[0].data  # the tiny run's banner
    shown.clear()
    view.show_serving_run(None)
    assert "No serving run" in shown[0].data


def test_serving_settings_and_when_the_tiny_run_happens():
    before = {"x"}
    ns = {
        "x": 1,
        "results_dir": None,
        "run_tiny": None,
        "tiny_rates": [2, 3],
        "tiny_duration_s": 1.5,
    }
    s = live.serving_settings(ns, before)
    assert s.tiny_rates == (2.0, 3.0) and s.tiny_duration_s == 1.5
    assert live.serving_settings({**ns, "tiny_rates": "1,4"}, before).tiny_rates == (1.0, 4.0)
    with pytest.raises(ValueError, match=r"unknown notebook parameter\(s\) \['tiny_rate'\]"):
        live.serving_settings({**ns, "tiny_rate": 2}, before)
    assert s.tiny_wanted(committed_run_found=False)
    assert not s.tiny_wanted(committed_run_found=True)
    assert not live.ServingSettings(results_dir="x").tiny_wanted(False)
    assert live.ServingSettings(run_tiny=True).tiny_wanted(True)
    assert not live.ServingSettings(run_tiny=False).tiny_wanted(False)


def test_committed_notebook_form():
    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "strip outputs"
    assert len([c for c in code if "parameters" in c.metadata.get("tags", [])]) == 1
    text = " ".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "issue" not in text.lower()
    assert "bench/serve_device_run.sh" in text


def test_notebook_parameters_match_the_library():
    declared = papermill.inspect_notebook(str(NOTEBOOK))
    assert tuple(declared) == live.SERVING_PARAMETERS
    defaults = live.ServingSettings()
    for name, info in declared.items():
        assert info["help"], f"{name} needs a comment"
        value = ast.literal_eval(info["default"])
        expected = getattr(defaults, name)
        assert (tuple(value) if isinstance(value, list) else value) == expected, name


def test_script_parses_and_names_its_wheels():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    text = SCRIPT.read_text()
    assert os.access(SCRIPT, os.X_OK)
    wheel_line = next(ln for ln in text.splitlines() if "wheelhouse.sh .gpu-wheels" in ln)
    for pkg in (
        "annotated-doc",
        "opentelemetry-api",
        "fastapi",
        "starlette",
        "uvicorn",
        "pydantic",
        "pydantic-core",
        "annotated-types",
        "typing-inspection",
    ):
        assert f" {pkg}==" in wheel_line, pkg  # pinned: wheelhouse.sh takes no deps
    assert "trap " in text and "--max-batch-size" in text and "/health" in text


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils timeout")
def test_script_runs_on_cpu_and_stops_its_server(tmp_path):
    pytest.importorskip("uvicorn")
    out = tmp_path / "out"
    env = {
        **os.environ,
        "REF_PYTHONPATH": str(ROOT),
        "SERVE_DEVICE": "cpu",
        "SERVE_MODEL": "random:tiny-custom_voice",
        "SERVE_RATES": "2",
        "SERVE_WARMUP_S": "0",
        "SERVE_DURATION_S": "5",
        "SERVE_TIMEOUT_S": "20",
        "SERVE_MAX_REQUESTS": "4",
        "SERVE_PORT": str(_free_port()),
        "SERVE_BUDGET_S": "150",
        "SERVE_RESTARTS": "2",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    done = subprocess.run(
        ["bash", str(SCRIPT), str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["serve_device_run.log", "serving_records.tgz"]
    with tarfile.open(out / "serving_records.tgz") as tar:
        names = sorted(tar.getnames())
        assert names == [
            "loadtest-2.json",
            "serve-health-restart-2.json",
            "serve-health.json",
            "serve-restart-2.log",
            "serve.log",
        ]
        health = json.load(io.TextIOWrapper(tar.extractfile("serve-health.json")))
        restart = json.load(io.TextIOWrapper(tar.extractfile("serve-health-restart-2.json")))
        loaded = json.load(io.TextIOWrapper(tar.extractfile("loadtest-2.json")))
    assert restart["time_to_healthy_s"] > 0 and restart["max_batch_size"] == 2
    assert health["time_to_healthy_s"] > 0 and health["device"] == "cpu"
    assert loaded["summary"]["completed"] >= 1
    log = (out / "serve_device_run.log").read_text()
    assert "stopping the server" in log and "serving run out" in log
    pid = int(log.split("stopping the server (pid ")[1].split(")")[0])
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # stopped, not left running


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
