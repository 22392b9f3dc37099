"""Prearchive REST resources and the archive and batch services.

- ``GET /data/prearchive/projects[/{P}[,{P2}]]``: rows (JSON by default);
- ``/data/prearchive/projects/{P}/{TS}/{FOLDER}``: the session (XML document by default, ``format=json`` a
  one-row table, ``format=zip`` the folder), ``POST ?action=build|commit|move|set-status|reset-status``,
  ``DELETE``; its scans, their resources and files;
- ``POST /data/services/archive``: synchronous; 200 ``text/uri-list``, 303 when asked or auto-archiving, and a
  conflict answered as 500 ``FAILED: ...`` (XNAT 1.8.9+) or 409 (older servers) with the row left in CONFLICT;
  403 for a locked (``_X``) row; ``quarantine=true`` leaves the experiment quarantined (its ``/status``);
- ``POST /data/services/prearchive/{move,rebuild,delete}``: queued; the answer lists the rows (XML default). A
  locked (``_X``) row is skipped silently: 200 and the row unchanged, ``overrideLock`` or not.
"""

from __future__ import annotations

import json
import zipfile
from typing import TYPE_CHECKING, BinaryIO

from . import representations as rep
from .http import Request, Response, Router, XnatHttpError
from .prearchive import PREARCHIVE_COLUMNS, ArchiveConflict, is_locked, row_json

if TYPE_CHECKING:
    from .registry import Services

SEG = r"[^/]+"
SESSION = rf"/data/prearchive/projects/(?P<project>{SEG})/(?P<timestamp>{SEG})/(?P<folder>{SEG})"


