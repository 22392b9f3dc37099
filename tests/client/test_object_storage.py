"""The client's transfers to and from object storage (``ObjectStoragePath``), against the emulator over HTTP.

Two stores: fsspec's ``MemoryFileSystem`` (``memory://``, which can append) and ``BlobFileSystem``
(``blob://``, S3-like: objects written whole, visible on close, no append, ``mv`` = copy + delete; see
``tests/object_storage.py``). What is checked is what a user would: the objects' bytes against the originals,
that no ``.part`` is left and nothing reaches a final key unverified, the manifest, the requests the emulator
received (none before bad input is refused), and the process's memory during a large download.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from airflow.sdk import ObjectStoragePath

from tests import object_storage
from tests.object_storage import BlobFileSystem, attach_store, detach_store
from xnat_provider.client import XnatBadInputError, XnatClient, XnatTransferError, base_path
from xnat_provider.client.storage import FsPath, as_target
from xnat_provider.testing import XnatEmulator
from xnat_provider.testing.samples import make_study, zip_files

USER, PASSWORD = "olga", "0bject-st0re-s3cret!"
FILE_GET = r"/files/.+"
STORES = ["memory", "blob"]
memory_fs, blob_fs = object_storage.memory_fs, object_storage.blob_fs  # the stores' fixtures


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest) -> Any:
    """The store of the test (memory or blob), attached to Airflow; ``store.url(key)`` names a key in it."""
    fs = request.getfixturevalue(f"{request.param}_fs")
    fs.url = lambda key: f"{request.param}://bucket/{key}"  # type: ignore[attr-defined]
    fs.kind = request.param  # type: ignore[attr-defined]
    return fs


def objects(fs: Any, prefix: str = "bucket") -> dict[str, bytes]:
    """Every object under ``prefix``, by key relative to it, read with the file system itself (not the client)."""
    root = fs._strip_protocol(prefix).rstrip("/")
    return {p[len(root) + 1:]: fs.cat_file(p) for p in fs.find(root)}


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def all_requests(emu: XnatEmulator) -> int:
    return emu.request_count()


@pytest.fixture
def session(tmp_path: Path, http: requests.Session, emulator: XnatEmulator) -> dict[str, Any]:
    """A real two-series MR session (2 instances each) in the archive: label, ID and the original bytes."""
    study = make_study(tmp_path / "src", series=((1, "T1"), (2, "T2")), instances=2)
    r = http.post(emulator.url + "/data/services/import", params={"dest": "/archive/projects/P1"},
                  data=zip_files(study.files, tmp_path / "src.zip").read_bytes(),
                  headers={"Content-Type": "application/zip"})
    assert r.status_code == 200, r.text
    exp = http.get(emulator.url + "/data/projects/P1/experiments?format=json").json()["ResultSet"]["Result"][0]
    tree = {f"{n}/DICOM/{pydicom.dcmread(p).SOPInstanceUID}.dcm": p.read_bytes()
            for n, files in study.series.items() for p in files}
    return {"label": exp["label"], "id": exp["ID"], "tree": tree}


@pytest.fixture
def big(http: requests.Session, emulator: XnatEmulator) -> bytes:
    """Project resource R holds big.bin, 3 MiB and a bit (several read chunks)."""
    data = os.urandom(3 * 1024 * 1024 + 123)
    r = http.put(f"{emulator.url}/data/projects/P1/resources/R/files/big.bin", data=data,
                 headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    return data


class Spy:
    """(file name, Range header, status) of every GET the client sent."""

    def __init__(self, client: XnatClient, monkeypatch: pytest.MonkeyPatch):
        self.calls: list[tuple[str, str | None, int]] = []
        real = client.transport.http.request

        def request(method: str, url: str, **kw: Any) -> requests.Response:
            resp = real(method, url, **kw)
            if method == "GET":
                self.calls.append((url.rsplit("/", 1)[-1], (kw.get("headers") or {}).get("Range"), resp.status_code))
            return resp

        monkeypatch.setattr(client.transport.http, "request", request)

    def of(self, name: str) -> list[tuple[str | None, int]]:
        return [(rng, status) for n, rng, status in self.calls if n == name]


# ---- downloads ------------------------------------------------------------------------------------------------
def test_download_scans_to_storage_is_verified_and_atomic(client: XnatClient, session: dict, store: Any) -> None:
    dest = ObjectStoragePath(store.url("work/S"))
    manifest = client.download_scans("P1", session["label"], dest)
    assert objects(store, "bucket/work/S") == session["tree"]  # no .part, no probe left, nothing else
    assert manifest.transferred == 4 and manifest.skipped == 0
    assert sorted(f["path"] for f in manifest.files) == sorted(store.url(f"work/S/{k}") for k in session["tree"])
    assert all(f["md5"] == md5(session["tree"][f["path"].split("/S/", 1)[1]]) for f in manifest.files)
    if store.kind == "blob":  # every object was written under its .part name, then moved: never straight
        written = [k for k in store.opened_for_write if ".xnat-write-check-" not in k]
        assert sorted(written) == sorted(f"bucket/work/S/{k}.part" for k in session["tree"])
        assert sorted(store.moves) == sorted((f"bucket/work/S/{k}.part", f"bucket/work/S/{k}")
                                             for k in session["tree"])


def test_a_duck_typed_target_needs_no_airflow(client: XnatClient, session: dict, blob_fs: BlobFileSystem) -> None:
    """The client takes any object with an fsspec ``fs`` and a ``path`` (what UPath offers)."""

    class Target:
        def __init__(self, fs: Any, path: str) -> None:
            self.fs, self.path = fs, path

    manifest = client.download_scans("P1", session["label"], Target(blob_fs, "bucket/duck"), scans="1")
    assert objects(blob_fs, "bucket/duck") == {k: v for k, v in session["tree"].items() if k.startswith("1/")}
    assert manifest.files[0]["path"].startswith("blob://bucket/duck/1/DICOM/")


def test_corrupted_file_is_refused_and_nothing_reaches_its_key(client: XnatClient, session: dict,
                                                               emulator: XnatEmulator, store: Any) -> None:
    remote = client.list_files(f"{base_path(experiment=session['id'], scan='1')}/resources/DICOM")[0]
    emulator.corrupt_file(remote.uri)  # one byte flipped, size kept
    with pytest.raises(XnatTransferError) as err:
        client.download_scans("P1", session["label"], ObjectStoragePath(store.url("out")), scans="1", workers=1)
    assert f"does not match the catalog digest {remote.digest}" in str(err.value) and err.value.path == remote.uri
    left = objects(store, "bucket/out")
    assert f"1/DICOM/{remote.path}" not in left and not [k for k in left if k.endswith(".part")]
    assert emulator.request_count("GET", remote.path) == client.config.retries  # fetched whole every time


def test_rerun_skips_verified_objects_and_fetches_only_what_is_missing_or_wrong(
        client: XnatClient, session: dict, emulator: XnatEmulator, store: Any) -> None:
    dest = ObjectStoragePath(store.url("out"))
    client.download_scans("P1", session["label"], dest)
    gets = emulator.request_count("GET", FILE_GET)
    again = client.download_scans("P1", session["label"], dest)
    assert (again.transferred, again.skipped) == (0, 4)
    assert emulator.request_count("GET", FILE_GET) == gets
    missing, damaged = sorted(session["tree"])[0], sorted(session["tree"])[-1]
    store.rm_file(f"bucket/out/{missing}")
    data = bytearray(session["tree"][damaged])
    data[len(data) // 2] ^= 0xFF
    store.pipe_file(f"bucket/out/{damaged}", bytes(data))
    third = client.download_scans("P1", session["label"], dest)
    assert (third.transferred, third.skipped) == (2, 2)
    assert emulator.request_count("GET", FILE_GET) == gets + 2
    assert objects(store, "bucket/out") == session["tree"]


@pytest.mark.parametrize("range_requests", [False, True], ids=["range-ignored", "range-honoured"])
def test_dropped_connection_resumes_onto_the_open_upload(client: XnatClient, big: bytes, emulator: XnatEmulator,
                                                        monkeypatch: pytest.MonkeyPatch, store: Any,
                                                        range_requests: bool) -> None:
    """A broken transfer resumes within the try on any store (the upload stream onto the .part stays open): with
    Range honoured only the rest is fetched (206) and the object is written once; ignored, the whole file
    (200) replaces what was written."""
    emulator.range_requests = range_requests
    remote = next(f for f in client.list_files("/data/projects/P1/resources/R") if f.path == "big.bin")
    spy = Spy(client, monkeypatch)
    emulator.drop_after("GET", r"/big\.bin$", after_bytes=2 * 1024 * 1024 + 5000)
    entry = client.download_file(remote, ObjectStoragePath(store.url("out/big.bin")))
    assert objects(store, "bucket/out") == {"big.bin": big}
    assert entry == {"path": store.url("out/big.bin"), "size": len(big), "md5": md5(big), "skipped": False}
    assert spy.of("big.bin") == [(None, 200), ("bytes=2097152-", 206 if range_requests else 200)]
    if store.kind == "blob":
        opened = store.opened_for_write.count("bucket/out/big.bin.part")
        assert opened == (1 if range_requests else 2)  # resumed on the open stream, or started again


def test_part_left_by_an_earlier_try(client: XnatClient, big: bytes, emulator: XnatEmulator, store: Any,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A .part left by an earlier try is resumed by Range where the store appends (memory); an object store
    cannot append, so that file starts again from its first byte there."""
    emulator.range_requests = True
    remote = next(f for f in client.list_files("/data/projects/P1/resources/R") if f.path == "big.bin")
    store.pipe_file("bucket/out/big.bin.part", big[:1_000_000])
    spy = Spy(client, monkeypatch)
    client.download_file(remote, ObjectStoragePath(store.url("out/big.bin")))
    assert objects(store, "bucket/out") == {"big.bin": big}
    assert spy.of("big.bin") == ([("bytes=1000000-", 206)] if store.kind == "memory" else [(None, 200)])


