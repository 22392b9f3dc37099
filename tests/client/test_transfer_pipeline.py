"""The pieces under the transfers, without a server: the receive pipeline (buffers read, written, then hashed on a
helper thread), the zip read as it arrives, and the fast path's extraction (parts renamed only once the zip has
ended well and its directory agrees)."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import stat
import tracemalloc
import zipfile
from pathlib import Path

import pytest
import requests

from xnat_provider.client import XnatClient, base_path
from xnat_provider.client import hashed_stream as dl
from xnat_provider.client.models import RemoteFile
from xnat_provider.client.progress import NO_PROGRESS
from xnat_provider.client.zip_extraction import FileWriter, ZipExtraction
from xnat_provider.client.zip_stream import ForwardZip, ZipStreamError
from xnat_provider.testing import XnatEmulator

MIB = 1 << 20


class FakeBody:
    """What :func:`receive` reads: ``readinto``, returning at most ``step`` bytes a call (as a socket does),
    the end of ``data`` (or a break) after ``cut`` bytes."""

    def __init__(self, data: bytes, step: int = 100_000, cut: int | None = None, fail: BaseException | None = None):
        self.data, self.step, self.pos = data, step, 0
        self.end = len(data) if cut is None else cut
        self.fail = fail
        self.released = False

    def readinto(self, view: memoryview) -> int:
        n = min(len(view), self.step, self.end - self.pos)
        if n <= 0 and self.fail is not None:
            raise self.fail
        view[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n

    def release(self) -> None:
        self.released = True


@pytest.mark.parametrize("size", [0, 1, dl.BUFFER - 1, dl.BUFFER, 3 * dl.BUFFER + 17, dl.THREADED_MD5_MIN + 5])
def test_receive_writes_and_hashes_every_byte(size: int) -> None:
    data = os.urandom(size)
    out = io.BytesIO()
    h = hashlib.md5()
    got = dl.receive(FakeBody(data), out.write, h, len(data))  # type: ignore[arg-type]
    assert got == size and out.getvalue() == data and h.hexdigest() == hashlib.md5(data).hexdigest()


def test_receive_of_unknown_length_reads_to_the_end() -> None:
    data = os.urandom(2 * dl.BUFFER + 5)
    out, h = io.BytesIO(), hashlib.md5()
    body = FakeBody(data)
    assert dl.receive(body, out.write, h, None) == len(data)  # type: ignore[arg-type]
    assert out.getvalue() == data and h.hexdigest() == hashlib.md5(data).hexdigest() and body.released


@pytest.mark.parametrize("expected", [10 * dl.BUFFER, dl.THREADED_MD5_MIN + 3 * dl.BUFFER])
def test_a_short_body_keeps_whole_buffers_and_hashes_exactly_them(expected: int) -> None:
    """Cut in the middle of a buffer: the buffers before it are written and hashed, the partial one dropped."""
    data = os.urandom(expected)
    cut = 5 * dl.BUFFER + 1234
    out, h = io.BytesIO(), hashlib.md5()
    with pytest.raises(requests.exceptions.ChunkedEncodingError, match=f"short body: {cut} of {expected}"):
        dl.receive(FakeBody(data, cut=cut), out.write, h, expected)  # type: ignore[arg-type]
    kept = out.getvalue()
    assert kept == data[:5 * dl.BUFFER]
    assert h.hexdigest() == hashlib.md5(kept).hexdigest()  # the MD5 a resume continues from


def test_a_broken_body_keeps_whole_buffers_and_hashes_exactly_them() -> None:
    data = os.urandom(dl.THREADED_MD5_MIN + dl.BUFFER)
    out, h = io.BytesIO(), hashlib.md5()
    body = FakeBody(data, cut=3 * dl.BUFFER + 7, fail=requests.exceptions.ConnectionError("reset"))
    with pytest.raises(requests.exceptions.ConnectionError):
        dl.receive(body, out.write, h, len(data))  # type: ignore[arg-type]
    assert out.getvalue() == data[:3 * dl.BUFFER] and h.hexdigest() == hashlib.md5(out.getvalue()).hexdigest()


def test_the_buffers_in_flight_are_bounded() -> None:
    """However big the body, the pipeline holds at most its pool of buffers (16 x 256 KiB)."""
    size = 48 * MIB
    data = bytes(size)  # allocated before tracing starts
    written = 0

    def write(view: memoryview) -> None:
        nonlocal written
        written += len(view)

    tracemalloc.start()
    try:
        dl.receive(FakeBody(data, step=dl.BUFFER), write, hashlib.md5(), size)  # type: ignore[arg-type]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert written == size
    assert peak < dl.BUFFERS * dl.BUFFER + 2 * MIB


def test_body_falls_back_to_urllib3_when_it_must_decode() -> None:
    """A body with a Content-Encoding is read through urllib3 (which decodes), not around it."""

    class Raw:
        _fp = object()
        _fp_bytes_read = 0

        def __init__(self) -> None:
            self.chunks = [b"hello ", b"world"]

        def read(self, n: int, decode_content: bool = False) -> bytes:
            assert decode_content
            return self.chunks.pop(0)[:n] if self.chunks else b""

    resp = requests.Response()
    resp.raw, resp.headers["Content-Encoding"], resp.headers["Content-Length"] = Raw(), "gzip", "31"
    body = dl.Body(resp, head=b">")
    assert body.length is None  # the encoded length says nothing of the decoded bytes
    assert body.read(100) == b">hello world"


def test_local_download_memory_stays_flat(emulator: XnatEmulator, http: requests.Session, tmp_path: Path) -> None:
    """40 MiB from the emulator (in this process) to disk: Python's allocations stay within the buffer pool."""
    data = os.urandom(40 * MIB)
    r = http.put(f"{emulator.url}/data/projects/P1/resources/R/files/big.bin", data=data)
    assert r.status_code == 200, r.text
    with XnatClient(emulator.url, "admin", "admin") as c:
        remote = next(f for f in c.list_files(f"{base_path('P1')}/resources/R") if f.path == "big.bin")
        tracemalloc.start()
        try:
            entry = c.download_file(remote, tmp_path / "big.bin")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert entry["md5"] == hashlib.md5(data).hexdigest() and (tmp_path / "big.bin").read_bytes() == data
    assert peak < 12 * MIB, peak


