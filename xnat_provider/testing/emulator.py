"""``XnatEmulator``: a real HTTP server speaking XNAT 1.8's REST API, for tests, demos and benchmarks.

    from xnat_provider.testing import XnatEmulator

    with XnatEmulator(users={"admin": "admin"}, projects=["P1"]) as xnat:
        print(xnat.url)          # http://127.0.0.1:PORT
        xnat.fail_next("POST", r"/data/services/import", status=503)

``data_dir=None`` keeps everything in a temporary folder that is removed on exit; give a folder to keep the
archive between runs (stop and start on the same folder and everything is still there).

This module only wires the parts together: the state (store, model, accounts, prearchive), the API modules that
declare their routes on the emulator's router (:data:`API_MODULES`), the control API and the HTTP server. How the
modules are laid out, which serves which part of XNAT's API and how to add an endpoint: ``registry.py``.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from . import archive_api, auth_api, containers_api, dicom_import, files_api, prearchive_api, site_api
from .archive_api import OWNER, SEG, resolve
from .auth import Auth
from .clock import Clock
from .containers import Containers
from .control import Control
from .faults import FaultRule, Faults
from .model import Model
from .prearchive import Prearchive
from .registry import ApiModule, Services, Settings, build_router
from .server import EmulatorHTTPServer, make_server, serve_in_thread
from .store import Store

XNAT_VERSION = "1.8.10"
PREARCHIVE_CODES = {"manual": 0, "auto-archive": 4, "auto-archive-overwrite": 5}
# The modules serving XNAT's API, each declaring its routes (``register(router, services)``). Their routes are
# matched in this order where the order matters (see :func:`~xnat_provider.testing.registry.build_router`).
API_MODULES: tuple[ApiModule, ...] = (auth_api, site_api, dicom_import, prearchive_api, files_api, archive_api,
                                      containers_api)


class XnatEmulator:
    """An XNAT stand-in serving on a loopback port until :meth:`stop` (or the end of a ``with`` block).

    ``containers`` is its Container Service plugin (``containers.py``): register a command and what its container
    runs there, then launch it through ``/xapi`` as a client would.

    :param data_dir: where files and metadata live; ``None`` for a temporary folder removed on stop.
    :param users: login to password; ``admin`` (or anyone in ``admins``) is a site administrator.
    :param projects: projects created at start (existing ones are kept).
    :param session_timeout: idle seconds before an HTTP session expires (XNAT: 900).
    :param token_lifetime: seconds an alias token lives (XNAT: 2 days).
    :param max_failed_logins: failed logins that lock an account (XNAT: 20) for ``lockout_seconds``.
    :param require_login: XNAT's ``requireLogin``; False is an open site, where a request without valid
        credentials (an expired session too) is served as ``guest``, no 401 (see ``testing/access.py``).
    :param receiving_idle: seconds without new files before a RECEIVING session is built (XNAT: 300).
    :param build_seconds: how long a session stays BUILDING.
    :param queue_seconds: how long a queued prearchive operation waits, and then runs.
    :param range_requests: answer a single-range GET of a file with 206 (XNAT 1.8 does, through Restlet 1.1.10's
        RangeFilter); off by default, the harder case for clients: a server or proxy that ignores Range.
    :param archive_conflict_status: 500 (XNAT 1.8.9+, ``FAILED: ...``) or 409 (older servers).
    :param clock: what "now" is for sessions, tokens and the prearchive (``time.time``); a test about time
        passes a :class:`~xnat_provider.testing.clock.ManualClock` and advances it instead of sleeping.
    :param container_step_seconds: the Container Service's pause between two steps of a launch (queued, staging,
        created, running, finalizing...), so that a client polling it sees them; see ``containers.py``.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        users: dict[str, str] | None = None,
        projects: list[str] | tuple[str, ...] = ("P1",),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        admins: list[str] | tuple[str, ...] = ("admin",),
        session_timeout: float = 900.0,
        token_lifetime: float = 2 * 24 * 3600.0,
        max_failed_logins: int = 20,
        lockout_seconds: float = 3600.0,
        require_login: bool = True,
        receiving_idle: float = 5.0,
        build_seconds: float = 0.5,
        queue_seconds: float = 0.5,
        range_requests: bool = False,
        archive_conflict_status: int = 500,
        site_id: str = "XNAT",
        version: str = XNAT_VERSION,
        container_step_seconds: float = 0.05,
        clock: Clock = time.time,
    ):
        if archive_conflict_status not in (409, 500):
            raise ValueError("archive_conflict_status must be 409 or 500")
        self._temp = data_dir is None
        self.data_dir = Path(tempfile.mkdtemp(prefix="xnat-emulator-") if data_dir is None else data_dir)
        self.host, self._port = host, port
        self.settings = Settings(version, range_requests, archive_conflict_status)
        self.store = Store(self.data_dir)
        shutil.rmtree(self.data_dir / "tmp", ignore_errors=True)  # uploads a crash left half-received
        self.model = Model(self.store, site_id)
        self.faults = Faults()
        self.auth = Auth(self.store, site_id=site_id, session_timeout=session_timeout, token_lifetime=token_lifetime,
                         max_failed_logins=max_failed_logins, lockout_seconds=lockout_seconds,
                         require_login=require_login, clock=clock)
        self.prearchive = Prearchive(self.store, self.model, receiving_idle, build_seconds, queue_seconds, clock)
        # The Container Service plugin (commands, launches, containers), in memory: ``containers.py``.
        self.containers = Containers(self.model, self.auth, self.data_dir, step_seconds=container_step_seconds)
        self.services = Services(self.store, self.model, self.auth, self.prearchive, self.settings, self.containers)
        self.router = build_router(API_MODULES, self.services)
        self.control = Control(self)
        self.recovered = self.model.recover()
        for login, password in (users if users is not None else {"admin": "admin"}).items():
            self.auth.add_user(login, password, admin=login in admins)
        for p in projects:
            self.model.create_project(p)
        self._server: EmulatorHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    # ---- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> XnatEmulator:
        if self._server is None:
            self._server = make_server(self, self.host, self._port)
            self._stopping.clear()
            self._threads = [serve_in_thread(self._server),
                             threading.Thread(target=self._clock, daemon=True, name="xnat-emulator-clock")]
            self._threads[1].start()
            self.containers.site_url = self.url
        return self

    def stop(self) -> None:
        self._stopping.set()
        self.containers.shutdown()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for t in self._threads:
            t.join(timeout=5)
        self.store.close()
        if self._temp:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> XnatEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _clock(self) -> None:
        while not self._stopping.wait(0.2):
            try:
                self.tick()
            except Exception:  # the store may be closing
                pass

    def tick(self) -> None:
        self.prearchive.tick()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the emulator is not running; call start() or use it as a context manager")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # The site's switches live in ``settings``, shared with the handlers: setting one here takes effect at once.
    @property
    def version(self) -> str:
        return self.settings.version

    @version.setter
    def version(self, value: str) -> None:
        self.settings.version = value

    @property
    def range_requests(self) -> bool:
        return self.settings.range_requests

    @range_requests.setter
    def range_requests(self, value: bool) -> None:
        self.settings.range_requests = value

    @property
    def archive_conflict_status(self) -> int:
        return self.settings.archive_conflict_status

    @archive_conflict_status.setter
    def archive_conflict_status(self, value: int) -> None:
        self.settings.archive_conflict_status = value

    # ---- setup -------------------------------------------------------------------------------------
    def add_user(self, login: str, password: str, admin: bool = False) -> None:
        self.auth.add_user(login, password, admin)

    def add_project(self, project_id: str, prearchive: str = "manual", **attrs: Any) -> None:
        """Create a project; ``prearchive`` is ``manual``, ``auto-archive`` or ``auto-archive-overwrite``."""
        if prearchive not in PREARCHIVE_CODES:
            raise ValueError(f"prearchive must be one of {', '.join(PREARCHIVE_CODES)}")
        self.model.create_project(project_id, **attrs)
        self.store.run("UPDATE projects SET prearchive_code=? WHERE id=?", PREARCHIVE_CODES[prearchive], project_id)

    def auto_archive(self, row: dict) -> bool:
        """True when the prearchive row's project archives sessions as soon as they are built."""
        return self.prearchive.auto_archive(row)

    # ---- fault injection ---------------------------------------------------------------------------
    def fail_next(self, method: str, path: str, status: int = 503, count: int = 1,
                  message: str = "Injected fault") -> FaultRule:
        """The next ``count`` requests matching ``method`` and the ``path`` regex answer ``status``."""
        return self.faults.add("fail", method, path, count, status=status, message=message)

    def drop_after(self, method: str, path: str, after_bytes: int, count: int = 1) -> FaultRule:
        """Cut the connection after ``after_bytes`` bytes of the response body."""
        return self.faults.add("drop", method, path, count, after_bytes=after_bytes)

    def cut_request_after(self, method: str, path: str, after_bytes: int, count: int = 1) -> FaultRule:
        """The request body breaks off after ``after_bytes`` bytes (the sender died mid-upload): the handler
        keeps what XNAT would keep of what arrived, and no answer is sent."""
        return self.faults.add("cut_request", method, path, count, after_bytes=after_bytes)

    def delay(self, method: str, path: str, seconds: float, count: int = 1) -> FaultRule:
        return self.faults.add("delay", method, path, count, seconds=seconds)

    def error_page_200(self, method: str, path: str, count: int = 1, message: str = "Injected error") -> FaultRule:
        """Answer an HTML error page with status 200, as misconfigured proxies and some XNAT paths do."""
        return self.faults.add("error_200", method, path, count, message=message)

    def succeed_then_504(self, method: str, path: str, count: int = 1) -> FaultRule:
        """Do the work (an import or an archive really happens), then answer 504 as a gateway would."""
        return self.faults.add("after_504", method, path, count)

    def clear_faults(self) -> None:
        self.faults.clear()

    def expire_sessions(self) -> int:
        """End every HTTP session now, as an idle timeout or a server restart would."""
        return self.auth.expire_all()

    def hold_prearchive(self, project: str, timestamp: str, folder: str, status: str = "BUILDING") -> None:
        """Keep a prearchive session in ``status`` (a stuck session) until released or reset (``action=reset-status``).

        A rebuild, move or delete request releases it and runs, as XNAT requeues a stuck row, except when
        ``status`` is a locked ``_X`` one (``_ARCHIVING``, ``_BUILDING``...): XNAT ignores those requests on a
        locked row (200, the row unchanged), so the row stays held, which is how a test plays an operation that
        died holding the lock."""
        row = self.prearchive.require(project, timestamp, folder)
        self.store.run("UPDATE prearchive SET status=?, held=1, due=NULL, next_op=NULL WHERE project=? AND "
                       "timestamp=? AND folder=?", status, row["project"], row["timestamp"], row["folder"])

    def release_prearchive(self, project: str, timestamp: str, folder: str, status: str | None = None) -> None:
        """Let a held session go on, in ``status`` (READY if it was built, else RECEIVING): the stuck operation
        finished, or an administrator unlocked the row."""
        row = self.prearchive.require(project, timestamp, folder)
        self.store.run("UPDATE prearchive SET held=0, status=?, lastmod=? WHERE project=? AND timestamp=? AND "
                       "folder=?", status or ("READY" if row["built_doc"] else "RECEIVING"), self.auth.clock(),
                       row["project"], row["timestamp"], row["folder"])

    def corrupt_file(self, uri: str) -> None:
        """Flip one byte of a stored file so it no longer matches its digest (size and mtime kept)."""
        path = self.file_path(uri)
        st = path.stat()
        with open(path, "r+b") as f:
            f.seek(st.st_size // 2)
            b = f.read(1) or b"\0"
            f.seek(st.st_size // 2)
            f.write(bytes([b[0] ^ 0xFF]))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))

    def file_path(self, uri: str) -> Path:
        """The file on disk behind an archive file URI such as ``/data/experiments/E/.../files/a.dcm``."""
        path = re.sub(r"^/data/archive/", "/data/", uri.split("?", 1)[0])
        m = re.fullmatch(OWNER + rf"/resources/(?P<resource>{SEG})/files/(?P<path>.+)", path)
        if not m:
            raise ValueError(f"not an archive file URI: {uri}")
        params = {k: v for k, v in m.groupdict().items() if v}
        t = resolve(self.model, {k: v for k, v in params.items() if k not in ("resource", "path")})
        res = self.model.resource(*t.owner, params["resource"])
        if res is None:
            raise ValueError(f"no such resource: {uri}")
        return self.model.file_path(res, params["path"])

    def requests_sent(self, user_agent: str = "") -> list[tuple[str, str]]:
        """The latest requests (method, path with ``/REST`` and ``/data/archive`` folded onto ``/data``), oldest
        first, of the clients whose User-Agent starts with ``user_agent``."""
        return [(m, p) for m, p, agent in list(self.faults.log) if agent.startswith(user_agent)]

    def request_count(self, method: str | None = None, path: str | None = None) -> int:
        """How many requests the emulator received, by method and a path regex (``None`` matches all)."""
        return self.faults.request_counts(method, path)
