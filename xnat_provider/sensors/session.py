"""``XnatSessionSensor``: wait for a session to be archived, optionally with scans, a resource or a field."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from airflow.sdk import PokeReturnValue

from ..client.errors import XnatError, XnatServerError
from ..conditions import DONE, SessionCriteria, observe_session
from ..links import push_link, session_url, subject_url
from ..triggers.session import XnatSessionTrigger
from .base import XnatBaseSensor


class XnatSessionSensor(XnatBaseSensor):
    """Wait until an archived session exists in ``project`` (by ``session`` label, or the latest session of
    ``subject``) and, if asked, has at least ``min_scans`` scans, a ``resource`` (at session or scan level)
    and the custom field ``field_name`` equal to ``field_value``. Returns the experiment (id, label, project,
    subject, xsi type, date, uri).
    Errors follow the contract of :class:`~xnat_provider.sensors.base.XnatBaseSensor`, the same in every mode.
    The "XNAT session" button opens the session (or the subject, until its latest session is found).
    """

    template_fields: Sequence[str] = ("project", "session", "subject", "resource", "field_name", "field_value",
                                      "xnat_conn_id")

    def __init__(self, *, project: str, session: str | None = None, subject: str | None = None,
                 min_scans: int = 0, resource: str | None = None, field_name: str | None = None,
                 field_value: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.project, self.session, self.subject = project, session, subject
        self.min_scans, self.resource = min_scans, resource
        self.field_name, self.field_value = field_name, field_value
        self.criteria()

    def criteria(self) -> SessionCriteria:
        return SessionCriteria(project=self.project, session=self.session, subject=self.subject,
                               min_scans=self.min_scans, resource=self.resource, field_name=self.field_name,
                               field_value=None if self.field_value is None else str(self.field_value))

    def describe(self) -> str:
        return f"Cannot look for the session in {self.project}"

    def link(self) -> str | None:
        base = self.hook.client_config.url
        return session_url(base, self.project, self.session) if self.session else subject_url(
            base, self.project, str(self.subject))

    def _found(self, context: Any, experiment: dict[str, Any]) -> dict[str, Any]:
        if not self.session:  # the subject's latest session: now the button can open it
            push_link(context, session_url(self.hook.client_config.url, self.project, experiment["label"]))
        return experiment

    def poke(self, context: Any) -> PokeReturnValue | bool:
        try:
            verdict = asyncio.run(observe_session(self.hook.get_conn(), self.criteria()))
        except XnatServerError as exc:
            self.ride_out(context, exc, "polling the session")
            return False
        except XnatError as exc:
            self.xnat_error(exc)
        self.answered(context)
        self.log.info("%s", verdict.message)
        if verdict.action != DONE:
            return False
        return PokeReturnValue(is_done=True, xcom_value=self._found(context, verdict.sessions[0]))

    def make_trigger(self, context: Any) -> XnatSessionTrigger:
        return XnatSessionTrigger(criteria=self.criteria().to_dict(), xnat_conn_id=self.xnat_conn_id,
                                  poll_interval=self.poke_interval, transient_error_timeout=self.outage_tolerance,
                                  failing_since=self.outage(context).since)

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> dict[str, Any]:
        event = event or {"status": "error", "message": "the trigger sent no event"}
        if event["status"] == "success":
            return self._found(context, event["session"])
        self.event_error(event)
