"""``xnat_provider.runs.run_time``: a timestamp for every run, including the runs Airflow 3 gives no logical date
(triggered through the API with ``logical_date: null``, or by asset events), which have no ``ts`` to use.

The example DAGs stamp their records with it; ``test_runs_without_logical_date.py`` runs them that way.
"""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

from tests.airflow_helpers import run_dag, trigger_run
from xnat_provider.runs import run_time


def test_a_run_without_a_logical_date_is_stamped_when_it_became_due(airflow_db) -> None:
    from airflow.models import DagRun
    from airflow.utils.session import create_session

    result = trigger_run("xnat_test_run_time")

    assert result.state == "success", result.tis
    assert result.logical_date is None
    with create_session() as session:
        run_after = session.query(DagRun).filter(DagRun.run_id == result.run_id).one().run_after
    assert run_after is not None and datetime.fromisoformat(result.xcom("stamp")) == run_after


def test_a_dated_run_is_stamped_with_its_logical_date(airflow_db) -> None:
    result = run_dag("xnat_test_run_time")

    assert result.state == "success", result.tis
    assert result.logical_date is not None
    assert datetime.fromisoformat(result.xcom("stamp")) == result.logical_date


def test_the_fallbacks_in_order() -> None:
    logical, due, started = (datetime(2024, 1, d, tzinfo=UTC) for d in (1, 2, 3))
    run = SimpleNamespace(run_after=due, start_date=started)
    assert run_time({"logical_date": logical, "dag_run": run, "run_id": "r"}) == logical.isoformat()
    assert run_time({"logical_date": None, "dag_run": run, "run_id": "r"}) == due.isoformat()
    assert run_time({"dag_run": SimpleNamespace(run_after=None, start_date=started), "run_id": "r"}) == (
        started.isoformat())
    assert run_time({"dag_run": SimpleNamespace(run_after=None, start_date=None), "run_id": "r"}) == "r"
