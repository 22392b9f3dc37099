"""The client's contract with a real XNAT: what a lab's DAG relies on, checked through the public API only,
with the server's state read back over plain HTTP (``Scratch``), never through the client under test."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.contract.support import (
    RUN_ID,
    ContractServer,
    NeedsEmulator,
    Scratch,
    SourceStudy,
    instances,
    md5,
    wait_until,
)
from xnat_provider.client import (
    PrearchiveSession,
    XnatAuthError,
    XnatClient,
    XnatConflictError,
    XnatNotFoundError,
    base_path,
)


def ready_row(client: XnatClient, server: ContractServer, study: SourceStudy) -> PrearchiveSession:
    """The study's prearchive row once READY (XNAT builds a session before it can be archived)."""

    def ready() -> PrearchiveSession | None:
        rows = client.list_prearchive(server.project, study_uid=study.study_uid)
        return next((r for r in rows if r.status == "READY"), None)

    return wait_until(ready, server.timeout,
                      f"the prearchive row of {study.session} to be READY in {server.project} (does the project "
                      "auto-archive? the suite needs its prearchive setting to keep sessions in the prearchive)")


@dataclass(frozen=True)
class Archived:
    study: SourceStudy
    experiment_id: str


@pytest.fixture(scope="module")
def archived(server: ContractServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archived]:
    """One study imported to the prearchive and archived, shared by the tests that read it or add to it (an
    import and archive cost seconds to minutes on a real XNAT). Removed when the module ends."""
    scratch = Scratch(server)
    try:
        study = scratch.new_study(tmp_path_factory.mktemp("archived"))
        with server.client() as c:
            c.import_dicom(study.folder, server.project, subject=study.subject, experiment=study.session)
            ref = c.archive(ready_row(c, server, study))
            exp = c.get_experiment(server.project, ref.label)
        yield Archived(study, exp.id)
    finally:
        try:
            scratch.clean_up()
        finally:
            scratch.close()


# ---- login ----------------------------------------------------------------------------------------------
def test_one_login_serves_whoami_version_and_project_lookups(client: XnatClient, server: ContractServer) -> None:
    assert client.whoami() == server.user
    assert re.match(r"^\d+\.\d+", client.version()), client.version()
    assert client.project_exists(server.project) is True
    assert client.project_exists(f"NO_SUCH_PROJECT_{RUN_ID}") is False
    assert client.transport.login_attempts == 1  # the session cookie carries every later call


# ---- import and archive ---------------------------------------------------------------------------------
def test_import_gives_one_ready_prearchive_session_per_study_and_archive_brings_its_scans(
        client: XnatClient, server: ContractServer, scratch: Scratch, tmp_path: Path) -> None:
    """Two studies in one folder, routed by their headers: two refs, two READY rows; archiving one puts its
    experiment, with the study's scans and files, in the archive and leaves the other row alone."""
    folder = tmp_path / "two-studies"
    first = scratch.new_study(folder, series=((1, "T1"), (2, "T2")), instances=3)
    second = scratch.new_study(folder, series=((1, "T1"),), instances=2)
    refs = client.import_dicom(folder, server.project)
    assert sorted((r.project, r.label, r.in_prearchive) for r in refs) == sorted(
        (server.project, s.session, True) for s in (first, second))
    rows = {s.session: ready_row(client, server, s) for s in (first, second)}
    assert {(r.subject, r.name) for r in rows.values()} == {(s.subject, s.session) for s in (first, second)}
    assert sorted(r["tag"] for r in scratch.prearchive()) == sorted([first.study_uid, second.study_uid])

    ref = client.archive(rows[first.session])
    assert (ref.project, ref.subject, ref.label, ref.in_prearchive) == (
        server.project, first.subject, first.session, False)
    scans = scratch.scans(first.session)
    assert sorted((s["ID"], s.get("series_description") or s.get("type")) for s in scans) == [("1", "T1"), ("2", "T2")]
    for scan_id, files in first.series.items():
        assert len(scratch.catalog(scratch.scan_path(first.session, scan_id), "DICOM")) == len(files), scan_id
    wait_until(lambda: [r["tag"] for r in scratch.prearchive()] == [second.study_uid], server.timeout,
               "the archived row to leave the prearchive, the other study's row to stay")


