"""``XnatPrearchiveSensor`` poking the emulator directly: every status, quiet period, counts, filters, failed
and stalled sessions (with the rebuild really sent to the server), timeouts and soft_fail, the state that a
rescheduled sensor carries in its task state store, and the deferral to its trigger."""

from __future__ import annotations

import datetime
import time
import types

import pytest
from airflow.sdk import PokeReturnValue
from airflow.sdk.exceptions import (
    AirflowException,
    AirflowFailException,
    AirflowSensorTimeout,
    AirflowSkipException,
    TaskDeferred,
)

from tests.airflow_helpers import FakeStore, context
from tests.sensors.support import REBUILD, archive, hold, prompt_queue, put_session, status_of, uri
from tests.support import wait_for as wait_until
from xnat_provider.client.errors import XnatServerError
from xnat_provider.sensors.prearchive import STATE_KEY, XnatPrearchiveSensor
from xnat_provider.testing.clock import ManualClock
from xnat_provider.triggers.prearchive import XnatPrearchiveTrigger

pytestmark = pytest.mark.timeout(60)

BUSY = ["RECEIVING", "RECEIVING_INTERRUPT", "BUILDING", "ARCHIVING", "MOVING", "DELETING", "SEPARATING",
        "QUEUED_BUILDING", "QUEUED_MOVING", "_BUILDING", "_ARCHIVING", "_DELETING"]


def sensor(**kwargs) -> XnatPrearchiveSensor:
    kwargs.setdefault("task_id", "wait")
    kwargs.setdefault("project", "P1")
    kwargs.setdefault("poke_interval", 0.1)
    kwargs.setdefault("timeout", 20)
    kwargs.setdefault("deferrable", False)
    return XnatPrearchiveSensor(**kwargs)


def done(value) -> list[dict]:
    assert isinstance(value, PokeReturnValue) and value.is_done, value
    return value.xcom_value


def test_every_busy_status_keeps_waiting_then_ready_succeeds(xnat_conn, tmp_path) -> None:
    row = put_session(xnat_conn, tmp_path, "S01_MR1")
    s, ctx = sensor(), context()
    for status in BUSY:
        hold(xnat_conn, row, status)
        assert s.poke(ctx) is False, status
        assert status_of(xnat_conn, row) == status
    xnat_conn.release_prearchive(row["project"], row["timestamp"], row["folderName"], "READY")
    sessions = done(s.poke(ctx))
    assert [(x["name"], x["status"], x["subject"]) for x in sessions] == [("S01_MR1", "READY", "S01")]
    assert sessions[0]["study_uid"] == row["study_uid"]


def test_ready_counts_only_after_quiet_period(xnat_conn, tmp_path, monkeypatch) -> None:
    """Judged on a clock the test moves (the verdict's ``time.time``), so a slow poke cannot eat the margin."""
    put_session(xnat_conn, tmp_path, "S01_MR1")
    clock = ManualClock()
    monkeypatch.setattr("xnat_provider.conditions.time", types.SimpleNamespace(time=clock))
    s, ctx = sensor(quiet_period=0.6), context()
    assert s.poke(ctx) is False  # READY, but only just seen
    clock.advance(0.2)
    assert s.poke(ctx) is False
    clock.advance(0.39)
    assert s.poke(ctx) is False  # 0.59 s quiet of 0.6
    clock.advance(0.01)
    assert [x["name"] for x in done(s.poke(ctx))] == ["S01_MR1"]


def test_quiet_period_restarts_when_the_session_changes(xnat_conn, tmp_path) -> None:
    row = put_session(xnat_conn, tmp_path, "S01_MR1")
    s, ctx = sensor(quiet_period=0.5), context()
    assert s.poke(ctx) is False
    time.sleep(0.6)
    hold(xnat_conn, row, "RECEIVING")  # more files arrived: the session changed
    assert s.poke(ctx) is False
    time.sleep(1.1)  # lastmod is kept to the second
    xnat_conn.release_prearchive(row["project"], row["timestamp"], row["folderName"], "READY")
    assert s.poke(ctx) is False  # READY again, but the quiet period starts over
    wait_until(lambda: s.poke(ctx), timeout=5)


def test_min_count(xnat_conn, tmp_path) -> None:
    put_session(xnat_conn, tmp_path, "S01_MR1")
    s, ctx = sensor(min_count=2), context()
    assert s.poke(ctx) is False
    put_session(xnat_conn, tmp_path, "S02_MR1", subject="S02")
    assert sorted(x["name"] for x in done(s.poke(ctx))) == ["S01_MR1", "S02_MR1"]
    with pytest.raises(ValueError, match="min_count"):
        sensor(min_count=0)


