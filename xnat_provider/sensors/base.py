"""The shape every XNAT sensor shares: poke, reschedule or deferrable, with one verdict logic for all three.

Following Airflow's ``FileSensor``: ``execute`` pokes once (cheap, and often already true); if not done and
deferrable, it defers to the trigger and frees the worker slot; ``execute_complete`` turns the trigger's event
into the sensor's result or its error. A sensor failure that waiting cannot fix (a CONFLICT session, a stall, a
missing project) is an ``AirflowFailException``: no retries, and ``soft_fail`` skips instead.
"""

from __future__ import annotations

import datetime
from functools import cached_property
from typing import Any

from airflow.sdk import BaseSensorOperator, conf
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from ..client.errors import XnatAuthError, XnatBadInputError, XnatNotFoundError, XnatPermissionError
from ..hooks.xnat import XnatHook

FATAL = (XnatAuthError, XnatPermissionError, XnatNotFoundError, XnatBadInputError)


class XnatBaseSensor(BaseSensorOperator):
    """Common arguments: ``xnat_conn_id`` and ``deferrable`` (default ``[operators] default_deferrable``)."""

    ui_color = "#dbe8f5"

    def __init__(self, *, xnat_conn_id: str = XnatHook.default_conn_name,
                 deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.xnat_conn_id = xnat_conn_id
        self.deferrable = deferrable

    @cached_property
    def hook(self) -> XnatHook:
        return XnatHook(self.xnat_conn_id)

    def make_trigger(self, context: Any) -> Any:  # pragma: no cover - each sensor defines its trigger
        raise NotImplementedError

    def execute(self, context: Any) -> Any:
        if not self.deferrable:
            return super().execute(context)
        first = self.poke(context)
        if first:
            return first.xcom_value if hasattr(first, "xcom_value") else None
        self.defer(trigger=self.make_trigger(context), method_name="execute_complete",
                   timeout=datetime.timedelta(seconds=self.timeout))

    def fail(self, message: str, cause: BaseException | None = None) -> None:
        raise AirflowFailException(message) from cause

    def event_error(self, event: dict[str, Any]) -> None:
        kind = event.get("error_type", "")
        message = f"{kind}: {event.get('message')}" if kind else str(event.get("message"))
        if kind in {c.__name__ for c in FATAL} or not kind:
            raise AirflowFailException(message)
        raise AirflowException(message)
