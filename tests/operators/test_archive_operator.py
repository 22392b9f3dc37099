"""``XnatArchiveOperator`` called directly: from an upstream XCom or a selection, overwrite, relabel,
``on_conflict``, asset events, and the retry of an archive that the server did although it answered 504."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import xnat

from tests.airflow_helpers import FakeStore, context
from tests.operators.conftest import ARCHIVE, Server, resent_with_one_more, second_study, study_zip_of
from xnat_provider.client.errors import XnatBadInputError, XnatConflictError, XnatNotFoundError, XnatServerError
from xnat_provider.links import XCOM_KEY
from xnat_provider.operators.archive import ARCHIVED_ALIAS, XnatArchiveOperator
from xnat_provider.operators.imports import XnatImportOperator


def ctx(store: FakeStore | None = None) -> dict[str, Any]:
    return context(store)


def events(context: dict[str, Any]) -> list[tuple[str, dict]]:
    return [(a.uri, e) for alias, got in context["outlet_events"].items() if alias.name == ARCHIVED_ALIAS
            for a, e in got.added]


def archive(context: dict[str, Any] | None = None, **kwargs: Any) -> tuple[list[dict], dict[str, Any]]:
    context = context if context is not None else ctx()
    return XnatArchiveOperator(task_id="archive", **kwargs).execute(context), context


def imported(source: Path, project: str = "P1", **kwargs: Any) -> list[dict]:
    """What an upstream XnatImportOperator hands on (its XCom)."""
    return XnatImportOperator(task_id="import", source=str(source), project=project, **kwargs).execute(
        context())


def test_archive_from_an_upstream_xcom(xnat_conn, server: Server, study_zip) -> None:
    emu = xnat_conn
    upstream = imported(study_zip)
    result, context = archive(prearchive_sessions=upstream)
    exp = server.experiment("S01_MR1")["data_fields"]
    assert [{k: r[k] for k in ("id", "label", "project", "subject", "status")} for r in result] == [
        {"id": exp["ID"], "label": "S01_MR1", "project": "P1", "subject": "S01", "status": "archived"}]
    assert result[0]["uri"] == "/data/archive/projects/P1/subjects/S01/experiments/S01_MR1"
    assert server.prearchive() == [] and server.archives() == 1
    assert sorted(s["ID"] for s in server.scans("S01_MR1")) == ["1", "2"]
    # One asset event per archived session, the XNAT IDs in its extra.
    host = emu.url.split("://", 1)[1]
    [(uri, extra)] = events(context)
    assert uri == f"xnat://{host}/P1/S01/S01_MR1"
    assert extra["experiment_id"] == exp["ID"] and extra["subject_id"] == exp["subject_ID"]
    assert (extra["project"], extra["subject"], extra["label"]) == ("P1", "S01", "S01_MR1")
    assert context["ti"].pushed[XCOM_KEY] == f"{emu.url}/data/projects/P1/experiments/S01_MR1?format=html"
    # And xnatpy, a client written by others, sees the archived session.
    with xnat.connect(emu.url, user="admin", password="admin", loglevel="ERROR") as session:
        got = session.projects["P1"].experiments["S01_MR1"]
        assert got.id == exp["ID"] and sorted(got.scans.keys()) == ["1", "2"]


def test_archive_accepts_uri_strings_and_skips_sessions_already_in_the_archive(xnat_conn, server: Server,
                                                                               study_zip, study, tmp_path) -> None:
    pre = imported(study_zip)
    direct = imported(study_zip_of(tmp_path, second_study(tmp_path), "s2.zip"), destination="archive")
    result, context = archive(prearchive_sessions=[pre[0]["uri"], *direct])
    assert [(r["label"], r["status"]) for r in result] == [("S01_MR1", "archived")]
    assert server.labels() == ["S01_MR1", "S02_MR1"] and server.archives() == 1
    assert len(events(context)) == 1


@pytest.fixture
def three_sessions(xnat_conn, study_zip, tmp_path) -> dict[str, dict]:
    """S01_MR1 and S02_MR1 READY in P1's prearchive, S03_MR1 in P2's."""
    out = {"S01_MR1": imported(study_zip)[0]}
    out["S02_MR1"] = imported(study_zip_of(tmp_path, s2 := second_study(tmp_path), "s2.zip"))[0]
    out["S02_MR1"]["study_uid"] = s2.study_uid
    s3 = second_study(tmp_path, "S03", "S03_MR1")
    out["S03_MR1"] = imported(study_zip_of(tmp_path, s3, "s3.zip"), project="P2")[0]
    return out


@pytest.mark.parametrize(("selection", "expected"), [
    ({}, ["S01_MR1", "S02_MR1"]),
    ({"subject_filter": "S02"}, ["S02_MR1"]),
    ({"experiment_filter": "S01_MR1"}, ["S01_MR1"]),
    ({"study_uid": "S02"}, ["S02_MR1"]),
    ({"subject_filter": "NOBODY"}, []),
])
def test_archive_a_selection(xnat_conn, server: Server, three_sessions, selection, expected) -> None:
    if "study_uid" in selection:
        selection = {"study_uid": three_sessions["S02_MR1"]["study_uid"]}
    result, context = archive(project="P1", **selection)
    assert sorted(r["label"] for r in result) == expected
    assert all(r["status"] == "archived" for r in result)
    assert server.labels() == expected
    assert sorted(r["name"] for r in server.prearchive()) == sorted({"S01_MR1", "S02_MR1"} - set(expected))
    assert [r["name"] for r in server.prearchive("P2")] == ["S03_MR1"]  # another project: untouched
    assert len(events(context)) == len(expected)


def test_a_selection_takes_only_ready_sessions(xnat_conn, server: Server, three_sessions) -> None:
    row = three_sessions["S02_MR1"]
    xnat_conn.hold_prearchive("P1", row["timestamp"], row["uri"].rsplit("/", 1)[1], status="BUILDING")
    result, _ = archive(project="P1")
    assert [r["label"] for r in result] == ["S01_MR1"]
    assert [(r["name"], r["status"]) for r in server.prearchive()] == [("S02_MR1", "BUILDING")]


def test_relabel_one_session(xnat_conn, server: Server, three_sessions) -> None:
    result, context = archive(project="P1", experiment_filter="S02_MR1", new_project="P2", new_subject="SUBJ_X",
                              new_label="SUBJ_X_MR1")
    assert [(r["project"], r["subject"], r["label"], r["status"]) for r in result] == [
        ("P2", "SUBJ_X", "SUBJ_X_MR1", "archived")]
    assert server.labels("P2") == ["SUBJ_X_MR1"] and server.labels("P1") == []
    assert [(e["label"], e["subject_label"]) for e in server.experiments("P2")] == [("SUBJ_X_MR1", "SUBJ_X")]
    assert events(context)[0][0].endswith("/P2/SUBJ_X/SUBJ_X_MR1")


def test_relabelling_several_sessions_is_refused_before_anything_moves(xnat_conn, server: Server,
                                                                       three_sessions) -> None:
    with pytest.raises(XnatBadInputError, match="exactly one"):
        archive(project="P1", new_label="ONE_LABEL")
    with pytest.raises(XnatBadInputError, match="exactly one"):
        archive(prearchive_sessions=[three_sessions["S01_MR1"], three_sessions["S02_MR1"]], new_subject="X")
    assert server.archives() == 0 and server.labels() == []
    assert sorted(r["status"] for r in server.prearchive()) == ["READY", "READY"]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"project": "P1", "on_conflict": "maybe"}, "on_conflict"),
    ({}, "sessions"),
    ({"project": "P1", "overwrite": "replace"}, "overwrite"),
    ({"project": "P1", "new_label": "bad label"}, "label"),
])
def test_bad_input(xnat_conn, server: Server, three_sessions, kwargs, match) -> None:
    with pytest.raises(XnatBadInputError, match=match):
        archive(**kwargs)
    assert server.archives() == 0 and len(server.prearchive()) == 2


def test_a_session_that_is_nowhere_is_not_found(xnat_conn, server: Server) -> None:
    with pytest.raises(XnatNotFoundError):
        archive(prearchive_sessions=[{"uri": "/data/prearchive/projects/P1/20240101_000000000/NOPE", "project": "P1",
                           "label": "NOPE"}])
    assert server.archives() == 0


@pytest.fixture
def conflict(xnat_conn, archived, study, tmp_path) -> list[dict]:
    """S01_MR1 archived (scans 1 and 2, 3 files each), and a prearchive copy of scan 1 with one of its archived
    instances again and one more: without overwrite XNAT's merge meets a file it has (a conflict); XNAT merges a
    new series into the session even without overwrite, so the conflict needs a file it already holds."""
    return imported(resent_with_one_more(study, tmp_path / "extra"))


def test_on_conflict_fail(xnat_conn, server: Server, conflict) -> None:
    with pytest.raises(XnatConflictError):
        archive(prearchive_sessions=conflict)
    assert [r["status"] for r in server.prearchive()] == ["CONFLICT"]
    assert len(server.scan_files("S01_MR1", "1")) == 3


def test_on_conflict_skip(xnat_conn, server: Server, conflict) -> None:
    result, context = archive(prearchive_sessions=conflict, on_conflict="skip")
    assert [(r["status"], r["label"]) for r in result] == [("skipped", "S01_MR1")]
    assert "reason" in result[0] and result[0]["uri"] == conflict[0]["uri"]
    assert [r["status"] for r in server.prearchive()] == ["CONFLICT"]
    assert len(server.scan_files("S01_MR1", "1")) == 3
    assert events(context) == []
    # The button opens the session left in the prearchive (in CONFLICT), the one to look at.
    assert context["ti"].pushed[XCOM_KEY] == f"{xnat_conn.url}{conflict[0]['uri']}?format=html"


def test_on_conflict_append(xnat_conn, server: Server, conflict) -> None:
    result, context = archive(prearchive_sessions=conflict, on_conflict="append")
    assert [(r["status"], r["label"]) for r in result] == [("archived", "S01_MR1")]
    assert server.prearchive() == [] and server.labels() == ["S01_MR1"]
    assert len(server.scan_files("S01_MR1", "1")) == 4
    assert len(events(context)) == 1


def test_overwrite_append_and_delete(xnat_conn, server: Server, conflict, study, tmp_path) -> None:
    archive(prearchive_sessions=conflict, overwrite="append")
    assert len(server.scan_files("S01_MR1", "1")) == 4 and server.prearchive() == []
    again = imported(study.series["1"][0])
    archive(prearchive_sessions=again, overwrite="delete")
    # delete is append for one session: the file sent again is overwritten, nothing is deleted or replaced.
    assert len(server.scan_files("S01_MR1", "1")) == 4 and server.labels() == ["S01_MR1"]
    assert server.prearchive() == []


def test_quarantine_and_trigger_pipelines_reach_the_archive_service(xnat_conn, server: Server, study_zip) -> None:
    upstream = imported(study_zip)
    op = XnatArchiveOperator(task_id="archive", prearchive_sessions=upstream, quarantine=True, trigger_pipelines=False)
    sent: list[dict] = []
    http = op.hook.get_conn().transport.http
    original = http.request

    def spy(method, url, **kw):
        if url.endswith("/data/services/archive"):
            sent.append(dict(kw.get("params") or {}))
        return original(method, url, **kw)

    http.request = spy
    [result] = op.execute(ctx())
    assert sent and sent[0]["quarantine"] == "true" and sent[0]["triggerPipelines"] == "false"
    status = server.http.get(f"{server.url}/data/experiments/{result['id']}/status")
    assert status.text == "quarantine"


def test_an_already_archived_session_is_reported_on_a_retry(xnat_conn, server: Server, study_zip) -> None:
    upstream = imported(study_zip)
    first, _ = archive(prearchive_sessions=upstream)
    again, context = archive(prearchive_sessions=upstream)
    assert [(r["status"], r["id"]) for r in again] == [("already_archived", first[0]["id"])]
    assert server.archives() == 1 and server.labels() == ["S01_MR1"]
    assert [e["experiment_id"] for _, e in events(context)] == [first[0]["id"]]


def test_a_504_after_the_work_gives_one_session_within_one_try(xnat_conn, server: Server, study_zip) -> None:
    upstream = imported(study_zip)
    xnat_conn.succeed_then_504("POST", ARCHIVE)
    result, context = archive(prearchive_sessions=upstream)
    assert [(r["label"], r["status"]) for r in result] == [("S01_MR1", "archived")]
    assert server.archives() == 1 and server.labels() == ["S01_MR1"] and server.prearchive() == []
    assert len(events(context)) == 1


@pytest.mark.parametrize("given", ["xcom", "selection"])
def test_a_retry_after_the_work_was_done_archives_nothing_again(xnat_conn, server: Server, study_zip,
                                                                after_request, given) -> None:
    """The first try's archive POST took effect (answered 504), then the try failed reading the result; the
    retry finds the session archived, reports it and emits its asset event."""
    emu = xnat_conn
    upstream = imported(study_zip)
    emu.succeed_then_504("POST", ARCHIVE)
    after_request("POST", ARCHIVE, lambda: emu.fail_next("GET", r"^/data/projects/P1/experiments/S01_MR1$",
                                                         status=503, count=3))
    kwargs = {"prearchive_sessions": upstream} if given == "xcom" else {"project": "P1"}
    store = FakeStore()
    with pytest.raises(XnatServerError):
        archive(ctx(store), **kwargs)
    assert server.archives() == 1 and server.labels() == ["S01_MR1"]
    result, context = archive(ctx(store), **kwargs)
    assert [(r["label"], r["status"]) for r in result] == [("S01_MR1", "already_archived")]
    assert server.archives() == 1 and server.labels() == ["S01_MR1"] and server.prearchive() == []
    assert [e["label"] for _, e in events(context)] == ["S01_MR1"]


@pytest.mark.parametrize("render", [json.dumps, str])
def test_sessions_rendered_by_a_template_as_text(xnat_conn, server: Server, study_zip, render) -> None:
    """``prearchive_sessions="{{ ti.xcom_pull('import') }}"`` renders the XCom as text (Python's repr, or JSON with
    ``tojson``): it is read back as the list it stands for."""
    upstream = imported(study_zip)
    result, _ = archive(prearchive_sessions=render(upstream))
    assert [(r["label"], r["status"]) for r in result] == [("S01_MR1", "archived")]
    assert server.labels() == ["S01_MR1"]


def test_on_conflict_and_overwrite_may_be_templated(xnat_conn, server: Server, conflict) -> None:
    op = XnatArchiveOperator(task_id="archive", prearchive_sessions=conflict, on_conflict="{{ params.on_conflict }}",
                             overwrite="{{ params.overwrite or None }}")
    op.render_template_fields({**ctx(), "params": {"on_conflict": "skip", "overwrite": ""}})
    assert [r["status"] for r in op.execute(ctx())] == ["skipped"]
    bad = XnatArchiveOperator(task_id="archive", prearchive_sessions=conflict, on_conflict="{{ params.on_conflict }}")
    bad.render_template_fields({**ctx(), "params": {"on_conflict": "ignore"}})
    with pytest.raises(XnatBadInputError, match="on_conflict"):
        bad.execute(ctx())
    assert server.archives() == 1 and [r["status"] for r in server.prearchive()] == ["CONFLICT"]
