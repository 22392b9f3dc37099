"""Small helpers shared by test packages."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import requests


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, *, backoff: float = 1.0,
             what: str = "condition") -> Any:
    """Poll until ``condition`` returns something truthy (and return it); fail naming ``what`` after ``timeout``
    seconds. The interval grows by ``backoff`` after each look, up to 5 s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        time.sleep(interval)
        interval = min(interval * backoff, max(interval, 5.0))


def assert_no_secret(text: str, secrets: list[str] | tuple[str, ...]) -> None:
    """No secret (of three characters or more) appears in ``text``."""
    for s in secrets:
        assert len(s) < 3 or s not in text, f"a secret leaked ({s[:2]}...)"


def listing(http: requests.Session, url: str) -> list[dict[str, str]]:
    """The rows of an XNAT JSON listing, read over plain HTTP (not through the code under test)."""
    resp = http.get(url, params={"format": "json"})
    resp.raise_for_status()
    return resp.json()["ResultSet"]["Result"]


def prearchive_rows(http: requests.Session, emulator: Any, project: str = "P1") -> list[dict[str, str]]:
    return listing(http, f"{emulator.url}/data/prearchive/projects/{project}")


def experiment_url(http: requests.Session, url: str, project: str, label: str) -> str:
    """``{url}/data/experiments/{ID}`` of a project's experiment: XNAT routes an experiment's scans and files only
    there (or under its subject), never under ``/data/projects/P/experiments/E``."""
    resp = http.get(f"{url}/data/projects/{project}/experiments/{label}", params={"format": "json"})
    resp.raise_for_status()
    return f"{url}/data/experiments/{resp.json()['items'][0]['data_fields']['ID']}"
