"""Event-driven auto-archive: each new READY prearchive session is checked, then archived or held back.

Started by :class:`XnatPrearchiveEventTrigger` through an ``AssetWatcher``: a new READY session in the
project's prearchive becomes an asset event, and the event starts this DAG with the session in its extra.
Where no triggerer runs, trigger the DAG by hand (or on a schedule): it then waits with the prearchive sensor
and checks every READY session it finds.

For each session it reads one DICOM header per scan with pydicom (a partial download: only the header bytes)
and checks what a lab cares about before data enters the archive:
- the required tags are present (``required_tags``);
- the patient name and ID are de-identified: they match ``deid_name_pattern`` and ``deid_id_pattern``
  (defaults accept study codes such as ``SUBJ001`` and refuse names like ``DOE^JOHN``);
- the modality is one of ``modalities``.
Sessions that pass are archived; the others stay in the prearchive, and the reason for each is recorded in
the task log and in this run's XCom (``held_back``), where a person can act on it.

Safe to run twice for one session (event delivery is at least once): an archived session is reported as
already archived, not archived again.
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import DAG, Asset, AssetWatcher, Param, get_current_context, task

from xnat_provider.hooks.xnat import XnatHook
from xnat_provider.operators.archive import XnatArchiveOperator
from xnat_provider.retry import xnat_retry_policy
from xnat_provider.sensors.prearchive import XnatPrearchiveSensor
from xnat_provider.triggers.events import XnatPrearchiveEventTrigger

PROJECT = os.environ.get("XNAT_PROJECT", "P1")
# Seconds between polls, and the quiet period a session needs; small values suit demos and tests.
POLL = float(os.environ.get("XNAT_EXAMPLE_POLL_SECONDS", "15"))
QUIET = float(os.environ.get("XNAT_EXAMPLE_QUIET_SECONDS", "5"))

new_ready_sessions = Asset(
    name=f"xnat_{PROJECT}_prearchive_ready",
    uri=f"xnat://prearchive/{PROJECT}",
    watchers=[AssetWatcher(name=f"xnat_{PROJECT}_prearchive_watcher",
                           trigger=XnatPrearchiveEventTrigger(project=PROJECT, poll_interval=max(POLL, 5),
                                                                              quiet_period=QUIET * 6))],
)

def header_problems(client: Any, uri: str, params: dict) -> list[str]:
    """What is wrong with a prearchive session, judged on one DICOM header per scan (a ranged partial read)."""
    problems: list[str] = []
    for scan_id, files in client.list_prearchive_files(uri, first_per_scan=True).items():
        if not files:
            problems.append(f"scan {scan_id}: no DICOM files")
            continue
        ds = client.read_header(files[0])
        missing = [t for t in params["required_tags"] if not str(ds.get(t, "") or "").strip()]
        if missing:
            problems.append(f"scan {scan_id}: missing {', '.join(missing)}")
        name, pid = str(ds.get("PatientName", "") or ""), str(ds.get("PatientID", "") or "")
        if not re.fullmatch(params["deid_name_pattern"], name):
            problems.append(f"scan {scan_id}: PatientName {name!r} does not look de-identified")
        if not re.fullmatch(params["deid_id_pattern"], pid):
            problems.append(f"scan {scan_id}: PatientID {pid!r} does not look de-identified")
        if str(ds.get("Modality", "")) not in params["modalities"]:
            problems.append(f"scan {scan_id}: modality {ds.get('Modality')!r} not in {params['modalities']}")
    return sorted(set(problems))


with DAG(
    "xnat_prearchive_autoarchive",
    description="Check each new READY prearchive session's DICOM headers; archive the good ones",
    schedule=[new_ready_sessions],
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30), "retry_exponential_backoff": 2.0,
                  "retry_policy": xnat_retry_policy()},
    params={
        "project": Param(PROJECT, type="string"),
        "required_tags": Param(["StudyInstanceUID", "SeriesInstanceUID", "Modality", "StudyDate", "PatientID"],
                               type="array"),
        "deid_name_pattern": Param(r"^[A-Za-z]*[0-9][A-Za-z0-9_\-]*$", type="string"),
        "deid_id_pattern": Param(r"^[A-Za-z0-9_\-]+$", type="string"),
        "modalities": Param(["MR", "CT", "PT"], type="array"),
    },
    tags=["xnat", "example", "event-driven"],
) as dag:

    @task.branch
    def how_started() -> str:
        """Asset events carry the sessions; a manual run has none and waits with the sensor instead."""
        events = get_current_context()["triggering_asset_events"]
        return "sessions_from_events" if any(events.values()) else "wait_for_ready"

    @task
    def sessions_from_events() -> list[dict]:
        events = get_current_context()["triggering_asset_events"]
        out = []
        for stream in events.values():
            for event in stream:
                payload = (event.extra or {}).get("payload", event.extra or {})
                if payload.get("session"):
                    out.append(payload["session"])
        return out

    waited = XnatPrearchiveSensor(task_id="wait_for_ready", project="{{ params.project }}", deferrable=True,
                                  poke_interval=POLL, timeout=3600, quiet_period=QUIET)

    @task(trigger_rule="none_failed_min_one_success", multiple_outputs=True)
    def check_headers(from_events: list[dict] | None, from_sensor: list[dict] | None,
                      params: dict | None = None) -> dict:
        """Read one header per scan and sort the sessions into archive and held back, with reasons."""
        sessions = from_events or from_sensor or []
        passed, held, gone = [], [], []
        with XnatHook() as hook:
            client = hook.get_conn()
            for s in sessions:
                uri = f"/data/prearchive/projects/{s['project']}/{s['timestamp']}/{s['folder']}"
                if client.find_prearchive(uri) is None:
                    gone.append(uri)  # archived by an earlier delivery of the same event, or removed by a person
                    continue
                problems = header_problems(client, uri, params)
                if problems:
                    held.append({**s, "uri": uri, "reason": "; ".join(problems)})
                else:
                    passed.append({**s, "uri": uri})
        for h in held:
            print(f"HELD BACK {h['uri']}: {h['reason']}")
        for uri in gone:
            print(f"ALREADY GONE {uri}: no longer in the prearchive, nothing to do")
        return {"archive": passed, "held_back": held, "already_gone": gone}

    branch = how_started()
    from_events = sessions_from_events()
    branch >> [from_events, waited]
    checked = check_headers(from_events, waited.output)

    XnatArchiveOperator(task_id="archive_checked", sessions=checked["archive"], on_conflict="fail")
