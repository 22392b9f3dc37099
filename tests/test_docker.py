"""docker/: the compose deployment and the image, checked without a Docker engine.

No Docker engine runs where these tests run, so they check what can be checked by reading: the compose file
parses and has the services, executor, dependencies and healthchecks of Airflow's reference deployment;
every host file and folder it and the Dockerfile name exists (and is not hidden from the build by
.dockerignore); the Dockerfile extends an Airflow 3.3 image and installs this provider from source; and the
XNAT connection it sets is valid JSON that this provider's hook turns into the emulator's URL, or a real
XNAT's when the documented settings are used. Variables are substituted the way docker compose does it.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from tests.compose_file import (
    COMPOSE_FILE,
    REQUIRED_SECRETS,
    SECRETS,
    VARIABLE,
    MissingVariable,
    compose,
    interpolate,
    raw_compose,
    service_env,
    substitute,
)

REPO = Path(__file__).resolve().parent.parent
DOCKER = REPO / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
ENV_EXAMPLE = DOCKER / ".env.example"
DOCKERIGNORE = REPO / ".dockerignore"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


AIRFLOW_SERVICES = {
    "airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
    "airflow-worker",
}
LONG_RUNNING = {"postgres", "redis", "xnat-emulator", "flower"} | AIRFLOW_SERVICES - {"airflow-init"}


def conditions(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    return {name: "service_started" for name in deps} if isinstance(deps, list) else {
        name: spec["condition"] for name, spec in deps.items()}


def host_volumes(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of each short-syntax volume entry."""
    pairs = []
    for entry in service.get("volumes") or []:
        assert isinstance(entry, str), f"long-syntax volume entries are not checked here: {entry!r}"
        source, target = entry.split(":")[:2]
        pairs.append((source, target))
    return pairs


def is_bind(source: str) -> bool:
    return source.startswith((".", "/", "~"))


# --- the compose file ---

def test_compose_parses_with_the_services_of_a_celery_deployment() -> None:
    doc = compose()
    assert {"postgres", "redis", "xnat-emulator", "flower", "airflow-cli"} | AIRFLOW_SERVICES <= set(doc["services"])
    assert "x-airflow-common" in doc and "version" not in doc  # the top-level version key is obsolete
    commands = {name: doc["services"][name].get("command") for name in AIRFLOW_SERVICES - {"airflow-init"}}
    assert commands == {"airflow-apiserver": "api-server", "airflow-scheduler": "scheduler",
                        "airflow-dag-processor": "dag-processor", "airflow-triggerer": "triggerer",
                        "airflow-worker": "celery worker"}
    assert doc["services"]["flower"]["command"] == "celery flower"
    assert doc["services"]["flower"]["profiles"] == ["flower"]


def test_compose_refuses_to_start_without_the_secrets() -> None:
    raw = raw_compose()
    for name in REQUIRED_SECRETS:
        env = {k: v for k, v in SECRETS.items() if k != name}
        with pytest.raises(MissingVariable, match=name):
            interpolate(raw, env)
        with pytest.raises(MissingVariable, match=name):  # an empty value counts as missing (":?")
            interpolate(raw, {**env, name: ""})
    for service in AIRFLOW_SERVICES:
        env = service_env(compose()["services"][service])
        assert {name: env[name] for name in REQUIRED_SECRETS} == SECRETS


def test_every_airflow_component_runs_celery_on_postgres_and_redis() -> None:
    doc = compose()
    for name in AIRFLOW_SERVICES | {"flower", "airflow-cli"}:
        service = doc["services"][name]
        env = service_env(service)
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://"), name
        assert "@postgres/" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], name
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql://"), name
        assert re.fullmatch(r"redis://[^@]*@redis:6379/\d+", env["AIRFLOW__CELERY__BROKER_URL"]), name
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/", name
        assert service["image"] == doc["services"]["airflow-apiserver"]["image"], name
        assert service["user"] == "50000:0" or name == "airflow-init", name
    assert doc["services"]["airflow-init"]["user"] == "0:0"
    # the Execution API URL names the API server's container port
    assert doc["services"]["airflow-apiserver"]["ports"] == ["8080:8080"]
    assert service_env(doc["services"]["airflow-worker"])["DUMB_INIT_SETSID"] == "0"


