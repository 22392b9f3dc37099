"""The zip fast path of ``download_scans``: one request for a scan of many small files, with every guarantee of
the per-file path (verified bytes, ``.part`` then rename, the same manifest) and a per-file fallback for whatever
the zip did not deliver verified.

Each test checks the files on disk byte for byte against the originals, that no ``.part`` or temporary zip is
left behind, and which requests the emulator received (one zip GET, per-file GETs).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
import requests

from xnat_provider.client import XnatClient, XnatTransferError, base_path
from xnat_provider.client.models import Manifest
from xnat_provider.testing import XnatEmulator
from xnat_provider.testing.files_api import FilesApi
from xnat_provider.testing.samples import make_study, zip_files

FILE_GET = r"/files/.+"  # one file (the zip and the listing are GET .../files)
LISTING_OR_ZIP = r"/scans/1/resources/DICOM/files$"


@dataclass
class Scan:
    label: str
    originals: dict[str, bytes]  # file name on the server -> bytes
    resource_path: str

    def tree(self, scan: str = "1") -> dict[str, bytes]:
        return {f"{scan}/DICOM/{name}": data for name, data in self.originals.items()}


def import_scan(tmp_path: Path, http: requests.Session, emulator: XnatEmulator, instances: int,
                name: str = "S01") -> Scan:
    """A real one-series MR session of ``instances`` files, imported straight into the archive."""
    study = make_study(tmp_path / f"src-{name}", patient_name=name, patient_id=f"{name}_MR1",
                       series=((1, "T1"),), instances=instances)
    archive = zip_files(study.files, tmp_path / f"src-{name}.zip")
    r = http.post(emulator.url + "/data/services/import", params={"dest": "/archive/projects/P1"},
                  data=archive.read_bytes(), headers={"Content-Type": "application/zip"})
    assert r.status_code == 200, r.text
    rows = http.get(emulator.url + "/data/projects/P1/experiments?format=json").json()["ResultSet"]["Result"]
    row = next(row for row in rows if row["label"].startswith(name))
    originals = {f"{pydicom.dcmread(p).SOPInstanceUID}.dcm": p.read_bytes() for p in study.files}
    return Scan(row["label"], originals, f"{base_path(experiment=row['ID'], scan='1')}/resources/DICOM")


@pytest.fixture(autouse=True, params=[False, True], ids=["range-ignored", "range-honoured"])
def range_requests(request: pytest.FixtureRequest, emulator: XnatEmulator) -> bool:
    """Every test runs twice: against a server that ignores Range (the emulator's default) and one that honours
    it (XNAT 1.8, through Restlet 1.1.10's RangeFilter); the per-file fallback may resume."""
    emulator.range_requests = request.param
    return request.param


@pytest.fixture
def client(emulator: XnatEmulator, caplog: pytest.LogCaptureFixture) -> Iterator[XnatClient]:
    caplog.set_level(logging.INFO, logger="xnat_provider.client")
    with XnatClient(emulator.url, "admin", "admin", backoff=0.01) as c:
        yield c


@pytest.fixture
def zips(client: XnatClient, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths of the zip GETs the client sends (``params={"format": "zip"}``)."""
    sent: list[str] = []
    real = client.transport.request

    def spy(method: str, path: str, **kw):
        if (kw.get("params") or {}).get("format") == "zip":
            sent.append(path)
        return real(method, path, **kw)

    monkeypatch.setattr(client.transport, "request", spy)
    return sent


@pytest.fixture
def big(tmp_path: Path, http: requests.Session, emulator: XnatEmulator) -> Scan:
    return import_scan(tmp_path, http, emulator, instances=40)


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (``.part`` files and temporary zips included, so that a stray one fails)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def entries(manifest: Manifest, root: Path) -> list[dict]:
    """The manifest's entries with paths relative to ``root``, in order."""
    return [{**f, "path": Path(f["path"]).relative_to(root).as_posix()} for f in manifest.files]


def check_manifest(manifest: Manifest, root: Path, expected: dict[str, bytes], skipped: bool = False) -> None:
    got = {e["path"]: e for e in entries(manifest, root)}
    assert set(got) == set(expected)
    for rel, data in expected.items():
        assert got[rel]["size"] == len(data)
        assert got[rel]["md5"] == hashlib.md5(data).hexdigest()
        assert got[rel]["skipped"] is skipped
        assert got[rel]["uri"].endswith(f"/files/{rel.split('/', 2)[2]}")
    assert (manifest.transferred, manifest.skipped) == ((0, len(expected)) if skipped else (len(expected), 0))
    assert manifest.bytes == sum(len(d) for d in expected.values())


# ---- the fast path -----------------------------------------------------------------------------------------
def test_a_40_file_scan_comes_as_one_zip_with_the_per_file_manifest(client: XnatClient, big: Scan,
                                                                    emulator: XnatEmulator, zips: list[str],
                                                                    tmp_path: Path) -> None:
    dest = tmp_path / "out"
    emulator.faults.reset_counts()
    manifest = client.download_scans("P1", big.label, dest, scans=["1"])
    assert zips == [f"{big.resource_path}/files"]  # exactly one zip GET ...
    assert emulator.request_count("GET", LISTING_OR_ZIP) == 2  # ... beside the one listing
    assert emulator.request_count("GET", FILE_GET) == 0  # and no per-file GET
    assert tree(dest) == big.tree()  # the original bytes; no .part, no temporary zip left
    check_manifest(manifest, dest, big.tree())

    # The very manifest the per-file path gives (paths, sizes, MD5s, skipped=False, URIs, order, totals).
    client.ZIP_FAST_PATH = False
    per_file_dest = tmp_path / "per-file"
    per_file = client.download_scans("P1", big.label, per_file_dest, scans=["1"])
    assert emulator.request_count("GET", FILE_GET) == 40
    assert zips == [f"{big.resource_path}/files"]
    assert entries(manifest, dest) == entries(per_file, per_file_dest)
    assert (manifest.bytes, manifest.transferred, manifest.skipped) == (
        per_file.bytes, per_file.transferred, per_file.skipped)


def test_download_session_takes_the_fast_path_for_its_scan_resources(client: XnatClient, big: Scan,
                                                                     emulator: XnatEmulator, zips: list[str],
                                                                     tmp_path: Path) -> None:
    emulator.faults.reset_counts()
    manifest = client.download_session("P1", big.label, tmp_path / "out")
    assert zips == [f"{big.resource_path}/files"]
    assert emulator.request_count("GET", FILE_GET) == 0
    expected = {f"scans/{k}": v for k, v in big.tree().items()}
    assert tree(tmp_path / "out") == expected
    got = {e["path"]: e for e in entries(manifest, tmp_path / "out")}
    assert set(got) == set(expected) and not any(e["skipped"] for e in got.values())


def test_a_rerun_with_files_present_uses_the_per_file_path_and_skips(client: XnatClient, big: Scan,
                                                                     emulator: XnatEmulator, zips: list[str],
                                                                     tmp_path: Path) -> None:
    dest = tmp_path / "out"
    client.download_scans("P1", big.label, dest)
    assert len(zips) == 1
    again = client.download_scans("P1", big.label, dest)
    assert len(zips) == 1 and emulator.request_count("GET", FILE_GET) == 0  # nothing fetched at all
    check_manifest(again, dest, big.tree(), skipped=True)

    # Half done: one file gone, one left as a .part (a broken transfer): the per-file path finishes the job.
    names = sorted(big.tree())
    (dest / names[0]).unlink()
    part = dest / (names[1] + ".part")
    (dest / names[1]).rename(part)
    part.write_bytes(part.read_bytes()[:1000])
    rerun = client.download_scans("P1", big.label, dest)
    assert len(zips) == 1  # no second zip
    assert emulator.request_count("GET", FILE_GET) == 2  # exactly the two missing files
    assert tree(dest) == big.tree()
    assert {e["path"] for e in entries(rerun, dest) if not e["skipped"]} == {names[0], names[1]}


def test_a_single_file_already_present_keeps_the_per_file_path(client: XnatClient, big: Scan,
                                                               emulator: XnatEmulator, zips: list[str],
                                                               tmp_path: Path) -> None:
    dest = tmp_path / "out"
    name, data = next(iter(big.tree().items()))
    (dest / name).parent.mkdir(parents=True)
    (dest / name).write_bytes(data)
    manifest = client.download_scans("P1", big.label, dest)
    assert zips == []
    assert emulator.request_count("GET", FILE_GET) == 39
    assert tree(dest) == big.tree()
    assert [e["path"] for e in entries(manifest, dest) if e["skipped"]] == [name]


def test_small_scans_use_the_per_file_path(client: XnatClient, tmp_path: Path, http: requests.Session,
                                           emulator: XnatEmulator, zips: list[str]) -> None:
    assert (client.ZIP_MIN_FILES, client.ZIP_MAX_MEAN_SIZE) == (20, 2 * 1024 * 1024)
    small = import_scan(tmp_path, http, emulator, instances=client.ZIP_MIN_FILES - 1, name="S02")
    manifest = client.download_scans("P1", small.label, tmp_path / "out")
    assert zips == []
    assert emulator.request_count("GET", FILE_GET) == 19
    assert tree(tmp_path / "out") == small.tree()
    check_manifest(manifest, tmp_path / "out", small.tree())


def test_large_files_use_the_per_file_path(client: XnatClient, big: Scan, emulator: XnatEmulator,
                                           zips: list[str], tmp_path: Path) -> None:
    client.ZIP_MAX_MEAN_SIZE = min(len(d) for d in big.originals.values())  # the mean is not below it
    manifest = client.download_scans("P1", big.label, tmp_path / "out")
    assert zips == []
    assert emulator.request_count("GET", FILE_GET) == 40
    check_manifest(manifest, tmp_path / "out", big.tree())


# ---- fallbacks ---------------------------------------------------------------------------------------------
def test_a_file_corrupted_on_the_server_falls_back_to_its_own_get_and_is_refused(
        client: XnatClient, big: Scan, emulator: XnatEmulator, zips: list[str], caplog: pytest.LogCaptureFixture,
        tmp_path: Path) -> None:
    remote = client.list_files(big.resource_path)[7]
    emulator.corrupt_file(remote.uri)  # the stored bytes no longer match the catalog digest (size kept)
    dest = tmp_path / "out"
    with pytest.raises(XnatTransferError, match=f"does not match the catalog digest {remote.digest}") as err:
        client.download_scans("P1", big.label, dest, workers=1)
    assert err.value.path == remote.uri
    assert len(zips) == 1
    # The zip held the wrong bytes; then only that file was fetched on its own, every attempt in full.
    assert emulator.request_count("GET", FILE_GET) == client.config.retries
    assert emulator.request_count("GET", remote.path.replace(".", r"\.")) == client.config.retries
    assert "1 files failed verification" in caplog.text and remote.path in caplog.text
    expected = {k: v for k, v in big.tree().items() if not k.endswith(remote.path)}
    assert tree(dest) == expected  # the 39 good files, verified; nothing for the bad one, no .part, no zip


def test_a_zip_broken_mid_transfer_falls_back_to_per_file_and_completes(
        client: XnatClient, big: Scan, emulator: XnatEmulator, zips: list[str], caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The listing and the zip share a path (GET .../files); arm the fault once the listing is done.
    real = client.list_files

    def list_then_arm(path: str):
        files = real(path)
        emulator.drop_after("GET", LISTING_OR_ZIP, after_bytes=100_000)
        return files

    monkeypatch.setattr(client, "list_files", list_then_arm)
    dest = tmp_path / "out"
    manifest = client.download_scans("P1", big.label, dest)
    assert len(zips) == 1
    assert emulator.request_count("GET", FILE_GET) == 40  # nothing was verified from the zip
    assert "Zip download of" in caplog.text and "one by one" in caplog.text
    assert tree(dest) == big.tree()
    check_manifest(manifest, dest, big.tree())


def test_entries_the_catalog_does_not_list_are_ignored_and_missing_files_fetched(
        client: XnatClient, big: Scan, emulator: XnatEmulator, zips: list[str], caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A hostile or broken server: one entry escapes with "..", one is renamed to a file the catalog does not
    # list, one sits in another resource; so three listed files are missing from the zip.
    real = FilesApi._zip_name
    renamed: dict[str, str] = {}

    def hostile(t, res, rel, structure):
        name = real(t, res, rel, structure)
        n = len(renamed)
        if n < 3:
            renamed[rel] = [f"../../escaped-{rel}", name.replace("/files/", "/files/unlisted-"),
                             name.replace("/resources/DICOM/", "/resources/OTHER/")][n]
            return renamed[rel]
        return name

    monkeypatch.setattr(FilesApi, "_zip_name", staticmethod(hostile))
    dest = tmp_path / "a" / "out"
    manifest = client.download_scans("P1", big.label, dest)
    assert len(zips) == 1
    assert emulator.request_count("GET", FILE_GET) == 3  # exactly the three files the zip did not deliver
    for rel in renamed:
        assert emulator.request_count("GET", rel.replace(".", r"\.")) == 1
    assert tree(dest) == big.tree()
    assert not list(tmp_path.rglob("*escaped-*")) and not list(tmp_path.rglob("*unlisted-*"))
    check_manifest(manifest, dest, big.tree())
    assert "ignored 3 entries" in caplog.text
    assert "(an unsafe path" in caplog.text and "(not in the catalog listing)" in caplog.text
    assert "3 listed files are missing" in caplog.text


def test_a_zip_labelled_text_html_is_not_cut_short(emulator: XnatEmulator, study_zip: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A gateway that labels the zip text/html: the client looks at its first bytes for an error page, and
    those bytes must still end up in the zip."""
    from xnat_provider.testing.files_api import FilesApi

    real = FilesApi.zip_download

    def mislabelled(self, req, fmt):  # type: ignore[no-untyped-def]
        resp = real(self, req, fmt)
        resp.content_type = "text/html"
        return resp

    monkeypatch.setattr(FilesApi, "zip_download", mislabelled)
    with XnatClient(emulator.url, "admin", "admin") as c:
        c.import_dicom(study_zip, "P1", destination="archive")
        exp = c.experiment_path("P1", "S01_MR1")
        manifest = c.download_zip(f"{exp}/scans/ALL/files", tmp_path / "out")
    assert len(manifest.files) == 6
    assert all(Path(f["path"]).stat().st_size == f["size"] for f in manifest.files)
