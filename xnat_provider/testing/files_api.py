"""Resources and files: catalogs, listings with MD5 digests, single-file GET with Range, uploads, zips.

What matters to clients and is reproduced here:
- file listings carry ``Size`` and the MD5 ``digest``; single files carry Content-Length;
- a single-range request is answered 206 when ``range_requests`` is on (XNAT's Restlet 1.1.10 does so through
  its default ``RangeFilter``; several ranges get its 501); off by default, so that clients are tested against
  the harder case of a server that ignores Range;
- an upload of an existing file without ``overwrite=true`` answers **200** with ``{"duplicates": [...]}``
  and leaves the file alone (not 409), which clients must not mistake for success;
- an empty in-body upload answers XNAT's **500** "In-body File posts must include the file ..." and creates
  nothing; ``extract=true`` unpacks an archive (chosen by its name, as XNAT's ``Format`` does) at the
  **resource root**, whatever folder the URL names, reading a zip as ``java.util.zip.ZipInputStream`` does;
- zip downloads are streamed with no Content-Length in XNAT's folder layout.
"""

from __future__ import annotations

import fnmatch
import gzip
import json
import math
import mimetypes
import os
import re
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, BinaryIO

from . import representations as rep
from .archive_api import OWNER, SEG, Target, resolve
from .http import Request, Response, Router, XnatHttpError
from .model import Model, md5_file, safe_relpath
from .uploads import is_multipart, receive_multipart, spool
from .zip_input import ZipInputError, read_zip

if TYPE_CHECKING:
    from .registry import Services

FILE_COLUMNS = ["Name", "Size", "URI", "collection", "file_tags", "file_format", "file_content", "cat_ID", "digest"]
RES_COLUMNS = ["xnat_abstractresource_id", "label", "element_name", "category", "cat_id", "cat_desc",
               "file_count", "file_size", "tags", "content", "format"]
# What XNAT's FileExtractor unpacks with extract=true, chosen by the uploaded file's name (case-sensitive), in the
# order of org.nrg.xft.utils.fileExtraction.Format: .tar/.xar, .tgz/.tar.gz, .zip/.zar, and .gz (one file, gunzipped).
ARCHIVE_FORMATS = (("tar", re.compile(r".*\.[tx]ar")), ("tgz", re.compile(r".*\.t(ar\.)?gz")),
                   ("zip", re.compile(r".*\.z(ip|ar)")), ("gz", re.compile(r"(?!.*\.tar\.gz$).*\.gz")))
# The Content-Types XNAT takes as an in-body file (RequestUtil.supported_upload_types).
IN_BODY_TYPES = frozenset({
    "text/*", "application/*", "text/plain", "text/xml", "text/csv", "application/dicom", "application/zip",
    "application/xar", "application/x-gtar", "application/x-gzip", "application/octet-stream", "application/pdf",
    "application/vnd.ms-excel", "application/vnd.ms-powerpoint", "application/x-tar", "application/msword",
    "image/*", "image/bmp", "image/gif", "image/x-icon", "image/jpeg", "image/png", "image/svg+xml", "image/tiff",
    "video/*", "video/x-msvideo", "video/mp4", "video/mpeg", "video/quicktime", "video/x-ms-wmv"})
# SecureResource.getFileWritersAndLoadParams throws this FileUploadException for an in-body upload of size < 1
# (0, or -1 when unknown: chunked) that is not application/zip; FileList.handlePost answers it with a 500.
EMPTY_IN_BODY = ("In-body File posts must include the file directly as the body of the message. In this case, the "
                 "request entity size is {size} but the media type is not application/zip (i.e. streaming "
                 "compressed upload).")


def archive_format(name: str) -> str | None:
    """How XNAT's FileExtractor unpacks a file of this name (``Format.getFormat``), or None: stored as is."""
    return next((fmt for fmt, rx in ARCHIVE_FORMATS if rx.fullmatch(name)), None)


