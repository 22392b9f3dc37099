"""XNAT's Container Service answers read into :mod:`.container_models` values, and the lookups that read them.

The parsers are tolerant where XNAT is inconsistent (kebab-case names, nulls omitted, numbers as text) and strict
where a wrong guess would mislead (a launch report without a workflow, a document that is not a workflow). The
lookups (:func:`workflow_lookup`, :func:`container_lookup`) are generators of reads, as in :mod:`.protocol`, so the
sync client and the async client that triggers poll with run the same code.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .container_models import (
    TO_BE_ASSIGNED,
    AvailableWrapper,
    Command,
    Container,
    ContainerInput,
    ContainerOutput,
    HistoryEntry,
    Launch,
    LaunchPlan,
    OutputHandler,
    Workflow,
    Wrapper,
    WrapperInput,
)
from .errors import XnatBadInputError, XnatContainerFailedError, XnatServerError
from .protocol import Lookup, Rows, json_answer, q


def text_of(value: Any) -> str:
    """A JSON value as text, None as empty: XNAT omits nulls, or writes them, or writes numbers as text."""
    return "" if value is None else str(value)


def int_of(value: Any) -> int:
    """A JSON value as a number, 0 when it is none (an id XNAT has not assigned)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def parse_command(d: Mapping[str, Any]) -> Command:
    """A command as ``GET /xapi/commands`` writes it (kebab-case names, nulls omitted), wrappers included."""
    command_inputs = [i for i in d.get("inputs") or [] if isinstance(i, dict)]
    wrappers = []
    for w in d.get("xnat") or []:
        ext = [i for i in w.get("external-inputs") or [] if isinstance(i, dict)]
        der = [i for i in w.get("derived-inputs") or [] if isinstance(i, dict)]
        provides = {i.get("provides-value-for-command-input"): i.get("name") for i in ext + der
                    if i.get("provides-value-for-command-input")}

        def one(i: dict, kind: str, provides: dict = provides) -> WrapperInput:
            # Wrapper inputs are required unless they say otherwise; command inputs are not (Command.java).
            required = i.get("required")
            return WrapperInput(
                name=text_of(i.get("name")), kind=kind, type=text_of(i.get("type")) or "string",
                required=bool(required) if required is not None else kind != "command",
                default=None if i.get("default-value") is None else text_of(i.get("default-value")),
                description=text_of(i.get("description")),
                provided_by=provides.get(i.get("name")) if kind == "command" else None,
                derived_from=i.get("derived-from-wrapper-input"), sensitive=bool(i.get("sensitive")))

        inputs = [one(i, "external") for i in ext] + [one(i, "derived") for i in der] + \
            [one(i, "command") for i in command_inputs]
        handlers = tuple(OutputHandler(
            name=text_of(h.get("name")), accepts=text_of(h.get("accepts-command-output")),
            parent=text_of(h.get("as-a-child-of")), type=text_of(h.get("type")) or "Resource",
            label=text_of(h.get("label")), format=text_of(h.get("format")), content=text_of(h.get("content")))
            for h in w.get("output-handlers") or [])
        wrappers.append(Wrapper(
            id=int_of(w.get("id")), name=text_of(w.get("name")), command_id=int_of(d.get("id")),
            command_name=text_of(d.get("name")), command_version=text_of(d.get("version")),
            image=text_of(d.get("image")),
            label=text_of(w.get("label")), description=text_of(w.get("description")),
            contexts=tuple(text_of(c) for c in w.get("contexts") or []), inputs=tuple(inputs),
            output_handlers=handlers))
    return Command(id=int_of(d.get("id")), name=text_of(d.get("name")), version=text_of(d.get("version")),
                   image=text_of(d.get("image")), label=text_of(d.get("label")),
                   description=text_of(d.get("description")),
                   wrappers=tuple(wrappers))


def parse_available(rows: Iterable[Mapping[str, Any]]) -> list[AvailableWrapper]:
    return [AvailableWrapper(
        command_id=int_of(r.get("command-id")), command_name=text_of(r.get("command-name")),
        wrapper_id=int_of(r.get("wrapper-id")), wrapper_name=text_of(r.get("wrapper-name")),
        enabled=r.get("enabled") is True, root_element=text_of(r.get("root-element-name")),
        contexts=tuple(text_of(c) for c in r.get("wrapper-contexts") or []), image=text_of(r.get("image-name")),
        label=text_of(r.get("wrapper-label"))) for r in rows if isinstance(r, dict)]


def parse_launch_report(data: Any, plan: LaunchPlan, method: str, path: str) -> Launch:
    """A launch's 200 answer (``LaunchReport.Success``). ``To be assigned`` means no workflow was created: the
    parameters had no value under the root element's name, and the launch will fail unseen."""
    if not isinstance(data, dict) or data.get("status") != "success":
        raise XnatServerError(f"{method} {path}: not a launch report: {str(data)[:200]!r}", method=method, path=path)
    workflow = text_of(data.get("workflow-id")).strip()
    container = text_of(data.get("container-id") or data.get("service-id")).strip()  # CS before 3.0
    if container:
        return Launch(workflow or None, plan.wrapper.id, plan.project, dict(plan.params), container_id=container)
    if not workflow or workflow == TO_BE_ASSIGNED:
        raise XnatBadInputError(
            f"{method} {path}: XNAT created no workflow for the launch (workflow-id {workflow or 'missing'!r}): its "
            f"parameters have no value for the root element {plan.root_element!r}, so the launch would fail unseen",
            method=method, path=path)
    return Launch(workflow, plan.wrapper.id, plan.project, dict(plan.params))