def test_subject_session_and_study_uid_filters(xnat_conn, tmp_path) -> None:
    a = put_session(xnat_conn, tmp_path, "S01_MR1", subject="S01")
    put_session(xnat_conn, tmp_path, "S02_MR1", subject="S02")
    c = put_session(xnat_conn, tmp_path, "S01_MR2", subject="S01")
    put_session(xnat_conn, tmp_path, "S09_MR1", subject="S09", project="P2")
    ctx = context()
    assert sorted(x["name"] for x in done(sensor(subject="S01", min_count=2).poke(ctx))) == ["S01_MR1", "S01_MR2"]
    assert [x["name"] for x in done(sensor(experiment="S02_MR1").poke(context()))] == ["S02_MR1"]
    assert [x["name"] for x in done(sensor(study_uid=c["study_uid"]).poke(context()))] == ["S01_MR2"]
    assert [x["name"] for x in done(sensor(subject="S01", experiment="S01_MR1").poke(context()))] == ["S01_MR1"]
    assert done(sensor(study_uid=a["study_uid"]).poke(context()))[0]["timestamp"] == a["timestamp"]
    assert sensor(subject="S09").poke(context()) is False  # another project's session does not count
    assert sensor(subject="S01", min_count=3).poke(context()) is False
    assert [x["name"] for x in done(sensor(project="P2").poke(context()))] == ["S09_MR1"]


def conflict_session(emu, tmp_path) -> dict:
    """A real CONFLICT: the same study archived, sent again and archived again without overwrite."""
    put_session(emu, tmp_path, "S01_MR1", archive=True)
    row = next(r for r in [put_session(emu, tmp_path / "again", "S01_MR1")])
    resp = archive(emu, row)
    assert resp.status_code >= 400
    assert status_of(emu, row) == "CONFLICT"
    return row


def test_conflict_fails_with_a_clear_message(xnat_conn, tmp_path) -> None:
    conflict_session(xnat_conn, tmp_path)
    with pytest.raises(AirflowFailException, match=r"S01_MR1 \(CONFLICT\).*P1 failed.*skip_failed") as info:
        sensor().execute(context())
    # XNAT's own reason, from the session's prearchive log, is part of the message.
    assert "XNAT says: S01_MR1: Invalid modification of session UID via archive process." in str(info.value)


def test_error_fails_and_skip_failed_ignores_failed_sessions(xnat_conn, tmp_path) -> None:
    bad = put_session(xnat_conn, tmp_path, "S01_MR1")
    hold(xnat_conn, bad, "ERROR")
    with pytest.raises(AirflowFailException, match=r"S01_MR1 \(ERROR\)"):
        sensor().poke(context())
    s = sensor(skip_failed=True)
    assert s.poke(context()) is False
    put_session(xnat_conn, tmp_path, "S02_MR1", subject="S02")
    assert [x["name"] for x in s.execute(context())] == ["S02_MR1"]


def test_soft_fail_skips_a_failed_session(xnat_conn, tmp_path) -> None:
    hold(xnat_conn, put_session(xnat_conn, tmp_path, "S01_MR1"), "CONFLICT")
    with pytest.raises(AirflowSkipException):
        sensor(soft_fail=True).execute(context())
    with pytest.raises(AirflowSkipException):  # also when the deferrable sensor's first look finds it
        sensor(soft_fail=True, deferrable=True).execute(context())


def test_stalled_session_is_rebuilt_once_then_succeeds(xnat_conn, tmp_path) -> None:
    row = put_session(xnat_conn, tmp_path, "S01_MR1")
    hold(xnat_conn, row, "BUILDING")
    prompt_queue(xnat_conn)  # rebuilt, it is READY within a few looks: never stalled again
    store = FakeStore()
    result = sensor(stall_timeout=0.5, rebuild_stalled=True).execute(context(store))
    assert [(x["name"], x["status"]) for x in result] == [("S01_MR1", "READY")]
    assert xnat_conn.request_count("POST", REBUILD) == 1
    assert status_of(xnat_conn, row) == "READY"
    assert store.data[STATE_KEY]["rebuilt"] == [uri(row)]


def test_stalled_session_without_rebuild_fails_clearly(xnat_conn, tmp_path) -> None:
    row = put_session(xnat_conn, tmp_path, "S01_MR1")
    hold(xnat_conn, row, "QUEUED_BUILDING")
    t0 = time.monotonic()
    with pytest.raises(AirflowFailException, match=r"S01_MR1 .*QUEUED_BUILDING with no change.*stall_timeout") as e:
        sensor(stall_timeout=0.5).execute(context())
    assert "even after a rebuild" not in str(e.value)
    assert 0.5 <= time.monotonic() - t0 < 10
    assert xnat_conn.request_count("POST", REBUILD) == 0
    assert status_of(xnat_conn, row) == "QUEUED_BUILDING"


