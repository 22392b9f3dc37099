"""The import service reads a zip body as XNAT does, with ``java.util.zip.ZipInputStream``'s rules, over real HTTP.

Reference: ``xnat-fidelity.md`` finding 1. XNAT's ``DicomZipImporter`` reads the upload forward, local header by
local header; where ``ZipInputStream`` throws it answers 400 with the Restlet status page "unable to read data
from file". The body the client used to send (STORED entries with data descriptors) is refused that way; the
body it sends now (DEFLATED at level 0) is read. Which zips Java accepts is checked against Java itself in
``tests/oracles``.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pydicom
import requests

from tests.oracles.zips import locals_of, patched, streamed_zip
from tests.support import listing
from xnat_provider.client.import_body import plan_import, zip_stream
from xnat_provider.testing import XnatEmulator
from xnat_provider.testing.clock import ManualClock
from xnat_provider.testing.samples import Study, make_study

IMPORT = "/data/services/import"
PARAMS = {"import-handler": "DICOM-zip", "dest": "/prearchive/projects/P1"}


def post_zip(http: requests.Session, emulator: XnatEmulator, body: bytes) -> requests.Response:
    return http.post(emulator.url + IMPORT, params=PARAMS, data=body, headers={"Content-Type": "application/zip"},
                     timeout=30)


def h3(resp: requests.Response) -> str:
    """The message of a Restlet status page."""
    found = re.search(r"<h3>(.*?)</h3>", resp.text, re.S)
    assert found, resp.text
    return found.group(1)


def sessions(http: requests.Session, emulator: XnatEmulator) -> dict[str, set[str]]:
    """Study UID -> names of the DICOM files of its prearchive session in P1, as the server lists them."""
    out: dict[str, set[str]] = {}
    for row in listing(http, f"{emulator.url}/data/prearchive/projects/P1"):
        base = f"{emulator.url}/data{row['url']}"
        names = out.setdefault(row["tag"], set())
        for scan in listing(http, f"{base}/scans"):
            names |= {f["Name"] for f in listing(http, f"{base}/scans/{scan['ID']}/resources/DICOM/files")}
    return out


def stored_names(files: list[Path]) -> set[str]:
    """The names the prearchive gives these files (``{SOPInstanceUID}.dcm``)."""
    return {f"{pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID}.dcm" for f in files}


def test_the_old_client_body_is_refused_as_xnat_refuses_it(
    emulator: XnatEmulator, http: requests.Session, study: Study
) -> None:
    body = streamed_zip([(f.name, f.read_bytes()) for f in study.files])  # STORED, a data descriptor per entry
    assert body[6:10] == b"\x08\x00\x00\x00"  # flag bit 3, method 0: what the client's zip_stream used to send

    resp = post_zip(http, emulator, body)

    assert resp.status_code == 400
    assert resp.headers["Content-Type"].startswith("text/html")
    assert h3(resp) == "unable to read data from file"
    assert sessions(http, emulator) == {}  # Java refuses the first local header: nothing was received


def test_the_client_body_makes_one_prearchive_session_per_study(
    emulator: XnatEmulator, http: requests.Session, study: Study
) -> None:
    other = make_study(study.files[0].parent / "other", patient_name="S02", patient_id="S02_MR1",
                       series=((7, "DWI"),), instances=2)
    body = b"".join(zip_stream(plan_import(study.files[0].parent).entries))
    # Streamed, so with data descriptors, which Java takes only on DEFLATED entries (tests/oracles runs Java on it).
    assert {(loc.method, loc.flag & 0x8) for loc in locals_of(body)} == {(zipfile.ZIP_DEFLATED, 0x8)}

    resp = post_zip(http, emulator, body)

    assert resp.status_code == 200, resp.text
    assert len(resp.text.strip().splitlines()) == 2
    assert sessions(http, emulator) == {study.study_uid: stored_names(study.files),
                                        other.study_uid: stored_names(other.files)}


def test_an_entry_that_fails_its_crc_stops_the_import_and_keeps_the_earlier_files(
    emulator: XnatEmulator, http: requests.Session, study: Study
) -> None:
    plan = plan_import(study.files[0].parent)
    body = b"".join(zip_stream(plan.entries))
    fourth = locals_of(body)[3]
    assert fourth.name == plan.entries[3].name == study.series["2"][0].name
    corrupt = patched(body, fourth.data + 600, bytes([body[fourth.data + 600] ^ 0xFF]))  # CRC-32 no longer matches
    emulator.prearchive.clock = clock = ManualClock()

    resp = post_zip(http, emulator, corrupt)

    assert resp.status_code == 400
    assert h3(resp) == "unable to read data from file"
    # DicomZipImporter.call throws before xmlBuild: the session stays RECEIVING, unbuilt, despite the dest...
    assert [r["status"] for r in listing(http, f"{emulator.url}/data/prearchive/projects/P1")] == ["RECEIVING"]
    clock.advance(emulator.prearchive.receiving_idle)  # ... until the rebuilder's idle time has passed
    listing(http, f"{emulator.url}/data/prearchive/projects/P1")
    clock.advance(emulator.prearchive.build_seconds)
    assert sessions(http, emulator) == {study.study_uid: stored_names(study.series["1"])}
    assert not list(emulator.data_dir.glob("tmp/imports/.entry-*"))  # the broken entry's spool file is gone
