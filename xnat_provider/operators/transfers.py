"""Scans out, results in: ``XnatListScansOperator``, ``XnatDownloadScanOperator``, ``XnatUploadResourceOperator``.

Downloads and uploads take a local path or object storage (an ``ObjectStoragePath``, or a URL such as
``s3://bucket/prefix`` with ``storage_conn_id``): on a Celery deployment the tasks of a DAG run on machines that
share no disk, so the data must live where every worker reaches it. XComs stay small: strings, never paths.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import ObjectStoragePath

from ..client.errors import XnatBadInputError
from ..client.storage import as_target, is_storage
from ..client.uploads import POLICIES, upload_pairs
from .base import XnatBaseOperator, logs_out, renamed_argument, structured

MANIFEST_NAME = ".xnat-manifest.json"
LEVELS = ("project", "subject", "experiment", "scan", "assessor")
URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def storage_path(value: Any, conn_id: str | None = None, what: str = "path") -> Path | ObjectStoragePath:
    """A local path, or an ``ObjectStoragePath`` for a URL (``s3://bucket/prefix``, ``file:///data/x``; with
    ``conn_id``, the Airflow connection its file system uses) or for an ``ObjectStoragePath`` given as is.

    The client has no Airflow: this is where what a DAG gives becomes what the client takes, and where a scheme
    no installed provider serves, or a connection that does not exist, is refused (``XnatBadInputError``, not
    retried) before anything is sent or written.
    """
    conn_id = None if conn_id in (None, "", "None") else conn_id
    if isinstance(value, str) and URL.match(value):
        scheme = value.split("://", 1)[0]
        using = f" with connection {conn_id!r}" if conn_id else ""
        try:
            path = ObjectStoragePath(value, conn_id=conn_id)
            path.fs  # noqa: B018 - the file system is made here, so that a missing one fails now
        except Exception as exc:  # whatever the file system's factory raises means it cannot be used
            raise XnatBadInputError(
                f"{what} {value!r}: no file system for the scheme {scheme!r}{using} ({type(exc).__name__}: {exc}). "
                "Airflow serves file:// itself, other schemes through providers: "
                "s3:// with apache-airflow-providers-amazon, gs:// with apache-airflow-providers-google, abfs:// "
                "with apache-airflow-providers-microsoft-azure. Nothing was transferred.") from None
        return path
    if is_storage(value):
        as_target(value, what)  # the same check for a path given as an object
        return value  # type: ignore[no-any-return]
    return Path(os.fspath(value))


def write_text(folder: Path | ObjectStoragePath, name: str, text: str) -> str:
    """Write ``folder/name`` (local or object storage); returns where, as a string for an XCom.

    Through the path's ``.fs`` (the store Airflow attached for its connection), as every transfer does: some
    ``ObjectStoragePath`` methods delegated to universal-pathlib make a file system of their own without the
    connection's credentials when the path has no ``conn_id``."""
    target = as_target(folder)
    if isinstance(target, Path):
        target.mkdir(parents=True, exist_ok=True)
        (target / name).write_text(text)
        return str(target / name) if isinstance(folder, Path) else str(folder / name)
    with target.join(name).open_write() as fh:
        fh.write(text.encode())
    return str(target.join(name))


class XnatListScansOperator(XnatBaseOperator):
    """List an imaging session's (XNAT experiment's) scans, optionally only some; returns scan IDs.

    Made for dynamic task mapping: ``XnatDownloadScanOperator.partial(...).expand(scan=list_scans.output)``.

    :param project: the XNAT project.
    :param experiment: the experiment's label (required).
    :param session: deprecated name of ``experiment``.
    :param scans: scan IDs, scan types, a ``re:`` pattern on the type, or ``ALL`` (the default); a list, or its
        JSON text as a template renders it.
    """

    template_fields: Sequence[str] = ("project", "experiment", "scans", "xnat_conn_id")

    def __init__(self, *, project: str, experiment: str | None = None, scans: str | list[str] = "ALL",
                 session: str | None = None, **kwargs: Any) -> None:
        experiment = renamed_argument(self, "experiment", experiment, "session", session, required=True)
        super().__init__(**kwargs)
        self.project, self.experiment, self.scans = project, experiment, scans

    @logs_out
    def execute(self, context: Any) -> list[str]:
        self.push_experiment_link(context, self.project, self.experiment)
        chosen = self.hook.get_conn().select_scans(self.project, self.experiment, structured(self.scans))
        return [s.id for s in chosen]


