"""The client's prearchive and archive paths against the emulator: listing in every status, getting one,
archiving (relabelled, overwriting, conflicting, redirected, after an ambiguous failure), the queued
move, rebuild and delete, and the login rules (one attempt on a wrong password, one re-login on expiry).

What the server holds is always checked with a plain ``requests`` session, not through the client.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support import experiment_url, listing
from tests.support import prearchive_rows as rows
from xnat_provider.client import (
    ClientConfig,
    PrearchiveSession,
    SessionRef,
    XnatAuthError,
    XnatBadInputError,
    XnatClient,
    XnatConflictError,
    XnatNotFoundError,
    XnatServerError,
)
from xnat_provider.client.async_client import AsyncXnatClient
from xnat_provider.testing import XnatEmulator
from xnat_provider.testing.clock import ManualClock
from xnat_provider.testing.samples import Study, make_study

ARCHIVE = "/data/services/archive"
SECRET = "Pw-51d0e2-prearchive-secret"
USERS = {"admin": "admin", "alice": "alice-pw"}


# ---- helpers -----------------------------------------------------------------------------------------------
@pytest.fixture
def client(emulator: XnatEmulator) -> Iterator[XnatClient]:
    with XnatClient(emulator.url, "admin", "admin", backoff=0.01, retries=3) as c:
        yield c


@pytest.fixture
def slow_queue(tmp_path: Path) -> Iterator[XnatEmulator]:
    """An emulator whose queued operations and receiving sessions stay put for the length of a test."""
    with XnatEmulator(
        data_dir=tmp_path / "slow",
        users=USERS,
        projects=["P1", "P2"],
        receiving_idle=60,
        build_seconds=0.2,
        queue_seconds=60,
    ) as emu:
        yield emu


def experiments(http: requests.Session, emulator: XnatEmulator, project: str = "P1") -> list[dict[str, str]]:
    return listing(http, f"{emulator.url}/data/projects/{project}/experiments")


def scan_files(http: requests.Session, emulator: XnatEmulator, project: str, label: str) -> dict[str, int]:
    """Scan id -> number of files in the archive."""
    base = experiment_url(http, emulator.url, project, label)
    return {
        s["ID"]: len(listing(http, f"{base}/scans/{s['ID']}/resources/DICOM/files"))
        for s in listing(http, f"{base}/scans")
    }


def failed_logins(emulator: XnatEmulator, login: str) -> int:
    return int(emulator.store.one("SELECT failed_logins FROM users WHERE login=?", login)["failed_logins"])


def import_study(
    client: XnatClient, tmp_path: Path, name: str, project: str = "P1", **kw: Any
) -> tuple[Study, SessionRef]:
    study = make_study(
        tmp_path / name,
        patient_name=kw.pop("patient_name", name.upper()),
        patient_id=kw.pop("patient_id", f"{name.upper()}_MR1"),
        **kw,
    )
    [ref] = client.import_dicom(study.files[0].parent, project)
    return study, ref


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def force_param(emulator: XnatEmulator, method: str, path: str, key: str, value: str) -> None:
    """Make the server see one more request parameter, as a server configured that way would behave."""
    for route in emulator.router.routes:
        if method in route.methods and route.pattern.match(path):
            original = route.handler

            def handler(req: Any, original: Any = original) -> Any:
                req.query.append((key, value))
                return original(req)

            route.handler = handler
            return
    raise AssertionError(f"no route for {method} {path}")


# ---- listing and getting -----------------------------------------------------------------------------------
def test_list_by_project_and_study(
    client: XnatClient, emulator: XnatEmulator, http: requests.Session, tmp_path: Path
) -> None:
    a, ref_a = import_study(client, tmp_path, "s01")
    b, ref_b = import_study(client, tmp_path, "s02")
    c, ref_c = import_study(client, tmp_path, "s03", project="P2")

    p1 = client.list_prearchive("P1")
    assert {s.uri for s in p1} == {ref_a.uri, ref_b.uri} == {"/data" + r["url"] for r in rows(http, emulator)}
    assert all(isinstance(s, PrearchiveSession) and s.status == "READY" and not s.busy for s in p1)
    by_uri = {s.uri: s for s in p1}
    assert by_uri[ref_a.uri].study_uid == a.study_uid and by_uri[ref_a.uri].subject == "S01"
    assert by_uri[ref_a.uri].name == "S01_MR1" and by_uri[ref_a.uri].project == "P1"
    assert [s.uri for s in client.list_prearchive("P2")] == [ref_c.uri]
    assert {s.uri for s in client.list_prearchive()} == {ref_a.uri, ref_b.uri, ref_c.uri}
    assert [s.uri for s in client.list_prearchive("P1", study_uid=b.study_uid)] == [ref_b.uri]
    assert [s.uri for s in client.list_prearchive(study_uid=c.study_uid)] == [ref_c.uri]
    assert client.list_prearchive("P1", study_uid=c.study_uid) == []


def test_list_unknown_project(client: XnatClient) -> None:
    with pytest.raises(XnatNotFoundError, match="NOPE"):
        client.list_prearchive("NOPE")


def test_list_every_status_including_queued_and_running(slow_queue: XnatEmulator, tmp_path: Path) -> None:
    emulator = slow_queue
    with XnatClient(emulator.url, "admin", "admin", backoff=0.01) as client, requests.Session() as http:
        http.auth = ("admin", "admin")
        refs = {name: import_study(client, tmp_path, name)[1] for name in ("mv", "dl", "rb", "run", "cf")}

        # The batch services queue: QUEUED_<OP> at once (the slow clock keeps them there).
        assert client.move_prearchive(refs["mv"], "P2").status == "QUEUED_MOVING"
        assert client.delete_prearchive(refs["dl"]).status == "QUEUED_DELETING"
        assert client.rebuild_prearchive(refs["rb"]).status == "QUEUED_BUILDING"
        # Running operations hold the row locked as _<OP>; a failed archive leaves CONFLICT.
        emulator.hold_prearchive("P1", refs["run"].timestamp, refs["run"].label, "_ARCHIVING")
        emulator.hold_prearchive("P1", refs["cf"].timestamp, refs["cf"].label, "CONFLICT")
        # A session still receiving files (imported without a destination, so not built yet).
        recv = make_study(tmp_path / "recv", patient_name="RECV", patient_id="RECV_MR1")
        body = (recv.files[0]).read_bytes()
        resp = http.post(
            f"{emulator.url}/data/services/import",
            params={"PROJECT_ID": "P1"},
            data=body,
            headers={"Content-Type": "application/dicom"},
        )
        resp.raise_for_status()

        expected = {
            "MV_MR1": "QUEUED_MOVING",
            "DL_MR1": "QUEUED_DELETING",
            "RB_MR1": "QUEUED_BUILDING",
            "RUN_MR1": "_ARCHIVING",
            "CF_MR1": "CONFLICT",
            "RECV_MR1": "RECEIVING",
        }
        listed = client.list_prearchive("P1")
        assert {s.name: s.status for s in listed} == expected
        assert {r["name"]: r["status"] for r in rows(http, emulator)} == expected  # as the server says

        def names(**kw: Any) -> set[str]:
            return {s.name for s in client.list_prearchive("P1", **kw)}

        assert names(status="QUEUED_MOVING") == {"MV_MR1"}
        assert names(status=["QUEUED_DELETING", "_ARCHIVING"]) == {"DL_MR1", "RUN_MR1"}
        assert names(status={"RECEIVING"}) == {"RECV_MR1"}
        assert names(status="CONFLICT") == {"CF_MR1"}
        assert names(status="READY") == set()
        assert names(status="QUEUED_BUILDING", study_uid=None) == {"RB_MR1"}
        # The async client (what triggers poll with) sees the same rows and statuses.
        async_listed, async_queued = asyncio.run(_async_list(emulator, "P1", ["QUEUED_MOVING", "_ARCHIVING"]))
        assert async_listed == listed
        assert {s.name for s in async_queued} == {"MV_MR1", "RUN_MR1"}
        busy = {s.name for s in listed if s.busy}
        assert busy == {"MV_MR1", "DL_MR1", "RB_MR1", "RUN_MR1", "RECV_MR1"}
        assert {s.name for s in listed if s.failed} == {"CF_MR1"}


async def _async_list(
    emulator: XnatEmulator, project: str, status: list[str]
) -> tuple[list[PrearchiveSession], list[PrearchiveSession]]:
    config = ClientConfig(emulator.url, "admin", "admin", backoff=0.01)
    async with AsyncXnatClient(config) as xnat:
        return await xnat.list_prearchive(project), await xnat.list_prearchive(project, status=status)


def test_get_one(client: XnatClient, emulator: XnatEmulator, http: requests.Session, study: Study) -> None:
    [ref] = client.import_dicom(study.files[0].parent, "P1")
    [row] = rows(http, emulator)

    by_ref = client.get_prearchive(ref)
    assert by_ref.uri == ref.uri and by_ref.status == row["status"] == "READY"
    assert (by_ref.timestamp, by_ref.folder, by_ref.study_uid) == (row["timestamp"], row["folderName"], study.study_uid)
    assert client.get_prearchive(ref.uri) == by_ref
    assert client.get_prearchive(ref.uri.removeprefix("/data")) == by_ref  # XNAT's own "url" form
    assert client.get_prearchive(by_ref) == by_ref

    missing = f"/data/prearchive/projects/P1/{ref.timestamp}/NOPE"
    with pytest.raises(XnatNotFoundError) as err:
        client.get_prearchive(missing)
    assert err.value.status == 404 and "NOPE" in str(err.value)
    assert client.find_prearchive(missing) is None
    with pytest.raises(ValueError, match="not a prearchive session"):
        client.get_prearchive("/data/projects/P1/experiments/X")


# ---- archiving ----------------------------------------------------------------------------------------------
def test_archive(client: XnatClient, emulator: XnatEmulator, http: requests.Session, study: Study) -> None:
    [ref] = client.import_dicom(study.files[0].parent, "P1")

    archived = client.archive(ref)

    assert archived == SessionRef(
        uri="/data/archive/projects/P1/subjects/S01/experiments/S01_MR1", project="P1", subject="S01", label="S01_MR1"
    )
    [exp] = experiments(http, emulator)
    assert (exp["label"], exp["subject_label"]) == ("S01_MR1", "S01")
    assert scan_files(http, emulator, "P1", "S01_MR1") == {"1": 3, "2": 3}
    assert rows(http, emulator) == []
    assert client.find_prearchive(ref) is None
    assert emulator.request_count("POST", ARCHIVE) == 1


def test_archive_relabelled(client: XnatClient, emulator: XnatEmulator, http: requests.Session, study: Study) -> None:
    [ref] = client.import_dicom(study.files[0].parent, "P1")
    row = client.get_prearchive(ref)

    archived = client.archive(row, project="P2", subject="SUBJ_B", label="SESS_B")

    assert (archived.project, archived.subject, archived.label) == ("P2", "SUBJ_B", "SESS_B")
    assert archived.uri == "/data/archive/projects/P2/subjects/SUBJ_B/experiments/SESS_B"
    [exp] = experiments(http, emulator, "P2")
    assert (exp["label"], exp["subject_label"]) == ("SESS_B", "SUBJ_B")
    assert experiments(http, emulator, "P1") == []
    assert scan_files(http, emulator, "P2", "SESS_B") == {"1": 3, "2": 3}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"label": "bad label"}, "Invalid session label"),
        ({"subject": "a/b"}, "Invalid subject label"),
        ({"project": ""}, "Invalid project label"),
        ({"overwrite": "yes"}, "overwrite must be"),
    ],
)
def test_archive_bad_input_sends_nothing(
    client: XnatClient,
    emulator: XnatEmulator,
    http: requests.Session,
    study: Study,
    kwargs: dict[str, str],
    message: str,
) -> None:
    [ref] = client.import_dicom(study.files[0].parent, "P1")
    with pytest.raises(XnatBadInputError, match=message):
        client.archive(ref, **kwargs)
    assert emulator.request_count("POST", ARCHIVE) == 0
    assert [r["status"] for r in rows(http, emulator)] == ["READY"]


def test_archive_missing_session(client: XnatClient, emulator: XnatEmulator) -> None:
    with pytest.raises(XnatNotFoundError):
        client.archive("/data/prearchive/projects/P1/20240101_000000000/NOPE")
    assert emulator.request_count("POST", ARCHIVE) == 0


def _conflict(client: XnatClient, tmp_path: Path) -> tuple[SessionRef, SessionRef]:
    """A study archived once, and the same files again in the prearchive."""
    first = make_study(tmp_path / "v1", uid_seed="same")
    client.archive(client.import_dicom(first.files[0].parent, "P1")[0])
    again = make_study(tmp_path / "v2", uid_seed="same")
    [ref] = client.import_dicom(again.files[0].parent, "P1")
    return first, ref  # type: ignore[return-value]


def test_archive_conflict_500_failed(
    client: XnatClient, emulator: XnatEmulator, http: requests.Session, tmp_path: Path
) -> None:
    _first, ref = _conflict(client, tmp_path)

    with pytest.raises(XnatConflictError) as err:
        client.archive(ref)

    assert err.value.status == 500 and err.value.method == "POST" and err.value.path == ARCHIVE
    assert "FAILED" in str(err.value) and "already exists" in str(err.value)
    assert err.value.xnat_message and err.value.xnat_message.startswith("FAILED")
    assert [r["status"] for r in rows(http, emulator)] == ["CONFLICT"]
    assert client.get_prearchive(ref).failed
    assert emulator.request_count("POST", ARCHIVE) == 2  # not retried

    # Resolved by merging: the CONFLICT row can be archived with overwrite.
    archived = client.archive(ref, overwrite="append")
    assert archived.label == "S01_MR1" and rows(http, emulator) == []
    assert len(experiments(http, emulator)) == 1


def test_archive_conflict_409(tmp_path: Path) -> None:
    with (
        XnatEmulator(
            data_dir=tmp_path / "x",
            users=USERS,
            projects=["P1"],
            receiving_idle=0.5,
            build_seconds=0.2,
            queue_seconds=0.2,
            archive_conflict_status=409,
        ) as emulator,
        XnatClient(emulator.url, "admin", "admin", backoff=0.01) as client,
        requests.Session() as http,
    ):
        http.auth = ("admin", "admin")
        _first, ref = _conflict(client, tmp_path)

        with pytest.raises(XnatConflictError) as err:
            client.archive(ref)

        assert err.value.status == 409 and "already exists" in str(err.value)
        assert [r["status"] for r in rows(http, emulator)] == ["CONFLICT"]
        assert emulator.request_count("POST", ARCHIVE) == 2


def test_archive_overwrite_append_and_delete(
    client: XnatClient, emulator: XnatEmulator, http: requests.Session, tmp_path: Path
) -> None:
    base = make_study(tmp_path / "base", series=((1, "T1"),), instances=3, uid_seed="s")
    client.archive(client.import_dicom(base.files[0].parent, "P1")[0])

    # append: a new series and the same series again merge into the session
    more = make_study(tmp_path / "more", series=((1, "T1"), (2, "T2")), instances=2, uid_seed="s")
    archived = client.archive(client.import_dicom(more.files[0].parent, "P1")[0], overwrite="append")
    assert archived.label == "S01_MR1"
    assert scan_files(http, emulator, "P1", "S01_MR1") == {"1": 3, "2": 2}

    # delete: for one session the same as append (Archiver: both set overrideExceptions; the allowDataDeletion
    # of delete is read only for several sessions). Nothing is deleted: scan 1 keeps its three files.
    fewer = make_study(tmp_path / "fewer", series=((1, "T1"),), instances=1, uid_seed="s")
    client.archive(client.import_dicom(fewer.files[0].parent, "P1")[0], overwrite="delete")
    assert scan_files(http, emulator, "P1", "S01_MR1") == {"1": 3, "2": 2}
    assert len(experiments(http, emulator)) == 1 and rows(http, emulator) == []


def test_archive_service_merge_rules(
    client: XnatClient, emulator: XnatEmulator, http: requests.Session, tmp_path: Path
) -> None:
    """The archive service always allows a merge (Archiver passes allowSessionMerge=true): without overwrite a
    new series merges and the same files again are a conflict; append and delete skip the UID check alike."""
    base = make_study(tmp_path / "base", series=((1, "T1"),), instances=2, uid_seed="s")
    client.archive(client.import_dicom(base.files[0].parent, "P1")[0])

    # No overwrite: a new series of the same study merges; a new series under a taken number is renumbered.
    more = make_study(tmp_path / "more", series=((2, "T2"),), instances=1, uid_seed="s")
    client.archive(client.import_dicom(more.files[0].parent, "P1")[0])
    taken = make_study(tmp_path / "taken", series=((1, "T1b"),), instances=1, uid_seed="t", study_uid=base.study_uid)
    client.archive(client.import_dicom(taken.files[0].parent, "P1")[0])
    assert scan_files(http, emulator, "P1", "S01_MR1") == {"1": 2, "1-MR1": 1, "2": 1}

    # No overwrite, the same files again: refused, the row waits in CONFLICT.
    [again] = client.import_dicom(base.files[0].parent, "P1")
    with pytest.raises(XnatConflictError, match="matching files"):
        client.archive(again)
    assert [r["status"] for r in rows(http, emulator)] == ["CONFLICT"]
    client.delete_prearchive(again)
    wait_for(lambda: rows(http, emulator) == [])

    # Another StudyInstanceUID under the same label: refused without overwrite, merged with append or delete.
    for overwrite in (None, "append", "delete"):
        other = make_study(tmp_path / f"other-{overwrite}", series=((7, "T7"),), instances=1)
        [ref] = client.import_dicom(other.files[0].parent, "P1")
        if overwrite is None:
            with pytest.raises(XnatConflictError, match="Invalid modification of session UID"):
                client.archive(ref)
            client.delete_prearchive(ref)
            wait_for(lambda: rows(http, emulator) == [])
        else:
            client.archive(ref, overwrite=overwrite)
    assert scan_files(http, emulator, "P1", "S01_MR1") == {"1": 2, "1-MR1": 1, "2": 1, "7": 1, "7-MR1": 1}
    assert len(experiments(http, emulator)) == 1


def test_archive_quarantine_reaches_the_experiment(
    client: XnatClient, emulator: XnatEmulator, http: requests.Session, tmp_path: Path
) -> None:
    """Archiver passes quarantine on to PrearcSessionArchiver, which quarantines the experiment: its
    ``/status`` says ``quarantine`` (SecureResource.returnStatus); without the flag it stays ``active``."""
    a = make_study(tmp_path / "a", patient_name="S01", patient_id="S01_MR1")
    b = make_study(tmp_path / "b", patient_name="S02", patient_id="S02_MR1")
    client.archive(client.import_dicom(a.files[0].parent, "P1")[0], quarantine=True)
    client.archive(client.import_dicom(b.files[0].parent, "P1")[0])
    status = {label: http.get(f"{experiment_url(http, emulator.url, 'P1', label)}/status").text
              for label in ("S01_MR1", "S02_MR1")}
    assert status == {"S01_MR1": "quarantine", "S02_MR1": "active"}


def test_archive_to_auto_archive_project(
    client: XnatClient, emulator: XnatEmulator, http: requests.Session, study: Study
) -> None:
    """A session waiting in an auto-archive project's prearchive (moved there) archives like any other."""
    emulator.add_project("AA", prearchive="auto-archive")
    [ref] = client.import_dicom(study.files[0].parent, "P1")
    client.move_prearchive(ref, "AA")
    row = wait_for(lambda: [s for s in client.list_prearchive("AA") if s.status == "READY"])[0]

    archived = client.archive(row)

    assert archived.uri == "/data/archive/projects/AA/subjects/S01/experiments/S01_MR1"
    assert [e["label"] for e in experiments(http, emulator, "AA")] == ["S01_MR1"]