# ---- the zip, forward ---------------------------------------------------------------------------------------
class Pipe(io.RawIOBase):
    """A write-only stream that cannot seek: zipfile then writes data descriptors, as a server streaming a zip does."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # type: ignore[no-untyped-def, override]
        self.buf += b
        return len(b)


FILES = {"S/scans/1-T1/resources/DICOM/files/a.dcm": os.urandom(70_000),
         "S/scans/1-T1/resources/DICOM/files/sub/b.dcm": b"B" * 5000,
         "S/scans/1-T1/resources/DICOM/files/empty.dcm": b""}


def make_zip(method: int, streamed: bool, files: dict[str, bytes] = FILES, link: str | None = None) -> bytes:
    target: io.BytesIO | Pipe = Pipe() if streamed else io.BytesIO()
    with zipfile.ZipFile(target, "w", compression=method) as zf:  # type: ignore[arg-type]
        for name, data in files.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = method
            if name == link:
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, data)
    return bytes(target.buf if isinstance(target, Pipe) else target.getvalue())


def reader(data: bytes, step: int = 777):
    stream = io.BytesIO(data)
    return lambda n: stream.read(min(n, step))


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
@pytest.mark.parametrize("streamed", [False, True], ids=["sizes-in-headers", "data-descriptors"])
def test_a_zip_is_read_forward(method: int, streamed: bool) -> None:
    zs = ForwardZip(reader(make_zip(method, streamed)))
    got = {}
    for entry in zs.entries():
        got[entry.name] = b"".join(zs.data(entry, len(FILES[entry.name])))
    assert got == FILES
    assert sorted(c.name for c in zs.central.values()) == sorted(FILES)


def test_entries_not_read_are_skipped() -> None:
    zs = ForwardZip(reader(make_zip(zipfile.ZIP_DEFLATED, True)))
    names = [e.name for e in zs.entries()]
    assert names == list(FILES)


@pytest.mark.parametrize(("damage", "message"), [
    (lambda z: z[:len(z) // 2], "ends"),
    (lambda z: b"XXXX" + z[4:], "no zip header"),
    (lambda z: z[:6] + b"\x01" + z[7:], "encrypted"),  # flag bit 0 of the first local header
])
def test_what_cannot_be_followed_is_a_zip_stream_error(damage, message: str) -> None:  # type: ignore[no-untyped-def]
    zs = ForwardZip(reader(damage(make_zip(zipfile.ZIP_DEFLATED, True))))
    with pytest.raises(ZipStreamError, match=message):
        for entry in zs.entries():
            b"".join(zs.data(entry, None))


def test_a_stored_entry_with_a_descriptor_needs_its_size() -> None:
    data = make_zip(zipfile.ZIP_STORED, True)
    zs = ForwardZip(reader(data))
    with pytest.raises(ZipStreamError, match="size is unknown"):
        for _ in zs.entries():
            pass  # not read, and not skippable without its size


# ---- the fast path's extraction -------------------------------------------------------------------------------
def pairs_for(root: Path, files: dict[str, bytes]) -> list[tuple[RemoteFile, Path]]:
    out = []
    for name, data in files.items():
        rel = name.split("/files/", 1)[1]
        out.append((RemoteFile(path=rel, size=len(data), digest=hashlib.md5(data).hexdigest(), uri=f"/u/{rel}",
                               resource="DICOM"), root / rel))
    return out


def test_extraction_renames_only_once_the_zip_has_ended_and_never_a_link(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="xnat_provider.client")
    link = "S/scans/1-T1/resources/DICOM/files/sub/b.dcm"
    pairs = pairs_for(tmp_path, FILES)
    job = ZipExtraction(pairs, ["/resources/DICOM/files/"], NO_PROGRESS)
    job.run(ForwardZip(reader(make_zip(zipfile.ZIP_DEFLATED, True, link=link))))
    assert not (tmp_path / "a.dcm").exists() and (tmp_path / "a.dcm.part").exists()  # not before commit
    out: list[dict | None] = [None] * len(pairs)
    job.commit(out)
    job.report("the zip")
    assert (tmp_path / "a.dcm").read_bytes() == FILES["S/scans/1-T1/resources/DICOM/files/a.dcm"]
    assert out[1] is None and not (tmp_path / "sub" / "b.dcm").exists()  # the link: left to the per-file path
    assert not list(tmp_path.rglob("*.part"))
    assert "(a link)" in caplog.text and "1 listed files are missing" in caplog.text


def test_a_zip_that_breaks_leaves_no_part_behind(tmp_path: Path) -> None:
    pairs = pairs_for(tmp_path, FILES)
    job = ZipExtraction(pairs, ["/resources/DICOM/files/"], NO_PROGRESS)
    data = make_zip(zipfile.ZIP_DEFLATED, True)
    with pytest.raises(ZipStreamError):
        job.run(ForwardZip(reader(data[:-30])))  # the central directory cut
    job.drop()
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # no part, no file


def test_a_new_folder_is_filled_under_a_hidden_name_and_renamed_whole(tmp_path: Path) -> None:
    top = tmp_path / "out" / "1" / "DICOM"
    pairs = pairs_for(top, FILES)
    stale = tmp_path / "out" / "1" / ".DICOM.xnat-part"
    stale.mkdir(parents=True)
    (stale / "junk.dcm").write_bytes(b"left by a run that was killed")
    job = ZipExtraction(pairs, ["/resources/DICOM/files/"], NO_PROGRESS)
    job.run(ForwardZip(reader(make_zip(zipfile.ZIP_DEFLATED, True))))
    assert not top.exists()  # nothing under a final path before the zip has ended and been checked
    assert sorted(p.name for p in stale.rglob("*") if p.is_file()) == ["a.dcm", "b.dcm", "empty.dcm"]
    out: list[dict | None] = [None] * len(pairs)
    job.commit(out)
    assert {p.relative_to(top).as_posix(): p.read_bytes() for p in top.rglob("*") if p.is_file()} == {
        name.split("/files/", 1)[1]: data for name, data in FILES.items()}
    assert not stale.exists() and all(e is not None and Path(e["path"]).parent.is_relative_to(top) for e in out)


def test_a_new_folder_that_appears_meanwhile_gets_the_files_one_by_one(tmp_path: Path) -> None:
    top = tmp_path / "out"
    pairs = pairs_for(top, FILES)
    job = ZipExtraction(pairs, ["/resources/DICOM/files/"], NO_PROGRESS)
    job.run(ForwardZip(reader(make_zip(zipfile.ZIP_DEFLATED, False))))
    top.mkdir()
    (top / "other.txt").write_bytes(b"someone else's")
    out: list[dict | None] = [None] * len(pairs)
    job.commit(out)
    assert (top / "a.dcm").read_bytes() == FILES["S/scans/1-T1/resources/DICOM/files/a.dcm"]
    assert (top / "other.txt").exists() and not (tmp_path / ".out.xnat-part").exists()


def test_a_broken_zip_into_a_new_folder_leaves_nothing(tmp_path: Path) -> None:
    top = tmp_path / "out"
    job = ZipExtraction(pairs_for(top, FILES), ["/resources/DICOM/files/"], NO_PROGRESS)
    with pytest.raises(ZipStreamError):
        job.run(ForwardZip(reader(make_zip(zipfile.ZIP_DEFLATED, True)[:-30])))
    job.drop()
    assert list(tmp_path.iterdir()) == []


def test_the_file_writer_writes_in_order_and_hands_its_error_to_the_caller(tmp_path: Path) -> None:
    w = FileWriter()
    for i in range(50):
        w.open(tmp_path / "d" / f"{i}.bin")
        w.write(bytes([i]) * 1000)
        w.write(b"end")
        w.close()
    w.finish()
    assert all((tmp_path / "d" / f"{i}.bin").read_bytes() == bytes([i]) * 1000 + b"end" for i in range(50))

    (tmp_path / "file").write_bytes(b"in the way")
    w = FileWriter()
    w.open(tmp_path / "file" / "x.bin")  # under a file: the writer fails, the caller hears of it
    with pytest.raises(OSError):
        for _ in range(10_000):
            w.write(b"x" * 1000)
        w.finish()
    with pytest.raises(OSError):
        w.finish()


def test_what_downloads_and_containers_exported_before_their_split_still_imports_from_them() -> None:
    """Code written against the modules before they were split (``from xnat_provider.client.downloads import
    md5_of``) keeps working: the names are the same objects, re-exported."""
    from xnat_provider.client import container_models, container_watch, containers, downloads, hashed_stream
    from xnat_provider.client import destinations as dest

    for name in ("BROKEN", "CHUNK", "BUFFER", "BUFFERS", "THREADED_MD5_MIN", "Body", "Hasher", "fill", "receive",
                 "hash_file", "md5_of"):
        assert getattr(downloads, name) is getattr(hashed_stream, name)
    for name in ("check_relpath", "check_destination", "safe_join", "on_storage"):
        assert getattr(downloads, name) is getattr(dest, name)
    assert containers.Container is container_models.Container and containers.ContainerWatch is \
        container_watch.ContainerWatch
    used_elsewhere = {"DONE", "LAUNCH_FAILED", "Container", "ContainerWatch", "LaunchPlan", "Workflow", "failure_of",
                      "container_of_workflow", "container_lookup", "workflow_lookup", "workflow_container_lookup"}
    assert used_elsewhere <= set(containers.__all__) and all(hasattr(containers, n) for n in containers.__all__)

