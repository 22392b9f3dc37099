"""A plain-Python XNAT REST client: one login, safe retries, typed errors, verified transfers.

No Airflow imports here, so the client is testable alone and usable from other workflow engines.
"""

from .client import XnatClient
from .config import ClientConfig
from .containers import (
    BulkLaunch,
    Command,
    Container,
    ContainerWatch,
    Launch,
    LaunchPlan,
    LaunchTarget,
    Workflow,
    Wrapper,
)
from .errors import (
    XnatAuthError,
    XnatBadInputError,
    XnatConflictError,
    XnatContainerFailedError,
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
    "BulkLaunch",
    "ClientConfig",
    "Command",
    "Container",
    "ContainerWatch",
    "Experiment",
    "Launch",
    "LaunchPlan",
    "LaunchTarget",
    "Manifest",
    "PrearchiveSession",
    "RemoteFile",
    "Scan",
    "SessionRef",
    "Workflow",
    "Wrapper",
    "XnatAuthError",
    "XnatBadInputError",
    "XnatClient",
    "XnatConflictError",
    "XnatContainerFailedError",
    "XnatError",
    "XnatNotFoundError",
    "XnatPermissionError",
    "XnatServerError",
    "XnatTransferError",
    "base_path",
]
