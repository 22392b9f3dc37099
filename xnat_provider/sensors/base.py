"""The shape every XNAT sensor shares: poke, reschedule or deferrable, with one verdict logic for all three.

Following Airflow's ``FileSensor``: ``execute`` pokes once (cheap, and often already true); if not done and
deferrable, it defers to the trigger and frees the worker slot; ``execute_complete`` turns the trigger's event
into the sensor's result or its error.

One failure contract for the three modes (poke, reschedule, deferrable):

- **Outages.** Transient XNAT failures (:class:`XnatServerError`: a restart, a gateway's 5xx) are ridden out for
  ``outage_tolerance`` seconds in a row (default an hour; None: until ``timeout``), on one wall-clock clock that
  survives reschedules and deferral; a longer outage raises :class:`XnatServerError`. A rebuild XNAT did not
  answer is asked again later, within the same tolerance.
- **The same exception types.** An XNAT error reaches Airflow as the client's class in every mode (the trigger's
  event names it; ``execute_complete`` raises it again), so ``xnat_retry_policy`` (or any retry rule) matches it.
  The errors a retry cannot fix (refused login, no permission, no such project or experiment, conflict, bad input,
  a missing or misconfigured connection) are raised as subclasses that are also ``AirflowFailException``
  (:class:`XnatSensorAuthError`...): never retried, whatever the policy (a retried login with refused credentials
  is how accounts get locked), and skipped under ``soft_fail`` or ``never_fail``.
- A sensor failure that waiting cannot fix (a CONFLICT prearchive session, a stall) is an
  ``AirflowFailException``.

The login's lifecycle is explicit, as for operators (:class:`~xnat_provider.operators.base.XnatBaseOperator`):
:meth:`XnatBaseSensor.execute` carries :func:`~xnat_provider.hooks.xnat.logs_out`, so every poke of one
``execute`` (all of them in poke mode; one per process in reschedule mode; the first look before deferring) shares
one login, closed when ``execute`` ends. A sensor's ``execute_complete`` (run in a new process after the trigger
fired) carries ``@logs_out`` too (free when it sends nothing: no request, no login).
"""

from __future__ import annotations

import datetime
from functools import cached_property
from typing import Any, NoReturn

from airflow.sdk import BaseSensorOperator, conf
from airflow.sdk.exceptions import AirflowFailException, AirflowSensorTimeout, AirflowSkipException

from ..client.errors import (
    ERROR_TYPES,
    XnatAuthError,
    XnatBadInputError,
    XnatConflictError,
    XnatError,
    XnatNotFoundError,
    XnatPermissionError,
    XnatServerError,
    error_kind,
)
from ..conditions import Outage
from ..hooks.xnat import XnatHook, logs_out
from ..links import XnatSessionLink, push_link

__all__ = ["XnatBaseSensor", "logs_out"]

OUTAGE_KEY = "xnat_outage"
DEFAULT_OUTAGE_TOLERANCE = 3600.0


class XnatSensorAuthError(XnatAuthError, AirflowFailException):
    """A sensor's :class:`XnatAuthError`: fails the task at once (no retry, no second login)."""


class XnatSensorPermissionError(XnatPermissionError, AirflowFailException):
    """A sensor's :class:`XnatPermissionError`: fails the task at once."""


class XnatSensorNotFoundError(XnatNotFoundError, AirflowFailException):
    """A sensor's :class:`XnatNotFoundError` (a missing project, say): fails the task at once."""


class XnatSensorConflictError(XnatConflictError, AirflowFailException):
    """A sensor's :class:`XnatConflictError`: fails the task at once."""


class XnatSensorBadInputError(XnatBadInputError, AirflowFailException):
    """A sensor's :class:`XnatBadInputError` (a bad argument or connection): fails the task at once."""


FAIL_FAST: dict[type[XnatError], type[XnatError]] = {
    XnatAuthError: XnatSensorAuthError, XnatPermissionError: XnatSensorPermissionError,
    XnatNotFoundError: XnatSensorNotFoundError, XnatConflictError: XnatSensorConflictError,
    XnatBadInputError: XnatSensorBadInputError}
FATAL = tuple(FAIL_FAST)


def sensor_error(kind: str, message: str) -> XnatError:
    """The exception a sensor raises for an XNAT error of the client class named ``kind``, in every mode: that
    class, or for the errors a retry cannot fix its fail-fast subclass."""
    cls = ERROR_TYPES.get(kind, XnatError)
    return FAIL_FAST.get(cls, cls)(message)


