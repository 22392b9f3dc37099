"""``XnatPrearchiveSensor``: wait for prearchive sessions to arrive in a project's prearchive and be READY."""

from __future__ import annotations

import datetime
import time
from collections.abc import Sequence
from typing import Any

from airflow.sdk import PokeReturnValue
from airflow.sdk.exceptions import AirflowSensorTimeout

from ..client.errors import XnatConflictError, XnatError, XnatServerError
from ..client.protocol import prearchive_uri
from ..conditions import DONE, FAIL, REBUILD, PrearchiveCriteria, PrearchiveWatch
from ..links import project_prearchive_url
from ..operators.base import renamed_argument
from ..triggers.prearchive import XnatPrearchiveTrigger
from .base import XnatBaseSensor, logs_out

STATE_KEY = "xnat_prearchive_watch"


class XnatPrearchiveSensor(XnatBaseSensor):
    """Wait until at least ``min_count`` matching prearchive sessions are READY and quiet.

    RECEIVING, BUILDING, ``QUEUED_*`` and ``_*`` statuses mean keep waiting; READY counts once the prearchive
    session has not changed for ``quiet_period`` seconds (one still being extended or split keeps changing);
    CONFLICT and ERROR fail with XNAT's status unless ``skip_failed``; a prearchive session whose status and
    ``lastmod`` do not move for ``stall_timeout`` seconds is rebuilt once if ``rebuild_stalled``, then fails
    clearly. A prearchive session stalled in an ``_X`` status (``_ARCHIVING``, ``_BUILDING``...) is locked by an
    operation XNAT runs, or one that died holding the lock: XNAT ignores a rebuild of it, so none is asked (the
    one rebuild is not spent on it); it fails at ``stall_timeout`` with a message saying so and what an
    administrator can do.
    A rebuild that XNAT ignored all the same (the row got locked just before it) is not counted: the sensor
    keeps waiting; one XNAT did not answer (a 503) is not counted either, and is asked again a poke interval
    later, as long as the outage lasts no longer than ``outage_tolerance``.
    Returns the matching prearchive sessions (project, timestamp, folder, name, subject, study_uid, status...).
    Errors follow the contract of :class:`~xnat_provider.sensors.base.XnatBaseSensor`, the same in every mode.
    The "XNAT session" button opens the project's prearchive.

    :param project: the XNAT project whose prearchive is watched.
    :param subject: only prearchive sessions of this subject label.
    :param experiment: only prearchive sessions with this label (their ``name``, the label of the experiment
        they become when archived).
    :param session: deprecated name of ``experiment``.
    :param study_uid: only the prearchive session of this StudyInstanceUID.
    :param min_count: how many matching prearchive sessions must be READY (default 1).
    :param quiet_period: seconds a READY prearchive session must stay unchanged before it counts (default 0).
    :param stall_timeout: seconds without a change of status or ``lastmod`` after which a busy prearchive session
        is stalled (None, the default: never).
    :param rebuild_stalled: ask XNAT once to rebuild a stalled prearchive session before failing.
    :param skip_failed: ignore CONFLICT and ERROR prearchive sessions instead of failing.
    """

    template_fields: Sequence[str] = ("project", "subject", "experiment", "study_uid", "xnat_conn_id")

    def __init__(self, *, project: str, subject: str | None = None, experiment: str | None = None,
                 study_uid: str | None = None, min_count: int = 1, quiet_period: float = 0.0,
                 stall_timeout: float | None = None, rebuild_stalled: bool = False, skip_failed: bool = False,
                 session: str | None = None, **kwargs: Any) -> None:
        experiment = renamed_argument(self, "experiment", experiment, "session", session)
        super().__init__(**kwargs)
        self.project, self.subject, self.experiment, self.study_uid = project, subject, experiment, study_uid
        self.min_count, self.quiet_period = min_count, quiet_period
        self.stall_timeout, self.rebuild_stalled, self.skip_failed = stall_timeout, rebuild_stalled, skip_failed
        self.criteria()  # bad arguments fail when the DAG is parsed, not hours later
        self._state: dict[str, Any] | None = None

    def criteria(self) -> PrearchiveCriteria:
        return PrearchiveCriteria(
            project=self.project, subject=self.subject, experiment=self.experiment, study_uid=self.study_uid,
            min_count=self.min_count, quiet_period=self.quiet_period, stall_timeout=self.stall_timeout,
            rebuild_stalled=self.rebuild_stalled, skip_failed=self.skip_failed)

    # Observations survive a reschedule (a new process per poke) in the task state store.
    def _load(self, context: Any) -> dict[str, Any]:
        store = context.get("task_state_store")
        if self._state is None and store is not None:
            self._state = store.get(STATE_KEY) or None
        return self._state or {"seen": {}, "rebuilt": []}

    def _save(self, context: Any, state: dict[str, Any]) -> None:
        self._state = state
        store = context.get("task_state_store")
        if store is not None:
            store.set(STATE_KEY, state)

    def describe(self) -> str:
        return f"Cannot watch the prearchive of {self.project}"

    def link(self) -> str | None:
        return project_prearchive_url(self.hook.client_config.url, self.project)

    def poke(self, context: Any) -> PokeReturnValue | bool:
        watch = PrearchiveWatch(self.criteria(), self._load(context))
        try:
            verdict = watch.observe(self.hook.get_conn().list_prearchive(self.project))
            if verdict.action == REBUILD:
                self._rebuild_all(watch, verdict.message, verdict.found)
        except XnatServerError as exc:
            self.ride_out(context, exc, "polling the prearchive")
            return False
        except XnatError as exc:
            self.xnat_error(exc)
        finally:
            self._save(context, watch.state)
        self.answered(context)
        if verdict.action == FAIL:
            self.fail(self._with_reasons(verdict.message, verdict.found))
        self.log.info("%s", verdict.message)
        return PokeReturnValue(is_done=True, xcom_value=verdict.found) if verdict.action == DONE else False

    def _rebuild_all(self, watch: PrearchiveWatch, message: str, rows: list[dict[str, Any]]) -> None:
        """Ask XNAT to rebuild each stalled prearchive session once. One XNAT did not answer is not spent: it is
        asked again a poke interval later (by whichever mode looks next), and the :class:`XnatServerError` goes on
        to the outage clock."""
        client = self.hook.get_conn()
        for s in rows:
            uri = prearchive_uri(s)
            self.log.warning("%s", message)
            try:
                if self._rebuild(client, uri):
                    watch.rebuilt(uri)
            except XnatServerError:
                watch.rebuild_unanswered(self.poke_interval)
                raise

    def _rebuild(self, client: Any, uri: str) -> bool:
        """Ask XNAT to rebuild ``uri``; False when XNAT ignored it because the row is now locked (it got an
        ``_X`` status since the last look): the rebuild is not spent, and the next looks see the locked row."""
        try:
            client.rebuild_prearchive(uri)
        except XnatConflictError as exc:
            self.log.warning("XNAT ignored the rebuild, the row is locked; waiting on: %s", exc)
            return False
        return True

    def _with_reasons(self, message: str, rows: list[dict[str, Any]]) -> str:
        """Add XNAT's own reason for each CONFLICT or ERROR prearchive session (from its prearchive log)."""
        reasons = []
        for s in rows:
            if s.get("status") in ("CONFLICT", "ERROR"):
                try:
                    reason = self.hook.get_conn().prearchive_reason(prearchive_uri(s))
                except XnatError as exc:  # the failure stands without XNAT's reason
                    self.log.warning("Could not read XNAT's reason for %s: %s", s.get("name"), exc)
                    reason = None
                if reason:
                    reasons.append(f"{s['name']}: {reason}")
        return message + (" XNAT says: " + "; ".join(reasons) if reasons else "")

    @logs_out
    def execute(self, context: Any) -> Any:
        # The task state store is shared by retries: a new try starts its own deferral clock.
        self._load(context).pop("deferred_at", None)
        return super().execute(context)

    def make_trigger(self, context: Any) -> XnatPrearchiveTrigger:
        state = self._load(context)
        state.setdefault("deferred_at", time.time())  # a re-deferral (after a rebuild) keeps the sensor timeout
        return XnatPrearchiveTrigger(criteria=self.criteria().to_dict(), xnat_conn_id=self.xnat_conn_id,
                                     poll_interval=self.poke_interval, state=state,
                                     transient_error_timeout=self.outage_tolerance,
                                     failing_since=self.outage(context).since)

    @logs_out
    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        event = event or {"status": "error", "message": "the trigger sent no event"}
        if event["status"] == "success":
            self.log.info("%s", event.get("message"))
            return event["sessions"]
        if event["status"] == "rebuild":
            state = event.get("state") or {}
            left = self.timeout - (time.time() - float(state.get("deferred_at") or time.time()))
            if left <= 0:
                raise AirflowSensorTimeout(f"Sensor has timed out (timeout={self.timeout} s) before a stalled "
                                           "prearchive session could be rebuilt.")
            watch = PrearchiveWatch(self.criteria(), state)
            try:
                self._rebuild_all(watch, str(event.get("message")), event["sessions"])
            except XnatServerError as exc:  # not answered: ridden out as a poke would, asked again later
                self.ride_out(context, exc, "asking XNAT to rebuild a stalled prearchive session")
            except XnatError as exc:
                self.xnat_error(exc)
            else:
                self.answered(context)
            finally:
                self._save(context, state)
            self.defer(trigger=self.make_trigger(context), method_name="execute_complete",
                       timeout=datetime.timedelta(seconds=left))
        if event.get("sessions") and not event.get("error_type"):
            event = {**event, "message": self._with_reasons(str(event.get("message")), event["sessions"])}
        self.event_error(event)
        return []  # pragma: no cover - event_error raises
