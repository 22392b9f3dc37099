"""Experiment triggers of one round share their closer reads of an experiment (``round_reads.RoundReads``).

Real triggers run in the test's event loop against the emulator over HTTP, as in ``test_shared_poll.py``, and
what XNAT received is counted (``emulator.request_count``). A count never exceeds the rounds' listings (checked on
every look: more would be a read sent twice in a round), and equals them once the round's reads are done. Waits
are "until", with long deadlines."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from tests.sensors.support import put_session, until
from tests.triggers.test_shared_poll import LOGIN, LOGOUT, P1_EXPERIMENTS, Running, connect, the_poll
from xnat_provider.client import ClientConfig, XnatClient
from xnat_provider.client.async_client import AsyncXnatClient
from xnat_provider.client.errors import XnatServerError
from xnat_provider.testing import XnatEmulator
from xnat_provider.triggers import shared_poll
from xnat_provider.triggers.experiment import XnatExperimentTrigger
from xnat_provider.triggers.round_reads import RoundReads

pytestmark = pytest.mark.timeout(180)

SUBJECT = r"^/data/projects/P1/subjects/[^/]+$"  # find_experiment's second read: the subject's label


def closer_reads(label: str, eid: str) -> list[str]:
    """Every GET a trigger waiting for a resource on ``label`` (ID ``eid``, two scans) sends each round."""
    return [rf"^/data/projects/P1/experiments/{label}$", rf"^/data/experiments/{eid}/scans$",
            rf"^/data/experiments/{eid}/resources$", rf"^/data/experiments/{eid}/scans/1/resources$",
            rf"^/data/experiments/{eid}/scans/2/resources$"]


def trigger(label: str, interval: float = 0.2, tolerance: float = 600.0, **criteria: Any) -> XnatExperimentTrigger:
    return XnatExperimentTrigger(criteria={"project": "P1", "experiment": label, **criteria},
                                 poll_interval=interval, transient_error_timeout=tolerance)


def archived(emu: XnatEmulator, tmp_path: Any, label: str, subject: str = "S01") -> str:
    """Archive ``label`` (two scans, no NOTES resource, no fields); its experiment ID."""
    put_session(emu, tmp_path, label, subject, archive=True)
    with XnatClient(ClientConfig(emu.url, "admin", "admin")) as xnat:
        return xnat.get_experiment("P1", label).id


def add_notes(emu: XnatEmulator, label: str, qc: str | None = None) -> None:
    with XnatClient(ClientConfig(emu.url, "admin", "admin")) as xnat:
        xnat.ensure_resource(f"/data/projects/P1/experiments/{label}", "NOTES", format="TXT")
        if qc is not None:
            xnat.set_fields("P1", {"qc": qc}, experiment=label)


def at_most_one_per_round(emu: XnatEmulator, paths: list[str]) -> tuple[int, dict[str, int]]:
    """The listings so far and each path's GETs, failing at once if a path was read more often than listed."""
    listings = emu.request_count("GET", P1_EXPERIMENTS)
    counts = {p: emu.request_count("GET", p) for p in paths}
    assert all(n <= listings for n in counts.values()), f"a read sent twice in a round: {counts}, {listings}"
    return listings, counts


async def all_in_step(poll: shared_poll.SharedPoll, waiters: int) -> None:
    """Every trigger subscribed, and a round started after the last one did: from then on they all take the
    same rounds (the same interval, the same due time)."""
    await until(lambda: len(poll.waiters) == waiters, f"{waiters} triggers waiting")
    rounds = poll.rounds
    await until(lambda: poll.rounds >= rounds + 2, "a round with every trigger in it")