def format_size(size: int) -> str:
    """``CatalogUtils.formatSize``."""
    if size < 1024:
        return f"{size} B"
    exp = int(math.log(size) / math.log(1024))
    return f"{size / 1024 ** exp:.1f} {'KMGTPE'[exp - 1]}B"


def parse_range(header: str | None, size: int) -> tuple[int, int] | bool | None:
    """(start, end) for one satisfiable byte range; None for no/ignored range; False if unsatisfiable."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    spec = header[6:].strip()
    m = re.fullmatch(r"(\d*)-(\d*)", spec)
    if not m or (not m[1] and not m[2]):
        return None
    if not m[1]:
        n = int(m[2])
        return (max(size - n, 0), size - 1) if n and size else False
    start = int(m[1])
    end = min(int(m[2]), size - 1) if m[2] else size - 1
    if start >= size or end < start:
        return False
    return start, end


class FilesApi:
    def __init__(self, services: Services):
        self.model: Model = services.model
        self.settings = services.settings

    # ---- resolution --------------------------------------------------------------------------------
    def _targets(self, params: dict[str, str]) -> list[Target]:
        """Resolve an owner path; the scan segment may be a selector (ID, type, list, ALL)."""
        sel = params.get("scan")
        if sel is None:
            return [resolve(self.model, params)]
        base = resolve(self.model, {k: v for k, v in params.items() if k != "scan"})
        scans = self.model.select_scans(base.experiment["id"], sel)  # type: ignore[index]
        if not scans:
            raise XnatHttpError(404, f"Unable to find the specified scan: {sel}")
        return [Target("scan", base.project, base.subject, base.experiment, scan=s) for s in scans]

    def _resources(self, targets: list[Target], key: str | None) -> list[tuple[Target, dict]]:
        out = []
        for t in targets:
            for r in self.model.resources(*t.owner):
                if key in (None, "ALL", "*") or key in (r["label"], str(r["id"])) or r["label"] in key.split(","):
                    out.append((t, r))
        return out

    def _one_resource(self, req: Request, create: bool = False) -> tuple[Target, dict]:
        targets = self._targets(req.route_params)
        if len(targets) != 1:
            raise XnatHttpError(400, "Uploads need exactly one scan.")
        t, key = targets[0], req.route_params["resource"]
        res = self.model.resource(*t.owner, key)
        if res is None:
            if not create:
                raise XnatHttpError(404, f"Unable to find the specified resource: {key}")
            res, _ = self.model.create_resource(*t.owner, key, format=req.param("format"),
                                                content=req.param("content"), tags=req.param("tags"))
        return t, res

    @staticmethod
    def _file_uri(t: Target, res: dict, rel: str) -> str:
        return f"{t.uri}/resources/{res['id']}/files/{rel}"

    # ---- resources ---------------------------------------------------------------------------------
    def list_resources(self, req: Request) -> Response:
        rows = []
        for _t, r in self._resources(self._targets(req.route_params), None):
            files = self.model.files(r["id"])
            rows.append({"xnat_abstractresource_id": r["id"], "label": r["label"],
                         "element_name": "xnat:resourceCatalog", "category": "resources", "cat_id": "",
                         "cat_desc": r["description"], "file_count": len(files),
                         "file_size": sum(f["size"] for f in files), "tags": r["tags"], "content": r["content"],
                         "format": r["format"]})
        return rep.table(req.format("json"), RES_COLUMNS, rows, title="Resources")

    def get_resource(self, req: Request) -> Response:
        _t, res = self._one_resource(req)
        cat = rep.xml_element("cat:Catalog", {"ID": res["label"]}, root=True)
        entries = rep.sub(cat, "cat:entries")
        for f in self.model.files(res["id"]):
            rep.sub(entries, "cat:entry", None, {"URI": f["path"], "ID": f["path"], "name": PurePosixPath(
                f["path"]).name, "digest": f["md5"], "size": f["size"], "format": f["format"] or "",
                "content": f["content"] or "",
                "{http://www.w3.org/2001/XMLSchema-instance}type": "cat:entry"})
        return rep.xml_response(cat)

    def put_resource(self, req: Request) -> Response:
        t = self._targets(req.route_params)[0]
        label = req.route_params["resource"]
        if self.model.resource(*t.owner, label):
            raise XnatHttpError(409, "Specified resource already exists.")
        self.model.create_resource(*t.owner, label, format=req.param("format"), content=req.param("content"),
                                   description=req.param("description"), tags=req.param("tags"))
        return Response(body=b"")

    def delete_resource(self, req: Request) -> Response:
        _t, res = self._one_resource(req)
        self.model.delete_resource(res)
        return Response(body=b"")

    # ---- listing and download ----------------------------------------------------------------------
    def list_files(self, req: Request) -> Response:
        fmt = req.format("json")
        if fmt in ("zip", "tar", "tar.gz"):
            return self.zip_download(req, fmt)
        rows = []
        pattern = req.route_params.get("path")
        for t, r in self._resources(self._targets(req.route_params), req.route_params.get("resource")):
            for f in self.model.files(r["id"]):
                if pattern and not self._path_matches(f["path"], pattern, req.trailing_slash):
                    continue
                rows.append({"Name": PurePosixPath(f["path"]).name, "Size": f["size"],
                             "URI": self._file_uri(t, r, f["path"]), "collection": r["label"],
                             "file_tags": f["tags"], "file_format": f["format"], "file_content": f["content"],
                             "cat_ID": r["id"], "digest": f["md5"]})
        if not rows and req.route_params.get("resource") not in (None, "ALL", "*") and pattern:
            raise XnatHttpError(404, "Unable to find file.")
        return rep.table(fmt, FILE_COLUMNS, rows, title="Files", total=False, column_meta=True)

    @staticmethod
    def _path_matches(path: str, pattern: str, folder: bool) -> bool:
        if folder:
            return path.startswith(pattern.rstrip("/") + "/")
        return fnmatch.fnmatchcase(path, pattern) if "*" in pattern else path == pattern

    def get_file(self, req: Request) -> Response:
        rel = req.route_params["path"]
        if req.trailing_slash or "*" in rel or req.format("") in ("json", "xml", "csv", "html", "zip"):
            return self.list_files(req)
        _t, res = self._one_resource(req)
        row = self.model.store.one("SELECT * FROM files WHERE resource_id=? AND path=?", res["id"], rel)
        if row is None:
            raise XnatHttpError(404, "Unable to find file.")
        path = self.model.file_path(res, rel)
        ctype = mimetypes.guess_type(rel)[0] or ("application/dicom" if rel.lower().endswith(".dcm")
                                                  else "application/octet-stream")
        resp = Response(file=str(path), content_type=ctype, headers={"Cache-Control": "must-revalidate"})
        size = path.stat().st_size
        if self.settings.range_requests:
            resp.headers["Accept-Ranges"] = "bytes"
            if "," in (req.headers.get("Range") or ""):  # Restlet's RangeFilter: "Multiple ranges are not supported"
                return Response.error(501, "Not Implemented")
            rng = parse_range(req.headers.get("Range"), size)
            if rng is False:
                return Response(status=416, body=b"", headers={"Content-Range": f"bytes */{size}"})
            if rng:
                resp.status, resp.file_range = 206, rng
                resp.headers["Content-Range"] = f"bytes {rng[0]}-{rng[1]}/{size}"
        return resp

    def zip_download(self, req: Request, fmt: str) -> Response:
        params = req.route_params
        targets = self._targets(params)
        selected = self._resources(targets, params.get("resource"))
        ff, fc = req.param("file_format"), req.param("file_content")
        entries: list[tuple[str, Path]] = []
        for t, r in selected:
            for f in self.model.files(r["id"]):
                if ff is not None and (f["format"] or "NULL") != ff:
                    continue
                if fc is not None and (f["content"] or "NULL") != fc:
                    continue
                entries.append((self._zip_name(t, r, f["path"], req.param("structure")),
                                self.model.file_path(r, f["path"])))
        if not entries:
            if req.flag("accept-not-found"):
                return Response(status=204, body=b"")
            raise XnatHttpError(404, "No matching files found.")
        top = targets[0].experiment["label"] if targets[0].experiment else (  # type: ignore[index]
            targets[0].subject or targets[0].project)["label" if targets[0].subject else "id"]  # type: ignore[index]
        level = int(req.param("compression") or 6)

        def write(out: BinaryIO) -> None:
            if fmt == "zip":
                method = zipfile.ZIP_STORED if level == 0 else zipfile.ZIP_DEFLATED
                with zipfile.ZipFile(out, "w", compression=method, compresslevel=level or None,
                                     allowZip64=True) as zf:
                    for name, path in entries:
                        zf.write(path, name)
            else:
                with tarfile.open(fileobj=out, mode="w|gz" if fmt == "tar.gz" else "w|") as tf:
                    for name, path in entries:
                        tf.add(path, name)

        ext = {"zip": "zip", "tar": "tar", "tar.gz": "tar.gz"}[fmt]
        ctype = {"zip": "application/zip", "tar": "application/x-tar", "tar.gz": "application/x-gzip"}[fmt]
        return Response(stream=write, content_type=ctype,
                        headers={"Content-Disposition": f'attachment; filename="{top}.{ext}"'})

    @staticmethod
    def _zip_name(t: Target, res: dict, rel: str, structure: str | None) -> str:
        label = res["label"]
        if t.kind == "scan":
            s = t.scan
            stype = re.sub(r"\W", "_", s["type"] or "")  # type: ignore[index]
            folder = f"{s['scan_id']}-{stype}" if stype else s["scan_id"]  # type: ignore[index]
            if structure == "improved":
                return f"scans/{s['scan_id']}_{stype}/{label}/{rel}"  # type: ignore[index]
            prefix = f"{t.experiment['label']}/scans/{folder}"  # type: ignore[index]
        elif t.kind in ("experiment", "assessor"):
            prefix = t.experiment["label"]  # type: ignore[index]
            if t.kind == "assessor":
                prefix += f"/assessors/{t.assessor['label']}"  # type: ignore[index]
        elif t.kind == "subject":
            prefix = t.subject["label"]  # type: ignore[index]
        else:
            prefix = t.project["id"]  # type: ignore[index]
        if structure == "simplified":
            return f"{prefix}/{label}/{rel}"
        return f"{prefix}/resources/{label}/files/{rel}"

    # ---- upload ------------------------------------------------------------------------------------
    def upload(self, req: Request) -> Response:
        self._targets(req.route_params)  # 404 for a missing owner first, as FileList's init does
        if not is_multipart(req):
            self._check_in_body(req)  # before the resource is created: XNAT creates it only for a stored file
        _t, res = self._one_resource(req, create=True)
        rel = req.route_params.get("path") or ""
        overwrite, extract = req.flag("overwrite"), req.flag("extract")
        meta = {"format": req.param("format"), "content": req.param("content"), "tags": req.param("tags")}
        staging = self.model.store.path("tmp/uploads")
        staging.mkdir(parents=True, exist_ok=True)
        if is_multipart(req):
            fields, received = receive_multipart(req, staging)
            req.form.extend(fields)
            overwrite, extract = req.flag("overwrite"), req.flag("extract")
            if not received:
                raise XnatHttpError(400, "No file was found in the multipart request.")
            uploads = []
            for f in received:
                target = rel if (rel and len(received) == 1) else "/".join(p for p in (rel, f.filename) if p)
                uploads.append((target, f.path, f.size, f.md5, f.filename))
        else:
            if not rel:
                raise XnatHttpError(400, "A file name is required: PUT .../files/{name}.")
            tmp = staging / f".raw-{os.urandom(6).hex()}.part"
            size, md5 = spool(req, tmp)
            uploads = [(rel, tmp, size, md5, rel)]
        duplicates: list[str] = []
        try:
            for target, tmp, size, md5, name in uploads:
                # XNAT picks the extractor by the writer's file name (the URL's last segment, or the multipart
                # file name) and unpacks at the resource root: the folder in the URL is not used
                # (CatalogUtils.storeCatalogEntry extracts into the catalog's own folder).
                base = PurePosixPath(name.replace("\\", "/")).name
                fmt = archive_format(base) if extract else None
                if fmt:
                    duplicates += self._extract(res, tmp, fmt, base, overwrite, meta)
                    continue
                target = safe_relpath(target)
                final_tmp = self.model.temp_path(res, target)
                os.replace(tmp, final_tmp)
                if self.model.commit_file(res, target, final_tmp, size, md5, overwrite, **meta) == "duplicate":
                    duplicates.append(target)
        finally:
            for _, tmp, _, _, _ in uploads:
                Path(tmp).unlink(missing_ok=True)
        if duplicates:
            return Response(body=json.dumps({"duplicates": duplicates}).encode(), content_type="text/html")
        return Response(body=b"")

    @staticmethod
    def _check_in_body(req: Request) -> None:
        """Refuse an empty raw upload as XNAT does (``SecureResource.getFileWritersAndLoadParams``, then
        ``FileList.handlePost``): an in-body file (a Content-Type XNAT takes as one, or ``inbody=true``) of size
        < 1 (0, or -1 when unknown, as for a chunked body) that is not application/zip is a 500; a body XNAT does
        not take as a file gives no file at all, a 400."""
        length = req.headers.get("Content-Length")
        chunked = "chunked" in (req.headers.get("Transfer-Encoding") or "").lower()
        size = int(length) if length is not None and length.isdigit() and not chunked else -1
        if size >= 1 or req.content_type == "application/zip":
            return
        if req.flag("inbody") or req.content_type in IN_BODY_TYPES:
            raise XnatHttpError(500, EMPTY_IN_BODY.format(size=size))
        if size == 0:
            raise XnatHttpError(400, f"You tried to {req.method} to this service, but didn't provide any data (found "
                                     "request entity size of 0). Please check the format of your service request.")
        raise XnatHttpError(400, f"You tried to {req.method} a payload of {format_size(size)} to this service, but "
                                 "didn't provide any data. If you think you sent data to upload, you can try to "
                                 f"{req.method} with the query-string parameter inbody=true or use multipart/form-data "
                                 "encoding.")

    def _extract(self, res: dict, archive: Path, fmt: str, name: str, overwrite: bool, meta: dict) -> list[str]:
        """Unpack an upload as XNAT's FileExtractor does, into the resource root: a zip read forward with
        ``ZipInputStream``'s rules, a tar (gzipped for ``tgz``), or one gzipped file. Entries are staged first and
        catalogued only when the whole archive was read (XNAT catalogues nothing when extraction fails: a 500).
        Stricter than XNAT: absolute paths, ``..`` and tar links are refused (XNAT would write them)."""
        staged: list[tuple[str, Path]] = []

        def stage(entry: str, src: BinaryIO) -> None:
            try:
                rel = safe_relpath(entry)
            except XnatHttpError:
                raise XnatHttpError(400, f"Refusing unsafe archive entry: {entry}") from None
            tmp = self.model.temp_path(res, rel)
            staged.append((rel, tmp))
            with open(tmp, "wb") as out:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    out.write(chunk)

        try:
            with open(archive, "rb") as raw:
                if fmt == "zip":
                    for header, stream in read_zip(raw):
                        if not header.is_dir:
                            stage(header.name, stream)  # type: ignore[arg-type]
                elif fmt == "gz":
                    with gzip.open(raw) as src:
                        stage(name[: -len(".gz")], src)  # type: ignore[arg-type]
                else:
                    with tarfile.open(fileobj=raw, mode="r|gz" if fmt == "tgz" else "r|") as tf:
                        for member in tf:
                            if member.isdir():
                                continue
                            if not member.isfile():
                                raise XnatHttpError(400, f"Refusing unsafe archive entry: {member.name}")
                            src = tf.extractfile(member)
                            if src is not None:
                                stage(member.name, src)
        except BaseException as exc:
            for _, tmp in staged:
                tmp.unlink(missing_ok=True)
            if isinstance(exc, (ZipInputError, tarfile.TarError, OSError, EOFError, zlib.error)):
                raise XnatHttpError(500, str(exc) or type(exc).__name__) from exc
            raise
        duplicates = []
        for rel, tmp in staged:
            size, md5 = md5_file(tmp)
            if self.model.commit_file(res, rel, tmp, size, md5, overwrite, **meta) == "duplicate":
                duplicates.append(rel)
        return duplicates

    def delete_file(self, req: Request) -> Response:
        _t, res = self._one_resource(req)
        if not self.model.delete_file(res, req.route_params["path"]):
            raise XnatHttpError(404, "No matched files")
        return Response(body=b"")

    # ---- catalog refresh ---------------------------------------------------------------------------
    def refresh_catalog(self, req: Request) -> Response:
        src = req.param("resource") or ""
        m = re.fullmatch(OWNER + rf"/resources/(?P<resource>{SEG})", "/data" + re.sub(r"^(/data)?(/archive)?", "",
                                                                                          src))
        if not m:
            raise XnatHttpError(400, f"Invalid resource path: {src}")
        params = {k: v for k, v in m.groupdict().items() if v}
        t = resolve(self.model, {k: v for k, v in params.items() if k != "resource"})
        res = self.model.resource(*t.owner, params["resource"])
        if res is None:
            raise XnatHttpError(404, f"Unable to find the specified resource: {params['resource']}")
        options = set((req.param("options") or "").split(",")) | {
            o for o in ("checksum", "delete", "append", "populateStats") if req.flag(o)}
        root = self.model.store.path(res["root"])
        known = {f["path"] for f in self.model.files(res["id"])}
        with self.model.store.tx():
            if "delete" in options:
                for rel in known:
                    if not (root / rel).exists():
                        self.model.store.run("DELETE FROM files WHERE resource_id=? AND path=?", res["id"], rel)
            if "append" in options and root.exists():
                for p in root.rglob("*"):
                    rel = p.relative_to(root).as_posix()
                    if p.is_file() and rel not in known and not p.name.startswith("."):
                        size, md5 = md5_file(p)
                        self.model.store.run("INSERT INTO files(resource_id, path, size, md5) VALUES(?,?,?,?)",
                                             res["id"], rel, size, md5)
            if "checksum" in options:
                for f in self.model.files(res["id"]):
                    size, md5 = md5_file(root / f["path"])
                    self.model.store.run("UPDATE files SET size=?, md5=? WHERE resource_id=? AND path=?",
                                         size, md5, res["id"], f["path"])
        return Response(body=b"")


def register(router: Router, services: Services) -> None:
    api = FilesApi(services)
    res = rf"{OWNER}/resources/(?P<resource>{SEG})"
    router.add("GET", OWNER + r"/resources", api.list_resources, xnat="CatalogResourceList")
    router.add(("GET", "PUT", "DELETE"), res, lambda r: {"PUT": api.put_resource, "DELETE": api.delete_resource}
               .get(r.method, api.get_resource)(r), xnat="CatalogResource")
    router.add(("GET", "PUT", "POST"), res + r"/files", lambda r: api.upload(r) if r.method != "GET"
               and r.method != "HEAD" else api.list_files(r), xnat="FileList")
    router.add(("GET", "PUT", "POST", "DELETE"), res + r"/files/(?P<path>.+)", lambda r: {
        "PUT": api.upload, "POST": api.upload, "DELETE": api.delete_file}.get(r.method, api.get_file)(r),
        xnat="FileList")
    router.add("GET", OWNER + r"/files", lambda r: api.list_files(r), xnat="FileList")
    router.add(("GET", "POST"), r"/data/services/refresh/catalog", api.refresh_catalog, xnat="RefreshCatalog")
