"""What the XNAT triggers share: an async client built from the Airflow connection, and error reporting.

Triggers only wait and report: they poll with the async client (never blocking the triggerer's event loop),
and turn every outcome, including errors, into a JSON-safe event that the deferring task acts on.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from airflow.sdk import BaseHook

from ..client.async_client import AsyncXnatClient
from ..client.errors import XnatError, XnatServerError
from ..hooks.xnat import client_config_from_connection

log = logging.getLogger("xnat_provider.triggers")


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
