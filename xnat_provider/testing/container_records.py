"""What a container of the emulator's Container Service runs, and the records the plugin keeps of it.

A registered command's runner gets a :class:`RunContext` (mounts, inputs, logs, the kill switch); the ready-made
runners :func:`hang_until_killed` and :func:`exit_with` stand for a container that never ends and one that exits
with a given code. The records are the plugin's rows: a launch's :class:`Workflow`, a resolved input
(:class:`XnatObject`) and the :class:`Container` with its history.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .container_commands import LAUNCH_JUSTIFICATION, QUEUED

if TYPE_CHECKING:
    pass

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
