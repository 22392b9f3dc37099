"""A retry-safe import whose earlier try was cut off mid-upload (the worker died, the link dropped).

XNAT reads an import as it arrives, so the entries received whole before the break are in the prearchive, in a
row left RECEIVING (``DicomZipImporter.call`` throws before ``xmlBuild``); its rebuilder builds that row after
the idle time (READY), and archives it if the project auto-archives. A retry that finds such a row must not
count the study as imported: the user would get a session missing files and no error. XNAT adds a study sent
again to its row (``PrearcDatabase.eitherGetOrCreateSession``: every status is interruptable), so sending it
again completes that row without a second copy; a session already archived with missing files is refused with
what to do, before anything is sent.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import requests

from tests.oracles.zips import locals_of
from tests.support import prearchive_rows as rows
from xnat_provider.client import XnatClient
from xnat_provider.client.errors import XnatConflictError, XnatError
from xnat_provider.client.import_body import plan_import, zip_stream
from xnat_provider.client.imports import ImportMemory
from xnat_provider.testing import XnatEmulator
from xnat_provider.testing.clock import ManualClock
from xnat_provider.testing.samples import Study, make_study

IMPORT = "/data/services/import"
FILES = 6


@pytest.fixture
def study(tmp_path: Path) -> Study:
    return make_study(tmp_path / "src", series=((1, "T1"), (2, "T2")), instances=3)


@pytest.fixture
def clock(emulator: XnatEmulator) -> ManualClock:
    emulator.prearchive.clock = clock = ManualClock()
    return clock


def source(study: Study) -> Path:
    """The folder holding the study's files (what the DAG would import)."""
    return Path(os.path.commonpath(study.files))


