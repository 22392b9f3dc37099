"""Import then archive, each with ``retries=1, retry_delay=0`` and ``xnat_retry_policy()``; the test injects
failures that hit after XNAT did the work, so each task's first try fails and its retry must not redo it.

Params: ``source`` (DICOM), ``project``, ``conn_id``.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param, task

from xnat_provider.operators.archive import XnatArchiveOperator
from xnat_provider.operators.imports import XnatImportOperator
from xnat_provider.retry import xnat_retry_policy

RETRY = {"retries": 1, "retry_delay": timedelta(0), "retry_policy": xnat_retry_policy(timedelta(0))}

with DAG(
    "xnat_test_ops_retry",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    params={"source": Param("", type="string"), "project": Param("P1", type="string"),
            "conn_id": Param("xnat_default", type="string")},
    catchup=False,
) as dag:
    imported = XnatImportOperator(task_id="import", source="{{ params.source }}", project="{{ params.project }}",
                                  xnat_conn_id="{{ params.conn_id }}", **RETRY)

    @task
    def prearchive_count(params=None) -> int:
        """How many prearchive sessions the project holds between the import and the archive."""
        from xnat_provider.hooks.xnat import XnatHook

        with XnatHook(params["conn_id"]) as hook:
            return len(hook.get_conn().list_prearchive(params["project"]))

    counted = prearchive_count()
    archived = XnatArchiveOperator(task_id="archive", prearchive_sessions=imported.output,
                                   xnat_conn_id="{{ params.conn_id }}", **RETRY)
    imported >> counted >> archived
