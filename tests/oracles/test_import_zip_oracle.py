"""The import body against Java's own zip reader, the one XNAT's DICOM-zip handler reads uploads with.

``ZipInputStreamCheck.java`` reads a zip with ``java.util.zip.ZipInputStream`` as ``DicomZipImporter`` does and
lists what it read. It is the oracle for two things: that the body :func:`zip_stream` sends can be read by XNAT
(``xnat-fidelity.md`` finding 1: the old body could not), and that the emulator's reader
(:mod:`xnat_provider.testing.zip_input`) accepts exactly what Java accepts, with the same entries and bytes.
"""

from __future__ import annotations

import shutil
import subprocess
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.oracles.zips import locals_of, patched, seekable_zip, streamed_zip
from xnat_provider.client.import_body import plan_import, zip_stream
from xnat_provider.testing.samples import Study, make_study
from xnat_provider.testing.zip_input import ZipInputError, read_zip

JAVA = shutil.which("java")
CHECKER = Path(__file__).with_name("ZipInputStreamCheck.java")
pytestmark = pytest.mark.skipif(JAVA is None, reason="java not found: the java.util.zip oracle cannot run")


@pytest.fixture(scope="module")
def checker(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The command that runs the checker on a file. The JDK's source launcher (``java ZipInputStreamCheck.java``)
    compiles it on every run (about 0.6 s); with ``javac`` it is compiled once (a run then takes about 0.05 s)."""
    assert JAVA is not None
    javac = shutil.which("javac")
    if javac is None:
        return [JAVA, str(CHECKER)]
    out = tmp_path_factory.mktemp("checker")
    subprocess.run([javac, "-d", str(out), str(CHECKER)], check=True, capture_output=True, timeout=120)
    return [JAVA, "-cp", str(out), CHECKER.stem]


@dataclass
class Reading:
    """What a reader made of a zip: the entries read in full (name, size, CRC-32 hex) and, if it failed, the
    Java exception class and message (``null`` for a Java exception without one)."""

    entries: list[tuple[str, int, str]] = field(default_factory=list)
    error: tuple[str, str] | None = None

    @property
    def accepted(self) -> bool:
        return self.error is None


def java_reads(checker: list[str], path: Path) -> Reading:
    """The oracle: Java's ``ZipInputStream`` over the file."""
    proc = subprocess.run([*checker, str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode in (0, 3), f"the checker itself failed ({proc.returncode}): {proc.stderr}"
    entries = [(name, int(size), crc) for name, size, crc in (line.split("\t") for line in proc.stdout.splitlines())]
    if proc.returncode == 0:
        return Reading(entries)
    cls, _, message = proc.stderr.strip().partition(": ")
    return Reading(entries, (cls, message))


def emulator_reads(path: Path) -> Reading:
    """The emulator's reader over the same file, listed the same way."""
    out = Reading()
    try:
        with open(path, "rb") as fh:
            for entry, stream in read_zip(fh):
                crc, size = 0, 0
                while chunk := stream.read(1 << 16):
                    crc, size = zlib.crc32(chunk, crc), size + len(chunk)
                out.entries.append((entry.name, size, format(crc, "x")))
    except ZipInputError as exc:
        out.error = (exc.java_class, str(exc))
    return out


def listed(files: list[Path], names: list[str] | None = None) -> list[tuple[str, int, str]]:
    """What a correct reader lists for these files, in this order."""
    return [(name, f.stat().st_size, format(zlib.crc32(f.read_bytes()), "x"))
            for name, f in zip(names or [f.name for f in files], files, strict=True)]


# ---- the client's body ----------------------------------------------------------------------------------------
def test_java_reads_every_entry_of_the_client_body(checker: list[str], study: Study, tmp_path: Path) -> None:
    plan = plan_import(study.files[0].parent)
    body = tmp_path / "body.zip"
    body.write_bytes(b"".join(zip_stream(plan.entries)))

    got = java_reads(checker, body)

    assert got.accepted, got.error
    by_name = {f.name: f for f in study.files}
    assert got.entries == listed([by_name[e.name] for e in plan.entries], [e.name for e in plan.entries])
    assert sorted(n for n, _, _ in got.entries) == sorted(by_name)
    # Streamed (a data descriptor per entry), DEFLATED, and at level 0: as big as the DICOM itself.
    sizes = {f.name: f.stat().st_size for f in study.files}
    for loc in locals_of(body.read_bytes()):
        assert (loc.method, loc.flag & 0x8) == (zipfile.ZIP_DEFLATED, 0x8), loc
        assert sizes[loc.name] <= loc.end - loc.data <= sizes[loc.name] + 64, loc


def test_java_refuses_the_old_body_stored_with_data_descriptors(checker: list[str], study: Study,
                                                                tmp_path: Path) -> None:
    """The oracle can fail: the body the client sent before (STORED, streamed) is what XNAT refused."""
    body = tmp_path / "old.zip"
    body.write_bytes(streamed_zip([(f.name, f.read_bytes()) for f in study.files]))

    got = java_reads(checker, body)

    assert got.error == ("java.util.zip.ZipException", "only DEFLATED entries can have EXT descriptor")
    assert got.entries == []
    assert emulator_reads(body) == got


def test_the_emulator_reads_the_client_body_as_java_does(checker: list[str], study: Study, tmp_path: Path) -> None:
    body = tmp_path / "body.zip"
    body.write_bytes(b"".join(zip_stream(plan_import(study.files[0].parent).entries)))
    assert emulator_reads(body) == java_reads(checker, body)


# ---- the emulator's reader against Java, zip by zip -------------------------------------------------------------
def corpus(study: Study) -> dict[str, bytes]:
    """Zips Java accepts and zips it refuses, each for a different rule of ``ZipInputStream``."""
    files = [(f.name, f.read_bytes()) for f in study.series["1"]]
    two = files[:2]
    stored_seek = seekable_zip(two)
    deflated_dd = streamed_zip(two, zipfile.ZIP_DEFLATED, 0)
    stored_locs, dd_locs = locals_of(stored_seek), locals_of(deflated_dd)
    zips = {
        "stored, data descriptor (the old client body)": streamed_zip(files),
        "stored, no descriptor": seekable_zip(files),
        "deflated 0, descriptor": deflated_dd,
        "deflated 9, descriptor": streamed_zip(files, zipfile.ZIP_DEFLATED, 9),
        "deflated 0, no descriptor": seekable_zip(files, zipfile.ZIP_DEFLATED, 0),
        "deflated 9, no descriptor": seekable_zip(files, zipfile.ZIP_DEFLATED, 9),
        "stored, ZIP64 local header": seekable_zip(two, force_zip64=True),
        "deflated, descriptor, ZIP64 under 4 GiB": streamed_zip(two, zipfile.ZIP_DEFLATED, 0, force_zip64=True),
        "directory entry and an empty file": seekable_zip([("dir/", b""), ("dir/empty", b""), *two]),
        "empty zip": seekable_zip([]),
        "not a zip at all": b"this is not a zip",
        "junk before the first header": b"junk" + stored_seek,
        "truncated inside the first header": stored_seek[:20],
        "truncated inside the first name": stored_seek[:35],
        "truncated inside the first entry's data": stored_seek[:stored_locs[0].data + 100],
        "truncated between two entries": stored_seek[:stored_locs[1].header],
        "truncated inside deflated data": deflated_dd[:dd_locs[1].data + 100],
        "truncated inside a data descriptor": deflated_dd[:dd_locs[0].end + 10],
        "bad CRC, stored (a data byte flipped)": patched(stored_seek, stored_locs[1].data + 500,
                                                         bytes([stored_seek[stored_locs[1].data + 500] ^ 0xFF])),
        "bad CRC, deflated 0 (a data byte flipped)": patched(deflated_dd, dd_locs[0].data + 500,
                                                             bytes([deflated_dd[dd_locs[0].data + 500] ^ 0xFF])),
        "broken deflate stream": patched(deflated_dd, dd_locs[0].data, b"\x07"),  # block type 3 is invalid
        "wrong size in a data descriptor": patched(deflated_dd, dd_locs[0].end + 12, b"\x01\x00\x00\x00"),
        "data descriptor without its signature": (deflated_dd[:dd_locs[0].end] + deflated_dd[dd_locs[0].end + 4:]),
        "encrypted flag": patched(stored_seek, stored_locs[1].header + 6, b"\x01\x00"),
        "unknown method (12, bzip2)": patched(stored_seek, stored_locs[1].header + 8, b"\x0c\x00"),
    }
    assert deflated_dd[dd_locs[0].end:dd_locs[0].end + 4] == b"PK\x07\x08"
    return zips


def test_the_emulator_reader_accepts_exactly_what_java_accepts(checker: list[str], tmp_path: Path) -> None:
    study = make_study(tmp_path / "dicom", series=((1, "T1"),), instances=3)
    outcomes = {}
    for i, (label, data) in enumerate(corpus(study).items()):
        path = tmp_path / f"case{i}.zip"
        path.write_bytes(data)
        java, ours = java_reads(checker, path), emulator_reads(path)
        assert ours.entries == java.entries, label
        assert ours.accepted == java.accepted, (label, java.error, ours.error)
        if java.error is not None:
            assert ours.error is not None and ours.error[0] == java.error[0], (label, java.error, ours.error)
            if java.error[1] != "null":  # Java's readFully throws an EOFException without a message
                assert ours.error[1] == java.error[1], label
        outcomes[label] = java.accepted
    # The corpus covers both sides of every rule (so the comparison above cannot pass by refusing everything).
    assert outcomes == {
        "stored, data descriptor (the old client body)": False,
        "stored, no descriptor": True,
        "deflated 0, descriptor": True,
        "deflated 9, descriptor": True,
        "deflated 0, no descriptor": True,
        "deflated 9, no descriptor": True,
        "stored, ZIP64 local header": True,
        "deflated, descriptor, ZIP64 under 4 GiB": False,
        "directory entry and an empty file": True,
        "empty zip": True,
        "not a zip at all": True,
        "junk before the first header": True,
        "truncated inside the first header": True,
        "truncated inside the first name": False,
        "truncated inside the first entry's data": False,
        "truncated between two entries": True,
        "truncated inside deflated data": False,
        "truncated inside a data descriptor": False,
        "bad CRC, stored (a data byte flipped)": False,
        "bad CRC, deflated 0 (a data byte flipped)": False,
        "broken deflate stream": False,
        "wrong size in a data descriptor": False,
        "data descriptor without its signature": True,
        "encrypted flag": False,
        "unknown method (12, bzip2)": False,
    }
