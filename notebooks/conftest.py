"""Smoke settings for `pytest --nbmake notebooks/` (what `make test` runs).

nbmake executes each notebook in a kernel that inherits this process's environment, and the
parity notebooks read their settings from environment variables
(`fastqwen.tools.samplesets.settings`), so the notebooks run unedited but cheaply: one
speaker, one prompt, 6 talker steps, no live panel, output to a temporary folder. Variables
already set in the environment win.

nbmake starts each kernel in `notebooks/`, so `FASTQWEN_PROJECT_DIR` names this checkout:
the tools' relative folders (`samples/ref_audio*.wav`, `bench/results`) resolve there, as
they do for `make report` run from the project root.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

SMOKE_ENV = {
    "FASTQWEN_PROJECT_DIR": str(Path(__file__).resolve().parents[1]),
    "PARITY_SPEAKERS": "aiden",
    "PARITY_PROMPT_LIMIT": "1",
    "PARITY_MAX_NEW_TOKENS": "6",
    "PARITY_INTERACTIVE": "0",
}
_created: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    for name, value in SMOKE_ENV.items():
        os.environ.setdefault(name, value)
    for name, prefix in (
        ("PARITY_OUTPUT_DIR", "fastqwen-nbmake-"),
        ("FASTQWEN_CACHE", "fastqwen-nbmake-cache-"),
    ):
        if not os.environ.get(name):
            os.environ[name] = tempfile.mkdtemp(prefix=prefix)
            _created.append(os.environ[name])


def pytest_unconfigure(config: pytest.Config) -> None:
    for path in _created:
        shutil.rmtree(path, ignore_errors=True)