def test_broken_every_time_keeps_what_a_later_try_can_resume(client: XnatClient, big: bytes, emulator: XnatEmulator,
                                                            store: Any) -> None:
    """Every attempt of a try broke (a server that ignores Range, cut each time after 1 MiB): the store that can
    append keeps the bytes for the next try, the object store keeps nothing; the next try finishes either way."""
    remote = next(f for f in client.list_files("/data/projects/P1/resources/R") if f.path == "big.bin")
    emulator.drop_after("GET", r"/big\.bin$", after_bytes=1024 * 1024 + 10, count=client.config.retries)
    with pytest.raises(XnatTransferError, match="transfer broke") as err:
        client.download_file(remote, ObjectStoragePath(store.url("out/big.bin")))
    left = objects(store, "bucket/out")
    assert "big.bin" not in left
    if store.kind == "memory":  # appendable: the bytes received are kept for the next try
        assert "kept in" in str(err.value) and big.startswith(left["big.bin.part"]) and left["big.bin.part"]
    else:
        assert "again from its first byte" in str(err.value) and left == {}
    entry = client.download_file(remote, ObjectStoragePath(store.url("out/big.bin")))  # the next try finishes
    assert objects(store, "bucket/out") == {"big.bin": big} and entry["md5"] == md5(big)


