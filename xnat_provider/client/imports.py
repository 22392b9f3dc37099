"""Importing DICOM: a zip, a tar, one file or a whole directory, streamed, checked first, never duplicated.

Before any byte is sent, every file's header is read with pydicom (stopping before the pixel data): a file
that is not DICOM is a :class:`XnatBadInputError` naming it (unless ``ignore_unparsable``), and the study UIDs
and the subject and session labels XNAT will derive are known. Directories, single files and tars are
zipped on the fly into the request body: no temporary copy, no whole file in memory.

The import is a POST that may take effect even when its answer is lost. After an ambiguous failure the
client looks for what this attempt created (prearchive rows of its studies that were not there before, or
new archive sessions) and resends only the studies that did not arrive.
"""

from __future__ import annotations

import logging
import os
import re
import tarfile
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pydicom
import requests

from .errors import XnatBadInputError, XnatConflictError, XnatError, XnatServerError
from .models import SessionRef
from .protocol import base_path, check_label, is_conflict_message, session_refs
from .session import XnatSession

log = logging.getLogger("xnat_provider.client")
CHUNK = 1 << 20
COMMENT_TAGS = ("PatientComments", "StudyComments", "AdditionalPatientHistory")
KV_RE = re.compile(r"(subject|session)\s*:\s*([\w\-]*)", re.IGNORECASE)

Opener = Callable[[], IO[bytes]]


@dataclass
class Entry:
    name: str
    open: Opener
    size: int
    study_uid: str


@dataclass
class ImportPlan:
    """What an import will send: entries by study, and the labels XNAT will give each study."""

    entries: list[Entry] = field(default_factory=list)
    labels: dict[str, tuple[str, str]] = field(default_factory=dict)  # study UID -> (subject, session)
    skipped: list[str] = field(default_factory=list)

    @property
    def studies(self) -> list[str]:
        return list(dict.fromkeys(e.study_uid for e in self.entries))


def _sanitise(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-]", "_", value.strip()).strip("_")


def _route(ds: Any, subject: str | None, session: str | None) -> tuple[str, str]:
    """The subject and session labels XNAT derives (request parameters, comments, then patient tags)."""
    found: dict[str, str] = {}
    for tag in COMMENT_TAGS:
        for key, value in KV_RE.findall(str(ds.get(tag, "") or "")):
            found.setdefault(key.lower(), value)
    subj = subject or found.get("subject") or _sanitise(str(ds.get("PatientName", "") or ""))
    sess = session or found.get("session") or _sanitise(str(ds.get("PatientID", "") or "")) or "dicom_upload"
    return subj, sess


def _header(fh: IO[bytes]) -> Any:
    """The header, or None when the file is not DICOM (any parse failure, never an exception)."""
    try:
        ds = pydicom.dcmread(fh, stop_before_pixels=True)
        ds.get("SOPInstanceUID"), ds.get("SOPClassUID"), ds.get("StudyInstanceUID")  # values parse lazily
        return ds
    except pydicom.errors.InvalidDicomError:
        pass  # no preamble: XNAT still reads it if it parses as a data set with its UIDs
    except Exception:
        return None
    try:
        fh.seek(0)
        with warnings.catch_warnings():  # pydicom warns about whatever it finds in a file that is not DICOM
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(fh, stop_before_pixels=True, force=True)
            return ds if ds.get("SOPInstanceUID") and ds.get("StudyInstanceUID") else None
    except Exception:
        return None


def plan_import(
    source: str | os.PathLike[str],
    *,
    subject: str | None = None,
    session: str | None = None,
    ignore_unparsable: bool = False,
) -> ImportPlan:
    """Read every header of a zip, tar, DICOM file or directory and plan the import; raise on bad input."""
    src = Path(source)
    if not src.exists():
        raise XnatBadInputError(f"Nothing to import: {src} does not exist.")
    plan = ImportPlan()
    bad: list[str] = []

    def add(name: str, opener: Opener, size: int) -> None:
        with opener() as fh:
            ds = _header(fh)
        if ds is None or not ds.get("SOPInstanceUID") or not ds.get("SOPClassUID"):
            (plan.skipped if ignore_unparsable and ds is None else bad).append(name)
            return
        uid = str(ds.get("StudyInstanceUID", ""))
        plan.labels.setdefault(uid, _route(ds, subject, session))
        plan.entries.append(Entry(name, opener, size, uid))

    if src.is_dir():
        for p in sorted(src.rglob("*")):
            if p.is_file() and not p.name.startswith("."):
                add(p.relative_to(src).as_posix(), lambda p=p: open(p, "rb"), p.stat().st_size)
    elif zipfile.is_zipfile(src):
        with zipfile.ZipFile(src) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
        for info in infos:
            add(info.filename, lambda info=info: _ZipMember(src, info), info.file_size)
    elif tarfile.is_tarfile(src):
        with tarfile.open(src) as tf:
            members = [m for m in tf.getmembers() if m.isfile()]
        for m in members:
            add(m.name, lambda m=m: _TarMember(src, m), m.size)
    else:
        add(src.name, lambda: open(src, "rb"), src.stat().st_size)
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise XnatBadInputError(
            f"Not DICOM (or no SOP UIDs) in {src}: {', '.join(bad[:5])}{more}. "
            "Remove them or import with ignore_unparsable=True."
        )
    if not plan.entries:
        raise XnatBadInputError(f"No DICOM files found in {src}.")
    for subj, sess in plan.labels.values():
        check_label(subj, "subject")
        check_label(sess, "session")
    return plan


