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

from . import xnat_routes

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
        self.cut_at: int | None = None  # a fault: the body breaks off after this many bytes (see faults.py)
        self.was_cut = False

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
        if self.cut_at is not None:
            if self.bytes_read >= self.cut_at:
                self.was_cut = True
                raise XnatHttpError(400, "Incomplete request body.")
            n = min(n, self.cut_at - self.bytes_read)
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
    xnat: frozenset[str] = frozenset()  # the XNAT resource classes this handler stands for


def _refuse(status: int, message: str) -> Handler:
    def handler(req: Request) -> Response:
        raise XnatHttpError(status, message)
    return handler


class Router:
    """The emulator's routes, behind XNAT's own route table for everything under ``/data``.

    A ``/data`` request first goes through :func:`xnat_routes.match`, which picks the resource class XNAT's
    Restlet router would pick. The request reaches an emulator handler only if that handler is registered for
    that class (``xnat=``) and its pattern matches: a path XNAT has no template for answers 404 as XNAT does,
    even where a handler's pattern would accept it; a path that XNAT hands to a resource together with an
    unmatched rest is answered as that resource answers it (:meth:`_with_rest`). Paths outside ``/data``
    (``/xapi``, ``/``) are plain regex routes, 405 for a known path with another method.
    """

    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(self, methods: str | Iterable[str], pattern: str, handler: Handler, public: bool = False,
            xnat: str | Iterable[str] = ()) -> None:
        """Serve ``pattern`` (a regex with named groups for the handler's parameters) with ``handler``; below
        ``/data``, ``xnat`` names the XNAT resource class(es) of xnat-routes.txt the handler stands for."""
        ms = frozenset([methods] if isinstance(methods, str) else methods)
        if "GET" in ms:
            ms = ms | {"HEAD"}
        classes = frozenset([xnat] if isinstance(xnat, str) else xnat)
        unknown = classes - {r.resource for r in xnat_routes.routes()}
        if unknown or (pattern.startswith("/data") and not classes):
            raise ValueError(f"{pattern}: a /data route must name XNAT resource classes of the route table "
                             f"(unknown: {sorted(unknown)})")
        self.routes.append(Route(ms, re.compile(pattern + r"\Z"), handler, public, classes))

    def match(self, method: str, path: str) -> tuple[Route | None, dict[str, str], bool]:
        """Return (route, params, path_known). ``path_known`` is True when only the method was wrong."""
        if path == "/data" or path.startswith("/data/"):
            return self._match_xnat(method, path)
        return self._match_plain(method, path, self.routes)

    @staticmethod
    def _match_plain(method: str, path: str, routes: Iterable[Route]) -> tuple[Route | None, dict[str, str], bool]:
        known = False
        for route in routes:
            m = route.pattern.match(path)
            if m:
                if method in route.methods:
                    return route, {k: unquote(v) for k, v in m.groupdict().items() if v is not None}, True
                known = True
        return None, {}, known

    def _match_xnat(self, method: str, path: str) -> tuple[Route | None, dict[str, str], bool]:
        found = xnat_routes.match(path[len("/data"):])
        if found is None:
            return None, {}, False  # Restlet: 404, no resource at all
        cls = found.route.resource
        if method not in found.route.methods and not (method == "HEAD" and "GET" in found.route.methods):
            return None, {}, True  # the resource does not allow the method: 405
        if found.rest and not xnat_routes.accepts_rest(cls, found.rest):
            return self._with_rest(method, path[:len(path) - len(found.rest)], found)
        route, params, _ = self._match_plain(method, path, [r for r in self.routes if cls in r.xnat])
        if route is None:  # XNAT serves this; the emulator does not
            return Route(frozenset([method]), re.compile(""), _refuse(
                501, f"The XNAT emulator does not implement {method} on {cls} ({found.route.template})."),
                xnat=frozenset([cls])), {}, True
        return route, params, True

    def _with_rest(self, method: str, prefix: str, found: xnat_routes.RouteMatch
                   ) -> tuple[Route | None, dict[str, str], bool]:
        """A path longer than any template: XNAT hands the rest to the resource of the longest template.

        ``ExperimentResource`` is the one clients meet (``/data/projects/P/experiments/E/scans`` and the like,
        which XNAT does not route): it answers a GET with the experiment's own document, a DELETE by deleting
        the experiment (the rest is ignored), a PUT with a bare 400 (only ``projects/...`` may follow). The
        emulator refuses a rest on any other resource with 404 (XNAT's answers there are not modelled)."""
        cls = found.route.resource
        if cls == "ExperimentResource" and found.rest.split("/")[1] not in ("projects", "status", "history"):
            if method in ("PUT", "POST"):
                return Route(frozenset([method]), re.compile(""), _refuse(400, "Bad Request")), {}, True
            return self._match_plain(method, prefix, [r for r in self.routes if cls in r.xnat])
        return Route(frozenset([method]), re.compile(""), _refuse(
            404, f"XNAT has no route for this path: {found.route.template} ({cls}) is followed by "
                 f"{found.rest!r}, which the emulator does not serve.")), {}, True

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
