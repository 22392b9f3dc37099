"""Prearchive resources, the archive service and the queued move/rebuild/delete services, over real HTTP.

Reference: ``xnat-rest.md`` §3 (listings, statuses, one session, ``/data/services/archive``, batch services).
Every test checks the listings and the files under ``emulator.data_dir``, not only status codes.
"""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
import requests
from lxml import etree

from tests.support import wait_for
from xnat_provider.testing import XnatEmulator
from xnat_provider.testing.clock import ManualClock
from xnat_provider.testing.samples import Study, make_study, zip_files

IMPORT = "/data/services/import"
ARCHIVE = "/data/services/archive"
ROW_KEYS = {"project", "timestamp", "lastmod", "uploaded", "scan_date", "scan_time", "subject", "folderName",
            "name", "tag", "status", "url", "autoarchive", "prevent_anon", "prevent_auto_commit", "SOURCE", "VISIT",
            "PROTOCOL", "TIMEZONE"}
XE = "{http://nrg.wustl.edu/xe}"
XNAT = "{http://nrg.wustl.edu/xnat}"


# ---- helpers -------------------------------------------------------------------------------------------

def import_zip(http: requests.Session, emu: XnatEmulator, body: Path, **params: str) -> str:
    """Import and return the single prearchive URI (``/data/prearchive/projects/P/TS/F``)."""
    params.setdefault("dest", "/prearchive")
    if not params["dest"]:
        del params["dest"]  # no dest: the session stays RECEIVING until idle
    r = http.post(emu.url + IMPORT, params=params, data=body.read_bytes(),
                  headers={"Content-Type": "application/zip"}, timeout=30)
    assert r.status_code == 200, r.text
    [uri] = r.text.split("\r\n")[:-1]
    return uri


