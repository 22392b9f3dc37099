"""``[core] hostname_callable`` for the distributed test's workers: each reports the name it was started with,
as each worker container of the compose deployment reports its own hostname, so the test can see which worker
ran which task."""

from __future__ import annotations

import os
import socket


def hostname() -> str:
    return os.environ.get("XNAT_DIST_WORKER") or socket.getfqdn()