# ---- reading scans --------------------------------------------------------------------------------------
def test_list_scans_and_select_scans_by_id_type_pattern_or_all(client: XnatClient, server: ContractServer,
                                                               archived: Archived) -> None:
    label = archived.study.session
    scans = client.list_scans(server.project, label)
    assert sorted((s.id, s.type or s.series_description) for s in scans) == [("1", "T1"), ("2", "T2")]

    def ids(selection: str | list[str]) -> list[str]:
        return sorted(s.id for s in client.select_scans(server.project, label, selection))

    assert ids("ALL") == ["1", "2"]
    assert ids(["2"]) == ["2"]
    assert ids(["T1"]) == ["1"]
    assert ids("re:T.*") == ["1", "2"]
    assert ids("re:DWI.*") == []
    with pytest.raises(XnatNotFoundError, match="99"):
        client.select_scans(server.project, label, ["99"])


def test_download_scans_is_verified_and_holds_the_source_instances(client: XnatClient, server: ContractServer,
                                                                   scratch: Scratch, archived: Archived,
                                                                   tmp_path: Path) -> None:
    """Every file's size and MD5 in the manifest are those of the file on disk and of the server's catalog, and
    the files are the instances that were sent (same SOP Instance UIDs, same pixels). Byte equality with the
    source is not required: XNAT's default site anonymization script rewrites patient headers on import."""
    study, dest = archived.study, (tmp_path / "download").resolve()
    manifest = client.download_scans(server.project, study.session, dest, scans="ALL")
    assert (len(manifest.files), manifest.transferred, manifest.skipped) == (len(study.files), len(study.files), 0)
    for scan_id, sources in study.series.items():
        catalog = scratch.catalog(scratch.scan_path(study.session, scan_id), "DICOM")
        assert all(digest for _, digest in catalog.values()), "the server lists no MD5: downloads are unverifiable"
        folder = dest / scan_id / "DICOM"
        got = [f for f in manifest.files if Path(f["path"]).is_relative_to(folder)]
        assert len(got) == len(sources) == len(catalog), scan_id
        for entry in got:
            on_disk = Path(entry["path"])
            assert (entry["size"], entry["md5"]) == (on_disk.stat().st_size, md5(on_disk))
            assert (entry["size"], entry["md5"]) == catalog[on_disk.relative_to(folder).as_posix()]
        assert instances(Path(f["path"]) for f in got) == instances(sources), scan_id
    assert manifest.bytes == sum(Path(f["path"]).stat().st_size for f in manifest.files)
    assert not list(dest.rglob("*.part"))

    again = client.download_scans(server.project, study.session, dest, scans="ALL")
    assert (again.transferred, again.skipped) == (0, len(study.files))  # a rerun fetches nothing already right


# ---- uploading ------------------------------------------------------------------------------------------
def test_uploads_to_session_and_scan_resources_skip_identical_files_then_overwrite(
        client: XnatClient, server: ContractServer, scratch: Scratch, archived: Archived, tmp_path: Path) -> None:
    # Addressed as a lab's code would: the session by project and label, a scan through the experiment's ID
    # (XNAT has no /data/projects/{P}/experiments/{E}/scans route).
    session_path = base_path(server.project, experiment=archived.study.session)
    scan_path = base_path(experiment=archived.experiment_id, scan="1")
    results = tmp_path / "results"
    (results / "sub").mkdir(parents=True)
    (results / "summary.txt").write_text(f"run {RUN_ID}\n")
    (results / "sub" / "stats.json").write_text('{"mean": 1.5}\n')
    notes = tmp_path / "notes.txt"
    notes.write_text("first version\n")

    def local(root: Path) -> dict[str, tuple[int, str]]:
        return {p.relative_to(root).as_posix(): (p.stat().st_size, md5(p)) for p in root.rglob("*") if p.is_file()}

    # A folder to a session resource, a file to a scan resource: stored, and the catalog says so.
    folder = client.upload(results, session_path, "CONTRACT_QC")
    assert (folder.transferred, folder.skipped) == (2, 0)
    assert scratch.catalog(session_path, "CONTRACT_QC") == local(results)
    single = client.upload(notes, scan_path, "CONTRACT_NOTES")
    assert (single.transferred, single.skipped) == (1, 0)
    assert scratch.catalog(scan_path, "CONTRACT_NOTES") == {"notes.txt": (notes.stat().st_size, md5(notes))}

    # The same again: nothing is sent.
    assert (client.upload(results, session_path, "CONTRACT_QC").transferred,
            client.upload(notes, scan_path, "CONTRACT_NOTES").transferred) == (0, 0)

    # A changed file: skip_identical refuses to replace it and leaves the catalog as it was; overwrite replaces.
    (results / "summary.txt").write_text(f"run {RUN_ID}, second pass\n")
    notes.write_text("second, longer version\n")
    before = scratch.catalog(session_path, "CONTRACT_QC")
    with pytest.raises(XnatConflictError, match=r"summary\.txt"):
        client.upload(results, session_path, "CONTRACT_QC")
    assert scratch.catalog(session_path, "CONTRACT_QC") == before
    replaced = client.upload(results, session_path, "CONTRACT_QC", overwrite="overwrite")
    assert (replaced.transferred, replaced.skipped) == (1, 1)
    assert scratch.catalog(session_path, "CONTRACT_QC") == local(results)
    assert client.upload(notes, scan_path, "CONTRACT_NOTES", overwrite="overwrite").transferred == 1
    assert scratch.catalog(scan_path, "CONTRACT_NOTES") == {"notes.txt": (notes.stat().st_size, md5(notes))}