def test_archive_303_is_followed(
    client: XnatClient, emulator: XnatEmulator, http: requests.Session, study: Study
) -> None:
    emulator.add_project("AA", prearchive="auto-archive")
    [ref] = client.import_dicom(study.files[0].parent, "P1")
    client.move_prearchive(ref, "AA")
    row = wait_for(lambda: [s for s in client.list_prearchive("AA") if s.status == "READY"])[0]
    force_param(emulator, "POST", ARCHIVE, "redirect", "true")  # the server answers 303 See Other
    gets = emulator.request_count("GET")

    archived = client.archive(row)

    assert archived == SessionRef(
        uri="/data/archive/projects/AA/subjects/S01/experiments/S01_MR1", project="AA", subject="S01", label="S01_MR1"
    )
    # the Location was read, not fetched: only the prearchive lookup before archiving was a GET
    assert emulator.request_count("GET") - gets == 1
    assert emulator.request_count("GET", "/experiments/S01_MR1") == 0
    assert emulator.request_count("POST", ARCHIVE) == 1
    assert [e["label"] for e in experiments(http, emulator, "AA")] == ["S01_MR1"]


def test_archive_504_after_it_took_effect(
    client: XnatClient, emulator: XnatEmulator, http: requests.Session, study: Study
) -> None:
    [ref] = client.import_dicom(study.files[0].parent, "P1")
    emulator.succeed_then_504("POST", ARCHIVE)

    archived = client.archive(ref, settle_seconds=5)

    assert archived.uri == "/data/archive/projects/P1/subjects/S01/experiments/S01_MR1"
    assert (archived.project, archived.subject, archived.label) == ("P1", "S01", "S01_MR1")
    assert emulator.request_count("POST", ARCHIVE) == 1  # not archived twice
    assert [e["label"] for e in experiments(http, emulator)] == ["S01_MR1"]
    assert rows(http, emulator) == []


