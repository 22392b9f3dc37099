"""Operators on an archived experiment: scan listing mapped into downloads, templated fields, and an alias token
issued as a setup task, used by a work task and invalidated by a teardown.

Params: ``project``, ``experiment``, ``work`` (a scratch folder), ``who``, ``fail_work`` (make the work task fail
after using the token, to show that the teardown still runs).
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param, task

from xnat_provider.operators.fields import XnatSetFieldsOperator
from xnat_provider.operators.tokens import XnatInvalidateTokenOperator, XnatIssueTokenOperator
from xnat_provider.operators.transfers import XnatDownloadScanOperator, XnatListScansOperator

with DAG(
    "xnat_test_ops_session",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    params={"project": Param("P1", type="string"), "experiment": Param("S01_MR1", type="string"),
            "work": Param("", type="string"), "who": Param("someone", type="string"),
            "fail_work": Param(False, type="boolean")},
    catchup=False,
) as dag:
    scans = XnatListScansOperator(task_id="list_scans", project="{{ params.project }}",
                                  experiment="{{ params.experiment }}", scans="re:T.*")
    downloads = XnatDownloadScanOperator.partial(
        task_id="download", project="{{ params.project }}", experiment="{{ params.experiment }}",
        dest="{{ params.work }}/download",
    ).expand(scan=scans.output)
    fields = XnatSetFieldsOperator(
        task_id="fields", project="{{ params.project }}", experiment="{{ params.experiment }}",
        fields={"run": "{{ run_id }}", "who": "{{ params.who }}",
                "scans": "{{ ti.xcom_pull(task_ids='list_scans') | join('_') }}"})
    scans >> fields

    token = XnatIssueTokenOperator(task_id="token")

    @task
    def use_token(value: dict, params=None, ti=None) -> int:
        """Downstream work with its own XNAT access: log in with the token (never logging its secret)."""
        import requests

        from xnat_provider.hooks.xnat import XnatHook
        from xnat_provider.operators.tokens import token_from_xcom

        tok = token_from_xcom(value)
        status = requests.get(f"{XnatHook().client_config.url}/data/auth", auth=(tok.alias, tok.secret)).status_code
        ti.xcom_push(key="status", value=status)
        if params["fail_work"]:
            raise RuntimeError("the work failed after using the token")
        return status

    work = use_token(token.output)
    revoke = XnatInvalidateTokenOperator(task_id="revoke", token=token.output)
    token >> work >> revoke.as_teardown(setups=token)
