"""Running XNAT Container Service pipelines: commands and wrappers, checks, launches, workflows, containers.

The Container Service plugin (``NrgXnat/container-service`` 3.x; ``docs/container-service.md`` has its API as its
source answers it, with line references) runs a *command* (a Docker image and its JSON description) through one of
its *wrappers* (which XNAT object it runs on, where its outputs go). What a client must know, and what this module
does about it:

- **A launch answers a workflow id, never a container id** (since CS 3.0). The launch is asynchronous: it only
  creates a workflow (``wrk:workflowData``) and queues a request; the command is resolved and the container created
  later. So :meth:`ContainerMixin.launch` returns a :class:`Launch` with the workflow id, and the container is found
  by reading ``GET /data/workflows/{id}?format=json`` until its ``comments`` hold the container's id, or its status
  says the launch failed before any container existed (``Failed (...)``, ``details`` says why):
  :meth:`~ContainerMixin.workflow_container`.
- **A launch answers success for almost any input** (a missing input, a wrapper not enabled, an object that does
  not exist: the failure shows up later, in the workflow), and **the REST launch does not check where a wrapper is
  enabled**. So :meth:`~ContainerMixin.plan_launch` checks, before anything is launched, that the wrapper exists,
  runs on the object's type, is enabled for the project, and gets every required input (and no unknown one), and
  asks XNAT's launch UI to pre-resolve the inputs; a refusal is an :class:`XnatBadInputError` and nothing is sent.
- **A container is over when it is finalized**: its status is terminal (starts with ``Complete``, ``Failed`` or
  ``Killed``) *and* its newest history entry is a ``system`` entry with that status (logs saved, outputs
  uploaded; a killed container goes ``Failed (Killed)`` before finalization writes ``Failed``). The exit code is
  on history entries (the newest that has one). Success is ``Complete``.
- **Outputs** are resources named by the output handler's label on the object the handler names
  (``as-a-child-of``); XNAT no longer records their URIs, so :meth:`~ContainerMixin.container_outputs` looks them up.
- **Look before launching.** A container's ``inputs`` list the launch's raw parameters, so the containers already
  launched for the same wrapper, object and inputs can be found (:meth:`~ContainerMixin.find_containers`): what a
  retried task adopts instead of launching a second container. A launch whose answer was lost (a gateway's 504) is
  looked for the same way before it is reported as failed.

The parsing and the decisions are plain functions and lookups (no I/O), shared with the async client that
triggers poll with (:class:`~xnat_provider.client.async_client.AsyncXnatClient`): :func:`workflow_lookup`,
:func:`container_lookup` and :class:`ContainerWatch`.
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .downloads import BROKEN
from .errors import (
    XnatBadInputError,
    XnatConflictError,
    XnatContainerFailedError,
    XnatError,
    XnatNotFoundError,
    XnatServerError,
    XnatTransferError,
)
from .models import Experiment, RemoteFile
from .protocol import Lookup, Rows, experiment_lookup, is_ambiguous, json_answer, q, raise_for_answer, scans_lookup
from .transport import XnatTransport

TERMINAL_PREFIXES = ("Complete", "Failed", "Killed")  # ContainerUtils.statusIsTerminal: startsWith
SUCCESS = "Complete"
TO_BE_ASSIGNED = "To be assigned"  # a launch whose parameters had no value for the root element: no workflow
SESSION_ROOT, SCAN_ROOT = "Session", "Scan"
JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


def status_is_terminal(status: str | None) -> bool:
    """``Complete``, ``Failed`` (any ``Failed (...)``) or ``Killed``: the container will not run again."""
    return bool(status) and str(status).startswith(TERMINAL_PREFIXES)


def status_is_failed(status: str | None) -> bool:
    """A terminal status other than success: what a retry does not adopt."""
    return status_is_terminal(status) and status != SUCCESS


class _Json:
    """``to_dict``: the dataclass as JSON-safe values (tuples as lists), for XComs and trigger events."""

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))  # type: ignore[call-overload]


def _text(value: Any) -> str:
    return "" if value is None else str(value)


# ---- commands and wrappers --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WrapperInput(_Json):
    """One input of a wrapper: its ``external`` inputs (the root element, e.g. ``session`` or ``scan``), its
    ``derived`` inputs (found by XNAT from another input, e.g. a scan's DICOM resource), or a ``command`` input
    (a value the command line takes; ``provided_by`` names the wrapper input that gives it, if one does)."""

    name: str
    kind: str
    type: str
    required: bool
    default: str | None = None
    description: str = ""
    provided_by: str | None = None
    derived_from: str | None = None
    sensitive: bool = False


@dataclass(frozen=True)
class OutputHandler(_Json):
    """Where an output goes: a resource labelled ``label`` on the object of the wrapper input ``parent``."""

    name: str
    accepts: str
    parent: str
    type: str = "Resource"
    label: str = ""
    format: str = ""
    content: str = ""


@dataclass(frozen=True)
class Wrapper(_Json):
    """A command's wrapper: what :meth:`ContainerMixin.launch` runs. ``id`` is what every launch path takes."""

    id: int
    name: str
    command_id: int
    command_name: str
    command_version: str = ""
    image: str = ""
    label: str = ""
    description: str = ""
    contexts: tuple[str, ...] = ()
    inputs: tuple[WrapperInput, ...] = ()
    output_handlers: tuple[OutputHandler, ...] = ()

    @property
    def root_input(self) -> WrapperInput | None:
        """The wrapper's first external input: the object it runs on (XNAT's ``root-element-name``)."""
        return next((i for i in self.inputs if i.kind == "external"), None)

    @property
    def root_element(self) -> str:
        return self.root_input.name if self.root_input else ""

    @property
    def settable_inputs(self) -> list[WrapperInput]:
        """What a launch may give besides the root element: command inputs no wrapper input provides, and other
        external inputs (derived inputs are found by XNAT, though a value given for one is taken)."""
        return [i for i in self.inputs if (i.kind == "command" and not i.provided_by)
                or (i.kind == "external" and i.name != self.root_element)]

    def input_problems(self, given: Mapping[str, Any]) -> list[str]:
        """What is wrong with ``given`` as this wrapper's inputs: the root element given as an input, names the
        wrapper does not have, required inputs without a value (and no default)."""
        root, problems = self.root_element, []
        if root in given:
            problems.append(f"{root!r} is the wrapper's root element: it comes from the experiment (or scan) "
                            "launched on, not from inputs")
        known = {i.name for i in self.inputs}
        unknown = sorted(set(given) - known - {root})
        if unknown:
            names = ", ".join(sorted(i.name for i in self.settable_inputs)) or "none"
            problems.append(f"unknown input(s) {', '.join(unknown)} (the inputs a launch can set: {names})")
        missing = [i.name for i in self.settable_inputs if i.required and i.default in (None, "")
                   and given.get(i.name) in (None, "")]
        if missing:
            problems.append(f"missing required input(s) {', '.join(missing)}")
        return problems


@dataclass(frozen=True)
class Command(_Json):
    id: int
    name: str
    version: str = ""
    image: str = ""
    label: str = ""
    description: str = ""
    wrappers: tuple[Wrapper, ...] = ()


@dataclass(frozen=True)
class AvailableWrapper(_Json):
    """A row of XNAT's "what can run on this type here" listing (``CommandSummaryForContext``): ``enabled`` is
    for the project asked about (enabled on the site and explicitly for the project), or for the site."""

    command_id: int
    command_name: str
    wrapper_id: int
    wrapper_name: str
    enabled: bool
    root_element: str = ""
    contexts: tuple[str, ...] = ()
    image: str = ""
    label: str = ""


@dataclass(frozen=True)
class EnabledReport(_Json):
    """Where a wrapper is enabled (``ProjectEnabledReport``): a wrapper runs from the UI and from events only when
    both are true; the REST launch checks neither (the client does, before launching)."""

    wrapper_id: int
    project: str
    site: bool
    project_enabled: bool

    @property
    def enabled(self) -> bool:
        return self.site and self.project_enabled


def _int(value: Any) -> int:
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
                name=_text(i.get("name")), kind=kind, type=_text(i.get("type")) or "string",
                required=bool(required) if required is not None else kind != "command",
                default=None if i.get("default-value") is None else _text(i.get("default-value")),
                description=_text(i.get("description")),
                provided_by=provides.get(i.get("name")) if kind == "command" else None,
                derived_from=i.get("derived-from-wrapper-input"), sensitive=bool(i.get("sensitive")))

        inputs = [one(i, "external") for i in ext] + [one(i, "derived") for i in der] + \
            [one(i, "command") for i in command_inputs]
        handlers = tuple(OutputHandler(
            name=_text(h.get("name")), accepts=_text(h.get("accepts-command-output")),
            parent=_text(h.get("as-a-child-of")), type=_text(h.get("type")) or "Resource", label=_text(h.get("label")),
            format=_text(h.get("format")), content=_text(h.get("content"))) for h in w.get("output-handlers") or [])
        wrappers.append(Wrapper(
            id=_int(w.get("id")), name=_text(w.get("name")), command_id=_int(d.get("id")),
            command_name=_text(d.get("name")), command_version=_text(d.get("version")), image=_text(d.get("image")),
            label=_text(w.get("label")), description=_text(w.get("description")),
            contexts=tuple(_text(c) for c in w.get("contexts") or []), inputs=tuple(inputs),
            output_handlers=handlers))
    return Command(id=_int(d.get("id")), name=_text(d.get("name")), version=_text(d.get("version")),
                   image=_text(d.get("image")), label=_text(d.get("label")), description=_text(d.get("description")),
                   wrappers=tuple(wrappers))


