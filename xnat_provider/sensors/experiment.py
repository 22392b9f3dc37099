"""``XnatExperimentSensor``: wait for an imaging session (XNAT experiment) to be archived, optionally with scans,
a resource or a custom field value."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from airflow.sdk import PokeReturnValue

from ..client.errors import XnatError, XnatServerError
from ..conditions import DONE, ExperimentCriteria, observe_experiment
from ..links import experiment_url, push_link, subject_url
from ..operators.base import renamed_argument
from ..triggers.experiment import XnatExperimentTrigger, event_experiment
from .base import XnatBaseSensor, logs_out


class XnatExperimentSensor(XnatBaseSensor):
    """Wait until an archived imaging session (XNAT experiment) exists in ``project``, by label (``experiment``)
    or as the latest experiment of ``subject``, and, if asked, has at least ``min_scans`` scans, a ``resource``
    (at experiment or scan level) and the custom field ``field_name`` equal to ``field_value``. Returns the
    experiment (id, label, project, subject, xsi type, date, uri).
    Errors follow the contract of :class:`~xnat_provider.sensors.base.XnatBaseSensor`, the same in every mode.
    The "XNAT session" button opens the experiment (or the subject, until its latest experiment is found).

    :param project: the XNAT project.
    :param experiment: the experiment's label (give it or ``subject``).
    :param session: deprecated name of ``experiment``.
    :param subject: wait for this subject's latest experiment (by insert date) instead of a label.
    :param min_scans: the experiment must have at least this many scans (default 0).
    :param resource: a resource label the experiment, or one of its scans, must have.
    :param field_name: a custom field of the experiment that must equal ``field_value`` (give both or neither).
    :param field_value: the value ``field_name`` must have (compared as text).
    """

    template_fields: Sequence[str] = ("project", "experiment", "subject", "resource", "field_name", "field_value",
                                      "xnat_conn_id")

    def __init__(self, *, project: str, experiment: str | None = None, subject: str | None = None,
                 min_scans: int = 0, resource: str | None = None, field_name: str | None = None,
                 field_value: str | None = None, session: str | None = None, **kwargs: Any) -> None:
        experiment = renamed_argument(self, "experiment", experiment, "session", session)
        super().__init__(**kwargs)
        self.project, self.experiment, self.subject = project, experiment, subject
        self.min_scans, self.resource = min_scans, resource
        self.field_name, self.field_value = field_name, field_value
        self.criteria()

    def criteria(self) -> ExperimentCriteria:
        return ExperimentCriteria(project=self.project, experiment=self.experiment, subject=self.subject,
                                  min_scans=self.min_scans, resource=self.resource, field_name=self.field_name,
                                  field_value=None if self.field_value is None else str(self.field_value))

    def describe(self) -> str:
        return f"Cannot look for the session in {self.project}"

    def link(self) -> str | None:
        base = self.hook.client_config.url
        return experiment_url(base, self.project, self.experiment) if self.experiment else subject_url(
            base, self.project, str(self.subject))

    def _found(self, context: Any, experiment: dict[str, Any]) -> dict[str, Any]:
        if not self.experiment:  # the subject's latest experiment: now the button can open it
            push_link(context, experiment_url(self.hook.client_config.url, self.project, experiment["label"]))
        return experiment

    def poke(self, context: Any) -> PokeReturnValue | bool:
        try:
            verdict = asyncio.run(observe_experiment(self.hook.get_conn(), self.criteria()))
        except XnatServerError as exc:
            self.ride_out(context, exc, "polling the session")
            return False
        except XnatError as exc:
            self.xnat_error(exc)
        self.answered(context)
        self.log.info("%s", verdict.message)
        if verdict.action != DONE:
            return False
        return PokeReturnValue(is_done=True, xcom_value=self._found(context, verdict.found[0]))

    def make_trigger(self, context: Any) -> XnatExperimentTrigger:
        return XnatExperimentTrigger(criteria=self.criteria().to_dict(), xnat_conn_id=self.xnat_conn_id,
                                     poll_interval=self.poke_interval, transient_error_timeout=self.outage_tolerance,
                                     failing_since=self.outage(context).since)

    @logs_out
    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> dict[str, Any]:
        event = event or {"status": "error", "message": "the trigger sent no event"}
        if event["status"] == "success":
            return self._found(context, event_experiment(event))
        self.event_error(event)
