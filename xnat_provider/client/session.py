"""The transport: one login reused, re-login on expiry, safe retries, typed errors, secrets redacted.

Why each rule:
- **One login.** XNAT creates an HTTP session for every basic-auth request that has no cookie, and warns that
  this can exhaust Tomcat; so the client logs in once (``/data/services/auth``) and rides on ``JSESSIONID``.
- **Re-login once on 401.** Sessions expire after 15 idle minutes; long jobs must survive that. Several
  threads may see the 401 at once: only the first logs in again (a generation counter tells the others the
  cookie is fresh). A second 401 is an :class:`XnatAuthError`, never a loop of logins: XNAT locks accounts
  after repeated failures.
- **Credentials XNAT refused are not sent again.** When a login is refused (401: a wrong or changed password,
  a revoked or expired alias token, a locked account), the client remembers it: every request waiting for that
  login and every later one fails with :class:`XnatAuthError` at once, without a request. So one expiry met by
  many threads costs one failed login, not one per thread or per request. An explicit :meth:`XnatSession.login`
  (or a new client) tries again.
- **Re-login once when served as guest.** A site that does not require a login (``requireLogin=false``) never
  answers 401: a request whose session has expired is served as the ``guest`` user, so private data reads as
  404 or empty listings and writes fail (403) or, for a file upload, answer 200 and store nothing. XNAT then
  starts a new HTTP session and sends a new ``JSESSIONID``, which is how the client notices: only a login may
  set the session cookie in its jar (:class:`SessionCookiePolicy`); an answer carrying another one means the
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
"""

from __future__ import annotations

import http.cookiejar
import logging
import math
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit

import requests
import tenacity

from .. import __version__
from .errors import RedactedCause, XnatAuthError, XnatBadInputError, XnatError, XnatServerError
from .protocol import TRANSIENT_STATUSES, looks_like_html, raise_for_answer

log = logging.getLogger("xnat_provider.client")

IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
SESSION_COOKIE = "JSESSIONID"
GUEST_USER = "guest"  # XNAT's Users.DEFAULT_GUEST_USERNAME
_LOGIN_PATH = "/data/services/auth"
_SENT_SESSION_RE = re.compile(rf"(?:^|;)\s*{SESSION_COOKIE}=([^;\s]*)")
_AUTH_USER_RE = re.compile(r"^User '(.*)' is logged in")

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


class SessionCookiePolicy(http.cookiejar.DefaultCookiePolicy):
    """Only the answer to a login may set the session cookie in a client's jar.

    XNAT starts a new HTTP session for every request that comes without a live one (``XnatExpiredPasswordFilter``
    calls ``request.getSession()`` on every request) and sends its id as a new ``JSESSIONID``. Kept, that cookie
    would make every later request a guest's on an open site, and a late answer to one thread could overwrite the
    session another thread's re-login has just made. So the client keeps the cookie its login got, and takes a new
    one on any other answer as the sign that its session is gone (:func:`session_replaced`)."""

    def set_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        if cookie.name == SESSION_COOKIE and not urlsplit(request.get_full_url()).path.endswith(_LOGIN_PATH):
            return False
        return super().set_ok(cookie, request)


def session_replaced(sent_cookie_header: str | None, answer_cookies: Iterable[http.cookiejar.Cookie]) -> bool:
    """True when an answer sets a session cookie other than the one its request carried: XNAT had no session
    for that request any more and served it in a new one (as ``guest`` on a site that does not require a login)."""
    new = next((c.value for c in answer_cookies if c.name == SESSION_COOKIE), None)
    if not new:
        return False
    sent = _SENT_SESSION_RE.search(sent_cookie_header or "")
    return new != (sent.group(1) if sent else None)


def auth_user(text: str) -> str | None:
    """The user named by ``GET /data/auth`` (``User 'alice' is logged in``), or None for any other answer."""
    m = _AUTH_USER_RE.match(text.strip())
    return m.group(1) if m else None


