"""``XnatContainerSensor`` and ``XnatContainerTrigger`` against the emulator: a container launched elsewhere, followed
by its workflow id or its container id, in poke, reschedule and deferrable modes: complete, failing (stderr in the
task log), a launch that never made a container, a hanging container the sensor times out on, transient errors,
and the trigger's serialize round trip and error events."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest
from airflow.sdk import PokeReturnValue
from airflow.sdk._shared.module_loading import import_string
from airflow.sdk.exceptions import (
    AirflowFailException,
    AirflowRescheduleException,
    AirflowSensorTimeout,
    AirflowSkipException,
    TaskDeferred,
)

from tests.airflow_helpers import context
from tests.container_support import archive_session, register_converter
from tests.sensors.support import first_event
from xnat_provider.client import XnatClient
from xnat_provider.client.errors import XnatContainerFailedError
from xnat_provider.links import XCOM_KEY as LINK_KEY
from xnat_provider.sensors.base import XnatSensorNotFoundError
from xnat_provider.sensors.containers import XnatContainerSensor, XnatContainerSensorFailedError
from xnat_provider.testing.containers import exit_with, hang_until_killed
from xnat_provider.triggers.containers import XnatContainerTrigger

pytestmark = pytest.mark.timeout(90)


def sensor(**kw) -> XnatContainerSensor:
    kw.setdefault("task_id", "wait")
    kw.setdefault("poke_interval", 0.05)
    kw.setdefault("timeout", 30)
    kw.setdefault("deferrable", False)
    return XnatContainerSensor(**kw)


@pytest.fixture
def client(xnat_conn, tmp_path):
    archive_session(xnat_conn, tmp_path)
    with XnatClient(xnat_conn.url, "admin", "admin") as c:
        yield c


def launch(client: XnatClient) -> str:
    """Launch the converter on S01_MR1 as someone else would (a script, XNAT's UI); returns the workflow id."""
    return client.launch(client.plan_launch("P1", "S01_MR1", command="dcm2niix",
                                            wrapper="dcm2niix-session")).workflow_id


def container_of(client: XnatClient, workflow_id: str, status: str | None = None) -> str:
    deadline = time.monotonic() + 20
    while (cid := client.workflow_container(workflow_id)) is None or (
            status and client.get_container(cid).status != status):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return cid


def roundtrip(trigger: XnatContainerTrigger) -> XnatContainerTrigger:
    classpath, kwargs = trigger.serialize()
    again = import_string(classpath)(**json.loads(json.dumps(kwargs)))
    assert type(again) is XnatContainerTrigger and again.serialize() == trigger.serialize()
    return again


def test_waits_for_a_container_by_workflow_or_container_id(xnat_conn, client) -> None:
    register_converter(xnat_conn)
    wf = launch(client)
    ctx = context()
    result = sensor(workflow_id=wf).execute(ctx)
    assert result["status"] == "Complete" and result["workflow_id"] == wf and result["exit_code"] == "0"
    assert result["outputs"][0]["label"] == "NIFTI" and result["outputs"][0]["files"] == 2
    exp = client.get_experiment("P1", "S01_MR1")
    assert ctx["ti"].pushed[LINK_KEY] == f"{xnat_conn.url}/data/projects/P1/experiments/{exp.id}?format=html"
    by_id = sensor(container_id=result["backend_id"]).poke(context())
    assert isinstance(by_id, PokeReturnValue) and by_id.xcom_value["container_id"] == result["container_id"]
    with pytest.raises(ValueError, match="container_id or workflow_id"):
        sensor()


def test_a_failing_container_fails_the_sensor_with_its_stderr(xnat_conn, client, caplog, capsys) -> None:
    caplog.set_level(logging.INFO)
    register_converter(xnat_conn, run=exit_with(2, stderr="dcm2niix: no DICOM files found\n"))
    wf = launch(client)
    with pytest.raises(XnatContainerSensorFailedError, match="ended Failed with exit code 2") as exc:
        sensor(workflow_id=wf).execute(context())
    assert isinstance(exc.value, XnatContainerFailedError) and isinstance(exc.value, AirflowFailException)
    assert "dcm2niix: no DICOM files found" in caplog.text + capsys.readouterr().out
    outcome = sensor(workflow_id=wf, require_success=False).execute(context())
    assert (outcome["status"], outcome["exit_code"], outcome["succeeded"]) == ("Failed", "2", False)
    with pytest.raises(AirflowSkipException):
        sensor(workflow_id=wf, soft_fail=True).execute(context())


def test_a_launch_that_never_made_a_container(xnat_conn, client) -> None:
    register_converter(xnat_conn, run=None)
    wf = launch(client)
    with pytest.raises(XnatContainerSensorFailedError, match=r"failed before any container existed.*No such image"):
        sensor(workflow_id=wf).execute(context())
    s = sensor(workflow_id=wf, deferrable=True)
    event = asyncio.run(first_event(roundtrip(s.make_trigger(context())), timeout=20))
    assert event["status"] == "launch_failed" and event["workflow"]["status"] == "Failed (Container launch)"
    with pytest.raises(XnatContainerSensorFailedError, match="No such image"):
        s.execute_complete(context(), event)


def test_a_hanging_container_times_the_sensor_out(xnat_conn, client) -> None:
    register_converter(xnat_conn, run=hang_until_killed)
    wf = launch(client)
    cid = container_of(client, wf, "Running")
    with pytest.raises(AirflowSensorTimeout):
        sensor(workflow_id=wf, timeout=0.5).execute(context())
    with pytest.raises(AirflowSkipException):
        sensor(container_id=cid, timeout=0.3, soft_fail=True).execute(context())
    with pytest.raises(AirflowRescheduleException):  # reschedule mode: a poke that is not done gives the slot back
        sensor(container_id=cid, mode="reschedule", timeout=30, poke_interval=5).execute(context())
    # deferred: the trigger keeps polling (no event), and the deferral carries the sensor's timeout
    s = sensor(workflow_id=wf, deferrable=True, timeout=7)
    with pytest.raises(TaskDeferred) as d:
        s.execute(context())
    assert d.value.timeout.total_seconds() == 7 and d.value.trigger.container_id == cid
    with pytest.raises(TimeoutError):
        asyncio.run(asyncio.wait_for(first_event(roundtrip(d.value.trigger), timeout=60), 0.5))
    client.kill_container(cid)
    killed = sensor(container_id=cid, require_success=False).execute(context())
    assert (killed["status"], killed["killed"], killed["exit_code"]) == ("Failed", True, "137")


def test_deferral_trigger_and_execute_complete(xnat_conn, client) -> None:
    register_converter(xnat_conn)
    ctx = context()
    with xnat_conn.containers.held():  # the launch rests queued: the first look finds it not done, for certain
        wf = launch(client)
        s = sensor(workflow_id=wf, deferrable=True, poke_interval=0.1)
        with pytest.raises(TaskDeferred) as d:
            s.execute(ctx)
    trigger = roundtrip(d.value.trigger)
    assert (trigger.workflow_id, trigger.poll_interval, trigger.xnat_conn_id) == (wf, 0.1, "xnat_default")
    event = asyncio.run(first_event(trigger, timeout=30))
    assert event["status"] == "done" and event["container"]["status"] == "Complete"
    result = s.execute_complete(ctx, event)
    assert result["status"] == "Complete" and result["workflow_id"] == wf
    # an error event: the sensor's fail-fast class of the client error it names
    gone = asyncio.run(first_event(XnatContainerTrigger(container_id="nope", poll_interval=0.1), timeout=20))
    assert gone["status"] == "error" and gone["error_type"] == "XnatNotFoundError"
    with pytest.raises(XnatSensorNotFoundError, match="No container with ID nope"):
        sensor(container_id="nope").execute_complete(context(), gone)
    with pytest.raises(XnatSensorNotFoundError):
        sensor(container_id="nope").execute(context())


def test_transient_errors_keep_the_sensor_waiting(xnat_conn, client) -> None:
    register_converter(xnat_conn)
    wf = launch(client)
    cid = container_of(client, wf)
    xnat_conn.fail_next("GET", r"^/xapi/containers/[^/]+$", status=503, count=3)
    s = sensor(container_id=cid)
    assert s.poke(context()) is False  # XNAT did not answer: ridden out
    assert s.execute(context())["status"] == "Complete"
    xnat_conn.fail_next("GET", r"^/xapi/containers/[^/]+$", status=503, count=50)
    trigger = XnatContainerTrigger(container_id=cid, poll_interval=0.05, transient_error_timeout=0.2)
    event = asyncio.run(first_event(trigger, timeout=30))
    assert event["status"] == "error" and event["error_type"] == "XnatServerError"
