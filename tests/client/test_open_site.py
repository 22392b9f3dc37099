"""Session expiry on a site that does not require a login: XNAT answers as the guest user, never 401.

The guest sees only public projects: a private project's data is 404, listings lose rows, writes are refused
(or, for a file upload, answered 200 with nothing stored). The client notices the new ``JSESSIONID`` XNAT sends
with such an answer, checks ``GET /data/auth``, logs in again once and resends the request when that is safe.
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from xnat_provider.client import ClientConfig, XnatAuthError, XnatClient, XnatServerError
from xnat_provider.client.async_client import AsyncXnatClient
from xnat_provider.client.core import auth_user, session_replaced
from xnat_provider.client.protocol import is_ambiguous
from xnat_provider.testing import XnatEmulator
from xnat_provider.testing.samples import make_study, zip_files

PASSWORD = "0pen-s1te-Passw0rd"


def make_site(tmp_path: Path, require_login: bool) -> XnatEmulator:
    emu = XnatEmulator(data_dir=tmp_path / "x", users={"admin": "admin", "alice": PASSWORD}, projects=["P1"],
                       require_login=require_login, receiving_idle=0.5, build_seconds=0.2, queue_seconds=0.2)
    emu.start()
    try:
        emu.add_project("PUB", accessibility="public")
        study = make_study(tmp_path / "dicom", series=((1, "T1"), (2, "T2")), instances=2)
        r = requests.post(emu.url + "/data/services/import", params={"dest": "/archive/projects/P1"},
                          data=zip_files(study.files, tmp_path / "s.zip").read_bytes(),
                          headers={"Content-Type": "application/zip"}, auth=("admin", "admin"))
        assert r.status_code == 200, r.text
    except BaseException:
        emu.stop()
        raise
    return emu


@pytest.fixture
def site(tmp_path: Path):
    """An open site (requireLogin=false): P1 private (XNAT's default) holding an archived session, PUB public."""
    emu = make_site(tmp_path, require_login=False)
    yield emu
    emu.stop()


@pytest.fixture
def client(site: XnatEmulator):
    with XnatClient(site.url, "alice", PASSWORD, backoff=0.01, backoff_max=0.05) as c:
        yield c


def auth_checks(emu: XnatEmulator) -> int:
    return emu.request_count("GET", r"/data/auth")


def test_a_valid_session_costs_no_extra_request(client: XnatClient, site: XnatEmulator) -> None:
    for _ in range(3):
        assert client.list_projects() == ["P1", "PUB"]
        assert len(client.list_experiments("P1")) == 1
    assert client.transport.login_attempts == 1 and auth_checks(site) == 0


def test_listings_after_expiry_are_whole_with_one_relogin(client: XnatClient, site: XnatEmulator) -> None:
    assert client.list_projects() == ["P1", "PUB"]
    site.expire_sessions()
    # As guest, XNAT answers 200 with only the public project: a silent partial listing, not an error.
    assert client.list_projects() == ["P1", "PUB"]
    assert client.transport.login_attempts == 2 and auth_checks(site) == 1
    site.expire_sessions()
    # As guest, the private project's experiments are a 404.
    assert [e.project for e in client.list_experiments("P1")] == ["P1"]
    assert client.transport.login_attempts == 3 and auth_checks(site) == 2
    # The jar holds the session of the last login, never one of the guest sessions XNAT offered meanwhile.
    assert site.auth.session_user(client.transport.session_id) == "alice"


def test_session_replaced_and_auth_user() -> None:
    def cookie(name: str, value: str) -> http.cookiejar.Cookie:
        return requests.cookies.create_cookie(name, value)

    assert session_replaced("JSESSIONID=A1; other=x", [cookie("JSESSIONID", "B2")])
    assert session_replaced(None, [cookie("JSESSIONID", "B2")])  # sent none, was given one
    assert not session_replaced("x=1; JSESSIONID=A1", [cookie("JSESSIONID", "A1")])
    assert not session_replaced("JSESSIONID=A1", [cookie("SESSION_EXPIRATION_TIME", "1,2")])
    assert auth_user("User 'alice' is logged in") == "alice"
    assert auth_user("User 'guest' is logged in\n") == "guest"
    assert auth_user("<html>login page</html>") is None


def test_download_after_expiry_gets_every_file_with_one_relogin(client: XnatClient, site: XnatEmulator,
                                                                 tmp_path: Path) -> None:
    exp = client.list_experiments("P1")[0]
    site.expire_sessions()
    manifest = client.download_scans("P1", exp, tmp_path / "out")
    assert len(manifest.files) == 4
    assert all((tmp_path / "out" / f["path"]).stat().st_size == f["size"] for f in manifest.files)
    assert client.transport.login_attempts == 2


def test_upload_after_expiry_is_stored_with_one_relogin(client: XnatClient, site: XnatEmulator,
                                                        tmp_path: Path) -> None:
    exp = client.list_experiments("P1")[0]
    src = tmp_path / "up"
    src.mkdir()
    (src / "a.txt").write_bytes(b"alpha")
    (src / "b.txt").write_bytes(b"beta" * 1000)
    site.expire_sessions()
    manifest = client.upload(src, client.experiment_path("P1", exp), "NOTES")
    assert sorted(f["path"] for f in manifest.files) == ["a.txt", "b.txt"]
    assert client.transport.login_attempts == 2
    stored = requests.get(f"{site.url}/data/experiments/{exp.id}/resources/NOTES/files/b.txt",
                          auth=("admin", "admin"))
    assert stored.content == b"beta" * 1000


def test_upload_into_a_public_project_after_expiry(client: XnatClient, site: XnatEmulator,
                                                   tmp_path: Path) -> None:
    """Public: the guest is refused the resource (403), and its file PUT would answer 200 and store nothing."""
    client.create_experiment("PUB", "S1", "E1")
    path = client.object_path("PUB", "S1", "E1")
    client.ensure_resource(path, "R")
    src = tmp_path / "one.txt"
    src.write_bytes(b"public data")
    site.expire_sessions()
    manifest = client.upload(src, path, "R")
    assert [f["path"] for f in manifest.files] == ["one.txt"]
    assert client.transport.login_attempts == 2


def test_concurrent_threads_share_one_check_and_one_relogin(client: XnatClient, site: XnatEmulator) -> None:
    client.list_projects()
    site.expire_sessions()
    barrier = threading.Barrier(8)

    def call(_: int) -> int:
        barrier.wait()
        return len(client.list_experiments("P1"))

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(call, range(8))) == [1] * 8
    assert client.transport.login_attempts == 2
    assert auth_checks(site) == 1


