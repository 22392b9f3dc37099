"""``XnatImportOperator`` called directly: every source kind, both destinations, every option, bad input, and
the retry of an import that the server did although it answered 504 (inside one try and across tries)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.airflow_helpers import FakeStore, context
from tests.operators.conftest import IMPORT, Server, second_study, study_zip_of
from xnat_provider.client.errors import XnatBadInputError, XnatConflictError, XnatServerError
from xnat_provider.links import XCOM_KEY
from xnat_provider.operators.imports import STATE_KEY, XnatImportOperator

SESSION_GET = r"^/data/prearchive/projects/P1/[^/]+/[^/]+$"  # one prearchive session (not the listing)


def run(ctx=None, **kwargs):
    op = XnatImportOperator(task_id="import", project=kwargs.pop("project", "P1"), **kwargs)
    ctx = ctx if ctx is not None else context()
    return op.execute(ctx), ctx, op


def test_import_a_directory_to_the_prearchive(xnat_conn, server: Server, study) -> None:
    result, ctx, _ = run(source=str(study.files[0].parent))
    assert [(r["project"], r["subject"], r["label"], r["status"], r["in_prearchive"]) for r in result] == [
        ("P1", "S01", "S01_MR1", "READY", True)]
    assert result[0]["study_uid"] == study.study_uid
    rows = server.prearchive()
    assert [(r["name"], r["status"], r["tag"]) for r in rows] == [("S01_MR1", "READY", study.study_uid)]
    assert result[0]["uri"] == f"/data/prearchive/projects/P1/{rows[0]['timestamp']}/{rows[0]['folderName']}"
    scans = server.http.get(f"{server.url}{result[0]['uri']}/scans", params={"format": "json"}).json()
    assert sorted(s["ID"] for s in scans["ResultSet"]["Result"]) == ["1", "2"]
    assert server.labels() == [] and server.imports() == 1
    # The XNAT session link points at the prearchive session's page.
    assert ctx["ti"].pushed[XCOM_KEY] == f"{server.url}{result[0]['uri']}?format=html"
    # What was sent is remembered for a retry.
    assert next(iter(ctx["task_state_store"].data[STATE_KEY].values()))["studies"] == [study.study_uid]


def test_import_one_file(xnat_conn, server: Server, study) -> None:
    result, _, _ = run(source=study.files[0])
    assert [(r["label"], r["status"]) for r in result] == [("S01_MR1", "READY")]
    scans = server.http.get(f"{server.url}{result[0]['uri']}/scans", params={"format": "json"}).json()
    assert [s["ID"] for s in scans["ResultSet"]["Result"]] == ["1"]


def test_import_a_glob_of_zips_to_the_archive_with_labels(xnat_conn, server: Server, study, tmp_path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    study_zip_of(drop, study, "a.zip")
    study_zip_of(drop, second_study(tmp_path), "b.zip")
    (drop / "notes.txt").write_text("not matched by the glob")
    result, ctx, _ = run(source=str(drop / "*.zip"), destination="archive")
    assert sorted((r["label"], r["subject"], r["status"], r["in_prearchive"]) for r in result) == [
        ("S01_MR1", "S01", "ARCHIVED", False), ("S02_MR1", "S02", "ARCHIVED", False)]
    assert server.labels() == ["S01_MR1", "S02_MR1"] and server.prearchive() == []
    assert server.imports() == 2
    assert sorted(s["ID"] for s in server.scans("S02_MR1")) == ["1", "2"]
    assert len(server.scan_files("S01_MR1", "1")) == 3
    assert ctx["ti"].pushed[XCOM_KEY] == f"{server.url}/data/projects/P1/experiments/{result[0]['label']}?format=html"


def test_import_with_subject_and_session_given(xnat_conn, server: Server, study_zip) -> None:
    result, _, _ = run(source=study_zip, subject="SUBJ_A", experiment="SESS_A", destination="archive")
    assert [(r["subject"], r["label"]) for r in result] == [("SUBJ_A", "SESS_A")]
    exp = server.experiments()
    assert [(e["label"], e["subject_label"]) for e in exp] == [("SESS_A", "SUBJ_A")]


def test_overwrite_policies_on_the_archive(xnat_conn, server: Server, study, tmp_path) -> None:
    run(source=study.files[0], destination="archive")  # scan 1, one file
    assert [len(server.scan_files("S01_MR1", "1"))] == [1]
    # The same session again without overwrite: a conflict, and the data waits in the prearchive.
    with pytest.raises(XnatConflictError):
        run(source=study.files[1], destination="archive")
    assert server.labels() == ["S01_MR1"]
    assert [r["status"] for r in server.prearchive()] == ["CONFLICT"]
    # append merges the new file in, with the file waiting in CONFLICT: XNAT adds a study sent again to its row
    # in the prearchive whatever its status, so that row is what gets archived.
    result, _, _ = run(source=study.files[2], destination="archive", overwrite="append")
    assert [r["status"] for r in result] == ["ARCHIVED"]
    assert server.labels() == ["S01_MR1"] and server.prearchive() == []
    assert len(server.scan_files("S01_MR1", "1")) == 3
    # delete overrides XNAT's checks and merges too: nothing is deleted, scan 1 still holds all three files.
    run(source=study.files[1], destination="archive", overwrite="delete")
    assert server.labels() == ["S01_MR1"]
    assert len(server.scan_files("S01_MR1", "1")) == 3
    # The same file again with append: XNAT's file check refuses it; delete overwrites it.
    with pytest.raises(XnatConflictError, match="matching files"):
        run(source=study.files[0], destination="archive", overwrite="append")
    run(source=study.files[0], destination="archive", overwrite="delete")
    assert len(server.scan_files("S01_MR1", "1")) == 3


@pytest.mark.parametrize("destination", ["archive", "prearchive"])
@pytest.mark.parametrize("flags", [{"quarantine": True}, {"trigger_pipelines": False}])
def test_quarantine_and_trigger_pipelines_are_refused(xnat_conn, server: Server, study_zip, destination,
                                                      flags) -> None:
    """XNAT's import service drops both (DicomZipImporter.populateAdditionalValues keeps overwrite_files only):
    refused when the DAG is parsed, and again when a rendered task runs, before anything is read or sent."""
    with pytest.raises(XnatBadInputError, match="XnatArchiveOperator\\(quarantine=True"):
        XnatImportOperator(task_id="import", source=str(study_zip), project="P1", destination=destination, **flags)
    op = XnatImportOperator(task_id="import", source=str(study_zip), project="P1", destination=destination)
    op.quarantine, op.trigger_pipelines = flags.get("quarantine", False), flags.get("trigger_pipelines")
    with pytest.raises(XnatBadInputError, match="drops them"):
        op.execute(context())
    assert server.imports() == 0 and server.labels() == [] and server.prearchive() == []


def test_ignore_unparsable(xnat_conn, server: Server, study, tmp_path) -> None:
    folder = tmp_path / "mixed"
    shutil.copytree(study.files[0].parent, folder)
    (folder / "README.txt").write_text("scanner notes, not DICOM")
    with pytest.raises(XnatBadInputError, match=r"README\.txt"):
        run(source=folder)
    assert server.imports() == 0 and server.prearchive() == []
    result, _, _ = run(source=folder, ignore_unparsable=True)
    assert [r["status"] for r in result] == ["READY"]
    files = server.http.get(f"{server.url}{result[0]['uri']}/scans/1/resources/DICOM/files",
                            params={"format": "json"}).json()["ResultSet"]["Result"]
    assert len(files) == 3 and server.imports() == 1


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"source": "{missing}"}, "Nothing to import"),
    ({"source": "{missing}/*.zip"}, "Nothing to import"),
    ({"destination": "elsewhere"}, "destination"),
    ({"overwrite": "yes"}, "overwrite"),
    ({"project": "NOPE"}, "does not exist"),
    ({"project": "bad/label"}, "label"),
    ({"experiment": "bad label"}, "label"),
    ({"source": "{glob}"}, "No DICOM"),  # the second match is bad: the first is not sent either
    ({"source": "{fifo}"}, "neither a regular file nor a folder"),  # a pipe: reading it would hang
])
def test_bad_input_fails_before_any_data_moves(xnat_conn, server: Server, study_zip, tmp_path, kwargs,
                                               match) -> None:
    kwargs = {"source": str(study_zip), **kwargs}
    (tmp_path / "z_bad.zip").write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip: no DICOM in it
    os.mkfifo(tmp_path / "pipe")
    kwargs["source"] = kwargs["source"].format(missing=tmp_path / "missing", glob=tmp_path / "*.zip",
                                               fifo=tmp_path / "pipe")
    store = FakeStore()
    with pytest.raises(XnatBadInputError, match=match):
        run(context(store), **kwargs)
    assert server.imports() == 0 and server.prearchive() == [] and server.labels() == []


def test_a_504_after_the_work_gives_one_session_within_one_try(xnat_conn, server: Server, study_zip) -> None:
    emu = xnat_conn
    emu.succeed_then_504("POST", IMPORT)
    result, _, _ = run(source=study_zip)
    assert [(r["label"], r["status"]) for r in result] == [("S01_MR1", "READY")]
    assert len(server.prearchive()) == 1 and server.imports() == 1


def test_a_504_after_the_work_gives_one_archived_session_within_one_try(xnat_conn, server: Server,
                                                                        study_zip) -> None:
    xnat_conn.succeed_then_504("POST", IMPORT)
    result, _, _ = run(source=study_zip, destination="archive")
    assert [(r["label"], r["status"]) for r in result] == [("S01_MR1", "ARCHIVED")]
    assert server.labels() == ["S01_MR1"] and server.prearchive() == [] and server.imports() == 1


@pytest.mark.parametrize("destination", ["prearchive", "archive"])
def test_a_retry_after_the_work_was_done_sends_nothing_again(xnat_conn, server: Server, study_zip, after_request,
                                                             destination) -> None:
    """The first try's POST took effect (answered 504), then the try failed; the next try finds the session."""
    emu = xnat_conn
    emu.succeed_then_504("POST", IMPORT)
    # Right after the POST, the listings the client (and the operator) read next fail for the rest of the try
    # (3 attempts of one request): the try fails although the session arrived.
    after = SESSION_GET if destination == "prearchive" else r"^/data/projects/P1/experiments$"
    after_request("POST", IMPORT, lambda: emu.fail_next("GET", after, status=503, count=3))
    store = FakeStore()
    with pytest.raises(XnatServerError):
        run(context(store), source=study_zip, destination=destination)
    assert server.imports() == 1
    result, ctx, _ = run(context(store), source=study_zip, destination=destination)
    assert server.imports() == 1
    assert [r["label"] for r in result] == ["S01_MR1"]
    if destination == "prearchive":
        assert [(r["name"], r["status"]) for r in server.prearchive()] == [("S01_MR1", "READY")]
        assert result[0]["status"] == "READY"
    else:
        assert server.labels() == ["S01_MR1"] and server.prearchive() == []
        assert result[0]["status"] == "ARCHIVED"
    assert XCOM_KEY in ctx["ti"].pushed
    # A new task (no stored state) imports again: the state is what recognises a retry.
    run(source=study_zip, destination="prearchive")
    assert server.imports() == 2


