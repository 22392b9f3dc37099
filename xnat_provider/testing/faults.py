"""Fault injection: the failures users of real XNAT servers report, on demand.

Each rule matches requests by method and a regular expression on the path (``re.search`` on the path as
sent, query string excluded) and applies to the next ``count`` matching requests:

- ``fail``: answer ``status`` with XNAT's error page, without doing anything;
- ``drop``: do the work, then close the connection after ``after_bytes`` bytes of the response body;
- ``delay``: sleep ``seconds`` before handling;
- ``error_200``: answer an HTML error page with status 200 (what proxies and some XNAT paths do);
- ``after_504``: do the work (an import or archive really happens), then answer 504 as a gateway would;
- ``cut_request``: the request body breaks off after ``after_bytes`` bytes, as when the sender dies or the link
  drops mid-upload: the handler sees what arrived (an import keeps the entries received whole), no answer is
  sent, the connection is closed.

Also here: request counts by method and path, for tests and benchmarks. Expiring sessions, holding a
prearchive session in a status and corrupting a stored file act on other parts of the emulator and are
methods of :class:`~xnat_provider.testing.XnatEmulator`; the control API at ``/__emulator__/`` exposes all
of them over HTTP for emulators running in another process.
"""

from __future__ import annotations

import re
import threading
from collections import Counter, deque
from dataclasses import asdict, dataclass, field

KINDS = ("fail", "drop", "delay", "error_200", "after_504", "cut_request")


@dataclass
class FaultRule:
    kind: str
    method: str = "*"
    path: str = ".*"
    count: int = 1
    status: int = 500
    after_bytes: int = 0
    seconds: float = 0.0
    message: str = "Injected fault"
    _regex: re.Pattern[str] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        if self.count < 1:
            raise ValueError("count must be at least 1")
        self._regex = re.compile(self.path)
        self.method = self.method.upper()

    def matches(self, method: str, path: str) -> bool:
        return (self.method in ("*", method)) and bool(self._regex and self._regex.search(path))

    def public(self) -> dict:
        d = asdict(self)
        d.pop("_regex", None)
        return d


class Faults:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rules: list[FaultRule] = []
        self.counts: Counter[tuple[str, str]] = Counter()
        # The latest requests (method, normalised path, User-Agent), for tests that check what a client sent.
        self.log: deque[tuple[str, str, str]] = deque(maxlen=100_000)

    def add(self, kind: str, method: str = "*", path: str = ".*", count: int = 1, **kw) -> FaultRule:
        rule = FaultRule(kind=kind, method=method, path=path, count=count, **kw)
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def take(self, method: str, path: str) -> list[FaultRule]:
        """The rules that apply to this request, each used up by one."""
        taken: list[FaultRule] = []
        with self._lock:
            for rule in list(self.rules):
                if rule.matches(method, path):
                    taken.append(rule)
                    rule.count -= 1
                    if rule.count <= 0:
                        self.rules.remove(rule)
        return taken

    def count(self, method: str, path: str, user_agent: str = "") -> None:
        with self._lock:
            self.counts[(method, path)] += 1
            self.log.append((method, path, user_agent))

    def request_counts(self, method: str | None = None, path: str | None = None) -> int:
        """How many requests matched (``path`` is a regular expression searched in the path)."""
        rx = re.compile(path) if path else None
        with self._lock:
            return sum(
                n for (m, p), n in self.counts.items()
                if (method is None or m == method.upper()) and (rx is None or rx.search(p))
            )

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "rules": [r.public() for r in self.rules],
                "counts": [{"method": m, "path": p, "count": n} for (m, p), n in sorted(self.counts.items())],
            }

    def reset_counts(self) -> None:
        with self._lock:
            self.counts.clear()
