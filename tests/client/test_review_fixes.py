"""Fixes from a code review: an archive whose answer was lost and that XNAT starts late, the shared parsers of
the sync and async clients, the alias token's ``to_dict``, the async client's secrets, and small helpers."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from xnat_provider.client import ClientConfig, XnatClient
from xnat_provider.client.async_client import AsyncXnatClient
from xnat_provider.client.config import _KNOWN_SECRETS, redact_text
from xnat_provider.client.errors import XnatConflictError, XnatNotFoundError, XnatServerError
from xnat_provider.client.models import AliasToken, Experiment, PrearchiveSession
from xnat_provider.client.protocol import (
    archived_uri,
    experiments_from_rows,
    is_ambiguous,
    latest_experiment,
    prearchive_uri,
)
from xnat_provider.conditions import PrearchiveCriteria, PrearchiveWatch, SessionCriteria, observe_session
from xnat_provider.testing import XnatEmulator
from xnat_provider.testing.samples import Study, make_study

ARCHIVE = "/data/services/archive"
USER, PASSWORD = "reviewer", "Pw-7f3a91-review-fixes"  # the ``client`` fixture of tests/client/conftest.py


def archive_directly(http: requests.Session, emulator: XnatEmulator, src: str) -> int:
    """Archive a prearchive session as another party would (here: XNAT working on an earlier request)."""
    return http.post(f"{emulator.url}{ARCHIVE}", params={"src": src, "auto-archive": "false"}).status_code


def labels(http: requests.Session, emulator: XnatEmulator, project: str = "P1") -> list[str]:
    resp = http.get(f"{emulator.url}/data/projects/{project}/experiments", params={"format": "json"})
    resp.raise_for_status()
    return sorted(r["label"] for r in resp.json()["ResultSet"]["Result"])


def archive_posts_sent_by(client: XnatClient, monkeypatch: pytest.MonkeyPatch, before_send: dict[int, Any]) -> list:
    """Count the client's archive POSTs; ``before_send[n]()`` runs just before its n-th one (1-based) is sent."""
    sent: list[int] = []
    original = client.session.request

    def request(method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        if method == "POST" and path == ARCHIVE:
            sent.append(1)
            if len(sent) in before_send:
                before_send[len(sent)]()
        return original(method, path, *args, **kwargs)

    monkeypatch.setattr(client.session, "request", request)
    return sent


# ---- 1. an archive whose answer was lost -------------------------------------------------------------------
def test_lost_answer_of_an_archive_xnat_starts_late_is_not_resent(
    client: XnatClient, emulator: XnatEmulator, http: requests.Session, study: Study, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway answers 504 before XNAT started the archive: the row stays unchanged for a while, then the
    session is archived. The client keeps watching (up to ``settle``) instead of resending at once."""
    [ref] = client.import_dicom(study.files[0].parent, "P1")
    sent = archive_posts_sent_by(client, monkeypatch, {})
    emulator.fail_next("POST", ARCHIVE, status=504)  # the request is "lost": nothing is done yet
    late: dict[str, int] = {}
    timer = threading.Timer(1.5, lambda: late.setdefault("status", archive_directly(http, emulator, ref.uri)))
    timer.start()
    try:
        archived = client.archive(ref, settle_seconds=10)
    finally:
        timer.join()

    assert late["status"] == 200  # XNAT's late work succeeded: no resend had taken the row from under it
    assert len(sent) == 1
    assert (archived.project, archived.subject, archived.label) == ("P1", "S01", "S01_MR1")
    assert archived.uri == "/data/archive/projects/P1/subjects/S01/experiments/S01_MR1"
    assert labels(http, emulator) == ["S01_MR1"]


def test_unchanged_row_is_watched_for_settle_then_resent(
    client: XnatClient, emulator: XnatEmulator, http: requests.Session, study: Study, monkeypatch: pytest.MonkeyPatch
) -> None:
    [ref] = client.import_dicom(study.files[0].parent, "P1")
    sent = archive_posts_sent_by(client, monkeypatch, {})
    emulator.fail_next("POST", ARCHIVE, status=503)
    looks = emulator.request_count("GET", r"^/data/prearchive/projects/P1/")
    started = time.monotonic()

    archived = client.archive(ref, settle_seconds=1.5)

    assert archived.label == "S01_MR1" and len(sent) == 2
    # the row was watched for the settle time (more than one look), not resent on the first look
    assert time.monotonic() - started >= 1.5
    assert emulator.request_count("GET", r"^/data/prearchive/projects/P1/") - looks >= 3


def test_resend_answered_404_because_the_first_archive_finished(
    client: XnatClient, emulator: XnatEmulator, http: requests.Session, study: Study, monkeypatch: pytest.MonkeyPatch
) -> None:
    """XNAT ran the first request only after ``settle``: the resend finds no row (404). The session is in the
    archive, so the archive succeeded."""
    [ref] = client.import_dicom(study.files[0].parent, "P1")
    sent = archive_posts_sent_by(client, monkeypatch, {2: lambda: archive_directly(http, emulator, ref.uri)})
    emulator.fail_next("POST", ARCHIVE, status=504)

    archived = client.archive(ref, settle_seconds=0.3)

    assert len(sent) == 2
    assert (archived.project, archived.subject, archived.label) == ("P1", "S01", "S01_MR1")
    assert labels(http, emulator) == ["S01_MR1"]


def test_resend_answered_404_with_nothing_archived_still_raises(
    client: XnatClient, emulator: XnatEmulator, http: requests.Session, study: Study, monkeypatch: pytest.MonkeyPatch
) -> None:
    [ref] = client.import_dicom(study.files[0].parent, "P1")

    def delete_row() -> None:
        http.delete(f"{emulator.url}{ref.uri}").raise_for_status()

    archive_posts_sent_by(client, monkeypatch, {2: delete_row})
    emulator.fail_next("POST", ARCHIVE, status=504)
    with pytest.raises(XnatNotFoundError):
        client.archive(ref, settle_seconds=0.3)
    assert labels(http, emulator) == []


def test_resend_on_a_row_the_first_request_now_locks_waits_for_it(
    client: XnatClient, emulator: XnatEmulator, http: requests.Session, study: Study, monkeypatch: pytest.MonkeyPatch
) -> None:
    """XNAT starts the first request just as the resend arrives: the resend meets a locked row (403). The
    client waits for the first request's outcome instead of failing."""
    [ref] = client.import_dicom(study.files[0].parent, "P1")
    row = client.get_prearchive(ref)
    timers: list[threading.Timer] = []

    def finish_first() -> None:  # the first request ends: the row is archived
        emulator.release_prearchive(row.project, row.timestamp, row.folder, status="READY")
        archive_directly(http, emulator, ref.uri)

    def start_first() -> None:  # XNAT locks the row (_ARCHIVING) while its archiver runs
        emulator.hold_prearchive(row.project, row.timestamp, row.folder, status="_ARCHIVING")
        timers.append(threading.Timer(0.3, finish_first))
        timers[-1].start()

    sent = archive_posts_sent_by(client, monkeypatch, {2: start_first})
    emulator.fail_next("POST", ARCHIVE, status=504)
    try:
        archived = client.archive(ref, settle_seconds=1.5)
    finally:
        for t in timers:
            t.join()

    assert len(sent) == 2 and archived.label == "S01_MR1"
    assert labels(http, emulator) == ["S01_MR1"]


def test_a_conflict_on_the_first_try_is_still_raised_at_once(
    client: XnatClient, emulator: XnatEmulator, study: Study, tmp_path: Path
) -> None:
    """Only a resend's 404 or busy row is looked into: a first request's 403 busy is a conflict, raised."""
    [ref] = client.import_dicom(study.files[0].parent, "P1")
    row = client.get_prearchive(ref)
    emulator.hold_prearchive(row.project, row.timestamp, row.folder, status="_ARCHIVING")  # only _X rows: 403
    with pytest.raises(XnatConflictError):
        client.archive(ref, settle_seconds=5)
    assert emulator.request_count("POST", ARCHIVE) == 1


# ---- 2. alias tokens --------------------------------------------------------------------------------------
def test_alias_token_to_dict_leaves_the_secret_out() -> None:
    token = AliasToken(alias="a1", secret="s3cr3t-value", user="admin", expires=datetime(2030, 1, 1, tzinfo=UTC))
    assert token.to_dict() == {"alias": "a1", "user": "admin", "expires": "2030-01-01T00:00:00+00:00"}
    assert token.secret == "s3cr3t-value" and "s3cr3t-value" not in repr(token)


# ---- 3. the shared parsers: sync and async alike ----------------------------------------------------------
def two_sessions_of_one_subject(client: XnatClient, emulator: XnatEmulator, tmp_path: Path) -> None:
    """S01 with S01_MR1 and S01_MR2, S01_MR1 inserted last although listed first (listings are in ID order,
    which need not be insertion order: IDs from another site, a session deleted and archived again...)."""
    for label in ("S01_MR1", "S01_MR2"):
        study = make_study(tmp_path / label, patient_name="S01", patient_id=label)
        client.import_dicom(study.files[0].parent, "P1", destination="archive")
    emulator.store.run("UPDATE experiments SET insert_date=? WHERE label=?", "2099-01-01 00:00:00.000", "S01_MR1")


async def test_sync_and_async_clients_parse_alike(client: XnatClient, emulator: XnatEmulator, tmp_path: Path
                                                  ) -> None:
    two_sessions_of_one_subject(client, emulator, tmp_path)
    sync_found = client.find_experiment("P1", "S01_MR1")
    sync_listed = client.list_experiments("P1", "S01")
    sync_scans = client.list_scans("P1", "S01_MR1")
    async with AsyncXnatClient(ClientConfig(emulator.url, "admin", "admin", backoff=0.01)) as xnat:
        await xnat.login()
        gets = emulator.request_count("GET")
        found = await xnat.find_experiment("P1", "S01_MR1")
        assert emulator.request_count("GET") - gets == 2  # the experiment, then its subject (for its label)
        assert found == sync_found and found is not None
        assert (found.subject_label, found.subject_id) == ("S01", sync_found.subject_id)
        assert found.xsi_type == "xnat:mrSessionData"
        assert await xnat.list_experiments("P1", "S01") == sync_listed
        assert all(e.insert_date for e in sync_listed)  # both clients ask the listing for it
        assert await xnat.list_scans("P1", "S01_MR1") == sync_scans
        assert await xnat.find_experiment("P1", "NOPE") is None
        assert await xnat.find_experiment("NO_SUCH_PROJECT", "S01_MR1") is None
    assert client.find_experiment("P1", "NOPE") is None
    assert client.find_experiment("NO_SUCH_PROJECT", "S01_MR1") is None
    assert client.get_experiment("P1", sync_found.id) == sync_found  # by ID too
    assert [replace(e, insert_date="") for e in sync_listed if e.label == "S01_MR1"] == [sync_found]


async def test_latest_session_of_a_subject_is_the_last_inserted(client: XnatClient, emulator: XnatEmulator,
                                                                tmp_path: Path) -> None:
    two_sessions_of_one_subject(client, emulator, tmp_path)
    listed = [e.label for e in client.list_experiments("P1", "S01")]
    assert listed[-1] != "S01_MR1"  # what experiments[-1] used to pick
    criteria = SessionCriteria(project="P1", subject="S01")
    verdict = await observe_session(client, criteria)
    assert verdict.sessions[0]["label"] == "S01_MR1"
    async with AsyncXnatClient(ClientConfig(emulator.url, "admin", "admin", backoff=0.01)) as xnat:
        verdict = await observe_session(xnat, criteria)
    assert verdict.sessions[0]["label"] == "S01_MR1"


def test_latest_experiment_orders_by_insert_date_then_id() -> None:
    rows = [{"ID": "E3", "label": "C", "xsiType": "t", "insert_date": "2024-01-01 10:00:00.000"},
            {"ID": "E1", "label": "A", "xsiType": "t", "insert_date": "2024-01-02 09:00:00.000"},
            {"ID": "E2", "label": "B", "xsiType": "t", "insert_date": "2024-01-02 09:00:00.000"}]
    exps = experiments_from_rows(rows, "P1", "S01")
    assert [e.subject_label for e in exps] == ["S01"] * 3 and exps[0].uri == "/data/experiments/E3"
    assert latest_experiment(exps).label == "B"  # type: ignore[union-attr]
    assert latest_experiment([]) is None
    assert isinstance(exps[0], Experiment) and exps[0].to_dict()["insert_date"] == "2024-01-01 10:00:00.000"


async def test_async_client_secrets_are_redacted_process_wide(emulator: XnatEmulator) -> None:
    password = "Async-Pw-4c2e-review"
    emulator.add_user("asyncuser", password, admin=True)
    async with AsyncXnatClient(ClientConfig(emulator.url, "asyncuser", password, backoff=0.01)) as xnat:
        await xnat.login()
        sid = xnat.http.cookies.get("JSESSIONID")
    assert password in _KNOWN_SECRETS and sid in _KNOWN_SECRETS
    assert redact_text(f"login {password} cookie {sid}") == "login *** cookie ***"


# ---- 4 and 6. helpers --------------------------------------------------------------------------------------
def test_uri_helpers_and_ambiguity() -> None:
    assert archived_uri("P1", "S01", "S01_MR1") == "/data/archive/projects/P1/subjects/S01/experiments/S01_MR1"
    row = PrearchiveSession(project="P1", timestamp="20240101_000000000", folder="S01_MR1_1", name="S01_MR1",
                            subject="S01", study_uid="1.2", status="READY", lastmod="", uploaded="")
    assert prearchive_uri(row.to_dict()) == row.uri
    assert prearchive_uri({"project": "P1", "timestamp": "T", "folderName": "F", "name": "N"}) == (
        "/data/prearchive/projects/P1/T/F")
    assert prearchive_uri({"project": "P1", "timestamp": "T", "name": "N"}) == "/data/prearchive/projects/P1/T/N"
    assert is_ambiguous(XnatServerError("x", status=504)) and is_ambiguous(XnatServerError("x"))
    assert not is_ambiguous(XnatServerError("x", status=500)) and not is_ambiguous(ValueError("x"))
    import xnat_provider.client.protocol as protocol

    assert not hasattr(protocol, "HTML_PREFIXES") and not hasattr(protocol, "__all__")


def test_watch_track_only_records_and_observe_uses_it() -> None:
    def row(status: str, lastmod: str) -> PrearchiveSession:
        return PrearchiveSession(project="P1", timestamp="T", folder="F", name="S01_MR1", subject="S01",
                                 study_uid="1.2", status=status, lastmod=lastmod, uploaded="")

    other = PrearchiveSession(project="P1", timestamp="T", folder="G", name="S02_MR1", subject="S02",
                              study_uid="1.3", status="READY", lastmod="1", uploaded="")
    watch = PrearchiveWatch(PrearchiveCriteria(project="P1", subject="S01", quiet_period=10))
    assert watch.track([row("READY", "1"), other], now=100.0) == [row("READY", "1")]
    assert watch.state["seen"] == {"/data/prearchive/projects/P1/T/F": ["READY|1", 100.0]}
    assert watch.track([row("READY", "1")], now=105.0) and watch.state["seen"][row("READY", "1").uri][1] == 100.0
    assert watch.observe([row("READY", "1")], now=111.0).action == "done"  # quiet since 100
    watch.track([row("READY", "2")], now=112.0)  # changed: the quiet period starts again
    assert watch.observe([row("READY", "2")], now=115.0).action == "wait"


def test_async_find_experiment_runs_in_an_event_loop_without_blocking(emulator: XnatEmulator) -> None:
    """A smoke check that the async parsers need nothing from a running sync client."""
    async def look() -> Any:
        async with AsyncXnatClient(ClientConfig(emulator.url, "admin", "admin", backoff=0.01)) as xnat:
            return await xnat.list_experiments("P1")

    assert asyncio.run(look()) == []


def test_a_zip_labelled_text_html_is_not_cut_short(emulator: XnatEmulator, study_zip: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A gateway that labels the zip text/html: the client looks at its first bytes for an error page, and
    those bytes must still end up in the zip."""
    from xnat_provider.testing.files_api import FilesApi

    real = FilesApi.zip_download

    def mislabelled(self, req, fmt):  # type: ignore[no-untyped-def]
        resp = real(self, req, fmt)
        resp.content_type = "text/html"
        return resp

    monkeypatch.setattr(FilesApi, "zip_download", mislabelled)
    with XnatClient(emulator.url, "admin", "admin") as c:
        c.import_dicom(study_zip, "P1", destination="archive")
        exp = c.experiment_path("P1", "S01_MR1")
        manifest = c.download_zip(f"{exp}/scans/ALL/files", tmp_path / "out")
    assert len(manifest.files) == 6
    assert all(Path(f["path"]).stat().st_size == f["size"] for f in manifest.files)
