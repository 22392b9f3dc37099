"""The prearchive: list, get, archive, move, rebuild and delete sessions, safely under retries.

Archiving is a POST that may take effect even when its answer is lost (a gateway's 504 while XNAT kept
working, or has yet to start). The client never resends it blindly: after an ambiguous failure it watches the
prearchive row and the archive, and only archives again when the session has stayed untouched there for the
settle time. A merge conflict comes back as :class:`XnatConflictError` whether XNAT says 409 (older servers)
or 500 ``FAILED: ...`` (1.8.9+).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from .errors import (
    XnatBadInputError,
    XnatConflictError,
    XnatError,
    XnatNotFoundError,
    XnatPermissionError,
    XnatServerError,
)
from .models import PrearchiveSession, RemoteFile, SessionRef
from .protocol import (
    archived_uri,
    check_label,
    is_ambiguous,
    or_none,
    prearchive_lookup,
    prearchive_row_lookup,
    prearchive_src,
    q,
    result_rows,
    uri_list,
)
from .transport import XnatTransport

log = logging.getLogger("xnat_provider.client")
OVERWRITE_MODES = (None, "none", "append", "delete")
BUSY_WORDS = ("in progress", "invalid prearchive status", "locked")


def _typed(exc: XnatError) -> XnatError:
    """XNAT answers 403 when a row is busy (locked by another operation, or in the wrong status): that is a
    conflict with the session's state, not a missing permission."""
    message = (exc.xnat_message or "").lower()
    if isinstance(exc, XnatPermissionError) and any(w in message for w in BUSY_WORDS):
        return XnatConflictError(
            f"{exc} (the session is busy: wait for its current operation to finish, or rebuild it)",
            method=exc.method,
            path=exc.path,
            status=exc.status,
            xnat_message=exc.xnat_message,
        )
    return exc


