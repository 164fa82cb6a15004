"""`fastqwen bench --cold-start`: fresh processes, empty then warm compile caches.

The end-to-end test runs two real children on the tiny model, eager on the CPU (about 15 s
each, nearly all of it imports); the compiled path's cache hits are measured on the device.
The rest drives the parent with fake children, or the child's probes in this process.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from fastqwen.config import SamplingParams
from fastqwen.tools.bench import cold_start
from fastqwen.tools.bench import records as bench_records
from fastqwen.tools.bench.cold_start import ChildRun, ColdStartConfig
from fastqwen.tools.bench.cold_start_child import ChildSpec, Probes, compile_summary
from fastqwen.tools.cli import main as cli_main

MODEL = "random:tiny-custom_voice"
PHASES = (
    "harness import_torch import_transformers import_qwen_tts import_fastqwen load_weights "
    "build_engine first_generation"
).split()


def spec(**changes) -> ChildSpec:
    return ChildSpec(
        **{"model": MODEL, "device": "cpu", "dtype": "float32", "text": "Hi."} | changes
    )


@pytest.mark.slow
def test_cli_measures_an_empty_then_a_warm_start(tiny_model, tmp_path, capsys, monkeypatch):
    tiny_model("custom_voice")  # built in the session cache, which the children share
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # see conftest: 2 threads spin on a busy CPU
    out = tmp_path / "records"
    status = cli_main(
        ["bench", "--cold-start", "--model", MODEL, "--device", "cpu", "--out", str(out)]
    )
    record = json.loads((out / "cold-start-tiny.json").read_text())
    assert status == 0 and record["error"] is None, record["error"]
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == record
    assert record["schema"] == cold_start.SCHEMA and record["size"] == "tiny"
    assert record["empty_cache_s"] > 0 and record["warm_cache_s"] > 0
    assert record["device_name"].startswith("CPU") and record["git_commit"] is not None
    for cache in ("empty", "warm"):
        (run,) = record[f"{cache}_cache_runs"]
        assert run["cache"] == cache and run["returncode"] == 0, run["stderr_tail"]
        child = run["breakdown"]
        assert list(child["phases_s"]) == PHASES
        # the phases tile the child's life from its first statement to the generation's end
        assert sum(child["phases_s"].values()) == pytest.approx(child["since_start_s"], abs=0.01)
        assert 0 <= run["interpreter_s"] < run["total_s"] <= run["process_wall_s"]
        # each figure is rounded to 0.1 ms on its own
        assert run["total_s"] == pytest.approx(
            run["interpreter_s"] + child["since_start_s"], abs=3e-4
        )
        first = child["first_generation"]
        assert first["frames"] == 63 and not first["eos_reached"]  # 64 steps, no early EOS
        captures = child["captures"]
        assert captures["first_prefill_s"] > 0 and captures["frame_graph_captures"] == []
        assert child["execution"] == "eager" and child["compile"]["dynamo_s"] == 0
        assert "fastqwen-cold-start-" in child["compile_cache_dir"]  # not the session's cache
    # the bench views load records of their own schema only: this one is skipped, not misread
    run = bench_records.load_run(out)
    assert run.records == [] and run.skipped == ["cold-start-tiny.json"]


class FakeChildren:
    """Children that look at the caches they are given and leave a file in each."""

    def __init__(self, fail: str | None = None):
        self.fail = fail
        self.seen: list[tuple[str, dict, list[str]]] = []

    def __call__(self, spec, env, workdir, cache, timeout_s) -> ChildRun:
        found = sorted(p.name for var in cold_start.CACHE_VARS for p in Path(env[var]).iterdir())
        self.seen.append((cache, dict(env), found))
        if cache == self.fail:
            return ChildRun(cache, None, None, 1.0, 1, error="the child exited with 1")
        for var, name in cold_start.CACHE_VARS.items():
            (Path(env[var]) / f"{name}-kernel").touch()  # what a compile leaves behind
        total = {"empty": 10.0, "warm": 4.0}[cache] + len(self.seen)
        breakdown = {"device_name": "Fake GPU", "phases_s": {"first_generation": total}}
        return ChildRun(cache, total, 0.05, total + 1, 0, breakdown=breakdown)


def test_each_pair_starts_empty_and_its_warm_run_finds_the_first_ones_kernels(monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/somewhere/else")  # the children's win
    children = FakeChildren()
    record = cold_start.run_cold_start(ColdStartConfig(spec(), runs=3), spawn=children)
    assert [c for c, _, _ in children.seen] == ["empty", "warm"] * 3
    kernels = ["cuda-kernel", "inductor-kernel", "triton-kernel"]
    for i in range(0, 6, 2):
        (_, empty_env, empty_found), (_, warm_env, warm_found) = children.seen[i : i + 2]
        assert empty_found == [] and warm_found == kernels
        assert empty_env == warm_env and set(empty_env) == set(cold_start.CACHE_VARS)
    assert children.seen[0][1] != children.seen[2][1]  # a fresh directory per pair
    assert not Path(children.seen[0][1]["TORCHINDUCTOR_CACHE_DIR"]).exists()  # removed after
    # totals: empty 11, 13, 15 and warm 6, 8, 10 -> the medians
    assert record["empty_cache_runs_s"] == [11.0, 13.0, 15.0] and record["empty_cache_s"] == 13.0
    assert record["warm_cache_runs_s"] == [6.0, 8.0, 10.0] and record["warm_cache_s"] == 8.0
    assert record["device_name"] == "Fake GPU" and record["error"] is None
    assert record["warm_cache_runs"][0]["breakdown"]["phases_s"] == {"first_generation": 6.0}
    assert record["runs"] == 3 and record["spec"]["max_new_tokens"] == 64


def test_a_failed_empty_run_has_no_warm_run_and_the_record_says_why():
    partial = []
    record = cold_start.run_cold_start(
        ColdStartConfig(spec()), spawn=FakeChildren(fail="empty"), on_partial=partial.append
    )
    assert record["empty_cache_s"] is None and record["warm_cache_s"] is None
    assert record["warm_cache_runs"] == []
    assert record["error"] == "empty caches: the child exited with 1"
    assert partial == [record]  # written after the one child that ran


def test_a_record_is_written_after_every_child():
    partial = []
    cold_start.run_cold_start(
        ColdStartConfig(spec()), spawn=FakeChildren(), on_partial=partial.append
    )
    assert [(r["empty_cache_s"], r["warm_cache_s"]) for r in partial] == [(11.0, None), (11.0, 6.0)]
    assert partial[0]["error"] == "no run with warm caches" and partial[1]["error"] is None


@pytest.mark.parametrize(
    "script, timeout_s, error",
    [
        ("import sys; sys.stderr.write('boom'); sys.exit(3)", 60, "the child exited with 3"),
        ("pass", 60, "the child exited without writing its result"),
        ("import time; time.sleep(30)", 0.5, "the child ran past 0.5 s and was killed"),
    ],
)
def test_a_failing_child_is_reported_not_raised(tmp_path, monkeypatch, script, timeout_s, error):
    monkeypatch.setattr(cold_start, "CHILD_SCRIPT", script)
    run = cold_start.spawn_child(spec(), {}, tmp_path, "empty", timeout_s)
    assert run.error == error and run.total_s is None and run.breakdown is None
    assert run.process_wall_s < 20
    if "boom" in script:
        assert run.returncode == 3 and run.stderr_tail == "boom"


def test_compile_summary_names_the_phases():
    events = {
        "entire_frame_compile": 10.0,
        "backend_compile": 8.5,
        "inductor_compile": 8.0,
        "code_gen": 6.0,
        "async_compile.precompile": 1.0,
        "async_compile.wait": 2.5,
        "CachingAutotuner.benchmark_all_configs": 0.75,
        "CachingAutotuner.coordinate_descent_tuning": 0.25,
    }
    assert compile_summary(events) == {
        "dynamo_s": 10.0,
        "tracing_s": 1.5,
        "backend_s": 8.5,
        "inductor_s": 8.0,
        "codegen_s": 6.0,
        "kernel_compile_s": 3.5,
        "autotune_s": 1.0,
    }
    assert set(compile_summary({}).values()) == {0.0}  # nothing compiled (eager)


def test_probes_time_the_first_prefill_and_restore_the_engine(tiny_engine):
    from fastqwen.engine.runner import FrameRunner

    engine = tiny_engine("custom_voice")
    originals = (FrameRunner.step, FrameRunner.prefill)
    request = engine.warmup_request()
    with Probes() as probes:
        engine.generate(request, SamplingParams(max_new_tokens=4, min_new_tokens=4), seed=0)
        engine.generate(request, SamplingParams(max_new_tokens=4, min_new_tokens=4), seed=0)
    assert (FrameRunner.step, FrameRunner.prefill) == originals
    summary = probes.summary()
    assert summary["first_prefill_s"] > 0
    assert [c["captured"] for c in summary["prefill_calls"]] == [False]  # eager: the first only
    assert summary["frame_graph_captures"] == [] and summary["codec_graph_captures"] == 0


def test_probes_record_a_frame_graph_capture_per_bucket(monkeypatch):
    from types import SimpleNamespace

    from fastqwen.engine.runner import FrameRunner

    def capturing_step(runner, m, mode):  # stands in for a capture: one more graph
        runner.frame_graphs[(m.talker_cache.batch, m.talker_cache.max_len, mode)] = object()

    monkeypatch.setattr(FrameRunner, "step", capturing_step)
    runner = SimpleNamespace(frame_graphs={})
    view = SimpleNamespace(talker_cache=SimpleNamespace(batch=4, max_len=256))
    with Probes() as probes:
        FrameRunner.step(runner, view, "sampled")
        FrameRunner.step(runner, view, "sampled")  # the same key: no capture
    (capture,) = probes.summary()["frame_graph_captures"]
    assert capture["rows"] == 4 and capture["window"] == 256 and capture["s"] >= 0


def test_bad_settings_are_named(tmp_path):
    with pytest.raises(ValueError, match="runs must be an integer >= 1, got 0"):
        ColdStartConfig(spec(), runs=0)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 2 for a cold start, got 1"):
        ColdStartConfig(spec(max_new_tokens=1))
    (tmp_path / "cold-start-tiny.json").write_text("{}")
    with pytest.raises(ValueError, match="never overwritten: choose another --out"):
        cold_start.output_file(tmp_path, "tiny")
    with pytest.raises(SystemExit, match="measures the static engine only"):
        cli_main(["bench", "--cold-start", "--engine", "dynamic", "--model", MODEL])
    with pytest.raises(SystemExit, match="never overwritten"):
        cli_main(["bench", "--cold-start", "--model", MODEL, "--device", "cpu",
                  "--out", str(tmp_path)])  # fmt: skip


@pytest.mark.slow
def test_the_anchor_script_reports_a_child_that_cannot_load_the_anchor(tmp_path, capsys):
    path = Path(__file__).resolve().parent.parent / "bench" / "anchor_cold_start.py"
    loader = importlib.util.spec_from_file_location("anchor_cold_start", path)
    anchor = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(anchor)  # its top level imports only the standard library
    # This venv has no faster_qwen3_tts: its child fails at the import, and says so.
    status = anchor.main(["--model-dir", str(tmp_path), "--out", str(tmp_path / "out")])
    record = json.loads((tmp_path / "out" / "cold-start-anchor-model.json").read_text())
    assert status == 1 and record["engine"] == "anchor" and record["schema"] == cold_start.SCHEMA
    assert record["error"] == "empty caches: the child exited with 1"
    (empty,) = record["empty_cache_runs"]
    assert "No module named 'faster_qwen3_tts'" in empty["stderr_tail"]
    assert record["warm_cache_runs"] == [] and record["empty_cache_s"] is None
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == record


def _cold_record(engine: str, execution: str | None, empty: float, warm: float, stamp: str):
    child = {"breakdown": {"execution": execution}} if execution else {"breakdown": {}}
    return {
        "schema": cold_start.SCHEMA, "engine": engine, "size": "1.7b",
        "device_name": "NVIDIA H200", "timestamp": stamp, "empty_cache_s": empty,
        "warm_cache_s": warm, "empty_cache_runs": [child], "warm_cache_runs": [child],
    }  # fmt: skip


def test_the_notebook_table_keeps_the_newest_cold_start_of_each_engine(tmp_path):
    runs = {
        "2026-01-01_h200_aaa/records/cold-start-1.7b.json": _cold_record(
            "static", "graphed+compiled", 57.3, 35.2, "2026-01-01T00:00:00Z"
        ),
        "2026-01-01_h200_aaa/records/cold-start-anchor-1.7b.json": _cold_record(
            "anchor", None, 22.1, 15.2, "2026-01-01T00:01:00Z"
        ),
        "2026-01-02_h200_bbb/cold-start-1.7b.json": _cold_record(
            "static", "graphed", 26.5, 15.2, "2026-01-02T00:00:00Z"
        ),
        "2026-01-03_h200_ccc/cold-start-1.7b.json": _cold_record(
            "static", "graphed", 20.0, 9.0, "2026-01-03T00:00:00Z"
        ),
    }
    for name, data in runs.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))
    (tmp_path / "2026-01-03_h200_ccc" / "cold-start-broken.json").write_text("{")
    (tmp_path / "2026-01-03_h200_ccc" / "cold-start-other.json").write_text('{"schema": "x"}')
    found = cold_start.load_cold_starts(tmp_path)
    assert [r["run"] for r in found] == sorted(p.split("/")[0] for p in runs)
    rows = cold_start.cold_start_rows(found)
    assert [(r["engine"], r["empty_cache_s"], r["warm_cache_s"], r["run"]) for r in rows] == [
        ("fastqwen (graphed)", 20.0, 9.0, "2026-01-03_h200_ccc"),
        ("fastqwen (graphed+compiled)", 57.3, 35.2, "2026-01-01_h200_aaa"),
        ("faster-qwen3-tts", 22.1, 15.2, "2026-01-01_h200_aaa"),
    ]
    table = cold_start.cold_start_markdown(rows)
    assert "| fastqwen (graphed) | 1.7b | NVIDIA H200 | 20.0 s | 9.0 s |" in table
    assert cold_start.cold_start_markdown([]).startswith("No cold-start records yet")
