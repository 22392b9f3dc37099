"""The example DAGs in runs without a logical date, as Airflow 3 creates them outside ``dag.test()``.

An asset-triggered run and a run triggered through the REST API (or ``airflow dags trigger``) with
``logical_date: null`` have no logical date, so no ``ts``, ``ds`` or data interval in their context. The runs here
are created with Airflow's own code (``tests.airflow_helpers``): ``trigger_dag`` for the triggered runs, the
triggerer's ``Trigger.submit_event`` for a watcher's event, the scheduler's asset-triggered run creation for the
runs the events start. Everything goes to the emulator over real HTTP. The event-driven autoarchive DAG's
asset-triggered runs are tested in ``test_autoarchive_events.py``.
"""

from __future__ import annotations

from datetime import datetime

from tests.airflow_helpers import run_asset_triggered, trigger_run
from xnat_provider.client import XnatClient
from xnat_provider.testing.samples import make_study, zip_files


def client(emu) -> XnatClient:
    return XnatClient(emu.url, "admin", "admin")


def iso(value: str) -> datetime:
    return datetime.fromisoformat(value)


def test_ingest_triggered_without_a_date_then_the_scan_pipeline_on_its_asset_events(
        xnat_conn, landing, unpaused, tmp_path, monkeypatch) -> None:
    """``xnat_scheduled_ingest`` triggered with ``logical_date: null``; its archive tasks' asset events (through
    the alias) start ``xnat_scan_pipeline`` as the scheduler would: an asset-triggered run with no logical date."""
    emu = xnat_conn
    monkeypatch.setenv("XNAT_WORK", str(tmp_path / "work"))  # the scan pipeline's default work folder
    unpaused("xnat_scan_pipeline")
    ingest = trigger_run("xnat_scheduled_ingest", {"landing": str(landing), "project": "P1", "quiet_seconds": 0})
    assert ingest.state == "success", ingest.tis
    assert ingest.logical_date is None and ingest.run_type == "manual"
    with client(emu) as c:
        assert sorted(e.label for e in c.list_experiments("P1")) == ["SUBJ001_MR1", "SUBJ002_MR1"]
        fields = c.get_fields("P1", experiment="SUBJ001_MR1")
    assert fields["ingest_run"] == ingest.run_id
    iso(fields["ingested_at"])  # the run's run_after: a timestamp, as ts would have been

    scans = run_asset_triggered("xnat_scan_pipeline")
    assert scans.state == "success", scans.tis
    assert scans.logical_date is None and scans.run_type == "asset_triggered"
    assert sorted(e["extra"]["label"] for e in scans.consumed_events) == ["SUBJ001_MR1", "SUBJ002_MR1"]
    with client(emu) as c:
        for label, count in (("SUBJ001_MR1", "2"), ("SUBJ002_MR1", "1")):
            fields = c.get_fields("P1", experiment=label)
            assert fields["scans_summarised"] == count
            iso(fields["summarised_at"])
            for scan in c.list_scans("P1", label):
                files = c.list_files(c.object_path("P1", experiment=label, scan=scan.id) + "/resources/SUMMARY")
                assert sorted(f.path for f in files) == ["preview.png", "summary.json"]


def test_scan_pipeline_triggered_without_a_date(xnat_conn, airflow_db, tmp_path) -> None:
    emu = xnat_conn
    study = make_study(tmp_path / "s", patient_name="SUBJ021", patient_id="SUBJ021_MR1", uid_seed="g",
                       series=((1, "T1"),), instances=3)
    with client(emu) as c:
        c.import_dicom(zip_files(study.files, tmp_path / "s.zip"), "P1", destination="archive")
    result = trigger_run("xnat_scan_pipeline", {"project": "P1", "experiment": "SUBJ021_MR1",
                                                "work": str(tmp_path / "work")})
    assert result.state == "success", result.tis
    assert result.logical_date is None
    with client(emu) as c:
        fields = c.get_fields("P1", experiment="SUBJ021_MR1")
    assert fields["scans_summarised"] == "1"
    iso(fields["summarised_at"])


def test_autoarchive_triggered_without_a_date(xnat_conn, airflow_db, tmp_path) -> None:
    """A run by hand (no events, no logical date) waits with the sensor and handles every READY session."""
    emu = xnat_conn
    study = make_study(tmp_path / "s", patient_name="SUBJ043", patient_id="SUBJ043_MR1", uid_seed="h")
    with client(emu) as c:
        c.import_dicom(zip_files(study.files, tmp_path / "s.zip"), "P1")
    result = trigger_run("xnat_prearchive_autoarchive", {"project": "P1"})
    assert result.state == "success", result.tis
    assert result.logical_date is None
    with client(emu) as c:
        assert [e.label for e in c.list_experiments("P1")] == ["SUBJ043_MR1"]
