"""One login per connection, one read per project and one of each closer read, per interval, shared by every XNAT
trigger of an event loop.

Why: Airflow's triggerer runs all the triggers of a process in one asyncio event loop. Each deferred sensor used to
log in and poll on its own: 50 prearchive sensors on one project were 50 XNAT logins (50 live HTTP sessions) and
50 listings of the same prearchive every interval, the load XNAT administrators ban service accounts for, and at
200 the loop could no longer keep its interval. XNAT's load should grow with what is watched, not with how many
tasks wait for it.

What is shared, within one running event loop (the registry is keyed by the loop, never stored anywhere):

- a **login** (:class:`SharedLogin`, one :class:`~xnat_provider.client.async_client.AsyncXnatClient`) per connection:
  the connection id and a salted hash of its resolved settings (URL, login, password, TLS, timeouts...), so a
  changed connection (a fixed password) is another login. It logs out when its last user leaves. Credentials XNAT
  refused are not sent again by anyone for :data:`REFUSAL_MEMORY` seconds (the client itself never resends them):
  N waiters cost one failed login, not N, and a waiter arriving later gets the refusal without a request.
- a **poll** (:class:`SharedPoll`) per (login, read), e.g. ``("prearchive", "P1")``: one request per round, its
  answer (or its error) handed to every waiter; each trigger keeps judging it with its own verdict logic
  (:mod:`xnat_provider.conditions`). Rounds come every *shortest interval among the current waiters*; a waiter
  with a longer interval takes the first round at or after its own due time, so it is judged no more often than
  it asked. A transient error (5xx, timeout) is one failed round, retried by the client once for everyone, and
  every waiter's own outage clock sees it once. A poll whose last waiter left (its trigger ended or was cancelled,
  as the triggerer does at a deferral's end or on shutdown) sends nothing more and releases its login.
- the **closer reads of a round** (:class:`~.round_reads.RoundReads`, :attr:`Subscription.reads`): what waiters
  read after the round's answer, e.g. the experiment that a project's listing shows (its document, scans,
  resources, fields), each distinct ``GET`` sent once for every waiter of that round that makes it, in flight or
  done; its error too (one failed request, every waiter's outage clock counting it). K triggers waiting for one
  experiment, with the same or different criteria, cost one request per distinct read per round, not K. Only for
  that round: the next one reads again, so nothing read (nor failed) is carried over.

Nothing here must survive: a restarted triggerer rebuilds every trigger from its serialized arguments, and the
triggers subscribe again. Each event loop has its own registry (pytest-asyncio gives every test its own loop), so
pollers and logins never cross loops.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Hashable
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
from typing import Any, Generic, TypeVar

from ..client import ClientConfig
from ..client.async_client import AsyncXnatClient
from ..client.errors import XnatAuthError
from .round_reads import RoundReads, detached_task, own_copy

log = logging.getLogger("xnat_provider.triggers")
T = TypeVar("T")

REFUSAL_MEMORY = 600.0  # seconds credentials XNAT refused are not sent again by any trigger of the loop
TOLERANCE = 0.001  # seconds: rounds scheduled by float sums still count as "at" a waiter's due time
_SALT = os.urandom(16)

LoginKey = tuple[str, str]  # (connection id, salted hash of the resolved settings)
Fetch = Callable[[AsyncXnatClient], Awaitable[Any]]


def login_key(conn_id: str, config: ClientConfig) -> LoginKey:
    """Which shared login a trigger uses: its connection id and a salted hash of every setting (the password too,
    never kept in clear); a connection whose settings changed is another login."""
    values = {f.name: getattr(config, f.name) for f in fields(config) if f.name != "on_secret"}
    digest = hashlib.sha256(_SALT + json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()
    return conn_id, digest



def remembered(refusal: XnatAuthError, age: float) -> BaseException:
    """The remembered ``refusal`` for one more trigger, saying that nothing was sent this time, since when, and
    what sends the credentials again: a person who has just unlocked the account on XNAT reads why the sensor still
    failed, and that changing the connection (or waiting) is the way on."""
    own = own_copy(refusal)
    own.args = (f"{refusal.args[0] if refusal.args else refusal} (remembered: XNAT refused these credentials "
                f"{age:.0f} s ago, so this triggerer did not send them again; it will after "
                f"{REFUSAL_MEMORY - age:.0f} s more, or at once when the connection's settings change)",
                *refusal.args[1:])
    return own

class SharedLogin:
    """One client (one XNAT login) and how many polls or triggers use it."""

    def __init__(self, key: LoginKey, config: ClientConfig):
        self.key = key
        self.client = AsyncXnatClient(config)
        self.users = 0


@dataclass(frozen=True)
class Round:
    """What one round of a poll saw: its start (loop time) and the answer, or the error it raised; and the reads
    its waiters make next (:class:`~.round_reads.RoundReads`), each sent once for all of them, for this round."""

    start: float
    reads: RoundReads
    value: Any = None
    error: BaseException | None = None


class Subscription(Generic[T]):
    """A waiter on a :class:`SharedPoll`: :meth:`next` gives the first round at or after its due time."""

    def __init__(self, poll: SharedPoll, interval: float):
        self.poll = poll
        self.interval = max(float(interval), 0.0)
        self.due = poll.loop.time()
        self.taken: Round | None = None

    @property
    def client(self) -> AsyncXnatClient:
        """The shared login's client itself (each call a request of its own)."""
        return self.poll.login.client

    @property
    def reads(self) -> RoundReads:
        """The further reads of the round :meth:`next` last gave (an experiment's scans, its fields), each read
        sent once for every waiter that makes it in that round: the same calls as :attr:`client`."""
        if self.taken is None:
            raise RuntimeError("no round taken yet: await next() first")
        return self.taken.reads

    async def next(self) -> T:
        """The next round's answer (raised again here if the round failed), waiting for it as needed. Every waiter
        gets the same answer object: read it, never change it."""
        while True:
            seen = self.poll.latest
            # never the round it already took: with an interval of 0 it would be "due" again, returned without a
            # wait, and the trigger's loop would never yield (the whole triggerer would stop)
            if seen is not None and seen is not self.taken and seen.start >= self.due - TOLERANCE:
                self.due = seen.start + self.interval
                self.taken = seen
                if seen.error is not None:
                    raise own_copy(seen.error)  # each waiter its own exception (tracebacks are per raise)
                return seen.value  # type: ignore[no-any-return]
            if self.poll.stopped:
                raise RuntimeError(f"the shared XNAT poll {self.poll.what} has stopped")
            await self.poll.round_done.wait()


