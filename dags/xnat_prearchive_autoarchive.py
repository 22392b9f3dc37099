"""Event-driven auto-archive: READY prearchive sessions are checked, then archived or held back.

Started by :class:`XnatPrearchiveEventTrigger` through an ``AssetWatcher``: a new READY session in the
project's prearchive becomes an asset event, and the event starts this DAG. The event is only a wake-up call:
each run handles every READY session of the project that is still in the prearchive, not only the ones its
events name. Airflow does not promise one run per event (events that arrive together are merged into one run,
and an event can wait, stranded, until the next one arrives), so a run that handled only its own events would
leave sessions behind. Where no triggerer runs, trigger the DAG by hand (or on a schedule): it then waits with
the prearchive sensor and checks every READY session it finds.

For each session it reads one DICOM header per scan with pydicom (a partial download: only the header bytes)
and checks what a lab cares about before data enters the archive:
- the required tags are present (``required_tags``);
- the patient name and ID are de-identified: they match ``deid_name_pattern`` and ``deid_id_pattern``
  (defaults accept study codes such as ``SUBJ001`` and refuse names like ``DOE^JOHN``);
- the modality is one of ``modalities``.
Sessions that pass are archived; the others stay in the prearchive, and the reason for each is recorded in
the task log and in this run's XCom (``held_back``), where a person can act on it. A held-back session is
checked again by the next run (so a session a person fixed is archived then).

Idempotent, and safe to run twice for one session (event delivery is at least once):
- a session that is gone from the prearchive (archived by an earlier run or by a person) is reported as
  ``already_gone``; one XNAT is working on (not READY: being archived, rebuilt, moved) is left alone
  (``not_ready``) for a later run;
- a READY session that no event named yet (it may still be changing) is taken only if it did not change over
  ``XNAT_EXAMPLE_QUIET_SECONDS``; otherwise its own event starts a later run;
- runs never overlap (``max_active_runs=1``: Airflow queues the next asset-triggered run until this one ends),
  so two runs cannot archive one session; a session archived meanwhile by someone else is reported by the
  archive task as ``already_archived``, never archived again.
"""

from __future__ import annotations

import os
import re
import time
from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import DAG, Asset, AssetWatcher, Param, get_current_context, task

from xnat_provider.client.protocol import prearchive_uri
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
    max_active_runs=1,  # runs never overlap: two runs must not check and archive the same session
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
        """Asset events wake the run up and it looks at the prearchive now; a run without events (by hand)
        waits with the sensor until there is something to check."""
        events = get_current_context()["triggering_asset_events"]
        return "ready_sessions" if any(events.values()) else "wait_for_ready"

    @task
    def ready_sessions(params: dict | None = None) -> list[dict]:
        """Every READY session of the project, whatever this run's events name (they may be merged or stranded),
        plus the sessions the events name (reported as gone if another run archived them)."""
        announced: dict[str, dict] = {}
        for stream in get_current_context()["triggering_asset_events"].values():
            for event in stream:
                payload = (event.extra or {}).get("payload", event.extra or {})
                row = payload.get("prearchive_session") or payload.get("session")  # session: earlier versions
                if row:
                    announced[prearchive_uri(row)] = row
        with XnatHook() as hook:
            client = hook.get_conn()
            first = {s.uri: s for s in client.list_prearchive(params["project"]) if s.status == "READY"}
            ready = dict(first)
            if any(uri not in announced for uri in first):
                # Not named by an event (the watcher announces a session only once it has been quiet): take it only
                # if it stays unchanged for the sensor's quiet period; one still changing gets its own event later.
                time.sleep(QUIET)
                again = {s.uri: s for s in client.list_prearchive(params["project"])}
                ready = {uri: s for uri, s in first.items() if uri in announced or (
                    uri in again and (again[uri].status, again[uri].lastmod) == (s.status, s.lastmod))}
                for uri in sorted(set(first) - set(ready)):
                    print(f"NOT QUIET {uri}: changed in the last {QUIET:g} s; left for a later run")
        sessions = {uri: s.to_dict() for uri, s in ready.items()}
        sessions.update({uri: s for uri, s in announced.items() if uri not in sessions})
        print(f"{len(sessions)} session(s) to check: {len(announced)} named by this run's events, "
              f"{len(ready)} READY in {params['project']}")
        return [sessions[uri] for uri in sorted(sessions)]

    waited = XnatPrearchiveSensor(task_id="wait_for_ready", project="{{ params.project }}", deferrable=True,
                                  poke_interval=POLL, timeout=3600, quiet_period=QUIET)

    @task(trigger_rule="none_failed_min_one_success", multiple_outputs=True)
    def check_headers(from_events: list[dict] | None, from_sensor: list[dict] | None,
                      params: dict | None = None) -> dict:
        """Read one header per scan of each session still READY and sort the sessions into archive and held
        back, with reasons; sessions gone or busy are reported, not touched."""
        sessions = {prearchive_uri(s): s for s in (from_events or from_sensor or [])}
        passed, held, gone, busy = [], [], [], []
        with XnatHook() as hook:
            client = hook.get_conn()
            for uri, s in sorted(sessions.items()):
                row = client.find_prearchive(uri)
                if row is None:
                    gone.append(uri)  # archived by an earlier run or delivery, or removed by a person
                    continue
                if row.status != "READY":
                    busy.append({"uri": uri, "status": row.status})  # XNAT is working on it: a later run
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
        for b in busy:
            print(f"NOT READY {b['uri']}: {b['status']}; left for a later run")
        return {"archive": passed, "held_back": held, "already_gone": gone, "not_ready": busy}

    branch = how_started()
    from_events = ready_sessions()
    branch >> [from_events, waited]
    checked = check_headers(from_events, waited.output)

    XnatArchiveOperator(task_id="archive_checked", prearchive_sessions=checked["archive"], on_conflict="fail")