def test_download_resource_with_nested_paths(client: XnatClient, http: requests.Session, emulator: XnatEmulator,
                                             store: Any) -> None:
    files = {"a.txt": b"alpha", "sub/dir/b.bin": os.urandom(5000)}
    for rel, data in files.items():
        assert http.put(f"{emulator.url}/data/projects/P1/resources/N/files/{rel}", data=data).status_code == 200
    manifest = client.download_resource(base_path("P1"), "N", ObjectStoragePath(store.url("res")))
    assert objects(store, "bucket/res") == files
    assert sorted(f["path"] for f in manifest.files) == [store.url("res/a.txt"), store.url("res/sub/dir/b.bin")]


def test_download_a_whole_session_to_storage(client: XnatClient, session: dict, http: requests.Session,
                                             emulator: XnatEmulator, store: Any) -> None:
    exp = f"{emulator.url}{base_path(experiment=session['id'])}"
    assert http.put(f"{exp}/resources/NOTES/files/notes.txt", data=b"reviewed").status_code == 200
    manifest = client.download_session("P1", session["label"], ObjectStoragePath(store.url("sess")))
    expected = {f"scans/{k}": v for k, v in session["tree"].items()} | {"resources/NOTES/notes.txt": b"reviewed"}
    assert objects(store, "bucket/sess") == expected
    assert manifest.transferred == len(expected)