async def test_five_triggers_on_one_experiment_send_each_read_once_per_round(xnat_conn, tmp_path) -> None:
    """Five experiment triggers on one experiment, different criteria (each reading every part: its document,
    subject, scans and resources; one its fields too, from the same document): each round one listing and one
    of each closer read in all, over several rounds; all five fire once the experiment is ready."""
    emu = xnat_conn
    eid = await asyncio.to_thread(archived, emu, tmp_path, "S01_MR1")
    paths = [*closer_reads("S01_MR1", eid), SUBJECT]
    emu.faults.reset_counts()
    running = [Running(trigger("S01_MR1", resource="NOTES")), Running(trigger("S01_MR1", resource="NOTES")),
               Running(trigger("S01_MR1", resource="NOTES", min_scans=2)),
               Running(trigger("S01_MR1", resource="NOTES", min_scans=1)),
               Running(trigger("S01_MR1", resource="NOTES", field_name="QC", field_value="pass"))]
    await until(lambda: shared_poll.registry().polls, "the shared listing")
    poll = the_poll(shared_poll.experiment_listing("P1"))

    def every_read_once_per_round() -> bool:  # every trigger reads every path each round, the first included
        listings, counts = at_most_one_per_round(emu, paths)
        return poll.rounds >= 5 and poll.rounds == listings and set(counts.values()) == {listings}

    await until(every_read_once_per_round, "five rounds, each with one of every read")
    assert not any(r.task.done() for r in running)
    assert emu.request_count("POST", LOGIN) == 1  # one login for the five
    await asyncio.to_thread(add_notes, emu, "S01_MR1", "pass")
    await until(lambda: all(r.task.done() for r in running), "the five triggers fire")
    assert [r.events[0]["status"] for r in running] == ["success"] * 5
    assert {r.events[0]["experiment"]["label"] for r in running} == {"S01_MR1"}
    await until(lambda: emu.request_count("DELETE", LOGOUT) == 2, "the shared login logs out (and add_notes')")


async def test_triggers_on_two_experiments_read_each_once_per_round(xnat_conn, tmp_path) -> None:
    """Three triggers on each of two experiments of one subject: one listing, each experiment's reads once a
    round (their subject's document once for both), and each experiment's triggers judge their own."""
    emu = xnat_conn
    first = closer_reads("S01_MR1", await asyncio.to_thread(archived, emu, tmp_path, "S01_MR1"))
    second = closer_reads("S01_MR2", await asyncio.to_thread(archived, emu, tmp_path, "S01_MR2"))
    emu.faults.reset_counts()
    ones = [Running(trigger("S01_MR1", resource="NOTES")) for _ in range(3)]
    twos = [Running(trigger("S01_MR2", resource="NOTES")) for _ in range(3)]
    await until(lambda: shared_poll.registry().polls, "the shared listing")
    poll = the_poll(shared_poll.experiment_listing("P1"))

    def both_read_every_round() -> bool:  # a group that missed the first round lags by that one
        listings, counts = at_most_one_per_round(emu, [*first, *second, SUBJECT])
        each = [{counts[p] for p in group} for group in (first, second)]
        return (poll.rounds >= 5 and counts[SUBJECT] == listings
                and all(len(c) == 1 and min(c) >= listings - 1 for c in each))

    await until(both_read_every_round, "five rounds, each reading both experiments once")
    await asyncio.to_thread(add_notes, emu, "S01_MR2")
    await until(lambda: all(r.task.done() for r in twos), "the S01_MR2 triggers fire")
    assert {r.events[0]["experiment"]["label"] for r in twos} == {"S01_MR2"}
    rounds = poll.rounds
    await until(lambda: poll.rounds >= rounds + 3, "more rounds for S01_MR1 alone")
    assert not any(r.task.done() for r in ones)  # S01_MR2's answers were never S01_MR1's
    at_most_one_per_round(emu, first)  # (S01_MR2's paths were read by the client that added its NOTES too)
    for r in ones:
        await r.cancel()


