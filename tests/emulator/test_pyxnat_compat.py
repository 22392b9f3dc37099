"""pyxnat 1.6.4, unchanged, against the emulator over real HTTP.

Each test does what a pyxnat user would do and asserts what that user would notice, then checks the server's
state independently with plain ``requests`` calls. pyxnat's known bugs (see the comments) are named where a
test meets them and tested around honestly: the emulator behaves as XNAT does and never imitates a bug.

Never ``print``/``repr`` a pyxnat Project, Subject, Experiment, Scan or Resource here: their reprs send
``POST /data/search`` (an xdat:bundle search, pyxnat bug: repr makes HTTP calls). pytest only renders
values that appear in a failing assert, so asserts below compare plain strings, lists and bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from xnat_provider.testing import XnatEmulator
from xnat_provider.testing.samples import Study

pyxnat = pytest.importorskip("pyxnat")  # nibabel and pandas must be installed: Interface() imports them

SESSION = "S01_MR1"
EXP_PATH = f"/data/projects/P1/subjects/S01/experiments/{SESSION}"


@pytest.fixture
def px(emulator: XnatEmulator) -> Iterator[pyxnat.Interface]:
    """A pyxnat Interface logged in as admin (construction itself sends nothing)."""
    interface = pyxnat.Interface(server=emulator.url, user="admin", password="admin")
    yield interface
    interface.disconnect()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def results(http: requests.Session, url: str) -> list[dict]:
    """A listing as the server holds it (JSON ResultSet rows)."""
    r = http.get(url, params={"format": "json"})
    assert r.status_code == 200, r.text
    return r.json()["ResultSet"]["Result"]


def import_session(emulator: XnatEmulator, http: requests.Session, study_zip: Path, dest: str) -> str:
    """Send a DICOM zip to the REST import service, as a user's upload script would."""
    with study_zip.open("rb") as f:
        r = http.post(f"{emulator.url}/data/services/import",
                      params={"dest": dest, "project": "P1", "subject": "S01", "session": SESSION},
                      data=f, headers={"Content-Type": "application/zip"})
    assert r.status_code == 200, r.text
    lines = r.text.split("\r\n")
    assert len(lines) == 2 and lines[1] == ""
    return lines[0]


