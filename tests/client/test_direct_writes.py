"""Big downloads written around the page cache (``O_DIRECT``, :mod:`xnat_provider.client.part_file`).

What a user notices: the file arrives byte for byte and verified whatever its length and however the transfer
broke; a multi-GiB download does not push what the machine had cached out of memory (the downloaded file's pages are
not left in the page cache), unless the connection says ``direct_io`` false; and a file system that refuses
direct I/O is written the ordinary way, with no error. Residency is read with ``mincore(2)``, a check the client
does not use.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import mmap
import os
from pathlib import Path

import pytest
import requests

from xnat_provider.client import XnatClient, part_file
from xnat_provider.testing import XnatEmulator

USER, PASSWORD = "dora", "D1rect-wr1tes!"
BIG = part_file.DIRECT_MIN + 3 * 4096 + 777  # above the threshold, not a whole number of pages

pytestmark = pytest.mark.skipif(not part_file.O_DIRECT, reason="O_DIRECT exists on Linux only")


def cached_fraction(path: Path, start: int = 0, end: int | None = None) -> float:
    """The share of ``path``'s pages (those from byte ``start`` to ``end``) in the page cache, by ``mincore(2)``
    over a mapping that touches none."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p)
    size = path.stat().st_size
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as m:
        address = ctypes.addressof(ctypes.c_char.from_buffer(m))
        vec = ctypes.create_string_buffer(pages)
        assert libc.mincore(ctypes.c_void_p(address), size, vec) == 0, os.strerror(ctypes.get_errno())
        first, last = start // mmap.PAGESIZE, (size if end is None else end) // mmap.PAGESIZE
        resident = sum(b & 1 for b in vec.raw[first:last])
        del address
    return resident / max(1, last - first)