def test_a_post_refused_to_the_guest_is_resent_once(client: XnatClient, site: XnatEmulator, tmp_path: Path) -> None:
    """A 403 is XNAT refusing before it acts, so a POST refused to the guest is safe to send again."""
    study = make_study(tmp_path / "second", patient_name="S02", patient_id="S02_MR1", instances=1)
    refs = client.import_dicom(zip_files(study.files, tmp_path / "second.zip"), project="P1")
    site.expire_sessions()
    src = refs[0].uri.removeprefix("/data")
    resp = client.transport.request("POST", "/data/services/prearchive/rebuild", params={"src": src, "format": "json"},
                                  retry=False)
    assert [r["folderName"] for r in resp.json()["ResultSet"]["Result"]] == [refs[0].label]
    assert client.transport.login_attempts == 2
    assert site.request_count("POST", r"/data/services/prearchive/rebuild") == 2  # the guest's 403, then ours


def test_a_post_answered_to_the_guest_is_not_resent(client: XnatClient, site: XnatEmulator) -> None:
    """A POST the guest's session answered with anything but 403 may have done something: ambiguous, not resent."""
    client.list_projects()
    site.expire_sessions()
    with pytest.raises(XnatServerError) as info:
        client.transport.request("POST", "/data/JSESSION", retry=False)
    assert is_ambiguous(info.value) and "served the request as the guest user" in str(info.value)
    assert site.request_count("POST", r"/data/JSESSION") == 1
    assert client.transport.login_attempts == 2
    assert client.whoami() == "alice"  # the session was renewed all the same


def test_guest_again_after_the_relogin_is_an_auth_error_not_a_loop(client: XnatClient, site: XnatEmulator,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    client.list_projects()
    site.expire_sessions()
    monkeypatch.setattr(site.auth, "session_user", lambda sid: None)  # every session dies at once
    with pytest.raises(XnatAuthError) as info:
        client.list_experiments("P1")
    assert "even after logging in again" in str(info.value)
    assert client.transport.login_attempts == 2


def test_sites_that_require_a_login_keep_the_401_path(tmp_path: Path) -> None:
    emu = make_site(tmp_path, require_login=True)
    try:
        with XnatClient(emu.url, "alice", PASSWORD, backoff=0.01) as c:
            assert c.list_projects() == ["P1", "PUB"]
            emu.expire_sessions()
            assert len(c.list_experiments("P1")) == 1
            assert c.transport.login_attempts == 2
            assert auth_checks(emu) == 0  # a 401 needs no check
    finally:
        emu.stop()


def test_async_client_relogs_in_once_after_expiry(site: XnatEmulator) -> None:
    async def run() -> tuple[int, int, int]:
        async with AsyncXnatClient(ClientConfig(site.url, "alice", PASSWORD, backoff=0.01)) as a:
            before = len(await a.list_experiments("P1"))
            site.expire_sessions()
            results = await asyncio.gather(*(a.list_experiments("P1") for _ in range(4)))
            return before, sum(len(r) for r in results), a.login_attempts

    assert asyncio.run(run()) == (1, 4, 2)
    assert auth_checks(site) == 1
