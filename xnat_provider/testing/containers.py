"""The Container Service's state: commands and wrappers, where they are enabled, launches, workflows, containers.

This is the emulator's side of the XNAT Container Service plugin (``NrgXnat/container-service``, read at 3.7.3;
``docs/container-service.md`` has the API a client sees, with line references). A *command* is a Docker image with
a JSON description; its *wrappers* (the command's ``xnat`` list) say which XNAT object it runs on and where its
outputs go. Here a command's container is a Python callable or a subprocess registered with the command
(:meth:`Containers.register_command`), run in a thread with the root element's files copied into its input mount,
and its output mount uploaded as the wrapper's output handlers say, as new resources on the session or scan.

What happens after a launch, as the plugin's Docker backend does it (``ContainerServiceImpl.launchContainer``,
``consumeResolveCommandAndLaunchContainer``, ``processEvent``, ``finalize``):

1. The launch request creates a workflow (``wrk:workflowData``, status ``Queued`` then ``_Queued``) and answers
   at once with the workflow's id; no container exists yet, and a launch on a wrong input still answers
   ``success``.
2. A background step resolves the command (workflow ``Staging``, details ``Command resolution``). A failure ends
   there: the workflow becomes ``Failed (Command resolution)`` with the reason in its details; no container.
3. The container is created (status ``Created``; the workflow's ``comments`` get the container's Docker id, the
   link a client follows), then started (``Running``).
4. When the process exits: a ``die`` history entry with the exit code, ``_die`` (queued for finalizing),
   ``Finalizing``, then ``Complete`` (outputs uploaded) or ``Failed`` (non-zero exit; nothing uploaded), or
   ``Failed (Upload)`` when a required output could not be uploaded. The workflow's status follows the container's.
5. A kill makes the status ``Failed (Killed)`` at once, then the process dies (exit 137) and the finalization
   makes it ``Failed``.

Not modelled: Swarm and Kubernetes backends (their ``Waiting``/``Pending`` statuses), setup and wrapup
containers, orchestrations, command automations (event-triggered launches), assessor outputs, secrets, the
launch UI's swarm constraints, per-project command configuration. Everything here lives in memory: commands and
containers are gone when the emulator stops (their uploaded outputs stay in the archive, which persists).
"""

from __future__ import annotations

import copy
import io
import json
import os
import random
import re
import secrets
import shutil
import subprocess
import threading
import time
import traceback
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .model import SCAN_TYPES, SESSION_TYPES, md5_file
from .store import now_text

if TYPE_CHECKING:
    from .auth import Auth
    from .model import Model

# ---- the plugin's vocabulary ------------------------------------------------------------------------------

TERMINAL_PREFIXES = ("Complete", "Failed", "Killed")  # ContainerUtils.TerminalState, statusIsTerminal: startsWith
QUEUED = "Queued"  # PersistentWorkflowUtils.QUEUED
IN_QUEUE_PREFIX = "_"  # ContainerRequest.inQueueStatusPrefix
STAGING = "Staging"
CREATED = "Created"
FINALIZING = "Finalizing"
TO_BE_ASSIGNED = "To be assigned"  # ContainerServiceImpl.TO_BE_ASSIGNED
LAUNCH_JUSTIFICATION = "Container launch"
RESOLUTION_DETAILS_PREFIX = "Submitted data does not match command resolution requirements. "
NONZERO_EXIT_DETAILS = "Non-zero exit code and/or failure status from container"
FINALIZING_MESSAGE = "Processing finished. Uploading files."
KILLED_EXIT_CODE = "137"  # SIGKILL, what Docker reports for a killed container
STDOUT_LOG_NAME, STDERR_LOG_NAME = "stdout.log", "stderr.log"  # ContainerService.STDOUT_LOG_NAME...

WRAPPER_INPUT_TYPES = {"Session", "Scan"}  # external inputs the emulator resolves
DERIVED_INPUT_TYPES = {"Resource", "Scan"}
SIMPLE_INPUT_TYPES = {"string", "boolean", "number"}
# Each image session type "is a" xnat:imageSessionData (xsiTypesMatch in CommandServiceImpl.available).
XSI_PARENTS = {
    **{t: ("xnat:imageSessionData", "xnat:subjectAssessorData", "xnat:experimentData") for t in SESSION_TYPES},
    **{t: ("xnat:imageScanData",) for t in SCAN_TYPES},
}
KNOWN_XSI_TYPES = set(XSI_PARENTS) | {p for ps in XSI_PARENTS.values() for p in ps} | {"xnat:projectData",
                                                                                    "xnat:subjectData"}
SINGULAR = {"xnat:mrSessionData": "MR Session", "xnat:ctSessionData": "CT Session",
            "xnat:petSessionData": "PET Session", "xnat:otherDicomSessionData": "Other DICOM Session"}
# CommandWrapperInputType: an input's *name* used as the workflow's data type before resolution
# (createContainerWorkflow falls back on CommandWrapperInputType.valueOf(rootElement.toUpperCase())).
ROOT_NAME_XSI = {"session": "xnat:imageSessionData", "scan": "xnat:imageScanData", "project": "xnat:projectData",
                 "subject": "xnat:subjectData", "resource": "xnat:resource", "assessor": "xnat:imageAssessorData"}


def status_is_terminal(status: str | None) -> bool:
    """``ContainerUtils.statusIsTerminal``: Complete, Failed (any ``Failed (...)``) or Killed."""
    return bool(status) and status.startswith(TERMINAL_PREFIXES)  # type: ignore[union-attr]


