"""Sample sets: settings precedence and environment variables, the generation parameters
(every `SamplingParams` field), file names, atomic files, the generated README, the warm-up,
and the runner on the tiny random checkpoints (failures, reruns).
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path

import pytest

from fastqwen.config import SamplingParams
from fastqwen.tools.defaults import DEFAULT_SEED, DEMO_MAX_NEW_TOKENS
from fastqwen.tools.samplesets import artifacts as A
from fastqwen.tools.samplesets import run as R
from fastqwen.tools.samplesets.readme import render_readme
from fastqwen.tools.samplesets.settings import (
    PARAMS,
    SAMPLING_FIELDS,
    SAMPLING_HELP,
    SEED_PROMPTS,
    env_var_table,
    notebook_settings,
    pair_id,
    resolve_settings,
    set_wav_pattern,
    voice_tag,
    wav_name,
)

ROOT = Path(__file__).resolve().parents[1]
REFS = [ROOT / f"samples/ref_audio{s}.wav" for s in ("", "_2", "_3")]


@pytest.fixture(autouse=True)
def in_project(monkeypatch):
    """The project folder is the working directory: the checkout, as for `make report`."""
    monkeypatch.delenv("FASTQWEN_PROJECT_DIR", raising=False)
    monkeypatch.chdir(ROOT)


# ------------------------------------------------------------------ settings


def test_defaults_are_the_issue_defaults():
    cv = resolve_settings("customvoice", {}, env={})
    assert cv.model == "auto:Qwen/Qwen3-TTS-12Hz-1.7B-CustomVoice"
    assert cv.voices == ("aiden", "serena")
    assert cv.prompts == SEED_PROMPTS and len(cv.prompts) == 2
    assert cv.language == "English"
    # The SamplingParams defaults, with the demo's talker steps.
    assert cv.sampling == SamplingParams(max_new_tokens=DEMO_MAX_NEW_TOKENS)
    assert (cv.sampling.max_new_tokens, cv.sampling.min_new_tokens) == (168, 2)
    assert cv.seed == DEFAULT_SEED == 1337
    assert cv.output_dir == ROOT / "samples" / "parity"
    assert cv.interactive is True
    assert set(cv.origins.values()) == {"default"}
    icl = resolve_settings("icl", {}, env={})
    assert icl.model == "auto:Qwen/Qwen3-TTS-12Hz-1.7B-Base"
    assert icl.voices == tuple(str(p) for p in REFS)
    assert icl.ref_texts == (None, None, None)  # transcribed unless given
    assert len(cv.pairs()) == 4 and len(icl.pairs()) == 6


def test_summary_settings_are_portable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # notebooks run from notebooks/
    assert resolve_settings("customvoice", {}, env={}).to_json()["voices"] == ["aiden", "serena"]
    icl = resolve_settings("icl", {}, env={}).to_json()
    assert icl["voices"][0] == "samples/ref_audio.wav"
    assert icl["output_dir"] == "samples/parity"


def test_device_and_dtype_defaults(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    s = resolve_settings("customvoice", {}, env={})
    assert (s.device, s.dtype) == ("cpu", "float32")
    s = resolve_settings("customvoice", {"device": "cuda"}, env={})
    assert (s.device, s.dtype) == ("cuda", "bfloat16")
    s = resolve_settings("customvoice", {}, env={"PARITY_DEVICE": "cuda:1", "PARITY_DTYPE": "fp32"})
    assert (s.device, s.dtype) == ("cuda:1", "fp32")


def test_environment_overrides_defaults():
    env = {
        "QWEN_TTS_CUSTOM_MODEL": "random:tiny-custom_voice",
        "QWEN_TTS_MODEL": "random:tiny-base",
        "PARITY_SPEAKERS": " Aiden , ryan ",
        "PARITY_MAX_NEW_TOKENS": "6",
        "PARITY_MIN_NEW_TOKENS": "3",
        "PARITY_SEED": "7",
        "PARITY_OUTPUT_DIR": "/tmp/somewhere",
        "PARITY_PROMPT_LIMIT": "1",
        "PARITY_INTERACTIVE": "0",
    }
    cv = resolve_settings("customvoice", {}, env=env)
    assert cv.model == "random:tiny-custom_voice"
    assert cv.voices == ("aiden", "ryan")
    assert (cv.sampling.max_new_tokens, cv.sampling.min_new_tokens, cv.seed) == (6, 3, 7)
    assert cv.output_dir == Path("/tmp/somewhere")
    assert cv.prompts == SEED_PROMPTS[:1]
    assert cv.interactive is False
    assert cv.origins["max_new_tokens"] == "PARITY_MAX_NEW_TOKENS"
    assert resolve_settings("icl", {}, env=env).model == "random:tiny-base"


def test_parameter_beats_environment_and_empty_env_is_unset():
    env = {"PARITY_MAX_NEW_TOKENS": "6", "PARITY_SPEAKERS": "", "PARITY_SEED": "  "}
    s = resolve_settings("customvoice", {"max_new_tokens": 10, "seed": None}, env=env)
    assert s.sampling.max_new_tokens == 10 and s.origins["max_new_tokens"] == "parameter"
    assert s.voices == ("aiden", "serena") and s.seed == 1337
    # papermill -p passes strings and lists as given
    s = resolve_settings("customvoice", {"speakers": "serena", "max_new_tokens": "12"}, env={})
    assert s.voices == ("serena",) and s.sampling.max_new_tokens == 12
    s = resolve_settings("customvoice", {"speakers": ["ryan", "vivian"]}, env={})
    assert s.voices == ("ryan", "vivian")


@pytest.mark.parametrize(
    ("params", "env", "names"),
    [
        ({}, {"PARITY_MAX_NEW_TOKENS": "lots"}, "PARITY_MAX_NEW_TOKENS"),
        ({}, {"PARITY_INTERACTIVE": "maybe"}, "PARITY_INTERACTIVE"),
        ({"top_k": 2.5}, {}, "top_k"),
        ({"speakers": ","}, {}, "speakers"),
        ({"prompt_limit": 0}, {}, "prompt_limit"),
        ({"prompts": ["", " "]}, {}, "prompts"),
        ({"speakers": "aiden,aiden"}, {}, "duplicate"),
    ],
)
def test_bad_values_name_the_parameter_or_variable(params, env, names):
    with pytest.raises(ValueError, match=names):
        resolve_settings("customvoice", params, env=env)


def test_min_new_tokens_above_max_new_tokens_is_refused_naming_both():
    # Issue 15, item 9: it was accepted silently.
    with pytest.raises(ValueError, match=r"min_new_tokens \(10\) must be <= max_new_tokens \(4\)"):
        SamplingParams(max_new_tokens=4, min_new_tokens=10)
    with pytest.raises(ValueError, match="min_new_tokens.*max_new_tokens"):
        resolve_settings("customvoice", {}, env={"PARITY_MIN_NEW_TOKENS": "200"})
    assert SamplingParams(max_new_tokens=4, min_new_tokens=4).min_new_tokens == 4


def test_temperature_is_codebook_0_and_subtalker_temperature_the_predictor():
    # Issue 11: `temperature` was documented as "codebook 0 and predictor", but the
    # predictor kept 0.9. Each knob now has its own parameter, passed on as given.
    s = resolve_settings("customvoice", {"temperature": 0.5, "subtalker_temperature": 0.7}, env={})
    params = s.sampling_params()
    assert (params.temperature, params.subtalker_temperature) == (0.5, 0.7)
    only_cb0 = resolve_settings("customvoice", {"temperature": 0.5}, env={}).sampling
    assert (only_cb0.temperature, only_cb0.subtalker_temperature) == (0.5, 0.9)
    cb0 = {"temperature", "top_k", "top_p", "do_sample", "repetition_penalty"}
    for name, text in SAMPLING_HELP.items():  # the docs say which codebooks a knob acts on
        assert ("codebooks 1-15" in text) == name.startswith("subtalker_"), name
        assert ("codebook 0" in text) == (name in cb0), name


def test_every_sampling_field_is_a_parameter_and_reaches_sampling_params():
    assert (
        set(SAMPLING_HELP)
        == set(SAMPLING_FIELDS)
        == {f.name for f in dataclasses.fields(SamplingParams)}
    )
    given = dict(
        max_new_tokens=9,
        min_new_tokens=3,
        do_sample=False,
        temperature=0.4,
        top_k=7,
        top_p=0.8,
        repetition_penalty=1.2,
        subtalker_dosample=False,
        subtalker_temperature=0.6,
        subtalker_top_k=5,
        subtalker_top_p=0.7,
    )
    assert set(given) == set(SAMPLING_FIELDS)
    s = resolve_settings("icl", given, env={})
    assert s.sampling == SamplingParams(**given)
    assert all(s.origins[name] == "parameter" for name in given)
    assert {k: s.to_json()[k] for k in given} == given  # summary.json records them all
    # papermill -p passes strings: they are read as the field's type
    s = resolve_settings("customvoice", {"do_sample": "false", "top_p": "0.5"}, env={})
    assert s.sampling.do_sample is False and s.sampling.top_p == 0.5
    with pytest.raises(ValueError, match="subtalker_temperature must be > 0"):
        resolve_settings("customvoice", {"subtalker_temperature": 0}, env={})


def test_relative_folders_start_at_the_project_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = resolve_settings("icl", {}, env={})
    assert s.output_dir == tmp_path / "samples" / "parity"
    assert s.voices[0] == str(tmp_path / "samples" / "ref_audio.wav")
    s = resolve_settings("icl", {}, env={"FASTQWEN_PROJECT_DIR": str(ROOT)})
    assert s.output_dir == ROOT / "samples" / "parity" and s.voices == tuple(map(str, REFS))
    assert s.to_json()["output_dir"] == "samples/parity"


def test_unknown_parameters_are_refused_with_the_valid_names():
    with pytest.raises(ValueError, match=r"\['speker'\].*valid names:.*speakers"):
        resolve_settings("customvoice", {"speker": "aiden"}, env={})
    with pytest.raises(ValueError, match="ref_audios"):
        resolve_settings("customvoice", {"ref_audios": ["a.wav"]}, env={})
    with pytest.raises(ValueError, match="unknown sample set"):
        resolve_settings("voicedesign", {}, env={})


def test_notebook_settings_checks_new_globals(monkeypatch):
    for var in ("PARITY_SPEAKERS", "PARITY_MAX_NEW_TOKENS", "PARITY_PROMPT_LIMIT"):
        monkeypatch.delenv(var, raising=False)
    before = {"In", "Out", "get_ipython", "notebook_settings", "views"}
    ns = {n: None for n in before} | {p.name: None for p in PARAMS["customvoice"]}
    ns |= {"speakers": ["aiden"], "_i3": "history is ignored"}
    assert notebook_settings("customvoice", ns, before).voices == ("aiden",)
    with pytest.raises(ValueError, match=r"unknown notebook parameter\(s\) \['max_tokens'\]"):
        notebook_settings("customvoice", ns | {"max_tokens": 6}, before)


def test_reference_slots_read_their_own_variables(tmp_path):
    env = {
        "PARITY_REF_AUDIO_2": str(tmp_path / "mine.wav"),
        "PARITY_REF_TEXT_3": "third text",
        "PARITY_REF_TEXT": "",
    }
    s = resolve_settings("icl", {}, env=env)
    assert s.voices == (str(REFS[0]), str(tmp_path / "mine.wav"), str(REFS[2]))
    assert s.ref_texts == (None, None, "third text")
    assert s.origins["ref_audios[1]"] == "PARITY_REF_AUDIO_2"
    assert s.origins["ref_texts[2]"] == "PARITY_REF_TEXT_3"
    s = resolve_settings("icl", {"ref_texts": ["one", None, ""]}, env=env)
    assert s.ref_texts == ("one", None, "third text")
    with pytest.raises(ValueError, match="ref_texts has 1 entries but ref_audios has 3"):
        resolve_settings("icl", {"ref_texts": ["one"]}, env={})
    names = [row[0] for row in env_var_table("icl")]
    assert {"QWEN_TTS_MODEL", "PARITY_REF_AUDIO_3", "PARITY_REF_TEXT_2"} <= set(names)


# ------------------------------------------------------------------ names and files


def test_file_names():
    assert wav_name("customvoice", "aiden", 1, "static") == "custom_aiden_gen1_static.wav"
    ref = str(REFS[1])
    assert wav_name("icl", ref, 2, "dynamic") == "icl_ref_audio_2_gen2_dynamic.wav"
    assert pair_id("icl", str(REFS[0]), 1) == "icl_ref_audio_gen1"
    assert voice_tag("/x/My Voice (take 2).flac") == "my_voice_take_2"
    with pytest.raises(ValueError, match="side"):
        wav_name("customvoice", "aiden", 1, "fast")
    pattern = set_wav_pattern("customvoice")
    assert pattern.match("custom_aiden_gen12_dynamic.wav")
    assert not pattern.match("icl_ref_audio_gen1_static.wav")
    assert not pattern.match("custom_aiden_gen1_static.wav.tmp")


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "x.wav"
    A.atomic_write_bytes(path, b"old")
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        A.atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.wav"]  # no temporary left


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_summary_sections_are_kept_per_set(tmp_path):
    A.update_summary(tmp_path, {"settings": {"set": "icl"}, "rows": [1]})
    A.update_summary(tmp_path, {"settings": {"set": "customvoice"}, "rows": [2, 3]})
    A.update_summary(tmp_path, {"settings": {"set": "icl"}, "rows": [4]})
    data = json.loads((tmp_path / "summary.json").read_text())
    assert list(data["sets"]) == ["customvoice", "icl"]
    assert data["sets"]["icl"]["rows"] == [4] and data["sets"]["customvoice"]["rows"] == [2, 3]
    (tmp_path / "summary.json").write_text("{broken")
    assert A.read_summary(tmp_path) == {"sets": {}}


def test_word_error_rate():
    assert R.word_error_rate("Hello, world.", "hello world") == 0
    assert R.word_error_rate("a b c d", "a x c") == 0.5


def test_unusable_transcript_names_file_and_variable(tmp_path):
    for ref in REFS:  # copies without a ref_texts.json: their text must be transcribed
        (tmp_path / ref.name).write_bytes(ref.read_bytes())
    env = {"PARITY_REF_TEXT": "given", "FASTQWEN_PROJECT_DIR": str(tmp_path)}
    s = resolve_settings("icl", {"ref_audios": [r.name for r in REFS]}, env=env)
    heard = {"ref_audio_2.wav": "  ...  ", "ref_audio_3.wav": "fine words"}
    with pytest.raises(ValueError, match=r"ref_audio_2\.wav.*unusable.*PARITY_REF_TEXT_2"):
        R.prepare_references(s, transcriber=lambda path, backend: heard[path.name])
    heard["ref_audio_2.wav"] = "The weather station recorded light rain"
    refs = R.prepare_references(s, transcriber=lambda path, backend: heard[path.name])
    assert [r.text_source for r in refs][0] == "PARITY_REF_TEXT"
    assert refs[1].text_source.startswith("transcribed: ")
    assert refs[1].text == refs[1].transcript == heard["ref_audio_2.wav"]


def test_known_texts_make_icl_prompts_reproducible():
    # Issue 15, item 6: Whisper heard "Small bakery..." on one machine and "Our small
    # bakery..." on another, so the prompt changed with the machine.
    s = resolve_settings("icl", {}, env={})
    known = json.loads((ROOT / "samples/ref_texts.json").read_text())
    for heard_3 in ("Small bakery opens early every day", "Our small bakery opens"):
        heard = {p.name: known[p.name] for p in REFS} | {"ref_audio_3.wav": heard_3}
        refs = R.prepare_references(s, transcriber=lambda path, backend, h=heard: h[path.name])
        assert [r.text for r in refs] == [known[p.name] for p in REFS]  # the same everywhere
        assert {r.text_source for r in refs} == {"ref_texts.json"}
        assert refs[2].transcript == heard_3 and refs[2].word_error_rate > 0  # the check
        assert refs[0].word_error_rate == 0

    def no_asr(path, backend):
        raise ImportError("faster-whisper is not installed")

    refs = R.prepare_references(s, transcriber=no_asr)  # the check is optional
    assert refs[0].text == known["ref_audio.wav"] and refs[0].transcript is None
    text = R.transcripts_text(refs)
    assert "source: ref_texts.json" in text and known["ref_audio_2.wav"] in text


def _wav(path, seconds, level=0.3, clip=False):
    import numpy as np
    import soundfile as sf

    t = np.arange(int(24000 * seconds)) / 24000
    wav = level * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))
    sf.write(path, np.clip(wav * (8 if clip else 1), -1, 1), 24000, subtype="PCM_16")
    return str(path)


@pytest.mark.parametrize(
    ("seconds", "level", "message"),
    [(3.0, 0.0, r"silent \(peak"), (0.2, 0.3, r"0\.20 s long, shorter than the minimum")],
)
def test_bad_reference_audio_stops_before_loading_or_transcribing(
    tmp_path, seconds, level, message
):
    # Issue 15, item 5: silence passed as "ok"; a 0.2 s clip was blamed on its transcript.
    bad = _wav(tmp_path / "bad.wav", seconds, level)
    s = resolve_settings("icl", {}, env={"PARITY_REF_AUDIO_2": bad})

    def loader(*args, **kwargs):
        raise AssertionError("must not load a model")

    with pytest.raises(ValueError, match=rf"bad\.wav.*{message}.*PARITY_REF_AUDIO_2"):
        R.run_sample_set(s, loader=loader, progress=False)


def test_reference_audio_warnings_reach_summary_readme_and_log(tmp_path, tiny_model, caplog):
    assert R.check_references(resolve_settings("icl", {}, env={})) == {
        str(p): [] for p in REFS
    }  # the shipped recordings are clean
    clipped = _wav(tmp_path / "loud.wav", 2.0, clip=True)
    s = resolve_settings(
        "icl",
        {
            "model": "random:tiny-base",
            "ref_audios": [clipped],
            "ref_texts": ["A loud voice"],
            "max_new_tokens": 3,
            "prompt_limit": 1,
            "output_dir": str(tmp_path / "out"),
        },
        env={},
    )
    run = R.run_sample_set(s, loader=_loader(tiny_model, "base"), progress=False)
    assert "clipped" in caplog.text
    (warning,) = run.section["references"][0]["warnings"]
    assert warning.startswith("clipped: ") and run.references[0].warnings == [warning]
    assert warning in (tmp_path / "out" / "README.md").read_text()
    assert warning in (tmp_path / "out" / "icl_transcripts.txt").read_text()


def test_missing_reference_stops_before_loading(tmp_path):
    s = resolve_settings("icl", {}, env={"PARITY_REF_AUDIO_2": str(tmp_path / "gone.wav")})

    def loader(*args, **kwargs):
        raise AssertionError("must not load a model")

    with pytest.raises(FileNotFoundError, match=r"gone\.wav.*PARITY_REF_AUDIO_2"):
        R.run_sample_set(s, loader=loader, progress=False)


# ------------------------------------------------------------------ README


def _row(pair, voice, k, status="ok"):
    row = {"pair": pair, "voice": voice, "prompt_index": k, "status": status, "error": None}
    if status != "ok":
        row["error"] = "RuntimeError: boom"
        row["files"] = {}
        return row
    side = {"frames": 7, "eos_reached": False, "audio_s": 0.56}
    row.update(static=side, dynamic=side, codes={"first_divergent_frame": None})
    row["files"] = {s: f"{pair}_{s}.wav" for s in ("static", "dynamic")}
    return row


def test_readme_lists_files_settings_and_regeneration():
    settings = resolve_settings("customvoice", {"max_new_tokens": 6}, env={})
    section = {
        "settings": settings.to_json(),
        "origins": settings.origins,
        "model": {
            "requested": "auto:X",
            "resolved": "random:tiny-custom_voice",
            "is_random": True,
            "banner": "Random weights: the audio is noise",
        },
        "run": {
            "started": "2026-01-01 00:00:00 UTC",
            "wall_s": 1.0,
            "git_commit": "abc",
            "torch": "2.11",
            "qwen_tts": "0.1.1",
            "torch_threads": 1,
        },
        "references": [],
        "rows": [_row("custom_aiden_gen1", "aiden", 1), _row("custom_aiden_gen2", "aiden", 2, "x")],
    }
    text = render_readme({"sets": {"customvoice": section}})
    assert "`custom_aiden_gen1_static.wav`" in text and "`custom_aiden_gen1_dynamic.wav`" in text
    assert "custom_aiden_gen2: failed" in text and "RuntimeError: boom" in text
    assert "Random weights: the audio is noise" in text
    assert "| max_new_tokens | 6 (from parameter) |" in text
    assert "| seed | 1337 |" in text and SEED_PROMPTS[1] in text
    assert "| max_seq_len | engine default |" in text
    assert "## ICL (voice clone) set" in text and "Not generated yet" in text
    for var in ("QWEN_TTS_CUSTOM_MODEL", "PARITY_SPEAKERS", "PARITY_REF_TEXT_3", "PARITY_SEED"):
        assert f"`{var}`" in text
    assert "make report" in text and "papermill" in text


# ------------------------------------------------------------------ the runner (tiny models)


@pytest.fixture
def cv_settings(tmp_path):
    return resolve_settings(
        "customvoice",
        {
            "model": "random:tiny-custom_voice",
            "speakers": "aiden",
            "max_new_tokens": 4,
            "output_dir": str(tmp_path / "parity"),
            "device": "cpu",
            "dtype": "float32",
        },
        env={},
    )


def _loader(tiny_model, kind):
    return lambda source, device, dtype: tiny_model(kind)


def test_runner_writes_set_and_reruns_reproduce_codes(cv_settings, tiny_model):
    out = cv_settings.output_dir
    out.mkdir(parents=True)
    (out / "custom_bob_gen1_static.wav").write_bytes(b"stale")  # from an earlier, bigger run
    (out / "icl_ref_audio_gen1_static.wav").write_bytes(b"other set")
    run = R.run_sample_set(cv_settings, loader=_loader(tiny_model, "custom_voice"), progress=False)
    names = sorted(p.name for p in out.glob("custom_*.wav"))
    assert names == [
        wav_name("customvoice", "aiden", k, s) for k in (1, 2) for s in ("dynamic", "static")
    ]
    assert (out / "icl_ref_audio_gen1_static.wav").exists()  # the other set is left alone
    assert run.threads == 1 and run.banner.startswith("Random weights")
    rows = A.read_summary(out)["sets"]["customvoice"]["rows"]
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert rows[0]["static"]["ttfa_ms"] > 0 and rows[0]["codes"]["first_divergent_frame"] is None
    assert rows[0]["teacher_forced"]["cb0_kl_max"] < 1e-3
    stream = rows[0]["stream"]
    assert stream["within_bound"] is True and stream["same_length"] is True
    assert stream["max_abs_diff_vs_generate"] <= stream["bound"] < 1e-3  # fp32 on the CPU
    readme = (out / "README.md").read_text()
    assert all(f"`{n}`" in readme for n in names)
    again = R.run_sample_set(
        cv_settings, loader=_loader(tiny_model, "custom_voice"), progress=False
    )
    assert [r["codes_sha256"] for r in again.section["rows"]] == [r["codes_sha256"] for r in rows]


def test_the_recorded_commit_is_the_codes_not_one_dirtied_by_the_run(
    cv_settings, tiny_model, monkeypatch
):
    # Issue 15, item 7: the commit was read after the run had written files ("-dirty").
    def commit(cwd):
        return "abc123-dirty" if any(cv_settings.output_dir.rglob("*.wav")) else "abc123"

    monkeypatch.setattr(R, "git_commit", commit)
    run = R.run_sample_set(cv_settings, loader=_loader(tiny_model, "custom_voice"), progress=False)
    assert run.section["run"]["git_commit"] == "abc123"
    assert "from commit `abc123`" in (cv_settings.output_dir / "README.md").read_text()


def test_a_failing_pair_is_reported_and_the_others_run(cv_settings, tiny_model, monkeypatch):
    real = R.run_parity

    def flaky(engine, request, params, seed, **kw):
        if request.text == SEED_PROMPTS[1]:
            raise RuntimeError("simulated failure")
        return real(engine, request, params, seed, **kw)

    monkeypatch.setattr(R, "run_parity", flaky)
    run = R.run_sample_set(cv_settings, loader=_loader(tiny_model, "custom_voice"), progress=False)
    assert [o.ok for o in run.outcomes] == [True, False]
    failed = cv_settings.output_dir / "failed" / "customvoice"  # incomplete: not published
    assert run.files_dir == failed and not run.complete
    rows = A.read_summary(failed)["sets"]["customvoice"]["rows"]
    assert rows[1]["status"] == "error" and "simulated failure" in rows[1]["error"]
    assert (failed / "custom_aiden_gen1_static.wav").is_file()
    assert not (failed / "custom_aiden_gen2_static.wav").exists()
    assert "custom_aiden_gen2: failed" in (failed / "README.md").read_text()
    with pytest.raises(R.IncompleteSetError, match=r"1 of 2 pairs.*simulated failure"):
        run.raise_if_incomplete()


def test_a_failed_run_keeps_the_earlier_set(cv_settings, tiny_model, monkeypatch):
    # Issue 15, item 1: a run where every pair failed deleted the earlier WAVs and said "ok".
    out = cv_settings.output_dir
    good = R.run_sample_set(cv_settings, loader=_loader(tiny_model, "custom_voice"), progress=False)
    good.raise_if_incomplete()  # a complete run does not raise
    before = {p.name: p.read_bytes() for p in out.glob("*.wav")}
    summary_before = (out / "summary.json").read_text()
    assert len(before) == 4 and A.check_set(out, "customvoice") == []

    def broken(*args, **kwargs):
        raise ValueError("unsupported language klingon")

    monkeypatch.setattr(R, "run_parity", broken)
    other = dataclasses.replace(cv_settings, voices=("serena",))
    bad = R.run_sample_set(other, loader=_loader(tiny_model, "custom_voice"), progress=False)
    assert not any(o.ok for o in bad.outcomes)
    assert {p.name: p.read_bytes() for p in out.glob("*.wav")} == before  # nothing deleted
    assert (out / "summary.json").read_text() == summary_before
    assert A.check_set(out, "customvoice") == []
    with pytest.raises(R.IncompleteSetError, match="klingon"):
        bad.raise_if_incomplete()
    assert not list(out.glob(".staging-*"))  # the staging folder is gone


def test_a_run_killed_while_publishing_is_detected(cv_settings, tiny_model, monkeypatch):
    # Issue 15, item 4: summary.json said 63 frames for WAVs of another run.
    out = cv_settings.output_dir
    R.run_sample_set(cv_settings, loader=_loader(tiny_model, "custom_voice"), progress=False)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies after the WAVs, before the summary

    monkeypatch.setattr(A, "update_summary", killed)
    longer = dataclasses.replace(cv_settings, sampling=SamplingParams(max_new_tokens=6))
    with pytest.raises(KeyboardInterrupt):
        R.run_sample_set(longer, loader=_loader(tiny_model, "custom_voice"), progress=False)
    problems = A.check_set(out, "customvoice")
    assert problems and all("does not match its checksum" in p for p in problems), problems
    (out / "custom_bob_gen1_static.wav").write_bytes(b"stray")
    assert any(
        "custom_bob_gen1_static.wav is not part" in p for p in A.check_set(out, "customvoice")
    )


def test_a_second_run_of_a_set_into_one_folder_fails_at_once(cv_settings):
    # Issue 15, item 2: two runs at once deleted each other's WAVs.
    def loader(*args, **kwargs):
        raise AssertionError("must not load a model")

    with A.run_lock(cv_settings.output_dir, "customvoice"):
        with pytest.raises(A.SetBusyError, match=r"another run of the customvoice set.*output_dir"):
            R.run_sample_set(cv_settings, loader=loader, progress=False)
        with A.run_lock(cv_settings.output_dir, "icl"):  # the other set may run beside it
            pass
    with A.run_lock(cv_settings.output_dir, "customvoice"):  # released
        pass
    (cv_settings.output_dir / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        with A.run_lock(cv_settings.output_dir / "file", "customvoice"):
            pass


def test_max_seq_len_can_be_set_where_the_error_suggests_it(cv_settings, tiny_model):
    # Issue 15, item 1: "load the engine with a larger max_seq_len" could not be done.
    s = resolve_settings(
        "customvoice", {"model": "random:tiny-custom_voice"}, env={"PARITY_MAX_SEQ_LEN": "4096"}
    )
    assert s.max_seq_len == 4096 and s.to_json()["max_seq_len"] == 4096
    assert resolve_settings("customvoice", {"max_seq_len": 300}, env={}).max_seq_len == 300
    engine, _ = R._load(s, None, _loader(tiny_model, "custom_voice"))
    assert engine.config.max_seq_len == 4096
    huge = dataclasses.replace(cv_settings, sampling=SamplingParams(max_new_tokens=100_000))
    run = R.run_sample_set(huge, loader=_loader(tiny_model, "custom_voice"), progress=False)
    assert "max_seq_len" in run.outcomes[0].error
    assert "notebook parameter max_seq_len, or PARITY_MAX_SEQ_LEN" in run.outcomes[0].error


def test_icl_references_with_one_stem_are_refused_naming_both(tmp_path):
    # Issue 15, item 3: ref.mp3 and ref.flac both became icl_ref_gen1_*.wav.
    refs = [str(tmp_path / "a" / "ref.mp3"), str(tmp_path / "b" / "ref.flac")]
    with pytest.raises(ValueError, match=r"ref\.mp3 and .*ref\.flac would both be written"):
        resolve_settings("icl", {"ref_audios": refs, "ref_texts": ["a b", "c d"]}, env={})


def _no_load(*args, **kwargs):
    raise AssertionError("must not load a model")


def test_a_base_model_in_the_customvoice_set_is_named(cv_settings, tiny_model):
    # Issue 15: "unknown speaker(s) ['vivian']... this model has: " (an empty list).
    bad = dataclasses.replace(cv_settings, model="random:tiny-base")
    with pytest.raises(ValueError, match=r"'random:tiny-base'.*is a base model, but the "):
        R.run_sample_set(bad, loader=_no_load, progress=False)


@pytest.mark.parametrize(
    ("device", "match"), [("tpu", "device='tpu' is not a torch device"), ("cuda", "no CUDA GPU")]
)
def test_an_unusable_device_names_the_parameter(cv_settings, monkeypatch, device, match):
    # Issue 15: device='tpu' in a notebook gave a raw RuntimeError naming no parameter.
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    bad = dataclasses.replace(cv_settings, device=device)
    with pytest.raises(ValueError, match=rf"{match}.*notebook parameter device"):
        R.run_sample_set(bad, loader=_no_load, progress=False)


def test_url_or_directory_as_reference_audio_is_a_clear_error(tmp_path):
    # Issue 15: both were reported as "not found".
    with pytest.raises(ValueError, match=r"ref_audios\[1\]='https://x\.org/a\.wav' is a URL"):
        resolve_settings("icl", {"ref_audios": [str(REFS[0]), "https://x.org/a.wav"]}, env={})
    s = resolve_settings("icl", {}, env={"PARITY_REF_AUDIO_3": str(tmp_path)})
    with pytest.raises(ValueError, match=r"is a directory, not a recording.*PARITY_REF_AUDIO_3"):
        R.run_sample_set(s, loader=_no_load, progress=False)


def test_an_output_dir_that_is_a_file_is_a_clear_error(cv_settings):
    cv_settings.output_dir.parent.mkdir(parents=True, exist_ok=True)
    cv_settings.output_dir.write_text("not a folder")
    with pytest.raises(NotADirectoryError, match=r"output_dir .* is a file; choose a folder"):
        R.run_sample_set(cv_settings, loader=_no_load, progress=False)


def test_unknown_speaker_stops_with_the_choices(cv_settings, tiny_model):
    import dataclasses

    bad = dataclasses.replace(cv_settings, voices=("aiden", "bob"))
    with pytest.raises(ValueError, match=r"unknown speaker\(s\) \['bob'\].*serena"):
        R.run_sample_set(bad, loader=_loader(tiny_model, "custom_voice"), progress=False)


def test_icl_runner_with_given_text(tmp_path, tiny_model):
    s = resolve_settings(
        "icl",
        {
            "model": "random:tiny-base",
            "ref_audios": [str(REFS[2])],
            "ref_texts": ["Our bakery"],
            "max_new_tokens": 3,
            "prompt_limit": 1,
            "output_dir": str(tmp_path),
        },
        env={},
    )
    run = R.run_sample_set(s, loader=_loader(tiny_model, "base"), progress=False)
    assert run.outcomes[0].ok, run.outcomes[0].traceback
    assert run.outcomes[0].stream.parity.within_bound, run.outcomes[0].stream.parity.describe()
    assert (tmp_path / "icl_ref_audio_3_gen1_static.wav").is_file()
    transcripts = (tmp_path / "icl_transcripts.txt").read_text()
    assert "ref_audio_3.wav" in transcripts and "source: parameter" in transcripts
    assert "text: Our bakery" in transcripts
    section = A.read_summary(tmp_path)["sets"]["icl"]
    assert section["references"][0]["text_source"] == "parameter"
    assert section["transcription"] is None


# ------------------------------------------------------------------ warm-up


class FakeEngine:
    """Records what the warm-up runs; a stream counts how far it was read."""

    tts = "the qwen_tts model"

    def __init__(self):
        self.calls, self.chunks_read, self.stream_done = [], 0, False

    def generate(self, request, params, seed):
        self.calls.append(("generate", request, params, seed))

    def stream(self, request, params, seed):
        self.calls.append(("stream", request, params, seed))
        for _ in range(3):
            self.chunks_read += 1
            yield object()
        self.stream_done = True


def test_warm_up_runs_generate_and_a_whole_stream_with_the_timed_settings():
    engine, refs = FakeEngine(), []
    params = SamplingParams(max_new_tokens=168, temperature=0.5)
    R.warm_up(engine, "request", params, 7, reference=lambda *a: refs.append(a))
    assert [c[0] for c in engine.calls] == ["generate", "stream"]
    # The timed run's own request and params: the same cache window and prefill bucket.
    assert all(c[1:] == ("request", params, 7) for c in engine.calls)
    assert engine.stream_done and engine.chunks_read == 3  # read to the end: codec spans too
    (ref,) = refs
    assert ref[0] == engine.tts and ref[1] == "request" and ref[3] == 7
    assert ref[2] == dataclasses.replace(params, max_new_tokens=2, min_new_tokens=0)

    later = FakeEngine()
    R.warm_up(later, "request 2", params, 7, full=False, reference=lambda *a: refs.append(a))
    assert [c[0] for c in later.calls] == ["generate"] and len(refs) == 1


def test_runner_warms_up_before_each_pair_and_fully_before_the_first(
    cv_settings, tiny_model, monkeypatch
):
    seen = []
    real = R.warm_up

    def recording(engine, request, params, seed, *, full=True):
        seen.append((request.text, params, seed, full))
        real(engine, request, params, seed, full=full)

    monkeypatch.setattr(R, "warm_up", recording)
    run = R.run_sample_set(cv_settings, loader=_loader(tiny_model, "custom_voice"), progress=False)
    assert [o.ok for o in run.outcomes] == [True, True]
    params, seed = cv_settings.sampling, cv_settings.seed
    assert seen == [(SEED_PROMPTS[0], params, seed, True), (SEED_PROMPTS[1], params, seed, False)]
    assert "stream read to the end" in run.section["run"]["warm_up"]
