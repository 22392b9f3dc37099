"""The async client follows a site URL that redirects as the sync client does (``test_first_call.py``): the login
answered with a redirect to another base is sent there (never re-posted by the HTTP library, never from https
to http), a site whose root alone redirects costs one look at it after the login's 404, and a later answer
redirected to the same path under another base moves the client there. Triggers use this client: a
connection whose URL moved to https must not fail in the triggerer while it works in the tasks."""

from __future__ import annotations

import http.server
import threading

import pytest

from tests.client.test_first_call import forward, front_door, reply
from xnat_provider.client import ClientConfig, XnatError, XnatNotFoundError
from xnat_provider.client.async_client import AsyncXnatClient
from xnat_provider.testing import XnatEmulator

pytestmark = pytest.mark.timeout(60)


def client(url: str) -> AsyncXnatClient:
    return AsyncXnatClient(ClientConfig(url, "admin", "admin", backoff=0.01, retries=2))


async def test_a_site_that_moved_to_another_base_is_followed_at_the_login(emulator: XnatEmulator) -> None:
    with front_door(lambda h: reply(h, 301, {"Location": emulator.url + h.path})) as door:
        emulator.faults.reset_counts()
        async with client(door.url) as xnat:
            assert await xnat.list_prearchive("P1") == []
            assert xnat.base_url == emulator.url
            assert door.seen == [("POST", "/data/services/auth")]  # the login, once; nothing else goes there
            assert emulator.requests_sent("airflow-provider-xnat/") == [
                ("POST", "/data/services/auth"), ("GET", "/data/prearchive/projects/P1")]
            assert await xnat.list_experiments("P1") == []
        assert door.seen == [("POST", "/data/services/auth")]
        assert emulator.request_count("DELETE", r"^/data/JSESSION$") == 1  # logged out at the new base


async def test_a_site_under_a_path_prefix_is_followed_at_the_login(emulator: XnatEmulator) -> None:
    def xnat_under_prefix(h: http.server.BaseHTTPRequestHandler) -> None:
        if h.path.startswith("/xnat/"):
            forward(h, emulator.url + h.path[len("/xnat"):])
        else:
            reply(h, 302, {"Location": "/xnat" + h.path})

    with front_door(xnat_under_prefix) as door:
        async with client(door.url) as xnat:
            assert await xnat.list_prearchive("P1") == []
            assert xnat.base_url == door.url + "/xnat"
        assert door.seen[:3] == [("POST", "/data/services/auth"), ("POST", "/xnat/data/services/auth"),
                                 ("GET", "/xnat/data/prearchive/projects/P1?format=json")]


async def test_a_site_whose_root_alone_redirects_costs_one_look_at_it(emulator: XnatEmulator) -> None:
    def root_redirects(h: http.server.BaseHTTPRequestHandler) -> None:
        if h.path == "/":
            reply(h, 302, {"Location": emulator.url + "/app/template/Login.vm"})
        else:
            reply(h, 404, {"Content-Type": "text/plain"}, b"not here")

    with front_door(root_redirects) as door:
        async with client(door.url) as xnat:
            assert await xnat.list_prearchive("P1") == []
            assert xnat.base_url == emulator.url
        assert door.seen == [("POST", "/data/services/auth"), ("GET", "/")]


async def test_a_site_that_answers_404_everywhere_is_a_not_found_error_after_one_look(
        emulator: XnatEmulator) -> None:
    with front_door(lambda h: reply(h, 404, {"Content-Type": "text/plain"}, b"nothing")) as door:
        async with client(door.url) as xnat:
            with pytest.raises(XnatNotFoundError):
                await xnat.list_prearchive("P1")
        assert door.seen == [("POST", "/data/services/auth"), ("GET", "/")]


async def test_a_site_that_moves_after_the_login_is_followed_and_used_from_then_on(emulator: XnatEmulator) -> None:
    moved = threading.Event()

    def door_then_moved(h: http.server.BaseHTTPRequestHandler) -> None:
        if moved.is_set():
            reply(h, 301, {"Location": emulator.url + h.path})
        else:
            forward(h, emulator.url + h.path)

    with front_door(door_then_moved) as door:
        async with client(door.url) as xnat:
            assert await xnat.list_prearchive("P1") == []
            assert xnat.base_url == door.url
            moved.set()
            assert await xnat.list_prearchive("P1") == []  # followed (the session cookie goes along: same host)
            assert xnat.base_url == emulator.url
            before = len(door.seen)
            assert await xnat.list_experiments("P1") == []
            assert len(door.seen) == before  # straight to the new base


async def test_a_redirect_loop_between_bases_ends_in_an_error(emulator: XnatEmulator) -> None:
    with front_door(lambda h: reply(h, 302, {"Location": f"/loop{len(h.path)}{h.path}"})) as door:
        async with client(door.url) as xnat:
            with pytest.raises(XnatError):
                await xnat.list_prearchive("P1")
        assert len(door.seen) <= 5  # a few moves at most, never an endless chase


async def test_a_redirect_from_https_to_http_is_not_followed_at_the_login() -> None:
    """The password would go in clear: the redirect stays the login's failure, and no second login is sent."""
    import httpx

    seen: list[tuple[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, str(request.url)))
        return httpx.Response(301, headers={"Location": "http://xnat.example.org" + request.url.path})

    xnat = AsyncXnatClient(ClientConfig("https://xnat.example.org", "admin", "admin", retries=1))
    await xnat.http.aclose()
    xnat.http = httpx.AsyncClient(transport=httpx.MockTransport(handler), follow_redirects=True)
    async with xnat:
        with pytest.raises(XnatError):
            await xnat.list_prearchive("P1")
    assert seen == [("POST", "https://xnat.example.org/data/services/auth")]
    assert xnat.base_url == "https://xnat.example.org"
