"""``XnatPrearchiveEventTrigger`` with Airflow's real asset state store, for one Asset and for two Assets whose
watchers have the same arguments (Airflow then runs one trigger for both).

Nothing here is a stand-in for Airflow: the DAG is parsed and written to the metadata database as the DAG
processor does, the trigger row and its assets are read back, the trigger is built and given its store exactly
as the triggerer does (``TriggerRunner.create_triggers``: ``AssetStateStoreAccessors(inlets=[Asset(name, uri)
for each watched asset])``), and the store's messages are answered by the triggerer supervisor's own request
dispatch (``TriggerRunnerSupervisor._handle_request``) over the Execution API, in process, on the test's
metadata database."""

from __future__ import annotations

import asyncio
import contextlib
import textwrap
import time
import types
from pathlib import Path
from typing import Any

import pytest

from tests.sensors.support import put_session, uri
from xnat_provider.triggers.events import SEEN_KEY

pytestmark = pytest.mark.timeout(120)
CLASSPATH = "xnat_provider.triggers.events.XnatPrearchiveEventTrigger"


class TriggererComms:
    """``SUPERVISOR_COMMS`` for a trigger run in the test: each message is handled by the triggerer
    supervisor's ``_handle_request`` with an in-process Execution API client on the metadata database."""

    def __init__(self) -> None:
        import structlog
        from airflow.sdk.execution_time.supervisor import InProcessTestSupervisor

        self.supervisor = types.SimpleNamespace(client=InProcessTestSupervisor._api_client(), answer=None,
                                                _last_runner_comms=0.0)
        self.supervisor.send_msg = self._answer
        self.log = structlog.get_logger()
        self.sent: list[str] = []

    def _answer(self, msg: Any, request_id: int, error: Any = None, **_: Any) -> None:
        self.supervisor.answer = msg

    def send(self, msg: Any) -> Any:
        from airflow.jobs.triggerer_job_runner import TriggerRunnerSupervisor

        self.sent.append(type(msg).__name__)
        self.supervisor.answer = None
        TriggerRunnerSupervisor._handle_request(self.supervisor, msg, self.log, 0)  # type: ignore[arg-type]
        return self.supervisor.answer

    async def asend(self, msg: Any) -> Any:
        return await asyncio.to_thread(self.send, msg)