def parse_workflow(data: Any, workflow_id: str, path: str = "") -> Workflow:
    try:
        fields = next(i for i in data["items"] if not i.get("meta", {}).get("isHistory"))["data_fields"]
    except (KeyError, TypeError, StopIteration) as exc:
        raise XnatServerError(f"GET {path}: expected a workflow document", method="GET", path=path) from exc
    return Workflow(
        id=text_of(fields.get("wrk_workflowData_id") or workflow_id), status=text_of(fields.get("status")),
        details=text_of(fields.get("details")), comments=text_of(fields.get("comments")),
        xnat_id=text_of(fields.get("ID")),
        project=text_of(fields.get("ExternalID")), pipeline_name=text_of(fields.get("pipeline_name")),
        launch_time=text_of(fields.get("launch_time")), scan_id=text_of(fields.get("scan_id")),
        job_id=text_of(fields.get("jobID")))


def container_of_workflow(wf: Workflow) -> str | None:
    """The workflow's container id; None while the launch is queued or resolving; an
    :class:`XnatContainerFailedError` when it failed before any container existed."""
    if wf.container_id:
        return wf.container_id
    if wf.failed:
        raise XnatContainerFailedError(
            f"The launch of {wf.pipeline_name or 'the wrapper'} (workflow {wf.id}) failed before any container "
            f"existed: {wf.status}" + (f": {wf.details}" if wf.details else ""),
            workflow_id=wf.id, container_status=wf.status, details=wf.details)
    return None

def parse_container(d: Any, path: str = "") -> Container:
    if not isinstance(d, dict) or "id" not in d:
        raise XnatServerError(f"GET {path}: expected a container, got {str(d)[:120]!r}", method="GET", path=path)
    history = tuple(HistoryEntry(
        id=int_of(h.get("id")), status=text_of(h.get("status")), entity_type=text_of(h.get("entity-type")),
        entity_id=text_of(h.get("entity-id")), time_recorded=text_of(h.get("time-recorded")),
        message=text_of(h.get("message")),
        exit_code=None if h.get("exitCode") in (None, "") else text_of(h.get("exitCode")))
        for h in d.get("history") or [] if isinstance(h, dict))
    outputs = tuple(ContainerOutput(
        name=text_of(o.get("name")), type=text_of(o.get("type")) or "Resource", label=text_of(o.get("label")),
        handled_by=text_of(o.get("handled-by")), required=bool(o.get("required")))
        for o in d.get("outputs") or [] if isinstance(o, dict))
    inputs = tuple(ContainerInput(type=text_of(i.get("type")), name=text_of(i.get("name")),
                                  value=text_of(i.get("value"))) for i in d.get("inputs") or [] if isinstance(i, dict))
    return Container(
        id=text_of(d.get("id")), backend_id=text_of(d.get("container-id") or d.get("service-id")),
        status=text_of(d.get("status")), command_id=int_of(d.get("command-id")), wrapper_id=int_of(d.get("wrapper-id")),
        workflow_id=text_of(d.get("workflow-id")), project=text_of(d.get("project")), user=text_of(d.get("user-id")),
        image=text_of(d.get("docker-image")), status_time=text_of(d.get("status-time")), history=history,
        outputs=outputs, inputs=inputs,
        labels={text_of(k): text_of(v) for k, v in (d.get("container-labels") or {}).items()})


# ---- lookups, for either client -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Json(Rows):
    """Read the JSON answer at ``path`` (the Container Service's ``/xapi`` answers, a workflow document)."""

    def query(self) -> dict[str, str]:
        return dict(self.params)

    def parse(self, body: str | bytes) -> Any:
        return json_answer(body, "GET", self.path)


def check_id(value: Any, what: str) -> str:
    """An id to put in a path: refused (before any request) when empty or when it would change the path."""
    text = text_of(value).strip()
    if not text or "/" in text:
        raise XnatBadInputError(f"Invalid {what} {value!r}")
    return text


def workflow_lookup(workflow_id: str | int) -> Lookup[Workflow]:
    """XNAT core's ``GET /data/workflows/{id}?format=json`` (``WorkflowResource``)."""
    wid = check_id(workflow_id, "workflow id")
    path = f"/data/workflows/{q(wid)}"
    return parse_workflow((yield Json(path, (("format", "json"),))), wid, path)


def container_lookup(container_id: str | int) -> Lookup[Container]:
    """``GET /xapi/containers/{id}``: by database id or backend id."""
    path = f"/xapi/containers/{q(check_id(container_id, 'container id'))}"
    return parse_container((yield Json(path)), path)


def workflow_container_lookup(workflow_id: str | int) -> Lookup[str | None]:
    return container_of_workflow((yield from workflow_lookup(workflow_id)))
