"""The HTTP layer of the emulator: requests, responses, routing and XNAT's error pages.

Built on the standard library's threaded HTTP server so that the emulator needs nothing a user does not
already have, streams every body (request and response) instead of buffering it, and can misbehave on
purpose at the byte level (fault injection drops connections after K bytes, which a framework would hide).
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO
from urllib.parse import parse_qsl, unquote

CHUNK = 1024 * 1024


class XnatHttpError(Exception):
    """An error XNAT reports as a Restlet status page: the message goes into ``<h3>``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


REASONS = {
    200: "OK", 201: "Created", 204: "No Content", 206: "Partial Content", 301: "Moved Permanently",
    302: "Found", 303: "See Other", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 406: "Not Acceptable", 409: "Conflict",
    411: "Length Required", 416: "Requested Range Not Satisfiable", 417: "Expectation Failed",
    422: "Unprocessable Entity", 429: "Too Many Requests", 500: "Internal Server Error",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
}


def status_page(status: int, message: str) -> bytes:
    """Restlet 1.1's default status page, which is what XNAT answers errors with."""
    reason = REASONS.get(status, "Error")
    text = html.escape(message or reason)
    return (
        "<html>\n<head>\n   <title>Status page</title>\n</head>\n<body>\n"
        f"<h3>{text}</h3>\n"
        f"<p>You can get technical details <a href=\"http://www.w3.org/Protocols/rfc2616/rfc2616-sec10.html\">"
        f"here</a>.<br>\nPlease continue your visit at our <a href=\"/\">home page</a>.\n</p>\n"
        f"<!-- {status} {reason} -->\n</body>\n</html>\n"
    ).encode()


