"""Archive REST resources: listings, object documents, create (PUT), delete, custom fields.

Addressing follows XNAT: under ``/data/projects/{P}/...`` subjects and experiments are found by ID or label;
``/data/subjects/{id}`` and ``/data/experiments/{id}`` take IDs only. Object GETs answer XNAT's item JSON
(``format=json``) or XFT XML (the default, as single objects offer only XML and HTML in XNAT).
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lxml import etree

from . import representations as rep
from .access import GUEST, guest_reads_data, guest_reads_project
from .http import Request, Response, Router, XnatHttpError
from .model import Model

if TYPE_CHECKING:
    from .registry import Services

SEG = r"[^/]+"
OWNER = (
    rf"/data(?:/projects/(?P<project>{SEG})(?:/subjects/(?P<subject>{SEG}))?|/subjects/(?P<subject_id>{SEG}))?"
    rf"(?:/experiments/(?P<experiment>{SEG})(?:/scans/(?P<scan>{SEG})|/assessors/(?P<assessor>{SEG}))?)?"
)
FIELD_RE = re.compile(r"^(?P<type>[\w:]+)/fields/field\[name=(?P<name>[^\]]+)\]/(?P<part>field|name)$", re.I)
ATTR_RE = re.compile(r"^(?P<type>[\w:]+)/(?P<attr>[\w]+)$")
# Abstract types every stored experiment extends (the ``xsiType`` filter of an experiment listing).
SUPERTYPES = {"xnat:experimentdata", "xnat:subjectassessordata"}
# XNAT's XMLPathShortcuts for experiment listings: a ``columns=`` xpath with a shortcut comes back under the
# shortcut's name (pyxnat reads ``subject_ID`` after asking for ``xnat:subjectAssessorData/subject_id``), and
# the same names and xpaths filter the listing as query parameters.
EXPERIMENT_SHORTCUTS = {"xnat:subjectassessordata/subject_id": "subject_ID", "xnat:subjectdata/label": "subject_label"}
EXPERIMENT_FILTERS = ("ID", "project", "subject_ID", "subject_label")

ROOT_ELEMENTS = {
    "xnat:projectData": "xnat:Project", "xnat:subjectData": "xnat:Subject",
    "xnat:mrSessionData": "xnat:MRSession", "xnat:ctSessionData": "xnat:CTSession",
    "xnat:petSessionData": "xnat:PETSession", "xnat:otherDicomSessionData": "xnat:OtherDicomSession",
    "xnat:mrScanData": "xnat:MRScan", "xnat:ctScanData": "xnat:CTScan", "xnat:petScanData": "xnat:PETScan",
    "xnat:otherDicomScanData": "xnat:OtherDicomScan", "xnat:qcAssessmentData": "xnat:QCAssessment",
    "xnat:imageAssessorData": "xnat:ImageAssessor",
}


@dataclass
class Target:
    """What an archive path points at, resolved against the store."""

    kind: str  # project, subject, experiment, scan, assessor
    project: dict | None = None
    subject: dict | None = None
    experiment: dict | None = None
    scan: dict | None = None
    assessor: dict | None = None

    @property
    def owner(self) -> tuple[str, str]:
        if self.kind == "scan":
            return "scan", f"{self.experiment['id']}/{self.scan['scan_id']}"  # type: ignore[index]
        row = getattr(self, self.kind)
        return self.kind, row["id"]

    @property
    def uri(self) -> str:
        if self.kind == "project":
            return f"/data/projects/{self.project['id']}"  # type: ignore[index]
        if self.kind == "subject":
            return f"/data/subjects/{self.subject['id']}"  # type: ignore[index]
        base = f"/data/experiments/{self.experiment['id']}"  # type: ignore[index]
        if self.kind == "scan":
            return f"{base}/scans/{self.scan['scan_id']}"  # type: ignore[index]
        if self.kind == "assessor":
            return f"{base}/assessors/{self.assessor['id']}"  # type: ignore[index]
        return base


def resolve(model: Model, p: dict[str, str]) -> Target:
    """Resolve route parameters (see ``OWNER``) to existing rows, or 404 with XNAT's wording."""
    project = model.require_project(p["project"]) if p.get("project") else None
    subject = None
    if p.get("subject"):
        subject = model.require_subject(project["id"], p["subject"])  # type: ignore[index]
    elif p.get("subject_id"):
        subject = model.require_subject(None, p["subject_id"])
        project = model.require_project(subject["project"])
    if not p.get("experiment"):
        if subject:
            return Target("subject", project, subject)
        if project:
            return Target("project", project)
        raise XnatHttpError(404, "Unable to find the specified resource.")
    exp = model.require_experiment(project["id"] if project else None, p["experiment"],
                                   subject["id"] if subject else None)
    project = project or model.require_project(exp["project"])
    subject = subject or model.require_subject(None, exp["subject_id"])
    if p.get("scan"):
        scan = model.scan(exp["id"], p["scan"])
        if scan is None:
            raise XnatHttpError(404, f"Unable to find the specified scan: {p['scan']}")
        return Target("scan", project, subject, exp, scan=scan)
    if p.get("assessor"):
        asr = model.assessor(exp["id"], p["assessor"])
        if asr is None:
            raise XnatHttpError(404, f"Unable to find the specified assessor: {p['assessor']}")
        return Target("assessor", project, subject, exp, assessor=asr)
    return Target("experiment", project, subject, exp)


