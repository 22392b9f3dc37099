"""Importing DICOM: a zip, a tar, one file or a whole directory, checked first, never duplicated.

What is sent, and how it is read and streamed, is :mod:`~xnat_provider.client.import_body`; this module sends it.

The import is a POST that may take effect even when its answer is lost. After an ambiguous failure the
client looks, by study UID, for what this attempt created (prearchive rows of its studies that were not there
before and that XNAT has finished receiving, or new or changed archive sessions), waits up to ``settle_seconds``
for every study to settle, and resends only the studies that did not arrive.

A caller that retries across processes (an Airflow task retried on another worker) cannot keep that look in
memory: :meth:`ImportMixin.import_dicom_retry_safe` writes what it is about to send and what the server held
before (an :class:`ImportMemory`, JSON-safe) through a callback the caller gives, before the first POST; the
caller stores it where its next try finds it and hands it back. The next call then sends only the studies that
did not arrive. :class:`~xnat_provider.operators.imports.XnatImportOperator` keeps it in Airflow's task state
store. The steps are public too (:meth:`ImportMixin.import_snapshot`, :meth:`ImportMixin.import_arrived`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from .errors import RedactedCause, XnatBadInputError, XnatConflictError, XnatError
from .import_arrival import IMPORT_PATH, ImportArrivalMixin, ImportSnapshot
from .import_body import ImportPlan, check_import_source, experiment_argument, plan_import, zip_stream
from .models import PrearchiveSession, SessionRef
from .protocol import (
    check_label,
    is_ambiguous,
    is_conflict_message,
    is_import_archive_failure,
    session_refs,
)
from .storage import as_target
from .transport import XnatTransport

__all__ = ["ImportMemory", "ImportMixin", "ImportPlan", "ImportSnapshot", "ImportedSession", "check_import_flags",
           "check_import_source", "plan_import", "zip_stream"]
log = logging.getLogger("xnat_provider.client")


@dataclass
class ImportMemory:
    """What earlier calls of one retried import sent, so that the next call sends only what did not arrive.

    ``data`` is JSON-safe: by source, the study UIDs and labels it planned, the :class:`ImportSnapshot` taken
    before its first POST, and whether XNAT answered it (then nothing was cut off mid-upload). The client calls
    ``save(data)`` right after adding a source and before sending it (a try may die between the POST and its
    answer, and its work must still be recognised), and again once XNAT answered; the caller keeps the dict where
    its next try finds it (:class:`~xnat_provider.operators.imports.XnatImportOperator`: the task
    state store, which survives a retry on another worker) and hands it back as ``ImportMemory(saved, save)``.
    """

    data: dict[str, Any] | None = None
    save: Callable[[dict[str, Any]], None] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.data, dict):  # nothing saved yet (or something unreadable): a first try
            self.data = {}

    def snapshot(self, key: str) -> ImportSnapshot | None:
        """What the server held before an earlier call first sent source ``key``, or None if none did."""
        earlier = (self.data or {}).get(key)
        if isinstance(earlier, dict) and isinstance(earlier.get("before"), dict):
            return ImportSnapshot.from_dict(earlier["before"])
        return None

    def answered(self, key: str) -> bool:
        """Whether XNAT answered the last call that sent source ``key`` (success or error): its whole body then
        reached XNAT, and a study with fewer files there than sent is XNAT's choice, not a cut-off upload."""
        earlier = (self.data or {}).get(key)
        return isinstance(earlier, dict) and earlier.get("answered") is True

    def mark_answered(self, key: str) -> None:
        assert self.data is not None
        if isinstance(self.data.get(key), dict) and self.data[key].get("answered") is not True:
            self.data[key]["answered"] = True
            if self.save is not None:
                self.save(self.data)

    def remember(self, key: str, plan: ImportPlan, before: ImportSnapshot) -> None:
        """Record that source ``key`` is about to be sent, and save: before the POST, never after."""
        assert self.data is not None
        self.data[key] = {"studies": plan.studies, "labels": {u: list(v) for u, v in plan.labels.items()},
                          "before": before.to_dict()}
        if self.save is not None:
            self.save(self.data)


