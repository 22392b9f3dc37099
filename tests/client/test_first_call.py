"""The first answered call costs two requests (the login, then the call), and a site URL that redirects is
followed only where it does redirect: at the login (http to https, a path prefix, another host), at a site root
that alone redirects (the login there answers 404), or at a later answer (the site moved since the login).

The redirecting front doors are small HTTP servers in the test (:class:`FrontDoor`): one that answers every
request with a redirect to the emulator, one that forwards ``/xnat/...`` to the emulator and redirects the rest
there, one that only redirects its root."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import requests

from xnat_provider.client import XnatClient
from xnat_provider.client.core import login_redirect, moved_base
from xnat_provider.testing import XnatEmulator

BASE = "http://xnat.example.org"


# ---- the rules, without a server ------------------------------------------------------------------------------
@pytest.mark.parametrize(("status", "location", "new_base"), [
    (301, "https://xnat.example.org/data/services/auth", "https://xnat.example.org"),  # http to https
    (308, "http://xnat.example.org/xnat/data/services/auth", "http://xnat.example.org/xnat"),  # a path prefix
    (302, "/xnat/data/services/auth", "http://xnat.example.org/xnat"),  # relative Location
    (302, "https://other.example.org/app/template/Login.vm", "https://other.example.org"),  # another host
    (302, "/app/template/Login.vm", None),  # XNAT's own login page, same base: the login failed, no move
    (200, "https://elsewhere.example.org/data/services/auth", None),  # not a redirect
    (302, None, None),  # no Location
])
def test_a_login_answered_with_a_redirect_to_another_base_names_that_base(status: int, location: str | None,
                                                                           new_base: str | None) -> None:
    assert login_redirect(BASE, status, location) == new_base


def test_a_redirect_from_https_to_http_is_never_followed() -> None:
    """The login would send the password in clear: the redirect stays the login's failure."""
    https = "https://xnat.example.org"
    assert login_redirect(https, 301, "http://xnat.example.org/data/services/auth") is None
    assert login_redirect(https, 301, "https://xnat.example.org/xnat/data/services/auth") == https + "/xnat"
    assert moved_base(https, f"{https}/data/projects", "http://xnat.example.org/data/projects") is None


@pytest.mark.parametrize(("final", "new_base"), [
    ("https://xnat.example.org/data/projects?format=json", "https://xnat.example.org"),
    ("http://xnat.example.org/xnat/data/projects", "http://xnat.example.org/xnat"),
    ("http://xnat.example.org/data/archive/projects", None),  # another path: not a move of the site
    ("http://xnat.example.org/data/projects", None),  # the same place
])
def test_a_later_answer_moves_the_base_only_when_the_same_path_moved(final: str, new_base: str | None) -> None:
    assert moved_base(BASE, f"{BASE}/data/projects", final) == new_base


# ---- against the emulator -------------------------------------------------------------------------------------
def test_a_fresh_clients_first_call_is_the_login_and_the_call(emulator: XnatEmulator) -> None:
    emulator.faults.reset_counts()
    with XnatClient(emulator.url, "admin", "admin") as c:
        assert c.list_projects() == ["P1", "P2"]
        assert emulator.request_count() == 2
        assert c.transport.requests_sent == 2
        assert emulator.requests_sent("airflow-provider-xnat/")[-2:] == [
            ("POST", "/data/services/auth"), ("GET", "/data/projects")]
        assert c.base_url == emulator.url


