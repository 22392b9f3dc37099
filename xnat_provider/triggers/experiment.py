"""``XnatExperimentTrigger``: the deferred half of :class:`~xnat_provider.sensors.experiment.XnatExperimentSensor`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from ..client.models import Experiment
from ..conditions import DONE, ExperimentCriteria, Verdict, criteria_dict, experiment_verdict, observe_experiment
from .base import error_event, log, ride_out, shared_read
from .shared_poll import Subscription, experiment_listing


def event_experiment(event: dict[str, Any]) -> dict[str, Any]:
    """The experiment a success event reports: under ``experiment``, or under ``session`` in an event an earlier
    version's trigger sent (a task deferred before an upgrade resumes after it)."""
    return event["experiment"] if "experiment" in event else event["session"]


def listed(c: ExperimentCriteria, experiments: list[Experiment]) -> bool:
    """Whether the project's listing shows what ``c`` waits for, so that it is worth looking closer: an experiment
    with that label or ID (XNAT lists a shared experiment under its label in this project), or one of that
    subject. Compared without case, and a row without a subject label counts for any subject: a false "listed"
    costs one closer look, a false "not listed" would wait forever."""
    if c.experiment is not None:
        wanted = c.experiment.lower()
        return any(wanted in (e.label.lower(), e.id.lower()) for e in experiments)
    subject = (c.subject or "").lower()
    return any(not e.subject_label or subject in (e.subject_label.lower(), e.subject_id.lower())
               for e in experiments)


async def observe(listing: Subscription, c: ExperimentCriteria) -> Verdict:
    """One round: the project's shared experiment listing (one request for every experiment trigger of the
    triggerer on that project), then, only when it shows the experiment, the closer look of
    :func:`~xnat_provider.conditions.observe_experiment` (its scans, resources, fields) through the round's shared
    reads: every trigger of the round looking at the same experiment sends each of those requests once in all."""
    experiments: list[Experiment] = await listing.next()
    if not listed(c, experiments):
        return experiment_verdict(c, None, 0, [], {})
    return await observe_experiment(listing.reads, c)


class XnatExperimentTrigger(BaseTrigger):
    """Poll the archive until an imaging session (XNAT experiment) exists and meets the criteria, then report
    ``{"status": "success", "experiment": {...}}`` (the same dict also under ``session``, the key earlier
    versions read) or ``{"status": "error", ...}``.

    Errors are reported as :class:`~xnat_provider.triggers.prearchive.XnatPrearchiveTrigger` reports them: at
    once when permanent (no second login with refused credentials), after ``transient_error_timeout`` seconds of
    outage (counted from ``failing_since`` when the task saw it begin) when transient.

    Each round is one read of the project's experiments shared by every experiment trigger of the triggerer on that
    connection and project (:mod:`~xnat_provider.triggers.shared_poll`); the experiment itself (its scans,
    resources, fields) is read only once the listing shows it (:func:`listed`), each of those reads once per round
    for all the triggers that make it (:mod:`~xnat_provider.triggers.round_reads`).

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
            last = None
            async with shared_read(self.xnat_conn_id, experiment_listing(criteria.project),
                                   self.poll_interval) as listing:
                async for verdict in ride_out(lambda: observe(listing, criteria), self.transient_error_timeout,
                                              "session", self.failing_since):
                    if verdict.action == DONE:
                        experiment = verdict.found[0]
                        yield TriggerEvent({"status": "success", "message": verdict.message,
                                            "experiment": experiment, "session": experiment})
                        return
                    if verdict.message != last:  # a line when something changed, not one per poll for hours
                        log.info("%s", verdict.message)
                        last = verdict.message
        except Exception as exc:
            yield TriggerEvent(error_event(exc))
