"""A bounded cache of voice-clone prompts, keyed by what they are computed from.

Turning a reference recording into a clone prompt runs the speaker encoder (and, for ICL,
the codec's encoder): tens of milliseconds on a GPU, on the path to first audio. A server or
an app reuses a handful of voices, so the engine keeps the last prompts it made, keyed by a
hash of the audio samples (after loading, mixing to mono and resampling: the same sound
from a file or an array is one entry), the reference text and the mode. Least recently
used entries go first.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np


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
        if not self.max_entries:
            return
        with self._lock:
            self._items[key] = item
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: str) -> bool:
        return key in self._items
