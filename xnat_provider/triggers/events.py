"""``XnatPrearchiveEventTrigger``: start DAGs when new READY prearchive sessions appear in a project's prearchive.

Use it as an Asset watcher; each new READY prearchive session becomes an asset event whose ``extra`` carries it,
``{"payload": {"status": "success", "prearchive_session": {...}, "session": {...}, "uri": ...}}`` (the same row
under ``session`` too, the key earlier versions wrote and DAGs may read)::

    new_sessions = Asset("xnat_P1_prearchive", watchers=[AssetWatcher(
        name="xnat_P1_ready", trigger=XnatPrearchiveEventTrigger(project="P1"))])

    @dag(schedule=[new_sessions])
    def on_new_session(): ...

Each prearchive session fires once: the ones already announced are kept in the asset state store, which survives
triggerer restarts (delivery around a restart is at least once, as for every Airflow event trigger, so the
DAG it starts should be safe to run twice for one prearchive session; the example DAGs are). Several Assets may use
watchers with the same arguments: Airflow then runs one trigger for all of them, whose events reach every one
of those Assets, and the announced prearchive sessions are kept in each Asset's store.

The watcher runs unattended for months, so it must never lock the service account. Transient failures (XNAT
restarting, a gateway's 5xx) are ridden out with the same login. Permanent ones (refused credentials, no
permission, no such project, a connection that is missing or misconfigured) stop the polling: the error is
logged loudly once (then once an hour while it lasts) and the watcher looks again every
``permanent_error_interval`` seconds (10 minutes by default). Credentials XNAT refused are never sent again:
each look re-reads the connection and logs in only once its URL, login or password changed (compared by a
salted hash kept in memory; the password is never kept in the trigger's state). A triggerer restart forgets the
refusal, so it costs at most one more failed login.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from ..client import ClientConfig
from ..client.errors import XnatAuthError, XnatError
from ..conditions import PrearchiveCriteria, PrearchiveWatch
from .base import PERMANENT, connection_config, log
from .shared_poll import Subscription, prearchive_listing, subscription

SEEN_KEY = "announced"
PERMANENT_ERROR_INTERVAL = 600.0
REMIND_EVERY = 3600.0  # how often a permanent error that lasts is logged again


def asset_stores(store: Any) -> list[Any]:
    """The per-asset state stores behind the store the triggerer injected (none when it injected none).

    The triggerer gives an event trigger an ``AssetStateStoreAccessors`` over every Asset the trigger watches.
    Its unsubscripted ``aget``/``aset`` work only when it watches exactly one Asset (with two they raise
    ``ValueError``), and a trigger is not told which Assets it watches, so the per-asset accessors are read from
    the mapping's per-name and per-URI tables (Airflow 3.3 has no public way to list them). Any other store
    object (one asset's accessor, a test double) is used as it is.
    """
    if store is None:
        return []
    by_name, by_uri = getattr(store, "_by_name", None), getattr(store, "_by_uri", None)
    if isinstance(by_name, dict) and isinstance(by_uri, dict) and (by_name or by_uri):
        return [*by_name.values(), *by_uri.values()]
    return [store]


class ProblemLog:
    """Logs a permanent problem loudly the first time, then once every ``REMIND_EVERY`` seconds while it lasts,
    and once more when it is over."""

    def __init__(self) -> None:
        self.problem: str | None = None
        self.since = self.last = 0.0

    def report(self, problem: str, message: str) -> None:
        now = time.monotonic()
        if problem != self.problem:
            self.problem, self.since, self.last = problem, now, now
            log.error("%s", message)
        elif now - self.last >= REMIND_EVERY:
            self.last = now
            log.error("Still failing after %.0f s: %s", now - self.since, message)
        else:
            log.debug("%s", message)

    def resolved(self, what: str) -> None:
        if self.problem is not None:
            log.warning("%s works again after %.0f s", what, time.monotonic() - self.since)
            self.problem = None


class XnatPrearchiveEventTrigger(BaseEventTrigger):
    """Yield one event per new prearchive session in ``project`` that is READY (and quiet for
    ``quiet_period`` seconds). Transient XNAT failures are retried quietly with the same login; permanent ones
    are logged (an event would start a DAG run) and looked at again every ``permanent_error_interval`` seconds,
    without ever resending credentials XNAT refused (see the module docstring).

    :param project: the XNAT project whose prearchive is watched.
    :param xnat_conn_id: the Airflow connection of type ``xnat``.
    :param poll_interval: seconds between looks at the prearchive.
    :param quiet_period: seconds a READY prearchive session must stay unchanged before it is announced.
    :param permanent_error_interval: seconds between looks while a permanent error lasts (default 600).
    """

    def __init__(self, project: str, xnat_conn_id: str = "xnat_default", poll_interval: float = 30.0,
                 quiet_period: float = 0.0, permanent_error_interval: float = PERMANENT_ERROR_INTERVAL):
        super().__init__()
        self.project = project
        self.xnat_conn_id = xnat_conn_id
        self.poll_interval = poll_interval
        self.quiet_period = quiet_period
        self.permanent_error_interval = permanent_error_interval
        self._memory: list[str] | None = None  # the announced prearchive sessions, once read from the store(s)
        self._salt = os.urandom(16)
        self._refused: str | None = None  # fingerprint of the credentials XNAT refused
        self._refusal = ""  # what was logged about it

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("xnat_provider.triggers.events.XnatPrearchiveEventTrigger", {
            "project": self.project, "xnat_conn_id": self.xnat_conn_id, "poll_interval": self.poll_interval,
            "quiet_period": self.quiet_period, "permanent_error_interval": self.permanent_error_interval})

    # ---- the announced prearchive sessions, in the asset state store(s) -----------------------------
    async def _seen(self) -> list[str]:
        if self._memory is None:
            seen: list[str] = []
            for store in asset_stores(self.asset_state_store):
                seen += [u for u in (await store.aget(SEEN_KEY, []) or []) if u not in seen]
            self._memory = seen
        return list(self._memory)

    async def _remember(self, seen: list[str]) -> None:
        self._memory = list(seen)  # first: a store that fails to write must not make one fire twice
        for store in asset_stores(self.asset_state_store):
            await store.aset(SEEN_KEY, seen)

    # ---- credentials -------------------------------------------------------------------------------
    def _fingerprint(self, config: ClientConfig) -> str:
        """A salted hash of where and as whom the watcher logs in; the password itself is never kept."""
        who = json.dumps([config.url, config.user or "", config.password or ""])
        return hashlib.sha256(self._salt + who.encode()).hexdigest()

    def _explain(self, exc: BaseException, config: ClientConfig | None) -> str:
        head = f"XNAT prearchive watcher for project {self.project} (connection {self.xnat_conn_id!r})"
        again = f"it looks again every {self.permanent_error_interval:g} s"
        if isinstance(exc, XnatAuthError):
            who = f" as {config.user!r}" if config and config.user else ""
            return (f"{head}: XNAT refused the login{who}: {str(exc).rstrip('.')}. The watcher has stopped "
                    "logging in, so that it cannot lock the account (XNAT locks an account after repeated failed "
                    f"logins); it re-reads the connection every {self.permanent_error_interval:g} s and logs in "
                    "again only once its URL, login or password changed. Fix the connection (or the XNAT account; "
                    "then restart the triggerer to try the same credentials again).")
        if config is None:
            return f"{head}: the connection cannot be used: {str(exc).rstrip('.')}; {again}."
        return f"{head} cannot poll ({type(exc).__name__}: {exc}); a retry will not fix this by itself; {again}."

    # ---- polling -----------------------------------------------------------------------------------
    async def run(self) -> AsyncIterator[TriggerEvent]:
        watch = PrearchiveWatch(PrearchiveCriteria(project=self.project, quiet_period=self.quiet_period,
                                                   skip_failed=True))
        problems = ProblemLog()
        while True:
            config: ClientConfig | None = None
            try:
                config = await connection_config(self.xnat_conn_id)
                fingerprint = self._fingerprint(config)
                if fingerprint == self._refused:
                    problems.report(f"refused {fingerprint}", self._refusal)  # not sent again
                else:
                    what, fetch = prearchive_listing(self.project)
                    async with subscription(self.xnat_conn_id, config, what, fetch, self.poll_interval) as listing:
                        async for event in self._watch(listing, watch, problems):
                            yield event
            except PERMANENT as exc:
                if isinstance(exc, XnatAuthError) and config is not None:
                    self._refused, self._refusal = self._fingerprint(config), self._explain(exc, config)
                    problems.report(f"refused {self._refused}", self._refusal)
                else:
                    problems.report(f"{type(exc).__name__}: {exc}", self._explain(exc, config))
            except Exception as exc:  # unexpected: logged, never turned into an event (it would start a DAG)
                problems.report(f"{type(exc).__name__}: {exc}", self._explain(exc, config))
            await asyncio.sleep(self.permanent_error_interval)

    async def _watch(self, listing: Subscription, watch: PrearchiveWatch,
                     problems: ProblemLog) -> AsyncIterator[TriggerEvent]:
        """Judge each round of the project's shared prearchive listing (the triggerer's other triggers on this
        connection and project read the same round: :mod:`.shared_poll`) until a permanent error (raised).
        Transient XNAT errors, and errors reading or writing the asset state store, are logged and polled
        through."""
        while True:
            try:
                sessions = await listing.next()
            except PERMANENT:
                raise
            except XnatError as exc:
                log.warning("XNAT prearchive poll for %s failed (%s); polling again", self.project, exc)
                continue
            problems.resolved(f"XNAT prearchive watcher for project {self.project}")
            try:
                watch.track(sessions)
                seen = await self._seen()
                now = time.time()
                present = {s.uri for s in sessions}
                fresh = [s for s in sessions if s.status == "READY" and s.uri not in seen
                         and now - watch.state["seen"].get(s.uri, [None, now])[1] >= self.quiet_period]
                for s in fresh:
                    row = s.to_dict()
                    yield TriggerEvent({"status": "success", "prearchive_session": row, "session": row,
                                        "uri": s.uri})
                    seen.append(s.uri)
                    await self._remember([u for u in seen if u in present])
                if not fresh and len(seen) != len([u for u in seen if u in present]):
                    await self._remember([u for u in seen if u in present])  # forget archived ones
            except Exception as exc:
                log.error("XNAT prearchive watcher for %s could not use the asset state store (%s: %s); "
                          "polling again", self.project, type(exc).__name__, exc)
