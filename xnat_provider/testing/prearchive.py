"""The prearchive: sessions waiting to be archived, their status machine, building and archiving.

Statuses move in time, as on a real server:
- a session imported without ``dest`` stays RECEIVING until no file has arrived for ``receiving_idle``
  seconds, then is BUILDING for ``build_seconds``, then READY (or is archived at once when its project
  auto-archives);
- move, rebuild and delete requests are queued: ``QUEUED_<OP>`` at once, ``_<OP>`` (running, locked) after
  ``queue_seconds``, and done ``queue_seconds`` later;
- a failed archive leaves the row in CONFLICT (a merge conflict) or ERROR with XNAT's reason.

A test can hold a session in any status (a stuck session); a rebuild request releases it, which is what
an operator's "rebuild" does to a stuck session on a real server.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom

from .http import XnatHttpError
from .model import DEFAULT_TYPES, MODALITY_TYPES, md5_file
from .store import now_text

if TYPE_CHECKING:
    from .emulator import XnatEmulator

QUEUED_OPS = {"move": "MOVING", "delete": "DELETING", "rebuild": "BUILDING"}
ARCHIVABLE = ("READY", "CONFLICT", "ERROR")


class ArchiveConflict(Exception):
    def __init__(self, reason: str, status: str = "CONFLICT"):
        super().__init__(reason)
        self.reason = reason
        self.status = status


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
    def __init__(self, emu: XnatEmulator, receiving_idle: float, build_seconds: float, queue_seconds: float):
        self.emu = emu
        self.store = emu.store
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
        """A new RECEIVING row; its folder gets ``_1``.. when the name is taken in that timestamp."""
        now = time.time()
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
        """The row new files join: RECEIVING, or waiting to be built (which becomes RECEIVING_INTERRUPT)."""
        row = self.store.one(
            "SELECT * FROM prearchive WHERE project=? AND tag=? AND name=? AND held=0 AND (status IN "
            "('RECEIVING', 'RECEIVING_INTERRUPT') OR (status='BUILDING' AND next_op='build')) "
            "ORDER BY timestamp DESC", project, tag, name)
        if row and row["status"] == "BUILDING":
            self.set_status(row, "RECEIVING_INTERRUPT")
            row = self.require(row["project"], row["timestamp"], row["folder"])
        return row

    def set_status(self, row: dict, status: str, message: str | None = None, due: float | None = None,
                   next_op: str | None = None, op_arg: str | None = None) -> None:
        self.store.run(
            "UPDATE prearchive SET status=?, message=?, due=?, next_op=?, op_arg=?, lastmod=? "
            "WHERE project=? AND timestamp=? AND folder=?", status, message, due, next_op, op_arg, time.time(),
            row["project"], row["timestamp"], row["folder"])

    def touch(self, row: dict) -> None:
        self.store.run("UPDATE prearchive SET lastmod=? WHERE project=? AND timestamp=? AND folder=?",
                       time.time(), row["project"], row["timestamp"], row["folder"])

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
            now = time.time()
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
            if op == "build" and built["status"] == "READY" and self.emu.auto_archive(built):
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
        stuck = bool(row["held"]) and op == "rebuild"  # an operator's rebuild releases a stuck session
        if not stuck and (row["status"].startswith(("QUEUED_", "_")) or row["status"] in ("ARCHIVING", "BUILDING")):
            raise XnatHttpError(403, "Operation already in progress on this prearchive entry.")
        if row["held"] and op == "rebuild":
            self.store.run("UPDATE prearchive SET held=0 WHERE project=? AND timestamp=? AND folder=?",
                           row["project"], row["timestamp"], row["folder"])
        self.set_status(row, f"QUEUED_{QUEUED_OPS[op]}", due=time.time() + self.queue_seconds, next_op=op,
                        op_arg=arg)
        return self.require(row["project"], row["timestamp"], row["folder"])

    def delete(self, row: dict) -> None:
        with self.store.tx():
            self.store.run("DELETE FROM prearchive WHERE project=? AND timestamp=? AND folder=?",
                           row["project"], row["timestamp"], row["folder"])
        shutil.rmtree(self.session_dir(row), ignore_errors=True)
        _prune(self.session_dir(row).parent)

    def move(self, row: dict, new_project: str | None) -> None:
        if not new_project or self.emu.model.project(new_project) is None:
            self.set_status(row, "ERROR", f"Unknown destination project: {new_project}")
            return
        dest = {**row, "project": new_project}
        with self.store.tx():
            target = self.session_dir(dest)
            target.parent.mkdir(parents=True, exist_ok=True)
            if self.session_dir(row).exists():
                os.replace(self.session_dir(row), target)
            self.store.run("UPDATE prearchive SET project=?, status='READY', due=NULL, next_op=NULL, lastmod=? "
                           "WHERE project=? AND timestamp=? AND folder=?", new_project, time.time(), row["project"],
                           row["timestamp"], row["folder"])
        _prune(self.session_dir(row).parent)

    # ---- archiving ---------------------------------------------------------------------------------
    def archive_quietly(self, row: dict) -> None:
        try:
            self.archive(row, overwrite=None, user="admin")
        except (ArchiveConflict, XnatHttpError):
            pass  # the row now says CONFLICT or ERROR, as on a real server

    def archive(self, row: dict, overwrite: str | None, user: str, project: str | None = None,
                subject: str | None = None, label: str | None = None) -> str:
        """Move a READY session into the archive; returns the archive URI (labels, not IDs)."""
        if row["status"] not in ARCHIVABLE:
            if row["status"].startswith(("QUEUED_", "_")) or row["status"] in ("ARCHIVING", "BUILDING"):
                raise XnatHttpError(403, "Operation already in progress on this prearchive entry.")
            raise XnatHttpError(400, f"The prearchive session is not ready to be archived: {row['status']}.")
        if row["project"] == "Unassigned" and not project:
            raise XnatHttpError(400, "Sessions in the Unassigned project need a destination project.")
        if not self.session_dir(row).exists():
            raise XnatHttpError(404, "The prearchive session's folder is missing.")
        doc = json.loads(row["built_doc"] or "null") or json.loads(self.build(row)["built_doc"] or "null")
        if not doc:
            raise ArchiveConflict("The session document could not be built.", "ERROR")
        m = self.emu.model
        project = project or row["project"]
        subject = subject or row["subject"]
        label = label or row["name"]
        moved: list[tuple[Path, Path]] = []
        try:
            with self.store.tx():
                if m.project(project) is None:
                    raise ArchiveConflict(f"Unknown project: {project}", "ERROR")
                if not subject:
                    raise ArchiveConflict("No subject could be determined for this session.", "ERROR")
                subj, _ = m.create_subject(project, subject, user)
                existing = m.experiment(project, label)
                self._check_merge(existing, subj, doc, overwrite)
                exp, _ = m.create_experiment(project, subj["id"], label, existing["xsi_type"] if existing else
                                             doc["xsiType"], user, date=doc["date"], time=doc["time"],
                                             UID=doc["UID"], modality=doc["modality"])
                for s in doc["scans"]:
                    m.create_scan(exp["id"], s["ID"], s["xsiType"], type=s["type"],
                                  series_description=s["series_description"], uid=s["uid"],
                                  modality=s["modality"], frames=s["frames"])
                    owner = f"{exp['id']}/{s['ID']}"
                    res = m.resource("scan", owner, "DICOM")
                    if res and overwrite in ("delete", "override"):
                        m.delete_resource(res)
                        res = None
                    if res is None:
                        res, _ = m.create_resource("scan", owner, "DICOM", format="DICOM", content="RAW")
                    src_dir = self.session_dir(row) / "SCANS" / s["ID"] / "DICOM"
                    for f in sorted(src_dir.iterdir()):
                        if f.name.startswith("."):
                            continue
                        size, md5 = md5_file(f)
                        tmp = m.temp_path(res, f.name)
                        os.replace(f, tmp)
                        moved.append((tmp, f))
                        m.commit_file(res, f.name, tmp, size, md5, overwrite=True, format="DICOM", content="RAW")
                        moved[-1] = (m.file_path(res, f.name), f)
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

    def _check_merge(self, existing: dict | None, subj: dict, doc: dict, overwrite: str | None) -> None:
        """XNAT's merge rules: without ``overwrite`` an existing scan is a conflict; append merges."""
        if existing is None:
            return
        if existing["subject_id"] != subj["id"]:
            raise ArchiveConflict("Invalid modification of session subject via archive process.")
        if existing["uid"] and doc["UID"] and existing["uid"] != doc["UID"] and overwrite not in ("delete", "override"):
            raise ArchiveConflict("Invalid modification of session UID via archive process.")
        if overwrite in ("append", "delete", "override"):
            return
        for s in doc["scans"]:
            from_db = self.emu.model.scan(existing["id"], s["ID"])
            if from_db is not None:
                if from_db["uid"] == s["uid"]:
                    raise ArchiveConflict("Session already exists with matching files.")
                raise ArchiveConflict(f"Session already contains a scan ({s['ID']}) with a different UID.")

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
