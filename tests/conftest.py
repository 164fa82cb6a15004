"""Shared fixtures: an isolated fastqwen cache and tiny random-weight models.

Every test session gets its own `FASTQWEN_CACHE` (a pytest temp dir), so tests never read
or write the user's `~/.cache/fastqwen`. `tiny_model(kind)` loads `random:tiny-<kind>`
through `fastqwen.models.sources.load_model` once per session and kind; tests share the loaded
model, so they must not change its weights (deep-copy it first).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from fastqwen.api import FastQwen3TTS
from fastqwen.models.sources import LoadedModel, load_model


def pytest_configure(config: pytest.Config) -> None:
    # The tiny models are far too small to gain from intra-op threads, and on a busy
    # 2-core machine OpenMP spin-waiting made SDPA ~100x slower with 2 threads than with 1.
    torch.set_num_threads(int(os.environ.get("FASTQWEN_TEST_THREADS", "1")))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked `gpu` where there is no CUDA (their real run is a device result)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def fastqwen_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A session-wide `FASTQWEN_CACHE` in pytest's temp dir."""
    path = tmp_path_factory.mktemp("fastqwen-cache")
    old = os.environ.get("FASTQWEN_CACHE")
    os.environ["FASTQWEN_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("FASTQWEN_CACHE", None)
    else:
        os.environ["FASTQWEN_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_model(fastqwen_cache: Path) -> Callable[[str], LoadedModel]:
    """`tiny_model(kind="custom_voice") -> fastqwen.models.sources.LoadedModel`, float32 on CPU.

    kind: "custom_voice", "base" or "voice_design". Built and loaded once per session.
    """
    loaded: dict[str, LoadedModel] = {}

    def get(kind: str = "custom_voice") -> LoadedModel:
        if kind not in loaded:
            loaded[kind] = load_model(f"random:tiny-{kind}", device="cpu", dtype="float32")
        return loaded[kind]

    return get


@pytest.fixture(scope="session")
def tiny_engine(tiny_model: Callable[[str], LoadedModel]) -> Callable[[str], FastQwen3TTS]:
    """`tiny_engine(kind="custom_voice") -> FastQwen3TTS` on `tiny_model(kind)`, one per kind."""
    engines: dict[str, FastQwen3TTS] = {}

    def get(kind: str = "custom_voice") -> FastQwen3TTS:
        if kind not in engines:
            engines[kind] = FastQwen3TTS(tiny_model(kind).tts)
        return engines[kind]

    return get


@pytest.fixture(autouse=True)
def no_project_dir_from_the_notebook_smoke_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """`make test` runs tests/ and the notebooks in one session, and notebooks/conftest.py
    names this checkout in FASTQWEN_PROJECT_DIR for the nbmake kernels. Tests start
    without it (the working directory is the project folder), and set it when they test it."""
    monkeypatch.delenv("FASTQWEN_PROJECT_DIR", raising=False)


@pytest.fixture(scope="module")
def tiny_run(tiny_model, tmp_path_factory):
    """A two-pair CustomVoice set (aiden) on the tiny checkpoint, 5 talker steps per sample;
    one per test module (the report's views, the listening panel)."""
    from fastqwen.tools.samplesets import run as R
    from fastqwen.tools.samplesets.settings import resolve_settings

    settings = resolve_settings(
        "customvoice",
        {
            "model": "random:tiny-custom_voice",
            "speakers": "aiden",
            "max_new_tokens": 5,
            "output_dir": str(tmp_path_factory.mktemp("parity")),
            "interactive": False,
        },
        env={},
    )
    return R.run_sample_set(
        settings, loader=lambda source, device, dtype: tiny_model("custom_voice"), progress=False
    )
