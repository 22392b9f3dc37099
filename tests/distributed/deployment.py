"""The deployment the distributed test runs, derived from ``docker/docker-compose.yaml`` so the two cannot drift.

Each Airflow component gets the compose file's ``x-airflow-common`` environment, with the compose network's
service names (``postgres``, ``redis``, ``airflow-apiserver``, ``xnat-emulator``) replaced by the loopback
ports of the processes this test starts, and runs the command of its compose service. The only settings added
are in ``HARNESS_ONLY``, each with the reason one machine needs it; ``tests/test_distributed_deployment.py``
checks that nothing else differs.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.compose_file import compose, service_env

REPO = Path(__file__).resolve().parents[2]

# Compose service -> how many processes of it the test runs. airflow-init is the one-off preparation.
COMPONENTS = {
    "airflow-apiserver": 1, "airflow-scheduler": 1, "airflow-dag-processor": 1, "airflow-triggerer": 1,
    "airflow-worker": 2,
}
# One task slot per worker: with Airflow's Celery defaults (prefetch multiplier 1, late acks) a busy worker takes
# no other task, so tasks runnable together (the mapped imports, downloads, summaries) run on both workers. With
# two slots each, one worker could take both of a run's mapped downloads, and did (CI, 08:44: 6 of 6 on one).
WORKER_CONCURRENCY = 1

# Settings the test adds to the compose environment, and why (all processes share one machine).
HARNESS_ONLY = {
    "AIRFLOW_HOME": "one home for all components, as the image's /opt/airflow (its logs folder is the compose "
                    "file's shared airflow-logs volume)",
    "AIRFLOW__CORE__DAGS_FOLDER": "the repository's dags/ (compose bind-mounts it at /opt/airflow/dags)",
    "AIRFLOW__API__HOST": "loopback only",
    "AIRFLOW__API__PORT": "a free port (compose publishes the container's 8080)",
    "AIRFLOW__API__WORKERS": "one API server process on a 2-core machine (the default is 4)",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": "a free port (8974 inside the container)",
    "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": "each worker's log server on a port of its own (one host)",
    "AIRFLOW__CORE__HOSTNAME_CALLABLE": "each worker reports a name of its own, as containers have hostnames",
    "AIRFLOW__CELERY__WORKER_CONCURRENCY": "one task slot per worker, so tasks runnable together run on both",
    "XNAT_DIST_WORKER": "the worker name HOSTNAME_CALLABLE returns",
    "XNAT_EXAMPLE_POLL_SECONDS": "the example DAGs poll every few seconds instead of 15",
    "XNAT_EXAMPLE_QUIET_SECONDS": "and need a shorter quiet period",
    "PYTHONPATH": "the repository root, for HOSTNAME_CALLABLE",
    "HOME": "each component its own home folder: workers share no disk but the logs folder",
    "TMPDIR": "and its own temporary folder",
}


@dataclass(frozen=True)
class Endpoints:
    """Where the compose network's services are on this machine (the emulator's URL goes in as XNAT_URL)."""

    postgres_port: int
    redis_port: int
    api_port: int

    def replace(self, value: str) -> str:
        return (value.replace("@postgres/", f"@127.0.0.1:{self.postgres_port}/")
                .replace("@redis:6379/", f"@127.0.0.1:{self.redis_port}/")
                .replace("http://airflow-apiserver:8080/", f"http://127.0.0.1:{self.api_port}/"))


def compose_file(settings: Mapping[str, str]) -> dict[str, Any]:
    """The compose file as docker compose reads it with ``settings`` in docker/.env."""
    return compose(**settings)


def common_env(settings: Mapping[str, str], endpoints: Endpoints) -> dict[str, str]:
    """``x-airflow-common``'s environment (taken from the scheduler, which adds nothing to it), with the
    service names replaced by ``endpoints``."""
    env = service_env(compose_file(settings)["services"]["airflow-scheduler"])
    return {name: endpoints.replace(value) for name, value in env.items()}


def component_env(settings: Mapping[str, str], endpoints: Endpoints, folder: Path, name: str,
                  worker: bool = False, free_port: Callable[[], int] | None = None) -> dict[str, str]:
    """The environment of one component process ``name``: the compose file's, plus ``HARNESS_ONLY``."""
    port = free_port or (lambda: 0)
    home = folder / "homes" / name
    env = common_env(settings, endpoints)
    env.update(
        AIRFLOW_HOME=str(folder / "airflow"), AIRFLOW__CORE__DAGS_FOLDER=str(REPO / "dags"),
        AIRFLOW__API__HOST="127.0.0.1", AIRFLOW__API__PORT=str(endpoints.api_port), AIRFLOW__API__WORKERS="1",
        AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT=str(port()),
        AIRFLOW__CELERY__WORKER_CONCURRENCY=str(WORKER_CONCURRENCY),
        XNAT_EXAMPLE_POLL_SECONDS="2", XNAT_EXAMPLE_QUIET_SECONDS="3", PYTHONPATH=str(REPO),
        HOME=str(home), TMPDIR=str(home / "tmp"))
    if worker:
        env.update(AIRFLOW__CORE__HOSTNAME_CALLABLE="tests.distributed.worker_identity.hostname",
                   XNAT_DIST_WORKER=name, AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(port()))
    return env


def service_command(settings: Mapping[str, str], service: str) -> list[str]:
    """The Airflow CLI arguments of a compose service (its ``command``, run by the image as ``airflow ...``)."""
    command = compose_file(settings)["services"][service]["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


def emulator_command(settings: Mapping[str, str]) -> list[str]:
    return list(compose_file(settings)["services"]["xnat-emulator"]["command"])


def init_env(settings: Mapping[str, str]) -> dict[str, str]:
    """What airflow-init adds: the admin user's name and password (created with ``airflow users create``)."""
    env = service_env(compose_file(settings)["services"]["airflow-init"])
    return {k: v for k, v in env.items() if k.startswith("_AIRFLOW_WWW_USER_")}