class ArchiveApi:
    def __init__(self, services: Services):
        self.model: Model = services.model
        self.auth = services.auth

    # ---- listings ----------------------------------------------------------------------------------
    def _columns(self, req: Request, default: list[str]) -> list[str]:
        """``columns=`` replaces the defaults (duplicates dropped); XNAT's ``formatHeaders`` always adds ``URI``."""
        cols = req.param("columns")
        out = list(dict.fromkeys(c for c in cols.split(",") if c)) if cols else default
        return out if "URI" in out else [*out, "URI"]

    def _with_xpaths(self, row: dict, cols: list[str], owner: tuple[str, str]) -> dict:
        out = dict(row)
        wanted = [c for c in cols if c not in row]
        if wanted:
            fields = self.model.fields(*owner)
            for c in wanted:
                m = FIELD_RE.match(c)
                a = ATTR_RE.match(c)
                if m:
                    out[c] = fields.get(m["name"].lower(), "")
                elif a:
                    out[c] = row.get(a["attr"], row.get(a["attr"].lower(), ""))
        return out

    def list_projects(self, req: Request) -> Response:
        cols = self._columns(req, ["ID", "secondary_ID", "name", "description", "pi_firstname", "pi_lastname", "URI"])
        rows = []
        for p in self.model.store.all("SELECT * FROM projects ORDER BY id"):
            if req.user == GUEST and not guest_reads_project(self.model, p["id"]):
                continue  # ProjectListResource: only the projects the user may read
            row = {"ID": p["id"], "secondary_ID": p["secondary_id"], "name": p["name"],
                   "description": p["description"], "pi_firstname": p["pi_firstname"],
                   "pi_lastname": p["pi_lastname"], "URI": f"/data/projects/{p['id']}",
                   "insert_date": p["insert_date"], "insert_user": p["insert_user"]}
            rows.append(self._with_xpaths(row, cols, ("project", p["id"])))
        return rep.table(req.format("json"), cols, rows, title="Projects")

    def _subject_row(self, s: dict) -> dict:
        return {"ID": s["id"], "project": s["project"], "label": s["label"], "insert_date": s["insert_date"],
                "insert_user": s["insert_user"], "URI": f"/data/subjects/{s['id']}"}

    def list_subjects(self, req: Request) -> Response:
        cols = self._columns(req, ["ID", "project", "label", "insert_date", "insert_user", "URI"])
        if req.route_params.get("project"):
            proj = self.model.require_project(req.route_params["project"])
            subjects = self.model.store.all("SELECT * FROM subjects WHERE project=? ORDER BY id", proj["id"])
        else:
            subjects = self.model.store.all("SELECT * FROM subjects ORDER BY id")
        if req.user == GUEST:
            subjects = [s for s in subjects if guest_reads_data(self.model, s["project"])]
        rows = [self._with_xpaths(self._subject_row(s), cols, ("subject", s["id"])) for s in subjects]
        return rep.table(req.format("json"), cols, rows, title="Subjects")

    def _experiment_row(self, e: dict) -> dict:
        subj = self.model.subject(None, e["subject_id"]) or {}
        return {"ID": e["id"], "project": e["project"], "date": e["date"], "xsiType": e["xsi_type"],
                "label": e["label"], "insert_date": e["insert_date"], "URI": f"/data/experiments/{e['id']}",
                "subject_ID": e["subject_id"], "subject_label": subj.get("label", ""), "UID": e["uid"],
                "modality": e["modality"], "time": e["time"], "xnat:subjectassessordata/id": e["id"]}

    def list_experiments(self, req: Request) -> Response:
        p = req.route_params
        default = ["ID", "project", "date", "xsiType", "label", "insert_date", "URI"]
        sql, args = "SELECT * FROM experiments WHERE 1=1", []
        if p.get("project"):
            sql += " AND project=?"
            args.append(self.model.require_project(p["project"])["id"])
        if p.get("subject"):
            sql += " AND subject_id=?"
            args.append(self.model.require_subject(args[0], p["subject"])["id"])
        else:
            default = [*default, "subject_ID", "subject_label"]
        types = [t for t in (req.param("xsiType") or "").split(",") if t]
        if types and not SUPERTYPES.intersection(t.lower() for t in types):  # a supertype matches every experiment
            sql += f" AND lower(xsi_type) IN ({','.join('?' * len(types))})"
            args.extend(t.lower() for t in types)
        if req.param("label"):
            sql += " AND label=?"
            args.append(req.param("label"))
        cols = list(dict.fromkeys(EXPERIMENT_SHORTCUTS.get(c.lower(), c) for c in self._columns(req, default)))
        filters = {EXPERIMENT_SHORTCUTS.get(k.lower(), k): v for k, v in req.query}
        filters = {k: v for k, v in filters.items() if k in EXPERIMENT_FILTERS}
        rows = [self._with_xpaths(self._experiment_row(e), cols, ("experiment", e["id"]))
                for e in self.model.store.all(sql + " ORDER BY id", *args)]
        if req.user == GUEST:  # secured queries: the guest reads public projects' data only
            rows = [r for r in rows if guest_reads_data(self.model, r["project"])]
        rows = [r for r in rows if all(fnmatch.fnmatchcase(r[k].lower(), v.lower()) if "*" in v else r[k] == v
                                       for k, v in filters.items())]
        return rep.table(req.format("json"), cols, rows, title="Experiments")

    def _scan_row(self, exp: dict, s: dict) -> dict:
        return {"xnat_imagescandata_id": s["pk"], "ID": s["scan_id"], "type": s["type"], "quality": s["quality"],
                "xsiType": s["xsi_type"], "note": s["note"], "series_description": s["series_description"],
                "URI": f"/data/experiments/{exp['id']}/scans/{s['scan_id']}", "UID": s["uid"],
                "frames": s["frames"], "modality": s["modality"]}

    def list_scans(self, req: Request) -> Response:
        t = resolve(self.model, req.route_params)
        cols = self._columns(req, ["xnat_imagescandata_id", "ID", "type", "quality", "xsiType", "note",
                                   "series_description", "URI"])
        rows = [self._with_xpaths(self._scan_row(t.experiment, s), cols,  # type: ignore[arg-type]
                                  ("scan", f"{t.experiment['id']}/{s['scan_id']}"))  # type: ignore[index]
                for s in self.model.scans(t.experiment["id"])]  # type: ignore[index]
        return rep.table(req.format("json"), cols, rows, title="Scans")

    def list_assessors(self, req: Request) -> Response:
        t = resolve(self.model, req.route_params)
        cols = self._columns(req, ["ID", "project", "label", "xsiType", "insert_date", "URI"])
        rows = [{"ID": a["id"], "project": a["project"], "label": a["label"], "xsiType": a["xsi_type"],
                 "insert_date": a["insert_date"],
                 "URI": f"/data/experiments/{t.experiment['id']}/assessors/{a['id']}"}  # type: ignore[index]
                for a in self.model.store.all("SELECT * FROM assessors WHERE experiment_id=? ORDER BY id",
                                              t.experiment["id"])]  # type: ignore[index]
        return rep.table(req.format("json"), cols, rows, title="Assessors")

    # ---- object documents --------------------------------------------------------------------------
    def _resource_items(self, owner: tuple[str, str], base_uri: str) -> list[dict]:
        out = []
        for r in self.model.resources(*owner):
            files = self.model.files(r["id"])
            out.append(rep.item("xnat:resourceCatalog", {
                "xnat_abstractresource_id": r["id"], "label": r["label"], "format": r["format"],
                "content": r["content"], "description": r["description"], "tags": r["tags"],
                "file_count": len(files), "file_size": sum(f["size"] for f in files),
                "URI": f"{base_uri}/resources/{r['id']}",
            }))
        return out

    def _field_items(self, owner: tuple[str, str]) -> list[dict]:
        xsi = {"project": "xnat:projectData_field", "subject": "xnat:subjectData_field"}.get(
            owner[0], "xnat:experimentData_field")
        return [rep.item(xsi, {"name": k, "field": v}) for k, v in self.model.fields(*owner).items()]

    def _data_fields(self, t: Target) -> tuple[str, dict[str, Any]]:
        if t.kind == "project":
            p = t.project
            return "xnat:projectData", {"ID": p["id"], "secondary_ID": p["secondary_id"], "name": p["name"],  # type: ignore[index]
                                        "description": p["description"]}  # type: ignore[index]
        if t.kind == "subject":
            s = t.subject
            return "xnat:subjectData", {"ID": s["id"], "project": s["project"], "label": s["label"]}  # type: ignore[index]
        if t.kind == "experiment":
            e = t.experiment
            return e["xsi_type"], {"ID": e["id"], "project": e["project"], "label": e["label"],  # type: ignore[index]
                                   "subject_ID": e["subject_id"], "date": e["date"], "time": e["time"],  # type: ignore[index]
                                   "UID": e["uid"], "modality": e["modality"]}  # type: ignore[index]
        if t.kind == "scan":
            s = t.scan
            return s["xsi_type"], {"ID": s["scan_id"], "type": s["type"], "series_description": s["series_description"],  # type: ignore[index]
                                   "UID": s["uid"], "quality": s["quality"], "note": s["note"],  # type: ignore[index]
                                   "modality": s["modality"], "frames": s["frames"],  # type: ignore[index]
                                   "image_session_ID": t.experiment["id"]}  # type: ignore[index]
        a = t.assessor
        return a["xsi_type"], {"ID": a["id"], "project": a["project"], "label": a["label"],  # type: ignore[index]
                               "imageSession_ID": t.experiment["id"]}  # type: ignore[index]

    def _json_item(self, t: Target) -> dict:
        xsi, data = self._data_fields(t)
        children = []
        if t.kind == "experiment":
            scans = []
            for s in self.model.scans(t.experiment["id"]):  # type: ignore[index]
                st = Target("scan", t.project, t.subject, t.experiment, scan=s)
                sx, sd = self._data_fields(st)
                files = self._resource_items(st.owner, st.uri)
                scans.append(rep.item(sx, sd, [rep.child("file", files)] if files else []))
            if scans:
                children.append(rep.child("scans/scan", scans))
        resources = self._resource_items(t.owner, t.uri)
        if resources:
            children.append(rep.child("file" if t.kind == "scan" else "resources/resource", resources))
        if t.kind in ("project", "subject", "experiment"):
            fields = self._field_items(t.owner)
            if fields:
                children.append(rep.child("fields/field", fields))
        return rep.item(xsi, data, children)

    def _xml(self, t: Target) -> etree._Element:
        xsi, data = self._data_fields(t)
        attrs = {k: data.get(k) for k in ("ID", "project", "label", "type", "UID") if data.get(k) not in (None, "")}
        root = rep.xml_element(ROOT_ELEMENTS.get(xsi, "xnat:Project"), attrs, root=True)
        for key in ("name", "description", "date", "time", "modality", "series_description", "quality", "note",
                    "frames", "subject_ID"):
            if data.get(key) not in (None, ""):
                rep.sub(root, f"xnat:{key}", data[key])
        if t.kind in ("project", "subject", "experiment"):
            fields = self.model.fields(*t.owner)
            if fields:
                fel = rep.sub(root, "xnat:fields")
                for k, v in fields.items():
                    rep.sub(fel, "xnat:field", v, {"name": k})
        resources = self.model.resources(*t.owner)
        if resources:
            parent = root if t.kind == "scan" else rep.sub(root, "xnat:resources")
            for r in resources:
                rep.sub(parent, "xnat:file" if t.kind == "scan" else "xnat:resource", None, {
                    "label": r["label"], "format": r["format"] or "", "content": r["content"] or "",
                    "{http://www.w3.org/2001/XMLSchema-instance}type": "xnat:resourceCatalog"})
        if t.kind == "experiment":
            scans = self.model.scans(t.experiment["id"])  # type: ignore[index]
            if scans:
                sel = rep.sub(root, "xnat:scans")
                for s in scans:
                    sc = rep.sub(sel, "xnat:scan", None, {
                        "ID": s["scan_id"], "type": s["type"] or "",
                        "{http://www.w3.org/2001/XMLSchema-instance}type": s["xsi_type"]})
                    for key in ("series_description", "quality", "modality", "frames"):
                        if s[key]:
                            rep.sub(sc, f"xnat:{key}", s[key])
        return root

    def get_object(self, req: Request) -> Response:
        t = resolve(self.model, req.route_params)
        fmt = req.format("xml")
        if fmt == "json":
            return rep.items_response([self._json_item(t)])
        if fmt == "xml":
            return rep.xml_response(self._xml(t))
        if fmt == "html":
            body = etree.tostring(self._xml(t)).decode()
            return Response(body=f"<html><body><pre>{body}</pre></body></html>".encode(), content_type="text/html")
        raise XnatHttpError(406, f"Unsupported format for this resource: {fmt}")

    def get_status(self, req: Request) -> Response:
        """``.../experiments/{E}/status``: ``quarantine`` or ``active`` (``SecureResource.returnStatus``, which
        ``ExperimentResource`` and ``SubjAssessmentResource`` answer for the rest ``status``)."""
        t = resolve(self.model, req.route_params)
        if t.kind != "experiment":
            raise XnatHttpError(404, "Unable to find the specified experiment.")
        return Response.text(self.model.experiment_status(t.experiment["id"]))  # type: ignore[index]

    # ---- create, update, delete --------------------------------------------------------------------
    def _apply_params(self, req: Request, owner: tuple[str, str]) -> dict[str, str]:
        """Custom fields from ``T/fields/field[name=k]/field=v`` and plain attributes from ``T/attr=v``."""
        attrs: dict[str, str] = {}
        for key, value in req.query + req.form:
            m = FIELD_RE.match(key)
            if m:
                if m["part"].lower() == "field" or value == "NULL":
                    self.model.set_field(*owner, m["name"], None if value == "NULL" else value)
                continue
            a = ATTR_RE.match(key)
            if a:
                attrs[a["attr"]] = value
            elif key in ("date", "time", "UID", "modality", "type", "series_description", "quality", "note",
                         "label", "name", "description", "secondary_ID", "frames"):
                attrs[key] = value
        return attrs

    def put_object(self, req: Request) -> Response:
        p = req.route_params
        m, user = self.model, req.user or "admin"
        xsi = req.param("xsiType") or req.param("xsi:type")
        with m.store.tx():
            if not any(p.get(k) for k in ("subject", "subject_id", "experiment")):
                proj, created = m.create_project(p["project"], user, **{k: v for k, v in req.query})
                if not created and req.param("accessibility"):  # ProjectResource.handlePut sets it on updates too
                    m.set_accessibility(proj["id"], req.param("accessibility"))  # type: ignore[arg-type]
                attrs = self._apply_params(req, ("project", proj["id"]))
                return self._created(proj["id"], created)
            if not p.get("experiment"):
                if p.get("subject_id"):
                    subj, created = m.require_subject(None, p["subject_id"]), False
                else:
                    proj = m.require_project(p["project"])
                    subj, created = m.create_subject(proj["id"], p["subject"], user)
                self._apply_params(req, ("subject", subj["id"]))
                return self._created(subj["id"], created)
            if not p.get("scan") and not p.get("assessor"):
                return self._put_experiment(req, xsi, user)
            t = resolve(m, {k: v for k, v in p.items() if k not in ("scan", "assessor")})
            if p.get("scan"):
                existing = m.scan(t.experiment["id"], p["scan"])  # type: ignore[index]
                if existing is None and not xsi:
                    raise XnatHttpError(400, "An xsiType is required to create a scan.")
                attrs = self._apply_params(req, ("scan", f"{t.experiment['id']}/{p['scan']}"))  # type: ignore[index]
                scan, created = m.create_scan(t.experiment["id"], p["scan"], xsi or existing["xsi_type"], **{  # type: ignore[index]
                    k: attrs.get(k) for k in ("type", "series_description", "quality", "note", "modality", "frames")
                } | {"uid": attrs.get("UID")})
                return self._created(scan["scan_id"], created)
            existing = m.assessor(t.experiment["id"], p["assessor"])  # type: ignore[index]
            if existing is None and not xsi:
                raise XnatHttpError(400, "An xsiType is required to create an assessor.")
            asr, created = m.create_assessor(t.experiment, p["assessor"], xsi or existing["xsi_type"])  # type: ignore[arg-type,index]
            return self._created(asr["id"], created)

    def _put_experiment(self, req: Request, xsi: str | None, user: str) -> Response:
        p, m = req.route_params, self.model
        proj = m.require_project(p["project"]) if p.get("project") else None
        existing = m.experiment(proj["id"] if proj else None, p["experiment"])
        if existing:
            if p.get("subject"):
                subj = m.subject(existing["project"], p["subject"])
                if subj is None or subj["id"] != existing["subject_id"]:
                    raise XnatHttpError(409, "Experiment already exists under a different subject.")
            attrs = self._apply_params(req, ("experiment", existing["id"]))
            m.update_experiment(existing["id"], **attrs)
            return self._created(existing["id"], False)
        if proj is None:
            raise XnatHttpError(404, f"Unable to find the specified experiment: {p['experiment']}")
        if not p.get("subject"):
            raise XnatHttpError(422, "Experiments must be created within a subject.")
        if not xsi:
            raise XnatHttpError(400, "An xsiType is required to create an experiment.")
        subj, _ = m.create_subject(proj["id"], p["subject"], user)
        attrs = {k: v for k, v in ((a, req.param(f"{xsi}/{a}") or req.param(a)) for a in
                                   ("date", "time", "UID", "modality")) if v}
        exp, created = m.create_experiment(proj["id"], subj["id"], p["experiment"], xsi, user, **attrs)
        self._apply_params(req, ("experiment", exp["id"]))
        return self._created(exp["id"], created)

    def accessibility(self, req: Request) -> Response:
        """``ProjectAccessibilityResource``: the level as text; ``PUT .../accessibility/{level}`` sets it (the
        project's owner, its creator here, or a site administrator)."""
        level = req.route_params.get("level")
        if req.method == "PUT" and not level:
            raise XnatHttpError(400, "You must specify the ACCESS_ID parameter for this PUT call")
        proj = self.model.project(req.route_params["project"])
        if proj is None:
            raise XnatHttpError(404, f"Could not find the project with ID '{req.route_params['project']}'")
        if req.method == "PUT":
            if proj["insert_user"] != req.user and not self.auth.is_admin(req.user):
                raise XnatHttpError(403, "Forbidden")
            self.model.set_accessibility(proj["id"], level)  # type: ignore[arg-type]
        return Response.text(self.model.store.one("SELECT accessibility FROM projects WHERE id=?",
                                                  proj["id"])["accessibility"])  # type: ignore[index]

    @staticmethod
    def _created(ident: str, created: bool) -> Response:
        return Response(status=201 if created else 200, body=ident.encode(), content_type="text/plain")

    def delete_object(self, req: Request) -> Response:
        t = resolve(self.model, req.route_params)
        m = self.model
        if t.kind == "project":
            if not m.store.one("SELECT admin FROM users WHERE login=? AND admin=1", req.user):
                raise XnatHttpError(403, "Only administrators can delete projects.")
            m.delete_project(t.project)  # type: ignore[arg-type]
        elif t.kind == "subject":
            m.delete_subject(t.subject)  # type: ignore[arg-type]
        elif t.kind == "experiment":
            m.delete_experiment(t.experiment)  # type: ignore[arg-type]
        elif t.kind == "scan":
            with m.store.tx():
                m.delete_owner(*t.owner)
                m.store.run("DELETE FROM scans WHERE pk=?", t.scan["pk"])  # type: ignore[index]
        else:
            with m.store.tx():
                m.delete_owner(*t.owner)
                m.store.run("DELETE FROM assessors WHERE id=?", t.assessor["id"])  # type: ignore[index]
        return Response(body=b"", content_type="text/plain")


