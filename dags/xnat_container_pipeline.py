"""Run an XNAT Container Service conversion on every newly archived session, and record the outcome in XNAT.

Scheduled on the asset alias ``xnat_archived_sessions`` that :class:`XnatArchiveOperator` emits one event on per
archived session (as ``xnat_scan_pipeline`` is), so it runs after each ingest without polling. (Trigger it by hand
with the ``project`` and ``experiment`` params to convert given sessions.)

Paused when Airflow first sees it, whatever ``dags_are_paused_at_creation`` says: it needs a conversion wrapper
installed and enabled on the site; unpause it once yours has one (``XNAT_CONVERT_COMMAND`` / ``_WRAPPER``).

For each session, in its own mapped task: launch the conversion wrapper (``$XNAT_CONVERT_COMMAND`` /
``$XNAT_CONVERT_WRAPPER``, default ``dcm2niix`` / ``dcm2niix-session``: a wrapper that runs on a session and
uploads its output as a resource) and wait for its container, deferred (no worker slot is held while it runs).
Before launching, the operator checks that the wrapper exists, runs on sessions, is enabled for the project and
gets its inputs; XNAT would otherwise accept the launch and fail it later, or run a wrapper the project has not
enabled. Then record the outcome on each session as custom fields (``conversion_status``, ``conversion_exit_code``,
``conversion_container``, ``conversion_outputs``, ``converted_at``, ``conversion_pipeline``), failures included;
the run fails at the end if a conversion did.

Re-running is harmless: a retried or re-run task adopts the container of the same launch when it is running or
``Complete`` (``XnatLaunchContainerOperator`` looks before launching), so a session is converted once; a conversion
that failed is launched again by a new run (not by a retry of the same task: a failing container fails fast).
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import DAG, AssetAlias, Param, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from xnat_provider.operators.containers import XCOM_KEY, XnatLaunchContainerOperator
from xnat_provider.operators.fields import XnatSetFieldsOperator
from xnat_provider.retry import xnat_retry_policy
from xnat_provider.runs import run_time

COMMAND = os.environ.get("XNAT_CONVERT_COMMAND", "dcm2niix")
WRAPPER = os.environ.get("XNAT_CONVERT_WRAPPER", "dcm2niix-session")
POLL = float(os.environ.get("XNAT_EXAMPLE_POLL_SECONDS", "15"))  # seconds between polls (small in demos/tests)
PIPELINE = "xnat_container_pipeline 1.0"


with DAG(
    "xnat_container_pipeline",
    description="Convert each newly archived session with an XNAT Container Service wrapper; record the outcome",
    schedule=[AssetAlias("xnat_archived_sessions")],
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    default_args={"retries": 3, "retry_delay": timedelta(seconds=20), "retry_exponential_backoff": 2.0,
                  "retry_policy": xnat_retry_policy()},
    params={
        "project": Param("", type="string", description="with experiment: convert these sessions by hand"),
        "experiment": Param("", type="string", description="a session label, or several separated by commas"),
    },
    is_paused_upon_creation=True,  # it needs a wrapper installed and enabled on the site first
    tags=["xnat", "example", "containers"],
) as dag:

    @task
    def sessions_to_convert(params: dict | None = None) -> list[dict]:
        ctx = get_current_context()
        found = []
        for stream in ctx["triggering_asset_events"].values():
            for event in stream:
                extra = event.extra or {}
                if extra.get("project") and extra.get("label"):
                    found.append({"project": extra["project"], "experiment": extra["label"]})
        if not found and params["project"] and params["experiment"]:
            found += [{"project": params["project"], "experiment": label.strip()}
                      for label in params["experiment"].split(",") if label.strip()]
        if not found:
            print("No archived session in the triggering events and none given as params: nothing to do.")
        return sorted([dict(t) for t in {tuple(sorted(d.items())) for d in found}],
                      key=lambda d: (d["project"], d["experiment"]))

    targets = sessions_to_convert()

    converted = XnatLaunchContainerOperator.partial(
        task_id="convert", command=COMMAND, wrapper=WRAPPER, deferrable=True, poll_interval=POLL,
        map_index_template="{{ task.project }}/{{ task.experiment }}",
    ).expand_kwargs(targets)

    @task(trigger_rule="all_done")
    def outcome_fields(targets: list[dict]) -> list[dict]:
        """One fields update per session: what its conversion did (read from each mapped task's ``xnat_container``
        XCom, pushed on failure too; a task refused before launching has none)."""
        ctx = get_current_context()
        when, updates = run_time(ctx), []
        for index, target in enumerate(targets):
            outcome = ctx["ti"].xcom_pull(task_ids="convert", key=XCOM_KEY, map_indexes=index) or {}
            outputs = ", ".join(f"{o['label']} ({o['files']} files)" for o in outcome.get("outputs") or [])
            updates.append({"project": target["project"], "experiment": target["experiment"], "fields": {
                "conversion_status": outcome.get("status") or "not launched",
                "conversion_exit_code": str(outcome.get("exit_code") if outcome.get("exit_code") is not None else ""),
                "conversion_container": str(outcome.get("container_id") or ""),
                "conversion_outputs": outputs or "none",
                "converted_at": when,
                "conversion_pipeline": f"{PIPELINE} ({COMMAND}/{WRAPPER})",
            }})
        return updates

    fields = outcome_fields(targets)
    converted >> fields
    recorded = XnatSetFieldsOperator.partial(task_id="record_outcome").expand_kwargs(fields)

    @task
    def all_converted(updates: list[dict]) -> int:
        """Fail the run (after the outcomes are recorded) when a conversion did not complete; no retry: the
        outcomes are recorded, and retrying this check would not change them."""
        failed = [f"{u['project']}/{u['experiment']}: {u['fields']['conversion_status']}" for u in updates
                  if u["fields"]["conversion_status"] != "Complete"]
        if failed:
            raise AirflowFailException("Conversions that did not complete: " + "; ".join(failed))
        return len(updates)

    recorded >> all_converted(fields)