# Every secret any client in this process has learnt. XNAT puts token secrets in URL paths
# (tokens/validate/{alias}/{secret}) and urllib3 logs URLs at DEBUG, so its log records are redacted too.
_KNOWN_SECRETS: set[str] = set()


def redact_text(text: str, secrets: set[str] | None = None) -> str:
    for s in sorted(_KNOWN_SECRETS if secrets is None else secrets, key=len, reverse=True):
        if len(s) >= 3:
            text = text.replace(s, "***")
    return text


def redacted_cause(exc: BaseException, redact: Callable[[str], str], reached_server: bool = True,
                   limit: int = 500) -> RedactedCause:
    """The stand-in chained in place of an HTTP library's exception (see :class:`RedactedCause`)."""
    kind = type(exc)
    return RedactedCause(f"{kind.__module__}.{kind.__qualname__}", redact(str(exc))[:limit],
                         reached_server=reached_server)


def chained(error: XnatError, cause: BaseException | None) -> XnatError:
    """``error`` with ``cause`` as its ``__cause__`` and no ``__context__``: raise it outside the ``except``
    block that caught the library's exception, so that the exception is not its context either."""
    error.__cause__ = cause
    error.__context__ = None
    error.__suppress_context__ = True
    return error


def transport_error(method: str, where: str, kind: str, detail: str, cause: BaseException) -> XnatError:
    """The typed error for a failure of either client's HTTP library, ``kind`` being what the library's exception
    means: ``unsendable`` (nothing could be sent: :class:`XnatBadInputError`), ``cut`` (an answer cut or damaged
    mid-body), ``broken`` (no answer) or anything else: :class:`XnatServerError` with no status, ambiguous, since a
    POST may have taken effect. Chained to ``cause``, the redacted stand-in (:func:`redacted_cause`)."""
    if kind == "unsendable":
        return chained(XnatBadInputError(f"{method} {where}: not sent, the request is invalid ({detail})",
                                         method=method, path=where), cause)
    what = {"cut": f"the answer from XNAT was cut short ({detail}); its effect is unknown",
            "broken": f"no answer from XNAT ({detail})"}.get(kind, f"the request failed ({detail})")
    return chained(XnatServerError(f"{method} {where}: {what}", method=method, path=where), cause)


def reached_server(exc: BaseException) -> bool:
    """False when a requests failure surely happened before the request reached the server."""
    return not isinstance(exc, requests.exceptions.ConnectTimeout) and "NewConnectionError" not in repr(exc)


class Secrets:
    """The secrets one client has learnt (password, token secrets, session ids): redacted from its messages
    and, process-wide, from log records, and handed to ``on_secret`` (Airflow's masking) once each."""

    def __init__(self, on_secret: Callable[[str], None] | None):
        self._known: set[str] = set()
        self._on_secret = on_secret

    def add(self, value: str | None) -> None:
        if not value:
            return
        # As the secret itself, and as it reads in a URL (a token secret in a path, percent-encoded).
        for form in dict.fromkeys((value, quote(value, safe=""), quote_plus(value))):
            if form not in self._known:
                self._known.add(form)
                _KNOWN_SECRETS.add(form)
                if self._on_secret:
                    self._on_secret(form)

    def redact(self, text: str) -> str:
        return redact_text(text, self._known)


class _RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _KNOWN_SECRETS:
            message = record.getMessage()
            clean = redact_text(message)
            if clean != message:
                record.msg, record.args = clean, None
        return True


for _name in ("urllib3.connectionpool", "xnat_provider.client"):
    logging.getLogger(_name).addFilter(_RedactingFilter())
Body = bytes | str | Iterable[bytes] | Callable[[], Any] | None


