"""``XnatLaunchContainerOperator``: run an XNAT Container Service wrapper on an experiment or a scan, and wait.

The call sequence, as XNAT runs it (``docs/container-service.md``): the operator checks the launch (the wrapper
exists, runs on this object, is enabled for the project, gets its required inputs; XNAT's REST launch checks none
of it), looks for a container of the same launch that a previous try started, else launches
(``POST /xapi/projects/{p}/wrappers/{id}/root/{root}/launch``: the answer is a *workflow* id), then waits,
deferred by default: the workflow until it names its container (or says the launch failed before one existed),
then the container until it is finalized (``Complete``, ``Failed``, or killed; logs saved, outputs uploaded).
A container that did not end ``Complete`` has the end of its stdout and stderr copied into the task log and fails
the task with :class:`~xnat_provider.client.errors.XnatContainerFailedError`.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from airflow.sdk.exceptions import AirflowFailException, AirflowTaskTimeout

from ..client.containers import (
    DONE,
    LAUNCH_FAILED,
    Container,
    ContainerWatch,
    LaunchPlan,
    Workflow,
    container_of_workflow,
    failure_of,
)
from ..client.errors import (
    ERROR_TYPES,
    XnatBadInputError,
    XnatContainerFailedError,
    XnatError,
    XnatNotFoundError,
    XnatServerError,
)
from ..client.protocol import is_ambiguous
from ..conditions import Outage
from ..triggers.containers import XnatContainerTrigger
from .base import XnatBaseOperator, logs_out, structured

STATE_KEY = "xnat_container_launch"  # the task state store's key: the launch an earlier try sent
XCOM_KEY = "xnat_container"  # the outcome, pushed also when the task fails (for an all_done task downstream)
DEFAULT_LOG_TAIL = 16 * 1024


class XnatContainerTaskFailedError(XnatContainerFailedError, AirflowFailException):
    """A container (or its launch) that failed, raised so that the task fails without a retry: a retry would launch
    the same command on the same data again. ``retry_failed_container=True`` raises the plain
    :class:`XnatContainerFailedError` instead, which the task's ``retries`` apply to."""


def container_failure(exc: XnatContainerFailedError, fail_fast: bool) -> XnatContainerFailedError:
    if not fail_fast or isinstance(exc, AirflowFailException):
        return exc
    return XnatContainerTaskFailedError(str(exc), container_id=exc.container_id, workflow_id=exc.workflow_id,
                                        container_status=exc.container_status, exit_code=exc.exit_code,
                                        killed=exc.killed, details=exc.details)


def container_result(client: Any, c: Container, workflow_id: str | None = None,
                     target: Mapping[str, Any] | None = None, adopted: bool = False) -> dict[str, Any]:
    """The small JSON-safe XCom of a finished container: ids, status, exit code, and (when it succeeded) the output
    resources it produced, each with its URI and file count."""
    target = dict(target or {})
    return {
        "container_id": c.id, "backend_id": c.backend_id, "workflow_id": workflow_id or c.workflow_id or None,
        "status": c.status, "exit_code": c.exit_code, "succeeded": c.succeeded, "killed": c.killed,
        "wrapper_id": c.wrapper_id, "command": target.get("command"), "wrapper": target.get("wrapper"),
        "project": c.project or target.get("project"), "experiment": target.get("experiment") or
        c.labels.get("XNAT_ID"), "scan": target.get("scan"),
        "outputs": client.container_outputs(c) if c.succeeded else [], "adopted": adopted,
    }


def log_container_output(log: Any, client: Any, c: Container, tail_bytes: int) -> None:
    """Copy the end of a container's stdout and stderr into the task log (each at most ``tail_bytes``)."""
    for stream in ("stdout", "stderr"):
        try:
            text = client.container_log(c.id, stream, tail_bytes=tail_bytes)
        except XnatError as exc:
            log.warning("Could not read the %s of container %s: %s", stream, c.id, exc)
            continue
        if text.strip():
            log.error("---- %s of container %s (%s; last %d bytes at most) ----\n%s\n---- end of %s ----",
                      stream, c.id, c.status, tail_bytes, text.rstrip("\n"), stream)
        else:
            log.info("Container %s wrote nothing on %s", c.id, stream)