def test_archive_504_after_a_relabelled_archive_took_effect(
    client: XnatClient, emulator: XnatEmulator, http: requests.Session, study: Study
) -> None:
    [ref] = client.import_dicom(study.files[0].parent, "P1")
    emulator.succeed_then_504("POST", ARCHIVE)

    archived = client.archive(ref, project="P2", subject="SB", label="LB", settle_seconds=5)

    assert (archived.project, archived.subject, archived.label) == ("P2", "SB", "LB")
    assert emulator.request_count("POST", ARCHIVE) == 1
    assert [e["label"] for e in experiments(http, emulator, "P2")] == ["LB"]


def test_archive_503_before_it_took_effect_is_sent_again(
    client: XnatClient, emulator: XnatEmulator, http: requests.Session, study: Study
) -> None:
    [ref] = client.import_dicom(study.files[0].parent, "P1")
    emulator.fail_next("POST", ARCHIVE, status=503)

    archived = client.archive(ref, settle_seconds=5)

    assert archived.label == "S01_MR1"
    assert emulator.request_count("POST", ARCHIVE) == 2
    assert [e["label"] for e in experiments(http, emulator)] == ["S01_MR1"]


def test_archive_503_on_a_conflict_row_is_sent_again(
    client: XnatClient, emulator: XnatEmulator, http: requests.Session, tmp_path: Path
) -> None:
    """A row already in CONFLICT before the call, and a 503 that did nothing: archiving again is safe."""
    _first, ref = _conflict(client, tmp_path)
    with pytest.raises(XnatConflictError):
        client.archive(ref)
    emulator.fail_next("POST", ARCHIVE, status=503)

    archived = client.archive(ref, overwrite="append", settle_seconds=2)

    assert archived.label == "S01_MR1"
    assert emulator.request_count("POST", ARCHIVE) == 4  # first archive, the conflict, the 503, the resend
    assert rows(http, emulator) == [] and len(experiments(http, emulator)) == 1


