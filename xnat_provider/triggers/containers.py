"""``XnatContainerTrigger``: the deferred half of the container operator and sensor.

It follows a Container Service launch as :class:`~xnat_provider.client.containers.ContainerWatch` does in every
mode: the launch's workflow until it names its container (or says the launch failed before any container existed),
then the container until it is finalized (terminal, and the last history entry written: logs saved, outputs
uploaded). It reports one event and ends:

- ``{"status": "done", "container_id", "workflow_id", "container": {...}}``: the container is over, whatever its
  outcome (the task reads it again and decides: success, or its logs and a typed error);
- ``{"status": "launch_failed", "workflow_id", "workflow": {...}, "message"}``: no container will come;
- ``{"status": "error", "error_type", "message"}``: an XNAT error (see :mod:`.base`): a permanent one at once, a
  transient one once it has lasted ``transient_error_timeout`` seconds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from ..client.containers import DONE, LAUNCH_FAILED, ContainerWatch
from .base import async_client, error_event, log, poll


class XnatContainerTrigger(BaseTrigger):
    """Poll a launch (``workflow_id``) or a container (``container_id``; both once known) until it is over.

    :param workflow_id: the workflow a launch answered, followed to its container.
    :param container_id: the container, once known (a restarted trigger then skips the workflow).
    :param xnat_conn_id: the Airflow connection to XNAT.
    :param poll_interval: seconds between two looks.
    :param transient_error_timeout: seconds in a row XNAT may fail transiently before the trigger reports the
        error (None: no limit).
    :param failing_since: when the current run of transient failures began (epoch seconds), carried over from
        the task that deferred so that an outage is measured across the hand-over.
    :param finalize_grace: seconds a terminal container may stay unfinalized before it is reported anyway (None:
        wait for the finalization).
    """

    def __init__(self, workflow_id: str | None = None, container_id: str | None = None,
                 xnat_conn_id: str = "xnat_default", poll_interval: float = 30.0,
                 transient_error_timeout: float | None = 3600.0, failing_since: float | None = None,
                 finalize_grace: float | None = 600.0):
        super().__init__()
        self.workflow_id = None if workflow_id in (None, "") else str(workflow_id)
        self.container_id = None if container_id in (None, "") else str(container_id)
        self.xnat_conn_id = xnat_conn_id
        self.poll_interval = poll_interval
        self.transient_error_timeout = transient_error_timeout
        self.failing_since = failing_since
        self.finalize_grace = finalize_grace

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("xnat_provider.triggers.containers.XnatContainerTrigger", {
            "workflow_id": self.workflow_id, "container_id": self.container_id, "xnat_conn_id": self.xnat_conn_id,
            "poll_interval": self.poll_interval, "transient_error_timeout": self.transient_error_timeout,
            "failing_since": self.failing_since, "finalize_grace": self.finalize_grace})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            watch = ContainerWatch(self.workflow_id, self.container_id, self.finalize_grace)
            async with async_client(self.xnat_conn_id) as xnat:
                last = None
                async for progress in poll(lambda: watch.observe(xnat), self.poll_interval,
                                           self.transient_error_timeout, "container", self.failing_since):
                    if progress.action == DONE:
                        assert progress.container is not None
                        yield TriggerEvent({"status": "done", "workflow_id": progress.workflow_id,
                                            "container_id": progress.container_id,
                                            "container": progress.container.to_dict(), "message": progress.message})
                        return
                    if progress.action == LAUNCH_FAILED:
                        assert progress.workflow is not None
                        yield TriggerEvent({"status": "launch_failed", "workflow_id": progress.workflow_id,
                                            "workflow": progress.workflow.to_dict(), "message": progress.message})
                        return
                    if progress.message != last:
                        log.info("%s", progress.message)
                        last = progress.message
        except Exception as exc:
            yield TriggerEvent(error_event(exc))
