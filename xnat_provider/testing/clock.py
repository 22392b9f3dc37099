"""The emulator's clock: what "now" is for sessions, tokens and the prearchive's timed steps.

Real time by default. A test that is about time (a session's idle timeout, a token's lifetime, a RECEIVING
session that must not be built) passes a :class:`ManualClock` and moves it forward by hand instead of sleeping,
so that it holds exactly on a busy machine and takes no time: ``XnatEmulator(clock=clock)``, then
``clock.advance(seconds)``. The emulator looks at the clock before serving each request and on its background
tick, so whatever became due is done by the next request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

Clock = Callable[[], float]  # seconds since the epoch, as time.time()


class ManualClock:
    """A clock that stands still until :meth:`advance` moves it; starts at the real time (or ``start``)."""

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go back")
        with self._lock:
            self._now += seconds