def cut_off_try(emulator: XnatEmulator, study: Study, project: str, destination: str) -> dict:
    """One try whose upload breaks off inside the fifth of the six files; the memory it saved before sending."""
    src = source(study)
    body = b"".join(zip_stream(plan_import(src).entries))
    fifth = locals_of(body)[4]
    emulator.cut_request_after("POST", IMPORT, after_bytes=(fifth.data + fifth.end) // 2)
    saved: dict = {}
    with XnatClient(emulator.url, "admin", "admin", retries=1, backoff=0.01) as c, pytest.raises(XnatError):
        c.import_dicom_retry_safe([src], project, memory=ImportMemory({}, saved.update), destination=destination)
    assert saved, "the memory is saved before the POST"
    return saved


def retry(emulator: XnatEmulator, study: Study, project: str, destination: str, saved: dict):
    with XnatClient(emulator.url, "admin", "admin", backoff=0.01) as c:
        return c.import_dicom_retry_safe([source(study)], project, memory=ImportMemory(saved),
                                         destination=destination)


def files_of_row(emulator: XnatEmulator, url: str) -> int:
    with XnatClient(emulator.url, "admin", "admin") as c:
        return sum(len(files) for files in c.list_prearchive_files("/data" + url).values())


def archived_files(http: requests.Session, emulator: XnatEmulator, project: str, study: Study) -> int:
    subject, label = plan_import(source(study)).labels[study.study_uid]
    base = f"{emulator.url}/data/projects/{project}/subjects/{subject}/experiments/{label}/scans"
    scans = http.get(base, params={"format": "json"}).json()["ResultSet"]["Result"]
    return sum(len(http.get(f"{base}/{s['ID']}/resources/DICOM/files", params={"format": "json"})
                   .json()["ResultSet"]["Result"]) for s in scans)


def settle(emulator: XnatEmulator, clock: ManualClock, http: requests.Session, project: str) -> None:
    """XNAT's rebuilder: quiet for the idle time, then built (and archived, in an auto-archive project)."""
    clock.advance(emulator.prearchive.receiving_idle)
    rows(http, emulator, project)
    clock.advance(emulator.prearchive.build_seconds)
    rows(http, emulator, project)


def test_a_retry_while_the_cut_row_is_receiving_completes_it(emulator: XnatEmulator, http: requests.Session,
                                                              study: Study, clock: ManualClock) -> None:
    saved = cut_off_try(emulator, study, "P1", "prearchive")
    [cut] = rows(http, emulator, "P1")
    assert cut["status"] == "RECEIVING"

    [done] = retry(emulator, study, "P1", "prearchive", saved)

    [row] = rows(http, emulator, "P1")
    assert (row["url"], row["status"]) == (cut["url"], "READY") and done.ref.uri == "/data" + row["url"]
    assert files_of_row(emulator, row["url"]) == FILES
    assert emulator.request_count("POST", IMPORT) == 2


def test_a_retry_after_the_cut_row_was_built_sends_the_study_again(
        emulator: XnatEmulator, http: requests.Session, study: Study, clock: ManualClock,
        caplog: pytest.LogCaptureFixture) -> None:
    """The row XNAT built from the first four files looks like a finished import: only its file count tells."""
    saved = cut_off_try(emulator, study, "P1", "prearchive")
    settle(emulator, clock, http, "P1")
    [cut] = rows(http, emulator, "P1")
    assert cut["status"] == "READY" and files_of_row(emulator, cut["url"]) == 4
    caplog.set_level(logging.WARNING, logger="xnat_provider.client")

    [done] = retry(emulator, study, "P1", "prearchive", saved)

    [row] = rows(http, emulator, "P1")
    assert row["url"] == cut["url"] and done.status == "READY"
    assert files_of_row(emulator, row["url"]) == FILES
    assert emulator.request_count("POST", IMPORT) == 2
    assert "holds 4 of the 6 DICOM files" in caplog.text


def test_a_retry_to_the_archive_after_the_cut_row_was_built_archives_all_of_it(
        emulator: XnatEmulator, http: requests.Session, study: Study, clock: ManualClock) -> None:
    saved = cut_off_try(emulator, study, "P1", "archive")
    settle(emulator, clock, http, "P1")
    assert [r["status"] for r in rows(http, emulator, "P1")] == ["READY"]  # a manual project: not archived

    [done] = retry(emulator, study, "P1", "archive", saved)

    assert done.status == "ARCHIVED" and rows(http, emulator, "P1") == []
    assert archived_files(http, emulator, "P1", study) == FILES


def test_a_session_archived_with_files_missing_is_refused_before_sending(
        emulator: XnatEmulator, http: requests.Session, study: Study, clock: ManualClock) -> None:
    """An auto-archive project archives the row XNAT built from what arrived: sending the study again would be
    refused (its files are there) or, to the prearchive, make a second copy. The retry says so and sends
    nothing."""
    emulator.add_project("AUTO", prearchive="auto-archive")
    saved = cut_off_try(emulator, study, "AUTO", "archive")
    settle(emulator, clock, http, "AUTO")
    assert rows(http, emulator, "AUTO") == []
    label = plan_import(source(study)).labels[study.study_uid][1]
    assert archived_files(http, emulator, "AUTO", study) == 4

    with pytest.raises(XnatConflictError, match=rf"{label} is in the archive with 4 of the 6 DICOM files"):
        retry(emulator, study, "AUTO", "archive", saved)
    assert emulator.request_count("POST", IMPORT) == 1


@pytest.fixture
def xnat_keeps_back_two(study: Study, monkeypatch: pytest.MonkeyPatch) -> None:
    """XNAT stores fewer files than it was sent, for reasons of its own (a series import filter, the site's
    anonymisation script rejecting a file): here it drops two of the six as it receives them."""
    import pydicom

    from xnat_provider.testing import dicom_import

    dropped = {f"{pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID}.dcm" for f in study.files[:2]}
    real = dicom_import.os.replace

    def replace(src, dst):
        if Path(dst).name in dropped:
            Path(src).unlink()
            return None
        return real(src, dst)

    monkeypatch.setattr(dicom_import.os, "replace", replace)


@pytest.mark.usefixtures("xnat_keeps_back_two")
def test_files_xnat_keeps_back_after_a_whole_upload_are_not_a_cut_off(emulator: XnatEmulator, study: Study,
                                                                      http: requests.Session) -> None:
    """After a 504 (the body reached XNAT whole) the archived session with four of six files is this import's
    work, not a cut-off upload: returned, not refused, not sent again."""
    emulator.succeed_then_504("POST", IMPORT)
    with XnatClient(emulator.url, "admin", "admin", backoff=0.01) as c:
        [ref] = c.import_dicom(source(study), "P1", destination="archive", settle_seconds=1)
    assert not ref.in_prearchive and archived_files(http, emulator, "P1", study) == 4
    assert emulator.request_count("POST", IMPORT) == 1


@pytest.mark.usefixtures("xnat_keeps_back_two")
def test_a_retry_after_an_answered_try_does_not_count_files(emulator: XnatEmulator, study: Study,
                                                            http: requests.Session) -> None:
    """The memory records that XNAT answered the earlier try: its row with four of six files is complete as far
    as XNAT is concerned, and the retry sends nothing."""
    saved: dict = {}
    with XnatClient(emulator.url, "admin", "admin") as c:
        c.import_dicom_retry_safe([source(study)], "P1", memory=ImportMemory({}, saved.update))
    [again] = retry(emulator, study, "P1", "prearchive", saved)
    assert again.status == "READY" and files_of_row(emulator, rows(http, emulator, "P1")[0]["url"]) == 4
    assert emulator.request_count("POST", IMPORT) == 1
