"""``XnatPrearchiveEventTrigger`` (an ``AssetWatcher`` trigger): one event per new READY session, none for
sessions still RECEIVING, none again after a triggerer restart (a new instance on the same asset state store),
archived sessions forgotten; and a DAG scheduled on a watched Asset parses and serialises."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from pathlib import Path

import pytest
import requests

from tests.sensors.support import FakeAssetStore, archive, hold, put_session, until, uri
from xnat_provider.triggers.events import SEEN_KEY, XnatPrearchiveEventTrigger

pytestmark = pytest.mark.timeout(60)


def put_session_as(emu, tmp_path: Path, label: str, auth: tuple[str, str]) -> dict:
    """``put_session`` for when admin's password is not ``admin`` any more."""
    from tests.sensors import support

    old, support.AUTH = support.AUTH, auth
    try:
        return put_session(emu, tmp_path, label)
    finally:
        support.AUTH = old


class Watcher:
    """Runs a trigger in the background, collecting its events, as the triggerer would."""

    def __init__(self, store: FakeAssetStore | None, emu=None, **kwargs) -> None:
        kwargs.setdefault("project", "P1")
        self.emu, self.listing = emu, rf"^/data/prearchive/projects/{kwargs['project']}$"
        self.trigger = XnatPrearchiveEventTrigger(poll_interval=0.05, **kwargs)
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

    async def polls(self, n: int = 5, timeout: float = 15.0) -> None:
        """Let it poll ``n`` more times: counted on the emulator, so a slow machine only makes it wait longer."""
        assert self.emu is not None, "Watcher(store, emu) counts polls on the emulator"
        target = self.emu.request_count("GET", self.listing) + n
        deadline = time.monotonic() + timeout
        while self.emu.request_count("GET", self.listing) < target:
            assert self.task is not None and not self.task.done(), "the watcher stopped"
            assert time.monotonic() < deadline, f"fewer than {n} polls in {timeout} s"
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.05)  # the last answer reaches the trigger


async def test_fires_once_per_ready_session_across_restarts(xnat_conn, tmp_path) -> None:
    emu = xnat_conn
    store = FakeAssetStore()
    a = await asyncio.to_thread(put_session, emu, tmp_path, "S01_MR1")
    b = await asyncio.to_thread(put_session, emu, tmp_path, "S02_MR1", "S02")
    hold(emu, b, "RECEIVING")
    async with Watcher(store, emu) as w:
        events = await w.until(1)
        await w.polls()
        assert [e["prearchive_session"]["name"] for e in w.events] == ["S01_MR1"]  # not S02, still RECEIVING
        assert events[0]["status"] == "success" and events[0]["uri"] == uri(a)
        assert events[0]["prearchive_session"]["status"] == "READY" and (
            events[0]["prearchive_session"]["subject"] == "S01")
        assert store.data[SEEN_KEY] == [uri(a)]
        emu.release_prearchive(b["project"], b["timestamp"], b["folderName"], "READY")
        await w.until(2)
        await w.polls()
        assert [e["prearchive_session"]["name"] for e in w.events] == ["S01_MR1", "S02_MR1"]

    # "Triggerer restart": a new instance, the same asset state store. Nothing is announced again.
    before = emu.request_count("GET", r"/data/prearchive/projects/P1")
    async with Watcher(store, emu) as w2:
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
        assert [e["prearchive_session"]["name"] for e in w2.events] == ["S03_MR1"]
        assert sorted(store.data[SEEN_KEY]) == sorted([uri(b), uri(c)])


async def test_without_a_store_it_remembers_in_memory(xnat_conn, tmp_path) -> None:
    await asyncio.to_thread(put_session, xnat_conn, tmp_path, "S01_MR1")
    async with Watcher(None, xnat_conn) as w:
        await w.until(1)
        await w.polls(6)
        assert len(w.events) == 1


async def test_quiet_period_and_failed_sessions(xnat_conn, tmp_path) -> None:
    bad = await asyncio.to_thread(put_session, xnat_conn, tmp_path, "S09_MR1", "S09")
    hold(xnat_conn, bad, "CONFLICT")
    await asyncio.to_thread(put_session, xnat_conn, tmp_path, "S01_MR1")
    t0 = time.monotonic()
    async with Watcher(FakeAssetStore(), xnat_conn, quiet_period=0.6) as w:
        await w.until(1)
        assert time.monotonic() - t0 >= 0.6
        await w.polls()
        assert [e["prearchive_session"]["name"] for e in w.events] == ["S01_MR1"]  # a CONFLICT one never starts a DAG


async def test_keeps_polling_through_errors(xnat_conn, tmp_path) -> None:
    await asyncio.to_thread(put_session, xnat_conn, tmp_path, "S01_MR1")
    xnat_conn.fail_next("GET", r"/data/prearchive/projects/P1", status=503, count=8)
    xnat_conn.fail_next("GET", r"/data/prearchive/projects/P1", status=404, count=1)
    async with Watcher(FakeAssetStore()) as w:
        events = await w.until(1, timeout=15)
        assert events[0]["prearchive_session"]["name"] == "S01_MR1"  # errors are logged, never turned into events


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


# ---- a service account is never locked by the watcher ----------------------------------------------------
LOGIN = r"^/data/services/auth$"


def connect(monkeypatch, emu, password: str = "admin", conn_id: str = "XNAT_DEFAULT") -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id}", json.dumps({
        "conn_type": "xnat", "host": emu.url, "login": "admin", "password": password,
        "extra": {"backoff": 0.05, "retries": 3}}))


def refusals(caplog) -> int:
    """The watcher's looks at a connection XNAT refused (logged loudly once, then at DEBUG; nothing is sent)."""
    return sum("stopped logging in" in r.getMessage() for r in caplog.records if r.name == "xnat_provider.triggers")


