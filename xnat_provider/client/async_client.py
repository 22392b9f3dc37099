"""``AsyncXnatClient``: the polling calls for triggers, on httpx, with the sync client's semantics.

Triggers run in the triggerer's event loop and must never block it, so they use this client. It is a second
transport under the same sans-I/O core as the sync client (:mod:`.core`: login, re-login, the refused-login
memory, retries, error mapping) and runs the same lookups (:mod:`.protocol`), so it follows the same rules: one
login reused, one re-login on 401 or when an open site serves an expired session as guest (never a loop),
credentials XNAT refused never sent again (until an explicit :meth:`AsyncXnatClient.login`), a site URL that
redirects followed where it does (at the login, or a later answer moved to another base), retries with
backoff only for idempotent calls on connection errors, timeouts, answers cut mid-body, 429, 502, 503 and 504,
typed errors, secrets redacted (messages, and the :class:`~xnat_provider.client.errors.RedactedCause` chained
in place of httpx's exception).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any, TypeVar

import httpx
import tenacity

from . import core
from .config import ClientConfig, Secrets
from .containers import Container, Workflow, container_lookup, workflow_container_lookup, workflow_lookup
from .models import Experiment, PrearchiveSession, Scan
from .protocol import (
    Lookup,
    experiment_lookup,
    experiment_path_lookup,
    experiments_lookup,
    fields_lookup,
    listing,
    or_none,
    prearchive_lookup,
    prearchive_row_lookup,
    scans_lookup,
)

log = logging.getLogger("xnat_provider.client")
T = TypeVar("T")


def _reached_server(exc: BaseException) -> bool:
    """False when the request surely never reached XNAT (the connection was refused or never opened)."""
    return not isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))


# The exchange broke: no answer, or an answer cut (httpx.RemoteProtocolError, httpx.ReadError) or damaged
# (httpx.DecodingError) mid-body. Retried for idempotent calls, as the sync client does.
HTTPX_ERRORS = core.LibraryErrors(
    any=(httpx.HTTPError, httpx.InvalidURL), broken=(httpx.TransportError, httpx.DecodingError),
    cut=(httpx.RemoteProtocolError, httpx.ReadError, httpx.DecodingError),
    unsendable=(httpx.InvalidURL, httpx.UnsupportedProtocol), reached=_reached_server)


class AsyncReads:
    """The polling calls: each runs the sync client's lookup (:mod:`.protocol`), every read of it through
    :meth:`_get`. :class:`AsyncXnatClient` sends each read; a round of the triggers' shared polls answers the same
    read once for all its triggers (``xnat_provider.triggers.round_reads.RoundReads``), which is why the calls live
    apart from the transport: both get them, and the same lookups, from here."""

    async def _get(self, path: str, params: dict[str, str]) -> bytes:
        """The body of ``GET path?params`` (a successful answer), or the typed error."""
        raise NotImplementedError

    async def _read(self, lookup: Lookup[T]) -> T:
        """The result of a lookup of :mod:`.protocol`, as the sync client's ``XnatTransport.read``."""
        run = core.Runner(lookup)
        while (step := run.step()) is not None:
            with run.replying():
                run.reply = step.parse(await self._get(step.path, step.query()))
        return run.result  # type: ignore[return-value]

    async def list_prearchive(self, project: str | None = None, status: str | Iterable[str] | None = None,
                              study_uid: str | None = None) -> list[PrearchiveSession]:
        return await self._read(prearchive_lookup(project, status, study_uid))

    async def find_prearchive(self, session: PrearchiveSession | str) -> PrearchiveSession | None:
        return await self._read(or_none(prearchive_row_lookup(session)))

    async def find_experiment(self, project: str, label: str) -> Experiment | None:
        """As the sync client's: the experiment by label or ID, subject label included (a second GET), or None
        when the experiment (or the project) is absent."""
        return await self._read(or_none(experiment_lookup(project, label)))

    async def get_fields(self, project: str, subject: str | None = None,
                         experiment: str | None = None) -> dict[str, str]:
        return await self._read(fields_lookup(project, subject, experiment))

    async def experiment_path(self, project: str, experiment: str | Experiment) -> str:
        """As the sync client's: ``/data/experiments/{ID}``, where XNAT routes an experiment's scans and files
        (a label costs one GET to learn the ID; an :class:`Experiment` costs none)."""
        return await self._read(experiment_path_lookup(project, experiment))

    async def list_scans(self, project: str, experiment: str | Experiment) -> list[Scan]:
        return await self._read(scans_lookup(project, experiment))

    async def list_experiments(self, project: str, subject: str | None = None) -> list[Experiment]:
        return await self._read(experiments_lookup(project, subject))

    async def list_resources(self, path: str) -> list[dict[str, str]]:
        return await self._read(listing(f"{path}/resources"))