class SharedPoll:
    """One read (``fetch``) of one login, repeated while anyone waits, its rounds handed to every waiter."""

    def __init__(self, registry: Registry, what: Hashable, login: SharedLogin, fetch: Fetch):
        self.registry, self.what, self.login, self.fetch = registry, what, login, fetch
        self.waiters: set[Subscription] = set()
        self.latest: Round | None = None
        self.rounds = 0
        self.stopped = False
        self.round_done = asyncio.Event()
        self._wake = asyncio.Event()
        self.task = detached_task(self._run(), f"xnat-shared-poll-{what}")

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self.registry.loop

    def add(self, sub: Subscription) -> None:
        self.waiters.add(sub)
        self._wake.set()  # a shorter interval, or the first waiter: schedule again

    def discard(self, sub: Subscription) -> None:
        self.waiters.discard(sub)
        self._wake.set()  # the last one left (stop now), or the quickest one (a slower pace from now on)

    def next_start(self) -> float:
        """When the next round is due: never before a waiter is due, and no sooner after the last round than the
        shortest interval among the waiters that take every round (a waiter with a longer interval that skipped
        the last round is paced by its own due time, not held back by rounds it never took)."""
        latest = self.latest
        due = min(w.due for w in self.waiters)
        if latest is None:
            return due
        paced = [w.interval for w in self.waiters
                 if w.taken is None or w.taken is latest or latest.start >= w.due - TOLERANCE]
        return max(latest.start + min(paced), due) if paced else due

    async def _run(self) -> None:
        try:
            while self.waiters:
                start = self.next_start()
                delay = start - self.loop.time()
                if delay > 0:
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), delay)
                        continue  # waiters came or went: when, and whether, to poll is decided again
                    except TimeoutError:
                        pass
                    if not self.waiters:
                        break
                start = max(start, self.loop.time())
                self.latest = await self._round(start)
                self.rounds += 1
                done, self.round_done = self.round_done, asyncio.Event()
                done.set()
        finally:
            self.stopped = True
            self.round_done.set()  # nobody waits for a round that will not come
            closing = self.registry.poll_ended(self)
            if closing is not None:
                # In a task of its own, which httpx (anyio) does not see as cancelled when this one is. A loop that
                # shuts down cancels every task, the logout too: XNAT ends that session when it idles out.
                await asyncio.shield(detached_task(closing, "xnat-shared-logout"))

    async def _round(self, start: float) -> Round:
        reads = RoundReads(self.login.client)  # new each round: nothing read in one round answers the next
        logins = self.login.client.login_attempts
        try:
            return Round(start, reads, value=await self.fetch(self.login.client))
        except Exception as exc:  # every waiter sees it once, and decides what it means for its own wait
            # A refusal is news only if this round sent the login XNAT refused, with the connection's current
            # login: a poll still holding a client refused earlier must not block a login that works again.
            if (isinstance(exc, XnatAuthError) and self.login.client.credentials_refused
                    and self.login.client.login_attempts > logins
                    and self.registry.logins.get(self.login.key) is self.login):
                self.registry.refused(self.login.key, exc)
            return Round(start, reads, error=exc)