def unusable(caplog) -> int:
    """The watcher's looks at a connection that cannot be used (missing, or a bad setting)."""
    return sum("cannot be used" in r.getMessage() for r in caplog.records if r.name == "xnat_provider.triggers")


def loud(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "xnat_provider.triggers" and r.levelno >= logging.ERROR]


async def test_refused_credentials_are_sent_once_until_the_connection_changes(xnat_conn, tmp_path, monkeypatch,
                                                                             caplog) -> None:
    """A wrong password used to be sent on every poll: XNAT locks the account after 20 failed logins (3 here)."""
    caplog.set_level(logging.DEBUG, logger="xnat_provider.triggers")
    emu = xnat_conn
    emu.auth.max_failed_logins = 3
    await asyncio.to_thread(put_session, emu, tmp_path, "S01_MR1")
    listed = emu.request_count("GET", r"/data/prearchive")
    connect(monkeypatch, emu, "Wrong-Password-1")
    async with Watcher(FakeAssetStore(), permanent_error_interval=0.2) as w:
        await until(lambda: refusals(caplog) >= 12, "a dozen long looks at the refused connection")
        assert w.events == []
        assert emu.request_count("POST", LOGIN) == 1
        assert emu.request_count("GET", r"/data/prearchive") == listed
        messages = loud(caplog)
        assert len(messages) == 1  # loudly, once
        assert "stopped logging in" in messages[0] and "'admin'" in messages[0]
        assert "Wrong-Password-1" not in caplog.text
        connect(monkeypatch, emu, "admin")  # the connection is fixed: the watcher resumes on its next look
        events = await w.until(1)
        assert events[0]["prearchive_session"]["name"] == "S01_MR1"
        assert emu.request_count("POST", LOGIN) == 2
    assert requests.get(f"{emu.url}/data/auth", auth=("admin", "admin"), timeout=10).ok  # never locked


async def test_a_password_rotated_on_xnat_costs_one_failed_login(xnat_conn, tmp_path, monkeypatch, caplog) -> None:
    """XNAT's password changed under a running watcher: its session ends, the one re-login fails, and nothing
    more is sent until the Airflow connection has the new password."""
    caplog.set_level(logging.DEBUG, logger="xnat_provider.triggers")
    emu = xnat_conn
    emu.auth.max_failed_logins = 3
    async with Watcher(FakeAssetStore(), emu, permanent_error_interval=0.2) as w:
        await w.polls(4)
        assert emu.request_count("POST", LOGIN) == 1
        emu.add_user("admin", "Rotated-Password-2", admin=True)
        emu.expire_sessions()
        await until(lambda: refusals(caplog) >= 8, "several long looks after the refused re-login")
        assert emu.request_count("POST", LOGIN) == 2  # one failed re-login, then silence
        assert len(loud(caplog)) == 1
        await asyncio.to_thread(put_session_as, emu, tmp_path, "S01_MR1", ("admin", "Rotated-Password-2"))
        looked = refusals(caplog)
        await until(lambda: refusals(caplog) >= looked + 3, "three more looks (it sends nothing to count)")
        assert w.events == []
        connect(monkeypatch, emu, "Rotated-Password-2")
        events = await w.until(1)
        assert events[0]["prearchive_session"]["name"] == "S01_MR1"
        assert emu.request_count("POST", LOGIN) == 3
        assert any("works again" in r.getMessage() for r in caplog.records)


async def test_other_permanent_errors_back_off_to_the_long_interval(xnat_conn, tmp_path, monkeypatch) -> None:
    """No such project (or no permission): polled again only every permanent_error_interval, then it works."""
    emu = xnat_conn
    t0 = time.monotonic()
    async with Watcher(FakeAssetStore(), permanent_error_interval=0.5, project="P9") as w:
        await until(lambda: emu.request_count("GET", r"^/data/prearchive/projects/P9$") >= 3, "three looks")
        assert time.monotonic() - t0 >= 0.95  # two long intervals between three looks: not every 0.05 s
        emu.add_project("P9")
        await asyncio.to_thread(put_session, emu, tmp_path, "S01_MR1", "S01", "P9")
        events = await w.until(1)
        assert events[0]["prearchive_session"]["project"] == "P9"


async def test_a_missing_or_bad_connection_is_read_again_each_long_interval(xnat_conn, tmp_path,
                                                                            monkeypatch, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="xnat_provider.triggers")
    emu = xnat_conn
    await asyncio.to_thread(put_session, emu, tmp_path, "S01_MR1")
    monkeypatch.setenv("AIRFLOW_CONN_XNAT_LATER", json.dumps({
        "conn_type": "xnat", "host": emu.url, "login": "admin", "password": "admin",
        "extra": {"verify_ssl": "perhaps"}}))
    sent = emu.request_count()
    async with Watcher(FakeAssetStore(), permanent_error_interval=0.2, xnat_conn_id="xnat_later") as w:
        await until(lambda: unusable(caplog) >= 4, "four looks at the bad connection")
        assert w.events == [] and emu.request_count() == sent
        connect(monkeypatch, emu, "admin", "XNAT_LATER")
        await w.until(1)
    monkeypatch.delenv("AIRFLOW_CONN_XNAT_LATER")
    looked = unusable(caplog)
    async with Watcher(FakeAssetStore(), permanent_error_interval=0.2, xnat_conn_id="xnat_later") as w:
        await until(lambda: unusable(caplog) >= looked + 3, "three looks at the missing connection")
        assert w.events == []
        connect(monkeypatch, emu, "admin", "XNAT_LATER")
        await w.until(1)
