"""Failures a lab's server produces at random, made to happen on demand: only the emulator can, so on a live
server these tests skip, saying so. They hold the client to what it promises when XNAT misbehaves."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from tests.contract.support import ContractServer, NeedsEmulator, Scratch, instances
from xnat_provider.client import XnatClient

LOGIN = r"^/data/services/auth$"


def test_a_503_on_a_listing_is_retried(client: XnatClient, server: ContractServer, scratch: Scratch,
                                       needs_emulator: NeedsEmulator) -> None:
    emulator = needs_emulator("it answers the next listings with 503")
    subject, label = scratch.labels()
    client.create_experiment(server.project, subject, label)
    listing = rf"^/data/projects/{server.project}/experiments$"
    sent = emulator.request_count("GET", listing)
    emulator.fail_next("GET", listing, status=503, count=2)
    assert label in [e.label for e in client.list_experiments(server.project)]
    assert emulator.request_count("GET", listing) - sent == 3  # two 503s, then the answer


def test_a_session_expired_mid_download_is_renewed_by_one_login(
        client: XnatClient, server: ContractServer, scratch: Scratch, needs_emulator: NeedsEmulator,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Four download threads meet the expired session at once; one of them logs in again, the others ride on
    that login, and the download completes verified."""
    emulator = needs_emulator("it expires every session while a download runs")
    study = scratch.new_study(tmp_path / "dicom", series=((1, "T1"), (2, "T2")), instances=4)
    client.import_dicom(study.folder, server.project, subject=study.subject, experiment=study.session,
                        destination="archive")
    expired = threading.Event()
    original = requests.Session.request

    def request(self: requests.Session, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        resp = original(self, method, url, *args, **kwargs)
        if method.upper() == "GET" and "/files/" in urlsplit(url).path and not expired.is_set():
            expired.set()  # after the first file, mid-job
            emulator.expire_sessions()
        return resp

    monkeypatch.setattr(requests.Session, "request", request)
    logins, server_logins = client.transport.login_attempts, emulator.request_count("POST", LOGIN)
    manifest = client.download_scans(server.project, study.session, tmp_path / "out", scans="ALL", workers=4)
    assert expired.is_set()
    assert (len(manifest.files), manifest.transferred) == (len(study.files), len(study.files))
    assert instances(Path(f["path"]) for f in manifest.files) == instances(study.files)
    assert client.transport.login_attempts == logins + 1
    assert emulator.request_count("POST", LOGIN) == server_logins + 1