def test_archive_persistent_503_gives_up(emulator: XnatEmulator, http: requests.Session, study: Study) -> None:
    emulator.fail_next("POST", ARCHIVE, status=503, count=10)
    with XnatClient(emulator.url, "admin", "admin", backoff=0.01, retries=2) as client:
        [ref] = client.import_dicom(study.files[0].parent, "P1")
        with pytest.raises(XnatServerError) as err:
            client.archive(ref, settle_seconds=1)
    assert err.value.status == 503
    assert emulator.request_count("POST", ARCHIVE) == 2
    assert [r["status"] for r in rows(http, emulator)] == ["READY"] and experiments(http, emulator) == []


# ---- queued operations -------------------------------------------------------------------------------------
@pytest.fixture
def queue(tmp_path: Path) -> Iterator[XnatEmulator]:
    """Queued operations wait 0.4 s, then run for 0.4 s, on a clock that moves only when ``_watch`` advances it:
    each status is seen however slow the machine (a real 0.4 s could pass between two looks)."""
    with XnatEmulator(
        data_dir=tmp_path / "q",
        users=USERS,
        projects=["P1", "P2"],
        receiving_idle=0.5,
        build_seconds=0.2,
        queue_seconds=0.4,
        clock=ManualClock(),
    ) as emu:
        yield emu