@dataclass
class ClientConfig:
    """How to reach XNAT. ``url`` may carry a path prefix (``https://host/xnat``); without a scheme it is https.

    ``user`` may be an alias token's alias (then ``password`` is its secret). ``verify`` is True, False or a
    CA bundle path. ``retries`` counts attempts of an idempotent request; ``backoff`` is the first wait in
    seconds, doubled each time up to ``backoff_max``. ``settle_seconds`` is how long to look for the effect of an
    import or archive whose answer was lost before sending it again (XNAT may still be working on it).
    ``on_secret`` is called with every secret the client
    learns (password, token secrets, session ids) so that a host, such as Airflow, can mask it in logs.

    Every value is checked here, before any request: a bad one raises :class:`XnatBadInputError` (a URL that is
    not ``http(s)://host[:port][/path]`` or carries credentials, ``retries`` below 1, a timeout that is not a
    positive number, a negative backoff or settle time, ``workers`` below 1, ``verify`` other than True, False or
    the path of an existing CA bundle: never None or an empty string, which would turn certificate checks off).
    """

    url: str
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    verify: bool | str = True
    connect_timeout: float = 10.0
    read_timeout: float = 300.0
    retries: int = 5
    backoff: float = 1.0
    backoff_max: float = 60.0
    workers: int = 4
    settle_seconds: float = 30.0
    user_agent: str = f"airflow-provider-xnat/{__version__}"
    on_secret: Callable[[str], None] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.url = _checked_url(self.url)
        _check_number("retries", self.retries, minimum=1, integer=True)
        _check_number("workers", self.workers, minimum=1, integer=True)
        for name in ("connect_timeout", "read_timeout"):
            _check_number(name, getattr(self, name), positive=True)
        for name in ("backoff", "backoff_max", "settle_seconds"):
            _check_number(name, getattr(self, name), minimum=0)
        if not isinstance(self.verify, bool):
            if not isinstance(self.verify, str) or not self.verify.strip():
                raise XnatBadInputError(f"verify must be True, False or the path of a CA bundle, not {self.verify!r}"
                                        " (only an explicit False turns certificate checks off)")
            if not os.path.exists(self.verify):
                raise XnatBadInputError(f"verify: no CA bundle (file or folder) at {self.verify!r}")
        for name in ("user", "password"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise XnatBadInputError(f"{name} must be a string or None")


def _checked_url(url: object) -> str:
    """``url`` as ``scheme://host[:port][/path]`` (https when no scheme is given), or XnatBadInputError."""
    expected = "expected http(s)://host[:port][/path]"
    if not isinstance(url, str) or not url.strip():
        raise XnatBadInputError(f"Invalid XNAT URL {url!r}: {expected}")
    text = url.strip()
    parts = urlsplit(text if "://" in text else f"https://{text}")
    if parts.scheme not in ("http", "https") or not parts.netloc or not parts.hostname:
        raise XnatBadInputError(f"Invalid XNAT URL {url!r}: {expected}")
    if parts.username is not None or parts.password is not None:
        # Never echo it: the part before '@' may be a password.
        raise XnatBadInputError("Invalid XNAT URL: it carries credentials (user:password@); give the login and "
                                "password (or token alias and secret) separately")
    if any(c.isspace() for c in text):
        raise XnatBadInputError(f"Invalid XNAT URL {url!r}: it contains white space")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in 0-65535
    except ValueError:
        raise XnatBadInputError(f"Invalid XNAT URL {url!r}: bad port; {expected}") from None
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def _check_number(name: str, value: object, *, minimum: float | None = None, positive: bool = False,
                  integer: bool = False) -> None:
    kinds = (int,) if integer else (int, float)
    ok = isinstance(value, kinds) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (minimum is None or value >= minimum) and (not positive or value > 0)  # type: ignore[operator]
    if not ok:
        what = "an integer" if integer else "a finite number"
        bound = (f" of at least {minimum:g}" if minimum is not None else "") + (" above 0" if positive else "")
        raise XnatBadInputError(f"{name} must be {what}{bound}, not {value!r}")


class _RetryAfter(tenacity.wait.wait_base):
    """Exponential backoff with full jitter, or the server's ``Retry-After`` when it sent one."""

    def __init__(self, initial: float, maximum: float):
        self.initial = initial
        self.maximum = maximum

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        after = getattr(exc, "retry_after", None)
        if after is not None:
            return min(float(after), self.maximum)
        ceiling = min(self.initial * 2 ** (retry_state.attempt_number - 1), self.maximum)
        return random.uniform(ceiling / 2, ceiling)


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, TRANSPORT_ERRORS):
        return True  # no answer, or an answer cut mid-body
    return isinstance(exc, XnatServerError) and exc.status in TRANSIENT_STATUSES


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


