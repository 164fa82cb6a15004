"""The voice clone bench: one record per mode and reference variant, the encoders timed only
for a new reference, the view's modes table, and the stage breakdown script.

Runs the tiny Base model on the CPU in fp32 (about a minute in all).
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from fastqwen.api import FastQwen3TTS
from fastqwen.config import SamplingParams
from fastqwen.tools.bench import clone, records, tables
from fastqwen.tools.bench import run as bench
from fastqwen.tools.cli import main as cli_main
from tests.test_benchview import record

MODEL = "random:tiny-base"
ROOT = Path(__file__).resolve().parent.parent
FAST = dict(device="cpu", dtype="float32", runs=1, sampling=SamplingParams(max_new_tokens=8))


@pytest.fixture(scope="module")
def clone_records() -> list[tuple[dict, int]]:
    """The four records, each with the number of reference encodings made while it ran."""
    calls = []
    real = FastQwen3TTS._encode_voice

    def counted(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    out = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(FastQwen3TTS, "_encode_voice", counted)
        clone.run_clone_bench(
            MODEL,
            reference=clone.Reference.synthetic(3.0),
            on_record=lambda r: out.append((r, len(calls) - sum(n for _, n in out))),
            **FAST,
        )
    return out


def test_one_record_per_mode_and_reference(clone_records):
    cases = [(r["mode"], r["reference_cached"]) for r, _ in clone_records]
    assert cases == [
        ("clone_icl", True),
        ("clone_icl", False),
        ("clone_xvector", True),
        ("clone_xvector", False),
    ]
    for r, _ in clone_records:
        assert list(r) == bench.FIELDS, "record keys differ from bench.FIELDS (order too)"
        assert r["error"] is None, r.get("traceback")
        assert r["schema"] == bench.SCHEMA and r["engine"] == "static" and r["kind"] == "base"
        assert r["speaker"] is None and r["reference_s"] == pytest.approx(3.0)
        assert 0 < r["ttfa_ms_min"] <= r["ttfa_ms"] <= r["ttfa_ms_max"]
        assert r["ttfa_warmup_ms"] > 0 and r["ttfa_first_chunk_frames"] == 2
        # 8 talker steps, no EOS from random weights: 7 frames
        assert r["frames"] == 7 and r["ms_per_frame"] > 0 and r["prefill_ms"] > 0
    json.dumps([r for r, _ in clone_records])


def test_new_reference_encodes_in_every_timed_call_cached_never(clone_records):
    # cached: the prompt for the generation runs is the one encoding, every TTFA call hits;
    # new: that prompt is cached already, each of the runs + 1 TTFA calls encodes anew.
    encodings = {(r["mode"], r["reference_cached"]): n for r, n in clone_records}
    assert encodings == {
        ("clone_icl", True): 1,
        ("clone_icl", False): 2,
        ("clone_xvector", True): 1,
        ("clone_xvector", False): 2,
    }


def test_clone_modes_need_a_base_model():
    with pytest.raises(ValueError, match="Base model.*random:<size>-base"):
        clone.run_clone_bench("random:tiny-custom_voice", **FAST)


def test_modes_and_references_are_parsed_and_named():
    assert clone.parse_modes("clone_xvector, custom_voice") == ("clone_xvector", "custom_voice")
    assert clone.parse_references("new,cached") == (False, True)
    with pytest.raises(ValueError, match="--modes 'clone'.*clone_icl"):
        clone.parse_modes("clone")
    with pytest.raises(ValueError, match="--references 'old'"):
        clone.parse_references("old")
    with pytest.raises(ValueError, match="clone mode 'custom_voice'"):
        clone.CloneCase("custom_voice", True)


def test_new_references_differ_and_survive_the_file(tmp_path):
    from fastqwen.prompts.reference_audio import load_reference_audio
    from fastqwen.prompts.voice_cache import voice_key

    ref = clone.Reference.synthetic(2.0)
    keys = set()
    for i, r in enumerate((ref, ref.perturbed(1), ref.perturbed(2), ref)):
        wav, sr = load_reference_audio(str(r.write(tmp_path / f"{i}.wav")))
        assert sr == 24_000 and abs(wav.size - 48_000) <= 1
        keys.add(voice_key(wav, sr, ref.text, False))
    assert len(keys) == 3  # the same recording twice is one key; each perturbed one is new
    assert sf_rate(tmp_path / "0.wav") == clone.REFERENCE_FILE_RATE


def sf_rate(path) -> int:
    import soundfile as sf

    return sf.info(str(path)).samplerate


def test_reference_from_a_file_is_cut_and_needs_its_text():
    sample = ROOT / "samples" / "ref_audio.wav"
    ref = clone.Reference.load(sample, "some words", seconds=4.0)
    assert ref.sample_rate == 24_000 and ref.seconds == pytest.approx(4.0)
    assert np.abs(ref.wav).max() > 0.1
    with pytest.raises(ValueError, match="--reference-text"):
        clone.Reference.load(sample, "")


def test_cli_writes_a_named_record_per_case(tmp_path, capsys):
    out = tmp_path / "records"
    status = cli_main(
        ["bench", "--device", "cpu", "--model", MODEL, "--modes", "clone_xvector",
         "--references", "new", "--runs", "1", "--max-new-tokens", "6", "--no-profile",
         "--reference-seconds", "2", "--out", str(out)]
    )  # fmt: skip
    assert status == 0
    (path,) = out.glob("*.json")
    assert "_static_clone_xvector-new_tiny_float32_cpu" in path.name
    rec = json.loads(path.read_text())
    assert rec["mode"] == "clone_xvector" and rec["reference_cached"] is False
    assert rec["ttfa_ms"] > 0 and rec["reference_s"] == pytest.approx(2.0)
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["ttfa_ms"] == rec["ttfa_ms"]


def test_cli_refuses_one_json_file_for_several_records(tmp_path):
    with pytest.raises(SystemExit, match="--out must be a directory"):
        cli_main(["bench", "--device", "cpu", "--model", MODEL, "--modes", "clone_icl",
                  "--out", str(tmp_path / "x.json")])  # fmt: skip


def test_custom_voice_records_say_their_mode():
    (rec,) = bench.run_bench("static", "random:tiny-custom_voice", profile=False, **FAST)
    assert rec["mode"] == "custom_voice" and rec["reference_cached"] is None
    assert rec["ttfa_ms"] > 0


# ------------------------------------------------------------------ the view


def test_clone_records_stay_out_of_the_engine_comparison():
    cv = {**record("static", ttfa_ms=40.0), "label": "static", "file": "a.json"}
    old = {**record("static", size="0.6b"), "label": "static", "file": "b.json"}
    old.pop("mode")  # a record from before the field: custom voice
    icl_new = {
        **record("static", ttfa_ms=90.0, mode="clone_icl", reference_cached=False),
        "label": "static",
        "file": "c.json",
    }
    icl_cached = {**icl_new, "reference_cached": True, "ttfa_ms": 45.0, "file": "d.json"}
    run = records.BenchRun("r", [icl_new, icl_cached, cv, old])
    assert run.single == [cv, old] and run.find("static", "1.7b") is cv
    assert len(run.modes) == 4 and records.mode_of(old) == "custom_voice"
    table = tables.modes_table(run)
    assert list(table["mode"]) == ["custom_voice", "clone_icl", "clone_icl", "custom_voice"]
    assert list(table["reference"]) == ["-", "cached", "new", "-"]
    assert list(table["TTFA ms"])[:3] == [40.0, 45.0, 90.0]
    assert math.isnan(table.iloc[3]["TTFA ms"])
    assert tables.modes_table(records.BenchRun("r", [cv])).empty


# ------------------------------------------------------------------ the breakdown script


def test_stage_breakdown_script_times_every_stage(tmp_path):
    path = ROOT / "bench" / "clone_ttfa.py"
    spec = importlib.util.spec_from_file_location("clone_ttfa", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "stages.json"
    status = script.main(
        [str(out), "--model", MODEL, "--device", "cpu", "--runs", "1", "--reference-seconds", "3"]
    )
    assert status == 0
    data = json.loads(out.read_text())
    assert data["schema"] == script.SCHEMA and data["reference_s"] == pytest.approx(3.0)
    seen = [(v["mode"], v["reference_cached"]) for v in data["variants"]]
    assert seen == [(m, c) for m in clone.CLONE_MODES for c in (False, True)]
    common = {"cache_lookup", "prompt_build", "prefill", "first_frames",
              "scheduling", "first_chunk_decode"}  # fmt: skip
    for v in data["variants"]:
        assert "error" not in v, v.get("error")
        expected = set(common)
        if not v["reference_cached"]:  # a cached, unchanged file is not even read
            expected |= {"read", "hash", "resample", "speaker_encoder"}
        if v["mode"] == "clone_icl":
            expected.add("codec_prime")
            if not v["reference_cached"]:
                expected.add("codec_encoder")  # x-vector prompts need no reference codes
        assert set(v["stages_ms"]) == expected, v["mode"]
        assert expected <= set(data["stages"])  # each number says what it covers
        for name, ms in v["stages_ms"].items():
            assert ms > 0, f"{v['mode']} {name}: {ms}"
        assert v["stage_sum_ms"] == pytest.approx(sum(v["stages_ms"].values()), abs=0.01)
        assert v["end_to_end_ms"] > 0 and v["prompt_len"] > 0
    icl, xvec = data["variants"][0], data["variants"][2]
    assert icl["prompt_len"] > xvec["prompt_len"]  # the reference's codes and text