def _watch(client: XnatClient, project: str, name: str, until: Callable[[list[PrearchiveSession]], bool],
           clock: Any) -> list[str]:
    """Every status a row shows until ``until`` holds: a look, then the emulator's clock 0.04 s on (a tenth of a
    queue step: a status lasts a whole step, so none is missed), up to 16 s of the emulator's time."""
    seen: list[str] = []
    for _ in range(400):
        listed = [s for s in client.list_prearchive(project) if s.name == name]
        if listed and (not seen or seen[-1] != listed[0].status):
            seen.append(listed[0].status)
        if until(listed):
            return seen
        clock.advance(0.04)
    raise AssertionError(f"never done; saw {seen}")


def test_move_queues_runs_then_completes(queue: XnatEmulator, tmp_path: Path) -> None:
    with XnatClient(queue.url, "admin", "admin", backoff=0.01) as client, requests.Session() as http:
        http.auth = ("admin", "admin")
        _study, ref = import_study(client, tmp_path, "s01")

        queued = client.move_prearchive(ref, "P2")

        assert queued is not None and queued.status == "QUEUED_MOVING" and queued.uri == ref.uri
        seen = _watch(client, "P1", "S01_MR1", lambda listed: not listed, queue.prearchive.clock)
        assert seen[0] == "QUEUED_MOVING" and "_MOVING" in seen
        [moved] = rows(http, queue, "P2")
        assert (moved["status"], moved["timestamp"], moved["folderName"]) == ("READY", ref.timestamp, "S01_MR1")
        assert rows(http, queue, "P1") == []


