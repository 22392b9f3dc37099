"""The distributed test (``make test-distributed``) runs what ``docker/docker-compose.yaml`` describes.

``tests/distributed/deployment.py`` builds every process's environment and command from the compose file; these
checks, which need no servers, hold it to that: the same services, the same settings and commands, and nothing
added but the settings it lists (with reasons) for running every component on one machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.compose_file import SECRETS, compose, service_env
from tests.distributed import deployment

SETTINGS = {**SECRETS, "XNAT_URL": "http://127.0.0.1:9000", "XNAT_PASSWORD": "pw", "XNAT_LANDING": "file:///l",
            "XNAT_WORK": "file:///w"}
ENDPOINTS = deployment.Endpoints(postgres_port=5433, redis_port=6380, api_port=8088)
COMPOSE_NETWORK_NAMES = ("@postgres/", "@redis:", "airflow-apiserver", "xnat-emulator")


def airflow_services(services: dict) -> set[str]:
    """The long-running Airflow services a deployment starts by default (not the one-off init, nor the ones in
    optional profiles such as flower and airflow-cli)."""
    return {name for name, spec in services.items()
            if name.startswith("airflow-") and name != "airflow-init" and not spec.get("profiles")}


def test_the_test_runs_every_airflow_service_of_the_compose_file() -> None:
    services = compose(**SETTINGS)["services"]
    assert set(deployment.COMPONENTS) == airflow_services(services)
    assert deployment.COMPONENTS["airflow-worker"] >= 2, "the point is tasks spread over more than one worker"
    assert {"postgres", "redis", "xnat-emulator", "airflow-init"} <= set(services), "the test provides these too"


@pytest.mark.parametrize(("name", "worker"), [("airflow-scheduler", False), ("worker-1", True)])
def test_each_process_gets_the_compose_environment_plus_only_the_listed_settings(
        tmp_path: Path, name: str, worker: bool) -> None:
    compose_env = service_env(compose(**SETTINGS)["services"]["airflow-scheduler"])
    env = deployment.component_env(SETTINGS, ENDPOINTS, tmp_path, name, worker=worker)
    unlisted = set(env) - set(compose_env) - set(deployment.HARNESS_ONLY)
    assert not unlisted, f"settings the compose file lacks: {unlisted}"
    for key in set(env) & set(compose_env) - set(deployment.HARNESS_ONLY):
        assert env[key] == ENDPOINTS.replace(compose_env[key]), key
    assert not [k for k, v in env.items() if any(n in v for n in COMPOSE_NETWORK_NAMES)], "a compose host name left"
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://airflow:airflow@127.0.0.1:5433/")
    assert env["AIRFLOW__CELERY__BROKER_URL"] == "redis://:@127.0.0.1:6380/0"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:8088/execution/"
    assert env["XNAT_WORK"] == "file:///w" and env["XNAT_LANDING"] == "file:///l"
    assert ('"host": "http://127.0.0.1:9000"' in env["AIRFLOW_CONN_XNAT_DEFAULT"]
            and '"password": "pw"' in env["AIRFLOW_CONN_XNAT_DEFAULT"])
    assert ("XNAT_DIST_WORKER" in env) is worker


def test_every_listed_setting_is_used(tmp_path: Path) -> None:
    """No stale entry in HARNESS_ONLY: each is set for some process."""
    used = set(deployment.component_env(SETTINGS, ENDPOINTS, tmp_path, "worker-1", worker=True))
    compose_env = set(service_env(compose(**SETTINGS)["services"]["airflow-scheduler"]))
    assert set(deployment.HARNESS_ONLY) <= used - compose_env


def test_processes_run_the_compose_commands() -> None:
    assert deployment.service_command(SETTINGS, "airflow-worker") == ["celery", "worker"]
    for service, command in {"airflow-apiserver": "api-server", "airflow-scheduler": "scheduler",
                             "airflow-dag-processor": "dag-processor", "airflow-triggerer": "triggerer"}.items():
        assert deployment.service_command(SETTINGS, service) == [command]
    emulator = deployment.emulator_command(SETTINGS)
    assert emulator[0] == "xnat-emulator" and {"--host", "--port", "--data-dir", "--user", "--project"} <= set(emulator)
    assert emulator[emulator.index("--user") + 1] == "admin:pw", "the emulator takes the connection's credentials"
    assert deployment.init_env(SETTINGS)["_AIRFLOW_WWW_USER_USERNAME"] == "airflow"
