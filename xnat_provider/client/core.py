"""The sans-I/O core of both clients: what to send, what an answer means, and what to do next.

The sync client (requests, :mod:`.transport`) and the async client (httpx, :mod:`.async_client`) differ only in how
they move bytes and how they wait (threads and a ``threading.Lock``, or an event loop and an ``asyncio.Lock``).
Every decision of XNAT's protocol is made here, once, from plain values (a status, headers, a body, the login
state), so that the two transports cannot drift apart and each rule can be tested without a server:

- :class:`LoginState`: one login shared by every caller, the refused-login memory, re-login decisions.
- :func:`attempt`: one attempt at a request, as a generator that yields what the transport must do next
  (:class:`Send` the request, :class:`Relogin`) and returns the :class:`Answer` to hand back, or raises the typed
  error. The transport only runs the steps (see :class:`Runner`), the way httpx runs an ``Auth.auth_flow``.
- :func:`check_answer`, :func:`session_gone`, :func:`auth_user`, :func:`session_replaced`: what an answer says.
- :class:`LibraryErrors`, :func:`transport_failure`, :func:`retry_policy`: what a failure of the HTTP library
  means (typed, redacted, ambiguous or not), and which failures are retried.

The rules themselves are described in :mod:`.transport`'s docstring.
"""

from __future__ import annotations

import contextlib
import enum
import http.cookiejar
import logging
import random
import re
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import urljoin, urlsplit

import tenacity

from .config import ClientConfig, Secrets
from .errors import RedactedCause, XnatAuthError, XnatBadInputError, XnatError, XnatServerError
from .protocol import is_transient, looks_like_html, raise_for_answer

log = logging.getLogger("xnat_provider.client")

LOGIN_PATH = "/data/services/auth"
AUTH_PATH = "/data/auth"  # "User 'alice' is logged in": who XNAT thinks this session is
LOGOUT_PATH = "/data/JSESSION"
SESSION_COOKIE = "JSESSIONID"
GUEST_USER = "guest"  # XNAT's Users.DEFAULT_GUEST_USERNAME
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
_SENT_SESSION_RE = re.compile(rf"(?:^|;)\s*{SESSION_COOKIE}=([^;\s]*)")
_AUTH_USER_RE = re.compile(r"^User '(.*)' is logged in")

S = TypeVar("S")
R = TypeVar("R")


# ---- the session cookie ----------------------------------------------------------------------------------------
class SessionCookiePolicy(http.cookiejar.DefaultCookiePolicy):
    """Only the answer to a login may set the session cookie in a client's jar (both libraries use a cookiejar).

    XNAT starts a new HTTP session for every request that comes without a live one (``XnatExpiredPasswordFilter``
    calls ``request.getSession()`` on every request) and sends its id as a new ``JSESSIONID``. Kept, that cookie
    would make every later request a guest's on an open site, and a late answer to one thread could overwrite the
    session another thread's re-login has just made. So the client keeps the cookie its login got, and takes a new
    one on any other answer as the sign that its session is gone (:func:`session_replaced`)."""

    def set_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        if cookie.name == SESSION_COOKIE and not urlsplit(request.get_full_url()).path.endswith(LOGIN_PATH):
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


def redirected_base(base_url: str, final_url: str) -> str | None:
    """The server URL to use from now on when ``base_url`` redirected to ``final_url`` (http to https, a moved
    path): the part before ``/app/`` or ``/data/``, or None when it is the same."""
    m = re.match(r"(.*?)/(?:app|data)/", final_url)
    new_base = (m.group(1) if m else final_url).rstrip("/")
    return new_base if new_base and new_base != base_url else None


REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_SITE_MOVES = 3  # a redirect loop between bases is an error, not an endless chase


def login_redirect(base_url: str, status: int, location: str | None) -> str | None:
    """The server URL to log in at instead, when the login (``POST {base_url}/data/services/auth``) was answered
    with a redirect to another base (http to https, a path prefix, another host); None for any other answer, or a
    redirect within the same base (XNAT's own login page, for instance), which stays the login's failure.

    The client sends no probe ahead of its login: a site URL that moved costs requests only where it did move.
    Never from https to http: the login would carry the password in clear."""
    if status not in REDIRECTS or not location:
        return None
    new_base = redirected_base(base_url, urljoin(base_url + LOGIN_PATH, location.strip()))
    return None if new_base is None or downgrade(base_url, new_base) else new_base


def downgrade(base_url: str, new_base: str) -> bool:
    return urlsplit(base_url).scheme == "https" and urlsplit(new_base).scheme != "https"


