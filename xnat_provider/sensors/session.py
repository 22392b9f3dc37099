"""``XnatSessionSensor``: wait for a session to be archived, optionally with scans, a resource or a field."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from airflow.sdk import PokeReturnValue

from ..client.errors import XnatServerError
from ..conditions import DONE, SessionCriteria, observe_session
from ..triggers.session import XnatSessionTrigger
from .base import FATAL, XnatBaseSensor


class XnatSessionSensor(XnatBaseSensor):
    """Wait until an archived session exists in ``project`` (by ``session`` label, or the latest session of
    ``subject``) and, if asked, has at least ``min_scans`` scans, a ``resource`` (at session or scan level)
    and the custom field ``field_name`` equal to ``field_value``. Returns the experiment (id, label, project,
    subject, xsi type, date, uri).
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

    def poke(self, context: Any) -> PokeReturnValue | bool:
        try:
            verdict = asyncio.run(observe_session(self.hook.get_conn(), self.criteria()))
        except FATAL as exc:
            self.fail(f"Cannot look for the session in {self.project}: {exc}", exc)
        except XnatServerError as exc:
            self.log.warning("XNAT did not answer (%s); trying again next poke", exc)
            return False
        self.log.info("%s", verdict.message)
        return PokeReturnValue(is_done=True, xcom_value=verdict.sessions[0]) if verdict.action == DONE else False

    def make_trigger(self, context: Any) -> XnatSessionTrigger:
        return XnatSessionTrigger(criteria=self.criteria().to_dict(), xnat_conn_id=self.xnat_conn_id,
                                  poll_interval=self.poke_interval)

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> dict[str, Any]:
        event = event or {"status": "error", "message": "the trigger sent no event"}
        if event["status"] == "success":
            return event["session"]
        self.event_error(event)
        return {}  # pragma: no cover - event_error raises
