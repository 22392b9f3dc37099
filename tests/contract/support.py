"""What the contract suite needs besides the code under test.

- :class:`ContractServer`: the server the suite talks to, described by four values (URL, user, password,
  scratch project), whether it is a lab's real XNAT or the emulator.
- :class:`Scratch`: a janitor for the scratch project. It hands out fresh labels and fresh DICOM, remembers
  everything a test asked the server to create, and removes exactly that (never anything else) when the test
  ends, however it ends. It talks plain HTTP, independent of the client under test, so that a broken client
  cannot also break the cleanup or the checks made through it.
- Bounded waits and a minimal task context for running operators and sensors the way Airflow calls them.

Nothing here prints or puts the password in a message: a lab runs this with a real account.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pydicom
import pytest
import requests

from tests.airflow_helpers import context
from tests.support import wait_for
from xnat_provider.client import XnatClient
from xnat_provider.testing import XnatEmulator
from xnat_provider.testing.samples import make_study

#: A random tag for this pytest process: every label the suite creates carries it, so two runs (or two labs'
#: runs on one server) never meet, and nothing that existed before the run can carry a label the suite claims.
RUN_ID = secrets.token_hex(3).upper()
LIVE_VARIABLES = ("XNAT_USER", "XNAT_PASSWORD", "XNAT_PROJECT")
USER_AGENT = "airflow-provider-xnat-contract-tests"
LABEL_RE = re.compile(r"^[A-Za-z0-9_]+$")  # what XNAT's default DICOM routing (\w+) reads back unchanged
_serial = itertools.count(1)


# ---- the server ---------------------------------------------------------------------------------------------
#: The ``needs_emulator`` fixture: ``needs_emulator(reason)`` returns the emulator or skips the test.
NeedsEmulator = Callable[[str], XnatEmulator]


@dataclass(frozen=True)
class ContractServer:
    """The XNAT the contract tests run against. ``emulator`` is the in-process emulator, or None for a server
    given through ``XNAT_URL`` (a lab's XNAT, or an emulator in another process: the suite cannot tell, and
    must not need to). ``timeout`` bounds every wait for the server to finish something (a prearchive build)."""

    url: str
    user: str
    password: str = field(repr=False)
    project: str
    emulator: XnatEmulator | None = None
    timeout: float = 60.0

    @property
    def live(self) -> bool:
        return self.emulator is None

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc

    def client_options(self) -> dict[str, Any]:
        """Client settings for this server: the defaults on a live server (what a lab's DAGs would use); on the
        emulator a short backoff, so that the fault-injection tests do not sleep through real backoffs."""
        return {} if self.live else {"backoff": 0.05, "settle_seconds": 2.0}

    def client(self, **options: Any) -> XnatClient:
        return XnatClient(self.url, self.user, self.password, **{**self.client_options(), **options})

    def connection(self) -> dict[str, Any]:
        """This server as an Airflow connection of type ``xnat``, as a user writes it in ``AIRFLOW_CONN_*``."""
        extra: dict[str, Any] = {"backoff": 0.05, "settle_seconds": 2.0} if not self.live else {}
        return {"conn_type": "xnat", "host": self.url, "login": self.user, "password": self.password, "extra": extra}

    def needs_emulator(self, reason: str) -> XnatEmulator:
        """The emulator, or a skip on a live server: a real XNAT cannot be told to fail or expire on demand."""
        if self.emulator is None:
            pytest.skip(f"fault injection needs the emulator ({reason}); XNAT_URL points at a live server")
        return self.emulator


def live_settings(environ: dict[str, str] | os._Environ[str]) -> dict[str, Any] | None:
    """The live server described by ``XNAT_*`` variables, or None when ``XNAT_URL`` is unset (the emulator).

    Raises :class:`pytest.UsageError` naming what is missing or wrong, before any request is sent: a test run
    that guesses at credentials would count failed logins against a real account (XNAT locks it after 20).
    """
    url = environ.get("XNAT_URL", "").strip()
    if not url:
        return None
    missing = [name for name in LIVE_VARIABLES if not environ.get(name, "").strip()]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise pytest.UsageError(
            f"XNAT_URL is set, so the contract tests would run against that server, but {', '.join(missing)} "
            f"{verb} not set. Set XNAT_USER and XNAT_PASSWORD to a user who owns XNAT_PROJECT, a scratch project "
            "in which the suite creates and deletes its own subjects and sessions; or unset XNAT_URL to run "
            "against the emulator.")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise pytest.UsageError("XNAT_URL must be the server's URL, http(s)://host[:port][/path].")
    if parts.username or parts.password:
        raise pytest.UsageError("XNAT_URL carries credentials; put them in XNAT_USER and XNAT_PASSWORD instead.")
    project = environ["XNAT_PROJECT"].strip()
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", project):
        raise pytest.UsageError(f"XNAT_PROJECT must be a project ID (letters, digits, '_', '-'), not {project!r}.")
    raw_timeout = environ.get("XNAT_CONTRACT_TIMEOUT", "600").strip()
    try:
        timeout = float(raw_timeout)
    except ValueError:
        raise pytest.UsageError(f"XNAT_CONTRACT_TIMEOUT must be a number of seconds, not {raw_timeout!r}.") from None
    return {"url": url.rstrip("/"), "user": environ["XNAT_USER"].strip(), "password": environ["XNAT_PASSWORD"],
            "project": project, "timeout": timeout}


# ---- waiting and checking -----------------------------------------------------------------------------------
def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``condition`` until it returns something truthy (returned); fail naming ``what`` after ``timeout``
    seconds. Polling starts fast and slows to 5 s, which a real XNAT serving other users is glad of."""
    return wait_for(condition, timeout, interval=0.2, backoff=1.5, what=what)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def assert_not_leaked(text: str, secret: str, where: str) -> None:
    """Fail if ``secret`` appears in ``text``, without echoing either (pytest would print an ``assert``'s
    operands, the password among them)."""
    if len(secret) >= 3 and secret in text:
        raise AssertionError(f"a secret appears in {where}")


def instances(files: Iterable[Path]) -> dict[str, bytes]:
    """SOP Instance UID -> pixel data of DICOM files: what a study *is*, whatever the server did to headers."""
    out = {}
    for f in files:
        ds = pydicom.dcmread(f)
        out[str(ds.SOPInstanceUID)] = bytes(ds.PixelData)
    return out


# ---- fresh DICOM --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SourceStudy:
    """A DICOM study written for one test: fresh UIDs, and labels that name this run."""

    subject: str
    session: str
    study_uid: str
    folder: Path
    files: tuple[Path, ...]
    series: dict[str, list[Path]]


# ---- the janitor --------------------------------------------------------------------------------------------
class Scratch:
    """What one test (or one module) creates in the scratch project, and its removal.

    Labels are claimed before anything is sent, and only after checking that nothing carries them yet, so a
    cleanup can never remove what the test did not create: a claimed subject, with whatever it holds; claimed
    session labels; prearchive rows of the studies made here (their UIDs are fresh); alias tokens issued here.
    """

    def __init__(self, server: ContractServer) -> None:
        self.server = server
        self.project = server.project
        self.http = requests.Session()
        self.http.auth = (server.user, server.password)
        self.http.headers["User-Agent"] = USER_AGENT
        self.subjects: list[str] = []
        self.sessions: list[str] = []
        self.study_uids: set[str] = set()
        self.token_aliases: list[str] = []

    # -- plain HTTP reads, independent of the client under test --
    def get(self, path: str, **params: Any) -> requests.Response:
        return self.http.get(self.server.url + path, params=params, timeout=(10, 120))

    def rows(self, path: str, **params: Any) -> list[dict[str, str]]:
        resp = self.get(path, format="json", **params)
        resp.raise_for_status()
        return resp.json()["ResultSet"]["Result"]

    def exists(self, path: str) -> bool:
        resp = self.get(path, format="json")
        if resp.status_code == 404:
            return False
        resp.raise_for_status()
        return True

    def experiment_path(self, session: str) -> str:
        """An experiment by label: XNAT routes ``/data/projects/{P}/experiments/{label}`` (and its resources),
        but its scans only under ``/data/experiments/{ID}`` or the subject's path."""
        return f"/data/projects/{q(self.project)}/experiments/{q(session)}"

    def experiment_id(self, session: str) -> str:
        resp = self.get(self.experiment_path(session), format="json")
        resp.raise_for_status()
        return str(resp.json()["items"][0]["data_fields"]["ID"])

    def scans(self, session: str) -> list[dict[str, str]]:
        return self.rows(f"/data/experiments/{q(self.experiment_id(session))}/scans")

    def scan_path(self, session: str, scan: str) -> str:
        return f"/data/experiments/{q(self.experiment_id(session))}/scans/{q(scan)}"

    def catalog(self, owner_path: str, resource: str) -> dict[str, tuple[int, str]]:
        """A resource's catalog as the server lists it: path in the resource -> (size, MD5 digest). ``owner_path``
        is a route XNAT has: ``experiment_path(label)``, ``scan_path(label, scan)``."""
        out = {}
        for r in self.rows(f"{owner_path}/resources/{q(resource)}/files"):
            uri = r.get("URI", "")
            rel = uri.split("/files/", 1)[1] if "/files/" in uri else r["Name"]
            out[rel] = (int(r["Size"]), r.get("digest") or "")
        return out

    def prearchive(self) -> list[dict[str, str]]:
        """The scratch project's prearchive rows of the studies made here (matched by study UID, fresh per run)."""
        return [r for r in self.rows(f"/data/prearchive/projects/{q(self.project)}") if r.get("tag") in self.study_uids]

    # -- what the test will create --
    def claim(self, subject: str, session: str | None = None) -> None:
        """Take ``subject`` (and ``session``) for this test; refuse labels that already exist on the server."""
        for label in (subject, session):
            if label is not None and not LABEL_RE.fullmatch(label):
                raise ValueError(f"{label!r}: the suite uses letters, digits and '_' only")
        if self.exists(f"/data/projects/{q(self.project)}/subjects/{q(subject)}"):
            raise AssertionError(f"subject {subject} already exists in {self.project}: refusing to touch it")
        if session is not None and self.exists(self.experiment_path(session)):
            raise AssertionError(f"session {session} already exists in {self.project}: refusing to touch it")
        self.subjects.append(subject)
        if session is not None:
            self.sessions.append(session)

    def labels(self) -> tuple[str, str]:
        """A fresh subject label and session label, claimed."""
        n = next(_serial)
        subject, session = f"CT{RUN_ID}_{n:03d}", f"CT{RUN_ID}_{n:03d}_MR"
        self.claim(subject, session)
        return subject, session

    def new_study(self, parent: Path, series: Iterable[tuple[int, str]] = ((1, "T1"), (2, "T2")),
                  instances: int = 3) -> SourceStudy:
        """Real DICOM (pydicom's MR sample) with fresh UIDs and claimed labels. The labels are in the headers
        the way XNAT's default routing reads them (patient comments, then patient name and ID), so an import
        without explicit labels lands on them too."""
        subject, session = self.labels()
        folder = parent / session
        study = make_study(folder, patient_name=subject, patient_id=session, series=tuple(series),
                           instances=instances, comments=f"Project:{self.project} Subject:{subject} Session:{session}")
        self.study_uids.add(study.study_uid)
        return SourceStudy(subject=subject, session=session, study_uid=study.study_uid, folder=folder,
                           files=tuple(study.files), series=study.series)

    def track_token(self, alias: str) -> None:
        self.token_aliases.append(alias)

    # -- removal --
    def clean_up(self) -> None:
        """Remove what this test created, then check it is gone; fail naming anything left behind."""
        problems: list[str] = self._invalidate_tokens()
        problems += self._delete_prearchive_rows()
        mine = set(self.sessions)
        if mine:
            for row in self.rows(f"/data/projects/{q(self.project)}/experiments", columns="ID,label"):
                if row.get("label") in mine:
                    problems += self._delete(f"/data/projects/{q(self.project)}/experiments/{q(row['ID'])}")
        for subject in self.subjects:
            if self.exists(f"/data/projects/{q(self.project)}/subjects/{q(subject)}"):
                problems += self._delete(f"/data/projects/{q(self.project)}/subjects/{q(subject)}")
        problems += self._leftovers()
        if problems:
            raise AssertionError(f"cleanup of the scratch project {self.project} failed: " + "; ".join(problems))

    def _invalidate_tokens(self) -> list[str]:
        """Invalidate this test's tokens, then check the user's live tokens (``show``) no longer list them: what
        XNAT answers to invalidating a token that is already gone differs between versions."""
        if not self.token_aliases:
            return []
        for alias in self.token_aliases:
            self.get(f"/data/services/tokens/invalidate/{q(alias)}")
        resp = self.get("/data/services/tokens/show")
        resp.raise_for_status()
        live = {str(t.get("alias")) for t in resp.json()}
        return [f"token {a} still valid" for a in self.token_aliases if a in live]

    def _delete(self, path: str) -> list[str]:
        resp = self.http.delete(self.server.url + path, params={"removeFiles": "true"}, timeout=(10, 300))
        return [] if resp.status_code in (200, 204, 404) else [f"DELETE {path}: {resp.status_code}"]

    def _delete_prearchive_rows(self) -> list[str]:
        """Delete this test's prearchive rows; a row XNAT is still working on is waited for, within the timeout."""
        if not self.study_uids:
            return []
        deadline = time.monotonic() + self.server.timeout
        while True:
            rows = self.prearchive()
            busy = []
            for r in rows:
                path = f"/data/prearchive/projects/{q(r['project'])}/{q(r['timestamp'])}/{q(r['folderName'])}"
                resp = self.http.delete(self.server.url + path, timeout=(10, 120))
                if resp.status_code not in (200, 204, 404):
                    busy.append(f"{path}: {r['status']}, DELETE answered {resp.status_code}")
            if not busy:
                return []
            if time.monotonic() > deadline:
                return busy
            time.sleep(2)

    def _leftovers(self) -> list[str]:
        left = [f"subject {s}" for s in self.subjects
                if self.exists(f"/data/projects/{q(self.project)}/subjects/{q(s)}")]
        left += [f"session {s}" for s in self.sessions if self.exists(self.experiment_path(s))]
        if self.study_uids:
            left += [f"prearchive row {r['timestamp']}/{r['folderName']}" for r in self.prearchive()]
        return [f"still there: {', '.join(left)}"] if left else []

    def close(self) -> None:
        try:
            self.http.delete(self.server.url + "/data/JSESSION", timeout=(10, 30))
        except requests.RequestException:
            pass
        self.http.close()


def q(segment: str) -> str:
    return quote(str(segment), safe="")


# ---- running tasks the way Airflow calls them ---------------------------------------------------------------
def run_task(task: Any) -> tuple[Any, dict[str, Any]]:
    """``task.execute`` with the context keys the XNAT operators and sensors use; returns (XCom, context)."""
    ctx = context()
    return task.execute(ctx), ctx
