"""The turn that prompt building and the reference runner take, one at a time per process.

The engine's frames do not take it: its scheduler thread owns the frame loop and each slot
draws from its own random generator. What still shares process-wide state:

- the reference runner (`verify.reference`) seeds torch's default generators and draws from
  them, as `qwen_tts` does; they are process-wide, so a seed set in one thread would move
  the draws of a reference run in another;
- prompt building (`prompts.builder`) and the voice-clone encoders run the loaded
  `qwen_tts` model's own code.

A call holds the turn from entry to return; re-entering it from the same thread nests
(`run_parity` runs the reference and builds prompts inside its own turn). Another thread
waits (logged at debug level).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import ParamSpec, TypeVar

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

_TURN = threading.RLock()


def serialized(fn: Callable[P, T]) -> Callable[P, T]:
    """Run `fn` holding the process-wide turn."""

    @functools.wraps(fn)
    def call(*args: P.args, **kwargs: P.kwargs) -> T:
        if not _TURN.acquire(blocking=False):
            log.debug("waiting for the turn to run %s", fn.__qualname__)
            _TURN.acquire()
        try:
            return fn(*args, **kwargs)
        finally:
            _TURN.release()

    return call