@dataclass(frozen=True)
class ImportedSession:
    """One session of a retry-safe import (sent by this call or an earlier one), with what XNAT says of it now.

    ``status`` is the prearchive row's (``READY``...; ``GONE`` when the row went away) or ``ARCHIVED``;
    ``subject`` and ``study_uid`` are the row's (``study_uid`` is None for an archive session: the archive
    listing carries none). :meth:`to_dict` is the JSON-safe form an Airflow task returns as its XCom.
    """

    source: str
    ref: SessionRef
    status: str
    subject: str
    study_uid: str | None = None

    def to_dict(self) -> dict[str, Any]:
        item: dict[str, Any] = {**self.ref.to_dict(), "status": self.status, "subject": self.subject}
        if self.study_uid is not None:
            item["study_uid"] = self.study_uid
        return {**item, "source": self.source}


def _source_key(source: Any) -> str:
    """How :class:`ImportMemory` names a source: a local path resolved, a storage path as its URL."""
    target = as_target(source, "Import source")
    return str(target.resolve()) if isinstance(target, Path) else str(target)


def check_import_args(project: str, destination: str, overwrite: str | None, quarantine: bool | None,
                      trigger_pipelines: bool | None) -> None:
    """An import's arguments, checked before anything is read or sent."""
    if destination not in ("prearchive", "archive"):
        raise XnatBadInputError(f"destination must be 'prearchive' or 'archive', not {destination!r}")
    if overwrite not in (None, "append", "delete"):
        raise XnatBadInputError(f"overwrite must be None, 'append' or 'delete', not {overwrite!r}")
    check_import_flags(destination, quarantine, trigger_pipelines)
    check_label(project, "project")


def _import_params(project: str, destination: str, subject: str | None, experiment: str | None,
                   overwrite: str | None, ignore_unparsable: bool) -> dict[str, str]:
    """The import service's query parameters (XNAT's names: ``session`` is the experiment's label)."""
    params = {"import-handler": "DICOM-zip", "dest": f"/{destination}/projects/{project}", "project": project}
    for key, value in (("subject", subject), ("session", experiment), ("overwrite", overwrite)):
        if value:
            params[key] = value
    if ignore_unparsable:
        params["Ignore-Unparsable"] = "true"
    return params


def check_import_flags(destination: str, quarantine: bool | None, trigger_pipelines: bool | None) -> None:
    """Refuse the archive flags the import service drops, before anything is read or sent.

    ``quarantine`` and ``triggerPipelines`` are read only by the archiver (``PrearcSessionArchiver``). An import
    to the archive builds its archiver from ``DicomZipImporter.populateAdditionalValues``, which keeps
    ``overwrite_files`` alone; an import to the prearchive is not archived at all. Either way the flags would do
    nothing, silently: a session meant to be quarantined would be archived active.
    """
    given = (["quarantine=True"] if quarantine else []) + (
        [f"trigger_pipelines={trigger_pipelines}"] if trigger_pipelines is not None else [])
    if given:
        then = ("import with destination='prearchive', then archive the session with archive(..., "
                "quarantine=True, trigger_pipelines=...) (XnatArchiveOperator(quarantine=True, ...))")
        if destination == "prearchive":
            then = ("pass them when the session is archived: archive(..., quarantine=True, trigger_pipelines=...) "
                    "(XnatArchiveOperator(quarantine=True, ...))")
        raise XnatBadInputError(
            f"{' and '.join(given)} cannot be applied by XNAT's import service: it drops them (only "
            f"overwrite_files reaches the archiver), so the {destination} import would ignore them silently. "
            f"Instead, {then}."
        )


def _reached_server(exc: XnatError) -> bool:
    """False when the request surely never arrived (connection refused or not opened), as the transport's
    :class:`RedactedCause` tells; True for any other failure (an answer lost, cut mid-body, or a gateway's)."""
    cause = exc.__cause__
    if isinstance(cause, RedactedCause):
        return cause.reached_server
    return not isinstance(cause, requests.exceptions.ConnectTimeout) and "NewConnectionError" not in repr(cause)