def wait_ready(pre, triple: list[str], timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    status = pre.status(triple)
    while status != "READY" and time.monotonic() < deadline:
        time.sleep(0.05)
        status = pre.status(triple)
    return status


def archive_study(emulator: XnatEmulator, http: requests.Session, study_zip: Path) -> None:
    uri = import_session(emulator, http, study_zip, "/archive")
    assert uri.endswith(f"/experiments/{SESSION}")


# ---- connection ------------------------------------------------------------------------------------


def test_connect_and_list_projects(emulator: XnatEmulator, http: requests.Session, px) -> None:
    projects = px.select.projects().get()
    assert sorted(projects) == ["P1", "P2"]
    # pyxnat's first call was GET /data/JSESSION; had it failed, pyxnat would silently have switched to the
    # /REST prefix (pyxnat bug: _get_entry_point swallows the failure). It must have succeeded here.
    assert px._entry == "/data"
    assert px.select.project("P1").exists()
    assert not px.select.project("NOPE").exists()
    server = sorted(row["ID"] for row in results(http, f"{emulator.url}/data/projects"))
    assert server == sorted(projects)


def test_bad_password_is_refused(emulator: XnatEmulator, http: requests.Session) -> None:
    """A wrong password: the server answers 401 on every path; pyxnat hides it.

    pyxnat bugs met here, asserted as they are: the failed ``GET /data/JSESSION`` is swallowed and every later
    call uses the ``/REST`` prefix (``_get_entry_point``), and listings swallow the error into ``[]``
    (``CObject._call``); ``exists()`` swallows it into False. A write does raise ``DatabaseError``, but because
    the parent project "does not exist" (the swallowed 401), ``create()`` first tries to create the *project*
    and that is the refused request the user is shown.
    """
    bad = pyxnat.Interface(server=emulator.url, user="admin", password="wrong")
    assert bad.select.projects().get() == []
    assert bad._entry == "/REST"
    assert not bad.select.project("P1").exists()
    with pytest.raises(pyxnat.core.errors.DatabaseError) as err:
        bad.select.project("P1").subject("S09").insert()
    assert "/REST/projects/P1?xsiType=xnat:projectData" in str(err.value)
    assert "status code: 401" in str(err.value)
    # The server really refused (a 401 with a Basic challenge on both prefixes) and created nothing.
    for prefix in ("/data", "/REST"):
        r = requests.get(f"{emulator.url}{prefix}/projects", params={"format": "csv"}, auth=("admin", "wrong"))
        assert r.status_code == 401
        assert r.headers["WWW-Authenticate"].startswith("Basic")
    assert results(http, f"{emulator.url}/data/projects/P1/subjects") == []


# ---- creating and listing ----------------------------------------------------------------------------


def test_create_and_list_subject_experiment_scan_resource(emulator: XnatEmulator, http: requests.Session,
                                                          px) -> None:
    project = px.select.project("P1")
    subject = project.subject("S01")
    assert not subject.exists()
    subject.insert()
    assert subject.exists()
    experiment = subject.experiment(SESSION)
    experiment.create(experiments="xnat:mrSessionData", **{"xnat:mrSessionData/date": "2024-01-15"})
    scan = experiment.scan("1")
    scan.create(scans="xnat:mrScanData", **{"xnat:mrScanData/type": "T1"})
    resource = scan.resource("NIFTI")
    resource.create()  # pyxnat sends a bare PUT: format/content cannot be set this way
    assert resource.exists()

    # What the user sees: IDs (pyxnat returns IDs, not labels, from .get()).
    server_subjects = results(http, f"{emulator.url}/data/projects/P1/subjects")
    assert [s["label"] for s in server_subjects] == ["S01"]
    subject_id = server_subjects[0]["ID"]
    assert project.subjects().get() == [subject_id]
    assert subject.id() == subject_id
    assert project.subjects().get("label") == [subject_id]  # pyxnat bug: get('label') still returns IDs

    server_experiments = results(http, f"{emulator.url}/data/projects/P1/subjects/S01/experiments")
    assert [(e["label"], e["xsiType"], e["date"]) for e in server_experiments] == [
        (SESSION, "xnat:mrSessionData", "2024-01-15")]
    experiment_id = server_experiments[0]["ID"]
    assert subject.experiments().get() == [experiment_id]
    assert experiment.id() == experiment_id
    assert experiment.datatype() == "xnat:mrSessionData"
    assert experiment.attrs.get("xnat:mrSessionData/date") == "2024-01-15"

    assert experiment.scans().get() == ["1"]
    assert scan.datatype() == "xnat:mrScanData"
    assert scan.attrs.get("xnat:mrScanData/type") == "T1"
    server_scans = results(http, f"{emulator.url}/data/experiments/{experiment_id}/scans")
    assert [(s["ID"], s["type"], s["xsiType"]) for s in server_scans] == [("1", "T1", "xnat:mrScanData")]

    # pyxnat bug: resources().get() returns the numeric xnat_abstractresource_id, not the label.
    server_resources = results(http, f"{emulator.url}/data/experiments/{experiment_id}/scans/1/resources")
    assert [r["label"] for r in server_resources] == ["NIFTI"]
    assert scan.resources().get() == [server_resources[0]["xnat_abstractresource_id"]]
    assert resource.id() == server_resources[0]["xnat_abstractresource_id"]

    # The same objects addressed by ID through the top-level selectors.
    assert px.select.experiment(experiment_id).scans().get() == ["1"]

    # Re-creating an existing subject is harmless (XNAT answers 200, not 409).
    subject.insert()
    assert len(results(http, f"{emulator.url}/data/projects/P1/subjects")) == 1

    # Delete through pyxnat (DELETE ...?removeFiles=true) and check the server.
    experiment.delete()
    assert not experiment.exists()
    assert results(http, f"{emulator.url}/data/projects/P1/experiments") == []
    r = http.get(f"{emulator.url}/data/experiments/{experiment_id}", params={"format": "json"})
    assert r.status_code == 404


def test_list_imported_session(emulator: XnatEmulator, http: requests.Session, px, study_zip: Path,
                               study: Study) -> None:
    archive_study(emulator, http, study_zip)
    subject = px.select.project("P1").subject("S01")
    assert subject.exists()
    experiment = subject.experiment(SESSION)
    assert experiment.exists()
    assert experiment.datatype() == "xnat:mrSessionData"
    scans = sorted(experiment.scans().get())
    assert scans == sorted(study.series)  # one scan per series, named by series number
    server = results(http, f"{emulator.url}{EXP_PATH}/scans")
    assert sorted(s["ID"] for s in server) == scans
    assert {s["type"] for s in server} == {"T1", "T2"}
    for scan_id in scans:
        scan = experiment.scan(scan_id)
        assert scan.resource("DICOM").exists()
        names = sorted(scan.resource("DICOM").files().get())
        assert len(names) == len(study.series[scan_id])
        assert names == sorted(
            f["Name"] for f in results(http, f"{emulator.url}{EXP_PATH}/scans/{scan_id}/resources/DICOM/files"))
    # by ID at the top level too
    experiment_id = experiment.id()
    assert sorted(px.select.experiment(experiment_id).scans().get()) == scans


# ---- prearchive and archiving ------------------------------------------------------------------------


def test_prearchive_then_archive(emulator: XnatEmulator, http: requests.Session, px, study_zip: Path,
                                 study: Study) -> None:
    """Import to the prearchive, see it with ``interface.manage.prearchive``, archive it, see the experiment.

    pyxnat has no archive helper; the archive service is called through pyxnat's own ``_exec``.
    """
    imported = import_session(emulator, http, study_zip, "/prearchive")
    assert imported.startswith("/data/prearchive/projects/P1/") and imported.endswith(f"/{SESSION}")
    pre = px.manage.prearchive
    sessions = pre.get()
    assert len(sessions) == 1
    triple = sessions[0]
    assert triple[0] == "P1" and triple[2] == SESSION
    src = pre.get_uri(triple)  # the row's url: /prearchive/projects/P1/{timestamp}/S01_MR1
    assert f"/data{src}" == imported
    assert wait_ready(pre, triple) == "READY"

    scans = pre.get_scans(triple)
    scans = sorted(scans if isinstance(scans, list) else [scans])  # pyxnat: a str for one scan, else a list
    assert scans == sorted(study.series)
    resources = pre.get_resources(triple, scans[0])
    assert resources in ("DICOM", ["DICOM"])
    files = pre.get_files(triple, scans[0], "DICOM")
    files = files if isinstance(files, list) else [files]
    assert len(files) == len(study.series[scans[0]])

    # Server side: the same row.
    rows = results(http, f"{emulator.url}/data/prearchive/projects/P1")
    assert [(r["folderName"], r["status"], r["url"]) for r in rows] == [(SESSION, "READY", src)]
    assert not px.select.project("P1").subject("S01").experiment(SESSION).exists()

    answer = px._exec(f"/data/services/archive?src={src}", "POST")
    archived = answer.decode().strip()
    assert archived.endswith(f"/experiments/{SESSION}")

    experiment = px.select.project("P1").subject("S01").experiment(SESSION)
    assert experiment.exists()
    assert sorted(experiment.scans().get()) == scans
    assert pre.get() == []
    assert results(http, f"{emulator.url}/data/prearchive/projects/P1") == []
    server = results(http, f"{emulator.url}/data/projects/P1/experiments")
    assert [(e["label"], e["xsiType"]) for e in server] == [(SESSION, "xnat:mrSessionData")]


def test_prearchive_delete(emulator: XnatEmulator, http: requests.Session, px, study_zip: Path) -> None:
    """``manage.prearchive.delete`` posts to the queued delete service; the row goes away over time."""
    import_session(emulator, http, study_zip, "/prearchive")
    pre = px.manage.prearchive
    triple = pre.get()[0]
    assert wait_ready(pre, triple) == "READY"
    pre.delete(pre.get_uri(triple))
    deadline = time.monotonic() + 30
    while pre.get() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pre.get() == []
    assert results(http, f"{emulator.url}/data/prearchive/projects") == []


# ---- downloads -----------------------------------------------------------------------------------


def test_download_scans_zip_matches_originals(emulator: XnatEmulator, http: requests.Session, px,
                                             study_zip: Path, study: Study, tmp_path: Path) -> None:
    archive_study(emulator, http, study_zip)
    experiment = px.select.project("P1").subject("S01").experiment(SESSION)
    dest = tmp_path / "dl"
    dest.mkdir()
    # pyxnat bug: safe=True with extract=True raises TypeError, so the default safe=False is used.
    paths = list(experiment.scans().download(str(dest), type="ALL", extract=True))
    zip_path = dest / f"P1_S01_{SESSION}_scans_ALL.zip"
    assert zip_path.is_file()
    got: dict[str, set[str]] = {}
    for p in map(Path, paths):
        rel = p.relative_to(dest).parts  # S01_MR1/scans/{id}-{type}/resources/DICOM/files/{name}
        assert rel[0] == SESSION and rel[1] == "scans" and rel[3:6] == ("resources", "DICOM", "files")
        got.setdefault(rel[2].split("-", 1)[0], set()).add(sha(p.read_bytes()))
    want = {s: {sha(f.read_bytes()) for f in files} for s, files in study.series.items()}
    assert got == want

    # One scan by type only.
    dest2 = tmp_path / "dl2"
    dest2.mkdir()
    t1 = [Path(p) for p in experiment.scans().download(str(dest2), type="T1", extract=True)]
    assert {sha(p.read_bytes()) for p in t1} == want["1"]


def test_download_resource_and_file(emulator: XnatEmulator, http: requests.Session, px, study_zip: Path,
                                    study: Study, tmp_path: Path) -> None:
    archive_study(emulator, http, study_zip)
    scan = px.select.project("P1").subject("S01").experiment(SESSION).scan("2")
    resource = scan.resource("DICOM")
    dest = tmp_path / "res"
    dest.mkdir()
    paths = [Path(p) for p in resource.get(str(dest), extract=True)]
    assert {sha(p.read_bytes()) for p in paths} == {sha(f.read_bytes()) for f in study.series["2"]}
    assert all(p.parent == dest / "DICOM" for p in paths)

    # A single file through File.get (label-based URI), compared with the server's digest.
    name = sorted(resource.files().get())[0]
    target = tmp_path / "one.dcm"
    resource.file(name).get(str(target))
    listing = {f["Name"]: f for f in results(
        http, f"{emulator.url}{EXP_PATH}/scans/2/resources/DICOM/files")}
    assert hashlib.md5(target.read_bytes()).hexdigest() == listing[name]["digest"]
    assert str(target.stat().st_size) == listing[name]["Size"]
    assert sha(target.read_bytes()) in {sha(f.read_bytes()) for f in study.series["2"]}


# ---- uploads -------------------------------------------------------------------------------------


def test_upload_file_to_resource_and_read_back(emulator: XnatEmulator, http: requests.Session, px,
                                               tmp_path: Path) -> None:
    """``File.insert`` uploads to ``resources/<numeric id>/files/...`` (pyxnat addresses the resource by its
    xnat_abstractresource_id there, by label elsewhere); reading back uses the label path."""
    experiment = px.select.project("P1").subject("S01").experiment(SESSION)
    experiment.create(experiments="xnat:mrSessionData")
    resource = experiment.resource("NOTES")
    src = tmp_path / "report.txt"
    content = b"quality: good\n\xc3\xa9\x00binary tail"
    src.write_bytes(content)
    resource.file("sub/report.txt").insert(str(src), format="TXT", content="REPORT", tags="qc")
    assert resource.exists()
    assert resource.files().get() == ["report.txt"]  # pyxnat bug: basenames for nested files (uri_last)
    f = resource.file("sub/report.txt")
    assert f.exists()
    assert f.size() == str(len(content))
    assert f.format() == "TXT" and f.content() == "REPORT"
    back = tmp_path / "back.txt"
    f.get(str(back))
    assert back.read_bytes() == content

    # Server side: the file listing and the bytes.
    listing = results(http, f"{emulator.url}{EXP_PATH}/resources/NOTES/files")
    assert [(x["Name"], x["Size"], x["digest"], x["file_format"]) for x in listing] == [
        ("report.txt", str(len(content)), hashlib.md5(content).hexdigest(), "TXT")]
    assert "/files/sub/report.txt" in listing[0]["URI"]
    r = http.get(f"{emulator.url}{EXP_PATH}/resources/NOTES/files/sub/report.txt")
    assert r.status_code == 200 and r.content == content

    # Uploading again without overwrite: XNAT answers 200 {"duplicates": [...]} and keeps the first file.
    # pyxnat bug: File.put reports that as success, so the user is not told; the server kept the original.
    src.write_bytes(b"second version")
    resource.file("sub/report.txt").insert(str(src))
    assert http.get(f"{emulator.url}{EXP_PATH}/resources/NOTES/files/sub/report.txt").content == content
    resource.file("sub/report.txt").insert(str(src), overwrite=True)
    assert http.get(f"{emulator.url}{EXP_PATH}/resources/NOTES/files/sub/report.txt").content == b"second version"


def test_upload_directory_extracts_on_server(emulator: XnatEmulator, http: requests.Session, px,
                                             tmp_path: Path) -> None:
    """``Resource.put_dir`` zips a folder locally and posts it with ``extract=true``; the server unzips it."""
    experiment = px.select.project("P1").subject("S01").experiment(SESSION)
    experiment.create(experiments="xnat:mrSessionData")
    folder = tmp_path / "up"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_bytes(b"A" * 10)
    (folder / "sub" / "b.txt").write_bytes(b"B" * 20)
    resource = experiment.resource("NIFTI")
    resource.put_dir(str(folder))
    assert sorted(resource.files().get()) == ["a.txt", "b.txt"]
    listing = results(http, f"{emulator.url}{EXP_PATH}/resources/NIFTI/files")
    uris = sorted(x["URI"].split("/files/", 1)[1] for x in listing)
    assert uris == ["a.txt", "sub/b.txt"]  # extracted, the zip itself not kept
    r = http.get(f"{emulator.url}{EXP_PATH}/resources/NIFTI/files", params={"format": "zip"})
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        contents = {n.split("/files/", 1)[1]: zf.read(n) for n in zf.namelist()}
    assert contents == {"a.txt": b"A" * 10, "sub/b.txt": b"B" * 20}


# ---- custom fields -------------------------------------------------------------------------------


def test_custom_field_set_and_get(emulator: XnatEmulator, http: requests.Session, px) -> None:
    subject = px.select.project("P1").subject("S01")
    experiment = subject.experiment(SESSION)
    experiment.create(experiments="xnat:mrSessionData")
    xpath = "xnat:mrSessionData/fields/field[name=site]/field"
    experiment.attrs.set(xpath, "Site A")
    assert experiment.attrs.get(xpath) == "Site A"
    experiment.attrs.mset({xpath: "Site B", "xnat:mrSessionData/fields/field[name=scanner]/field": "3T"})
    assert experiment.attrs.mget([xpath, "xnat:mrSessionData/fields/field[name=scanner]/field"]) == [
        "Site B", "3T"]
    # An unset field reads back empty.
    assert experiment.attrs.get("xnat:mrSessionData/fields/field[name=unset]/field") == ""

    subject.attrs.set("xnat:subjectData/fields/field[name=cohort]/field", "controls")
    assert subject.attrs.get("xnat:subjectData/fields/field[name=cohort]/field") == "controls"

    # Server side: the object JSON carries a fields/field child.
    r = http.get(f"{emulator.url}{EXP_PATH}", params={"format": "json"})
    assert r.status_code == 200
    item = r.json()["items"][0]
    children = {c["field"]: c["items"] for c in item["children"]}
    assert {f["data_fields"]["name"]: f["data_fields"]["field"] for f in children["fields/field"]} == {
        "site": "Site B", "scanner": "3T"}
    r = http.get(f"{emulator.url}/data/projects/P1/subjects/S01", params={"format": "json"})
    children = {c["field"]: c["items"] for c in r.json()["items"][0]["children"]}
    assert [f["data_fields"] for f in children["fields/field"]] == [{"name": "cohort", "field": "controls"}]


# ---- alias tokens --------------------------------------------------------------------------------


def test_alias_token_as_user_and_password(emulator: XnatEmulator, http: requests.Session) -> None:
    r = http.get(f"{emulator.url}/data/services/tokens/issue")
    assert r.status_code == 200
    token = r.json()
    interface = pyxnat.Interface(server=emulator.url, user=token["alias"], password=token["secret"])
    try:
        assert sorted(interface.select.projects().get()) == ["P1", "P2"]
        assert interface._entry == "/data"
        interface.select.project("P1").subject("TOK1").insert()
        assert interface.select.project("P1").subject("TOK1").exists()
    finally:
        interface.disconnect()
    server = results(http, f"{emulator.url}/data/projects/P1/subjects")
    assert [(s["label"], s["insert_user"]) for s in server] == [("TOK1", "admin")]  # acted as the token's user

    # An invalidated token no longer works: pyxnat swallows the 401 into [] (CObject._call bug).
    r = http.get(f"{emulator.url}/data/services/tokens/invalidate/{token['alias']}")
    assert r.status_code == 200
    stale = pyxnat.Interface(server=emulator.url, user=token["alias"], password=token["secret"])
    assert stale.select.projects().get() == []
    r = requests.get(f"{emulator.url}/data/projects", params={"format": "csv"},
                     auth=(token["alias"], token["secret"]))
    assert r.status_code == 401


def test_disconnect_and_context_manager(emulator: XnatEmulator, http: requests.Session) -> None:
    with pyxnat.Interface(server=emulator.url, user="admin", password="admin") as interface:
        assert sorted(interface.select.projects().get()) == ["P1", "P2"]
        interface.disconnect()  # DELETE /data/JSESSION; the Interface stays usable with basic auth
        assert sorted(interface.select.projects().get()) == ["P1", "P2"]
    r = http.get(f"{emulator.url}/data/auth")
    assert r.status_code == 200


def test_version_falls_back_to_build_info(emulator: XnatEmulator, px) -> None:
    """XNAT 1.8 answers 404 on /data/version; pyxnat then reads /xapi/siteConfig/buildInfo."""
    info = px.version()
    assert info["version"] == emulator.version
    assert json.loads(requests.get(f"{emulator.url}/xapi/siteConfig/buildInfo", auth=("admin", "admin")).text)[
        "version"] == emulator.version


def test_experiments_across_project(emulator: XnatEmulator, http: requests.Session, px, study_zip: Path,
                                    study: Study) -> None:
    """``project.experiment(x)`` and ``interface.array.experiments`` query ``/data/experiments`` with
    ``xsiType=xnat:subjectAssessorData`` (a supertype), an ``ID`` filter and the
    ``xnat:subjectAssessorData/subject_id`` column, which XNAT answers under its shortcut name ``subject_ID``."""
    archive_study(emulator, http, study_zip)
    other = px.select.project("P1").subject("S02").experiment("S02_CT1")
    other.create(experiments="xnat:ctSessionData")
    server = {e["label"]: e for e in results(http, f"{emulator.url}/data/projects/P1/experiments")}
    mr, ct = server[SESSION], server["S02_CT1"]

    rows = px.array.experiments(project_id="P1").data
    assert sorted((r["ID"], r["subject_ID"]) for r in rows) == sorted(
        (e["ID"], e["subject_ID"]) for e in (mr, ct))
    assert [r["ID"] for r in px.array.experiments(experiment_id=ct["ID"]).data] == [ct["ID"]]
    assert [r["ID"] for r in px.array.mrsessions().data] == [mr["ID"]]
    assert [r["ID"] for r in px.array.experiments(experiment_type="xnat:ctSessionData").data] == [ct["ID"]]

    # By ID (pyxnat resolves the subject through /data/experiments) and by label (path used as is).
    for name in (mr["ID"], SESSION):
        experiment = px.select.project("P1").experiment(name)
        assert experiment.exists()
        assert sorted(experiment.scans().get()) == sorted(study.series)


def test_failed_download_is_saved_as_data(emulator: XnatEmulator, http: requests.Session, px,
                                          tmp_path: Path) -> None:
    """pyxnat bug (landscape: pyxnat#77): ``File.get`` never checks the HTTP status, so when the server answers
    an error the error page is written into the destination file and no exception is raised. The emulator answers
    as XNAT does (a 5xx with an HTML status page); the test shows what the user gets, then that a retry works."""
    experiment = px.select.project("P1").subject("S01").experiment(SESSION)
    experiment.create(experiments="xnat:mrSessionData")
    src = tmp_path / "data.bin"
    src.write_bytes(bytes(range(256)) * 4)
    resource = experiment.resource("RAW")
    resource.file("data.bin").insert(str(src))
    emulator.fail_next("GET", r"/resources/RAW/files/data\.bin$", status=503, message="Service busy")
    target = tmp_path / "out.bin"
    resource.file("data.bin").get(str(target))  # no exception
    saved = target.read_bytes()
    assert saved != src.read_bytes()
    assert saved.startswith(b"<html>") and b"Service busy" in saved
    resource.file("data.bin").get(str(target))
    assert target.read_bytes() == src.read_bytes()
    r = http.get(f"{emulator.url}{EXP_PATH}/resources/RAW/files/data.bin")
    assert r.content == src.read_bytes()
