"""What the sync and the async clients share: URL building, response parsing, error mapping.

Kept free of any HTTP library so that the requests-based client and the httpx-based async client build the
same URLs, read the same answers and raise the same errors.
"""

from __future__ import annotations

import json
import re
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

from lxml import etree

from .errors import (
    XnatBadInputError,
    XnatConflictError,
    XnatError,
    XnatNotFoundError,
    XnatServerError,
    error_for_status,
)
from .models import Experiment, PrearchiveSession, Scan, SessionRef

# A label XNAT accepts for projects, subjects and experiments.
LABEL_RE = re.compile(r"^[A-Za-z0-9_\-]+$")
TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})
T = TypeVar("T")


def q(segment: str) -> str:
    """Quote one path segment (labels, IDs, file names) for an XNAT URL."""
    return quote(str(segment), safe="")


def qpath(path: str) -> str:
    """Quote a relative file path, keeping its slashes."""
    return "/".join(q(p) for p in path.split("/"))


def check_label(value: str, what: str) -> str:
    if not value or not LABEL_RE.match(value):
        raise XnatBadInputError(f"Invalid {what} label {value!r}: XNAT accepts letters, digits, '_' and '-' only.")
    return value


def base_path(project: str | None = None, subject: str | None = None, experiment: str | None = None,
              scan: str | None = None, assessor: str | None = None) -> str:
    """The archive path of an object, in a form XNAT 1.8 routes.

    Scans and assessors exist only under ``/data/experiments/{ID}`` (give the experiment's ID and no project)
    or under the long form ``/data/projects/{P}/subjects/{S}/experiments/{E}``: XNAT has no
    ``/data/projects/{P}/experiments/{E}/scans`` route (Restlet hands that path to the experiment itself, which
    answers its own document to a GET and 400 to a PUT), so asking for it raises ``ValueError`` here.
    """
    if experiment is None and (scan or assessor):
        raise ValueError("a scan or assessor needs its experiment")
    if (scan or assessor) and project is not None and subject is None:
        raise ValueError("XNAT routes scans and assessors only under /data/experiments/{ID} or "
                         "/data/projects/{P}/subjects/{S}/experiments/{E}: give the subject, or the experiment's "
                         "ID without a project")
    if experiment is not None and project is None:
        path = f"/data/experiments/{q(experiment)}"
    else:
        if project is None:
            raise ValueError("a project is required")
        path = f"/data/projects/{q(project)}"
        if subject is not None:
            path += f"/subjects/{q(subject)}"
        if experiment is not None:
            path += f"/experiments/{q(experiment)}"
    if scan is not None:
        path += f"/scans/{q(scan)}"
    if assessor is not None:
        path += f"/assessors/{q(assessor)}"
    return path


def archived_uri(project: str, subject: str, label: str) -> str:
    """The ``/data/archive/projects/P/subjects/S/experiments/L`` URI of an archived session, by labels."""
    return f"/data/archive/projects/{q(project)}/subjects/{q(subject)}/experiments/{q(label)}"


def prearchive_uri(d: dict[str, Any]) -> str:
    """The ``/data/prearchive/projects/P/TIMESTAMP/FOLDER`` URI of a prearchive session given as a dict: a
    :meth:`PrearchiveSession.to_dict` (``folder``), an XNAT row (``folderName``) or a dict with ``name`` only."""
    folder = d.get("folder") or d.get("folderName") or d.get("name")
    return f"/data/prearchive/projects/{d['project']}/{d['timestamp']}/{folder}"


# ---- reading answers -----------------------------------------------------------------------------------------

def looks_like_html(text: str) -> bool:
    return text.lstrip()[:20].lower().startswith(("<html", "<!doctype"))


def xnat_message(body: str) -> str:
    """XNAT's own message from a status page (the ``<h3>``), or a short plain-text body."""
    if looks_like_html(body):
        try:
            doc = etree.fromstring(body.encode("utf-8", "replace"), etree.HTMLParser())
            if doc is not None:
                for tag in ("h3", "h1", "title"):
                    found = doc.find(f".//{tag}")
                    if found is not None and (found.text or "").strip():
                        return " ".join(found.text.split())
        except (etree.ParserError, ValueError):
            pass
        return ""
    return " ".join(body.split())[:300]


