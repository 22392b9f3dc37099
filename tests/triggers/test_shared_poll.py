"""The triggers of one event loop share one login per connection and one read per project (``shared_poll``).

Every test runs real triggers (``run()``, as the triggerer does) in the test's event loop against the emulator over
HTTP, and counts what XNAT received (``emulator.request_count``). Nothing waits a fixed time and then checks that
something happened: waits are "until", with long deadlines, so a slow machine only makes a test slower."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

import pytest

from tests.sensors.support import FakeAssetStore, archive, put_session, until
from xnat_provider.client.models import Experiment
from xnat_provider.conditions import ExperimentCriteria
from xnat_provider.triggers import shared_poll
from xnat_provider.triggers.events import XnatPrearchiveEventTrigger
from xnat_provider.triggers.experiment import XnatExperimentTrigger, listed
from xnat_provider.triggers.prearchive import XnatPrearchiveTrigger

pytestmark = pytest.mark.timeout(120)

LOGIN, LOGOUT = r"^/data/services/auth$", r"^/data/JSESSION$"
P1_PREARCHIVE, P2_PREARCHIVE = r"^/data/prearchive/projects/P1$", r"^/data/prearchive/projects/P2$"
P1_EXPERIMENTS = r"^/data/projects/P1/experiments$"


def prearchive_trigger(project: str = "P1", interval: float = 0.2, **criteria: Any) -> XnatPrearchiveTrigger:
    return XnatPrearchiveTrigger(criteria={"project": project, **criteria}, poll_interval=interval)


def experiment_trigger(label: str, interval: float = 0.2) -> XnatExperimentTrigger:
    return XnatExperimentTrigger(criteria={"project": "P1", "experiment": label}, poll_interval=interval)


def event_trigger(interval: float = 0.2, **kwargs: Any) -> XnatPrearchiveEventTrigger:
    trigger = XnatPrearchiveEventTrigger(project="P1", poll_interval=interval, **kwargs)
    trigger.asset_state_store = FakeAssetStore()
    return trigger


class Running:
    """A trigger run as the triggerer runs it: its own task in the loop, its events collected."""

    def __init__(self, trigger: Any) -> None:
        self.trigger = trigger
        self.events: list[dict] = []
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        async for event in self.trigger.run():
            self.events.append(event.payload)

    async def cancel(self) -> None:  # the deferral ended elsewhere, or the triggerer stops
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self.task, 10)


def connect(monkeypatch: pytest.MonkeyPatch, emu: Any, password: str = "admin", retries: int = 3) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_XNAT_DEFAULT", json.dumps({
        "conn_type": "xnat", "host": emu.url, "login": "admin", "password": password,
        "extra": {"backoff": 0.05, "retries": retries}}))


def the_poll(read: tuple[Any, Any]) -> shared_poll.SharedPoll:
    (poll,) = [p for p in shared_poll.registry().polls.values() if p.what == read[0]]
    return poll


async def test_many_triggers_cost_one_login_and_one_listing_per_project_per_round(xnat_conn, tmp_path) -> None:
    """20 prearchive sensors, an event watcher and 10 experiment sensors on P1, 5 prearchive sensors on P2: one
    login, and each round one prearchive listing per project and one experiment listing, handed to all."""
    emu = xnat_conn
    emu.faults.reset_counts()
    p1 = [Running(prearchive_trigger(experiment="S01_MR1")) for _ in range(20)]
    watcher = Running(event_trigger())
    experiments = [Running(experiment_trigger("S02_MR1")) for _ in range(10)]
    p2 = [Running(prearchive_trigger("P2")) for _ in range(5)]
    await until(lambda: len(shared_poll.registry().polls) == 3, "three shared polls")
    pre1 = the_poll(shared_poll.prearchive_listing("P1"))
    exp1 = the_poll(shared_poll.experiment_listing("P1"))
    pre2 = the_poll(shared_poll.prearchive_listing("P2"))
    await until(lambda: len(pre1.waiters) == 21 and len(exp1.waiters) == 10 and len(pre2.waiters) == 5,
                "every trigger waiting")
    await until(lambda: min(pre1.rounds, exp1.rounds, pre2.rounds) >= 5, "five rounds of each")
    for poll, path in ((pre1, P1_PREARCHIVE), (exp1, P1_EXPERIMENTS), (pre2, P2_PREARCHIVE)):
        rounds = poll.rounds  # read first: at most one more request (the round in flight) can have been sent
        assert rounds <= emu.request_count("GET", path) <= rounds + 1, path
    assert emu.request_count("POST", LOGIN) == 1
    assert not any(r.task.done() for r in [*p1, watcher, *experiments, *p2])

    # Every waiter judges every round it is due for: a session that arrives reaches all of them.
    await asyncio.to_thread(put_session, emu, tmp_path, "S01_MR1")
    await until(lambda: all(r.task.done() for r in p1) and watcher.events, "the P1 waiters fire")
    assert {r.events[0]["status"] for r in p1} == {"success"}
    assert watcher.events[0]["prearchive_session"]["name"] == "S01_MR1"
    row = await asyncio.to_thread(put_session, emu, tmp_path, "S02_MR1", "S02")
    assert (await asyncio.to_thread(archive, emu, row)).ok
    await until(lambda: all(r.task.done() for r in experiments), "the experiment waiters fire")
    assert {r.events[0]["experiment"]["label"] for r in experiments} == {"S02_MR1"}
    assert emu.request_count("POST", LOGIN) == 1
    assert not any(r.task.done() for r in p2)
    for r in [watcher, *p2]:
        await r.cancel()
    await until(lambda: emu.request_count("DELETE", LOGOUT) == 1, "the shared login logs out")


async def test_a_departed_waiter_costs_nothing_and_the_last_one_logs_out(xnat_conn) -> None:
    emu = xnat_conn
    emu.faults.reset_counts()
    slow = Running(prearchive_trigger(interval=3600))
    fast = [Running(prearchive_trigger(interval=0.05)) for _ in range(3)]
    await until(lambda: shared_poll.registry().polls, "a shared poll")
    poll = the_poll(shared_poll.prearchive_listing("P1"))
    await until(lambda: len(poll.waiters) == 4 and poll.rounds >= 5, "the shortest interval sets the pace")
    for r in fast:
        await r.cancel()
    assert len(poll.waiters) == 1  # only the hourly one is left: the next round is an hour after the last one
    await until(lambda: poll.next_start() - poll.latest.start > 3000, "the pace of the one left")
    assert not slow.task.done()
    await slow.cancel()
    await until(lambda: emu.request_count("DELETE", LOGOUT) == 1, "a logout once nobody waits")
    assert poll.task.done() and shared_poll.registry().polls == {} and shared_poll.registry().logins == {}
    assert emu.request_count("POST", LOGIN) == 1


async def test_a_transient_error_is_one_failed_request_per_round_seen_by_every_waiter(xnat_conn, tmp_path,
                                                                                     monkeypatch, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="xnat_provider.triggers")
    emu = xnat_conn
    connect(monkeypatch, emu, retries=1)  # one request per round: no retries inside a round
    waiters = [Running(prearchive_trigger(experiment="S01_MR1", interval=0.05)) for _ in range(10)]
    await until(lambda: shared_poll.registry().polls, "a shared poll")
    poll = the_poll(shared_poll.prearchive_listing("P1"))
    await until(lambda: len(poll.waiters) == 10 and poll.rounds >= 1, "every trigger waiting")
    emu.faults.reset_counts()
    emu.fail_next("GET", P1_PREARCHIVE, status=503, count=3)

    def failures() -> int:
        return sum("prearchive poll failed" in r.getMessage() for r in caplog.records)

    await until(lambda: emu.request_count("GET", P1_PREARCHIVE) >= 4, "three failed rounds and an answer")
    await until(lambda: failures() >= 30, "each waiter seeing each failed round")
    assert failures() == 30  # once each: ten waiters, three failed rounds, three failed requests
    assert not any(r.task.done() for r in waiters)  # nobody gave up on a 503
    await asyncio.to_thread(put_session, emu, tmp_path, "S01_MR1")
    await until(lambda: all(r.task.done() for r in waiters), "the waiters fire once the session is READY")
    assert {r.events[0]["status"] for r in waiters} == {"success"}
    assert emu.request_count("POST", LOGIN) == 0  # the one login was before the counts were reset


async def test_refused_credentials_cost_one_failed_login_for_every_waiter(xnat_conn, tmp_path, monkeypatch,
                                                                         caplog) -> None:
    """Ten sensors, two event watchers, a wrong password: one failed login in all; sensors deferred later get the
    refusal without a request; the fixed connection is one new login for both watchers."""
    caplog.set_level(logging.DEBUG, logger="xnat_provider.triggers")
    emu = xnat_conn
    emu.auth.max_failed_logins = 3
    await asyncio.to_thread(put_session, emu, tmp_path, "S01_MR1", "S01")
    emu.faults.reset_counts()
    connect(monkeypatch, emu, "Wrong-Password-1")
    sensors = [Running(prearchive_trigger(experiment="S09_MR1")) for _ in range(10)]
    watchers = [Running(event_trigger(permanent_error_interval=0.1)) for _ in range(2)]
    await until(lambda: all(r.task.done() for r in sensors), "the sensors' error events")
    assert {r.events[0]["error_type"] for r in sensors} == {"XnatAuthError"}
    later = [Running(prearchive_trigger(experiment="S09_MR1")) for _ in range(5)]
    await until(lambda: all(r.task.done() for r in later), "the later sensors' error events")
    assert {r.events[0]["error_type"] for r in later} == {"XnatAuthError"}
    # Each later sensor's failure says that nothing was sent: from the round of a poll still running (the
    # watchers keep one) or, with no poll left, from the memory of the refusal (next test).
    assert all("not sent again" in r.events[0]["message"] or "did not send them again" in r.events[0]["message"]
               for r in later)

    def looks() -> int:  # the watchers' looks at the connection while the refusal lasts (logged, no request)
        return sum("stopped logging in" in r.getMessage() for r in caplog.records)

    await until(lambda: looks() >= 10, "the watchers looking again, several times each")
    assert emu.request_count("POST", LOGIN) == 1
    assert emu.request_count("GET", r"^/data/prearchive") == 0
    assert all(not w.events for w in watchers)
    connect(monkeypatch, emu, "admin")  # fixed: the watchers resume on their next look, on one new login
    await until(lambda: all(w.events for w in watchers), "both watchers announce S01_MR1")
    assert {w.events[0]["prearchive_session"]["name"] for w in watchers} == {"S01_MR1"}
    assert emu.request_count("POST", LOGIN) == 2
    for w in watchers:
        await w.cancel()


async def test_a_sensor_refused_from_the_memory_of_a_refusal_says_so(xnat_conn, monkeypatch) -> None:
    """With no poll left, a sensor deferred after a refusal is refused without a request, and its error says
    so: since when, and that changing the connection sends the credentials at once."""
    emu = xnat_conn
    emu.auth.max_failed_logins = 3
    emu.faults.reset_counts()
    connect(monkeypatch, emu, "Wrong-Password-1")
    first = Running(prearchive_trigger(experiment="S09_MR1"))
    await until(lambda: first.task.done(), "the first sensor's error event")
    await until(lambda: not shared_poll.registry().polls, "its poll ended")
    later = Running(prearchive_trigger(experiment="S09_MR1"))
    await until(lambda: later.task.done(), "the later sensor's error event")
    message = later.events[0]["message"]
    assert later.events[0]["error_type"] == "XnatAuthError"
    assert "remembered: XNAT refused these credentials" in message, message
    assert "at once when the connection's settings change" in message
    assert "remembered" not in first.events[0]["message"]
    assert emu.request_count("POST", LOGIN) == 1


async def test_a_password_rotated_under_many_waiters_is_one_failed_login(xnat_conn, monkeypatch) -> None:
    emu = xnat_conn
    emu.auth.max_failed_logins = 3
    emu.faults.reset_counts()
    sensors = [Running(prearchive_trigger(experiment="S09_MR1", interval=0.05)) for _ in range(10)]
    await until(lambda: emu.request_count("GET", P1_PREARCHIVE) >= 3, "a few rounds")
    emu.add_user("admin", "Rotated-Password-2", admin=True)
    emu.expire_sessions()
    await until(lambda: all(r.task.done() for r in sensors), "the sensors' error events")
    assert {r.events[0]["error_type"] for r in sensors} == {"XnatAuthError"}
    assert emu.request_count("POST", LOGIN) == 2  # the first login, and the one re-login XNAT refused


async def test_permanent_errors_end_the_sensors_and_back_the_watcher_off(xnat_conn, tmp_path) -> None:
    """No such project: every sensor gets the error of the same round; the watcher looks again only every
    permanent_error_interval (so a shared poll does not shorten its backoff)."""
    emu = xnat_conn
    emu.faults.reset_counts()
    sensors = [Running(prearchive_trigger("P9", interval=0.05)) for _ in range(5)]
    watcher = Running(XnatPrearchiveEventTrigger(project="P9", poll_interval=0.05, permanent_error_interval=0.5))
    await until(lambda: all(r.task.done() for r in sensors), "the sensors' error events")
    assert {r.events[0]["error_type"] for r in sensors} == {"XnatNotFoundError"}
    t0 = time.monotonic()
    base = emu.request_count("GET", r"^/data/prearchive/projects/P9$")
    await until(lambda: emu.request_count("GET", r"^/data/prearchive/projects/P9$") >= base + 2, "two more looks")
    assert time.monotonic() - t0 >= 0.5  # two looks are a long interval apart at least: not every 0.05 s
    emu.add_project("P9")
    await asyncio.to_thread(put_session, emu, tmp_path, "S01_MR1", "S01", "P9")
    await until(lambda: watcher.events, "the watcher's event once P9 exists")
    await watcher.cancel()


def test_each_event_loop_has_its_own_polls(xnat_conn) -> None:
    """pytest-asyncio (and ``asyncio.run``) give each run its own loop: nothing is carried from one to the next."""
    emu = xnat_conn
    emu.faults.reset_counts()

    async def one_loop(logouts: int) -> int:
        assert shared_poll.registry().polls == {} and shared_poll.registry().logins == {}  # a fresh registry
        running = Running(prearchive_trigger())
        await until(lambda: shared_poll.registry().polls, "a shared poll")
        poll = the_poll(shared_poll.prearchive_listing("P1"))
        await until(lambda: poll.rounds >= 1, "a round")
        await running.cancel()
        await until(lambda: emu.request_count("DELETE", LOGOUT) == logouts, "the logout")
        return id(shared_poll.registry())

    asyncio.run(one_loop(1))
    asyncio.run(one_loop(2))
    assert emu.request_count("POST", LOGIN) == 2  # a login per loop: none is reused from a loop that ended


@pytest.mark.parametrize(("criteria", "rows", "expected"), [
    ({"experiment": "S01_MR1"}, [("XNAT_E1", "S01_MR1", "S01")], True),
    ({"experiment": "s01_mr1"}, [("XNAT_E1", "S01_MR1", "S01")], True),  # case: a closer look decides
    ({"experiment": "XNAT_E1"}, [("XNAT_E1", "S01_MR1", "S01")], True),  # by ID, as find_experiment does
    ({"experiment": "S02_MR1"}, [("XNAT_E1", "S01_MR1", "S01")], False),
    ({"subject": "S01"}, [("XNAT_E1", "S01_MR1", "S01")], True),
    ({"subject": "S02"}, [("XNAT_E1", "S01_MR1", "S01")], False),
    ({"subject": "S02"}, [("XNAT_E1", "S01_MR1", "")], True),  # no subject label listed: look closer
])
def test_an_experiment_is_looked_at_closely_only_once_listed(criteria: dict, rows: list, expected: bool) -> None:
    c = ExperimentCriteria(project="P1", **criteria)
    experiments = [Experiment(id=i, label=label, project="P1", subject_id="XNAT_S1", subject_label=subject,
                              xsi_type="xnat:mrSessionData") for i, label, subject in rows]
    assert listed(c, experiments) is expected
