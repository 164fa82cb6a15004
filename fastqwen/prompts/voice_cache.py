"""A bounded cache of voice-clone prompts, keyed by what they are computed from.

Turning a reference recording into a clone prompt runs the speaker encoder (and, for ICL,
the codec's encoder): tens of milliseconds on a GPU, on the path to first audio. A server or
an app reuses a handful of voices, so the engine keeps the last prompts it made, keyed by a
hash of the audio samples (after loading, mixing to mono and resampling: the same sound
from a file or an array is one entry), the reference text and the mode. Least recently
used entries go first.

A reference given as a file path is also remembered by the file's identity (its real path,
size, inode and modification time in nanoseconds): the same unchanged file again skips
reading and hashing it (~4 ms for a 10 s 44.1 kHz WAV), while a rewritten file has another
modification time and is read and hashed afresh.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np


def file_identity(path) -> tuple | None:
    """(real path, size, inode, mtime ns) of a reference file, or None if it cannot be
    stat'ed (the loader then reports the error)."""
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
    except (OSError, TypeError, ValueError):
        return None
    return (real, st.st_size, st.st_ino, st.st_mtime_ns)


def voice_key(wav: np.ndarray, sample_rate: int, ref_text: str | None, x_vector_only: bool) -> str:
    """SHA-256 over the float32 samples, the rate, the text and the mode."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(wav, dtype=np.float32).tobytes())
    h.update(f"|{int(sample_rate)}|{bool(x_vector_only)}|".encode())
    h.update((ref_text or "").encode())
    return h.hexdigest()


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0


class VoicePromptCache:
    """Thread-safe LRU of prompt items; `max_entries=0` turns it off."""

    def __init__(self, max_entries: int = 32):
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 0:
            raise ValueError(f"max_entries must be an integer >= 0, got {max_entries!r}")
        self.max_entries = max_entries
        self.stats = CacheStats()
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._files: OrderedDict[tuple, str] = OrderedDict()  # (file identity, text, mode)
        self._lock = threading.Lock()

    def get(self, key: str) -> Any | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.stats.misses += 1
                return None
            self._items.move_to_end(key)
            self.stats.hits += 1
            return item

    def put(self, key: str, item: Any) -> None:
        self._put(self._items, key, item, self.max_entries)

    def key_of_file(self, file: tuple) -> str | None:
        """The content key last computed for `file` = (file identity, ref text, mode)."""
        with self._lock:
            return self._files.get(file)

    def remember_file(self, file: tuple, key: str) -> None:
        self._put(self._files, file, key, 4 * self.max_entries)  # a few paths per voice

    def _put(self, items: OrderedDict, key, value, limit: int) -> None:
        """Insert as most recent; drop the least recent past `limit` (0: keep nothing)."""
        if not limit:
            return
        with self._lock:
            items[key] = value
            items.move_to_end(key)
            while len(items) > limit:
                items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: str) -> bool:
        return key in self._items