class FrontDoor:
    """A tiny HTTP server in front of the emulator, answering each request with ``answer(handler)``."""

    def __init__(self, answer: Callable[[http.server.BaseHTTPRequestHandler], None]):
        self.seen: list[tuple[str, str]] = []
        door = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def handle_one(self) -> None:
                door.seen.append((self.command, self.path))
                answer(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = handle_one

            def log_message(self, *a: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def front_door(answer: Callable[[http.server.BaseHTTPRequestHandler], None]) -> Iterator[FrontDoor]:
    door = FrontDoor(answer)
    try:
        yield door
    finally:
        door.close()


def reply(h: http.server.BaseHTTPRequestHandler, status: int, headers: dict[str, str] | None = None,
          body: bytes = b"") -> None:
    length = int(h.headers.get("Content-Length") or 0)
    if length:
        h.rfile.read(length)  # the request's body, so that the connection stays usable
    h.send_response(status)
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    if h.command != "HEAD":
        h.wfile.write(body)


def forward(h: http.server.BaseHTTPRequestHandler, url: str) -> None:
    """Pass the request on to ``url`` and its answer back (cookies and body included)."""
    length = int(h.headers.get("Content-Length") or 0)
    body = h.rfile.read(length) if length else None
    headers = {k: v for k, v in h.headers.items() if k.lower() not in ("host", "content-length", "connection")}
    r = requests.request(h.command, url, data=body, headers=headers, allow_redirects=False, timeout=30)
    h.send_response(r.status_code)
    for k, v in r.raw.headers.items():
        if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
            h.send_header(k, v)
    h.send_header("Content-Length", str(len(r.content)))
    h.end_headers()
    h.wfile.write(r.content)


def test_a_site_that_moved_to_another_base_is_followed_at_the_login(emulator: XnatEmulator) -> None:
    """http to https, or another host: every request to the old URL is redirected to the same path at the new one.
    The login's redirect is followed (the login sent again there), and nothing goes to the old URL after it."""
    with front_door(lambda h: reply(h, 301, {"Location": emulator.url + h.path})) as door:
        emulator.faults.reset_counts()
        with XnatClient(door.url, "admin", "admin") as c:
            assert c.list_projects() == ["P1", "P2"]
            assert c.base_url == emulator.url
            assert door.seen == [("POST", "/data/services/auth")]
            assert emulator.request_count() == 2  # the login and the call, both at the new base
            assert c.transport.requests_sent == 3
            assert c.list_projects() == ["P1", "P2"]
        assert door.seen == [("POST", "/data/services/auth")]


def test_a_site_under_a_path_prefix_is_followed_at_the_login(emulator: XnatEmulator) -> None:
    """The URL names the host; XNAT answers under ``/xnat`` and the host redirects everything else there."""

    def xnat_under_prefix(h: http.server.BaseHTTPRequestHandler) -> None:
        if h.path.startswith("/xnat/"):
            forward(h, emulator.url + h.path[len("/xnat"):])
        else:
            reply(h, 302, {"Location": "/xnat" + h.path})

    with front_door(xnat_under_prefix) as door:
        with XnatClient(door.url, "admin", "admin") as c:
            assert c.list_projects() == ["P1", "P2"]
            assert c.base_url == door.url + "/xnat"
            assert c.whoami() == "admin"
        assert door.seen[:3] == [("POST", "/data/services/auth"), ("POST", "/xnat/data/services/auth"),
                                 ("GET", "/xnat/data/projects?format=json")]


def test_a_site_whose_root_alone_redirects_costs_one_look_at_it(emulator: XnatEmulator) -> None:
    """Only the site's root redirects (to XNAT's login page elsewhere); its ``/data`` answers 404: the client looks
    at ``GET /`` once, after the 404, and logs in where it leads."""

    def root_redirects(h: http.server.BaseHTTPRequestHandler) -> None:
        if h.path == "/":
            reply(h, 302, {"Location": emulator.url + "/app/template/Login.vm"})
        else:
            reply(h, 404, {"Content-Type": "text/plain"}, b"not here")

    with front_door(root_redirects) as door:
        emulator.faults.reset_counts()
        with XnatClient(door.url, "admin", "admin") as c:
            assert c.list_projects() == ["P1", "P2"]
            assert c.base_url == emulator.url
        assert door.seen == [("POST", "/data/services/auth"), ("GET", "/")]


def test_a_site_that_answers_404_everywhere_is_a_not_found_error_after_one_look(emulator: XnatEmulator) -> None:
    from xnat_provider.client import XnatNotFoundError

    with front_door(lambda h: reply(h, 404, {"Content-Type": "text/plain"}, b"nothing")) as door:
        with XnatClient(door.url, "admin", "admin") as c:
            with pytest.raises(XnatNotFoundError):
                c.list_projects()
        assert door.seen == [("POST", "/data/services/auth"), ("GET", "/")]


def test_a_site_that_moves_after_the_login_is_followed_and_used_from_then_on(emulator: XnatEmulator) -> None:
    moved = threading.Event()

    def door_then_moved(h: http.server.BaseHTTPRequestHandler) -> None:
        if moved.is_set():
            reply(h, 301, {"Location": emulator.url + h.path})
        else:
            forward(h, emulator.url + h.path)

    with front_door(door_then_moved) as door:
        with XnatClient(door.url, "admin", "admin") as c:
            assert c.list_projects() == ["P1", "P2"]
            assert c.base_url == door.url
            moved.set()
            assert c.list_projects() == ["P1", "P2"]  # followed (the session cookie goes along: same host)
            assert c.base_url == emulator.url
            before = len(door.seen)
            assert c.whoami() == "admin"
            assert len(door.seen) == before  # straight to the new base


def test_a_redirect_loop_between_bases_ends_in_an_error(emulator: XnatEmulator) -> None:
    from xnat_provider.client import XnatError

    with front_door(lambda h: reply(h, 302, {"Location": f"/loop{len(h.path)}{h.path}"})) as door:
        with XnatClient(door.url, "admin", "admin") as c:
            with pytest.raises(XnatError):
                c.list_projects()
        assert len(door.seen) <= 5  # a few moves at most, never an endless chase
