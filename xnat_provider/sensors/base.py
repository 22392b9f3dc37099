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
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSensorTimeout, AirflowSkipException

from ..client.errors import XnatAuthError, XnatBadInputError, XnatNotFoundError, XnatPermissionError
from ..hooks.xnat import XnatHook, logs_out

FATAL = (XnatAuthError, XnatPermissionError, XnatNotFoundError, XnatBadInputError)


class XnatBaseSensor(BaseSensorOperator):
    """Common arguments: ``xnat_conn_id`` and ``deferrable`` (default ``[operators] default_deferrable``, read
    when the sensor is created, so a configuration set after this module was imported still counts)."""

    ui_color = "#dbe8f5"

    def __init__(self, *, xnat_conn_id: str = XnatHook.default_conn_name,
                 deferrable: bool | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.xnat_conn_id = xnat_conn_id
        if deferrable is None:
            deferrable = conf.getboolean("operators", "default_deferrable", fallback=False)
        self.deferrable = deferrable

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Log out when ``execute_complete`` ends (``execute`` below does the same): each resumption of a
        deferred or rescheduled sensor is a new process with a new login."""
        super().__init_subclass__(**kwargs)
        if "execute_complete" in cls.__dict__:
            cls.execute_complete = logs_out(cls.__dict__["execute_complete"])  # type: ignore[attr-defined]

    @cached_property
    def hook(self) -> XnatHook:
        return XnatHook(self.xnat_conn_id)

    def make_trigger(self, context: Any) -> Any:  # pragma: no cover - each sensor defines its trigger
        raise NotImplementedError

    @logs_out
    def execute(self, context: Any) -> Any:
        if not self.deferrable:
            return super().execute(context)
        try:
            first = self.poke(context)  # the cheap first look, with the poke loop's soft_fail rules
        except (AirflowSensorTimeout, AirflowFailException) as exc:
            if self.soft_fail or self.never_fail:
                raise AirflowSkipException(f"Skipping because soft_fail/never_fail is set: {exc}") from exc
            raise
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
