"""The emulator's HTTP server: one thread per connection, HTTP/1.1 keep-alive, streamed bodies.

A request goes through: count it, fold path aliases, apply injected faults, route (404/405), authenticate
(401 with ``WWW-Authenticate``), run the handler, and write the answer: a byte string, a file (with Range and
``sendfile``), or a stream sent with chunked transfer encoding. A handler's unexpected exception becomes a
500 status page with a one-line message, never a traceback on the wire.
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import os
import socket
import threading
import time
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Protocol

from .access import GUEST, guest_gate
from .http import CHUNK, REASONS, BodyReader, Request, Response, XnatHttpError, normalise_path, status_page

if TYPE_CHECKING:
    from .auth import Auth
    from .control import Control
    from .faults import Faults
    from .http import Router
    from .model import Model

log = logging.getLogger("xnat_provider.testing")


class Site(Protocol):
    """What the server needs of the emulator to answer a request (``XnatEmulator`` is one).

    A protocol, not the emulator class, so that this module does not import ``emulator.py``, which imports it."""

    faults: Faults  # counts requests and injects faults
    control: Control  # ``/__emulator__/``
    router: Router  # the XNAT routes, with every API module's handlers
    auth: Auth  # authenticates, and sets the session cookies' lifetime
    model: Model  # for the guest's gate on an open site

    def tick(self) -> None:
        """Move the prearchive's clock on before a handler runs, so that a request sees the statuses due."""


class ConnectionDropped(Exception):
    """Raised inside the writer when an injected fault cuts the connection."""


class _BodyWriter:
    """Writes a response body, chunked or plain, and cuts the connection where a fault says so."""

    def __init__(self, handler: XnatRequestHandler, chunked: bool, drop_after: int | None):
        self.h = handler
        self.chunked = chunked
        self.drop_after = drop_after
        self.sent = 0
        self._buf: list[bytes] = []
        self._buffered = 0

    def _raw(self, data: bytes) -> None:
        if self.drop_after is not None and self.sent + len(data) > self.drop_after:
            keep = max(self.drop_after - self.sent, 0)
            if keep:
                self.h.wfile.write(data[:keep])
            self.h.drop_connection()
            raise ConnectionDropped()
        self.h.wfile.write(data)
        self.sent += len(data)

    def write(self, data: bytes) -> int:
        if not data:
            return 0
        if not self.chunked:
            self._raw(data)
            return len(data)
        self._buf.append(bytes(data))
        self._buffered += len(data)
        if self._buffered >= 256 * 1024:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self.chunked and self._buffered:
            data = b"".join(self._buf)
            self._buf, self._buffered = [], 0
            self.h.wfile.write(b"%x\r\n" % len(data))
            self._raw(data)
            self.h.wfile.write(b"\r\n")

    def close(self) -> None:
        self.flush()
        if self.chunked:
            self.h.wfile.write(b"0\r\n\r\n")

    # zipfile and tarfile ask for these on the stream they write to.
    def tell(self) -> int:
        raise OSError("unseekable")

    def seekable(self) -> bool:
        return False


class XnatRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out as separate writes; without TCP_NODELAY the client's delayed ACK holds every
    # small response back by ~40 ms (a real Tomcat sets TCP_NODELAY too).
    disable_nagle_algorithm = True
    server_version = "XNAT-emulator"
    sys_version = ""
    emulator: Site  # set on the subclass the server builds

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s - %s", self.address_string(), format % args)

    def drop_connection(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.wfile.flush()
        # A FIN after the bytes already written, not a reset: the client receives exactly what was sent
        # before the cut, as when a real link or gateway gives up mid-body.
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_WR)

    def _dispatch(self) -> None:
        emu = self.emulator
        try:
            length = self.headers.get("Content-Length")
            chunked = "chunked" in (self.headers.get("Transfer-Encoding") or "").lower()
            body = BodyReader(self.rfile, int(length) if length and not chunked else None, chunked)
        except ValueError:
            self._send(Response.error(400, "Invalid Content-Length."), None)
            return
        path, trailing = normalise_path(self.path)
        query = self.path.split("?", 1)[1] if "?" in self.path else ""
        from urllib.parse import parse_qsl

        req = Request(
            method=self.command, path=path, raw_path=self.path, query=parse_qsl(query, keep_blank_values=True),
            headers=self.headers, body=body, server=emu, trailing_slash=trailing,
        )
        if not path.startswith("/__emulator__"):  # the control API is not XNAT traffic
            emu.faults.count(self.command, path, self.headers.get("User-Agent") or "")
        drop_after: int | None = None
        try:
            resp = self._handle(req)
            for rule in req.post_faults:
                if rule.kind == "after_504":
                    resp = Response.error(504, "Gateway Timeout")
                elif rule.kind == "drop":
                    drop_after = rule.after_bytes
        except XnatHttpError as exc:
            resp = Response.error(exc.status, exc.message)
            resp.headers.update(exc.headers)
        except ConnectionDropped:
            return
        except Exception as exc:  # never a traceback on the wire
            log.exception("emulator handler failed: %s %s", self.command, self.path)
            resp = Response.error(500, f"Internal server error: {type(exc).__name__}: {exc}")
        if req.user and req.session_id:
            now_ms = int(emu.auth.clock() * 1000)
            resp.cookies.append(
                f'SESSION_EXPIRATION_TIME="{now_ms},{int(emu.auth.session_timeout * 1000)}"; Path=/'
            )
            if req.new_session:
                resp.cookies.append(f"JSESSIONID={req.session_id}; Path=/; HttpOnly")
        # Whatever the handler left unread is discarded (bounded), or the connection is closed.
        try:
            if not body.exhausted and not body.drain(64 * 1024 * 1024):
                self.close_connection = True
        except XnatHttpError:  # the body broke off while being discarded
            self.close_connection = True
        if body.was_cut:  # the sender is gone: nobody to answer; closed with its bytes unread (a reset)
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        try:
            self._send(resp, drop_after)
        except (ConnectionDropped, BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _handle(self, req: Request) -> Response:
        emu = self.emulator
        if req.path.startswith("/__emulator__"):
            return emu.control.handle(req)
        for rule in emu.faults.take(req.method, req.path):
            if rule.kind == "delay":
                time.sleep(rule.seconds)
            elif rule.kind == "fail":
                return Response.error(rule.status, rule.message)
            elif rule.kind == "error_200":
                return Response(status=200, body=status_page(500, rule.message), content_type="text/html")
            elif rule.kind == "cut_request":
                req.body.cut_at = rule.after_bytes
            else:
                req.post_faults.append(rule)
        route, params, known = emu.router.match(req.method, req.path)
        cookie_sid = None
        if self.headers.get("Cookie"):
            jar = SimpleCookie()
            try:
                jar.load(self.headers["Cookie"])
            except Exception:
                jar = SimpleCookie()
            if "JSESSIONID" in jar:
                cookie_sid = jar["JSESSIONID"].value
        public = route.public if route else emu.router.path_public(req.path)
        denied = emu.auth.authenticate(req, cookie_sid, required=not public)
        if denied:
            return denied
        if route is None:
            if known:
                raise XnatHttpError(405, "Method Not Allowed")
            raise XnatHttpError(404, "The requested resource could not be found.")
        req.route_params = params
        if req.user == GUEST:  # only on a site that does not require a login
            refused = guest_gate(emu.model, req)
            if refused is not None:
                return refused
        if req.method in ("POST", "PUT"):
            req.load_form()
        emu.tick()
        return route.handler(req)

    def _send(self, resp: Response, drop_after: int | None) -> None:
        head_only = self.command == "HEAD"
        headers = dict(resp.headers)
        status = resp.status
        if resp.file is not None:
            size = os.path.getsize(resp.file)
            start, end = resp.file_range if resp.file_range else (0, size - 1)
            length = max(end - start + 1, 0)
            headers.setdefault("Last-Modified", email.utils.formatdate(os.path.getmtime(resp.file), usegmt=True))
            headers["Content-Length"] = str(length)
        elif resp.stream is not None:
            if self.request_version == "HTTP/1.1":
                headers["Transfer-Encoding"] = "chunked"
            else:
                self.close_connection = True
        else:
            headers["Content-Length"] = str(len(resp.body))
        self.send_response_only(status, REASONS.get(status))
        self.send_header("Date", self.date_time_string())
        self.send_header("Server", self.server_version)
        self.send_header("Content-Type", resp.content_type)
        for k, v in headers.items():
            self.send_header(k, v)
        for c in resp.cookies:
            self.send_header("Set-Cookie", c)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if head_only:
            return
        if resp.file is not None:
            self._send_file(resp.file, start, length, drop_after)
        elif resp.stream is not None:
            writer = _BodyWriter(self, chunked=self.request_version == "HTTP/1.1", drop_after=drop_after)
            try:
                resp.stream(writer)  # type: ignore[arg-type]
                writer.close()
            except ConnectionDropped:
                raise
            except Exception:
                # Headers are gone already: the only honest signal left is a broken connection.
                log.exception("emulator stream failed: %s %s", self.command, self.path)
                self.drop_connection()
        else:
            _BodyWriter(self, chunked=False, drop_after=drop_after).write(resp.body)

    def _send_file(self, path: str, start: int, length: int, drop_after: int | None) -> None:
        if length <= 0:  # a 0-byte file (socket.sendfile refuses a count of 0)
            return
        with open(path, "rb") as f:
            if drop_after is None:
                try:
                    self.connection.sendfile(f, start, length)
                    return
                except (AttributeError, OSError) as exc:
                    if isinstance(exc, (BrokenPipeError, ConnectionResetError)):
                        raise
            f.seek(start)
            writer = _BodyWriter(self, chunked=False, drop_after=drop_after)
            left = length
            while left > 0:
                data = f.read(min(CHUNK, left))
                if not data:
                    break
                writer.write(data)
                left -= len(data)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _dispatch


class EmulatorHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def handle_error(self, request: object, client_address: object) -> None:
        log.debug("connection error from %s", client_address, exc_info=True)


def make_server(emulator: Site, host: str, port: int) -> EmulatorHTTPServer:
    handler = type("BoundXnatRequestHandler", (XnatRequestHandler,), {"emulator": emulator})
    return EmulatorHTTPServer((host, port), handler)


def serve_in_thread(server: EmulatorHTTPServer) -> threading.Thread:
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True,
                         name="xnat-emulator")
    t.start()
    return t