def event_error(event: Mapping[str, Any]) -> XnatError:
    """An ``error`` event of the trigger as the client's error class it names."""
    cls = ERROR_TYPES.get(str(event.get("error_type")), XnatError)
    return cls(str(event.get("message")))


def launch_failure(wf: Workflow) -> XnatContainerFailedError:
    """The error for a launch that failed before any container existed (the workflow's status and details)."""
    try:
        container_of_workflow(wf)
    except XnatContainerFailedError as exc:
        return exc
    return XnatContainerFailedError(f"The launch (workflow {wf.id}) failed: {wf.status}", workflow_id=wf.id,
                                    container_status=wf.status, details=wf.details)


def workflow_from_event(data: Mapping[str, Any]) -> Workflow:
    fields = {k: str(v) for k, v in data.items() if k in Workflow.__dataclass_fields__ and v is not None}
    return Workflow(**{"status": "", **fields})  # type: ignore[arg-type]


class XnatLaunchContainerOperator(XnatBaseOperator):
    """Run a Container Service wrapper on an experiment (or one of its scans) and wait until its container is over.

    The wrapper is named by ``command`` and ``wrapper`` (names) or by ``wrapper_id``. The object is ``project`` and
    ``experiment`` (a label or ID), with ``scan`` for a wrapper that runs on scans; ``experiment`` may also be an
    upstream XCom dict with ``label`` (or ``id``), ``project`` and optionally ``scan`` (what
    ``XnatArchiveOperator`` returns). Map it over experiments or scans with ``.partial(...).expand(...)``.
    ``inputs`` (templated) are the wrapper's other inputs, by name.

    **Checked before launching** (XNAT's REST launch checks none of it, answers success and fails later, or runs a
    wrapper the project has not enabled): the wrapper exists and runs on this object and its type, it is enabled for
    the project, ``inputs`` name only inputs it has and give every required one, and XNAT's launch UI resolves its
    inputs on the object. A refusal is :class:`XnatBadInputError`, with nothing launched (``check=False`` skips the
    enablement and resolution checks).

    **Retries never start a second container for the same launch.** The operator records in the task state store
    the launch it sends (before sending it, then with the workflow id XNAT answered), and a later try follows that
    workflow's container instead of launching, unless it failed or was killed. Without that record (a crash before
    it was written, another task), the project's containers of the same wrapper, object and inputs are looked up
    and one not failed or killed (running, or already ``Complete``) is adopted. A launch whose answer was lost is
    looked for the same way before it is reported.

    **Waiting** is deferred by default (``deferrable``): the trigger follows the workflow to its container and the
    container to its finalization, freeing the worker slot; ``deferrable=False`` polls in the worker with the same
    verdicts. ``wait_timeout`` (seconds) bounds the wait (the container keeps running; a retry adopts it).

    **Outcome.** ``Complete`` returns a small XCom (container id, backend id, workflow id, status, exit code, the
    output resources with their file counts, ``adopted``), also pushed under the key ``xnat_container``. Otherwise
    the end of the container's stdout and stderr (``log_tail_bytes`` each) goes to the task log, the same XCom is
    pushed under ``xnat_container`` (so an ``all_done`` task downstream can record failures) and the task fails with
    :class:`XnatContainerFailedError`: as :class:`XnatContainerTaskFailedError`, never retried, unless
    ``retry_failed_container`` (then the task's retries launch it again).

    :param experiment: the experiment to run on: a label or ID, or an upstream XCom dict with ``label`` (or
        ``id``), ``project`` and optionally ``scan``. Templated.
    :param project: the experiment's project (taken from an XCom dict when it has one). Templated.
    :param scan: a scan ID of the experiment, for a wrapper that runs on scans. Templated.
    :param command: the command's name (with ``wrapper``), or
    :param wrapper: the wrapper's name, within that command.
    :param wrapper_id: the wrapper's ID instead of the two names (needed when a name is ambiguous across command
        versions). Templated, like the names.
    :param inputs: the wrapper's other inputs by name (a dict, or its JSON). Templated.
    :param deferrable: wait in the triggerer (default) rather than polling in the worker.
    :param poll_interval: seconds between two looks at the launch or the container (default 30).
    :param wait_timeout: seconds to wait for the container at most (None: no limit); the container keeps running.
    :param check: check the wrapper's enablement for the project and XNAT's resolution of its inputs before
        launching (default True; the wrapper's existence, context and input names are always checked).
    :param retry_failed_container: let the task's retries launch again after a failed or killed container
        (default False: that failure is final).
    :param log_tail_bytes: how much of the end of a failed container's stdout and of its stderr goes to the log.
    :param outage_tolerance: seconds in a row XNAT may fail transiently while waiting before the task fails
        (default 3600; None: no limit).
    :param finalize_grace: seconds a container may sit in a terminal status before XNAT finalizes it (saves its
        logs, uploads its outputs); after that it is reported as it is (default 600; None: wait for the
        finalization).
    """

    template_fields: Sequence[str] = ("project", "experiment", "scan", "command", "wrapper", "wrapper_id", "inputs",
                                      "xnat_conn_id")
    template_fields_renderers = {"inputs": "json"}
    ui_color = "#d7e6c8"

    def __init__(self, *, experiment: str | Mapping[str, Any], project: str | None = None, scan: str | None = None,
                 command: str | None = None, wrapper: str | None = None, wrapper_id: int | str | None = None,
                 inputs: Mapping[str, Any] | str | None = None, deferrable: bool = True, poll_interval: float = 30.0,
                 wait_timeout: float | None = None, check: bool = True, retry_failed_container: bool = False,
                 log_tail_bytes: int = DEFAULT_LOG_TAIL, outage_tolerance: float | None = 3600.0,
                 finalize_grace: float | None = 600.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if wrapper_id is None and (command is None or wrapper is None):
            raise ValueError("Name the wrapper to launch: command and wrapper (names), or wrapper_id")
        if wrapper_id is not None and (command is not None or wrapper is not None):
            raise ValueError("Name the wrapper by command and wrapper, or by wrapper_id, not both")
        if not poll_interval > 0 or (wait_timeout is not None and not wait_timeout > 0):
            raise ValueError("poll_interval and wait_timeout must be positive numbers of seconds")
        if not log_tail_bytes > 0:
            raise ValueError("log_tail_bytes must be a positive number of bytes")
        self.project, self.experiment, self.scan = project, experiment, scan
        self.command, self.wrapper, self.wrapper_id = command, wrapper, wrapper_id
        self.inputs = inputs
        self.deferrable, self.poll_interval, self.wait_timeout = deferrable, poll_interval, wait_timeout
        self.check, self.retry_failed_container = check, retry_failed_container
        self.log_tail_bytes, self.outage_tolerance, self.finalize_grace = log_tail_bytes, outage_tolerance, \
            finalize_grace

    # ---- arguments ----------------------------------------------------------------------------------------------
    def target(self) -> dict[str, Any]:
        """Project, experiment and scan from the arguments, an upstream XCom dict filling in what is not given."""
        exp, project, scan = structured(self.experiment), self.project, self.scan
        if isinstance(exp, Mapping):
            project = project or exp.get("project")
            if scan in (None, ""):
                scan = exp.get("scan")
            exp = exp.get("label") or exp.get("id") or exp.get("experiment")
        if not project or not exp:
            raise XnatBadInputError(f"A container launch needs a project and an experiment (got project={project!r}, "
                                    f"experiment={self.experiment!r})")
        return {"project": str(project), "experiment": str(exp), "scan": None if scan in (None, "") else str(scan),
                "command": self.command, "wrapper": self.wrapper, "wrapper_id": self.wrapper_id}

    def given_inputs(self) -> dict[str, Any]:
        inputs = structured(self.inputs)
        if inputs in (None, ""):
            return {}
        if not isinstance(inputs, Mapping):
            raise XnatBadInputError(f"inputs must be a mapping of input names to values, not {inputs!r}")
        return dict(inputs)

    def _fail(self, exc: XnatContainerFailedError) -> NoReturn:
        raise container_failure(exc, not self.retry_failed_container)

    # ---- the work -----------------------------------------------------------------------------------------------
    @logs_out
    def execute(self, context: Any) -> Any:
        target = self.target()
        self.push_experiment_link(context, target["project"], target["experiment"])
        client = self.hook.get_conn()
        wid = None if self.wrapper_id in (None, "") else self.wrapper_id
        plan = client.plan_launch(target["project"], target["experiment"], target["scan"], command=self.command,
                                  wrapper=self.wrapper, wrapper_id=wid, inputs=self.given_inputs(), check=self.check)
        target.update(command=plan.wrapper.command_name, wrapper=plan.wrapper.name, wrapper_id=plan.wrapper.id)
        workflow_id, container_id, adopted = self._launch_or_adopt(context, client, plan)
        if adopted and container_id:  # an earlier try's container may be over already: no wait, no deferral
            done = client.get_container(container_id)
            if done.finalized:
                return self._finish(context, client, done, workflow_id, target, adopted)
        if self.deferrable:
            self.defer(trigger=XnatContainerTrigger(
                workflow_id=workflow_id, container_id=container_id, xnat_conn_id=self.xnat_conn_id,
                poll_interval=self.poll_interval, transient_error_timeout=self.outage_tolerance,
                finalize_grace=self.finalize_grace),
                method_name="execute_complete", kwargs={"target": target, "adopted": adopted},
                timeout=datetime.timedelta(seconds=self.wait_timeout) if self.wait_timeout else None)
        return self._wait(context, client, workflow_id, container_id, target, adopted)

    @logs_out
    def execute_complete(self, context: Any, event: dict[str, Any] | None = None,
                         target: dict[str, Any] | None = None, adopted: bool = False) -> Any:
        event = event or {"status": "error", "error_type": "XnatServerError", "message": "the trigger sent no event"}
        if event.get("status") == "error":
            raise event_error(event)
        if target is None:  # the deferral's kwargs did not come back (``dag.test()`` drops them): the same again
            target, adopted = self._resumed_target(context)
        client = self.hook.get_conn()
        if event.get("status") == "launch_failed":
            return self._launch_failed(context, workflow_from_event(event.get("workflow") or {}), target)
        container = client.get_container(event["container_id"])
        return self._finish(context, client, container, event.get("workflow_id"), target, adopted)

    def _resumed_target(self, context: Any) -> tuple[dict[str, Any], bool]:
        """The target and whether the launch was adopted, from the rendered arguments and the launch record."""
        store = context.get("task_state_store")
        saved = (store.get(STATE_KEY) if store is not None else None) or {}
        target = self.target()
        target.update({k: saved[k] for k in ("command", "wrapper", "wrapper_id") if saved.get(k) is not None})
        return target, bool(saved.get("adopted"))

    def _launch_or_adopt(self, context: Any, client: Any, plan: LaunchPlan) -> tuple[str | None, str | None, bool]:
        """(workflow id, container id, adopted): a launch of an earlier try followed, or a new launch."""
        store = context.get("task_state_store")
        key = {"wrapper_id": plan.wrapper.id, "project": plan.project, "params": plan.params,
               "command": plan.wrapper.command_name, "wrapper": plan.wrapper.name}
        saved = store.get(STATE_KEY) if store is not None else None
        same = isinstance(saved, dict) and all(saved.get(k) == v for k, v in key.items())
        if same and saved.get("workflow_id"):
            earlier = self._earlier_launch(client, str(saved["workflow_id"]))
            if earlier is not None:
                self._record(store, key, earlier[0], earlier[1], saved.get("sent_at"), adopted=True)
                return earlier[0], earlier[1], True
        existing = client.find_containers(plan, include_failed=True)
        live = [c for c in existing if not c.failed]
        if not live and same and saved.get("sent_at") and not saved.get("workflow_id"):
            # An earlier try sent this launch and never learnt its workflow (it died, or the answer was lost):
            # XNAT may still be resolving it, and its container appears only then.
            self.log.info("An earlier try sent this launch without learning its answer; looking for its container")
            found = client.find_launched(plan, {c.id for c in existing})
            live = [found] if found is not None and not found.failed else []
            existing += [found] if found is not None else []
        if live:
            c = live[0]
            self.log.info("Adopting container %s (%s, workflow %s) of %s on %s: launched earlier with the same "
                          "inputs; not launching again", c.id, c.status, c.workflow_id or "?", plan.wrapper.name,
                          plan.target.uri)
            self._record(store, key, c.workflow_id or None, c.key, adopted=True)
            return c.workflow_id or None, c.key, True
        self._record(store, key, None, None, sent_at=time.time())
        try:
            launch = client.launch(plan, before=existing)
        except XnatError as exc:
            if not is_ambiguous(exc):  # refused before queueing: nothing to look for on the next try
                self._record(store, key, None, None)
            raise
        self._record(store, key, launch.workflow_id, launch.container_id, sent_at=time.time())
        self.log.info("Launched %s (wrapper %s of %s) on %s in %s: workflow %s%s", plan.wrapper.name,
                      plan.wrapper.id, plan.wrapper.command_name, plan.target.uri, plan.project, launch.workflow_id,
                      " (found after a lost answer)" if launch.recovered else "")
        return launch.workflow_id, launch.container_id, False

    def _earlier_launch(self, client: Any, workflow_id: str) -> tuple[str, str | None] | None:
        """The earlier try's workflow and container, unless its launch or its container failed."""
        try:
            wf = client.get_workflow(workflow_id)
        except XnatNotFoundError:
            return None
        if wf.container_id:
            c = client.get_container(wf.container_id)
            if c.failed:
                self.log.info("The earlier try's container %s ended %s: launching again", c.id, c.status)
                return None
            self.log.info("Following the earlier try's container %s (%s, workflow %s): not launching again", c.id,
                          c.status, workflow_id)
            return workflow_id, wf.container_id
        if wf.failed:
            self.log.info("The earlier try's launch failed (%s: %s): launching again", wf.status, wf.details)
            return None
        self.log.info("Following the earlier try's launch (workflow %s, %s): not launching again", workflow_id,
                      wf.status)
        return workflow_id, None

    @staticmethod
    def _record(store: Any, key: dict[str, Any], workflow_id: str | None, container_id: str | None,
                sent_at: float | None = None, adopted: bool = False) -> None:
        if store is not None:
            store.set(STATE_KEY, {**key, "workflow_id": workflow_id, "container_id": container_id,
                                  "sent_at": sent_at, "adopted": adopted})

    def _wait(self, context: Any, client: Any, workflow_id: str | None, container_id: str | None,
              target: dict[str, Any], adopted: bool) -> Any:
        """Poll in the worker (``deferrable=False``) with the trigger's verdicts."""
        watch = ContainerWatch(workflow_id, container_id, self.finalize_grace)
        outage = Outage(self.outage_tolerance)
        started, last = time.monotonic(), None
        while True:
            try:
                progress = asyncio.run(watch.observe(client))
            except XnatServerError as exc:
                outage.failed(exc, "following the container")
                self.log.warning("XNAT did not answer while following the container (%s); trying again", exc)
            else:
                outage.answered()
                if progress.action == DONE:
                    assert progress.container is not None
                    return self._finish(context, client, progress.container, progress.workflow_id, target, adopted)
                if progress.action == LAUNCH_FAILED:
                    assert progress.workflow is not None
                    return self._launch_failed(context, progress.workflow, target)
                if progress.message != last:
                    self.log.info("%s", progress.message)
                    last = progress.message
            if self.wait_timeout is not None and time.monotonic() - started > self.wait_timeout:
                raise AirflowTaskTimeout(f"The container of workflow {watch.workflow_id} was not over after "
                                         f"{self.wait_timeout:g} s (it keeps running; a retry follows it)")
            time.sleep(self.poll_interval)

    def _finish(self, context: Any, client: Any, c: Container, workflow_id: str | None, target: dict[str, Any],
                adopted: bool) -> dict[str, Any]:
        result = container_result(client, c, workflow_id, target, adopted)
        context["ti"].xcom_push(key=XCOM_KEY, value=result)
        if c.succeeded:
            outputs = ", ".join(f"{o['label']} ({o['files']} files)" for o in result["outputs"]) or "none"
            self.log.info("Container %s is %s (exit code %s); outputs: %s", c.id, c.status, c.exit_code, outputs)
            return result
        log_container_output(self.log, client, c, self.log_tail_bytes)
        self._fail(failure_of(c, workflow_id))

    def _launch_failed(self, context: Any, wf: Workflow, target: dict[str, Any]) -> NoReturn:
        context["ti"].xcom_push(key=XCOM_KEY, value={
            "container_id": None, "backend_id": None, "workflow_id": wf.id, "status": wf.status, "exit_code": None,
            "succeeded": False, "killed": False, "wrapper_id": target.get("wrapper_id"),
            "command": target.get("command"), "wrapper": target.get("wrapper"), "project": target.get("project"),
            "experiment": target.get("experiment"), "scan": target.get("scan"), "outputs": [], "adopted": False,
            "details": wf.details})
        self.log.error("The launch failed before any container existed: workflow %s is %s: %s", wf.id, wf.status,
                       wf.details)
        self._fail(launch_failure(wf))
