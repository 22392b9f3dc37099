"""``XnatHook``: an Airflow Connection of type ``xnat`` mapped onto the plain-Python :class:`XnatClient`.

The hook adds what only Airflow knows: where the connection comes from (UI, URI or JSON in
``AIRFLOW_CONN_*``, a secrets backend), masking of every secret the client learns (password, token secrets,
its login's ``JSESSIONID``) with Airflow's ``mask_secret``, and the UI's connection test. Everything else (login reuse,
re-login, retries, verified transfers) is the client's, so it behaves the same outside Airflow.

Connection fields: host is the XNAT URL (``https://xnat.example.org/xnat``, a path prefix allowed) or a bare
host name with the port field (``https`` unless the ``protocol`` extra says ``http``); login is a user or an
alias token's alias; password the password or the token's secret. Extras (all optional): ``verify_ssl``
(default true), ``ca_bundle`` (a CA file path), ``connect_timeout`` (10 s), ``read_timeout`` (300 s),
``retries`` (5 attempts), ``backoff`` (1 s, doubled up to 60 s), ``workers`` (4 parallel downloads),
``settle_seconds`` (30 s to look for the effect of a lost import or archive answer before resending),
``progress_interval`` (10 s at least between two progress lines of a long download or upload in the task's log;
0 logs a line at every tenth of the total, a very large number only the summary at the end), ``direct_io``
(default true: a download of a file of 32 MiB or more is written around the page cache where the file system
allows it, see ``xnat_provider/client/part_file.py``; false writes every file through the page cache).

The connection is checked when it is read, before any request: no host, an extra that is not a number where a
number is expected (or out of range), an unknown ``protocol``, a ``ca_bundle`` that does not exist, or extras
that are not a JSON object raise :class:`XnatBadInputError` (a retry cannot fix them). TLS verification fails
closed: only an explicit false (JSON ``false``, ``0``, or the text ``false``, ``0``, ``no`` or ``off`` in any
case) turns it off; an unset, null or empty ``verify_ssl`` keeps it on, and any other value is refused.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Callable
from functools import cached_property
from typing import Any

from airflow.sdk import BaseHook, Connection
from airflow.sdk.exceptions import AirflowNotFoundException
from airflow.sdk.log import mask_secret

from ..client import AliasToken, ClientConfig, XnatBadInputError, XnatClient

# extra -> (type, smallest allowed value, whether the smallest value itself is allowed)
EXTRA_NUMBERS: dict[str, tuple[type, float, bool]] = {
    "connect_timeout": (float, 0, False), "read_timeout": (float, 0, False), "retries": (int, 1, True),
    "backoff": (float, 0, True), "workers": (int, 1, True), "settle_seconds": (float, 0, True),
    "progress_interval": (float, 0, True)}
VERIFY_OFF = ("false", "0", "no", "off")
VERIFY_ON = ("true", "1", "yes", "on")
PROTOCOLS = ("http", "https")


def _flag(value: Any) -> bool | None:
    """An extra's true/false: JSON booleans, 0 and 1, or their spellings in any case; None for anything else."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    text = value.strip().lower() if isinstance(value, str) else None
    return True if text in VERIFY_ON else False if text in VERIFY_OFF else None


def verify_ssl_extra(value: Any, conn_id: str | None = None) -> bool:
    """The ``verify_ssl`` extra as a bool, failing closed: unset, null or empty means verify; only an explicit
    false (``False``, ``0``, or ``"false"``, ``"0"``, ``"no"``, ``"off"`` in any case) turns verification off;
    anything else is refused rather than guessed."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return True
    flag = _flag(value)
    if flag is None:
        raise XnatBadInputError(
            f"Connection {conn_id!r}: extra 'verify_ssl' must be true or false (false, 0, no or off turn certificate "
            f"checks off), not {value!r}. To trust a private CA, keep verify_ssl true and set ca_bundle to its file.")
    return flag


def flag_extra(conn_id: str | None, key: str, value: Any) -> bool:
    """A true/false extra other than ``verify_ssl`` (``direct_io``): spelled as ``verify_ssl`` may be."""
    flag = _flag(value)
    if flag is None:
        raise XnatBadInputError(f"Connection {conn_id!r}: extra {key!r} must be true or false, not {value!r}")
    return flag


def _number_extra(conn_id: str | None, key: str, value: Any) -> float | int:
    cast, least, inclusive = EXTRA_NUMBERS[key]
    try:
        if isinstance(value, bool):  # JSON true is not a count of seconds
            raise ValueError(value)
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or (cast is int and not number.is_integer()):
        kind = "a whole number" if cast is int else "a number"
        raise XnatBadInputError(f"Connection {conn_id!r}: extra {key!r} must be {kind}, not {value!r}")
    if number < least or (number == least and not inclusive):
        bound = f"at least {least:g}" if inclusive else f"more than {least:g}"
        raise XnatBadInputError(f"Connection {conn_id!r}: extra {key!r} must be {bound}, not {value!r}")
    return cast(number)


def connection_extras(conn: Connection) -> dict[str, Any]:
    """The connection's extras as a mapping; extras that are not a JSON object are a configuration mistake
    (Airflow would log the error and carry on with none, TLS and timeout settings silently dropped)."""
    raw = conn.extra
    if raw in (None, ""):
        return {}
    if isinstance(raw, str):
        try:
            parsed = json.loads(raw)
        except ValueError as exc:
            raise XnatBadInputError(f"Connection {conn.conn_id!r}: its extras are not valid JSON "
                                    f"({exc.msg} at character {exc.pos})") from None
        if not isinstance(parsed, dict):
            raise XnatBadInputError(f"Connection {conn.conn_id!r}: its extras must be a JSON object, "
                                    f"not {type(parsed).__name__}")
    return dict(conn.extra_dejson or {})


def connection_url(host: str | None, port: int | None = None, schema: str | None = None,
                   protocol: str | None = None) -> str:
    """The XNAT base URL from a Connection's host, port and schema (URI forms put a path in ``schema``)."""
    host = (host or "").strip()
    if not host:
        raise XnatBadInputError("The XNAT connection has no host: set it to the server's URL, "
                                "e.g. https://xnat.example.org")
    if protocol not in (None, "") and str(protocol).strip().lower() not in PROTOCOLS:
        raise XnatBadInputError(f"The XNAT connection's extra 'protocol' must be http or https, not {protocol!r}")
    protocol = str(protocol).strip().lower() if protocol not in (None, "") else None
    if "://" in host:
        scheme, rest = host.split("://", 1)
        if scheme.lower() not in PROTOCOLS:
            raise XnatBadInputError(f"The XNAT connection's host {host!r} must start with http:// or https://")
        netloc, _, path = rest.partition("/")
        if not netloc:
            raise XnatBadInputError(f"The XNAT connection's host {host!r} has no server name")
        if port and ":" not in netloc:
            netloc = f"{netloc}:{port}"
        return f"{scheme}://{netloc}" + (f"/{path.strip('/')}" if path.strip("/") else "")
    scheme = (protocol or (schema if schema in ("http", "https") else None) or "https").lower()
    path = schema if schema and schema not in ("http", "https") else ""
    netloc = f"{host}:{port}" if port else host
    return f"{scheme}://{netloc}" + (f"/{path.strip('/')}" if path and path.strip("/") else "")


