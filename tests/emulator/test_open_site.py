"""An open site (XNAT's ``requireLogin=false``): no 401, the guest user instead, and what the guest may see.

From XNAT's source: XnatSecureGuard lets a request without valid credentials through when login is not required
(``XnatSecureGuard.java:108``), Spring Security makes it the ``guest`` user, XnatExpiredPasswordFilter starts a
new HTTP session for it (a new ``JSESSIONID``), and every resource looks objects up as that user: a private
project's data does not exist for it, a public project's data is readable and not writable.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from xnat_provider.client.protocol import xnat_message
from xnat_provider.testing import XnatEmulator
from xnat_provider.testing.cli import build_parser

EXP = "/data/projects/{p}/subjects/S1/experiments/E_{p}"


@pytest.fixture
def site(tmp_path: Path) -> Iterator[XnatEmulator]:
    """An open site with a private (P1, XNAT's default), a protected and a public project, one session each,
    each session with a resource holding one file."""
    with XnatEmulator(data_dir=tmp_path / "x", projects=["P1"], require_login=False) as emu:
        emu.add_project("PROT", accessibility="protected")
        emu.add_project("PUB", accessibility="public")
        admin = requests.Session()
        admin.auth = ("admin", "admin")
        for p in ("P1", "PROT", "PUB"):
            exp = emu.url + EXP.format(p=p)
            assert admin.put(exp, params={"xsiType": "xnat:mrSessionData"}).status_code == 201
            assert admin.put(exp + "/resources/R").status_code == 200
            assert admin.put(exp + "/resources/R/files/a.txt", data=b"data").status_code == 200
        yield emu


def rows(resp: requests.Response) -> list[dict]:
    assert resp.status_code == 200, resp.text
    return resp.json()["ResultSet"]["Result"]


def test_no_credentials_is_the_guest_user_in_a_new_session_not_a_401(site: XnatEmulator) -> None:
    guest = requests.Session()
    r = guest.get(site.url + "/data/auth")
    assert r.status_code == 200 and r.text == "User 'guest' is logged in"
    first = r.cookies.get("JSESSIONID")
    assert first and "SESSION_EXPIRATION_TIME" in r.cookies
    # The cookie keeps the guest session: no new one on the next request.
    r = guest.get(site.url + "/data/auth")
    assert r.text == "User 'guest' is logged in" and "JSESSIONID" not in r.cookies
    # Wrong credentials are still a 401 (Spring's basic-auth filter answers before the guard).
    assert requests.get(site.url + "/data/auth", auth=("admin", "wrong")).status_code == 401


def test_an_expired_session_continues_as_guest_with_a_new_cookie(site: XnatEmulator) -> None:
    s = requests.Session()
    sid = s.post(site.url + "/data/services/auth", data={"username": "admin", "password": "admin"}).text
    assert s.get(site.url + "/data/auth").text == "User 'admin' is logged in"
    site.expire_sessions()
    r = s.get(site.url + "/data/projects/P1/subjects/S1/experiments/E_P1?format=json")
    assert r.status_code == 404  # the guest cannot read the private project: to it, the session does not exist
    new = r.cookies.get("JSESSIONID")
    assert new and new != sid  # XNAT started a new session for the request
    assert s.get(site.url + "/data/auth").text == "User 'guest' is logged in"


def test_with_login_required_an_expired_session_is_still_a_401(tmp_path: Path) -> None:
    with XnatEmulator(data_dir=tmp_path / "x") as emu:
        s = requests.Session()
        s.post(emu.url + "/data/services/auth", data={"username": "admin", "password": "admin"})
        emu.expire_sessions()
        r = s.get(emu.url + "/data/projects")
        assert r.status_code == 401 and "WWW-Authenticate" in r.headers


def test_guest_listings_hold_only_what_the_guest_may_read(site: XnatEmulator) -> None:
    g = requests.Session()
    assert [r["ID"] for r in rows(g.get(site.url + "/data/projects?format=json"))] == ["PROT", "PUB"]
    assert [r["project"] for r in rows(g.get(site.url + "/data/experiments?format=json"))] == ["PUB"]
    assert [r["project"] for r in rows(g.get(site.url + "/data/subjects?format=json"))] == ["PUB"]
    assert len(rows(g.get(site.url + "/data/projects/PUB/experiments?format=json"))) == 1
    assert rows(g.get(site.url + "/data/projects/PROT/experiments?format=json")) == []  # the project, no data
    assert g.get(site.url + "/data/projects/P1/experiments?format=json").status_code == 404
    prot_subjects = g.get(site.url + "/data/projects/PROT/subjects?format=json")
    assert prot_subjects.status_code == 403
    assert xnat_message(prot_subjects.text) == "Unable to read subjects for Project: PROT"
    assert g.get(site.url + "/data/projects/P1/subjects?format=json").status_code == 404
    # The prearchive: the guest edits no project, so its listing is empty; a private project's is refused.
    assert rows(g.get(site.url + "/data/prearchive/projects?format=json")) == []
    p1 = g.get(site.url + "/data/prearchive/projects/P1?format=json")
    assert p1.status_code == 403
    assert xnat_message(p1.text) == "The current user does not have access to the requested project: P1"


def test_guest_reads_objects_and_files_of_public_projects_only(site: XnatEmulator) -> None:
    g = requests.Session()
    for p, project_visible, data_visible in (("P1", False, False), ("PROT", True, False), ("PUB", True, True)):
        exp = site.url + EXP.format(p=p)
        assert g.get(f"{site.url}/data/projects/{p}?format=json").status_code == (200 if project_visible else 404)
        assert g.get(exp + "?format=json").status_code == (200 if data_visible else 404), p
        assert g.get(exp + "/resources/R/files?format=json").status_code == (200 if data_visible else 404), p
        f = g.get(exp + "/resources/R/files/a.txt")
        assert (f.status_code, f.content if data_visible else None) == ((200, b"data") if data_visible else (404, None))
        exp_id = requests.get(exp + "?format=json", auth=("admin", "admin")).json()["items"][0]["data_fields"]["ID"]
        by_id = g.get(f"{site.url}/data/experiments/{exp_id}/resources/R/files/a.txt")
        assert by_id.status_code == (200 if data_visible else 404), p


def test_guest_writes_are_refused_and_a_file_upload_answers_200_storing_nothing(site: XnatEmulator) -> None:
    g = requests.Session()
    admin = ("admin", "admin")
    pub = site.url + EXP.format(p="PUB")
    r = g.put(pub + "/resources/NEW")
    assert r.status_code == 403
    assert xnat_message(r.text) == "User account doesn't have permission to modify this session."
    assert g.put(site.url + "/data/projects/PUB/subjects/S2").status_code == 403
    assert g.put(site.url + "/data/projects/NEWPROJ").status_code == 403
    assert g.delete(pub + "/resources/R/files/a.txt").status_code == 403
    # FileList.handlePost works only if the user may edit, and sets no status otherwise: Restlet's 200, nothing kept.
    r = g.put(pub + "/resources/R/files/b.txt", data=b"guest bytes")
    assert r.status_code == 200 and r.text == ""
    names = [f["Name"] for f in rows(requests.get(pub + "/resources/R/files?format=json", auth=admin))]
    assert names == ["a.txt"]
    # In a private project the guest finds nothing to write to.
    p1 = site.url + EXP.format(p="P1")
    assert g.put(p1 + "/resources/R/files/b.txt", data=b"x").status_code == 404
    assert g.put(p1 + "/resources/NEW").status_code == 404
    assert g.post(site.url + "/data/services/prearchive/rebuild", params={"src": "/prearchive/projects/P1/x/y"}
                  ).status_code == 403


def test_project_accessibility_resource(site: XnatEmulator) -> None:
    admin = requests.Session()
    admin.auth = ("admin", "admin")
    assert admin.get(site.url + "/data/projects/P1/accessibility").text == "private"
    assert admin.put(site.url + "/data/projects/P1/accessibility/public").text == "public"
    assert requests.get(site.url + "/data/projects/P1/subjects/S1/experiments/E_P1?format=json").status_code == 200
    assert admin.put(site.url + "/data/projects/P1/accessibility/nonsense").status_code == 400
    assert admin.put(site.url + "/data/projects/P1/accessibility").status_code == 400
    assert admin.put(site.url + "/data/projects/P1", params={"accessibility": "private"}).status_code == 200
    assert requests.get(site.url + "/data/projects/P1?format=json").status_code == 404
    assert requests.put(site.url + "/data/projects/PUB/accessibility/private").status_code == 403  # the guest
    site.add_user("bob", "bob")
    assert requests.put(site.url + "/data/projects/PUB/accessibility/private", auth=("bob", "bob")).status_code == 403


def test_a_data_folder_from_before_accessibility_opens_with_private_projects(tmp_path: Path) -> None:
    folder = tmp_path / "old"
    folder.mkdir()
    with sqlite3.connect(folder / "emulator.sqlite3") as db:
        db.execute("CREATE TABLE projects (id TEXT PRIMARY KEY, secondary_id TEXT, name TEXT, description TEXT, "
                   "pi_firstname TEXT, pi_lastname TEXT, insert_date TEXT, insert_user TEXT, "
                   "prearchive_code INTEGER NOT NULL DEFAULT 0)")
        db.execute("INSERT INTO projects(id, secondary_id, name) VALUES('OLD', 'OLD', 'OLD')")
    with XnatEmulator(data_dir=folder, projects=[], require_login=False) as emu:
        assert requests.get(emu.url + "/data/projects/OLD/accessibility", auth=("admin", "admin")).text == "private"
        assert requests.get(emu.url + "/data/projects/OLD?format=json").status_code == 404


def test_cli_flag_opens_the_site() -> None:
    assert build_parser().parse_args([]).require_login is True
    assert build_parser().parse_args(["--no-require-login"]).require_login is False
