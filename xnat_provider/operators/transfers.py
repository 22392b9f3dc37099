"""Scans out, results in: ``XnatListScansOperator``, ``XnatDownloadScanOperator``, ``XnatUploadResourceOperator``."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..client.errors import XnatBadInputError
from ..client.uploads import POLICIES, upload_pairs
from .base import XnatBaseOperator, structured

MANIFEST_NAME = ".xnat-manifest.json"
LEVELS = ("project", "subject", "experiment", "scan", "assessor")


class XnatListScansOperator(XnatBaseOperator):
    """List a session's scans, optionally only some types (IDs, types or ``re:`` pattern); returns scan IDs.

    Made for dynamic task mapping: ``XnatDownloadScanOperator.partial(...).expand(scan=list_scans.output)``.
    """

    template_fields: Sequence[str] = ("project", "session", "scans", "xnat_conn_id")

    def __init__(self, *, project: str, session: str, scans: str | list[str] = "ALL", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.project, self.session, self.scans = project, session, scans

    def execute(self, context: Any) -> list[str]:
        self.push_session_link(context, self.project, self.session)
        chosen = self.hook.get_conn().select_scans(self.project, self.session, structured(self.scans))
        return [s.id for s in chosen]


class XnatDownloadScanOperator(XnatBaseOperator):
    """Download scans' files (resource ``DICOM`` by default) into ``dest``/<scan id>/<resource>/...

    Each file is verified against the catalog (size and MD5), written under a temporary name and renamed
    only when it is right; a broken transfer resumes; files already there with the right MD5 are skipped, so
    a retry finishes what a failed try began. The full manifest is written to ``dest/.xnat-manifest.json``;
    the XCom is a summary (dest, scans, files, bytes, transferred, skipped, manifest path).

    :param scan: one scan ID or type (for ``.expand(scan=...)``), or
    :param scans: IDs, types, a ``re:`` pattern on the type, or ``ALL``.
    """

    template_fields: Sequence[str] = ("project", "session", "scan", "scans", "resource", "dest", "xnat_conn_id")

    def __init__(self, *, project: str, session: str, dest: str | os.PathLike[str], scan: str | None = None,
                 scans: str | list[str] | None = None, resource: str = "DICOM", workers: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if scan is not None and scans is not None:
            raise XnatBadInputError("Give either scan or scans, not both.")
        self.project, self.session, self.dest = project, session, dest
        self.scan, self.scans, self.resource, self.workers = scan, scans, resource, workers

    def execute(self, context: Any) -> dict[str, Any]:
        selection: str | list[str] = [str(self.scan)] if self.scan is not None else (structured(self.scans) or "ALL")
        dest = Path(os.fspath(self.dest))
        self.push_session_link(context, self.project, self.session)
        manifest = self.hook.get_conn().download_scans(self.project, self.session, dest, scans=selection,
                                                       resource=self.resource, workers=self.workers)
        dest.mkdir(parents=True, exist_ok=True)
        manifest_path = dest / (MANIFEST_NAME if self.scan is None else f".xnat-manifest-{self.scan}.json")
        manifest_path.write_text(json.dumps(manifest.to_dict(), indent=1))
        self.log.info("%d files (%d bytes): %d transferred, %d already there", len(manifest.files), manifest.bytes,
                      manifest.transferred, manifest.skipped)
        return {"dest": str(dest), "project": self.project, "session": self.session, "scans": selection,
                "resource": self.resource, "files": len(manifest.files), "bytes": manifest.bytes,
                "transferred": manifest.transferred, "skipped": manifest.skipped, "manifest": str(manifest_path)}


class XnatUploadResourceOperator(XnatBaseOperator):
    """Upload a file or directory into a resource at project, subject, experiment, scan or assessor level.

    The level follows from the arguments given (``project`` always; ``subject``; ``session`` for the
    experiment; ``scan`` or ``assessor`` inside it). The resource is created if missing. ``overwrite``:
    ``skip_identical`` (default; compares MD5), ``overwrite`` or ``fail``. ``extract=True`` sends a zip for
    XNAT to unpack at the resource root (XNAT ignores any folder in the URL, so ``remote_dir`` must then stay
    empty). After the upload the catalog is read back and every file's size and MD5 are checked.
    Returns a summary: resource, files, bytes, transferred, skipped and the files' paths.

    Refused before connecting (``XnatBadInputError``, not retried): ``extract=True`` with a ``remote_dir``, a
    source with any 0-byte file (XNAT answers an empty file body with a 500), and the other bad inputs.
    """

    template_fields: Sequence[str] = ("source", "project", "subject", "session", "scan", "assessor", "resource",
                                      "remote_dir", "overwrite", "format", "content", "tags", "xnat_conn_id")

    def __init__(self, *, source: str | os.PathLike[str], project: str, resource: str, subject: str | None = None,
                 session: str | None = None, scan: str | None = None, assessor: str | None = None,
                 remote_dir: str = "", overwrite: str = "skip_identical", extract: bool = False,
                 format: str | None = None, content: str | None = None, tags: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.source, self.project, self.resource = source, project, resource
        self.subject, self.session, self.scan, self.assessor = subject, session, scan, assessor
        self.remote_dir, self.overwrite, self.extract = remote_dir, overwrite, extract
        self.format, self.content, self.tags = format, content, tags

    def level(self) -> str:
        if (self.scan or self.assessor) and not self.session:
            raise XnatBadInputError("A scan or assessor resource needs its session.")
        if self.scan and self.assessor:
            raise XnatBadInputError("Give a scan or an assessor, not both.")
        return ("scan" if self.scan else "assessor" if self.assessor else "experiment" if self.session
                else "subject" if self.subject else "project")

    def execute(self, context: Any) -> dict[str, Any]:
        level = self.level()
        if not re.match(r"^[\w\-. ]+$", self.resource or ""):
            raise XnatBadInputError(f"Invalid resource label {self.resource!r}.")
        if self.overwrite not in POLICIES:
            raise XnatBadInputError(f"overwrite must be one of {POLICIES}, not {self.overwrite!r}")
        upload_pairs(os.fspath(self.source), self.remote_dir, self.extract)  # before any login or request
        if self.session:
            self.push_session_link(context, self.project, self.session)
        xnat = self.hook.get_conn()
        path = xnat.object_path(self.project, self.subject, self.session, self.scan, self.assessor)
        manifest = xnat.upload(
            os.fspath(self.source), path, self.resource, remote_dir=self.remote_dir, overwrite=self.overwrite,
            extract=self.extract, format=self.format, content=self.content, tags=self.tags)
        return {"level": level, "resource": self.resource, "path": path, "files": len(manifest.files),
                "bytes": manifest.bytes, "transferred": manifest.transferred, "skipped": manifest.skipped,
                "paths": [f["path"] for f in manifest.files][:100]}
