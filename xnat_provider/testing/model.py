"""The archive's data model: projects, subjects, experiments, scans, assessors, resources, files, fields.

This is the emulator's side of the wire only; it shares no code with the provider's client. IDs follow
XNAT's pattern (``XNAT_S00001``, ``XNAT_E00001``); labels are unique per project; resources get numeric
ids. Files are committed atomically: the bytes are written to a temporary name beside their final place,
renamed, and only then recorded. On start, :meth:`Model.recover` re-reads any file whose size or mtime no
longer matches its row (a crash between rename and commit) and removes abandoned temporary files.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path
from typing import Any

from .http import XnatHttpError
from .store import Store, now_text

LABEL_RE = re.compile(r"^[A-Za-z0-9_\-]+$")
PART_SUFFIX = ".emulator-part"

MODALITY_TYPES = {
    "MR": ("xnat:mrSessionData", "xnat:mrScanData"),
    "CT": ("xnat:ctSessionData", "xnat:ctScanData"),
    "PT": ("xnat:petSessionData", "xnat:petScanData"),
}
DEFAULT_TYPES = ("xnat:otherDicomSessionData", "xnat:otherDicomScanData")
SESSION_TYPES = {s for s, _ in MODALITY_TYPES.values()} | {DEFAULT_TYPES[0]}
SCAN_TYPES = {s for _, s in MODALITY_TYPES.values()} | {DEFAULT_TYPES[1]}
ASSESSOR_TYPES = {"xnat:qcAssessmentData", "xnat:imageAssessorData"}
ACCESSIBILITY = ("private", "protected", "public")


def check_label(label: str, what: str) -> None:
    if not LABEL_RE.match(label or ""):
        raise XnatHttpError(417, f"Invalid character in {what} label: {label!r}. Use letters, digits, _ and -.")


def md5_file(path: Path | str) -> tuple[int, str]:
    h, size = hashlib.md5(), 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def safe_relpath(rel: str) -> str:
    """A resource-relative file path with no way out of the resource folder."""
    parts = [p for p in rel.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts) or rel.startswith("/"):
        raise XnatHttpError(400, f"Invalid file path: {rel!r}")
    return "/".join(parts)


class Model:
    def __init__(self, store: Store, site_id: str = "XNAT"):
        self.store = store
        self.site_id = site_id

    # ---- ids ---------------------------------------------------------------------------------------
    def _new_id(self, kind: str) -> str:
        return f"{self.site_id}_{kind}{self.store.next_id(kind):05d}"

    # ---- projects ----------------------------------------------------------------------------------
    def project(self, key: str) -> dict | None:
        return self.store.one("SELECT * FROM projects WHERE id=? OR secondary_id=?", key, key)

    def require_project(self, key: str) -> dict:
        p = self.project(key)
        if p is None:
            raise XnatHttpError(404, f"Unable to find the specified project: {key}")
        return p

    def create_project(self, pid: str, user: str = "admin", **attrs: Any) -> tuple[dict, bool]:
        check_label(pid, "project")
        with self.store.tx():
            existing = self.project(pid)
            if existing:
                return existing, False
            self.store.run(
                "INSERT INTO projects(id, secondary_id, name, description, pi_firstname, pi_lastname, "
                "insert_date, insert_user) VALUES(?,?,?,?,?,?,?,?)",
                pid, attrs.get("secondary_ID") or pid, attrs.get("name") or pid, attrs.get("description") or "",
                attrs.get("pi_firstname") or "", attrs.get("pi_lastname") or "", now_text(), user,
            )
            if attrs.get("accessibility"):
                self.set_accessibility(pid, str(attrs["accessibility"]))
            return self.require_project(pid), True

    def set_accessibility(self, pid: str, level: str) -> None:
        """XNAT's project accessibility: ``private`` (the default: nothing visible to the guest user),
        ``protected`` (the guest sees the project, none of its data) or ``public`` (the guest reads everything)."""
        if level not in ACCESSIBILITY:
            raise XnatHttpError(400, f"Invalid accessibility {level!r}: expected one of {', '.join(ACCESSIBILITY)}.")
        self.store.run("UPDATE projects SET accessibility=? WHERE id=?", level, pid)

    # ---- subjects ----------------------------------------------------------------------------------
    def subject(self, project: str | None, key: str) -> dict | None:
        if project is None:
            return self.store.one("SELECT * FROM subjects WHERE id=?", key)
        return self.store.one(
            "SELECT * FROM subjects WHERE project=? AND (id=? OR label=?) ORDER BY id=? DESC", project, key, key, key
        )

    def require_subject(self, project: str | None, key: str) -> dict:
        s = self.subject(project, key)
        if s is None:
            raise XnatHttpError(404, f"Unable to find the specified subject: {key}")
        return s

    def create_subject(self, project: str, label: str, user: str = "admin") -> tuple[dict, bool]:
        with self.store.tx():
            existing = self.subject(project, label)
            if existing:
                return existing, False
            check_label(label, "subject")
            sid = self._new_id("S")
            self.store.run(
                "INSERT INTO subjects(id, project, label, insert_date, insert_user) VALUES(?,?,?,?,?)",
                sid, project, label, now_text(), user,
            )
            return self.require_subject(None, sid), True

    # ---- experiments -------------------------------------------------------------------------------
    def experiment(self, project: str | None, key: str, subject_id: str | None = None) -> dict | None:
        if project is None:
            return self.store.one("SELECT * FROM experiments WHERE id=?", key)
        row = self.store.one(
            "SELECT * FROM experiments WHERE project=? AND (id=? OR label=?) ORDER BY id=? DESC",
            project, key, key, key,
        )
        if row and subject_id and row["subject_id"] != subject_id:
            return None
        return row

    def require_experiment(self, project: str | None, key: str, subject_id: str | None = None) -> dict:
        e = self.experiment(project, key, subject_id)
        if e is None:
            raise XnatHttpError(404, f"Unable to find the specified experiment: {key}")
        return e

    def create_experiment(
        self, project: str, subject_id: str, label: str, xsi_type: str, user: str = "admin", **attrs: Any
    ) -> tuple[dict, bool]:
        with self.store.tx():
            existing = self.store.one("SELECT * FROM experiments WHERE project=? AND label=?", project, label)
            if existing:
                if existing["subject_id"] != subject_id:
                    raise XnatHttpError(409, f"Experiment label {label} is already used in project {project}.")
                self.update_experiment(existing["id"], **attrs)
                return self.require_experiment(None, existing["id"]), False
            check_label(label, "experiment")
            if xsi_type not in SESSION_TYPES:
                raise XnatHttpError(400, f"Unsupported experiment xsiType: {xsi_type}")
            eid = self._new_id("E")
            self.store.run(
                "INSERT INTO experiments(id, project, subject_id, label, xsi_type, date, time, uid, modality, "
                "insert_date, insert_user) VALUES(?,?,?,?,?,?,?,?,?,?,?)",
                eid, project, subject_id, label, xsi_type, attrs.get("date"), attrs.get("time"),
                attrs.get("UID"), attrs.get("modality"), now_text(), user,
            )
            return self.require_experiment(None, eid), True

    def update_experiment(self, eid: str, **attrs: Any) -> None:
        cols = {"date": "date", "time": "time", "UID": "uid", "modality": "modality"}
        for key, col in cols.items():
            if attrs.get(key) not in (None, ""):
                self.store.run(f"UPDATE experiments SET {col}=? WHERE id=?", attrs[key], eid)

    # ---- assessors ---------------------------------------------------------------------------------
    def assessor(self, experiment_id: str, key: str) -> dict | None:
        return self.store.one(
            "SELECT * FROM assessors WHERE experiment_id=? AND (id=? OR label=?)", experiment_id, key, key
        )

    def create_assessor(self, exp: dict, label: str, xsi_type: str) -> tuple[dict, bool]:
        with self.store.tx():
            existing = self.assessor(exp["id"], label)
            if existing:
                return existing, False
            check_label(label, "assessor")
            if xsi_type not in ASSESSOR_TYPES:
                raise XnatHttpError(400, f"Unsupported assessor xsiType: {xsi_type}")
            aid = self._new_id("A")
            self.store.run(
                "INSERT INTO assessors(id, experiment_id, project, label, xsi_type, insert_date) VALUES(?,?,?,?,?,?)",
                aid, exp["id"], exp["project"], label, xsi_type, now_text(),
            )
            return self.assessor(exp["id"], aid), True  # type: ignore[return-value]

    # ---- scans -------------------------------------------------------------------------------------
    def scans(self, eid: str) -> list[dict]:
        rows = self.store.all("SELECT * FROM scans WHERE experiment_id=?", eid)
        return sorted(rows, key=lambda r: (not r["scan_id"].isdigit(), int(r["scan_id"]) if r["scan_id"].isdigit()
                                           else 0, r["scan_id"]))

    def scan(self, eid: str, scan_id: str) -> dict | None:
        return self.store.one("SELECT * FROM scans WHERE experiment_id=? AND scan_id=?", eid, scan_id)

    def select_scans(self, eid: str, selector: str) -> list[dict]:
        """XNAT's scan selector: an ID, a type, a comma list of either, or ALL / *."""
        scans = self.scans(eid)
        if selector in ("ALL", "*"):
            return scans
        wanted = [s for s in selector.split(",") if s]
        return [s for s in scans if s["scan_id"] in wanted or (s["type"] or "") in wanted]

    def create_scan(self, eid: str, scan_id: str, xsi_type: str, **attrs: Any) -> tuple[dict, bool]:
        with self.store.tx():
            existing = self.scan(eid, scan_id)
            if existing:
                for col in ("type", "series_description", "uid", "quality", "note", "modality", "frames"):
                    if attrs.get(col) not in (None, ""):
                        self.store.run(f"UPDATE scans SET {col}=? WHERE pk=?", attrs[col], existing["pk"])
                return self.scan(eid, scan_id), False  # type: ignore[return-value]
            if not re.match(r"^[A-Za-z0-9_\-.]+$", scan_id):
                raise XnatHttpError(417, f"Invalid character in scan ID: {scan_id!r}")
            if xsi_type not in SCAN_TYPES:
                raise XnatHttpError(400, f"Unsupported scan xsiType: {xsi_type}")
            self.store.run(
                "INSERT INTO scans(experiment_id, scan_id, xsi_type, type, series_description, uid, quality, "
                "note, modality, frames) VALUES(?,?,?,?,?,?,?,?,?,?)",
                eid, scan_id, xsi_type, attrs.get("type"), attrs.get("series_description"), attrs.get("uid"),
                attrs.get("quality") or "usable", attrs.get("note"), attrs.get("modality"), attrs.get("frames"),
            )
            return self.scan(eid, scan_id), True  # type: ignore[return-value]

    # ---- resources ---------------------------------------------------------------------------------
    def resource_root(self, owner_kind: str, owner_id: str, label: str) -> str:
        safe = re.sub(r"[^\w\-.]", "_", label) or "resource"
        if owner_kind == "project":
            base = f"archive/{owner_id}/resources"
        elif owner_kind == "subject":
            s = self.require_subject(None, owner_id)
            base = f"archive/{s['project']}/subjects/{s['label']}/resources"
        elif owner_kind == "experiment":
            e = self.require_experiment(None, owner_id)
            base = f"archive/{e['project']}/arc001/{e['label']}/RESOURCES"
        elif owner_kind == "scan":
            eid, scan_id = owner_id.split("/", 1)
            e = self.require_experiment(None, eid)
            base = f"archive/{e['project']}/arc001/{e['label']}/SCANS/{scan_id}"
        elif owner_kind == "assessor":
            a = self.store.one("SELECT * FROM assessors WHERE id=?", owner_id)
            e = self.require_experiment(None, a["experiment_id"])  # type: ignore[index]
            base = f"archive/{e['project']}/arc001/{e['label']}/ASSESSORS/{a['label']}"  # type: ignore[index]
        else:
            raise ValueError(owner_kind)
        root, n = f"{base}/{safe}", 1
        while self.store.path(root).exists() or self.store.one("SELECT 1 FROM resources WHERE root=?", root):
            n += 1
            root = f"{base}/{safe}_{n}"
        return root

    def resources(self, owner_kind: str, owner_id: str) -> list[dict]:
        return self.store.all(
            "SELECT * FROM resources WHERE owner_kind=? AND owner_id=? ORDER BY id", owner_kind, owner_id
        )

    def resource(self, owner_kind: str, owner_id: str, key: str) -> dict | None:
        return self.store.one(
            "SELECT * FROM resources WHERE owner_kind=? AND owner_id=? AND (label=? OR CAST(id AS TEXT)=?) "
            "ORDER BY label=? DESC", owner_kind, owner_id, key, key, key,
        )

    def create_resource(self, owner_kind: str, owner_id: str, label: str, **attrs: Any) -> tuple[dict, bool]:
        if not label or "/" in label:
            raise XnatHttpError(400, f"Invalid resource label: {label!r}")
        with self.store.tx():
            existing = self.resource(owner_kind, owner_id, label)
            if existing and existing["label"] == label:
                return existing, False
            root = self.resource_root(owner_kind, owner_id, label)
            rid = self.store.insert(
                "INSERT INTO resources(owner_kind, owner_id, label, format, content, description, tags, root) "
                "VALUES(?,?,?,?,?,?,?,?)", owner_kind, owner_id, label, attrs.get("format"), attrs.get("content"),
                attrs.get("description"), attrs.get("tags"), root,
            )
            return self.store.one("SELECT * FROM resources WHERE id=?", rid), True  # type: ignore[return-value]

    def files(self, resource_id: int) -> list[dict]:
        return self.store.all("SELECT * FROM files WHERE resource_id=? ORDER BY path", resource_id)

    def file_path(self, res: dict, rel: str) -> Path:
        return self.store.path(f"{res['root']}/{rel}")

    def temp_path(self, res: dict, rel: str) -> Path:
        final = self.file_path(res, rel)
        final.parent.mkdir(parents=True, exist_ok=True)
        return final.with_name(f".{final.name}.{os.getpid()}.{os.urandom(4).hex()}{PART_SUFFIX}")

    def commit_file(
        self, res: dict, rel: str, tmp: Path, size: int, md5: str, overwrite: bool, **meta: Any
    ) -> str:
        """Move a fully written temporary file into place and record it: 'added', 'replaced' or 'duplicate'."""
        rel = safe_relpath(rel)
        final = self.file_path(res, rel)
        with self.store.tx():
            existing = self.store.one("SELECT * FROM files WHERE resource_id=? AND path=?", res["id"], rel)
            if existing and not overwrite:
                tmp.unlink(missing_ok=True)
                return "duplicate"
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
            self.store.run(
                "INSERT OR REPLACE INTO files(resource_id, path, size, md5, format, content, tags) "
                "VALUES(?,?,?,?,?,?,?)", res["id"], rel, size, md5, meta.get("format"), meta.get("content"),
                meta.get("tags"),
            )
            self._stamp(res["id"], rel, final)
            return "replaced" if existing else "added"

    def _stamp(self, resource_id: int, rel: str, path: Path) -> None:
        # Remember size and mtime so that recover() can tell a file replaced behind its row.
        self.store.run(
            "UPDATE files SET mtime_ns=? WHERE resource_id=? AND path=?", path.stat().st_mtime_ns, resource_id, rel
        )

    def delete_file(self, res: dict, rel: str) -> bool:
        with self.store.tx():
            n = self.store.run("DELETE FROM files WHERE resource_id=? AND path=?", res["id"], rel)
            if n:
                self.file_path(res, rel).unlink(missing_ok=True)
            return bool(n)

    def delete_resource(self, res: dict, remove_files: bool = True) -> None:
        with self.store.tx():
            self.store.run("DELETE FROM files WHERE resource_id=?", res["id"])
            self.store.run("DELETE FROM resources WHERE id=?", res["id"])
        if remove_files:
            shutil.rmtree(self.store.path(res["root"]), ignore_errors=True)

    def delete_owner(self, owner_kind: str, owner_id: str) -> None:
        for res in self.resources(owner_kind, owner_id):
            self.delete_resource(res)
        self.store.run("DELETE FROM fields WHERE owner_kind=? AND owner_id=?", owner_kind, owner_id)

    def delete_experiment(self, exp: dict) -> None:
        with self.store.tx():
            for s in self.scans(exp["id"]):
                self.delete_owner("scan", f"{exp['id']}/{s['scan_id']}")
            for a in self.store.all("SELECT * FROM assessors WHERE experiment_id=?", exp["id"]):
                self.delete_owner("assessor", a["id"])
            self.store.run("DELETE FROM assessors WHERE experiment_id=?", exp["id"])
            self.store.run("DELETE FROM scans WHERE experiment_id=?", exp["id"])
            self.delete_owner("experiment", exp["id"])
            self.store.run("DELETE FROM experiment_status WHERE experiment_id=?", exp["id"])
            self.store.run("DELETE FROM experiments WHERE id=?", exp["id"])

    def experiment_status(self, eid: str) -> str:
        """XNAT's status of an experiment (its ``meta/status``): ``active``, or ``quarantine`` until activated."""
        row = self.store.one("SELECT status FROM experiment_status WHERE experiment_id=?", eid)
        return row["status"] if row else "active"

    def set_experiment_status(self, eid: str, status: str) -> None:
        self.store.run("INSERT OR REPLACE INTO experiment_status(experiment_id, status) VALUES(?, ?)", eid, status)

    def delete_subject(self, subj: dict) -> None:
        with self.store.tx():
            for e in self.store.all("SELECT * FROM experiments WHERE subject_id=?", subj["id"]):
                self.delete_experiment(e)
            self.delete_owner("subject", subj["id"])
            self.store.run("DELETE FROM subjects WHERE id=?", subj["id"])

    def delete_project(self, proj: dict) -> None:
        with self.store.tx():
            for s in self.store.all("SELECT * FROM subjects WHERE project=?", proj["id"]):
                self.delete_subject(s)
            self.delete_owner("project", proj["id"])
            self.store.run("DELETE FROM projects WHERE id=?", proj["id"])

    # ---- custom fields -----------------------------------------------------------------------------
    def fields(self, owner_kind: str, owner_id: str) -> dict[str, str]:
        rows = self.store.all(
            "SELECT name, value FROM fields WHERE owner_kind=? AND owner_id=? ORDER BY name", owner_kind, owner_id
        )
        return {r["name"]: r["value"] for r in rows}

    def set_field(self, owner_kind: str, owner_id: str, name: str, value: str | None) -> None:
        name = name.lower()  # XNAT stores custom field names in lower case (xnat-rest.md §12.4)
        with self.store.tx():
            if value is None or value == "NULL":
                self.store.run(
                    "DELETE FROM fields WHERE owner_kind=? AND owner_id=? AND name=?", owner_kind, owner_id, name
                )
            else:
                self.store.run(
                    "INSERT OR REPLACE INTO fields(owner_kind, owner_id, name, value) VALUES(?,?,?,?)",
                    owner_kind, owner_id, name, value,
                )

    # ---- crash recovery ----------------------------------------------------------------------------
    def recover(self) -> dict[str, int]:
        """Bring rows and files back in line after a crash; returns what was done."""
        fixed = removed = 0
        for res in self.store.all("SELECT * FROM resources"):
            root = self.store.path(res["root"])
            if root.exists():
                for tmp in root.rglob(f"*{PART_SUFFIX}"):
                    tmp.unlink(missing_ok=True)
                    removed += 1
            for f in self.files(res["id"]):
                p = self.file_path(res, f["path"])
                if not p.exists():
                    self.store.run("DELETE FROM files WHERE resource_id=? AND path=?", res["id"], f["path"])
                    fixed += 1
                elif p.stat().st_mtime_ns != f["mtime_ns"] or p.stat().st_size != f["size"]:
                    size, md5 = md5_file(p)
                    self.store.run(
                        "UPDATE files SET size=?, md5=? WHERE resource_id=? AND path=?", size, md5, res["id"], f["path"]
                    )
                    self._stamp(res["id"], f["path"], p)
                    fixed += 1
        return {"rows_fixed": fixed, "temp_files_removed": removed}
