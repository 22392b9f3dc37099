"""Fixtures for the client tests: a client whose every learnt secret is collected and checked against the logs."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tests.support import assert_no_secret
from xnat_provider.client import XnatClient
from xnat_provider.testing import XnatEmulator


@pytest.fixture
def secrets() -> list[str]:
    """Every secret the client learns (password, session ids, token secrets), through its ``on_secret`` hook."""
    return []


@pytest.fixture
def client(request: pytest.FixtureRequest, emulator: XnatEmulator, secrets: list[str],
           caplog: pytest.LogCaptureFixture) -> Iterator[XnatClient]:
    """A client logged in as the test module's ``USER``/``PASSWORD`` (a distinctive password) with a tiny
    backoff; afterwards no secret it learnt may appear in the captured logs."""
    user, password = request.module.USER, request.module.PASSWORD
    caplog.set_level(logging.DEBUG)
    emulator.add_user(user, password, admin=True)
    with XnatClient(emulator.url, user, password, backoff=0.01, on_secret=secrets.append) as c:
        yield c
        cookie = c.transport.session_id
    assert password in secrets
    assert cookie is None or cookie in secrets  # the JSESSIONID cookie is a known secret too
    assert_no_secret(caplog.text, secrets)
