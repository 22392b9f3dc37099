"""``XnatPrearchiveEventTrigger`` (an ``AssetWatcher`` trigger): one event per new READY session, none for
sessions still RECEIVING, none again after a triggerer restart (a new instance on the same asset state store),
archived sessions forgotten; and a DAG scheduled on a watched Asset parses and serialises."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

import pytest

from tests.sensors.support import FakeAssetStore, archive, hold, put_session, uri
from xnat_provider.triggers.events import SEEN_KEY, XnatPrearchiveEventTrigger

pytestmark = pytest.mark.timeout(60)


class Watcher:
    """Runs a trigger in the background, collecting its events, as the triggerer would."""

    def __init__(self, store: FakeAssetStore | None, **kwargs) -> None:
        self.trigger = XnatPrearchiveEventTrigger(project="P1", poll_interval=0.05, **kwargs)
        self.trigger.asset_state_store = store
        self.events: list[dict] = []
        self.task: asyncio.Task | None = None

    async def __aenter__(self) -> Watcher:
        async def run() -> None:
            async for event in self.trigger.run():
                self.events.append(event.payload)

        self.task = asyncio.ensure_future(run())
        return self

    async def __aexit__(self, *exc) -> None:  # the triggerer stops (a restart, a deploy)
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self.task, 5)

    async def until(self, n: int, timeout: float = 10.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.events) < n:
            assert self.task is not None and not self.task.done(), "the watcher stopped"
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.events)} events, wanted {n}, after {timeout} s")
            await asyncio.sleep(0.05)
        return self.events

    async def polls(self, n: int = 5) -> None:
        """Let it poll ``n`` more times."""
        await asyncio.sleep(n * 0.05 + 0.2)


async def test_fires_once_per_ready_session_across_restarts(xnat_conn, tmp_path) -> None:
    emu = xnat_conn
    store = FakeAssetStore()
    a = await asyncio.to_thread(put_session, emu, tmp_path, "S01_MR1")
    b = await asyncio.to_thread(put_session, emu, tmp_path, "S02_MR1", "S02")
    hold(emu, b, "RECEIVING")
    async with Watcher(store) as w:
        events = await w.until(1)
        await w.polls()
        assert [e["session"]["name"] for e in w.events] == ["S01_MR1"]  # not S02, still RECEIVING
        assert events[0]["status"] == "success" and events[0]["uri"] == uri(a)
        assert events[0]["session"]["status"] == "READY" and events[0]["session"]["subject"] == "S01"
        assert store.data[SEEN_KEY] == [uri(a)]
        emu.release_prearchive(b["project"], b["timestamp"], b["folderName"], "READY")
        await w.until(2)
        await w.polls()
        assert [e["session"]["name"] for e in w.events] == ["S01_MR1", "S02_MR1"]

    # "Triggerer restart": a new instance, the same asset state store. Nothing is announced again.
    before = emu.request_count("GET", r"/data/prearchive/projects/P1")
    async with Watcher(store) as w2:
        await w2.polls(8)
        assert emu.request_count("GET", r"/data/prearchive/projects/P1") > before  # it did poll
        assert w2.events == []
        c = await asyncio.to_thread(put_session, emu, tmp_path, "S03_MR1", "S03")
        await w2.until(1)
        # S01 archived: it leaves the prearchive and the store forgets it
        assert (await asyncio.to_thread(archive, emu, a)).ok
        deadline = time.monotonic() + 5
        while uri(a) in store.data[SEEN_KEY]:
            assert time.monotonic() < deadline, store.data
            await asyncio.sleep(0.05)
        await w2.polls()
        assert [e["session"]["name"] for e in w2.events] == ["S03_MR1"]
        assert sorted(store.data[SEEN_KEY]) == sorted([uri(b), uri(c)])


async def test_without_a_store_it_remembers_in_memory(xnat_conn, tmp_path) -> None:
    await asyncio.to_thread(put_session, xnat_conn, tmp_path, "S01_MR1")
    async with Watcher(None) as w:
        await w.until(1)
        await w.polls(6)
        assert len(w.events) == 1


async def test_quiet_period_and_failed_sessions(xnat_conn, tmp_path) -> None:
    bad = await asyncio.to_thread(put_session, xnat_conn, tmp_path, "S09_MR1", "S09")
    hold(xnat_conn, bad, "CONFLICT")
    await asyncio.to_thread(put_session, xnat_conn, tmp_path, "S01_MR1")
    t0 = time.monotonic()
    async with Watcher(FakeAssetStore(), quiet_period=0.6) as w:
        await w.until(1)
        assert time.monotonic() - t0 >= 0.6
        await w.polls()
        assert [e["session"]["name"] for e in w.events] == ["S01_MR1"]  # a CONFLICT one never starts a DAG


async def test_keeps_polling_through_errors(xnat_conn, tmp_path) -> None:
    await asyncio.to_thread(put_session, xnat_conn, tmp_path, "S01_MR1")
    xnat_conn.fail_next("GET", r"/data/prearchive/projects/P1", status=503, count=8)
    xnat_conn.fail_next("GET", r"/data/prearchive/projects/P1", status=404, count=1)
    async with Watcher(FakeAssetStore()) as w:
        events = await w.until(1, timeout=15)
        assert events[0]["session"]["name"] == "S01_MR1"  # errors are logged, never turned into events


def test_asset_watcher_dag_parses_and_serialises(airflow_db) -> None:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.serialization.serialized_objects import DagSerialization

    path = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"]) / "xnat_test_sensors_asset.py"
    bag = DagBag(dag_folder=str(path))
    assert bag.import_errors == {}
    dag = bag.get_dag("xnat_test_sensors_asset")
    assert dag is not None
    data = DagSerialization.to_dict(dag)
    text = str(data)
    assert "xnat_provider.triggers.events.XnatPrearchiveEventTrigger" in text
    assert "xnat_test_P1_ready" in text
    assert DagSerialization.from_dict(data).dag_id == "xnat_test_sensors_asset"
