"""What the XNAT triggers share: an async client built from the Airflow connection, and error reporting.

Triggers only wait and report: they poll with the async client (never blocking the triggerer's event loop),
and turn every outcome, including errors, into a JSON-safe event that the deferring task acts on. The triggers of
one triggerer share their logins and their reads (:mod:`.shared_poll`); each judges what it reads on its own.

Errors are of two kinds. Transient ones (:class:`XnatServerError`: XNAT restarting, a gateway's 5xx) are ridden
out with the same login. Permanent ones (:data:`PERMANENT`: refused credentials, no permission, no such project,
a bad connection) end the wait at once: polling again would fail the same way, and a login XNAT refused, sent
again and again, locks the account (XNAT locks it after 20 failed logins, by default).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import asynccontextmanager
from typing import TypeVar

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException

from ..client import ClientConfig
from ..client.async_client import AsyncXnatClient
from ..client.errors import (
    XnatAuthError,
    XnatBadInputError,
    XnatError,
    XnatNotFoundError,
    XnatPermissionError,
    XnatServerError,
    error_kind,
)
from ..conditions import Outage
from ..hooks.xnat import client_config_from_connection, missing_connection
from .shared_poll import Fetch, Subscription, shared_client, subscription

log = logging.getLogger("xnat_provider.triggers")
T = TypeVar("T")

PERMANENT = (XnatAuthError, XnatPermissionError, XnatNotFoundError, XnatBadInputError)


async def connection_config(xnat_conn_id: str) -> ClientConfig:
    """The client settings of ``xnat_conn_id``, read now (a changed connection counts from the next read).
    A missing or unusable connection is an :class:`XnatBadInputError`."""
    try:
        conn = await BaseHook.aget_connection(xnat_conn_id)
    except AirflowNotFoundException as exc:
        raise missing_connection(xnat_conn_id, exc) from None
    return client_config_from_connection(conn)


@asynccontextmanager
async def async_client(xnat_conn_id: str) -> AsyncIterator[AsyncXnatClient]:
    """The client of the connection's shared login in this event loop (see :mod:`.shared_poll`): every trigger of
    a triggerer on one connection logs in once, and the last one to finish logs out."""
    async with shared_client(xnat_conn_id, await connection_config(xnat_conn_id)) as client:
        yield client


@asynccontextmanager
async def shared_read(xnat_conn_id: str, read: tuple[Hashable, Fetch], poll_interval: float
                      ) -> AsyncIterator[Subscription]:
    """A subscription to the read every trigger of this event loop on the same connection shares (a project's
    prearchive or experiments: :func:`~.shared_poll.prearchive_listing`), at ``poll_interval`` seconds or less."""
    what, fetch = read
    async with subscription(xnat_conn_id, await connection_config(xnat_conn_id), what, fetch, poll_interval) as sub:
        yield sub


def error_event(exc: BaseException) -> dict:
    """An error as a JSON-safe event: the error's client class name and its message (secrets already redacted
    by the client). The deferred task raises the same class from it (see ``XnatBaseSensor``)."""
    message = str(exc) if isinstance(exc, XnatError) else f"{type(exc).__name__}: {exc}"
    return {"status": "error", "error_type": error_kind(exc), "message": message}


def transient(exc: BaseException) -> bool:
    """Server trouble that a later poll may not see (XNAT restarting, a gateway hiccup)."""
    return isinstance(exc, XnatServerError)


async def poll(observe: Callable[[], Awaitable[T]], poll_interval: float, transient_error_timeout: float | None,
               what: str, failing_since: float | None = None) -> AsyncIterator[T]:
    """Yield ``observe()`` every ``poll_interval`` seconds, riding out transient server errors as
    :func:`ride_out` does. For a trigger whose reads are its own (a container); a trigger whose read others share
    waits on a :mod:`.shared_poll` subscription instead, which paces itself."""
    looked = False

    async def paced() -> T:
        nonlocal looked
        if looked:
            await asyncio.sleep(poll_interval)
        looked = True
        return await observe()

    async for value in ride_out(paced, transient_error_timeout, what, failing_since):
        yield value


async def ride_out(observe: Callable[[], Awaitable[T]], transient_error_timeout: float | None, what: str,
                   failing_since: float | None = None) -> AsyncIterator[T]:
    """Yield ``observe()`` again and again (``observe`` waits for its own next round), riding out transient server
    errors for up to ``transient_error_timeout`` seconds in a row (None: no limit), counted from ``failing_since``
    (a wall-clock time: an outage the task saw before it deferred) or from the first failure; a longer outage is
    raised as :class:`XnatServerError`, any other error at once."""
    outage = Outage(transient_error_timeout, failing_since)
    while True:
        try:
            value = await observe()
        except XnatServerError as exc:
            outage.failed(exc, f"polling the {what}")
            log.warning("XNAT %s poll failed (%s); polling again", what, exc)
        else:
            outage.answered()
            yield value