class _ZipMember:
    """A zip entry opened on demand, closing its archive with it (entries are read one at a time)."""

    def __init__(self, path: Path, info: zipfile.ZipInfo):
        self._zf = zipfile.ZipFile(path)
        self._fh = self._zf.open(info)

    def read(self, n: int = -1) -> bytes:
        return self._fh.read(n)

    def seek(self, *args: Any) -> int:
        return self._fh.seek(*args)

    def tell(self) -> int:
        return self._fh.tell()

    def __enter__(self) -> _ZipMember:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()
        self._zf.close()


class _TarMember(_ZipMember):
    def __init__(self, path: Path, member: tarfile.TarInfo):
        self._zf = tarfile.open(path)  # type: ignore[assignment]
        self._fh = self._zf.extractfile(member)  # type: ignore[assignment]


class _Sink:
    """Where zipfile writes; the generator below hands the bytes on as they come."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.chunks.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> Iterator[bytes]:
        chunks, self.chunks = self.chunks, []
        yield from chunks


def zip_stream(entries: list[Entry]) -> Iterator[bytes]:
    """A zip of the entries, produced while it is sent (stored, not compressed: DICOM barely shrinks)."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:  # type: ignore[arg-type]
        for e in entries:
            info = zipfile.ZipInfo(e.name, date_time=(2000, 1, 1, 0, 0, 0))
            info.file_size = e.size
            with e.open() as src, zf.open(info, "w", force_zip64=e.size > 0x7FFFFFFF) as dst:
                for chunk in iter(lambda src=src: src.read(CHUNK), b""):
                    dst.write(chunk)
                    yield from sink.take()
            yield from sink.take()
    yield from sink.take()


def _reached_server(exc: XnatError) -> bool:
    """False when the request surely never arrived (connection refused or not opened)."""
    cause = exc.__cause__
    return not isinstance(cause, requests.exceptions.ConnectTimeout) and "NewConnectionError" not in repr(cause)