def moved_base(base_url: str, requested: str, final: str) -> str | None:
    """The new server URL when a request to ``requested`` (``base_url`` + a path) was redirected to the same path
    under another base (``final``): the site moved since the login. None for any other redirect (a 303 to another
    path, as the archive service answers), which says nothing about the site."""
    if not requested.startswith(base_url + "/"):
        return None
    rest = urlsplit(requested[len(base_url):]).path
    moved = urlsplit(final)
    if not rest or rest == "/" or not moved.path.endswith(rest):
        return None
    new_base = f"{moved.scheme}://{moved.netloc}{moved.path[:len(moved.path) - len(rest)]}".rstrip("/")
    ok = new_base != base_url and moved.scheme in ("http", "https") and not downgrade(base_url, new_base)
    return new_base if ok else None


def session_gone(status: int, text: str) -> bool:
    """Whether ``GET /data/auth`` (sent with the session cookie) shows the session is gone: True unless XNAT names
    a user other than ``guest``. Asked before a re-login when an answer came in a new session (an open site serves
    an expired session as guest), so that a stray new cookie never costs a login."""
    user = auth_user(text) if status == 200 else None
    if user is not None and user.lower() != GUEST_USER:
        return False
    log.info("XNAT served a request without this client's session (GET /data/auth: %s): the session expired "
             "on a site that does not require a login", f"user {user!r}" if user else status)
    return True


# ---- failures of the HTTP library ------------------------------------------------------------------------------
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


@dataclass(frozen=True)
class LibraryErrors:
    """What an HTTP library's exceptions mean, declared by each transport so that the core decides alike:
    ``any`` (every failure of the library), ``broken`` (no answer, or one cut or damaged mid-body: retried for
    idempotent calls, ambiguous for a POST), ``cut`` (the part of ``broken`` that had begun to answer),
    ``unsendable`` (nothing was sent) and ``reached`` (False when the request surely never reached XNAT)."""

    any: tuple[type[BaseException], ...]
    broken: tuple[type[BaseException], ...]
    cut: tuple[type[BaseException], ...]
    unsendable: tuple[type[BaseException], ...]
    reached: Callable[[BaseException], bool]

    def retryable(self, exc: BaseException) -> bool:
        """Worth another attempt of an idempotent call: a broken exchange, 429, 502, 503 or 504."""
        return isinstance(exc, self.broken) or is_transient(exc)


def transport_failure(method: str, path: str, exc: BaseException, errors: LibraryErrors,
                      redact: Callable[[str], str]) -> XnatError:
    """The typed error for a failure of the HTTP library, chained to a redacted stand-in (:func:`redacted_cause`)
    rather than to ``exc``, whose URL may hold a token secret: :class:`XnatBadInputError` when nothing could be
    sent; otherwise :class:`XnatServerError` with no status, ambiguous, since a POST may have taken effect."""
    where = redact(path)
    cause = redacted_cause(exc, redact, errors.reached(exc))
    detail = f"{type(exc).__name__}: {redact(str(exc))[:200]}"
    if isinstance(exc, errors.unsendable):
        return chained(XnatBadInputError(f"{method} {where}: not sent, the request is invalid ({detail})",
                                         method=method, path=where), cause)
    what = (f"the answer from XNAT was cut short ({detail}); its effect is unknown" if isinstance(exc, errors.cut)
            else f"no answer from XNAT ({detail})" if isinstance(exc, errors.broken)
            else f"the request failed ({detail})")
    return chained(XnatServerError(f"{method} {where}: {what}", method=method, path=where), cause)


def login_failure(base_url: str, exc: BaseException, errors: LibraryErrors,
                  redact: Callable[[str], str]) -> XnatError:
    """The error for a login that got no whole answer: ambiguous (no status), chained to a redacted stand-in."""
    what = "the answer was cut short" if isinstance(exc, errors.cut) else f"could not reach XNAT at {base_url}"
    return chained(XnatServerError(f"POST {LOGIN_PATH}: {what}: {type(exc).__name__}", method="POST",
                                   path=LOGIN_PATH), redacted_cause(exc, redact, errors.reached(exc)))


# ---- retries ---------------------------------------------------------------------------------------------------
class RetryWait(tenacity.wait.wait_base):
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


