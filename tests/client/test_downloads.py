"""The client's downloads against the emulator: bytes on disk, manifests, faults, and no secret in logs or errors.

Every test checks what a user would: the files on disk byte for byte against the originals, that no ``.part``
file is left behind, the manifest, the requests the emulator received, and the error type and message.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
import requests

from tests.support import assert_no_secret
from xnat_provider.client import (
    XnatBadInputError,
    XnatClient,
    XnatNotFoundError,
    XnatServerError,
    XnatTransferError,
    base_path,
)
from xnat_provider.testing import XnatEmulator
from xnat_provider.testing.files_api import FilesApi
from xnat_provider.testing.samples import make_study, zip_files

USER, PASSWORD = "carol", "Tr4nsfer-s3cret!"
FILE_GET = r"/files/.+"


# ---- fixtures and helpers ----------------------------------------------------------------------------------
@pytest.fixture(autouse=True, params=[False, True], ids=["range-ignored", "range-honoured"])
def range_requests(request: pytest.FixtureRequest, emulator: XnatEmulator) -> bool:
    """Every test runs twice: against a server that ignores Range and answers 200 with the whole file (the
    emulator's default; proxies and servers may), and one that answers 206 (XNAT 1.8, through Restlet 1.1.10's
    RangeFilter)."""
    emulator.range_requests = request.param
    return request.param


@dataclass
class Session:
    id: str
    label: str
    originals: dict[str, dict[str, bytes]]  # scan id -> {file name on the server: bytes}

    @property
    def path(self) -> str:
        return base_path(experiment=self.id)  # where XNAT routes a session's scans and files

    def scan_tree(self, *scan_ids: str, resource: str = "DICOM") -> dict[str, bytes]:
        return {f"{s}/{resource}/{name}": data for s in scan_ids for name, data in self.originals[s].items()}


@pytest.fixture
def session(tmp_path: Path, http: requests.Session, emulator: XnatEmulator) -> Session:
    """A real three-series MR session (T1, T2, FLAIR; two instances each) imported straight into the archive."""
    study = make_study(tmp_path / "src", series=((1, "T1"), (2, "T2"), (3, "FLAIR")), instances=2)
    archive = zip_files(study.files, tmp_path / "src.zip")
    r = http.post(emulator.url + "/data/services/import", params={"dest": "/archive/projects/P1"},
                  data=archive.read_bytes(), headers={"Content-Type": "application/zip"})
    assert r.status_code == 200, r.text
    exp = http.get(emulator.url + "/data/projects/P1/experiments?format=json").json()["ResultSet"]["Result"][0]
    originals = {number: {f"{pydicom.dcmread(p).SOPInstanceUID}.dcm": p.read_bytes() for p in files}
                 for number, files in study.series.items()}
    return Session(id=exp["ID"], label=exp["label"], originals=originals)


@pytest.fixture
def blobs(http: requests.Session, emulator: XnatEmulator) -> dict[str, bytes]:
    """Project resource R: a 3 MiB file (larger than the client's read chunk), a small one, a nested one."""
    files = {"big.bin": os.urandom(3 * 1024 * 1024 + 123), "small.bin": os.urandom(9000),
             "sub/dir/notes.txt": b"line one\nline two\n"}
    for rel, data in files.items():
        r = http.put(f"{emulator.url}/data/projects/P1/resources/R/files/{rel}", data=data,
                     headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 200, r.text
    return files


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (``.part`` files included, so that a stray one fails the comparison)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def check_manifest(manifest, root: Path, expected: dict[str, bytes], skipped: set[str] = frozenset()) -> None:
    entries = {Path(f["path"]).relative_to(root).as_posix(): f for f in manifest.files}
    assert set(entries) == set(expected)
    for rel, data in expected.items():
        assert entries[rel]["size"] == len(data)
        assert entries[rel]["md5"] == md5(data)
        assert entries[rel]["skipped"] is (rel in skipped)
    assert manifest.skipped == len(skipped)
    assert manifest.transferred == len(expected) - len(skipped)
    assert manifest.bytes == sum(len(d) for d in expected.values())


class Spy:
    """Records what the client sent (method, file name, Range header) and what came back, request by request."""

    def __init__(self, client: XnatClient, monkeypatch: pytest.MonkeyPatch):
        self.calls: list[tuple[str, str, str | None, int]] = []
        real = client.transport.http.request

        def request(method: str, url: str, **kw):
            resp = real(method, url, **kw)
            self.calls.append((method, url.rsplit("/", 1)[-1], (kw.get("headers") or {}).get("Range"),
                               resp.status_code))
            return resp

        monkeypatch.setattr(client.transport.http, "request", request)

    def of(self, name: str) -> list[tuple[str | None, int]]:
        return [(rng, status) for m, n, rng, status in self.calls if m == "GET" and n == name]


# ---- what gets downloaded ----------------------------------------------------------------------------------
def test_download_one_file_verified(client: XnatClient, session: Session, tmp_path: Path) -> None:
    files = client.list_files(f"{base_path(experiment=session.id, scan='1')}/resources/DICOM")
    assert sorted(f.path for f in files) == sorted(session.originals["1"])
    remote = files[0]
    original = session.originals["1"][remote.path]
    assert (remote.size, remote.digest) == (len(original), md5(original))

    entry = client.download_file(remote, tmp_path / "out" / "one.dcm")
    assert tree(tmp_path / "out") == {"one.dcm": original}
    assert entry == {"path": str(tmp_path / "out" / "one.dcm"), "size": len(original), "md5": md5(original),
                     "skipped": False}
    assert pydicom.dcmread(tmp_path / "out" / "one.dcm").SeriesDescription == "T1"


def test_download_resource_with_nested_paths(client: XnatClient, blobs: dict[str, bytes], tmp_path: Path) -> None:
    dest = tmp_path / "out"
    manifest = client.download_resource(base_path("P1"), "R", dest)
    assert tree(dest) == blobs
    check_manifest(manifest, dest, blobs)
    assert all(f["uri"].startswith("/data/projects/P1/resources/") for f in manifest.files)


def test_download_one_scan(client: XnatClient, session: Session, tmp_path: Path) -> None:
    manifest = client.download_scans("P1", session.label, tmp_path / "out", scans="2")
    assert tree(tmp_path / "out") == session.scan_tree("2")
    check_manifest(manifest, tmp_path / "out", session.scan_tree("2"))


@pytest.mark.parametrize(("selection", "expected"), [
    (["1", "3"], ("1", "3")),  # IDs
    (["T2", "FLAIR"], ("2", "3")),  # types
    (["1", "FLAIR"], ("1", "3")),  # mixed
    ("re:T[12]", ("1", "2")),  # a pattern on the type
    ("ALL", ("1", "2", "3")),
])
def test_download_several_scans(client: XnatClient, session: Session, tmp_path: Path, selection,
                                expected: tuple[str, ...]) -> None:
    manifest = client.download_scans("P1", session.label, tmp_path / "out", scans=selection)
    assert tree(tmp_path / "out") == session.scan_tree(*expected)
    check_manifest(manifest, tmp_path / "out", session.scan_tree(*expected))


def test_unknown_scan_is_not_found_and_nothing_is_written(client: XnatClient, session: Session,
                                                          tmp_path: Path) -> None:
    with pytest.raises(XnatNotFoundError, match=r"No scan \['DWI'\]") as err:
        client.download_scans("P1", session.label, tmp_path / "out", scans=["1", "DWI"])
    assert "T1" in str(err.value)  # says what the session has
    assert not (tmp_path / "out").exists()


def test_download_whole_session_file_by_file(client: XnatClient, session: Session, http: requests.Session,
                                             emulator: XnatEmulator, tmp_path: Path) -> None:
    # The session's own resource and an assessor's resource, besides the scans.
    exp = f"{emulator.url}{session.path}"
    assert http.put(f"{exp}/resources/NOTES/files/notes.txt", data=b"reviewed").status_code == 200
    assert http.put(f"{exp}/assessors/A1", params={"xsiType": "xnat:qcAssessmentData"}).status_code in (200, 201)
    assert http.put(f"{exp}/assessors/A1/resources/QC/files/qc/report.json", data=b'{"ok": true}').status_code == 200

    manifest = client.download_session("P1", session.label, tmp_path / "out")
    expected = {f"scans/{k}": v for k, v in session.scan_tree("1", "2", "3").items()}
    expected |= {"resources/NOTES/notes.txt": b"reviewed", "assessors/A1/QC/qc/report.json": b'{"ok": true}'}
    assert tree(tmp_path / "out") == expected
    check_manifest(manifest, tmp_path / "out", expected)


# ---- verification, skipping, rerunning ---------------------------------------------------------------------
def test_rerun_skips_verified_files_and_finishes_a_half_done_download(client: XnatClient, session: Session,
                                                                       emulator: XnatEmulator,
                                                                       tmp_path: Path) -> None:
    dest = tmp_path / "out"
    expected = session.scan_tree("1", "2", "3")
    client.download_scans("P1", session.label, dest)
    gets = emulator.request_count("GET", FILE_GET)
    assert gets == 6

    again = client.download_scans("P1", session.label, dest)
    check_manifest(again, dest, expected, skipped=set(expected))
    assert emulator.request_count("GET", FILE_GET) == gets  # nothing fetched

    # Half-finished: one file missing, one damaged locally (same size, one byte flipped).
    missing, damaged = sorted(expected)[0], sorted(expected)[-1]
    (dest / missing).unlink()
    data = bytearray((dest / damaged).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (dest / damaged).write_bytes(bytes(data))

    rerun = client.download_scans("P1", session.label, dest)
    assert tree(dest) == expected
    check_manifest(rerun, dest, expected, skipped=set(expected) - {missing, damaged})
    assert emulator.request_count("GET", FILE_GET) == gets + 2  # exactly those two


def test_file_corrupted_on_the_server_is_refused(client: XnatClient, session: Session, emulator: XnatEmulator,
                                                 secrets: list[str], tmp_path: Path) -> None:
    remote = client.list_files(f"{base_path(experiment=session.id, scan='1')}/resources/DICOM")[0]
    emulator.corrupt_file(remote.uri)  # the stored bytes no longer match the catalog digest (size kept)
    dest = tmp_path / "out"
    with pytest.raises(XnatTransferError) as err:
        client.download_scans("P1", session.label, dest, scans="1", workers=1)
    message = str(err.value)
    assert "MD5" in message and f"does not match the catalog digest {remote.digest}" in message
    assert remote.uri in message and err.value.path == remote.uri
    assert err.value.retryable
    assert not (dest / "1" / "DICOM" / remote.path).exists()
    assert not [p for p in dest.rglob("*.part")]
    assert_no_secret(message, secrets)
    # Every attempt downloaded the whole file again (no resume onto bytes known to be wrong).
    assert emulator.request_count("GET", remote.path) == client.config.retries


def test_size_mismatch_is_refused(client: XnatClient, blobs: dict[str, bytes], tmp_path: Path) -> None:
    remote = next(f for f in client.list_files("/data/projects/P1/resources/R") if f.path == "small.bin")
    wrong = type(remote)(path=remote.path, size=remote.size + 1, digest=remote.digest, uri=remote.uri)
    with pytest.raises(XnatTransferError, match=r"got 9000 bytes, the catalog lists 9001"):
        client.download_file(wrong, tmp_path / "out" / "small.bin")
    assert tree(tmp_path / "out") == {}


# ---- broken transfers --------------------------------------------------------------------------------------
def test_part_left_by_an_interrupted_run_is_finished(client: XnatClient, blobs: dict[str, bytes],
                                                     range_requests: bool, monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    remote = next(f for f in client.list_files("/data/projects/P1/resources/R") if f.path == "big.bin")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "big.bin.part").write_bytes(blobs["big.bin"][:1_000_000])
    spy = Spy(client, monkeypatch)
    entry = client.download_file(remote, tmp_path / "out" / "big.bin")
    assert tree(tmp_path / "out") == {"big.bin": blobs["big.bin"]}
    assert entry["md5"] == md5(blobs["big.bin"])
    # Asked to resume: given only the rest (206), or the whole file (200), which replaced the part.
    assert spy.of("big.bin") == [("bytes=1000000-", 206 if range_requests else 200)]


def test_stale_part_with_wrong_bytes_ends_verified(client: XnatClient, blobs: dict[str, bytes], range_requests: bool,
                                                   monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    remote = next(f for f in client.list_files("/data/projects/P1/resources/R") if f.path == "big.bin")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "big.bin.part").write_bytes(b"x" * 1_000_000)  # not even the right bytes
    spy = Spy(client, monkeypatch)
    client.download_file(remote, tmp_path / "out" / "big.bin")
    assert tree(tmp_path / "out") == {"big.bin": blobs["big.bin"]}
    if range_requests:  # resumed onto the wrong bytes: the MD5 failed, the part was dropped, fetched again whole
        assert spy.of("big.bin") == [("bytes=1000000-", 206), (None, 200)]
    else:  # asked to resume, got the whole file, kept only it
        assert spy.of("big.bin") == [("bytes=1000000-", 200)]


def test_dropped_connection_is_resumed_or_restarted(client: XnatClient, blobs: dict[str, bytes],
                                                    emulator: XnatEmulator, range_requests: bool,
                                                    monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    remote = next(f for f in client.list_files("/data/projects/P1/resources/R") if f.path == "big.bin")
    spy = Spy(client, monkeypatch)
    emulator.drop_after("GET", r"/big\.bin$", after_bytes=2 * 1024 * 1024 + 5000)

    entry = client.download_file(remote, tmp_path / "out" / "big.bin")
    assert tree(tmp_path / "out") == {"big.bin": blobs["big.bin"]}
    assert entry["md5"] == md5(blobs["big.bin"]) and not entry["skipped"]
    assert emulator.request_count("GET", r"/big\.bin$") == 2
    # The client keeps whole read chunks (1 MiB); the bytes of the chunk being read when the link broke are lost.
    # Then it asks for the rest: with Range honoured it gets only that (206); ignored, it gets the whole file (200)
    # and replaces the kept bytes rather than appending.
    assert spy.of("big.bin") == [(None, 200), ("bytes=2097152-", 206 if range_requests else 200)]


def test_read_header_reads_only_the_start_of_a_large_file(client: XnatClient, session: Session,
                                                          http: requests.Session, emulator: XnatEmulator,
                                                          range_requests: bool, monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    """``read_header`` asks for the first ``max_bytes``; where Range is ignored (200 and the whole file) it stops
    reading after ``max_bytes`` and drops the connection, so a large file is never read in full."""
    name, data = next(iter(session.originals["1"].items()))
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.Rows = ds.Columns = 4096
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelData = bytes(4096 * 4096 * 2)  # 32 MiB of pixels after the header
    big = tmp_path / "big.dcm"
    ds.save_as(big)
    url = f"{session.path}/scans/1/resources/DICOM/files/big.dcm"
    assert http.put(emulator.url + url, data=big.read_bytes(), headers={"Content-Type": "application/dicom"}
                    ).status_code == 200
    remote = next(f for f in client.list_files(f"{session.path}/scans/1/resources/DICOM") if f.path == "big.dcm")
    assert remote.size == big.stat().st_size > 32 * 1024 * 1024

    received: list[int] = []
    statuses: list[int] = []
    real = client.transport.http.request

    def request(method: str, url: str, **kw):
        resp = real(method, url, **kw)
        statuses.append(resp.status_code)
        raw_read = resp.raw.read

        def counted(*args, **kwargs) -> bytes:  # what the client takes off the connection
            chunk = raw_read(*args, **kwargs)
            received.append(len(chunk))
            return chunk

        resp.raw.read = counted
        return resp

    monkeypatch.setattr(client.transport.http, "request", request)
    header = client.read_header(remote, max_bytes=1 << 20)
    assert header.SOPInstanceUID == ds.SOPInstanceUID and header.SeriesDescription == "T1"
    assert "PixelData" not in header
    assert statuses == [206 if range_requests else 200]
    if range_requests:
        assert sum(received) == 1 << 20
    else:  # the whole file was offered; at most one read chunk (64 KiB) past max_bytes was taken
        assert 1 << 20 <= sum(received) <= (1 << 20) + 64 * 1024
    # The connection it dropped does not spoil the next request.
    assert client.list_files(f"{session.path}/scans/1/resources/DICOM")
    assert name in {f.path for f in client.list_files(f"{session.path}/scans/1/resources/DICOM")}


def test_truncated_body_fails_then_a_rerun_finishes(client: XnatClient, blobs: dict[str, bytes],
                                                    emulator: XnatEmulator, secrets: list[str],
                                                    tmp_path: Path) -> None:
    dest = tmp_path / "out"
    emulator.drop_after("GET", r"/small\.bin$", after_bytes=4000, count=100)
    with pytest.raises(XnatTransferError, match=r"transfer broke 5 times") as err:
        client.download_resource(base_path("P1"), "R", dest)
    assert "small.bin" in str(err.value)
    assert_no_secret(str(err.value), secrets)
    assert not (dest / "small.bin").exists()  # never a truncated file under its final name
    assert emulator.request_count("GET", r"/small\.bin$") == 5

    emulator.clear_faults()
    manifest = client.download_resource(base_path("P1"), "R", dest)
    assert tree(dest) == blobs  # and no .part left
    assert manifest.transferred + manifest.skipped == 3


def test_session_expiry_mid_download_logs_in_once_more(client: XnatClient, session: Session,
                                                       emulator: XnatEmulator, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The login expires half-way through a download with two workers (as XNAT's idle timeout or a restart would):
    the client logs in once more, for both workers, and every file arrives verified. The expiry comes just before
    the third file is requested (counted, not timed: it cannot come too late on a slow machine)."""
    client.list_files(f"{base_path(experiment=session.id, scan='2')}/resources/DICOM")
    assert client.transport.login_attempts == 1
    real = client.transport.http.request
    file_gets: list[str] = []
    lock = threading.Lock()

    def request(method: str, url: str, **kw):  # type: ignore[no-untyped-def]
        if method == "GET" and "/files/" in url:
            with lock:
                file_gets.append(url)
                if len(file_gets) == 3:  # two files asked for, four to go
                    emulator.expire_sessions()
        return real(method, url, **kw)

    monkeypatch.setattr(client.transport.http, "request", request)
    manifest = client.download_scans("P1", session.label, tmp_path / "out", workers=2)
    assert tree(tmp_path / "out") == session.scan_tree("1", "2", "3")
    assert manifest.transferred == 6
    assert client.transport.login_attempts == 2
    assert emulator.request_count("POST", "/data/services/auth") == 2
    assert len(file_gets) >= 7  # the file asked for after the expiry was asked for again


def test_bursts_of_503_on_file_gets_are_retried(client: XnatClient, session: Session, emulator: XnatEmulator,
                                                tmp_path: Path) -> None:
    emulator.fail_next("GET", FILE_GET, status=503, count=4)
    manifest = client.download_scans("P1", session.label, tmp_path / "out")
    assert tree(tmp_path / "out") == session.scan_tree("1", "2", "3")
    assert manifest.transferred == 6
    assert emulator.request_count("GET", FILE_GET) == 6 + 4


def test_error_page_with_status_200_on_a_listing(client: XnatClient, session: Session, emulator: XnatEmulator,
                                                 secrets: list[str], tmp_path: Path) -> None:
    emulator.error_page_200("GET", r"/scans/1/resources/DICOM/files$", message="Something went wrong upstream")
    with pytest.raises(XnatServerError) as err:
        client.download_scans("P1", session.label, tmp_path / "out")
    message = str(err.value)
    assert "error page with status 200" in message and "Something went wrong upstream" in message
    assert err.value.method == "GET" and "/scans/1/resources/DICOM/files" in (err.value.path or "")
    assert_no_secret(message, secrets)
    assert not (tmp_path / "out").exists()


def test_error_page_with_status_200_instead_of_a_file_is_retried(client: XnatClient, session: Session,
                                                                 emulator: XnatEmulator, tmp_path: Path) -> None:
    emulator.error_page_200("GET", FILE_GET, count=2)
    manifest = client.download_scans("P1", session.label, tmp_path / "out", scans="1", workers=1)
    assert tree(tmp_path / "out") == session.scan_tree("1")  # the pages failed the MD5 check, never kept
    assert manifest.transferred == 2
    assert emulator.request_count("GET", FILE_GET) == 2 + 2


def test_error_page_with_status_200_instead_of_a_zip(client: XnatClient, session: Session, emulator: XnatEmulator,
                                                     tmp_path: Path) -> None:
    emulator.error_page_200("GET", r"/scans/ALL/files$", message="The archive is being rebuilt")
    with pytest.raises(XnatServerError, match=r"error page with status 200: The archive is being rebuilt"):
        client.download_zip(f"{session.path}/scans/ALL/files", tmp_path / "out")
    assert tree(tmp_path / "out") == {}


# ---- zips --------------------------------------------------------------------------------------------------
def test_zip_download_of_a_session_is_extracted_safely(client: XnatClient, session: Session,
                                                       tmp_path: Path) -> None:
    dest = tmp_path / "out"
    every_scan = f"{session.path}/scans/ALL/files"
    manifest = client.download_zip(every_scan, dest)
    types = {"1": "T1", "2": "T2", "3": "FLAIR"}
    expected = {f"{session.label}/scans/{s}-{types[s]}/resources/DICOM/files/{name}": data
                for s, files in session.originals.items() for name, data in files.items()}
    assert tree(dest) == expected  # and the temporary zip is gone
    check_manifest(manifest, dest, expected)

    kept = client.download_zip(every_scan, tmp_path / "zip", extract=False)
    (entry,) = kept.files
    with zipfile.ZipFile(entry["path"]) as zf:
        assert {i.filename: zf.read(i) for i in zf.infolist()} == expected
    assert os.listdir(tmp_path / "zip") == [f"{session.label}.zip"]  # the name the server gave it


def test_zip_entry_pointing_outside_the_target_is_refused(client: XnatClient, session: Session,
                                                          monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Simulated hostile or broken server: the emulator's zip names one entry "../../escaped-<file>".
    real = FilesApi._zip_name
    names = iter(range(100))

    def hostile(t, res, rel, structure):
        return f"../../escaped-{rel}" if next(names) == 3 else real(t, res, rel, structure)

    monkeypatch.setattr(FilesApi, "_zip_name", staticmethod(hostile))
    dest = tmp_path / "a" / "b" / "out"
    with pytest.raises(XnatBadInputError, match=r"Refusing unsafe path '\.\./\.\./escaped-"):
        client.download_zip(f"{session.path}/scans/ALL/files", dest)
    assert not list(tmp_path.rglob("escaped-*"))
    assert tree(dest) == {}  # names are checked before anything is written, and the zip is removed


@pytest.mark.parametrize("name", ["/etc/evil.txt", "../evil.txt", "ok/../../evil.txt", "C:/evil.txt", "link"])
def test_extract_refuses_absolute_paths_dotdot_and_links(client: XnatClient, tmp_path: Path, name: str) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("fine.txt", b"fine")
        info = zipfile.ZipInfo(name)
        if name == "link":
            info.external_attr = (0o120777 << 16)  # a symbolic link to /etc/passwd
            zf.writestr(info, b"/etc/passwd")
        else:
            zf.writestr(info, b"evil")
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(XnatBadInputError, match="Refusing"):
        client.extract_zip(archive, dest)
    assert tree(dest) == {}
    assert not list(tmp_path.rglob("evil.txt"))


def test_damaged_zip_is_a_transfer_error(client: XnatClient, tmp_path: Path) -> None:
    archive = tmp_path / "damaged.zip"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.txt", b"a" * 1000)
    archive.write_bytes(buf.getvalue()[:-30])
    with pytest.raises(XnatTransferError, match="damaged"):
        client.extract_zip(archive, tmp_path / "out")


# ---- secrets -----------------------------------------------------------------------------------------------
def test_alias_token_login_download_and_failure_leak_no_secret(client: XnatClient, blobs: dict[str, bytes],
                                                               emulator: XnatEmulator,
                                                               caplog: pytest.LogCaptureFixture,
                                                               tmp_path: Path) -> None:
    token = client.issue_token()
    learned: list[str] = []
    with XnatClient(emulator.url, token.alias, token.secret, backoff=0.01, on_secret=learned.append) as c:
        c.download_resource(base_path("P1"), "R", tmp_path / "out")
        assert tree(tmp_path / "out") == blobs
        emulator.expire_sessions()  # a second session id to keep secret
        remote = next(f for f in c.list_files("/data/projects/P1/resources/R") if f.path == "small.bin")
        emulator.corrupt_file(remote.uri)
        with pytest.raises(XnatTransferError) as err:
            c.download_file(remote, tmp_path / "again" / "small.bin")
    assert token.secret in learned and len(learned) >= 3  # the secret and two session ids
    assert_no_secret(caplog.text, learned)
    assert_no_secret(str(err.value), learned)
    assert_no_secret(repr(err.value), learned)
