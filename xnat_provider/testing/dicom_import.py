"""The import service, ``POST /data/services/import``, with XNAT's DICOM-zip and gradual-DICOM handlers.

Each file is read with pydicom and routed as XNAT does: request parameters first (``PROJECT_ID``,
``SUBJECT_ID``, ``EXPT_LABEL``, their lower-case DICOM-zip aliases, or ``dest``), then ``Project:``,
``Subject:`` and ``Session:`` in the comment fields, then Study Description or Accession Number (project),
Patient Name (subject) and Patient ID (session). Files are grouped into prearchive sessions by study and into
scans by series number. A file that is not DICOM stops the import with 400 unless ``Ignore-Unparsable=true``;
what was received before it stays in the prearchive, as on a real server.

A zip is read as XNAT reads it, forward with ``java.util.zip.ZipInputStream``'s rules (:mod:`.zip_input`), not
through its central directory: where Java would throw (a STORED entry with a data descriptor, a bad CRC, a
truncated upload...), XNAT's ``DicomZipImporter`` answers 400 "unable to read data from file", and so does the
emulator, keeping the entries received before the failure as for a file that is not DICOM.
"""

from __future__ import annotations

import os
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import pydicom
from pydicom.errors import InvalidDicomError

from . import representations as rep
from .http import Request, Response, Router, XnatHttpError
from .prearchive import ArchiveConflict
from .uploads import cleanup, is_multipart, receive_multipart, spool
from .zip_input import ZipEntryStream, ZipInputError, read_zip

if TYPE_CHECKING:
    from .registry import Services

COMMENT_TAGS = ("PatientComments", "StudyComments", "AdditionalPatientHistory")
KV_RE = re.compile(r"(project|subject|session|aa)\s*:\s*([\w\-]*)", re.IGNORECASE)
CT_NAMES = {
    "application/zip": "upload.zip", "application/x-zip-compressed": "upload.zip",
    "application/x-tar": "upload.tar", "application/x-gtar": "upload.tar.gz", "application/x-gzip": "upload.tar.gz",
    "application/gzip": "upload.tar.gz", "application/octet-stream": "upload", "application/dicom": "upload.dcm",
}
# DicomZipImporter wraps any IOException of its ZipInputStream in ClientException("unable to read data from
# file"), which the import service answers with 400 and this text.
UNREADABLE_ZIP = "unable to read data from file"
# DicomZipImporter.xmlBuild (l.258) wraps any failure to build or archive a session in ClientException with this
# text, without the reason, which the import service answers with 400 (Importer.respondToException).
ARCHIVE_FAILED = "unable to archive for the Prearchive session"


def sanitise(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-]", "_", value.strip()).strip("_")


def comment_values(ds: Any) -> dict[str, str]:
    found: dict[str, str] = {}
    for tag in COMMENT_TAGS:
        for key, value in KV_RE.findall(str(ds.get(tag, "") or "")):
            found.setdefault(key.lower(), value)
    return found