class PrearchiveApi:
    def __init__(self, services: Services):
        self.store, self.model, self.auth = services.store, services.model, services.auth
        self.pre = services.prearchive
        self.settings = services.settings

    def _visible(self, req: Request, project: str) -> bool:
        return project != "Unassigned" or self.auth.is_admin(req.user)

    def list_rows(self, req: Request) -> Response:
        projects = req.route_params.get("projects")
        rows = self.store.all("SELECT * FROM prearchive ORDER BY timestamp, folder")
        if projects:
            wanted = projects.split(",")
            for p in wanted:
                if p != "Unassigned" and self.model.project(p) is None:
                    raise XnatHttpError(404, f"Unable to find the specified project: {p}")
            rows = [r for r in rows if r["project"] in wanted]
        tag = req.param("tag")
        if tag:
            rows = [r for r in rows if r["tag"] == tag]
        rows = [row_json(r) for r in rows if self._visible(req, r["project"])]
        return rep.table(req.format("json"), PREARCHIVE_COLUMNS, rows, title="Prearchive sessions")

    def _row(self, req: Request) -> dict:
        p = req.route_params
        row = self.pre.row(p["project"], p["timestamp"], p["folder"])
        if row is None or not self._visible(req, row["project"]):
            raise XnatHttpError(404, "Unknown prearchive session.")
        return row

    def _doc(self, row: dict) -> dict:
        doc = json.loads(row["built_doc"] or "null")
        if not doc:
            raise XnatHttpError(404, "The XNAT session document is not available for this prearchive session; "
                                     "it has not been built yet.")
        return doc

    def get_session(self, req: Request) -> Response:
        row = self._row(req)
        fmt = req.format("xml")
        if fmt in ("json", "csv", "html"):
            return rep.table(fmt, PREARCHIVE_COLUMNS, [row_json(row)])
        if fmt == "zip":
            return self._zip(row, None)
        doc = self._doc(row)
        root_tag = {"xnat:mrSessionData": "xnat:MRSession", "xnat:ctSessionData": "xnat:CTSession",
                    "xnat:petSessionData": "xnat:PETSession"}.get(doc["xsiType"], "xnat:OtherDicomSession")
        root = rep.xml_element(root_tag, {"project": row["project"], "label": row["name"], "UID": doc["UID"]}, True)
        for key in ("date", "time", "modality"):
            if doc.get(key):
                rep.sub(root, f"xnat:{key}", doc[key])
        rep.sub(root, "xnat:subject_ID", row["subject"])
        scans = rep.sub(root, "xnat:scans")
        for s in doc["scans"]:
            sc = rep.sub(scans, "xnat:scan", None, {"ID": s["ID"], "type": s["type"], "UID": s["uid"],
                                                    "{http://www.w3.org/2001/XMLSchema-instance}type": s["xsiType"]})
            rep.sub(sc, "xnat:series_description", s["series_description"])
            rep.sub(sc, "xnat:frames", s["frames"])
            rep.sub(sc, "xnat:file", None, {"label": "DICOM", "format": "DICOM", "content": "RAW",
                                            "{http://www.w3.org/2001/XMLSchema-instance}type": "xnat:resourceCatalog"})
        return rep.xml_response(root)

    def _zip(self, row: dict, scan: str | None) -> Response:
        base = self.pre.session_dir(row)
        root = base / "SCANS" / scan if scan else base
        if not root.exists():
            raise XnatHttpError(404, "No files found for this prearchive session.")
        files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))

        def write(out: BinaryIO) -> None:
            with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
                for p in files:
                    zf.write(p, f"{row['folder']}/{p.relative_to(base).as_posix()}")

        return Response(stream=write, content_type="application/zip",
                        headers={"Content-Disposition": f'attachment; filename="{row["folder"]}.zip"'})

    def post_session(self, req: Request) -> Response:
        row = self._row(req)
        action = req.param("action")
        if action == "build":
            if is_locked(row["status"]):  # PrearcSessionResource.postActionBuild: setStatus(BUILDING) refused
                raise XnatHttpError(409, "session document locked")
            if row["held"]:
                self.store.run("UPDATE prearchive SET held=0 WHERE project=? AND timestamp=? AND folder=?",
                                   row["project"], row["timestamp"], row["folder"])
            self.pre.build(row)
            return rep.uri_list([f"/data/prearchive/projects/{row['project']}/{row['timestamp']}/{row['folder']}"])
        if action == "commit":
            built = self.pre.build(row)
            if self.pre.auto_archive(built):
                uri = self._archive_one(req, built)
                return Response(status=301, body=uri.encode(), headers={"Location": uri})
            return rep.uri_list([f"/data/prearchive/projects/{row['project']}/{row['timestamp']}/{row['folder']}"])
        if action == "move":
            self.pre.queue(row, "move", req.param("newProject"))
            return Response(body=b"")
        if action == "set-status":
            status = req.param("status")
            if not status:
                raise XnatHttpError(400, "A status is required.")
            self.pre.set_status(row, status)
            return Response(body=b"")
        if action == "reset-status":  # rewrites the row from its document, locked or not (resetStatus)
            if row["held"]:
                self.store.run("UPDATE prearchive SET held=0 WHERE project=? AND timestamp=? AND folder=?",
                                   row["project"], row["timestamp"], row["folder"])
            self.pre.build(row)
            return Response(body=b"")
        raise XnatHttpError(400, f"Unknown prearchive action: {action}")

    def delete_session(self, req: Request) -> Response:
        row = self._row(req)
        if row["status"].startswith(("QUEUED_", "_")) or row["status"] == "ARCHIVING":
            raise XnatHttpError(409, "Operation already in progress on this prearchive entry.")
        self.pre.delete(row)
        return Response(body=b"")

    # ---- session contents --------------------------------------------------------------------------
    def list_scans(self, req: Request) -> Response:
        doc = self._doc(self._row(req))
        rows = [{"ID": s["ID"], "xsiType": s["xsiType"], "series_description": s["series_description"]}
                for s in doc["scans"]]
        return rep.table(req.format("json"), ["ID", "xsiType", "series_description"], rows, title="Scans")

    def _scan(self, req: Request) -> tuple[dict, dict]:
        row = self._row(req)
        for s in self._doc(row)["scans"]:
            if s["ID"] == req.route_params["scan"]:
                return row, s
        raise XnatHttpError(404, f"Unable to find the specified scan: {req.route_params['scan']}")

    def get_scan(self, req: Request) -> Response:
        row, s = self._scan(req)
        if req.format("json") == "zip":
            return self._zip(row, s["ID"])
        return rep.table(req.format("json"), ["ID", "xsiType", "series_description"],
                         [{"ID": s["ID"], "xsiType": s["xsiType"], "series_description": s["series_description"]}])

    def list_resources(self, req: Request) -> Response:
        _row, s = self._scan(req)
        rows = [{"label": "DICOM", "file_count": len(s["files"]), "file_size": sum(f["size"] for f in s["files"])}]
        return rep.table(req.format("json"), ["label", "file_count", "file_size"], rows, title="Resources")

    def list_files(self, req: Request) -> Response:
        row, s = self._scan(req)
        if req.route_params["resource"] != "DICOM":
            raise XnatHttpError(404, f"Unable to find the specified resource: {req.route_params['resource']}")
        if req.format("json") == "zip":
            return self._zip(row, s["ID"])
        path = req.path
        rows = [{"Name": f["name"], "Size": f["size"], "URI": f"{path}/{f['name']}"} for f in s["files"]]
        return rep.table(req.format("json"), ["Name", "Size", "URI"], rows, title="Files")

    def get_log(self, req: Request) -> Response:
        """The session's log: XNAT's reason for a CONFLICT or ERROR status lives here, not in the listing."""
        row = self._row(req)
        return Response.text(row["message"] or "")

    def get_file(self, req: Request) -> Response:
        row, s = self._scan(req)
        name = req.route_params["name"]
        path = self.pre.session_dir(row) / "SCANS" / s["ID"] / "DICOM" / name
        if req.route_params["resource"] != "DICOM" or "/" in name or not path.is_file():
            raise XnatHttpError(404, "Unable to find file.")
        return Response(file=str(path), content_type="application/dicom")

    # ---- services ----------------------------------------------------------------------------------
    def _archive_one(self, req: Request, row: dict) -> str:
        dest = [p for p in (req.param("dest") or "").split("/") if p]
        if dest[:1] == ["data"]:
            dest = dest[1:]
        project = req.param("project") or (dest[2] if len(dest) >= 3 else None)
        subject = req.first("subject", "SUBJECT_ID") or (dest[4] if len(dest) >= 5 else None)
        label = req.first("session", "EXPT_LABEL", "label") or (dest[6] if len(dest) >= 7 else None)
        try:
            # Archiver passes unknown parameters on to the archiver (handleParam's default branch): quarantine
            # and triggerPipelines reach PrearcSessionArchiver.
            return self.pre.archive(row, req.param("overwrite"), req.user or "admin", project, subject, label,
                                    service="archive", quarantine=(req.param("quarantine") or "").lower() == "true")
        except ArchiveConflict as exc:
            status = self.settings.archive_conflict_status if exc.status == "CONFLICT" else 500
            raise XnatHttpError(status, f"FAILED: {exc.reason}" if status == 500 else exc.reason) from exc

    def archive_service(self, req: Request) -> Response:
        srcs = req.all("src")
        if not srcs:
            raise XnatHttpError(400, "The src parameter is required.")
        rows = [self.pre.from_src(s) for s in srcs]
        uris = [self._archive_one(req, r) for r in rows]
        redirect = req.flag("redirect") or (
            (req.param("auto-archive") or req.param("AA") or "").lower() != "false"
            and any(self.pre.auto_archive(r) for r in rows))
        if redirect and len(uris) == 1:
            return Response(status=303, body=uris[0].encode(), content_type="text/uri-list",
                            headers={"Location": uris[0]})
        return rep.uri_list(uris)

    def batch(self, req: Request) -> Response:
        op = req.route_params["op"]
        srcs = req.all("src")
        if not srcs:
            raise XnatHttpError(400, "The src parameter is required.")
        rows = [self.pre.from_src(s) for s in srcs]
        if op == "move":
            new_project = req.param("newProject")
            if not new_project or self.model.project(new_project) is None:
                raise XnatHttpError(404, f"Unable to find the destination project: {new_project}")
            for r in rows:
                if self.pre.row(new_project, r["timestamp"], r["folder"]):
                    raise XnatHttpError(409, "A session with that name already exists in the destination.")
        for r in rows:  # a locked row is left as it is, and listed unchanged (no error)
            self.pre.queue(r, op, req.param("newProject") if op == "move" else None)
        updated = [row_json(self.pre.require(r["project"], r["timestamp"], r["folder"])) for r in rows]
        return rep.table(req.format("xml"), PREARCHIVE_COLUMNS, updated)


