"""The Container Service plugin's vocabulary and its commands' JSON, for the emulator's Container Service.

The statuses, dates and errors the plugin uses (``ContainerUtils``, ``PersistentWorkflowUtils``, Spring's error
answers), a command as ``GET /xapi/commands/{id}`` writes it (:func:`normalise_command`), the checks the plugin
makes when one is installed (:func:`validate_command`), a minimal command for tests (:func:`simple_command`), and
the JSONPath-like matchers wrappers filter their inputs with (:func:`matches`). Plain values, no state: the
state is ``containers.py``, a container's run ``container_runs.py``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .model import SCAN_TYPES, SESSION_TYPES

if TYPE_CHECKING:
    pass

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


class ResolutionError(Exception):
    """A ``CommandResolutionException``: the launch fails in the background, the reason in the workflow."""
