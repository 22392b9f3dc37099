"""Running operators and DAGs in tests: real ``dag.test()`` runs on SQLite, and a direct-execute helper."""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def load_dag(dag_id: str, filename: str | None = None) -> Any:
    """The DAG object from its file in the DAGs folder (``<dag_id>.py`` unless ``filename`` says otherwise)."""
    path = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"]) / (filename or f"{dag_id}.py")
    spec = importlib.util.spec_from_file_location(f"dagfile_{path.stem}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dags = [v for v in vars(module).values() if getattr(v, "dag_id", None) == dag_id and hasattr(v, "test")]
    assert dags, f"no DAG {dag_id} in {path}"
    return dags[0]


@dataclass
class DagRunResult:
    state: str
    run_id: str
    tis: dict[tuple[str, int], str]  # (task_id, map_index) -> state
    xcoms: dict[tuple[str, int], Any]  # return values
    tries: dict[tuple[str, int], int] = field(default_factory=dict)
    keyed: dict[tuple[str, int, str], Any] = field(default_factory=dict)  # every XCom, by key
    run_type: str = ""
    logical_date: Any = None
    consumed_events: list[dict[str, Any]] = field(default_factory=list)  # asset events the run was started by

    def xcom(self, task_id: str, map_index: int = -1) -> Any:
        return self.xcoms[(task_id, map_index)]


def run_dag(dag_id: str, conf: dict[str, Any] | None = None, filename: str | None = None) -> DagRunResult:
    """``dag.test()`` the DAG and collect task states and return values from the metadata database."""
    dag = load_dag(dag_id, filename)
    dr = dag.test(run_conf=conf or {})
    return _result(dag_id, dr)


def _result(dag_id: str, dr: Any) -> DagRunResult:
    """Task states, tries and XComs of one run, read from the metadata database."""
    from airflow.models import DagRun, TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = session.query(TaskInstance).filter(TaskInstance.dag_id == dag_id, TaskInstance.run_id == dr.run_id)
        states = {(ti.task_id, ti.map_index): str(ti.state) for ti in tis}
        tries = {(ti.task_id, ti.map_index): ti.try_number for ti in tis}
        rows = session.query(XComModel).filter(XComModel.dag_id == dag_id, XComModel.run_id == dr.run_id).all()
        keyed = {(x.task_id, x.map_index, x.key): XComModel.deserialize_value(x) for x in rows}
        run = session.query(DagRun).filter(DagRun.dag_id == dag_id, DagRun.run_id == dr.run_id).one()
        consumed = [{"uri": e.uri, "extra": dict(e.extra or {})} for e in run.consumed_asset_events]
        run_type, logical_date, state = str(run.run_type), run.logical_date, str(run.state)
    xcoms = {(t, m): v for (t, m, k), v in keyed.items() if k == "return_value"}
    return DagRunResult(state, dr.run_id, states, xcoms, tries, keyed, run_type, logical_date, consumed)


# Runs without a logical date. ``dag.test()`` always gives its run one, but in Airflow 3 an asset-triggered run
# has none, and neither has a run triggered through the REST API or ``airflow dags trigger`` with
# ``logical_date: null``: their context has no ``ts``, ``ds``, ``logical_date`` or ``data_interval_*``. The
# helpers below create such runs with Airflow's own code (the in-process API ``airflow dags trigger`` uses, the
# triggerer's event submission, the scheduler's asset-triggered run creation) and run their tasks with the same
# in-process loop as ``dag.test()``.


def sync_dags() -> None:
    """Parse the DAGs folder and write every DAG (serialized DAGs, assets, aliases, watchers' triggers) to the
    metadata database, as the DAG processor does (``dag.test()`` does the same)."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db
    from airflow.utils.session import create_session

    manager = DagBundlesManager()
    with create_session() as session:
        manager.sync_bundles_to_db(session=session)
    for bundle in manager.get_all_dag_bundles():
        if not bundle.is_initialized:
            bundle.initialize()
        bag = BundleDagBag(dag_folder=bundle.path, bundle_path=bundle.path, bundle_name=bundle.name)
        assert not bag.import_errors, bag.import_errors
        sync_bag_to_db(bag, bundle.name, bundle.version)


def set_paused(dag_id: str, paused: bool) -> None:
    """Pause or unpause a DAG, as the UI's toggle does. Only unpaused DAGs get asset events queued and their
    watchers' triggers created, so call :func:`sync_dags` again after unpausing a DAG that has watchers."""
    from airflow.models.asset import AssetDagRunQueue
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    with create_session() as session:
        model = session.get(DagModel, dag_id)
        assert model is not None, f"{dag_id} is not in the metadata database (sync_dags() first)"
        model.is_paused = paused
        if paused:  # nothing queued for a paused DAG is left to start a run in a later test
            session.query(AssetDagRunQueue).filter(AssetDagRunQueue.target_dag_id == dag_id).delete()


def forget_asset_events(*, alias: str | None = None, uri_prefix: str | None = None) -> None:
    """Delete the recorded asset events of an asset alias or of assets whose URI starts with ``uri_prefix``, so
    that a test sees only its own (earlier tests share the metadata database, and a DAG's first asset-triggered
    run consumes every earlier event in its window, as on a deployment whose history holds them)."""
    from airflow.models.asset import AssetAliasModel, AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        events = session.query(AssetEvent)
        if alias is not None:
            events = events.filter(AssetEvent.source_aliases.any(AssetAliasModel.name == alias))
        if uri_prefix is not None:
            events = events.filter(AssetEvent.asset.has(AssetModel.uri.like(f"{uri_prefix}%")))
        for event in events.all():
            session.delete(event)


def trigger_run(dag_id: str, conf: dict[str, Any] | None = None, filename: str | None = None) -> DagRunResult:
    """Trigger a run with no logical date, as ``POST /api/v2/dags/{dag_id}/dagRuns`` with
    ``"logical_date": null`` and ``airflow dags trigger`` create it (``airflow.api.common.trigger_dag``: a queued
    ``manual`` run, ``logical_date`` and data interval None), then run its tasks."""
    from airflow.api.common.trigger_dag import trigger_dag
    from airflow.utils.types import DagRunTriggeredByType

    sync_dags()
    dr = trigger_dag(dag_id, triggered_by=DagRunTriggeredByType.REST_API, conf=conf or {}, logical_date=None)
    assert dr is not None and dr.logical_date is None
    return execute_run(dag_id, dr.run_id, filename)


def submit_trigger_event(asset_name: str, payload: dict[str, Any]) -> None:
    """What the triggerer does with an event yielded by an asset watcher's trigger: ``Trigger.submit_event``, which
    records an asset event (``extra = {"from_trigger": True, "payload": ...}``) on every asset the trigger watches
    and queues the unpaused DAGs scheduled on them."""
    from airflow.models.asset import AssetModel
    from airflow.models.trigger import Trigger
    from airflow.triggers.base import TriggerEvent
    from airflow.utils.session import create_session

    with create_session() as session:
        asset = session.query(AssetModel).filter(AssetModel.name == asset_name).one()
        triggers = list(asset.triggers)
        assert triggers, f"asset {asset_name} has no watcher trigger: unpause the DAG scheduled on it and sync_dags()"
        Trigger.submit_event(triggers[0].id, TriggerEvent(payload), session=session)


def run_asset_triggered(dag_id: str, filename: str | None = None) -> DagRunResult:
    """Create the asset-triggered run the scheduler creates from the DAG's queued asset events (its own
    ``DagModel.dags_needing_dagruns`` and ``_create_dag_runs_asset_triggered``: run type ``asset_triggered``,
    no logical date, the events in ``consumed_asset_events``), then run its tasks."""
    from airflow.jobs.job import Job
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
    from airflow.models import DagRun
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session
    from airflow.utils.types import DagRunType

    with create_session() as session:
        query, triggered = DagModel.dags_needing_dagruns(session)
        models = [d for d in query.all() if d.dag_id == dag_id]
        assert models and dag_id in triggered, f"no queued asset event would start {dag_id} now"
        SchedulerJobRunner(job=Job())._create_dag_runs_asset_triggered(dag_models=models, session=session)
        session.flush()
        dr = (session.query(DagRun).filter(DagRun.dag_id == dag_id, DagRun.run_type == DagRunType.ASSET_TRIGGERED)
              .order_by(DagRun.id.desc()).first())
        assert dr is not None and dr.logical_date is None
        run_id = dr.run_id
    return execute_run(dag_id, run_id, filename)


def execute_run(dag_id: str, run_id: str, filename: str | None = None) -> DagRunResult:
    """Start an existing queued run (as the scheduler does) and run its tasks in this process with the loop of
    ``dag.test()`` (deferred tasks' triggers run inline), until the run finishes."""
    import time

    from airflow import settings
    from airflow.models import DagRun
    from airflow.models.dagbag import DBDagBag
    from airflow.sdk import timezone
    from airflow.sdk.definitions.dag import _run_task
    from airflow.utils.state import DagRunState, TaskInstanceState

    dag = load_dag(dag_id, filename)
    session = settings.Session()
    try:
        dr = session.query(DagRun).filter(DagRun.dag_id == dag_id, DagRun.run_id == run_id).one()
        dr.dag = DBDagBag().get_dag_for_run(dag_run=dr, session=session)
        dr.state, dr.start_date = DagRunState.RUNNING, timezone.utcnow()
        session.commit()
        finished = {TaskInstanceState.SUCCESS, TaskInstanceState.FAILED, TaskInstanceState.SKIPPED,
                    TaskInstanceState.UPSTREAM_FAILED, TaskInstanceState.REMOVED}
        while dr.state == DagRunState.RUNNING:
            session.expire_all()
            schedulable, _ = dr.update_state(session=session)
            for ti in schedulable:
                if ti.state != TaskInstanceState.UP_FOR_RESCHEDULE:
                    ti.try_number += 1
                ti.state, ti.scheduled_dttm = TaskInstanceState.SCHEDULED, timezone.utcnow()
            session.commit()
            tis = set(dr.get_task_instances(session=session))
            scheduled = [ti for ti in tis if ti.state == TaskInstanceState.SCHEDULED]
            if not scheduled and any(ti.state not in finished for ti in tis):
                time.sleep(0.2)  # waiting for a retry delay or a reschedule
            for ti in scheduled:
                try:
                    _run_task(ti=ti, task=dag.task_dict[ti.task_id], run_triggerer=True)
                except Exception:  # as dag.test(): the task instance's state says what happened
                    logging.getLogger(__name__).exception("task %s failed", ti)
        return _result(dag_id, dr)
    finally:
        session.close()


def asset_events(uri_prefix: str) -> list[dict[str, Any]]:
    """Asset events recorded for assets whose URI starts with ``uri_prefix``: uri and extra."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = (session.query(AssetEvent, AssetModel).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                .filter(AssetModel.uri.like(f"{uri_prefix}%")).all())
        return [{"uri": a.uri, "extra": dict(e.extra or {})} for e, a in rows]


class FakeTI:
    """Just enough of a task instance for operators' ``xcom_push`` when called directly."""

    def __init__(self) -> None:
        self.pushed: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value

    def get_first_reschedule_date(self, context: Any) -> None:
        return None  # a first poke: no earlier reschedule


class FakeStore:
    """An in-memory stand-in for Airflow's task state store (get/set), for direct operator calls."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def set(self, key: str, value: Any, **_: Any) -> None:
        self.data[key] = value


class AliasEvents:
    """The asset events a task adds through one asset alias."""

    def __init__(self) -> None:
        self.added: list[tuple[Any, dict[str, Any]]] = []

    def add(self, asset: Any, extra: dict[str, Any] | None = None) -> None:
        self.added.append((asset, dict(extra or {})))


class OutletEvents(dict):
    """``context["outlet_events"]``: the asset events a task emits, by asset alias."""

    def __missing__(self, key: Any) -> AliasEvents:
        self[key] = value = AliasEvents()
        return value


def context(store: FakeStore | None = None) -> dict[str, Any]:
    """A minimal execute() context: a task instance for XComs, a task state store and outlet events."""
    return {"ti": FakeTI(), "task_state_store": store if store is not None else FakeStore(),
            "outlet_events": OutletEvents()}
