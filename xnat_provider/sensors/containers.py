"""``XnatContainerSensor``: wait for a Container Service container launched elsewhere (the UI, an event, a script)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, NoReturn

from airflow.sdk import PokeReturnValue
from airflow.sdk.exceptions import AirflowFailException

from ..client.containers import DONE, LAUNCH_FAILED, Container, ContainerWatch, Workflow, failure_of
from ..client.errors import XnatContainerFailedError, XnatError, XnatServerError
from ..links import experiment_url, push_link
from ..operators.containers import (
    DEFAULT_LOG_TAIL,
    container_result,
    launch_failure,
    log_container_output,
    workflow_from_event,
)
from ..triggers.containers import XnatContainerTrigger
from .base import XnatBaseSensor, logs_out


class XnatContainerSensorFailedError(XnatContainerFailedError, AirflowFailException):
    """The container (or its launch) failed: waiting cannot change that, so the sensor fails at once (skipped under
    ``soft_fail``)."""


class XnatContainerSensor(XnatBaseSensor):
    """Wait until a container is over: given by ``container_id`` (database or backend id) or by the ``workflow_id``
    a launch answered (the sensor follows the workflow to its container). Over means finalized: ``Complete``,
    ``Failed`` or killed, with its logs saved and outputs uploaded.

    Returns the container's outcome (ids, status, exit code, output resources). A container that did not end
    ``Complete`` fails the sensor (:class:`XnatContainerSensorFailedError`, never retried; its stdout and stderr tails
    in the task log) unless ``require_success=False``, which returns the outcome whatever it is; a launch that failed
    before any container existed always fails it. Poke, reschedule and deferrable modes judge alike; errors follow
    the contract of :class:`~xnat_provider.sensors.base.XnatBaseSensor`; ``timeout`` bounds the wait (a container
    that hangs is left running: kill it with ``XnatClient.kill_container``).

    :param container_id: the container's database ID or its backend (Docker) ID. Templated.
    :param workflow_id: or the workflow ID a launch answered; the sensor follows it to its container. Templated.
    :param require_success: fail unless the container ends ``Complete`` (default True); False returns the
        outcome whatever it is.
    :param finalize_grace: seconds a container may sit in a terminal status before XNAT finalizes it; after that
        it is reported as it is (default 600; None: wait for the finalization).
    :param log_tail_bytes: how much of the end of a failed container's stdout and of its stderr goes to the log.
    """

    template_fields: Sequence[str] = ("container_id", "workflow_id", "xnat_conn_id")

    def __init__(self, *, container_id: str | int | None = None, workflow_id: str | int | None = None,
                 require_success: bool = True, finalize_grace: float | None = 600.0,
                 log_tail_bytes: int = DEFAULT_LOG_TAIL, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if container_id in (None, "") and workflow_id in (None, ""):
            raise ValueError("XnatContainerSensor needs container_id or workflow_id")
        self.container_id, self.workflow_id = container_id, workflow_id
        self.require_success, self.finalize_grace, self.log_tail_bytes = require_success, finalize_grace, \
            log_tail_bytes
        self._watch: ContainerWatch | None = None
        self._last = None

    def describe(self) -> str:
        what = f"container {self.container_id}" if self.container_id not in (None, "") else \
            f"the container of workflow {self.workflow_id}"
        return f"Cannot follow {what}"

    def watch(self) -> ContainerWatch:
        if self._watch is None:
            self._watch = ContainerWatch(None if self.workflow_id in (None, "") else str(self.workflow_id),
                                         None if self.container_id in (None, "") else str(self.container_id),
                                         self.finalize_grace)
        return self._watch

    def poke(self, context: Any) -> PokeReturnValue | bool:
        try:
            progress = asyncio.run(self.watch().observe(self.hook.get_conn()))
        except XnatServerError as exc:
            self.ride_out(context, exc, "following the container")
            return False
        except XnatError as exc:
            self.xnat_error(exc)
        self.answered(context)
        if progress.container is not None:
            self._link(context, progress.container)
        if progress.action == LAUNCH_FAILED:
            assert progress.workflow is not None
            self._launch_failed(progress.workflow)
        if progress.action != DONE:
            if progress.message != self._last:
                self.log.info("%s", progress.message)
                self._last = progress.message
            return False
        assert progress.container is not None
        return PokeReturnValue(is_done=True, xcom_value=self._verdict(progress.container, progress.workflow_id))

    def _link(self, context: Any, c: Container) -> None:
        project, exp = c.labels.get("XNAT_PROJECT") or c.project, c.labels.get("XNAT_ID")
        if project and exp:
            push_link(context, experiment_url(self.hook.client_config.url, project, exp))

    def _verdict(self, c: Container, workflow_id: str | None) -> dict[str, Any]:
        client = self.hook.get_conn()
        result = container_result(client, c, workflow_id)
        if c.succeeded or not self.require_success:
            self.log.info("Container %s is %s (exit code %s)", c.id, c.status, c.exit_code)
            return result
        log_container_output(self.log, client, c, self.log_tail_bytes)
        exc = failure_of(c, workflow_id)
        raise XnatContainerSensorFailedError(str(exc), container_id=exc.container_id, workflow_id=exc.workflow_id,
                                             container_status=exc.container_status, exit_code=exc.exit_code,
                                             killed=exc.killed, details=exc.details)

    def _launch_failed(self, wf: Workflow) -> NoReturn:
        exc = launch_failure(wf)
        raise XnatContainerSensorFailedError(str(exc), workflow_id=wf.id, container_status=wf.status,
                                             details=wf.details)

    def make_trigger(self, context: Any) -> XnatContainerTrigger:
        watch = self.watch()  # what the first poke learnt: the container's id, once the workflow named it
        return XnatContainerTrigger(workflow_id=watch.workflow_id, container_id=watch.container_id,
                                    xnat_conn_id=self.xnat_conn_id, poll_interval=self.poke_interval,
                                    transient_error_timeout=self.outage_tolerance,
                                    failing_since=self.outage(context).since, finalize_grace=self.finalize_grace)

    @logs_out
    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> dict[str, Any]:
        event = event or {"status": "error", "message": "the trigger sent no event"}
        status = event.get("status")
        if status == "launch_failed":
            self._launch_failed(workflow_from_event(event.get("workflow") or {}))
        if status != "done":
            self.event_error(event)
        try:
            c = self.hook.get_conn().get_container(event["container_id"])
        except XnatError as exc:
            self.xnat_error(exc)
        self._link(context, c)
        return self._verdict(c, event.get("workflow_id"))
