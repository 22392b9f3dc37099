"""``XnatDownloadScanOperator``, ``XnatUploadResourceOperator`` and ``XnatImportOperator`` with object storage
(``ObjectStoragePath``, or a URL with ``storage_conn_id``), called as Airflow calls them; XNAT read back over plain
HTTP.

Stores: fsspec's memory file system and the S3-like ``blob`` store of ``tests/object_storage.py``, attached to
Airflow as a provider's file system would be (``blob`` under a connection id, as ``s3://`` under
``aws_default``), and ``file://``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk import ObjectStoragePath

from tests import object_storage
from tests.airflow_helpers import FakeStore, context
from tests.object_storage import BlobFileSystem, attach_store, detach_store
from tests.operators.conftest import Server
from xnat_provider.client.errors import XnatBadInputError, XnatServerError, XnatTransferError
from xnat_provider.operators.imports import XnatImportOperator
from xnat_provider.operators.transfers import XnatDownloadScanOperator, XnatUploadResourceOperator
from xnat_provider.testing.samples import make_study, zip_files

EXP = "/data/projects/P1/experiments/S01_MR1"
CONN = "blob_store"  # the Airflow connection id the blob store is attached under (as s3:// under aws_default)
memory_fs = object_storage.memory_fs  # a fresh memory:// store per test


@pytest.fixture
def blob(tmp_path: Path) -> Any:
    fs = BlobFileSystem(tmp_path / "blobstore")
    attach_store("blob", fs, conn_id=CONN)
    yield fs
    detach_store("blob", CONN)


def execute(op: Any) -> Any:
    result = op.execute(context())
    json.dumps(result)  # an XCom of strings and numbers, no path object
    return result


def download(dest: Any, **kwargs: Any) -> dict[str, Any]:
    return execute(XnatDownloadScanOperator(task_id="download", project="P1", experiment="S01_MR1", dest=dest,
                                            **kwargs))


def objects(fs: Any, prefix: str) -> dict[str, bytes]:
    root = fs._strip_protocol(prefix).rstrip("/")
    return {p[len(root) + 1:]: fs.cat_file(p) for p in fs.find(root)}


def expected_files(server: Server, scans: list[str]) -> dict[str, str]:
    return {f"{s}/DICOM/{f['Name']}": f["digest"] for s in scans for f in server.scan_files("S01_MR1", s)}


def digests(tree: dict[str, bytes]) -> dict[str, str]:
    return {k: hashlib.md5(v).hexdigest() for k, v in tree.items()}


# ---- download ------------------------------------------------------------------------------------------------
def test_download_to_a_url_with_a_storage_connection(xnat_conn, server: Server, archived, blob) -> None:
    result = download("blob://bucket/work/S01", storage_conn_id=CONN, scan="1")
    assert result["dest"] == f"blob://{CONN}@bucket/work/S01"  # the store is named with its connection
    assert result["manifest"] == f"blob://{CONN}@bucket/work/S01/.xnat-manifest-1.json"
    assert (result["files"], result["transferred"], result["skipped"]) == (3, 3, 0)
    tree = objects(blob, "bucket/work/S01")
    manifest = json.loads(tree.pop(".xnat-manifest-1.json"))
    assert digests(tree) == expected_files(server, ["1"])  # verified bytes, nothing else (no .part)
    assert sorted(f["path"] for f in manifest["files"]) == sorted(
        f"blob://{CONN}@bucket/work/S01/{k}" for k in expected_files(server, ["1"]))
    # The XCom names the place so that a task on another worker reaches it.
    back = ObjectStoragePath(result["dest"])
    assert back.conn_id == CONN and back.fs is blob


def test_download_to_an_object_storage_path(xnat_conn, server: Server, archived, memory_fs) -> None:
    result = download(ObjectStoragePath("memory://bucket/out"), scans=["1", "2"])
    assert result["dest"] == "memory://bucket/out" and result["manifest"] == "memory://bucket/out/.xnat-manifest.json"
    tree = objects(memory_fs, "/bucket/out")
    assert json.loads(tree.pop(".xnat-manifest.json"))["transferred"] == 6
    assert digests(tree) == expected_files(server, ["1", "2"])


def test_download_to_a_file_url(xnat_conn, server: Server, archived, tmp_path) -> None:
    result = download(f"file://{tmp_path}/out", scans=["2"])
    assert result["dest"] == f"file://{tmp_path}/out"
    on_disk = {p.relative_to(tmp_path / "out").as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
               for p in (tmp_path / "out").rglob("*") if p.is_file() and not p.name.startswith(".")}
    assert on_disk == expected_files(server, ["2"])
    assert json.loads((tmp_path / "out" / ".xnat-manifest.json").read_text())["files"][0]["path"].startswith(
        f"{tmp_path}/out/2/DICOM/")


def test_a_retry_skips_what_the_failed_try_verified(xnat_conn, server: Server, archived, blob) -> None:
    """A first try fails on one corrupted file; the retry (after the server is right again) fetches only what
    is missing: the verified files stay, the bad one never reached its key."""
    emu = xnat_conn
    bad = server.scan_files("S01_MR1", "1")[0]
    original = emu.file_path(bad["URI"]).read_bytes()
    emu.corrupt_file(bad["URI"])
    with pytest.raises(XnatTransferError, match="does not match the catalog digest"):
        download("blob://bucket/w", storage_conn_id=CONN, scans=["1"], workers=1)
    left = objects(blob, "bucket/w")
    assert f"1/DICOM/{bad['Name']}" not in left and not [k for k in left if k.endswith(".part")]
    good = expected_files(server, ["1"])
    assert left and all(good[k] == hashlib.md5(v).hexdigest() for k, v in left.items())  # verified, kept
    emu.file_path(bad["URI"]).write_bytes(original)  # the server is right again
    gets = emu.request_count("GET", r"/files/.+")
    result = download("blob://bucket/w", storage_conn_id=CONN, scans=["1"])
    assert (result["transferred"], result["skipped"]) == (3 - len(left), len(left))
    assert emu.request_count("GET", r"/files/.+") == gets + 3 - len(left)
    tree = objects(blob, "bucket/w")
    tree.pop(".xnat-manifest.json")
    assert digests(tree) == expected_files(server, ["1"])


@pytest.mark.parametrize(("dest", "conn", "message"), [
    ("nope://bucket/x", None, r"dest 'nope://bucket/x': no file system for the scheme 'nope' \(ValueError"),
    ("blob://bucket/x", "missing_conn", r"no file system for the scheme 'blob' with connection 'missing_conn'"),
])
def test_download_to_a_store_that_cannot_be_used_is_refused_before_any_request(xnat_conn, archived, dest, conn,
                                                                              message) -> None:
    before = xnat_conn.request_count()
    with pytest.raises(XnatBadInputError, match=message) as err:
        download(dest, storage_conn_id=conn)
    assert "apache-airflow-providers-amazon" in str(err.value)  # says how to get one
    assert xnat_conn.request_count() == before


def test_storage_conn_id_is_templated() -> None:
    for cls in (XnatDownloadScanOperator, XnatUploadResourceOperator):
        assert "storage_conn_id" in cls.template_fields


# ---- upload --------------------------------------------------------------------------------------------------
def test_upload_from_a_url_with_a_storage_connection(xnat_conn, server: Server, archived, blob) -> None:
    files = {"summary.json": b'{"slices": 3}', "img/preview.png": b"\x89PNG\r\n\x1a\n" + bytes(300)}
    for rel, data in files.items():
        blob.pipe_file(f"bucket/results/{rel}", data)
    result = execute(XnatUploadResourceOperator(task_id="u", source="blob://bucket/results", storage_conn_id=CONN,
                                                project="P1", experiment="S01_MR1", scan="1", resource="SUMMARY"))
    assert (result["files"], result["transferred"], sorted(result["paths"])) == (2, 2, sorted(files))
    by_id = f"/data/experiments/{server.experiment('S01_MR1')['data_fields']['ID']}"
    listed = {f["URI"].split("/files/", 1)[1]: f["digest"] for f in server.files(f"{by_id}/scans/1/resources/SUMMARY")}
    assert listed == digests(files)
    for rel, data in files.items():  # the bytes themselves, read back over plain HTTP
        assert server.http.get(f"{server.url}{by_id}/scans/1/resources/SUMMARY/files/{rel}").content == data


def test_upload_from_an_object_storage_path(xnat_conn, server: Server, archived, memory_fs) -> None:
    memory_fs.pipe_file("/bucket/r/report.txt", b"fine")
    result = execute(XnatUploadResourceOperator(task_id="u", source=ObjectStoragePath("memory://bucket/r/report.txt"),
                                                project="P1", experiment="S01_MR1", resource="QC", remote_dir="run1"))
    assert result["paths"] == ["run1/report.txt"]
    assert {f["URI"].split("/files/", 1)[1] for f in server.files(f"{EXP}/resources/QC")} == {"run1/report.txt"}


@pytest.mark.parametrize(("source", "kwargs", "message"), [
    ("memory://bucket/missing", {}, r"Nothing to upload: memory://bucket/missing does not exist"),
    ("memory://bucket/r", {}, r"Refusing to upload 1 empty \(0-byte\) file"),
    ("memory://bucket/r/a.zip", {"extract": True, "remote_dir": "x"}, "extract=True cannot put the entries"),
    ("nope://bucket/r", {}, "no file system for the scheme 'nope'"),
])
def test_upload_bad_input_is_refused_before_any_request(xnat_conn, archived, memory_fs, source, kwargs,
                                                       message) -> None:
    memory_fs.pipe_file("/bucket/r/empty.txt", b"")
    memory_fs.pipe_file("/bucket/r/a.zip", b"PK\x05\x06" + bytes(18))
    before = xnat_conn.request_count()
    with pytest.raises(XnatBadInputError, match=message):
        execute(XnatUploadResourceOperator(task_id="u", source=source, project="P1", experiment="S01_MR1",
                                           resource="BAD", **kwargs))
    assert xnat_conn.request_count() == before


# ---- import --------------------------------------------------------------------------------------------------
def test_import_a_glob_from_storage_and_a_retry_sends_nothing_again(xnat_conn, server: Server, study, tmp_path,
                                                                   blob, after_request) -> None:
    """A glob on object storage: every match imported from the store; the first try's POST took effect (504)
    and the try failed; the retry, with the task's state, finds the session and sends nothing."""
    emu = xnat_conn
    blob.pipe_file("bucket/landing/s01.zip", zip_files(study.files, tmp_path / "s01.zip").read_bytes())
    other = make_study(tmp_path / "s02", patient_name="S02", patient_id="S02_MR1")
    blob.pipe_file("bucket/landing/s02.zip", zip_files(other.files, tmp_path / "s02.zip").read_bytes())
    blob.pipe_file("bucket/landing/notes.txt", b"left alone: not matched")
    emu.succeed_then_504("POST", r"^/data/services/import$")
    after_request("POST", r"^/data/services/import$",
                  lambda: emu.fail_next("GET", r"^/data/projects/P1/experiments$", status=503, count=3))
    store = FakeStore()
    op = dict(task_id="import", project="P1", source="blob://bucket/landing/*.zip", storage_conn_id=CONN,
              destination="archive")
    with pytest.raises(XnatServerError):
        XnatImportOperator(**op).execute(context(store))
    assert server.imports() == 1
    result = XnatImportOperator(**op).execute(context(store))
    json.dumps(result)
    assert server.imports() == 2  # the retry sent only the second zip
    assert sorted((r["label"], r["status"], r["source"]) for r in result) == [
        ("S01_MR1", "ARCHIVED", f"blob://{CONN}@bucket/landing/s01.zip"),
        ("S02_MR1", "ARCHIVED", f"blob://{CONN}@bucket/landing/s02.zip")]
    assert server.labels() == ["S01_MR1", "S02_MR1"]