def register(router: Router, services: Services) -> None:
    api = ArchiveApi(services)
    exp_list = rf"/data(?:/projects/(?P<project>{SEG})(?:/subjects/(?P<subject>{SEG}))?)?/experiments"
    router.add("GET", r"/data/projects", api.list_projects, xnat="ProjectListResource")
    router.add(("GET", "PUT"), rf"/data/projects/(?P<project>{SEG})/accessibility(?:/(?P<level>{SEG}))?",
               api.accessibility, xnat="ProjectAccessibilityResource")
    router.add("GET", rf"/data(?:/projects/(?P<project>{SEG}))?/subjects", api.list_subjects,
               xnat=("ProjectSubjectList", "SubjectListResource"))
    router.add("GET", exp_list, api.list_experiments, xnat=("ProjSubExptList", "ExperimentListResource"))
    router.add("GET", OWNER + r"/scans", api.list_scans, xnat="ScanList")
    router.add("GET", OWNER + r"/assessors", api.list_assessors, xnat="ProjSubExptAsstList")
    router.add("GET", OWNER + r"/status", api.get_status, xnat=("ExperimentResource", "SubjAssessmentResource"))
    router.add(("GET", "PUT", "DELETE"), OWNER, lambda r: {
        "GET": api.get_object, "HEAD": api.get_object, "PUT": api.put_object, "DELETE": api.delete_object,
    }[r.method](r), xnat=("ProjectResource", "SubjectResource", "ExperimentResource", "SubjAssessmentResource",
                          "ScanResource", "ExptAssessmentResource"))