class PrearchiveMixin:
    transport: XnatTransport

    def list_prearchive(
        self, project: str | None = None, status: str | Iterable[str] | None = None, study_uid: str | None = None
    ) -> list[PrearchiveSession]:
        """Prearchive sessions, optionally of one project, in some statuses, or of one study."""
        return self.transport.read(prearchive_lookup(project, status, study_uid))

    def get_prearchive(self, session: PrearchiveSession | SessionRef | str) -> PrearchiveSession:
        """A prearchive session's row; :class:`XnatNotFoundError` when XNAT has none."""
        return self.transport.read(prearchive_row_lookup(session))

    def find_prearchive(self, session: PrearchiveSession | SessionRef | str) -> PrearchiveSession | None:
        return self.transport.read(or_none(prearchive_row_lookup(session)))

    def list_prearchive_files(self, session: PrearchiveSession | SessionRef | str,
                              first_per_scan: bool = False) -> dict[str, list[RemoteFile]]:
        """A built prearchive session's DICOM files by scan ID (``first_per_scan`` keeps one per scan)."""
        src = prearchive_src(session)
        scans = result_rows(self.transport.request("GET", f"{src}/scans", params={"format": "json"}).content,
                            "GET", f"{src}/scans")
        out: dict[str, list[RemoteFile]] = {}
        for scan in scans:
            path = f"{src}/scans/{q(scan['ID'])}/resources/DICOM/files"
            rows = result_rows(self.transport.request("GET", path, params={"format": "json"}).content, "GET", path)
            files = [RemoteFile(path=r["Name"], size=int(r["Size"]) if r.get("Size", "").isdigit() else None,
                                digest="", uri=r["URI"], resource="DICOM") for r in rows]
            out[scan["ID"]] = files[:1] if first_per_scan else files
        return out

    def prearchive_reason(self, session: PrearchiveSession | SessionRef | str) -> str:
        """XNAT's last log message for a session: why it is in CONFLICT or ERROR ('' when there is none)."""
        src = prearchive_src(session)
        try:
            return self.transport.request("GET", f"{src}/logs/last").text.strip()
        except XnatError:
            return ""

    # ---- archive -----------------------------------------------------------------------------------
    def archive(
        self,
        session: PrearchiveSession | SessionRef | str,
        *,
        overwrite: str | None = None,
        project: str | None = None,
        subject: str | None = None,
        label: str | None = None,
        quarantine: bool | None = None,
        trigger_pipelines: bool | None = None,
        settle_seconds: float | None = None,
    ) -> SessionRef:
        """Archive a prearchive session (relabelled if asked); returns the archived session's reference.

        ``overwrite``, as XNAT's archive service reads it for one session (``Archiver``: it always allows a
        merge into an existing session of that label; ``append`` and ``delete`` set ``overrideExceptions``):

        - None (or ``"none"``): a new session is archived; into an existing one XNAT merges what is new (new
          scans; a series whose number is taken gets a new scan ID such as ``4-MR1``), and refuses with a
          conflict a different StudyInstanceUID, a scan's UID under another number, or files already there (the
          same data sent again); another subject or modality is refused whatever ``overwrite`` says.
        - ``append``: merges past the UID checks and the file check; files of the same name are overwritten.
        - ``delete``: for one session exactly the same as ``append`` (XNAT uses its "allow deletion" only for a
          batch of several sessions). Nothing is deleted or replaced: the old scans and files stay, so the
          session holds old and new data. To replace a session, delete it from the archive first.

        ``quarantine=True`` archives it quarantined (XNAT shows the experiment's status as ``quarantine`` until
        someone activates it); ``trigger_pipelines=False`` skips the project's auto-run pipelines. Both are
        passed to XNAT's archiver as given (the import service, by contrast, drops them).

        After an ambiguous failure (no answer, 502, 503, 504) the prearchive row and the archive are watched for
        up to ``settle_seconds`` (the client's ``settle_seconds`` by default): the request is sent again only
        when the row stayed unchanged all that time. A resend that finds the row gone (404) or busy (403)
        looks again for what the first request did before failing.
        """
        if overwrite not in OVERWRITE_MODES:
            raise XnatBadInputError(f"overwrite must be one of {OVERWRITE_MODES[1:]}, not {overwrite!r}")
        for value, what in ((project, "project"), (subject, "subject"), (label, "session")):
            if value is not None:
                check_label(value, what)
        src = prearchive_src(session)
        before = self.get_prearchive(src)
        params = archive_params(src, overwrite, project, subject, label, quarantine, trigger_pipelines)
        return self._post_archive(src, params, project or before.project, label or before.name,
                                  self._settle(settle_seconds), before)  # type: ignore[attr-defined]

    def _post_archive(self, src: str, params: list[tuple[str, str]], target_project: str, target_label: str,
                      settle: float, before: PrearchiveSession) -> SessionRef:
        """POST the archive request, and after an ambiguous failure look before sending it again (one loop: each
        attempt's decision depends on whether an earlier request may still be at work)."""
        for attempt in range(self.transport.config.retries):
            try:
                resp = self.transport.request("POST", "/data/services/archive", params=params, retry=False,
                                            allow_redirects=False, ok_statuses=(301, 302, 303))
            except XnatError as exc:
                typed = _typed(exc)
                if attempt > 0:
                    # A resend after an ambiguous failure: the first request may have been running all along.
                    found = self._resend_outcome(exc, typed, src, target_project, target_label, settle, before)
                    if found is not None:
                        log.warning("Archive of %s answered %s on a resend, but the first request archived it",
                                    src, exc.status)
                        return found
                if not is_ambiguous(exc) or attempt + 1 >= self.transport.config.retries:
                    if typed is exc:
                        raise
                    raise typed from exc
                found = self._archived_after_ambiguity(src, target_project, target_label, settle, before)
                if found is not None:
                    log.warning("Archive of %s answered %s but took effect; not resending", src, exc.status)
                    return found
                log.warning("Archive of %s failed (%s) without effect; archiving again", src, exc)
                time.sleep(min(self.transport.config.backoff * 2**attempt, self.transport.config.backoff_max))
                continue
            return archived_ref_from_answer(resp.status_code, resp.headers.get("Location"), resp.text, src)
        raise AssertionError("unreachable")  # pragma: no cover

    def _archived_ref(self, project: str, label: str) -> SessionRef | None:
        """The archived session ``project``/``label`` as a reference, or None when it is not in the archive."""
        exp = self.find_experiment(project, label)  # type: ignore[attr-defined]
        if exp is None:
            return None
        return SessionRef(uri=archived_uri(project, exp.subject_label, exp.label), project=project,
                          subject=exp.subject_label, label=exp.label)

    def _resend_outcome(self, exc: XnatError, typed: XnatError, src: str, project: str, label: str, settle: float,
                        before: PrearchiveSession) -> SessionRef | None:
        """After a resend failed: the archived session if the first request archived it, else None.

        A 404 means the prearchive row is gone: archived by the first request when the target is in the
        archive. A busy row (403, typed as a conflict) means the first request is running now: its outcome is
        awaited as after an ambiguous failure (a CONFLICT or ERROR it ends in is raised).
        """
        if isinstance(exc, XnatNotFoundError):
            return self._archived_ref(project, label)
        if typed is not exc and isinstance(typed, XnatConflictError):
            return self._archived_after_ambiguity(src, project, label, settle, before)
        return None

    def _archived_after_ambiguity(
        self, src: str, project: str, label: str, settle: float, before: PrearchiveSession
    ) -> SessionRef | None:
        """Poll until the archive outcome is known: archived (a ref), not happened (None), or failed (raise).

        A row still as it was before the call (same status, same last modification), or READY, may be one
        XNAT has received the request for but not started yet: it is watched until ``settle`` seconds are up,
        and only then is the request taken as lost (None, archiving again is safe). The look ends as soon as
        the row is gone with the session in the archive (a ref) or the row shows a new CONFLICT or ERROR
        (raised). A row still busy, or gone without the session in the archive, when ``settle`` is up is an
        unknown outcome (:class:`XnatServerError`).
        """
        deadline = time.monotonic() + settle
        while True:
            row = self.find_prearchive(src)
            unchanged = row is not None and (
                row.status == "READY" or (row.status == before.status and row.lastmod == before.lastmod))
            if row is None:
                found = self._archived_ref(project, label)
                if found is not None:
                    return found
            elif unchanged:
                pass  # not started (yet?)
            elif row.status == "CONFLICT":
                raise XnatConflictError(
                    f"POST /data/services/archive: {src} is now in CONFLICT",
                    method="POST",
                    path="/data/services/archive",
                )
            elif row.status == "ERROR":
                raise XnatServerError(
                    f"POST /data/services/archive: {src} is now in ERROR", method="POST", path="/data/services/archive"
                )
            left = deadline - time.monotonic()
            if left <= 0:
                if unchanged:
                    return None  # nothing happened within settle: archiving again is safe
                raise XnatServerError(
                    f"POST /data/services/archive: outcome for {src} still unknown after "
                    f"{settle:.0f} s (status {row.status if row else 'gone, no experiment'})",
                    method="POST",
                    path="/data/services/archive",
                )
            time.sleep(min(1.0, left))

    # ---- queued batch services ---------------------------------------------------------------------
    def _batch(self, op: str, session: PrearchiveSession | SessionRef | str, **extra: str) -> PrearchiveSession | None:
        """Queue ``op`` on a row; returns the row as XNAT answers it (``QUEUED_<OP>`` once queued).

        A row locked by a running operation (an ``_X`` status) is skipped by XNAT without a word: the answer is
        200 with the row unchanged (``PrearcUtils.queuePrearchiveOperation`` and ``PrearchiveBatchDelete`` only
        queue when ``PrearcDatabase.setStatus`` can take the row, which it cannot while it is locked, and no
        parameter overrides that). The row is read before the request so that such a no-op is told apart from an
        operation that was queued and has already started: it raises :class:`XnatConflictError`.
        """
        src = prearchive_src(session)
        path = f"/data/services/prearchive/{op}"
        before = self.find_prearchive(src)  # a missing row: the request below answers 404
        try:
            resp = self.transport.request("POST", path, params={"src": src, "format": "json", **extra}, retry=False)
        except XnatError as exc:
            if not is_ambiguous(exc):
                typed = _typed(exc)
                if typed is exc:
                    raise
                raise typed from exc
            # Queued operations are cheap to check: did the row change as asked?
            row = self.find_prearchive(src)
            if row is not None and _refused_as_locked(before, row):
                raise _locked_error(op, path, src, row, status=exc.status) from exc
            if row is None or row.status.startswith(("QUEUED_", "_")):
                return row
            resp = self.transport.request("POST", path, params={"src": src, "format": "json", **extra}, retry=False)
        rows = result_rows(resp.content, "POST", path)
        row = PrearchiveSession.from_row(rows[0]) if rows else None
        if row is not None and _refused_as_locked(before, row):
            raise _locked_error(op, path, src, row, status=resp.status_code)
        return row

    def move_prearchive(self, session: PrearchiveSession | SessionRef | str, project: str) -> PrearchiveSession | None:
        """Queue a move to ``project``; raises :class:`XnatConflictError` when XNAT ignored it (a locked row)."""
        check_label(project, "project")
        return self._batch("move", session, newProject=project)

    def rebuild_prearchive(self, session: PrearchiveSession | SessionRef | str) -> PrearchiveSession | None:
        """Queue a rebuild (it never auto-archives). XNAT requeues a row in any status but a locked ``_X`` one:
        that is ignored, and raises :class:`XnatConflictError`."""
        return self._batch("rebuild", session)

    def delete_prearchive(self, session: PrearchiveSession | SessionRef | str) -> PrearchiveSession | None:
        """Queue a delete; raises :class:`XnatConflictError` when XNAT ignored it (a locked row)."""
        return self._batch("delete", session)