LOCKED_MESSAGE = (r"S01_MR1 .*has been {status} with no change.*locked by an operation XNAT is still running"
                  r".*reset-status")


@pytest.mark.parametrize("status", ["_ARCHIVING", "_BUILDING", "_MOVING", "_DELETING"])
def test_a_stalled_locked_session_is_not_rebuilt_and_fails_saying_why(xnat_conn, tmp_path, status) -> None:
    """XNAT ignores a rebuild of a locked (_X) row (200, the row unchanged): the sensor does not spend its one
    rebuild on it; it waits until stall_timeout and fails naming the lock and what an administrator can do."""
    row = put_session(xnat_conn, tmp_path, "S01_MR1")
    hold(xnat_conn, row, status)
    t0 = time.monotonic()
    with pytest.raises(AirflowFailException, match=LOCKED_MESSAGE.format(status=status)) as e:
        sensor(stall_timeout=0.5, rebuild_stalled=True).execute(context(FakeStore()))
    assert "even after a rebuild" not in str(e.value)
    assert time.monotonic() - t0 >= 0.5
    assert xnat_conn.request_count("POST", REBUILD) == 0
    assert status_of(xnat_conn, row) == status


def test_a_stalled_locked_session_fails_the_same_when_deferred(xnat_conn, tmp_path) -> None:
    import asyncio

    from tests.sensors.support import first_event

    row = put_session(xnat_conn, tmp_path, "S01_MR1")
    hold(xnat_conn, row, "_ARCHIVING")
    s = sensor(deferrable=True, timeout=30, stall_timeout=0.4, rebuild_stalled=True)
    with pytest.raises(TaskDeferred) as deferred:
        s.execute(context(FakeStore()))
    event = asyncio.run(first_event(deferred.value.trigger))
    assert event["status"] == "error"  # not "rebuild": the trigger does not ask for a pointless rebuild
    with pytest.raises(AirflowFailException, match=LOCKED_MESSAGE.format(status="_ARCHIVING")):
        s.execute_complete(context(), event)
    assert xnat_conn.request_count("POST", REBUILD) == 0


def _lock_after_the_next_listing(monkeypatch, emu, row: dict, status: str) -> None:
    """The row gets locked by an operation just after the sensor's look and before its rebuild request."""
    from xnat_provider.client import XnatClient

    real = XnatClient.list_prearchive

    def list_then_lock(self, *args, **kwargs):
        listed = real(self, *args, **kwargs)
        hold(emu, row, status)
        monkeypatch.setattr(XnatClient, "list_prearchive", real)
        return listed

    monkeypatch.setattr(XnatClient, "list_prearchive", list_then_lock)


def test_a_rebuild_xnat_ignores_is_not_spent_in_poke_mode(xnat_conn, tmp_path, monkeypatch) -> None:
    row = put_session(xnat_conn, tmp_path, "S01_MR1")
    hold(xnat_conn, row, "BUILDING")
    store = FakeStore()

    def poke():
        return sensor(mode="reschedule", stall_timeout=0.4, rebuild_stalled=True).poke(context(store))

    assert poke() is False
    time.sleep(0.5)
    _lock_after_the_next_listing(monkeypatch, xnat_conn, row, "_BUILDING")
    assert poke() is False  # stalled: a rebuild is asked, XNAT ignores it (the row is locked by now)
    assert xnat_conn.request_count("POST", REBUILD) == 1
    assert store.data[STATE_KEY]["rebuilt"] == []  # not spent
    assert status_of(xnat_conn, row) == "_BUILDING"
    assert poke() is False  # a new status: the stall clock starts again
    time.sleep(0.5)
    with pytest.raises(AirflowFailException, match=LOCKED_MESSAGE.format(status="_BUILDING")):
        poke()
    assert xnat_conn.request_count("POST", REBUILD) == 1


