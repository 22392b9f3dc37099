"""What a client is configured with, and what it must never reveal: :class:`ClientConfig` and the secrets.

Shared by the sync and async clients (and by any other transport): the settings are checked here, before any
request, and every secret a client learns (password, token secrets, session ids) is redacted from its messages
and, process-wide, from log records.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote, quote_plus, urlsplit

from .. import __version__
from .errors import XnatBadInputError

# Every secret any client in this process has learnt. XNAT puts token secrets in URL paths
# (tokens/validate/{alias}/{secret}) and urllib3 logs URLs at DEBUG, so its log records are redacted too.
_KNOWN_SECRETS: set[str] = set()


def redact_text(text: str, secrets: set[str] | None = None) -> str:
    """``text`` with each secret (of ``secrets``, or of every client in the process) replaced by ``***``."""
    for s in sorted(_KNOWN_SECRETS if secrets is None else secrets, key=len, reverse=True):
        if len(s) >= 3:
            text = text.replace(s, "***")
    return text


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


@dataclass
class ClientConfig:
    """How to reach XNAT. ``url`` may carry a path prefix (``https://host/xnat``); without a scheme it is https.

    ``user`` may be an alias token's alias (then ``password`` is its secret). ``verify`` is True, False or a
    CA bundle path. ``retries`` counts attempts of an idempotent request; ``backoff`` is the first wait in
    seconds, doubled each time up to ``backoff_max``. ``settle_seconds`` is how long to look for the effect of an
    import or archive whose answer was lost before sending it again (XNAT may still be working on it).
    ``progress_interval`` is the least time in seconds between two progress lines of a long transfer (a line also
    needs another tenth of the total done; ``math.inf``: summaries only, see :mod:`.progress`).
    ``direct_io`` lets a download of a big file write around the page cache where the file system allows it
    (see :mod:`.part_file`); False writes every file through the page cache.
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
    progress_interval: float = 10.0
    direct_io: bool = True
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
        if not isinstance(self.direct_io, bool):
            raise XnatBadInputError(f"direct_io must be True or False, not {self.direct_io!r}")
        if self.progress_interval != math.inf:
            _check_number("progress_interval", self.progress_interval, minimum=0)
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
