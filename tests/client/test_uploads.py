"""The client's uploads against the emulator: what ends up on the server, policies, faults, bad inputs, secrets.

What is on the server is read back with a separate ``requests`` session (the ``http`` fixture): the catalog
listing (names, sizes, MD5 digests) and every file's bytes, compared with the local originals.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import pytest
import requests

from tests.oracles.zips import streamed_zip
from tests.support import assert_no_secret
from xnat_provider.client import (
    XnatBadInputError,
    XnatClient,
    XnatConflictError,
    XnatTransferError,
    base_path,
)
from xnat_provider.testing import XnatEmulator
from xnat_provider.testing.samples import make_study, zip_files

USER, PASSWORD = "carol", "Upl0ad-s3cret!"
EXP = base_path("P1", experiment="S01_MR1")
LONG = base_path("P1", "S01", "S01_MR1")  # XNAT routes assessors and scans only here or under the experiment's ID
LEVELS = {
    "project": base_path("P1"),
    "subject": base_path("P1", "S01"),
    "experiment": EXP,
    "scan": base_path("P1", "S01", "S01_MR1", scan="1"),
    "assessor": base_path("P1", "S01", "S01_MR1", assessor="A1"),
}
FILE_PUT = r"/resources/[^/]+/files/.+"


# ---- fixtures and helpers ----------------------------------------------------------------------------------
@pytest.fixture
def session(tmp_path: Path, http: requests.Session, emulator: XnatEmulator) -> str:
    """Subject S01 with session S01_MR1 (real DICOM, two scans) in the archive, and a QC assessor A1 on it."""
    study = make_study(tmp_path / "dicom", instances=1)
    archive = zip_files(study.files, tmp_path / "dicom.zip")
    r = http.post(emulator.url + "/data/services/import", params={"dest": "/archive/projects/P1"},
                  data=archive.read_bytes(), headers={"Content-Type": "application/zip"})
    assert r.status_code == 200 and r.text.strip().endswith("/subjects/S01/experiments/S01_MR1"), r.text
    r = http.put(f"{emulator.url}{LONG}/assessors/A1", params={"xsiType": "xnat:qcAssessmentData"})
    assert r.status_code in (200, 201), r.text
    return "S01_MR1"


@pytest.fixture
def local(tmp_path: Path) -> Path:
    """A directory to upload: two files at the top, one nested two levels down, and a stray ``.part``."""
    root = tmp_path / "up"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "report.txt").write_bytes(b"all good\n")
    (root / "image.bin").write_bytes(os.urandom(200_000))
    (root / "sub" / "deeper" / "table.csv").write_bytes(b"a,b\n1,2\n")
    (root / "half.bin.part").write_bytes(b"never uploaded")
    return root


def local_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.endswith(".part")}


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def server_tree(http: requests.Session, emulator: XnatEmulator, path: str, resource: str) -> dict[str, bytes]:
    """The resource's files as the server lists them, each fetched and checked against its listed size and MD5."""
    r = http.get(f"{emulator.url}{path}/resources/{resource}/files", params={"format": "json"})
    if r.status_code == 404:
        return {}
    assert r.status_code == 200, r.text
    out = {}
    for row in r.json()["ResultSet"]["Result"]:
        rel = row["URI"].split("/files/", 1)[1]
        data = http.get(emulator.url + row["URI"]).content
        assert (int(row["Size"]), row["digest"]) == (len(data), md5(data))
        out[rel] = data
    return out


def resources(http: requests.Session, emulator: XnatEmulator, path: str) -> set[str]:
    r = http.get(f"{emulator.url}{path}/resources", params={"format": "json"})
    assert r.status_code == 200, r.text
    return {row["label"] for row in r.json()["ResultSet"]["Result"]}


def check_manifest(manifest, expected: dict[str, bytes], skipped: set[str] = frozenset()) -> None:
    entries = {f["path"]: f for f in manifest.files}
    assert set(entries) == set(expected)
    for rel, data in expected.items():
        assert (entries[rel]["size"], entries[rel]["md5"]) == (len(data), md5(data))
        assert entries[rel]["skipped"] is (rel in skipped)
        assert "/files/" in entries[rel]["uri"]
    assert (manifest.transferred, manifest.skipped) == (len(expected) - len(skipped), len(skipped))
    assert manifest.bytes == sum(map(len, expected.values()))


