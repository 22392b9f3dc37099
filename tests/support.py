"""Small helpers shared by test packages."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll until ``condition`` returns something truthy (and return it); fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def assert_no_secret(text: str, secrets: list[str] | tuple[str, ...]) -> None:
    """No secret (of three characters or more) appears in ``text``."""
    for s in secrets:
        assert len(s) < 3 or s not in text, f"a secret leaked ({s[:2]}...)"
