"""The event-driven path of ``xnat_prearchive_autoarchive``, as a deployment runs it.

The real ``XnatPrearchiveEventTrigger`` polls the emulator; each event it yields is submitted as the triggerer
submits it (``Trigger.submit_event``: an asset event on the watched asset, queueing the DAG), and the run is the
one the scheduler creates from the queued events (asset-triggered, no logical date, the events consumed).
Airflow does not promise one run per event, so each run must handle every READY session, not only its own.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.airflow_helpers import load_dag, run_asset_triggered, submit_trigger_event
from tests.support import wait_for
from xnat_provider.client import XnatClient
from xnat_provider.testing.samples import make_study, zip_files
from xnat_provider.triggers.events import XnatPrearchiveEventTrigger

DAG_ID = "xnat_prearchive_autoarchive"
WATCHED_ASSET = "xnat_P1_prearchive_ready"  # the DAG's watched asset (XNAT_PROJECT unset: project P1)


def client(emu) -> XnatClient:
    return XnatClient(emu.url, "admin", "admin")


def emu_rows(emu) -> list:
    with client(emu) as c:
        return c.list_prearchive("P1")


def import_study(emu, tmp_path: Path, name: str, patient: str | None = None) -> None:
    study = make_study(tmp_path / name, patient_name=patient or name, patient_id=f"{name}_MR1", uid_seed=name)
    with client(emu) as c:
        c.import_dicom(zip_files(study.files, tmp_path / f"{name}.zip"), "P1")


async def watcher_events(count: int) -> list[dict]:
    """The first ``count`` events of the real watcher trigger against the emulator (as the triggerer runs it)."""
    gen = XnatPrearchiveEventTrigger(project="P1", poll_interval=0.2).run()
    try:
        return [(await asyncio.wait_for(gen.__anext__(), 30)).payload for _ in range(count)]
    finally:
        await gen.aclose()


def names(events: list[dict]) -> list[str]:
    return sorted(e["payload"]["prearchive_session"]["name"] for e in (x["extra"] for x in events))


def test_one_run_handles_sessions_whose_events_it_did_not_get(xnat_conn, unpaused, tmp_path) -> None:
    """Two sessions become READY together, and the watcher yields two events in one poll. Airflow starts one run
    and, in 3.3, gives it only the first event: the DAG's queue row keeps the first event's time and the run takes
    the events up to it, so the second event is stranded until another one arrives. That one run archives both."""
    emu = xnat_conn
    import_study(emu, tmp_path, "SUBJ041")
    import_study(emu, tmp_path, "SUBJ042")
    events = asyncio.run(watcher_events(2))
    assert sorted(e["prearchive_session"]["name"] for e in events) == ["SUBJ041_MR1", "SUBJ042_MR1"]
    unpaused(DAG_ID)

    for event in events:  # as the triggerer submits them, one after the other
        submit_trigger_event(WATCHED_ASSET, event)
    run = run_asset_triggered(DAG_ID)
    assert run.state == "success", run.tis
    assert run.logical_date is None and run.run_type == "asset_triggered"
    assert 1 <= len(run.consumed_events) <= 2  # one in Airflow 3.3.2 (the race), both where it merges them
    with client(emu) as c:
        assert sorted(e.label for e in c.list_experiments("P1")) == ["SUBJ041_MR1", "SUBJ042_MR1"]
        assert c.list_prearchive("P1") == []
    assert sorted(r["label"] for r in run.xcom("archive_checked")) == ["SUBJ041_MR1", "SUBJ042_MR1"]
    # Runs never overlap (the scheduler holds asset-triggered runs back at max_active_runs), so two runs cannot check
    # and archive one session at once; a session archived meanwhile by a person is reported, not archived again.
    assert load_dag(DAG_ID).max_active_runs == 1


def test_a_held_back_session_and_a_stranded_event_delivered_later(xnat_conn, unpaused, tmp_path) -> None:
    """A clean and an identifiable session arrive together: the clean one is archived, the other held back with
    the reason. A later, unrelated session's event starts the next run, which takes any event stranded before
    (its session already archived: reported as gone, archived nothing twice), archives the new session, and
    checks the held-back one again (still READY: still held back)."""
    emu = xnat_conn
    import_study(emu, tmp_path, "SUBJ050")
    import_study(emu, tmp_path, "SUBJ051", patient="DOE^JOHN")
    events = asyncio.run(watcher_events(2))
    unpaused(DAG_ID)
    for event in events:
        submit_trigger_event(WATCHED_ASSET, event)
    run = run_asset_triggered(DAG_ID)
    assert run.state == "success", run.tis
    held = run.keyed[("check_headers", -1, "held_back")]
    assert [h["name"] for h in held] == ["SUBJ051_MR1"]
    assert "PatientName 'DOE^JOHN' does not look de-identified" in held[0]["reason"]
    with client(emu) as c:
        assert [e.label for e in c.list_experiments("P1")] == ["SUBJ050_MR1"]
        assert [(s.name, s.status) for s in c.list_prearchive("P1")] == [("SUBJ051_MR1", "READY")]

    import_study(emu, tmp_path, "SUBJ052")  # an unrelated session arrives later, and its event starts a run
    wait_for(lambda: [s for s in emu_rows(emu) if s.name == "SUBJ052_MR1" and s.status == "READY"], 20,
             what="SUBJ052_MR1 READY")
    event = next(e for e in asyncio.run(watcher_events(2)) if e["prearchive_session"]["name"] == "SUBJ052_MR1")
    submit_trigger_event(WATCHED_ASSET, event)
    later = run_asset_triggered(DAG_ID)
    assert later.state == "success", later.tis
    assert "SUBJ052_MR1" in names(later.consumed_events)
    assert len(run.consumed_events) + len(later.consumed_events) == 3  # the stranded event is taken now
    assert [h["name"] for h in later.keyed[("check_headers", -1, "held_back")]] == ["SUBJ051_MR1"]
    assert [r["label"] for r in later.xcom("archive_checked")] == ["SUBJ052_MR1"]
    with client(emu) as c:
        assert sorted(e.label for e in c.list_experiments("P1")) == ["SUBJ050_MR1", "SUBJ052_MR1"]