def sync_dag(tmp_path: Path, dag_id: str, assets: dict[str, dict[str, Any]]) -> None:
    """Write a DAG scheduled on ``assets`` (name -> the watcher's trigger arguments), parse it, and store it as
    the DAG processor does; unpaused, so that its watchers are registered."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session
    from sqlalchemy import update

    lines = [f"{name.replace('-', '_')} = Asset({name!r}, watchers=[AssetWatcher(name={name + '_w'!r}, "
             f"trigger=XnatPrearchiveEventTrigger(**{kwargs!r}))])" for name, kwargs in assets.items()]
    schedule = " | ".join(name.replace("-", "_") for name in assets)
    path = tmp_path / f"{dag_id}.py"
    path.write_text(textwrap.dedent('''
        import pendulum
        from airflow.providers.standard.operators.empty import EmptyOperator
        from airflow.sdk import DAG, Asset, AssetWatcher

        from xnat_provider.triggers.events import XnatPrearchiveEventTrigger
        ''') + "\n".join(lines) + textwrap.dedent(f'''
        with DAG({dag_id!r}, schedule=({schedule}), start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
                 catchup=False):
            EmptyOperator(task_id="noop")
        '''))
    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder=str(path))
    assert bag.import_errors == {}
    sync_bag_to_db(bag, "dags-folder", None)
    with create_session() as session:
        session.execute(update(DagModel).where(DagModel.dag_id == dag_id).values(is_paused=False))
    sync_bag_to_db(bag, "dags-folder", None)


def triggers_of(names: set[str]) -> list[Any]:
    """The trigger rows watching exactly the Assets ``names``, as (classpath, kwargs, {name: uri})."""
    from airflow.models.trigger import Trigger
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(select(Trigger).where(Trigger.classpath == CLASSPATH)).all()
        return [(t.classpath, t.encrypted_kwargs, {a.name: a.uri for a in t.assets}) for t in rows
                if {a.name for a in t.assets} == names]


def as_the_triggerer_builds_it(classpath: str, encrypted_kwargs: str, watched_assets: dict[str, str]) -> Any:
    """``TriggerRunner.create_triggers`` for an asset watcher workload (``watched_assets`` as in
    ``TriggerRunnerSupervisor._create_workload``)."""
    from airflow.models.trigger import Trigger
    from airflow.sdk import Asset
    from airflow.sdk._shared.module_loading import import_string
    from airflow.sdk.execution_time.context import AssetStateStoreAccessors
    from airflow.serialization.decoders import smart_decode_trigger_kwargs

    kw = Trigger._decrypt_kwargs(encrypted_kwargs)
    trigger = import_string(classpath)(**{k: smart_decode_trigger_kwargs(v) for k, v in kw.items()})
    trigger.asset_state_store = AssetStateStoreAccessors(
        inlets=[Asset(name=name, uri=u) for name, u in watched_assets.items()])
    return trigger


async def stored(comms: TriggererComms, name: str) -> Any:
    """What the asset state store holds for one asset, read through a new accessor."""
    from airflow.sdk.execution_time.context import AssetStateStoreAccessor
    from airflow.sdk.execution_time.supervisor import set_supervisor_comms

    with set_supervisor_comms(comms):
        return await AssetStateStoreAccessor(name=name).aget(SEEN_KEY)


@contextlib.asynccontextmanager
async def running(trigger: Any, comms: TriggererComms):
    """Run the trigger as the triggerer would, collecting its events; cancel it at the end (a restart)."""
    from airflow.sdk.execution_time.supervisor import set_supervisor_comms

    events: list[dict] = []

    async def run() -> None:
        async for event in trigger.run():
            events.append(event.payload)

    with set_supervisor_comms(comms):
        task = asyncio.ensure_future(run())
        try:
            yield events
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 10)


async def until(events: list[dict], n: int, timeout: float = 60.0) -> None:
    """Wait for ``n`` events."""
    deadline = time.monotonic() + timeout
    while len(events) < n:
        assert time.monotonic() < deadline, f"{len(events)} events after {timeout} s, wanted {n}"
        await asyncio.sleep(0.05)


async def until_stored(comms: TriggererComms, names: Any, uris: list[str], timeout: float = 60.0) -> None:
    """Wait until every asset's store holds ``uris`` (the trigger writes it after its event was taken)."""
    deadline = time.monotonic() + timeout
    for name in names:
        while sorted(await stored(comms, name) or []) != sorted(uris):
            assert time.monotonic() < deadline, f"{name}: {await stored(comms, name)} after {timeout} s"
            await asyncio.sleep(0.05)


async def polls(emu: Any, n: int = 5, timeout: float = 60.0) -> None:
    """Let ``n`` more polls of P1's prearchive happen (counted on the emulator)."""
    listing = r"^/data/prearchive/projects/P1$"
    target = emu.request_count("GET", listing) + n
    deadline = time.monotonic() + timeout
    while emu.request_count("GET", listing) < target:
        assert time.monotonic() < deadline, f"fewer than {n} polls in {timeout} s"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("names", [("xnat_one_a",), ("xnat_two_a", "xnat_two_b")], ids=["one-asset", "two-assets"])
