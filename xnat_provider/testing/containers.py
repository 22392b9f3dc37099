"""The Container Service's state: commands and wrappers, where they are enabled, launches, workflows, containers.

This is the emulator's side of the XNAT Container Service plugin (``NrgXnat/container-service``, read at 3.7.3;
``docs/container-service.md`` has the API a client sees, with line references). A *command* is a Docker image with
a JSON description; its *wrappers* (the command's ``xnat`` list) say which XNAT object it runs on and where its
outputs go. Here a command's container is a Python callable or a subprocess registered with the command
(:meth:`Containers.register_command`), run in a thread with the root element's files copied into its input mount,
and its output mount uploaded as the wrapper's output handlers say, as new resources on the session or scan.

The module's parts: the plugin's vocabulary and command JSON are ``container_commands.py``, the records
(workflows, containers, what a runner gets) ``container_records.py``, and what happens after a launch, step by
step, ``container_runs.py``. Everything is importable from here.

Not modelled: Swarm and Kubernetes backends (their ``Waiting``/``Pending`` statuses), setup and wrapup
containers, orchestrations, command automations (event-triggered launches), assessor outputs, secrets, the
launch UI's swarm constraints, per-project command configuration. Everything here lives in memory: commands and
containers are gone when the emulator stops (their uploaded outputs stay in the archive, which persists).
"""


from __future__ import annotations

import copy
import io
import json
import random
import re
import shutil
import threading
import time
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .container_commands import (
    FINALIZING,
    IN_QUEUE_PREFIX,
    KNOWN_XSI_TYPES,
    QUEUED,
    ROOT_NAME_XSI,
    SIMPLE_INPUT_TYPES,
    STDERR_LOG_NAME,
    STDOUT_LOG_NAME,
    TERMINAL_PREFIXES,
    TO_BE_ASSIGNED,
    XSI_PARENTS,
    ResolutionError,
    XapiError,
    drop_none,
    java_date,
    map_status,
    matches,
    normalise_command,
    parse_matcher,
    simple_command,
    status_is_terminal,
    utc_iso,
    validate_command,
)
from .container_records import (
    Container,
    LogStream,
    RegisteredCommand,
    RunContext,
    Runner,
    Workflow,
    XnatObject,
    exit_with,
    hang_until_killed,
)
from .container_runs import ContainerRuns, StepGate
from .model import SESSION_TYPES
from .store import now_text

# The emulator's Container Service API, from one module (its parts: container_commands, container_records,
# container_runs).
__all__ = ["KNOWN_XSI_TYPES", "TERMINAL_PREFIXES", "Container", "ContainerRuns", "Containers", "LogStream",
           "RegisteredCommand", "ResolutionError", "RunContext", "Runner", "StepGate", "Workflow", "XapiError",
           "XnatObject", "drop_none", "exit_with", "hang_until_killed", "java_date", "map_status", "matches",
           "normalise_command", "parse_matcher", "simple_command", "status_is_terminal", "utc_iso", "validate_command"]

if TYPE_CHECKING:
    from .auth import Auth
    from .model import Model

# ---- the state ----------------------------------------------------------------------------------------------

