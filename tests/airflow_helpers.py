"""Running operators and DAGs in tests: real ``dag.test()`` runs on SQLite, and a direct-execute helper."""

from __future__ import annotations

import importlib.util
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

    def xcom(self, task_id: str, map_index: int = -1) -> Any:
        return self.xcoms[(task_id, map_index)]


def run_dag(dag_id: str, conf: dict[str, Any] | None = None, filename: str | None = None) -> DagRunResult:
    """``dag.test()`` the DAG and collect task states and return values from the metadata database."""
    from airflow.models import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    dag = load_dag(dag_id, filename)
    dr = dag.test(run_conf=conf or {})
    with create_session() as session:
        tis = session.query(TaskInstance).filter(TaskInstance.dag_id == dag_id, TaskInstance.run_id == dr.run_id)
        states = {(ti.task_id, ti.map_index): str(ti.state) for ti in tis}
        tries = {(ti.task_id, ti.map_index): ti.try_number for ti in tis}
        rows = session.query(XComModel).filter(XComModel.dag_id == dag_id, XComModel.run_id == dr.run_id).all()
        keyed = {(x.task_id, x.map_index, x.key): XComModel.deserialize_value(x) for x in rows}
    xcoms = {(t, m): v for (t, m, k), v in keyed.items() if k == "return_value"}
    return DagRunResult(str(dr.state), dr.run_id, states, xcoms, tries, keyed)


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