@pytest.mark.parametrize(("source", "message"), [
    ("blob://bucket/landing/*.tar", r"Nothing to import: no file or directory matches 'blob://.*landing/\*\.tar'"),
    ("blob://bucket/landing/none.zip", "Nothing to import: no file or directory matches"),
    ("blob://bucket/landing/notes.txt", r"Not DICOM \(or no SOP UIDs\) in .*notes\.txt"),
    ("nope://bucket/landing", "no file system for the scheme 'nope'"),
])
def test_import_bad_input_from_storage_is_refused_before_any_request(xnat_conn, blob, source, message) -> None:
    blob.pipe_file("bucket/landing/notes.txt", b"not dicom")
    before = xnat_conn.request_count()
    with pytest.raises(XnatBadInputError, match=message):
        XnatImportOperator(task_id="import", project="P1", source=source, storage_conn_id=CONN).execute(context())
    assert xnat_conn.request_count() == before


def test_import_from_a_file_url(xnat_conn, server: Server, study_zip) -> None:
    result = XnatImportOperator(task_id="import", project="P1", source=f"file://{study_zip}").execute(context())
    assert [(r["label"], r["status"], r["source"]) for r in result] == [("S01_MR1", "READY", str(study_zip))]


def test_import_storage_conn_id_is_templated() -> None:
    assert "storage_conn_id" in XnatImportOperator.template_fields