def parse_available(rows: Iterable[Mapping[str, Any]]) -> list[AvailableWrapper]:
    return [AvailableWrapper(
        command_id=_int(r.get("command-id")), command_name=_text(r.get("command-name")),
        wrapper_id=_int(r.get("wrapper-id")), wrapper_name=_text(r.get("wrapper-name")),
        enabled=r.get("enabled") is True, root_element=_text(r.get("root-element-name")),
        contexts=tuple(_text(c) for c in r.get("wrapper-contexts") or []), image=_text(r.get("image-name")),
        label=_text(r.get("wrapper-label"))) for r in rows if isinstance(r, dict)]


# ---- what to launch, and on what ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class LaunchTarget(_Json):
    """The object a wrapper runs on: an experiment, or one of its scans."""

    project: str
    experiment_id: str
    experiment_label: str
    xsi_type: str  # the experiment's, or the scan's when ``scan`` is given
    scan: str | None = None

    @property
    def kind(self) -> str:
        return SCAN_ROOT if self.scan is not None else SESSION_ROOT

    @property
    def uri(self) -> str:
        """How the plugin names the object (``Session``/``Scan.getUri``)."""
        uri = f"/archive/experiments/{self.experiment_id}"
        return uri + f"/scans/{self.scan}" if self.scan is not None else uri

    @property
    def path(self) -> str:
        """Its path under ``/data`` (where its output resources are read)."""
        return "/data" + self.uri[len("/archive"):]

    @property
    def root_value(self) -> str:
        """The launch's value for the root element: a session by ID, a scan by URI (the plugin looks a scan up by
        URI only, ``Scan.idToModelObject`` being null)."""
        return self.uri if self.scan is not None else self.experiment_id


@dataclass(frozen=True)
class LaunchPlan(_Json):
    """A checked launch: the wrapper, the object, and the parameters the launch sends (the root element's value
    and the inputs, all text: the plugin's body is a ``Map<String, String>``)."""

    wrapper: Wrapper
    target: LaunchTarget
    params: dict[str, str]

    @property
    def project(self) -> str:
        return self.target.project

    @property
    def root_element(self) -> str:
        return self.wrapper.root_element