def retry_policy(config: ClientConfig, errors: LibraryErrors, method: str, path: str,
                 redact: Callable[[str], str]) -> dict[str, Any]:
    """The settings of ``tenacity.Retrying`` (or ``AsyncRetrying``) for one idempotent request: ``config.retries``
    attempts in all, :class:`RetryWait` between them, only on :meth:`LibraryErrors.retryable` failures."""
    def warn(state: tenacity.RetryCallState) -> None:
        reason = redact(str(state.outcome.exception())) if state.outcome else "?"
        log.warning("%s %s failed (%s); retry %d of %d", method, redact(path), reason, state.attempt_number,
                    config.retries - 1)

    return {"stop": tenacity.stop_after_attempt(config.retries), "wait": RetryWait(config.backoff, config.backoff_max),
            "retry": tenacity.retry_if_exception(errors.retryable), "before_sleep": warn, "reraise": True}


# ---- the login -------------------------------------------------------------------------------------------------
class ReloginStep(enum.Enum):
    """What a caller that met an expired session must do (see :meth:`LoginState.relogin_step`)."""

    RENEWED = "renewed"  # another caller renewed the session since: only resend
    CHECK = "check"  # ask XNAT (GET /data/auth) whether the session is gone, and log in again only if so
    LOGIN = "login"  # log in again now


class LoginState:
    """The login of one client, shared by all its callers; the transport holds its lock around every call.

    ``generation`` counts successful logins: a caller remembers the generation its request went out with, so
    that of many callers meeting the same expiry only the first logs in again. ``refused`` remembers why XNAT
    refused these credentials: they are not sent again (XNAT locks an account after repeated failed logins)
    until an explicit login (:meth:`allow_again`)."""

    def __init__(self, config: ClientConfig, secrets: Secrets):
        self.config = config
        self.secrets = secrets
        self.generation = 0
        self.logged_in = False
        self.refused: str | None = None
        self.attempts = 0

    @property
    def credentials_refused(self) -> bool:
        return self.refused is not None

    def allow_again(self) -> None:
        """An explicit login: send credentials XNAT refused once more (the caller has reason to think they work)."""
        self.refused = None

    def refusal(self) -> XnatAuthError:
        return XnatAuthError(
            f"XNAT refused the login of {self.secrets.redact(self.config.user or '')!r} ({self.refused}); these "
            "credentials are not sent again (XNAT locks an account after repeated failed logins). Fix the "
            "password or alias token, then use a new client (or call login()).",
            method="POST", path=LOGIN_PATH, status=401)

    def begin(self) -> dict[str, str]:
        """Before a login: raise when it must not be sent (credentials refused before, or no user), count it,
        and give the form to post to :data:`LOGIN_PATH`."""
        if self.refused is not None:
            raise self.refusal()
        if not self.config.user:
            raise XnatAuthError("No XNAT user configured: set a login (user or token alias) and password.")
        self.attempts += 1
        return {"username": self.config.user, "password": self.config.password or ""}

    def finish(self, status: int, text: str) -> str:
        """The session id in the login's answer (a secret from now on), or the typed error: a refusal (401) is
        remembered, so that neither waiting nor later callers send these credentials again."""
        if status != 200 or looks_like_html(text):
            try:
                raise_for_answer("POST", LOGIN_PATH, status, text, self.secrets.redact)
            except XnatAuthError as exc:
                self.refused = str(exc)
                log.error("XNAT refused the login of %s (%s): not sending these credentials again",
                          self.secrets.redact(self.config.user or ""), exc)
                raise
        sid = text.strip()
        self.secrets.add(sid)
        return sid

    def established(self, base_url: str) -> None:
        """The transport holds the new session cookie: requests ride on it from now on."""
        self.generation += 1
        self.logged_in = True
        log.info("Logged in to XNAT at %s as %s", base_url, self.secrets.redact(self.config.user or ""))

    def relogin_step(self, generation: int, confirm: bool) -> ReloginStep:
        """What to do for a request sent in ``generation`` whose answer showed an expired session (``confirm``:
        it only came in a new session, which may be a stray cookie). A refused re-login, by this caller or
        another, is raised: the credentials are not sent again."""
        if self.refused is not None:
            raise self.refusal()
        if self.generation != generation:
            return ReloginStep.RENEWED
        return ReloginStep.CHECK if confirm else ReloginStep.LOGIN

    def expired(self) -> None:
        """The session is gone: the next login is a new one."""
        self.logged_in = False
        log.info("XNAT session expired; logging in again")


# ---- one attempt at a request ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Answer:
    """What the core needs of an HTTP answer, taken from either library's response. ``body`` reads the text only
    when a rule needs it, so that a streamed download is not read here; ``replaced`` is
    :func:`session_replaced` of the answer's cookies."""

    status: int
    headers: Mapping[str, str]
    replaced: bool = False
    body: Callable[[], str] = str  # str() is ""


@dataclass(frozen=True)
class Send:
    """Send the request (again: a body given as a callable is made anew) and reply with its :class:`Answer`."""