def test_file_url_takes_the_local_path(client: XnatClient, session: dict, tmp_path: Path) -> None:
    """``file://`` is fsspec's local file system: the client writes there as to any local folder (its zip fast
    path and atomic rename), and names the files by their local paths."""
    dest = ObjectStoragePath(f"file://{tmp_path}/out")
    assert as_target(dest) == tmp_path / "out"
    manifest = client.download_scans("P1", session["label"], dest)
    assert {p.relative_to(tmp_path / "out").as_posix(): p.read_bytes()
            for p in (tmp_path / "out").rglob("*") if p.is_file()} == session["tree"]
    assert all(f["path"].startswith(f"{tmp_path}/out/") for f in manifest.files)


# ---- bad destinations: refused before any request ----------------------------------------------------------------
def test_destination_that_is_a_file_is_refused_before_any_request(client: XnatClient, session: dict,
                                                                   emulator: XnatEmulator, store: Any) -> None:
    store.pipe_file("bucket/taken", b"a file")
    before = all_requests(emulator)
    with pytest.raises(XnatBadInputError, match=r"Download destination .*bucket/taken is a file"):
        client.download_scans("P1", session["label"], ObjectStoragePath(store.url("taken")))
    assert all_requests(emulator) == before
    assert store.cat_file("bucket/taken") == b"a file"


def test_folder_in_the_way_of_a_file_is_refused_before_any_file_is_fetched(
        client: XnatClient, session: dict, emulator: XnatEmulator, store: Any) -> None:
    first = sorted(session["tree"])[0]
    store.pipe_file(f"bucket/out/{first}/inside", b"x")  # a folder where a file goes
    with pytest.raises(XnatBadInputError, match="a folder is in the way"):
        client.download_scans("P1", session["label"], ObjectStoragePath(store.url("out")))
    assert emulator.request_count("GET", FILE_GET) == 0


def test_store_that_cannot_be_written_is_refused_before_any_request(client: XnatClient, session: dict,
                                                                     emulator: XnatEmulator, tmp_path: Path) -> None:
    class ReadOnly(BlobFileSystem):
        def _open(self, path: str, mode: str = "rb", **kw: Any) -> Any:
            if mode != "rb":
                raise PermissionError("Access Denied")
            return super()._open(path, mode, **kw)

    attach_store("blob", ReadOnly(tmp_path / "ro"))
    try:
        before = all_requests(emulator)
        with pytest.raises(XnatBadInputError, match=r"blob://bucket/out cannot be written \(PermissionError: Access"):
            client.download_scans("P1", session["label"], ObjectStoragePath("blob://bucket/out"))
        assert all_requests(emulator) == before
    finally:
        detach_store("blob")


def test_target_whose_file_system_cannot_be_had_is_bad_input(client: XnatClient, session: dict,
                                                             emulator: XnatEmulator) -> None:
    """``ObjectStoragePath.fs`` raises ValueError for a scheme no provider serves: reported, before any request."""
    detach_store("memory")
    before = all_requests(emulator)
    with pytest.raises(XnatBadInputError, match=r"no file system for it.*No filesystem registered for scheme memory"):
        client.download_scans("P1", session["label"], ObjectStoragePath("memory://bucket/x"))
    assert all_requests(emulator) == before


# ---- uploads --------------------------------------------------------------------------------------------------
def catalog(http: requests.Session, emulator: XnatEmulator, path: str) -> dict[str, tuple[int, str]]:
    rows = http.get(f"{emulator.url}{path}/files", params={"format": "json"}).json()["ResultSet"]["Result"]
    return {r["URI"].split("/files/", 1)[1]: (int(r["Size"]), r["digest"]) for r in rows}


