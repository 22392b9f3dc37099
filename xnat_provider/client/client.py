"""``XnatClient``: the plain-Python XNAT client (no Airflow imports), usable from any workflow engine.

    from xnat_provider.client import XnatClient

    with XnatClient("https://xnat.example.org", user="alice", password="...") as xnat:
        refs = xnat.import_dicom("study.zip", project="P1")
        archived = xnat.archive(refs[0])
        xnat.download_scans("P1", archived.label, "out/", scans=["T1w"])

Each capability lives in its own module (auth and retries decided in ``core`` and carried out over requests in
``transport``, then ``archive``, ``prearchive``, ``imports``, ``downloads``, ``uploads``, and ``containers`` for the
Container Service); this class only puts them
together over one login. Code outside the client (the Airflow layer) uses this class's public members only
(``base_url``, ``redact``, ``config`` and the calls), never ``transport``.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .archive import ArchiveMixin
from .config import ClientConfig
from .containers import ContainerMixin
from .downloads import DownloadMixin
from .errors import XnatTransferError
from .hashed_stream import BROKEN
from .imports import ImportMixin
from .models import RemoteFile
from .prearchive import PrearchiveMixin
from .protocol import json_answer
from .transport import XnatTransport
from .uploads import UploadMixin

if TYPE_CHECKING:
    import pydicom


class XnatClient(ArchiveMixin, PrearchiveMixin, ImportMixin, DownloadMixin, UploadMixin, ContainerMixin):
    """One XNAT server, one login, shared safely between threads. See the module docstring."""

    def __init__(self, url: str | ClientConfig, user: str | None = None, password: str | None = None,
                 **options: Any):
        config = url if isinstance(url, ClientConfig) else ClientConfig(url=url, user=user, password=password,
                                                                         **options)
        self.transport = XnatTransport(config)

    @property
    def session(self) -> XnatTransport:
        """Deprecated name of :attr:`transport` ("session" now means what it means in XNAT: an experiment)."""
        warnings.warn("XnatClient.session is deprecated: use XnatClient.transport (or, better, the client's own "
                      "calls)", DeprecationWarning, stacklevel=2)
        return self.transport

    @property
    def config(self) -> ClientConfig:
        return self.transport.config

    @property
    def base_url(self) -> str:
        """The server's URL as the client uses it: the configured one, or where it redirected at the first login
        (http to https, a moved path). Links and messages should name this one."""
        return self.transport.base_url

    @property
    def redact(self) -> Callable[[str], str]:
        """``client.redact(text)``: ``text`` with every secret this client has learnt (password, token secrets,
        session ids) replaced by ``***``, for messages built outside the client (its own errors are redacted).
        A property, not a method: it sends nothing, so the route checks of public calls need not cover it."""
        return self.transport.redact

    def _settle(self, seconds: float | None) -> float:
        return self.transport.config.settle_seconds if seconds is None else seconds

    def login(self) -> None:
        self.transport.login()

    def whoami(self) -> str:
        """The user XNAT says is logged in (``GET /data/auth``)."""
        text = self.transport.request("GET", "/data/auth").text.strip()
        return text.removeprefix("User '").split("'", 1)[0]

    def version(self) -> str:
        """XNAT's version, from ``/xapi/siteConfig/buildInfo`` (``/data/version`` is gone in 1.8)."""
        path = "/xapi/siteConfig/buildInfo"
        info = json_answer(self.transport.request("GET", path, params={"format": "json"}).content, "GET", path)
        return str(info.get("version", "")) if isinstance(info, dict) else ""

    def close(self) -> None:
        """Log out (``DELETE /data/JSESSION``) and release connections."""
        self.transport.logout()

    def __enter__(self) -> XnatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read_header(self, remote: RemoteFile | str, max_bytes: int = 1 << 20) -> pydicom.Dataset:
        """One file's DICOM header without its pixel data, reading only the first bytes of the file."""
        uri = remote.uri if isinstance(remote, RemoteFile) else remote
        resp = self.transport.request("GET", uri, stream=True, headers={"Range": f"bytes=0-{max_bytes - 1}"},
                                    ok_statuses=(206,))
        buf = io.BytesIO()
        broken: BaseException | None = None
        with resp:
            try:
                for chunk in resp.iter_content(64 * 1024):
                    buf.write(chunk)
                    if buf.tell() >= max_bytes:
                        break  # the server ignored Range: stop reading, the header is in what we have
            except BROKEN as exc:
                broken = exc
        if broken is not None:  # raised outside the handler: the library's exception (and its URL) is not chained
            raise XnatTransferError(f"GET {self.redact(uri)}: transfer broke after {buf.tell()} bytes "
                                    f"({type(broken).__name__})", method="GET", path=self.redact(uri))
        buf.seek(0)
        import pydicom  # here, not at the top: it takes half a second and starts NumPy's threads at import

        try:
            return pydicom.dcmread(buf, stop_before_pixels=True, defer_size=1024)
        except Exception as exc:
            raise XnatTransferError(f"GET {uri}: no readable DICOM header in the first {max_bytes} bytes "
                                    f"({type(exc).__name__}: {exc})", method="GET", path=uri) from exc

