"""``XnatLaunchContainerOperator`` against the emulator's Container Service over HTTP: a complete container (its
output resource and XCom), a failing one (its stderr in the task log, a typed error), a killed one, the deferral to
the trigger and back, refusals before any launch request, retries that adopt the container of an earlier try
(exactly one container), and the operator mapped over scans inside real ``dag.test()`` runs, with a real retry."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest
from airflow.sdk._shared.module_loading import import_string
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred

from tests.airflow_helpers import FakeStore, context, run_dag
from tests.container_support import archive_session, register_converter
from tests.sensors.support import first_event
from xnat_provider.client import XnatClient
from xnat_provider.client.errors import (
    XnatBadInputError,
    XnatContainerFailedError,
    XnatNotFoundError,
    XnatServerError,
)
from xnat_provider.links import XCOM_KEY as LINK_KEY
from xnat_provider.operators.containers import (
    STATE_KEY,
    XCOM_KEY,
    XnatContainerTaskFailedError,
    XnatLaunchContainerOperator,
)
from xnat_provider.testing.containers import exit_with, hang_until_killed
from xnat_provider.triggers.containers import XnatContainerTrigger

pytestmark = pytest.mark.timeout(120)

LAUNCH = r"^/xapi/.*/launch$"


def operator(**kw) -> XnatLaunchContainerOperator:
    kw.setdefault("task_id", "convert")
    kw.setdefault("project", "P1")
    kw.setdefault("experiment", "S01_MR1")
    if "wrapper_id" not in kw:
        kw.setdefault("command", "dcm2niix")
        kw.setdefault("wrapper", "dcm2niix-session")
    kw.setdefault("poll_interval", 0.05)
    kw.setdefault("deferrable", False)
    return XnatLaunchContainerOperator(**kw)


def deferred(op: XnatLaunchContainerOperator, ctx: dict) -> TaskDeferred:
    with pytest.raises(TaskDeferred) as exc:
        op.execute(ctx)
    return exc.value


def resume(op: XnatLaunchContainerOperator, ctx: dict, d: TaskDeferred):
    """Run the trigger the operator deferred to (after a serialize round trip) and hand its event back."""
    classpath, kwargs = d.trigger.serialize()
    trigger = import_string(classpath)(**json.loads(json.dumps(kwargs)))
    event = asyncio.run(first_event(trigger, timeout=40))
    return getattr(op, d.method_name)(ctx, event=event, **(d.kwargs or {}))


@pytest.fixture
def session(xnat_conn, tmp_path) -> str:
    return archive_session(xnat_conn, tmp_path)


@pytest.fixture
def client(xnat_conn):
    with XnatClient(xnat_conn.url, "admin", "admin") as c:
        yield c


def launches(emu) -> int:
    return emu.request_count("POST", LAUNCH)


def test_a_complete_container_returns_its_outputs(xnat_conn, session, client) -> None:
    register_converter(xnat_conn)
    ctx = context()
    result = operator().execute(ctx)
    exp = client.get_experiment("P1", session)
    assert result["status"] == "Complete" and result["succeeded"] and result["exit_code"] == "0"
    assert result["outputs"] == [{"name": "output:output-resource", "label": "NIFTI",
                                  "uri": f"/data/experiments/{exp.id}/resources/NIFTI", "exists": True, "files": 2,
                                  "bytes": 704, "required": True}]
    assert (result["project"], result["experiment"], result["scan"], result["adopted"]) == ("P1", session, None,
                                                                                           False)
    assert (result["command"], result["wrapper"]) == ("dcm2niix", "dcm2niix-session")
    assert result["workflow_id"] and result["container_id"] and result["backend_id"]
    json.dumps(result)  # JSON-safe
    assert ctx["ti"].pushed[XCOM_KEY] == result
    assert ctx["ti"].pushed[LINK_KEY] == f"{xnat_conn.url}/data/projects/P1/experiments/{session}?format=html"
    state = ctx["task_state_store"].get(STATE_KEY)
    assert state["workflow_id"] == result["workflow_id"] and state["params"] == {"session": exp.id}
    files = client.list_files(f"/data/experiments/{exp.id}/resources/NIFTI")
    assert sorted(f.path for f in files) == ["series1.nii", "series2.nii"]
    assert launches(xnat_conn) == 1


def test_a_failing_container_puts_its_stderr_in_the_task_log(xnat_conn, session, caplog, capsys) -> None:
    caplog.set_level(logging.INFO)
    register_converter(xnat_conn, run=exit_with(3, stderr="noise\n" * 500 + "dcm2niix: bad slice order\n",
                                                 stdout="dcm2niix: starting\n"))
    ctx = context()
    with pytest.raises(XnatContainerTaskFailedError, match="ended Failed with exit code 3") as exc:
        operator(log_tail_bytes=200).execute(ctx)
    assert isinstance(exc.value, XnatContainerFailedError) and isinstance(exc.value, AirflowFailException)
    assert (exc.value.exit_code, exc.value.container_status, exc.value.killed) == ("3", "Failed", False)
    logged = caplog.text + capsys.readouterr().out
    assert "dcm2niix: bad slice order" in logged and "dcm2niix: starting" in logged
    assert logged.count("noise") < 60  # the tail only
    pushed = ctx["ti"].pushed[XCOM_KEY]
    assert (pushed["status"], pushed["exit_code"], pushed["succeeded"], pushed["outputs"]) == ("Failed", "3", False,
                                                                                             [])
    # retry_failed_container: the plain error, which a task's retries apply to (a retry launches again)
    with pytest.raises(XnatContainerFailedError) as again:
        operator(retry_failed_container=True).execute(context(ctx["task_state_store"]))
    assert not isinstance(again.value, AirflowFailException)
    assert launches(xnat_conn) == 2


def test_deferral_trigger_and_execute_complete(xnat_conn, session) -> None:
    register_converter(xnat_conn)
    op, ctx = operator(deferrable=True, wait_timeout=300), context()
    d = deferred(op, ctx)
    assert isinstance(d.trigger, XnatContainerTrigger) and d.method_name == "execute_complete"
    assert d.trigger.workflow_id == ctx["task_state_store"].get(STATE_KEY)["workflow_id"]
    assert d.trigger.poll_interval == 0.05 and d.timeout.total_seconds() == 300
    assert d.kwargs["target"]["wrapper"] == "dcm2niix-session" and d.kwargs["adopted"] is False
    result = resume(op, ctx, d)
    assert result["status"] == "Complete" and result["outputs"][0]["files"] == 2
    assert ctx["ti"].pushed[XCOM_KEY] == result
    # an error event is raised as the client's class it names
    with pytest.raises(XnatNotFoundError, match="gone"):
        op.execute_complete(ctx, {"status": "error", "error_type": "XnatNotFoundError", "message": "gone"})


def test_a_killed_container_fails_the_task(xnat_conn, session, client) -> None:
    register_converter(xnat_conn, run=hang_until_killed)
    op, ctx = operator(deferrable=True), context()
    d = deferred(op, ctx)
    wf = d.trigger.workflow_id
    deadline = time.monotonic() + 20
    while (cid := client.workflow_container(wf)) is None or client.get_container(cid).status != "Running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    client.kill_container(cid)
    with pytest.raises(XnatContainerTaskFailedError, match="was killed with exit code 137") as exc:
        resume(op, ctx, d)
    assert exc.value.killed and ctx["ti"].pushed[XCOM_KEY]["killed"] is True


def test_a_launch_that_fails_before_any_container(xnat_conn, session) -> None:
    register_converter(xnat_conn, run=None)  # the image is missing
    ctx = context()
    with pytest.raises(XnatContainerTaskFailedError, match="No such image"):
        operator().execute(ctx)
    assert ctx["ti"].pushed[XCOM_KEY]["status"] == "Failed (Container launch)"
    op = operator(deferrable=True)
    with pytest.raises(XnatContainerTaskFailedError, match="failed before any container existed"):
        resume(op, ctx, deferred(op, ctx))


def test_refusals_come_before_any_launch_request(xnat_conn, session, tmp_path) -> None:
    register_converter(xnat_conn, name="withargs", inputs=[{"name": "preset", "type": "string", "required": True}])
    archive_session(xnat_conn, tmp_path, "S02_MR1", "S02", project="P2")
    for message, kw in {
        "has no wrapper 'nope'": dict(command="withargs", wrapper="nope"),
        "not enabled for project P2": dict(project="P2", experiment="S02_MR1", command="withargs",
                                           wrapper="withargs-session", inputs={"preset": "x"}),
        "missing required input\\(s\\) preset": dict(command="withargs", wrapper="withargs-session"),
        "unknown input\\(s\\) bids": dict(command="withargs", wrapper="withargs-session",
                                          inputs='{"preset": "x", "bids": true}'),
        "needs a project and an experiment": dict(project="", command="withargs", wrapper="withargs-session"),
    }.items():
        with pytest.raises(XnatBadInputError, match=message):
            operator(**kw).execute(context())
    assert launches(xnat_conn) == 0
    with pytest.raises(ValueError, match="command and wrapper"):
        operator(command=None)
    with pytest.raises(ValueError, match="not both"):
        operator(wrapper_id=3, command="x")


def test_a_retry_follows_the_container_of_the_earlier_try(xnat_conn, session, client) -> None:
    register_converter(xnat_conn, run=hang_until_killed)
    store = FakeStore()
    first = deferred(operator(deferrable=True), context(store))
    # The task failed after its launch (a worker lost, a timeout): its retry follows the same launch.
    again = deferred(operator(deferrable=True), context(store))
    assert again.trigger.workflow_id == first.trigger.workflow_id and again.kwargs["adopted"] is True
    # Without the record (another store), the running container is found by wrapper, object and inputs.
    cid = None
    deadline = time.monotonic() + 20
    while cid is None:
        assert time.monotonic() < deadline
        cid = client.workflow_container(first.trigger.workflow_id)
        time.sleep(0.05)
    third = deferred(operator(deferrable=True), context())
    assert third.trigger.container_id == cid and third.kwargs["adopted"] is True
    assert launches(xnat_conn) == 1 and len(xnat_conn.containers.containers) == 1
    # Other inputs are another launch.
    register_converter(xnat_conn, name="other")
    client.kill_container(cid)
    xnat_conn.containers.wait(cid)
    # The earlier container was killed: a retry launches again (a killed or failed container is not adopted).
    xnat_conn.containers.set_runner("emulator/dcm2niix:1.0", exit_with(0))
    result = operator().execute(context(store))
    assert result["status"] == "Complete" and result["adopted"] is False and launches(xnat_conn) == 2
    # ... and once Complete, a retry returns its outcome without launching.
    again = operator().execute(context(store))
    assert again["adopted"] is True and again["container_id"] == result["container_id"]
    assert operator().execute(context())["container_id"] == result["container_id"]
    assert launches(xnat_conn) == 2 and len(xnat_conn.containers.containers) == 2


def test_a_lost_launch_answer_is_followed_not_resent(xnat_conn, session) -> None:
    register_converter(xnat_conn)
    xnat_conn.succeed_then_504("POST", LAUNCH)
    result = operator().execute(context())
    assert result["status"] == "Complete" and launches(xnat_conn) == 1
    assert len(xnat_conn.containers.containers) == 1


def test_a_launch_refused_before_queueing_is_launched_again_at_once(xnat_conn, session) -> None:
    register_converter(xnat_conn)
    xnat_conn.containers.fail_next_launch("Unable to queue container launch")
    store = FakeStore()
    with pytest.raises(XnatServerError, match="nothing was launched"):
        operator().execute(context(store))
    assert store.get(STATE_KEY)["sent_at"] is None  # nothing to look for: the retry need not wait for it
    started = time.monotonic()
    assert operator().execute(context(store))["status"] == "Complete"
    assert time.monotonic() - started < 10 and len(xnat_conn.containers.containers) == 1


def test_the_xcom_experiment_of_an_upstream_task(xnat_conn, session, client) -> None:
    register_converter(xnat_conn, context="scan")
    exp = client.get_experiment("P1", session)
    result = operator(project=None, experiment={"id": exp.id, "label": session, "project": "P1"}, scan="2",
                      wrapper="dcm2niix-scan").execute(context())
    assert (result["experiment"], result["scan"], result["status"]) == (session, "2", "Complete")
    assert result["outputs"][0]["uri"] == f"/data/experiments/{exp.id}/scans/2/resources/NIFTI"


def test_mapped_over_scans_in_a_dag_run(airflow_db, xnat_conn, session, client) -> None:
    register_converter(xnat_conn, context="scan")
    result = run_dag("xnat_test_containers", {"session": session, "scans": "1,2"})
    assert result.state == "success", result.tis
    exp = client.get_experiment("P1", session)
    for index, scan in enumerate(("1", "2")):
        out = result.xcom("convert", index)
        assert (out["scan"], out["status"], out["adopted"]) == (scan, "Complete", False)
        assert out["outputs"][0]["uri"] == f"/data/experiments/{exp.id}/scans/{scan}/resources/NIFTI"
        files = client.list_files(out["outputs"][0]["uri"])
        assert [f.path for f in files] == [f"series{scan}.nii"]
    assert launches(xnat_conn) == 2 and len(xnat_conn.containers.containers) == 2


def test_a_real_retry_after_the_launch_starts_no_second_container(airflow_db, xnat_conn, session) -> None:
    """The first try launches, then XNAT fails every read of the container (3 attempts per poll, two polls: past
    outage_tolerance=0), so the try fails with XnatServerError, which the retry policy retries; the retry finds the
    launch in the task state store and follows it."""
    register_converter(xnat_conn, context="scan")
    xnat_conn.fail_next("GET", r"^/xapi/containers/[^/]+$", status=503, count=6)
    result = run_dag("xnat_test_containers", {"session": session, "scans": "1"})
    assert result.state == "success", result.tis
    assert result.tries[("convert", 0)] == 2
    out = result.xcom("convert", 0)
    assert out["status"] == "Complete" and out["adopted"] is True
    assert launches(xnat_conn) == 1 and len(xnat_conn.containers.containers) == 1
