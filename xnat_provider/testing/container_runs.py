"""A launch of the emulator's Container Service, once queued: resolution, the container's life, finalization.

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

Between two steps the launch pauses (``step_seconds``, real time), so that a client polling the API sees the
intermediate statuses. A test that asserts them does not rely on that pause: it holds the launches
(:class:`StepGate`, through ``Containers.hold``, ``step`` and ``release``) and moves them one step at a time.

:class:`ContainerRuns` is a part of :class:`~xnat_provider.testing.containers.Containers` (a mixin over its
state: the lock, ids, commands, workflows, the model), split out so that the state and its API read apart from
the run.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import threading
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .container_commands import (
    CREATED,
    FINALIZING,
    FINALIZING_MESSAGE,
    IN_QUEUE_PREFIX,
    KILLED_EXIT_CODE,
    NONZERO_EXIT_DETAILS,
    QUEUED,
    RESOLUTION_DETAILS_PREFIX,
    SINGULAR,
    STAGING,
    STDERR_LOG_NAME,
    STDOUT_LOG_NAME,
    ResolutionError,
    XapiError,
    drop_none,
    java_date,
    map_status,
    status_is_terminal,
)
from .container_records import Container, LogStream, RunContext, Runner, Workflow, XnatObject
from .model import md5_file

if TYPE_CHECKING:
    pass


class StepGate:
    """Where a launch stops between two steps while a test holds the Container Service: ``Containers.hold()``,
    then each ``Containers.step()`` moves a launch on by exactly one step and returns once it has stopped again,
    so that what the API answers in between is certain whatever the machine's speed; ``release()`` lets every
    launch run on at its own pace (``step_seconds``).

    A launch stops (it *rests*):

    1. at once after the launch request (workflow ``_Queued``, no container), before command resolution;
    2. after the resolution started (workflow ``Staging``);
    3. once its container exists (``Created``: the workflow names the container);
    4. once the container is started (``Running``), before its process runs;
    5. while its process runs, and once it has exited, before its ``die`` entry is written (``Running``, or
       ``Failed (Killed)``): the process ends on its own (a hanging one when it is killed), the next step
       writes ``die``;
    6. after ``die``; 7. after ``_die`` (queued for finalizing); 8. after ``Finalizing``;
    9. at its end (``Complete``, ``Failed``, ``Failed (Upload)``), finalized.

    A launch that fails before its container exists ends at the step that finds it (``Failed (...)``). Stepping
    several launches at once moves whichever is first to go: hold one launch at a time to know which one moved.

    The counts, under one condition: ``moving`` launch threads (neither resting nor ended), ``parked`` ones (at
    a stop), ``running`` ones (resting while their process runs), and ``permits`` (steps granted, not taken)."""

    def __init__(self, stopping: threading.Event) -> None:
        self._cond = threading.Condition()
        self._stopping = stopping
        self.held = False
        self._permits = self._moving = self._parked = self._running = 0

    # ---- the launch threads' side ----
    def started(self) -> None:
        """A launch thread is about to start (counted before it runs, so that a step waits for it)."""
        with self._cond:
            self._moving += 1

    def ended(self) -> None:
        with self._cond:
            self._moving -= 1
            self._cond.notify_all()

    def stop_here(self) -> bool:
        """A stop: while held, wait for a step (or the release); False when not held (the caller pauses)."""
        with self._cond:
            if not self.held or self._stopping.is_set():
                return False
            if self._permits:  # a step was granted before this launch got here: take it, go on
                self._permits -= 1
                return True
            self._moving, self._parked = self._moving - 1, self._parked + 1
            self._cond.notify_all()
            self._cond.wait_for(lambda: not self.held or self._permits or self._stopping.is_set())
            self._moving, self._parked = self._moving + 1, self._parked - 1
            if self.held and self._permits:
                self._permits -= 1
            return True

    def process_running(self) -> None:
        """The launch rests while its container's process runs (until :meth:`process_exited`)."""
        with self._cond:
            self._moving, self._running = self._moving - 1, self._running + 1
            self._cond.notify_all()

    def process_exited(self) -> None:
        with self._cond:
            self._moving, self._running = self._moving + 1, self._running - 1

    # ---- the test's side ----
    def hold(self) -> None:
        with self._cond:
            self.held = True

    def release(self) -> None:
        with self._cond:
            self.held, self._permits = False, 0
            self._cond.notify_all()

    def step(self, count: int, timeout: float) -> None:
        """Grant ``count`` steps, then wait until they are taken and every launch rests again."""
        with self._cond:
            if not self.held:
                raise RuntimeError("the Container Service is not held: call containers.hold() first")
            for _ in range(count):
                if not self._moving and not self._parked and not self._running:
                    raise RuntimeError("no launch to step: every launch has ended")
                self._permits += 1
                self._cond.notify_all()
                if not self._cond.wait_for(lambda: self._stopping.is_set() or (
                        not self._moving and (not self._permits or not (self._parked or self._running))), timeout):
                    self._permits = 0  # withdrawn: a later step is not taken early
                    raise TimeoutError(f"a launch did not reach its next step within {timeout} s (a container "
                                       "process still running? kill it, or release the Container Service)")
                if self._permits:  # granted to a launch that ended meanwhile: nothing took it
                    self._permits = 0
                    raise RuntimeError("no launch to step: every launch has ended")


class ContainerRuns:
    """The background half of :class:`~xnat_provider.testing.containers.Containers`: one launch, from resolving
    its command to uploading its outputs. Every method runs in the launch's own thread."""

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
        self._gate.process_running()
        try:
            while not c.exited.wait(0.02):
                if c.killed.is_set() or self._stopping.is_set():
                    break
        finally:
            self._gate.process_exited()
        self._gate.stop_here()  # held: the process is over, its death not recorded yet (no pause otherwise)
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


class _Defaulting(dict):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"
