"""``XnatExperimentSensor`` against the emulator: an archived experiment by label or by subject, with a scan
count, a resource at experiment or scan level and a custom field value; failures, timeouts and the deferral."""

from __future__ import annotations

import datetime
import json

import pytest
from airflow.sdk import PokeReturnValue
from airflow.sdk.exceptions import AirflowFailException, AirflowSensorTimeout, AirflowSkipException, TaskDeferred

from tests.airflow_helpers import context
from tests.sensors.support import archive, put_session
from xnat_provider.hooks.xnat import XnatHook
from xnat_provider.sensors.experiment import XnatExperimentSensor
from xnat_provider.triggers.experiment import XnatExperimentTrigger

pytestmark = pytest.mark.timeout(60)


def sensor(**kwargs) -> XnatExperimentSensor:
    kwargs.setdefault("task_id", "wait")
    kwargs.setdefault("project", "P1")
    kwargs.setdefault("poke_interval", 0.1)
    kwargs.setdefault("timeout", 20)
    kwargs.setdefault("deferrable", False)
    return XnatExperimentSensor(**kwargs)


def done(value) -> dict:
    assert isinstance(value, PokeReturnValue) and value.is_done, value
    return value.xcom_value


def test_waits_for_the_session_to_be_archived(xnat_conn, tmp_path) -> None:
    s, ctx = sensor(experiment="S01_MR1"), context()
    assert s.poke(ctx) is False  # nothing yet
    row = put_session(xnat_conn, tmp_path, "S01_MR1")
    assert s.poke(ctx) is False  # in the prearchive only
    assert archive(xnat_conn, row).ok
    exp = done(s.poke(ctx))
    assert (exp["label"], exp["project"]) == ("S01_MR1", "P1")
    assert exp["id"] and exp["uri"] == f"/data/experiments/{exp['id']}"
    assert s.execute(ctx) == exp


def test_by_subject(xnat_conn, tmp_path) -> None:
    s = sensor(subject="S07")
    assert s.poke(context()) is False  # the subject does not exist yet: keep waiting, not a failure
    put_session(xnat_conn, tmp_path, "S01_MR1", archive=True)
    assert s.poke(context()) is False
    put_session(xnat_conn, tmp_path, "S07_MR1", subject="S07", archive=True)
    assert done(s.poke(context()))["label"] == "S07_MR1"


def test_min_scans(xnat_conn, tmp_path) -> None:
    put_session(xnat_conn, tmp_path, "S01_MR1", archive=True)
    assert done(sensor(experiment="S01_MR1", min_scans=2).poke(context()))["label"] == "S01_MR1"
    assert sensor(experiment="S01_MR1", min_scans=3).poke(context()) is False
    with pytest.raises(AirflowSensorTimeout):
        sensor(experiment="S01_MR1", min_scans=3, timeout=0.3).execute(context())


def test_resource_at_session_and_scan_level(xnat_conn, tmp_path) -> None:
    put_session(xnat_conn, tmp_path, "S01_MR1", archive=True)
    assert done(sensor(experiment="S01_MR1", resource="DICOM").poke(context()))  # on the scans
    notes = sensor(experiment="S01_MR1", resource="NOTES")
    assert notes.poke(context()) is False
    XnatHook().get_conn().ensure_resource("/data/projects/P1/experiments/S01_MR1", "NOTES", format="TXT")
    assert done(notes.poke(context()))["label"] == "S01_MR1"
    snap = sensor(experiment="S01_MR1", resource="SNAPSHOTS")
    assert snap.poke(context()) is False
    xnat = XnatHook().get_conn()
    xnat.ensure_resource(xnat.object_path("P1", experiment="S01_MR1", scan="2"), "SNAPSHOTS")
    assert done(snap.poke(context()))["label"] == "S01_MR1"


