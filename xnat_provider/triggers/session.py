"""``XnatSessionTrigger``: the deferred half of :class:`~xnat_provider.sensors.session.XnatSessionSensor`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from ..conditions import DONE, SessionCriteria, observe_session
from .base import async_client, error_event, log, poll


class XnatSessionTrigger(BaseTrigger):
    """Poll the archive until a session exists and meets the criteria, then report ``success`` or ``error``.

    Errors are reported as :class:`~xnat_provider.triggers.prearchive.XnatPrearchiveTrigger` reports them: at
    once when permanent (no second login with refused credentials), after ``transient_error_timeout`` seconds of
    outage (counted from ``failing_since`` when the task saw it begin) when transient.
    """

    def __init__(self, criteria: dict[str, Any], xnat_conn_id: str = "xnat_default", poll_interval: float = 30.0,
                 transient_error_timeout: float | None = 600.0, failing_since: float | None = None):
        super().__init__()
        self.criteria = criteria
        self.xnat_conn_id = xnat_conn_id
        self.poll_interval = poll_interval
        self.transient_error_timeout = transient_error_timeout
        self.failing_since = failing_since

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("xnat_provider.triggers.session.XnatSessionTrigger", {
            "criteria": self.criteria, "xnat_conn_id": self.xnat_conn_id, "poll_interval": self.poll_interval,
            "transient_error_timeout": self.transient_error_timeout, "failing_since": self.failing_since})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            criteria = SessionCriteria(**self.criteria)
            async with async_client(self.xnat_conn_id) as xnat:
                async for verdict in poll(lambda: observe_session(xnat, criteria), self.poll_interval,
                                          self.transient_error_timeout, "session", self.failing_since):
                    if verdict.action == DONE:
                        yield TriggerEvent({"status": "success", "message": verdict.message,
                                            "session": verdict.sessions[0]})
                        return
                    log.info("%s", verdict.message)
        except Exception as exc:
            yield TriggerEvent(error_event(exc))