class XnatBaseSensor(BaseSensorOperator):
    """What every XNAT sensor shares: the connection, the mode, the outage clock and the failure contract (see
    the module docstring), and the "XNAT session" button, which links to what the sensor waits for from its
    first look, so a sensor that fails or times out has it too.

    A new sensor defines :meth:`poke` (one look, with ``self.hook.get_conn()``; transient errors go to
    :meth:`ride_out`, others to :meth:`xnat_error`, an answer to :meth:`answered`), :meth:`describe`,
    :meth:`link`, and for deferral :meth:`make_trigger` and an ``execute_complete`` decorated with
    :func:`~xnat_provider.hooks.xnat.logs_out`. ``execute`` here already carries it; an override of ``execute``
    carries it too (calls nest: the login ends with the outermost).

    :param xnat_conn_id: the Airflow connection of type ``xnat`` (default ``xnat_default``).
    :param deferrable: defer to a trigger between looks, freeing the worker slot (default ``[operators]
        default_deferrable``, read when the sensor is created, so a configuration set after this module was
        imported still counts).
    :param outage_tolerance: how many seconds in a row XNAT may fail transiently (a restart, a gateway's 5xx)
        before the sensor gives up with :class:`XnatServerError`, in every mode (default 3600; None: until
        ``timeout``).
    """

    ui_color = "#dbe8f5"
    operator_extra_links = (XnatSessionLink(),)

    def __init__(self, *, xnat_conn_id: str = XnatHook.default_conn_name, deferrable: bool | None = None,
                 outage_tolerance: float | None = DEFAULT_OUTAGE_TOLERANCE, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.xnat_conn_id = xnat_conn_id
        if deferrable is None:
            deferrable = conf.getboolean("operators", "default_deferrable", fallback=False)
        self.deferrable = deferrable
        if outage_tolerance is not None and not outage_tolerance >= 0:
            raise ValueError(f"outage_tolerance must be a number of seconds >= 0 or None, not {outage_tolerance!r}")
        self.outage_tolerance = outage_tolerance
        self._outage: Outage | None = None

    @cached_property
    def hook(self) -> XnatHook:
        return XnatHook(self.xnat_conn_id)

    def make_trigger(self, context: Any) -> Any:  # pragma: no cover - each sensor defines its trigger
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - each sensor says what it does
        raise NotImplementedError

    def link(self) -> str | None:
        """The XNAT page of what the sensor waits for (None: no link)."""
        return None

    @logs_out
    def execute(self, context: Any) -> Any:
        try:
            url = self.link()
        except XnatError:  # an unusable connection: the first look raises it, as this sensor's error
            url = None
        if url:
            push_link(context, url)  # before the first look: a sensor that fails has its link too
        if not self.deferrable:
            return super().execute(context)
        try:
            first = self.poke(context)  # the cheap first look, with the poke loop's soft_fail rules
        except (AirflowSensorTimeout, AirflowFailException) as exc:
            if self.soft_fail or self.never_fail:
                raise AirflowSkipException(f"Skipping because soft_fail/never_fail is set: {exc}") from exc
            raise
        except XnatError as exc:  # an outage past outage_tolerance: never_fail skips it, as on a poke
            if self.never_fail:
                raise AirflowSkipException(f"Skipping because never_fail is set: {exc}") from exc
            raise
        if first:
            return first.xcom_value if hasattr(first, "xcom_value") else None
        self.defer(trigger=self.make_trigger(context), method_name="execute_complete",
                   timeout=datetime.timedelta(seconds=self.timeout))

    def fail(self, message: str, cause: BaseException | None = None) -> NoReturn:
        raise AirflowFailException(message) from cause

    # ---- one failure contract ----------------------------------------------------------------------
    def xnat_error(self, exc: BaseException) -> NoReturn:
        """Raise an XNAT error met while poking as the sensor's error for it (see the module docstring)."""
        kind = error_kind(exc)
        raise sensor_error(kind, f"{self.describe()}: {kind}: {exc}") from exc

    def event_error(self, event: dict[str, Any]) -> NoReturn:
        """Raise the error a trigger reported as the same exception the poking sensor raises for it."""
        kind = event.get("error_type", "")
        if not kind:  # a verdict (a CONFLICT or stalled prearchive session): waiting cannot fix it
            raise AirflowFailException(str(event.get("message")))
        exc = sensor_error(kind, f"{self.describe()}: {kind}: {event.get('message')}")
        if self.never_fail and not isinstance(exc, AirflowFailException):  # as BaseSensorOperator does on pokes
            raise AirflowSkipException(f"Skipping due to never_fail is set to True: {exc}") from exc
        raise exc

    def _try_number(self, context: Any) -> Any:
        return getattr(context.get("ti"), "try_number", None)

    def outage(self, context: Any) -> Outage:
        """The outage clock of this try, kept in the task state store (a rescheduled poke is a new process)."""
        if self._outage is None:
            store = context.get("task_state_store")
            saved = store.get(OUTAGE_KEY) if store is not None else None
            since = None
            if isinstance(saved, dict) and saved.get("try") == self._try_number(context):
                since = saved.get("since")
            self._outage = Outage(self.outage_tolerance, since)
        return self._outage

    def _save_outage(self, context: Any, before: float | None) -> None:
        store = context.get("task_state_store")
        if store is not None and self.outage(context).since != before:
            store.set(OUTAGE_KEY, {"since": self.outage(context).since, "try": self._try_number(context)})

    def ride_out(self, context: Any, exc: XnatServerError, doing: str) -> None:
        """A transient failure: note it, and raise :class:`XnatServerError` once the outage is too long."""
        outage = self.outage(context)
        before = outage.since
        try:
            outage.failed(exc, doing)
        except XnatServerError as too_long:
            self.xnat_error(too_long)
        finally:
            self._save_outage(context, before)
        self.log.warning("XNAT did not answer while %s (%s); trying again next poke", doing, exc)

    def answered(self, context: Any) -> None:
        outage = self.outage(context)
        before = outage.since
        outage.answered()
        self._save_outage(context, before)
