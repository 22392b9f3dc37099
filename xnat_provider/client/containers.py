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

This module is :class:`ContainerMixin`, the calls. The rest is plain values and decisions (no I/O), shared with
the async client that triggers poll with (:class:`~xnat_provider.client.async_client.AsyncXnatClient`):
:mod:`.container_models` (commands, wrappers, launches, workflows, containers), :mod:`.container_parsing` (XNAT's
answers read into those, and the lookups :func:`workflow_lookup` and :func:`container_lookup`) and
:mod:`.container_watch` (:class:`ContainerWatch`, following a launch to its end). Every name they define that
operators, sensors and triggers use is importable from here too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .container_models import (
    SCAN_ROOT,
    SESSION_ROOT,
    SUCCESS,
    TERMINAL_PREFIXES,
    TO_BE_ASSIGNED,
    AvailableWrapper,
    BulkLaunch,
    Command,
    Container,
    ContainerInput,
    ContainerOutput,
    EnabledReport,
    HistoryEntry,
    Launch,
    LaunchPlan,
    LaunchTarget,
    OutputHandler,
    Workflow,
    Wrapper,
    WrapperInput,
    container_matches,
    input_text,
    launch_params,
    norm_uri,
    status_is_failed,
    status_is_terminal,
)
from .container_parsing import (
    Json,
    check_id,
    container_lookup,
    container_of_workflow,
    int_of,
    parse_available,
    parse_command,
    parse_container,
    parse_launch_report,
    parse_workflow,
    text_of,
    workflow_container_lookup,
    workflow_lookup,
)
from .container_watch import DONE, LAUNCH_FAILED, WAIT, ContainerProgress, ContainerWatch, failure_of
from .errors import (
    XnatBadInputError,
    XnatConflictError,
    XnatError,
    XnatNotFoundError,
    XnatServerError,
    XnatTransferError,
)
from .hashed_stream import BROKEN
from .models import Experiment, RemoteFile
from .protocol import experiment_lookup, is_ambiguous, json_answer, q, raise_for_answer, scans_lookup
from .transport import XnatTransport

__all__ = [  # the calls, and the values and decisions they return, importable from here as before the split
    "DONE", "LAUNCH_FAILED", "SCAN_ROOT", "SESSION_ROOT", "SUCCESS", "TERMINAL_PREFIXES", "TO_BE_ASSIGNED", "WAIT",
    "AvailableWrapper", "BulkLaunch", "Command", "Container", "ContainerInput", "ContainerMixin", "ContainerOutput",
    "ContainerProgress", "ContainerWatch", "EnabledReport", "HistoryEntry", "Json", "Launch", "LaunchPlan",
    "LaunchTarget", "OutputHandler", "Workflow", "Wrapper", "WrapperInput", "container_lookup", "container_matches",
    "container_of_workflow", "failure_of", "input_text", "launch_params", "parse_available", "parse_command",
    "parse_container", "parse_launch_report", "parse_workflow", "status_is_failed", "status_is_terminal",
    "workflow_container_lookup", "workflow_lookup",
]

JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


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
        w = candidates[0] if len(candidates) == 1 else _version_here(candidates, available, command, wrapper, project)
        name = f"wrapper {w.name!r} (id {w.id}) of command {w.command_name!r}"
        problems = _placement_problems(w, name, target, available if check else None, project)
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
            message = self.transport.redact(text_of(data.get("message")) or "no reason given")
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
        return BulkLaunch(text_of(data.get("bulk-launch-id")), text_of(data.get("pipeline-name")), tuple(plans),
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
        return sorted(found, key=lambda c: int_of(c.id), reverse=True)

    def container_log(self, container_id: str | int, stream: str = "stdout", tail_bytes: int | None = None) -> str:
        """A container's ``stdout`` or ``stderr`` (live while it runs, the saved file once it is over; empty when
        it wrote nothing). ``tail_bytes`` keeps only the end of a long log, saying how much was left out."""
        if stream not in ("stdout", "stderr"):
            raise XnatBadInputError(f"stream must be 'stdout' or 'stderr', not {stream!r}")
        path = f"/xapi/containers/{q(check_id(container_id, 'container id'))}/logs/{stream}"
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
        key = q(check_id(container_id, "container id"))
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
            owner_path = "/data" + norm_uri(owner)
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


def _version_here(candidates: list[Wrapper], available: Mapping[int, AvailableWrapper], command: str | None,
                  wrapper: str | None, project: str) -> Wrapper:
    """Of several versions of a command's wrapper, the one that runs here and is enabled; refused when that still
    leaves more than one (the caller gives ``wrapper_id``)."""
    here = [w for w in candidates if w.id in available] or candidates
    enabled = [w for w in here if available.get(w.id) and available[w.id].enabled] or here
    if len(enabled) > 1:
        ids = ", ".join(f"{w.id} ({w.command_name} {w.command_version})" for w in enabled)
        raise XnatBadInputError(f"Wrapper {wrapper!r} of command {command!r} is ambiguous in {project}: "
                                f"wrappers {ids}; give wrapper_id")
    return enabled[0]


def _placement_problems(w: Wrapper, name: str, target: LaunchTarget,
                        available: Mapping[int, AvailableWrapper] | None, project: str) -> list[str]:
    """Why ``w`` cannot run on ``target``: not on this kind of object, and (``available`` given: the project's
    listing for the object's type) not on this type, or not enabled for the project. The first reason only."""
    root = w.root_input
    if root is None:
        return [f"{name} has no external input: it does not run on an experiment or a scan"]
    if root.type not in (SESSION_ROOT, SCAN_ROOT):
        return [f"{name} runs on a {root.type} ({root.name!r}), not on an experiment or a scan"]
    if root.type != target.kind:
        return [f"{name} runs on a {root.type.lower()} ({root.name!r}): "
                + ("give the scan to launch it on" if root.type == SCAN_ROOT else
                   "launch it on the experiment, without a scan")]
    if available is not None and w.id not in available:
        return [f"{name} does not run on {target.xsi_type} (its contexts: {', '.join(w.contexts) or 'none'})"]
    if available is not None and not available[w.id].enabled:
        return [f"{name} is not enabled for project {project}. XNAT's REST launch does not check this (the launch "
                "would run), so the provider refuses: a project owner enables it in the project's settings (Project "
                f"Settings, Configure Commands), or PUT /xapi/projects/{project}/wrappers/{w.id}/enabled"]
    return []
