"""Throughput against batch size: our batched bench on the tiny model (CPU), the arithmetic
shared with the anchor scripts, their pure parts, and the notebook's table and chart.

The anchors themselves need CUDA and their own environments; here their scripts must
import, validate their arguments, and turn a failure into records that say why.
"""

from __future__ import annotations

import importlib.util
import json
import wave
from pathlib import Path

import nbformat
import papermill
import pytest

from fastqwen.tools.bench import charts, records, tables, throughput, view
from fastqwen.tools.bench import run as bench
from fastqwen.tools.cli import main as cli_main
from fastqwen.tools.defaults import BENCH_SPEAKERS, SEED_PROMPTS
from fastqwen.tools.notebook import display

ROOT = Path(__file__).resolve().parents[1]
MODEL = "random:tiny-custom_voice"
N = 6  # talker steps per request: N - 1 frames


def _script(name: str):
    path = ROOT / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ our batched bench


@pytest.fixture(scope="module")
def batch_records(tmp_path_factory) -> tuple[list[dict], Path]:
    out = tmp_path_factory.mktemp("batch")
    status = cli_main(
        ["bench", "--model", MODEL, "--device", "cpu", "--batch-sizes", "2,1"]
        + ["--max-new-tokens", str(N), "--batch-rounds", "2", "--out", str(out)]
        + ["--sample-threads"]
    )
    assert status == 0
    recs = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    return sorted(recs, key=lambda r: r["batch_size"]), out


def test_batch_records_have_the_fields_and_sane_values(batch_records):
    recs, out = batch_records
    assert [r["batch_size"] for r in recs] == [1, 2]
    assert sorted(p.name.split("_")[2] for p in out.glob("*.json")) == ["b1", "b2"]
    for r in recs:
        b = r["batch_size"]
        assert list(r) == bench.FIELDS and r["error"] is None
        assert r["engine"] == "static" and r["schema"] == bench.SCHEMA and r["size"] == "tiny"
        assert r["frames"] == N - 1 and r["frames_all_runs"] == [N - 1]  # every stream, no EOS
        assert r["eos_reached"] is False and r["warmup_frames"] == N - 1
        assert r["sampling"]["min_new_tokens"] == N == r["max_new_tokens"]
        assert r["audio_s"] == pytest.approx(b * (N - 1) * 1920 / 24000, abs=1e-3)
        burst = r["burst_audio_seconds_per_second"]
        assert burst == pytest.approx(r["audio_s"] / r["wall_s"], rel=0.01)
        assert burst == max(r["batch_rounds_aps"])  # the best round
        # the headline figure is the steady state: what finished after the first of 5 waves
        assert r["throughput_method"] == "steady_state" and r["audio_seconds_per_second"] > 0
        assert r["steady_requests"] == 4 * b and r["steady_window_s"] > 0
        steady = r["steady_breakdown"]
        assert steady["codec_spans"] >= 5 * b and steady["wall_s"] > r["steady_window_s"]
        assert 0 < steady["loop_blocks"] <= 5 * b * N  # at most a block per frame of each request
        assert steady["loop_frames_gpu_s"] == 0  # GPU time: CUDA only
        # every request of the 5 waves was admitted, in prefill groups, and the admissions'
        # time splits into slot loads and prefills
        assert steady["loop_joined"] == 5 * b and 1 <= steady["loop_prefills"] <= 5 * b
        assert 0 < steady["loop_load_s"] + steady["loop_prefill_s"] <= steady["loop_admit_s"]
        # where the frame loop spent the steady state: the engine's own lines (on the CPU
        # mostly the frame step's layers), shares of its samples
        loop = r["steady_samples"]["fastqwen-scheduler"]
        assert loop["samples"] > 0 and loop["own"] and loop["inner"]
        engine_files = {"scheduler.py", "runner.py", "step.py", "layers.py", "ops.py"}
        assert any(line.split(":")[0] in engine_files | {"sampling.py"} for line, _ in loop["own"])
        assert 0 < sum(share for _, share in loop["own"]) <= 1
        assert len(r["batch_rounds_aps"]) == 2 and r["runs"] == 2
        assert 0 < r["step_ms"] < 1000 * r["wall_s"] / (N - 1)
        assert 0 < r["per_stream_rtf_min"] <= r["per_stream_rtf_median"]
        # they ran together: N - 1 frames, then the extra frame whose codebook-0 token is the
        # reference's draw after the last one (EOS or not)
        assert r["steps"] == N and r["peak_active"] == b
        parts = r["round_breakdown"]  # the best round's: loop phases and the codec thread
        assert 0 < parts["loop_frames_s"] <= parts["wall_s"] == r["wall_s"]
        assert parts["loop_admit_s"] > 0 and parts["loop_deliver_s"] >= 0
        assert parts["codec_spans"] >= b and 1 <= parts["codec_batches"] <= parts["codec_spans"]
        assert 0 < parts["codec_busy_s"] <= parts["wall_s"]
        assert 0 < r["generate_s"] <= r["wall_s"] and r["prefill_ms"] > 0
        assert r["kv_bytes_per_slot"] > 0 and r["kv_cache_bytes"] >= 2 * r["kv_bytes_per_slot"]
        assert r["peak_memory_bytes"] is None  # CUDA only
        config = r["engine_config"]
        assert config["max_batch_size"] == 2 and config["batch_buckets"] == [1, 2]
        assert config["max_seq_len"] == 256  # prompt + N frames, rounded up to a window
        assert r["batch_mix"]["seeds"] == [r["seed"], r["seed"] + b - 1]
        assert r["load_s"] > 0 and r["warmup_s"] > 0


