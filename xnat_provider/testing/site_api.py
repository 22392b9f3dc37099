"""Site-level resources that clients touch at connect time, and the DICOM dump service.

- ``/xapi/schemas`` and ``/xapi/schemas/{name}``: the emulator's own compact XSDs (in ``schemas/``), enough
  for xnatpy to generate its full object model;
- ``/data/search/elements``: the searchable data types, which xnatpy reads at connect (an empty table is a
  valid answer and keeps xnatpy from injecting search fields over real attributes);
- ``GET /data/services/dicomdump?src=...``: a session's, scan's or file's DICOM header as a table.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom
from pydicom.datadict import tag_for_keyword

from . import representations as rep
from .archive_api import resolve
from .http import Request, Response, Router, XnatHttpError

if TYPE_CHECKING:
    from .registry import Services

SCHEMA_DIR = Path(__file__).with_name("schemas")


def _schema_names() -> list[str]:
    return sorted(p.stem for p in SCHEMA_DIR.glob("*.xsd"))


def dump_rows(path: Path, wanted: list[str]) -> list[dict[str, str]]:
    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    tags = []
    for w in wanted:
        try:
            tags.append(int(w, 16) if len(w) == 8 and all(c in "0123456789abcdefABCDEF" for c in w)
                        else tag_for_keyword(w))
        except (TypeError, ValueError):
            continue
    rows: list[dict[str, str]] = []

    def add(elem: Any, parent: Any = None) -> None:
        tag = f"({elem.tag.group:04X},{elem.tag.element:04X})"
        if elem.VR == "SQ":
            for item in elem.value:
                for child in item:
                    add(child, tag)
            return
        value = html.escape(str(elem.value))[:255]
        rows.append({"tag1": parent or tag, "tag2": tag if parent else "", "vr": elem.VR, "value": value,
                     "desc": elem.name})

    for elem in ds:
        if tags and elem.tag not in tags:
            continue
        add(elem)
    return rows


def register(router: Router, services: Services) -> None:
    def schema_list(req: Request) -> Response:
        return Response(body=json.dumps(_schema_names()).encode(), content_type="application/json")

    def schema(req: Request) -> Response:
        name = req.route_params["name"].removesuffix(".xsd")
        path = SCHEMA_DIR / f"{name}.xsd"
        if name not in _schema_names():
            raise XnatHttpError(404, f"No schema named {name}.")
        return Response(body=path.read_bytes(), content_type="text/xml")

    def search_elements(req: Request) -> Response:
        return rep.table(req.format("json"), ["ELEMENT_NAME", "COUNT"], [], title="Elements")

    def search_element(req: Request) -> Response:
        return rep.table(req.format("json"), ["FIELD_ID", "HEADER", "TYPE"], [], title="Fields")

    def dicomdump(req: Request) -> Response:
        src = req.param("src")
        if not src:
            raise XnatHttpError(400, "Please set the src parameter")
        path = _dump_source(services, src)
        rows = dump_rows(path, req.all("field"))
        if not rows:
            raise XnatHttpError(404, "No matching DICOM attributes.")
        return rep.table(req.format("json"), ["tag1", "tag2", "vr", "value", "desc"], rows)

    router.add("GET", r"/xapi/schemas", schema_list)
    router.add("GET", r"/xapi/schemas/(?P<name>[\w./-]+)", schema)
    router.add("GET", r"/data/search/elements", search_elements, xnat="SearchElementListResource")
    router.add("GET", r"/data/search/elements/(?P<element>[^/]+)", search_element,
               xnat="SearchFieldListResource")
    router.add("GET", r"/data/services/dicomdump", dicomdump, xnat="DicomDump")


def _dump_source(services: Services, src: str) -> Path:
    """The first DICOM file under an /archive/... or /prearchive/... path (no /data prefix, as XNAT wants)."""
    parts = [p for p in src.split("/") if p]
    if parts[:1] == ["prearchive"] and len(parts) >= 5 and parts[1] == "projects":
        row = services.prearchive.row(parts[2], parts[3], parts[4])
        if row is None:
            raise XnatHttpError(404, "Unknown prearchive session.")
        base = services.prearchive.session_dir(row) / "SCANS"
        if len(parts) >= 7 and parts[5] == "scans":
            base = base / parts[6]
        files = sorted(p for p in base.rglob("*.dcm")) if base.exists() else []
        if not files:
            raise XnatHttpError(404, "No DICOM files found.")
        return files[0]
    if parts[:1] != ["archive"]:
        raise XnatHttpError(400, "src must start with /archive/ or /prearchive/.")
    keys = {"projects": "project", "subjects": "subject", "experiments": "experiment", "scans": "scan"}
    params: dict[str, str] = {}
    i = 1
    while i + 1 < len(parts) and parts[i] in keys:
        params[keys[parts[i]]] = parts[i + 1]
        i += 2
    target = resolve(services.model, params)
    file_name = parts[i + 3] if len(parts) >= i + 4 and parts[i] == "resources" and parts[i + 2] == "files" else None
    owners = [target.owner] if target.kind == "scan" else [
        ("scan", f"{target.experiment['id']}/{s['scan_id']}")  # type: ignore[index]
        for s in services.model.scans(target.experiment["id"])]  # type: ignore[index]
    for owner in owners:
        for res in services.model.resources(*owner):
            for f in services.model.files(res["id"]):
                if file_name is None or f["path"] == file_name:
                    return services.model.file_path(res, f["path"])
    raise XnatHttpError(404, "No DICOM files found.")
