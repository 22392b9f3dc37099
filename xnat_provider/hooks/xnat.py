"""``XnatHook``: an Airflow Connection of type ``xnat`` mapped onto the plain-Python :class:`XnatClient`.

The hook adds what only Airflow knows: where the connection comes from (UI, URI or JSON in
``AIRFLOW_CONN_*``, a secrets backend), masking of every secret the client learns (password, token secrets,
session ids) with Airflow's ``mask_secret``, and the UI's connection test. Everything else (login reuse,
re-login, retries, verified transfers) is the client's, so it behaves the same outside Airflow.

Connection fields: host is the XNAT URL (``https://xnat.example.org/xnat``, a path prefix allowed) or a bare
host name with the port field (``https`` unless the ``protocol`` extra says ``http``); login is a user or an
alias token's alias; password the password or the token's secret. Extras (all optional): ``verify_ssl``
(default true), ``ca_bundle`` (a CA file path), ``connect_timeout`` (10 s), ``read_timeout`` (300 s),
``retries`` (5 attempts), ``backoff`` (1 s, doubled up to 60 s), ``workers`` (4 parallel downloads),
``settle_seconds`` (30 s to look for the effect of a lost import or archive answer before resending).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from functools import cached_property
from typing import Any

from airflow.sdk import BaseHook, Connection
from airflow.sdk.log import mask_secret

from ..client import AliasToken, ClientConfig, XnatClient, XnatError

EXTRA_NUMBERS = {"connect_timeout": float, "read_timeout": float, "retries": int, "backoff": float, "workers": int,
                 "settle_seconds": float}


def _truthy(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes", "on")


def connection_url(host: str | None, port: int | None = None, schema: str | None = None,
                   protocol: str | None = None) -> str:
    """The XNAT base URL from a Connection's host, port and schema (URI forms put a path in ``schema``)."""
    host = (host or "").strip()
    if not host:
        raise XnatError("The XNAT connection has no host: set it to the server's URL, e.g. https://xnat.example.org")
    if "://" in host:
        scheme, rest = host.split("://", 1)
        netloc, _, path = rest.partition("/")
        if port and ":" not in netloc:
            netloc = f"{netloc}:{port}"
        return f"{scheme}://{netloc}" + (f"/{path.strip('/')}" if path.strip("/") else "")
    scheme = (protocol or (schema if schema in ("http", "https") else None) or "https").lower()
    path = schema if schema and schema not in ("http", "https") else ""
    netloc = f"{host}:{port}" if port else host
    return f"{scheme}://{netloc}" + (f"/{path.strip('/')}" if path and path.strip("/") else "")


def logs_out(method: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a task method so that the task's hook logs out of XNAT when it ends, however it ends (success,
    failure, deferral, reschedule): an XNAT login that is never closed stays open on the server until its
    idle timeout. The task keeps its hook in ``self.hook`` (a cached property)."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        finally:
            if "hook" in self.__dict__:
                self.__dict__["hook"].close()

    return wrapper


def client_config_from_connection(conn: Connection) -> ClientConfig:
    """The client settings a Connection stands for; shared by the hook and the triggers."""
    extra = conn.extra_dejson or {}
    options: dict[str, Any] = {}
    for key, cast in EXTRA_NUMBERS.items():
        if extra.get(key) not in (None, ""):
            try:
                options[key] = cast(extra[key])
            except (TypeError, ValueError) as exc:
                raise XnatError(f"Connection {conn.conn_id!r}: extra {key!r} must be a number, "
                                f"not {extra[key]!r}") from exc
    verify: bool | str = _truthy(extra.get("verify_ssl", True))
    if verify and extra.get("ca_bundle"):
        verify = str(extra["ca_bundle"])
    if conn.password:
        mask_secret(conn.password)
    return ClientConfig(
        url=connection_url(conn.host, conn.port, conn.schema, extra.get("protocol")), user=conn.login,
        password=conn.password, verify=verify, on_secret=mask_secret, **options)


class XnatHook(BaseHook):
    """Interact with XNAT through an ``xnat`` connection. ``get_conn()`` returns the :class:`XnatClient`.

    :param xnat_conn_id: the Airflow connection id (default ``xnat_default``).
    """

    conn_name_attr = "xnat_conn_id"
    default_conn_name = "xnat_default"
    conn_type = "xnat"
    hook_name = "XNAT"

    def __init__(self, xnat_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.xnat_conn_id = xnat_conn_id

    @cached_property
    def client_config(self) -> ClientConfig:
        return client_config_from_connection(self.get_connection(self.xnat_conn_id))

    @cached_property
    def client(self) -> XnatClient:
        return XnatClient(self.client_config)

    def get_conn(self) -> XnatClient:
        return self.client

    def test_connection(self) -> tuple[bool, str]:
        """Log in and ask who we are: ``(True, "XNAT 1.8.10 as alice")`` or ``(False, reason)``; never raises."""
        try:
            client = self.client
            user = client.whoami()
            return True, f"XNAT {client.version()} as {user}"
        except Exception as exc:
            message = str(exc)
            try:
                message = self.client.session.redact(message)
            except Exception:
                pass
            return False, f"{type(exc).__name__}: {message}"
        finally:
            self.close()

    # Alias tokens, for downstream work that needs its own XNAT access.
    def issue_token(self, user: str | None = None) -> AliasToken:
        return self.client.issue_token(user)

    def validate_token(self, token: AliasToken | str, secret: str | None = None) -> str | None:
        return self.client.validate_token(token, secret)

    def invalidate_token(self, token: AliasToken | str) -> None:
        self.client.invalidate_token(token)

    def close(self) -> None:
        """Log out of XNAT if this hook logged in."""
        if "client" in self.__dict__:
            self.client.close()
            del self.__dict__["client"]

    def __enter__(self) -> XnatHook:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