class XnatSession:
    """An authenticated connection to one XNAT server, safe to share between threads."""

    def __init__(self, config: ClientConfig):
        self.config = config
        self.base_url = config.url
        self.http = _HttpSession()
        self.http.headers["User-Agent"] = config.user_agent
        self.http.verify = config.verify
        self.http.cookies.set_policy(SessionCookiePolicy())
        self._lock = threading.Lock()
        self._generation = 0
        self._logged_in = False
        self._refused: str | None = None  # why XNAT refused this client's credentials: not sent again
        self._rebased = False
        self.secrets = Secrets(config.on_secret)
        self.add_secret, self.redact = self.secrets.add, self.secrets.redact
        self.login_attempts = 0
        self.requests_sent = 0
        self.add_secret(config.password)

    # ---- login -------------------------------------------------------------------------------------
    @property
    def session_id(self) -> str | None:
        return self.http.cookies.get("JSESSIONID")

    def login(self) -> None:
        """Log in (once); later requests carry the session cookie, not the credentials.

        Called explicitly, it also sends credentials that XNAT refused earlier once more (requests never do, see
        :attr:`credentials_refused`): for a caller that has reason to think they work now."""
        with self._lock:
            self._refused = None
            if not self._logged_in:
                self._login_locked()

    @property
    def credentials_refused(self) -> bool:
        """True once XNAT has refused this client's credentials (401 to its login): requests then fail with
        :class:`XnatAuthError` without sending anything, until :meth:`login` is called."""
        return self._refused is not None

    def _ensure_login(self) -> None:
        """Log in unless logged in; never again with credentials XNAT refused (see :meth:`_login_locked`)."""
        with self._lock:
            if not self._logged_in:
                self._login_locked()

    def _refusal(self) -> XnatAuthError:
        return XnatAuthError(
            f"XNAT refused the login of {self.redact(self.config.user or '')!r} ({self._refused}); these "
            "credentials are not sent again (XNAT locks an account after repeated failed logins). Fix the "
            "password or alias token, then use a new client (or call login()).",
            method="POST", path=_LOGIN_PATH, status=401)

    def _login_locked(self) -> None:
        if self._refused is not None:
            raise self._refusal()
        if not self.config.user:
            raise XnatAuthError("No XNAT user configured: set a login (user or token alias) and password.")
        if not self._rebased:
            self._follow_site_redirect()
        self.login_attempts += 1
        url = self.base_url + _LOGIN_PATH
        failure: XnatError | None = None
        try:
            resp = self.http.post(url, data={"username": self.config.user, "password": self.config.password or ""},
                                  timeout=(self.config.connect_timeout, self.config.read_timeout),
                                  allow_redirects=False)
            text = resp.text
        except TRANSPORT_ERRORS as exc:
            cause = redacted_cause(exc, self.redact, reached_server(exc))
            what = ("the answer was cut short" if isinstance(exc, CUT_ERRORS)
                    else f"could not reach XNAT at {self.base_url}")
            failure = chained(XnatServerError(f"POST {_LOGIN_PATH}: {what}: {type(exc).__name__}",
                                              method="POST", path=_LOGIN_PATH), cause)
        if failure is not None:
            raise failure
        self.requests_sent += 1
        if resp.status_code != 200 or looks_like_html(text):
            try:
                raise_for_answer("POST", _LOGIN_PATH, resp.status_code, text, self.redact)
            except XnatAuthError as exc:
                self._refused = str(exc)
                log.error("XNAT refused the login of %s (%s): not sending these credentials again",
                          self.redact(self.config.user), exc)
                raise
        sid = text.strip()
        self.add_secret(sid)
        if not self.http.cookies.get("JSESSIONID"):
            host = urlsplit(self.base_url).hostname or ""
            self.http.cookies.set("JSESSIONID", sid, domain=host, path="/")
        self._generation += 1
        self._logged_in = True
        log.info("Logged in to XNAT at %s as %s", self.base_url, self.redact(self.config.user))

    def _follow_site_redirect(self) -> None:
        """A server URL that redirects (http to https, a moved path) is followed once and used from then on."""
        self._rebased = True
        try:
            resp = self.http.get(self.base_url + "/", timeout=(self.config.connect_timeout, 30), allow_redirects=True)
        except TRANSPORT_ERRORS:
            return  # the login request reports the connection problem
        self.requests_sent += 1 + len(resp.history)
        if not resp.history:
            return
        final = resp.url
        m = re.match(r"(.*?)/(?:app|data)/", final)
        new_base = (m.group(1) if m else final).rstrip("/")
        if new_base and new_base != self.base_url:
            log.warning("XNAT at %s redirects to %s; using that from now on", self.base_url, new_base)
            self.base_url = new_base

    def _relogin(self, generation: int, confirm: bool = False) -> bool:
        """Log in again unless another thread has since (then True at once). With ``confirm``, first ask XNAT
        whether the session is really gone (:meth:`_session_gone`); False when it is not and nothing was done."""
        with self._lock:
            if self._refused is not None:
                raise self._refusal()  # a re-login by another thread was refused: not again
            if self._generation != generation:
                return True  # another thread already renewed the session
            if confirm and not self._session_gone():
                return False
            self.http.cookies.clear()
            self._logged_in = False
            log.info("XNAT session expired; logging in again")
            self._login_locked()
            return True

    def _session_gone(self) -> bool:
        """``GET /data/auth`` with the session cookie: True unless XNAT names a user other than ``guest``."""
        try:
            resp = self.http.get(self.url("/data/auth"), timeout=(self.config.connect_timeout, 30),
                                 allow_redirects=False)
            text = resp.text
        except TRANSPORT_ERRORS:
            return True  # cannot tell; the login that follows reports an unreachable server
        self.requests_sent += 1
        user = auth_user(text) if resp.status_code == 200 else None
        resp.close()
        if user is not None and user.lower() != GUEST_USER:
            return False
        log.info("XNAT served a request without this client's session (GET /data/auth: %s): the session expired "
                 "on a site that does not require a login", f"user {user!r}" if user else resp.status_code)
        return True

    def logout(self) -> None:
        with self._lock:
            if self._logged_in:
                try:
                    self.http.delete(self.base_url + "/data/JSESSION", timeout=(self.config.connect_timeout, 30))
                except requests.RequestException:
                    pass
                self._logged_in = False
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
        retry = method in IDEMPOTENT if retry is None else retry

        def attempt() -> requests.Response:
            return self._attempt(method, path, params, data, headers, stream, allow_redirects, expect_html,
                                 ok_statuses)

        if not retry:
            try:
                return attempt()
            except requests.RequestException as exc:
                failure = self._transport_error(method, path, exc)
            raise failure  # outside the except block: the library's exception is not even its context
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.config.retries),
            wait=_RetryAfter(self.config.backoff, self.config.backoff_max),
            retry=tenacity.retry_if_exception(is_retryable),
            before_sleep=lambda rs: log.warning(
                "%s %s failed (%s); retry %d of %d", method, self.redact(path),
                self.redact(str(rs.outcome.exception())) if rs.outcome else "?", rs.attempt_number,
                self.config.retries - 1),
            reraise=True,
        )
        try:
            return retrying(attempt)
        except requests.RequestException as exc:
            failure = self._transport_error(method, path, exc)
        raise failure

    def _transport_error(self, method: str, path: str, exc: requests.RequestException) -> XnatError:
        """The typed error for a failure of the HTTP library, chained to a redacted stand-in
        (:func:`redacted_cause`) rather than to ``exc``, whose URL may hold a token secret: an ambiguous
        :class:`XnatServerError` (no status) when the exchange broke (no answer, or an answer cut or damaged
        mid-body: for a POST the effect is unknown), :class:`XnatBadInputError` when nothing could be sent."""
        where = self.redact(path)
        cause = redacted_cause(exc, self.redact, reached_server(exc))
        detail = f"{type(exc).__name__}: {self.redact(str(exc))[:200]}"
        kind = ("unsendable" if isinstance(exc, UNSENDABLE_ERRORS) else "cut" if isinstance(exc, CUT_ERRORS)
                else "broken" if isinstance(exc, TRANSPORT_ERRORS) else "other")
        return transport_error(method, where, kind, detail, cause)

    def _attempt(self, method: str, path: str, params: Any, data: Body, headers: dict[str, str] | None,
                 stream: bool, allow_redirects: bool, expect_html: bool,
                 ok_statuses: tuple[int, ...]) -> requests.Response:
        self._ensure_login()
        generation = self._generation
        resp = self._send(method, path, params, data, headers, stream, allow_redirects)
        if resp.status_code == 401:
            resp.close()
            self._relogin(generation)
            resp = self._send(method, path, params, data, headers, stream, allow_redirects)
            if resp.status_code == 401:
                resp.close()
                raise XnatAuthError(f"{method} {self.redact(path)}: 401 even after logging in again",
                                    method=method, path=self.redact(path), status=401)
        elif self._session_replaced(resp) and self._relogin(generation, confirm=True):
            resp.close()
            status = resp.status_code
            where = self.redact(path)
            if method not in IDEMPOTENT and status != 403:
                # A 403 is XNAT refusing before acting; any other answer to a POST may have done something.
                raise XnatServerError(f"{method} {where}: the XNAT session had expired and XNAT served the request "
                                      f"as the guest user (HTTP {status}); logged in again, but a {method} whose "
                                      "effect is unknown is not resent here", method=method, path=where)
            resp = self._send(method, path, params, data, headers, stream, allow_redirects)
            if resp.status_code == 401 or self._session_replaced(resp):
                resp.close()
                raise XnatAuthError(f"{method} {where}: XNAT served the request as the guest user even after "
                                    "logging in again", method=method, path=where, status=resp.status_code)
        if resp.status_code in ok_statuses:
            return resp
        if resp.status_code >= 400:
            body = resp.text
            retry_after = resp.headers.get("Retry-After")
            try:
                raise_for_answer(method, path, resp.status_code, body, self.redact)
            except XnatServerError as exc:
                if retry_after and retry_after.strip().isdigit():
                    exc.retry_after = int(retry_after)  # type: ignore[attr-defined]
                raise
        html = "text/html" in resp.headers.get("Content-Type", "")
        if html and not stream and not expect_html and looks_like_html(resp.text):
            raise_for_answer(method, path, resp.status_code, resp.text, self.redact)
        return resp

    @staticmethod
    def _session_replaced(resp: requests.Response) -> bool:
        """The answer came from a session other than the one sent: see :class:`SessionCookiePolicy`."""
        if not any(c.name == SESSION_COOKIE for c in resp.cookies):
            return False
        sent = resp.request.headers.get("Cookie") if resp.request is not None else None
        return session_replaced(sent, resp.cookies)

    def _send(self, method: str, path: str, params: Any, data: Body, headers: dict[str, str] | None,
              stream: bool, allow_redirects: bool) -> requests.Response:
        body = data() if callable(data) else data
        started = time.monotonic()
        resp = self.http.request(method, self.url(path), params=params, data=body, headers=headers, stream=stream,
                                 allow_redirects=allow_redirects,
                                 timeout=(self.config.connect_timeout, self.config.read_timeout))
        self.requests_sent += 1
        log.debug("%s %s -> %s in %.3f s", method, self.redact(path), resp.status_code, time.monotonic() - started)
        return resp
