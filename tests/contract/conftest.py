"""The contract suite's server: a lab's XNAT when ``XNAT_URL`` is set, else the emulator in this process.

``XNAT_URL``, ``XNAT_USER``, ``XNAT_PASSWORD`` and ``XNAT_PROJECT`` (a scratch project the user owns) point
every test here at a real server, unchanged; ``XNAT_CONTRACT_TIMEOUT`` (default 600 s) bounds each wait for
the server. Without ``XNAT_URL`` an emulator starts here with a scratch project, and the tests that need fault
injection (which only the emulator can do) run too; on a live server they skip, saying why.

The credentials are checked once, before the first test, and the run stops at the first refusal: every test
logging in with a wrong password would lock the account (XNAT locks after 20 failures).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.contract.support import (
    USER_AGENT,
    ContractServer,
    NeedsEmulator,
    Scratch,
    assert_not_leaked,
    live_settings,
)
from xnat_provider.client import XnatClient
from xnat_provider.testing import XnatEmulator

HERE = Path(__file__).resolve().parent
CONN_ID = "xnat_contract"
EMULATOR_PROJECT = "CONTRACT"
EMULATOR_USER = "contract"  # not a site administrator: a lab runs the suite as a project owner


def _is_contract(item: pytest.Item) -> bool:
    return HERE in Path(str(item.path)).resolve().parents


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse an incomplete live description before anything runs, and give every contract test a timeout
    that fits the server: a real XNAT may take minutes to build a prearchive session."""
    mine = [item for item in items if _is_contract(item)]
    if not mine:
        return
    settings = live_settings(os.environ)  # raises pytest.UsageError naming what is missing
    if settings is None:
        return  # the emulator: the project's default per-test timeout applies
    per_test = 4 * settings["timeout"] + 120
    for item in mine:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(per_test))


def pytest_report_header(config: pytest.Config) -> str | None:
    """Say which server the contract tests touch (shown when they are run on their own, as ``make test-live``
    does), never the password."""
    try:
        settings = live_settings(os.environ)
    except pytest.UsageError:
        return None  # reported as the run's error
    if settings is None:
        return "XNAT contract tests: the emulator, in process"
    return (f"XNAT contract tests: LIVE server {settings['url']}, scratch project {settings['project']}, "
            f"user {settings['user']}")


def _stop_run(reason: str) -> None:
    pytest.exit(reason, returncode=pytest.ExitCode.USAGE_ERROR)


def _check_live(server: ContractServer) -> None:
    """One login and one look at the project, plain HTTP; stop the whole run on a refusal."""
    with requests.Session() as http:
        http.headers["User-Agent"] = USER_AGENT
        try:
            resp = http.post(f"{server.url}/data/services/auth", timeout=(10, 60),
                             data={"username": server.user, "password": server.password})
        except requests.RequestException as exc:
            _stop_run(f"XNAT_URL {server.url} does not answer ({type(exc).__name__}).")
        if resp.status_code != 200 or resp.text.lstrip().startswith("<"):
            _stop_run(f"XNAT at {server.url} refused the login of XNAT_USER {server.user} (HTTP {resp.status_code}); "
                      "stopping before more failed logins lock the account.")
        project = http.get(f"{server.url}/data/projects/{server.project}", params={"format": "json"},
                           timeout=(10, 60))
        http.delete(f"{server.url}/data/JSESSION", timeout=(10, 30))
    if project.status_code != 200:
        _stop_run(f"XNAT_PROJECT {server.project} is not visible to {server.user} on {server.url} (HTTP "
                  f"{project.status_code}): create a scratch project owned by that user.")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ContractServer]:
    """The server under contract: the one ``XNAT_*`` describes, or an emulator started here."""
    settings = live_settings(os.environ)
    if settings is not None:
        live = ContractServer(**settings)
        _check_live(live)
        yield live
        return
    password = secrets.token_urlsafe(12)
    with XnatEmulator(data_dir=tmp_path_factory.mktemp("xnat-contract"), users={EMULATOR_USER: password},
                      admins=(), projects=[EMULATOR_PROJECT], receiving_idle=0.5, build_seconds=0.2,
                      queue_seconds=0.2) as emu:
        yield ContractServer(url=emu.url, user=EMULATOR_USER, password=password, project=EMULATOR_PROJECT,
                             emulator=emu, timeout=30.0)


@pytest.fixture
def needs_emulator(server: ContractServer) -> Iterator[NeedsEmulator]:
    """``needs_emulator(reason)``: the emulator, or a skip on a live server ("fault injection needs the
    emulator"). Faults a test set and did not trigger are cleared afterwards, so they cannot hit the next."""
    yield server.needs_emulator
    if server.emulator is not None:
        server.emulator.clear_faults()


@pytest.fixture
def scratch(server: ContractServer) -> Iterator[Scratch]:
    """The janitor for one test: everything the test claimed is removed when it ends, pass or fail."""
    janitor = Scratch(server)
    try:
        yield janitor
    finally:
        try:
            janitor.clean_up()
        finally:
            janitor.close()


@pytest.fixture
def client(server: ContractServer, caplog: pytest.LogCaptureFixture) -> Iterator[XnatClient]:
    """A client logged in to the server as a lab's DAG would be; afterwards no secret it learnt (password,
    session id, token secrets) may appear in what it logged, even at DEBUG."""
    learnt: list[str] = []
    caplog.set_level(logging.DEBUG)
    with server.client(on_secret=learnt.append) as c:
        yield c
    # At teardown caplog.text holds only teardown's records: read every phase's.
    logged = "\n".join(r.getMessage() for phase in ("setup", "call", "teardown") for r in caplog.get_records(phase))
    for secret in [server.password, *learnt]:
        assert_not_leaked(logged, secret, "the client's log")


@pytest.fixture
def xnat_conn_id(server: ContractServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """An ``xnat`` Airflow connection to the server, given the way the README tells users to: JSON in
    ``AIRFLOW_CONN_<ID>``."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(server.connection()))
    return CONN_ID