# ---- where uploads go --------------------------------------------------------------------------------------
@pytest.mark.parametrize("level", list(LEVELS))
def test_upload_file_and_directory_at_every_level(client: XnatClient, session: str, http: requests.Session,
                                                  emulator: XnatEmulator, local: Path, level: str) -> None:
    path = LEVELS[level]
    assert "OUT" not in resources(http, emulator, path)

    one = client.upload(local / "report.txt", path, "OUT")  # the resource is created on the way
    assert "OUT" in resources(http, emulator, path)
    check_manifest(one, {"report.txt": b"all good\n"})
    assert server_tree(http, emulator, path, "OUT") == {"report.txt": b"all good\n"}

    tree = client.upload(local, path, "OUT")
    expected = local_tree(local)  # the .part file is left out
    assert server_tree(http, emulator, path, "OUT") == expected
    check_manifest(tree, expected, skipped={"report.txt"})


def test_upload_under_a_remote_folder(client: XnatClient, session: str, http: requests.Session,
                                      emulator: XnatEmulator, local: Path) -> None:
    manifest = client.upload(local, EXP, "OUT", remote_dir="/run1/")
    expected = {f"run1/{k}": v for k, v in local_tree(local).items()}
    assert server_tree(http, emulator, EXP, "OUT") == expected
    check_manifest(manifest, expected)


# ---- overwrite policies ------------------------------------------------------------------------------------
def test_skip_identical_rerun_uploads_nothing(client: XnatClient, session: str, emulator: XnatEmulator,
                                              http: requests.Session, local: Path) -> None:
    client.upload(local, EXP, "OUT")
    puts = emulator.request_count("PUT", FILE_PUT)
    assert puts == 3
    again = client.upload(local, EXP, "OUT")
    check_manifest(again, local_tree(local), skipped=set(local_tree(local)))
    assert emulator.request_count("PUT", FILE_PUT) == puts
    assert server_tree(http, emulator, EXP, "OUT") == local_tree(local)


def test_skip_identical_refuses_a_changed_file_before_anything_moves(client: XnatClient, session: str,
                                                                     emulator: XnatEmulator,
                                                                     http: requests.Session, local: Path,
                                                                     secrets: list[str]) -> None:
    client.upload(local, EXP, "OUT")
    before = server_tree(http, emulator, EXP, "OUT")
    puts = emulator.request_count("PUT")
    (local / "report.txt").write_bytes(b"changed\n")
    (local / "new.txt").write_bytes(b"a new file that must not go either\n")

    with pytest.raises(XnatConflictError) as err:
        client.upload(local, EXP, "OUT")
    message = str(err.value)
    assert "report.txt" in message and "nothing was uploaded" in message and "skip_identical" in message
    assert "new.txt" not in message and err.value.status == 409
    assert_no_secret(message, secrets)
    assert emulator.request_count("PUT") == puts + 1  # only the resource check (409: it exists)
    assert server_tree(http, emulator, EXP, "OUT") == before


def test_overwrite_replaces_changed_files_and_skips_identical_ones(client: XnatClient, session: str,
                                                                   emulator: XnatEmulator,
                                                                   http: requests.Session, local: Path) -> None:
    client.upload(local, EXP, "OUT")
    (local / "report.txt").write_bytes(b"second version, longer than the first\n")
    puts = emulator.request_count("PUT", FILE_PUT)
    manifest = client.upload(local, EXP, "OUT", overwrite="overwrite")
    assert server_tree(http, emulator, EXP, "OUT") == local_tree(local)
    check_manifest(manifest, local_tree(local), skipped={"image.bin", "sub/deeper/table.csv"})
    assert emulator.request_count("PUT", FILE_PUT) == puts + 1


def test_fail_policy_refuses_any_existing_file(client: XnatClient, session: str, emulator: XnatEmulator,
                                               http: requests.Session, local: Path) -> None:
    client.upload(local / "report.txt", EXP, "OUT")
    puts = emulator.request_count("PUT", FILE_PUT)
    with pytest.raises(XnatConflictError, match=r"report\.txt.*overwrite='fail'; nothing was uploaded"):
        client.upload(local, EXP, "OUT", overwrite="fail")
    assert emulator.request_count("PUT", FILE_PUT) == puts
    assert server_tree(http, emulator, EXP, "OUT") == {"report.txt": b"all good\n"}

    manifest = client.upload(local, EXP, "FRESH", overwrite="fail")  # nothing there yet: fine
    check_manifest(manifest, local_tree(local))


