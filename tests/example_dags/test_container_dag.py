"""``xnat_container_pipeline`` end to end against the emulator, whose Container Service runs a small local
"converter" as the ``dcm2niix`` command (one ``.nii`` file per series, uploaded as the session's NIFTI resource):
by hand with ``dag.test()``, re-run (no second container), with a failing conversion (recorded, then the run
fails), and started by the archive's asset events in a run without a logical date."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from tests.airflow_helpers import run_asset_triggered, run_dag, trigger_run
from tests.container_support import archive_session, register_converter
from xnat_provider.client import XnatClient
from xnat_provider.testing.containers import exit_with

pytestmark = pytest.mark.timeout(240)
LAUNCH = r"^/xapi/.*/launch$"


def client(emu) -> XnatClient:
    return XnatClient(emu.url, "admin", "admin")


def nifti(c: XnatClient, label: str) -> list[str]:
    exp = c.get_experiment("P1", label)
    return sorted(f.path for f in c.list_files(f"/data/experiments/{exp.id}/resources/NIFTI"))


def test_converts_each_session_and_records_the_outcome(airflow_db, xnat_conn, tmp_path: Path) -> None:
    emu = xnat_conn
    register_converter(emu)  # dcm2niix / dcm2niix-session, enabled for P1: the DAG's defaults
    archive_session(emu, tmp_path, "SUBJ030_MR1", "SUBJ030", series=((1, "T1"), (2, "T2"), (3, "DWI")))
    archive_session(emu, tmp_path, "SUBJ031_MR1", "SUBJ031", series=((4, "FLAIR"),))
    conf = {"project": "P1", "experiment": "SUBJ030_MR1, SUBJ031_MR1"}
    result = run_dag("xnat_container_pipeline", conf)
    assert result.state == "success", result.tis
    assert emu.request_count("POST", LAUNCH) == 2 and len(emu.containers.containers) == 2
    assert [result.xcom("convert", i)["experiment"] for i in (0, 1)] == ["SUBJ030_MR1", "SUBJ031_MR1"]
    with client(emu) as c:
        assert nifti(c, "SUBJ030_MR1") == ["series1.nii", "series2.nii", "series3.nii"]
        assert nifti(c, "SUBJ031_MR1") == ["series4.nii"]
        fields = c.get_fields("P1", experiment="SUBJ030_MR1")
        assert fields["conversion_status"] == "Complete" and fields["conversion_exit_code"] == "0"
        assert fields["conversion_outputs"] == "NIFTI (3 files)" and fields["conversion_container"]
        assert fields["conversion_pipeline"] == "xnat_container_pipeline 1.0 (dcm2niix/dcm2niix-session)"
        datetime.fromisoformat(fields["converted_at"])
        assert c.get_fields("P1", experiment="SUBJ031_MR1")["conversion_outputs"] == "NIFTI (1 files)"
    # A re-run adopts the Complete containers: nothing is converted twice.
    again = run_dag("xnat_container_pipeline", conf)
    assert again.state == "success", again.tis
    assert all(again.xcom("convert", i)["adopted"] for i in (0, 1))
    assert emu.request_count("POST", LAUNCH) == 2 and len(emu.containers.containers) == 2


def test_a_failed_conversion_is_recorded_and_fails_the_run(airflow_db, xnat_conn, tmp_path: Path) -> None:
    emu = xnat_conn
    register_converter(emu, run=exit_with(1, stderr="dcm2niix: unsupported transfer syntax\n"))
    archive_session(emu, tmp_path, "SUBJ032_MR1", "SUBJ032")
    result = run_dag("xnat_container_pipeline", {"project": "P1", "experiment": "SUBJ032_MR1"})
    assert result.state == "failed"
    assert result.tis[("convert", 0)] == "failed" and result.tries[("convert", 0)] == 1  # failed fast: no retry
    assert result.tis[("record_outcome", 0)] == "success" and result.tis[("all_converted", -1)] == "failed"
    assert emu.request_count("POST", LAUNCH) == 1
    with client(emu) as c:
        fields = c.get_fields("P1", experiment="SUBJ032_MR1")
    assert (fields["conversion_status"], fields["conversion_exit_code"], fields["conversion_outputs"]) == (
        "Failed", "1", "none")


def test_a_wrapper_the_project_has_not_enabled_is_refused(airflow_db, xnat_conn, tmp_path: Path) -> None:
    emu = xnat_conn
    register_converter(emu, enable_for=())
    archive_session(emu, tmp_path, "SUBJ033_MR1", "SUBJ033")
    result = run_dag("xnat_container_pipeline", {"project": "P1", "experiment": "SUBJ033_MR1"})
    assert result.state == "failed" and result.tries[("convert", 0)] == 1
    assert emu.request_count("POST", LAUNCH) == 0
    with client(emu) as c:
        assert c.get_fields("P1", experiment="SUBJ033_MR1")["conversion_status"] == "not launched"


def test_started_by_the_archives_asset_events_without_a_logical_date(xnat_conn, landing, unpaused) -> None:
    """``xnat_scheduled_ingest`` archives the landing folder's studies (triggered with ``logical_date: null``); its
    asset events start the container pipeline as the scheduler would: asset-triggered, no logical date."""
    emu = xnat_conn
    register_converter(emu)
    unpaused("xnat_container_pipeline")
    ingest = trigger_run("xnat_scheduled_ingest", {"landing": str(landing), "project": "P1", "quiet_seconds": 0})
    assert ingest.state == "success", ingest.tis
    result = run_asset_triggered("xnat_container_pipeline")
    assert result.state == "success", result.tis
    assert result.logical_date is None and result.run_type == "asset_triggered"
    with client(emu) as c:
        assert nifti(c, "SUBJ001_MR1") == ["series1.nii", "series2.nii"]
        assert nifti(c, "SUBJ002_MR1") == ["series5.nii"]
        for label in ("SUBJ001_MR1", "SUBJ002_MR1"):
            fields = c.get_fields("P1", experiment=label)
            assert fields["conversion_status"] == "Complete"
            datetime.fromisoformat(fields["converted_at"])  # the run's run_after, as ts would have been
