"""Files a sample-set run writes, written so that a killed run never leaves a broken one.

Every file goes to a temporary sibling first and is renamed into place (`os.replace` is
atomic on POSIX and Windows). `summary.json` is shared by the sets that write into one folder:
each run replaces only its own section, under a lock, so the CustomVoice and ICL notebooks
may run one after the other or side by side.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from hashlib import sha256
from pathlib import Path

import numpy as np
import torch

from fastqwen.tools.samplesets.settings import SETS

SUMMARY_FILE = "summary.json"
TRANSCRIPTS_FILE = "icl_transcripts.txt"
README_FILE = "README.md"


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


def update_summary(output_dir: Path, section: dict) -> dict:
    """Replace one set's section of `summary.json` (atomically, under a lock); return all."""
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    with _locked(Path(output_dir)):
        data = read_summary(output_dir)
        data["sets"][section["settings"]["set"]] = section
        data["sets"] = {k: data["sets"][k] for k in SETS if k in data["sets"]}
        atomic_write_text(Path(output_dir) / SUMMARY_FILE, json.dumps(data, indent=2) + "\n")
    return data


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def codes_digest(codes: torch.Tensor) -> str:
    """sha256 of the codes (int64, C order), to check that reruns reproduce them."""
    return sha256(codes.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()[:16]