def _refused_as_locked(before: PrearchiveSession | None, after: PrearchiveSession) -> bool:
    """True when a batch answer shows the row exactly as it was before the request, locked (``_X``): XNAT
    skipped it. A locked row that changed in between (another lastmod) may be this request's operation already
    running, and is not counted as refused."""
    return (before is not None and after.locked and before.status == after.status
            and before.lastmod == after.lastmod)


def _locked_error(op: str, path: str, src: str, row: PrearchiveSession, status: int | None) -> XnatConflictError:
    return XnatConflictError(
        f"POST {path}: XNAT did not {op} {src}: the row is locked ({row.status}) by an operation in progress, and "
        f"XNAT ignores a {op} of a locked row (it answered with the row unchanged). Wait for that operation to "
        "finish; if it is stuck, an XNAT administrator can reset the row (POST "
        f"{src}?action=reset-status) and try again.",
        method="POST", path=path, status=status)


def archive_params(src: str, overwrite: str | None, project: str | None, subject: str | None, label: str | None,
                   quarantine: bool | None, trigger_pipelines: bool | None) -> list[tuple[str, str]]:
    """The archive service's query parameters for one prearchive session (``auto-archive=false``: archive this
    one now, whatever the project's setting)."""
    params: list[tuple[str, str]] = [("src", src), ("auto-archive", "false")]
    if overwrite and overwrite != "none":
        params.append(("overwrite", overwrite))
    for key, value in (("project", project), ("subject", subject), ("session", label)):
        if value:
            params.append((key, value))
    if quarantine is not None:
        params.append(("quarantine", str(quarantine).lower()))
    if trigger_pipelines is not None:
        params.append(("triggerPipelines", str(trigger_pipelines).lower()))
    return params


def archived_ref_from_answer(status: int, location: str | None, text: str, src: str) -> SessionRef:
    """The archived session from the archive service's answer: a redirect's Location, else the URI in the body."""
    uris = [location] if location and status in (301, 302, 303) else uri_list(text)
    if not uris:
        raise XnatServerError(f"POST /data/services/archive: no archive URI in the answer for {src}",
                              method="POST", path="/data/services/archive", status=status)
    path = uris[0].split("://", 1)[-1]
    path = path[path.index("/data/"):] if "/data/" in path else path
    return SessionRef.parse(path)