def logs_out(method: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a task method that Airflow calls (``execute``, ``execute_complete``) so that the task's hook
    logs out of XNAT when it returns, however it ends (success, failure, deferral, reschedule): an XNAT login
    that is never closed stays open on the server until its idle timeout (15 minutes), and a busy Airflow would
    otherwise keep hundreds of them.

    Nothing applies it for you: each ``execute`` and ``execute_complete`` of the provider's operators and sensors
    carries it, visibly, and a subclass of yours opts in the same way::

        class MyOperator(XnatBaseOperator):
            @logs_out
            def execute(self, context):
                return self.hook.get_conn().list_projects()

    The task keeps its hook in ``self.hook`` (a cached property); the login is made by the first request and
    closed here. Calls nest: a decorated method that calls another (``super().execute(context)``) keeps the
    login until the outermost one returns, so the rest of its work does not log in again.
    """

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        depth = self.__dict__.get(_LOGIN_DEPTH, 0)
        self.__dict__[_LOGIN_DEPTH] = depth + 1
        try:
            return method(self, *args, **kwargs)
        finally:
            if depth:
                self.__dict__[_LOGIN_DEPTH] = depth
            else:
                self.__dict__.pop(_LOGIN_DEPTH, None)
                if "hook" in self.__dict__:
                    self.__dict__["hook"].close()

    wrapper.logs_out = True  # type: ignore[attr-defined]  # what tests look for (see is_logged_out)
    return wrapper


_LOGIN_DEPTH = "_xnat_logs_out_depth"


def is_logged_out(method: Any) -> bool:
    """Whether ``method`` (a function, possibly wrapped again by Airflow's own decorators) carries
    :func:`logs_out`."""
    while method is not None:
        if getattr(method, "logs_out", False):
            return True
        method = getattr(method, "__wrapped__", None)
    return False


def client_config_from_connection(conn: Connection) -> ClientConfig:
    """The client settings a Connection stands for; shared by the hook and the triggers. Every configuration
    mistake is an :class:`XnatBadInputError` raised here, before any request (see the module docstring)."""
    if conn.password:
        mask_secret(conn.password)
    extra = connection_extras(conn)
    options: dict[str, Any] = {}
    for key in EXTRA_NUMBERS:
        if extra.get(key) not in (None, ""):
            options[key] = _number_extra(conn.conn_id, key, extra[key])
    if extra.get("direct_io") not in (None, ""):
        options["direct_io"] = flag_extra(conn.conn_id, "direct_io", extra["direct_io"])
    verify: bool | str = verify_ssl_extra(extra.get("verify_ssl"), conn.conn_id)
    ca_bundle = extra.get("ca_bundle")
    if verify and ca_bundle not in (None, ""):
        if not isinstance(ca_bundle, str) or not os.path.exists(ca_bundle):
            raise XnatBadInputError(f"Connection {conn.conn_id!r}: extra 'ca_bundle' must be the path of a CA "
                                    f"file (or folder) on this machine; {ca_bundle!r} does not exist here")
        verify = ca_bundle
    return ClientConfig(
        url=connection_url(conn.host, conn.port, conn.schema, extra.get("protocol")), user=conn.login,
        password=conn.password, verify=verify, on_secret=mask_secret, **options)


def missing_connection(conn_id: str, exc: Exception) -> XnatBadInputError:
    """A connection id Airflow does not know is a configuration mistake, not something a retry fixes."""
    return XnatBadInputError(f"There is no Airflow connection {conn_id!r} ({exc}): create it, or set "
                             "xnat_conn_id to the id of an existing connection of type xnat")


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
        try:
            conn = self.get_connection(self.xnat_conn_id)
        except AirflowNotFoundException as exc:
            raise missing_connection(self.xnat_conn_id, exc) from None
        return client_config_from_connection(conn)

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
                message = self.client.redact(message)
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