def test_upload_a_folder_from_storage_verified(client: XnatClient, session: dict, http: requests.Session,
                                              emulator: XnatEmulator, store: Any) -> None:
    files = {"summary.json": b'{"slices": 4}', "img/preview.png": os.urandom(70_000), "x.part": b"unfinished"}
    for rel, data in files.items():
        store.pipe_file(f"bucket/results/{rel}", data)
    exp = base_path(experiment=session["id"])
    manifest = client.upload(ObjectStoragePath(store.url("results")), exp, "SUMMARY", remote_dir="v1")
    expected = {f"v1/{k}": (len(v), md5(v)) for k, v in files.items() if not k.endswith(".part")}
    assert catalog(http, emulator, f"{exp}/resources/SUMMARY") == expected  # read back over plain HTTP
    assert (manifest.transferred, manifest.skipped) == (2, 0)
    puts = emulator.request_count("PUT", FILE_GET)
    again = client.upload(ObjectStoragePath(store.url("results")), exp, "SUMMARY", remote_dir="v1")
    assert (again.transferred, again.skipped) == (0, 2) and emulator.request_count("PUT", FILE_GET) == puts
    one = client.upload(ObjectStoragePath(store.url("results/summary.json")), exp, "ONE")
    assert [f["path"] for f in one.files] == ["summary.json"]
    assert catalog(http, emulator, f"{exp}/resources/ONE") == {"summary.json": (13, md5(files["summary.json"]))}


