"""Kernel > Interrupt as a Stop button for work running in a background thread.

The listening panel generates in a thread, so that the kernel stays free to receive the
Stop button's click. An interrupt then finds the kernel idle, and ipykernel ignores SIGINT
while idle; so while a run is in flight the panel routes SIGINT to the run's stop event.
Handlers can only be set from the main thread: `arm` is called from the button callback
(the main thread), and ipykernel restores its own handler when that callback returns, so
`arm` installs again from the kernel's event loop right after; `disarm` puts back the
handler found there (ignore, when idle).
"""

from __future__ import annotations

import asyncio
import signal
import threading


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class InterruptStops:
    """Routes SIGINT to one run's `stop` event from `arm()` until `disarm()`."""

    def __init__(self, stop: threading.Event):
        self.stop = stop
        self.active = False
        self.previous = signal.getsignal(signal.SIGINT)
        self.loop: asyncio.AbstractEventLoop | None = None

    def _handle(self, signum, frame) -> None:
        if self.active:
            self.stop.set()
        elif callable(self.previous):  # a late signal after the run: what it would have done
            self.previous(signum, frame)

    def _install(self) -> None:
        current = signal.getsignal(signal.SIGINT)
        if current != self._handle:
            self.previous = current
            signal.signal(signal.SIGINT, self._handle)

    def _restore(self) -> None:
        if signal.getsignal(signal.SIGINT) == self._handle:
            signal.signal(signal.SIGINT, self.previous)

    def arm(self) -> None:
        """From the main thread (a widget callback): SIGINT now sets `stop`."""
        self.active = True
        if not _main_thread():
            return
        self._install()
        try:
            self.loop = asyncio.get_running_loop()
        except RuntimeError:  # no kernel loop (tests, plain Python): installed once is enough
            self.loop = None
        if self.loop is not None:
            self.loop.call_soon(self._install)  # after ipykernel's post-message restore

    def disarm(self) -> None:
        """From any thread, when the run ends: SIGINT does what it did before."""
        self.active = False
        if _main_thread():
            self._restore()
        elif self.loop is not None:
            self.loop.call_soon_threadsafe(self._restore)


__all__ = ["InterruptStops"]
