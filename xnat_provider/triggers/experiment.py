"""``XnatExperimentTrigger``: the deferred half of :class:`~xnat_provider.sensors.experiment.XnatExperimentSensor`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from ..conditions import DONE, ExperimentCriteria, criteria_dict, observe_experiment
from .base import async_client, error_event, log, poll


def event_experiment(event: dict[str, Any]) -> dict[str, Any]:
    """The experiment a success event reports: under ``experiment``, or under ``session`` in an event an earlier
    version's trigger sent (a task deferred before an upgrade resumes after it)."""
    return event["experiment"] if "experiment" in event else event["session"]


class XnatExperimentTrigger(BaseTrigger):
    """Poll the archive until an imaging session (XNAT experiment) exists and meets the criteria, then report
    ``{"status": "success", "experiment": {...}}`` (the same dict also under ``session``, the key earlier
    versions read) or ``{"status": "error", ...}``.

    Errors are reported as :class:`~xnat_provider.triggers.prearchive.XnatPrearchiveTrigger` reports them: at
    once when permanent (no second login with refused credentials), after ``transient_error_timeout`` seconds of
    outage (counted from ``failing_since`` when the task saw it begin) when transient.

    A trigger serialized by an earlier version (classpath ``xnat_provider.triggers.session.XnatSessionTrigger``,
    criteria with ``session`` for ``experiment``) is still built and run by this class after an upgrade.

    :param criteria: :class:`~xnat_provider.conditions.ExperimentCriteria` as a dict.
    :param xnat_conn_id: the Airflow connection of type ``xnat``.
    :param poll_interval: seconds between looks (the sensor's ``poke_interval``).
    :param transient_error_timeout: how long XNAT may keep failing (restart, gateway) before giving up (the
        sensor's ``outage_tolerance``; None: no limit).
    :param failing_since: when the outage the task saw before deferring began (``time.time()``), if any.
    """

    def __init__(self, criteria: dict[str, Any], xnat_conn_id: str = "xnat_default", poll_interval: float = 30.0,
                 transient_error_timeout: float | None = 600.0, failing_since: float | None = None):
        super().__init__()
        self.criteria = criteria_dict(criteria)
        self.xnat_conn_id = xnat_conn_id
        self.poll_interval = poll_interval
        self.transient_error_timeout = transient_error_timeout
        self.failing_since = failing_since

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("xnat_provider.triggers.experiment.XnatExperimentTrigger", {
            "criteria": self.criteria, "xnat_conn_id": self.xnat_conn_id, "poll_interval": self.poll_interval,
            "transient_error_timeout": self.transient_error_timeout, "failing_since": self.failing_since})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            criteria = ExperimentCriteria.from_dict(self.criteria)
            async with async_client(self.xnat_conn_id) as xnat:
                async for verdict in poll(lambda: observe_experiment(xnat, criteria), self.poll_interval,
                                          self.transient_error_timeout, "session", self.failing_since):
                    if verdict.action == DONE:
                        experiment = verdict.found[0]
                        yield TriggerEvent({"status": "success", "message": verdict.message,
                                            "experiment": experiment, "session": experiment})
                        return
                    log.info("%s", verdict.message)
        except Exception as exc:
            yield TriggerEvent(error_event(exc))