def test_a_rebuild_xnat_ignores_is_not_spent_when_deferred(xnat_conn, tmp_path) -> None:
    row = put_session(xnat_conn, tmp_path, "S01_MR1")
    hold(xnat_conn, row, "_BUILDING")  # locked by the time the task acts on the trigger's event
    s = sensor(deferrable=True, timeout=30, stall_timeout=0.3, rebuild_stalled=True)
    store = FakeStore()
    state = {"seen": {uri(row): ["BUILDING|x", 0]}, "rebuilt": [], "deferred_at": time.time()}
    event = {"status": "rebuild", "message": "stalled", "sessions": [row | {"folder": row["folderName"]}],
             "state": state}
    with pytest.raises(TaskDeferred) as again:
        s.execute_complete(context(store), event)
    assert xnat_conn.request_count("POST", REBUILD) == 1
    assert again.value.trigger.state["rebuilt"] == [] and store.data[STATE_KEY]["rebuilt"] == []
    assert status_of(xnat_conn, row) == "_BUILDING"


def test_reschedule_state_survives_in_the_task_state_store(xnat_conn, tmp_path) -> None:
    """Each reschedule is a new process: a new sensor object, only the store carries the observations.
    A session that stays stuck after its one rebuild fails 'even after a rebuild'."""
    row = put_session(xnat_conn, tmp_path, "S01_MR1")
    hold(xnat_conn, row, "BUILDING")
    store = FakeStore()

    def poke():
        return sensor(mode="reschedule", stall_timeout=0.4, rebuild_stalled=True).poke(context(store))

    assert poke() is False
    first_seen = store.data[STATE_KEY]["seen"][uri(row)][1]
    time.sleep(0.5)
    assert poke() is False  # stalled: rebuilt now (the stall clock survived the "reschedule")
    assert xnat_conn.request_count("POST", REBUILD) == 1
    assert store.data[STATE_KEY]["rebuilt"] == [uri(row)]
    assert status_of(xnat_conn, row) in ("QUEUED_BUILDING", "_BUILDING", "BUILDING", "READY")
    hold(xnat_conn, row, "BUILDING")  # ... and stuck again
    assert poke() is False
    assert store.data[STATE_KEY]["seen"][uri(row)][1] > first_seen
    time.sleep(0.5)
    with pytest.raises(AirflowFailException, match="even after a rebuild"):
        poke()
    assert xnat_conn.request_count("POST", REBUILD) == 1  # never a second rebuild


def test_poke_mode_timeout_and_soft_fail(xnat_conn, tmp_path) -> None:
    t0 = time.monotonic()
    with pytest.raises(AirflowSensorTimeout):
        sensor(timeout=0.5).execute(context())
    assert time.monotonic() - t0 < 5
    with pytest.raises(AirflowSkipException):
        sensor(timeout=0.3, soft_fail=True).execute(context())


def test_bad_project_and_bad_login_fail_fast(xnat_conn, monkeypatch) -> None:
    with pytest.raises(AirflowFailException, match="NOPE"):
        sensor(project="NOPE").execute(context())
    import json

    monkeypatch.setenv("AIRFLOW_CONN_XNAT_DEFAULT", json.dumps({
        "conn_type": "xnat", "host": xnat_conn.url, "login": "admin", "password": "wrong-password",
        "extra": {"backoff": 0.01, "retries": 2}}))
    with pytest.raises(AirflowFailException, match="Cannot watch the prearchive"):
        sensor().execute(context())


def test_server_errors_keep_the_sensor_poking(xnat_conn, tmp_path) -> None:
    put_session(xnat_conn, tmp_path, "S01_MR1")
    xnat_conn.fail_next("GET", r"/data/prearchive/projects/P1", status=503, count=6)
    s, ctx = sensor(), context()
    assert s.poke(ctx) is False  # the client's 3 attempts all got 503
    assert [x["name"] for x in s.execute(ctx)] == ["S01_MR1"]


# ---- deferrable, called directly -----------------------------------------------------------------------
def test_defers_with_its_trigger_and_completes(xnat_conn, tmp_path) -> None:
    row = put_session(xnat_conn, tmp_path, "S01_MR1")
    hold(xnat_conn, row, "BUILDING")
    s = sensor(deferrable=True, timeout=45, stall_timeout=30, quiet_period=0.2, poke_interval=0.3,
               subject="S01", xnat_conn_id="xnat_default")
    with pytest.raises(TaskDeferred) as deferred:
        s.execute(context())
    trigger = deferred.value.trigger
    assert isinstance(trigger, XnatPrearchiveTrigger)
    assert deferred.value.method_name == "execute_complete"
    assert deferred.value.timeout == datetime.timedelta(seconds=45)
    assert trigger.criteria == {"project": "P1", "subject": "S01", "experiment": None, "study_uid": None,
                                "min_count": 1, "quiet_period": 0.2, "stall_timeout": 30.0,
                                "rebuild_stalled": False, "skip_failed": False}
    assert trigger.poll_interval == 0.3
    assert uri(row) in trigger.state["seen"]  # the first poke's observations go with it

    event = {"status": "success", "message": "1 READY", "sessions": [{"name": "S01_MR1", "status": "READY"}]}
    assert s.execute_complete(context(), event) == [{"name": "S01_MR1", "status": "READY"}]