def map_status(raw: str) -> str:
    """``ContainerEntity.mapStatus`` for the Docker backend: the container's status from a history entry's."""
    if raw == "complete":
        return "Waiting"
    if raw == "created":
        return "Created"
    if raw in ("create", "start", "started", "starting", "running"):
        return "Running"
    if raw in ("remove", "orphaned", "oom", "rejected", "shutdown"):
        return f"Failed ({raw.capitalize()})"
    if raw == "kill":
        return "Failed (Killed)"
    if raw == "failed":
        return "Failed"
    return raw


def java_date(ts: float | None = None) -> str:
    """``JsonDateSerializer``: ``yyyy-MM-dd'T'HH:mm:ss.SSSZ`` in the server's zone."""
    ts = time.time() if ts is None else ts
    lt = time.localtime(ts)
    return time.strftime("%Y-%m-%dT%H:%M:%S", lt) + f".{int(ts * 1000) % 1000:03d}" + time.strftime("%z", lt)


def utc_iso(dt: datetime) -> str:
    """``DATETIME_OUTPUT_FORMATTER`` (ISO_OFFSET_DATE_TIME) at UTC, as the log-polling answer writes it."""
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


class XapiError(Exception):
    """An error a Container Service endpoint answers: a status and a plain-text body (Spring, not Restlet)."""

    def __init__(self, status: int, message: str = ""):
        super().__init__(message)
        self.status = status
        self.message = message


# ---- command JSON -------------------------------------------------------------------------------------------

def drop_none(d: dict[str, Any]) -> dict[str, Any]:
    """XNAT's Jackson setup omits null properties (SerializerConfig: ``serializationInclusion(NON_NULL)``)."""
    return {k: v for k, v in d.items() if v is not None}


def _input(i: dict, *, wrapper: bool, derived: bool = False) -> dict:
    out = {
        "name": i.get("name"), "label": i.get("label"), "description": i.get("description"),
        "type": i.get("type") or "string", "matcher": i.get("matcher"), "default-value": i.get("default-value"),
        # Command.CommandInput: required defaults to false; wrapper inputs default to true (required == null || ...)
        "required": bool(i.get("required", wrapper)), "replacement-key": i.get("replacement-key"),
        "sensitive": i.get("sensitive"),
    }
    if wrapper:
        out.update({
            "provides-value-for-command-input": i.get("provides-value-for-command-input"),
            "provides-files-for-command-mount": i.get("provides-files-for-command-mount"),
            "via-setup-command": i.get("via-setup-command"), "user-settable": i.get("user-settable"),
            "load-children": bool(i.get("load-children", True)),
        })
        if derived:
            out.update({
                "derived-from-wrapper-input": i.get("derived-from-wrapper-input"),
                "derived-from-xnat-object-property": i.get("derived-from-xnat-object-property"),
                "multiple": bool(i.get("multiple", False)), "parser": i.get("parser"),
            })
    else:
        out.update({
            "command-line-flag": i.get("command-line-flag"), "command-line-separator": i.get("command-line-separator"),
            "true-value": i.get("true-value"), "false-value": i.get("false-value"),
            "select-values": list(i.get("select-values") or []), "multiple-delimiter": i.get("multiple-delimiter"),
        })
    return drop_none(out)


def normalise_command(raw: dict, command_id: int, wrapper_ids: list[int]) -> dict:
    """A command as ``GET /xapi/commands`` writes it (``Command``'s @JsonProperty names, nulls omitted)."""
    cmd = drop_none({
        "id": command_id, "name": raw.get("name"), "label": raw.get("label"), "description": raw.get("description"),
        "version": raw.get("version"), "schema-version": raw.get("schema-version"), "info-url": raw.get("info-url"),
        "image": raw.get("image"), "container-name": raw.get("container-name"), "type": raw.get("type") or "docker",
        "index": raw.get("index"), "hash": raw.get("hash"), "working-directory": raw.get("working-directory"),
        "command-line": raw.get("command-line"), "command-metadata": raw.get("command-metadata"),
        "override-entrypoint": raw.get("override-entrypoint"),
        "mounts": [drop_none({"name": m.get("name"), "writable": bool(m.get("writable", False)),
                               "path": m.get("path")}) for m in raw.get("mounts") or []],
        "environment-variables": dict(raw.get("environment-variables") or {}),
        "ports": dict(raw.get("ports") or {}),
        "inputs": [_input(i, wrapper=False) for i in raw.get("inputs") or []],
        "outputs": [drop_none({"name": o.get("name"), "description": o.get("description"),
                                "required": o.get("required"), "mount": o.get("mount"), "path": o.get("path"),
                                "glob": o.get("glob")}) for o in raw.get("outputs") or []],
        "xnat": [],
        "container-labels": raw.get("container-labels"),
        "secrets": [],
        "visibility": raw.get("visibility") or "public",  # CommandEntity.DEFAULT_VISIBILITY
    })
    for wid, w in zip(wrapper_ids, raw.get("xnat") or [], strict=True):
        cmd["xnat"].append(drop_none({
            "id": wid, "name": w.get("name"), "label": w.get("label"), "description": w.get("description"),
            "contexts": list(w.get("contexts") or []),
            "external-inputs": [_input(i, wrapper=True) for i in w.get("external-inputs") or []],
            "derived-inputs": [_input(i, wrapper=True, derived=True) for i in w.get("derived-inputs") or []],
            "output-handlers": [drop_none({
                "name": h.get("name"), "accepts-command-output": h.get("accepts-command-output"),
                "via-wrapup-command": h.get("via-wrapup-command"), "as-a-child-of": h.get("as-a-child-of"),
                "type": h.get("type") or "Resource", "xsi-type": h.get("xsi-type"), "label": h.get("label"),
                "format": h.get("format"), "description": h.get("description"), "content": h.get("content"),
                "tags": h.get("tags")}) for h in w.get("output-handlers") or []],
        }))
    return cmd


