"""Edges of the shared poll found in review: a zero interval must not freeze the triggerer's event loop, a waiter
with a long interval is not held back by rounds it never took, and the shared work (the poll, its reads, the
logout) runs in a context of its own, so that it never logs into one trigger's task log."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from tests.triggers.test_shared_poll import P1_PREARCHIVE, Running, prearchive_trigger
from xnat_provider.triggers import shared_poll

pytestmark = pytest.mark.timeout(60)


async def until_async(check, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "not reached in time"
        await asyncio.sleep(0.02)


async def test_a_zero_interval_does_not_freeze_the_event_loop(xnat_conn) -> None:
    """``poke_interval=0`` is accepted by Airflow. The trigger used to be handed the round it had already taken,
    again and again without a wait: no other task of the triggerer ran again."""
    emu = xnat_conn
    ticks = 0

    async def heartbeat() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    beat = asyncio.ensure_future(heartbeat())
    waiting = Running(prearchive_trigger(interval=0, session="NEVER"))
    try:
        start = emu.request_count("GET", P1_PREARCHIVE)
        await until_async(lambda: emu.request_count("GET", P1_PREARCHIVE) >= start + 5 and ticks >= 20)
        assert waiting.events == [] and not waiting.task.done()  # still waiting, and the loop still runs
    finally:
        await waiting.cancel()
        beat.cancel()


async def test_a_slow_waiter_is_paced_by_its_own_interval_not_by_rounds_it_skipped(xnat_conn) -> None:
    """A (long interval) took a round; B (short) joined and left. A's next round comes when A is due, not one of
    A's intervals after the last round B took."""
    slow = Running(prearchive_trigger(interval=2.0, session="NEVER"))
    await until_async(lambda: any(p.rounds for p in shared_poll.registry().polls.values()))
    (poll,) = shared_poll.registry().polls.values()
    (a,) = poll.waiters
    assert a.taken is not None
    due = a.due
    fast = Running(prearchive_trigger(interval=0.1, session="NEVER"))
    # rounds at the fast pace, which A does not take, until just before A is due; then the fast one leaves
    await until_async(lambda: poll.latest.start >= due - 0.4)
    await fast.cancel()
    assert a.due == due  # A took none of them
    await until_async(lambda: a.taken is poll.latest and poll.latest.start >= due - 0.01)
    assert poll.latest.start - due < 1.0  # its round came when it was due, not 2 s after the fast one's last
    await slow.cancel()


async def test_shared_tasks_run_in_a_context_of_their_own(xnat_conn) -> None:
    """Airflow binds each trigger's ids to its context for logging; the poll created by the first trigger must not
    carry them (its warnings would land in that trigger's task log, even after it ended)."""
    marker: contextvars.ContextVar[str] = contextvars.ContextVar("trigger_id", default="none")
    seen: list[str] = []
    real_round = shared_poll.SharedPoll._round

    async def spying(self, start):
        seen.append(marker.get())
        return await real_round(self, start)

    shared_poll.SharedPoll._round = spying  # type: ignore[method-assign]
    try:
        marker.set("trigger-1")
        first = Running(prearchive_trigger(interval=0.1, session="NEVER"))
        await until_async(lambda: len(seen) >= 2)
        await first.cancel()
    finally:
        shared_poll.SharedPoll._round = real_round  # type: ignore[method-assign]
    assert set(seen) == {"none"}