# ---- zips unpacked by XNAT ---------------------------------------------------------------------------------
def test_extract_a_zip_into_the_resource(client: XnatClient, session: str, emulator: XnatEmulator,
                                         http: requests.Session, local: Path, tmp_path: Path) -> None:
    archive = zip_files([p for p in local.rglob("*") if p.is_file() and not p.name.endswith(".part")],
                        tmp_path / "bundle.zip", root=local)
    manifest = client.upload(archive, EXP, "OUT", extract=True)
    assert server_tree(http, emulator, EXP, "OUT") == local_tree(local)  # unpacked, the zip itself not kept
    check_manifest(manifest, local_tree(local))
    assert emulator.request_count("PUT", FILE_PUT) == 1  # sent whole, once

    again = client.upload(archive, EXP, "OUT", extract=True)
    check_manifest(again, local_tree(local), skipped=set(local_tree(local)))
    assert emulator.request_count("PUT", FILE_PUT) == 1


def test_extract_goes_to_the_resource_root_and_a_folder_must_be_inside_the_zip(
        client: XnatClient, session: str, emulator: XnatEmulator, http: requests.Session, local: Path,
        tmp_path: Path) -> None:
    """XNAT unpacks at the resource root whatever folder the URL names, so remote_dir with extract=True is refused
    before anything moves (it could never be verified); a folder goes inside the zip instead."""
    files = [p for p in local.rglob("*") if p.is_file() and not p.name.endswith(".part")]
    puts = emulator.request_count("PUT")
    with pytest.raises(XnatBadInputError, match=r"remote_dir='unpacked'.*resource root"):
        client.upload(zip_files(files, tmp_path / "flat.zip", root=local), EXP, "ZIPPED", extract=True,
                      remote_dir="unpacked")
    assert emulator.request_count("PUT") == puts and resources(http, emulator, EXP) == set()

    nested = tmp_path / "nested" / "unpacked"
    nested.mkdir(parents=True)
    for p in files:
        (nested / p.relative_to(local)).parent.mkdir(parents=True, exist_ok=True)
        (nested / p.relative_to(local)).write_bytes(p.read_bytes())
    archive = zip_files([p for p in nested.rglob("*") if p.is_file()], tmp_path / "bundle.data",  # not a .zip name
                        root=nested.parent)
    manifest = client.upload(archive, EXP, "ZIPPED", extract=True)
    expected = {f"unpacked/{k}": v for k, v in local_tree(local).items()}
    assert server_tree(http, emulator, EXP, "ZIPPED") == expected
    check_manifest(manifest, expected)
    # Sent under a name XNAT unpacks (it picks the extractor by the name's suffix), at the resource root.
    puts = [p for m, p in emulator.requests_sent("airflow-provider-xnat/") if m == "PUT" and "/files/" in p]
    assert [p.rsplit("/resources/", 1)[1] for p in puts] == ["ZIPPED/files/bundle.data.zip"]


def test_empty_files_go_through_a_zip(client: XnatClient, session: str, emulator: XnatEmulator,
                                      http: requests.Session, tmp_path: Path) -> None:
    """XNAT cannot take a 0-byte file body, but unpacks 0-byte zip entries: the way the refusal message suggests."""
    archive = tmp_path / "with-empty.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("empty.txt", b"")
        zf.writestr("logs/run.log", b"done\n")
    manifest = client.upload(archive, EXP, "OUT", extract=True)
    assert server_tree(http, emulator, EXP, "OUT") == {"empty.txt": b"", "logs/run.log": b"done\n"}
    check_manifest(manifest, {"empty.txt": b"", "logs/run.log": b"done\n"})


