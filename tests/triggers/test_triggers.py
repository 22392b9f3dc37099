"""The deferred halves: ``XnatPrearchiveTrigger`` and ``XnatExperimentTrigger`` run with asyncio against the
emulator (always under ``asyncio.wait_for``), their serialize round trip, and their error events."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from airflow.sdk._shared.module_loading import import_string
from airflow.sdk.exceptions import AirflowFailException

from tests.airflow_helpers import context
from tests.sensors.support import archive, first_event, hold, put_session, status_of, until, uri
from xnat_provider.sensors.experiment import XnatExperimentSensor
from xnat_provider.sensors.prearchive import XnatPrearchiveSensor
from xnat_provider.triggers.events import XnatPrearchiveEventTrigger
from xnat_provider.triggers.experiment import XnatExperimentTrigger
from xnat_provider.triggers.prearchive import XnatPrearchiveTrigger

pytestmark = pytest.mark.timeout(60)


def criteria(**kw) -> dict:
    base = {"project": "P1", "subject": None, "experiment": None, "study_uid": None, "min_count": 1,
            "quiet_period": 0.0, "stall_timeout": None, "rebuild_stalled": False, "skip_failed": False}
    return base | kw


def roundtrip(trigger):
    classpath, kwargs = trigger.serialize()
    kwargs = json.loads(json.dumps(kwargs))  # what the metadata database keeps
    again = import_string(classpath)(**kwargs)
    assert type(again) is type(trigger)
    assert again.serialize() == trigger.serialize()
    return again


def test_serialize_round_trips() -> None:
    pre = XnatPrearchiveTrigger(criteria=criteria(subject="S01", stall_timeout=5.0, rebuild_stalled=True),
                                xnat_conn_id="xnat_lab", poll_interval=2.5, transient_error_timeout=30,
                                state={"seen": {"/u": ["READY|t", 1.5]}, "rebuilt": ["/v"]})
    again = roundtrip(pre)
    assert (again.criteria, again.xnat_conn_id, again.poll_interval, again.state, again.transient_error_timeout) == (
        pre.criteria, "xnat_lab", 2.5, pre.state, 30)
    ses = roundtrip(XnatExperimentTrigger(criteria={"project": "P1", "experiment": "S", "subject": None, "min_scans": 2,
                                                 "resource": "DICOM", "field_name": "qc", "field_value": "ok"},
                                       xnat_conn_id="x", poll_interval=1.0, transient_error_timeout=9))
    assert ses.criteria["resource"] == "DICOM" and ses.transient_error_timeout == 9
    ev = roundtrip(XnatPrearchiveEventTrigger(project="P9", xnat_conn_id="x", poll_interval=7, quiet_period=3))
    assert (ev.project, ev.poll_interval, ev.quiet_period) == ("P9", 7, 3)


def test_the_sensors_make_triggers_that_round_trip(xnat_conn) -> None:
    from airflow.sdk.exceptions import TaskDeferred

    for s in (XnatPrearchiveSensor(task_id="a", project="P1", deferrable=True, poke_interval=0.1, timeout=5,
                                   experiment="S01_MR1", quiet_period=1),
              XnatExperimentSensor(task_id="b", project="P1", experiment="S01_MR1", deferrable=True, timeout=5)):
        with pytest.raises(TaskDeferred) as deferred:
            s.execute(context())
        roundtrip(deferred.value.trigger)


async def test_prearchive_trigger_fires_when_ready(xnat_conn, tmp_path) -> None:
    row = await asyncio.to_thread(put_session, xnat_conn, tmp_path, "S01_MR1")
    hold(xnat_conn, row, "RECEIVING")
    trigger = XnatPrearchiveTrigger(criteria=criteria(quiet_period=0.3), poll_interval=0.1)
    listings = r"/data/prearchive/projects/P1"
    before = xnat_conn.request_count("GET", listings)
    t0 = time.monotonic()
    task = asyncio.ensure_future(first_event(trigger, timeout=60))
    await until(lambda: xnat_conn.request_count("GET", listings) >= before + 4, "four polls")
    assert time.monotonic() - t0 >= 0.3  # three intervals between four polls: on its interval, not a busy loop
    assert not task.done()  # RECEIVING keeps it polling
    xnat_conn.release_prearchive(row["project"], row["timestamp"], row["folderName"], "READY")
    event = await task
    assert event["status"] == "success"
    assert [(s["name"], s["status"]) for s in event["sessions"]] == [("S01_MR1", "READY")]
    assert XnatPrearchiveSensor(task_id="w", project="P1").execute_complete(context(), event)[0]["name"] == "S01_MR1"


async def test_prearchive_trigger_keeps_polling_through_503_bursts(xnat_conn, tmp_path) -> None:
    await asyncio.to_thread(put_session, xnat_conn, tmp_path, "S01_MR1")
    xnat_conn.fail_next("GET", r"/data/prearchive/projects/P1", status=503, count=7)  # > the client's 3 attempts
    event = await first_event(XnatPrearchiveTrigger(criteria=criteria(), poll_interval=0.05), timeout=15)
    assert event["status"] == "success"
    assert xnat_conn.request_count("GET", r"/data/prearchive/projects/P1") >= 8


async def test_prearchive_trigger_gives_up_after_transient_error_timeout(xnat_conn) -> None:
    xnat_conn.fail_next("GET", r"/data/prearchive/projects/P1", status=503, count=1000)
    t0 = time.monotonic()
    event = await first_event(XnatPrearchiveTrigger(criteria=criteria(), poll_interval=0.05,
                                                    transient_error_timeout=0.5), timeout=15)
    assert event["status"] == "error" and event["error_type"] == "XnatServerError"
    assert time.monotonic() - t0 < 10


async def test_prearchive_trigger_error_events(xnat_conn, monkeypatch) -> None:
    event = await first_event(XnatPrearchiveTrigger(criteria=criteria(project="NOPE"), poll_interval=0.05))
    assert event["status"] == "error" and event["error_type"] == "XnatNotFoundError"
    with pytest.raises(AirflowFailException, match="XnatNotFoundError"):
        XnatPrearchiveSensor(task_id="w", project="NOPE").execute_complete(context(), event)

    monkeypatch.setenv("AIRFLOW_CONN_XNAT_DEFAULT", json.dumps({
        "conn_type": "xnat", "host": xnat_conn.url, "login": "admin", "password": "wrong-password"}))
    event = await first_event(XnatPrearchiveTrigger(criteria=criteria(), poll_interval=0.05))
    assert event["status"] == "error" and event["error_type"] == "XnatAuthError"
    assert "wrong-password" not in event["message"]
    with pytest.raises(AirflowFailException, match="XnatAuthError"):
        XnatPrearchiveSensor(task_id="w", project="P1").execute_complete(context(), event)

    event = await first_event(XnatPrearchiveTrigger(criteria=criteria(), xnat_conn_id="no_such_conn"))
    assert event["status"] == "error"


async def test_prearchive_trigger_reports_failed_sessions(xnat_conn, tmp_path) -> None:
    row = await asyncio.to_thread(put_session, xnat_conn, tmp_path, "S01_MR1")
    hold(xnat_conn, row, "CONFLICT")
    event = await first_event(XnatPrearchiveTrigger(criteria=criteria(), poll_interval=0.05))
    assert event["status"] == "error" and "CONFLICT" in event["message"]
    with pytest.raises(AirflowFailException, match=r"S01_MR1 \(CONFLICT\)"):
        XnatPrearchiveSensor(task_id="w", project="P1").execute_complete(context(), event)
    await asyncio.to_thread(put_session, xnat_conn, tmp_path, "S02_MR1", "S02")
    event = await first_event(XnatPrearchiveTrigger(criteria=criteria(skip_failed=True), poll_interval=0.05))
    assert [s["name"] for s in event["sessions"]] == ["S02_MR1"]


async def test_prearchive_trigger_stall_rebuild_cycle(xnat_conn, tmp_path) -> None:
    """Stalled: the trigger asks for a rebuild (it never acts on XNAT itself); the sensor rebuilds and defers
    with the state; stuck again, the next trigger fails 'even after a rebuild'."""
    from airflow.sdk.exceptions import TaskDeferred

    from tests.airflow_helpers import FakeStore

    row = await asyncio.to_thread(put_session, xnat_conn, tmp_path, "S01_MR1")
    hold(xnat_conn, row, "BUILDING")
    c = criteria(stall_timeout=0.3, rebuild_stalled=True)
    event = await first_event(XnatPrearchiveTrigger(criteria=c, poll_interval=0.05))
    assert event["status"] == "rebuild" and [s["name"] for s in event["sessions"]] == ["S01_MR1"]
    assert xnat_conn.request_count("POST", r"/data/services/prearchive/rebuild") == 0
    assert status_of(xnat_conn, row) == "BUILDING"

    s = XnatPrearchiveSensor(task_id="w", project="P1", stall_timeout=0.3, rebuild_stalled=True, deferrable=True,
                             poke_interval=0.05, timeout=30)
    with pytest.raises(TaskDeferred) as again:
        await asyncio.to_thread(s.execute_complete, context(FakeStore()), event)
    assert xnat_conn.request_count("POST", r"/data/services/prearchive/rebuild") == 1
    hold(xnat_conn, row, "BUILDING")  # the rebuild did not help
    trigger = roundtrip(again.value.trigger)
    assert trigger.state["rebuilt"] == [uri(row)]
    event = await first_event(trigger)
    assert event["status"] == "error" and "even after a rebuild" in event["message"]
    with pytest.raises(AirflowFailException, match="even after a rebuild"):
        s.execute_complete(context(), event)


async def test_session_trigger(xnat_conn, tmp_path) -> None:
    c = {"project": "P1", "experiment": "S01_MR1", "subject": None, "min_scans": 2, "resource": "DICOM",
         "field_name": None, "field_value": None}
    listings = r"^/data/projects/P1/experiments$"
    before = xnat_conn.request_count("GET", listings)
    task = asyncio.ensure_future(first_event(XnatExperimentTrigger(criteria=c, poll_interval=0.1), timeout=60))
    row = await asyncio.to_thread(put_session, xnat_conn, tmp_path, "S01_MR1")
    await until(lambda: xnat_conn.request_count("GET", listings) >= before + 3, "three polls")
    assert not task.done()  # in the prearchive, not archived: still waiting
    assert (await asyncio.to_thread(archive, xnat_conn, row)).ok
    event = await task
    assert event["status"] == "success" and event["experiment"]["label"] == "S01_MR1"
    assert XnatExperimentSensor(task_id="w", project="P1", experiment="S01_MR1").execute_complete(
        context(), event)["label"] == "S01_MR1"


async def test_session_trigger_errors_and_503s(xnat_conn, tmp_path, monkeypatch) -> None:
    c = {"project": "NOPE", "experiment": "S01_MR1", "subject": None, "min_scans": 0, "resource": None,
         "field_name": None, "field_value": None}
    event = await first_event(XnatExperimentTrigger(criteria=c, poll_interval=0.05))
    assert event["status"] == "error" and event["error_type"] == "XnatNotFoundError"
    with pytest.raises(AirflowFailException):
        XnatExperimentSensor(task_id="w", project="NOPE", experiment="S01_MR1").execute_complete(context(), event)

    await asyncio.to_thread(put_session, xnat_conn, tmp_path, "S01_MR1", archive=True)
    xnat_conn.fail_next("GET", r"/data/projects/P1/experiments/S01_MR1", status=503, count=7)
    event = await first_event(XnatExperimentTrigger(criteria=c | {"project": "P1"}, poll_interval=0.05), timeout=15)
    assert event["status"] == "success"

    monkeypatch.setenv("AIRFLOW_CONN_XNAT_DEFAULT", json.dumps({
        "conn_type": "xnat", "host": xnat_conn.url, "login": "admin", "password": "wrong-password"}))
    event = await first_event(XnatExperimentTrigger(criteria=c | {"project": "P1"}, poll_interval=0.05))
    assert event["status"] == "error" and event["error_type"] == "XnatAuthError"
