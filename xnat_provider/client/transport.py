"""The transport: one login reused, re-login on expiry, safe retries, typed errors, secrets redacted.

Why each rule:
- **One login.** XNAT creates an HTTP session for every basic-auth request that has no cookie, and warns that
  this can exhaust Tomcat; so the client logs in once (``/data/services/auth``) and rides on ``JSESSIONID``.
  Nothing is sent before it: a fresh client's first call costs two requests, the login and the call. A site URL
  that moved is followed where it shows: a login answered with a redirect to another base (http to https, a path
  prefix, another host; never https to http) is sent again there, a login answered 404 looks once at where the
  site's root redirects, and a later answer redirected to the same path under another base moves the client there.
- **Re-login once on 401.** Sessions expire after 15 idle minutes; long jobs must survive that. Several
  threads may see the 401 at once: only the first logs in again (a generation counter tells the others the
  cookie is fresh). A second 401 is an :class:`XnatAuthError`, never a loop of logins: XNAT locks accounts
  after repeated failures.
- **Credentials XNAT refused are not sent again.** When a login is refused (401: a wrong or changed password,
  a revoked or expired alias token, a locked account), the client remembers it: every request waiting for that
  login and every later one fails with :class:`XnatAuthError` at once, without a request. So one expiry met by
  many threads costs one failed login, not one per thread or per request. An explicit :meth:`XnatTransport.login`
  (or a new client) tries again.
- **Re-login once when served as guest.** A site that does not require a login (``requireLogin=false``) never
  answers 401: a request whose session has expired is served as the ``guest`` user, so private data reads as
  404 or empty listings and writes fail (403) or, for a file upload, answer 200 and store nothing. XNAT then
  starts a new HTTP session and sends a new ``JSESSIONID``, which is how the client notices: only a login may
  set the session cookie in its jar (:class:`~.core.SessionCookiePolicy`); an answer carrying another one means the
  session is gone. The client asks ``GET /data/auth`` who it is (a guest shows as ``User 'guest' is logged
  in``), logs in again through the same shared path as after a 401 (one login for all threads), and resends the
  request once if that is safe: an idempotent method, or a 403 (XNAT refused before doing anything). A POST
  answered otherwise raises an ambiguous :class:`XnatServerError` (no status), for its caller to check whether
  it took effect. Served as guest again after the new login: :class:`XnatAuthError`.
- **Retries only where safe.** GET, HEAD, PUT and DELETE are retried with exponential backoff and jitter on
  connection errors, timeouts, answers cut mid-body, 429, 502, 503 and 504 (honouring ``Retry-After``). POST
  (import, archive, batch services) is never resent here: a failure without a complete answer is an ambiguous
  :class:`XnatServerError` (no status), and those callers first look for its effect.
- **Errors say what happened.** Method, path, status and XNAT's ``<h3>`` message, with every known secret
  replaced by ``***``; an HTML error page answered with status 200 is an error too. A transport failure chains
  a :class:`~xnat_provider.client.errors.RedactedCause` (the library's exception type and redacted message),
  never the library's exception itself: its URL may hold a token secret.

This module is the requests transport and only moves bytes: every decision above is made by the sans-I/O core
(:mod:`.core`: the login state, one attempt as a flow of steps, what an answer or a library failure means), which
the async client (:mod:`.async_client`) runs over httpx.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
import tenacity

from . import core
from .config import ClientConfig, Secrets
from .core import chained, redacted_cause
from .protocol import Lookup

# Importable from here as before: the transfer modules chain their errors with these.
__all__ = ["ClientConfig", "XnatTransport", "chained", "redacted_cause"]

log = logging.getLogger("xnat_provider.client")
T = TypeVar("T")

# The exchange failed in transit: no answer (connection refused or reset, timeout) or an answer cut or damaged
# mid-body. Retried for idempotent calls; for a POST the effect is unknown (an ambiguous XnatServerError).
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError)
CUT_ERRORS: tuple[type[BaseException], ...] = (requests.exceptions.ChunkedEncodingError,
                                               requests.exceptions.ContentDecodingError)
# requests refused to build the request: nothing was sent.
UNSENDABLE_ERRORS: tuple[type[BaseException], ...] = (
    requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema, requests.exceptions.MissingSchema,
    requests.exceptions.InvalidHeader)


def reached_server(exc: BaseException) -> bool:
    """False when a requests failure surely happened before the request reached the server."""
    return not isinstance(exc, requests.exceptions.ConnectTimeout) and "NewConnectionError" not in repr(exc)


REQUESTS_ERRORS = core.LibraryErrors(any=(requests.RequestException,), broken=TRANSPORT_ERRORS, cut=CUT_ERRORS,
                                     unsendable=UNSENDABLE_ERRORS, reached=reached_server)
Body = bytes | str | Iterable[bytes] | Callable[[], Any] | None


class _HttpSession(requests.Session):
    """A requests session whose own TLS setting wins over the environment.

    requests replaces a session's ``verify`` with ``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE`` when a request does
    not name one, so a connection's ``ca_bundle`` (a lab's CA) or its explicit ``verify_ssl=false`` was silently
    replaced wherever those variables are set (many images set them). Only the default, ``verify=True``, takes
    the environment's bundle: the system's trust, as before. Proxies and the rest of the environment still apply.
    """

    def merge_environment_settings(self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any) -> Any:
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if verify is None and self.verify is not True:
            settings["verify"] = self.verify
        return settings


class XnatTransport:
    """An authenticated connection to one XNAT server, safe to share between threads."""

    def __init__(self, config: ClientConfig):
        self.config = config
        self.base_url = config.url
        self.http = _HttpSession()
        self.http.headers["User-Agent"] = config.user_agent
        self.http.verify = config.verify
        self.http.cookies.set_policy(core.SessionCookiePolicy())
        # One pooled connection per worker thread (requests keeps 10 by default and drops the rest after use).
        pool = max(10, config.workers)
        for prefix in ("http://", "https://"):
            self.http.mount(prefix, requests.adapters.HTTPAdapter(pool_connections=pool, pool_maxsize=pool))
        self._lock = threading.Lock()  # held around every use of the login state
        self.secrets = Secrets(config.on_secret)
        self.add_secret, self.redact = self.secrets.add, self.secrets.redact
        self._state = core.LoginState(config, self.secrets)
        self.requests_sent = 0
        self.add_secret(config.password)

    # ---- login -------------------------------------------------------------------------------------
    @property
    def session_id(self) -> str | None:
        return self.http.cookies.get(core.SESSION_COOKIE)

    @property
    def login_attempts(self) -> int:
        """Logins sent (or refused before sending: see :attr:`credentials_refused`) since the client was made."""
        return self._state.attempts

    def login(self) -> None:
        """Log in (once); later requests carry the session cookie, not the credentials.

        Called explicitly, it also sends credentials that XNAT refused earlier once more (requests never do, see
        :attr:`credentials_refused`): for a caller that has reason to think they work now."""
        with self._lock:
            self._state.allow_again()
            if not self._state.logged_in:
                self._login_locked()

    @property
    def credentials_refused(self) -> bool:
        """True once XNAT has refused this client's credentials (401 to its login): requests then fail with
        :class:`XnatAuthError` without sending anything, until :meth:`login` is called."""
        return self._state.credentials_refused

    def _ensure_login(self) -> None:
        """Log in unless logged in; never again with credentials XNAT refused (see :meth:`~.core.LoginState.begin`)."""
        with self._lock:
            if not self._state.logged_in:
                self._login_locked()

    def _login_locked(self) -> None:
        """The login: ``POST /data/services/auth``, sent first (no probe of the site ahead of it). Only when XNAT (or
        a proxy in front of it) answers it with a redirect to another base (http to https, a path prefix, another
        host) is the login sent there, and that base used from then on; a 404 (a site root that only redirects
        there, such as ``https://host`` for ``https://host/xnat``) costs one ``GET /`` to look for such a move."""
        form = self._state.begin()
        looked_at_root = False
        for moves in range(core.MAX_SITE_MOVES + 1):
            status, location, text = self._post_login(form)
            new_base = core.login_redirect(self.base_url, status, location)
            if new_base is None and status in (404, 405) and not looked_at_root:
                looked_at_root = True
                new_base = self._site_root_redirect()
            if new_base is None or moves == core.MAX_SITE_MOVES:
                break
            self._rebase(new_base)
        sid = self._state.finish(status, text)
        if not self.http.cookies.get(core.SESSION_COOKIE):
            host = urlsplit(self.base_url).hostname or ""
            self.http.cookies.set(core.SESSION_COOKIE, sid, domain=host, path="/")
        self._state.established(self.base_url)

    def _post_login(self, form: dict[str, str]) -> tuple[int, str | None, str]:
        """One login request, redirects not followed (a POST's body is not resent by a redirect): status,
        ``Location`` and body, or the ambiguous error for a login that got no whole answer."""
        failure = None
        try:
            resp = self.http.post(self.base_url + core.LOGIN_PATH, data=form, allow_redirects=False,
                                  timeout=(self.config.connect_timeout, self.config.read_timeout))
            text = resp.text
        except TRANSPORT_ERRORS as exc:
            failure = core.login_failure(self.base_url, exc, REQUESTS_ERRORS, self.redact)
        if failure is not None:
            raise failure  # outside the except block: the library's exception is not even its context
        self.requests_sent += 1
        return resp.status_code, resp.headers.get("Location"), text

    def _site_root_redirect(self) -> str | None:
        """Where ``GET /`` of the site ends up, when that is another base; None otherwise (or unreachable: the
        login's own answer is then the error to report)."""
        try:
            resp = self.http.get(self.base_url + "/", timeout=(self.config.connect_timeout, 30), allow_redirects=True)
            resp.close()
        except TRANSPORT_ERRORS:
            return None
        self.requests_sent += 1 + len(resp.history)
        return core.redirected_base(self.base_url, resp.url) if resp.history else None

    def _rebase(self, new_base: str) -> None:
        log.warning("XNAT at %s redirects to %s; using that from now on", self.base_url, new_base)
        self.base_url = new_base

    def _relogin(self, generation: int, confirm: bool = False) -> bool:
        """Log in again unless another thread has since (then True at once). With ``confirm``, first ask XNAT
        whether the session is really gone (:meth:`_session_gone`); False when it is not and nothing was done."""
        with self._lock:
            step = self._state.relogin_step(generation, confirm)
            if step is core.ReloginStep.CHECK and not self._session_gone():
                return False
            if step is not core.ReloginStep.RENEWED:
                self.http.cookies.clear()
                self._state.expired()
                self._login_locked()
            return True

    def _session_gone(self) -> bool:
        """``GET /data/auth`` with the session cookie (see :func:`~.core.session_gone`)."""
        try:
            resp = self.http.get(self.url(core.AUTH_PATH), timeout=(self.config.connect_timeout, 30),
                                 allow_redirects=False)
            text = resp.text
        except TRANSPORT_ERRORS:
            return True  # cannot tell; the login that follows reports an unreachable server
        self.requests_sent += 1
        resp.close()
        return core.session_gone(resp.status_code, text)

    def logout(self) -> None:
        with self._lock:
            if self._state.logged_in:
                try:
                    self.http.delete(self.base_url + core.LOGOUT_PATH, timeout=(self.config.connect_timeout, 30))
                except requests.RequestException:
                    pass
                self._state.logged_in = False
        self.http.close()

    # ---- requests ----------------------------------------------------------------------------------
    def url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else self.base_url + path

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | list[tuple[str, Any]] | None = None,
        data: Body = None,
        headers: dict[str, str] | None = None,
        stream: bool = False,
        retry: bool | None = None,
        allow_redirects: bool = True,
        expect_html: bool = False,
        ok_statuses: tuple[int, ...] = (),
    ) -> requests.Response:
        """Send a request and return a successful response, or raise the typed error.

        ``data`` may be a callable returning a fresh body, which a retry calls again (a stream cannot be
        re-read). ``retry`` defaults to True for idempotent methods only. ``ok_statuses`` are statuses the
        caller handles itself (for instance 303 from the archive service).
        """
        method = method.upper()
        retry = method in core.IDEMPOTENT if retry is None else retry

        def once() -> requests.Response:
            return self._attempt(method, path, params, data, headers, stream, allow_redirects, expect_html,
                                 ok_statuses)

        try:
            if not retry:
                return once()
            return tenacity.Retrying(**core.retry_policy(self.config, REQUESTS_ERRORS, method, path, self.redact))(once)
        except requests.RequestException as exc:
            failure = core.transport_failure(method, path, exc, REQUESTS_ERRORS, self.redact)
        raise failure  # outside the except block: the library's exception is not even its context

    def read(self, lookup: Lookup[T]) -> T:
        """The result of a lookup of :mod:`.protocol`, its reads sent as GETs (retried as any)."""
        run = core.Runner(lookup)
        while (step := run.step()) is not None:
            with run.replying():
                run.reply = step.parse(self.request("GET", step.path, params=step.query()).content)
        return run.result  # type: ignore[return-value]

    def _attempt(self, method: str, path: str, params: Any, data: Body, headers: dict[str, str] | None,
                 stream: bool, allow_redirects: bool, expect_html: bool,
                 ok_statuses: tuple[int, ...]) -> requests.Response:
        """One attempt (the core's :func:`~.core.attempt` decides): send, re-login, release spent answers."""
        self._ensure_login()
        run = core.Runner(core.attempt(method, path, self._state.generation, self.redact, ok_statuses=ok_statuses,
                             stream=stream, expect_html=expect_html))
        resp: requests.Response | None = None
        try:
            while (step := run.step()) is not None:
                if isinstance(step, core.Relogin):
                    if not step.confirm and resp is not None:
                        resp.close()  # a 401, spent: free its connection before the login
                    run.reply = self._relogin(step.generation, step.confirm)
                    continue
                if resp is not None:
                    resp.close()
                resp = self._send(method, path, params, data, headers, stream, allow_redirects)
                run.reply = self._answer(resp)
        except BaseException:
            if resp is not None:
                resp.close()
            raise
        assert resp is not None  # the flow sends before it returns
        return resp

    @staticmethod
    def _answer(resp: requests.Response) -> core.Answer:
        """What the core reads of a response. The session cookie an answer set is compared with the one its
        request carried (see :func:`~.core.session_replaced`)."""
        replaced = False
        if any(c.name == core.SESSION_COOKIE for c in resp.cookies):
            sent = resp.request.headers.get("Cookie") if resp.request is not None else None
            replaced = core.session_replaced(sent, resp.cookies)
        return core.Answer(resp.status_code, resp.headers, replaced, lambda: resp.text)

    def _send(self, method: str, path: str, params: Any, data: Body, headers: dict[str, str] | None,
              stream: bool, allow_redirects: bool) -> requests.Response:
        body = data() if callable(data) else data
        started = time.monotonic()
        resp = self.http.request(method, self.url(path), params=params, data=body, headers=headers, stream=stream,
                                 allow_redirects=allow_redirects,
                                 timeout=(self.config.connect_timeout, self.config.read_timeout))
        self.requests_sent += 1 + len(resp.history)
        if resp.history:  # followed: if it was the site that moved (same path, another base), go there directly
            moved = core.moved_base(self.base_url, self.url(path), resp.url)
            if moved is not None:
                with self._lock:
                    self._rebase(moved)
        log.debug("%s %s -> %s in %.3f s", method, self.redact(path), resp.status_code, time.monotonic() - started)
        return resp
