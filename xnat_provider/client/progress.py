"""Progress of long transfers, logged through the client's logger (so that Airflow's task log shows it).

One :class:`Progress` per call (a download of many files, an upload, one big file): a line when both the
interval (``ClientConfig.progress_interval``, 10 s by default) has passed and another tenth of the total has moved
since the last line, whichever comes later, and one summary line at the end of a call of several files, or of one
file that took that long. So a transfer logs at most about ten lines plus its summary, never one per file: a
1000-file download that ends within the interval logs its summary alone. A line says bytes and files done of the
totals, the rate and the time left::

    Download: 3.2 GB of 10.7 GB (30 %), 412 of 1000 files, 212 MB/s, about 35 s left

Thread-safe: the workers of one call share its Progress. Counting is a lock and a clock read per buffer (256 KiB)
or per small file, nothing per byte.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("xnat_provider.client")
STEP = 0.10  # at most one line per tenth of the total


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def human_seconds(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


class Progress:
    """Bytes and files of one transfer call; logs as described in the module docstring.

    ``total_bytes``/``total_files`` may be None (unknown: no percentage or time left, lines by interval only).
    ``interval`` is the least time between two lines (``math.inf``: only the summary of a long call);
    ``clock`` is injectable for tests."""

    def __init__(self, what: str, total_bytes: int | None, total_files: int | None, interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic, logger: logging.Logger = log):
        self.what = what
        self.total_bytes = total_bytes
        self.total_files = total_files
        self.interval = interval
        self.clock = clock
        self.log = logger
        self._lock = threading.Lock()
        self.done_bytes = 0  # toward the total (undone when a file starts again)
        self.moved_bytes = 0  # over the wire, for the rate
        self.done_files = 0
        self.lines = 0
        self.started = clock()
        self._last_time = self.started
        self._last_bytes = 0
        self._last_files = 0
        self._finished = False

    # ---- counting ----------------------------------------------------------------------------------
    def add(self, n: int) -> None:
        """``n`` more bytes moved (received, or sent)."""
        with self._lock:
            self.done_bytes += n
            self.moved_bytes += n
            self._maybe_log()

    def credit(self, n: int) -> None:
        """``n`` bytes more (or, negative, fewer) done without moving now: a part left by an earlier run that is
        resumed, or bytes counted before that must move again (a file that starts over)."""
        if n:
            with self._lock:
                self.done_bytes += n

    def file_done(self, skipped_bytes: int = 0) -> None:
        """One more file done; ``skipped_bytes`` of a file that was already there (counted as done, not moved)."""
        with self._lock:
            self.done_files += 1
            self.done_bytes += skipped_bytes
            self._maybe_log()

    # ---- logging -----------------------------------------------------------------------------------
    def _due(self, now: float) -> bool:
        if now - self._last_time < self.interval:
            return False
        if self.total_bytes:
            return self.done_bytes - self._last_bytes >= STEP * self.total_bytes
        if self.total_files:
            return self.done_files - self._last_files >= max(1, STEP * self.total_files)
        return True

    def _maybe_log(self) -> None:
        if self._finished:
            return
        now = self.clock()
        if self._due(now):
            self._last_time, self._last_bytes, self._last_files = now, self.done_bytes, self.done_files
            self._emit(now, final=False)

    def _emit(self, now: float, final: bool) -> None:
        elapsed = max(now - self.started, 1e-9)
        rate = self.moved_bytes / elapsed
        parts = [human_bytes(self.done_bytes)]
        if self.total_bytes:
            parts[0] += f" of {human_bytes(self.total_bytes)} ({min(100, 100 * self.done_bytes // self.total_bytes)} %)"
        if self.total_files is not None and (self.total_files > 1 or self.done_files > 1):
            parts.append(f"{self.done_files} of {self.total_files} files")
        parts.append(f"{human_bytes(rate)}/s")
        if final:
            parts.append(f"in {human_seconds(elapsed)}")
        elif self.total_bytes and rate > 0:
            parts.append(f"about {human_seconds(max(0, self.total_bytes - self.done_bytes) / rate)} left")
        self.lines += 1
        self.log.info("%s%s: %s", self.what, " done" if final else "", ", ".join(parts))

    def finish(self) -> None:
        """The summary line (once): for a call of several files, or one that logged progress or ran at least the
        interval; a single quick file logs nothing (a caller's loop over files must not log a line per file)."""
        with self._lock:
            if self._finished:
                return
            self._finished = True
            now = self.clock()
            if self.lines or now - self.started >= self.interval or (self.total_files or 0) > 1:
                self._emit(now, final=True)


class NoProgress(Progress):
    """Counts nothing and logs nothing: the default where a caller passes no Progress."""

    def __init__(self) -> None:
        super().__init__("", None, None, interval=float("inf"))

    def add(self, n: int) -> None:
        pass

    def credit(self, n: int) -> None:
        pass

    def file_done(self, skipped_bytes: int = 0) -> None:
        pass

    def finish(self) -> None:
        pass


NO_PROGRESS = NoProgress()