def test_an_engine_that_does_not_fit_is_recorded_and_smaller_sizes_run(monkeypatch):
    import fastqwen.api

    def check_memory(model, config, per_slot):
        if config.max_batch_size > 1:
            raise ValueError(
                f"the KV caches need too much at max_batch_size={config.max_batch_size}"
            )

    monkeypatch.setattr(fastqwen.api, "_check_memory", check_memory)
    seen = []
    recs = bench.run_batch_bench(
        MODEL,
        (1, 2),
        device="cpu",
        dtype="float32",
        sampling=bench.demo_sampling(max_new_tokens=3),
        rounds=1,
        on_record=seen.append,
    )
    assert seen == recs and [r["batch_size"] for r in recs] == [2, 1]
    assert "max_batch_size=2" in recs[0]["error"] and recs[0]["audio_seconds_per_second"] is None
    assert recs[1]["error"] is None and recs[1]["engine_config"]["max_batch_size"] == 1
    assert recs[1]["frames"] == 2


@pytest.mark.parametrize("value", ["1,x", "0", "8,,32", "-4", "1.5", ""])
def test_bad_batch_sizes_are_named(value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["bench", "--model", MODEL, "--device", "cpu", "--batch-sizes", value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--batch-sizes" in err and "positive integers" in err
    with pytest.raises(ValueError, match="got"):
        throughput.parse_batch_sizes(value)


def test_a_bench_that_cannot_start_writes_a_record_per_size(tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    status = cli_main(
        [
            "bench",
            "--model",
            MODEL,
            "--device",
            "cuda",
            "--batch-sizes",
            "1,4",
            "--out",
            str(tmp_path),
        ]
    )
    assert status == 1
    recs = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*.json"))]
    assert sorted(r["batch_size"] for r in recs) == [1, 4]
    assert all("CUDA is not available" in r["error"] for r in recs)
    assert len(capsys.readouterr().out.strip().splitlines()) >= 2


def test_batch_options_that_do_not_apply_are_refused(tmp_path):
    common = ["bench", "--model", MODEL, "--device", "cpu", "--batch-sizes", "1"]
    with pytest.raises(SystemExit, match="static engine only"):
        cli_main([*common, "--engine", "dynamic"])
    with pytest.raises(SystemExit, match="must be a directory"):
        cli_main([*common, "--out", str(tmp_path / "x.json")])
    with pytest.raises(SystemExit, match="--batch-rounds must be >= 1"):
        cli_main([*common, "--batch-rounds", "0"])


# ------------------------------------------------------------------ shared arithmetic


def test_parse_batch_sizes_sorts_and_dedupes():
    assert throughput.parse_batch_sizes("256, 1,8,8") == (1, 8, 256)
    assert throughput.parse_batch_sizes("4") == (4,)


def test_request_mix_cycles_prompts_and_speakers_with_distinct_seeds():
    mix = throughput.request_mix(5, 100)
    assert [r.seed for r in mix] == [100, 101, 102, 103, 104]
    assert [r.text for r in mix] == [SEED_PROMPTS[i % len(SEED_PROMPTS)] for i in range(5)]
    assert [r.speaker for r in mix[:4]] == [BENCH_SPEAKERS[0]] * 2 + [BENCH_SPEAKERS[1]] * 2
    assert len({(r.text, r.speaker) for r in mix}) == 4  # every prompt with every speaker
    described = throughput.mix_description(mix)
    assert described["seeds"] == [100, 104] and described["speakers"] == list(BENCH_SPEAKERS)
    with pytest.raises(ValueError, match="batch_size"):
        throughput.request_mix(0, 1)


def test_seq_len_is_prompt_plus_frames_rounded_to_a_window():
    assert throughput.seq_len_for(60, 168) == 256
    assert throughput.seq_len_for(100, 168) == 512
    assert throughput.seq_len_for(400, 168) == 1024


def _stream(audio_s=2.0, generate_s=1.0, frames=25, loop_s=0.9):
    return throughput.StreamTiming(frames, audio_s, generate_s, loop_s, prefill_s=0.1)


def test_steady_state_counts_what_was_submitted_after_the_first_wave():
    # B = 2: requests 3.. are submitted into freed slots from 1.0 s on; counted up to the last
    # finish. (submitted, finished, audio)
    requests = [
        (0.0, 1.0, 9.0), (0.0, 1.1, 9.0), (1.0, 2.0, 1.0), (1.1, 2.5, 2.0),
        (2.0, 3.0, 1.0), (2.5, 3.2, 3.0),
    ]  # fmt: skip
    f = throughput.steady_state_fields(list(reversed(requests)), 2, {"wall_s": 5.0})
    # counted: 1 + 2 + 1 + 3 = 7 audio seconds over 1.0 s .. 3.2 s
    assert f["audio_seconds_per_second"] == pytest.approx(7 / 2.2, abs=1e-3)
    assert f["steady_requests"] == 4 and f["steady_window_s"] == pytest.approx(2.2)
    assert f["throughput_method"] == "steady_state" and f["steady_breakdown"] == {"wall_s": 5.0}
    # the first wave finishing late (a lagging codec) cannot shrink the window: the counted
    # requests were submitted before it ended, and their whole time counts
    late_first = [(0.0, 3.0, 9.0), (0.0, 3.1, 9.0), *requests[2:]]
    g = throughput.steady_state_fields(late_first, 2)
    assert g["audio_seconds_per_second"] == pytest.approx(7 / 2.2, abs=1e-3)
    # a batch of one: each lane's next request follows the previous one
    serial = [(float(i), i + 1.0, 0.5) for i in range(5)]
    h = throughput.steady_state_fields(serial, 1)
    assert h["audio_seconds_per_second"] == pytest.approx(2.0 / 4.0)
    with pytest.raises(ValueError, match="at least 3 waves of 2"):
        throughput.steady_state_fields(requests[:5], 2)


def test_throughput_fields_report_the_best_round():
    slow = throughput.Round(2, 4.0, (_stream(), _stream()), steps=25)
    fast = throughput.Round(2, 2.0, (_stream(generate_s=0.5), _stream(generate_s=2.0)), steps=25)
    f = throughput.throughput_fields([slow, fast])
    assert f["audio_seconds_per_second"] == 2.0 and f["batch_rounds_aps"] == [1.0, 2.0]
    assert f["per_stream_rtf_min"] == 1.0 and f["per_stream_rtf_median"] == 2.5
    assert f["step_ms"] == pytest.approx(1000 * 0.9 / 25) and f["steps"] == 25
    assert f["frames"] == 25 and f["audio_s"] == 4.0 and f["wall_s"] == 2.0 and f["runs"] == 2
    assert f["prefill_ms"] == 100.0 and f["generate_s"] == 2.0
    with pytest.raises(ValueError, match="3 stream timings for batch size 2"):
        throughput.Round(2, 1.0, (_stream(),) * 3)
    with pytest.raises(ValueError, match="no rounds"):
        throughput.best_round([])


# ------------------------------------------------------------------ the anchor scripts


def test_fork_script_pure_parts(tmp_path):
    fork = _script("batch_anchor_bench")
    assert fork.FIELDS == bench.FIELDS and fork.SCHEMA == bench.SCHEMA
    path = fork.write_reference_wav(tmp_path / "ref.wav", seconds=0.5, rate=16000)
    with wave.open(str(path)) as f:
        assert (f.getnchannels(), f.getframerate(), f.getnframes()) == (1, 16000, 8000)
    mix, requests = fork.fork_requests(3, 7, str(path))
    assert [r.seed for r in mix] == [7, 8, 9]
    assert requests[1] == {
        "text": SEED_PROMPTS[1],
        "language": "english",
        "ref_audio": str(path),
        "ref_text": fork.REF_TEXT,
    }
    assert fork.fits_budget(100, 150, None, 64)  # the first size always runs
    assert fork.fits_budget(100, 150, (8, 10.0), 16) and not fork.fits_budget(
        100, 150, (8, 10.0), 64
    )
    timings = [{"prefill_ms": 50.0, "decode_s": 1.95, "steps": 25}] * 2
    streams = fork.streams_from([([[0.0] * 48000], 24000)] * 2, timings, [25, 25])
    assert streams[0].audio_s == 2.0 and streams[0].generate_s == 2.0 and streams[0].rtf == 1.0


def test_fork_script_writes_a_record_per_size_when_it_cannot_run(tmp_path, capsys):
    fork = _script("batch_anchor_bench")
    status = fork.main(
        ["--model-dir", str(tmp_path), "--batch-sizes", "1,4", "--out", str(tmp_path)]
    )
    assert status == 1
    recs = [
        json.loads((tmp_path / f"faster-qwen3-tts-batch-b{b}.json").read_text()) for b in (1, 4)
    ]
    assert [r["batch_size"] for r in recs] == [1, 4]
    assert all(r["error"] and r["engine"] == "faster-qwen3-tts-batch" for r in recs)
    assert list(recs[0])[: len(bench.FIELDS)] == bench.FIELDS
    with pytest.raises(SystemExit):
        fork.main(["--model-dir", str(tmp_path), "--batch-sizes", "1,zero"])
    assert "'zero'" in capsys.readouterr().err


def test_anchor_script_sequential_mode(tmp_path):
    anchor = _script("anchor_bench")
    calls = []

    def generate(request, n, n_min):
        calls.append((request.seed, n, n_min))
        return {"frames": n - 1, "audio_s": 2.0, "generate_s": 1.0, "prefill_ms": 100.0,
                "eos_reached": False}  # fmt: skip

    rnd = anchor.sequential_round(generate, throughput.request_mix(3, 5), 26)
    assert calls == [(5, 26, 26), (6, 26, 26), (7, 26, 26)] and rnd.audio_s == 6.0
    assert rnd.streams[0].loop_s == pytest.approx(0.9)
    # Here (transformers 4, no CUDA) it cannot run: one record per size says why.
    status = anchor.main(
        ["--model-dir", str(tmp_path), "--batch-sizes", "1,8", "--out", str(tmp_path)]
    )
    assert status == 1
    for b in (1, 8):
        r = json.loads((tmp_path / f"faster-qwen3-tts-b{b}.json").read_text())
        assert r["batch_size"] == b and r["engine"] == "faster-qwen3-tts" and r["error"]


# ------------------------------------------------------------------ table, chart, notebook


def _batch_record(engine: str, b: int, aps: float | None, **extra) -> dict:
    rec = dict.fromkeys(bench.FIELDS)
    rec.update(
        schema=bench.SCHEMA,
        engine=engine,
        model="random:1.7b-custom_voice",
        size="1.7b",
        device_name="NVIDIA Fake",
        git_commit="abc1234",
        timestamp="2026-01-02T00:00:00Z",
        random_weights=True,
        batch_size=b,
        audio_seconds_per_second=aps,
        step_ms=None if aps is None else 20.0 + b / 10,
        per_stream_rtf_min=None if aps is None else aps / b * 0.9,
        per_stream_rtf_median=None if aps is None else aps / b,
        frames=167,
        wall_s=5.0,
        peak_memory_bytes=8 * 2**30,
        kv_bytes_per_slot=60 * 2**20,
    )
    rec.update(extra)
    return rec


@pytest.fixture
def batch_root(tmp_path):
    """bench/results with a single-stream run and a newer batch-only run."""
    root = tmp_path / "bench" / "results"
    single = root / "2026-01-01_single"
    single.mkdir(parents=True)
    rec = _batch_record("static", 1, None, batch_size=None, ms_per_frame=4.0, frames=167)
    (single / "static-1.7b.json").write_text(json.dumps(rec))
    batch = root / "2026-01-02_batch"
    batch.mkdir()
    recs = [_batch_record("static", b, 12.0 * b) for b in (1, 8)]
    recs.append(
        _batch_record(
            "static", 64, 768.0, throughput_method="steady_state",
            burst_audio_seconds_per_second=600.0,
        )
    )  # fmt: skip
    recs.append(_batch_record("static", 256, None, error="ValueError: the KV caches need 90 GiB"))
    recs += [
        _batch_record("faster-qwen3-tts-batch", b, 3.0 * b, note="voice clone") for b in (1, 4)
    ]
    recs.append(_batch_record("faster-qwen3-tts", 8, 12.0, note="one after another"))
    for i, r in enumerate(recs):
        (batch / f"{i}.json").write_text(json.dumps(r))
    return root


def test_batch_runs_are_found_apart_from_single_stream_runs(batch_root):
    assert records.select_run(None, batch_root).name == "2026-01-01_single"
    run = records.select_batch_run(None, batch_root)
    assert run.name == "2026-01-02_batch" and len(run.batch) == 7 and not run.single
    assert records.select_batch_run("2026-01-01_single", batch_root) is None
    assert records.select_batch_run(None, batch_root / "nothing") is None
    assert tables.engines_table(run).empty  # batch records stay out of the single views


def test_batch_table_and_chart(batch_root):
    run = records.select_batch_run(None, batch_root)
    table = tables.batch_table(run)
    assert list(table["engine"]) == ["fastqwen static"] * 4 + [
        "faster-qwen3-tts, one after another",
        "faster-qwen3-tts-batch",
        "faster-qwen3-tts-batch",
    ]
    assert list(table["batch"]) == [1, 8, 64, 256, 8, 1, 4]
    assert table["audio s/s"].iloc[2] == 768.0 and table["peak GiB"].iloc[0] == 8.0
    assert list(table["measured as"])[:3] == ["burst", "burst", "steady state"]
    assert table["burst audio s/s"].iloc[2] == 600.0
    assert "KV caches" in table["error"].iloc[3]
    assert tables.batch_notes(run) == [
        "faster-qwen3-tts, one after another: one after another",
        "faster-qwen3-tts-batch: voice clone",
    ]
    png = charts.throughput_figure(run)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    empty = records.BenchRun("empty", [])
    assert tables.batch_table(empty).empty and charts.throughput_figure(empty)[:4] == b"\x89PNG"


def test_show_batch_run_says_nothing_without_batch_records(batch_root, monkeypatch):
    shown = []
    monkeypatch.setattr(display, "show", lambda *objs: shown.extend(objs))
    view.show_batch_run(None)
    view.show_batch_run(records.select_run(None, batch_root))
    assert shown == []
    view.show_batch_run(records.select_batch_run(None, batch_root))
    kinds = [type(o).__name__ for o in shown]
    assert kinds == ["Markdown", "Markdown", "DataFrame", "Image"]
    assert "**Run `2026-01-02_batch`**" in shown[1].data
    assert "Throughput vs batch size" in shown[0].data and "anchor" not in shown[0].data


@pytest.mark.slow
def test_notebook_shows_the_batch_section(batch_root, tmp_path, monkeypatch):
    monkeypatch.setenv("FASTQWEN_PROJECT_DIR", str(batch_root.parents[1]))
    out = tmp_path / "out.ipynb"
    papermill.execute_notebook(
        str(ROOT / "notebooks" / "benchmark.ipynb"),
        str(out),
        parameters={"run_live": False},
        kernel_name="python3",
        progress_bar=False,
        cwd=str(batch_root.parents[1]),
    )
    text = json.dumps(nbformat.read(str(out), as_version=4).cells)
    assert "Throughput vs batch size" in text and "2026-01-02_batch" in text


def test_the_steady_state_simulation_runs_the_real_host_side(tmp_path):
    """bench/steady_state_sim.py: the burst and the steady state with the GPU as sleeps;
    every frame it ran is one of a block, and the steady state ran its waves' frames."""
    import fastqwen.api
    from fastqwen.codec import batch as codec_batch

    originals = codec_batch.decode_spans, fastqwen.api.build_talker_prompt
    sim = _script("steady_state_sim")
    out = tmp_path / "sim.json"
    args = ["--batch-size", "2", "--frames", "6", "--waves", "1", "--frame-ms", "1"]
    assert (
        sim.main([*args, "--prefill-ms", "1", "--span-ms", "1", "--prompt-sync", "--out", str(out)])
        == 0
    )
    # what it replaced for the run is back (later tests in this process use them)
    assert (codec_batch.decode_spans, fastqwen.api.build_talker_prompt) == originals
    record = json.loads(out.read_text())
    burst, steady = record["burst"], record["steady"]
    # one block, cut at the 6 frames the requests need (5 and the extra one), not 8
    assert burst["steps"] == 6 and burst["blocks"] == 1
    assert burst["audio_seconds_per_second"] > 0 and steady["audio_seconds_per_second"] > 0
    # 3 waves of 2 requests of 6 frames, through 2 slots: at least 3 * 6 steps
    assert steady["steps"] >= 18 and 1 <= steady["blocks"] <= steady["steps"]
    assert steady["breakdown"]["codec_spans"] >= 6