def validate_command(cmd: dict) -> None:
    """What the emulator can run; refuses (ValueError) anything it would have to invent an answer for."""
    errors: list[str] = []
    if not cmd.get("name"):
        errors.append("Command name cannot be blank.")
    if not cmd.get("image"):
        errors.append("Command image cannot be blank.")
    mounts = {m["name"] for m in cmd["mounts"]}
    outputs = {o["name"]: o for o in cmd["outputs"]}
    for o in cmd["outputs"]:
        if o.get("mount") not in mounts:
            errors.append(f"Command output \"{o['name']}\" references unknown mount \"{o.get('mount')}\".")
    if not cmd["xnat"]:
        errors.append("The emulator needs at least one wrapper (the command's \"xnat\" list).")
    for w in cmd["xnat"]:
        if not w.get("name"):
            errors.append("Command wrapper name cannot be blank.")
        ext = w["external-inputs"]
        names = [i["name"] for i in ext + w["derived-inputs"]]
        if len(ext) != 1 or ext[0]["type"] not in WRAPPER_INPUT_TYPES:
            errors.append(f"Wrapper \"{w.get('name')}\": the emulator runs wrappers with one external input of "
                          f"type {' or '.join(sorted(WRAPPER_INPUT_TYPES))}.")
        for d in w["derived-inputs"]:
            if d["type"] not in DERIVED_INPUT_TYPES | SIMPLE_INPUT_TYPES:
                errors.append(f"Derived input \"{d['name']}\": type {d['type']} is not modelled.")
            if d.get("derived-from-wrapper-input") not in names:
                errors.append(f"Derived input \"{d['name']}\" is derived from unknown input "
                              f"\"{d.get('derived-from-wrapper-input')}\".")
            if d.get("matcher"):
                try:
                    parse_matcher(d["matcher"])
                except ValueError as exc:
                    errors.append(str(exc))
        for i in ext + w["derived-inputs"]:
            mount = i.get("provides-files-for-command-mount")
            if mount and mount not in mounts:
                errors.append(f"Input \"{i['name']}\" provides files for unknown mount \"{mount}\".")
        parents = {i["name"] for i in ext + w["derived-inputs"] if i["type"] in ("Session", "Scan")}
        for h in w["output-handlers"]:
            if h["type"] != "Resource":
                errors.append(f"Output handler \"{h['name']}\": type {h['type']} is not modelled (only Resource).")
            if h.get("accepts-command-output") not in outputs:
                errors.append(f"Output handler \"{h['name']}\" accepts unknown command output "
                              f"\"{h.get('accepts-command-output')}\".")
            if h.get("as-a-child-of") not in parents:
                errors.append(f"Output handler \"{h['name']}\" must be a child of a Session or Scan input, not "
                              f"\"{h.get('as-a-child-of')}\" (uploads into other outputs are not modelled).")
        for o in cmd["outputs"]:
            if not any(h.get("accepts-command-output") == o["name"] for h in w["output-handlers"]):
                errors.append(f"Wrapper \"{w.get('name')}\": no output handler for command output \"{o['name']}\".")
    if errors:
        raise ValueError("Invalid command:\n\t" + "\n\t".join(errors))


def simple_command(
    name: str = "dcm2niix",
    image: str = "emulator/dcm2niix:1.0",
    *,
    context: str = "session",
    input_resource: str = "DICOM",
    output_resource: str = "NIFTI",
    output_format: str | None = None,
    output_content: str | None = None,
    output_required: bool = True,
    command_line: str = "run /input /output",
    inputs: Sequence[dict] = (),
    wrapper_name: str | None = None,
) -> dict:
    """The command JSON of the common converter: one wrapper on a session or a scan (``context``), the root
    element's ``input_resource`` resource(s) mounted at ``/input``, and the ``/output`` mount uploaded as a new
    resource ``output_resource`` on the same session or scan.

    On a session the input mount holds the session's folder (``SCANS/{id}/{label}/...``, ``RESOURCES/...``) and
    ``input_resource`` only has to exist somewhere in it (a matcher over the session's scans is not modelled);
    on a scan it holds that one resource's files."""
    if context not in ("session", "scan"):
        raise ValueError("context must be 'session' or 'scan'")
    root_type, xsi = ("Session", "xnat:imageSessionData") if context == "session" else ("Scan", "xnat:imageScanData")
    wrapper: dict[str, Any] = {
        "name": wrapper_name or f"{name}-{context}", "label": f"{name} on a {context}",
        "description": f"Run {name} on a {context}", "contexts": [xsi],
        "external-inputs": [{"name": context, "type": root_type, "required": True, "load-children": True}],
        "derived-inputs": [],
        "output-handlers": [{"name": "output-resource", "accepts-command-output": "output", "as-a-child-of": context,
                             "type": "Resource", "label": output_resource, "format": output_format,
                             "content": output_content}],
    }
    if context == "scan":
        wrapper["derived-inputs"].append({
            "name": "input-resource", "type": "Resource", "matcher": f"@.label == '{input_resource}'",
            "required": True, "derived-from-wrapper-input": "scan", "provides-files-for-command-mount": "in"})
    else:
        wrapper["external-inputs"][0]["provides-files-for-command-mount"] = "in"
    return {
        "name": name, "description": f"{name} (XNAT emulator)", "version": "1.0", "schema-version": "1.0",
        "image": image, "type": "docker", "command-line": command_line,
        "mounts": [{"name": "in", "writable": False, "path": "/input"},
                   {"name": "out", "writable": True, "path": "/output"}],
        "inputs": list(inputs),
        "outputs": [{"name": "output", "description": "The converted files", "required": output_required,
                     "mount": "out"}],
        "xnat": [wrapper],
    }


