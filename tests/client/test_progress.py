"""Progress of long transfers in the client's log: a line when the interval has passed and another tenth of the
total has moved (whichever is later), a summary at the end, never a line per file. The interval is injected
(``progress_interval=0``, or a clock the test moves): no test sleeps."""

from __future__ import annotations

import logging
import os
import re
import zipfile
from pathlib import Path

import pytest
import requests

from xnat_provider.client import ClientConfig, XnatBadInputError, XnatClient, base_path
from xnat_provider.client.progress import Progress
from xnat_provider.testing import XnatEmulator

LOGGER = "xnat_provider.client"


def lines(caplog: pytest.LogCaptureFixture, prefix: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.getMessage().startswith(prefix)]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---- the rule -------------------------------------------------------------------------------------------------
def test_a_line_needs_both_the_interval_and_a_tenth_of_the_total(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = Clock()
    p = Progress("Download to /out", 10_000_000_000, 1000, interval=10, clock=clock)
    p.add(3_000_000_000)  # 30 % at once, but no time has passed
    assert p.lines == 0
    clock.now += 11
    p.add(1)  # the interval has passed, and 30 % since the last line: a line
    assert p.lines == 1
    clock.now += 60
    p.add(500_000_000)  # a minute later, but only 5 % more: no line
    assert p.lines == 1
    p.add(600_000_000)  # 11 % since the last line, the interval long passed: a line
    for _ in range(412):
        p.file_done()
    p.finish()
    got = lines(caplog, "Download to /out")
    assert len(got) == 3
    assert got[0] == "Download to /out: 3.0 GB of 10.0 GB (30 %), 0 of 1000 files, 272.7 MB/s, about 26 s left"
    assert got[1].startswith("Download to /out: 4.1 GB of 10.0 GB (41 %), 0 of 1000 files, ")
    assert got[2] == "Download to /out done: 4.1 GB of 10.0 GB (41 %), 412 of 1000 files, 57.7 MB/s, in 71 s"


def test_at_most_a_line_per_tenth_and_a_summary_however_many_files(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = Clock()
    p = Progress("Download", 5_000_000, 5000, interval=0, clock=clock)
    for _ in range(5000):
        clock.now += 0.001
        p.add(1000)
        p.file_done()
    p.finish()
    got = lines(caplog, "Download")
    assert 1 < len(got) <= 11
    assert got[-1].startswith("Download done: 5.0 MB of 5.0 MB (100 %), 5000 of 5000 files, ")


def test_a_quick_single_file_logs_nothing_a_long_one_its_summary(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = Clock()
    quick = Progress("Download of a", 100, 1, interval=10, clock=clock)
    quick.add(100)
    quick.file_done()
    quick.finish()
    assert lines(caplog, "Download of a") == []
    slow = Progress("Download of b", 100, 1, interval=10, clock=clock)
    slow.add(50)
    clock.now += 30
    slow.add(50)
    slow.file_done()
    slow.finish()
    slow.finish()  # once
    assert lines(caplog, "Download of b") == [
        "Download of b: 100 B of 100 B (100 %), 3 B/s, about 0 s left",
        "Download of b done: 100 B of 100 B (100 %), 3 B/s, in 30 s"]


def test_the_interval_is_a_checked_setting() -> None:
    assert ClientConfig("https://x", progress_interval=0).progress_interval == 0
    assert ClientConfig("https://x", progress_interval=float("inf")).progress_interval == float("inf")
    with pytest.raises(XnatBadInputError, match="progress_interval"):
        ClientConfig("https://x", progress_interval=-1)


# ---- real transfers -------------------------------------------------------------------------------------------
@pytest.fixture
def chatty(emulator: XnatEmulator, caplog: pytest.LogCaptureFixture):  # type: ignore[no-untyped-def]
    """A client that logs progress at every tenth (no interval)."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    with XnatClient(emulator.url, "admin", "admin", progress_interval=0) as c:
        yield c


def test_a_big_download_logs_its_progress_with_the_right_totals(chatty: XnatClient, http: requests.Session,
                                                                emulator: XnatEmulator, tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    data = os.urandom(12 * 1024 * 1024 + 5)
    assert http.put(f"{emulator.url}/data/projects/P1/resources/R/files/big.bin", data=data).status_code == 200
    remote = next(f for f in chatty.list_files(f"{base_path('P1')}/resources/R") if f.path == "big.bin")
    chatty.download_file(remote, tmp_path / "big.bin")
    got = lines(caplog, f"Download of {tmp_path / 'big.bin'}")
    assert 3 <= len(got) <= 11
    assert all("of 12.6 MB (" in line for line in got)
    percents = [int(m.group(1)) for line in got if (m := re.search(r"\((\d+) %\)", line))]
    assert percents == sorted(percents) and percents[-1] == 100
    assert got[-1].startswith(f"Download of {tmp_path / 'big.bin'} done: 12.6 MB of 12.6 MB (100 %), ")


def test_a_1000_file_download_logs_a_bounded_number_of_lines(chatty: XnatClient, emulator: XnatEmulator,
                                                             tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    files = {f"f{i:04d}.txt": f"file {i}\n".encode() * (1 + i % 7) for i in range(1000)}
    archive = tmp_path / "many.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    chatty.upload(archive, base_path("P1"), "MANY", extract=True)
    caplog.clear()
    manifest = chatty.download_resource(base_path("P1"), "MANY", tmp_path / "out")
    assert manifest.transferred == 1000
    got = lines(caplog, "Download to ")
    assert 1 < len(got) <= 11  # a tenth at a time, not a line per file
    total = sum(len(d) for d in files.values())
    assert got[-1].startswith(f"Download to {tmp_path / 'out'} done: {total / 1000:.1f} kB of {total / 1000:.1f} kB "
                              "(100 %), 1000 of 1000 files, ")

    # With an interval longer than the download (an hour: no machine is that slow), the same download logs its
    # summary alone.
    caplog.clear()
    with XnatClient(emulator.url, "admin", "admin", progress_interval=3600) as quiet:
        quiet.download_resource(base_path("P1"), "MANY", tmp_path / "again")
    got = lines(caplog, "Download to ")
    assert len(got) == 1 and " done: " in got[0] and "1000 of 1000 files" in got[0]


def test_a_rerun_counts_skipped_files_as_done(chatty: XnatClient, emulator: XnatEmulator, http: requests.Session,
                                             tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for i in range(3):
        assert http.put(f"{emulator.url}/data/projects/P1/resources/R/files/f{i}.bin",
                        data=os.urandom(1000)).status_code == 200
    chatty.download_resource(base_path("P1"), "R", tmp_path / "out")
    caplog.clear()
    chatty.download_resource(base_path("P1"), "R", tmp_path / "out")
    assert lines(caplog, "Download to ")[-1].startswith(
        f"Download to {tmp_path / 'out'} done: 3.0 kB of 3.0 kB (100 %), 3 of 3 files, 0 B/s")


def test_an_upload_logs_its_progress(chatty: XnatClient, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(10 * 1024 * 1024))
    chatty.upload(big, base_path("P1"), "UP")
    got = lines(caplog, "Upload to /data/projects/P1/resources/UP")
    assert 3 <= len(got) <= 11 and all("of 10.5 MB (" in line for line in got)
    assert " done: 10.5 MB of 10.5 MB (100 %)" in got[-1]

    folder = tmp_path / "folder"
    folder.mkdir()
    for i in range(30):
        (folder / f"{i}.txt").write_bytes(b"x" * 100)
    caplog.clear()
    chatty.upload(folder, base_path("P1"), "UP2")
    got = lines(caplog, "Upload to /data/projects/P1/resources/UP2")
    assert got[-1].startswith("Upload to /data/projects/P1/resources/UP2 done: 3.0 kB of 3.0 kB (100 %), "
                              "30 of 30 files, ")
    assert len(got) <= 11


def test_a_zip_fast_path_download_reports_its_files(emulator: XnatEmulator, http: requests.Session,
                                                    tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from xnat_provider.testing.samples import make_study, zip_files

    study = make_study(tmp_path / "src", series=((1, "T1"),), instances=25)
    body = zip_files(study.files, tmp_path / "src.zip").read_bytes()
    r = http.post(emulator.url + "/data/services/import", params={"dest": "/archive/projects/P1"}, data=body,
                  headers={"Content-Type": "application/zip"})
    assert r.status_code == 200, r.text
    caplog.set_level(logging.INFO, logger=LOGGER)
    with XnatClient(emulator.url, "admin", "admin", progress_interval=0) as c:
        label = c.list_experiments("P1")[0].label
        manifest = c.download_scans("P1", label, tmp_path / "out")
    assert manifest.transferred == 25
    got = lines(caplog, "Download to ")
    assert 1 <= len(got) <= 11 and "25 of 25 files" in got[-1] and "(100 %)" in got[-1]
    assert emulator.request_count("GET", r"/files/.+") == 0  # it was the zip


def test_progress_lines_hold_no_secret(emulator: XnatEmulator, tmp_path: Path,
                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    with XnatClient(emulator.url, "admin", "admin", progress_interval=0) as c:
        source = tmp_path / "s.bin"
        source.write_bytes(os.urandom(3000))
        c.upload(source, base_path("P1"), "S")
        sid = c.transport.session_id
    assert sid and sid not in caplog.text and "admin:admin" not in caplog.text