def test_rebuild_queues_runs_then_completes(queue: XnatEmulator, tmp_path: Path) -> None:
    with XnatClient(queue.url, "admin", "admin", backoff=0.01) as client:
        _study, ref = import_study(client, tmp_path, "s01")

        queued = client.rebuild_prearchive(ref)

        assert queued is not None and queued.status == "QUEUED_BUILDING"
        seen = _watch(client, "P1", "S01_MR1", lambda listed: bool(listed) and listed[0].status == "READY",
                      queue.prearchive.clock)
        assert seen[0] == "QUEUED_BUILDING" and "_BUILDING" in seen and seen[-1] == "READY"
        assert client.archive(ref).label == "S01_MR1"  # and it archives as before


def test_rebuild_releases_a_stuck_session(client: XnatClient, emulator: XnatEmulator, study: Study) -> None:
    [ref] = client.import_dicom(study.files[0].parent, "P1")
    emulator.hold_prearchive("P1", ref.timestamp, ref.label, "BUILDING")
    assert client.get_prearchive(ref).busy

    client.rebuild_prearchive(ref)

    assert wait_for(lambda: client.get_prearchive(ref).status == "READY")


def test_delete_queues_runs_then_completes(queue: XnatEmulator, tmp_path: Path) -> None:
    with XnatClient(queue.url, "admin", "admin", backoff=0.01) as client, requests.Session() as http:
        http.auth = ("admin", "admin")
        _study, ref = import_study(client, tmp_path, "s01")

        queued = client.delete_prearchive(ref)

        assert queued is not None and queued.status == "QUEUED_DELETING"
        seen = _watch(client, "P1", "S01_MR1", lambda listed: not listed, queue.prearchive.clock)
        assert seen[0] == "QUEUED_DELETING" and "_DELETING" in seen
        assert rows(http, queue) == [] and client.find_prearchive(ref) is None
        assert experiments(http, queue) == []


