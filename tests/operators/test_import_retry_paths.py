"""``XnatImportOperator`` across task tries, study by study, and the requests one run makes.

A retry sends only the studies an earlier try did not deliver (looking in the prearchive and the archive,
since a project may auto-archive), and one run reads each header once, checks the project once and lists a
prearchive once rather than once per session.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.airflow_helpers import FakeStore, context
from tests.operators.conftest import IMPORT, Server
from xnat_provider.client import import_body as client_imports
from xnat_provider.client.errors import XnatServerError
from xnat_provider.operators.imports import XnatImportOperator
from xnat_provider.testing.samples import make_study

SESSION_GET = r"^/data/prearchive/projects/P1/[^/]+/[^/]+$"


def run(ctx=None, **kwargs):
    op = XnatImportOperator(task_id="import", project=kwargs.pop("project", "P1"), **kwargs)
    return op.execute(ctx if ctx is not None else context())


def two_studies(root: Path) -> tuple[str, str]:
    a = make_study(root / "a", patient_name="S01", patient_id="S01_MR1")
    b = make_study(root / "b", patient_name="S02", patient_id="S02_MR1")
    return a.study_uid, b.study_uid


def test_a_retry_sends_only_the_studies_that_did_not_arrive(xnat_conn, server: Server, tmp_path,
                                                            after_request) -> None:
    emu = xnat_conn
    _a, b = two_studies(tmp_path / "src")
    emu.succeed_then_504("POST", IMPORT)

    def lose_b_and_fail_the_try() -> None:
        # B never made it (its row is gone); the listings the try reads next fail, so the try fails.
        [row] = [r for r in server.prearchive() if r["tag"] == b]
        server.http.delete(f"{server.url}/data{row['url']}").raise_for_status()
        emu.fail_next("GET", r"^/data/prearchive/projects/P1$", status=503, count=3)

    after_request("POST", IMPORT, lose_b_and_fail_the_try)
    store = FakeStore()
    with pytest.raises(XnatServerError):
        run(context(store), source=str(tmp_path / "src"))
    assert [r["name"] for r in server.prearchive()] == ["S01_MR1"] and server.imports() == 1

    result = run(context(store), source=str(tmp_path / "src"))

    assert server.imports() == 2
    assert sorted(r["name"] for r in server.prearchive()) == ["S01_MR1", "S02_MR1"]  # A not sent again
    assert sorted((r["label"], r["status"], r["in_prearchive"]) for r in result) == [
        ("S01_MR1", "READY", True), ("S02_MR1", "READY", True)]
    assert {r["uri"] for r in result} == {"/data" + r["url"] for r in server.prearchive()}


def test_a_retry_into_an_auto_archive_project_finds_the_ready_session(xnat_conn, server: Server, study_zip,
                                                                      after_request) -> None:
    """destination='prearchive' into a project that auto-archives: XNAT builds the session and leaves it READY
    (DicomZipImporter never archives a /prearchive dest); the retry finds the earlier try's row."""
    emu = xnat_conn
    emu.add_project("AA", prearchive="auto-archive")
    emu.succeed_then_504("POST", IMPORT)
    after_request("POST", IMPORT, lambda: emu.fail_next("GET", r"^/data/prearchive/projects/AA$", status=503,
                                                        count=3))
    store = FakeStore()
    with pytest.raises(XnatServerError):
        run(context(store), source=str(study_zip), project="AA")
    assert server.labels("AA") == [] and server.imports() == 1
    [row] = server.prearchive("AA")
    assert row["status"] == "READY"

    result = run(context(store), source=str(study_zip), project="AA")

    assert server.imports() == 1  # not sent again (a second copy would wait beside the first)
    assert [(r["label"], r["status"], r["in_prearchive"]) for r in result] == [("S01_MR1", "READY", True)]
    assert result[0]["uri"] == "/data" + row["url"]
    assert server.labels("AA") == [] and len(server.prearchive("AA")) == 1


def test_a_retry_finds_a_prearchive_session_archived_since(xnat_conn, server: Server, study_zip,
                                                           after_request) -> None:
    """Either outcome of a prearchive import is found: here the earlier try's session was archived in between
    (by someone, or by a server that forwards prearchive imports), and the retry reports the archive session."""
    emu = xnat_conn
    emu.succeed_then_504("POST", IMPORT)
    after_request("POST", IMPORT, lambda: emu.fail_next("GET", r"^/data/prearchive/projects/P1$", status=503,
                                                        count=3))
    store = FakeStore()
    with pytest.raises(XnatServerError):
        run(context(store), source=str(study_zip))
    [row] = server.prearchive()
    assert server.http.post(f"{server.url}/data/services/archive", params={"src": "/data" + row["url"]}).ok

    result = run(context(store), source=str(study_zip))

    assert server.imports() == 1
    assert [(r["label"], r["status"], r["in_prearchive"]) for r in result] == [("S01_MR1", "ARCHIVED", False)]
    assert result[0]["uri"] == "/data/archive/projects/P1/subjects/S01/experiments/S01_MR1"


def test_one_run_reads_headers_once_checks_the_project_once_and_lists_once(
    xnat_conn, server: Server, tmp_path, monkeypatch
) -> None:
    emu = xnat_conn
    two_studies(tmp_path / "src")
    files = [p for p in (tmp_path / "src").rglob("*") if p.is_file()]
    reads: list[int] = []
    real = client_imports._header

    def header(fh):
        reads.append(1)
        return real(fh)

    monkeypatch.setattr(client_imports, "_header", header)
    emu.faults.reset_counts()

    result = run(source=str(tmp_path / "src"))

    assert sorted(r["label"] for r in result) == ["S01_MR1", "S02_MR1"]
    assert all(r["status"] == "READY" and r["study_uid"] for r in result)
    assert len(reads) == len(files)
    assert emu.request_count("GET", r"^/data/projects/P1$") == 1
    assert emu.request_count("GET", r"^/data/prearchive/projects/P1$") == 2  # the snapshot, the statuses
    assert emu.request_count("GET", SESSION_GET) == 0
    assert server.imports() == 1
