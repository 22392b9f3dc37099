"""What a task needs to know about its DAG run, whatever started it. Plain functions over the task context.

Airflow 3 gives some runs no logical date: an asset-triggered run (a DAG scheduled on assets, as the example
pipelines are) and a run triggered through the REST API or ``airflow dags trigger`` with ``logical_date: null``.
Their context then has no ``logical_date``, ``ts``, ``ds`` nor data interval, and a task that formats one fails.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["run_time"]


def run_time(context: Mapping[str, Any]) -> str:
    """When this run is for, as an ISO 8601 timestamp, for any run: its logical date (what ``ts`` gives) where it
    has one; otherwise the time the run became due (``run_after``: when the triggering asset event or request
    came), else when it started; the run id as a last resort (a run that has no date at all).

    Use it where a DAG would write ``{{ ts }}`` or ``context["ts"]`` into a record (a custom field, a file's
    name), so that the same DAG works scheduled, asset-triggered and triggered by hand::

        from airflow.sdk import get_current_context, task
        from xnat_provider.runs import run_time

        @task
        def stamp() -> str:
            return run_time(get_current_context())
    """
    run = context.get("dag_run")
    when = context.get("logical_date") or (
        (getattr(run, "run_after", None) or getattr(run, "start_date", None)) if run is not None else None)
    return when.isoformat() if when is not None else str(context["run_id"])
