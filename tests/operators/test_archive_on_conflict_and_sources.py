"""``XnatArchiveOperator``: ``on_conflict="append"`` merges in one archive request (no first try left in
CONFLICT), the ``overwrite`` sent for each ``on_conflict``, and prearchive sessions given as
project/timestamp/folder dicts."""

from __future__ import annotations

from typing import Any

import pytest

from tests.airflow_helpers import context
from tests.operators.conftest import Server, resent_with_one_more
from xnat_provider.operators.archive import XnatArchiveOperator
from xnat_provider.operators.imports import XnatImportOperator


def ctx() -> dict[str, Any]:
    return context()


def imported(source: Any, project: str = "P1") -> list[dict]:
    return XnatImportOperator(task_id="import", source=str(source), project=project).execute(
        context())


@pytest.fixture
def conflict(xnat_conn, archived, study, tmp_path) -> list[dict]:
    """S01_MR1 archived (scans 1 and 2, 3 files each), and a prearchive copy of scan 1 with one of its archived
    instances again and one more: without overwrite XNAT's merge meets a file it has (a conflict); XNAT merges a
    new series into the session even without overwrite, so the conflict needs a file it already holds."""
    return imported(resent_with_one_more(study, tmp_path / "extra"))


def test_on_conflict_append_merges_with_one_archive_request(xnat_conn, server: Server, conflict) -> None:
    before = server.archives()
    result = XnatArchiveOperator(task_id="archive", prearchive_sessions=conflict, on_conflict="append").execute(ctx())
    assert [(r["label"], r["status"]) for r in result] == [("S01_MR1", "archived")]
    assert server.archives() - before == 1  # no first try without overwrite left in CONFLICT
    assert server.prearchive() == [] and len(server.scan_files("S01_MR1", "1")) == 4


def test_on_conflict_append_archives_a_new_session_as_usual(xnat_conn, server: Server, study_zip) -> None:
    result = XnatArchiveOperator(task_id="archive", prearchive_sessions=imported(study_zip),
                                 on_conflict="append").execute(ctx())
    assert [(r["label"], r["status"], r["subject"]) for r in result] == [("S01_MR1", "archived", "S01")]
    assert result[0]["uri"] == "/data/archive/projects/P1/subjects/S01/experiments/S01_MR1"
    assert server.archives() == 1 and server.labels() == ["S01_MR1"]


@pytest.mark.parametrize(("overwrite", "on_conflict", "sent"), [
    (None, "fail", None), ("none", "fail", "none"), (None, "skip", None), (None, "append", "append"),
    ("none", "append", "append"), ("delete", "append", "delete"), ("append", "fail", "append")])
def test_overwrite_sent(overwrite: str | None, on_conflict: str, sent: str | None) -> None:
    op = XnatArchiveOperator(task_id="archive", project="P1", overwrite=overwrite, on_conflict=on_conflict)
    assert op._overwrite() == sent


def test_sessions_given_as_project_timestamp_folder(xnat_conn, server: Server, study_zip) -> None:
    imported(study_zip)
    [found] = server.prearchive()
    given = {"project": found["project"], "timestamp": found["timestamp"], "folder": found["folderName"]}
    result = XnatArchiveOperator(task_id="archive", prearchive_sessions=[given]).execute(ctx())
    assert [(r["label"], r["status"]) for r in result] == [("S01_MR1", "archived")]
    assert server.prearchive() == []