class ImportMixin:
    session: XnatSession

    def import_dicom(
        self,
        source: str | os.PathLike[str],
        project: str,
        *,
        subject: str | None = None,
        session: str | None = None,
        destination: str = "prearchive",
        overwrite: str | None = None,
        quarantine: bool = False,
        trigger_pipelines: bool | None = None,
        ignore_unparsable: bool = False,
        settle_seconds: float | None = None,
    ) -> list[SessionRef]:
        """Import DICOM into ``project``'s prearchive (built at once, READY) or archive; one ref per study."""
        if destination not in ("prearchive", "archive"):
            raise XnatBadInputError(f"destination must be 'prearchive' or 'archive', not {destination!r}")
        if overwrite not in (None, "append", "delete"):
            raise XnatBadInputError(f"overwrite must be None, 'append' or 'delete', not {overwrite!r}")
        check_label(project, "project")
        plan = plan_import(source, subject=subject, session=session, ignore_unparsable=ignore_unparsable)
        if not self.project_exists(project):  # type: ignore[attr-defined]
            raise XnatBadInputError(
                f"Project {project!r} does not exist on {self.session.base_url} (XNAT would "
                "silently route the data by its DICOM headers instead)."
            )
        params: dict[str, str] = {
            "import-handler": "DICOM-zip",
            "dest": f"/{destination}/projects/{project}",
            "project": project,
        }
        for key, value in (("subject", subject), ("session", session), ("overwrite", overwrite)):
            if value:
                params[key] = value
        if quarantine:
            params["quarantine"] = "true"
        if trigger_pipelines is not None:
            params["triggerPipelines"] = str(trigger_pipelines).lower()
        if ignore_unparsable:
            params["Ignore-Unparsable"] = "true"
        before = self._import_snapshot(project, plan, destination)
        pending = plan.studies
        found: list[SessionRef] = []
        for attempt in range(self.session.config.retries):
            entries = [e for e in plan.entries if e.study_uid in pending]
            try:
                resp = self.session.request(
                    "POST",
                    "/data/services/import",
                    params=params,
                    data=lambda entries=entries: zip_stream(entries),
                    headers={"Content-Type": "application/zip"},
                    retry=False,
                )
                return found + session_refs(resp.text)
            except XnatBadInputError as exc:
                if is_conflict_message(exc.xnat_message or ""):
                    # Archiving (asked for, or the project auto-archives) met an existing session; XNAT kept the
                    # data in the prearchive, in CONFLICT: a conflict, not a bad request.
                    raise XnatConflictError(
                        f"{exc}. The session waits in the prearchive in CONFLICT; archive it "
                        "with overwrite='append' or 'delete', or delete it.",
                        method=exc.method,
                        path=exc.path,
                        status=exc.status,
                        xnat_message=exc.xnat_message,
                    ) from exc
                raise
            except XnatError as exc:
                ambiguous = isinstance(exc, XnatServerError) and exc.status in (None, 502, 503, 504)
                if not ambiguous or attempt + 1 >= self.session.config.retries:
                    raise
                if _reached_server(exc):
                    arrived = self._import_arrived(project, plan, destination, before, pending,
                                                   self._settle(settle_seconds))
                    found += arrived
                    done = {uid for uid in pending if any(r.label == plan.labels[uid][1] for r in arrived)}
                    pending = [uid for uid in pending if uid not in done]
                    if not pending:
                        log.warning("Import answered %s but took effect; not resending", exc.status)
                        return found
                log.warning("Import failed (%s); resending %d of %d studies", exc, len(pending), len(plan.studies))
                time.sleep(min(self.session.config.backoff * 2**attempt, self.session.config.backoff_max))
        raise AssertionError("unreachable")  # pragma: no cover

    def _import_snapshot(self, project: str, plan: ImportPlan, destination: str) -> _Snapshot:
        """What already exists for these studies, so that a later look finds only this attempt's work.

        Both places are looked at whatever the destination: a project that auto-archives sends a prearchive
        import on to the archive, and an archive import that fails to archive stays in the prearchive.
        """
        pre = {s.uri for s in self.list_prearchive(project) if s.study_uid in plan.labels}  # type: ignore[attr-defined]
        labels = {e.label for e in self.list_experiments(project)}  # type: ignore[attr-defined]
        prints = {label: self.session_fingerprint(project, label)
                  for _s, label in plan.labels.values() if label in labels}
        return _Snapshot(pre, labels, prints)

    def session_fingerprint(self, project: str, label: str) -> tuple[Any, ...]:
        """An archived session's scans and their resources' file counts and sizes (changes when data merges)."""
        out = []
        for scan in self.list_scans(project, label):  # type: ignore[attr-defined]
            resources = self.list_resources(base_path(project, experiment=label, scan=scan.id))  # type: ignore[attr-defined]
            out.append(
                (
                    scan.id,
                    tuple(
                        sorted((r.get("label", ""), r.get("file_count", ""), r.get("file_size", "")) for r in resources)
                    ),
                )
            )
        return tuple(sorted(out))

    def _import_arrived(
        self, project: str, plan: ImportPlan, destination: str, before: _Snapshot, pending: list[str], settle: float
    ) -> list[SessionRef]:
        """The sessions this attempt created, polled for up to ``settle`` seconds; raise if one arrived but
        could not be archived (resending would only add a second failed copy)."""
        deadline = time.monotonic() + settle
        while True:
            rows = [
                s
                for s in self.list_prearchive(project)  # type: ignore[attr-defined]
                if s.study_uid in pending and s.uri not in before.prearchive
            ]
            experiments = {e.label: e for e in self.list_experiments(project)}  # type: ignore[attr-defined]
            refs: list[SessionRef] = []
            for uid in pending:
                subj, label = plan.labels[uid]
                new_rows = [s for s in rows if s.study_uid == uid]
                if destination == "prearchive" and new_rows:
                    refs += [
                        SessionRef(
                            uri=s.uri,
                            project=s.project,
                            subject=s.subject,
                            label=s.name,
                            timestamp=s.timestamp,
                            in_prearchive=True,
                        )
                        for s in new_rows
                    ]
                    continue
                exp = experiments.get(label)
                if exp is not None and (
                    label not in before.labels
                    or self.session_fingerprint(project, label) != before.fingerprints.get(label)
                ):
                    subject_label = exp.subject_label or subj
                    refs.append(
                        SessionRef(
                            uri=f"/data/archive/projects/{project}/subjects/{subject_label}/experiments/{label}",
                            project=project,
                            subject=subject_label,
                            label=label,
                        )
                    )
                    continue
                failed = [s for s in new_rows if s.failed]
                if failed:
                    cls = XnatConflictError if failed[0].status == "CONFLICT" else XnatServerError
                    raise cls(
                        f"POST /data/services/import: the import arrived but could not be archived: "
                        f"{failed[0].uri} is in {failed[0].status}. Archive it with overwrite='append' or "
                        "'delete', or delete it.",
                        method="POST",
                        path="/data/services/import",
                    )
            left = deadline - time.monotonic()
            if len(refs) >= len(pending) or left <= 0:
                return refs
            time.sleep(min(1.0, left))


@dataclass
class _Snapshot:
    prearchive: set[str]  # URIs of prearchive rows of the import's studies
    labels: set[str]  # experiment labels in the project
    fingerprints: dict[str, tuple[Any, ...]]  # label -> scans and file counts, for labels the import targets