# ---- JSONPath-ish matchers ----------------------------------------------------------------------------------

_CLAUSE = re.compile(
    r"""^\s*(?:
        @\.(?P<f1>[\w-]+)\s*(?P<op>==|!=)\s*(?P<q1>['"])(?P<v1>.*?)(?P=q1)
      | @\.(?P<f2>[\w-]+)\s*=~\s*/(?P<re>.*)/(?P<flags>i?)
      | (?P<q3>['"])(?P<v3>.*?)(?P=q3)\s+in\s+@\.(?P<list3>[\w-]+)\[\*\]\.(?P<f3>[\w-]+)
      | @\.(?P<f4>[\w-]+)\s+in\s+\[(?P<items>[^\]]*)\]
    )\s*$""", re.X)


def parse_matcher(text: str) -> list[list[re.Match[str]]]:
    """A matcher as an OR of ANDs of clauses: ``@.f == 'v'``, ``@.f != 'v'``, ``@.f =~ /re/``, ``'v' in
    @.list[*].f``, ``@.f in ['a','b']``. The plugin evaluates full JSONPath filters; the emulator takes these."""
    alternatives = []
    for alt in re.split(r"\|\|", text):
        clauses = []
        for part in re.split(r"&&", alt):
            m = _CLAUSE.match(part)
            if not m:
                raise ValueError(f"Matcher clause {part.strip()!r} is not one the emulator evaluates.")
            clauses.append(m)
        alternatives.append(clauses)
    return alternatives


def matches(matcher: str | None, obj: dict[str, Any]) -> bool:
    if not matcher:
        return True
    for alt in parse_matcher(matcher):
        ok = True
        for m in alt:
            if m.group("f1"):
                value = str(obj.get(m.group("f1"), ""))
                ok = (value == m.group("v1")) == (m.group("op") == "==")
            elif m.group("f2"):
                flags = re.I if m.group("flags") else 0
                ok = re.search(m.group("re"), str(obj.get(m.group("f2"), "")), flags) is not None
            elif m.group("f3"):
                ok = any(str(x.get(m.group("f3"))) == m.group("v3") for x in obj.get(m.group("list3")) or [])
            else:
                items = [s.strip().strip("'\"") for s in m.group("items").split(",")]
                ok = str(obj.get(m.group("f4"), "")) in items
            if not ok:
                break
        if ok:
            return True
    return False


# ---- what a container runs -----------------------------------------------------------------------------------

class LogStream:
    """A container's stdout or stderr: written by the runner, read live by the log endpoints (with the time of
    each write, for ``logSince``), saved to ``log-paths`` at finalization."""

    def __init__(self) -> None:
        self._chunks: list[tuple[float, str]] = []
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        if text:
            with self._lock:
                self._chunks.append((time.time(), text))
        return len(text)

    def flush(self) -> None:
        pass

    def text(self, since: float | None = None) -> str:
        with self._lock:
            return "".join(t for ts, t in self._chunks if since is None or ts >= since)

    def last_time(self, since: float | None = None) -> float | None:
        with self._lock:
            times = [ts for ts, _ in self._chunks if since is None or ts >= since]
        return times[-1] if times else None


@dataclass
class RunContext:
    """What a registered runner gets: the container's mounts (input files copied in, an empty output folder),
    its resolved inputs, environment and command line, its stdout and stderr, and the kill switch.

    A runner returns the exit code (``None`` is 0); an exception is exit code 1 with the traceback on stderr. A
    kill does not wait for a callable: its container dies with 137 at once and whatever the callable does after
    that is ignored (call :meth:`wait_until_killed` to play a container that hangs until killed)."""

    container_id: int
    mounts: dict[str, Path]
    inputs: dict[str, str]
    env: dict[str, str]
    command_line: str
    stdout: LogStream
    stderr: LogStream
    killed: threading.Event

    def wait_until_killed(self, timeout: float | None = None) -> bool:
        return self.killed.wait(timeout)


Runner = Callable[[RunContext], int | None] | Sequence[str]


def hang_until_killed(ctx: RunContext) -> int:
    """A runner that never finishes on its own: a container stuck until someone kills it."""
    ctx.stdout.write("waiting...\n")
    ctx.wait_until_killed()
    return 137


def exit_with(code: int, stderr: str = "", stdout: str = "") -> Callable[[RunContext], int]:
    """A runner that writes ``stdout``/``stderr`` and exits with ``code`` (a failing container when not 0)."""
    def run(ctx: RunContext) -> int:
        ctx.stdout.write(stdout)
        ctx.stderr.write(stderr)
        return code
    return run