# ---- the server's answers are checked ----------------------------------------------------------------------
def test_duplicates_answer_is_never_taken_for_success(client: XnatClient, session: str, emulator: XnatEmulator,
                                                      http: requests.Session, local: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A real race on the server: another writer stores ``report.txt`` after the client listed the resource and
    just before its PUT arrives; XNAT then answers the client 200 ``{"duplicates": [...]}``. (The other writer
    runs when the client sends its PUT, not after a delay: the race is the same on a slow machine.)"""
    http.put(f"{emulator.url}{EXP}/resources/OUT")
    other = b"written by someone else\n"
    real = client.transport.http.request

    def request(method: str, url: str, **kw):  # type: ignore[no-untyped-def]
        if method == "PUT" and url.endswith("/OUT/files/report.txt"):
            assert http.put(f"{emulator.url}{EXP}/resources/OUT/files/report.txt", data=other).status_code == 200
        return real(method, url, **kw)

    monkeypatch.setattr(client.transport.http, "request", request)
    with pytest.raises(XnatTransferError) as err:
        client.upload(local / "report.txt", EXP, "OUT")
    message = str(err.value)
    assert "not verified" in message and "report.txt" in message
    assert f"catalog lists {len(other)} bytes, local file has 9" in message
    assert "duplicates" in message
    assert server_tree(http, emulator, EXP, "OUT") == {"report.txt": other}  # XNAT stored nothing of ours


def test_duplicates_answer_after_a_504_that_had_stored_the_file_is_verified(client: XnatClient, session: str,
                                                                             emulator: XnatEmulator,
                                                                             http: requests.Session,
                                                                             local: Path) -> None:
    """The PUT took effect but a gateway answered 504; the retried PUT gets ``duplicates``, and the catalog,
    listed again, proves the stored bytes are ours."""
    emulator.succeed_then_504("PUT", r"/files/image\.bin$")
    manifest = client.upload(local / "image.bin", EXP, "OUT")
    check_manifest(manifest, {"image.bin": (local / "image.bin").read_bytes()})
    assert emulator.request_count("PUT", r"/files/image\.bin$") == 2
    assert server_tree(http, emulator, EXP, "OUT") == {"image.bin": (local / "image.bin").read_bytes()}


def test_verification_catches_a_server_that_stored_other_bytes(client: XnatClient, session: str,
                                                               emulator: XnatEmulator, http: requests.Session,
                                                               local: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulated: right after the client's PUT returns 200, one byte of the stored file is flipped on the server
    (``corrupt_file``) and XNAT's catalog checksums are refreshed, so the catalog honestly lists what it holds."""
    real_put = client._put

    def put_then_damage(res_path, local_file, rel, params):
        kept = real_put(res_path, local_file, rel, params)
        uri = f"{EXP}/resources/OUT/files/{rel}"
        emulator.corrupt_file(uri)
        r = http.post(f"{emulator.url}/data/services/refresh/catalog",
                      params={"resource": f"{EXP}/resources/OUT", "options": "checksum"})
        assert r.status_code == 200, r.text
        return kept

    monkeypatch.setattr(client, "_put", put_then_damage)
    data = (local / "image.bin").read_bytes()
    with pytest.raises(XnatTransferError) as err:
        client.upload(local / "image.bin", EXP, "OUT")
    message = str(err.value)
    assert "not verified" in message and f"differs from the local {md5(data)}" in message
    assert "image.bin" in message and err.value.retryable


def test_verification_catches_a_server_that_stored_nothing(client: XnatClient, session: str,
                                                           emulator: XnatEmulator, http: requests.Session,
                                                           local: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulated: the PUT is answered 200, then the file is gone from the catalog (deleted behind the client's
    back), as in the reports of uploads that "succeeded" with nothing stored."""
    real_put = client._put

    def put_then_lose(res_path, local_file, rel, params):
        kept = real_put(res_path, local_file, rel, params)
        assert http.delete(f"{emulator.url}{EXP}/resources/OUT/files/{rel}").status_code == 200
        return kept

    monkeypatch.setattr(client, "_put", put_then_lose)
    with pytest.raises(XnatTransferError, match=r"report\.txt: not in the catalog after upload"):
        client.upload(local / "report.txt", EXP, "OUT")


def test_bursts_of_503_on_put_are_retried_with_the_whole_body(client: XnatClient, session: str,
                                                              emulator: XnatEmulator, http: requests.Session,
                                                              tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(2 * 1024 * 1024 + 17))
    emulator.fail_next("PUT", r"/files/big\.bin$", status=503, count=3)
    manifest = client.upload(big, EXP, "OUT")
    assert emulator.request_count("PUT", r"/files/big\.bin$") == 4
    assert server_tree(http, emulator, EXP, "OUT") == {"big.bin": big.read_bytes()}  # not empty, not doubled
    check_manifest(manifest, {"big.bin": big.read_bytes()})


# ---- bad inputs are refused before the server changes ------------------------------------------------------
def _zip_with(tmp_path: Path, name: str) -> Path:
    archive = tmp_path / "unsafe.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("fine.txt", b"fine")
        zf.writestr(zipfile.ZipInfo(name), b"evil")
    return archive


@pytest.mark.parametrize("case", ["missing file", "empty dir", "extract non-zip", "zip ../", "zip absolute",
                                  "zip nested ..", "bad policy", "bad resource", "empty file",
                                  "empty file in a folder", "extract into remote_dir", "streamed zip"])
def test_bad_inputs_fail_before_any_change(client: XnatClient, session: str, emulator: XnatEmulator,
                                           http: requests.Session, local: Path, tmp_path: Path, case: str,
                                           secrets: list[str]) -> None:
    kwargs: dict = {}
    resource = "OUT"
    if case == "missing file":
        source, match = tmp_path / "nope.txt", "does not exist"
    elif case == "empty dir":
        source, match = tmp_path / "empty", "empty directory"
        source.mkdir()
    elif case == "extract non-zip":
        source, match, kwargs = local / "report.txt", "needs a zip file", {"extract": True}
    elif case.startswith("zip"):
        name = {"zip ../": "../evil.txt", "zip absolute": "/etc/evil.txt", "zip nested ..": "a/../../evil.txt"}[case]
        source, match, kwargs = _zip_with(tmp_path, name), "Refusing unsafe path", {"extract": True}
    elif case == "bad policy":
        source, match, kwargs = local, "overwrite must be one of", {"overwrite": "replace"}
    elif case == "empty file":
        source, match = local / "empty.txt", r"Refusing to upload 1 empty \(0-byte\) file\(s\): empty\.txt\."
        source.write_bytes(b"")
    elif case == "empty file in a folder":  # the whole folder is refused, not uploaded in part
        (local / "sub" / "empty.csv").write_bytes(b"")
        (local / "zero.bin").write_bytes(b"")
        source, match = local, r"2 empty \(0-byte\) file\(s\): sub/empty\.csv, zero\.bin\."
    elif case == "extract into remote_dir":
        source, match = _zip_with(tmp_path, "also-fine.txt"), "XNAT unpacks an archive at the resource root"
        kwargs = {"extract": True, "remote_dir": "sub"}
    elif case == "streamed zip":  # STORED entries with data descriptors, as a zip streamed to a pipe has
        source, match, kwargs = tmp_path / "streamed.zip", "STORED with a data descriptor", {"extract": True}
        source.write_bytes(streamed_zip([("a.txt", b"a")]))
    else:
        source, match, resource = local, "Invalid resource label", "a/b"

    def changing() -> int:  # requests that could change the server (logging in does not)
        return (sum(emulator.request_count(m) for m in ("PUT", "POST", "DELETE", "PATCH"))
                - emulator.request_count("POST", r"^/data/services/auth$"))

    before = changing()

    with pytest.raises(XnatBadInputError, match=match) as err:
        client.upload(source, EXP, resource, **kwargs)
    assert_no_secret(str(err.value), secrets)
    assert changing() == before
    assert resources(http, emulator, EXP) == set()  # not even the resource was created


def test_token_login_upload_leaks_no_secret(client: XnatClient, session: str, emulator: XnatEmulator,
                                            http: requests.Session, local: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    token = client.issue_token()
    learned: list[str] = []
    with XnatClient(emulator.url, token.alias, token.secret, backoff=0.01, on_secret=learned.append) as c:
        c.upload(local, EXP, "OUT")
        emulator.expire_sessions()
        emulator.fail_next("PUT", FILE_PUT, status=503, count=1)
        (local / "report.txt").write_bytes(b"changed\n")
        c.upload(local, EXP, "OUT", overwrite="overwrite")
        with pytest.raises(XnatConflictError) as err:
            c.upload(local, EXP, "OUT", overwrite="fail")
    assert server_tree(http, emulator, EXP, "OUT") == local_tree(local)
    assert token.secret in learned and len(learned) >= 3  # the secret and two session ids
    assert_no_secret(caplog.text, learned)
    assert_no_secret(str(err.value), learned)
