"""``XnatPrearchiveTrigger``: the deferred half of :class:`~xnat_provider.sensors.prearchive.XnatPrearchiveSensor`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from ..conditions import DONE, FAIL, REBUILD, PrearchiveCriteria, PrearchiveWatch, criteria_dict
from .base import error_event, log, ride_out, shared_read
from .shared_poll import prearchive_listing


class XnatPrearchiveTrigger(BaseTrigger):
    """Poll a project's prearchive until the criteria are met, then report.

    Events (``sessions``: prearchive session rows): ``{"status": "success", "sessions": [...]}``,
    ``{"status": "error", "message": ...}``, or ``{"status": "rebuild", "sessions": [the stalled one], "state":
    ...}`` for the task to rebuild it (a trigger only waits and reports; acting on XNAT is the task's job). A
    prearchive session stalled in a locked ``_X`` status is never sent back for a rebuild (XNAT would ignore it):
    it ends in an error event that says the row is locked.

    Errors end the wait with an error event naming the client error class (``error_type``), which the task
    raises again: permanent ones (refused login, no permission, no such project, a bad connection) at once, with
    no second login; transient ones (:class:`~xnat_provider.client.errors.XnatServerError`) only once XNAT has
    kept failing for ``transient_error_timeout`` seconds in a row.

    The triggers of one triggerer read each project's prearchive together: one login per connection and one
    listing per round for all of them (:mod:`~xnat_provider.triggers.shared_poll`); each judges it on its own.

    A trigger serialized by an earlier version (criteria with ``session`` for ``experiment``) still runs.

    :param criteria: :class:`~xnat_provider.conditions.PrearchiveCriteria` as a dict.
    :param xnat_conn_id: the Airflow connection of type ``xnat``.
    :param poll_interval: seconds between looks (the sensor's ``poke_interval``).
    :param state: observations carried over from earlier polls (first-seen times, sessions rebuilt).
    :param transient_error_timeout: how long XNAT may keep failing (restart, gateway) before giving up (the
        sensor's ``outage_tolerance``; None: no limit).
    :param failing_since: when the outage the task saw before deferring began (``time.time()``), if any.
    """

    def __init__(self, criteria: dict[str, Any], xnat_conn_id: str = "xnat_default", poll_interval: float = 30.0,
                 state: dict[str, Any] | None = None, transient_error_timeout: float | None = 600.0,
                 failing_since: float | None = None):
        super().__init__()
        self.criteria = criteria_dict(criteria)
        self.xnat_conn_id = xnat_conn_id
        self.poll_interval = poll_interval
        self.state = state or {"seen": {}, "rebuilt": []}
        self.transient_error_timeout = transient_error_timeout
        self.failing_since = failing_since

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("xnat_provider.triggers.prearchive.XnatPrearchiveTrigger", {
            "criteria": self.criteria, "xnat_conn_id": self.xnat_conn_id, "poll_interval": self.poll_interval,
            "state": self.state, "transient_error_timeout": self.transient_error_timeout,
            "failing_since": self.failing_since})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Judge each round of the project's shared prearchive listing (one request per round for every trigger
        of the triggerer watching that project: :mod:`.shared_poll`) until a verdict ends the wait."""
        try:
            watch = PrearchiveWatch(PrearchiveCriteria.from_dict(self.criteria), self.state)
            last = None
            async with shared_read(self.xnat_conn_id, prearchive_listing(watch.criteria.project),
                                   self.poll_interval) as listing:
                async for sessions in ride_out(listing.next, self.transient_error_timeout, "prearchive",
                                               self.failing_since):
                    verdict = watch.observe(sessions)
                    if verdict.action == DONE:
                        yield TriggerEvent({"status": "success", "message": verdict.message,
                                            "sessions": verdict.found})
                        return
                    if verdict.action in (FAIL, REBUILD):
                        yield TriggerEvent({"status": "error" if verdict.action == FAIL else "rebuild",
                                            "message": verdict.message, "sessions": verdict.found,
                                            "state": watch.state})
                        return
                    if verdict.message != last:  # a line when something changed, not one per poll for hours
                        log.info("%s", verdict.message)
                        last = verdict.message
        except Exception as exc:
            yield TriggerEvent(error_event(exc))
