"""``XnatPrearchiveEventTrigger``: start DAGs when new READY sessions appear in a project's prearchive.

Use it as an Asset watcher; each new session becomes an asset event whose ``extra`` carries the session::

    new_sessions = Asset("xnat_P1_prearchive", watchers=[AssetWatcher(
        name="xnat_P1_ready", trigger=XnatPrearchiveEventTrigger(project="P1"))])

    @dag(schedule=[new_sessions])
    def on_new_session(): ...

Each session fires once: the sessions already announced are kept in the asset state store, which survives
triggerer restarts (delivery around a restart is at least once, as for every Airflow event trigger, so the
DAG it starts should be safe to run twice for one session; the example DAGs are).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from ..conditions import PrearchiveCriteria, PrearchiveWatch
from .base import async_client, log, transient

SEEN_KEY = "announced"


class XnatPrearchiveEventTrigger(BaseEventTrigger):
    """Yield one event per new prearchive session in ``project`` that is READY (and quiet for
    ``quiet_period`` seconds). Transient XNAT failures are retried quietly; others are logged (an event
    would start a DAG run) and polling goes on.
    """

    def __init__(self, project: str, xnat_conn_id: str = "xnat_default", poll_interval: float = 30.0,
                 quiet_period: float = 0.0):
        super().__init__()
        self.project = project
        self.xnat_conn_id = xnat_conn_id
        self.poll_interval = poll_interval
        self.quiet_period = quiet_period
        self._memory: list[str] = []  # used when no asset state store is injected (tests, dag.test)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("xnat_provider.triggers.events.XnatPrearchiveEventTrigger", {
            "project": self.project, "xnat_conn_id": self.xnat_conn_id, "poll_interval": self.poll_interval,
            "quiet_period": self.quiet_period})

    async def _seen(self) -> list[str]:
        store = self.asset_state_store
        if store is None:
            return list(self._memory)
        return list(await store.aget(SEEN_KEY, []) or [])

    async def _remember(self, seen: list[str]) -> None:
        self._memory = list(seen)
        if self.asset_state_store is not None:
            await self.asset_state_store.aset(SEEN_KEY, seen)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        watch = PrearchiveWatch(PrearchiveCriteria(project=self.project, quiet_period=self.quiet_period,
                                                   skip_failed=True))
        while True:
            try:
                async with async_client(self.xnat_conn_id) as xnat:
                    while True:
                        sessions = await xnat.list_prearchive(self.project)
                        watch.track(sessions)
                        seen = await self._seen()
                        now = time.time()
                        present = {s.uri for s in sessions}
                        fresh = [s for s in sessions if s.status == "READY" and s.uri not in seen
                                 and now - watch.state["seen"].get(s.uri, [None, now])[1] >= self.quiet_period]
                        for s in fresh:
                            yield TriggerEvent({"status": "success", "session": s.to_dict(), "uri": s.uri})
                            seen.append(s.uri)
                            await self._remember([u for u in seen if u in present])
                        if not fresh and len(seen) != len([u for u in seen if u in present]):
                            await self._remember([u for u in seen if u in present])  # forget archived ones
                        await asyncio.sleep(self.poll_interval)
            except Exception as exc:
                # An event trigger's events start DAG runs, so errors are logged, never yielded.
                if transient(exc):
                    log.warning("XNAT prearchive poll failed (%s); polling again", exc)
                else:
                    log.error("XNAT prearchive watcher for %s cannot poll: %s", self.project, exc)
                await asyncio.sleep(self.poll_interval)
