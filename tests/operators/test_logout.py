"""Operators and sensors log out of XNAT when they finish, however they finish.

An XNAT login that is never closed stays open on the server until its idle timeout (15 minutes); a busy
Airflow would otherwise keep hundreds of them (XNAT warns about exactly this)."""

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowRescheduleException, TaskDeferred

from tests.airflow_helpers import context
from xnat_provider.client.errors import XnatNotFoundError
from xnat_provider.hooks.xnat import XnatHook
from xnat_provider.operators.fields import XnatSetFieldsOperator
from xnat_provider.operators.transfers import XnatListScansOperator
from xnat_provider.sensors.prearchive import XnatPrearchiveSensor
from xnat_provider.sensors.session import XnatSessionSensor


def open_sessions(emu) -> int:
    return len(emu.auth.sessions)


def test_operator_logs_out_after_success_and_after_failure(xnat_conn) -> None:
    emu = xnat_conn
    XnatSetFieldsOperator(task_id="f", project="P1", fields={"a": "1"}).execute(context())
    assert open_sessions(emu) == 0 and emu.auth.logins == 1
    with pytest.raises(XnatNotFoundError):
        XnatListScansOperator(task_id="s", project="P1", session="NOPE").execute(context())
    assert open_sessions(emu) == 0 and emu.auth.logins == 2


def test_sensor_logs_out_after_each_reschedule_poke_and_when_deferring(xnat_conn) -> None:
    emu = xnat_conn
    sensor = XnatSessionSensor(task_id="w", project="P1", session="S01_MR1", mode="reschedule", poke_interval=1)
    with pytest.raises(AirflowRescheduleException):
        sensor.execute(context())
    assert open_sessions(emu) == 0
    deferring = XnatPrearchiveSensor(task_id="p", project="P1", deferrable=True, poke_interval=1, timeout=10)
    with pytest.raises(TaskDeferred):
        deferring.execute(context())
    assert open_sessions(emu) == 0


def test_connection_test_logs_out(xnat_conn) -> None:
    ok, _ = XnatHook().test_connection()
    assert ok and open_sessions(xnat_conn) == 0
