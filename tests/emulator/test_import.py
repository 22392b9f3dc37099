"""The import service, ``POST /data/services/import``, over real HTTP with real DICOM.

Reference: ``xnat-rest.md`` §2 (import service, DICOM routing, grouping into sessions and scans). Every test
checks what the server lists afterwards and what is on disk under ``emulator.data_dir``, not only the status.
"""

from __future__ import annotations

import io
import tarfile
import time
import zipfile
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.data import get_testdata_file

from tests.support import wait_for
from xnat_provider.testing import XnatEmulator
from xnat_provider.testing.clock import ManualClock
from xnat_provider.testing.samples import Study, make_study, zip_files

IMPORT = "/data/services/import"
ROW_KEYS = {"project", "timestamp", "lastmod", "uploaded", "scan_date", "scan_time", "subject", "folderName",
            "name", "tag", "status", "url", "autoarchive", "prevent_anon", "prevent_auto_commit", "SOURCE", "VISIT",
            "PROTOCOL", "TIMEZONE"}


# ---- helpers -------------------------------------------------------------------------------------------

def do_import(http: requests.Session, emu: XnatEmulator, body: bytes | Path,
              content_type: str = "application/zip", **params: str) -> requests.Response:
    data = body.read_bytes() if isinstance(body, Path) else body
    return http.post(emu.url + IMPORT, params=params, data=data, headers={"Content-Type": content_type},
                     timeout=30)