class Importer:
    def __init__(self, services: Services):
        self.store, self.model = services.store, services.model
        self.pre = services.prearchive

    # ---- routing -----------------------------------------------------------------------------------
    def route(self, ds: Any, params: dict[str, str | None]) -> tuple[str, str, str]:
        comments = comment_values(ds)
        model = self.model
        project = None
        for candidate in (params.get("project"), comments.get("project"), str(ds.get("StudyDescription", "") or ""),
                          str(ds.get("AccessionNumber", "") or "")):
            if candidate and model.project(candidate.strip()):
                project = model.project(candidate.strip())["id"]  # type: ignore[index]
                break
        subject = params.get("subject") or comments.get("subject") or sanitise(str(ds.get("PatientName", "") or ""))
        session = params.get("session") or comments.get("session") or sanitise(str(ds.get("PatientID", "") or ""))
        return project or "Unassigned", subject, session or "dicom_upload"

    def _params(self, req: Request) -> dict[str, str | None]:
        dest = req.param("dest") or ""
        parts = [p for p in dest.split("/") if p]
        if parts[:1] == ["data"]:
            parts = parts[1:]
        # gradual-DICOM (also a raw application/dicom body without a handler) reads only the upper-case names.
        handler = req.param("import-handler") or ("gradual-DICOM" if req.content_type == "application/dicom" else "")
        lower = handler != "gradual-DICOM"
        p: dict[str, str | None] = {
            key: req.first(upper, *([key] if lower else []))
            for key, upper in (("project", "PROJECT_ID"), ("subject", "SUBJECT_ID"), ("session", "EXPT_LABEL"))
        }
        if parts[:2] in (["archive", "projects"], ["prearchive", "projects"]) and len(parts) >= 3:
            p["project"] = p["project"] or parts[2]
            if parts[0] == "archive":
                if len(parts) >= 5 and parts[3] == "subjects":
                    p["subject"] = p["subject"] or parts[4]
                if len(parts) >= 7 and parts[5] == "experiments":
                    p["session"] = p["session"] or parts[6]
        if p["project"] and self.model.project(p["project"]) is None:
            p["project"] = None  # XNAT silently ignores an unknown project and routes by the headers
        return p

    # ---- entries -----------------------------------------------------------------------------------
    @staticmethod
    def entries(archive: Path, name: str) -> Iterator[tuple[str, IO[bytes] | ZipEntryStream]]:
        """The upload's files in order. A zip raises :class:`ZipInputError` (from this generator or from an
        entry's ``read``) where XNAT's ZipInputStream would throw; a body that is no zip at all has no entries."""
        lower = name.lower()
        if lower.endswith(".zip"):
            with open(archive, "rb") as raw:
                for entry, fh in read_zip(raw):
                    if not entry.is_dir:
                        yield entry.name, fh
        elif lower.endswith((".tar", ".tar.gz", ".tgz")):
            try:
                with tarfile.open(archive, "r:*") as tf:
                    for member in tf:
                        if member.isfile():
                            fh = tf.extractfile(member)
                            if fh is not None:
                                yield member.name, fh
            except tarfile.TarError as exc:
                raise XnatHttpError(400, f"Unable to read the uploaded tar file: {exc}") from exc
        elif lower.endswith(".dcm"):
            with open(archive, "rb") as fh:
                yield name, fh
        else:
            raise XnatHttpError(400, f"Unsupported format for {name!r}: send a zip or tar (Content-Type "
                                     "application/zip or application/x-tar).")

    # ---- the service -------------------------------------------------------------------------------
    def handle(self, req: Request) -> Response:
        handler = req.param("import-handler") or "DICOM-zip"
        if handler not in ("DICOM-zip", "SI", "gradual-DICOM"):
            if handler in ("XAR", "inbox"):
                raise XnatHttpError(400, f"The {handler} import handler is not supported by the emulator.")
            raise XnatHttpError(404, f"Unknown import handler: {handler}")
        staging = self.store.path("tmp/imports")
        staging.mkdir(parents=True, exist_ok=True)
        if is_multipart(req):
            if req.flag("inbody"):
                raise XnatHttpError(406, "A multipart request cannot also send inbody=true.")
            fields, files = receive_multipart(req, staging)
            req.form.extend(fields)
            if len(files) != 1:
                cleanup(files)
                raise XnatHttpError(400, "Importer is limited to one uploaded resource at a time."
                                    if files else "No file was found in the multipart request.")
            upload, name = files[0].path, files[0].filename
        else:
            if req.body.exhausted:
                if req.param("src"):
                    raise XnatHttpError(400, "Importing from the user cache (src=) is not supported by the emulator.")
                raise XnatHttpError(400, "The request body was empty: try inbody=true or use multipart/form-data.")
            ctype = req.content_type
            if ctype not in CT_NAMES and not req.flag("inbody"):
                raise XnatHttpError(415, f"Unsupported Content-Type for an import: {ctype or 'none'}.")
            name = CT_NAMES.get(ctype, "upload")
            if handler == "gradual-DICOM" and name == "upload":
                name = "upload.dcm"
            upload = staging / f".import-{os.urandom(6).hex()}.part"
            try:
                spool(req, upload, digest=False, keep_partial=True)  # the import never uses the upload's MD5
            except XnatHttpError:
                self._import_cut_body(req, upload, name)
                raise
        try:
            return self._import(req, upload, name)
        finally:
            upload.unlink(missing_ok=True)

    def _import_cut_body(self, req: Request, upload: Path, name: str) -> None:
        """A body that broke off (the client died, the link dropped): XNAT reads the upload as it arrives
        (``ZipInputStream`` over the request), so every entry received whole before the break is in the
        prearchive, RECEIVING; the entry being read is lost. No answer reaches the client."""
        try:
            self._import(req, upload, name)
        except XnatHttpError:
            pass
        finally:
            upload.unlink(missing_ok=True)

    def _import(self, req: Request, upload: Path, name: str) -> Response:
        params = self._params(req)
        ignore = req.flag("Ignore-Unparsable")
        tmp_dir = self.store.path("tmp/imports")
        touched: dict[tuple[str, str, str], dict] = {}
        overrides = {k: req.param(k) for k in ("SOURCE", "VISIT", "PROTOCOL", "TIMEZONE", "prevent_anon",
                                                "prevent_auto_commit")}
        failure: XnatHttpError | None = None
        try:
            for entry_name, fh in self.entries(upload, name):
                tmp = self._receive(fh, tmp_dir)
                ds = self._read(tmp)
                if ds is None or not ds.get("SOPInstanceUID") or not ds.get("SOPClassUID"):
                    tmp.unlink(missing_ok=True)
                    if ds is None and ignore:
                        continue
                    what = "is not a DICOM file" if ds is None else "has no SOPClassUID or SOPInstanceUID"
                    failure = XnatHttpError(400, f"Unable to import {entry_name}: the entry {what}.")
                    break
                project, subject, session = self.route(ds, params)
                study = str(ds.get("StudyInstanceUID", "") or "")
                key = (project, study, session)
                row = touched.get(key) or self.pre.receiving_row(project, study, session)
                if row is None:
                    row = self.pre.new_row(project, study, session, subject, overrides)
                touched[key] = row
                scan_dir = self._scan_dir(ds)
                target = self.pre.session_dir(row) / "SCANS" / scan_dir / "DICOM" / f"{ds.SOPInstanceUID}.dcm"
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, target)
                self.pre.touch(row)
        except ZipInputError as exc:  # the entry being read is lost, the ones before it stay
            failure = XnatHttpError(400, UNREADABLE_ZIP)
            failure.__cause__ = exc
        if failure:
            # DicomZipImporter.call throws before xmlBuild: what arrived stays RECEIVING, unbuilt, whatever the
            # dest, for the clock to build after the idle time (and archive, if the project auto-archives).
            raise failure
        uris = self._finish(req, list(touched.values()), params)
        if not touched:
            raise XnatHttpError(400, "The upload contained no DICOM files.")
        return rep.uri_list(uris, req.param("format"))

    def _finish(self, req: Request, rows: list[dict], params: dict[str, str | None]) -> list[str]:
        """With ``dest`` the sessions are built now, one after the other (``DicomZipImporter.xmlBuild``), and
        archived for an ``/archive`` dest only: ``determiningDestination`` sets ``AA`` and ``auto-archive`` from
        the dest (overriding the request's), and a ``/prearchive`` dest leaves the session READY even in an
        auto-archive project (``xmlBuild`` never calls the rebuild handler's ``execute``, which alone queues the
        auto-archive).

        The archive takes the import service's merge rules and ``overwrite_files``, nothing else:
        ``populateAdditionalValues`` drops ``quarantine`` and ``triggerPipelines``. A session that fails to build
        or archive stops the loop: XNAT answers 400 with its fixed text (the reason goes to the row's log, the
        row to CONFLICT or ERROR), the sessions before it are archived, those after it stay RECEIVING, unbuilt,
        for the clock to build (and auto-archive, if the project does) as XNAT's rebuilder would."""
        dest = (req.param("dest") or "").replace("/data/", "/", 1)
        uris = []
        for row in rows:
            row = self.pre.require(row["project"], row["timestamp"], row["folder"])
            if dest:
                row = self.pre.build(row)
                if dest.startswith("/archive") and row["status"] == "READY":
                    try:
                        uris.append(self.pre.archive(row, req.param("overwrite"), req.user or "admin",
                                                     project=params["project"], subject=params["subject"],
                                                     label=params["session"], service="import",
                                                     overwrite_files=req.flag("overwrite_files")))
                    except (ArchiveConflict, XnatHttpError) as exc:  # the row stays: CONFLICT or ERROR
                        raise XnatHttpError(400, ARCHIVE_FAILED) from exc
                    continue
            uris.append(f"/data/prearchive/projects/{row['project']}/{row['timestamp']}/{row['folder']}")
        return uris

    @staticmethod
    def _receive(fh: IO[bytes] | ZipEntryStream, tmp_dir: Path) -> Path:
        """One entry streamed to a temporary file (removed again when reading the entry fails)."""
        tmp = tmp_dir / f".entry-{os.urandom(6).hex()}.part"
        try:
            with open(tmp, "wb") as out:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    out.write(chunk)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    @staticmethod
    def _read(path: Path) -> Any:
        try:
            return pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            try:  # DICOM without the 128-byte preamble is still DICOM to XNAT's parser
                ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            except Exception:
                return None
            return ds if ds.get("SOPInstanceUID") and ds.get("StudyInstanceUID") else None
        except Exception:
            return None

    @staticmethod
    def _scan_dir(ds: Any) -> str:
        number = str(ds.get("SeriesNumber", "") or "").strip()
        if number and re.fullmatch(r"[\w\-.]+", number):
            return number
        uid = re.sub(r"[^\w\-.]", "_", str(ds.get("SeriesInstanceUID", "") or ""))
        return uid or "NA"


def register(router: Router, services: Services) -> None:
    router.add("POST", r"/data/services/import", Importer(services).handle, xnat="Importer")