def test_move_to_unknown_project(client: XnatClient, emulator: XnatEmulator, study: Study) -> None:
    [ref] = client.import_dicom(study.files[0].parent, "P1")
    with pytest.raises(XnatNotFoundError, match="NOPE"):
        client.move_prearchive(ref, "NOPE")
    with pytest.raises(XnatBadInputError):
        client.move_prearchive(ref, "bad project")
    assert client.get_prearchive(ref).status == "READY"


def test_a_queued_session_is_queued_over(slow_queue: XnatEmulator, tmp_path: Path) -> None:
    """A QUEUED_X row is not locked: XNAT queues the next operation over it (only _X rows are locked)."""
    with XnatClient(slow_queue.url, "admin", "admin", backoff=0.01) as client:
        _study, ref = import_study(client, tmp_path, "s01")
        client.delete_prearchive(ref)
        assert client.move_prearchive(ref, "P2").status == "QUEUED_MOVING"  # type: ignore[union-attr]
        assert client.get_prearchive(ref).status == "QUEUED_MOVING"


@pytest.mark.parametrize("op", ["rebuild", "move", "delete"])
@pytest.mark.parametrize("locked", ["_ARCHIVING", "_BUILDING", "_MOVING"])
def test_a_batch_operation_on_a_locked_session_raises_a_conflict(
    client: XnatClient, emulator: XnatEmulator, study: Study, op: str, locked: str
) -> None:
    """XNAT answers 200 with the locked row unchanged and does nothing (PrearcUtils.queuePrearchiveOperation,
    PrearchiveBatchDelete): the client does not report that as done."""
    [ref] = client.import_dicom(study.files[0].parent, "P1")
    emulator.hold_prearchive("P1", ref.timestamp, ref.label, locked)
    calls = {"rebuild": lambda: client.rebuild_prearchive(ref), "move": lambda: client.move_prearchive(ref, "P2"),
             "delete": lambda: client.delete_prearchive(ref)}

    with pytest.raises(XnatConflictError) as err:
        calls[op]()

    assert err.value.status == 200 and f"locked ({locked})" in str(err.value)
    assert "operation in progress" in str(err.value) and "reset-status" in str(err.value)
    assert emulator.request_count("POST", f"/data/services/prearchive/{op}") == 1
    time.sleep(3 * emulator.prearchive.queue_seconds)
    assert client.get_prearchive(ref).status == locked  # nothing happened
    emulator.release_prearchive("P1", ref.timestamp, ref.label)  # the operation ended: the row is free again
    assert calls[op]().status.startswith("QUEUED_")  # type: ignore[union-attr]


