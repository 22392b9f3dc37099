"""What the XNAT triggers share: an async client built from the Airflow connection, and error reporting.

Triggers only wait and report: they poll with the async client (never blocking the triggerer's event loop),
and turn every outcome, including errors, into a JSON-safe event that the deferring task acts on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from airflow.sdk import BaseHook

from ..client.async_client import AsyncXnatClient
from ..client.errors import XnatError, XnatServerError
from ..hooks.xnat import client_config_from_connection

log = logging.getLogger("xnat_provider.triggers")
T = TypeVar("T")


@asynccontextmanager
async def async_client(xnat_conn_id: str) -> AsyncIterator[AsyncXnatClient]:
    conn = await BaseHook.aget_connection(xnat_conn_id)
    async with AsyncXnatClient(client_config_from_connection(conn)) as client:
        yield client


def error_event(exc: BaseException) -> dict:
    kind = type(exc).__name__ if isinstance(exc, XnatError) else "XnatError"
    return {"status": "error", "error_type": kind, "message": str(exc)}


def transient(exc: BaseException) -> bool:
    """Server trouble that a later poll may not see (XNAT restarting, a gateway hiccup)."""
    return isinstance(exc, XnatServerError)


async def poll(observe: Callable[[], Awaitable[T]], poll_interval: float, transient_error_timeout: float,
               what: str) -> AsyncIterator[T]:
    """Yield ``observe()`` every ``poll_interval`` seconds, riding out transient server errors for up to
    ``transient_error_timeout`` seconds in a row; any other error, or a longer outage, is raised."""
    failing_since: float | None = None
    while True:
        try:
            value = await observe()
        except Exception as exc:
            if not transient(exc):
                raise
            failing_since = failing_since or time.monotonic()
            if time.monotonic() - failing_since > transient_error_timeout:
                raise
            log.warning("XNAT %s poll failed (%s); polling again", what, exc)
        else:
            failing_since = None
            yield value
        await asyncio.sleep(poll_interval)