def test_init_migrates_the_database_and_creates_the_admin_user() -> None:
    init = compose()["services"]["airflow-init"]
    env = service_env(init)
    assert env["_AIRFLOW_DB_MIGRATE"] == "true" and env["_AIRFLOW_WWW_USER_CREATE"] == "true"
    assert env["_AIRFLOW_WWW_USER_USERNAME"] == "airflow"
    assert compose(_AIRFLOW_WWW_USER_PASSWORD="s3cret")["services"]["airflow-init"]["environment"][
        "_AIRFLOW_WWW_USER_PASSWORD"] == "s3cret"
    script = init["command"][-1]
    assert init["entrypoint"] == "/bin/bash" and "/entrypoint airflow" in script  # the entrypoint does the work


def test_dependencies_wait_for_health_and_for_init() -> None:
    services = compose()["services"]
    for name in AIRFLOW_SERVICES | {"flower"}:
        deps = conditions(services[name])
        assert deps["postgres"] == deps["redis"] == "service_healthy", name
        if name != "airflow-init":
            assert deps["airflow-init"] == "service_completed_successfully", name
    assert conditions(services["airflow-worker"])["airflow-apiserver"] == "service_healthy"
    for name, service in services.items():
        for dep, condition in conditions(service).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert condition in ("service_started", "service_healthy", "service_completed_successfully")
            if condition == "service_healthy":
                assert services[dep].get("healthcheck", {}).get("test"), f"{dep} has no healthcheck"
            # a service may not depend on one that its profiles can leave out
            assert not services[dep].get("profiles") or set(services[dep]["profiles"]) >= set(
                service.get("profiles") or ["<default>"]), f"{name} depends on profiled {dep}"