@dataclass(frozen=True)
class Launch(_Json):
    """What a launch answered: the workflow to follow (or, on a site older than CS 3.0, the container)."""

    workflow_id: str | None
    wrapper_id: int
    project: str
    params: dict[str, str]
    container_id: str | None = None
    recovered: bool = False  # the answer was lost; the launch's container was found afterwards


@dataclass(frozen=True)
class BulkLaunch(_Json):
    """A bulk launch's report: XNAT launches each target in the background, so no workflow ids come back; each
    target's container is found with :meth:`ContainerMixin.find_containers` and its plan."""

    id: str
    pipeline_name: str
    plans: tuple[LaunchPlan, ...]
    failures: tuple[dict, ...] = ()


def input_text(value: Any) -> str:
    """An input's value as the launch sends it (JSON booleans as ``true``/``false``, as the plugin reads them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list, tuple)):
        raise XnatBadInputError(f"Container inputs are text, numbers or booleans (the plugin's launch body is a "
                                f"Map<String, String>), not {type(value).__name__}: {value!r}")
    return str(value)


def launch_params(wrapper: Wrapper, target: LaunchTarget, inputs: Mapping[str, Any] | None) -> dict[str, str]:
    given = {k: input_text(v) for k, v in (inputs or {}).items() if v is not None}
    return {wrapper.root_element: target.root_value, **given}


def parse_launch_report(data: Any, plan: LaunchPlan, method: str, path: str) -> Launch:
    """A launch's 200 answer (``LaunchReport.Success``). ``To be assigned`` means no workflow was created: the
    parameters had no value under the root element's name, and the launch will fail unseen."""
    if not isinstance(data, dict) or data.get("status") != "success":
        raise XnatServerError(f"{method} {path}: not a launch report: {str(data)[:200]!r}", method=method, path=path)
    workflow = _text(data.get("workflow-id")).strip()
    container = _text(data.get("container-id") or data.get("service-id")).strip()  # CS before 3.0
    if container:
        return Launch(workflow or None, plan.wrapper.id, plan.project, dict(plan.params), container_id=container)
    if not workflow or workflow == TO_BE_ASSIGNED:
        raise XnatBadInputError(
            f"{method} {path}: XNAT created no workflow for the launch (workflow-id {workflow or 'missing'!r}): its "
            f"parameters have no value for the root element {plan.root_element!r}, so the launch would fail unseen",
            method=method, path=path)
    return Launch(workflow, plan.wrapper.id, plan.project, dict(plan.params))


# ---- workflows and containers ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Workflow(_Json):
    """A launch's workflow (``wrk:workflowData``): ``comments`` gets the container's id once it exists."""

    id: str
    status: str
    details: str = ""
    comments: str = ""
    xnat_id: str = ""
    project: str = ""
    pipeline_name: str = ""
    launch_time: str = ""
    scan_id: str = ""
    job_id: str = ""

    @property
    def container_id(self) -> str | None:
        """The container's backend id (usable in every ``/xapi/containers/{id}`` call), once it exists."""
        return self.comments.strip() or None

    @property
    def failed(self) -> bool:
        """The launch failed before any container existed (``Failed (Command resolution)``, ``Failed (Container
        launch)``...): ``details`` says why."""
        return self.status.startswith("Failed") and self.container_id is None


def parse_workflow(data: Any, workflow_id: str, path: str = "") -> Workflow:
    try:
        fields = next(i for i in data["items"] if not i.get("meta", {}).get("isHistory"))["data_fields"]
    except (KeyError, TypeError, StopIteration) as exc:
        raise XnatServerError(f"GET {path}: expected a workflow document", method="GET", path=path) from exc
    return Workflow(
        id=_text(fields.get("wrk_workflowData_id") or workflow_id), status=_text(fields.get("status")),
        details=_text(fields.get("details")), comments=_text(fields.get("comments")), xnat_id=_text(fields.get("ID")),
        project=_text(fields.get("ExternalID")), pipeline_name=_text(fields.get("pipeline_name")),
        launch_time=_text(fields.get("launch_time")), scan_id=_text(fields.get("scan_id")),
        job_id=_text(fields.get("jobID")))


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


@dataclass(frozen=True)
class HistoryEntry(_Json):
    id: int
    status: str
    entity_type: str = ""
    entity_id: str = ""
    time_recorded: str = ""
    message: str = ""
    exit_code: str | None = None


@dataclass(frozen=True)
class ContainerOutput(_Json):
    """One (output, handler) pair of a container: uploaded (type ``Resource``) as ``label`` on ``handled_by``."""

    name: str
    type: str
    label: str
    handled_by: str
    required: bool = False


@dataclass(frozen=True)
class ContainerInput(_Json):
    """One of a container's ``inputs``: ``raw`` (a launch parameter as given), ``command``, ``wrapper-external``
    or ``wrapper-derived`` (a resolved value: an object's URI for XNAT objects)."""

    type: str
    name: str
    value: str