class Containers(ContainerRuns):
    """The Container Service of one emulator: ``emulator.containers``.

    Register a command (its JSON, as a site administrator installs it, and what its container does), enable its
    wrappers for the projects that use it, then launch through the REST API as a client would::

        cmd = emulator.containers.register_command(simple_command("dcm2niix", context="scan"), run=convert,
                                                   enable_for=["P1"])
        wrapper_id = cmd["xnat"][0]["id"]

    :param step_seconds: the pause between two steps of a launch (queue, staging, start, finalizing...), so that a
        client polling the API sees the intermediate statuses; 0 runs through them as fast as possible.

    A test that asserts what a client sees between two steps does not count on that pause (a busy machine can
    miss a step): it holds the launches and moves them on by hand, each :meth:`step` returning once the launch
    rests at its next step (the stops are listed in :class:`~xnat_provider.testing.container_runs.StepGate`)::

        with emulator.containers.held() as steps:  # or hold() ... release()
            workflow_id = launch()                  # rests at once: the workflow is _Queued, no container
            steps.step()                            # Staging
            steps.step(2)                           # Created, then Running
        # released: the launch runs on to its end at its own pace

    Over HTTP: ``POST /__emulator__/containers/hold``, ``.../step`` (``{"count": 1}``), ``.../release``.
    """

    def __init__(self, model: Model, auth: Auth, data_dir: Path, step_seconds: float = 0.05):
        self.model = model
        self.auth = auth
        self.data_dir = Path(data_dir)
        self.step_seconds = step_seconds
        self.site_url = ""  # XNAT_HOST in a container's environment; the emulator sets it when it starts
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._gate = StepGate(self._stopping)
        self._threads: list[threading.Thread] = []
        self.commands: dict[int, RegisteredCommand] = {}
        self._wrapper_command: dict[int, int] = {}
        self._site_enabled: dict[int, bool] = {}
        self._project_enabled: dict[tuple[str, int], bool] = {}
        self.workflows: dict[int, Workflow] = {}
        self.containers: dict[int, Container] = {}
        self._ids = {"command": 0, "wrapper": 0, "workflow": 10000, "container": 0, "history": 0, "mount": 0,
                     "input": 0, "output": 0}
        self._launch_failures: list[str] = []
        self.resolution_failures: list[str] = []  # launches that failed without a workflow to tell it
        # Scratch space of the previous run (its containers are gone with it): mounts and saved logs.
        for scratch in (self.data_dir / "containers", self.data_dir / "archive" / "CONTAINER_EXEC"):
            shutil.rmtree(scratch, ignore_errors=True)

    def _next(self, kind: str) -> int:
        with self._lock:
            self._ids[kind] += 1
            return self._ids[kind]

    def shutdown(self) -> None:
        """Stop every running container (the emulator is stopping)."""
        self._stopping.set()
        self._gate.release()
        for c in list(self.containers.values()):
            c.killed.set()
            if c.process is not None and c.process.poll() is None:
                c.process.kill()
        for t in list(self._threads):
            t.join(timeout=5)

    # ---- commands and wrappers ------------------------------------------------------------------------------
    def register_command(self, command: dict, run: Runner | None = None, *, enable_for: Iterable[str] = (),
                         enabled_for_site: bool = True) -> dict:
        """Install a command (its JSON: ``name``, ``image``, ``mounts``, ``inputs``, ``outputs``, ``xnat``
        wrappers) with what its container runs: a callable taking a :class:`RunContext`, or an argv list run as
        a subprocess (``{mount}`` and ``{input}`` placeholders are replaced by paths and values). ``run=None``
        installs a command whose image is missing: its launches fail when the container is created.

        Wrappers are enabled site-wide unless ``enabled_for_site=False`` (the plugin's default: only an explicit
        ``false`` disables), and for the projects in ``enable_for`` (the plugin's default for a project: not
        enabled). Returns the command as ``GET /xapi/commands/{id}`` writes it, ids included."""
        raw = copy.deepcopy(command)
        cid = self._next("command")
        wids = [self._next("wrapper") for _ in raw.get("xnat") or []]
        cmd = normalise_command(raw, cid, wids)
        validate_command(cmd)
        with self._lock:
            self.commands[cid] = RegisteredCommand(cmd, run)
            for wid in wids:
                self._wrapper_command[wid] = cid
                if not enabled_for_site:
                    self._site_enabled[wid] = False
                for p in enable_for:
                    self._project_enabled[(p, wid)] = True
        return copy.deepcopy(cmd)

    def set_runner(self, image: str, run: Runner | None) -> None:
        """Give every command of ``image`` this runner (``None``: the image is gone)."""
        with self._lock:
            for rc in self.commands.values():
                if rc.json.get("image") == image:
                    rc.run = run

    def command_list(self) -> list[dict]:
        with self._lock:
            return [copy.deepcopy(rc.json) for _, rc in sorted(self.commands.items())]

    def command(self, command_id: int) -> dict:
        rc = self.commands.get(command_id)
        if rc is None:
            raise XapiError(404, f"Could not find entity with ID {command_id}")  # AbstractHibernateEntityService
        return copy.deepcopy(rc.json)

    def wrapper(self, wrapper_id: int) -> tuple[dict, dict] | None:
        """(command, wrapper) of a wrapper id, or None (``CommandService.retrieveWrapper``)."""
        with self._lock:
            cid = self._wrapper_command.get(wrapper_id)
            if cid is None:
                return None
            cmd = self.commands[cid].json
            return cmd, next(w for w in cmd["xnat"] if w["id"] == wrapper_id)

    def wrapper_id(self, command_id: int, wrapper_name: str) -> int:
        """``CommandEntityRepository.getWrapperId``: by name, or by an id given as the name; 404 otherwise."""
        rc = self.commands.get(command_id)
        if rc is None:
            raise XapiError(404, f"No command with id {command_id}")
        for w in rc.json["xnat"]:
            if w["name"] == wrapper_name:
                return int(w["id"])
        if wrapper_name.isdigit() and any(w["id"] == int(wrapper_name) for w in rc.json["xnat"]):
            return int(wrapper_name)
        raise XapiError(404, f"Command {command_id} has no wrapper {wrapper_name}")

    def enabled_for_site(self, wrapper_id: int) -> bool:
        """``ContainerConfigServiceImpl.isEnabledForSite``: true unless explicitly disabled (any id, known or not)."""
        return self._site_enabled.get(wrapper_id, True)

    def enabled_for_project(self, project: str, wrapper_id: int) -> bool:
        """``isEnabledForProject``: enabled on the site and explicitly enabled for the project."""
        return self.enabled_for_site(wrapper_id) and self._project_enabled.get((project, wrapper_id), False)

    def set_enabled(self, wrapper_id: int, enabled: bool, project: str | None = None) -> None:
        with self._lock:
            if project is None:
                self._site_enabled[wrapper_id] = enabled
            else:
                self._project_enabled[(project, wrapper_id)] = enabled

    def available(self, project: str | None, xsi_type: str) -> list[dict]:
        """``CommandServiceImpl.available``: the wrappers whose contexts the type matches, with ``enabled``."""
        if xsi_type not in KNOWN_XSI_TYPES:
            raise XapiError(400, f"Bad XSI Type. Element not found: {xsi_type}")
        lineage = {xsi_type, *XSI_PARENTS.get(xsi_type, ())}
        out = []
        for cmd in self.command_list():
            for w in cmd["xnat"]:
                if not lineage & set(w.get("contexts") or []):
                    continue
                ext = w["external-inputs"]
                if project and not ext:
                    continue
                enabled = self.enabled_for_project(project, w["id"]) if project else self.enabled_for_site(w["id"])
                out.append(drop_none({
                    "command-id": cmd["id"], "command-name": cmd["name"], "command-label": cmd.get("label"),
                    "command-description": cmd.get("description"), "wrapper-id": w["id"],
                    "wrapper-name": w["name"], "wrapper-label": w.get("label"),
                    "wrapper-description": w.get("description"), "wrapper-contexts": w.get("contexts") or [],
                    "image-name": cmd["image"], "image-type": cmd["type"], "enabled": enabled,
                    "root-element-name": ext[0]["name"] if ext else ""}))
        return out

    # ---- resolving inputs -----------------------------------------------------------------------------------
    def resolve_root(self, input_type: str, value: str | None, project: str | None) -> XnatObject | None:
        """``resolveXnatObject``: a URI (``/archive/...`` or without ``/archive``) or, for a session, its ID.
        Returns None when nothing is found (the input then has no value); raises ResolutionError for a URI XNAT
        cannot parse."""
        if not value:
            return None
        if value.startswith("/"):
            path = value[len("/archive"):] if value.startswith("/archive/") else value
            m = re.fullmatch(r"(?:/projects/(?P<p>[^/]+)(?:/subjects/(?P<s>[^/]+))?)?/experiments/(?P<e>[^/]+)"
                             r"(?:/scans/(?P<scan>[^/]+))?", path)
            if m is None or (m.group("scan") is None) != (input_type == "Session"):
                raise ResolutionError(f"Invalid {input_type} uri {value}")
            if m.group("p"):
                exp = self.model.experiment(m.group("p"), m.group("e"))
                if exp is not None and m.group("s"):
                    subj = self.model.subject(m.group("p"), m.group("s"))
                    exp = exp if subj is not None and subj["id"] == exp["subject_id"] else None
            else:
                exp = self.model.experiment(None, m.group("e"))
            if exp is None:
                raise ResolutionError(f"Invalid {input_type} uri {value}")
            if input_type == "Session":
                return XnatObject("Session", exp)
            scan = self.model.scan(exp["id"], m.group("scan"))
            if scan is None:
                raise ResolutionError(f"Invalid {input_type} uri {value}")
            return XnatObject("Scan", exp, scan)
        if value.startswith("{"):
            return None
        if input_type == "Session":  # Session.idToModelObject: by ID (not label), image sessions only
            exp = self.model.experiment(None, value)
            if exp is None or exp["xsi_type"] not in SESSION_TYPES:
                return None
            return XnatObject("Session", exp)
        return None  # Scan.idToModelObject is null: a scan is given by URI only

    def object_json(self, obj: XnatObject) -> dict[str, Any]:
        """The fields a matcher reads (the plugin's model objects as JSON: ``Scan``'s ``scan-type``...)."""
        if obj.resource is not None:
            r = obj.resource
            return {"id": r["id"], "label": r["label"], "format": r.get("format") or "",
                    "content": r.get("content") or "", "uri": obj.uri}
        if obj.scan is not None:
            s = obj.scan
            return {"id": s["scan_id"], "xsiType": s["xsi_type"], "scan-type": s.get("type") or "",
                    "series-description": s.get("series_description") or "", "quality": s.get("quality") or "",
                    "frames": s.get("frames") or "", "uri": obj.uri,
                    "resources": [{"label": r["label"]} for r in self.model.resources(*obj.owner)]}
        e = obj.experiment
        return {"id": e["id"], "label": e["label"], "xsiType": e["xsi_type"], "project-id": e["project"],
                "uri": obj.uri}

    def children(self, parent: XnatObject, child_type: str) -> list[XnatObject]:
        if child_type == "Resource":
            return [XnatObject("Resource", parent.experiment, parent.scan, r)
                    for r in self.model.resources(*parent.owner)]
        if child_type == "Scan" and parent.kind == "Session":
            return [XnatObject("Scan", parent.experiment, s) for s in self.model.scans(parent.experiment["id"])]
        return []

    def resolve(self, cmd: dict, wrapper: dict, params: dict[str, str], project: str | None,
                strict: bool = True) -> dict[str, Any]:
        """The command's inputs from the launch's parameters (``CommandResolutionServiceImpl.resolve``).

        Returns ``values`` (input name -> value), ``objects`` (input name -> XnatObject) and ``children``
        (input name -> the candidate values of a derived input, for the launch UI). With ``strict`` it raises
        ResolutionError as the plugin's resolution does."""
        values: dict[str, str | None] = {}
        objects: dict[str, XnatObject] = {}
        candidates: dict[str, list[XnatObject]] = {}
        for ext in wrapper["external-inputs"]:
            raw = params.get(ext["name"], ext.get("default-value"))
            obj = self.resolve_root(ext["type"], raw, project)
            values[ext["name"]] = obj.uri if obj else None
            if obj:
                objects[ext["name"]] = obj
        unresolved: set[str] = set()  # derived from an input without a value: never looked at
        for d in wrapper["derived-inputs"]:
            parent = objects.get(d["derived-from-wrapper-input"])
            if parent is None:
                unresolved.add(d["name"])
                continue
            if d["type"] in SIMPLE_INPUT_TYPES:
                prop = d.get("derived-from-xnat-object-property") or "id"
                values[d["name"]] = str(self.object_json(parent).get(prop, "")) or None
                continue
            found = [c for c in self.children(parent, d["type"]) if matches(d.get("matcher"), self.object_json(c))]
            candidates[d["name"]] = found
            if len(found) == 1:
                values[d["name"]] = found[0].uri
                objects[d["name"]] = found[0]
            elif strict and d["required"]:
                # findResolvedValues: no unique value for a required derived input
                msg = f"Input \"{d['name']}\" "
                msg += (f"could not be resolved for this item. You might check the JSONPath matchers in command.json "
                        f"and confirm that this item has {d['type']} data." if not found else
                        " does not have a unique, resolved value and multiple = true is not set in command.json.")
                raise ResolutionError(msg)
            else:
                values[d["name"]] = None
        provided = {i.get("provides-value-for-command-input"): i["name"]
                    for i in wrapper["external-inputs"] + wrapper["derived-inputs"]}
        for ci in cmd["inputs"]:
            if ci["name"] in provided:
                values[ci["name"]] = values.get(provided[ci["name"]])
            else:
                values[ci["name"]] = params.get(ci["name"], ci.get("default-value"))
        missing = [i["name"] for i in wrapper["external-inputs"] + wrapper["derived-inputs"] + cmd["inputs"]
                   if i["required"] and i["name"] not in unresolved and values.get(i["name"]) in (None, "")]
        if strict and missing:
            raise ResolutionError("Missing values for required input{}: {}.".format(
                "" if len(missing) == 1 else "s", ", ".join(missing)))
        return {"values": values, "objects": objects, "candidates": candidates}

    # ---- launching ------------------------------------------------------------------------------------------
    def fail_next_launch(self, message: str = "Unable to queue container launch", count: int = 1) -> None:
        """The next ``count`` launches answer a ``failure`` report (HTTP 500), as when the plugin cannot create
        the workflow or queue the launch (``LaunchReport.Failure``)."""
        with self._lock:
            self._launch_failures.extend([message] * count)

    def launch(self, project: str | None, command_id: int, wrapper_name: str | None, wrapper_id: int,
               root_element: str | None, params: dict[str, str], user: str,
               bulk_launch_id: str | None = None) -> tuple[int, dict]:
        """``ContainerServiceImpl.launchContainer``: create the workflow, queue the launch, answer the report.

        Returns (HTTP status, report): 200 with ``status: success`` and the workflow id (``To be assigned``
        without a root element value), or 500 with ``status: failure`` when the launch could not be queued."""
        report_ids = {"command-id": command_id, "wrapper-id": wrapper_id}
        with self._lock:
            injected = self._launch_failures.pop(0) if self._launch_failures else None
        if injected is not None:
            return 500, _failure(injected, params, command_id, wrapper_id)
        workflow = None
        xnat_id = params.get(root_element) if root_element else None
        if xnat_id is not None:
            if not wrapper_name and wrapper_id:
                found = self.wrapper(wrapper_id)
                if found is None:  # retrieveWrapper(...) is null: the .name() call throws, caught as a failure
                    return 500, _failure("Unable to queue container launch", params, command_id, wrapper_id)
                pipeline = found[1]["name"]
            else:
                pipeline = wrapper_name or ""
            workflow = self._new_workflow(xnat_id, root_element or "", pipeline, project or "", user, bulk_launch_id)
        self._start_job(self._run_launch, "xnat-emulator-container",
                        (project, command_id, wrapper_name, wrapper_id, dict(params), user, workflow))
        report = {"status": "success", "params": dict(params), **report_ids,
                  "workflow-id": str(workflow.id) if workflow else TO_BE_ASSIGNED}
        return 200, report

    def bulk_launch(self, project: str | None, command_id: int, wrapper_name: str | None, wrapper_id: int,
                    root_element: str, params: dict[str, str], user: str) -> dict:
        """``ContainerServiceImpl.bulkLaunch``: one launch per target, each queued in the background; every
        success says ``To be assigned`` (the workflows are created later, with the bulk launch id as jobID)."""
        raw = params.get(root_element)
        if raw is None:
            raise XapiError(500, 'There was an error in the request : argument "content" is null')
        try:
            targets = json.loads(raw)
        except ValueError as exc:
            raise XapiError(500, f"There was an error reading or writing the requested resource: {exc}") from exc
        if not isinstance(targets, list):
            raise XapiError(500, "There was an error reading or writing the requested resource: Cannot deserialize "
                                 "value of type `java.util.ArrayList<java.lang.String>` from a non-array value")
        if wrapper_name:
            pipeline = wrapper_name
        else:
            found = self.wrapper(wrapper_id)
            if found is None:
                raise XapiError(500, "There was an error in the request : null")
            pipeline = found[1]["name"]
        bulk_id = f"bulk-{user}{int(time.time() * 1000)}{random.randrange(1000)}"
        successes = []
        for target in targets:
            one = {**params, root_element: str(target)}
            self._start_job(self.launch, "xnat-emulator-bulk-launch",
                            (project, command_id, wrapper_name, wrapper_id, root_element, one, user, bulk_id))
            successes.append({"status": "success", "params": one, "command-id": command_id,
                              "wrapper-id": wrapper_id, "workflow-id": TO_BE_ASSIGNED})
        return {"bulk-launch-id": bulk_id, "pipeline-name": pipeline, "successes": successes, "failures": []}

    def _start_job(self, target: Any, name: str, args: tuple) -> None:
        """A launch's background thread, counted by the step gate from before it starts to its end."""
        def run() -> None:
            try:
                target(*args)
            finally:
                self._gate.ended()

        job = threading.Thread(target=run, daemon=True, name=name)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()] + [job]
        self._gate.started()
        job.start()

    def _new_workflow(self, xnat_id: str, root_element: str, pipeline: str, project: str, user: str,
                      job_id: str | None) -> Workflow:
        """``createContainerWorkflow``: from a URI the object's own ID and type; from a bare ID the ID as given
        and a type guessed from the input's *name* (the plugin's fallback)."""
        data_type = ROOT_NAME_XSI.get(root_element.lower(), root_element)
        wf_id, scan_id = xnat_id, None
        try:
            obj = self.resolve_root("Scan" if "/scans/" in xnat_id else "Session", xnat_id, project) \
                if xnat_id.startswith("/") else None
        except ResolutionError:
            obj = None
        if obj is not None:
            wf_id, data_type = obj.experiment["id"], obj.experiment["xsi_type"]
            project = project or obj.experiment["project"]
            scan_id = str(obj.scan["pk"]) if obj.scan is not None else None
        wf = Workflow(self._next("workflow"), wf_id, data_type, project, pipeline, user, now_text(),
                      scan_id=scan_id, job_id=job_id)
        with self._lock:
            self.workflows[wf.id] = wf
        self._set_workflow(wf, IN_QUEUE_PREFIX + QUEUED)  # queueResolveCommandAndLaunchContainer
        return wf

    def _set_workflow(self, wf: Workflow | None, status: str, details: str | None = None) -> None:
        if wf is None:
            return
        with self._lock:
            wf.status = status
            wf.details = details or ""

    def _pause(self) -> None:
        """Between two steps of a launch: a stop while held (:meth:`hold`), else ``step_seconds``."""
        if not self._gate.stop_here() and self.step_seconds:
            self._stopping.wait(self.step_seconds)

    # ---- stepping launches by hand (tests) ------------------------------------------------------------------
    def hold(self) -> None:
        """From now on every launch stops at its next step and waits for :meth:`step` (or :meth:`release`):
        what a client sees between two steps is then certain, whatever the machine's speed. Hold before the
        launch request to see its first status (``_Queued``)."""
        self._gate.hold()

    def step(self, count: int = 1, timeout: float = 30.0) -> None:
        """Move the held launch on by ``count`` steps; returns once it rests at the next one (or has ended).
        Raises RuntimeError when nothing is held or no launch is left, TimeoutError after ``timeout`` seconds
        (a container whose process does not end rests while it runs: kill it, or release)."""
        self._gate.step(count, timeout)

    def release(self) -> None:
        """Every launch runs on at its own pace (``step_seconds``), held ones included."""
        self._gate.release()

    @contextmanager
    def held(self) -> Iterator[Containers]:
        """:meth:`hold` for a ``with`` block, released at its end (a failing test leaves nothing stopped)."""
        self.hold()
        try:
            yield self
        finally:
            self.release()

    # ---- reading and killing --------------------------------------------------------------------------------
    def find(self, key: str) -> Container:
        """``HibernateContainerEntityService.get``: a database id, or the backend's container id."""
        with self._lock:
            if key.isdigit() and int(key) in self.containers:
                return self.containers[int(key)]
            for c in self.containers.values():
                if c.container_id == key:
                    return c
        raise XapiError(404, f"No container with ID {key}")

    def visible_to(self, c: Container, user: str) -> bool:
        """``isUserOwnerOrAdmin``: container managers, all-data admins (here: site admins) and the launcher.
        Project owners are not modelled (the emulator has no project membership)."""
        return self.auth.is_admin(user) or c.user == user

    def container_json(self, c: Container, user: str) -> dict:
        with self._lock:
            if not self.visible_to(c, user):  # scrubProtectedData
                return drop_none({
                    "id": c.id, "command-id": c.command["id"], "status": c.status,
                    "status-time": java_date(c.status_time) if c.status_time else None, "wrapper-id": c.wrapper["id"],
                    "user-id": c.user, "project": c.project, "backend": "docker", "docker-image": c.command["image"],
                    "command-line": "[REDACTED]" if c.command_line else "", "env": {}, "ports": {}, "mounts": [],
                    "inputs": [], "outputs": [], "history": [], "log-paths": [], "container-labels": {},
                    "secrets": [], "swarm": False})
            env = {k: ("******" if k == "XNAT_PASS" else v) for k, v in c.env.items()}  # scrubPasswordEnv
            return drop_none({
                "id": c.id, "command-id": c.command["id"], "status": c.status,
                "status-time": java_date(c.status_time) if c.status_time else None, "wrapper-id": c.wrapper["id"],
                "container-id": c.container_id, "workflow-id": str(c.workflow.id) if c.workflow else None,
                "user-id": c.user, "project": c.project, "backend": "docker", "docker-image": c.command["image"],
                "container-name": c.command.get("container-name"), "command-line": c.command_line,
                "override-entrypoint": bool(c.command.get("override-entrypoint", False)),
                "working-directory": c.command.get("working-directory"), "subtype": c.command.get("type", "docker"),
                "env": env, "ports": dict(c.command.get("ports") or {}), "mounts": copy.deepcopy(c.mounts),
                "inputs": copy.deepcopy(c.container_inputs), "outputs": copy.deepcopy(c.outputs),
                "history": copy.deepcopy(c.history),
                "log-paths": list(c.log_paths), "container-labels": dict(c.labels), "secrets": [], "swarm": False})

    def listing(self, user: str, project: str | None = None, nonfinalized: bool = False) -> list[dict]:
        with self._lock:
            rows = sorted(self.containers.values(), key=lambda c: c.id)
        out = []
        for c in rows:
            if project is not None and c.project != project:
                continue
            if nonfinalized and (c.status is None or status_is_terminal(c.status) or c.status == FINALIZING):
                continue  # ContainerEntityRepository.getNonFinalizedCriterion
            if self.visible_to(c, user):
                out.append(self.container_json(c, user))
        return out

    def kill(self, key: str, user: str) -> str:
        """``ContainerServiceImpl.kill``: a ``kill`` history entry (the status becomes ``Failed (Killed)``
        unless it is terminal already), then the backend's kill. Answers the container's Docker id."""
        c = self.find(key)
        if not self.visible_to(c, user):  # verifyKillPermission wraps its own refusal in this message
            raise XapiError(401, "There was an error in the request : Unable to determine user permissions")
        self._add_history(c, "kill", "user", user)
        if c.finalized.is_set():  # finalized and removed (the server's autoCleanup): docker-java's NotFoundException
            raise XapiError(404, "com.github.dockerjava.api.exception.NotFoundException: Status 404: "
                                 f"{{\"message\":\"No such container: {c.container_id}\"}}")
        if c.exited.is_set():  # exited, not removed yet: Docker refuses to kill it
            raise XapiError(500, "com.github.dockerjava.api.exception.ConflictException: Status 409: "
                                 f"{{\"message\":\"Container {c.container_id} is not running\"}}")
        c.killed.set()
        if c.process is not None and c.process.poll() is None:
            c.process.kill()
        return c.container_id

    def log(self, c: Container, which: str, since: float | None = None) -> tuple[str, bool]:
        """(content, from_file): the saved log once the container is terminal, else the live one."""
        name = STDOUT_LOG_NAME if which in STDOUT_LOG_NAME else STDERR_LOG_NAME  # STDOUT_LOG_NAME.contains(file)
        if status_is_terminal(c.status):
            for p in c.log_paths:
                if p.endswith("/" + name):
                    return Path(p).read_text(), True
            return "", False
        return (c.stdout if name == STDOUT_LOG_NAME else c.stderr).text(since), False

    def log_since(self, c: Container, which: str, since: str | None) -> dict:
        """``getLog(containerId, logType, since)``: the ``ContainerLogPollResponse``."""
        since_dt = None
        if since:
            try:
                since_dt = datetime.fromisoformat(since.replace("Z", "+00:00"))
            except ValueError as exc:
                raise XapiError(400, f"There was an error in the request : Could not parse timestamp {since}") from exc
            if since_dt.tzinfo is None:
                since_dt = since_dt.replace(tzinfo=UTC)
        query = datetime.now(UTC)
        content, from_file = self.log(c, which, since_dt.timestamp() if since_dt else None)
        if status_is_terminal(c.status):
            return {"content": content, "fromFile": from_file, "timestamp": "-1", "bytesRead": -1}
        if not content:
            return {"content": "", "fromFile": False, "timestamp": utc_iso(since_dt or query), "bytesRead": -1}
        stream = c.stdout if which in STDOUT_LOG_NAME else c.stderr
        last = stream.last_time(since_dt.timestamp() if since_dt else None)
        stamp = datetime.fromtimestamp(last, UTC) + timedelta(seconds=1) if last else (since_dt or query)
        return {"content": content, "fromFile": False, "timestamp": utc_iso(stamp), "bytesRead": -1}

    def logs_zip(self, c: Container) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for name in (STDOUT_LOG_NAME, STDERR_LOG_NAME):
                content, from_file = self.log(c, name)
                if content or from_file or not status_is_terminal(c.status):
                    zf.writestr(name, content)
        return buf.getvalue()

    def wait(self, key: str | int, timeout: float = 30.0) -> Container:
        """Wait until a container is terminal *and* finalized (its last history entry written); for tests."""
        deadline = time.time() + timeout
        while True:
            c = self.find(str(key))
            if c.finalized.is_set():
                return c
            if time.time() > deadline:
                raise TimeoutError(f"container {key} is still {c.status}")
            time.sleep(0.02)


def _failure(message: str, params: dict[str, str], command_id: int, wrapper_id: int) -> dict:
    """``LaunchReport.Failure.create``: ``id`` 0, command and wrapper ids only when not 0."""
    return drop_none({"status": "failure", "params": dict(params), "id": 0,
                       "command-id": command_id or None, "wrapper-id": wrapper_id or None, "message": message})
