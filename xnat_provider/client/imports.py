"""Importing DICOM: a zip, a tar, one file or a whole directory, checked first, never duplicated.

What is sent, and how it is read and streamed, is :mod:`~xnat_provider.client.import_body`; this module sends it.

The import is a POST that may take effect even when its answer is lost. After an ambiguous failure the
client looks, by study UID, for what this attempt created (prearchive rows of its studies that were not there
before and that XNAT has finished receiving, or new or changed archive sessions), waits up to ``settle_seconds``
for every study to settle, and resends only the studies that did not arrive. The same check is public
(:meth:`ImportMixin.import_snapshot`, :meth:`ImportMixin.import_arrived`) so that a caller that retries across
processes, such as :class:`~xnat_provider.operators.imports.XnatImportOperator`, can resend only what is missing.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import requests

from .errors import RedactedCause, XnatBadInputError, XnatConflictError, XnatError, XnatServerError
from .import_body import ImportPlan, check_import_source, plan_import, zip_stream
from .models import PrearchiveSession, SessionRef
from .protocol import (
    archived_uri,
    check_label,
    is_ambiguous,
    is_conflict_message,
    is_import_archive_failure,
    q,
    session_refs,
)
from .transport import XnatTransport

__all__ = ["ImportMixin", "ImportPlan", "ImportSnapshot", "check_import_flags", "check_import_source", "plan_import",
           "zip_stream"]
log = logging.getLogger("xnat_provider.client")


@dataclass
class ImportSnapshot:
    """What existed before an import, for its studies: a later look then finds only what the import created.

    JSON-safe through :meth:`to_dict` and :meth:`from_dict` (a task state store keeps it across task tries).
    """

    prearchive: set[str] = field(default_factory=set)  # URIs of prearchive rows of the import's studies
    labels: set[str] = field(default_factory=set)  # experiment labels in the project
    fingerprints: dict[str, Any] = field(default_factory=dict)  # label -> JSON form of session_fingerprint

    def to_dict(self) -> dict[str, Any]:
        return {"prearchive": sorted(self.prearchive), "labels": sorted(self.labels),
                "fingerprints": _jsonable(self.fingerprints)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImportSnapshot:
        return cls(prearchive=set(data.get("prearchive") or ()), labels=set(data.get("labels") or ()),
                   fingerprints=_jsonable(data.get("fingerprints") or {}))


def _jsonable(value: Any) -> Any:
    """``value`` as it comes back from JSON (tuples become lists), so that stored and fresh values compare."""
    return json.loads(json.dumps(value))


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


class ImportMixin:
    transport: XnatTransport

    def import_dicom(
        self,
        source: str | os.PathLike[str] | Any,
        project: str,
        *,
        subject: str | None = None,
        session: str | None = None,
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
    ) -> list[SessionRef]:
        """Import DICOM into ``project``'s prearchive or archive; one ref per session.

        ``source`` is a zip, a tar, a DICOM file or a folder: local, or on object storage (an
        ``ObjectStoragePath``, see :mod:`.storage`), whose files are streamed into the request body.

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
        ``session`` and ``ignore_unparsable``): the headers are then not read again. ``studies`` (study UIDs of
        the plan) sends only those studies. ``snapshot`` is what :meth:`import_snapshot` saw before this import
        (or before an earlier attempt of it, which then counts as this import's work); without it one is taken.
        ``check_project=False`` skips the check that the project exists, for a caller that has made it.
        """
        if destination not in ("prearchive", "archive"):
            raise XnatBadInputError(f"destination must be 'prearchive' or 'archive', not {destination!r}")
        if overwrite not in (None, "append", "delete"):
            raise XnatBadInputError(f"overwrite must be None, 'append' or 'delete', not {overwrite!r}")
        check_import_flags(destination, quarantine, trigger_pipelines)
        check_label(project, "project")
        if plan is None:
            plan = plan_import(source, subject=subject, session=session, ignore_unparsable=ignore_unparsable)
        if studies is not None:
            plan = plan.only(studies)
            if not plan.entries:
                return []
        if check_project and not self.project_exists(project):  # type: ignore[attr-defined]
            raise XnatBadInputError(
                f"Project {project!r} does not exist on {self.transport.base_url} (XNAT would "
                "silently route the data by its DICOM headers instead)."
            )
        params: dict[str, str] = {
            "import-handler": "DICOM-zip",
            "dest": f"/{destination}/projects/{project}",
            "project": project,
        }
        for key, value in (("subject", subject), ("session", session), ("overwrite", overwrite)):
            if value:
                params[key] = value
        if ignore_unparsable:
            params["Ignore-Unparsable"] = "true"
        before = snapshot if snapshot is not None else self.import_snapshot(project, plan)
        pending = plan.studies
        found: list[SessionRef] = []
        for attempt in range(self.transport.config.retries):
            entries = [e for e in plan.entries if e.study_uid in pending]
            try:
                resp = self.transport.request(
                    "POST",
                    "/data/services/import",
                    params=params,
                    data=lambda entries=entries: zip_stream(entries),
                    headers={"Content-Type": "application/zip"},
                    retry=False,
                )
                return found + session_refs(resp.text)
            except XnatBadInputError as exc:
                if is_import_archive_failure(exc.xnat_message or "") and not is_conflict_message(
                        exc.xnat_message or ""):
                    # XNAT's fixed answer, without the reason: the failed row and its log say why.
                    raise self._import_archive_failure(exc, project, pending, before) from exc
                if is_conflict_message(exc.xnat_message or ""):
                    # A server whose answer carries the reason: archiving met an existing session; XNAT kept the
                    # data in the prearchive, in CONFLICT: a conflict, not a bad request.
                    raise XnatConflictError(
                        f"{exc}. The session waits in the prearchive in CONFLICT; archive it "
                        "with overwrite='append' or 'delete', or delete it.",
                        method=exc.method,
                        path=exc.path,
                        status=exc.status,
                        xnat_message=exc.xnat_message,
                    ) from exc
                raise
            except XnatError as exc:
                ambiguous = is_ambiguous(exc)
                if not ambiguous or attempt + 1 >= self.transport.config.retries:
                    raise
                if _reached_server(exc):
                    arrived = self.import_arrived(project, plan, before, destination=destination, studies=pending,
                                                  settle=self._settle(settle_seconds))  # type: ignore[attr-defined]
                    found += [ref for uid in pending for ref in arrived.get(uid, [])]
                    pending = [uid for uid in pending if uid not in arrived]
                    if not pending:
                        log.warning("Import answered %s but took effect; not resending", exc.status)
                        return found
                log.warning("Import failed (%s); resending %d of %d studies", exc, len(pending), len(plan.studies))
                time.sleep(min(self.transport.config.backoff * 2**attempt, self.transport.config.backoff_max))
        raise AssertionError("unreachable")  # pragma: no cover

    def _import_archive_failure(self, exc: XnatBadInputError, project: str, studies: Collection[str],
                                before: ImportSnapshot) -> XnatError:
        """The error to raise for XNAT's fixed "unable to archive for the Prearchive session": the new prearchive
        row of one of ``studies`` that XNAT left in CONFLICT or ERROR, with the reason from its log (the same
        reason :class:`~xnat_provider.sensors.prearchive.XnatPrearchiveSensor` reports)."""
        where: dict[str, Any] = {"method": exc.method, "path": exc.path, "status": exc.status,
                                 "xnat_message": exc.xnat_message}
        try:
            rows = [s for s in self.list_prearchive(project)  # type: ignore[attr-defined]
                    if s.study_uid in studies and s.uri not in before.prearchive]
        except XnatError as look:
            log.warning("Import: could not look for the session XNAT failed to archive (%s)", look)
            rows = []
        failed = [s for s in rows if s.failed]
        if not failed:
            return XnatBadInputError(f"{exc}. No prearchive session of this import is in CONFLICT or ERROR to say "
                                     "why.", **where)
        row = failed[0]
        reason = self.prearchive_reason(row)  # type: ignore[attr-defined]
        said = f": XNAT says {reason!r}" if reason else " (its prearchive log gives no reason)"
        left = [s for s in rows if not s.failed]
        rest = (f" XNAT stopped at this session: {len(left)} other session(s) of this import "
                f"({', '.join(f'{s.name} {s.status}' for s in left)}) wait in the prearchive, unbuilt; XNAT builds "
                "them after its idle time (and archives them if the project auto-archives)." if left else "")
        if row.status == "CONFLICT":
            return XnatConflictError(
                f"{exc}. {row.uri} conflicts with the archive and waits in the prearchive in CONFLICT{said}. "
                f"Archive it with overwrite='append' or 'delete', or delete it.{rest}", **where)
        return XnatBadInputError(f"{exc}. {row.uri} could not be archived and is in ERROR{said}.{rest}", **where)

    def import_snapshot(self, project: str, plan: ImportPlan) -> ImportSnapshot:
        """What already exists for the plan's studies, so that a later look finds only what came after.

        Both places are looked at whatever the destination: an archive import that fails to archive stays in
        the prearchive, and a prearchive import may be archived by then (by someone else, or by a server that
        forwards prearchive imports; XNAT 1.8 leaves them READY even in an auto-archive project). The result is
        JSON-safe (:meth:`ImportSnapshot.to_dict`), for a caller that retries in another process.
        """
        pre = {s.uri for s in self.list_prearchive(project) if s.study_uid in plan.labels}  # type: ignore[attr-defined]
        labels = {e.label for e in self.list_experiments(project)}  # type: ignore[attr-defined]
        prints = {label: _jsonable(self.session_fingerprint(project, label))
                  for _s, label in plan.labels.values() if label in labels}
        return ImportSnapshot(pre, labels, prints)

    def session_fingerprint(self, project: str, label: str) -> tuple[Any, ...]:
        """An archived session's scans and their resources' file counts and sizes (changes when data merges)."""
        out = []
        exp_path = self.experiment_path(project, label)  # type: ignore[attr-defined]
        for scan in self.scans_at(exp_path):  # type: ignore[attr-defined]
            resources = self.list_resources(f"{exp_path}/scans/{q(scan.id)}")  # type: ignore[attr-defined]
            out.append(
                (
                    scan.id,
                    tuple(
                        sorted((r.get("label", ""), r.get("file_count", ""), r.get("file_size", "")) for r in resources)
                    ),
                )
            )
        return tuple(sorted(out))

    def import_arrived(
        self,
        project: str,
        plan: ImportPlan,
        before: ImportSnapshot,
        *,
        destination: str = "prearchive",
        studies: Collection[str] | None = None,
        settle: float = 0.0,
    ) -> dict[str, list[SessionRef]]:
        """The sessions an import of ``plan`` created since ``before``, by study UID, for the studies that arrived.

        A study (of ``studies``, by default all of the plan's) has arrived when XNAT is done with it: it has
        prearchive rows (matched by study UID, not in ``before``) and none of them is still being received,
        built or moved, or its session is in the archive and new or changed since ``before`` (matched by the
        label the plan predicts, the archive listing carries no study UID). A prearchive import's refs are its
        rows (XNAT 1.8 builds them READY and never archives them on this path, even in an auto-archive project),
        unless they failed, or are gone and the session is in the archive (archived since, by whoever); an
        archive import's (or a failed row's whose session did reach the archive) is the archive session. Polls
        for up to ``settle`` seconds until every study has arrived. Raises :class:`XnatConflictError` (or
        :class:`XnatServerError` for ERROR), with XNAT's reason from the row's log, when a study's new rows
        failed to archive and it is not in the archive: resending it would only add a second failed copy.
        """
        wanted = list(dict.fromkeys(plan.studies if studies is None else studies))
        deadline = time.monotonic() + settle
        while True:
            rows: dict[str, list[PrearchiveSession]] = {}
            for s in self.list_prearchive(project):  # type: ignore[attr-defined]
                if s.study_uid in wanted and s.uri not in before.prearchive:
                    rows.setdefault(s.study_uid, []).append(s)
            experiments = {e.label: e for e in self.list_experiments(project)}  # type: ignore[attr-defined]
            arrived: dict[str, list[SessionRef]] = {}
            busy: list[str] = []
            for uid in wanted:
                new_rows = rows.get(uid, [])
                if any(s.busy for s in new_rows):
                    busy += [s.uri for s in new_rows if s.busy]
                    continue
                failed = [s for s in new_rows if s.failed]
                if destination == "prearchive" and new_rows and not failed:
                    arrived[uid] = [
                        SessionRef(uri=s.uri, project=s.project, subject=s.subject, label=s.name,
                                   timestamp=s.timestamp, in_prearchive=True)
                        for s in new_rows
                    ]
                    continue
                ref = self._import_archived_ref(project, plan, uid, before, experiments)
                if ref is not None:
                    arrived[uid] = [ref]
                elif failed:
                    cls = XnatConflictError if failed[0].status == "CONFLICT" else XnatServerError
                    reason = self.prearchive_reason(failed[0])  # type: ignore[attr-defined]
                    raise cls(
                        f"POST /data/services/import: the import arrived but could not be archived: "
                        f"{failed[0].uri} is in {failed[0].status}"
                        f"{f' (XNAT says {reason!r})' if reason else ''}. Archive it with overwrite='append' or "
                        "'delete', or delete it.",
                        method="POST",
                        path="/data/services/import",
                    )
            left = deadline - time.monotonic()
            if len(arrived) == len(wanted) or left <= 0:
                if busy:
                    log.warning("Import: XNAT is still receiving %s; counted as not arrived", ", ".join(busy))
                return arrived
            time.sleep(min(1.0, left))

    def _import_archived_ref(self, project: str, plan: ImportPlan, uid: str, before: ImportSnapshot,
                      experiments: dict[str, Any]) -> SessionRef | None:
        """The archive session of a study if it is new or changed since ``before``, else None."""
        subj, label = plan.labels[uid]
        exp = experiments.get(label)
        if exp is None or (
            label in before.labels
            and _jsonable(self.session_fingerprint(project, label)) == before.fingerprints.get(label)
        ):
            return None
        subject_label = exp.subject_label or subj
        return SessionRef(
            uri=archived_uri(project, subject_label, label),
            project=project,
            subject=subject_label,
            label=label,
        )
