"""One failure contract for the sensors in poke, reschedule and deferrable mode, against the emulator: the same
outage tolerance (``outage_tolerance``, one wall-clock clock across reschedules and deferral), the same exception
types raised to Airflow (the client's classes, so a retry policy matches them; fail-fast ones are also
``AirflowFailException``), and a transient failure during a deferred rebuild ridden out, not fatal."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from airflow.sdk import RetryAction
from airflow.sdk.exceptions import (
    AirflowException,
    AirflowFailException,
    AirflowRescheduleException,
    AirflowSkipException,
    TaskDeferred,
)

from tests.airflow_helpers import FakeStore, context
from tests.sensors.support import REBUILD, first_event, hold, prompt_queue, put_session, status_of, uri
from xnat_provider.client.errors import XnatAuthError, XnatNotFoundError, XnatServerError
from xnat_provider.retry import xnat_retry_policy
from xnat_provider.sensors.base import OUTAGE_KEY
from xnat_provider.sensors.experiment import XnatExperimentSensor
from xnat_provider.sensors.prearchive import STATE_KEY, XnatPrearchiveSensor

pytestmark = pytest.mark.timeout(60)
LISTING = r"^/data/prearchive/projects/P1$"
LOGIN = r"^/data/services/auth$"
MODES = ["poke", "reschedule", "deferrable"]


def prearchive_sensor(**kwargs) -> XnatPrearchiveSensor:
    kwargs.setdefault("task_id", "wait")
    kwargs.setdefault("project", "P1")
    kwargs.setdefault("poke_interval", 0.05)
    kwargs.setdefault("timeout", 30)
    kwargs.setdefault("deferrable", False)
    return XnatPrearchiveSensor(**kwargs)


def experiment_sensor(**kwargs) -> XnatExperimentSensor:
    kwargs.setdefault("task_id", "wait")
    kwargs.setdefault("project", "P1")
    kwargs.setdefault("experiment", "S01_MR1")
    kwargs.setdefault("poke_interval", 0.05)
    kwargs.setdefault("timeout", 30)
    kwargs.setdefault("deferrable", False)
    return XnatExperimentSensor(**kwargs)


def run_in_mode(mode: str, make, store: FakeStore, trigger_timeout: float = 20.0):
    """Run a sensor to its end as Airflow would in ``mode``: a poke loop in one process; one poke per process
    (a new sensor object) until it stops rescheduling; or the first poke, the trigger, and ``execute_complete``.
    Returns the result or raises what the task would raise."""
    if mode == "poke":
        return make(mode="poke").execute(context(store))
    if mode == "reschedule":
        while True:
            try:
                return make(mode="reschedule").execute(context(store))
            except AirflowRescheduleException:
                time.sleep(0.05)
    try:
        return make(deferrable=True).execute(context(store))
    except TaskDeferred as deferred:
        trigger = deferred.trigger
    while True:  # each resumption is a new process; a rebuild defers again
        event = asyncio.run(first_event(trigger, timeout=trigger_timeout))
        try:
            return make(deferrable=True).execute_complete(context(store), event)
        except TaskDeferred as deferred:
            trigger = deferred.trigger


def decision(exc: BaseException) -> RetryAction:
    return xnat_retry_policy().evaluate(exc, 1, 3).action


# ---- the same outage tolerance --------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_an_outage_longer_than_outage_tolerance_is_an_xnat_server_error(xnat_conn, mode) -> None:
    """It used to be: poke and reschedule waited until ``timeout``; deferred gave up after a fixed 600 s with an
    untyped AirflowException."""
    xnat_conn.fail_next("GET", LISTING, status=503, count=100_000)
    t0 = time.monotonic()
    with pytest.raises(XnatServerError, match=r"Cannot watch the prearchive of P1: XnatServerError: XNAT has kept "
                                              r"failing for \d+ s .*outage_tolerance=0.6 s") as info:
        run_in_mode(mode, lambda **kw: prearchive_sensor(outage_tolerance=0.6, **kw), FakeStore())
    assert 0.6 <= time.monotonic() - t0 < 15  # long before the sensor's 30 s timeout
    assert not isinstance(info.value, AirflowException)  # Airflow's retries (and the retry policy) apply
    assert decision(info.value) == RetryAction.RETRY


@pytest.mark.parametrize("mode", MODES)
def test_a_shorter_outage_is_ridden_out(xnat_conn, tmp_path, mode) -> None:
    put_session(xnat_conn, tmp_path, "S01_MR1", archive=True)
    xnat_conn.fail_next("GET", r"^/data/projects/P1/experiments/S01_MR1$", status=503, count=12)  # 4 polls' worth
    result = run_in_mode(mode, lambda **kw: experiment_sensor(outage_tolerance=20, **kw), FakeStore())
    assert result["label"] == "S01_MR1"


def test_the_outage_clock_goes_on_across_reschedules_and_into_the_trigger(xnat_conn) -> None:
    xnat_conn.fail_next("GET", LISTING, status=503, count=100_000)
    store = FakeStore()
    with pytest.raises(AirflowRescheduleException):
        prearchive_sensor(mode="reschedule", outage_tolerance=30).execute(context(store))
    since = store.data[OUTAGE_KEY]["since"]
    assert time.time() - since < 5
    with pytest.raises(TaskDeferred) as deferred:  # (a deferrable sensor's first poke keeps the same clock)
        prearchive_sensor(deferrable=True, outage_tolerance=30).execute(context(store))
    trigger = deferred.value.trigger
    assert (trigger.failing_since, trigger.transient_error_timeout) == (since, 30)
    # A new try starts its own clock.
    later = context(store)
    later["ti"].try_number = 2
    with pytest.raises(AirflowRescheduleException):
        prearchive_sensor(mode="reschedule", outage_tolerance=30).execute(later)
    assert store.data[OUTAGE_KEY]["try"] == 2 and store.data[OUTAGE_KEY]["since"] > since


def test_outage_tolerance_none_waits_until_timeout(xnat_conn) -> None:
    from airflow.sdk.exceptions import AirflowSensorTimeout

    xnat_conn.fail_next("GET", LISTING, status=503, count=100_000)
    with pytest.raises(AirflowSensorTimeout):
        prearchive_sensor(outage_tolerance=None, timeout=0.8).execute(context())
    with pytest.raises(ValueError, match="outage_tolerance"):
        prearchive_sensor(outage_tolerance=-1)


# ---- the same exception types ---------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_a_missing_project_raises_the_same_fail_fast_type_in_every_mode(xnat_conn, mode) -> None:
    with pytest.raises(XnatNotFoundError, match="Cannot watch the prearchive of NOPE: XnatNotFoundError") as info:
        run_in_mode(mode, lambda **kw: prearchive_sensor(project="NOPE", **kw), FakeStore())
    assert isinstance(info.value, AirflowFailException)  # never retried, soft_fail skips it
    assert decision(info.value) == RetryAction.FAIL
    with pytest.raises(AirflowSkipException):
        run_in_mode(mode, lambda **kw: prearchive_sensor(project="NOPE", soft_fail=True, **kw), FakeStore())


def _deferred_then_refused(emu, monkeypatch, make):
    """Defer with good credentials; then XNAT's password changes and the trigger's session ends."""
    with pytest.raises(TaskDeferred) as deferred:
        make(deferrable=True).execute(context())
    emu.add_user("admin", "Rotated-Password-3", admin=True)
    emu.expire_sessions()
    logins = emu.request_count("POST", LOGIN)
    event = asyncio.run(first_event(deferred.value.trigger, timeout=20))
    assert emu.request_count("POST", LOGIN) == logins + 1  # one failed login, then the trigger stops
    return make(deferrable=True).execute_complete(context(), event)


@pytest.mark.parametrize("sensor", [prearchive_sensor, experiment_sensor], ids=["prearchive", "experiment"])
def test_refused_credentials_raise_the_same_type_in_every_mode(xnat_conn, monkeypatch, sensor) -> None:
    """Deferred, it used to be an AirflowFailException that no retry rule could match as an XnatAuthError."""
    monkeypatch.setenv("AIRFLOW_CONN_XNAT_DEFAULT", json.dumps({
        "conn_type": "xnat", "host": xnat_conn.url, "login": "admin", "password": "Wrong-Password-4",
        "extra": {"backoff": 0.01, "retries": 2}}))
    raised = []
    for mode in ("poke", "reschedule"):
        with pytest.raises(XnatAuthError) as info:
            run_in_mode(mode, sensor, FakeStore())
        raised.append(info.value)
    monkeypatch.setenv("AIRFLOW_CONN_XNAT_DEFAULT", json.dumps({
        "conn_type": "xnat", "host": xnat_conn.url, "login": "admin", "password": "admin",
        "extra": {"backoff": 0.01, "retries": 2}}))
    with pytest.raises(XnatAuthError) as info:
        _deferred_then_refused(xnat_conn, monkeypatch, lambda **kw: sensor(project="P1", **kw))
    raised.append(info.value)
    assert len({type(e) for e in raised}) == 1
    for exc in raised:
        assert isinstance(exc, AirflowFailException) and decision(exc) == RetryAction.FAIL
        assert "Wrong-Password-4" not in str(exc)
    assert xnat_conn.request_count("POST", LOGIN) == 4  # one per try (2), one by the deferred task, one refused


def test_never_fail_skips_a_reported_outage_as_it_skips_a_poked_one(xnat_conn) -> None:
    event = {"status": "error", "error_type": "XnatServerError", "message": "XNAT has kept failing"}
    with pytest.raises(AirflowSkipException):
        prearchive_sensor(deferrable=True, never_fail=True).execute_complete(context(), event)
    xnat_conn.fail_next("GET", LISTING, status=503, count=100_000)
    with pytest.raises(AirflowSkipException):
        prearchive_sensor(never_fail=True, outage_tolerance=0.3).execute(context())


# ---- the same retry behaviour: a rebuild XNAT did not answer ---------------------------------------------
def test_a_503_during_a_deferred_rebuild_is_ridden_out(xnat_conn, tmp_path) -> None:
    """It used to fail the task for good (AirflowFailException: "Could not rebuild a stalled session")."""
    row = put_session(xnat_conn, tmp_path, "S01_MR1")
    hold(xnat_conn, row, "BUILDING")
    prompt_queue(xnat_conn)  # rebuilt, it is READY within a few looks: never stalled again
    store = FakeStore()

    def make(**kw):
        return prearchive_sensor(stall_timeout=0.3, rebuild_stalled=True, poke_interval=0.2, outage_tolerance=30,
                                 **kw)

    with pytest.raises(TaskDeferred) as deferred:
        make(deferrable=True).execute(context(store))
    event = asyncio.run(first_event(deferred.value.trigger))
    assert event["status"] == "rebuild"
    xnat_conn.fail_next("POST", REBUILD, status=503, count=10)
    with pytest.raises(TaskDeferred) as again:
        make(deferrable=True).execute_complete(context(store), event)
    state = again.value.trigger.state
    assert state["rebuilt"] == [] and state["rebuild_after"] > time.time()  # not spent; asked again later
    assert store.data[OUTAGE_KEY]["since"] is not None
    assert status_of(xnat_conn, row) == "BUILDING"
    t0 = time.monotonic()
    event = asyncio.run(first_event(again.value.trigger))  # the trigger waits for rebuild_after, then asks
    assert event["status"] == "rebuild" and time.monotonic() - t0 >= 0.1
    xnat_conn.clear_faults()
    with pytest.raises(TaskDeferred) as third:
        make(deferrable=True).execute_complete(context(store), event)
    assert third.value.trigger.state["rebuilt"] == [uri(row)]
    assert store.data[OUTAGE_KEY]["since"] is None  # answered: the outage is over
    event = asyncio.run(first_event(third.value.trigger, timeout=20))
    assert make(deferrable=True).execute_complete(context(store), event)[0]["status"] == "READY"


def test_a_rebuild_xnat_keeps_not_answering_ends_at_outage_tolerance(xnat_conn, tmp_path) -> None:
    row = put_session(xnat_conn, tmp_path, "S01_MR1")
    hold(xnat_conn, row, "BUILDING")
    xnat_conn.fail_next("POST", REBUILD, status=503, count=100_000)
    for mode in MODES:
        store = FakeStore()
        t0 = time.monotonic()
        with pytest.raises(XnatServerError, match="rebuild"):
            run_in_mode(mode, lambda **kw: prearchive_sensor(stall_timeout=0.2, rebuild_stalled=True,
                                                             outage_tolerance=0.8, **kw), store)
        assert time.monotonic() - t0 < 15, mode
        assert store.data[STATE_KEY]["rebuilt"] == [], mode


def test_a_503_during_a_poked_rebuild_is_asked_again(xnat_conn, tmp_path) -> None:
    row = put_session(xnat_conn, tmp_path, "S01_MR1")
    hold(xnat_conn, row, "BUILDING")
    prompt_queue(xnat_conn)  # rebuilt, it is READY within a few looks: never stalled again
    xnat_conn.fail_next("POST", REBUILD, status=503, count=3)
    store = FakeStore()
    result = prearchive_sensor(stall_timeout=0.3, rebuild_stalled=True).execute(context(store))
    assert [s["status"] for s in result] == ["READY"]
    assert store.data[STATE_KEY]["rebuilt"] == [uri(row)]