def raise_for_answer(method: str, path: str, status: int, body: str, redact: Any = str) -> None:
    """Raise the typed error for a failed answer (status >= 400, or an error page sent with 200)."""
    message = redact(xnat_message(body))
    where = redact(path)
    if status < 400:
        raise XnatServerError(f"{method} {where}: XNAT answered an error page with status {status}: {message}",
                              method=method, path=where, status=status, xnat_message=message)
    cls = error_for_status(status)
    if status == 500 and message.startswith("FAILED"):
        cls = XnatConflictError if is_conflict_message(message) else XnatServerError
    text = f"{method} {where}: {status}" + (f" {message}" if message else "")
    raise cls(text, method=method, path=where, status=status, xnat_message=message)


def is_conflict_message(message: str) -> bool:
    """XNAT's merge-conflict reasons (an archive, or an import to the archive, that met existing data)."""
    words = ("already exists", "already contains", "invalid modification", "conflict", "matching files")
    return any(w in message.lower() for w in words)


# DicomZipImporter.xmlBuild (l.258) wraps whatever failed while building or archiving an import's session in
# ClientException("unable to archive for the Prearchive session"); the import service answers 400 with that text
# alone. XNAT's reason is in the session's prearchive log, and the row is left in CONFLICT or ERROR.
IMPORT_ARCHIVE_FAILED = "unable to archive for the prearchive session"


def is_import_archive_failure(message: str) -> bool:
    """The import service's fixed answer when it could not build or archive a session it received."""
    return message.lower().startswith(IMPORT_ARCHIVE_FAILED)


def result_rows(body: str | bytes, method: str = "GET", path: str = "") -> list[dict[str, str]]:
    """Rows of an XNAT ``ResultSet`` JSON listing."""
    try:
        data = json.loads(body)
        rows = data["ResultSet"]["Result"]
    except (ValueError, KeyError, TypeError) as exc:
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        raise XnatServerError(f"{method} {path}: expected an XNAT result set, got {text[:120]!r}",
                              method=method, path=path) from exc
    return [{k: "" if v is None else str(v) for k, v in r.items()} for r in rows]


def json_answer(body: str | bytes, method: str, path: str) -> Any:
    """A JSON answer (token and build-info calls); an answer that is not JSON (a login page a proxy sent, an
    error page with 200) is an :class:`XnatServerError`, never the JSON library's own exception. ``path`` must
    already be redacted: a token URL carries its secret."""
    try:
        return json.loads(body)
    except ValueError:
        pass  # raised below, outside the handler: nothing of the JSON error (which holds the body) is chained
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    raise XnatServerError(f"{method} {path}: expected JSON, got {text[:120]!r}", method=method, path=path)


def uri_list(body: str) -> list[str]:
    return [line.strip() for line in body.splitlines() if line.strip() and not line.startswith("#")]


def session_refs(body: str) -> list[SessionRef]:
    return [SessionRef.parse(u) for u in uri_list(body)]


def prearchive_path(project: str | None) -> str:
    return f"/data/prearchive/projects/{q(project)}" if project else "/data/prearchive"


def prearchive_sessions(rows: Iterable[dict[str, str]], status: str | Iterable[str] | None = None,
                        study_uid: str | None = None) -> list[PrearchiveSession]:
    """Prearchive rows as sessions, keeping those in ``status`` (one or several) and of ``study_uid``."""
    sessions = [PrearchiveSession.from_row(r) for r in rows]
    if status is not None:
        wanted = {status} if isinstance(status, str) else set(status)
        sessions = [s for s in sessions if s.status in wanted]
    if study_uid is not None:
        sessions = [s for s in sessions if s.study_uid == study_uid]
    return sessions


