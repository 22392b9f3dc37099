"""The prearchive: sessions waiting to be archived, their status machine, building and archiving.

Statuses move in time, as on a real server:
- a session imported without ``dest`` stays RECEIVING until no file has arrived for ``receiving_idle``
  seconds, then is BUILDING for ``build_seconds``, then READY (or is archived at once when its project
  auto-archives);
- move, rebuild and delete requests are queued: ``QUEUED_<OP>`` at once, ``_<OP>`` (running, locked) after
  ``queue_seconds``, and done ``queue_seconds`` later;
- a row in an ``_X`` status is locked (``PrearcDatabase.isLocked``): a move, rebuild or delete of it is
  skipped without a word (200, the row unchanged), and the archive service refuses it (403); nothing else
  locks a row (``QUEUED_X``, BUILDING, ARCHIVING... are queued over, or archived, as XNAT does);
- a failed archive leaves the row in CONFLICT (a merge conflict) or ERROR with XNAT's reason in its log.

Archiving into an existing session follows ``PrearcSessionArchiver`` and ``MergeSessionsA``, with the flags each
service sets (:func:`merge_rules`): the archive service always allows a merge (``append`` and ``delete`` both
only add ``overrideExceptions``), the import service allows it only with an ``overwrite`` (or an auto-archive
row). Nothing is ever deleted from the archive: a series whose number is taken by another series gets a new
scan ID (``correctScanID``: ``4-MR1``), and a file the session already has is a conflict unless the exceptions
are overridden (or the project overwrites files), when it is overwritten.

A test can hold a session in any status (a stuck session). A rebuild, move or delete of a held row releases
it and runs, as on a stuck row a real server would requeue, unless the held status is a locked ``_X`` one:
then the request is ignored, as XNAT ignores it; only :meth:`XnatEmulator.release_prearchive` (or a
``reset-status``) frees such a row.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom

from .clock import Clock
from .http import XnatHttpError
from .model import DEFAULT_TYPES, MODALITY_TYPES, md5_file
from .store import now_text

if TYPE_CHECKING:
    from .model import Model
    from .store import Store

QUEUED_OPS = {"move": "MOVING", "delete": "DELETING", "rebuild": "BUILDING"}
ARCHIVABLE = ("READY", "CONFLICT", "ERROR")
LOCKED = "Operation already in progress on this prearchive entry."  # Archiver.setSessionArchiveStatus, 403
# PrearchiveCode names, as the prearchive listing shows a row's ``autoarchive`` (ArcProject prearchive codes).
AUTOARCHIVE_CODES = {0: "Manual", 4: "AutoArchive", 5: "AutoArchiveOverwrite"}
# XNAT's reasons (PrearcSessionArchiver, MergeSessionsA), logged on the row that goes to CONFLICT.
PRE_EXISTS = "Session already exists, retry with overwrite enabled"
SUBJECT_MOD = "Invalid modification of session subject via archive process."
UID_MOD = "Invalid modification of session UID via archive process."
MODALITY_MOD = "Invalid modification of session modality via archive process.  Data may require a manual merge."
HAS_FILES = "Session already exists with matching files."


def is_locked(status: str) -> bool:
    """XNAT's lock on a prearchive row: one of the ``_X`` statuses (``PrearcUtils.inProcessStatusMap``'s values)."""
    return status.startswith("_")


class ArchiveConflict(Exception):
    def __init__(self, reason: str, status: str = "CONFLICT"):
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass(frozen=True)
class MergeRules:
    """What an archive may do to an existing session: ``PrearcSessionArchiver``'s ``overrideExceptions`` and
    ``allowSessionMerge``, and the ``overwriteFiles`` of the merge (``overrideExceptions || overwriteFiles``)."""

    override_exceptions: bool
    allow_merge: bool
    overwrite_files: bool


def merge_rules(service: str, overwrite: str | None, row: dict, project_code: int | None,
                overwrite_files: bool = False) -> MergeRules:
    """The flags each way into the archive sets.

    - ``archive``, the archive service on one session (``Archiver.initialize`` and
      ``finishSingleSessionArchive``: ``new QueueBasedImageCommit(..., _overwrite, true, ...)``): a merge is
      always allowed; ``append`` and ``delete`` alike set ``overrideExceptions`` (``delete``'s
      ``_allowDataDeletion`` is read only for several sessions); ``overwrite_files`` is taken by ``Archiver``
      and never reaches the archiver.
    - ``import``, an import to the archive (``Importer.parseOverrideValue``, ``DicomZipImporter.archiveSession``):
      ``append`` allows the merge only; ``delete``/``override`` set both; without ``overwrite`` the merge is
      allowed only for a row whose ``autoarchive`` is not Manual; ``overwrite_files=true`` is passed on.
    - ``auto``, the archive an auto-archive session's rebuild queues (``PrearchiveArchiveHandler``, no
      parameters): the merge is allowed for a row whose ``autoarchive`` is not Manual.

    Files are overwritten (``PrearcSession.isOverwriteFiles``) for a row or project in AutoArchiveOverwrite too.
    """
    ow = (overwrite or "").lower()
    auto_row = (row.get("autoarchive") or "Manual") != "Manual"
    files = project_code == 5 or row.get("autoarchive") == "AutoArchiveOverwrite"
    if service == "archive":
        return MergeRules(ow in ("append", "delete"), True, files)
    if service == "import":
        return MergeRules(ow in ("delete", "override"), overwrite is not None or auto_row, files or overwrite_files)
    return MergeRules(False, auto_row, files)


def row_json(row: dict) -> dict[str, str]:
    """A prearchive row as XNAT lists it (``DatabaseSession`` keys, every value a string)."""
    return {
        "project": row["project"], "timestamp": row["timestamp"], "lastmod": now_text(row["lastmod"]),
        "uploaded": now_text(row["uploaded"]), "scan_date": row["scan_date"] or "", "scan_time": row["scan_time"] or "",
        "subject": row["subject"] or "", "folderName": row["folder"], "name": row["name"], "tag": row["tag"] or "",
        "status": row["status"], "url": f"/prearchive/projects/{row['project']}/{row['timestamp']}/{row['folder']}",
        "autoarchive": row["autoarchive"] or "Manual", "prevent_anon": row["prevent_anon"] or "false",
        "prevent_auto_commit": row["prevent_auto_commit"] or "false", "SOURCE": row["source"] or "",
        "VISIT": row["visit"] or "", "PROTOCOL": row["protocol"] or "", "TIMEZONE": row["timezone"] or "",
    }


PREARCHIVE_COLUMNS = list(row_json({k: "" for k in (
    "project", "timestamp", "folder", "name", "subject", "tag", "status", "scan_date", "scan_time", "autoarchive",
    "prevent_anon", "prevent_auto_commit", "source", "visit", "protocol", "timezone")} | {"lastmod": 0,
                                                                                         "uploaded": 0}).keys())


class Prearchive:
    def __init__(self, store: Store, model: Model, receiving_idle: float, build_seconds: float,
                 queue_seconds: float, clock: Clock = time.time):
        self.store = store
        self.clock = clock
        self.model = model
        self.receiving_idle = receiving_idle
        self.build_seconds = build_seconds
        self.queue_seconds = queue_seconds
        self._tick_lock = threading.Lock()

    # ---- rows --------------------------------------------------------------------------------------
    def row(self, project: str, timestamp: str, folder: str) -> dict | None:
        return self.store.one("SELECT * FROM prearchive WHERE project=? AND timestamp=? AND folder=?",
                              project, timestamp, folder)

    def require(self, project: str, timestamp: str, folder: str) -> dict:
        r = self.row(project, timestamp, folder)
        if r is None:
            raise XnatHttpError(404, "Unknown prearchive session.")
        return r

    def auto_archive(self, row: dict) -> bool:
        """True when the row's project archives its sessions as soon as they are built (prearchive code 4 or 5)."""
        project = self.model.project(row["project"])
        return bool(project and project["prearchive_code"] in (4, 5))

    def from_src(self, src: str) -> dict:
        parts = [p for p in src.split("/") if p]
        if parts[:1] == ["data"]:
            parts = parts[1:]
        if len(parts) != 5 or parts[:2] != ["prearchive", "projects"]:
            raise XnatHttpError(400, f"Invalid prearchive path: {src}")
        return self.require(*parts[2:5])

    def session_dir(self, row: dict) -> Path:
        return self.store.path(f"prearchive/{row['project']}/{row['timestamp']}/{row['folder']}")

    def new_row(self, project: str, tag: str, name: str, subject: str, params: dict[str, Any]) -> dict:
        """A new RECEIVING row; its folder gets ``_1``.. when the name is taken in that timestamp.

        Its ``autoarchive`` is the project's prearchive code, as ``PrearcDatabase.eitherGetOrCreateSession``
        records it (``GradualDicomImporter.shouldAutoArchive``), whatever the request asked."""
        proj = self.model.project(project)
        code = AUTOARCHIVE_CODES.get(proj["prearchive_code"]) if proj else None
        params = {**params, "autoarchive": params.get("autoarchive") or code}
        now = self.clock()
        ts = time.strftime("%Y%m%d_%H%M%S", time.localtime(now)) + f"{int(now * 1000) % 1000:03d}"
        with self.store.tx():
            folder, n = name, 0
            while self.row(project, ts, folder):
                n += 1
                folder = f"{name}_{n}"
            self.store.run(
                "INSERT INTO prearchive(project, timestamp, folder, name, subject, tag, status, lastmod, uploaded, "
                "scan_date, scan_time, autoarchive, prevent_anon, prevent_auto_commit, source, visit, protocol, "
                "timezone) VALUES(?,?,?,?,?,?,'RECEIVING',?,?,?,?,?,?,?,?,?,?,?)",
                project, ts, folder, name, subject, tag, now, now, params.get("scan_date"), params.get("scan_time"),
                params.get("autoarchive") or "Manual", params.get("prevent_anon") or "false",
                params.get("prevent_auto_commit") or "false", params.get("SOURCE"), params.get("VISIT"),
                params.get("PROTOCOL"), params.get("TIMEZONE"),
            )
            return self.require(project, ts, folder)

    def receiving_row(self, project: str, tag: str, name: str) -> dict | None:
        """The row new files of (project, study UID, session label) join, as ``PrearcDatabase
        .eitherGetOrCreateSession`` finds it: one RECEIVING stays so; one BUILDING becomes RECEIVING_INTERRUPT; one
        READY, ERROR or CONFLICT becomes RECEIVING again (XNAT 1.8 declares every ``PrearcStatus`` interruptable:
        its no-argument constructor passes true), so a study sent again lands in its row, not in a second one.
        Rows in an operation (archiving, moving, deleting, queued) and rows a test holds are left alone and the
        files get a new row, which is what XNAT does for a status it does not interrupt; XNAT would interrupt
        them too (a race the emulator does not model). Of several rows, the oldest: XNAT's query has no order,
        and a database returns rows in the order they were written unless something moved them."""
        row = self.store.one(
            "SELECT * FROM prearchive WHERE project=? AND tag=? AND name=? AND held=0 AND (status IN "
            "('RECEIVING', 'RECEIVING_INTERRUPT', 'READY', 'ERROR', 'CONFLICT') OR "
            "(status='BUILDING' AND next_op='build')) ORDER BY timestamp, folder", project, tag, name)
        if row and row["status"] in ("BUILDING", "READY", "ERROR", "CONFLICT"):
            self.set_status(row, "RECEIVING_INTERRUPT" if row["status"] == "BUILDING" else "RECEIVING")
            row = self.require(row["project"], row["timestamp"], row["folder"])
        return row

    def set_status(self, row: dict, status: str, message: str | None = None, due: float | None = None,
                   next_op: str | None = None, op_arg: str | None = None) -> None:
        self.store.run(
            "UPDATE prearchive SET status=?, message=?, due=?, next_op=?, op_arg=?, lastmod=? "
            "WHERE project=? AND timestamp=? AND folder=?", status, message, due, next_op, op_arg, self.clock(),
            row["project"], row["timestamp"], row["folder"])

    def touch(self, row: dict) -> None:
        self.store.run("UPDATE prearchive SET lastmod=? WHERE project=? AND timestamp=? AND folder=?",
                       self.clock(), row["project"], row["timestamp"], row["folder"])

    # ---- building ----------------------------------------------------------------------------------
    def build(self, row: dict) -> dict:
        """Read the headers of every file and record the session document; READY or ERROR."""
        scans: dict[str, dict] = {}
        first: Any = None
        root = self.session_dir(row) / "SCANS"
        for path in sorted(root.glob("*/DICOM/*")) if root.exists() else []:
            if path.name.startswith("."):
                continue
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            except Exception:
                continue
            first = first or ds
            scan_id = path.parent.parent.name
            s = scans.setdefault(scan_id, {
                "ID": scan_id, "series_description": str(ds.get("SeriesDescription", "") or ""),
                "uid": str(ds.get("SeriesInstanceUID", "") or ""), "modality": str(ds.get("Modality", "") or ""),
                "files": []})
            s["files"].append({"name": path.name, "size": path.stat().st_size})
        with self.store.tx():
            if not scans:
                self.set_status(row, "ERROR", "The session contains no readable DICOM files.")
                return self.require(row["project"], row["timestamp"], row["folder"])
            modality = str(first.get("Modality", "") or "")
            session_type, scan_type = MODALITY_TYPES.get(modality, DEFAULT_TYPES)
            for s in scans.values():
                s["xsiType"] = MODALITY_TYPES.get(s["modality"], (None, scan_type))[1]
                s["type"] = s["series_description"]
                s["frames"] = str(len(s["files"]))
            doc = {"xsiType": session_type, "modality": modality, "scans": sorted(
                scans.values(), key=lambda s: (not s["ID"].isdigit(), int(s["ID"]) if s["ID"].isdigit() else 0)),
                "date": _dicom_date(first.get("StudyDate")), "time": _dicom_time(first.get("StudyTime")),
                "UID": str(first.get("StudyInstanceUID", "") or "")}
            self.store.run(
                "UPDATE prearchive SET built_doc=?, scan_date=?, scan_time=? WHERE project=? AND timestamp=? "
                "AND folder=?", json.dumps(doc), doc["date"], doc["time"], row["project"], row["timestamp"],
                row["folder"])
            self.set_status(row, "READY")
        return self.require(row["project"], row["timestamp"], row["folder"])

    # ---- the clock ---------------------------------------------------------------------------------
    def tick(self) -> None:
        """Advance every row whose time has come. Called before each request and by a background thread."""
        if not self._tick_lock.acquire(blocking=False):
            return
        try:
            now = self.clock()
            rows = self.store.all(
                "SELECT * FROM prearchive WHERE held=0 AND ((status IN ('RECEIVING','RECEIVING_INTERRUPT') "
                "AND lastmod<=? AND prevent_auto_commit!='true') OR (due IS NOT NULL AND due<=?))",
                now - self.receiving_idle, now)
            for row in rows:
                try:
                    self._advance(row, now)
                except Exception as exc:  # a broken row must not stop the clock
                    self.set_status(row, "ERROR", f"{type(exc).__name__}: {exc}")
        finally:
            self._tick_lock.release()

    def _advance(self, row: dict, now: float) -> None:
        status, op = row["status"], row["next_op"]
        if status in ("RECEIVING", "RECEIVING_INTERRUPT"):
            self.set_status(row, "BUILDING", due=now + self.build_seconds, next_op="build")
        elif op in ("build", "rebuilt"):
            built = self.build(row)
            if op == "build" and built["status"] == "READY" and self.auto_archive(built):
                self.archive_quietly(built)
        elif status.startswith("QUEUED_"):
            self.set_status(row, "_" + status[len("QUEUED_"):], due=now + self.queue_seconds, next_op=op,
                            op_arg=row["op_arg"])
        elif op == "delete":
            self.delete(row)
        elif op == "move":
            self.move(row, row["op_arg"])
        elif op == "rebuild":  # a rebuild never auto-archives (PrearchiveBatchRebuild)
            self.set_status(row, "BUILDING", due=now, next_op="rebuilt")

    def queue(self, row: dict, op: str, arg: str | None = None) -> dict:
        """Queue a batch move, rebuild or delete, as XNAT does (``PrearcUtils.queuePrearchiveOperation``,
        ``PrearchiveBatchDelete``, ``PrearchiveBatchMove``): only if ``PrearcDatabase.setStatus`` may take the row,
        that is unless it is locked (``_X``). A locked row is left exactly as it is, without an error (the service
        answers 200 with the row); ``overrideLock`` does not change that (the queueing never passes it on). Any
        other status is queued over, a held (stuck) row released; an operation already queued is replaced."""
        if is_locked(row["status"]):
            return row
        if row["held"]:
            self.store.run("UPDATE prearchive SET held=0 WHERE project=? AND timestamp=? AND folder=?",
                           row["project"], row["timestamp"], row["folder"])
        self.set_status(row, f"QUEUED_{QUEUED_OPS[op]}", due=self.clock() + self.queue_seconds, next_op=op,
                        op_arg=arg)
        return self.require(row["project"], row["timestamp"], row["folder"])

    def delete(self, row: dict) -> None:
        with self.store.tx():
            self.store.run("DELETE FROM prearchive WHERE project=? AND timestamp=? AND folder=?",
                           row["project"], row["timestamp"], row["folder"])
        shutil.rmtree(self.session_dir(row), ignore_errors=True)
        _prune(self.session_dir(row).parent)

    def move(self, row: dict, new_project: str | None) -> None:
        if not new_project or self.model.project(new_project) is None:
            self.set_status(row, "ERROR", f"Unknown destination project: {new_project}")
            return
        dest = {**row, "project": new_project}
        with self.store.tx():
            target = self.session_dir(dest)
            target.parent.mkdir(parents=True, exist_ok=True)
            if self.session_dir(row).exists():
                os.replace(self.session_dir(row), target)
            self.store.run("UPDATE prearchive SET project=?, status='READY', due=NULL, next_op=NULL, lastmod=? "
                           "WHERE project=? AND timestamp=? AND folder=?", new_project, self.clock(), row["project"],
                           row["timestamp"], row["folder"])
        _prune(self.session_dir(row).parent)

    # ---- archiving ---------------------------------------------------------------------------------
    def archive_quietly(self, row: dict) -> None:
        """The archive an auto-archive session's build queues (no parameters: ``auto`` merge rules)."""
        try:
            self.archive(row, overwrite=None, user="admin", service="auto")
        except (ArchiveConflict, XnatHttpError):
            pass  # the row now says CONFLICT or ERROR, as on a real server

    def archive(self, row: dict, overwrite: str | None, user: str, project: str | None = None,
                subject: str | None = None, label: str | None = None, *, service: str = "archive",
                overwrite_files: bool = False, quarantine: bool = False) -> str:
        """Move a built session into the archive; returns the archive URI (labels, not IDs).

        ``service`` picks the merge rules (:func:`merge_rules`). A locked (``_X``) row is refused with 403 as the
        archive service refuses it; any other built row is archived whatever its status (XNAT sets ARCHIVING
        without looking at it); a row never built cannot be. ``quarantine`` leaves the experiment quarantined
        (``PrearcSessionArchiver``: ``src.quarantine(user)`` when the ``quarantine`` parameter is true).
        """
        self._check_archivable(row, project)
        doc = json.loads(row["built_doc"] or "null") or json.loads(self.build(row)["built_doc"] or "null")
        if not doc:
            raise ArchiveConflict("The session document could not be built.", "ERROR")
        m = self.model
        project = project or row["project"]
        subject = subject or row["subject"]
        label = label or row["name"]
        target = m.project(project)
        rules = merge_rules(service, overwrite, row, target["prearchive_code"] if target else None, overwrite_files)
        moved: list[tuple[Path, Path]] = []
        try:
            with self.store.tx():
                if target is None:
                    raise ArchiveConflict(f"Unknown project: {project}", "ERROR")
                if not subject:
                    raise ArchiveConflict("No subject could be determined for this session.", "ERROR")
                subj, _ = m.create_subject(project, subject, user)
                existing = m.experiment(project, label)
                scan_ids = self._check_merge(existing, subj, doc, rules, self.session_dir(row))
                exp, _ = m.create_experiment(project, subj["id"], label, existing["xsi_type"] if existing else
                                             doc["xsiType"], user, date=doc["date"], time=doc["time"],
                                             UID=doc["UID"], modality=doc["modality"])
                for s in doc["scans"]:
                    self._archive_scan(exp, s, scan_ids.get(s["ID"], s["ID"]), row, moved)
                if quarantine:
                    m.set_experiment_status(exp["id"], "quarantine")
                self.store.run("DELETE FROM prearchive WHERE project=? AND timestamp=? AND folder=?",
                               row["project"], row["timestamp"], row["folder"])
        except ArchiveConflict as exc:
            self._undo(moved)
            self.set_status(row, exc.status, exc.reason)
            raise
        except BaseException:
            self._undo(moved)
            raise
        shutil.rmtree(self.session_dir(row), ignore_errors=True)
        _prune(self.session_dir(row).parent)
        return f"/data/archive/projects/{project}/subjects/{subject}/experiments/{label}"

    def _check_archivable(self, row: dict, project: str | None) -> None:
        """What the archive service refuses before it reads the session: a locked row (403), a row never built,
        an Unassigned row without a destination project (400), a row whose folder is gone (404)."""
        if is_locked(row["status"]):
            raise XnatHttpError(403, LOCKED)
        if row["status"] not in ARCHIVABLE and not row["built_doc"]:
            raise XnatHttpError(400, f"The prearchive session is not ready to be archived: {row['status']}.")
        if row["project"] == "Unassigned" and not project:
            raise XnatHttpError(400, "Sessions in the Unassigned project need a destination project.")
        if not self.session_dir(row).exists():
            raise XnatHttpError(404, "The prearchive session's folder is missing.")

    def _archive_scan(self, exp: dict, scan: dict, scan_id: str, row: dict, moved: list[tuple[Path, Path]]) -> None:
        """One scan of the session into the archive (inside the archive's transaction): its row, its DICOM
        resource (merged into, never deleted: ``MergeSessionsA``) and its files, each move recorded in ``moved``
        so that a failure puts the files back."""
        m = self.model
        m.create_scan(exp["id"], scan_id, scan["xsiType"], type=scan["type"],
                      series_description=scan["series_description"], uid=scan["uid"],
                      modality=scan["modality"], frames=scan["frames"])
        owner = f"{exp['id']}/{scan_id}"
        res = m.resource("scan", owner, "DICOM")
        if res is None:
            res, _ = m.create_resource("scan", owner, "DICOM", format="DICOM", content="RAW")
        src_dir = self.session_dir(row) / "SCANS" / scan["ID"] / "DICOM"
        for f in sorted(src_dir.iterdir()):
            if f.name.startswith("."):
                continue
            size, md5 = md5_file(f)
            tmp = m.temp_path(res, f.name)
            os.replace(f, tmp)
            moved.append((tmp, f))
            m.commit_file(res, f.name, tmp, size, md5, overwrite=True, format="DICOM", content="RAW")
            moved[-1] = (m.file_path(res, f.name), f)

    def _check_merge(self, existing: dict | None, subj: dict, doc: dict, rules: MergeRules,
                     session_dir: Path) -> dict[str, str]:
        """XNAT's checks before a merge into ``existing``, in its order; returns the scans to renumber.

        ``PrearcSessionArchiver.checkForConflicts``: no merge allowed, another modality or another subject are
        conflicts; unless the exceptions are overridden, so are another StudyInstanceUID and a scan whose series
        UID the session already has under another number. A scan whose number the session already uses for
        another series is renumbered (``correctScanID``). Then ``MergeSessionsA.checkForConflict``: unless files
        may be overwritten, a file the archived scan already has (same name, here the SOP Instance UID) is a
        conflict.
        """
        if existing is None:
            return {}
        m = self.model
        if not rules.allow_merge:
            raise ArchiveConflict(PRE_EXISTS)
        if existing["xsi_type"] != doc["xsiType"]:
            raise ArchiveConflict(MODALITY_MOD)
        if existing["subject_id"] != subj["id"]:
            raise ArchiveConflict(f"{SUBJECT_MOD}: {existing['label']} Already Exists for another Subject")
        if (not rules.override_exceptions and existing["uid"] and doc["UID"]
                and existing["uid"] != doc["UID"]):
            raise ArchiveConflict(UID_MOD)
        old = m.scans(existing["id"])
        by_id = {o["scan_id"]: o for o in old}
        renumber = False
        for s in doc["scans"]:
            match = by_id.get(s["ID"])
            if match is not None and match["uid"] and match["uid"] != s["uid"]:
                renumber = True  # allowSessionMerge: renumbered below, not a conflict
            same_uid = next((o for o in old if (o["uid"] or "") == (s["uid"] or "")), None)
            if same_uid is not None and match is None and not rules.override_exceptions:
                raise ArchiveConflict("Session already contains a scan with the same UID, but a different number "
                                      f"({same_uid['scan_id']}).")
        scan_ids = self._scan_ids(old, doc) if renumber else {}
        if not (rules.override_exceptions or rules.overwrite_files):
            for s in doc["scans"]:
                res = m.resource("scan", f"{existing['id']}/{scan_ids.get(s['ID'], s['ID'])}", "DICOM")
                there = {f["path"] for f in m.files(res["id"])} if res else set()
                src = session_dir / "SCANS" / s["ID"] / "DICOM"
                if there and any(f.name in there for f in src.iterdir() if not f.name.startswith(".")):
                    raise ArchiveConflict(HAS_FILES)
        return scan_ids

    @staticmethod
    def _scan_ids(old: list[dict], doc: dict) -> dict[str, str]:
        """``PrearcSessionArchiver.correctScanID``: a scan whose series the session has under another number
        joins that scan; a scan whose number is taken gets ``<number>-<modality><n>`` (``4-MR1``)."""
        used = [o["scan_id"] for o in old]
        out: dict[str, str] = {}
        later: dict[str, str] = {}
        for s in doc["scans"]:
            code = s["xsiType"][5:7].upper() if s["xsiType"].startswith("xnat:") else ""
            code = "PT" if code == "PE" else code
            same_uid = next((o for o in old if (o["uid"] or "") == (s["uid"] or "")), None)
            if same_uid is not None:
                if same_uid["scan_id"] != s["ID"] or f"-{code}" in same_uid["scan_id"]:
                    later[s["ID"]] = same_uid["scan_id"]
                continue
            stub = s["ID"].rsplit("-", 1)[0] if re.fullmatch(rf".-{code}[0-9]+", s["ID"]) else None
            scan_id, n = s["ID"], 1
            while scan_id in used:
                scan_id = f"{stub or s['ID']}-{code}{n}"
                n += 1
            used.append(scan_id)
            if scan_id != s["ID"]:
                out[s["ID"]] = scan_id
        return {**out, **later}

    @staticmethod
    def _undo(moved: list[tuple[Path, Path]]) -> None:
        for done, original in reversed(moved):
            if done.exists():
                os.replace(done, original)


def _prune(folder: Path) -> None:
    """Remove empty timestamp and project folders left behind."""
    for p in (folder, folder.parent):
        try:
            p.rmdir()
        except OSError:
            return


def _dicom_date(value: Any) -> str:
    v = str(value or "")
    return f"{v[:4]}-{v[4:6]}-{v[6:8]}" if len(v) >= 8 and v[:8].isdigit() else ""


def _dicom_time(value: Any) -> str:
    v = str(value or "").split(".")[0]
    return f"{v[:2]}:{v[2:4]}:{v[4:6]}" if len(v) >= 6 and v[:6].isdigit() else ""