class XnatDownloadScanOperator(XnatBaseOperator):
    """Download an experiment's scans' files (resource ``DICOM`` by default) into ``dest``/<scan id>/<resource>/...

    Each file is verified against the catalog (size and MD5), written under a temporary name and renamed
    only when it is right; a broken transfer resumes; files already there with the right MD5 are skipped, so
    a retry finishes what a failed try began. The full manifest is written to ``dest/.xnat-manifest.json``;
    the XCom is a summary (dest, project, experiment, scans, resource, files, bytes, transferred, skipped,
    manifest path), all strings and numbers; the experiment's label is also under ``session``, the key earlier
    versions wrote (kept for DAGs that read it).

    ``dest`` may be on object storage, so that the next task finds the files on another worker: an
    ``ObjectStoragePath``, or a URL (``s3://bucket/prefix``, ``gs://...``, ``file:///shared/x``). Files stream
    there, a chunk at a time, each verified while it streams into ``<name>.part`` and moved to its name only
    once right (see :mod:`xnat_provider.client.storage`).

    :param project: the XNAT project.
    :param experiment: the experiment's label (required).
    :param session: deprecated name of ``experiment``.
    :param dest: a local folder, an ``ObjectStoragePath`` or a URL naming one.
    :param scan: one scan ID or type (for ``.expand(scan=...)``), or
    :param scans: IDs, types, a ``re:`` pattern on the type, or ``ALL`` (the default when neither is given).
    :param resource: the scan resource to download (default ``DICOM``).
    :param workers: parallel file downloads (default: the connection's ``workers`` extra).
    :param storage_conn_id: the Airflow connection of a URL ``dest``'s file system (``aws_default`` for
        ``s3://``); None uses the file system's default credentials. Ignored for a local path.
    """

    template_fields: Sequence[str] = ("project", "experiment", "scan", "scans", "resource", "dest",
                                      "storage_conn_id", "xnat_conn_id")

    def __init__(self, *, project: str, experiment: str | None = None,
                 dest: str | os.PathLike[str] | ObjectStoragePath, scan: str | None = None,
                 scans: str | list[str] | None = None, resource: str = "DICOM", workers: int | None = None,
                 storage_conn_id: str | None = None, session: str | None = None, **kwargs: Any) -> None:
        experiment = renamed_argument(self, "experiment", experiment, "session", session, required=True)
        super().__init__(**kwargs)
        if scan is not None and scans is not None:
            raise XnatBadInputError("Give either scan or scans, not both.")
        self.project, self.experiment, self.dest = project, experiment, dest
        self.scan, self.scans, self.resource, self.workers = scan, scans, resource, workers
        self.storage_conn_id = storage_conn_id

    @logs_out
    def execute(self, context: Any) -> dict[str, Any]:
        selection: str | list[str] = [str(self.scan)] if self.scan is not None else (structured(self.scans) or "ALL")
        dest = storage_path(self.dest, self.storage_conn_id, "dest")
        self.push_experiment_link(context, self.project, self.experiment)
        manifest = self.hook.get_conn().download_scans(self.project, self.experiment, dest, scans=selection,
                                                       resource=self.resource, workers=self.workers)
        manifest_path = write_text(dest, MANIFEST_NAME if self.scan is None else f".xnat-manifest-{self.scan}.json",
                                   json.dumps(manifest.to_dict(), indent=1))
        self.log.info("%d files (%d bytes): %d transferred, %d already there", len(manifest.files), manifest.bytes,
                      manifest.transferred, manifest.skipped)
        return {"dest": str(dest), "project": self.project, "experiment": self.experiment,
                "session": self.experiment, "scans": selection,
                "resource": self.resource, "files": len(manifest.files), "bytes": manifest.bytes,
                "transferred": manifest.transferred, "skipped": manifest.skipped, "manifest": manifest_path}


