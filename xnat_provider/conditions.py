"""What "ready" means, decided in one place for sensors (poke, reschedule) and their triggers (deferred).

Both modes feed the same observations into the same pure functions, so a deferred wait and a poke wait agree
on every status XNAT has. No Airflow imports: this is plain logic over the client's values.

Two waits: for prearchive sessions (:class:`PrearchiveCriteria`, :class:`PrearchiveWatch`) and for an archived
imaging session, an XNAT experiment (:class:`ExperimentCriteria`, :func:`observe_experiment`). Their criteria
travel to triggers as dicts, and a trigger serialized by an earlier version may hold the old key ``session``
for ``experiment``: :func:`criteria_dict` and the ``from_dict`` constructors accept it.

Prearchive statuses: RECEIVING, BUILDING, RECEIVING_INTERRUPT, ARCHIVING, MOVING, DELETING, SEPARATING,
``QUEUED_*`` (queued) and ``_*`` (running, locked) mean "keep waiting"; READY is success once the prearchive
session has not changed for ``quiet_period`` seconds (one still being extended or split keeps changing); CONFLICT
and ERROR fail unless told to skip them; a prearchive session whose status and ``lastmod`` have not moved for
``stall_timeout`` seconds is stalled: rebuilt once if asked, then a failure with a clear message. A stalled
prearchive session in an ``_X`` status is never rebuilt: the row is locked by an operation XNAT is running (or one that
died holding the lock), and XNAT ignores a rebuild of a locked row; it fails saying so. A rebuild XNAT did not
answer (a 503) is asked again after ``rebuild_after`` (a time kept in the watch state), never more often.

XNAT outages: :class:`Outage` is the one rule every sensor mode follows. Transient failures (XNAT restarting, a
gateway's 5xx) are ridden out for up to ``outage_tolerance`` seconds in a row, measured in wall-clock time so that
the clock survives a reschedule (a new process) and a deferral (the trigger is handed the time the outage began);
a longer outage is an :class:`~xnat_provider.client.errors.XnatServerError`, which a retry policy can retry.
"""

from __future__ import annotations

import inspect
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

from .client.errors import XnatError, XnatNotFoundError, XnatServerError
from .client.models import PrearchiveSession, status_is_busy, status_is_failed, status_is_locked
from .client.protocol import base_path, latest_experiment

WAIT, DONE, FAIL, REBUILD = "wait", "done", "fail", "rebuild"


def criteria_dict(data: dict[str, Any]) -> dict[str, Any]:
    """Criteria as this version writes them: the key ``session`` that an earlier version wrote (in a trigger
    serialized before an upgrade) becomes ``experiment``."""
    data = dict(data)
    if "session" in data:
        old = data.pop("session")
        data.setdefault("experiment", old)
    return data


@dataclass(frozen=True)
class PrearchiveCriteria:
    """Which prearchive sessions to wait for, and how patiently. JSON-safe (triggers serialise it).

    ``experiment``: only prearchive sessions with this label (the label of the experiment they become).
    """

    project: str
    subject: str | None = None
    experiment: str | None = None
    study_uid: str | None = None
    min_count: int = 1
    quiet_period: float = 0.0
    stall_timeout: float | None = None
    rebuild_stalled: bool = False
    skip_failed: bool = False

    def __post_init__(self) -> None:
        if not self.project:
            raise ValueError("project is required")
        if self.min_count < 1:
            raise ValueError("min_count must be at least 1")
        if self.quiet_period < 0 or (self.stall_timeout is not None and self.stall_timeout <= 0):
            raise ValueError("quiet_period must be >= 0 and stall_timeout > 0")

    def matches(self, s: PrearchiveSession) -> bool:
        return ((self.subject is None or s.subject == self.subject)
                and (self.experiment is None or s.name == self.experiment or s.folder == self.experiment)
                and (self.study_uid is None or s.study_uid == self.study_uid))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrearchiveCriteria:
        return cls(**criteria_dict(data))


@dataclass
class Verdict:
    """A judgement: ``action`` (wait, done, fail, rebuild), why, and what it is about (prearchive session rows,
    or the one experiment) as JSON-safe dicts."""

    action: str  # wait, done, fail, rebuild
    message: str = ""
    found: list[dict[str, Any]] = field(default_factory=list)

    @property
    def sessions(self) -> list[dict[str, Any]]:
        """The old name of :attr:`found`, kept for callers written against it."""
        return self.found