def test_upload_of_a_file_the_server_stores_wrongly_is_refused(client: XnatClient, session: dict,
                                                              emulator: XnatEmulator, http: requests.Session,
                                                              store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Verified by reading the catalog back: a byte flipped on the server right after the PUT (and the catalog's
    checksums refreshed, so it lists what it holds) is caught against the MD5 of the bytes streamed."""
    data = b"payload" * 1000
    store.pipe_file("bucket/r/a.bin", data)
    exp = base_path(experiment=session["id"])
    real_put = client._put

    def put_then_damage(res_path: str, source: Any, rel: str, params: dict) -> Any:
        kept = real_put(res_path, source, rel, params)
        emulator.corrupt_file(f"{exp}/resources/W/files/{rel}")
        r = http.post(f"{emulator.url}/data/services/refresh/catalog",
                      params={"resource": f"{exp}/resources/W", "options": "checksum"})
        assert r.status_code == 200, r.text
        return kept

    monkeypatch.setattr(client, "_put", put_then_damage)
    expected = rf"not verified: a\.bin: catalog MD5 .* differs from the local {md5(data)}"
    with pytest.raises(XnatTransferError, match=expected):
        client.upload(ObjectStoragePath(store.url("r")), exp, "W")


def test_upload_extract_a_zip_from_storage(client: XnatClient, session: dict, http: requests.Session,
                                           emulator: XnatEmulator, store: Any) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/b.txt", b"inside")
        zf.writestr("c.txt", b"")  # empty entries go through a zip
    store.pipe_file("bucket/in/pack.zip", buf.getvalue())
    exp = base_path(experiment=session["id"])
    manifest = client.upload(ObjectStoragePath(store.url("in/pack.zip")), exp, "PACK", extract=True)
    assert sorted(f["path"] for f in manifest.files) == ["a/b.txt", "c.txt"]
    assert catalog(http, emulator, f"{exp}/resources/PACK") == {"a/b.txt": (6, md5(b"inside")), "c.txt": (0, md5(b""))}


@pytest.mark.parametrize(("setup", "kwargs", "message"), [
    ({"results/empty.txt": b"", "results/ok.txt": b"ok"}, {}, r"Refusing to upload 1 empty \(0-byte\) file"),
    ({"results/a.zip": b"PK"}, {"extract": True, "remote_dir": "sub"}, "extract=True cannot put the entries"),
    ({"results/a.txt": b"text"}, {"extract": True}, "extract=True needs a zip file"),
    ({}, {}, r"Nothing to upload: .*bucket/results does not exist"),
])
def test_upload_bad_input_is_refused_before_any_request(client: XnatClient, session: dict, emulator: XnatEmulator,
                                                       store: Any, setup: dict, kwargs: dict, message: str) -> None:
    for key, data in setup.items():
        store.pipe_file(f"bucket/{key}", data)
    source = store.url("results/a.txt" if kwargs.get("extract") and "remote_dir" not in kwargs else "results")
    if "remote_dir" in kwargs:
        source = store.url("results/a.zip")
    before = all_requests(emulator)
    with pytest.raises(XnatBadInputError, match=message):
        client.upload(ObjectStoragePath(source), base_path(experiment=session["id"]), "BAD", **kwargs)
    assert all_requests(emulator) == before


# ---- memory: a large download or upload streams, a chunk at a time ------------------------------------------------
MEASURE = r'''
import gc, json, sys, time, tracemalloc
from xnat_provider.client import XnatClient
from tests.object_storage import BlobFileSystem

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))

class Target:
    def __init__(self, fs, path):
        self.fs, self.path = fs, path

url, root, mode = sys.argv[1:4]
fs = BlobFileSystem(root)
with XnatClient(url, "admin", "admin") as c:
    remote = next(f for f in c.list_files("/data/projects/P1/resources/BIG") if f.path == "big.bin")
    gc.collect()
    base = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS: the peak read afterwards is this transfer's
    tracemalloc.start()
    t0 = time.perf_counter()
    if mode == "download":
        entry = c.download_file(remote, Target(fs, "bucket/big.bin"))
    else:
        entry = c.upload(Target(fs, "bucket/big.bin"), "/data/projects/P1", "COPY").files[0]
    seconds = time.perf_counter() - t0
    traced_peak = tracemalloc.get_traced_memory()[1]
print(json.dumps({"above_baseline_mib": (status("VmHWM") - base) / 1024, "traced_peak_mib": traced_peak / 2**20,
                  "seconds": seconds, "size": entry["size"],
                  "md5": entry["md5"], "largest_block_mib": fs.largest_block / 2**20}))
'''


def measure(emulator: XnatEmulator, root: Path, mode: str) -> dict[str, Any]:
    """Run one transfer in its own process (the emulator serves from this one) and read its peak memory."""
    out = subprocess.run([sys.executable, "-c", MEASURE, emulator.url, str(root), mode], capture_output=True,
                         text=True, timeout=110, check=True, cwd=Path(__file__).resolve().parents[2])
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to read peak memory")
def test_large_transfers_to_and_from_storage_stream_in_chunks(emulator: XnatEmulator, http: requests.Session,
                                                             tmp_path: Path) -> None:
    """A 96 MiB file goes to an S3-like store and back with the process's peak memory well under the file's size:
    a chunk (1 MiB) from the socket, at most 8 chunks queued for MD5, one 5 MiB upload (or read-ahead) block.
    Measured: about 14 MiB of Python allocations at peak for the download, 21 MiB for the upload."""
    size = 96 * 1024 * 1024
    src = tmp_path / "big.bin"
    with open(src, "wb") as f:
        for _ in range(size // (1 << 20)):
            f.write(os.urandom(1 << 20))
    with open(src, "rb") as f:
        r = http.put(f"{emulator.url}/data/projects/P1/resources/BIG/files/big.bin", data=f,
                     headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    h = hashlib.md5()
    with open(src, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    down = measure(emulator, tmp_path / "store", "download")
    assert (down["size"], down["md5"]) == (size, h.hexdigest())
    assert (tmp_path / "store" / "bucket" / "big.bin").stat().st_size == size
    # Never the whole file (96 MiB): Python's peak allocation during the transfer, and the process's peak RSS
    # above what it held before (glibc reuses freed memory, so RSS barely grows at all here).
    assert down["traced_peak_mib"] < 32 and down["above_baseline_mib"] < 32, down
    assert down["largest_block_mib"] <= 6  # written in multipart-sized blocks, not one object-sized buffer
    up = measure(emulator, tmp_path / "store", "upload")
    assert (up["size"], up["md5"]) == (size, h.hexdigest())
    assert up["traced_peak_mib"] < 32 and up["above_baseline_mib"] < 32, up


def test_fs_path_names_children_as_the_user_named_the_root(blob_fs: BlobFileSystem) -> None:
    attach_store("blob", blob_fs, conn_id="aws_default")
    root = as_target(ObjectStoragePath("blob://aws_default@bucket/work"))
    detach_store("blob", "aws_default")
    assert isinstance(root, FsPath) and root.path == "bucket/work"
    child = root.join("1/DICOM/a.dcm")
    assert str(child) == "blob://aws_default@bucket/work/1/DICOM/a.dcm"
    assert ObjectStoragePath(str(child)).conn_id == "aws_default"
    assert (child.name, str(child.parent)) == ("a.dcm", "blob://aws_default@bucket/work/1/DICOM")
