"""The closer reads of one round of a shared poll, sent once for all the triggers that make them.

Why: once a project's shared experiment listing shows the experiment an
:class:`~xnat_provider.triggers.experiment.XnatExperimentTrigger` waits for, the trigger looks closer
(:func:`~xnat_provider.conditions.observe_experiment`: the experiment's document, its subject's, its scans, their
resources, its fields) every round. K triggers waiting for one imaging session (a scan pipeline, a QC DAG and a
container launch on the same session) made K times the same requests every round.

:class:`RoundReads` is the client those looks use instead of the login's own: it offers the same polling calls
(:class:`~xnat_provider.client.async_client.AsyncReads`, the same lookups), but answers each distinct
``GET path?query`` once for the round that made it. The first caller's request is a task of its own; a concurrent
caller awaits that task, and a later one in the same round gets its answer. Each caller parses the body itself, so
no two triggers hold the same objects, and each judges with its own criteria: triggers with different criteria on
one experiment share the reads they have in common (the experiment's document serves both ``find_experiment`` and
its fields). An error (a 503, a timeout) is shared the same way: one failed request for the round, raised to every
caller (each its own copy), and each trigger's outage clock counts it. Nothing outlives the round: the next round
has a new :class:`RoundReads` and reads again, answers and errors alike. A request whose every caller was
cancelled is cancelled too, and forgotten, so the round's next caller sends it again.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
from collections.abc import Coroutine
from typing import Any, TypeVar

from ..client.async_client import AsyncReads, AsyncXnatClient

ReadKey = tuple[str, tuple[tuple[str, str], ...]]
T = TypeVar("T")


class _Pending:
    """One request of the round and how many callers await it."""

    def __init__(self, task: asyncio.Task[bytes]):
        self.task = task
        self.callers = 0


class RoundReads(AsyncReads):
    """The polling calls of the shared login's ``client``, each distinct read sent at most once (per success or
    failure) while this object lives: one round of a shared poll. Read only, like the lookups it runs."""

    def __init__(self, client: AsyncXnatClient):
        self.client = client
        self._reads: dict[ReadKey, _Pending] = {}

    @property
    def sent(self) -> int:
        """How many distinct reads this round has sent (or is sending)."""
        return len(self._reads)

    async def _get(self, path: str, params: dict[str, str]) -> bytes:
        key: ReadKey = (path, tuple(sorted(params.items())))
        pending = self._reads.get(key)
        if pending is None or pending.task.cancelled():  # (cancelled: only as its loop closes)
            task = detached_task(self._send(path, params), f"xnat-read-{path}")
            task.add_done_callback(_retrieved)
            pending = self._reads[key] = _Pending(task)
        pending.callers += 1
        try:
            await asyncio.wait([pending.task])  # a cancelled caller leaves the request to the others
        except asyncio.CancelledError:
            pending.callers -= 1
            if pending.callers == 0 and not pending.task.done():
                pending.task.cancel()  # nobody waits for it any more: not sent on behalf of no one
                if self._reads.get(key) is pending:
                    del self._reads[key]
            raise
        pending.callers -= 1
        return answer(pending.task)

    async def _send(self, path: str, params: dict[str, str]) -> bytes:
        return (await self.client.request("GET", path, params)).content


def _retrieved(task: asyncio.Task[bytes]) -> None:
    """Mark a failed read's error as seen even if its last caller was cancelled just as it ended (asyncio would
    log "Task exception was never retrieved")."""
    if not task.cancelled():
        task.exception()


def answer(task: asyncio.Task[bytes]) -> bytes:
    """The body a finished read got, or its error raised as a copy of its own for this caller."""
    error = task.exception()  # CancelledError if the read was cancelled (the loop is closing)
    if error is None:
        return task.result()
    raise own_copy(error)


def own_copy(error: BaseException) -> BaseException:
    """``error`` copied for one more waiter, with its cause and context (a traceback grows with every raise: one
    exception raised in K triggers would carry all their frames); ``error`` itself if it cannot be copied."""
    try:
        own = copy.copy(error)
    except Exception:  # pragma: no cover - the client raises its own typed errors, all copyable
        return error
    own.__cause__, own.__context__ = error.__cause__, error.__context__
    return own


def detached_task(coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
    """A task for work shared by several triggers (a poll, a read, a logout), in a fresh context: Airflow binds each
    trigger's ids to its context for logging, and a shared task created by one trigger would otherwise log under
    that trigger's task log, even after it ended."""
    return asyncio.get_running_loop().create_task(coro, name=name, context=contextvars.Context())
