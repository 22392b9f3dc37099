"""Triggers serialized before the rename still run after an upgrade.

A deferred task's trigger lives in Airflow's metadata database as a classpath and its keyword arguments
(encrypted), written by the version that deferred it. After an upgrade the triggerer imports that classpath
(``import_string``) and calls it with the stored arguments. Here the rows are made as Airflow makes them
(``Trigger(classpath, kwargs)``), read back and built as the triggerer builds them, and run against the
emulator; the sensor then takes the event as it takes any."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from airflow._shared.module_loading import import_string
from airflow.models.trigger import Trigger
from airflow.serialization.decoders import smart_decode_trigger_kwargs

from tests.airflow_helpers import context
from tests.sensors.support import first_event, put_session, until
from xnat_provider.sensors.experiment import XnatExperimentSensor
from xnat_provider.sensors.prearchive import XnatPrearchiveSensor
from xnat_provider.triggers.experiment import XnatExperimentTrigger
from xnat_provider.triggers.prearchive import XnatPrearchiveTrigger

pytestmark = pytest.mark.timeout(60)

OLD_CLASSPATH = "xnat_provider.triggers.session.XnatSessionTrigger"
# What XnatSessionSensor (before the rename) stored when it deferred: SessionCriteria.to_dict() and the rest.
OLD_KWARGS = {"criteria": {"project": "P1", "session": "S01_MR1", "subject": None, "min_scans": 2,
                           "resource": "DICOM", "field_name": None, "field_value": None},
              "xnat_conn_id": "xnat_default", "poll_interval": 0.1, "transient_error_timeout": 600.0,
              "failing_since": None}


def as_the_triggerer_builds_it(classpath: str, kwargs: dict[str, Any]) -> Any:
    """The row Airflow stored, then the trigger the triggerer makes of it (``TriggerRunner.create_triggers``)."""
    row = Trigger(classpath=classpath, kwargs=kwargs)
    stored = Trigger._decrypt_kwargs(row.encrypted_kwargs)
    trigger_class = import_string(row.classpath)
    return trigger_class(**{k: smart_decode_trigger_kwargs(v) for k, v in stored.items()})


async def test_an_experiment_trigger_stored_under_the_old_classpath_runs(xnat_conn, tmp_path) -> None:
    with pytest.warns(DeprecationWarning, match="XnatExperimentTrigger"):
        trigger = as_the_triggerer_builds_it(OLD_CLASSPATH, OLD_KWARGS)
    assert isinstance(trigger, XnatExperimentTrigger)
    assert trigger.criteria["experiment"] == "S01_MR1" and "session" not in trigger.criteria
    listings = r"^/data/projects/P1/experiments$"
    before = xnat_conn.request_count("GET", listings)
    waiting = asyncio.ensure_future(first_event(trigger, timeout=60))
    await until(lambda: xnat_conn.request_count("GET", listings) >= before + 2, "two polls")
    assert not waiting.done()  # not archived yet: it polls
    await asyncio.to_thread(put_session, xnat_conn, tmp_path, "S01_MR1", archive=True)
    event = await waiting
    assert event["status"] == "success" and event["experiment"]["label"] == "S01_MR1"
    assert event["session"] == event["experiment"]  # the key a task of the earlier version reads
    sensor = XnatExperimentSensor(task_id="w", project="P1", experiment="S01_MR1", min_scans=2, resource="DICOM")
    assert sensor.execute_complete(context(), event)["label"] == "S01_MR1"
    # Serialized again (a triggerer that re-saves it), it names the new class, with the new criteria key.
    classpath, kwargs = trigger.serialize()
    assert classpath == "xnat_provider.triggers.experiment.XnatExperimentTrigger"
    assert as_the_triggerer_builds_it(classpath, kwargs).serialize() == (classpath, kwargs)


async def test_an_old_experiment_trigger_reports_errors_as_before(xnat_conn) -> None:
    kwargs = {**OLD_KWARGS, "criteria": {**OLD_KWARGS["criteria"], "project": "NOPE"}}
    with pytest.warns(DeprecationWarning):
        trigger = as_the_triggerer_builds_it(OLD_CLASSPATH, kwargs)
    event = await first_event(trigger)
    assert event["status"] == "error" and event["error_type"] == "XnatNotFoundError"


async def test_a_prearchive_trigger_stored_with_old_criteria_runs(xnat_conn, tmp_path) -> None:
    """``XnatPrearchiveTrigger`` kept its classpath; its criteria named the label filter ``session``."""
    await asyncio.to_thread(put_session, xnat_conn, tmp_path, "S01_MR1")
    await asyncio.to_thread(put_session, xnat_conn, tmp_path, "S02_MR1", subject="S02")
    criteria = {"project": "P1", "subject": None, "session": "S02_MR1", "study_uid": None, "min_count": 1,
                "quiet_period": 0.0, "stall_timeout": None, "rebuild_stalled": False, "skip_failed": False}
    trigger = as_the_triggerer_builds_it("xnat_provider.triggers.prearchive.XnatPrearchiveTrigger", {
        "criteria": criteria, "xnat_conn_id": "xnat_default", "poll_interval": 0.1,
        "state": {"seen": {}, "rebuilt": []}, "transient_error_timeout": 600.0, "failing_since": None})
    assert isinstance(trigger, XnatPrearchiveTrigger) and trigger.criteria["experiment"] == "S02_MR1"
    event = await first_event(trigger, timeout=20)
    assert [s["name"] for s in event["sessions"]] == ["S02_MR1"]
    assert XnatPrearchiveSensor(task_id="p", project="P1").execute_complete(context(), event)[0]["name"] == "S02_MR1"


def test_the_old_trigger_name_is_importable_and_warns() -> None:
    with pytest.warns(DeprecationWarning, match="xnat_provider.triggers.experiment"):
        from xnat_provider.triggers.session import XnatSessionTrigger
    assert XnatSessionTrigger is XnatExperimentTrigger


def test_an_event_of_the_old_trigger_is_still_read(xnat_conn) -> None:
    """A task deferred before the upgrade may resume with an event the old trigger sent: the experiment under
    ``session``."""
    exp = {"id": "XNAT_E00001", "label": "S01_MR1", "project": "P1"}
    sensor = XnatExperimentSensor(task_id="w", project="P1", experiment="S01_MR1")
    assert sensor.execute_complete(context(), {"status": "success", "message": "ok", "session": exp}) == exp


async def test_the_prearchive_watchers_event_keeps_the_old_key(xnat_conn, tmp_path) -> None:
    """DAGs started by the watcher read the prearchive session under ``prearchive_session``, or under ``session``
    as they did before."""
    from xnat_provider.triggers.events import XnatPrearchiveEventTrigger

    await asyncio.to_thread(put_session, xnat_conn, tmp_path, "S01_MR1")
    event = await first_event(XnatPrearchiveEventTrigger(project="P1", poll_interval=0.1), timeout=20)
    assert event["prearchive_session"]["name"] == "S01_MR1" and event["session"] == event["prearchive_session"]