class Registry:
    """The shared logins and polls of one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = weakref.ref(loop)  # not a strong one: the registries are weakly keyed by their loops
        self.logins: dict[LoginKey, SharedLogin] = {}
        self.polls: dict[tuple[LoginKey, Hashable], SharedPoll] = {}
        self.refusals: dict[LoginKey, tuple[float, XnatAuthError]] = {}
        self.closing: set[asyncio.Task] = set()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop()
        if loop is None:  # pragma: no cover - a registry is only reached from its running loop
            raise RuntimeError("the event loop of this registry is gone")
        return loop

    # ---- logins ------------------------------------------------------------------------------------
    def refused(self, key: LoginKey, exc: XnatAuthError) -> None:
        self.refusals[key] = (self.loop.time(), exc)

    def acquire(self, key: LoginKey, config: ClientConfig) -> SharedLogin:
        """The login for ``key``, made if needed; a refusal remembered for ``key`` is raised, nothing sent."""
        refused = self.refusals.get(key)
        if refused is not None:
            age = self.loop.time() - refused[0]
            if age < REFUSAL_MEMORY:
                raise remembered(refused[1], age)
            del self.refusals[key]
        login = self.logins.get(key)
        if login is None or login.client.credentials_refused:
            login = self.logins[key] = SharedLogin(key, config)
        login.users += 1
        return login

    def release(self, login: SharedLogin) -> Coroutine[Any, Any, None] | None:
        """One user fewer. The last one gets the client's closing (the logout) to await, or None."""
        login.users -= 1
        if login.users > 0:
            return None
        if self.logins.get(login.key) is login:
            del self.logins[login.key]
        return login.client.aclose()

    def release_soon(self, login: SharedLogin) -> None:
        """:meth:`release`, the logout sent in the background: a cancelled trigger does not wait for it."""
        closing = self.release(login)
        if closing is not None:
            task = detached_task(closing, "xnat-shared-logout")
            self.closing.add(task)
            task.add_done_callback(self.closing.discard)

    # ---- polls -------------------------------------------------------------------------------------
    def subscribe(self, conn_id: str, config: ClientConfig, what: Hashable, fetch: Fetch,
                  interval: float) -> Subscription:
        key = login_key(conn_id, config)
        poll = self.polls.get((key, what))
        if poll is None:
            poll = self.polls[(key, what)] = SharedPoll(self, what, self.acquire(key, config), fetch)
        sub: Subscription = Subscription(poll, interval)
        poll.add(sub)
        return sub

    def poll_ended(self, poll: SharedPoll) -> Coroutine[Any, Any, None] | None:
        key = (poll.login.key, poll.what)
        if self.polls.get(key) is poll:
            del self.polls[key]
        return self.release(poll.login)


_REGISTRIES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Registry] = weakref.WeakKeyDictionary()


def registry() -> Registry:
    """The registry of the running event loop (made on first use, gone with the loop)."""
    loop = asyncio.get_running_loop()
    reg = _REGISTRIES.get(loop)
    if reg is None:
        reg = _REGISTRIES[loop] = Registry(loop)
    return reg


@asynccontextmanager
async def subscription(conn_id: str, config: ClientConfig, what: Hashable, fetch: Fetch,
                       interval: float) -> AsyncIterator[Subscription]:
    """Wait on the shared poll ``what`` of the login for ``config`` (made if nobody polls it yet) until the block
    ends, however it ends (an event yielded, an error, the trigger cancelled)."""
    sub = registry().subscribe(conn_id, config, what, fetch, interval)
    try:
        yield sub
    finally:
        sub.poll.discard(sub)


@asynccontextmanager
async def shared_client(conn_id: str, config: ClientConfig) -> AsyncIterator[AsyncXnatClient]:
    """The shared login's client for a trigger that polls reads of its own (a container, a workflow)."""
    reg = registry()
    login = reg.acquire(login_key(conn_id, config), config)
    try:
        yield login.client
    finally:
        reg.release_soon(login)


def prearchive_listing(project: str) -> tuple[Hashable, Fetch]:
    """The shared read of a project's prearchive (``GET /data/prearchive/projects/{project}``)."""
    return ("prearchive", project), lambda xnat: xnat.list_prearchive(project)


def experiment_listing(project: str) -> tuple[Hashable, Fetch]:
    """The shared read of a project's experiments (``GET /data/projects/{project}/experiments``)."""
    return ("experiments", project), lambda xnat: xnat.list_experiments(project)