def test_ready_at_once_does_not_defer(xnat_conn, tmp_path) -> None:
    put_session(xnat_conn, tmp_path, "S01_MR1")
    assert [x["name"] for x in sensor(deferrable=True).execute(context())] == ["S01_MR1"]


def test_execute_complete_raises_on_error_events(xnat_conn) -> None:
    s = sensor(deferrable=True)
    with pytest.raises(AirflowFailException, match="XnatNotFoundError: no such project"):
        s.execute_complete(context(), {"status": "error", "error_type": "XnatNotFoundError",
                                       "message": "no such project"})
    with pytest.raises(AirflowFailException, match="CONFLICT"):
        s.execute_complete(context(), {"status": "error", "message": "S01 (CONFLICT) failed"})
    with pytest.raises(XnatServerError, match="XnatServerError") as e:  # retryable: not a fail-fast error
        s.execute_complete(context(), {"status": "error", "error_type": "XnatServerError", "message": "503"})
    assert not isinstance(e.value, (AirflowFailException, AirflowException))
    with pytest.raises(AirflowFailException, match="no event"):
        s.execute_complete(context(), None)


def test_execute_complete_rebuilds_and_defers_again(xnat_conn, tmp_path) -> None:
    row = put_session(xnat_conn, tmp_path, "S01_MR1")
    hold(xnat_conn, row, "BUILDING")
    s = sensor(deferrable=True, timeout=30, stall_timeout=0.3, rebuild_stalled=True)
    store = FakeStore()
    store.set(STATE_KEY, {"seen": {}, "rebuilt": [], "deferred_at": time.time() - 3600})  # an earlier try's
    with pytest.raises(TaskDeferred) as first:
        s.execute(context(store))
    assert time.time() - first.value.trigger.state["deferred_at"] < 5  # a retry starts its own clock
    state = {"seen": {uri(row): ["BUILDING|x", 0]}, "rebuilt": [], "deferred_at": time.time() - 10}
    event = {"status": "rebuild", "message": "stalled", "sessions": [row | {"folder": row["folderName"]}],
             "state": state}
    with pytest.raises(TaskDeferred) as again:
        s.execute_complete(context(store), event)
    assert xnat_conn.request_count("POST", REBUILD) == 1
    trigger = again.value.trigger
    assert trigger.state["rebuilt"] == [uri(row)] and uri(row) not in trigger.state["seen"]
    assert store.data[STATE_KEY]["rebuilt"] == [uri(row)]
    assert 15 < again.value.timeout.total_seconds() <= 20  # what is left of the sensor's timeout
    state["deferred_at"] = time.time() - 60
    with pytest.raises(AirflowSensorTimeout):  # out of time: no second rebuild, no new deferral
        sensor(deferrable=True, timeout=30).execute_complete(context(), event)
    assert xnat_conn.request_count("POST", REBUILD) == 1


def test_deferral_timeout_is_a_sensor_timeout(xnat_conn) -> None:
    """What the task runner does when the triggerer times the deferral out (``defer(timeout=...)``)."""
    from airflow.sdk.bases.operator import TRIGGER_FAIL_REPR, TriggerFailureReason

    fail = {"error": TriggerFailureReason.TRIGGER_TIMEOUT}
    with pytest.raises(AirflowSensorTimeout):
        sensor(deferrable=True).resume_execution(TRIGGER_FAIL_REPR, fail, context())
    with pytest.raises(AirflowSkipException):
        sensor(deferrable=True, soft_fail=True).resume_execution(TRIGGER_FAIL_REPR, fail, context())
    with pytest.raises(AirflowSkipException):  # an error event with soft_fail is a skip too
        sensor(deferrable=True, soft_fail=True).resume_execution(
            "execute_complete", {"event": {"status": "error", "message": "CONFLICT"}}, context())


def test_default_deferrable_is_honoured(monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "True")
    assert XnatPrearchiveSensor(task_id="a", project="P1").deferrable is True
    assert XnatPrearchiveSensor(task_id="b", project="P1", deferrable=False).deferrable is False
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "False")
    assert XnatPrearchiveSensor(task_id="c", project="P1").deferrable is False


def test_templated_fields() -> None:
    assert {"project", "subject", "experiment", "study_uid", "xnat_conn_id"} <= set(
        XnatPrearchiveSensor.template_fields)
