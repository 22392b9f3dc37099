"""``AsyncXnatClient``: the polling calls for triggers, on httpx, with the sync client's semantics.

Triggers run in the triggerer's event loop and must never block it, so they use this client. It shares URL
building, answer parsing and error mapping with the sync client (``protocol``), and follows the same rules:
one login reused, one re-login on 401 or when an open site serves an expired session as guest (never a loop),
credentials XNAT refused never sent again (until an explicit :meth:`AsyncXnatClient.login`), retries with
backoff only for idempotent calls on connection errors, timeouts, answers cut mid-body, 429, 502, 503 and 504,
typed errors, secrets redacted (messages, and the :class:`~xnat_provider.client.errors.RedactedCause` chained
in place of httpx's exception).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

import httpx
import tenacity

from .errors import XnatAuthError, XnatError, XnatNotFoundError, XnatServerError
from .models import Experiment, PrearchiveSession, Scan
from .protocol import (
    EXPERIMENT_COLUMNS,
    base_path,
    experiment_from_item,
    experiments_from_rows,
    fields_from_item,
    first_item,
    is_transient,
    looks_like_html,
    prearchive_path,
    prearchive_sessions,
    prearchive_src,
    raise_for_answer,
    result_rows,
    scans_from_rows,
)
from .session import (
    GUEST_USER,
    ClientConfig,
    Secrets,
    SessionCookiePolicy,
    _RetryAfter,
    auth_user,
    chained,
    redacted_cause,
    session_replaced,
    transport_error,
)

log = logging.getLogger("xnat_provider.client")
_LOGIN_PATH = "/data/services/auth"
# The exchange broke: no answer, or an answer cut (httpx.RemoteProtocolError, httpx.ReadError) or damaged
# (httpx.DecodingError) mid-body. Retried for idempotent calls, as the sync client does.
BROKEN = (httpx.TransportError, httpx.DecodingError)
CUT = (httpx.RemoteProtocolError, httpx.ReadError, httpx.DecodingError)


def _reached_server(exc: BaseException) -> bool:
    """False when the request surely never reached XNAT (the connection was refused or never opened)."""
    return not isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))


class AsyncXnatClient:
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
        self.http.cookies.jar.set_policy(SessionCookiePolicy())  # only a login sets JSESSIONID
        self._lock = asyncio.Lock()
        self._generation = 0
        self._logged_in = False
        self._refused: str | None = None  # why XNAT refused these credentials: not sent again
        self.login_attempts = 0

    async def __aenter__(self) -> AsyncXnatClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._logged_in:
            try:
                await self.http.delete(self.base_url + "/data/JSESSION")
            except httpx.HTTPError:
                pass
            self._logged_in = False
        await self.http.aclose()

    # ---- login -------------------------------------------------------------------------------------
    async def login(self) -> None:
        """Log in unless logged in. Called explicitly, it also sends once more credentials that XNAT refused
        earlier (requests never do: see the sync client's ``XnatSession.login``)."""
        async with self._lock:
            self._refused = None
            if not self._logged_in:
                await self._login_locked()

    @property
    def credentials_refused(self) -> bool:
        """True once XNAT has refused this client's credentials; requests then fail at once, without a login."""
        return self._refused is not None

    async def _ensure_login(self) -> None:
        async with self._lock:
            if not self._logged_in:
                await self._login_locked()

    def _refusal(self) -> XnatAuthError:
        return XnatAuthError(
            f"XNAT refused the login of {self.redact(self.config.user or '')!r} ({self._refused}); these "
            "credentials are not sent again (XNAT locks an account after repeated failed logins). Fix the "
            "password or alias token, then use a new client (or call login()).",
            method="POST", path=_LOGIN_PATH, status=401)

    async def _login_locked(self) -> None:
        if self._refused is not None:
            raise self._refusal()
        if not self.config.user:
            raise XnatAuthError("No XNAT user configured: set a login (user or token alias) and password.")
        self.login_attempts += 1
        failure: XnatError | None = None
        try:
            resp = await self.http.post(self.base_url + _LOGIN_PATH,
                                        data={"username": self.config.user, "password": self.config.password or ""})
        except BROKEN as exc:
            what = "the answer was cut short" if isinstance(exc, CUT) else f"could not reach XNAT at {self.base_url}"
            failure = chained(XnatServerError(f"POST {_LOGIN_PATH}: {what}: {type(exc).__name__}", method="POST",
                                              path=_LOGIN_PATH), redacted_cause(exc, self.redact, _reached_server(exc)))
        if failure is not None:
            raise failure
        if resp.status_code != 200 or looks_like_html(resp.text):
            try:
                raise_for_answer("POST", _LOGIN_PATH, resp.status_code, resp.text, self.redact)
            except XnatAuthError as exc:
                self._refused = str(exc)
                log.error("XNAT refused the login of %s (%s): not sending these credentials again",
                          self.redact(self.config.user or ""), exc)
                raise
        sid = resp.text.strip()
        self.add_secret(sid)
        if not self.http.cookies.get("JSESSIONID"):
            self.http.cookies.set("JSESSIONID", sid)
        self._generation += 1
        self._logged_in = True

    async def _relogin(self, generation: int, confirm: bool = False) -> bool:
        """As the sync client's: True when the session was renewed (here or by a concurrent call); with
        ``confirm``, only after ``GET /data/auth`` shows the session is gone."""
        async with self._lock:
            if self._refused is not None:
                raise self._refusal()  # a re-login by another call was refused: not again
            if self._generation != generation:
                return True
            if confirm and not await self._session_gone():
                return False
            self.http.cookies.clear()
            self._logged_in = False
            await self._login_locked()
            return True

    async def _session_gone(self) -> bool:
        try:
            resp = await self.http.get(self.base_url + "/data/auth", follow_redirects=False)
        except BROKEN:
            return True
        user = auth_user(resp.text) if resp.status_code == 200 else None
        if user is not None and user.lower() != GUEST_USER:
            return False
        log.info("XNAT served a request without this client's session (GET /data/auth: %s): the session expired "
                 "on a site that does not require a login", f"user {user!r}" if user else resp.status_code)
        return True

    @staticmethod
    def _session_replaced(resp: httpx.Response) -> bool:
        try:
            return session_replaced(resp.request.headers.get("Cookie"), resp.cookies.jar)
        except RuntimeError:  # a response built without its request (a test double): no cookie to compare
            return False

    # ---- requests ----------------------------------------------------------------------------------
    async def request(self, method: str, path: str, params: dict[str, Any] | None = None) -> httpx.Response:
        """An idempotent call (GET, HEAD), retried on transient failures; returns a successful response."""
        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(self.config.retries),
            wait=_RetryAfter(self.config.backoff, self.config.backoff_max),
            retry=tenacity.retry_if_exception(lambda e: isinstance(e, BROKEN) or is_transient(e)),
            reraise=True)
        try:
            return await retrying(self._attempt, method.upper(), path, params)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            failure = self._transport_error(method, path, exc)
        raise failure  # outside the except block: httpx's exception is not even its context

    def _transport_error(self, method: str, path: str, exc: Exception) -> XnatError:
        """As the sync client's: an ambiguous :class:`XnatServerError` (no status) when the exchange broke,
        :class:`XnatBadInputError` when nothing could be sent, chained to a redacted stand-in of ``exc``."""
        where = self.redact(path)
        cause = redacted_cause(exc, self.redact, _reached_server(exc))
        detail = f"{type(exc).__name__}: {self.redact(str(exc))[:200]}"
        kind = ("unsendable" if isinstance(exc, (httpx.InvalidURL, httpx.UnsupportedProtocol)) else
                "cut" if isinstance(exc, CUT) else "broken" if isinstance(exc, BROKEN) else "other")
        return transport_error(method, where, kind, detail, cause)

    async def _attempt(self, method: str, path: str, params: dict[str, Any] | None) -> httpx.Response:
        await self._ensure_login()
        generation = self._generation
        resp = await self.http.request(method, self.base_url + path, params=params)
        if resp.status_code == 401:
            await self._relogin(generation)
            resp = await self.http.request(method, self.base_url + path, params=params)
            if resp.status_code == 401:
                raise XnatAuthError(f"{method} {self.redact(path)}: 401 even after logging in again",
                                    method=method, path=self.redact(path), status=401)
        elif self._session_replaced(resp) and await self._relogin(generation, confirm=True):
            # Served as guest (an open site, the session expired): every call here is a GET or HEAD, so resend.
            resp = await self.http.request(method, self.base_url + path, params=params)
            if resp.status_code == 401 or self._session_replaced(resp):
                raise XnatAuthError(f"{method} {self.redact(path)}: XNAT served the request as the guest user even "
                                    "after logging in again", method=method, path=self.redact(path),
                                    status=resp.status_code)
        if resp.status_code >= 400 or ("text/html" in resp.headers.get("Content-Type", "")
                                       and looks_like_html(resp.text)):
            raise_for_answer(method, path, resp.status_code, resp.text, self.redact)
        return resp

    async def _rows(self, path: str, **params: Any) -> list[dict[str, str]]:
        resp = await self.request("GET", path, {"format": "json", **params})
        return result_rows(resp.content, "GET", path)

    # ---- the polling calls -------------------------------------------------------------------------
    async def list_prearchive(self, project: str | None = None, status: str | Iterable[str] | None = None,
                              study_uid: str | None = None) -> list[PrearchiveSession]:
        return prearchive_sessions(await self._rows(prearchive_path(project)), status, study_uid)

    async def find_prearchive(self, session: PrearchiveSession | str) -> PrearchiveSession | None:
        src = prearchive_src(session)
        try:
            rows = await self._rows(src)
        except XnatNotFoundError:
            return None
        return PrearchiveSession.from_row(rows[0]) if rows else None

    async def _item(self, path: str) -> dict[str, Any]:
        resp = await self.request("GET", path, {"format": "json"})
        return first_item(resp.content, "GET", path)

    async def find_experiment(self, project: str, label: str) -> Experiment | None:
        """As the sync client's: the experiment by label or ID, subject label included (a second GET), or None
        when the experiment (or the project) is absent."""
        try:
            item = await self._item(base_path(project, experiment=label))
        except XnatNotFoundError:
            return None
        subject_id = item["data_fields"].get("subject_ID")
        subject_label = ""
        if subject_id:
            try:
                subject_label = (await self._item(base_path(project, subject_id)))["data_fields"].get("label", "")
            except XnatError:
                subject_label = ""
        return experiment_from_item(item, project, subject_label)

    async def get_fields(self, project: str, subject: str | None = None,
                         experiment: str | None = None) -> dict[str, str]:
        return fields_from_item(await self._item(base_path(project, subject, experiment)))

    async def experiment_path(self, project: str, experiment: str | Experiment) -> str:
        """As the sync client's: ``/data/experiments/{ID}``, where XNAT routes an experiment's scans and files
        (a label costs one GET to learn the ID; an :class:`Experiment` costs none)."""
        if isinstance(experiment, Experiment):
            return base_path(experiment=experiment.id)
        item = await self._item(base_path(project, experiment=experiment))
        return base_path(experiment=str(item["data_fields"]["ID"]))

    async def list_scans(self, project: str, experiment: str | Experiment) -> list[Scan]:
        path = await self.experiment_path(project, experiment)
        return scans_from_rows(await self._rows(f"{path}/scans"))

    async def list_experiments(self, project: str, subject: str | None = None) -> list[Experiment]:
        rows = await self._rows(f"{base_path(project, subject)}/experiments", columns=EXPERIMENT_COLUMNS)
        return experiments_from_rows(rows, project, subject)

    async def list_resources(self, path: str) -> list[dict[str, str]]:
        return await self._rows(f"{path}/resources")