class AsyncXnatClient(AsyncReads):
    """Async access to the calls a trigger polls. Use as ``async with AsyncXnatClient(config) as xnat:``."""

    def __init__(self, config: ClientConfig):
        self.config = config
        self.base_url = config.url
        self.secrets = Secrets(config.on_secret)  # shared with the sync client's redaction of log records
        self.add_secret, self.redact = self.secrets.add, self.secrets.redact
        self.add_secret(config.password)
        self.http = httpx.AsyncClient(
            verify=config.verify, headers={"User-Agent": config.user_agent}, follow_redirects=True,
            timeout=httpx.Timeout(config.read_timeout, connect=config.connect_timeout))
        self.http.cookies.jar.set_policy(core.SessionCookiePolicy())  # only a login sets JSESSIONID
        self._lock = asyncio.Lock()  # held around every use of the login state
        self._state = core.LoginState(config, self.secrets)

    async def __aenter__(self) -> AsyncXnatClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._state.logged_in:
            try:
                await self.http.delete(self.base_url + core.LOGOUT_PATH)
            except httpx.HTTPError:
                pass
            self._state.logged_in = False
        await self.http.aclose()

    # ---- login -------------------------------------------------------------------------------------
    @property
    def login_attempts(self) -> int:
        return self._state.attempts

    @property
    def credentials_refused(self) -> bool:
        """True once XNAT has refused this client's credentials; requests then fail at once, without a login."""
        return self._state.credentials_refused

    async def login(self) -> None:
        """Log in unless logged in. Called explicitly, it also sends once more credentials that XNAT refused
        earlier (requests never do: see the sync client's ``XnatTransport.login``)."""
        async with self._lock:
            self._state.allow_again()
            if not self._state.logged_in:
                await self._login_locked()

    async def _ensure_login(self) -> None:
        async with self._lock:
            if not self._state.logged_in:
                await self._login_locked()

    async def _login_locked(self) -> None:
        """The login, as the sync client's ``XnatTransport._login_locked``: ``POST /data/services/auth`` first (no
        probe ahead of it); sent again at another base only when XNAT (or a proxy) answers it with a redirect there
        (http to https, a path prefix, another host; never https to http: :func:`~.core.login_redirect`), or,
        when it answers 404 or 405, where one ``GET /`` of the site ends up."""
        form = self._state.begin()
        looked_at_root = False
        for moves in range(core.MAX_SITE_MOVES + 1):
            status, location, text = await self._post_login(form)
            new_base = core.login_redirect(self.base_url, status, location)
            if new_base is None and status in (404, 405) and not looked_at_root:
                looked_at_root = True
                new_base = await self._site_root_redirect()
            if new_base is None or moves == core.MAX_SITE_MOVES:
                break
            self._rebase(new_base)
        sid = self._state.finish(status, text)
        if not self.http.cookies.get(core.SESSION_COOKIE):
            self.http.cookies.set(core.SESSION_COOKIE, sid)
        self._state.established(self.base_url)

    async def _post_login(self, form: dict[str, str]) -> tuple[int, str | None, str]:
        """One login request, redirects not followed (a redirected POST would not carry its form again): status,
        ``Location`` and body, or the ambiguous error for a login that got no whole answer."""
        failure = None
        try:
            resp = await self.http.post(self.base_url + core.LOGIN_PATH, data=form, follow_redirects=False)
        except HTTPX_ERRORS.broken as exc:
            failure = core.login_failure(self.base_url, exc, HTTPX_ERRORS, self.redact)
        if failure is not None:
            raise failure  # outside the except block: httpx's exception is not even its context
        return resp.status_code, resp.headers.get("Location"), resp.text

    async def _site_root_redirect(self) -> str | None:
        """Where ``GET /`` of the site ends up, when that is another base; None otherwise (or unreachable: the
        login's own answer is then the error to report)."""
        try:
            resp = await self.http.get(self.base_url + "/", follow_redirects=True)
        except HTTPX_ERRORS.broken:
            return None
        return core.redirected_base(self.base_url, str(resp.url)) if resp.history else None

    def _rebase(self, new_base: str) -> None:
        log.warning("XNAT at %s redirects to %s; using that from now on", self.base_url, new_base)
        self.base_url = new_base

    async def _relogin(self, generation: int, confirm: bool = False) -> bool:
        """As the sync client's: True when the session was renewed (here or by a concurrent call); with
        ``confirm``, only after ``GET /data/auth`` shows the session is gone."""
        async with self._lock:
            step = self._state.relogin_step(generation, confirm)
            if step is core.ReloginStep.CHECK:
                try:
                    resp = await self.http.get(self.base_url + core.AUTH_PATH, follow_redirects=False)
                except HTTPX_ERRORS.broken:
                    pass  # cannot tell; the login that follows reports an unreachable server
                else:
                    if not core.session_gone(resp.status_code, resp.text):
                        return False
            if step is not core.ReloginStep.RENEWED:
                self.http.cookies.clear()
                self._state.expired()
                await self._login_locked()
            return True

    # ---- requests ----------------------------------------------------------------------------------
    async def request(self, method: str, path: str, params: dict[str, Any] | None = None) -> httpx.Response:
        """An idempotent call (GET, HEAD), retried on transient failures; returns a successful response."""
        method = method.upper()
        retrying = tenacity.AsyncRetrying(**core.retry_policy(self.config, HTTPX_ERRORS, method, path, self.redact))
        try:
            return await retrying(self._attempt, method, path, params)
        except HTTPX_ERRORS.any as exc:
            failure = core.transport_failure(method, path, exc, HTTPX_ERRORS, self.redact)
        raise failure  # outside the except block: httpx's exception is not even its context

    async def _attempt(self, method: str, path: str, params: dict[str, Any] | None) -> httpx.Response:
        """One attempt (the core's :func:`~.core.attempt` decides); every call here is a GET or HEAD."""
        await self._ensure_login()
        run = core.Runner(core.attempt(method, path, self._state.generation, self.redact))
        while (step := run.step()) is not None:
            if isinstance(step, core.Relogin):
                run.reply = await self._relogin(step.generation, step.confirm)
            else:
                resp = await self.http.request(method, self.base_url + path, params=params)
                if resp.history:  # followed: if the site moved (same path, another base), go there directly
                    moved = core.moved_base(self.base_url, self.base_url + path, str(resp.url))
                    if moved is not None:
                        self._rebase(moved)
                run.reply = _answer(resp)
        return resp

    async def _get(self, path: str, params: dict[str, str]) -> bytes:
        return (await self.request("GET", path, params)).content

    # ---- the Container Service: following a launch (see :mod:`.containers`) -----------------------------
    async def get_workflow(self, workflow_id: str | int) -> Workflow:
        """As the sync client's: a launch's workflow (``GET /data/workflows/{id}?format=json``)."""
        return await self._read(workflow_lookup(workflow_id))

    async def workflow_container(self, workflow_id: str | int) -> str | None:
        """As the sync client's: the workflow's container id, None while queued, or
        :class:`~xnat_provider.client.errors.XnatContainerFailedError` when the launch failed before one existed."""
        return await self._read(workflow_container_lookup(workflow_id))

    async def get_container(self, container_id: str | int) -> Container:
        """As the sync client's: a container by database id or backend id (``GET /xapi/containers/{id}``)."""
        return await self._read(container_lookup(container_id))


def _answer(resp: httpx.Response) -> core.Answer:
    """What the core reads of a response (see :func:`~.core.session_replaced` for ``replaced``)."""
    try:
        replaced = core.session_replaced(resp.request.headers.get("Cookie"), resp.cookies.jar)
    except RuntimeError:  # a response built without its request (a test double): no cookie to compare
        replaced = False
    return core.Answer(resp.status_code, resp.headers, replaced, lambda: resp.text)