def test_batch_504_after_it_took_effect_is_not_resent(slow_queue: XnatEmulator, tmp_path: Path) -> None:
    with XnatClient(slow_queue.url, "admin", "admin", backoff=0.01) as client:
        _study, ref = import_study(client, tmp_path, "s01")
        slow_queue.succeed_then_504("POST", "/data/services/prearchive/delete")

        queued = client.delete_prearchive(ref)

        assert queued is not None and queued.status == "QUEUED_DELETING"
        assert slow_queue.request_count("POST", "/data/services/prearchive/delete") == 1


def test_batch_503_before_it_took_effect_is_resent(slow_queue: XnatEmulator, tmp_path: Path) -> None:
    with XnatClient(slow_queue.url, "admin", "admin", backoff=0.01) as client:
        _study, ref = import_study(client, tmp_path, "s01")
        slow_queue.fail_next("POST", "/data/services/prearchive/move", status=503)

        queued = client.move_prearchive(ref, "P2")

        assert queued is not None and queued.status == "QUEUED_MOVING"
        assert slow_queue.request_count("POST", "/data/services/prearchive/move") == 2


# ---- login ---------------------------------------------------------------------------------------------------
def test_wrong_password_is_one_login_attempt(emulator: XnatEmulator, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    emulator.add_user("ops", SECRET, admin=True)
    wrong = SECRET + "-wrong"
    with XnatClient(emulator.url, "ops", wrong, backoff=0.01) as client:
        with pytest.raises(XnatAuthError) as err:
            client.list_prearchive("P1")
        assert client.transport.login_attempts == 1
    assert failed_logins(emulator, "ops") == 1
    assert emulator.request_count("POST", "/data/services/auth") == 1
    assert err.value.status == 401 and "Login attempt failed" in str(err.value)
    text = caplog.text + str(err.value) + repr(err.value)
    assert wrong not in text and SECRET not in text


def test_wrong_password_on_archive_is_one_login_attempt(
    emulator: XnatEmulator, http: requests.Session, study: Study
) -> None:
    with XnatClient(emulator.url, "admin", "admin") as good:
        [ref] = good.import_dicom(study.files[0].parent, "P1")
    with XnatClient(emulator.url, "alice", "not-alice-pw", backoff=0.01) as client:
        with pytest.raises(XnatAuthError):
            client.archive(ref)
        assert client.transport.login_attempts == 1
    assert failed_logins(emulator, "alice") == 1
    assert emulator.request_count("POST", ARCHIVE) == 0
    assert [r["status"] for r in rows(http, emulator)] == ["READY"]


def test_session_expiry_between_calls_is_one_relogin(
    client: XnatClient, emulator: XnatEmulator, http: requests.Session, study: Study
) -> None:
    [ref] = client.import_dicom(study.files[0].parent, "P1")
    assert client.transport.login_attempts == 1
    emulator.expire_sessions()

    assert client.get_prearchive(ref).status == "READY"
    assert client.transport.login_attempts == 2
    emulator.expire_sessions()

    archived = client.archive(ref)

    assert archived.label == "S01_MR1" and client.transport.login_attempts == 3
    assert emulator.request_count("POST", ARCHIVE) == 1
    assert [e["label"] for e in experiments(http, emulator)] == ["S01_MR1"]


def test_no_secret_in_logs_or_errors(emulator: XnatEmulator, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    emulator.add_user("ops", SECRET, admin=True)
    caplog.set_level(logging.DEBUG)
    errors: list[str] = []
    with XnatClient(emulator.url, "ops", SECRET, backoff=0.01) as client:
        _first, ref = _conflict(client, tmp_path)
        sid = client.transport.session_id
        assert sid
        for call in (
            lambda: client.archive(ref),
            lambda: client.get_prearchive(ref.uri.replace(ref.label, "NOPE")),
            lambda: client.move_prearchive(ref, "NOPE"),
        ):
            with pytest.raises(Exception) as err:
                call()
            errors.append(f"{err.value!s} {err.value!r}")
        emulator.succeed_then_504("POST", ARCHIVE)
        client.archive(ref, overwrite="append", settle_seconds=5)
        emulator.expire_sessions()
        client.list_prearchive()
    text = caplog.text + "\n".join(errors)
    assert "POST /data/services/archive" in caplog.text
    assert SECRET not in text and sid not in text
