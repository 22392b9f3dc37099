"""How a download of many files fails. A file that fails on its own (its bytes do not match the catalog) does not
stop the others, with one worker or several: every other file is downloaded and verified, so a retry fetches
only what is missing. A failure of the whole download (XNAT answering 503 to everything) stops it at once, instead
of paying every file's retries and backoff in turn (a 1,000-file download during an outage took hours to fail)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from xnat_provider.client import XnatClient
from xnat_provider.client.errors import XnatServerError, XnatTransferError
from xnat_provider.testing import XnatEmulator

USER, PASSWORD = "dl-failures", "Dl-Failures-Pw-5"
FILES = 12
RETRIES = 3
FILE_GETS = r"^/data/projects/P1/resources/[^/]+/files/.+"  # a file (XNAT links files by resource id)


@pytest.fixture
def many(emulator: XnatEmulator, tmp_path: Path) -> dict[str, bytes]:
    """``FILES`` small files in the project resource MANY, uploaded through the client."""
    src = tmp_path / "src"
    src.mkdir()
    files = {f"f{i:02d}.bin": bytes([i]) * (1000 + i) for i in range(FILES)}
    for name, data in files.items():
        (src / name).write_bytes(data)
    emulator.add_user(USER, PASSWORD, admin=True)
    with XnatClient(emulator.url, USER, PASSWORD) as c:
        c.upload(src, "/data/projects/P1", "MANY")
    return files


def download(emulator: XnatEmulator, dest: Path, workers: int):
    with XnatClient(emulator.url, USER, PASSWORD, backoff=0.01, retries=RETRIES) as c:
        return c.download_resource("/data/projects/P1", "MANY", dest, workers=workers)


@pytest.mark.parametrize("workers", [1, 4])
def test_a_bad_file_does_not_stop_the_others_and_a_retry_fetches_only_it(emulator: XnatEmulator, many, tmp_path,
                                                                       workers: int) -> None:
    bad = "/data/projects/P1/resources/MANY/files/f00.bin"  # the first in the listing: the others come after it
    emulator.corrupt_file(bad)
    dest = tmp_path / "out"
    with pytest.raises(XnatTransferError, match=r"f00\.bin"):
        download(emulator, dest, workers)
    kept = {p.name: p.read_bytes() for p in dest.iterdir() if p.is_file()}
    assert set(kept) == set(many) - {"f00.bin"}  # every other file, verified; nothing half-written
    assert all(kept[name] == many[name] for name in kept)
    emulator.file_path(bad).write_bytes(many["f00.bin"])  # the server is right again
    before = emulator.request_count("GET", FILE_GETS)
    manifest = download(emulator, dest, workers)
    assert emulator.request_count("GET", FILE_GETS) - before == 1  # only the one that was missing
    assert hashlib.md5((dest / "f00.bin").read_bytes()).hexdigest() == hashlib.md5(many["f00.bin"]).hexdigest()
    assert len(manifest.files) == FILES


@pytest.mark.parametrize("workers", [1, 4])
def test_xnat_failing_stops_the_download_at_once(emulator: XnatEmulator, many, tmp_path, workers: int) -> None:
    emulator.fail_next("GET", FILE_GETS, status=503, count=1000)
    with pytest.raises(XnatServerError):
        download(emulator, tmp_path / "out", workers)
    sent = emulator.request_count("GET", FILE_GETS)
    # each file tried costs RETRIES requests; at most the files already running when the first one gave up
    assert sent <= RETRIES * workers < RETRIES * FILES, sent