def test_long_running_services_have_healthchecks_and_restart() -> None:
    services = compose()["services"]
    for name in LONG_RUNNING:
        check = services[name].get("healthcheck")
        assert check and check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert all(re.fullmatch(r"\d+s", str(check[k])) for k in ("interval", "timeout", "start_period")
                   if k in check), name
        assert services[name].get("restart") == "always", name
    assert "8974/health" in " ".join(services["airflow-scheduler"]["healthcheck"]["test"])
    assert compose()["services"]["airflow-scheduler"]["environment"][
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "true"
    assert "/api/v2/monitor/health" in " ".join(services["airflow-apiserver"]["healthcheck"]["test"])
    assert "--job-type DagProcessorJob" in services["airflow-dag-processor"]["healthcheck"]["test"][1]
    assert "--job-type TriggererJob" in services["airflow-triggerer"]["healthcheck"]["test"][1]
    # "$$" in the file is a literal "$" for the container's shell, so $HOSTNAME is the container's own
    assert '"${HOSTNAME}"' in services["airflow-triggerer"]["healthcheck"]["test"][1]


# --- files and folders named by the compose file ---

def test_build_context_and_dockerfile_exist() -> None:
    services = compose()["services"]
    built = [name for name, s in services.items() if "build" in s]
    assert set(built) >= AIRFLOW_SERVICES | {"xnat-emulator"}
    for name in built:
        context = (DOCKER / services[name]["build"]["context"]).resolve()
        assert context == REPO, name
        assert (context / services[name]["build"]["dockerfile"]).resolve() == DOCKERFILE, name
    assert DOCKERFILE.is_file() and (REPO / ".dockerignore").is_file()


@pytest.mark.parametrize("env", [{}, {"XNAT_LANDING_SOURCE": str(REPO / "dags")}], ids=["named", "host"])
def test_every_volume_source_exists_or_is_declared(env: dict[str, str]) -> None:
    doc = compose(**env)
    declared = set(doc.get("volumes") or {})
    seen_bind = set()
    for name, service in doc["services"].items():
        for source, target in host_volumes(service):
            assert target.startswith("/"), (name, target)
            if is_bind(source):
                path = (DOCKER / source).resolve()
                assert path.exists(), f"{name}: {source} -> {path} does not exist"
                seen_bind.add(path)
            else:
                assert source in declared, f"{name}: named volume {source} is not declared"
    assert REPO / "dags" in seen_bind
    if env:
        assert Path(env["XNAT_LANDING_SOURCE"]) in seen_bind


def test_the_example_dags_are_mounted_where_airflow_reads_them() -> None:
    doc = compose()
    for name in AIRFLOW_SERVICES:
        mounts = dict((t, s) for s, t in host_volumes(doc["services"][name]))
        assert (DOCKER / mounts["/opt/airflow/dags"]).resolve() == REPO / "dags", name
    assert {p.name for p in (REPO / "dags").glob("*.py")} >= {
        "xnat_prearchive_autoarchive.py", "xnat_scan_pipeline.py", "xnat_scheduled_ingest.py"}


def test_dag_settings_point_at_shared_volumes() -> None:
    doc = compose()
    dag_sources = "\n".join(p.read_text() for p in (REPO / "dags").glob("*.py"))
    for name in ("airflow-worker", "airflow-dag-processor", "airflow-scheduler", "airflow-triggerer"):
        service = doc["services"][name]
        env, targets = service_env(service), {t for _, t in host_volumes(service)}
        assert env["XNAT_LANDING"] in targets and env["XNAT_WORK"] in targets, name
        assert env["XNAT_PROJECT"] == "P1"
    for var in ("XNAT_LANDING", "XNAT_WORK", "XNAT_PROJECT"):
        assert f'os.environ.get("{var}"' in dag_sources, f"no example DAG reads {var}"


# --- the XNAT connection ---

def xnat_connection(**env: str):
    from airflow.sdk import Connection

    value = service_env(compose(**env)["services"]["airflow-worker"])["AIRFLOW_CONN_XNAT_DEFAULT"]
    data = json.loads(value)
    return data, Connection.from_json(value, conn_id="xnat_default")


def test_the_connection_is_json_for_the_emulator_service() -> None:
    from xnat_provider.hooks.xnat import client_config_from_connection

    data, conn = xnat_connection()
    assert data["conn_type"] == "xnat" == conn.conn_type
    assert (data["login"], data["password"]) == ("admin", "admin")
    config = client_config_from_connection(conn)
    assert config.url == "http://xnat-emulator:8080" and config.verify is True
    # ... and that is where the emulator listens, with those credentials and the DAGs' project
    emulator = compose()["services"]["xnat-emulator"]
    args = emulator["command"]
    opts = dict(zip(args[1::2], args[2::2], strict=True))
    assert opts == {"--host": "0.0.0.0", "--port": "8080", "--data-dir": "/data", "--user": "admin:admin",
                    "--project": "P1"}
    services = compose()["services"]
    for name in AIRFLOW_SERVICES:  # every component sees the same connection
        assert json.loads(service_env(services[name])["AIRFLOW_CONN_XNAT_DEFAULT"]) == data, name


def test_the_documented_settings_point_the_connection_at_a_real_xnat(tmp_path: Path) -> None:
    from xnat_provider.hooks.xnat import client_config_from_connection

    ca = tmp_path / "site-ca.pem"  # inside the container: /opt/airflow/certs/site-ca.pem; the hook checks it exists
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    data, conn = xnat_connection(XNAT_URL="https://xnat.example.org/xnat", XNAT_LOGIN="0f3c-alias",
                                 XNAT_PASSWORD="token-secret", XNAT_CA_BUNDLE=str(ca))
    assert data["conn_type"] == "xnat"
    config = client_config_from_connection(conn)
    assert (config.url, config.user, config.password) == ("https://xnat.example.org/xnat", "0f3c-alias",
                                                          "token-secret")
    assert config.verify == str(ca)
    _, conn = xnat_connection(XNAT_URL="https://xnat.test:8443", XNAT_VERIFY_SSL="false")
    assert client_config_from_connection(conn).verify is False
    assert client_config_from_connection(conn).url == "https://xnat.test:8443"


def test_the_emulator_runs_from_the_image_outside_airflows_entrypoint() -> None:
    emulator = compose()["services"]["xnat-emulator"]
    assert emulator["command"][0] in PYPROJECT["project"]["scripts"]  # the console script this package installs
    assert emulator["entrypoint"] == ["/usr/bin/dumb-init", "--"]  # not /entrypoint, which would run `airflow ...`
    assert emulator["image"] == compose()["services"]["airflow-worker"]["image"]
    assert ("xnat-emulator-data", "/data") in host_volumes(emulator)
    assert "localhost:8080/" in " ".join(emulator["healthcheck"]["test"])
    assert emulator["profiles"] == ["emulator"]
    assert re.search(r"^COMPOSE_PROFILES=emulator\b", ENV_EXAMPLE.read_text(), re.M)


# --- docker/.env.example ---

def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, line
            values[key.strip()] = value.strip()
    return values


def test_env_example_documents_every_variable_and_commits_no_secret() -> None:
    used = {m["named"] or m["braced"] for m in VARIABLE.finditer(COMPOSE_FILE.read_text()) if not m["escaped"]}
    used.add("COMPOSE_PROFILES")  # read by docker compose itself
    example = env_example()
    assert used == set(example), f"undocumented: {used - set(example)}; unused: {set(example) - used}"
    assert all(example[name] == "" for name in REQUIRED_SECRETS)
    # with the secrets filled in, the example's values give the defaults' deployment
    assert compose(**{k: v for k, v in example.items() if v}) == compose()


# --- the Dockerfile and .dockerignore ---

def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", "\n".join(
        line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in text.splitlines() if line.strip()]