@dataclass(frozen=True)
class Container(_Json):
    """A container as ``GET /xapi/containers/{id}`` writes it. ``id`` is the database id, ``backend_id`` the
    Docker container (or Swarm service) id; both are accepted wherever XNAT takes a container id."""

    id: str
    backend_id: str
    status: str
    command_id: int = 0
    wrapper_id: int = 0
    workflow_id: str = ""
    project: str = ""
    user: str = ""
    image: str = ""
    status_time: str = ""
    history: tuple[HistoryEntry, ...] = ()
    outputs: tuple[ContainerOutput, ...] = ()
    inputs: tuple[ContainerInput, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.backend_id or self.id

    @property
    def terminal(self) -> bool:
        return status_is_terminal(self.status)

    @property
    def succeeded(self) -> bool:
        return self.status == SUCCESS

    @property
    def failed(self) -> bool:
        return status_is_failed(self.status)

    @property
    def finalized(self) -> bool:
        """Terminal, and the newest history entry is the ``system`` entry that wrote that status: logs saved,
        outputs uploaded. (A kill makes the status ``Failed (Killed)`` at once; finalization comes after.)"""
        if not self.terminal or not self.history:
            return False
        last = max(self.history, key=lambda h: h.id)
        return last.entity_type == "system" and last.status == self.status

    @property
    def exit_code(self) -> str | None:
        """``Container.exitCode()``: the newest history entry that has one (Docker's ``die`` event, repeated on
        a final ``Failed`` entry)."""
        for h in sorted(self.history, key=lambda h: h.id, reverse=True):
            if h.exit_code not in (None, ""):
                return h.exit_code
        return None

    @property
    def killed(self) -> bool:
        """Someone killed it (a ``kill`` entry in the history; a killed Docker container ends ``Failed``)."""
        return any(h.status == "kill" for h in self.history) or self.status.startswith(("Killed", "Failed (Killed"))

    @property
    def failure_message(self) -> str:
        """The message of the entry that failed it (``Non-zero exit code...``, ``Failed to upload...``)."""
        for h in sorted(self.history, key=lambda h: h.id, reverse=True):
            if h.entity_type == "system" and status_is_failed(h.status) and h.message:
                return h.message
        return ""

    @property
    def raw_inputs(self) -> dict[str, str]:
        """The launch's parameters as given (empty when XNAT does not show them: a sensitive input, or a container
        someone else launched)."""
        return {i.name: i.value for i in self.inputs if i.type == "raw"}

    @property
    def resolved_inputs(self) -> dict[str, str]:
        return {i.name: i.value for i in self.inputs if i.type != "raw"}


def parse_container(d: Any, path: str = "") -> Container:
    if not isinstance(d, dict) or "id" not in d:
        raise XnatServerError(f"GET {path}: expected a container, got {str(d)[:120]!r}", method="GET", path=path)
    history = tuple(HistoryEntry(
        id=_int(h.get("id")), status=_text(h.get("status")), entity_type=_text(h.get("entity-type")),
        entity_id=_text(h.get("entity-id")), time_recorded=_text(h.get("time-recorded")),
        message=_text(h.get("message")),
        exit_code=None if h.get("exitCode") in (None, "") else _text(h.get("exitCode")))
        for h in d.get("history") or [] if isinstance(h, dict))
    outputs = tuple(ContainerOutput(
        name=_text(o.get("name")), type=_text(o.get("type")) or "Resource", label=_text(o.get("label")),
        handled_by=_text(o.get("handled-by")), required=bool(o.get("required")))
        for o in d.get("outputs") or [] if isinstance(o, dict))
    inputs = tuple(ContainerInput(type=_text(i.get("type")), name=_text(i.get("name")), value=_text(i.get("value")))
                   for i in d.get("inputs") or [] if isinstance(i, dict))
    return Container(
        id=_text(d.get("id")), backend_id=_text(d.get("container-id") or d.get("service-id")),
        status=_text(d.get("status")), command_id=_int(d.get("command-id")), wrapper_id=_int(d.get("wrapper-id")),
        workflow_id=_text(d.get("workflow-id")), project=_text(d.get("project")), user=_text(d.get("user-id")),
        image=_text(d.get("docker-image")), status_time=_text(d.get("status-time")), history=history,
        outputs=outputs, inputs=inputs,
        labels={_text(k): _text(v) for k, v in (d.get("container-labels") or {}).items()})


def _norm_uri(uri: str) -> str:
    for prefix in ("/data", "/archive", "/REST"):
        if uri.startswith(prefix + "/"):
            return uri[len(prefix):]
    return uri


def container_matches(c: Container, plan: LaunchPlan) -> bool:
    """Whether ``c`` is a launch of ``plan``: the same wrapper, and the same parameters (the raw inputs, or where
    XNAT hides those, the resolved root element and the other inputs' values). A container whose inputs XNAT does
    not show at all (someone else's) never matches."""
    if c.wrapper_id != plan.wrapper.id or (c.project and c.project != plan.project):
        return False
    raw = c.raw_inputs
    if raw:
        return raw == plan.params
    resolved = c.resolved_inputs
    root = resolved.get(plan.root_element)
    if not root or _norm_uri(root) != _norm_uri(plan.target.uri):
        return False
    return all(resolved.get(k) == v for k, v in plan.params.items() if k != plan.root_element)


# ---- lookups, for either client -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Json(Rows):
    """Read the JSON answer at ``path`` (the Container Service's ``/xapi`` answers, a workflow document)."""

    def query(self) -> dict[str, str]:
        return dict(self.params)

    def parse(self, body: str | bytes) -> Any:
        return json_answer(body, "GET", self.path)


def _check_id(value: Any, what: str) -> str:
    text = _text(value).strip()
    if not text or "/" in text:
        raise XnatBadInputError(f"Invalid {what} {value!r}")
    return text


def workflow_lookup(workflow_id: str | int) -> Lookup[Workflow]:
    """XNAT core's ``GET /data/workflows/{id}?format=json`` (``WorkflowResource``)."""
    wid = _check_id(workflow_id, "workflow id")
    path = f"/data/workflows/{q(wid)}"
    return parse_workflow((yield Json(path, (("format", "json"),))), wid, path)


def container_lookup(container_id: str | int) -> Lookup[Container]:
    """``GET /xapi/containers/{id}``: by database id or backend id."""
    path = f"/xapi/containers/{q(_check_id(container_id, 'container id'))}"
    return parse_container((yield Json(path)), path)


def workflow_container_lookup(workflow_id: str | int) -> Lookup[str | None]:
    return container_of_workflow((yield from workflow_lookup(workflow_id)))


# ---- following a launch to its end: one logic for operators, sensors and triggers --------------------------------

WAIT, DONE, LAUNCH_FAILED = "wait", "done", "launch_failed"


@dataclass
class ContainerProgress:
    """One look at a launch: ``wait`` (queued, resolving, running, finalizing), ``done`` (finalized: success or
    not, see ``container``) or ``launch_failed`` (no container will come; ``workflow`` says why)."""

    action: str
    message: str
    workflow_id: str | None = None
    container_id: str | None = None
    container: Container | None = None
    workflow: Workflow | None = None


async def _value(result: Any) -> Any:
    return await result if inspect.isawaitable(result) else result


@dataclass
class ContainerWatch:
    """Follows a launch: its workflow until the container exists, then the container until it is finalized.

    Works with either client (the sync one under ``asyncio.run``, the async one in a trigger), so every mode judges
    alike. The state (:meth:`to_dict`) is JSON-safe, for a trigger's arguments. ``finalize_grace``: how long a
    terminal container may stay unfinalized before it is taken as done anyway (None: wait for finalization)."""

    workflow_id: str | None = None
    container_id: str | None = None
    finalize_grace: float | None = 600.0
    terminal_since: float | None = None

    def __post_init__(self) -> None:
        if not self.workflow_id and not self.container_id:
            raise XnatBadInputError("A container to follow needs its workflow id or its container id")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    async def observe(self, xnat: Any, now: float | None = None) -> ContainerProgress:
        now = time.time() if now is None else now
        wf = None
        if not self.container_id:
            wf = await _value(xnat.get_workflow(self.workflow_id))
            if wf.failed:
                return ContainerProgress(LAUNCH_FAILED, f"workflow {wf.id}: {wf.status}: {wf.details}",
                                         self.workflow_id, None, None, wf)
            if not wf.container_id:
                return ContainerProgress(WAIT, f"workflow {wf.id}: {wf.status or 'queued'}, no container yet",
                                         self.workflow_id, None, None, wf)
            self.container_id = wf.container_id
        c: Container = await _value(xnat.get_container(self.container_id))
        self.workflow_id = self.workflow_id or c.workflow_id or None
        where = f"container {c.id} ({c.key[:12]})"
        if c.finalized:
            return ContainerProgress(DONE, f"{where}: {c.status}", self.workflow_id, self.container_id, c, wf)
        if c.terminal:
            self.terminal_since = self.terminal_since or now
            if self.finalize_grace is not None and now - self.terminal_since >= self.finalize_grace:
                return ContainerProgress(DONE, f"{where}: {c.status} (not finalized after {self.finalize_grace:g} s; "
                                               "taken as over)", self.workflow_id, self.container_id, c, wf)
            return ContainerProgress(WAIT, f"{where}: {c.status}, finalizing", self.workflow_id, self.container_id,
                                     c, wf)
        self.terminal_since = None
        return ContainerProgress(WAIT, f"{where}: {c.status or 'created'}", self.workflow_id, self.container_id, c, wf)


def failure_of(c: Container, workflow_id: str | None = None) -> XnatContainerFailedError:
    """The error for a container that ended other than ``Complete``."""
    how = "was killed" if c.killed else f"ended {c.status}"
    code = c.exit_code
    text = f"Container {c.id} ({c.image or 'wrapper ' + str(c.wrapper_id)}) {how}" + \
        (f" with exit code {code}" if code not in (None, "") else "") + \
        (f": {c.failure_message}" if c.failure_message else "")
    return XnatContainerFailedError(text, container_id=c.id, workflow_id=workflow_id or c.workflow_id or None,
                                    container_status=c.status, exit_code=code, killed=c.killed,
                                    details=c.failure_message)


# ---- the sync client's calls --------------------------------------------------------------------------------------

class ContainerMixin:
    """The Container Service calls of :class:`~xnat_provider.client.XnatClient`."""

    transport: XnatTransport

    def _get_json(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        return json_answer(self.transport.request("GET", path, params=dict(params or {})).content, "GET", path)

    # ---- commands and wrappers ------------------------------------------------------------------------------
    def list_commands(self, name: str | None = None, image: str | None = None,
                      site_enabled_only: bool = False) -> list[Command]:
        """The site's commands, each with its wrappers (``GET /xapi/commands``): all, or by ``name`` or ``image``;
        ``site_enabled_only`` keeps those with a wrapper enabled on the site."""
        params = {k: v for k, v in (("name", name), ("image", image)) if v}
        if site_enabled_only:
            params["restrictToEnabledForSite"] = "true"
        data = self._get_json("/xapi/commands", params)
        return [parse_command(d) for d in data or [] if isinstance(d, dict)]

    def get_command(self, command_id: int) -> Command:
        """One command by id (``GET /xapi/commands/{id}``); :class:`XnatNotFoundError` if unknown."""
        return parse_command(self._get_json(f"/xapi/commands/{int(command_id)}"))

    def available_wrappers(self, project: str | None, xsi_type: str) -> list[AvailableWrapper]:
        """The wrappers that run on ``xsi_type`` (``xnat:mrSessionData``, ``xnat:mrScanData``...: XSI inheritance
        counts), each with ``enabled`` for ``project`` (or for the site when ``project`` is None). Needs only read
        access to the project."""
        if project:
            return parse_available(self._get_json(f"/xapi/projects/{q(project)}/commands/available",
                                                  {"xsiType": xsi_type}))
        return parse_available(self._get_json("/xapi/commands/available/site", {"xsiType": xsi_type}))

    def wrapper_enabled(self, wrapper_id: int, project: str) -> EnabledReport:
        """Where a wrapper is enabled, for the site and for ``project`` (needs edit access to the project)."""
        data = self._get_json(f"/xapi/projects/{q(project)}/wrappers/{int(wrapper_id)}/enabled")
        return EnabledReport(int(wrapper_id), project, data.get("enabled-for-site") is True,
                             data.get("enabled-for-project") is True)

    def get_wrapper(self, command: str | None = None, wrapper: str | None = None,
                    wrapper_id: int | None = None) -> Wrapper:
        """A wrapper by its command's name and its own name, or by id. :class:`XnatBadInputError` when the site has
        none (naming what it has), or when the names fit wrappers of several versions of the command."""
        found = self._wrappers(command, wrapper, wrapper_id)
        if len(found) > 1:
            ids = ", ".join(f"{w.id} ({w.command_name} {w.command_version})" for w in found)
            raise XnatBadInputError(f"Wrapper {wrapper!r} of command {command!r} is ambiguous: wrappers {ids}; "
                                    "give wrapper_id")
        return found[0]

    def _wrappers(self, command: str | None, wrapper: str | None, wrapper_id: int | None) -> list[Wrapper]:
        if wrapper_id is not None and (command or wrapper):
            raise XnatBadInputError("Name a wrapper by command and wrapper names, or by wrapper_id, not both")
        if wrapper_id is None and not (command and wrapper):
            raise XnatBadInputError("Name the wrapper to launch: command and wrapper (names), or wrapper_id")
        if wrapper_id is not None:
            try:
                wid = int(wrapper_id)
            except (TypeError, ValueError):
                raise XnatBadInputError(f"wrapper_id must be a number, not {wrapper_id!r}") from None
            found = [w for c in self.list_commands() for w in c.wrappers if w.id == wid]
            if not found:
                raise XnatBadInputError(f"XNAT at {self.transport.base_url} has no command wrapper with id {wid}")
            return found
        commands = self.list_commands(name=command)
        found = [w for c in commands for w in c.wrappers if w.name == wrapper]
        if not found:
            if commands:
                names = ", ".join(sorted({w.name for c in commands for w in c.wrappers})) or "none"
                raise XnatBadInputError(f"Command {command!r} has no wrapper {wrapper!r} (its wrappers: {names})")
            everything = ", ".join(sorted({c.name for c in self.list_commands()})) or "none"
            raise XnatBadInputError(f"XNAT at {self.transport.base_url} has no command {command!r} (its commands: "
                                    f"{everything})")
        return found

    def launch_ui(self, project: str, wrapper_id: int, params: Mapping[str, str]) -> dict[str, Any]:
        """The launch UI's description of a launch (``GET /xapi/projects/{p}/wrappers/{id}/launch``): the input
        trees and the values XNAT resolved for ``params`` (the root element's at least). XNAT pre-resolves the
        command: a required derived input with nothing to match, or an object it cannot parse, is refused here
        (:class:`XnatBadInputError` with XNAT's reason) where a launch would answer success and fail later."""
        path = f"/xapi/projects/{q(project)}/wrappers/{int(wrapper_id)}/launch"
        try:
            data = self._get_json(path, params)
        except XnatServerError as exc:
            if exc.status == 500 and "could not be resolved" in (exc.xnat_message or ""):
                raise XnatBadInputError(str(exc), method="GET", path=path, status=500,
                                        xnat_message=exc.xnat_message) from None
            raise
        return data if isinstance(data, dict) else {}

    # ---- checking a launch ----------------------------------------------------------------------------------
    def launch_target(self, project: str, experiment: str | Experiment, scan: str | None = None) -> LaunchTarget:
        """The object to launch on: an experiment (label or ID within ``project``, or an :class:`Experiment`), or
        one of its scans. :class:`XnatNotFoundError` when it does not exist."""
        exp = experiment if isinstance(experiment, Experiment) else self.transport.read(
            experiment_lookup(project, str(experiment)))
        if scan in (None, ""):
            return LaunchTarget(project, exp.id, exp.label, exp.xsi_type)
        scans = self.transport.read(scans_lookup(project, exp))
        found = next((s for s in scans if s.id == str(scan)), None)
        if found is None:
            raise XnatNotFoundError(f"Experiment {exp.label} in {project} has no scan {scan!r} (its scans: "
                                    f"{', '.join(s.id for s in scans) or 'none'})", status=404)
        return LaunchTarget(project, exp.id, exp.label, found.xsi_type or "xnat:imageScanData", str(scan))

    def plan_launch(self, project: str, experiment: str | Experiment, scan: str | None = None, *,
                    command: str | None = None, wrapper: str | None = None, wrapper_id: int | None = None,
                    inputs: Mapping[str, Any] | None = None, check: bool = True) -> LaunchPlan:
        """Everything a launch needs, checked before anything is launched (XNAT's REST launch checks none of it and
        answers success, the failure showing later in the workflow). Refusals are :class:`XnatBadInputError`:

        - the wrapper (``command`` and ``wrapper`` names, or ``wrapper_id``) exists, and runs on this object: a
          session wrapper on an experiment, a scan wrapper on a scan, its contexts matching the object's type;
        - with ``check``: it is **enabled for the project** (XNAT's flag: enabled for the site and explicitly for
          the project), and XNAT's launch UI pre-resolves its inputs on the object (a required derived input, such
          as a scan's DICOM resource, must match);
        - ``inputs`` name only inputs the wrapper has, and give every required one without a default.

        The experiment or scan missing is an :class:`XnatNotFoundError`."""
        if inputs is not None and not isinstance(inputs, Mapping):
            raise XnatBadInputError(f"inputs must be a mapping of input names to values, not {inputs!r}")
        candidates = self._wrappers(command, wrapper, wrapper_id)
        target = self.launch_target(project, experiment, scan)
        available = {a.wrapper_id: a for a in self.available_wrappers(project, target.xsi_type)} if check else {}
        if len(candidates) > 1:  # several versions of the command: the one that runs here, enabled
            here = [w for w in candidates if w.id in available] or candidates
            enabled = [w for w in here if available.get(w.id) and available[w.id].enabled] or here
            if len(enabled) > 1:
                ids = ", ".join(f"{w.id} ({w.command_name} {w.command_version})" for w in enabled)
                raise XnatBadInputError(f"Wrapper {wrapper!r} of command {command!r} is ambiguous in {project}: "
                                        f"wrappers {ids}; give wrapper_id")
            candidates = enabled
        w = candidates[0]
        name = f"wrapper {w.name!r} (id {w.id}) of command {w.command_name!r}"
        problems: list[str] = []
        root = w.root_input
        if root is None:
            problems.append(f"{name} has no external input: it does not run on an experiment or a scan")
        elif root.type not in (SESSION_ROOT, SCAN_ROOT):
            problems.append(f"{name} runs on a {root.type} ({root.name!r}), not on an experiment or a scan")
        elif root.type != target.kind:
            problems.append(f"{name} runs on a {root.type.lower()} ({root.name!r}): "
                            + ("give the scan to launch it on" if root.type == SCAN_ROOT else
                               "launch it on the experiment, without a scan"))
        elif check and w.id not in available:
            problems.append(f"{name} does not run on {target.xsi_type} (its contexts: "
                            f"{', '.join(w.contexts) or 'none'})")
        elif check and not available[w.id].enabled:
            problems.append(f"{name} is not enabled for project {project}. XNAT's REST launch does not check this "
                            "(the launch would run), so the provider refuses: a project owner enables it in the "
                            "project's settings (Project Settings, Configure Commands), or PUT "
                            f"/xapi/projects/{project}/wrappers/{w.id}/enabled")
        given = dict(inputs or {})
        problems += w.input_problems({k: v for k, v in given.items() if v is not None})
        if problems:
            raise XnatBadInputError(f"Cannot launch {name} on {target.experiment_label}"
                                    + (f" scan {target.scan}" if target.scan is not None else "")
                                    + f" in {project}: " + "; ".join(problems))
        plan = LaunchPlan(w, target, launch_params(w, target, given))
        if check:
            try:
                self.launch_ui(project, w.id, {w.root_element: target.root_value})
            except XnatBadInputError as exc:
                raise XnatBadInputError(f"Cannot launch {name} on {target.experiment_label}"
                                        + (f" scan {target.scan}" if target.scan is not None else "")
                                        + f" in {project}: XNAT cannot resolve its inputs: "
                                        + (exc.xnat_message or str(exc)), method=exc.method, path=exc.path,
                                        status=exc.status, xnat_message=exc.xnat_message) from None
        return plan

    # ---- launching ------------------------------------------------------------------------------------------
    def launch(self, plan: LaunchPlan, *, before: Iterable[Container] | None = None,
               settle_seconds: float | None = None) -> Launch:
        """Launch a checked plan (from :meth:`plan_launch`) on its project: ``POST /xapi/projects/{p}/wrappers/
        {id}/root/{root}/launch`` with a JSON body. Returns the :class:`Launch` with the workflow to follow.

        A launch XNAT refused before queueing (``status: failure``) raises :class:`XnatServerError` with XNAT's
        message; nothing was launched, so trying again is safe. A launch whose answer was lost (no answer, or a
        gateway's 502/503/504: XNAT may have launched it) is never resent blindly: for ``settle_seconds`` (default:
        the client's ``settle_seconds``) the project's containers are searched for one of this plan that was not
        in ``before`` (the matching containers seen before launching; None: listed here first), and the launch is
        reported recovered if found, else the ambiguous error is raised."""
        path = (f"/xapi/projects/{q(plan.project)}/wrappers/{plan.wrapper.id}/root/{q(plan.root_element)}"
                "/launch")
        known = {c.id for c in (before if before is not None else self.find_containers(plan, include_failed=True))}
        try:
            resp = self.transport.request("POST", path, data=json.dumps(plan.params), headers=JSON_HEADERS,
                                        ok_statuses=(500,))
        except XnatServerError as exc:
            if not is_ambiguous(exc):
                raise
            found = self.find_launched(plan, known, settle_seconds)
            if found is None:
                raise
            return Launch(found.workflow_id or None, plan.wrapper.id, plan.project, dict(plan.params),
                          container_id=found.key, recovered=True)
        if resp.status_code == 500:
            self._launch_refused(resp.content, path)
        return parse_launch_report(json_answer(resp.content, "POST", path), plan, "POST", path)

    def _launch_refused(self, body: bytes, path: str) -> None:
        """A 500 launch answer: the plugin's failure report (nothing was queued), or any other server error."""
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if isinstance(data, dict) and data.get("status") == "failure":
            message = self.transport.redact(_text(data.get("message")) or "no reason given")
            raise XnatServerError(f"POST {path}: XNAT refused the launch before queueing it (nothing was launched): "
                                  f"{message}", method="POST", path=path, status=500, xnat_message=message)
        raise_for_answer("POST", path, 500, body.decode("utf-8", "replace"), self.transport.redact)

    def find_launched(self, plan: LaunchPlan, known: Iterable[str] = (),
                      settle_seconds: float | None = None) -> Container | None:
        """A container of ``plan`` whose database id is not in ``known``, looked for during ``settle_seconds``
        (default: the client's ``settle_seconds``): the effect of a launch whose answer was lost, which XNAT may
        still be resolving (its container exists only then). None if none came; the newest if several."""
        known = set(known)
        settle = self.transport.config.settle_seconds if settle_seconds is None else settle_seconds
        deadline = time.monotonic() + settle
        while True:
            try:
                found = [c for c in self.find_containers(plan, include_failed=True) if c.id not in known]
            except XnatServerError:
                found = []
            if found:
                return found[0]
            if time.monotonic() >= deadline:
                return None
            time.sleep(min(1.0, max(0.05, settle / 20)))

    def bulk_launch(self, plans: Sequence[LaunchPlan]) -> BulkLaunch:
        """Launch one wrapper on several objects of one project in one request (``POST .../bulklaunch``, the
        targets as a JSON array encoded as a string). The plans (from :meth:`plan_launch`, each checked) must
        share the wrapper, the project and the inputs. XNAT launches each target in the background and answers no
        workflow ids: follow each plan's container with :meth:`find_containers`. One launch per target
        (:meth:`launch`) is easier to follow; this is for many targets at once."""
        if not plans:
            raise XnatBadInputError("bulk_launch needs at least one plan")
        first = plans[0]
        root = first.root_element
        common = {k: v for k, v in first.params.items() if k != root}
        for p in plans[1:]:
            if p.wrapper.id != first.wrapper.id or p.project != first.project or \
                    {k: v for k, v in p.params.items() if k != root} != common:
                raise XnatBadInputError("The plans of a bulk launch must share the wrapper, the project and the "
                                        "inputs")
        path = f"/xapi/projects/{q(first.project)}/wrappers/{first.wrapper.id}/root/{q(root)}/bulklaunch"
        body = {root: json.dumps([p.params[root] for p in plans]), **common}
        resp = self.transport.request("POST", path, data=json.dumps(body), headers=JSON_HEADERS)
        data = json_answer(resp.content, "POST", path)
        if not isinstance(data, dict):
            raise XnatServerError(f"POST {path}: not a bulk launch report", method="POST", path=path)
        return BulkLaunch(_text(data.get("bulk-launch-id")), _text(data.get("pipeline-name")), tuple(plans),
                          tuple(f for f in data.get("failures") or [] if isinstance(f, dict)))

    # ---- workflows and containers ---------------------------------------------------------------------------
    def get_workflow(self, workflow_id: str | int) -> Workflow:
        """A launch's workflow (``GET /data/workflows/{id}?format=json``)."""
        return self.transport.read(workflow_lookup(workflow_id))

    def workflow_container(self, workflow_id: str | int) -> str | None:
        """The container a launch's workflow leads to (its backend id), None while the launch is queued or being
        resolved, :class:`XnatContainerFailedError` when it failed before any container existed."""
        return self.transport.read(workflow_container_lookup(workflow_id))

    def get_container(self, container_id: str | int) -> Container:
        """A container by database id or backend id (``GET /xapi/containers/{id}``)."""
        return self.transport.read(container_lookup(container_id))

    def list_containers(self, project: str | None = None, nonfinalized: bool = False) -> list[Container]:
        """The containers the login may see (launched by it, or all for an administrator), of ``project`` or of
        the site; ``nonfinalized`` keeps those not over. Each comes with its full history: a heavy call."""
        path = f"/xapi/projects/{q(project)}/containers" if project else "/xapi/containers"
        data = self._get_json(path, {"nonfinalized": "true" if nonfinalized else "false"})
        return [parse_container(d, path) for d in data or [] if isinstance(d, dict)]

    def find_containers(self, plan: LaunchPlan, include_failed: bool = False) -> list[Container]:
        """The containers already launched for ``plan`` (same wrapper, object and inputs), newest first; those
        that ended ``Failed`` or were killed only with ``include_failed``. What to adopt instead of launching
        again."""
        found = [c for c in self.list_containers(plan.project) if container_matches(c, plan)
                 and (include_failed or not c.failed)]
        return sorted(found, key=lambda c: _int(c.id), reverse=True)

    def container_log(self, container_id: str | int, stream: str = "stdout", tail_bytes: int | None = None) -> str:
        """A container's ``stdout`` or ``stderr`` (live while it runs, the saved file once it is over; empty when
        it wrote nothing). ``tail_bytes`` keeps only the end of a long log, saying how much was left out."""
        if stream not in ("stdout", "stderr"):
            raise XnatBadInputError(f"stream must be 'stdout' or 'stderr', not {stream!r}")
        path = f"/xapi/containers/{q(_check_id(container_id, 'container id'))}/logs/{stream}"
        resp = self.transport.request("GET", path, stream=True)
        buf, dropped, broken = bytearray(), 0, None
        with resp:
            try:
                for chunk in resp.iter_content(64 * 1024):
                    buf += chunk
                    if tail_bytes is not None and len(buf) > 2 * tail_bytes + 65536:
                        dropped += len(buf) - tail_bytes
                        del buf[:len(buf) - tail_bytes]
            except BROKEN as exc:
                broken = exc
        if broken is not None:
            raise XnatTransferError(f"GET {path}: the log broke off after {dropped + len(buf)} bytes "
                                    f"({type(broken).__name__})", method="GET", path=path)
        if tail_bytes is not None and len(buf) > tail_bytes:
            dropped += len(buf) - tail_bytes
            del buf[:len(buf) - tail_bytes]
        text = self.transport.redact(buf.decode("utf-8", "replace"))
        return f"[... {dropped} earlier bytes not shown]\n{text}" if dropped else text

    def kill_container(self, container_id: str | int, project: str | None = None) -> str:
        """Kill a running container (``POST [/xapi/projects/{p}]/xapi/containers/{id}/kill``); returns its backend
        id. It then goes ``Failed (Killed)`` and, once finalized, ``Failed`` with exit code 137. A container that
        has already exited cannot be killed: :class:`XnatConflictError`."""
        key = q(_check_id(container_id, "container id"))
        path = f"/xapi/projects/{q(project)}/containers/{key}/kill" if project else f"/xapi/containers/{key}/kill"
        try:
            return self.transport.request("POST", path).text.strip()
        except XnatError as exc:
            message = exc.xnat_message or ""
            if (exc.status == 500 and "is not running" in message) or \
                    (exc.status == 404 and "No such container" in message):
                raise XnatConflictError(f"POST {path}: container {container_id} has already exited: {message}",
                                        method="POST", path=path, status=exc.status, xnat_message=message) from None
            raise

    def container_outputs(self, container: Container) -> list[dict[str, Any]]:
        """The resources a container's outputs went to (XNAT no longer records their URIs): for each ``Resource``
        output, the resource labelled as its handler says on the object of its ``handled-by`` input, with its files.
        An output whose resource does not exist (nothing uploaded) is listed with ``exists`` False."""
        out = []
        values = container.resolved_inputs
        labels: dict[str, set[str]] = {}
        for o in container.outputs:
            if o.type != "Resource":
                continue
            owner = values.get(o.handled_by, "")
            if not owner.startswith("/"):
                continue  # not an object's URI (a container someone else launched: its inputs are hidden)
            owner_path = "/data" + _norm_uri(owner)
            if owner_path not in labels:
                try:
                    rows = self.list_resources(owner_path)  # type: ignore[attr-defined]
                    labels[owner_path] = {r.get("label", "") for r in rows}
                except XnatNotFoundError:
                    labels[owner_path] = set()
            path = f"{owner_path}/resources/{q(o.label)}"
            exists = o.label in labels[owner_path]
            files: list[RemoteFile] = self.list_files(path) if exists else []  # type: ignore[attr-defined]
            out.append({"name": o.name, "label": o.label, "uri": path, "exists": exists, "files": len(files),
                        "bytes": sum(f.size or 0 for f in files), "required": o.required})
        return out
