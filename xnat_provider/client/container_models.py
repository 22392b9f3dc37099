"""The Container Service's objects as values: commands and wrappers, what to launch and on what, workflows and
containers, and what their states mean.

Plain frozen dataclasses, no I/O: the sync client, the async client, operators, sensors and triggers all judge a
container by the same properties (:attr:`Container.finalized`, :attr:`Container.exit_code`...), and each value
turns into JSON for an XCom or a trigger event (``to_dict``). How XNAT's answers become these values is
:mod:`.container_parsing`; the calls that fetch them are :mod:`.containers`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import XnatBadInputError

TERMINAL_PREFIXES = ("Complete", "Failed", "Killed")  # ContainerUtils.statusIsTerminal: startsWith
SUCCESS = "Complete"
TO_BE_ASSIGNED = "To be assigned"  # a launch whose parameters had no value for the root element: no workflow
SESSION_ROOT, SCAN_ROOT = "Session", "Scan"


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


def norm_uri(uri: str) -> str:
    """An object URI without its ``/data``, ``/archive`` or ``/REST`` prefix: XNAT writes all three."""
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
    if not root or norm_uri(root) != norm_uri(plan.target.uri):
        return False
    return all(resolved.get(k) == v for k, v in plan.params.items() if k != plan.root_element)
