"""A Container Service wrapper launched on scans, one mapped task per scan, deferred, with ``retries=1``,
``retry_delay=0`` and ``xnat_retry_policy()``: the tests map it over several scans, and inject failures after the
launch so that a task's first try fails and its retry must follow the container it launched, not launch another.

Params: ``project``, ``session``, ``scans`` (comma-separated), ``command``, ``wrapper``.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param, task

from xnat_provider.operators.containers import XnatLaunchContainerOperator
from xnat_provider.retry import xnat_retry_policy

with DAG(
    "xnat_test_containers",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    params={"project": Param("P1", type="string"), "session": Param("S01_MR1", type="string"),
            "scans": Param("1,2", type="string"), "command": Param("dcm2niix", type="string"),
            "wrapper": Param("dcm2niix-scan", type="string")},
    catchup=False,
) as dag:

    @task
    def scan_list(params=None) -> list[str]:
        return [s.strip() for s in params["scans"].split(",") if s.strip()]

    XnatLaunchContainerOperator.partial(
        task_id="convert", project="{{ params.project }}", experiment="{{ params.session }}",
        command="{{ params.command }}", wrapper="{{ params.wrapper }}", poll_interval=0.1, outage_tolerance=0,
        map_index_template="scan {{ task.scan }}", retries=1, retry_delay=timedelta(0),
        retry_policy=xnat_retry_policy(timedelta(0)),
    ).expand(scan=scan_list())
