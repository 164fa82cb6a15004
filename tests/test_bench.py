"""The benchmark program: records have every field, sane values, and one shape for all engines.

Runs the tiny model on the CPU (a few seconds); the CUDA-only fields (profiler counts, peak
memory) are null here and checked by the GPU test at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from fastqwen.config import SamplingParams
from fastqwen.tools.bench import measure
from fastqwen.tools.bench import run as bench
from fastqwen.tools.cli import main as cli_main
from fastqwen.tools.defaults import DEFAULT_SEED, DEMO_MAX_NEW_TOKENS

MODEL = "random:tiny-custom_voice"
SAMPLING = SamplingParams(max_new_tokens=12)
FAST = dict(device="cpu", dtype="float32", runs=1, sampling=SAMPLING, profile=False)
CUDA_ONLY = (
    "peak_gpu_bytes peak_over_weights_kv kernels_per_frame memops_per_frame gpu_busy_ms_per_frame "
    "launches_per_frame graph_launches_per_frame syncs_per_frame profile_frames"
).split()


@pytest.fixture(scope="module")
def static_record() -> dict:
    (record,) = bench.run_bench("static", MODEL, **FAST)
    return record


@pytest.fixture(scope="module")
def dynamic_record() -> dict:
    (record,) = bench.run_bench("dynamic", MODEL, **FAST)
    return record


def _check_common(record: dict, engine: str) -> None:
    assert list(record) == bench.FIELDS, "record keys differ from bench.FIELDS (order too)"
    assert record["error"] is None
    assert record["engine"] == engine and record["model"] == MODEL
    assert (
        record["size"] == "tiny" and record["kind"] == "custom_voice" and record["random_weights"]
    )
    assert record["schema"] == bench.SCHEMA
    assert record["device_name"].startswith("CPU")
    assert record["torch"] == torch.__version__
    assert record["package"].startswith("qwen-tts ")
    assert len(record["source_hash"]) == 12
    # 12 talker steps and no EOS from random weights: 11 frames of 1920 samples.
    assert record["frames"] == 11 and record["frames_all_runs"] == [11]
    assert record["warmup_frames"] == 11 and record["warmup_s"] > 0
    assert record["eos_reached"] is False
    assert record["max_new_tokens"] == 12 and record["sampling"] == dataclasses.asdict(SAMPLING)
    assert record["audio_s"] == pytest.approx(11 * 1920 / 24000, abs=1e-3)
    assert record["ms_per_frame_min"] <= record["ms_per_frame"] <= record["ms_per_frame_max"]
    assert record["ms_per_frame"] > 0 and len(record["ms_per_frame_runs"]) == 1
    assert record["rtf"] == pytest.approx(80.0 / record["ms_per_frame"], rel=1e-2)
    assert 0 < record["generate_s"] <= record["wall_s"]
    assert record["load_s"] > 0
    assert record["weight_bytes"] > record["talker_weight_bytes"] > 0
    for key in CUDA_ONLY:
        assert record[key] is None, f"{key} should be null on the CPU"
    json.dumps(record)  # everything serialises


def test_static_record(static_record):
    _check_common(static_record, "static")
    r = static_record
    assert r["prefill_ms"] > 0
    assert r["engine_config"]["max_seq_len"] > 0
    assert r["kv_cache_bytes"] > 0
    assert r["ttfa_ms_min"] <= r["ttfa_ms"] <= r["ttfa_ms_max"] and r["ttfa_warmup_ms"] > 0
    assert r["ttfa_first_chunk_frames"] == 2 and r["chunk_frames"] == 12


def test_dynamic_record(dynamic_record):
    _check_common(dynamic_record, "dynamic")
    r = dynamic_record
    for key in ("prefill_ms", "ttfa_ms", "kv_cache_bytes", "engine_config"):
        assert r[key] is None, f"the reference does not report {key}"
    # Same model, same bytes of weights.
    assert r["weight_bytes"] > 0


def test_same_work_both_engines(static_record, dynamic_record):
    for key in ("frames", "audio_s", "text", "speaker", "language", "seed", "max_new_tokens"):
        assert static_record[key] == dynamic_record[key], key
    assert static_record["weight_bytes"] == dynamic_record["weight_bytes"]


def test_anchor_script_writes_the_same_fields():
    path = Path(__file__).resolve().parent.parent / "bench" / "anchor_bench.py"
    spec = importlib.util.spec_from_file_location("anchor_bench", path)
    anchor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(anchor)  # top level imports only the standard library
    assert anchor.FIELDS == bench.FIELDS
    assert anchor.SCHEMA == bench.SCHEMA and anchor.PROMPT_1 == bench.PROMPT_1
    assert anchor.PROFILE_TOKENS == bench.PROFILE_TOKENS


def test_anchor_script_reports_errors_as_records(tmp_path, capsys):
    path = Path(__file__).resolve().parent.parent / "bench" / "anchor_bench.py"
    spec = importlib.util.spec_from_file_location("anchor_bench_err", path)
    anchor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(anchor)
    out = tmp_path / "anchor.json"
    # This venv has transformers 4.x: the script must say so in a record, not crash.
    status = anchor.main(["--model-dir", str(tmp_path), "--out", str(out), "--runs", "1"])
    record = json.loads(out.read_text())
    assert status == 1 and record["engine"] == "anchor"
    assert record["error"] and list(record)[: len(bench.FIELDS)] == bench.FIELDS
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["error"] == record["error"]


def test_cli_error_record_and_out_dir(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    status = cli_main(["bench", "--model", MODEL, "--device", "cuda", "--out", str(tmp_path)])
    assert status == 1
    (written,) = tmp_path.glob("*.json")
    record = json.loads(written.read_text())
    assert "CUDA is not available" in record["error"] and record["engine"] == "static"
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["error"] == record["error"]


def test_cli_has_one_option_per_sampling_field():
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args([])
    assert bench.sampling_from_args(args) == SamplingParams(max_new_tokens=DEMO_MAX_NEW_TOKENS)
    assert args.seed == DEFAULT_SEED
    args = parser.parse_args(
        ["--max-new-tokens", "20", "--subtalker-temperature", "0.5", "--no-do-sample"]
    )
    assert bench.sampling_from_args(args) == SamplingParams(
        max_new_tokens=20, subtalker_temperature=0.5, do_sample=False
    )
    flags = {a.dest for a in parser._actions}
    assert {f.name for f in dataclasses.fields(SamplingParams)} <= flags


def test_output_path_names(tmp_path):
    record = {
        "timestamp": "2026-11-25T10:00:00Z",
        "engine": "static",
        "size": "1.7b",
        "dtype": "bfloat16",
        "device": "cuda",
        "device_name": "NVIDIA H100 80GB HBM3",
    }
    name = bench.output_path(str(tmp_path), record).name
    assert name == "20261125t100000z_static_1.7b_bfloat16_h100-80gb-hbm3.json"
    assert bench.output_path(str(tmp_path / "x.json"), record) == tmp_path / "x.json"


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="unknown engine 'anchor'"):
        bench.run_bench("anchor", MODEL, **FAST)
    with pytest.raises(ValueError, match="runs must be >= 1"):
        bench.run_bench("static", MODEL, **{**FAST, "runs": 0})
    with pytest.raises(ValueError, match="profile_tokens"):
        bench.BenchConfig(profile_tokens=(24, 8))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_profile_counts_one_kernel_per_frame():
    x = torch.randn(256, 256, device="cuda")

    def generate(n: int) -> int:
        for _ in range(n):
            torch.mm(x, x)  # one GEMM kernel per "frame"
        return n

    counts = measure.profile_counts(generate, (4, 12))
    assert counts["kernels_per_frame"] == pytest.approx(1.0, abs=0.2)
    assert counts["launches_per_frame"] >= 0.8 and counts["profile_frames"] == [4, 12]
