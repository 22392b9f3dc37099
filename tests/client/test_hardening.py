"""Issue 9, the client's transport: no login storm after a refused re-login, no secret anywhere in a raised
exception's chain, a response cut mid-body typed and retried (or resolved, for imports and archives), and bad
local input or configuration typed as :class:`XnatBadInputError` before any request. All through real HTTP
against the emulator."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import assert_no_secret
from xnat_provider.client import (
    ClientConfig,
    XnatAuthError,
    XnatBadInputError,
    XnatClient,
    XnatError,
    XnatServerError,
    XnatTransferError,
)
from xnat_provider.client.async_client import AsyncXnatClient
from xnat_provider.client.protocol import is_ambiguous
from xnat_provider.testing import XnatEmulator

USER, PASSWORD = "hardy", "H4rden-Pw-9f1c27"  # the ``client`` fixture of tests/client/conftest.py
LOGIN = r"/data/services/auth$"


def logins(emu: XnatEmulator) -> int:
    return emu.request_count("POST", LOGIN)


def failed_logins(emu: XnatEmulator, user: str = USER) -> int:
    return emu.store.one("SELECT failed_logins FROM users WHERE login=?", user)["failed_logins"]


def in_threads(n: int, call: Callable[[], Any]) -> list[BaseException | Any]:
    """``call`` in ``n`` threads started together; what each returned or raised."""
    barrier = threading.Barrier(n)

    def run(_: int) -> BaseException | Any:
        barrier.wait()
        try:
            return call()
        except BaseException as exc:  # collected for the assertions
            return exc

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def config(emu: XnatEmulator, user: str = USER, password: str = PASSWORD, **kw: Any) -> ClientConfig:
    return ClientConfig(kw.pop("url", emu.url), user, password, **{"backoff": 0.01, "backoff_max": 0.05, **kw})


# ---- 1. no login storm after a failed re-login ---------------------------------------------------------------
def test_a_refused_relogin_is_one_login_for_every_waiting_and_later_request(client: XnatClient,
                                                                              emulator: XnatEmulator) -> None:
    client.list_projects()
    emulator.add_user(USER, "Rotated-Pw-2", admin=True)  # the password changed behind the client's back
    emulator.expire_sessions()
    before = logins(emulator)

    got = in_threads(8, client.list_projects)

    assert all(isinstance(r, XnatAuthError) for r in got), got
    assert logins(emulator) - before == 1  # one re-login for the expiry, refused, and no more credentials
    for _ in range(3):  # later requests: the client remembers XNAT refused these credentials
        with pytest.raises(XnatAuthError, match="refused"):
            client.list_projects()
    assert logins(emulator) - before == 1
    assert failed_logins(emulator) == 1
    with pytest.raises(XnatAuthError):
        client.login()  # an explicit login tries again, once
    assert logins(emulator) - before == 2
    with XnatClient(config(emulator, password="Rotated-Pw-2")) as fresh:  # a new client with the new password
        assert fresh.list_projects()


def test_a_revoked_token_fails_every_download_worker_with_one_login(client: XnatClient, emulator: XnatEmulator,
                                                                   study_zip: Path, tmp_path: Path) -> None:
    [ref] = client.import_dicom(study_zip, "P1", destination="archive")
    exp = client.experiment_path("P1", ref.label)
    files = [f for scan in client.scans_at(exp) for f in client.list_files(f"{exp}/scans/{scan.id}/resources/DICOM")]
    assert len(files) == 6
    token = client.issue_token()
    with XnatClient(config(emulator, token.alias, token.secret)) as worker:
        worker.list_projects()
        client.invalidate_token(token)  # revoked while the worker runs
        emulator.expire_sessions()
        before = logins(emulator)
        with pytest.raises(XnatAuthError):
            worker.download_files([(f, tmp_path / "out" / f.path) for f in files], workers=6)
        assert logins(emulator) - before == 1
        with pytest.raises(XnatAuthError):
            worker.list_files(f"{exp}/scans/1/resources/DICOM")
        assert logins(emulator) - before == 1


def test_a_refused_first_login_is_not_repeated_by_other_threads(emulator: XnatEmulator) -> None:
    emulator.add_user(USER, PASSWORD)
    with XnatClient(config(emulator, password="Wrong-Pw-31")) as c:
        got = in_threads(6, c.list_projects)
    assert all(isinstance(r, XnatAuthError) for r in got), got
    assert logins(emulator) == 1 and failed_logins(emulator) == 1


def test_an_open_site_relogin_refused_after_guest_service_is_one_login(tmp_path: Path) -> None:
    with XnatEmulator(data_dir=tmp_path / "open", users={"admin": "admin", USER: PASSWORD}, projects=["P1"],
                      require_login=False) as site, XnatClient(config(site)) as c:
        assert c.list_projects() == ["P1"]
        site.add_user(USER, "Rotated-Pw-3")
        site.expire_sessions()
        before = logins(site)
        got = in_threads(6, c.list_projects)
        assert all(isinstance(r, XnatAuthError) for r in got), got
        assert logins(site) - before == 1
        with pytest.raises(XnatAuthError):
            c.list_projects()
        assert logins(site) - before == 1


async def test_async_refused_relogin_is_one_login(emulator: XnatEmulator) -> None:
    emulator.add_user(USER, PASSWORD)
    async with AsyncXnatClient(config(emulator)) as xnat:
        await xnat.list_prearchive()
        emulator.add_user(USER, "Rotated-Pw-4")
        emulator.expire_sessions()
        before = logins(emulator)
        got = await asyncio.gather(*(xnat.list_prearchive() for _ in range(6)), return_exceptions=True)
        assert all(isinstance(r, XnatAuthError) for r in got), got
        for _ in range(3):
            with pytest.raises(XnatAuthError, match="refused"):
                await xnat.list_prearchive()
        assert logins(emulator) - before == 1 and failed_logins(emulator) == 1
        with pytest.raises(XnatAuthError):
            await xnat.login()  # explicit: tries again
        assert logins(emulator) - before == 2


async def test_async_refused_first_login_is_not_repeated(emulator: XnatEmulator) -> None:
    emulator.add_user(USER, PASSWORD)
    async with AsyncXnatClient(config(emulator, password="Wrong-Pw-32")) as xnat:
        got = await asyncio.gather(*(xnat.list_prearchive() for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, XnatAuthError) for r in got), got
    assert logins(emulator) == 1


# ---- 2. no secret in a chained exception ---------------------------------------------------------------------
def chain_text(exc: BaseException) -> str:
    """Everything a log could show of ``exc``: its formatted chain, and every exception reachable through
    ``__cause__`` and ``__context__`` (suppressed or not), with its repr and attributes."""
    parts, seen, todo = ["".join(traceback.format_exception(exc))], set(), [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        parts += [repr(e), str(e), repr(vars(e)) if hasattr(e, "__dict__") else "",
                  "".join(traceback.format_exception_only(type(e), e))]
        todo += [e.__cause__, e.__context__]
    return "\n".join(parts)


FAILURES = ["401", "cut", "timeout", "refused"]


class Forwarder:
    """A TCP forwarder in front of the emulator: ``close()`` ends every connection and stops listening, so the
    next request meets a refused connection, as when a server goes down (the emulator's own keep-alive
    connections would outlive its stop)."""

    def __init__(self, port: int):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.port, self.open = port, []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                near, _ = self.listener.accept()
            except OSError:
                return
            far = socket.create_connection(("127.0.0.1", self.port))
            self.open += [near, far]
            for a, b in ((near, far), (far, near)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
            b.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked in the thread
        self.listener.close()
        for s in self.open:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


def inject(emu: XnatEmulator, failure: str, path: str, forwarder: Forwarder) -> None:
    if failure == "401":
        emu.fail_next("GET", path, status=401, count=10)
    elif failure == "cut":
        emu.drop_after("GET", path, after_bytes=3, count=10)
    elif failure == "timeout":
        emu.delay("GET", path, seconds=1.0, count=10)
    else:
        forwarder.close()  # nothing listens any more: connection refused


@pytest.mark.parametrize("failure", FAILURES)
@pytest.mark.parametrize("call", ["validate", "invalidate"])
def test_no_secret_in_the_chain_of_a_token_call_that_fails(tmp_path: Path, failure: str, call: str) -> None:
    with XnatEmulator(data_dir=tmp_path / "x", users={USER: PASSWORD}, projects=["P1"]) as emu:
        forwarder = Forwarder(emu.port)
        secrets: list[str] = []
        # One attempt: a resent invalidate would find the token gone (404), which is its goal reached.
        c = XnatClient(config(emu, retries=1, read_timeout=30, on_secret=secrets.append, url=forwarder.url))
        token = c.issue_token()
        sid = c.transport.session_id
        if failure == "timeout":  # short for the failing call only: the setup may be slow on a loaded machine
            c.transport.config.read_timeout = 0.3
        inject(emu, failure, "tokens/", forwarder)
        with pytest.raises(XnatError) as info:
            if call == "validate":
                c.validate_token(token)
            else:
                c.invalidate_token(token)
        c.transport.http.close()
        forwarder.close()
    text = chain_text(info.value)
    assert "tokens/" in text  # the error still says where it failed...
    assert_no_secret(text, [PASSWORD, token.secret, sid, *secrets])  # ...and never with what
    if failure != "401":
        assert isinstance(info.value, XnatServerError) and info.value.status is None and is_ambiguous(info.value)
        assert info.value.__cause__ is not None  # the cause's type and redacted message are kept
        cause = str(info.value.__cause__)
        assert {"cut": "ChunkedEncodingError", "timeout": "Timeout", "refused": "ConnectionError"}[failure] in cause


@pytest.mark.parametrize("failure", FAILURES)
async def test_no_secret_in_the_chain_of_an_async_call_that_fails(tmp_path: Path, failure: str) -> None:
    with XnatEmulator(data_dir=tmp_path / "x", users={USER: PASSWORD}, projects=["P1"]) as emu:
        with XnatClient(config(emu)) as sync:
            token = sync.issue_token()
        secrets: list[str] = []
        forwarder = Forwarder(emu.port)
        xnat = AsyncXnatClient(config(emu, retries=2, read_timeout=30, on_secret=secrets.append, url=forwarder.url))
        xnat.add_secret(token.secret)
        await xnat.login()
        sid = xnat.http.cookies.get("JSESSIONID")
        if failure == "timeout":  # short for the failing call only: the login may be slow on a loaded machine
            xnat.http.timeout = httpx.Timeout(0.3, connect=10)
        inject(emu, failure, "tokens/", forwarder)
        with pytest.raises(XnatError) as info:
            await xnat.request("GET", f"/data/services/tokens/validate/{token.alias}/{token.secret}")
        await xnat.http.aclose()
        forwarder.close()
    text = chain_text(info.value)
    assert "tokens/validate" in text
    assert_no_secret(text, [PASSWORD, token.secret, sid, *secrets])
    if failure != "401":
        assert isinstance(info.value, XnatServerError) and is_ambiguous(info.value)
        assert info.value.__cause__ is not None


@pytest.mark.parametrize("failure", ["cut", "refused"])
def test_no_secret_in_the_chain_of_a_failed_login(tmp_path: Path, failure: str) -> None:
    with XnatEmulator(data_dir=tmp_path / "x", users={USER: PASSWORD}, projects=["P1"]) as emu:
        c = XnatClient(config(emu, retries=2))
        if failure == "cut":
            emu.drop_after("POST", LOGIN, after_bytes=3, count=10)
        else:
            c = XnatClient(config(emu, retries=2, url="http://127.0.0.1:9"))  # nothing listens there
        with pytest.raises(XnatServerError) as info:
            c.list_projects()
    assert_no_secret(chain_text(info.value), [PASSWORD])
    assert info.value.status is None and is_ambiguous(info.value)


# ---- 3. a response cut mid-body is typed and retried -----------------------------------------------------------
def test_a_listing_cut_mid_body_is_retried(client: XnatClient, emulator: XnatEmulator) -> None:
    projects = client.list_projects()
    emulator.drop_after("GET", r"^/data/projects$", after_bytes=10, count=2)
    assert client.list_projects() == projects
    assert emulator.request_count("GET", r"^/data/projects$") == 4
    emulator.drop_after("GET", r"^/data/projects$", after_bytes=10, count=client.config.retries)
    with pytest.raises(XnatServerError, match="cut") as info:
        client.list_projects()
    assert info.value.status is None and is_ambiguous(info.value)


def test_an_import_answer_cut_mid_body_reports_the_study(client: XnatClient, emulator: XnatEmulator,
                                                         study_zip: Path) -> None:
    emulator.drop_after("POST", r"^/data/services/import$", after_bytes=5)
    refs = client.import_dicom(study_zip, "P1", settle_seconds=5)
    assert [r.label for r in refs] == ["S01_MR1"] and refs[0].in_prearchive
    assert emulator.request_count("POST", r"^/data/services/import$") == 1  # not resent: it took effect
    assert len(client.list_prearchive("P1")) == 1


def test_an_archive_answer_cut_mid_body_reports_the_session(client: XnatClient, emulator: XnatEmulator,
                                                            study_zip: Path) -> None:
    [ref] = client.import_dicom(study_zip, "P1")
    emulator.drop_after("POST", r"^/data/services/archive$", after_bytes=5)
    archived = client.archive(ref, settle_seconds=5)
    assert archived.label == "S01_MR1" and not archived.in_prearchive
    assert emulator.request_count("POST", r"^/data/services/archive$") == 1
    assert client.list_prearchive("P1") == []


async def test_async_listing_cut_mid_body_is_retried_and_typed(emulator: XnatEmulator) -> None:
    emulator.add_user(USER, PASSWORD)
    async with AsyncXnatClient(config(emulator)) as xnat:
        assert await xnat.list_prearchive() == []
        emulator.drop_after("GET", r"^/data/prearchive$", after_bytes=10, count=2)
        assert await xnat.list_prearchive() == []
        assert emulator.request_count("GET", r"^/data/prearchive$") == 4
        emulator.drop_after("GET", r"^/data/prearchive$", after_bytes=10, count=xnat.config.retries)
        with pytest.raises(XnatServerError) as info:
            await xnat.list_prearchive()
        assert info.value.status is None and is_ambiguous(info.value)


# ---- 4. bad local input and configuration, before any request ---------------------------------------------------
def test_a_download_into_a_file_is_bad_input_before_any_request(client: XnatClient, emulator: XnatEmulator,
                                                                 tmp_path: Path) -> None:
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("x")
    sent = emulator.request_count()
    for dest in (a_file, a_file / "under" / "it"):
        for call in (lambda d: client.download_scans("P1", "S01_MR1", d),
                     lambda d: client.download_session("P1", "S01_MR1", d),
                     lambda d: client.download_resource("/data/projects/P1", "R", d),
                     lambda d: client.download_zip("/data/experiments/E1/scans/1/resources/DICOM/files", d)):
            with pytest.raises(XnatBadInputError, match="not-a-folder"):
                call(dest)
    assert emulator.request_count() == sent  # nothing was asked of XNAT
    assert a_file.read_text() == "x"


def test_a_download_whose_file_lands_under_a_file_or_on_a_folder_is_bad_input(
        client: XnatClient, emulator: XnatEmulator, study_zip: Path, tmp_path: Path) -> None:
    [ref] = client.import_dicom(study_zip, "P1", destination="archive")
    exp = client.experiment_path("P1", ref.label)
    files = client.list_files(f"{exp}/scans/1/resources/DICOM")
    dest = tmp_path / "out"
    (dest / "1").mkdir(parents=True)
    (dest / "1" / "DICOM").write_text("in the way")
    sent = emulator.request_count("GET", r"/files/.+")
    with pytest.raises(XnatBadInputError, match=r"DICOM is a file"):
        client.download_scans("P1", ref.label, dest, scans=["1"])
    with pytest.raises(XnatBadInputError):
        client.download_file(files[0], dest / "1" / "DICOM" / files[0].path)
    folder = tmp_path / "folder"
    (folder / files[0].path).mkdir(parents=True)
    with pytest.raises(XnatBadInputError, match="folder"):
        client.download_files([(f, folder / f.path) for f in files])
    assert emulator.request_count("GET", r"/files/.+") == sent  # no file was fetched
    assert not list((folder).rglob("*.part"))


def test_a_download_into_an_unwritable_place_is_bad_input(client: XnatClient, emulator: XnatEmulator) -> None:
    place = Path("/proc/xnat-provider-test-dest")  # /proc takes no new files, even from root
    if not Path("/proc").is_dir():
        pytest.skip("needs Linux /proc")
    sent = emulator.request_count()
    with pytest.raises(XnatBadInputError, match="/proc"):
        client.download_scans("P1", "S01_MR1", place)
    assert emulator.request_count() == sent


def test_an_upload_of_a_special_file_is_bad_input_before_any_request(client: XnatClient, emulator: XnatEmulator,
                                                                     tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    sent = emulator.request_count()
    with pytest.raises(XnatBadInputError, match="neither a regular file nor a folder"):
        client.upload(fifo, "/data/projects/P1", "R")
    assert emulator.request_count() == sent


def test_an_import_of_a_pipe_is_bad_input_instead_of_a_hang(client: XnatClient, emulator: XnatEmulator,
                                                             tmp_path: Path) -> None:
    fifo = tmp_path / "study.zip"
    os.mkfifo(fifo)  # reading it would wait for a writer forever
    sent = emulator.request_count()
    with pytest.raises(XnatBadInputError, match="neither a regular file nor a folder"):
        client.import_dicom(fifo, "P1")
    assert emulator.request_count() == sent


@pytest.mark.parametrize("kw", [
    {"url": "https://"}, {"url": "http:///xnat"}, {"url": ""}, {"url": "https://host:notaport"},
    {"url": "https://alice:pw@xnat.example.org"}, {"url": "https://xnat example.org"}, {"url": None},
    {"retries": 0}, {"retries": -1}, {"retries": 2.5}, {"retries": True}, {"connect_timeout": 0},
    {"read_timeout": -1}, {"read_timeout": float("nan")}, {"connect_timeout": "10"}, {"backoff": -0.1},
    {"backoff_max": -1}, {"backoff_max": float("inf")}, {"workers": 0}, {"workers": 1.5}, {"settle_seconds": -1},
    {"verify": None}, {"verify": ""}, {"verify": "/nonexistent/ca-bundle.pem"}, {"verify": 0},
])
def test_bad_client_configuration_is_bad_input_at_construction(kw: dict[str, Any]) -> None:
    args = {"url": "https://xnat.example.org", **kw}
    with pytest.raises(XnatBadInputError):
        ClientConfig(args.pop("url"), "alice", "pw", **args)


def test_good_client_configuration_is_kept(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("")
    c = ClientConfig("xnat.example.org:8443/xnat/", "alice", "pw", verify=str(bundle), retries=1, backoff=0,
                     connect_timeout=1, read_timeout=2.5, workers=1, settle_seconds=0)
    assert c.url == "https://xnat.example.org:8443/xnat" and c.verify == str(bundle)
    assert ClientConfig("http://[::1]:8080", verify=False).url == "http://[::1]:8080"


def test_a_header_read_cut_mid_body_is_a_typed_transfer_error(client: XnatClient, emulator: XnatEmulator,
                                                              study) -> None:
    client.upload(study.files[0], "/data/projects/P1", "HEADERS")
    remote = client.list_files("/data/projects/P1/resources/HEADERS")[0]
    emulator.drop_after("GET", r"/files/.+\.dcm$", after_bytes=100)
    with pytest.raises(XnatTransferError, match=r"transfer broke after \d+ bytes \(ChunkedEncodingError\)") as info:
        client.read_header(remote)
    chain = chain_text(info.value)
    assert "requests.exceptions" not in chain and "urllib3" not in chain  # nothing of the library is chained
    assert client.read_header(remote).SOPInstanceUID  # the next read works


@pytest.mark.parametrize("body", [b"<html><body>Please log in</body></html>", b"", b"not json"])
def test_an_answer_that_is_not_json_is_a_server_error(body: bytes) -> None:
    from xnat_provider.client.protocol import json_answer

    with pytest.raises(XnatServerError, match="expected JSON") as info:
        json_answer(body, "GET", "/data/services/tokens/validate/a/***")
    assert info.value.__cause__ is None and info.value.__context__ is None  # the body is not chained either
