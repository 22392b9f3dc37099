"""The sensors in real ``dag.test()`` runs: reschedule mode keeping its observations in Airflow's task state
store, deferral through the triggers (run inline by ``dag.test()``), a stalled session rebuilt through the
deferred path, and a poke-mode timeout with and without ``soft_fail``.

``dag.test()`` runs a trigger with no timeout, so every emulator state here converges, and pytest's timeout
bounds each test."""

from __future__ import annotations

import json

import pytest

from tests.airflow_helpers import run_dag
from tests.sensors.support import REBUILD, hold, prompt_queue, put_session, status_of, uri

pytestmark = pytest.mark.timeout(90)


def stored_state(dag_id: str, run_id: str) -> dict:
    from airflow.models.task_state_store import TaskStateStoreModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(TaskStateStoreModel).filter(TaskStateStoreModel.dag_id == dag_id,
                                                         TaskStateStoreModel.run_id == run_id).all()
        return {(r.task_id, r.key): json.loads(r.value) if isinstance(r.value, str) else r.value for r in rows}


def test_reschedule_deferrable_and_rebuild_in_dag_test(airflow_db, xnat_conn, tmp_path) -> None:
    emu = xnat_conn
    row = put_session(emu, tmp_path, "S01_MR1")
    hold(emu, row, "BUILDING")  # stalled: the deferrable sensor must have it rebuilt
    prompt_queue(emu)  # rebuilt, it is READY within a few looks: never stalled again
    put_session(emu, tmp_path, "S02_MR1", subject="S02", archive=True)
    result = run_dag("xnat_test_sensors_modes", {"project": "P1", "experiment": "S01_MR1", "archived": "S02_MR1"})
    assert result.state == "success", result.tis
    assert emu.request_count("POST", REBUILD) == 1
    assert status_of(emu, row) == "READY"
    deferred = result.xcom("deferred")
    assert [(s["name"], s["status"], s["timestamp"]) for s in deferred] == [("S01_MR1", "READY", row["timestamp"])]
    rescheduled = result.xcom("rescheduled")
    assert [(s["name"], s["status"]) for s in rescheduled] == [("S01_MR1", "READY")]
    assert result.xcom("archived")["label"] == "S02_MR1"
    state = stored_state("xnat_test_sensors_modes", result.run_id)
    # the rebuild is remembered by the deferrable sensor; the rescheduled one kept its first-seen times
    assert state[("deferred", "xnat_prearchive_watch")]["rebuilt"] == [uri(row)]
    assert uri(row) in state[("rescheduled", "xnat_prearchive_watch")]["seen"]
    from airflow.models.taskreschedule import TaskReschedule
    from airflow.utils.session import create_session

    with create_session() as session:  # it really was rescheduled (quiet_period > poke_interval)
        assert session.query(TaskReschedule).join(TaskReschedule.task_instance).filter_by(
            dag_id="xnat_test_sensors_modes", task_id="rescheduled", run_id=result.run_id).count() >= 1


def test_poke_timeout_soft_fail_in_dag_test(airflow_db, xnat_conn) -> None:
    result = run_dag("xnat_test_sensors_timeout")
    assert result.tis[("soft", -1)] == "skipped"
    assert result.tis[("hard", -1)] == "failed"
    assert result.state == "failed"
