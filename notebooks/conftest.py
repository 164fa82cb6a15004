"""Smoke settings for `pytest --nbmake notebooks/` (what `make test` runs).

nbmake executes each notebook in a kernel that inherits this process's environment, and the
parity notebooks read their settings from environment variables
(`fastqwen.tools.samplesets.settings`), so the notebooks run unedited but cheaply: one
speaker, one prompt, 6 talker steps, no live panel, output to a temporary folder. Variables
already set in the environment win.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

SMOKE_ENV = {
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
