"""A plain-Python XNAT REST client: one login, safe retries, typed errors, verified transfers.

No Airflow imports here, so the client is testable alone and usable from other workflow engines.
"""

from .client import XnatClient
from .config import ClientConfig
from .errors import (
    XnatAuthError,
    XnatBadInputError,
    XnatConflictError,
    XnatError,
    XnatNotFoundError,
    XnatPermissionError,
    XnatServerError,
    XnatTransferError,
)
from .models import AliasToken, Experiment, Manifest, PrearchiveSession, RemoteFile, Scan, SessionRef
from .protocol import base_path

__all__ = [
    "AliasToken",
    "ClientConfig",
    "Experiment",
    "Manifest",
    "PrearchiveSession",
    "RemoteFile",
    "Scan",
    "SessionRef",
    "XnatAuthError",
    "XnatBadInputError",
    "XnatClient",
    "XnatConflictError",
    "XnatError",
    "XnatNotFoundError",
    "XnatPermissionError",
    "XnatServerError",
    "XnatTransferError",
    "base_path",
]
