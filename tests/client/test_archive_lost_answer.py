"""An archive request whose answer was lost: the client neither resends blindly nor gives up early, whether
XNAT started the first request late, finished it, or still holds the row locked; a first-try conflict is
raised at once."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from xnat_provider.client import XnatClient
from xnat_provider.client.errors import XnatConflictError, XnatNotFoundError
from xnat_provider.testing import XnatEmulator
from xnat_provider.testing.samples import Study

ARCHIVE = "/data/services/archive"
USER, PASSWORD = "reviewer", "Pw-7f3a91-lost-answer"  # the ``client`` fixture of tests/client/conftest.py


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
    original = client.transport.request

    def request(method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        if method == "POST" and path == ARCHIVE:
            sent.append(1)
            if len(sent) in before_send:
                before_send[len(sent)]()
        return original(method, path, *args, **kwargs)

    monkeypatch.setattr(client.transport, "request", request)
    return sent



# ---- an archive whose answer was lost -------------------------------------------------------------------
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