class XnatUploadResourceOperator(XnatBaseOperator):
    """Upload a file or directory into a resource at project, subject, experiment, scan or assessor level.

    The level follows from the arguments given (``project`` always; ``subject``; ``experiment``; ``scan`` or
    ``assessor`` inside the experiment). The resource is created if missing. ``overwrite``:
    ``skip_identical`` (default; compares MD5), ``overwrite`` or ``fail``. ``extract=True`` sends a zip for
    XNAT to unpack at the resource root (XNAT ignores any folder in the URL, so ``remote_dir`` must then stay
    empty). After the upload the catalog is read back and every file's size and MD5 are checked.
    Returns a summary: resource, files, bytes, transferred, skipped and the files' paths.

    Refused before connecting (``XnatBadInputError``, not retried): ``extract=True`` with a ``remote_dir``, a
    source with any 0-byte file (XNAT answers an empty file body with a 500), a source that does not exist, a
    URL no installed file system serves, and the other bad inputs.

    ``source`` may be on object storage (written there by a task on another worker): each file's bytes stream
    from the file system as the request body, with its size known, and are verified as above.

    :param source: a local file or folder, an ``ObjectStoragePath`` or a URL naming one (``s3://bucket/x``).
    :param project: the XNAT project (alone: a project-level resource).
    :param resource: the resource label (created if missing).
    :param subject: the subject label (alone with ``project``: a subject-level resource).
    :param experiment: the experiment's label (an experiment-level resource, or the parent of ``scan`` or
        ``assessor``).
    :param session: deprecated name of ``experiment``.
    :param scan: a scan ID of ``experiment`` (a scan-level resource).
    :param assessor: an assessor of ``experiment`` (an assessor-level resource).
    :param remote_dir: a folder inside the resource to upload into (empty: its root).
    :param overwrite: ``skip_identical`` (default), ``overwrite`` or ``fail`` (see above).
    :param extract: send one zip for XNAT to unpack at the resource root.
    :param format: the resource's format (XNAT's ``format``), set when the resource is created.
    :param content: the resource's content (XNAT's ``content``), set when the resource is created.
    :param tags: the resource's tags (XNAT's ``tags``), set when the resource is created.
    :param storage_conn_id: the Airflow connection of a URL ``source``'s file system (``aws_default`` for
        ``s3://``); None uses the file system's default credentials. Ignored for a local path.
    """

    template_fields: Sequence[str] = ("source", "project", "subject", "experiment", "scan", "assessor", "resource",
                                      "remote_dir", "overwrite", "format", "content", "tags", "storage_conn_id",
                                      "xnat_conn_id")

    def __init__(self, *, source: str | os.PathLike[str] | ObjectStoragePath, project: str, resource: str,
                 subject: str | None = None, experiment: str | None = None, scan: str | None = None,
                 assessor: str | None = None, remote_dir: str = "", overwrite: str = "skip_identical",
                 extract: bool = False, format: str | None = None, content: str | None = None,
                 tags: str | None = None, storage_conn_id: str | None = None, session: str | None = None,
                 **kwargs: Any) -> None:
        experiment = renamed_argument(self, "experiment", experiment, "session", session)
        super().__init__(**kwargs)
        self.source, self.project, self.resource = source, project, resource
        self.storage_conn_id = storage_conn_id
        self.subject, self.experiment, self.scan, self.assessor = subject, experiment, scan, assessor
        self.remote_dir, self.overwrite, self.extract = remote_dir, overwrite, extract
        self.format, self.content, self.tags = format, content, tags

    def level(self) -> str:
        if (self.scan or self.assessor) and not self.experiment:
            raise XnatBadInputError("A scan or assessor resource needs its session (experiment=).")
        if self.scan and self.assessor:
            raise XnatBadInputError("Give a scan or an assessor, not both.")
        return ("scan" if self.scan else "assessor" if self.assessor else "experiment" if self.experiment
                else "subject" if self.subject else "project")

    @logs_out
    def execute(self, context: Any) -> dict[str, Any]:
        level = self.level()
        if not re.match(r"^[\w\-. ]+$", self.resource or ""):
            raise XnatBadInputError(f"Invalid resource label {self.resource!r}.")
        if self.overwrite not in POLICIES:
            raise XnatBadInputError(f"overwrite must be one of {POLICIES}, not {self.overwrite!r}")
        source = storage_path(self.source, self.storage_conn_id, "source")
        upload_pairs(source, self.remote_dir, self.extract)  # before any login or request
        if self.experiment:
            self.push_experiment_link(context, self.project, self.experiment)
        xnat = self.hook.get_conn()
        path = xnat.object_path(self.project, self.subject, self.experiment, self.scan, self.assessor)
        manifest = xnat.upload(
            source, path, self.resource, remote_dir=self.remote_dir, overwrite=self.overwrite,
            extract=self.extract, format=self.format, content=self.content, tags=self.tags)
        return {"level": level, "resource": self.resource, "path": path, "files": len(manifest.files),
                "bytes": manifest.bytes, "transferred": manifest.transferred, "skipped": manifest.skipped,
                "paths": [f["path"] for f in manifest.files][:100]}