# ---- custom fields --------------------------------------------------------------------------------------
def test_custom_fields_set_on_the_session_are_read_back_by_another_login(client: XnatClient, server: ContractServer,
                                                                         archived: Archived) -> None:
    wanted = {"contract_run": RUN_ID, "contract_step": "fields"}
    assert client.set_fields(server.project, wanted, experiment=archived.study.session) == wanted
    with server.client() as other:
        stored = other.get_fields(server.project, experiment=archived.study.session)
    assert {k: stored.get(k) for k in wanted} == wanted


# ---- alias tokens and logout ----------------------------------------------------------------------------
def test_alias_token_logs_in_as_its_user_until_invalidated(client: XnatClient, server: ContractServer,
                                                           scratch: Scratch) -> None:
    token = client.issue_token()
    scratch.track_token(token.alias)  # invalidated at cleanup if the test stops half-way
    assert token.user == server.user and token.alias and token.alias != server.user
    assert client.validate_token(token) == server.user
    with XnatClient(server.url, token.alias, token.secret, **server.client_options()) as as_token:
        assert as_token.whoami() == server.user
        assert as_token.project_exists(server.project)
    client.invalidate_token(token)
    assert client.validate_token(token) is None
    with (pytest.raises(XnatAuthError),
          XnatClient(server.url, token.alias, token.secret, **server.client_options()) as refused):
        refused.whoami()


def test_logout_ends_the_server_session(server: ContractServer) -> None:
    """After ``close()`` the session cookie no longer opens anything: a login left open would stay on the
    server until its idle timeout."""
    c = server.client()
    assert c.whoami() == server.user
    cookie = c.transport.session_id
    assert cookie
    with requests.Session() as probe:
        probe.headers["User-Agent"] = "airflow-provider-xnat-contract-tests"
        still_in = probe.get(f"{server.url}/data/auth", headers={"Cookie": f"JSESSIONID={cookie}"},
                             allow_redirects=False, timeout=(10, 60))
        assert still_in.status_code == 200 and f"'{server.user}'" in still_in.text  # the probe itself works
        c.close()
        after = probe.get(f"{server.url}/data/auth", headers={"Cookie": f"JSESSIONID={cookie}"},
                          allow_redirects=False, timeout=(10, 60))
    assert not (after.status_code == 200 and f"'{server.user}'" in after.text), after.status_code


def test_expired_session_is_renewed_by_one_login(client: XnatClient, server: ContractServer,
                                                 needs_emulator: NeedsEmulator) -> None:
    emulator = needs_emulator("it expires sessions on demand; a real XNAT only after its idle timeout")
    assert client.whoami() == server.user
    logins = client.transport.login_attempts
    emulator.expire_sessions()
    assert client.whoami() == server.user
    assert client.list_projects()
    assert client.transport.login_attempts == logins + 1
