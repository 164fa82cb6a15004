"""Model strings: random: caching, auto: fallback, clear errors, local dirs, dtypes."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

import fastqwen.models.sources as sources
from fastqwen.models.checkpoints import BUILDER_VERSION, MARKER_FILE
from fastqwen.models.sources import (
    RANDOM_BANNER,
    ModelUnavailableError,
    RandomWeightsWarning,
    load_model,
    parse_dtype,
    resolve_model,
)

HF_ID = "Qwen/Qwen3-TTS-12Hz-1.7B-VoiceDesign"


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def forbid_builds(monkeypatch) -> None:
    """From here on, fail the test if anything tries to build a checkpoint."""

    def fail(*args, **kwargs):
        raise AssertionError("unexpected rebuild")

    monkeypatch.setattr(sources, "build_random_checkpoint", fail)


def test_random_is_built_once_then_reused(tiny_model, fastqwen_cache, monkeypatch):
    built = tiny_model("custom_voice").source
    forbid_builds(monkeypatch)
    assert built.is_random and not built.fell_back and built.banner() == RANDOM_BANNER
    assert Path(built.path) == fastqwen_cache / "random" / "tiny-custom_voice"
    again = resolve_model("random:tiny-custom_voice")  # must come from the cache
    assert again == built
    assert not list((fastqwen_cache / "random").glob(".tiny-*"))  # no temp dirs left behind


def test_loaded_kind_agrees_with_qwen_tts(tiny_model):
    for kind in ("custom_voice", "base", "voice_design"):
        loaded = tiny_model(kind)
        assert loaded.source.kind == loaded.tts.model.tts_model_type == kind
        assert loaded.tts.model.config._attn_implementation == "sdpa"
        assert loaded.dtype == torch.float32 and loaded.tts.model.dtype == torch.float32


def test_interrupted_build_leaves_no_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTQWEN_CACHE", str(tmp_path))

    def crash(size, kind, out_dir, **kwargs):
        (Path(out_dir) / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(sources, "build_random_checkpoint", crash)
    with pytest.raises(KeyboardInterrupt):
        resolve_model("random:tiny-base")
    assert list((tmp_path / "random").iterdir()) == []


def test_stale_or_incomplete_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTQWEN_CACHE", str(tmp_path))
    calls = []

    def fake_build(size, kind, out_dir, *, seed, device):
        calls.append((size, kind, seed, device))
        marker = dict(size=size, kind=kind, seed=seed, builder_version=BUILDER_VERSION)
        (Path(out_dir) / MARKER_FILE).write_text(json.dumps(marker))

    monkeypatch.setattr(sources, "build_random_checkpoint", fake_build)
    final = tmp_path / "random" / "tiny-base"
    final.mkdir(parents=True)
    (final / "config.json").write_text("{}")  # no marker: a half-written directory
    assert sources.random_checkpoint("tiny", "base") == final
    (final / MARKER_FILE).write_text(json.dumps(dict(builder_version=BUILDER_VERSION - 1)))
    sources.random_checkpoint("tiny", "base")
    sources.random_checkpoint("tiny", "base")  # now current: reused
    assert calls == [("tiny", "base", 0, "cpu")] * 2


@pytest.mark.parametrize("size", ["0.6b", "1.7b"])
def test_checkpoints_with_clipping_codecs_are_rebuilt(tmp_path, monkeypatch, size):
    """Builder 3 saved real-size codecs whose noise clips at full scale: none is reused."""
    assert BUILDER_VERSION > 3
    monkeypatch.setenv("FASTQWEN_CACHE", str(tmp_path))
    monkeypatch.setattr(sources.torch.cuda, "is_available", lambda: False)
    calls = []

    def fake_build(size, kind, out_dir, *, seed, device):
        calls.append((size, kind))
        (Path(out_dir) / "speech_tokenizer").mkdir()
        (Path(out_dir) / "speech_tokenizer/model.safetensors").write_text("quiet")
        marker = dict(size=size, kind=kind, seed=seed, builder_version=BUILDER_VERSION)
        (Path(out_dir) / MARKER_FILE).write_text(json.dumps(marker))

    monkeypatch.setattr(sources, "build_random_checkpoint", fake_build)
    final = tmp_path / "random" / f"{size}-custom_voice"
    (final / "speech_tokenizer").mkdir(parents=True)
    (final / "speech_tokenizer/model.safetensors").write_text("loud")
    old = dict(size=size, kind="custom_voice", seed=0, builder_version=3)  # complete, but old
    (final / MARKER_FILE).write_text(json.dumps(old))
    assert sources.random_checkpoint(size, "custom_voice") == final
    assert (final / "speech_tokenizer/model.safetensors").read_text() == "quiet"
    assert json.loads((final / MARKER_FILE).read_text())["builder_version"] == BUILDER_VERSION
    sources.random_checkpoint(size, "custom_voice")  # now current: reused
    assert calls == [(size, "custom_voice")]


def test_auto_falls_back_loudly_when_offline(offline, caplog, monkeypatch):
    monkeypatch.setattr(sources.torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="fastqwen.models.sources"):
        with pytest.warns(RandomWeightsWarning, match="random weights"):
            source = resolve_model(f"auto:{HF_ID}")
    assert source.is_random and source.fell_back
    assert (source.kind, source.size) == ("voice_design", "tiny")
    assert HF_ID in source.note and "HF_HUB_OFFLINE" in source.note
    assert RANDOM_BANNER in source.banner() and HF_ID in source.banner()
    assert any(HF_ID in r.getMessage() for r in caplog.records)


def test_auto_fallback_keeps_the_real_size_on_cuda(offline, monkeypatch, tmp_path):
    asked = []
    monkeypatch.setattr(sources.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(
        sources, "random_checkpoint", lambda size, kind: asked.append(size) or tmp_path
    )
    with pytest.warns(RandomWeightsWarning):
        source = resolve_model("auto:Qwen/Qwen3-TTS-12Hz-0.6B-Base")
    assert asked == ["0.6b"] and (source.size, source.kind) == ("0.6b", "base")


def test_explicit_hf_id_offline_is_one_clear_error(offline):
    with pytest.raises(ModelUnavailableError) as info:
        resolve_model("Qwen/Qwen3-TTS-12Hz-1.7B-CustomVoice")
    message = str(info.value)
    assert "Qwen/Qwen3-TTS-12Hz-1.7B-CustomVoice" in message
    assert "random:1.7b-custom_voice" in message and "auto:Qwen/" in message
    assert "local checkpoint directory" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert isinstance(info.value, ValueError)


def test_cached_hf_snapshot_is_used_without_network(tiny_model, tmp_path, offline, monkeypatch):
    import huggingface_hub.constants as hf_constants

    repo = "Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice"
    cache = tmp_path / "hub"
    snap = cache / "models--Qwen--Qwen3-TTS-12Hz-0.6B-CustomVoice" / "snapshots" / "abc123"
    shutil.copytree(tiny_model("custom_voice").source.path, snap)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    source = resolve_model(repo)
    assert Path(source.path) == snap
    assert (source.kind, source.size, source.is_random) == ("custom_voice", "0.6b", False)
    (snap / "speech_tokenizer" / "model.safetensors").unlink()  # incomplete: not usable offline
    with pytest.raises(ModelUnavailableError):
        resolve_model(repo)


def test_local_directory(tiny_model, tmp_path):
    path = tiny_model("base").source.path
    source = resolve_model(path)
    assert (source.kind, source.size, source.is_random) == ("base", "tiny", True)
    assert not source.fell_back
    with pytest.raises(ValueError, match="without config.json"):
        resolve_model(str(tmp_path))


@pytest.mark.parametrize(
    "bad",
    ["foo", "random:huge-base", "random:tiny", "random:tiny-clone", "auto:Qwen/Nope",
     "Qwen/Qwen3-TTS-12Hz-0.6B-VoiceDesign", "./no/such/dir"],
)  # fmt: skip
def test_bad_strings_name_the_value_and_the_valid_forms(bad):
    with pytest.raises(ValueError) as info:
        resolve_model(bad)
    assert repr(bad) in str(info.value)
    assert "random:<size>-<kind>" in str(info.value) and "auto:<HF id>" in str(info.value)


def test_dtypes():
    assert parse_dtype("fp32") is parse_dtype("float32") is torch.float32
    assert parse_dtype("bf16") is parse_dtype(torch.bfloat16) is torch.bfloat16
    assert parse_dtype("float16") is torch.float16
    for bad in ("int8", torch.int32, "half-ish"):
        with pytest.raises(ValueError, match="bfloat16"):
            parse_dtype(bad)
    with pytest.raises(ValueError, match="int8"):
        load_model("random:tiny-base", dtype="int8")


def test_load_in_bfloat16(tiny_model, monkeypatch):
    tiny_model("base")
    forbid_builds(monkeypatch)
    loaded = load_model("random:tiny-base", dtype="bf16")
    assert loaded.dtype == loaded.tts.model.dtype == torch.bfloat16
    assert loaded.source.kind == loaded.tts.model.tts_model_type == "base"


def test_a_missing_or_file_model_path_says_so(tmp_path, monkeypatch):
    # Issue 15: a missing model directory said "unknown model".
    with pytest.raises(ValueError, match=r"no such directory .*no/such/dir"):
        resolve_model(str(tmp_path / "no" / "such" / "dir"))
    (tmp_path / "ckpt").write_text("x")
    with pytest.raises(ValueError, match=r"ckpt is a file, not a checkpoint directory"):
        resolve_model(str(tmp_path / "ckpt"))


def test_devices_torch_cannot_use_are_named(monkeypatch):
    # Issue 15: device='tpu' and device='cuda' without a GPU gave raw torch errors.
    with pytest.raises(ValueError, match=r"device='tpu' is not a torch device"):
        sources.parse_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"device='cuda'.*no CUDA GPU.*device='cpu'"):
        sources.load_model("random:tiny-custom_voice", device="cuda")
    assert sources.parse_device("cpu") == torch.device("cpu")


def test_cli_errors_are_one_line_and_exit_2(offline, capsys):
    # Issue 15: `python -m fastqwen resolve <offline HF id>` printed a 15-line traceback.
    from fastqwen.tools.cli import main

    assert main(["resolve", "Qwen/Qwen3-TTS-12Hz-1.7B-CustomVoice"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastqwen resolve: error: model 'Qwen/Qwen3-TTS-12Hz-1.7B-CustomVoice'")
    assert "\n" not in err and "Traceback" not in err
    assert main(["resolve", "./no/such/dir"]) == 2
    assert "no such directory" in capsys.readouterr().err
