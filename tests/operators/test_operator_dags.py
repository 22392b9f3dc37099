"""Operators inside real ``dag.test()`` runs, where Airflow's machinery matters: task retries with the retry
policy and the task state store, asset events, XComs and the session link, templates, mapping, setup and
teardown."""

from __future__ import annotations

import json

import requests

from tests.airflow_helpers import asset_events, run_dag
from tests.operators.conftest import ARCHIVE, IMPORT, LOGIN, Server
from xnat_provider.links import XCOM_KEY, XnatSessionLink


def xcom(dag_id: str, run_id: str, task_id: str, key: str, map_index: int = -1):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.query(XComModel).filter(XComModel.dag_id == dag_id, XComModel.run_id == run_id,
                                              XComModel.task_id == task_id, XComModel.key == key,
                                              XComModel.map_index == map_index).one_or_none()
        return None if row is None else XComModel.deserialize_value(row)


def test_import_and_archive_retried_after_a_504_that_did_the_work(airflow_db, xnat_conn, server: Server,
                                                                  study_zip, after_request) -> None:
    emu = xnat_conn
    # Each POST does its work and answers 504; right after it, the next read of the result fails for the
    # rest of the try (3 attempts), so each task's first try fails although XNAT did the work.
    emu.succeed_then_504("POST", IMPORT)
    after_request("POST", IMPORT, lambda: emu.fail_next("GET", r"^/data/prearchive/projects/P1/[^/]+/[^/]+$",
                                                        status=503, count=3))
    emu.succeed_then_504("POST", ARCHIVE)
    after_request("POST", ARCHIVE, lambda: emu.fail_next("GET", r"^/data/projects/P1/experiments/S01_MR1$",
                                                         status=503, count=3))
    result = run_dag("xnat_test_ops_retry", {"source": str(study_zip), "project": "P1"})
    assert result.state == "success", result.tis
    assert result.tries[("import", -1)] == 2 and result.tries[("archive", -1)] == 2
    # Exactly one import POST, one prearchive session between the tasks, one archive POST, one experiment.
    assert server.imports() == 1 and server.archives() == 1
    assert result.xcom("prearchive_count") == 1
    assert [(r["label"], r["status"]) for r in result.xcom("import")] == [("S01_MR1", "READY")]
    archived = result.xcom("archive")
    assert [(a["label"], a["status"]) for a in archived] == [("S01_MR1", "already_archived")]
    assert server.labels() == ["S01_MR1"] and server.prearchive() == []
    exp = server.experiment("S01_MR1")["data_fields"]
    assert archived[0]["id"] == exp["ID"]
    # The asset event of the archived session, with the IDs as extra.
    host = emu.url.split("://", 1)[1]
    events = [e for e in asset_events(f"xnat://{host}/") if e["uri"] == f"xnat://{host}/P1/S01/S01_MR1"]
    assert len(events) == 1
    assert {k: events[0]["extra"][k] for k in ("experiment_id", "subject_id", "project", "label")} == {
        "experiment_id": exp["ID"], "subject_id": exp["subject_ID"], "project": "P1", "label": "S01_MR1"}
    # The "XNAT session" link of each task: the URL its execute() pushed, and the link Airflow resolved from
    # it when the task finished (what the UI's button opens).
    page = f"{emu.url}/data/projects/P1/experiments/S01_MR1?format=html"
    assert xcom("xnat_test_ops_retry", result.run_id, "archive", XCOM_KEY) == page
    assert xcom("xnat_test_ops_retry", result.run_id, "archive", XnatSessionLink().xcom_key) == page
    assert xcom("xnat_test_ops_retry", result.run_id, "import", XCOM_KEY).startswith(
        f"{emu.url}/data/prearchive/projects/P1/")


def test_a_wrong_password_fails_at_once_with_one_login(airflow_db, xnat_conn, server: Server, study_zip,
                                                       monkeypatch) -> None:
    emu = xnat_conn
    monkeypatch.setenv("AIRFLOW_CONN_XNAT_WRONG", json.dumps({
        "conn_type": "xnat", "host": emu.url, "login": "admin", "password": "not-the-password",
        "extra": {"backoff": 0.05, "retries": 3}}))
    result = run_dag("xnat_test_ops_retry", {"source": str(study_zip), "project": "P1", "conn_id": "xnat_wrong"})
    assert result.state == "failed"
    assert result.tis[("import", -1)] == "failed" and result.tries[("import", -1)] == 1
    assert emu.request_count("POST", LOGIN) == 1
    assert server.imports() == 0 and server.prearchive() == []


def test_mapping_templates_and_token_lifecycle(airflow_db, xnat_conn, server: Server, archived, tmp_path) -> None:
    from xnat_provider.operators.tokens import token_from_xcom

    emu = xnat_conn
    work = tmp_path / "work"
    result = run_dag("xnat_test_ops_session", {"work": str(work), "who": "alice"})
    assert result.state == "success", result.tis
    # One mapped download per listed scan, each verified on disk against the catalog.
    assert sorted(result.xcom("list_scans")) == ["1", "2"]
    mapped = {k[1]: v for k, v in result.xcoms.items() if k[0] == "download"}
    assert sorted(mapped) == [0, 1] and all(result.tis[("download", i)] == "success" for i in mapped)
    assert sorted(m["scans"][0] for m in mapped.values()) == ["1", "2"]
    assert all((m["files"], m["transferred"]) == (3, 3) for m in mapped.values())
    for scan in ("1", "2"):
        on_disk = {p.name: p for p in (work / "download" / scan / "DICOM").iterdir()}
        catalog = {f["Name"]: f["digest"] for f in server.scan_files("S01_MR1", scan)}
        assert sorted(on_disk) == sorted(catalog)
        assert (work / "download" / f".xnat-manifest-{scan}.json").exists()
    assert xcom("xnat_test_ops_session", result.run_id, "download", XCOM_KEY, 0) == (
        f"{emu.url}/data/projects/P1/experiments/S01_MR1?format=html")
    # The templated mapping, rendered by Airflow and read back from XNAT.
    assert result.xcom("fields") == {"run": result.run_id, "who": "alice", "scans": "1_2"}
    item = server.experiment("S01_MR1")
    from xnat_provider.client.protocol import fields_from_item

    assert fields_from_item(item) == {"run": result.run_id, "who": "alice", "scans": "1_2"}
    # The token: no clear secret in any XCom; it worked in the work task; the teardown invalidated it.
    value = result.xcom("token")
    token = token_from_xcom(value)
    assert token.secret not in json.dumps([v for v in result.xcoms.values()], default=str)
    assert result.xcom("use_token") == 200 and result.tis[("revoke", -1)] == "success"
    assert requests.get(f"{emu.url}/data/auth", auth=(token.alias, token.secret)).status_code == 401


def test_the_token_teardown_runs_when_the_work_fails(airflow_db, xnat_conn, archived, tmp_path) -> None:
    from xnat_provider.operators.tokens import token_from_xcom

    emu = xnat_conn
    result = run_dag("xnat_test_ops_session", {"work": str(tmp_path / "work"), "fail_work": True})
    assert result.tis[("use_token", -1)] == "failed" and result.tis[("revoke", -1)] == "success"
    assert xcom("xnat_test_ops_session", result.run_id, "use_token", "status") == 200
    token = token_from_xcom(result.xcom("token"))
    assert requests.get(f"{emu.url}/data/auth", auth=(token.alias, token.secret)).status_code == 401