class ImportMixin(ImportArrivalMixin):
    transport: XnatTransport

    # import_dicom is long only by its signature and docstring (XNAT's import semantics); its steps follow it.
    def import_dicom(
        self,
        source: str | os.PathLike[str] | Any,
        project: str,
        *,
        subject: str | None = None,
        experiment: str | None = None,
        destination: str = "prearchive",
        overwrite: str | None = None,
        quarantine: bool = False,
        trigger_pipelines: bool | None = None,
        ignore_unparsable: bool = False,
        settle_seconds: float | None = None,
        plan: ImportPlan | None = None,
        snapshot: ImportSnapshot | None = None,
        studies: Collection[str] | None = None,
        check_project: bool = True,
        session: str | None = None,
    ) -> list[SessionRef]:
        """Import DICOM into ``project``'s prearchive or archive; one ref per session.

        ``source`` is a zip, a tar, a DICOM file or a folder: local, or on object storage (an
        ``ObjectStoragePath``, see :mod:`.storage`), whose files are streamed into the request body.

        ``subject`` and ``experiment`` are the labels the data is filed under (XNAT's ``subject`` and ``session``
        parameters); by default XNAT derives them from the DICOM headers (comments, then PatientName and
        PatientID), as :func:`plan_import` predicts. ``session`` is ``experiment``'s deprecated name.

        ``destination="prearchive"``: XNAT builds each session at once and leaves it READY, even in a project
        set to auto-archive (``DicomZipImporter`` never archives on this path); archive it later with
        :meth:`~xnat_provider.client.prearchive.PrearchiveMixin.archive`. ``destination="archive"``: XNAT builds
        and archives each session in the same request.

        ``overwrite`` (archive destination, or a session that meets an existing one) follows XNAT's *import*
        service, which differs from the archive service: None refuses any existing session ("Session already
        exists, retry with overwrite enabled"), unless the project auto-archives; ``append`` merges into it but
        keeps XNAT's checks (a different StudyInstanceUID, or files already there, are conflicts); ``delete``
        merges too, skipping those checks and overwriting files of the same name. Neither deletes anything: files
        and scans already archived stay, and a series whose number is taken by another series is added under a
        new scan ID (``4-MR1``).

        ``quarantine`` and ``trigger_pipelines`` are refused: the import service drops them
        (``DicomZipImporter`` passes only ``overwrite_files`` on to the archiver), so they would silently do
        nothing. Import to the prearchive, then archive with ``archive(..., quarantine=True)``.

        A session that XNAT could not archive (a conflict with the archive) stays in the prearchive in CONFLICT
        (or ERROR): XNAT answers 400 "unable to archive for the Prearchive session" without the reason; the
        client reads the reason from the session's prearchive log and raises :class:`XnatConflictError` (or
        :class:`XnatBadInputError` for ERROR) carrying it. XNAT stops at that study: the studies of the import
        sent before it are archived, the ones after it are left unbuilt in the prearchive (RECEIVING), for XNAT
        to build after its idle time (and archive, if the project auto-archives).

        ``plan`` is a plan already made with :func:`plan_import` for ``source`` (with the same ``subject``,
        ``experiment`` and ``ignore_unparsable``): the headers are then not read again. ``studies`` (study UIDs of
        the plan) sends only those studies. ``snapshot`` is what :meth:`import_snapshot` saw before this import
        (or before an earlier attempt of it, which then counts as this import's work); without it one is taken.
        ``check_project=False`` skips the check that the project exists, for a caller that has made it.
        """
        experiment = experiment_argument("import_dicom", experiment, session)
        check_import_args(project, destination, overwrite, quarantine, trigger_pipelines)
        if plan is None:
            plan = plan_import(source, subject=subject, experiment=experiment, ignore_unparsable=ignore_unparsable)
        if studies is not None:
            plan = plan.only(studies)
            if not plan.entries:
                return []
        if check_project:
            self._require_project(project)
        params = _import_params(project, destination, subject, experiment, overwrite, ignore_unparsable)
        before = snapshot if snapshot is not None else self.import_snapshot(project, plan)
        settle = self._settle(settle_seconds)  # type: ignore[attr-defined]
        return self._send_import(project, plan, params, before, destination, settle)

    def import_dicom_retry_safe(
        self,
        sources: Sequence[str | os.PathLike[str] | Any],
        project: str,
        *,
        memory: ImportMemory | None = None,
        subject: str | None = None,
        experiment: str | None = None,
        destination: str = "prearchive",
        overwrite: str | None = None,
        quarantine: bool = False,
        trigger_pipelines: bool | None = None,
        ignore_unparsable: bool = False,
        settle_seconds: float | None = None,
    ) -> list[ImportedSession]:
        """Import every source into ``project`` so that calling again after a failure never makes a second copy;
        one :class:`ImportedSession` per session, with its status now.

        ``memory`` carries what earlier calls of this import sent (see :class:`ImportMemory`: the caller keeps
        it between calls, saved by its ``save`` callback). A source an earlier call sent is looked for, study by
        study, in both places (an archive import that conflicted stays in the prearchive, and a prearchive
        session may have been archived since); only the studies that did not arrive are sent. Without
        ``memory``, or for a source it does not hold, a snapshot is taken and remembered before the first POST.
        Inside one call, :meth:`import_dicom` resolves an ambiguous answer (a gateway's 504 after XNAT did the
        work) the same way.

        Every source's headers are read, and the project checked, once, before anything is sent: bad input fails
        with nothing half-imported. The other arguments are :meth:`import_dicom`'s. Statuses come from one
        listing per project's prearchive (a single prearchive session is looked up alone).
        """
        check_import_args(project, destination, overwrite, quarantine, trigger_pipelines)
        plans = [(src, plan_import(src, subject=subject, experiment=experiment, ignore_unparsable=ignore_unparsable))
                 for src in sources]
        self._require_project(project)
        memory = memory if memory is not None else ImportMemory()
        options: dict[str, Any] = dict(
            subject=subject, experiment=experiment, destination=destination, overwrite=overwrite,
            quarantine=quarantine, trigger_pipelines=trigger_pipelines, ignore_unparsable=ignore_unparsable,
            settle_seconds=settle_seconds)
        refs = [(src, ref) for src, plan in plans
                for ref in self._import_remembered(src, plan, project, memory, options)]
        return self._imported_sessions(refs)

    def _import_remembered(self, src: Any, plan: ImportPlan, project: str, memory: ImportMemory,
                           options: dict[str, Any]) -> list[SessionRef]:
        """One source's sessions: those an earlier call sent (found through ``memory``), then those sent now."""
        key = _source_key(src)
        before = memory.snapshot(key)
        if before is not None:  # an earlier call sent this source: what arrived since its snapshot is its work
            arrived = self.import_arrived(project, plan, before, destination=options["destination"],
                                          partial_possible=not memory.answered(key))
        else:
            before, arrived = self.import_snapshot(project, plan), {}
            memory.remember(key, plan, before)
        pending = [uid for uid in plan.studies if uid not in arrived]
        done = [ref for uid in plan.studies for ref in arrived.get(uid, [])]
        if arrived:
            log.info("%s: %d of %d studies were imported by an earlier try; not sending them again",
                     src, len(arrived), len(plan.studies))
        sent: list[SessionRef] = []
        if pending:
            try:
                sent = self.import_dicom(src, project, plan=plan, snapshot=before, studies=pending,
                                         check_project=False, **options)
            except XnatError as exc:
                if exc.status is not None:  # XNAT answered: the body was not cut off
                    memory.mark_answered(key)
                raise
            memory.mark_answered(key)
            log.info("Imported %s: %s", src, ", ".join(r.uri for r in sent))
        return done + sent

    def _imported_sessions(self, refs: list[tuple[Any, SessionRef]]) -> list[ImportedSession]:
        """Each ref with its status. A project's prearchive is listed once for all its refs (a single ref is
        looked up alone: cheaper than listing a whole prearchive), never once per ref."""
        rows: dict[str, PrearchiveSession] = {}
        by_project: dict[str, list[SessionRef]] = {}
        for _src, ref in refs:
            if ref.in_prearchive:
                by_project.setdefault(ref.project, []).append(ref)
        for project, mine in by_project.items():
            if len(mine) == 1:
                row = self.find_prearchive(mine[0].uri)  # type: ignore[attr-defined]
                rows.update({row.uri: row} if row else {})
            else:
                rows.update((s.uri, s) for s in self.list_prearchive(project))  # type: ignore[attr-defined]
        out = []
        for src, ref in refs:
            row = rows.get(ref.uri)
            if not ref.in_prearchive:
                out.append(ImportedSession(str(src), ref, "ARCHIVED", ref.subject))
            elif row is None:
                out.append(ImportedSession(str(src), ref, "GONE", ref.subject, ""))
            else:
                out.append(ImportedSession(str(src), ref, row.status, row.subject, row.study_uid))
        return out

    def _require_project(self, project: str) -> None:
        if not self.project_exists(project):  # type: ignore[attr-defined]
            raise XnatBadInputError(
                f"Project {project!r} does not exist on {self.transport.base_url} (XNAT would "
                "silently route the data by its DICOM headers instead)."
            )

    def _send_import(self, project: str, plan: ImportPlan, params: dict[str, str], before: ImportSnapshot,
                     destination: str, settle: float) -> list[SessionRef]:
        """POST the plan's studies; after an ambiguous failure, look for what arrived and resend only the rest."""
        pending, found = plan.studies, []
        retries = self.transport.config.retries
        for attempt in range(retries):
            entries = [e for e in plan.entries if e.study_uid in pending]
            try:
                resp = self.transport.request("POST", IMPORT_PATH, params=params,
                                              data=lambda entries=entries: zip_stream(entries),
                                              headers={"Content-Type": "application/zip"}, retry=False)
                return found + session_refs(resp.text)
            except XnatBadInputError as exc:
                refused = self._import_refused(exc, project, plan.only(pending), before)
                if refused is None:
                    raise
                raise refused from exc
            except XnatError as exc:
                if not is_ambiguous(exc) or attempt + 1 >= retries:
                    raise
                if _reached_server(exc):
                    arrived = self.import_arrived(project, plan, before, destination=destination, studies=pending,
                                                  settle=settle, partial_possible=exc.status is None)
                    found += [ref for uid in pending for ref in arrived.get(uid, [])]
                    pending = [uid for uid in pending if uid not in arrived]
                    if not pending:
                        log.warning("Import answered %s but took effect; not resending", exc.status)
                        return found
                log.warning("Import failed (%s); resending %d of %d studies", exc, len(pending), len(plan.studies))
                time.sleep(min(self.transport.config.backoff * 2**attempt, self.transport.config.backoff_max))
        raise AssertionError("unreachable")  # pragma: no cover

    def _import_refused(self, exc: XnatBadInputError, project: str, plan: ImportPlan,
                        before: ImportSnapshot) -> XnatError | None:
        """The error to raise for the import service's 400, or None to raise XNAT's own."""
        message = exc.xnat_message or ""
        if is_conflict_message(message):
            # A server whose answer carries the reason: archiving met an existing session; XNAT kept the data in
            # the prearchive, in CONFLICT: a conflict, not a bad request.
            return XnatConflictError(
                f"{exc}. The session waits in the prearchive in CONFLICT; archive it "
                "with overwrite='append' or 'delete', or delete it.",
                method=exc.method, path=exc.path, status=exc.status, xnat_message=exc.xnat_message)
        if is_import_archive_failure(message):
            # XNAT's fixed answer, without the reason: the failed row and its log say why.
            return self._import_archive_failure(exc, project, plan, before)
        return None

    def _import_archive_failure(self, exc: XnatBadInputError, project: str, plan: ImportPlan,
                                before: ImportSnapshot) -> XnatError:
        """The error to raise for XNAT's fixed "unable to archive for the Prearchive session": the prearchive row
        of one of the plan's studies that XNAT left in CONFLICT or ERROR, with the reason from its log (the same
        reason :class:`~xnat_provider.sensors.prearchive.XnatPrearchiveSensor` reports). A row is this import's
        if it is new, or if it is the row of the study's session label that was there before: XNAT adds files
        to that row whatever its status (``PrearcDatabase.eitherGetOrCreateSession``)."""
        where: dict[str, Any] = {"method": exc.method, "path": exc.path, "status": exc.status,
                                 "xnat_message": exc.xnat_message}
        try:
            rows = [s for s in self.list_prearchive(project)  # type: ignore[attr-defined]
                    if s.study_uid in plan.labels
                    and (s.uri not in before.prearchive or s.name == plan.labels[s.study_uid][1])]
        except XnatError as look:
            log.warning("Import: could not look for the session XNAT failed to archive (%s)", look)
            rows = []
        failed = sorted((s for s in rows if s.failed), key=lambda s: s.uri in before.prearchive)  # new rows first
        if not failed:
            return XnatBadInputError(f"{exc}. No prearchive session of this import is in CONFLICT or ERROR to say "
                                     "why.", **where)
        row = failed[0]
        reason = self.prearchive_reason(row)  # type: ignore[attr-defined]
        said = f": XNAT says {reason!r}" if reason else " (its prearchive log gives no reason)"
        left = [s for s in rows if not s.failed and s.uri not in before.prearchive]
        rest = (f" XNAT stopped at this session: {len(left)} other session(s) of this import "
                f"({', '.join(f'{s.name} {s.status}' for s in left)}) wait in the prearchive, unbuilt; XNAT builds "
                "them after its idle time (and archives them if the project auto-archives)." if left else "")
        if row.status == "CONFLICT":
            return XnatConflictError(
                f"{exc}. {row.uri} conflicts with the archive and waits in the prearchive in CONFLICT{said}. "
                f"Archive it with overwrite='append' or 'delete', or delete it.{rest}", **where)
        return XnatBadInputError(f"{exc}. {row.uri} could not be archived and is in ERROR{said}.{rest}", **where)