def test_field_value(xnat_conn, tmp_path) -> None:
    put_session(xnat_conn, tmp_path, "S01_MR1", archive=True)
    s = sensor(experiment="S01_MR1", field_name="qc", field_value="pass")
    assert s.poke(context()) is False
    client = XnatHook().get_conn()
    client.set_fields("P1", {"qc": "fail"}, experiment="S01_MR1")
    assert s.poke(context()) is False
    client.set_fields("P1", {"qc": "pass"}, experiment="S01_MR1")
    assert done(s.poke(context()))["label"] == "S01_MR1"
    assert done(sensor(experiment="S01_MR1", field_name="QC", field_value="pass", min_scans=2,
                       resource="DICOM").poke(context()))
    with pytest.raises(ValueError, match="field_name and field_value"):
        sensor(experiment="S01_MR1", field_name="qc")
    with pytest.raises(ValueError, match="session label"):
        sensor()


def test_missing_project_and_bad_login_fail_fast(xnat_conn, monkeypatch) -> None:
    with pytest.raises(AirflowFailException, match="NOPE"):
        sensor(project="NOPE", experiment="S01_MR1").execute(context())
    with pytest.raises(AirflowSkipException):
        sensor(project="NOPE", experiment="S01_MR1", soft_fail=True).execute(context())
    monkeypatch.setenv("AIRFLOW_CONN_XNAT_DEFAULT", json.dumps({
        "conn_type": "xnat", "host": xnat_conn.url, "login": "admin", "password": "wrong-password",
        "extra": {"backoff": 0.01, "retries": 2}}))
    with pytest.raises(AirflowFailException, match="Cannot look for the session"):
        sensor(experiment="S01_MR1").execute(context())


def test_timeout_and_soft_fail(xnat_conn) -> None:
    with pytest.raises(AirflowSensorTimeout):
        sensor(experiment="S01_MR1", timeout=0.3).execute(context())
    with pytest.raises(AirflowSkipException):
        sensor(experiment="S01_MR1", timeout=0.3, soft_fail=True).execute(context())


def test_server_errors_keep_poking(xnat_conn, tmp_path) -> None:
    put_session(xnat_conn, tmp_path, "S01_MR1", archive=True)
    xnat_conn.fail_next("GET", r"/data/projects/P1/experiments/S01_MR1", status=503, count=3)
    s = sensor(experiment="S01_MR1")
    assert s.poke(context()) is False
    assert s.execute(context())["label"] == "S01_MR1"


def test_defers_and_completes(xnat_conn) -> None:
    s = sensor(experiment="S01_MR1", min_scans=2, resource="DICOM", field_name="qc", field_value=1,
               deferrable=True, timeout=33, poke_interval=0.25)
    with pytest.raises(TaskDeferred) as deferred:
        s.execute(context())
    trigger = deferred.value.trigger
    assert isinstance(trigger, XnatExperimentTrigger)
    assert deferred.value.timeout == datetime.timedelta(seconds=33)
    assert trigger.criteria == {"project": "P1", "experiment": "S01_MR1", "subject": None, "min_scans": 2,
                                "resource": "DICOM", "field_name": "qc", "field_value": "1"}
    assert trigger.poll_interval == 0.25
    exp = {"id": "XNAT_E00001", "label": "S01_MR1"}
    assert s.execute_complete(context(), {"status": "success", "message": "ok", "session": exp}) == exp
    with pytest.raises(AirflowFailException, match="XnatAuthError"):
        s.execute_complete(context(), {"status": "error", "error_type": "XnatAuthError", "message": "401"})


def test_archived_at_once_does_not_defer(xnat_conn, tmp_path) -> None:
    put_session(xnat_conn, tmp_path, "S01_MR1", archive=True)
    assert sensor(experiment="S01_MR1", deferrable=True).execute(context())["label"] == "S01_MR1"


def test_default_deferrable(monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "true")
    assert XnatExperimentSensor(task_id="a", project="P1", experiment="S").deferrable is True
    monkeypatch.delenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE")
    assert XnatExperimentSensor(task_id="b", project="P1", experiment="S").deferrable is False
