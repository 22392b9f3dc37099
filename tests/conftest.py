"""Shared fixtures: an emulator per test on a fresh folder, an authenticated HTTP session, real DICOM."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

# Airflow reads its settings when first imported, so its test home is set up before anything imports it: a
# throw-away AIRFLOW_HOME with SQLite, no example DAGs, and a DAGs folder holding the repository's example
# DAGs and the tests' own DAGs (dag.test() only runs DAGs that live in the DAGs folder).
REPO = Path(__file__).resolve().parent.parent
AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="xnat-provider-airflow-"))
DAGS_FOLDER = AIRFLOW_HOME / "dags"
DAGS_FOLDER.mkdir()
for _src in [*sorted((REPO / "dags").glob("*.py")), *sorted((REPO / "tests" / "dags").glob("*.py"))]:
    (DAGS_FOLDER / _src.name).symlink_to(_src)
os.environ.update(
    AIRFLOW_HOME=str(AIRFLOW_HOME),
    AIRFLOW__CORE__LOAD_EXAMPLES="False",
    AIRFLOW__CORE__DAGS_FOLDER=str(DAGS_FOLDER),
    AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{AIRFLOW_HOME}/airflow.db",
    AIRFLOW__CORE__FERNET_KEY="kZ5T2m7sT0bHf3c6YfV6o9oX2q8J4r1w5u7y9A3C5E0=",
    AIRFLOW__LOGGING__LOGGING_LEVEL="WARNING",
    XNAT_EXAMPLE_POLL_SECONDS="0.2",
    XNAT_EXAMPLE_QUIET_SECONDS="0.2",
)

import pytest  # noqa: E402
import requests  # noqa: E402

from xnat_provider.testing import XnatEmulator, xnat_routes  # noqa: E402
from xnat_provider.testing.containers_api import is_container_service_route  # noqa: E402
from xnat_provider.testing.faults import Faults  # noqa: E402
from xnat_provider.testing.samples import Study, make_study, zip_files  # noqa: E402

# Loopback only: a proxy variable in the environment must never route test traffic elsewhere
# (pyxnat honours a lower-case http_proxy even for 127.0.0.1).
for _var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
    os.environ.pop(_var, None)
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"


CLIENT_AGENT = "airflow-provider-xnat/"  # the User-Agent of both clients (ClientConfig.user_agent)
# Paths outside the /data route table the client uses: the site root (which a real XNAT redirects to its login
# page, where the redirect is followed) and the build info of XNAT's Spring API.
OUTSIDE_DATA = {"/", "/app/template/Login.vm", "/xapi/siteConfig/buildInfo"}


def is_routed(method: str, path: str) -> bool:
    """A request XNAT routes: a template of its ``/data`` route table with the method allowed, one of the Container
    Service plugin's ``/xapi`` templates (``containers_api.XAPI_ROUTES``, read from its controllers: exact
    templates, one path segment per variable, not a prefix), or one of :data:`OUTSIDE_DATA`."""
    if path.startswith("/data/"):
        return xnat_routes.is_exact(method, path[len("/data"):])
    return path in OUTSIDE_DATA or (path.startswith("/xapi/") and is_container_service_route(method, path))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sends_unrouted_requests(reason): the test makes the client send requests "
                            "XNAT does not route, on purpose; the route oracle does not check it")


@pytest.fixture(autouse=True)
def client_requests_use_xnat_routes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
                                    ) -> Iterator[list[tuple[str, str]]]:
    """The route oracle, around every test: each request our clients send to any emulator of the test must be one
    XNAT 1.8 routes (``xnat_routes.is_exact``: a template of XNAT's own route table, the method allowed), or one of
    the Container Service plugin's routes (:func:`is_routed`).

    The emulator also refuses paths XNAT lacks, but only in the ways its router was written to; this check reads
    the table directly, so a request that the emulator happens to answer (or a test happens to tolerate) still
    fails here. Requests of xnatpy, pyxnat and the tests' own HTTP sessions are not checked."""
    sent: list[tuple[str, str]] = []
    real = Faults.count

    def count(self: Faults, method: str, path: str, user_agent: str = "") -> None:
        real(self, method, path, user_agent)
        if user_agent.startswith(CLIENT_AGENT):
            sent.append((method, path))

    monkeypatch.setattr(Faults, "count", count)
    yield sent
    if request.node.get_closest_marker("sends_unrouted_requests"):
        return
    unrouted = sorted({(m, p) for m, p in sent if not is_routed(m, p)})
    assert not unrouted, f"the client sent requests XNAT has no route for: {unrouted[:10]}"


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[XnatEmulator]:
    """A running emulator: users admin/admin and alice/alice-pw, project P1, quick prearchive clock."""
    with XnatEmulator(
        data_dir=tmp_path / "xnat", users={"admin": "admin", "alice": "alice-pw"}, projects=["P1", "P2"],
        receiving_idle=0.5, build_seconds=0.2, queue_seconds=0.2,
    ) as emu:
        yield emu


@pytest.fixture
def http(emulator: XnatEmulator) -> Iterator[requests.Session]:
    """A requests session logged in as admin with basic auth (the cookie is kept after the first call)."""
    with requests.Session() as s:
        s.auth = ("admin", "admin")
        s.headers["User-Agent"] = "xnat-provider-tests"
        yield s


@pytest.fixture
def study(tmp_path: Path) -> Study:
    """A real two-series MR study (3 instances each) made from pydicom's MR_small.dcm."""
    return make_study(tmp_path / "dicom", patient_name="S01", patient_id="S01_MR1")


@pytest.fixture
def study_zip(tmp_path: Path, study: Study) -> Path:
    return zip_files(study.files, tmp_path / "study.zip")


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """Airflow's metadata database, migrated once per test session (about 5 s)."""
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True, timeout=300)
    return AIRFLOW_HOME


@pytest.fixture
def xnat_conn(emulator: XnatEmulator, monkeypatch: pytest.MonkeyPatch) -> XnatEmulator:
    """``xnat_default`` pointed at the test's emulator, as a user would write it (JSON in the environment)."""
    import json

    monkeypatch.setenv("AIRFLOW_CONN_XNAT_DEFAULT", json.dumps({
        "conn_type": "xnat", "host": emulator.url, "login": "admin", "password": "admin",
        "extra": {"backoff": 0.05, "retries": 3}}))
    return emulator
