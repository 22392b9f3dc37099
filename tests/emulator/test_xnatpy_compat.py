"""xnatpy 0.8.1, with its full object model (schemas parsed at connect), against the emulator.

xnatpy was written by others against real XNAT servers; that it works here unchanged is the evidence that the
emulator speaks XNAT. Known xnatpy bugs are named where a test meets them.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import requests
import xnat

from xnat_provider.testing import XnatEmulator
from xnat_provider.testing.samples import Study, make_study, zip_files


@pytest.fixture
def session(emulator: XnatEmulator) -> Iterator[xnat.session.XNATSession]:
    s = xnat.connect(emulator.url, user="admin", password="admin", loglevel="ERROR")
    try:
        yield s
    finally:
        s.disconnect()


def _import_and_archive(session, study_zip: Path):
    pre = session.services.import_(str(study_zip), project="P1", subject="S01", experiment="S01_MR1",
                                   destination="/prearchive")
    return pre, pre.archive()


def test_connect_builds_the_full_model_and_lists(session, emulator: XnatEmulator) -> None:
    assert session.logged_in_user == "admin"
    assert session.xnat_version.startswith("1.8")
    for name in ("ProjectData", "SubjectData", "MrSessionData", "CtSessionData", "MrScanData", "ResourceCatalog"):
        assert hasattr(session.classes, name), name
    assert sorted(session.projects.keys()) == ["P1", "P2"]
    # One login: everything after it rode on the JSESSIONID cookie.
    assert emulator.auth.logins == 1


def test_import_prearchive_archive_and_listings(session, emulator, study_zip, http) -> None:
    pre = session.services.import_(str(study_zip), project="P1", subject="S01", experiment="S01_MR1",
                                   destination="/prearchive")
    assert isinstance(pre, xnat.prearchive.PrearchiveSession)
    listed = session.prearchive.sessions(project="P1")
    assert [p.name for p in listed] == ["S01_MR1"] and listed[0].status == "READY"
    assert sorted(s.id for s in listed[0].scans) == ["1", "2"]
    exp = listed[0].archive()
    assert exp.label == "S01_MR1" and exp.__class__.__name__ == "MrSessionData"
    assert session.prearchive.sessions(project="P1") == []
    project = session.projects["P1"]
    assert [s.label for s in project.subjects.values()] == ["S01"]
    exp = project.experiments["S01_MR1"]
    assert exp.date.isoformat() == "2024-01-15"
    assert sorted((s.id, s.type) for s in exp.scans.values()) == [("1", "T1"), ("2", "T2")]
    assert [r.label for r in exp.scans["1"].resources.values()] == ["DICOM"]
    assert len(exp.scans["1"].resources["DICOM"].files) == 3
    # The server agrees, seen without xnatpy.
    rows = http.get(emulator.url + "/data/projects/P1/experiments?format=json").json()["ResultSet"]["Result"]
    assert [(r["label"], r["xsiType"]) for r in rows] == [("S01_MR1", "xnat:mrSessionData")]


def test_download_scan_bytes_equal_the_originals(session, study_zip, study: Study, tmp_path) -> None:
    _pre, exp = _import_and_archive(session, study_zip)
    scan = exp.scans["2"]
    target = tmp_path / "scan2.zip"
    scan.download(str(target))
    originals = {pydicom.dcmread(p).SOPInstanceUID: p.read_bytes() for p in study.series["2"]}
    with zipfile.ZipFile(target) as zf:
        got = {Path(n).stem: zf.read(n) for n in zf.namelist()}
        assert all(n.startswith("S01_MR1/scans/2-T2/resources/DICOM/files/") for n in zf.namelist())
    assert got == originals
    # Single files, with xnatpy's own MD5 check against the listing digest.
    one = next(iter(scan.resources["DICOM"].files.values()))
    one.download(str(tmp_path / "one.dcm"))
    assert (tmp_path / "one.dcm").read_bytes() == originals[Path(one.id).stem]


def test_upload_to_a_new_resource(session, emulator, study_zip, http, tmp_path) -> None:
    _pre, exp = _import_and_archive(session, study_zip)
    scan = exp.scans["1"]
    res = session.classes.ResourceCatalog(parent=scan, label="NIFTI", format="NIFTI")
    payload = tmp_path / "volume.nii"
    payload.write_bytes(b"\x5c\x01" * 5000)
    res.upload(str(payload), "sub/volume.nii")
    assert list(res.files.keys()) == ["sub/volume.nii"]
    url = f"{emulator.url}/data/experiments/{exp.id}/scans/1/resources/NIFTI/files"
    row = http.get(url + "?format=json").json()["ResultSet"]["Result"][0]
    assert row["digest"] == hashlib.md5(payload.read_bytes()).hexdigest()
    assert http.get(url + "/sub/volume.nii").content == payload.read_bytes()


def test_custom_fields_round_trip(session, emulator, study_zip, http) -> None:
    _pre, exp = _import_and_archive(session, study_zip)
    exp.fields["site"] = "Leiden"
    exp.clearcache()
    assert dict(exp.fields) == {"site": "Leiden"}
    subject = session.projects["P1"].subjects["S01"]
    subject.fields["group"] = "control"
    item = http.get(f"{emulator.url}/data/subjects/{subject.id}?format=json").json()["items"][0]
    assert {"name": "group", "field": "control"} in [i["data_fields"] for c in item["children"]
                                                       for i in c["items"]]


def test_create_subject_and_experiment_through_classes(session, http, emulator) -> None:
    project = session.projects["P1"]
    subject = session.classes.SubjectData(parent=project, label="S77")
    exp = session.classes.CtSessionData(parent=subject, label="S77_CT1")
    assert exp.id.startswith("XNAT_E")
    rows = http.get(emulator.url + "/data/projects/P1/experiments?format=json").json()["ResultSet"]["Result"]
    assert [(r["label"], r["xsiType"]) for r in rows] == [("S77_CT1", "xnat:ctSessionData")]


def test_alias_token_login(session, emulator) -> None:
    token = session.services.issue_token()
    with xnat.connect(emulator.url, user=token.alias, password=token.secret, loglevel="ERROR") as s2:
        assert s2.logged_in_user == "admin"
        assert sorted(s2.projects.keys()) == ["P1", "P2"]
    ok = requests.get(f"{emulator.url}/data/services/tokens/validate/{token.alias}/{token.secret}",
                      auth=("admin", "admin")).json()
    assert ok == {"valid": "admin"}


def test_multi_study_import_is_xnatpy_bug(session, tmp_path, emulator, http) -> None:
    """xnatpy's import_ handles one URI only: a two-study zip (two lines, as XNAT answers) breaks it.

    The emulator answers as XNAT does; the failure is xnatpy's (landscape.md: import_ and multi-study zips).
    """
    a = make_study(tmp_path / "a", patient_name="SA", patient_id="SA_MR1")
    b = make_study(tmp_path / "b", patient_name="SB", patient_id="SB_MR1")
    both = zip_files(a.files + b.files, tmp_path / "both.zip")
    with pytest.raises(Exception):  # noqa: B017 - xnatpy raises whatever the mangled URI gives
        session.services.import_(str(both), project="P1", destination="/prearchive").status  # noqa: B018
    rows = http.get(emulator.url + "/data/prearchive/projects/P1?format=json").json()["ResultSet"]["Result"]
    assert sorted(r["name"] for r in rows) == ["SA_MR1", "SB_MR1"]  # both studies did arrive


def test_expired_session_is_not_recovered_by_xnatpy(emulator) -> None:
    """xnatpy has no re-login (landscape.md pain 1): once the session expires every call fails with 401.

    This is the behaviour the provider's own client must beat.
    """
    s = xnat.connect(emulator.url, user="admin", password="admin", loglevel="ERROR")
    assert sorted(s.projects.keys()) == ["P1", "P2"]
    emulator.expire_sessions()
    s.clearcache()
    with pytest.raises(xnat.exceptions.XNATResponseError, match="401"):
        _ = s.projects.keys()
    with pytest.raises(xnat.exceptions.XNATResponseError, match="401"):
        s.disconnect()  # even the logout fails: the session is gone
