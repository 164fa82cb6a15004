"""One generation at a time: the slot that every call into a model holds while it runs.

Threads may call the engine (`FastQwen3TTS.generate*` / `stream*`), the reference runner and
the parity checks freely; until batching has a scheduler, those calls take turns here, so
each returns exactly what it would have returned alone. What they would otherwise share:

- the engine's static caches and frame state, which belong to the engine, not to the call;
- the loaded `qwen_tts` model, which the engine and the reference runner both run;
- torch's default random generators. Both sides seed them and then draw from them, as the
  reference does, and they are process-wide: a seed set in one thread moves the draws of
  every other. So the slot is one per process, not one per model; two models in two
  threads would otherwise take each other's random numbers.

A plain call holds the slot from entry to return, and re-entering it from the same thread
nests (`generate_*` calls `generate`, which builds its prompt; `run_parity` runs both
sides). A stream holds it from its first `next()` until it ends, is closed, or is
garbage-collected (all three run its `finally`); a stream that was never started holds
nothing. While a stream waits for its reader, another call from the thread that last read
it raises instead of waiting: only that thread could finish the stream, so waiting would
deadlock, and running would corrupt the stream. Another thread simply waits its turn
(logged at debug level), so a stream may also be read one chunk at a time from a pool, as
`asyncio.to_thread(next, chunks)` does.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


class GenerationSlot:
    """A reentrant lock whose holder may be a paused stream, released from any thread."""

    def __init__(self) -> None:
        # An RLock under the condition, so that a stream garbage-collected inside one of the
        # short sections below (its `finally` releases the slot) cannot deadlock the thread.
        self._cond = threading.Condition(threading.RLock())
        self._depth = 0  # nested holds by the current holder; 0: free
        self._holder = ""  # "call" or "stream", for the log
        self._running_in: int | None = None  # thread running under the slot; None: paused stream
        self._paused_in: int | None = None  # thread that last read the paused stream

    @contextmanager
    def held(self, holder: str = "call") -> Iterator[bool]:
        """Hold the slot for the block; yields True if this hold took it, False if it nested."""
        me = threading.get_ident()
        with self._cond:
            nested = self._depth > 0 and self._running_in == me
            if not nested:
                if self._depth and self._paused_in == me:
                    raise RuntimeError(
                        "this thread is reading a stream that has not ended, and the model runs "
                        "one call at a time; finish or close() the first stream before starting "
                        "another call (or read them from different threads, one after the other)"
                    )
                if self._depth:
                    log.debug("waiting for the generation slot, held by a %s", self._holder)
                while self._depth:
                    self._cond.wait()
                self._holder = holder
            self._depth += 1
            self._running_in, self._paused_in = me, None
        try:
            yield not nested
        finally:
            with self._cond:
                self._depth -= 1
                if not self._depth:
                    self._running_in = self._paused_in = None
                    self._cond.notify_all()

    def pause(self) -> None:
        """The holding stream hands a chunk to its reader (and may be resumed from any thread)."""
        with self._cond:
            self._paused_in, self._running_in = threading.get_ident(), None

    def resume(self) -> None:
        """The holding stream runs again, in the thread that asked for its next chunk."""
        with self._cond:
            self._running_in, self._paused_in = threading.get_ident(), None


_SLOT = GenerationSlot()


def generation_slot() -> GenerationSlot:
    """The slot every engine and reference call holds (one per process; see the module doc)."""
    return _SLOT


def serialized(fn: Callable[P, T]) -> Callable[P, T]:
    """Run `fn` holding the generation slot."""

    @functools.wraps(fn)
    def call(*args: P.args, **kwargs: P.kwargs) -> T:
        with generation_slot().held():
            return fn(*args, **kwargs)

    return call


def serialized_stream(fn: Callable[P, Iterator[T]]) -> Callable[P, Iterator[T]]:
    """Make a generator function hold the slot from its first next() until it ends or closes.

    A stream started inside a call that holds the slot (same thread) belongs to that call:
    it nests, and must end within it.
    """

    @functools.wraps(fn)
    def stream(*args: P.args, **kwargs: P.kwargs) -> Iterator[T]:
        slot = generation_slot()
        with slot.held("stream") as owner:
            items = fn(*args, **kwargs)
            try:
                for item in items:
                    if owner:
                        slot.pause()
                    yield item  # close() or garbage collection raise GeneratorExit here
                    if owner:
                        slot.resume()
            finally:
                items.close()  # runs the inner stream's own cleanup before the slot is freed

    return stream