def prearchive_src(session: PrearchiveSession | SessionRef | str) -> str:
    """The ``src`` value the archive and batch services take."""
    uri = session if isinstance(session, str) else session.uri
    uri = uri if uri.startswith("/data/") else "/data" + uri
    if not uri.startswith("/data/prearchive/projects/"):
        raise ValueError(f"not a prearchive session: {uri}")
    return uri


def custom_field_param(xsi_type: str, name: str) -> str:
    return f"{xsi_type}/fields/field[name={name}]/field"


def fields_from_item(item: dict[str, Any]) -> dict[str, str]:
    """Custom fields from an object's JSON (the ``fields/field`` child)."""
    out: dict[str, str] = {}
    for child in item.get("children", []):
        if child.get("field") == "fields/field":
            for f in child.get("items", []):
                d = f.get("data_fields", {})
                if "name" in d:
                    out[str(d["name"])] = str(d.get("field", ""))
    return out


def first_item(body: str | bytes, method: str, path: str) -> dict[str, Any]:
    try:
        items = json.loads(body)["items"]
        return next(i for i in items if not i.get("meta", {}).get("isHistory"))
    except (ValueError, KeyError, StopIteration, TypeError) as exc:
        raise XnatServerError(f"{method} {path}: expected an XNAT object document", method=method,
                              path=path) from exc


# ---- archive objects ----------------------------------------------------------------------------------------
# The experiment listing columns both clients ask for: subject_label saves a GET of the subject, insert_date
# tells which session came last.
EXPERIMENT_COLUMNS = "ID,label,xsiType,date,subject_ID,subject_label,project,insert_date"


def experiments_from_rows(rows: Iterable[dict[str, str]], project: str, subject: str | None = None
                          ) -> list[Experiment]:
    """Experiments from a listing asked with :data:`EXPERIMENT_COLUMNS`, in the server's order."""
    return [Experiment(id=r["ID"], label=r["label"], project=r.get("project") or project,
                       subject_id=r.get("subject_ID", ""), subject_label=r.get("subject_label") or (subject or ""),
                       xsi_type=r.get("xsiType", ""), date=r.get("date", ""), uri=f"/data/experiments/{r['ID']}",
                       insert_date=r.get("insert_date", ""))
            for r in rows]


def latest_experiment(experiments: Iterable[Experiment]) -> Experiment | None:
    """The experiment inserted last (by ``insert_date``, then ID), whatever the listing order; None if none."""
    return max(experiments, key=lambda e: (e.insert_date, e.id), default=None)


def experiment_from_item(item: dict[str, Any], project: str, subject_label: str = "") -> Experiment:
    """An experiment from its object document (the document has the subject's ID, not its label)."""
    d = item["data_fields"]
    return Experiment(id=d["ID"], label=d.get("label", ""), project=d.get("project", project),
                      subject_id=d.get("subject_ID", ""), subject_label=subject_label,
                      xsi_type=item["meta"]["xsi:type"], date=d.get("date", ""), uri=f"/data/experiments/{d['ID']}",
                      insert_date=str(d.get("insert_date", "") or ""))


def scans_from_rows(rows: Iterable[dict[str, str]]) -> list[Scan]:
    return [Scan(id=r["ID"], type=r.get("type", ""), series_description=r.get("series_description", ""),
                 xsi_type=r.get("xsiType", ""), quality=r.get("quality", ""), uri=r.get("URI", ""))
            for r in rows]


# ---- lookups: the reads a call needs, for either client to send ----------------------------------------------
# A lookup is a generator: it yields each read it needs (:class:`Rows` or :class:`Item`), receives the parsed
# answer (or, thrown in, the typed error) and returns the call's result. The sync client runs it over requests,
# the async one over httpx (see :class:`~xnat_provider.client.core.Runner`): the same requests, in the same order,
# read the same way, and a missing object means the same in both.
@dataclass(frozen=True)
class Rows:
    """Read the ``ResultSet`` listing at ``path`` (``params`` besides ``format=json``); the reply is its rows."""

    path: str
    params: tuple[tuple[str, str], ...] = ()

    def query(self) -> dict[str, str]:
        return {"format": "json", **dict(self.params)}

    def parse(self, body: str | bytes) -> Any:
        return result_rows(body, "GET", self.path)