# ---- records ------------------------------------------------------------------------------------------------

@dataclass
class Workflow:
    """A ``wrk:workflowData`` row, as the plugin writes it for a launch (``createContainerWorkflow``)."""

    id: int
    xnat_id: str
    data_type: str
    external_id: str
    pipeline_name: str
    user: str
    launch_time: str
    status: str = QUEUED
    details: str = ""
    comments: str = ""
    scan_id: str | None = None
    job_id: str | None = None

    def data_fields(self) -> dict[str, Any]:
        return {
            "wrk_workflowData_id": self.id, "ID": self.xnat_id, "data_type": self.data_type,
            "ExternalID": self.external_id, "pipeline_name": self.pipeline_name, "status": self.status,
            "details": self.details, "comments": self.comments, "justification": LAUNCH_JUSTIFICATION,
            "category": "DATA", "type": "PROCESS", "launch_time": self.launch_time, "create_user": self.user,
            "scan_id": self.scan_id, "jobID": self.job_id,
        }


@dataclass
class XnatObject:
    """A resolved wrapper input: a session, a scan of it, or a resource of either."""

    kind: str  # "Session", "Scan" or "Resource"
    experiment: dict
    scan: dict | None = None
    resource: dict | None = None

    @property
    def session_uri(self) -> str:
        return f"/archive/experiments/{self.experiment['id']}"

    @property
    def owner(self) -> tuple[str, str]:
        if self.scan is not None:
            return "scan", f"{self.experiment['id']}/{self.scan['scan_id']}"
        return "experiment", self.experiment["id"]

    @property
    def uri(self) -> str:
        """``Session``/``Scan``/``Resource.getUri``: ``/archive/experiments/{id}[/scans/{id}][/resources/{label}]``."""
        uri = self.session_uri
        if self.scan is not None:
            uri += f"/scans/{self.scan['scan_id']}"
        if self.resource is not None:
            uri += f"/resources/{self.resource['label']}"
        return uri

    @property
    def label(self) -> str:
        if self.resource is not None:
            return self.resource["label"]
        if self.scan is not None:
            return self.scan["scan_id"]
        return self.experiment["label"]


@dataclass
class Container:
    id: int
    container_id: str
    command: dict
    wrapper: dict
    workflow: Workflow | None
    user: str
    project: str | None
    root: XnatObject
    objects: dict[str, XnatObject]
    inputs: dict[str, str]
    mounts: list[dict]
    outputs: list[dict]
    env: dict[str, str]
    labels: dict[str, str]
    command_line: str
    work_dir: Path
    token_alias: str | None = None
    container_inputs: list[dict] = field(default_factory=list)  # Container.maskedInputs(): raw, then resolved
    status: str | None = None
    status_time: float | None = None
    history: list[dict] = field(default_factory=list)
    log_paths: list[str] = field(default_factory=list)
    stdout: LogStream = field(default_factory=LogStream)
    stderr: LogStream = field(default_factory=LogStream)
    killed: threading.Event = field(default_factory=threading.Event)
    exited: threading.Event = field(default_factory=threading.Event)
    finalized: threading.Event = field(default_factory=threading.Event)
    exit_code: str | None = None
    process: subprocess.Popen | None = None

    def exit_code_from_history(self) -> str | None:
        """``Container.exitCode()``: the newest history entry that has one."""
        for h in reversed(self.history):
            if h.get("exitCode") is not None:
                return h["exitCode"]
        return None


@dataclass
class RegisteredCommand:
    json: dict
    run: Runner | None


# ---- the state ----------------------------------------------------------------------------------------------