def base_image() -> str:
    args: dict[str, str] = {}
    for keyword, rest in dockerfile_instructions():
        if keyword == "ARG" and "=" in rest:
            name, value = rest.split("=", 1)
            args[name.strip()] = value.strip().strip('"')
        if keyword == "FROM":
            return substitute(rest.split()[0], args)
    raise AssertionError("no FROM")


def test_the_image_extends_airflow_3_3() -> None:
    image = base_image()
    match = re.fullmatch(r"apache/airflow:(\d+\.\d+\.\d+)-python(3\.\d+)", image)
    assert match, image
    version = Version(match[1])
    assert (version.major, version.minor) == (3, 3)
    airflow_req = next(Requirement(r) for r in PYPROJECT["project"]["dependencies"]
                       if Requirement(r).name == "apache-airflow")
    assert airflow_req.specifier.contains(version)
    assert Version(match[2] + ".0") >= Version(PYPROJECT["project"]["requires-python"].removeprefix(">="))


def copies() -> list[tuple[list[str], str]]:
    out = []
    for keyword, rest in dockerfile_instructions():
        if keyword in ("COPY", "ADD"):
            parts = [p for p in rest.split() if not p.startswith("--")]
            out.append((parts[:-1], parts[-1]))
    return out


def dockerignore_patterns() -> list[str]:
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    patterns = [line for line in lines if line and not line.startswith("#")]
    assert not any(p.startswith("!") for p in patterns), "exceptions are not supported by this check"
    return patterns


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore (Go filepath.Match plus **) leaves ``path`` or a parent of it out of the context."""
    parts = path.strip("/").split("/")
    for pattern in patterns:
        regex = re.escape(pattern.strip("/")).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, "/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            return True
    return False


def test_dockerignore_keeps_the_context_small_but_keeps_what_the_image_copies() -> None:
    patterns = dockerignore_patterns()
    for path in (".git", ".venv", "demo-data", "benchmarks/.data", "docker/.env",
                 "xnat_provider/__pycache__/x.pyc"):
        assert ignored(path, patterns), path
    sources = [src for srcs, _ in copies() for src in srcs]
    assert {"pyproject.toml", "README.md", "xnat_provider", "dags"} <= set(sources)
    for src in sources:
        assert (REPO / src).exists(), f"COPY {src}: no such file in the build context"
        assert not ignored(src, patterns), f"COPY {src}: excluded by .dockerignore"
    for file in (REPO / "xnat_provider").rglob("*"):
        if file.is_file() and file.suffix != ".pyc":
            assert not ignored(file.relative_to(REPO).as_posix(), patterns), file


def test_the_image_installs_the_provider_from_source() -> None:
    copied = dict((src, dest) for srcs, dest in copies() for src in srcs)
    readme = PYPROJECT["project"]["readme"]
    assert readme in copied, "hatchling needs the readme that pyproject.toml names"
    source_dir = copied["pyproject.toml"].rstrip("/")
    assert copied[readme].rstrip("/") == source_dir
    assert copied["xnat_provider"].rstrip("/") == f"{source_dir}/xnat_provider"
    assert copied["dags"].rstrip("/") == "/opt/airflow/dags"
    installs = [rest for keyword, rest in dockerfile_instructions() if keyword == "RUN" and "pip install" in rest]
    assert len(installs) == 1
    install = installs[0]
    extras = re.search(re.escape(source_dir) + r"\[([\w,-]+)\]", install)
    assert extras and set(extras[1].split(",")) <= set(PYPROJECT["project"]["optional-dependencies"])
    assert "examples" in extras[1].split(",")
    assert re.search(r'"apache-airflow\[[^\]]*\bcelery\b[^\]]*\]==\$\{AIRFLOW_VERSION\}"', install)
    assert '--constraint "${HOME}/constraints.txt"' in install and "--no-cache-dir" in install
    assert "xnat-emulator" in install  # the build fails if the console script did not land on PATH