@dataclass
class PrearchiveWatch:
    """Observations across polls: when each prearchive session was first seen with its current status and lastmod.

    ``state`` is JSON-safe so that a rescheduled sensor or a re-deferred trigger can carry it on.
    """

    criteria: PrearchiveCriteria
    state: dict[str, Any] = field(default_factory=lambda: {"seen": {}, "rebuilt": []})

    def track(self, sessions: list[PrearchiveSession], now: float | None = None) -> list[PrearchiveSession]:
        """Record one poll's observations in ``state`` (no verdict); returns the sessions the criteria match."""
        now = time.time() if now is None else now
        matched = [s for s in sessions if self.criteria.matches(s)]
        seen: dict[str, list[Any]] = self.state.setdefault("seen", {})
        current = {}
        for s in matched:
            key = f"{s.status}|{s.lastmod}"
            prev = seen.get(s.uri)
            current[s.uri] = prev if prev and prev[0] == key else [key, now]
        self.state["seen"] = current
        return matched

    def observe(self, sessions: list[PrearchiveSession], now: float | None = None) -> Verdict:
        """Record one poll's observations (as :meth:`track`) and judge them."""
        now = time.time() if now is None else now
        c = self.criteria
        matched = self.track(sessions, now)
        since = {uri: now - v[1] for uri, v in self.state["seen"].items()}

        failed = [s for s in matched if status_is_failed(s.status)]
        if failed and not c.skip_failed:
            names = ", ".join(f"{s.name} ({s.status})" for s in failed)
            return Verdict(FAIL, f"Prearchive session {names} in project {c.project} failed: XNAT marks a session "
                                 "CONFLICT when it clashes with archived data and ERROR when it could not build or "
                                 "archive it. Inspect it in XNAT's prearchive, or pass skip_failed=True to ignore it.",
                           [s.to_dict() for s in failed])
        ready = [s for s in matched if s.status == "READY" and since[s.uri] >= c.quiet_period]
        if len(ready) >= c.min_count:
            return Verdict(DONE, f"{len(ready)} prearchive session(s) READY", [s.to_dict() for s in ready])
        if c.stall_timeout is not None:
            stalled = [s for s in matched if status_is_busy(s.status) and since[s.uri] >= c.stall_timeout]
            locked = [s for s in stalled if status_is_locked(s.status)]
            if locked:  # a rebuild would be a no-op (XNAT skips a locked row): not worth the one rebuild
                s = locked[0]
                return Verdict(FAIL, locked_message(s, c.project, since[s.uri], c.stall_timeout), [s.to_dict()])
            rebuilt = self.state.setdefault("rebuilt", [])
            pending = [s for s in stalled if c.rebuild_stalled and s.uri not in rebuilt]
            if pending:
                s = pending[0]
                after = float(self.state.get("rebuild_after") or 0)
                if now < after:  # the last rebuild request got no answer: not again before rebuild_after
                    return Verdict(WAIT, f"{s.name} stalled in {s.status}; XNAT did not answer the rebuild "
                                         f"request, asking again in {after - now:.0f} s", [s.to_dict()])
                return Verdict(REBUILD, f"{s.name} stalled in {s.status}; asking XNAT to rebuild it once",
                               [s.to_dict()])
            if stalled:
                s = stalled[0]
                again = " even after a rebuild" if s.uri in self.state.get("rebuilt", []) else ""
                return Verdict(FAIL, f"Prearchive session {s.name} in project {c.project} has been {s.status} with no "
                                     f"change for {since[s.uri]:.0f} s (stall_timeout={c.stall_timeout:.0f} s){again}.",
                               [s.to_dict()])
        waiting = ", ".join(f"{s.name}: {s.status}" for s in matched) or "none yet"
        return Verdict(WAIT, f"waiting for {c.min_count} READY session(s) in {c.project} ({waiting})",
                       [s.to_dict() for s in matched])

    def rebuilt(self, uri: str) -> None:
        self.state.setdefault("rebuilt", []).append(uri)
        self.state.get("seen", {}).pop(uri, None)

    def rebuild_unanswered(self, delay: float, now: float | None = None) -> None:
        """XNAT did not answer a rebuild request (a transient failure): the rebuild is not spent, and is asked
        again after ``delay`` seconds, by whichever mode looks next."""
        self.state["rebuild_after"] = (time.time() if now is None else now) + delay


@dataclass
class Outage:
    """How long XNAT has been failing transiently, in a row, and whether that is still tolerable.

    ``since`` is a wall-clock time (``time.time()``), so it can be stored (a rescheduled sensor) or handed to a
    trigger (a deferred one) and the clock goes on. ``tolerance`` None means no limit (the sensor's ``timeout``
    ends the wait).
    """

    tolerance: float | None
    since: float | None = None

    def failed(self, exc: XnatError, doing: str, now: float | None = None) -> None:
        """Record a transient failure; raise :class:`XnatServerError` once the outage lasts longer than
        ``tolerance``."""
        now = time.time() if now is None else now
        if self.since is None:
            self.since = now
        if self.tolerance is not None and now - self.since > self.tolerance:
            raise XnatServerError(
                f"XNAT has kept failing for {now - self.since:.0f} s while {doing} (outage_tolerance="
                f"{self.tolerance:g} s); the last error: {exc}", method=exc.method, path=exc.path,
                status=exc.status, xnat_message=exc.xnat_message) from exc

    def answered(self) -> None:
        self.since = None


