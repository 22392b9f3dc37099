"""One task that returns ``xnat_provider.runs.run_time`` of its run, for runs with and without a logical date."""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, get_current_context, task

from xnat_provider.runs import run_time

with DAG("xnat_test_run_time", schedule=None, start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
         catchup=False) as dag:

    @task
    def stamp() -> str:
        return run_time(get_current_context())

    stamp()
