"""Typed errors, so that callers (and Airflow retry policies) can tell what went wrong without parsing text.

Every error carries the HTTP method, the path and XNAT's own message (the ``<h3>`` of its status page) where
there was one, and never a secret: the client redacts passwords, token secrets and session ids from every
message before raising, and where the HTTP library failed (no answer, a cut answer) it chains a
:class:`RedactedCause` (the library's exception type and redacted message) instead of the library's exception,
whose URL may carry a token secret. Nothing reachable through ``__cause__`` or ``__context__`` holds a secret.

Which to retry: :class:`XnatServerError` and :class:`XnatTransferError` are worth another try;
:class:`XnatAuthError`, :class:`XnatPermissionError`, :class:`XnatNotFoundError`, :class:`XnatConflictError`
and :class:`XnatBadInputError` will fail the same way again.
"""

from __future__ import annotations


class XnatError(Exception):
    """Base of every error the client raises."""

    def __init__(self, message: str, *, method: str | None = None, path: str | None = None,
                 status: int | None = None, xnat_message: str | None = None):
        super().__init__(message)
        self.method = method
        self.path = path
        self.status = status
        self.xnat_message = xnat_message

    retryable = False


class XnatAuthError(XnatError):
    """Login failed, the account is locked, or the session could not be renewed (401)."""


class XnatPermissionError(XnatError):
    """Authenticated but not allowed (403)."""


class XnatNotFoundError(XnatError):
    """The project, subject, experiment, scan, resource, file or prearchive session does not exist (404)."""


class XnatConflictError(XnatError):
    """The server refused because of existing data: 409, or an archive that failed with a merge conflict
    (XNAT 1.8.9+ answers that as 500 ``FAILED: ...`` and leaves the prearchive row in CONFLICT)."""


class XnatServerError(XnatError):
    """XNAT or a gateway failed (5xx, 429, or an error page answered with 200). Usually worth a retry."""

    retryable = True


class XnatTransferError(XnatError):
    """A transfer ended short or its bytes do not match the size or MD5 the server lists. Worth a retry: a
    retry resumes or redoes only what is missing."""

    retryable = True


class XnatBadInputError(XnatError, ValueError):
    """The caller's input is wrong (missing local file, bad label, unsafe path...), caught before or by XNAT
    (400, 417, 422)."""


class XnatContainerFailedError(XnatError):
    """A Container Service launch that did not end ``Complete``: the launch failed before any container existed
    (its workflow's status is ``Failed (...)`` and ``details`` says why: a command resolution failure, a missing
    image...), or the container ended ``Failed`` (a non-zero exit, outputs that could not be uploaded), or was
    killed. ``status`` stays the HTTP status (None here); the container's own is ``container_status``.

    A retry launches the wrapper again (a failed container is never adopted), so whether one is worth it depends on
    the pipeline: ``xnat_retry_policy`` leaves this class to the task's ``retries``; the launch operator raises a
    fail-fast subclass unless told otherwise (``retry_failed_container``)."""

    def __init__(self, message: str, *, container_id: str | None = None, workflow_id: str | None = None,
                 container_status: str | None = None, exit_code: str | None = None, killed: bool = False,
                 details: str | None = None, **kwargs: object):
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.container_id = container_id
        self.workflow_id = workflow_id
        self.container_status = container_status
        self.exit_code = exit_code
        self.killed = killed
        self.details = details


class RedactedCause(Exception):
    """A stand-in for what the HTTP library raised, set as the ``__cause__`` of the client's error in its place.

    The library's own exception carries the request's URL (in its message, and in attributes of the exceptions it
    chains), and XNAT puts alias-token secrets in URL paths: a task log that prints the chain would show them. This
    stand-in keeps what helps a diagnosis, the original's type and its message with every known secret replaced
    by ``***``, and chains nothing. ``reached_server`` is False when the request surely never reached XNAT
    (the connection was refused or never opened): a POST that failed so cannot have taken effect."""

    def __init__(self, type_name: str, message: str, *, reached_server: bool = True):
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.reached_server = reached_server


def error_for_status(status: int) -> type[XnatError]:
    if status == 401:
        return XnatAuthError
    if status == 403:
        return XnatPermissionError
    if status == 404:
        return XnatNotFoundError
    if status == 409:
        return XnatConflictError
    if status in (400, 406, 411, 413, 415, 417, 422):
        return XnatBadInputError
    return XnatServerError


# The client's error classes by name: how an error crosses a boundary that carries only JSON (a trigger's event)
# and is raised again as the same class on the other side.
ERROR_TYPES: dict[str, type[XnatError]] = {cls.__name__: cls for cls in (
    XnatError, XnatAuthError, XnatPermissionError, XnatNotFoundError, XnatConflictError, XnatBadInputError,
    XnatServerError, XnatTransferError)}


def error_kind(exc: BaseException) -> str:
    """The name of the client error class ``exc`` is (or derives from): ``XnatAuthError``, ``XnatServerError``...;
    ``XnatError`` for anything else."""
    for cls in type(exc).__mro__:
        if ERROR_TYPES.get(cls.__name__) is cls:
            return cls.__name__
    return "XnatError"
