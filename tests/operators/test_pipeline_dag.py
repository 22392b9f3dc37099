"""Every operator and both deferrable sensors in one real ``dag.test()`` run against the emulator."""

from __future__ import annotations

import requests

from tests.airflow_helpers import asset_events, run_dag


def test_pipeline_end_to_end(airflow_db, xnat_conn, study, tmp_path) -> None:
    emu = xnat_conn
    result = run_dag("xnat_test_pipeline", {"source": str(study.files[0].parent), "project": "P1",
                                            "work": str(tmp_path / "work")})
    assert result.state == "success", result.tis
    imported = result.xcom("import")
    assert [(r["label"], r["status"], r["in_prearchive"]) for r in imported] == [("S01_MR1", "READY", True)]
    archived = result.xcom("archive")
    assert [(a["label"], a["status"]) for a in archived] == [("S01_MR1", "archived")]
    assert sorted(result.xcom("list_scans")) == ["1", "2"]
    assert {result.xcom("download", i)["files"] for i in (0, 1)} == {3}
    downloaded = sorted(p.name for p in (tmp_path / "work" / "download").rglob("*.dcm"))
    assert len(downloaded) == 6
    assert result.xcom("fields") == {"pipeline": "xnat_test_pipeline", "run": result.run_id}
    auth = ("admin", "admin")
    files = requests.get(f"{emu.url}/data/projects/P1/experiments/S01_MR1/resources/SUMMARY/files?format=json",
                         auth=auth).json()["ResultSet"]["Result"]
    assert [f["Name"] for f in files] == ["summary.json"]
    events = asset_events("xnat://127.0.0.1")
    assert any(e["uri"].endswith("/P1/S01/S01_MR1") and e["extra"]["experiment_id"] == archived[0]["id"]
               for e in events)