async def test_a_failed_closer_read_is_one_request_a_round_seen_by_every_trigger(xnat_conn, tmp_path, monkeypatch,
                                                                                caplog) -> None:
    """A 503 on the scans: one failed request per round for the five triggers, each of them seeing it (in its
    log and its outage clock); the next round reads again, so they fire once the experiment is ready."""
    caplog.set_level(logging.WARNING, logger="xnat_provider.triggers")
    emu = xnat_conn
    connect(monkeypatch, emu, retries=1)  # one request per read: no retries inside a round
    eid = await asyncio.to_thread(archived, emu, tmp_path, "S01_MR1")
    scans = rf"^/data/experiments/{eid}/scans$"
    running = [Running(trigger("S01_MR1", resource="NOTES")) for _ in range(5)]
    await until(lambda: shared_poll.registry().polls, "the shared listing")
    await all_in_step(the_poll(shared_poll.experiment_listing("P1")), 5)
    before = emu.request_count("GET", scans)
    emu.fail_next("GET", scans, status=503, count=2)

    def failures() -> int:
        return sum("session poll failed" in r.getMessage() for r in caplog.records)

    await until(lambda: emu.request_count("GET", scans) >= before + 4, "two failed rounds, then answers")
    await until(lambda: failures() >= 10, "each trigger seeing each failed round")
    assert failures() == 10  # five triggers, two failed rounds, two failed requests
    assert not any(r.task.done() for r in running)
    await asyncio.to_thread(add_notes, emu, "S01_MR1")
    await until(lambda: all(r.task.done() for r in running), "the triggers fire")
    assert [r.events[0]["status"] for r in running] == ["success"] * 5


async def test_each_trigger_counts_a_shared_failure_against_its_own_tolerance(xnat_conn, tmp_path,
                                                                             monkeypatch) -> None:
    """No outage tolerated: the first failed round starts each trigger's outage, the second ends all five, with
    XnatServerError; two failed requests in all (the interval is long beside a round's few requests)."""
    emu = xnat_conn
    connect(monkeypatch, emu, retries=1)
    eid = await asyncio.to_thread(archived, emu, tmp_path, "S01_MR1")
    scans = rf"^/data/experiments/{eid}/scans$"
    running = [Running(trigger("S01_MR1", interval=1.0, resource="NOTES", tolerance=0.0)) for _ in range(5)]
    await until(lambda: shared_poll.registry().polls, "the shared listing")
    await all_in_step(the_poll(shared_poll.experiment_listing("P1")), 5)
    before = emu.request_count("GET", scans)
    emu.fail_next("GET", scans, status=503, count=100)
    await until(lambda: all(r.task.done() for r in running), "the triggers give up")
    assert {r.events[0]["error_type"] for r in running} == {XnatServerError.__name__}
    assert all("outage_tolerance=0 s" in r.events[0]["message"] for r in running)
    assert emu.request_count("GET", scans) == before + 2
    emu.clear_faults()


async def test_a_read_is_sent_once_for_concurrent_callers_and_again_when_nobody_waits(xnat_conn,
                                                                                     tmp_path) -> None:
    """The round's reads themselves: callers of one read share its request, one of them cancelled or not; a
    read whose every caller was cancelled is cancelled too, and the round's next caller sends it again."""
    emu = xnat_conn
    await asyncio.to_thread(archived, emu, tmp_path, "S01_MR1")
    doc = r"^/data/projects/P1/experiments/S01_MR1$"
    emu.faults.reset_counts()
    async with AsyncXnatClient(ClientConfig(emu.url, "admin", "admin", backoff=0.01)) as xnat:
        reads = RoundReads(xnat)
        emu.delay("GET", doc, seconds=0.5)
        first = asyncio.ensure_future(reads.get_fields("P1", experiment="S01_MR1"))
        second = asyncio.ensure_future(reads.find_experiment("P1", "S01_MR1"))
        await until(lambda: emu.request_count("GET", doc) == 1, "the document asked for")
        first.cancel()
        found = await second
        assert found is not None and found.label == "S01_MR1"
        assert emu.request_count("GET", doc) == 1
        assert await reads.get_fields("P1", experiment="S01_MR1") == {}  # answered: not sent again this round

        later = RoundReads(xnat)  # the next round
        emu.delay("GET", r"^/data/projects/P1$", seconds=3)
        alone = asyncio.ensure_future(later.get_fields("P1"))
        await until(lambda: later.sent == 1, "the project read in flight")
        alone.cancel()
        await asyncio.gather(alone, return_exceptions=True)
        assert later.sent == 0  # cancelled with its last caller, and forgotten
        emu.clear_faults()
        assert await later.get_fields("P1") == {}
        assert emu.request_count("GET", r"^/data/projects/P1$") == 2
