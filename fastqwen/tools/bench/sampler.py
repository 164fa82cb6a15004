"""Where named threads spend their wall time: a sampler of their Python stacks.

Why: the engine's frame loop and codec thread run beside up to hundreds of request
threads. When a throughput run is slower than its parts, the question is which line each
thread was on, waiting or working: a GPU sync, a graph launch, or the GIL. A sample is
`sys._current_frames()`, taken every `interval_s` from a thread of its own, so it needs
nothing installed on the machine and costs one GIL hand-off per sample. A thread blocked
in C (a sync, a lock, a GIL-free op) shows the Python line that called it.
"""

from __future__ import annotations

import sys
import threading
from collections import Counter
from dataclasses import dataclass, field


def _where(frame) -> str:
    code = frame.f_code
    return f"{code.co_filename.rsplit('/', 2)[-1]}:{frame.f_lineno} {code.co_name}"


@dataclass
class ThreadSampler:
    """Samples the stacks of the threads whose names are in `names` (prefix match) until
    stopped; use as a context manager. `top(name)` is the share of samples per line: the
    innermost frame (`inner`), and the innermost frame of a file under `package` (`own`),
    which names the project's line behind a torch or library call."""

    names: tuple[str, ...]
    interval_s: float = 0.005
    package: str = "fastqwen"
    inner: dict[str, Counter] = field(default_factory=dict)
    own: dict[str, Counter] = field(default_factory=dict)
    samples: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        if not self.interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {self.interval_s}")

    def __enter__(self) -> ThreadSampler:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="thread-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        """One sample of every matching thread."""
        threads = {t.ident: t.name for t in threading.enumerate()}
        for ident, frame in sys._current_frames().items():
            name = threads.get(ident, "")
            key = next((n for n in self.names if name.startswith(n)), None)
            if key is None:
                continue
            self.samples[key] = self.samples.get(key, 0) + 1
            self.inner.setdefault(key, Counter())[_where(frame)] += 1
            own = frame
            while own is not None and f"/{self.package}/" not in own.f_code.co_filename:
                own = own.f_back
            if own is not None:
                self.own.setdefault(key, Counter())[_where(own)] += 1

    def top(self, name: str, k: int = 10) -> dict:
        """{"samples": n, "inner": [[line, share], ...], "own": [...]}, k lines each."""
        n = self.samples.get(name, 0)

        def shares(counter: Counter | None) -> list:
            if not counter or not n:
                return []
            return [[line, round(c / n, 3)] for line, c in counter.most_common(k)]

        return {
            "samples": n,
            "inner": shares(self.inner.get(name)),
            "own": shares(self.own.get(name)),
        }

    def summary(self, k: int = 10) -> dict:
        """`top` of every name, for a bench record."""
        return {name: self.top(name, k) for name in self.names}


__all__ = ["ThreadSampler"]
