"""Where the tools run: the project folder, package versions and the git commit.

The library holds no repository paths. Relative folders of the tools (`samples/parity`,
`reports/`, `notebooks/`, `bench/results`) resolve against the *project folder*: the
working directory, or `$FASTQWEN_PROJECT_DIR` when set. The variable is for processes that
run elsewhere: Jupyter and nbmake start a notebook's kernel in `notebooks/`, so `make lab`
and `notebooks/conftest.py` point it at the project root.

Standard library only: `bench/anchor_bench.py` imports it beside transformers 5.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PROJECT_DIR_VAR = "FASTQWEN_PROJECT_DIR"
# On the device machine the tree travels without its .git (a stale one may be there):
# the caller passes the commit in.
GIT_COMMIT_VAR = "FASTQWEN_GIT_COMMIT"


def project_dir(env: Mapping[str, str] | None = None) -> Path:
    """`$FASTQWEN_PROJECT_DIR` when set and non-empty, else the working directory (absolute)."""
    env = os.environ if env is None else env
    given = env.get(PROJECT_DIR_VAR, "").strip()
    return Path(given).expanduser().resolve() if given else Path.cwd()


def project_path(value: str | os.PathLike, base: Path | None = None) -> Path:
    """`value` as an absolute path; a relative one starts at `base` (default: the project)."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else ((base or project_dir()) / path).resolve()


def rel(path: str | os.PathLike, base: Path | None = None) -> str:
    """`path` relative to `base` (default: the project folder) when inside it, else as given:
    portable names for summaries and reports."""
    p = Path(path)
    if not p.is_absolute():  # a speaker name or an already relative path
        return p.as_posix()
    try:
        return p.resolve().relative_to((base or project_dir()).resolve()).as_posix()
    except ValueError:
        return str(p)


def package_version(dist: str) -> str | None:
    """The installed version of distribution `dist`, None when it is not installed."""
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def git(*args: str, cwd: str | os.PathLike | None = None) -> str | None:
    """`git <args>` in `cwd` (default: the working directory); its stdout, None on failure."""
    try:
        out = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state(cwd: str | os.PathLike | None = None) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout at `cwd`; `$FASTQWEN_GIT_COMMIT` wins (dirty unknown).

    dirty: whether tracked files differ from the commit; None when unknown.
    """
    given = os.environ.get(GIT_COMMIT_VAR, "").strip()
    if given:
        return given, None
    commit = git("rev-parse", "HEAD", cwd=cwd)
    if commit is None:
        return None, None
    status = git("status", "--porcelain", "--untracked-files=no", cwd=cwd)
    return commit, None if status is None else bool(status)


def git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    """Short commit for summaries, with "-dirty" for local changes; None outside git."""
    commit, dirty = git_state(cwd)
    if commit is None:
        return None
    return commit[:12] + ("-dirty" if dirty else "")


__all__ = [
    "GIT_COMMIT_VAR",
    "PROJECT_DIR_VAR",
    "git",
    "git_commit",
    "git_state",
    "package_version",
    "project_dir",
    "project_path",
    "rel",
]