def prearchive_rows(http: requests.Session, emu: XnatEmulator, project: str | None = None) -> list[dict]:
    url = emu.url + "/data/prearchive/projects" + (f"/{project}" if project else "")
    r = http.get(url, params={"format": "json"}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["ResultSet"]["Result"]


def uri_lines(r: requests.Response) -> list[str]:
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/uri-list")
    assert r.text.endswith("\r\n")
    lines = r.text.split("\r\n")
    assert lines[-1] == ""
    return lines[:-1]


def session_dir(emu: XnatEmulator, uri: str) -> Path:
    """The prearchive folder behind ``/data/prearchive/projects/P/TS/F``."""
    prefix = "/data/prearchive/projects/"
    assert uri.startswith(prefix), uri
    project, ts, folder = uri[len(prefix):].split("/")
    return emu.data_dir / "prearchive" / project / ts / folder


def dicom_on_disk(folder: Path) -> dict[str, list[str]]:
    """Scan id -> sorted file names under ``SCANS/{id}/DICOM``."""
    return {d.name: sorted(f.name for f in (d / "DICOM").iterdir() if not f.name.startswith("."))
            for d in sorted((folder / "SCANS").iterdir())}


def sop_uids(files: list[Path]) -> list[str]:
    return sorted(f"{pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID}.dcm" for f in files)


def row_for(rows: list[dict], uri: str) -> dict:
    matches = [r for r in rows if "/data" + r["url"] == uri]
    assert len(matches) == 1, (uri, rows)
    return matches[0]


def tar_bytes(files: list[Path]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for f in files:
            tf.add(f, arcname=f"dicom/{f.name}")
    return buf.getvalue()


def zip_entries(entries: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return buf.getvalue()


# ---- bodies: zip, tar, raw and multipart ---------------------------------------------------------------
def test_zip_raw_body_to_prearchive_is_built_now(emulator, http, study, study_zip):
    r = do_import(http, emulator, study_zip, dest="/prearchive")
    [uri] = uri_lines(r)
    assert uri.startswith("/data/prearchive/projects/Unassigned/")  # no project in params or headers
    rows = prearchive_rows(http, emulator)
    row = row_for(rows, uri)
    assert row["status"] == "READY"  # any dest means "build now"
    assert row["tag"] == study.study_uid
    assert row["subject"] == "S01" and row["name"] == "S01_MR1"
    assert len(row["timestamp"]) == 18 and row["timestamp"][8] == "_"  # yyyyMMdd_HHmmssSSS
    on_disk = dicom_on_disk(session_dir(emulator, uri))
    assert on_disk == {"1": sop_uids(study.series["1"]), "2": sop_uids(study.series["2"])}


def test_tar_raw_body(emulator, http, study):
    r = do_import(http, emulator, tar_bytes(study.files), "application/x-tar", dest="/prearchive/projects/P1")
    [uri] = uri_lines(r)
    assert uri.startswith("/data/prearchive/projects/P1/")
    assert row_for(prearchive_rows(http, emulator, "P1"), uri)["status"] == "READY"
    assert sum(len(v) for v in dicom_on_disk(session_dir(emulator, uri)).values()) == len(study.files)


def test_multipart_upload_with_form_fields(emulator, http, study, study_zip):
    with open(study_zip, "rb") as fh:
        r = http.post(emulator.url + IMPORT, files={"file": ("study.zip", fh, "application/zip")},
                      data={"dest": "/prearchive", "project": "P2"}, timeout=30)
    [uri] = uri_lines(r)
    assert uri.startswith("/data/prearchive/projects/P2/")  # form fields are parameters
    row = row_for(prearchive_rows(http, emulator, "P2"), uri)
    assert row["status"] == "READY" and row["tag"] == study.study_uid
    assert sorted(dicom_on_disk(session_dir(emulator, uri))) == ["1", "2"]


def test_multipart_with_two_files_is_refused(emulator, http, study_zip):
    data = study_zip.read_bytes()
    r = http.post(emulator.url + IMPORT, params={"dest": "/prearchive"},
                  files=[("a", ("a.zip", data, "application/zip")), ("b", ("b.zip", data, "application/zip"))],
                  timeout=30)
    assert r.status_code == 400
    assert "one uploaded resource at a time" in r.text
    assert r.headers["Content-Type"].startswith("text/html") and "<h3>" in r.text
    assert prearchive_rows(http, emulator) == []
    assert not list(emulator.data_dir.glob("prearchive/**/*.dcm"))


def test_unknown_import_handler_is_404(emulator, http, study_zip):
    r = do_import(http, emulator, study_zip, **{"import-handler": "NoSuchHandler", "dest": "/prearchive"})
    assert r.status_code == 404
    assert "<h3>" in r.text
    assert prearchive_rows(http, emulator) == []


def test_get_is_405(emulator, http):
    r = http.get(emulator.url + IMPORT, timeout=10)
    assert r.status_code == 405


def test_explicit_dicom_zip_handler_and_rest_alias(emulator, http, study_zip):
    r = http.post(emulator.url + "/REST/services/import",
                  params={"import-handler": "DICOM-zip", "dest": "/data/prearchive/projects/P1"},
                  data=study_zip.read_bytes(), headers={"Content-Type": "application/zip"}, timeout=30)
    [uri] = uri_lines(r)
    assert uri.startswith("/data/prearchive/projects/P1/")


def test_format_txt_single_uri_is_plain(emulator, http, study_zip):
    r = do_import(http, emulator, study_zip, dest="/prearchive", format="txt")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain")
    assert r.text.startswith("/data/prearchive/projects/") and not r.text.endswith("\r\n")


# ---- dest=/archive -------------------------------------------------------------------------------------
def test_dest_archive_archives_and_answers_label_uri(emulator, http, study, study_zip):
    r = do_import(http, emulator, study_zip, dest="/archive/projects/P1")
    assert uri_lines(r) == ["/data/archive/projects/P1/subjects/S01/experiments/S01_MR1"]
    assert prearchive_rows(http, emulator) == []
    exps = http.get(emulator.url + "/data/projects/P1/experiments", params={"format": "json"}, timeout=10)
    assert [e["label"] for e in exps.json()["ResultSet"]["Result"]] == ["S01_MR1"]
    scans = http.get(emulator.url + "/data/projects/P1/subjects/S01/experiments/S01_MR1/scans",
                     params={"format": "json"}, timeout=10).json()["ResultSet"]["Result"]
    assert sorted(s["ID"] for s in scans) == ["1", "2"]
    session = emulator.data_dir / "archive" / "P1" / "arc001" / "S01_MR1"
    assert dicom_on_disk(session) == {"1": sop_uids(study.series["1"]), "2": sop_uids(study.series["2"])}
    assert not list(emulator.data_dir.glob("prearchive/**/*.dcm"))


def test_dest_archive_with_subject_and_experiment(emulator, http, study_zip):
    r = do_import(http, emulator, study_zip, dest="/data/archive/projects/P2/subjects/SUBJ9/experiments/SUBJ9_MR")
    assert uri_lines(r) == ["/data/archive/projects/P2/subjects/SUBJ9/experiments/SUBJ9_MR"]
    assert (emulator.data_dir / "archive" / "P2" / "arc001" / "SUBJ9_MR" / "SCANS" / "1" / "DICOM").is_dir()
    subjects = http.get(emulator.url + "/data/projects/P2/subjects", params={"format": "json"},
                        timeout=10).json()["ResultSet"]["Result"]
    assert [s["label"] for s in subjects] == ["SUBJ9"]


# ---- multi-study and grouping --------------------------------------------------------------------------
def test_multi_study_zip_gives_one_crlf_line_per_study(emulator, http, tmp_path):
    a = make_study(tmp_path / "a", patient_name="SA", patient_id="SA_MR1", comments="Project: P1")
    b = make_study(tmp_path / "b", patient_name="SB", patient_id="SB_MR1", comments="Project: P1",
                   series=((5, "FLAIR"),))
    body = zip_files(a.files + b.files, tmp_path / "two.zip", root=tmp_path)
    r = do_import(http, emulator, body, dest="/prearchive")
    lines = uri_lines(r)
    assert len(lines) == 2
    assert r.content.count(b"\r\n") == 2
    rows = prearchive_rows(http, emulator, "P1")
    assert {row_for(rows, u)["tag"] for u in lines} == {a.study_uid, b.study_uid}
    by_tag = {row_for(rows, u)["tag"]: u for u in lines}
    assert sorted(dicom_on_disk(session_dir(emulator, by_tag[a.study_uid]))) == ["1", "2"]
    assert sorted(dicom_on_disk(session_dir(emulator, by_tag[b.study_uid]))) == ["5"]


def test_multi_study_zip_to_archive_gives_two_archive_uris(emulator, http, tmp_path):
    a = make_study(tmp_path / "a", patient_name="SA", patient_id="SA_MR1")
    b = make_study(tmp_path / "b", patient_name="SB", patient_id="SB_MR1")
    body = zip_files(a.files + b.files, tmp_path / "two.zip", root=tmp_path)
    r = do_import(http, emulator, body, dest="/archive/projects/P1")
    assert sorted(uri_lines(r)) == ["/data/archive/projects/P1/subjects/SA/experiments/SA_MR1",
                                    "/data/archive/projects/P1/subjects/SB/experiments/SB_MR1"]


def test_grouping_into_scans_by_series_number(emulator, http, tmp_path):
    s = make_study(tmp_path / "d", series=((3, "T1"), (11, "T2"), (402, "DWI")), instances=2)
    r = do_import(http, emulator, zip_files(s.files, tmp_path / "s.zip"), dest="/prearchive/projects/P1")
    [uri] = uri_lines(r)
    assert dicom_on_disk(session_dir(emulator, uri)) == {n: sop_uids(fs) for n, fs in s.series.items()}
    scans = http.get(emulator.url + uri + "/scans", params={"format": "json"}, timeout=10).json()
    assert [(x["ID"], x["series_description"]) for x in scans["ResultSet"]["Result"]] == \
        [("3", "T1"), ("11", "T2"), ("402", "DWI")]


def test_without_series_number_scan_folder_is_series_uid(emulator, http, tmp_path):
    s = make_study(tmp_path / "d", series=((1, "T1"),), instances=2)
    series_uid = ""
    for f in s.files:
        ds = pydicom.dcmread(f)
        del ds.SeriesNumber
        series_uid = ds.SeriesInstanceUID
        ds.save_as(f, enforce_file_format=True)
    r = do_import(http, emulator, zip_files(s.files, tmp_path / "s.zip"), dest="/prearchive/projects/P1")
    [uri] = uri_lines(r)
    assert list(dicom_on_disk(session_dir(emulator, uri))) == [series_uid]


def test_second_upload_joins_a_receiving_session(emulator, http, tmp_path):
    s = make_study(tmp_path / "d", comments="Project: P1")
    r1 = do_import(http, emulator, zip_files(s.series["1"], tmp_path / "1.zip"))
    r2 = do_import(http, emulator, zip_files(s.series["2"], tmp_path / "2.zip"))
    [u1], [u2] = uri_lines(r1), uri_lines(r2)
    assert u1 == u2  # same project, study and session label while RECEIVING
    assert sorted(dicom_on_disk(session_dir(emulator, u1))) == ["1", "2"]
    assert len(prearchive_rows(http, emulator, "P1")) == 1


@pytest.mark.parametrize("status", ["READY", "CONFLICT", "ERROR"])
def test_a_study_sent_again_joins_its_settled_row(emulator, http, tmp_path, status):
    """XNAT 1.8 interrupts a row in any of these statuses for new files of its study and session label
    (``PrearcUtils.PrearcStatus``: every status is interruptable), sets it RECEIVING and builds it again: one row,
    holding both uploads' files, not a second row."""
    s = make_study(tmp_path / "d", comments="Project: P1")
    [u1] = uri_lines(do_import(http, emulator, zip_files(s.series["1"], tmp_path / "1.zip"),
                               dest="/prearchive/projects/P1"))
    row = emulator.prearchive.require(*u1.split("/")[-3:])
    emulator.prearchive.set_status(row, status)
    [u2] = uri_lines(do_import(http, emulator, zip_files(s.series["2"], tmp_path / "2.zip"),
                               dest="/prearchive/projects/P1"))
    assert u2 == u1
    assert sorted(dicom_on_disk(session_dir(emulator, u1))) == ["1", "2"]
    [listed] = prearchive_rows(http, emulator, "P1")
    assert listed["status"] == "READY"


@pytest.mark.parametrize("dest", ["/prearchive/projects/P1", "/archive/projects/P1"])
def test_a_body_cut_off_mid_upload_leaves_what_arrived_receiving(emulator, http, tmp_path, dest):
    """XNAT reads an import as it arrives (``ZipInputStream`` over the request): the entries received whole
    before the break are in the prearchive; the call throws before ``xmlBuild``, so the row stays RECEIVING,
    unbuilt and unarchived whatever the dest, and nobody gets an answer."""
    s = make_study(tmp_path / "d", series=((1, "T1"), (2, "T2")), instances=3, comments="Project: P1")
    body = zip_files(s.files, tmp_path / "s.zip").read_bytes()
    infos = zipfile.ZipFile(io.BytesIO(body)).infolist()
    cut = (infos[4].header_offset + infos[5].header_offset) // 2  # inside the fifth entry
    emulator.cut_request_after("POST", IMPORT, after_bytes=cut)
    with pytest.raises(requests.ConnectionError):
        do_import(http, emulator, body, dest=dest)
    [row] = prearchive_rows(http, emulator, "P1")
    assert row["status"] == "RECEIVING"
    by_name = {f.name: f for f in s.files}
    whole = [by_name[Path(i.filename).name] for i in infos[:4]]
    on_disk = dicom_on_disk(session_dir(emulator, "/data" + row["url"]))
    assert sorted(n for names in on_disk.values() for n in names) == sop_uids(whole)
    assert http.get(emulator.url + "/data/projects/P1/experiments", params={"format": "json"}
                    ).json()["ResultSet"]["Result"] == []


# ---- routing -------------------------------------------------------------------------------------------
def test_routing_by_request_parameters(emulator, http, tmp_path):
    s = make_study(tmp_path / "d", comments="Project: P1 Subject: FROMCOMMENT Session: FROMCOMMENT_MR")
    r = do_import(http, emulator, zip_files(s.files, tmp_path / "s.zip"), dest="/prearchive",
                  PROJECT_ID="P2", SUBJECT_ID="PARAMSUBJ", EXPT_LABEL="PARAMSUBJ_MR")
    [uri] = uri_lines(r)
    assert uri.startswith("/data/prearchive/projects/P2/") and uri.endswith("/PARAMSUBJ_MR")
    row = row_for(prearchive_rows(http, emulator, "P2"), uri)
    assert (row["project"], row["subject"], row["name"]) == ("P2", "PARAMSUBJ", "PARAMSUBJ_MR")
    assert prearchive_rows(http, emulator, "P1") == []


def test_routing_by_lower_case_dicom_zip_aliases(emulator, http, study_zip):
    r = do_import(http, emulator, study_zip, dest="/prearchive", project="P2", subject="LS", session="LS_MR")
    [uri] = uri_lines(r)
    row = row_for(prearchive_rows(http, emulator, "P2"), uri)
    assert (row["subject"], row["name"]) == ("LS", "LS_MR")


def test_routing_by_patient_comments(emulator, http, tmp_path):
    s = make_study(tmp_path / "d", patient_name="PN", patient_id="PID",
                   comments="Project: P2 Subject: CSUBJ Session: CSUBJ_MR1", study_description="P1")
    r = do_import(http, emulator, zip_files(s.files, tmp_path / "s.zip"), dest="/prearchive")
    [uri] = uri_lines(r)
    row = row_for(prearchive_rows(http, emulator, "P2"), uri)
    assert (row["project"], row["subject"], row["name"]) == ("P2", "CSUBJ", "CSUBJ_MR1")


def test_routing_comment_separators_and_case(emulator, http, tmp_path):
    s = make_study(tmp_path / "d", comments="project:P2;subject:sc-1,session:sc-1_mr")
    r = do_import(http, emulator, zip_files(s.files, tmp_path / "s.zip"), dest="/prearchive")
    row = row_for(prearchive_rows(http, emulator, "P2"), uri_lines(r)[0])
    assert (row["subject"], row["name"]) == ("sc-1", "sc-1_mr")


def test_routing_by_study_description_patient_name_and_id(emulator, http, tmp_path):
    s = make_study(tmp_path / "d", patient_name="PNSUBJ", patient_id="PNSUBJ_MR7", study_description="P2")
    r = do_import(http, emulator, zip_files(s.files, tmp_path / "s.zip"), dest="/prearchive")
    [uri] = uri_lines(r)
    row = row_for(prearchive_rows(http, emulator, "P2"), uri)
    assert (row["project"], row["subject"], row["name"]) == ("P2", "PNSUBJ", "PNSUBJ_MR7")
    assert session_dir(emulator, uri).parent.parent == emulator.data_dir / "prearchive" / "P2"


def test_unknown_project_parameter_is_silently_ignored(emulator, http, tmp_path):
    s = make_study(tmp_path / "d", study_description="P2")
    r = do_import(http, emulator, zip_files(s.files, tmp_path / "s.zip"), dest="/prearchive", project="NOPE")
    [uri] = uri_lines(r)  # no error: the headers decide
    assert uri.startswith("/data/prearchive/projects/P2/")
    all_projects = {row["project"] for row in prearchive_rows(http, emulator)}
    assert all_projects == {"P2"}


def test_no_project_goes_to_unassigned(emulator, http, study, study_zip):
    r = do_import(http, emulator, study_zip, dest="/prearchive")
    [uri] = uri_lines(r)
    assert uri.startswith("/data/prearchive/projects/Unassigned/")
    row = row_for(prearchive_rows(http, emulator, "Unassigned"), uri)
    assert row["project"] == "Unassigned" and row["tag"] == study.study_uid
    assert session_dir(emulator, uri).is_dir()
    # Only admins see Unassigned.
    with requests.Session() as alice:
        alice.auth = ("alice", "alice-pw")
        rows = alice.get(emulator.url + "/data/prearchive/projects", params={"format": "json"}, timeout=10)
        assert rows.status_code == 200
        assert rows.json()["ResultSet"]["Result"] == []


# ---- unparsable entries --------------------------------------------------------------------------------
def _mixed_zip(study: Study) -> bytes:
    """Series 1, then a text file, then series 2."""
    entries = [(f.name, f.read_bytes()) for f in study.series["1"]]
    entries.append(("README.txt", b"not a DICOM file\n"))
    entries += [(f.name, f.read_bytes()) for f in study.series["2"]]
    return zip_entries(entries)


def test_non_dicom_entry_gives_400_and_earlier_files_stay(emulator, http, tmp_path):
    s = make_study(tmp_path / "d", comments="Project: P1")
    r = do_import(http, emulator, _mixed_zip(s))
    assert r.status_code == 400
    assert "README.txt" in r.text and "<h3>" in r.text
    [row] = prearchive_rows(http, emulator, "P1")
    assert row["tag"] == s.study_uid
    assert dicom_on_disk(session_dir(emulator, "/data" + row["url"])) == {"1": sop_uids(s.series["1"])}


def test_ignore_unparsable_skips_bad_entries(emulator, http, tmp_path):
    s = make_study(tmp_path / "d", comments="Project: P1")
    r = do_import(http, emulator, _mixed_zip(s), **{"Ignore-Unparsable": "true", "dest": "/prearchive"})
    [uri] = uri_lines(r)
    assert dicom_on_disk(session_dir(emulator, uri)) == {"1": sop_uids(s.series["1"]),
                                                          "2": sop_uids(s.series["2"])}
    assert not list(session_dir(emulator, uri).rglob("README*"))


def test_dicom_without_sop_uids_is_400(emulator, http):
    broken = Path(get_testdata_file("no_meta_group_length.dcm"))  # valid DICOM, but no SOP Instance UID
    r = do_import(http, emulator, zip_entries([("broken.dcm", broken.read_bytes())]), dest="/prearchive")
    assert r.status_code == 400
    assert "SOPInstanceUID" in r.text
    assert prearchive_rows(http, emulator) == []


def test_dicom_without_preamble_is_still_dicom(emulator, http, tmp_path):
    s = make_study(tmp_path / "d", series=((1, "T1"),), instances=1, comments="Project: P1")
    raw = s.files[0].read_bytes()
    assert raw[128:132] == b"DICM"
    r = do_import(http, emulator, zip_entries([("nopreamble.dcm", raw[132:])]), dest="/prearchive")
    [uri] = uri_lines(r)
    assert dicom_on_disk(session_dir(emulator, uri)) == {"1": sop_uids(s.files)}


def test_empty_zip_and_bad_zip(emulator, http):
    assert do_import(http, emulator, zip_entries([]), dest="/prearchive").status_code == 400
    r = do_import(http, emulator, b"this is not a zip", dest="/prearchive")
    assert r.status_code == 400 and "<h3>" in r.text
    assert prearchive_rows(http, emulator) == []


# ---- the status machine without dest -------------------------------------------------------------------
def test_without_dest_receiving_then_building_then_ready(http, tmp_path):
    """On the emulator's clock, moved by hand: each status is seen exactly when it is due, however slow the
    machine (a real 0.2 s build could pass between two looks)."""
    clock = ManualClock()
    with XnatEmulator(data_dir=tmp_path / "x", receiving_idle=300, build_seconds=1, clock=clock) as emulator:
        s = make_study(tmp_path / "d", comments="Project: P1")
        r = do_import(http, emulator, zip_files(s.files, tmp_path / "s.zip"))
        [uri] = uri_lines(r)
        seen = [row_for(prearchive_rows(http, emulator, "P1"), uri)["status"]]
        assert seen == ["RECEIVING"]
        # Not built yet: the session document is not available.
        assert http.get(emulator.url + uri, params={"format": "xml"}, timeout=10).status_code == 404
        for step in (299, 2, 0.5, 0.6):  # quiet for 300 s: built, for 1 s: ready
            clock.advance(step)
            status = row_for(prearchive_rows(http, emulator, "P1"), uri)["status"]
            if status != seen[-1]:
                seen.append(status)
        assert seen == ["RECEIVING", "BUILDING", "READY"]
        assert http.get(emulator.url + uri, params={"format": "xml"}, timeout=10).status_code == 200


def test_prevent_auto_commit_stays_receiving(http, tmp_path):
    clock = ManualClock()
    with XnatEmulator(data_dir=tmp_path / "x", receiving_idle=300, build_seconds=1, clock=clock) as emu:
        s = make_study(tmp_path / "d", comments="Project: P1")
        r = do_import(http, emu, zip_files(s.files, tmp_path / "s.zip"), prevent_auto_commit="true")
        [uri] = uri_lines(r)
        clock.advance(3600)  # long past XNAT's 300 s of quiet and the build
        emu.tick()
        row = row_for(prearchive_rows(http, emu, "P1"), uri)
        assert row["status"] == "RECEIVING" and row["prevent_auto_commit"] == "true"


# ---- listing shape -------------------------------------------------------------------------------------
def test_prearchive_row_after_import_has_xnat_keys_all_strings(emulator, http, study_zip):
    uri = uri_lines(do_import(http, emulator, study_zip, dest="/prearchive/projects/P1", SOURCE="scanner-3"))[0]
    r = http.get(emulator.url + "/data/prearchive/projects/P1", params={"format": "json"}, timeout=10)
    rs = r.json()["ResultSet"]
    assert isinstance(rs["totalRecords"], str) and rs["totalRecords"] == "1"
    row = row_for(rs["Result"], uri)
    assert set(row) == ROW_KEYS
    assert all(isinstance(v, str) for v in row.values())
    assert row["SOURCE"] == "scanner-3"
    assert row["scan_date"].startswith("2024-01-15")


# ---- fault: succeed then 504 ---------------------------------------------------------------------------
def test_succeed_then_504_on_import_does_the_work_once(emulator, http, study, study_zip):
    emulator.succeed_then_504("POST", r"/data/services/import")
    r = do_import(http, emulator, study_zip, dest="/prearchive/projects/P1")
    assert r.status_code == 504
    rows = prearchive_rows(http, emulator, "P1")
    assert len(rows) == 1
    assert rows[0]["status"] == "READY" and rows[0]["tag"] == study.study_uid
    sessions = [p for p in (emulator.data_dir / "prearchive" / "P1").glob("*/*") if p.is_dir()]
    assert len(sessions) == 1
    # The rule is used up: the next import answers normally.
    assert do_import(http, emulator, study_zip, dest="/prearchive/projects/P1").status_code == 200


def test_succeed_then_504_on_import_to_archive(emulator, http, study_zip):
    emulator.succeed_then_504("POST", r"/data/services/import")
    r = do_import(http, emulator, study_zip, dest="/archive/projects/P1")
    assert r.status_code == 504
    exps = http.get(emulator.url + "/data/projects/P1/experiments", params={"format": "json"},
                    timeout=10).json()["ResultSet"]["Result"]
    assert [e["label"] for e in exps] == ["S01_MR1"]
    assert prearchive_rows(http, emulator) == []


@pytest.mark.parametrize("ctype", ["text/plain"])
def test_unrecognised_content_type_is_refused(emulator, http, study_zip, ctype):
    r = do_import(http, emulator, study_zip, ctype, dest="/prearchive")
    assert r.status_code in (400, 415)
    assert prearchive_rows(http, emulator) == []


def test_octet_stream_body_is_unsupported_format(emulator, http, study_zip):
    r = do_import(http, emulator, study_zip, "application/octet-stream", dest="/prearchive")
    assert r.status_code == 400 and "<h3>" in r.text
    assert prearchive_rows(http, emulator) == []


def test_multipart_with_inbody_is_406(emulator, http, study_zip):
    r = http.post(emulator.url + IMPORT, params={"inbody": "true", "dest": "/prearchive"},
                  files={"file": ("study.zip", study_zip.read_bytes(), "application/zip")}, timeout=30)
    assert r.status_code == 406
    assert prearchive_rows(http, emulator) == []


# ---- overwrite on import to the archive ----------------------------------------------------------------
def test_import_to_archive_again_without_overwrite_is_400_and_row_conflict(emulator, http, study, study_zip):
    assert do_import(http, emulator, study_zip, dest="/archive/projects/P1").status_code == 200
    r = do_import(http, emulator, study_zip, dest="/archive/projects/P1")
    assert r.status_code == 400, r.text
    # DicomZipImporter.xmlBuild's fixed text, exactly, and no reason: that is in the row's prearchive log.
    assert "<h3>unable to archive for the Prearchive session</h3>" in r.text
    assert "exists" not in r.text
    [row] = prearchive_rows(http, emulator, "P1")  # the second copy waits in the prearchive
    assert row["status"] == "CONFLICT"
    log = http.get(emulator.url + "/data" + row["url"] + "/logs/last", timeout=10)
    assert log.text == "Session already exists, retry with overwrite enabled"
    assert sum(len(v) for v in dicom_on_disk(session_dir(emulator, "/data" + row["url"])).values()) == \
        len(study.files)
    exps = http.get(emulator.url + "/data/projects/P1/experiments", params={"format": "json"}, timeout=10)
    assert len(exps.json()["ResultSet"]["Result"]) == 1


def test_import_to_archive_with_overwrite_append_merges(emulator, http, tmp_path):
    uid = "1.2.826.0.1.3680043.8.498.777"
    a = make_study(tmp_path / "a", study_uid=uid, series=((1, "T1"),))
    b = make_study(tmp_path / "b", study_uid=uid, series=((2, "T2"),))
    r1 = do_import(http, emulator, zip_files(a.files, tmp_path / "a.zip"), dest="/archive/projects/P1")
    r2 = do_import(http, emulator, zip_files(b.files, tmp_path / "b.zip"), dest="/archive/projects/P1",
                   overwrite="append")
    assert uri_lines(r1) == uri_lines(r2) == ["/data/archive/projects/P1/subjects/S01/experiments/S01_MR1"]
    session = emulator.data_dir / "archive" / "P1" / "arc001" / "S01_MR1"
    assert dicom_on_disk(session) == {"1": sop_uids(a.files), "2": sop_uids(b.files)}
    assert prearchive_rows(http, emulator) == []


def test_a_failed_study_stops_the_import_later_ones_stay_receiving(emulator, http, tmp_path):
    """xmlBuild builds and archives the import's sessions in order and stops at the first failure: the one
    before it is archived, the failed one is CONFLICT, the one after it stays RECEIVING (unbuilt) until the
    clock builds it, as XNAT's rebuilder does. On a prearchive clock moved by hand: RECEIVING lasts only
    ``receiving_idle`` (0.5 s here), which a slow machine could let pass before the test looks."""
    emulator.prearchive.clock = clock = ManualClock()
    a = make_study(tmp_path / "a", patient_name="S01", patient_id="S01_MR1", instances=1)
    b = make_study(tmp_path / "b", patient_name="S02", patient_id="S02_MR1", instances=1)
    c = make_study(tmp_path / "c", patient_name="S03", patient_id="S03_MR1", instances=1)
    assert do_import(http, emulator, zip_files(b.files, tmp_path / "b.zip"), dest="/archive/projects/P1").ok
    body = zip_files(a.files + b.files + c.files, tmp_path / "abc.zip")
    r = do_import(http, emulator, body, dest="/archive/projects/P1")
    assert r.status_code == 400 and "<h3>unable to archive for the Prearchive session</h3>" in r.text
    statuses = {x["name"]: x["status"] for x in prearchive_rows(http, emulator, "P1")}
    assert statuses == {"S02_MR1": "CONFLICT", "S03_MR1": "RECEIVING"}
    exps = http.get(emulator.url + "/data/projects/P1/experiments", params={"format": "json"}, timeout=10)
    assert sorted(e["label"] for e in exps.json()["ResultSet"]["Result"]) == ["S01_MR1", "S02_MR1"]
    clock.advance(emulator.prearchive.receiving_idle)  # quiet for long enough: built...
    assert {x["name"]: x["status"] for x in prearchive_rows(http, emulator, "P1")}.get("S03_MR1") == "BUILDING"
    clock.advance(emulator.prearchive.build_seconds)  # ... and done at the next look
    assert {x["name"]: x["status"] for x in prearchive_rows(http, emulator, "P1")}.get("S03_MR1") == "READY"


@pytest.mark.parametrize("flag", ["quarantine", "triggerPipelines"])
def test_import_to_archive_ignores_quarantine_and_trigger_pipelines(emulator, http, study_zip, flag):
    """DicomZipImporter.populateAdditionalValues passes only overwrite_files on: the session is archived active."""
    r = do_import(http, emulator, study_zip, dest="/archive/projects/P1", **{flag: "true" if flag == "quarantine"
                                                                             else "false"})
    assert r.status_code == 200, r.text
    exp = http.get(emulator.url + "/data/projects/P1/experiments/S01_MR1", params={"format": "json"}, timeout=10)
    eid = exp.json()["items"][0]["data_fields"]["ID"]
    assert http.get(f"{emulator.url}/data/experiments/{eid}/status", timeout=10).text == "active"


def test_prearchive_dest_in_an_auto_archive_project_is_left_ready(emulator, http, study_zip):
    emulator.add_project("PA", prearchive="auto-archive")
    [uri] = uri_lines(do_import(http, emulator, study_zip, dest="/prearchive/projects/PA", **{"auto-archive": "true"}))
    assert uri.startswith("/data/prearchive/projects/PA/")
    time.sleep(emulator.prearchive.receiving_idle + 2 * emulator.prearchive.build_seconds)
    [row] = prearchive_rows(http, emulator, "PA")
    assert (row["status"], row["autoarchive"]) == ("READY", "AutoArchive")
    exps = http.get(emulator.url + "/data/projects/PA/experiments", params={"format": "json"}, timeout=10)
    assert exps.json()["ResultSet"]["Result"] == []


# ---- auto-archive and interrupted builds ---------------------------------------------------------------
def test_auto_archive_project_archives_after_the_build(emulator, http, tmp_path):
    emulator.add_project("PA", prearchive="auto-archive")
    s = make_study(tmp_path / "d", comments="Project: PA")
    [uri] = uri_lines(do_import(http, emulator, zip_files(s.files, tmp_path / "s.zip")))
    assert uri.startswith("/data/prearchive/projects/PA/")

    def archived() -> bool:
        r = http.get(emulator.url + "/data/projects/PA/experiments", params={"format": "json"}, timeout=10)
        return [e["label"] for e in r.json()["ResultSet"]["Result"]] == ["S01_MR1"]

    wait_for(archived)
    assert prearchive_rows(http, emulator, "PA") == []
    assert (emulator.data_dir / "archive" / "PA" / "arc001" / "S01_MR1" / "SCANS" / "2" / "DICOM").is_dir()


def test_files_arriving_while_building_interrupt_the_build(tmp_path):
    """On the emulator's clock, moved by hand: RECEIVING_INTERRUPT lasts only until the session is quiet again
    (0.3 s here), which a slow machine could let pass before its next look."""
    s = make_study(tmp_path / "d", comments="Project: P1")
    clock = ManualClock()
    with XnatEmulator(data_dir=tmp_path / "x", projects=["P1"], receiving_idle=0.3, build_seconds=3,
                      queue_seconds=0.2, clock=clock) as emu, requests.Session() as http:
        http.auth = ("admin", "admin")
        [uri] = uri_lines(do_import(http, emu, zip_files(s.series["1"], tmp_path / "1.zip")))
        status = lambda: row_for(prearchive_rows(http, emu, "P1"), uri)["status"]  # noqa: E731
        assert status() == "RECEIVING"
        clock.advance(0.3)  # quiet for receiving_idle: built (for 3 s)
        assert status() == "BUILDING"
        assert uri_lines(do_import(http, emu, zip_files(s.series["2"], tmp_path / "2.zip"))) == [uri]
        assert status() == "RECEIVING_INTERRUPT"
        assert len(prearchive_rows(http, emu, "P1")) == 1
        r = http.post(emu.url + uri, params={"action": "build"}, timeout=10)  # no need to wait for the clock
        assert r.status_code == 200
        assert status() == "READY"
        scans = http.get(emu.url + uri + "/scans", params={"format": "json"}, timeout=10).json()
        assert [x["ID"] for x in scans["ResultSet"]["Result"]] == ["1", "2"]


# ---- gradual-DICOM: one raw DICOM file -----------------------------------------------------------------
def test_gradual_dicom_reads_only_upper_case_routing_names(emulator, http, tmp_path):
    s = make_study(tmp_path / "d", series=((4, "T1"),), instances=2, study_description="P1")
    lower = do_import(http, emulator, s.files[0].read_bytes(), "application/dicom",
                      **{"import-handler": "gradual-DICOM", "project": "P2"})
    [u1] = uri_lines(lower)
    assert u1.startswith("/data/prearchive/projects/P1/")  # lower-case project ignored: headers decide
    upper = do_import(http, emulator, s.files[1].read_bytes(), "application/dicom",
                      **{"import-handler": "gradual-DICOM", "PROJECT_ID": "P2"})
    [u2] = uri_lines(upper)
    assert u2.startswith("/data/prearchive/projects/P2/")
    assert dicom_on_disk(session_dir(emulator, u1)) == {"4": sop_uids(s.files[:1])}
    assert dicom_on_disk(session_dir(emulator, u2)) == {"4": sop_uids(s.files[1:])}