@dataclass(frozen=True)
class Item(Rows):
    """Read the object document at ``path``; the reply is its current item (:func:`first_item`)."""

    def parse(self, body: str | bytes) -> Any:
        return first_item(body, "GET", self.path)


Lookup = Generator[Rows, Any, T]


def listing(path: str, params: tuple[tuple[str, str], ...] = ()) -> Lookup[list[dict[str, str]]]:
    """The rows of one listing (resources, subjects...)."""
    return (yield Rows(path, params))


def or_none(lookup: Lookup[T]) -> Lookup[T | None]:
    """``lookup``, with an absent object (or project: XNAT answers 404 for both) as None."""
    try:
        return (yield from lookup)
    except XnatNotFoundError:
        return None


def experiment_lookup(project: str, experiment: str) -> Lookup[Experiment]:
    """An experiment by label or ID within its project, subject label included: the object document has only the
    subject's ID, so a second read names it (left empty when that read fails: the experiment was found)."""
    item = yield Item(base_path(project, experiment=experiment))
    subject_id = item["data_fields"].get("subject_ID")
    subject_label = ""
    if subject_id:
        try:
            subject_label = (yield Item(base_path(project, subject_id)))["data_fields"].get("label", "")
        except XnatError:
            subject_label = ""
    return experiment_from_item(item, project, subject_label)


def experiment_path_lookup(project: str, experiment: str | Experiment, subject: str | None = None) -> Lookup[str]:
    """Where XNAT routes an experiment's scans, assessors and files (see :func:`base_path`): an
    :class:`Experiment` or a given ``subject`` cost no read; a label (or ID) alone costs one, to learn the ID."""
    if isinstance(experiment, Experiment):
        return base_path(experiment=experiment.id)
    if subject:
        return base_path(project, subject, experiment)
    item = yield Item(base_path(project, experiment=experiment))
    return base_path(experiment=str(item["data_fields"]["ID"]))


def scans_lookup(project: str, experiment: str | Experiment) -> Lookup[list[Scan]]:
    path = yield from experiment_path_lookup(project, experiment)
    return scans_from_rows((yield Rows(f"{path}/scans")))


def experiments_lookup(project: str, subject: str | None = None) -> Lookup[list[Experiment]]:
    """A project's (or a subject's) experiments in the server's order, asked with :data:`EXPERIMENT_COLUMNS`."""
    rows = yield Rows(f"{base_path(project, subject)}/experiments", (("columns", EXPERIMENT_COLUMNS),))
    return experiments_from_rows(rows, project, subject)


def fields_lookup(project: str, subject: str | None = None, experiment: str | None = None) -> Lookup[dict[str, str]]:
    """The custom fields of a project, subject or experiment (one read of its document)."""
    return fields_from_item((yield Item(base_path(project, subject, experiment))))


def prearchive_lookup(project: str | None = None, status: str | Iterable[str] | None = None,
                      study_uid: str | None = None) -> Lookup[list[PrearchiveSession]]:
    return prearchive_sessions((yield Rows(prearchive_path(project))), status, study_uid)


def prearchive_row_lookup(session: PrearchiveSession | SessionRef | str) -> Lookup[PrearchiveSession]:
    """One prearchive session's row; :class:`XnatNotFoundError` when XNAT has none (404, or an empty listing)."""
    src = prearchive_src(session)
    rows = yield Rows(src)
    if not rows:
        raise XnatNotFoundError(f"GET {src}: no such prearchive session", method="GET", path=src, status=404)
    return PrearchiveSession.from_row(rows[0])


# ---- failures -----------------------------------------------------------------------------------------------
def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, XnatServerError) and (exc.status in TRANSIENT_STATUSES)


def is_ambiguous(exc: BaseException) -> bool:
    """A failure after which a non-idempotent request (an archive, an import, a queued operation) may still
    have taken effect: no answer at all, or a gateway's 502, 503 or 504."""
    return isinstance(exc, XnatServerError) and exc.status in (None, 502, 503, 504)