async def test_the_real_asset_state_store_for_one_and_two_assets(airflow_db, xnat_conn, tmp_path, names) -> None:
    """With two Assets the triggerer shares one trigger and injects a store keyed per asset, whose unsubscripted
    ``aget`` raises ValueError: the trigger used to swallow it on every poll and never fire."""
    kwargs = {"project": "P1", "poll_interval": 0.05}
    sync_dag(tmp_path, f"dag_{'_'.join(names)}", {n: kwargs for n in names})
    rows = await asyncio.to_thread(triggers_of, set(names))
    assert len(rows) == 1  # one trigger watches them all
    comms = TriggererComms()
    a = await asyncio.to_thread(put_session, xnat_conn, tmp_path, "S01_MR1")

    trigger = as_the_triggerer_builds_it(*rows[0])
    async with running(trigger, comms) as events:
        await until(events, 1)
        await until_stored(comms, rows[0][2], [uri(a)])
        await polls(xnat_conn)  # more polls: nothing again
    assert [e["prearchive_session"]["name"] for e in events] == ["S01_MR1"]
    assert "SetAssetStateStoreByName" in comms.sent  # the real store was written
    watched = rows[0][2]
    for name in watched:  # each asset's store holds what was announced
        assert await stored(comms, name) == [uri(a)]

    # A triggerer restart: a new trigger, built again from the database, with a new store. Nothing again; a new
    # session fires once.
    again = as_the_triggerer_builds_it(*(await asyncio.to_thread(triggers_of, set(names)))[0])
    async with running(again, comms) as events:
        await polls(xnat_conn)
        assert events == []
        b = await asyncio.to_thread(put_session, xnat_conn, tmp_path, "S02_MR1", "S02")
        await until(events, 1)
        await until_stored(comms, watched, [uri(a), uri(b)])
    assert [e["prearchive_session"]["name"] for e in events] == ["S02_MR1"]
    for name in watched:
        assert sorted(await stored(comms, name)) == sorted([uri(a), uri(b)])


def pause(dag_id: str, tmp_path: Path, assets: dict[str, dict[str, Any]]) -> None:
    """Pause the DAG and store it again: Airflow drops the watchers of a paused DAG's assets."""
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session
    from sqlalchemy import update

    with create_session() as session:
        session.execute(update(DagModel).where(DagModel.dag_id == dag_id).values(is_paused=True))
    sync_bag_to_db(DagBag(dag_folder=str(tmp_path / f"{dag_id}.py")), "dags-folder", None)
    assert triggers_of(set(assets)) == []


async def test_an_asset_joining_a_shared_watcher_is_not_told_old_sessions(airflow_db, xnat_conn, tmp_path) -> None:
    """An Asset that starts sharing a trigger with one that was already announced sessions: the trigger's events
    reach every Asset it watches, so what any of them was told counts as announced (their union), and is then
    kept in every store."""
    kwargs = {"project": "P1", "poll_interval": 0.05}
    sync_dag(tmp_path, "dag_join", {"xnat_join_a": kwargs})
    comms = TriggererComms()
    a = await asyncio.to_thread(put_session, xnat_conn, tmp_path, "S01_MR1")
    async with running(as_the_triggerer_builds_it(*triggers_of({"xnat_join_a"})[0]), comms) as events:
        await until(events, 1)
        await until_stored(comms, ["xnat_join_a"], [uri(a)])
    pause("dag_join", tmp_path, {"xnat_join_a": kwargs})
    sync_dag(tmp_path, "dag_join", {"xnat_join_a": kwargs, "xnat_join_b": kwargs})  # unpaused with both
    rows = triggers_of({"xnat_join_a", "xnat_join_b"})
    assert len(rows) == 1
    async with running(as_the_triggerer_builds_it(*rows[0]), comms) as events:
        await polls(xnat_conn)
        b = await asyncio.to_thread(put_session, xnat_conn, tmp_path, "S02_MR1", "S02")
        await until(events, 1)
        await until_stored(comms, ["xnat_join_a", "xnat_join_b"], [uri(a), uri(b)])
    assert [e["prearchive_session"]["name"] for e in events] == ["S02_MR1"]  # S01 was not announced again
    for name in ("xnat_join_a", "xnat_join_b"):
        assert sorted(await stored(comms, name)) == sorted([uri(a), uri(b)])