def rows(http: requests.Session, emu: XnatEmulator, project: str | None = None, **params: str) -> list[dict]:
    url = emu.url + "/data/prearchive/projects" + (f"/{project}" if project else "")
    r = http.get(url, params={"format": "json", **params}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["ResultSet"]["Result"]


def row_of(http: requests.Session, emu: XnatEmulator, uri: str) -> dict | None:
    found = [r for r in rows(http, emu) if "/data" + r["url"] == uri]
    return found[0] if found else None


def status_of(http: requests.Session, emu: XnatEmulator, uri: str) -> str | None:
    row = row_of(http, emu, uri)
    return row["status"] if row else None


def parts(uri: str) -> tuple[str, str, str]:
    project, ts, folder = uri.removeprefix("/data/prearchive/projects/").split("/")
    return project, ts, folder


def pdir(emu: XnatEmulator, uri: str) -> Path:
    project, ts, folder = parts(uri)
    return emu.data_dir / "prearchive" / project / ts / folder


def adir(emu: XnatEmulator, project: str, label: str) -> Path:
    return emu.data_dir / "archive" / project / "arc001" / label


def dcm_names(folder: Path) -> dict[str, list[str]]:
    if not (folder / "SCANS").is_dir():
        return {}
    return {d.name: sorted(f.name for f in (d / "DICOM").iterdir() if not f.name.startswith("."))
            for d in sorted((folder / "SCANS").iterdir())}


def sop_names(files: list[Path]) -> list[str]:
    return sorted(f"{pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID}.dcm" for f in files)


def experiments(http: requests.Session, emu: XnatEmulator, project: str) -> list[dict]:
    r = http.get(emu.url + f"/data/projects/{project}/experiments", params={"format": "json"}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["ResultSet"]["Result"]


def archive(http: requests.Session, emu: XnatEmulator, src: str, **params: str) -> requests.Response:
    return http.post(emu.url + ARCHIVE, params={"src": src, **params}, allow_redirects=False, timeout=30)


def xml_rows(text: bytes) -> list[dict]:
    """Rows of an XNAT XML ResultSet (``<results><columns>...<rows><row><cell>``)."""
    root = etree.fromstring(text)
    assert root.tag == XE + "ResultSet"
    cols = [c.text for c in root.iter(XE + "column")]
    return [dict(zip(cols, [c.text or "" for c in row.iter(XE + "cell")], strict=True))
            for row in root.iter(XE + "row")]


@pytest.fixture
def ready(emulator, http, study_zip) -> str:
    """A READY session of ``study`` in P1 (dest given, so built at once)."""
    uri = import_zip(http, emulator, study_zip, dest="/prearchive/projects/P1")
    assert status_of(http, emulator, uri) == "READY"
    return uri


# ---- listings ------------------------------------------------------------------------------------------
def test_project_listing_keys_are_xnat_keys_all_strings(emulator, http, study, ready):
    r = http.get(emulator.url + "/data/prearchive/projects/P1", timeout=10)  # JSON is the default
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    rs = r.json()["ResultSet"]
    assert rs["totalRecords"] == "1"
    [row] = rs["Result"]
    assert set(row) == ROW_KEYS
    assert all(isinstance(v, str) for v in row.values())
    project, ts, folder = parts(ready)
    assert row["url"] == f"/prearchive/projects/{project}/{ts}/{folder}"  # no /data
    assert (row["project"], row["timestamp"], row["folderName"], row["name"]) == ("P1", ts, folder, "S01_MR1")
    assert row["tag"] == study.study_uid and row["status"] == "READY" and row["autoarchive"] == "Manual"
    assert row["prevent_anon"] == "false"


def test_listing_all_projects_comma_list_and_tag_filter(emulator, http, tmp_path):
    a = make_study(tmp_path / "a", patient_name="SA", patient_id="SA_MR1")
    b = make_study(tmp_path / "b", patient_name="SB", patient_id="SB_MR1")
    ua = import_zip(http, emulator, zip_files(a.files, tmp_path / "a.zip"), dest="/prearchive/projects/P1")
    ub = import_zip(http, emulator, zip_files(b.files, tmp_path / "b.zip"), dest="/prearchive/projects/P2")
    assert {r["url"] for r in rows(http, emulator)} == {ua[5:], ub[5:]}
    assert [r["tag"] for r in rows(http, emulator, "P2")] == [b.study_uid]
    assert {r["project"] for r in rows(http, emulator, "P1,P2")} == {"P1", "P2"}
    assert [r["name"] for r in rows(http, emulator, tag=a.study_uid)] == ["SA_MR1"]
    assert rows(http, emulator, "P2", tag=a.study_uid) == []
    assert rows(http, emulator, tag="1.2.3.4.5.6.7") == []
    # CSV and XML listings carry the same rows.
    csv = http.get(emulator.url + "/data/prearchive/projects/P1", params={"format": "csv"}, timeout=10)
    assert csv.headers["Content-Type"].startswith("text/csv") and "SA_MR1" in csv.text
    xml = http.get(emulator.url + "/data/prearchive/projects/P1", params={"format": "xml"}, timeout=10)
    assert [r["name"] for r in xml_rows(xml.content)] == ["SA_MR1"]


def test_listing_unknown_project_is_404(emulator, http):
    r = http.get(emulator.url + "/data/prearchive/projects/NOPE", params={"format": "json"}, timeout=10)
    assert r.status_code == 404 and "<h3>" in r.text


# ---- one session ---------------------------------------------------------------------------------------
def test_session_as_json_xml_and_zip(emulator, http, study, ready):
    j = http.get(emulator.url + ready, params={"format": "json"}, timeout=10)
    assert j.status_code == 200
    [row] = j.json()["ResultSet"]["Result"]
    assert "/data" + row["url"] == ready and all(isinstance(v, str) for v in row.values())

    x = http.get(emulator.url + ready, timeout=10)  # XML is the default
    assert x.status_code == 200 and x.headers["Content-Type"].startswith("text/xml")
    doc = etree.fromstring(x.content)
    assert doc.tag == XNAT + "MRSession"
    assert doc.get("project") == "P1" and doc.get("label") == "S01_MR1" and doc.get("UID") == study.study_uid
    scans = doc.findall(f"{XNAT}scans/{XNAT}scan")
    assert [s.get("ID") for s in scans] == ["1", "2"]
    assert [s.findtext(f"{XNAT}series_description") for s in scans] == ["T1", "T2"]

    z = http.get(emulator.url + ready, params={"format": "zip"}, timeout=10)
    assert z.status_code == 200 and z.headers["Content-Type"] == "application/zip"
    folder = parts(ready)[2]
    with zipfile.ZipFile(io.BytesIO(z.content)) as zf:
        names = sorted(zf.namelist())
        assert all(n.startswith(f"{folder}/SCANS/") for n in names)
        assert len(names) == len(study.files)
        by_uid = {f"{pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID}.dcm": f for f in study.files}
        for n in names:
            assert zf.read(n) == by_uid[n.rsplit("/", 1)[1]].read_bytes()


def test_unknown_session_is_404(emulator, http, ready):
    project, ts, _ = parts(ready)
    r = http.get(emulator.url + f"/data/prearchive/projects/{project}/{ts}/NOPE", params={"format": "json"},
                 timeout=10)
    assert r.status_code == 404


def test_scans_resources_files_and_file_get(emulator, http, study, ready):
    r = http.get(emulator.url + ready + "/scans", params={"format": "json"}, timeout=10).json()
    assert [(s["ID"], s["xsiType"], s["series_description"]) for s in r["ResultSet"]["Result"]] == \
        [("1", "xnat:mrScanData", "T1"), ("2", "xnat:mrScanData", "T2")]

    res = http.get(emulator.url + ready + "/scans/2/resources", params={"format": "json"}, timeout=10).json()
    [dicom] = res["ResultSet"]["Result"]
    sizes = [f.stat().st_size for f in study.series["2"]]
    assert dicom == {"label": "DICOM", "file_count": "3", "file_size": str(sum(sizes))}

    files_path = ready + "/scans/2/resources/DICOM/files"
    listing = http.get(emulator.url + files_path, params={"format": "json"}, timeout=10).json()["ResultSet"]
    files = listing["Result"]
    assert sorted(f["Name"] for f in files) == sop_names(study.series["2"])
    assert all(f["URI"] == f"{files_path}/{f['Name']}" for f in files)
    by_uid = {f"{pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID}.dcm": p for p in study.series["2"]}
    for f in files:
        assert f["Size"] == str(by_uid[f["Name"]].stat().st_size)
        got = http.get(emulator.url + f["URI"], timeout=10)
        assert got.status_code == 200 and got.content == by_uid[f["Name"]].read_bytes()
        assert int(got.headers["Content-Length"]) == by_uid[f["Name"]].stat().st_size

    assert http.get(emulator.url + ready + "/scans/99/resources", params={"format": "json"},
                    timeout=10).status_code == 404
    assert http.get(emulator.url + files_path + "/nope.dcm", timeout=10).status_code == 404


def test_sub_resources_need_a_built_session(emulator, http, tmp_path):
    s = make_study(tmp_path / "d", comments="Project: P1")
    # prevent_auto_commit: the clock leaves it RECEIVING however slow this machine is
    uri = import_zip(http, emulator, zip_files(s.files, tmp_path / "s.zip"), dest="", prevent_auto_commit="true")
    assert status_of(http, emulator, uri) == "RECEIVING"
    assert http.get(emulator.url + uri + "/scans", params={"format": "json"}, timeout=10).status_code == 404


def test_action_build_builds_a_receiving_session_now(emulator, http, tmp_path):
    s = make_study(tmp_path / "d", comments="Project: P1")
    # prevent_auto_commit: the clock leaves it RECEIVING however slow this machine is
    uri = import_zip(http, emulator, zip_files(s.files, tmp_path / "s.zip"), dest="", prevent_auto_commit="true")
    assert status_of(http, emulator, uri) == "RECEIVING"
    r = http.post(emulator.url + uri, params={"action": "build"}, timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/uri-list")
    assert r.text == uri + "\r\n"
    assert status_of(http, emulator, uri) == "READY"
    assert http.get(emulator.url + uri + "/scans", params={"format": "json"}, timeout=10).status_code == 200


def test_unknown_action_is_400(emulator, http, ready):
    r = http.post(emulator.url + ready, params={"action": "explode"}, timeout=10)
    assert r.status_code == 400
    assert status_of(http, emulator, ready) == "READY"


def test_delete_session(emulator, http, ready):
    folder = pdir(emulator, ready)
    assert folder.is_dir()
    r = http.delete(emulator.url + ready, timeout=10)
    assert r.status_code == 200
    assert rows(http, emulator) == []
    assert not folder.exists()
    assert http.delete(emulator.url + ready, timeout=10).status_code == 404


# ---- the archive service -------------------------------------------------------------------------------
def test_archive_success(emulator, http, study, ready):
    r = archive(http, emulator, ready)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/uri-list")
    assert r.text == "/data/archive/projects/P1/subjects/S01/experiments/S01_MR1\r\n"
    assert rows(http, emulator) == []
    assert not pdir(emulator, ready).exists()
    [exp] = experiments(http, emulator, "P1")
    assert exp["label"] == "S01_MR1"
    assert dcm_names(adir(emulator, "P1", "S01_MR1")) == {"1": sop_names(study.series["1"]),
                                                           "2": sop_names(study.series["2"])}
    # The archived files are the uploaded bytes.
    url = emulator.url + "/data/projects/P1/subjects/S01/experiments/S01_MR1/scans/1/resources/DICOM/files"
    listed = http.get(url, params={"format": "json"}, timeout=10).json()["ResultSet"]["Result"]
    assert sorted(f["Name"] for f in listed) == sop_names(study.series["1"])


def test_archive_with_data_prefix_and_body_params(emulator, http, ready):
    r = http.post(emulator.url + ARCHIVE, data={"src": ready}, timeout=30)  # src in a form body, /data prefix
    assert r.status_code == 200, r.text
    assert r.text == "/data/archive/projects/P1/subjects/S01/experiments/S01_MR1\r\n"


def _second_copy(http, emulator, study_zip) -> str:
    uri = import_zip(http, emulator, study_zip, dest="/prearchive/projects/P1")
    assert status_of(http, emulator, uri) == "READY"
    return uri


def test_archive_conflict_without_overwrite_is_500_failed_and_row_conflict(emulator, http, study, study_zip,
                                                                           ready):
    assert archive(http, emulator, ready).status_code == 200
    again = _second_copy(http, emulator, study_zip)
    r = archive(http, emulator, again)
    assert r.status_code == 500
    assert "FAILED:" in r.text and "<h3>" in r.text
    row = row_of(http, emulator, again)
    assert row is not None and row["status"] == "CONFLICT"
    # Nothing moved: the prearchive copy is intact and the archive still has one session.
    assert sum(len(v) for v in dcm_names(pdir(emulator, again)).values()) == len(study.files)
    assert [e["label"] for e in experiments(http, emulator, "P1")] == ["S01_MR1"]


def test_archive_conflict_as_409_on_older_servers(tmp_path, study_zip):
    with XnatEmulator(data_dir=tmp_path / "x409", projects=["P1"], receiving_idle=0.5, build_seconds=0.2,
                      queue_seconds=0.2, archive_conflict_status=409) as emu, requests.Session() as s:
        s.auth = ("admin", "admin")
        first = import_zip(s, emu, study_zip, dest="/prearchive/projects/P1")
        assert archive(s, emu, first).status_code == 200
        second = import_zip(s, emu, study_zip, dest="/prearchive/projects/P1")
        r = archive(s, emu, second)
        assert r.status_code == 409 and "<h3>" in r.text
        assert status_of(s, emu, second) == "CONFLICT"
        assert pdir(emu, second).is_dir()


def test_archive_overwrite_append_merges(emulator, http, tmp_path):
    uid = "1.2.826.0.1.3680043.8.498.4242"
    first = make_study(tmp_path / "a", study_uid=uid, series=((1, "T1"), (2, "T2")))
    more = make_study(tmp_path / "b", study_uid=uid, series=((3, "FLAIR"),))
    u1 = import_zip(http, emulator, zip_files(first.files, tmp_path / "a.zip"), dest="/prearchive/projects/P1")
    assert archive(http, emulator, u1).status_code == 200
    u2 = import_zip(http, emulator, zip_files(more.files, tmp_path / "b.zip"), dest="/prearchive/projects/P1")
    r = archive(http, emulator, u2, overwrite="append")
    assert r.status_code == 200, r.text
    assert r.text == "/data/archive/projects/P1/subjects/S01/experiments/S01_MR1\r\n"
    assert len(experiments(http, emulator, "P1")) == 1
    scans = http.get(emulator.url + "/data/projects/P1/subjects/S01/experiments/S01_MR1/scans",
                     params={"format": "json"}, timeout=10).json()["ResultSet"]["Result"]
    assert sorted(s["ID"] for s in scans) == ["1", "2", "3"]
    assert sorted(dcm_names(adir(emulator, "P1", "S01_MR1"))) == ["1", "2", "3"]
    assert rows(http, emulator) == []


def test_conflict_row_archives_with_append(emulator, http, study_zip, ready):
    assert archive(http, emulator, ready).status_code == 200
    again = _second_copy(http, emulator, study_zip)
    assert archive(http, emulator, again).status_code == 500
    assert status_of(http, emulator, again) == "CONFLICT"
    r = archive(http, emulator, again, overwrite="append")
    assert r.status_code == 200, r.text
    assert row_of(http, emulator, again) is None
    assert [e["label"] for e in experiments(http, emulator, "P1")] == ["S01_MR1"]


def test_archive_relabels_project_subject_and_session(emulator, http, ready):
    r = archive(http, emulator, ready, project="P2", subject="NEWSUBJ", session="NEWSUBJ_MR9")
    assert r.status_code == 200, r.text
    assert r.text == "/data/archive/projects/P2/subjects/NEWSUBJ/experiments/NEWSUBJ_MR9\r\n"
    assert experiments(http, emulator, "P1") == []
    assert [e["label"] for e in experiments(http, emulator, "P2")] == ["NEWSUBJ_MR9"]
    subjects = http.get(emulator.url + "/data/projects/P2/subjects", params={"format": "json"},
                        timeout=10).json()["ResultSet"]["Result"]
    assert [s["label"] for s in subjects] == ["NEWSUBJ"]
    assert sorted(dcm_names(adir(emulator, "P2", "NEWSUBJ_MR9"))) == ["1", "2"]
    assert not adir(emulator, "P1", "S01_MR1").exists()


def test_archive_relabel_with_upper_case_params_and_dest(emulator, http, tmp_path, study_zip):
    u1 = import_zip(http, emulator, study_zip, dest="/prearchive/projects/P1")
    r = archive(http, emulator, u1, SUBJECT_ID="UP", EXPT_LABEL="UP_MR")
    assert r.text == "/data/archive/projects/P1/subjects/UP/experiments/UP_MR\r\n"
    s = make_study(tmp_path / "d", patient_name="X", patient_id="X_MR")
    u2 = import_zip(http, emulator, zip_files(s.files, tmp_path / "s.zip"), dest="/prearchive/projects/P1")
    r = archive(http, emulator, u2, dest="/archive/projects/P2/subjects/D/experiments/D_MR")
    assert r.status_code == 200, r.text
    assert r.text == "/data/archive/projects/P2/subjects/D/experiments/D_MR\r\n"
    assert adir(emulator, "P2", "D_MR").is_dir()


def test_archive_redirect_true_is_303(emulator, http, ready):
    r = archive(http, emulator, ready, redirect="true")
    assert r.status_code == 303
    assert r.headers["Location"].endswith("/data/archive/projects/P1/subjects/S01/experiments/S01_MR1")
    assert [e["label"] for e in experiments(http, emulator, "P1")] == ["S01_MR1"]
    assert rows(http, emulator) == []


def test_archive_unknown_src_is_404(emulator, http, ready):
    project, ts, _ = parts(ready)
    r = archive(http, emulator, f"/prearchive/projects/{project}/{ts}/NOPE")
    assert r.status_code == 404
    assert "<h3>" in r.text
    assert experiments(http, emulator, "P1") == []
    assert status_of(http, emulator, ready) == "READY"


def test_archive_without_src_is_400(emulator, http):
    assert http.post(emulator.url + ARCHIVE, timeout=10).status_code == 400


def test_archive_receiving_session_is_refused(emulator, http, tmp_path):
    s = make_study(tmp_path / "d", comments="Project: P1")
    # prevent_auto_commit: the clock leaves it RECEIVING however slow this machine is
    uri = import_zip(http, emulator, zip_files(s.files, tmp_path / "s.zip"), dest="", prevent_auto_commit="true")
    assert status_of(http, emulator, uri) == "RECEIVING"
    r = archive(http, emulator, uri)
    assert r.status_code == 400, r.text  # only a READY session can be archived
    assert experiments(http, emulator, "P1") == []
    assert pdir(emulator, uri).is_dir()


@pytest.mark.parametrize("status", ["_ARCHIVING", "_BUILDING", "_MOVING", "_DELETING"])
def test_archive_locked_session_is_403(emulator, http, ready, status):
    """Archiver.setSessionArchiveStatus: PrearcDatabase.setStatus refuses a locked (_X) row."""
    emulator.hold_prearchive(*parts(ready), status=status)
    r = archive(http, emulator, ready)
    assert r.status_code == 403
    assert "<h3>Operation already in progress on this prearchive entry.</h3>" in r.text
    assert experiments(http, emulator, "P1") == []
    assert status_of(http, emulator, ready) == status


@pytest.mark.parametrize("status", ["BUILDING", "ARCHIVING", "QUEUED_MOVING", "QUEUED_BUILDING"])
def test_archive_of_a_built_row_in_an_unlocked_status_goes_ahead(emulator, http, study, ready, status):
    """Only _X statuses lock a row: XNAT sets ARCHIVING over any other and archives the built session."""
    emulator.hold_prearchive(*parts(ready), status=status)
    r = archive(http, emulator, ready)
    assert r.status_code == 200, r.text
    assert [e["label"] for e in experiments(http, emulator, "P1")] == ["S01_MR1"] and rows(http, emulator) == []


def test_archive_unassigned_needs_a_project(emulator, http, study_zip):
    uri = import_zip(http, emulator, study_zip, dest="/prearchive")
    assert parts(uri)[0] == "Unassigned"
    assert archive(http, emulator, uri).status_code == 400
    assert pdir(emulator, uri).is_dir()
    r = archive(http, emulator, uri, project="P1")
    assert r.status_code == 200, r.text
    assert r.text == "/data/archive/projects/P1/subjects/S01/experiments/S01_MR1\r\n"


def test_succeed_then_504_on_archive_does_it_once(emulator, http, study, ready):
    emulator.succeed_then_504("POST", r"/data/services/archive")
    r = archive(http, emulator, ready)
    assert r.status_code == 504
    assert rows(http, emulator) == []
    assert [e["label"] for e in experiments(http, emulator, "P1")] == ["S01_MR1"]
    assert sum(len(v) for v in dcm_names(adir(emulator, "P1", "S01_MR1")).values()) == len(study.files)
    # A client retrying the archive now finds no such prearchive session.
    assert archive(http, emulator, ready).status_code == 404
    assert len(experiments(http, emulator, "P1")) == 1


# ---- batch services: move, rebuild, delete -------------------------------------------------------------
def _batch(http, emulator, op: str, src: str, **params: str) -> requests.Response:
    return http.post(emulator.url + f"/data/services/prearchive/{op}", params={"src": src, **params}, timeout=10)


def _watch(http, emulator, uri: str, done: Callable[[str | None], bool], timeout: float = 5.0) -> list:
    """Statuses of ``uri`` as they change, until ``done(status)``. On a prearchive that runs on a
    :func:`stepped` clock, each look moves the clock a tenth of a queue step on, so that no status is missed
    however slow the machine; on real time, it polls."""
    seen: list[str | None] = []
    clock = emulator.prearchive.clock

    def check() -> bool:
        status = status_of(http, emulator, uri)
        if not seen or seen[-1] != status:
            seen.append(status)
        return done(status)

    if not isinstance(clock, ManualClock):
        wait_for(check, timeout=timeout, interval=0.02)
        return seen
    for _ in range(int(timeout / (emulator.prearchive.queue_seconds / 10)) + 1):
        if check():
            return seen
        clock.advance(emulator.prearchive.queue_seconds / 10)
    raise AssertionError(f"never done; saw {seen}")


def stepped(emulator) -> ManualClock:
    """From now on the prearchive's queued steps move only when a :func:`_watch` moves this clock."""
    emulator.prearchive.clock = clock = ManualClock()
    return clock


def test_batch_move_queued_then_moved(emulator, http, study, ready):
    stepped(emulator)
    r = _batch(http, emulator, "move", ready, newProject="P2")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/xml")  # XML is the default
    [row] = xml_rows(r.content)
    assert row["status"] == "QUEUED_MOVING" and row["project"] == "P1"
    _, ts, folder = parts(ready)
    moved = f"/data/prearchive/projects/P2/{ts}/{folder}"
    seen = _watch(http, emulator, ready, lambda s: s is None)
    assert seen[0] == "QUEUED_MOVING" and "_MOVING" in seen and seen[-1] is None
    row2 = row_of(http, emulator, moved)
    assert row2 is not None and row2["status"] == "READY"
    assert not pdir(emulator, ready).exists()
    assert sum(len(v) for v in dcm_names(pdir(emulator, moved)).values()) == len(study.files)


def test_batch_move_json_and_errors(emulator, http, ready):
    stepped(emulator)  # the move stays queued (not locked) until the delete below, however slow the machine
    assert _batch(http, emulator, "move", ready, newProject="NOPE").status_code == 404
    assert status_of(http, emulator, ready) == "READY"
    r = _batch(http, emulator, "move", ready, newProject="P2", format="json")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    [row] = r.json()["ResultSet"]["Result"]
    assert row["status"] == "QUEUED_MOVING" and all(isinstance(v, str) for v in row.values())
    # A queued row is not locked: another operation is queued over it.
    r = _batch(http, emulator, "delete", ready, format="json")
    assert r.status_code == 200 and [x["status"] for x in r.json()["ResultSet"]["Result"]] == ["QUEUED_DELETING"]


def test_batch_delete_queued_then_gone(emulator, http, ready):
    stepped(emulator)
    folder = pdir(emulator, ready)
    r = _batch(http, emulator, "delete", ready)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/xml")
    [row] = xml_rows(r.content)
    assert row["status"] == "QUEUED_DELETING"
    assert folder.is_dir()  # not yet
    seen = _watch(http, emulator, ready, lambda s: s is None)
    assert seen == ["QUEUED_DELETING", "_DELETING", None]
    assert not folder.exists()
    assert rows(http, emulator) == []


def test_batch_rebuild_queued_then_ready(emulator, http, ready):
    stepped(emulator)
    r = _batch(http, emulator, "rebuild", ready, format="json")
    assert r.status_code == 200
    [row] = r.json()["ResultSet"]["Result"]
    assert row["status"].startswith("QUEUED_")
    seen = _watch(http, emulator, ready, lambda s: s == "READY")
    assert seen[0].startswith("QUEUED_") and seen[-1] == "READY"
    assert http.get(emulator.url + ready + "/scans", params={"format": "json"}, timeout=10).status_code == 200


def test_batch_unknown_src_is_404(emulator, http, ready):
    project, ts, _ = parts(ready)
    assert _batch(http, emulator, "delete", f"/prearchive/projects/{project}/{ts}/NOPE").status_code == 404
    assert status_of(http, emulator, ready) == "READY"


def test_held_session_stays_stuck_until_rebuild(emulator, http, study, ready):
    emulator.hold_prearchive(*parts(ready), status="BUILDING")
    pre = emulator.prearchive
    time.sleep(pre.receiving_idle + pre.build_seconds + pre.queue_seconds)
    assert status_of(http, emulator, ready) == "BUILDING"  # stuck
    r = _batch(http, emulator, "rebuild", ready, format="json")
    assert r.status_code == 200, r.text
    [row] = r.json()["ResultSet"]["Result"]
    assert row["status"].startswith("QUEUED_")
    _watch(http, emulator, ready, lambda s: s == "READY")
    r = archive(http, emulator, ready)
    assert r.status_code == 200, r.text
    assert sum(len(v) for v in dcm_names(adir(emulator, "P1", "S01_MR1")).values()) == len(study.files)


def test_held_receiving_session_is_not_built(http, tmp_path):
    clock = ManualClock()
    with XnatEmulator(data_dir=tmp_path / "x", receiving_idle=300, build_seconds=1, clock=clock) as emu:
        s = make_study(tmp_path / "d", comments="Project: P1")
        uri = import_zip(http, emu, zip_files(s.files, tmp_path / "s.zip"), dest="")
        emu.hold_prearchive(*parts(uri), status="RECEIVING")
        clock.advance(3600)  # long past XNAT's 300 s of quiet and the build
        emu.tick()
        assert status_of(http, emu, uri) == "RECEIVING"
        emu.release_prearchive(*parts(uri))  # released now: quiet from now on
        clock.advance(299)
        assert status_of(http, emu, uri) == "RECEIVING"
        clock.advance(2)
        assert status_of(http, emu, uri) == "BUILDING"
        clock.advance(1)
        assert status_of(http, emu, uri) == "READY"


def test_action_build_releases_a_held_session(emulator, http, ready):
    emulator.hold_prearchive(*parts(ready), status="ERROR")
    r = http.post(emulator.url + ready, params={"action": "build"}, timeout=10)
    assert r.status_code == 200
    assert status_of(http, emulator, ready) == "READY"


def test_statuses_in_listing_are_known_values(emulator, http, study: Study, ready):
    known = {"READY", "RECEIVING", "RECEIVING_INTERRUPT", "BUILDING", "ARCHIVING", "CONFLICT", "ERROR",
             "DELETING", "MOVING", "SEPARATING"}
    _batch(http, emulator, "delete", ready)
    seen = _watch(http, emulator, ready, lambda s: s is None)
    for status in seen[:-1]:
        assert status in known or status.removeprefix("QUEUED_") in known or status.removeprefix("_") in known


def test_action_build_on_a_locked_session_is_409(emulator, http, ready):
    """PrearcSessionResource.postActionBuild: setStatus(BUILDING) is refused only on a locked (_X) row."""
    emulator.hold_prearchive(*parts(ready), status="_MOVING")
    r = http.post(emulator.url + ready, params={"action": "build"}, timeout=10)
    assert r.status_code == 409 and "session document locked" in r.text
    assert status_of(http, emulator, ready) == "_MOVING"
    emulator.hold_prearchive(*parts(ready), status="QUEUED_MOVING")
    assert http.post(emulator.url + ready, params={"action": "build"}, timeout=10).status_code == 200
    assert status_of(http, emulator, ready) == "READY"


@pytest.mark.parametrize("op", ["rebuild", "move", "delete"])
@pytest.mark.parametrize("status", ["_ARCHIVING", "_BUILDING", "_MOVING", "_DELETING", "_RECEIVING"])
def test_batch_operation_on_a_locked_row_is_a_silent_no_op(emulator, http, study, ready, op, status):
    """PrearcUtils.queuePrearchiveOperation and PrearchiveBatchDelete queue only when PrearcDatabase.setStatus
    may take the row, never over a lock (not even with overrideLock): 200, the row listed unchanged."""
    emulator.hold_prearchive(*parts(ready), status=status)
    before = row_of(http, emulator, ready)
    extra = {"newProject": "P2"} if op == "move" else {"overrideLock": "true"} if op == "rebuild" else {}
    r = _batch(http, emulator, op, ready, format="json", **extra)
    assert r.status_code == 200, r.text
    assert r.json()["ResultSet"]["Result"] == [before]
    time.sleep(3 * emulator.prearchive.queue_seconds)
    assert row_of(http, emulator, ready) == before
    assert sum(len(v) for v in dcm_names(pdir(emulator, ready)).values()) == len(study.files)
    # Once the operation holding the lock ends, the same request is queued.
    emulator.release_prearchive(*parts(ready))
    [row] = _batch(http, emulator, op, ready, format="json", **extra).json()["ResultSet"]["Result"]
    assert row["status"] == f"QUEUED_{ {'rebuild': 'BUILDING', 'move': 'MOVING', 'delete': 'DELETING'}[op]}"


def test_reset_status_frees_a_row_stuck_locked(emulator, http, ready):
    """An administrator's way out of a lock left by an operation that died: reset-status rewrites the row."""
    emulator.hold_prearchive(*parts(ready), status="_ARCHIVING")
    assert http.post(emulator.url + ready, params={"action": "reset-status"}, timeout=10).status_code == 200
    assert status_of(http, emulator, ready) == "READY"
    assert archive(http, emulator, ready).status_code == 200


def test_archive_service_delete_is_append_and_deletes_nothing(emulator, http, tmp_path):
    """Archiver: append and delete both set overrideExceptions for one session and merge (allowSessionMerge is
    always true there); nothing is deleted. Without overwrite a new series merges, the same files conflict."""
    uid = "1.2.826.0.1.3680043.8.498.4242"
    first = make_study(tmp_path / "a", study_uid=uid, series=((1, "T1"),), instances=2, uid_seed="a")
    more = make_study(tmp_path / "b", study_uid=uid, series=((2, "T2"),), instances=1, uid_seed="a")
    one = make_study(tmp_path / "c", study_uid=uid, series=((1, "T1"),), instances=1, uid_seed="a")
    for files, overwrite, code in ((first.files, None, 200), (more.files, None, 200), (one.files, None, 500),
                                   (one.files, "append", 200), (one.files, "delete", 200)):
        uri = import_zip(http, emulator, zip_files(files, tmp_path / "x.zip"), dest="/prearchive/projects/P1")
        r = archive(http, emulator, uri, **({"overwrite": overwrite} if overwrite else {}))
        assert r.status_code == code, (overwrite, r.text)
        if code == 500:
            assert "FAILED: Session already exists with matching files." in r.text
            assert _batch(http, emulator, "delete", uri).status_code == 200
            wait_for(lambda uri=uri: status_of(http, emulator, uri) is None)
    assert dcm_names(adir(emulator, "P1", "S01_MR1")) == {"1": sop_names(first.files[:2]), "2": sop_names(more.files)}


def test_archive_quarantine_is_recorded_on_the_experiment(emulator, http, ready):
    r = archive(http, emulator, ready, quarantine="true")
    assert r.status_code == 200, r.text
    [exp] = experiments(http, emulator, "P1")
    assert http.get(f"{emulator.url}/data/experiments/{exp['ID']}/status", timeout=10).text == "quarantine"
    path = f"{emulator.url}/data/projects/P1/subjects/S01/experiments/S01_MR1/status"
    assert http.get(path, timeout=10).text == "quarantine"


def test_rebuild_does_not_auto_archive_and_archive_redirects(emulator, http, ready):
    emulator.add_project("PA", prearchive="auto-archive")
    _, ts, folder = parts(ready)
    assert _batch(http, emulator, "move", ready, newProject="PA").status_code == 200
    moved = f"/data/prearchive/projects/PA/{ts}/{folder}"
    wait_for(lambda: status_of(http, emulator, moved) == "READY")
    clock = stepped(emulator)
    assert _batch(http, emulator, "rebuild", moved).status_code == 200
    seen = _watch(http, emulator, moved, lambda s: s == "READY")
    assert seen[0] == "QUEUED_BUILDING"
    clock.advance(3600)  # long past any step an auto-archive would take
    assert status_of(http, emulator, moved) == "READY"  # rebuilt, not auto-archived
    assert experiments(http, emulator, "PA") == []
    # An auto-archive project answers 303 unless the client says auto-archive=false.
    r = archive(http, emulator, moved)
    assert r.status_code == 303
    assert r.headers["Location"].endswith("/data/archive/projects/PA/subjects/S01/experiments/S01_MR1")
    assert [e["label"] for e in experiments(http, emulator, "PA")] == ["S01_MR1"]


def test_auto_archive_false_gives_200_in_auto_archive_project(emulator, http, ready):
    emulator.add_project("PA", prearchive="auto-archive")
    _, ts, folder = parts(ready)
    _batch(http, emulator, "move", ready, newProject="PA")
    moved = f"/data/prearchive/projects/PA/{ts}/{folder}"
    wait_for(lambda: status_of(http, emulator, moved) == "READY")
    r = archive(http, emulator, moved, **{"auto-archive": "false"})
    assert r.status_code == 200 and r.text.endswith("/experiments/S01_MR1\r\n")