class BodyReader:
    """A request body as a stream, for both Content-Length and chunked transfer encoding.

    Clients stream generated bodies (a directory zipped on the fly) with chunked encoding, so the emulator
    must accept it; it never reads a whole body into memory unless a handler asks for ``read()``.
    """

    def __init__(self, rfile: BinaryIO, length: int | None, chunked: bool):
        self._rfile = rfile
        self._remaining = length if length is not None else 0
        self._chunked = chunked
        self._chunk_left = 0
        self._done = not chunked and not self._remaining
        self.bytes_read = 0

    @property
    def exhausted(self) -> bool:
        return self._done

    def _next_chunk(self) -> None:
        line = self._rfile.readline(65537)
        if not line:
            raise XnatHttpError(400, "Incomplete chunked request body.")
        size = int(line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while self._rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            self._done = True
        self._chunk_left = size

    def read(self, n: int = -1) -> bytes:
        if self._done:
            return b""
        if n is None or n < 0:
            return b"".join(iter(lambda: self.read(CHUNK), b""))
        if self._chunked:
            if self._chunk_left == 0:
                self._next_chunk()
                if self._done:
                    return b""
            data = self._rfile.read(min(n, self._chunk_left))
            if not data:
                raise XnatHttpError(400, "Incomplete chunked request body.")
            self._chunk_left -= len(data)
            if self._chunk_left == 0:
                self._rfile.readline(3)  # CRLF after each chunk
        else:
            data = self._rfile.read(min(n, self._remaining))
            if not data:
                raise XnatHttpError(400, "Incomplete request body.")
            self._remaining -= len(data)
            if self._remaining == 0:
                self._done = True
        self.bytes_read += len(data)
        return data

    def chunks(self, size: int = CHUNK) -> Iterator[bytes]:
        while True:
            data = self.read(size)
            if not data:
                return
            yield data

    def drain(self, limit: int) -> bool:
        """Discard what is left, up to ``limit`` bytes; True when the body was fully consumed."""
        while not self._done and self.bytes_read < limit:
            if not self.read(CHUNK):
                break
        return self._done


@dataclass
class Request:
    method: str
    path: str  # normalised: /REST and /data/archive folded onto /data, no trailing slash
    raw_path: str
    query: list[tuple[str, str]]
    headers: Any  # http.client.HTTPMessage (case-insensitive)
    body: BodyReader
    server: Any = None
    user: str | None = None
    session_id: str | None = None
    new_session: bool = False
    post_faults: list[Any] = field(default_factory=list)
    route_params: dict[str, str] = field(default_factory=dict)
    form: list[tuple[str, str]] = field(default_factory=list)
    trailing_slash: bool = False

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.query + self.form if k == name]

    def param(self, name: str, default: str | None = None) -> str | None:
        for k, v in reversed(self.query + self.form):
            if k == name:
                return v
        return default

    def first(self, *names: str, default: str | None = None) -> str | None:
        for n in names:
            v = self.param(n)
            if v not in (None, ""):
                return v
        return default

    def flag(self, name: str) -> bool:
        return (self.param(name) or "").lower() in ("true", "1", "yes", "y")

    @property
    def content_type(self) -> str:
        return (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()

    def load_form(self, limit: int = 1 << 20) -> None:
        """Fold an urlencoded body into the parameters, as Restlet does for form posts."""
        if self.content_type == "application/x-www-form-urlencoded" and not self.body.exhausted:
            data = self.body.read(limit + 1)
            if len(data) > limit:
                raise XnatHttpError(413, "Form body too large.")
            self.form = parse_qsl(data.decode("utf-8", "replace"), keep_blank_values=True)

    def format(self, default: str) -> str:
        return (self.param("format") or default).lower()


@dataclass
class Response:
    """What a handler answers. Exactly one of ``body``, ``file`` or ``stream`` carries the payload."""

    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain"
    headers: dict[str, str] = field(default_factory=dict)
    cookies: list[str] = field(default_factory=list)
    file: str | None = None  # a path served with Range support
    stream: Callable[[BinaryIO], None] | None = None  # writes its payload; sent chunked
    file_range: tuple[int, int] | None = None

    @classmethod
    def text(cls, text: str, status: int = 200, content_type: str = "text/plain") -> Response:
        return cls(status=status, body=text.encode(), content_type=content_type)

    @classmethod
    def error(cls, status: int, message: str) -> Response:
        return cls(status=status, body=status_page(status, message), content_type="text/html")


Handler = Callable[[Request], Response]


@dataclass
class Route:
    methods: frozenset[str]
    pattern: re.Pattern[str]
    handler: Handler
    public: bool = False


class Router:
    """Regex routes with named groups; a path that matches with the wrong method answers 405."""

    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(self, methods: str | Iterable[str], pattern: str, handler: Handler, public: bool = False) -> None:
        ms = frozenset([methods] if isinstance(methods, str) else methods)
        if "GET" in ms:
            ms = ms | {"HEAD"}
        self.routes.append(Route(ms, re.compile(pattern + r"\Z"), handler, public))

    def match(self, method: str, path: str) -> tuple[Route | None, dict[str, str], bool]:
        """Return (route, params, path_known). ``path_known`` is True when only the method was wrong."""
        known = False
        for route in self.routes:
            m = route.pattern.match(path)
            if m:
                if method in route.methods:
                    return route, {k: unquote(v) for k, v in m.groupdict().items() if v is not None}, True
                known = True
        return None, {}, known


    def path_public(self, path: str) -> bool:
        """True when a public route owns this path (so a wrong method is 405, not 401)."""
        return any(r.public and r.pattern.match(path) for r in self.routes)


def normalise_path(raw: str) -> tuple[str, bool]:
    """Fold XNAT's aliases: ``/REST`` is ``/data``; ``/data/archive/X`` is ``/data/X``."""
    path = raw.split("?", 1)[0]
    trailing = path.endswith("/") and len(path) > 1
    path = path.rstrip("/") or "/"
    path = re.sub(r"/{2,}", "/", path)
    if path == "/REST" or path.startswith("/REST/"):
        path = "/data" + path[5:]
    if path.startswith("/data/archive/"):
        path = "/data/" + path[len("/data/archive/"):]
    elif path == "/data/archive":
        path = "/data"
    return path, trailing