def locked_message(s: PrearchiveSession, project: str, stalled_for: float, stall_timeout: float) -> str:
    """Why a prearchive session stalled in an ``_X`` status fails, and what an administrator can do about it."""
    return (f"Prearchive session {s.name} in project {project} has been {s.status} with no change for "
            f"{stalled_for:.0f} s (stall_timeout={stall_timeout:.0f} s). An {s.status} row is locked by an operation "
            "XNAT is still running, or one that stopped without unlocking it (XNAT restarted or the operation "
            "crashed). XNAT ignores rebuild, move and delete requests on a locked row, so no rebuild was asked. An "
            "XNAT administrator can check XNAT's logs for that operation; if it is stuck, reset the session "
            f"(POST /data/prearchive/projects/{s.project}/{s.timestamp}/{s.folder}?action=reset-status, which "
            "rewrites the row from its session document), then rebuild or archive it, or delete it.")


@dataclass(frozen=True)
class ExperimentCriteria:
    """An archived imaging session (XNAT experiment) to wait for: by label (or a subject's latest experiment, by
    insert date), with optional conditions."""

    project: str
    experiment: str | None = None
    subject: str | None = None
    min_scans: int = 0
    resource: str | None = None
    field_name: str | None = None
    field_value: str | None = None

    def __post_init__(self) -> None:
        if not self.project or not (self.experiment or self.subject):
            raise ValueError("project and an experiment (the imaging session label) or a subject are required")
        if (self.field_name is None) != (self.field_value is None):
            raise ValueError("field_name and field_value go together")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExperimentCriteria:
        return cls(**criteria_dict(data))


def experiment_verdict(c: ExperimentCriteria, experiment: dict[str, Any] | None, scans: int, resources: list[str],
                    fields: dict[str, str]) -> Verdict:
    """Judge one observation of an archived imaging session (XNAT experiment) against the criteria."""
    if experiment is None:
        who = c.experiment or f"a session of subject {c.subject}"
        return Verdict(WAIT, f"{who} is not archived in {c.project} yet")
    missing = []
    if scans < c.min_scans:
        missing.append(f"{scans} of {c.min_scans} scans")
    if c.resource and c.resource not in resources:
        missing.append(f"no {c.resource} resource yet")
    if c.field_name and fields.get(c.field_name.lower()) != c.field_value:
        missing.append(f"field {c.field_name}={fields.get(c.field_name.lower())!r}, waiting for {c.field_value!r}")
    if missing:
        return Verdict(WAIT, f"{experiment['label']}: " + "; ".join(missing), [experiment])
    return Verdict(DONE, f"{experiment['label']} is archived and ready", [experiment])


async def _value(result: Any) -> Any:
    return await result if inspect.isawaitable(result) else result


async def observe_experiment(xnat: Any, c: ExperimentCriteria) -> Verdict:
    """One look at the archive for ``c``, with either client: the async one (triggers) or the sync one
    (a sensor's poke runs this under ``asyncio.run``), so both modes judge alike."""
    label = c.experiment
    if label is None:
        try:
            experiments = await _value(xnat.list_experiments(c.project, c.subject))
        except XnatNotFoundError:
            experiments = []  # the subject is created when its first experiment is archived
        latest = latest_experiment(experiments)  # the subject's last inserted experiment, whatever the order
        if latest is None:
            await _value(xnat.get_fields(c.project))  # a missing project raises XnatNotFoundError
            return experiment_verdict(c, None, 0, [], {})
        label = latest.label
    exp = await _value(xnat.find_experiment(c.project, label))
    if exp is None:
        await _value(xnat.get_fields(c.project))  # a missing project raises XnatNotFoundError: no point waiting
        return experiment_verdict(c, None, 0, [], {})
    scans = await _value(xnat.list_scans(c.project, exp)) if (c.min_scans or c.resource) else []
    resources: list[str] = []
    if c.resource:
        path = base_path(experiment=exp.id)  # XNAT routes scans only under the experiment's ID (or its subject)
        resources = [r["label"] for r in await _value(xnat.list_resources(path))]
        for s in scans:
            resources += [r["label"] for r in await _value(xnat.list_resources(base_path(experiment=exp.id,
                                                                                          scan=s.id)))]
    fields = await _value(xnat.get_fields(c.project, experiment=exp.label)) if c.field_name else {}
    return experiment_verdict(c, exp.to_dict(), len(scans), resources, fields)


_RENAMED = {"SessionCriteria": ExperimentCriteria, "observe_session": observe_experiment,
            "session_verdict": experiment_verdict}


def __getattr__(name: str) -> Any:
    """The old names, still importable, with a ``DeprecationWarning``."""
    if name in _RENAMED:
        new = _RENAMED[name]
        warnings.warn(f"xnat_provider.conditions.{name} is deprecated: use {new.__name__}", DeprecationWarning,
                      stacklevel=2)
        return new
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