def register(router: Router, services: Services) -> None:
    api = PrearchiveApi(services)
    router.add("GET", r"/data/prearchive(?:/projects(?:/(?P<projects>[^/]+))?)?", api.list_rows,
               xnat="PrearcSessionListResource")
    router.add(("GET", "POST", "DELETE"), SESSION, lambda r: {"POST": api.post_session,
                                                              "DELETE": api.delete_session}.get(r.method,
                                                                                                 api.get_session)(r),
               xnat="PrearcSessionResource")
    router.add("GET", SESSION + r"/logs(?:/last)?", api.get_log, xnat="PrearcSessionResource")
    router.add("GET", SESSION + r"/scans", api.list_scans, xnat="PrearcScansListResource")
    router.add("GET", SESSION + rf"/scans/(?P<scan>{SEG})", api.get_scan, xnat="PrearcScanResource")
    router.add("GET", SESSION + rf"/scans/(?P<scan>{SEG})/resources", api.list_resources,
               xnat="PrearcScanResourceList")
    router.add("GET", SESSION + rf"/scans/(?P<scan>{SEG})/resources/(?P<resource>{SEG})/files", api.list_files,
               xnat="PrearcSessionResourceFiles")
    router.add("GET", SESSION + rf"/scans/(?P<scan>{SEG})/resources/(?P<resource>{SEG})/files/(?P<name>.+)",
               api.get_file, xnat="PrearcSessionResourceFiles")
    router.add("POST", r"/data/services/archive", api.archive_service, xnat="Archiver")
    router.add("POST", r"/data/services/prearchive/(?P<op>move|rebuild|delete)", api.batch,
               xnat=("PrearchiveBatchMove", "PrearchiveBatchRebuild", "PrearchiveBatchDelete"))
