"""The example DAGs in ``dags/`` run end to end with ``dag.test()`` against the emulator seeded with real DICOM.

XNAT's final state is checked through the hook's client and through xnatpy, written by others.
"""

from __future__ import annotations

import json
import shutil

import xnat

from tests.airflow_helpers import run_dag
from xnat_provider.client import XnatClient
from xnat_provider.testing.samples import make_study, zip_files


def client(emu) -> XnatClient:
    return XnatClient(emu.url, "admin", "admin")


def test_scheduled_ingest_archives_records_and_moves_inputs(airflow_db, xnat_conn, landing) -> None:
    emu = xnat_conn
    conf = {"landing": str(landing), "project": "P1", "quiet_seconds": 0}
    result = run_dag("xnat_scheduled_ingest", conf)
    assert result.state == "success", result.tis
    with client(emu) as c:
        labels = sorted(e.label for e in c.list_experiments("P1"))
        assert labels == ["SUBJ001_MR1", "SUBJ002_MR1"]
        fields = c.get_fields("P1", experiment="SUBJ001_MR1")
        assert fields["source_file"] == "subj001.zip" and fields["ingest_run"] == result.run_id
        assert c.list_prearchive("P1") == []
    assert sorted(p.name for p in landing.iterdir()) == ["done"]
    assert sorted(p.name for p in (landing / "done").iterdir()) == ["subj001.zip", "subj002"]
    with xnat.connect(emu.url, user="admin", password="admin", loglevel="ERROR") as session:
        exp = session.projects["P1"].experiments["SUBJ001_MR1"]
        assert sorted(s.type for s in exp.scans.values()) == ["T1", "T2"]
        assert exp.fields["source_file"] == "subj001.zip"

    # A rerun over the same data (the input put back, as after a failure before the move) merges, never duplicates.
    shutil.copy(landing / "done" / "subj001.zip", landing / "subj001.zip")
    again = run_dag("xnat_scheduled_ingest", conf)
    assert again.state == "success", again.tis
    with client(emu) as c:
        assert sorted(e.label for e in c.list_experiments("P1")) == ["SUBJ001_MR1", "SUBJ002_MR1"]
        assert len(c.list_files(c.object_path("P1", experiment="SUBJ001_MR1", scan="1") + "/resources/DICOM")) == 3
    # Nothing new: the run succeeds and touches nothing.
    assert run_dag("xnat_scheduled_ingest", conf).state == "success"


def test_scheduled_ingest_failure_leaves_the_input_for_the_next_run(airflow_db, xnat_conn, landing) -> None:
    emu = xnat_conn
    conf = {"landing": str(landing), "project": "P1", "quiet_seconds": 0}
    # Field writes fail with an auth-like refusal: the retry policy fails fast, and nothing is moved.
    emu.fail_next("PUT", r"/experiments/SUBJ00\d_MR1$", status=403, count=50)
    failed = run_dag("xnat_scheduled_ingest", conf)
    assert failed.state == "failed"
    assert sorted(p.name for p in landing.iterdir() if p.name != "done") == ["subj001.zip", "subj002"]
    emu.clear_faults()
    ok = run_dag("xnat_scheduled_ingest", conf)
    assert ok.state == "success", ok.tis
    with client(emu) as c:
        assert sorted(e.label for e in c.list_experiments("P1")) == ["SUBJ001_MR1", "SUBJ002_MR1"]
        assert c.get_fields("P1", experiment="SUBJ002_MR1")["ingest_run"] == ok.run_id


def test_autoarchive_archives_clean_sessions_and_holds_back_the_others(airflow_db, xnat_conn, tmp_path) -> None:
    emu = xnat_conn
    clean = make_study(tmp_path / "clean", patient_name="SUBJ010", patient_id="SUBJ010_MR1", uid_seed="c")
    named = make_study(tmp_path / "named", patient_name="DOE^JOHN", patient_id="SUBJ011_MR1", uid_seed="d")
    with client(emu) as c:
        c.import_dicom(zip_files(clean.files, tmp_path / "clean.zip"), "P1")
        c.import_dicom(zip_files(named.files, tmp_path / "named.zip"), "P1")
    result = run_dag("xnat_prearchive_autoarchive", {"project": "P1"})
    assert result.state == "success", result.tis
    held = result.keyed[("check_headers", -1, "held_back")]
    with client(emu) as c:
        assert [e.label for e in c.list_experiments("P1")] == ["SUBJ010_MR1"]
        left = c.list_prearchive("P1")
        assert [s.name for s in left] == ["SUBJ011_MR1"] and left[0].status == "READY"
    assert [h["name"] for h in held] == ["SUBJ011_MR1"]
    assert "PatientName 'DOE^JOHN' does not look de-identified" in held[0]["reason"]


def test_scan_pipeline_summarises_every_scan(airflow_db, xnat_conn, tmp_path) -> None:
    emu = xnat_conn
    study = make_study(tmp_path / "s", patient_name="SUBJ020", patient_id="SUBJ020_MR1", uid_seed="e",
                       series=((1, "T1"), (2, "T2"), (3, "DWI")), instances=4)
    with client(emu) as c:
        c.import_dicom(zip_files(study.files, tmp_path / "s.zip"), "P1", destination="archive")
    work = tmp_path / "work"
    result = run_dag("xnat_scan_pipeline", {"project": "P1", "experiment": "SUBJ020_MR1", "work": str(work)})
    assert result.state == "success", result.tis
    with client(emu) as c:
        for scan in ("1", "2", "3"):
            files = c.list_files(c.object_path("P1", "SUBJ020", "SUBJ020_MR1", scan=scan) + "/resources/SUMMARY")
            assert sorted(f.path for f in files) == ["preview.png", "summary.json"]
        fields = c.get_fields("P1", experiment="SUBJ020_MR1")
        assert fields["scans_summarised"] == "3"
    with xnat.connect(emu.url, user="admin", password="admin", loglevel="ERROR") as session:
        exp = session.projects["P1"].experiments["SUBJ020_MR1"]
        assert all("SUMMARY" in [r.label for r in scan.resources.values()] for scan in exp.scans.values())
        assert exp.fields["scans_summarised"] == "3"
    summary = json.loads((work / "P1" / "SUBJ020_MR1" / "summary" / "3" / "summary.json").read_text())
    assert summary["slices"] == 4 and summary["rows"] == 64 and summary["series_description"] == "DWI"
    assert summary["intensity"]["max"] > summary["intensity"]["min"]
    png = (work / "P1" / "SUBJ020_MR1" / "summary" / "1" / "preview.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
