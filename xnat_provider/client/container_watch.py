"""Following a launch to its end: one logic for operators, sensors and triggers.

:class:`ContainerWatch` reads the launch's workflow until its container exists, then the container until it is
finalized; with the sync client (under ``asyncio.run``) or the async one (in a trigger's event loop), so every
mode reaches the same verdict. :func:`failure_of` is the error a container that did not succeed becomes.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import asdict, dataclass
from typing import Any

from .container_models import Container, Workflow
from .errors import XnatBadInputError, XnatContainerFailedError

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
    """The result of a call, awaited when the client is the async one."""
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
