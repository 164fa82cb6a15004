"""Files a sample-set run writes, written so that a killed or failed run never leaves a
broken set, and never destroys the previous one.

- Every file goes to a temporary sibling first and is renamed into place (`os.replace` is
  atomic on POSIX and Windows).
- One run of a set holds `run_lock` on its output folder: a second run of the same set into
  the same folder fails at once with a clear message instead of mixing files with it.
- A run writes its WAVs into a hidden staging folder. Only a complete set (every pair ok) is
  published (`publish_set`): its WAVs are renamed into the folder, the set's other WAVs are
  removed, and then, last, its section of `summary.json` (with a sha256 per file: the
  manifest) and `README.md`. A run that is killed before that leaves the earlier set as it
  was; one killed while publishing leaves files whose checksums do not match the summary,
  which `check_set` reports. An incomplete run keeps its files in `failed/<set>/` (with their
  own summary and README) and leaves the published set alone.
- `summary.json` is shared by the sets that write into one folder: each run replaces only its
  own section, under a lock, so the CustomVoice and ICL notebooks may run one after the other
  or side by side.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from hashlib import sha256
from pathlib import Path

import numpy as np
import torch

from fastqwen.tools.samplesets.settings import SETS, set_wav_pattern

SUMMARY_FILE = "summary.json"
TRANSCRIPTS_FILE = "icl_transcripts.txt"
README_FILE = "README.md"
FAILED_DIR = "failed"  # failed/<set>/: the files of the last incomplete run of a set
STAGING_PREFIX = ".staging-"  # .staging-<set>-XXXX/: a run's WAVs until it publishes them


class SetBusyError(RuntimeError):
    """Another run of the same set is writing into the same folder."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary sibling, fsync, then rename: readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; use what open() would
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    """16-bit PCM WAV bytes (the codec output is already clamped to [-1, 1])."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(
        buf,
        np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0),
        sample_rate,
        format="WAV",
        subtype="PCM_16",
    )
    return buf.getvalue()


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on a folder (flock on its descriptor: no lock file left behind)."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; sets there run one after another
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def read_summary(output_dir: Path) -> dict:
    """The parsed `summary.json` of a folder: {"sets": {name: section}}; empty when absent."""
    path = Path(output_dir) / SUMMARY_FILE
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {"sets": {}}
    return data if isinstance(data.get("sets"), dict) else {"sets": {}}


def update_summary(output_dir: Path, section: dict, render=None) -> dict:
    """Replace one set's section of `summary.json` (atomically, under a lock); return all.

    `render(summary) -> str`, when given, writes `README.md` from the new summary under the
    same lock, so two sets finishing together cannot leave a README of only one of them.
    """
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    with _locked(Path(output_dir)):
        data = read_summary(output_dir)
        data["sets"][section["settings"]["set"]] = section
        data["sets"] = {k: data["sets"][k] for k in SETS if k in data["sets"]}
        atomic_write_text(Path(output_dir) / SUMMARY_FILE, json.dumps(data, indent=2) + "\n")
        if render is not None:
            atomic_write_text(Path(output_dir) / README_FILE, render(data))
    return data


@contextmanager
def run_lock(folder: Path, set_name: str) -> Iterator[None]:
    """Hold `<folder>/.<set>.lock` for a whole run; raise `SetBusyError` at once if another
    run of the set holds it."""
    if Path(folder).exists() and not Path(folder).is_dir():
        raise NotADirectoryError(f"output_dir {folder} is a file; choose a folder")
    with folder_lock(
        folder, set_name, f"another run of the {set_name} set", "pass another output_dir"
    ):
        yield


@contextmanager
def folder_lock(folder: Path, name: str, who: str, fix: str) -> Iterator[None]:
    """Hold `<folder>/.<name>.lock`, or raise `SetBusyError` at once ("{who} is writing to
    {folder} ...; wait for it to finish, or {fix}"). The lock is the kernel's (flock): it ends
    with the process, even a killed one, so a stale lock file never blocks a later run."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file, not a folder; choose a folder")
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no flock; do not run two of these into one folder there
        yield
        return
    path = folder / f".{name}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SetBusyError(
                f"{who} is writing to {folder} (it holds {path.name}); wait for it to "
                f"finish, or {fix}"
            ) from None
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def staging_dir(folder: Path, set_name: str) -> Path:
    """A fresh hidden folder for this run's WAVs; removes those left by killed runs (the
    caller holds `run_lock`, so no live run owns them)."""
    for old in Path(folder).glob(f"{STAGING_PREFIX}{set_name}-*"):
        shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{set_name}-", dir=folder))


def file_digest(path: Path) -> str:
    return sha256(Path(path).read_bytes()).hexdigest()


def publish_set(
    folder: Path,
    set_name: str,
    staged: list[Path],
    section: dict,
    *,
    render,
    extra: dict[str, str] | None = None,
) -> dict:
    """Make a complete run the folder's set; return the new summary.

    Order: the staged WAVs are renamed into `folder`, the set's WAVs that this run did not
    produce are removed, `extra` text files are written, and last the set's section (with
    `files`: name -> sha256) and the README. Call with `run_lock` held.
    """
    folder = Path(folder)
    section = dict(section, files={p.name: file_digest(p) for p in staged})
    for path in staged:
        os.replace(path, folder / path.name)
    pattern = set_wav_pattern(set_name)
    for path in folder.iterdir():
        if pattern.match(path.name) and path.name not in section["files"]:
            path.unlink()  # from an earlier run with other voices or prompts
    for name, text in (extra or {}).items():
        atomic_write_text(folder / name, text)
    return update_summary(folder, section, render)


def keep_failed(
    folder: Path, set_name: str, staging: Path, section: dict, *, render, extra=None
) -> Path:
    """Move an incomplete run's files to `folder/failed/<set>/` (replacing the previous
    failed run's) with a summary and README of their own; the published set is untouched."""
    target = Path(folder) / FAILED_DIR / set_name
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, target)
    section = dict(section, files={p.name: file_digest(p) for p in sorted(target.glob("*.wav"))})
    for name, text in (extra or {}).items():
        atomic_write_text(target / name, text)
    update_summary(target, section, render)
    return target


def check_set(folder: Path, set_name: str) -> list[str]:
    """What is wrong between a set's section of `summary.json` and its WAVs (empty: they
    describe the same run). A run killed while publishing shows up here."""
    section = read_summary(folder)["sets"].get(set_name)
    if section is None:
        return [f"summary.json in {folder} has no {set_name} section"]
    files = section.get("files")
    if not isinstance(files, dict):
        return [f"the {set_name} section has no checksums (written by an older version)"]
    problems = []
    for name, digest in files.items():
        path = Path(folder) / name
        if not path.is_file():
            problems.append(f"{name} is listed in summary.json but missing")
        elif file_digest(path) != digest:
            problems.append(f"{name} does not match its checksum in summary.json")
    pattern = set_wav_pattern(set_name)
    problems += [
        f"{p.name} is not part of the run summary.json describes"
        for p in sorted(Path(folder).iterdir())
        if pattern.match(p.name) and p.name not in files
    ]
    return problems


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def codes_digest(codes: torch.Tensor) -> str:
    """sha256 of the codes (int64, C order), to check that reruns reproduce them."""
    return sha256(codes.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()[:16]
