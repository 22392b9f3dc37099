"""The event-driven path of ``xnat_prearchive_autoarchive``: a real watcher event reaches its tasks.

``dag.test()`` cannot start an asset-triggered run, so this test takes the event the real
``XnatPrearchiveEventTrigger`` yields against the emulator, wraps it as Airflow wraps a watcher event in an
asset event (``extra = {"from_trigger": True, "payload": ...}``), and runs the DAG's own task functions on it.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from tests.airflow_helpers import load_dag
from xnat_provider.client import XnatClient
from xnat_provider.testing.samples import make_study, zip_files
from xnat_provider.triggers.events import XnatPrearchiveEventTrigger


async def first_event(trigger: XnatPrearchiveEventTrigger) -> dict:
    gen = trigger.run()
    try:
        return (await asyncio.wait_for(gen.__anext__(), 20)).payload
    finally:
        await gen.aclose()


def test_watcher_event_drives_the_checks(airflow_db, xnat_conn, tmp_path, monkeypatch) -> None:
    emu = xnat_conn
    study = make_study(tmp_path / "s", patient_name="SUBJ030", patient_id="SUBJ030_MR1", uid_seed="f")
    with XnatClient(emu.url, "admin", "admin") as c:
        c.import_dicom(zip_files(study.files, tmp_path / "s.zip"), "P1")
    payload = asyncio.run(first_event(XnatPrearchiveEventTrigger(project="P1", poll_interval=0.2)))
    assert payload["session"]["name"] == "SUBJ030_MR1"

    dag = load_dag("xnat_prearchive_autoarchive")
    tasks = {t.task_id: t for t in dag.tasks}
    event = SimpleNamespace(extra={"from_trigger": True, "payload": payload})
    context = {"triggering_asset_events": {"asset": [event]}}
    namespace = tasks["sessions_from_events"].python_callable.__globals__
    monkeypatch.setitem(namespace, "get_current_context", lambda: context)

    assert tasks["how_started"].python_callable() == "sessions_from_events"
    sessions = tasks["sessions_from_events"].python_callable()
    assert [s["name"] for s in sessions] == ["SUBJ030_MR1"]
    checked = tasks["check_headers"].python_callable(sessions, None, params=dict(dag.params))
    assert [s["name"] for s in checked["archive"]] == ["SUBJ030_MR1"] and checked["held_back"] == []
    # A second delivery of the same event after the session was archived finds nothing to do.
    with XnatClient(emu.url, "admin", "admin") as c:
        c.archive(checked["archive"][0]["uri"])
    again = tasks["check_headers"].python_callable(sessions, None, params=dict(dag.params))
    assert again["archive"] == [] and again["already_gone"] == [checked["archive"][0]["uri"]]
