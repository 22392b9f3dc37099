"""What the sync and async clients share: one parser per XNAT listing (they answer alike), the URI helpers,
the sensors' watch bookkeeping, and the alias token's dict without its secret."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from xnat_provider.client import ClientConfig, XnatClient
from xnat_provider.client.async_client import AsyncXnatClient
from xnat_provider.client.config import _KNOWN_SECRETS, redact_text
from xnat_provider.client.errors import XnatServerError
from xnat_provider.client.models import AliasToken, Experiment, PrearchiveSession
from xnat_provider.client.protocol import (
    archived_uri,
    experiments_from_rows,
    is_ambiguous,
    latest_experiment,
    prearchive_uri,
)
from xnat_provider.conditions import ExperimentCriteria, PrearchiveCriteria, PrearchiveWatch, observe_experiment
from xnat_provider.testing import XnatEmulator
from xnat_provider.testing.samples import make_study

USER, PASSWORD = "parser", "Pw-41c9e2-shared-parsers"  # the ``client`` fixture of tests/client/conftest.py


# ---- alias tokens --------------------------------------------------------------------------------------
def test_alias_token_to_dict_leaves_the_secret_out() -> None:
    token = AliasToken(alias="a1", secret="s3cr3t-value", user="admin", expires=datetime(2030, 1, 1, tzinfo=UTC))
    assert token.to_dict() == {"alias": "a1", "user": "admin", "expires": "2030-01-01T00:00:00+00:00"}
    assert token.secret == "s3cr3t-value" and "s3cr3t-value" not in repr(token)


# ---- the shared parsers: sync and async alike ----------------------------------------------------------
def two_sessions_of_one_subject(client: XnatClient, emulator: XnatEmulator, tmp_path: Path) -> None:
    """S01 with S01_MR1 and S01_MR2, S01_MR1 inserted last although listed first (listings are in ID order,
    which need not be insertion order: IDs from another site, a session deleted and archived again...)."""
    for label in ("S01_MR1", "S01_MR2"):
        study = make_study(tmp_path / label, patient_name="S01", patient_id=label)
        client.import_dicom(study.files[0].parent, "P1", destination="archive")
    emulator.store.run("UPDATE experiments SET insert_date=? WHERE label=?", "2099-01-01 00:00:00.000", "S01_MR1")


async def test_sync_and_async_clients_parse_alike(client: XnatClient, emulator: XnatEmulator, tmp_path: Path
                                                  ) -> None:
    two_sessions_of_one_subject(client, emulator, tmp_path)
    sync_found = client.find_experiment("P1", "S01_MR1")
    sync_listed = client.list_experiments("P1", "S01")
    sync_scans = client.list_scans("P1", "S01_MR1")
    async with AsyncXnatClient(ClientConfig(emulator.url, "admin", "admin", backoff=0.01)) as xnat:
        await xnat.login()
        gets = emulator.request_count("GET")
        found = await xnat.find_experiment("P1", "S01_MR1")
        assert emulator.request_count("GET") - gets == 2  # the experiment, then its subject (for its label)
        assert found == sync_found and found is not None
        assert (found.subject_label, found.subject_id) == ("S01", sync_found.subject_id)
        assert found.xsi_type == "xnat:mrSessionData"
        assert await xnat.list_experiments("P1", "S01") == sync_listed
        assert all(e.insert_date for e in sync_listed)  # both clients ask the listing for it
        assert await xnat.list_scans("P1", "S01_MR1") == sync_scans
        assert await xnat.find_experiment("P1", "NOPE") is None
        assert await xnat.find_experiment("NO_SUCH_PROJECT", "S01_MR1") is None
    assert client.find_experiment("P1", "NOPE") is None
    assert client.find_experiment("NO_SUCH_PROJECT", "S01_MR1") is None
    assert client.get_experiment("P1", sync_found.id) == sync_found  # by ID too
    assert [replace(e, insert_date="") for e in sync_listed if e.label == "S01_MR1"] == [sync_found]


async def test_latest_session_of_a_subject_is_the_last_inserted(client: XnatClient, emulator: XnatEmulator,
                                                                tmp_path: Path) -> None:
    two_sessions_of_one_subject(client, emulator, tmp_path)
    listed = [e.label for e in client.list_experiments("P1", "S01")]
    assert listed[-1] != "S01_MR1"  # what experiments[-1] used to pick
    criteria = ExperimentCriteria(project="P1", subject="S01")
    verdict = await observe_experiment(client, criteria)
    assert verdict.sessions[0]["label"] == "S01_MR1"
    async with AsyncXnatClient(ClientConfig(emulator.url, "admin", "admin", backoff=0.01)) as xnat:
        verdict = await observe_experiment(xnat, criteria)
    assert verdict.sessions[0]["label"] == "S01_MR1"


def test_latest_experiment_orders_by_insert_date_then_id() -> None:
    rows = [{"ID": "E3", "label": "C", "xsiType": "t", "insert_date": "2024-01-01 10:00:00.000"},
            {"ID": "E1", "label": "A", "xsiType": "t", "insert_date": "2024-01-02 09:00:00.000"},
            {"ID": "E2", "label": "B", "xsiType": "t", "insert_date": "2024-01-02 09:00:00.000"}]
    exps = experiments_from_rows(rows, "P1", "S01")
    assert [e.subject_label for e in exps] == ["S01"] * 3 and exps[0].uri == "/data/experiments/E3"
    assert latest_experiment(exps).label == "B"  # type: ignore[union-attr]
    assert latest_experiment([]) is None
    assert isinstance(exps[0], Experiment) and exps[0].to_dict()["insert_date"] == "2024-01-01 10:00:00.000"


async def test_async_client_secrets_are_redacted_process_wide(emulator: XnatEmulator) -> None:
    password = "Async-Pw-4c2e-review"
    emulator.add_user("asyncuser", password, admin=True)
    async with AsyncXnatClient(ClientConfig(emulator.url, "asyncuser", password, backoff=0.01)) as xnat:
        await xnat.login()
        sid = xnat.http.cookies.get("JSESSIONID")
    assert password in _KNOWN_SECRETS and sid in _KNOWN_SECRETS
    assert redact_text(f"login {password} cookie {sid}") == "login *** cookie ***"


# ---- helpers --------------------------------------------------------------------------------------
def test_uri_helpers_and_ambiguity() -> None:
    assert archived_uri("P1", "S01", "S01_MR1") == "/data/archive/projects/P1/subjects/S01/experiments/S01_MR1"
    row = PrearchiveSession(project="P1", timestamp="20240101_000000000", folder="S01_MR1_1", name="S01_MR1",
                            subject="S01", study_uid="1.2", status="READY", lastmod="", uploaded="")
    assert prearchive_uri(row.to_dict()) == row.uri
    assert prearchive_uri({"project": "P1", "timestamp": "T", "folderName": "F", "name": "N"}) == (
        "/data/prearchive/projects/P1/T/F")
    assert prearchive_uri({"project": "P1", "timestamp": "T", "name": "N"}) == "/data/prearchive/projects/P1/T/N"
    assert is_ambiguous(XnatServerError("x", status=504)) and is_ambiguous(XnatServerError("x"))
    assert not is_ambiguous(XnatServerError("x", status=500)) and not is_ambiguous(ValueError("x"))
    import xnat_provider.client.protocol as protocol

    assert not hasattr(protocol, "HTML_PREFIXES") and not hasattr(protocol, "__all__")


def test_watch_track_only_records_and_observe_uses_it() -> None:
    def row(status: str, lastmod: str) -> PrearchiveSession:
        return PrearchiveSession(project="P1", timestamp="T", folder="F", name="S01_MR1", subject="S01",
                                 study_uid="1.2", status=status, lastmod=lastmod, uploaded="")

    other = PrearchiveSession(project="P1", timestamp="T", folder="G", name="S02_MR1", subject="S02",
                              study_uid="1.3", status="READY", lastmod="1", uploaded="")
    watch = PrearchiveWatch(PrearchiveCriteria(project="P1", subject="S01", quiet_period=10))
    assert watch.track([row("READY", "1"), other], now=100.0) == [row("READY", "1")]
    assert watch.state["seen"] == {"/data/prearchive/projects/P1/T/F": ["READY|1", 100.0]}
    assert watch.track([row("READY", "1")], now=105.0) and watch.state["seen"][row("READY", "1").uri][1] == 100.0
    assert watch.observe([row("READY", "1")], now=111.0).action == "done"  # quiet since 100
    watch.track([row("READY", "2")], now=112.0)  # changed: the quiet period starts again
    assert watch.observe([row("READY", "2")], now=115.0).action == "wait"


def test_async_find_experiment_runs_in_an_event_loop_without_blocking(emulator: XnatEmulator) -> None:
    """A smoke check that the async parsers need nothing from a running sync client."""
    async def look() -> Any:
        async with AsyncXnatClient(ClientConfig(emulator.url, "admin", "admin", backoff=0.01)) as xnat:
            return await xnat.list_experiments("P1")

    assert asyncio.run(look()) == []
