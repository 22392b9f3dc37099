"""What an import left on XNAT: the look before it (:class:`ImportSnapshot`) and the look after it, by study.

The import service's answer can be lost (a gateway's 504 while XNAT kept working, a worker that died mid-upload),
so :mod:`.imports` never resends blindly: it looks for what the import created since its snapshot, study by
study, in both places (prearchive rows by study UID, archive sessions by the label the plan predicts), and sends
only what did not arrive. What XNAT does that this relies on (1.8's source): an import whose body broke off keeps
the entries received whole in a RECEIVING row that its rebuilder later builds (and archives, in an auto-archive
project) as if whole (``DicomZipImporter`` throws before ``xmlBuild``); and files of a study sent again join its
existing row whatever its status (``PrearcDatabase.eitherGetOrCreateSession``: every ``PrearcStatus`` is
interruptable), so sending an incomplete study again completes its row rather than making a second one.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from .errors import XnatConflictError, XnatNotFoundError, XnatServerError
from .import_body import ImportPlan
from .models import PrearchiveSession, SessionRef
from .protocol import archived_uri, prearchive_src, q, result_rows
from .transport import XnatTransport

log = logging.getLogger("xnat_provider.client")
IMPORT_PATH = "/data/services/import"
#: The scan resources XNAT files DICOM under (``secondary`` for secondary captures).
DICOM_RESOURCES = ("DICOM", "secondary")


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


class ImportArrivalMixin:
    """The looks of :class:`~.imports.ImportMixin`: what existed before an import, and what it created."""

    transport: XnatTransport

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
        partial_possible: bool = False,
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

        ``partial_possible``: the import may have been cut off mid-upload (no answer came; the sender may have
        died), so XNAT may hold only the files that arrived before the break, in a row its rebuilder builds as if
        whole. A study is then counted as arrived only if XNAT holds as many DICOM files for it as the plan sends
        (:meth:`_rows_short`; one with fewer is sent again, and XNAT adds it to the same row); a session it
        created in the archive with fewer raises :class:`XnatConflictError` (:meth:`_archived_short`). Not
        otherwise: XNAT may keep fewer files than it was sent for reasons of its own (a series import filter, the
        site's anonymisation script rejecting a file), and a complete import must not be sent again or refused.
        """
        wanted = list(dict.fromkeys(plan.studies if studies is None else studies))
        deadline = time.monotonic() + settle
        while True:
            arrived, busy = self._import_look(project, plan, before, destination, wanted, partial_possible)
            left = deadline - time.monotonic()
            if len(arrived) == len(wanted) or left <= 0:
                if busy:
                    log.warning("Import: XNAT is still receiving %s; counted as not arrived", ", ".join(busy))
                return arrived
            time.sleep(min(1.0, left))

    def _import_look(self, project: str, plan: ImportPlan, before: ImportSnapshot, destination: str,
                     wanted: list[str], partial_possible: bool = False
                     ) -> tuple[dict[str, list[SessionRef]], list[str]]:
        """One look at both places: the studies of ``wanted`` that arrived, and the new rows XNAT is still busy
        with (receiving, building, moving)."""
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
            refs = self._study_arrival(project, plan, uid, before, destination, new_rows, experiments,
                                       partial_possible)
            if refs:
                arrived[uid] = refs
        return arrived, busy

    def _study_arrival(self, project: str, plan: ImportPlan, uid: str, before: ImportSnapshot, destination: str,
                       new_rows: list[PrearchiveSession], experiments: dict[str, Any],
                       partial_possible: bool = False) -> list[SessionRef]:
        """A settled study's refs, or [] if it did not arrive; raises if its new rows failed to archive and it
        is not in the archive either."""
        failed = [s for s in new_rows if s.failed]
        if destination == "prearchive" and new_rows and not failed:
            if partial_possible and self._rows_short(plan, uid, new_rows):
                return []  # sent again: XNAT adds the files to the same row (it joins a settled row of the study)
            return [SessionRef(uri=s.uri, project=s.project, subject=s.subject, label=s.name,
                               timestamp=s.timestamp, in_prearchive=True) for s in new_rows]
        ref = self._import_archived_ref(project, plan, uid, before, experiments, partial_possible)
        if ref is not None:
            return [ref]
        if failed:
            cls = XnatConflictError if failed[0].status == "CONFLICT" else XnatServerError
            reason = self.prearchive_reason(failed[0])  # type: ignore[attr-defined]
            raise cls(
                f"POST {IMPORT_PATH}: the import arrived but could not be archived: "
                f"{failed[0].uri} is in {failed[0].status}"
                f"{f' (XNAT says {reason!r})' if reason else ''}. Archive it with overwrite='append' or "
                "'delete', or delete it.",
                method="POST",
                path=IMPORT_PATH,
            )
        return []

    def _prearchive_file_count(self, row: PrearchiveSession) -> int:
        """The DICOM files of a built prearchive row: its scans' DICOM and secondary resources' ``file_count``
        (``PrearcScanResourceList``), one listing per scan."""
        src = prearchive_src(row)
        total = 0
        for scan in result_rows(self.transport.request("GET", f"{src}/scans", params={"format": "json"}).content,
                                "GET", f"{src}/scans"):
            path = f"{src}/scans/{q(scan['ID'])}/resources"
            for res in result_rows(self.transport.request("GET", path, params={"format": "json"}).content,
                                   "GET", path):
                count = str(res.get("file_count", ""))
                if res.get("label") in DICOM_RESOURCES and count.isdigit():
                    total += int(count)
        return total

    @staticmethod
    def _archived_short(project: str, label: str, want: int, fingerprint: Any) -> None:
        """Raise when a session this import created holds fewer files than the plan sends: an earlier try was cut
        off and XNAT archived what had arrived (an auto-archive project archives the rebuilt row). Sending the
        study again would be refused (the files it has conflict) or, to the prearchive, make a second copy."""
        have = sum(int(count) for _scan, resources in fingerprint for kind, count, _size in resources
                   if kind in DICOM_RESOURCES and str(count).isdigit())
        if have < want:
            raise XnatConflictError(
                f"Import into {project}: session {label} is in the archive with {have} of the {want} DICOM files "
                "this import sends for it. An earlier try was cut off (or XNAT refused some files) and XNAT "
                "archived what had arrived. Not sending it again: import it again with overwrite='delete' to "
                "add the missing files (XNAT merges and keeps what it has), or delete the session first.",
                method="POST", path=IMPORT_PATH)

    def _rows_short(self, plan: ImportPlan, uid: str, rows: list[PrearchiveSession]) -> bool:
        """Whether the settled new rows of study ``uid`` hold fewer files than the plan sends it: an earlier try
        was cut off mid-upload and XNAT built what had arrived (its rebuilder does, after the idle time)."""
        want = plan.instances(uid)
        try:
            have = sum(self._prearchive_file_count(row) for row in rows)
        except XnatNotFoundError:  # the row went away (archived, deleted) between two looks: look again
            return True
        if have < want:
            log.warning("Import: %s holds %d of the %d DICOM files this import sends for its study (an earlier try "
                        "was cut off); sending the study again, which XNAT adds to the same session",
                        ", ".join(r.uri for r in rows), have, want)
        return have < want

    def _import_archived_ref(self, project: str, plan: ImportPlan, uid: str, before: ImportSnapshot,
                             experiments: dict[str, Any], partial_possible: bool = False) -> SessionRef | None:
        """The archive session of a study if it is new or changed since ``before``, else None. When the import
        may have been cut off, a new session that holds fewer files than the plan sends its study raises
        :class:`XnatConflictError` (see :meth:`_archived_short`)."""
        subj, label = plan.labels[uid]
        exp = experiments.get(label)
        if exp is None:
            return None
        if label in before.labels:  # there before: this import's only if it changed
            if _jsonable(self.session_fingerprint(project, label)) == before.fingerprints.get(label):
                return None
        elif partial_possible:  # new: whole, unless the upload was cut off before XNAT archived it
            self._archived_short(project, label, plan.instances(uid),
                                 _jsonable(self.session_fingerprint(project, label)))
        subject_label = exp.subject_label or subj
        return SessionRef(
            uri=archived_uri(project, subject_label, label),
            project=project,
            subject=subject_label,
            label=label,
        )