class Containers:
    """The Container Service of one emulator: ``emulator.containers``.

    Register a command (its JSON, as a site administrator installs it, and what its container does), enable its
    wrappers for the projects that use it, then launch through the REST API as a client would::

        cmd = emulator.containers.register_command(simple_command("dcm2niix", context="scan"), run=convert,
                                                   enable_for=["P1"])
        wrapper_id = cmd["xnat"][0]["id"]

    :param step_seconds: the pause between two steps of a launch (queue, staging, start, finalizing...), so that a
        client polling the API sees the intermediate statuses; 0 runs through them as fast as possible.
    """

    def __init__(self, model: Model, auth: Auth, data_dir: Path, step_seconds: float = 0.05):
        self.model = model
        self.auth = auth
        self.data_dir = Path(data_dir)
        self.step_seconds = step_seconds
        self.site_url = ""  # XNAT_HOST in a container's environment; the emulator sets it when it starts
        self._lock = threading.RLock()
        self._stopping = threading.Event()
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
        job = threading.Thread(target=self._run_launch, daemon=True, name="xnat-emulator-container",
                               args=(project, command_id, wrapper_name, wrapper_id, dict(params), user, workflow))
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()] + [job]
        job.start()
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
            job = threading.Thread(target=self.launch, daemon=True, name="xnat-emulator-bulk-launch",
                                   args=(project, command_id, wrapper_name, wrapper_id, root_element, one, user,
                                         bulk_id))
            with self._lock:
                self._threads = [t for t in self._threads if t.is_alive()] + [job]
            job.start()
            successes.append({"status": "success", "params": one, "command-id": command_id,
                              "wrapper-id": wrapper_id, "workflow-id": TO_BE_ASSIGNED})
        return {"bulk-launch-id": bulk_id, "pipeline-name": pipeline, "successes": successes, "failures": []}

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
        if self.step_seconds:
            self._stopping.wait(self.step_seconds)

    def _run_launch(self, project: str | None, command_id: int, wrapper_name: str | None, wrapper_id: int,
                    params: dict[str, str], user: str, workflow: Workflow | None) -> None:
        """``consumeResolveCommandAndLaunchContainer``, then the container's life."""
        self._pause()
        self._set_workflow(workflow, STAGING, "Command resolution")
        self._pause()
        try:
            if wrapper_id == 0:
                wrapper_id = self.wrapper_id(command_id, wrapper_name or "")
            found = self.wrapper(wrapper_id)
            if found is None:
                raise XapiError(404, f"No command with wrapper with id {wrapper_id}")
            cmd, wrapper = found
        except XapiError as exc:  # NotFoundException: handleFailure(workflow, e, "") names the exception class
            self._fail_launch(workflow, "Failed (org.nrg.framework.exceptions.NotFoundException)", exc.message)
            return
        if project is None and workflow is not None:
            project = workflow.external_id or None
        try:
            resolved = self.resolve(cmd, wrapper, params, project)
        except ResolutionError as exc:
            self._fail_launch(workflow, "Failed (Command resolution)", RESOLUTION_DETAILS_PREFIX + str(exc))
            return
        root_name = wrapper["external-inputs"][0]["name"]
        root = resolved["objects"][root_name]
        project = project or root.experiment["project"]
        if workflow is not None:  # updateWorkflowWithResolvedCommand
            with self._lock:
                workflow.xnat_id, workflow.data_type = root.experiment["id"], root.experiment["xsi_type"]
                workflow.external_id = workflow.external_id or root.experiment["project"]
                workflow.scan_id = str(root.scan["pk"]) if root.scan is not None else workflow.scan_id
                workflow.status = QUEUED
        run = self.commands[cmd["id"]].run
        if run is None:  # containerControlApi.create: the image is not there
            self._fail_launch(workflow, "Failed (Container launch)",
                              f"Status 404: {{\"message\":\"No such image: {cmd['image']}\"}}")
            return
        container = self._create_container(cmd, wrapper, resolved, root, project, user, workflow, params)
        self._pause()
        for event in ("create", "start"):  # the Docker events the status updater turns into history
            self._add_history(container, event, "event")
        self._pause()
        self._execute(container, run)
        self._finalize(container)

    def _fail_launch(self, workflow: Workflow | None, status: str, details: str) -> None:
        if workflow is None:
            with self._lock:
                self.resolution_failures.append(f"{status}: {details}")
        self._set_workflow(workflow, status, details)

    def _create_container(self, cmd: dict, wrapper: dict, resolved: dict, root: XnatObject, project: str,
                          user: str, workflow: Workflow | None, params: dict[str, str] | None = None) -> Container:
        cid = self._next("container")
        work = self.data_dir / "containers" / str(cid)
        mounts, mount_paths = [], {}
        for m in cmd["mounts"]:
            host = work / "mounts" / m["name"]
            host.mkdir(parents=True, exist_ok=True)
            mount_paths[m["name"]] = host
            mounts.append({"id": self._next("mount"), "name": m["name"], "writable": m["writable"],
                           "xnat-host-path": str(host), "container-host-path": str(host),
                           "container-path": m.get("path") or "", "input-files": []})
        for i in wrapper["external-inputs"] + wrapper["derived-inputs"]:
            target = i.get("provides-files-for-command-mount")
            obj = resolved["objects"].get(i["name"])
            if target and obj is not None:
                self._copy_files(obj, mount_paths[target])
        outputs = []
        for o in cmd["outputs"]:
            for h in wrapper["output-handlers"]:
                if h.get("accepts-command-output") != o["name"]:
                    continue
                outputs.append(drop_none({
                    "id": self._next("output"), "name": f"{o['name']}:{h['name']}", "from-command-output": o["name"],
                    "from-output-handler": h["name"], "type": h["type"], "required": bool(o.get("required")),
                    "mount": o["mount"], "path": o.get("path"), "glob": o.get("glob"), "label": h.get("label"),
                    "format": h.get("format"), "description": h.get("description"), "content": h.get("content"),
                    "tags": list(h.get("tags") or []), "handled-by": h.get("as-a-child-of")}))
        values = {k: v for k, v in resolved["values"].items() if v is not None}
        token = self.auth.issue_token(user)
        env = {**cmd.get("environment-variables", {}), "XNAT_USER": token["alias"], "XNAT_PASS": token["secret"],
               "XNAT_HOST": self.site_url, "XNAT_WORKFLOW_ID": str(workflow.id) if workflow else "",
               "XNAT_EVENT_ID": str(workflow.id) if workflow else ""}
        labels = {"XNAT_DATATYPE": SINGULAR.get(root.experiment["xsi_type"], root.experiment["xsi_type"]),
                  "XNAT_PROJECT": project, "XNAT_ID": root.experiment["id"], "XNAT_USER_ID": user,
                  **(cmd.get("container-labels") or {})}
        line = cmd.get("command-line") or ""
        for ci in cmd["inputs"]:
            key = ci.get("replacement-key") or f"#{ci['name']}#"  # Input.replacementKey()
            line = line.replace(key, values.get(ci["name"], ""))
        c = Container(cid, secrets.token_hex(32), cmd, wrapper, workflow, user, project, root,
                      dict(resolved["objects"]), values, mounts, outputs, env, labels, line, work,
                      token_alias=token["alias"],
                      container_inputs=self._container_inputs(cmd, wrapper, resolved, params or {}))
        with self._lock:
            self.containers[cid] = c
            if workflow is not None:
                workflow.comments = c.container_id  # updateWorkflowWithContainer: the backend's id
        self._add_history(c, CREATED, "user", user)  # HibernateContainerEntityService.save
        return c

    def _container_inputs(self, cmd: dict, wrapper: dict, resolved: dict, params: dict[str, str]) -> list[dict]:
        """``Container.maskedInputs`` (the container's ``inputs``): the launch's parameters as given (type ``raw``,
        ``Builder.addRawInputs``), then the resolved values (``addResolvedInputs``: ``command``,
        ``wrapper-external``, ``wrapper-derived``; a missing value is the text ``null``). A sensitive input's value
        is ``*****``, and when any input is sensitive the raw inputs are left out altogether."""
        values = resolved["values"]
        resolved_inputs = [("command", i) for i in cmd["inputs"]] + \
            [("wrapper-external", i) for i in wrapper["external-inputs"]] + \
            [("wrapper-derived", i) for i in wrapper["derived-inputs"]]
        sensitive = any(bool(i.get("sensitive")) for _, i in resolved_inputs)
        out = [] if sensitive else [{"id": self._next("input"), "type": "raw", "name": k, "value": v,
                                     "sensitive": False} for k, v in params.items()]
        for kind, i in resolved_inputs:
            value = values.get(i["name"])
            out.append(drop_none({"id": self._next("input"), "type": kind, "name": i["name"],
                                  "value": "*****" if i.get("sensitive") else ("null" if value is None else value),
                                  "sensitive": i.get("sensitive")}))
        return out

    def _copy_files(self, obj: XnatObject, dest: Path) -> None:
        """An input mount's files: a session's folder (``SCANS/{id}/{label}/...``, ``RESOURCES/{label}/...``), a
        scan's (``{label}/...``), or one resource's files, as the plugin mounts the object's directory."""
        if obj.resource is not None:
            pairs = [(obj.resource, Path())]
        elif obj.scan is not None:
            pairs = [(r, Path(r["label"])) for r in self.model.resources(*obj.owner)]
        else:
            eid = obj.experiment["id"]
            pairs = [(r, Path("RESOURCES") / r["label"]) for r in self.model.resources("experiment", eid)]
            for s in self.model.scans(eid):
                pairs += [(r, Path("SCANS") / s["scan_id"] / r["label"])
                          for r in self.model.resources("scan", f"{eid}/{s['scan_id']}")]
        for res, rel in pairs:
            for f in self.model.files(res["id"]):
                target = dest / rel / f["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.model.file_path(res, f["path"]), target)

    def _add_history(self, c: Container, status: str, entity_type: str, entity_id: str | None = None,
                     message: str | None = None, exit_code: str | None = None) -> None:
        """``HibernateContainerEntityService.addContainerHistoryItem``: record the entry; the container's status
        becomes the entry's (mapped) unless it is terminal and the entry's is not; the workflow follows."""
        now = time.time()
        external = None if entity_type == "user" else java_date(now)
        entry = drop_none({"id": self._next("history"), "status": status, "entity-type": entity_type,
                            "entity-id": entity_id, "time-recorded": java_date(now), "external-timestamp": external,
                            "message": message, "exitCode": exit_code})
        with self._lock:
            c.history.append(entry)
            if not status_is_terminal(c.status) or status_is_terminal(status):
                c.status, c.status_time = map_status(status), now
            if c.workflow is not None:
                c.workflow.status = c.status or ""
                c.workflow.details = message or ""

    def _execute(self, c: Container, run: Runner) -> None:
        mounts = {m["name"]: Path(m["xnat-host-path"]) for m in c.mounts}
        ctx = RunContext(c.id, mounts, dict(c.inputs), dict(c.env), c.command_line, c.stdout, c.stderr, c.killed)
        result: dict[str, Any] = {}

        def target() -> None:
            try:
                if callable(run):
                    code = run(ctx)
                    result["code"] = 0 if code is None else int(code)
                else:
                    result["code"] = self._subprocess(c, [str(a) for a in run], ctx)
            except Exception:
                c.stderr.write(traceback.format_exc())
                result["code"] = 1
            finally:
                c.exited.set()

        threading.Thread(target=target, daemon=True, name=f"xnat-emulator-container-{c.id}").start()
        while not c.exited.wait(0.02):
            if c.killed.is_set() or self._stopping.is_set():
                break
        code = KILLED_EXIT_CODE if c.killed.is_set() and "code" not in result else str(result.get("code", 137))
        c.exit_code = code
        self._add_history(c, "die", "event", exit_code=code)  # DockerContainerEvent "die", attribute exitCode

    def _subprocess(self, c: Container, argv: list[str], ctx: RunContext) -> int:
        mapping = {**{k: str(v) for k, v in ctx.mounts.items()}, **ctx.inputs}
        argv = [a.format_map(_Defaulting(mapping)) for a in argv]
        env = {**os.environ, **ctx.env}
        proc = subprocess.Popen(argv, cwd=str(c.work_dir), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, bufsize=1)
        c.process = proc

        def pump(src: Any, dst: LogStream) -> None:
            for line in src:
                dst.write(line)

        pumps = [threading.Thread(target=pump, args=(proc.stdout, c.stdout), daemon=True),
                 threading.Thread(target=pump, args=(proc.stderr, c.stderr), daemon=True)]
        for p in pumps:
            p.start()
        while proc.poll() is None:
            if c.killed.wait(0.02):
                proc.kill()
        for p in pumps:
            p.join(timeout=2)
        code = proc.returncode
        return 128 - code if code < 0 else code  # a signal, as Docker reports it (SIGKILL: 137)

    def _finalize(self, c: Container) -> None:
        """``queueFinalize``, ``consumeFinalize``, ``ContainerFinalizeHelper.finalizeContainer``."""
        self._pause()
        self._add_history(c, IN_QUEUE_PREFIX + (c.status or ""), "system", message="Queued for finalizing")
        self._pause()
        self._add_history(c, FINALIZING, "system", message=FINALIZING_MESSAGE)
        self._pause()
        c.log_paths = self._save_logs(c)
        code = c.exit_code_from_history()
        failed = code not in (None, "") and code.lstrip("-").isdigit() and int(code) != 0
        details = c.workflow.details if c.workflow is not None else ""
        if not failed:
            errors = self._upload_outputs(c)
            if errors:
                self._add_history(c, "Failed (Upload)", "system",
                                  message="Failed to upload required outputs.\n" + "\n".join(errors))
            else:
                self._add_history(c, "Complete", "system", message=details)
        else:
            status, message, exit_code = None, None, None
            for h in c.history:  # the first failure entry, oldest first
                s = re.sub(r"^_", "", h["status"])
                s = re.sub(r"^Waiting \(([^)]*)\)", r"\1", s)
                if s.startswith("Failed") or s in ("failed", "die"):
                    status = s if s.startswith("Failed") else None
                    message, exit_code = h.get("message"), h.get("exitCode")
                    break
            self._add_history(c, status or "Failed", "system", message=message or NONZERO_EXIT_DETAILS,
                              exit_code=exit_code)
        if c.token_alias:  # aliasTokenService.invalidateToken
            self.auth.store.run("DELETE FROM tokens WHERE alias=?", c.token_alias)
        c.finalized.set()

    def _save_logs(self, c: Container) -> list[str]:
        """``uploadLogs``: non-blank logs saved under ``{archive}/CONTAINER_EXEC/{id}/LOGS/{subtype}``."""
        dest = self.data_dir / "archive" / "CONTAINER_EXEC" / str(c.id) / "LOGS" / c.command.get("type", "docker")
        paths = []
        for name, stream in ((STDOUT_LOG_NAME, c.stdout), (STDERR_LOG_NAME, c.stderr)):
            text = stream.text()
            if text.strip():
                dest.mkdir(parents=True, exist_ok=True)
                (dest / name).write_text(text)
                paths.append(str(dest / name))
        return paths

    def _upload_outputs(self, c: Container) -> list[str]:
        """``uploadOutputs``: each output's files become (or join) a resource on its ``as-a-child-of`` object.
        Returns the errors of required outputs (the container then fails with ``Failed (Upload)``)."""
        errors = []
        mounts = {m["name"]: Path(m["xnat-host-path"]) for m in c.mounts}
        prefix = f"Container {c.id}: "
        for out in c.outputs:
            try:
                src = mounts[out["mount"]] / (out.get("path") or "")
                parent = self._output_parent(c, out["handled-by"])
                if parent is None:
                    raise RuntimeError(f"{prefix}Cannot upload output \"{out['name']}\". Could not instantiate "
                                       f"object from input \"{out['handled-by']}\".")
                if not src.exists():
                    raise RuntimeError(f"{prefix}Could not upload files to resource: File '{src}' does not exist")
                res, _ = self.model.create_resource(*parent.owner, out.get("label") or out["name"],
                                                    format=out.get("format"), content=out.get("content"),
                                                    description=out.get("description"),
                                                    tags=",".join(out.get("tags") or []) or None)
                # matchGlob lists the folder's entries (the glob is not applied); folders keep their name
                entries = sorted(src.iterdir()) if src.is_dir() else [src]
                for entry in entries:
                    files = [entry] if entry.is_file() else sorted(p for p in entry.rglob("*") if p.is_file())
                    for f in files:
                        rel = f.name if entry.is_file() else f.relative_to(entry.parent).as_posix()
                        tmp = self.model.temp_path(res, rel)
                        shutil.copyfile(f, tmp)
                        size, md5 = md5_file(tmp)
                        self.model.commit_file(res, rel, tmp, size, md5, overwrite=True)
            except Exception as exc:  # the plugin collects any failure of a required output
                if out.get("required"):
                    errors.append(str(exc))
        return errors

    @staticmethod
    def _output_parent(c: Container, handled_by: str | None) -> XnatObject | None:
        """The object an output is uploaded to: the value of its ``as-a-child-of`` input."""
        obj = c.objects.get(handled_by or "")
        return obj if obj is not None and obj.resource is None else None

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


class ResolutionError(Exception):
    """A ``CommandResolutionException``: the launch fails in the background, the reason in the workflow."""


class _Defaulting(dict):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def _failure(message: str, params: dict[str, str], command_id: int, wrapper_id: int) -> dict:
    """``LaunchReport.Failure.create``: ``id`` 0, command and wrapper ids only when not 0."""
    return drop_none({"status": "failure", "params": dict(params), "id": 0,
                       "command-id": command_id or None, "wrapper-id": wrapper_id or None, "message": message})