SEND = Send()


@dataclass(frozen=True)
class Relogin:
    """Log in again unless another caller did since ``generation``; reply True once the session is new. With
    ``confirm``, first ask XNAT whether the session is really gone (:func:`session_gone`) and reply False, having
    done nothing, when it is not: the answer in hand is then the result. Without it (a 401) the answer in hand
    is spent, and may be released before the login."""

    generation: int
    confirm: bool = False


def attempt(method: str, path: str, generation: int, redact: Callable[[str], str], *,
            ok_statuses: tuple[int, ...] = (), stream: bool = False,
            expect_html: bool = False) -> Generator[Send | Relogin, Any, Answer]:
    """One attempt at a request sent while logged in at ``generation``: re-login once on 401, or once when
    served as guest (resent only when that is safe: :func:`guest_resend`); never a loop of logins."""
    answer: Answer = yield SEND
    if answer.status == 401:
        yield Relogin(generation)
        answer = yield SEND
        if answer.status == 401:
            raise XnatAuthError(f"{method} {redact(path)}: 401 even after logging in again",
                                method=method, path=redact(path), status=401)
    elif answer.replaced and (yield Relogin(generation, confirm=True)):
        guest_resend(method, path, answer.status, redact)
        answer = yield SEND
        if answer.status == 401 or answer.replaced:
            raise XnatAuthError(f"{method} {redact(path)}: XNAT served the request as the guest user even after "
                                "logging in again", method=method, path=redact(path), status=answer.status)
    check_answer(method, path, answer, redact, ok_statuses=ok_statuses, stream=stream, expect_html=expect_html)
    return answer


def guest_resend(method: str, path: str, status: int, redact: Callable[[str], str]) -> None:
    """May a request that the guest's session answered with ``status`` be sent again after the new login? An
    idempotent one may, and so may any refused with 403 (XNAT refuses before acting); any other answer to a
    POST may have done something: an ambiguous :class:`XnatServerError` (no status), for the caller to check."""
    if method in IDEMPOTENT or status == 403:
        return
    where = redact(path)
    raise XnatServerError(f"{method} {where}: the XNAT session had expired and XNAT served the request as the "
                          f"guest user (HTTP {status}); logged in again, but a {method} whose effect is unknown is "
                          "not resent here", method=method, path=where)


def check_answer(method: str, path: str, answer: Answer, redact: Callable[[str], str], *,
                 ok_statuses: tuple[int, ...] = (), stream: bool = False, expect_html: bool = False) -> None:
    """Raise the typed error for a failed answer: a status of 400 or more (with the server's ``Retry-After``
    kept for the backoff), or an HTML error page sent with a success status (unless the caller reads pages or
    streams). ``ok_statuses`` are statuses the caller handles itself (303 from the archive service, 206...)."""
    if answer.status in ok_statuses:
        return
    if answer.status >= 400:
        retry_after = answer.headers.get("Retry-After")
        try:
            raise_for_answer(method, path, answer.status, answer.body(), redact)
        except XnatServerError as exc:
            if retry_after and retry_after.strip().isdigit():
                exc.retry_after = int(retry_after)  # type: ignore[attr-defined]
            raise
    html = "text/html" in answer.headers.get("Content-Type", "")
    if html and not stream and not expect_html and looks_like_html(answer.body()):
        raise_for_answer(method, path, answer.status, answer.body(), redact)


# ---- running a flow --------------------------------------------------------------------------------------------
class Runner(Generic[S, R]):
    """Runs a flow (:func:`attempt`, or a lookup of :mod:`.protocol`) for a transport, sync or async alike::

        run = Runner(flow)
        while (step := run.step()) is not None:
            with run.replying():
                run.reply = ...  # the I/O the step asks for
        return run.result

    An :class:`XnatError` raised while replying goes into the flow, which may handle it (a lookup turns a 404
    into None) or let it out of :meth:`step`."""

    def __init__(self, flow: Generator[S, Any, R]):
        self._flow = flow
        self.reply: Any = None
        self.error: XnatError | None = None
        self.result: R | None = None

    def step(self) -> S | None:
        """The flow's next step, given the last reply (or error); None once the flow has its :attr:`result`."""
        error, reply, self.error, self.reply = self.error, self.reply, None, None
        try:
            return self._flow.throw(error) if error is not None else self._flow.send(reply)
        except StopIteration as done:
            self.result = done.value
            return None

    @contextlib.contextmanager
    def replying(self) -> Iterator[None]:
        try:
            yield
        except XnatError as exc:
            self.error = exc