def test_retry_state_survives_only_for_what_was_sent(xnat_conn, server: Server, study_zip, tmp_path) -> None:
    """A try whose POST the server refused (500, nothing done) leaves nothing behind: the retry sends it."""
    emu = xnat_conn
    emu.fail_next("POST", IMPORT, status=500)
    store = FakeStore()
    with pytest.raises(XnatServerError):
        run(context(store), source=study_zip)
    assert server.prearchive() == []
    result, _, _ = run(context(store), source=study_zip)
    assert [r["status"] for r in result] == ["READY"] and len(server.prearchive()) == 1
    assert server.imports() == 2


def test_source_may_be_a_path_object(xnat_conn, server: Server, study_zip: Path) -> None:
    result, _, _ = run(source=study_zip)
    assert len(result) == 1 and len(server.prearchive()) == 1


def test_a_retry_of_an_append_whose_first_post_did_nothing_sends_it(xnat_conn, server: Server, study,
                                                                    tmp_path) -> None:
    """The session exists before the task; the first try's append was refused (500, nothing done): the retry
    must send it, not take the session that was already there for its own work."""
    emu = xnat_conn
    run(source=study.files[0], destination="archive")
    assert len(server.scan_files("S01_MR1", "1")) == 1
    emu.fail_next("POST", IMPORT, status=500)
    store = FakeStore()
    with pytest.raises(XnatServerError):
        run(context(store), source=study.files[1], destination="archive", overwrite="append")
    assert len(server.scan_files("S01_MR1", "1")) == 1
    result, _, _ = run(context(store), source=study.files[1], destination="archive", overwrite="append")
    assert [r["status"] for r in result] == ["ARCHIVED"]
    assert len(server.scan_files("S01_MR1", "1")) == 2 and server.imports() == 3