@pytest.fixture
def big(http: requests.Session, emulator: XnatEmulator) -> bytes:
    data = os.urandom(BIG)
    r = http.put(f"{emulator.url}/data/projects/P1/resources/R/files/big.bin", data=data,
                 headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    return data


def remote_of(client: XnatClient, name: str):
    return next(f for f in client.list_files("/data/projects/P1/resources/R") if f.path == name)


def test_a_big_download_leaves_nothing_in_the_page_cache(client: XnatClient, big: bytes, tmp_path: Path) -> None:
    entry = client.download_file(remote_of(client, "big.bin"), tmp_path / "out" / "big.bin")
    assert entry["md5"] == hashlib.md5(big).hexdigest() and not entry["skipped"]
    assert cached_fraction(tmp_path / "out" / "big.bin") < 0.05  # at most the short last buffer went through the cache
    assert (tmp_path / "out" / "big.bin").read_bytes() == big
    assert os.listdir(tmp_path / "out") == ["big.bin"]


def test_direct_io_false_writes_through_the_page_cache(emulator: XnatEmulator, big: bytes, tmp_path: Path) -> None:
    emulator.add_user(USER, PASSWORD, admin=True)
    with XnatClient(emulator.url, USER, PASSWORD, direct_io=False) as c:
        c.download_file(remote_of(c, "big.bin"), tmp_path / "out" / "big.bin")
    assert cached_fraction(tmp_path / "out" / "big.bin") > 0.95
    assert (tmp_path / "out" / "big.bin").read_bytes() == big


def test_a_small_file_stays_in_the_page_cache(client: XnatClient, http: requests.Session, emulator: XnatEmulator,
                                              tmp_path: Path) -> None:
    """Below the threshold the next reader (the task that processes the file) finds it in memory."""
    data = os.urandom(part_file.DIRECT_MIN // 2)
    assert http.put(f"{emulator.url}/data/projects/P1/resources/R/files/half.bin", data=data).status_code == 200
    client.download_file(remote_of(client, "half.bin"), tmp_path / "out" / "half.bin")
    assert cached_fraction(tmp_path / "out" / "half.bin") > 0.95


@pytest.mark.parametrize("range_requests", [True, False], ids=["range-honoured", "range-ignored"])
@pytest.mark.parametrize("after", [2 * 1024 * 1024 + 5000, 5 * 1024 * 1024])
def test_a_broken_big_download_resumes_to_the_right_bytes(client: XnatClient, big: bytes, emulator: XnatEmulator,
                                                         range_requests: bool, after: int, tmp_path: Path) -> None:
    emulator.range_requests = range_requests
    emulator.drop_after("GET", r"/big\.bin$", after_bytes=after)
    entry = client.download_file(remote_of(client, "big.bin"), tmp_path / "out" / "big.bin")
    assert (tmp_path / "out" / "big.bin").read_bytes() == big and entry["md5"] == hashlib.md5(big).hexdigest()
    assert emulator.request_count("GET", r"/big\.bin$") == 2
    assert os.listdir(tmp_path / "out") == ["big.bin"]


def test_a_part_of_odd_length_left_by_another_program_is_finished(client: XnatClient, big: bytes,
                                                                  emulator: XnatEmulator, tmp_path: Path) -> None:
    """A resumed part whose length is not a whole number of pages cannot take direct writes: written the ordinary
    way, and right."""
    emulator.range_requests = True
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "big.bin.part").write_bytes(big[:1_000_001])
    client.download_file(remote_of(client, "big.bin"), tmp_path / "out" / "big.bin")
    assert (tmp_path / "out" / "big.bin").read_bytes() == big


def test_a_file_system_that_refuses_direct_io_is_written_the_ordinary_way(
        client: XnatClient, big: bytes, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real_open = os.open

    def no_direct(path, flags, *args):
        if flags & part_file.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(part_file.os, "open", no_direct)
    client.download_file(remote_of(client, "big.bin"), tmp_path / "out" / "big.bin")
    assert (tmp_path / "out" / "big.bin").read_bytes() == big
    assert cached_fraction(tmp_path / "out" / "big.bin") > 0.95


def test_a_write_refused_as_misaligned_is_written_the_ordinary_way(tmp_path: Path) -> None:
    """A buffer that is not page-aligned (a bytearray) makes a direct write fail with EINVAL: it is written
    through the page cache instead, and so is everything after it."""
    payload = os.urandom(3 * part_file.ALIGN)
    unaligned = memoryview(bytearray(b"x" + payload))[1:]
    aligned = part_file.aligned_buffer(2 * part_file.ALIGN)
    aligned.write(os.urandom(len(aligned)))
    with part_file.PartFile(tmp_path / "f.part", 0, direct=True) as out:
        assert out.direct
        out.write(memoryview(aligned))
        out.write(unaligned)
        assert not out.direct
        out.write(memoryview(aligned))
    assert (tmp_path / "f.part").read_bytes() == bytes(aligned) + payload + bytes(aligned)


def test_the_threshold_is_the_whole_file_not_what_is_left(client: XnatClient, big: bytes, emulator: XnatEmulator,
                                                          tmp_path: Path) -> None:
    """A resume of a big file with little left (4 MiB: too little for the helper thread) still writes around the
    cache (the file is big): the resumed bytes' pages are not cached, and the bytes are right."""
    emulator.range_requests = True
    have = BIG - (4 << 20) - 777
    assert have % part_file.ALIGN == 0
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "big.bin.part").write_bytes(big[:have])
    client.download_file(remote_of(client, "big.bin"), tmp_path / "out" / "big.bin")
    assert cached_fraction(tmp_path / "out" / "big.bin", have, BIG - 777) < 0.05  # before reading it back
    assert (tmp_path / "out" / "big.bin").read_bytes() == big


def test_a_network_file_system_is_written_through_the_page_cache(
        client: XnatClient, big: bytes, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """On NFS, SMB or FUSE every direct write would wait for the server: only local block file systems are
    written directly."""
    assert part_file.file_system_type(tmp_path) in part_file.DIRECT_FILE_SYSTEMS  # this machine's disk
    monkeypatch.setattr(part_file, "file_system_type", lambda folder: "nfs4")
    client.download_file(remote_of(client, "big.bin"), tmp_path / "out" / "big.bin")
    assert (tmp_path / "out" / "big.bin").read_bytes() == big
    assert cached_fraction(tmp_path / "out" / "big.bin") > 0.95


def test_a_downloaded_file_gets_the_permissions_the_umask_allows(client: XnatClient, big: bytes,
                                                                  tmp_path: Path) -> None:
    """As ``open()`` creates files: 0o666 less the umask (a group-writable lab folder stays group-writable)."""
    old = os.umask(0o002)
    try:
        client.download_file(remote_of(client, "big.bin"), tmp_path / "out" / "big.bin")
    finally:
        os.umask(old)
    assert (tmp_path / "out" / "big.bin").stat().st_mode & 0o777 == 0o664


def test_a_part_that_cannot_be_positioned_leaves_no_descriptor_open(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    (tmp_path / "f.part").write_bytes(b"x" * part_file.ALIGN)

    def refuse(fd: int, length: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(part_file.os, "ftruncate", refuse)
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(OSError, match="Input/output"):
        part_file.PartFile(tmp_path / "f.part", part_file.ALIGN, direct=True)
    assert len(os.listdir("/proc/self/fd")) == before
