"""The client's import path against the emulator: every input kind, both destinations, the import flags,
bad input caught before any byte moves, and the ambiguous failures that must never duplicate a session.

Each test checks what a user would check: what the server now holds (listed with a plain ``requests``
session, not through the client), the refs the call returned, and the error type and message.
"""

from __future__ import annotations

import logging
import os
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from pydicom.data import get_testdata_file

from tests.support import experiment_url, listing
from tests.support import prearchive_rows as rows
from xnat_provider.client import XnatBadInputError, XnatClient, XnatConflictError, XnatServerError
from xnat_provider.client.import_body import CHUNK, Entry, plan_import, zip_stream
from xnat_provider.testing import XnatEmulator
from xnat_provider.testing.clock import ManualClock
from xnat_provider.testing.samples import Study, make_study

IMPORT = "/data/services/import"
SECRET = "Pw-7f3a9c-import-secret"
# A few bytes that look like the start of a data set but end inside a sequence (pydicom raises OSError).
GARBAGE = b"\x08\x00\x18\x00SQ\x00\x00\xff\xff\xff\xff\x00\x00\x00"


# ---- helpers -----------------------------------------------------------------------------------------------
@pytest.fixture
def client(emulator: XnatEmulator) -> Iterator[XnatClient]:
    with XnatClient(emulator.url, "admin", "admin", backoff=0.01, retries=3) as c:
        yield c


def prearchive_files(http: requests.Session, emulator: XnatEmulator, uri: str) -> dict[str, set[str]]:
    """Scan id -> file names of a prearchive session, as the server lists them."""
    base = emulator.url + uri
    return {
        s["ID"]: {f["Name"] for f in listing(http, f"{base}/scans/{s['ID']}/resources/DICOM/files")}
        for s in listing(http, f"{base}/scans")
    }


def archive_files(http: requests.Session, emulator: XnatEmulator, project: str, label: str) -> dict[str, set[str]]:
    base = experiment_url(http, emulator.url, project, label)
    return {
        s["ID"]: {f["Name"] for f in listing(http, f"{base}/scans/{s['ID']}/resources/DICOM/files")}
        for s in listing(http, f"{base}/scans")
    }


def experiments(http: requests.Session, emulator: XnatEmulator, project: str = "P1") -> list[dict[str, str]]:
    return listing(http, f"{emulator.url}/data/projects/{project}/experiments")


def expected_files(study: Study) -> dict[str, set[str]]:
    """What the server should hold for a study: scan = series number, file = SOP Instance UID."""
    return {
        number: {f"{pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID}.dcm" for p in paths}
        for number, paths in study.series.items()
    }


def spy(emulator: XnatEmulator, method: str, path: str) -> list[dict[str, Any]]:
    """Record the headers and parameters of every request a route handles (the handler itself is unchanged)."""
    seen: list[dict[str, Any]] = []
    for route in emulator.router.routes:
        if method in route.methods and route.pattern.match(path):
            original = route.handler

            def recording(req: Any, original: Any = original) -> Any:
                seen.append({"headers": {k.lower(): v for k, v in req.headers.items()}, "query": dict(req.query)})
                return original(req)

            route.handler = recording
            return seen
    raise AssertionError(f"no route for {method} {path}")


def make_tar(files: list[Path], dest: Path, mode: str = "w") -> Path:
    with tarfile.open(dest, mode) as tf:
        for f in files:
            tf.add(f, arcname=f"study/{f.name}")
    return dest


# ---- every kind of input, to the prearchive --------------------------------------------------------------
def test_import_zip_to_prearchive(
    client: XnatClient, emulator: XnatEmulator, http: requests.Session, study: Study, study_zip: Path
) -> None:
    refs = client.import_dicom(study_zip, "P1")

    assert len(refs) == 1
    ref = refs[0]
    assert ref.in_prearchive and ref.project == "P1" and ref.label == "S01_MR1"
    [row] = rows(http, emulator)
    assert ref.uri == "/data" + row["url"]
    assert ref.timestamp == row["timestamp"]
    assert row["status"] == "READY"  # a dest makes XNAT build at once
    assert row["tag"] == study.study_uid and row["subject"] == "S01"
    assert prearchive_files(http, emulator, ref.uri) == expected_files(study)
    assert emulator.request_count("POST", IMPORT) == 1
    assert experiments(http, emulator) == []


@pytest.mark.parametrize("mode, suffix", [("w", ".tar"), ("w:gz", ".tar.gz")])
def test_import_tar_to_prearchive(
    client: XnatClient,
    emulator: XnatEmulator,
    http: requests.Session,
    study: Study,
    tmp_path: Path,
    mode: str,
    suffix: str,
) -> None:
    tar = make_tar(study.files, tmp_path / f"study{suffix}", mode)

    refs = client.import_dicom(tar, "P1")

    assert [r.label for r in refs] == ["S01_MR1"]
    [row] = rows(http, emulator)
    assert refs[0].uri == "/data" + row["url"] and row["status"] == "READY"
    assert prearchive_files(http, emulator, refs[0].uri) == expected_files(study)


def test_import_single_dicom_file(
    client: XnatClient, emulator: XnatEmulator, http: requests.Session, study: Study
) -> None:
    one = study.series["2"][0]

    refs = client.import_dicom(one, "P1")

    assert [r.label for r in refs] == ["S01_MR1"]
    sop = pydicom.dcmread(one, stop_before_pixels=True).SOPInstanceUID
    assert prearchive_files(http, emulator, refs[0].uri) == {"2": {f"{sop}.dcm"}}


def test_import_directory_is_streamed_without_a_temporary_copy(
    client: XnatClient,
    emulator: XnatEmulator,
    http: requests.Session,
    study: Study,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Any temporary file the client made would land in this empty folder.
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    directory = study.files[0].parent
    (directory / "nested").mkdir()
    moved = study.series["2"][0].rename(directory / "nested" / study.series["2"][0].name)
    study.series["2"][0] = moved
    before = sorted(p.relative_to(directory) for p in directory.rglob("*"))
    seen = spy(emulator, "POST", IMPORT)

    refs = client.import_dicom(directory, "P1")

    assert [r.label for r in refs] == ["S01_MR1"]
    assert prearchive_files(http, emulator, refs[0].uri) == expected_files(study)  # the whole body arrived
    [req] = seen
    assert req["headers"].get("transfer-encoding", "").lower() == "chunked"  # sent while it was produced
    assert "content-length" not in req["headers"]
    assert req["headers"]["content-type"] == "application/zip"
    assert list(scratch.iterdir()) == []  # no temporary zip
    assert sorted(p.relative_to(directory) for p in directory.rglob("*")) == before  # nothing added to the source


def test_zip_stream_holds_at_most_one_chunk(tmp_path: Path) -> None:
    """The body is produced piece by piece: no piece much bigger than one read, and it is a valid zip."""
    big = tmp_path / "big.bin"
    payload = bytes(range(256)) * (5 * CHUNK // 256 + 17)
    big.write_bytes(payload)
    small = tmp_path / "small.bin"
    small.write_bytes(b"x" * 100)
    entries = [
        Entry("a/big.bin", lambda: open(big, "rb"), big.stat().st_size, "1.2"),
        Entry("small.bin", lambda: open(small, "rb"), 100, "1.2"),
    ]

    pieces = list(zip_stream(entries))

    assert max(len(p) for p in pieces) <= CHUNK + 1024
    assert len(pieces) > 5
    out = tmp_path / "out.zip"
    out.write_bytes(b"".join(pieces))
    with zipfile.ZipFile(out) as zf:
        assert zf.testzip() is None
        assert zf.read("a/big.bin") == payload and zf.read("small.bin") == b"x" * 100


def test_multi_study_directory_gives_one_ref_per_study(
    client: XnatClient, emulator: XnatEmulator, http: requests.Session, tmp_path: Path
) -> None:
    src = tmp_path / "two"
    a = make_study(src / "a", patient_name="S01", patient_id="S01_MR1")
    b = make_study(src / "b", patient_name="S02", patient_id="S02_MR1", series=((5, "DWI"),), instances=2)

    refs = client.import_dicom(src, "P1")

    assert sorted(r.label for r in refs) == ["S01_MR1", "S02_MR1"]
    listed = {"/data" + r["url"]: r for r in rows(http, emulator)}
    assert {r.uri for r in refs} == set(listed)
    by_label = {r.label: r for r in refs}
    assert listed[by_label["S01_MR1"].uri]["tag"] == a.study_uid
    assert listed[by_label["S02_MR1"].uri]["tag"] == b.study_uid
    assert prearchive_files(http, emulator, by_label["S02_MR1"].uri) == expected_files(b)
    assert emulator.request_count("POST", IMPORT) == 1


def test_import_with_subject_and_experiment_labels(
    client: XnatClient, emulator: XnatEmulator, http: requests.Session, study_zip: Path
) -> None:
    refs = client.import_dicom(study_zip, "P1", subject="SUBJ_X", experiment="SESS_X")

    assert [r.label for r in refs] == ["SESS_X"]
    [row] = rows(http, emulator)
    assert row["subject"] == "SUBJ_X" and row["name"] == "SESS_X"


# ---- to the archive, and the flags -----------------------------------------------------------------------
def test_import_to_archive(
    client: XnatClient, emulator: XnatEmulator, http: requests.Session, study: Study, study_zip: Path
) -> None:
    refs = client.import_dicom(study_zip, "P1", destination="archive")

    assert len(refs) == 1
    ref = refs[0]
    assert not ref.in_prearchive
    assert (ref.project, ref.subject, ref.label) == ("P1", "S01", "S01_MR1")
    assert ref.uri == "/data/archive/projects/P1/subjects/S01/experiments/S01_MR1"
    [exp] = experiments(http, emulator)
    assert exp["label"] == "S01_MR1" and exp["subject_label"] == "S01"
    assert archive_files(http, emulator, "P1", "S01_MR1") == expected_files(study)
    assert rows(http, emulator) == []


@pytest.mark.parametrize("prearchive", ["manual", "auto-archive"])
def test_import_conflict_carries_xnat_reason_from_the_prearchive_log(
    client: XnatClient, emulator: XnatEmulator, http: requests.Session, tmp_path: Path, prearchive: str
) -> None:
    """XNAT answers a failed archive-destination import with 400 "unable to archive for the Prearchive session"
    and nothing else (DicomZipImporter.xmlBuild): the client finds the CONFLICT row of the import's studies and
    raises XnatConflictError with the reason from its log. XNAT stops at that study: a later study of the same
    import stays RECEIVING, unbuilt, and is built (and archived, in an auto-archive project) later.

    On a prearchive clock moved by hand: RECEIVING lasts only ``receiving_idle`` (0.5 s here), which a slow
    machine could let pass before the client (or the test) looks."""
    emulator.prearchive.clock = clock = ManualClock()
    emulator.add_project("PX", prearchive=prearchive)
    a = make_study(tmp_path / "src" / "a", patient_name="S01", patient_id="S01_MR1", series=((1, "T1"),),
                   instances=1, uid_seed="a")
    client.import_dicom(a.files[0].parent, "PX", destination="archive")
    make_study(tmp_path / "src" / "b", patient_name="S02", patient_id="S02_MR1", series=((1, "T1"),), instances=1)

    with pytest.raises(XnatConflictError) as err:
        client.import_dicom(tmp_path / "src", "PX", destination="archive")  # a (again) first, then b

    # Without overwrite the import refuses an existing session; an auto-archive row may merge, but the same file
    # is already there.
    reason = ("Session already exists, retry with overwrite enabled" if prearchive == "manual"
              else "Session already exists with matching files.")
    assert err.value.status == 400 and err.value.xnat_message == "unable to archive for the Prearchive session"
    assert f"XNAT says {reason!r}" in str(err.value) and "in CONFLICT" in str(err.value)
    assert "1 other session(s) of this import (S02_MR1 RECEIVING)" in str(err.value)
    statuses = {r["name"]: r["status"] for r in rows(http, emulator, "PX")}
    assert statuses == {"S01_MR1": "CONFLICT", "S02_MR1": "RECEIVING"}
    assert emulator.request_count("POST", IMPORT) == 2  # a conflict is not resent

    # Later, as XNAT's rebuilder would: S02_MR1 is built, and archived if the project auto-archives.
    clock.advance(emulator.prearchive.receiving_idle)  # quiet for long enough: built...
    assert {r["name"]: r["status"] for r in rows(http, emulator, "PX")}.get("S02_MR1") == "BUILDING"
    clock.advance(emulator.prearchive.build_seconds)  # ... and done at the next look
    if prearchive == "manual":
        assert {r["name"]: r["status"] for r in rows(http, emulator, "PX")}.get("S02_MR1") == "READY"
        assert [e["label"] for e in experiments(http, emulator, "PX")] == ["S01_MR1"]
    else:
        assert sorted(e["label"] for e in experiments(http, emulator, "PX")) == ["S01_MR1", "S02_MR1"]
        assert [r["name"] for r in rows(http, emulator, "PX")] == ["S01_MR1"]
    assert archive_files(http, emulator, "PX", "S01_MR1") == expected_files(a)


def test_import_failure_without_a_failed_row_stays_a_bad_input_error(
    client: XnatClient, emulator: XnatEmulator, http: requests.Session, study_zip: Path
) -> None:
    """The fixed text, but no row of the import in CONFLICT or ERROR to explain it: XNAT's own 400, said so."""
    emulator.fail_next("POST", IMPORT, status=400, message="unable to archive for the Prearchive session")
    with pytest.raises(XnatBadInputError) as err:
        client.import_dicom(study_zip, "P1", destination="archive")
    assert not isinstance(err.value, XnatConflictError)
    assert "No prearchive session of this import is in CONFLICT or ERROR" in str(err.value)


def test_import_to_archive_conflict_and_overwrite(
    client: XnatClient, emulator: XnatEmulator, http: requests.Session, tmp_path: Path
) -> None:
    first = make_study(tmp_path / "v1", series=((1, "T1"),), uid_seed="same-study")
    client.import_dicom(first.files[0].parent, "P1", destination="archive")

    # The same files again: XNAT refuses the merge; the data stays in the prearchive, in CONFLICT.
    with pytest.raises(XnatConflictError) as err:
        client.import_dicom(first.files[0].parent, "P1", destination="archive")
    assert "already exists" in str(err.value) and err.value.method == "POST"
    [row] = rows(http, emulator)
    assert row["status"] == "CONFLICT"

    # A new series of the same study: XNAT adds it to the row in CONFLICT (it joins a row of the study whatever
    # its status), whose files the archive already has: refused again, the reason named.
    second = make_study(tmp_path / "v2", series=((2, "T2"),), uid_seed="same-study")
    with pytest.raises(XnatConflictError, match="matching files") as err:
        client.import_dicom(second.files[0].parent, "P1", destination="archive", overwrite="append")
    [again] = rows(http, emulator)
    assert again["status"] == "CONFLICT" and again["url"] == row["url"] and again["url"] in str(err.value)

    # As the message says: archive that row with overwrite='append'; both series are then in the one session.
    client.archive("/data" + again["url"], overwrite="append")
    assert archive_files(http, emulator, "P1", "S01_MR1") == {**expected_files(first), **expected_files(second)}
    assert len(experiments(http, emulator)) == 1 and rows(http, emulator) == []


def test_import_overwrite_delete_merges_and_deletes_nothing(
    client: XnatClient, emulator: XnatEmulator, http: requests.Session, tmp_path: Path
) -> None:
    """``delete`` on the import service overrides XNAT's checks and merges; it replaces nothing. A new series
    under a scan number already used by another series is added under a new scan ID (correctScanID)."""
    old = make_study(tmp_path / "old", series=((1, "T1"),), instances=3, uid_seed="s")
    client.import_dicom(old.files[0].parent, "P1", destination="archive")
    new = make_study(tmp_path / "new", series=((1, "T1"),), instances=2, uid_seed="s2", study_uid=old.study_uid)

    client.import_dicom(new.files[0].parent, "P1", destination="archive", overwrite="delete")

    assert archive_files(http, emulator, "P1", "S01_MR1") == {"1": expected_files(old)["1"],
                                                              "1-MR1": expected_files(new)["1"]}
    assert rows(http, emulator) == []


def test_import_overwrite_modes_follow_the_import_service(
    client: XnatClient, emulator: XnatEmulator, http: requests.Session, tmp_path: Path
) -> None:
    """Importer.parseOverrideValue: no overwrite refuses any existing session, append merges with XNAT's checks
    (a different StudyInstanceUID or files already there are conflicts), delete merges past them."""
    first = make_study(tmp_path / "v1", series=((1, "T1"),), instances=2, uid_seed="s")
    client.import_dicom(first.files[0].parent, "P1", destination="archive")
    new_series = make_study(tmp_path / "v2", series=((2, "T2"),), instances=1, uid_seed="s")

    # Even a new series of the same study: without overwrite the import refuses the existing session.
    with pytest.raises(XnatConflictError, match="Session already exists, retry with overwrite enabled"):
        client.import_dicom(new_series.files[0].parent, "P1", destination="archive")
    assert [r["status"] for r in rows(http, emulator)] == ["CONFLICT"]

    # append: merged. The same files again with append: XNAT's file check refuses them.
    client.import_dicom(new_series.files[0].parent, "P1", destination="archive", overwrite="append")
    assert archive_files(http, emulator, "P1", "S01_MR1") == {**expected_files(first), **expected_files(new_series)}
    with pytest.raises(XnatConflictError, match="Session already exists with matching files"):
        client.import_dicom(first.files[0].parent, "P1", destination="archive", overwrite="append")

    # Another study under the same label: append keeps the UID check, delete overrides it.
    other = make_study(tmp_path / "v3", series=((3, "T3"),), instances=1, uid_seed="other")
    with pytest.raises(XnatConflictError, match="Invalid modification of session UID"):
        client.import_dicom(other.files[0].parent, "P1", destination="archive", overwrite="append")
    client.import_dicom(other.files[0].parent, "P1", destination="archive", overwrite="delete")
    assert archive_files(http, emulator, "P1", "S01_MR1") == {
        **expected_files(first), **expected_files(new_series), **expected_files(other)}
    assert len(experiments(http, emulator)) == 1


def test_import_flags_reach_xnat(
    client: XnatClient, emulator: XnatEmulator, http: requests.Session, study_zip: Path
) -> None:
    seen = spy(emulator, "POST", IMPORT)

    refs = client.import_dicom(study_zip, "P1", destination="archive", overwrite="append")

    assert [r.label for r in refs] == ["S01_MR1"]
    [req] = seen
    q = req["query"]
    assert q["dest"] == "/archive/projects/P1" and q["project"] == "P1" and q["overwrite"] == "append"
    assert "quarantine" not in q and "triggerPipelines" not in q
    assert q["import-handler"] == "DICOM-zip" and "Ignore-Unparsable" not in q
    assert [e["label"] for e in experiments(http, emulator)] == ["S01_MR1"]


@pytest.mark.parametrize("destination", ["archive", "prearchive"])
@pytest.mark.parametrize("flags", [{"quarantine": True}, {"trigger_pipelines": False},
                                   {"trigger_pipelines": True}])
def test_archive_flags_the_import_service_drops_are_refused_before_sending(
    client: XnatClient, emulator: XnatEmulator, http: requests.Session, study_zip: Path, destination: str,
    flags: dict[str, bool],
) -> None:
    """DicomZipImporter passes only overwrite_files on to the archiver: quarantine and triggerPipelines on an
    import would be dropped, silently. The client refuses them before any data moves, naming the way that works."""
    with pytest.raises(XnatBadInputError, match=r"drops them.*archive\(\.\.\., quarantine=True"):
        client.import_dicom(study_zip, "P1", destination=destination, **flags)  # type: ignore[arg-type]
    assert emulator.request_count("POST", IMPORT) == 0
    assert rows(http, emulator) == [] and experiments(http, emulator) == []


def test_the_emulator_ignores_quarantine_on_an_import_to_the_archive(
    emulator: XnatEmulator, http: requests.Session, study_zip: Path
) -> None:
    """What the client guards against: XNAT (and the emulator) archive the session active, flag or not."""
    r = http.post(f"{emulator.url}{IMPORT}", data=study_zip.read_bytes(), headers={"Content-Type": "application/zip"},
                  params={"import-handler": "DICOM-zip", "dest": "/archive/projects/P1", "quarantine": "true"})
    assert r.status_code == 200, r.text
    base = experiment_url(http, emulator.url, "P1", "S01_MR1")
    assert http.get(f"{base}/status").text == "active"


def test_prearchive_import_into_an_auto_archive_project_stays_ready(
    client: XnatClient, emulator: XnatEmulator, http: requests.Session, study_zip: Path
) -> None:
    """A /prearchive dest is built and left READY whatever the project's setting: DicomZipImporter.xmlBuild
    never runs the rebuild handler's execute(), the only place that queues the auto-archive."""
    emulator.add_project("AA", prearchive="auto-archive")

    refs = client.import_dicom(study_zip, "AA")

    [row] = rows(http, emulator, "AA")
    assert [(r.in_prearchive, r.uri) for r in refs] == [(True, "/data" + row["url"])]
    assert row["status"] == "READY" and row["autoarchive"] == "AutoArchive"
    time.sleep(emulator.prearchive.receiving_idle + 2 * emulator.prearchive.build_seconds)
    assert experiments(http, emulator, "AA") == [] and [r["status"] for r in rows(http, emulator, "AA")] == ["READY"]
    # The client's archive then archives it as any other.
    assert client.archive(refs[0]).uri == "/data/archive/projects/AA/subjects/S01/experiments/S01_MR1"


def test_import_arrived_takes_either_outcome_of_a_prearchive_import(
    client: XnatClient, emulator: XnatEmulator, http: requests.Session, study: Study, study_zip: Path
) -> None:
    """The rows of a prearchive import are its refs; when they are gone and the session is in the archive (a
    server that forwards them, or someone who archived them since) the archive session is."""

    plan = plan_import(study_zip)
    before = client.import_snapshot("P1", plan)
    [ref] = client.import_dicom(study_zip, "P1", plan=plan, snapshot=before)
    assert [r.uri for r in client.import_arrived("P1", plan, before)[study.study_uid]] == [ref.uri]
    client.archive(ref)
    [archived] = client.import_arrived("P1", plan, before)[study.study_uid]
    assert (archived.in_prearchive, archived.uri) == (
        False, "/data/archive/projects/P1/subjects/S01/experiments/S01_MR1")


# ---- unparsable files --------------------------------------------------------------------------------------
def test_ignore_unparsable_skips_non_dicom(
    client: XnatClient, emulator: XnatEmulator, http: requests.Session, study: Study
) -> None:
    directory = study.files[0].parent
    (directory / "notes.txt").write_text("not DICOM at all\n")
    (directory / "truncated.dcm").write_bytes(study.files[0].read_bytes()[:100])
    (directory / "garbage.dcm").write_bytes(GARBAGE)
    seen = spy(emulator, "POST", IMPORT)

    refs = client.import_dicom(directory, "P1", ignore_unparsable=True)

    assert [r.label for r in refs] == ["S01_MR1"]
    assert prearchive_files(http, emulator, refs[0].uri) == expected_files(study)
    assert seen[0]["query"]["Ignore-Unparsable"] == "true"


@pytest.mark.parametrize("bad", ["notes.txt", "garbage.dcm", "README.txt", "crayons.icc", "no_meta.dcm"])
def test_non_dicom_without_ignore_unparsable_is_refused_before_sending(
    client: XnatClient, emulator: XnatEmulator, http: requests.Session, study: Study, bad: str
) -> None:
    directory = study.files[0].parent
    if bad == "notes.txt":
        (directory / bad).write_text("not DICOM at all\n")
    elif bad == "garbage.dcm":
        (directory / bad).write_bytes(GARBAGE)
    else:  # pydicom ships these next to its DICOM samples (no_meta.dcm: a data set without SOP UIDs)
        (directory / bad).write_bytes(Path(get_testdata_file(bad)).read_bytes())

    with pytest.raises(XnatBadInputError) as err:
        client.import_dicom(directory, "P1")

    assert bad in str(err.value) and "ignore_unparsable" in str(err.value)
    assert emulator.request_count("POST", IMPORT) == 0
    assert rows(http, emulator) == []


def test_non_dicom_inside_a_zip_is_named(
    client: XnatClient, emulator: XnatEmulator, study: Study, tmp_path: Path
) -> None:
    z = tmp_path / "mixed.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for f in study.files:
            zf.write(f, f"dicom/{f.name}")
        zf.writestr("dicom/report.pdf", b"%PDF-1.4 not a dicom file")

    with pytest.raises(XnatBadInputError, match=r"dicom/report\.pdf"):
        client.import_dicom(z, "P1")
    assert emulator.request_count("POST", IMPORT) == 0


def test_dicom_without_sop_uids_is_refused_even_with_ignore_unparsable(
    client: XnatClient, emulator: XnatEmulator, study: Study
) -> None:
    ds = pydicom.dcmread(study.files[0])
    del ds.SOPInstanceUID
    ds.save_as(study.files[0])

    with pytest.raises(XnatBadInputError, match=study.files[0].name):
        client.import_dicom(study.files[0].parent, "P1", ignore_unparsable=True)
    assert emulator.request_count("POST", IMPORT) == 0


# ---- bad inputs, all caught before any data moves --------------------------------------------------------
def test_missing_file(client: XnatClient, emulator: XnatEmulator, tmp_path: Path) -> None:
    missing = tmp_path / "nope.zip"
    with pytest.raises(XnatBadInputError, match=r"nope\.zip"):
        client.import_dicom(missing, "P1")
    assert emulator.request_count("POST", IMPORT) == 0


def test_empty_directory(client: XnatClient, emulator: XnatEmulator, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(XnatBadInputError, match="No DICOM"):
        client.import_dicom(tmp_path / "empty", "P1")
    assert emulator.request_count("POST", IMPORT) == 0


def test_a_file_of_2_to_4_gib_is_refused_before_sending(client: XnatClient, emulator: XnatEmulator,
                                                        study: Study, tmp_path: Path) -> None:
    """XNAT's Java zip reader refuses such an entry in a streamed zip; below 2 GiB and above 4 GiB it reads it.
    (Sparse files: a real DICOM header, then zeros the file system does not store.)"""
    folder = tmp_path / "big"
    folder.mkdir()
    for name, size in (("three_gib.dcm", 3 << 30), ("small.dcm", 0), ("over_four_gib.dcm", (4 << 30) + (1 << 20))):
        (folder / name).write_bytes(study.files[0].read_bytes())
        if size:
            os.truncate(folder / name, size)
    with pytest.raises(XnatBadInputError, match=r"1 file\(s\) .* between 2 and 4 GiB \(three_gib\.dcm\)"):
        client.import_dicom(folder, "P1")
    assert emulator.request_count("POST", IMPORT) == 0
    (folder / "three_gib.dcm").unlink()
    assert len(plan_import(folder).entries) == 2  # the 4 GiB+ file goes (as ZIP64, which Java reads)


def test_unknown_project(client: XnatClient, emulator: XnatEmulator, http: requests.Session, study_zip: Path) -> None:
    with pytest.raises(XnatBadInputError) as err:
        client.import_dicom(study_zip, "NOPE")
    assert "NOPE" in str(err.value) and "does not exist" in str(err.value)
    assert emulator.request_count("POST", IMPORT) == 0
    # nothing routed elsewhere (XNAT would have used the DICOM headers, or Unassigned)
    assert listing(http, f"{emulator.url}/data/prearchive/projects") == []


@pytest.mark.parametrize(
    "kwargs, what",
    [
        ({"subject": "bad label!"}, "subject"),
        ({"experiment": "a/b"}, "session"),  # XNAT's parameter for the experiment's label is "session"
        ({"experiment": "Jürgen"}, "session"),
        ({"project": "P 1"}, "project"),
    ],
)
def test_labels_xnat_rejects(
    client: XnatClient, emulator: XnatEmulator, study_zip: Path, kwargs: dict[str, str], what: str
) -> None:
    args = {"project": "P1", **kwargs}
    with pytest.raises(XnatBadInputError) as err:
        client.import_dicom(study_zip, **args)
    [given] = kwargs.values()
    assert f"Invalid {what} label" in str(err.value) and repr(given) in str(err.value)
    assert emulator.request_count("POST", IMPORT) == 0


def test_label_from_dicom_comments_that_xnat_rejects(
    client: XnatClient, emulator: XnatEmulator, tmp_path: Path
) -> None:
    s = make_study(tmp_path / "c", comments="Subject: Jürgen Session: MR1")
    with pytest.raises(XnatBadInputError, match="Jürgen"):
        client.import_dicom(s.files[0].parent, "P1")
    assert emulator.request_count("POST", IMPORT) == 0


@pytest.mark.parametrize(
    "kwargs", [{"destination": "archives"}, {"destination": "/archive/projects/P1"}, {"overwrite": "yes"}]
)
def test_bad_destination_or_overwrite(
    client: XnatClient, emulator: XnatEmulator, study_zip: Path, kwargs: dict[str, str]
) -> None:
    with pytest.raises(XnatBadInputError, match=repr(next(iter(kwargs.values())))):
        client.import_dicom(study_zip, "P1", **kwargs)
    assert emulator.request_count("POST", IMPORT) == 0


# ---- ambiguous failures: never a duplicate ---------------------------------------------------------------
def test_504_after_import_took_effect_gives_one_session(
    client: XnatClient, emulator: XnatEmulator, http: requests.Session, study: Study, study_zip: Path
) -> None:
    emulator.succeed_then_504("POST", IMPORT)

    refs = client.import_dicom(study_zip, "P1", settle_seconds=5)

    [row] = rows(http, emulator)
    assert [r.uri for r in refs] == ["/data" + row["url"]]
    assert refs[0].in_prearchive and refs[0].label == "S01_MR1" and refs[0].timestamp == row["timestamp"]
    assert emulator.request_count("POST", IMPORT) == 1  # not resent
    assert prearchive_files(http, emulator, refs[0].uri) == expected_files(study)


def test_504_after_a_study_sent_again_lands_in_its_row(
    client: XnatClient, emulator: XnatEmulator, http: requests.Session, study_zip: Path
) -> None:
    """XNAT adds a study sent again to its existing row (``eitherGetOrCreateSession``: every status is
    interruptable), so after a 504 the client sees no new row: it sends again, which lands in the same row. One
    row, holding the study once."""
    [earlier] = client.import_dicom(study_zip, "P1")
    emulator.succeed_then_504("POST", IMPORT)

    refs = client.import_dicom(study_zip, "P1", settle_seconds=1)

    assert [r.uri for r in refs] == [earlier.uri]
    assert [("/data" + r["url"], r["status"]) for r in rows(http, emulator)] == [(earlier.uri, "READY")]
    assert emulator.request_count("POST", IMPORT) == 3


def test_504_after_multi_study_import_returns_every_study(
    client: XnatClient, emulator: XnatEmulator, http: requests.Session, tmp_path: Path
) -> None:
    make_study(tmp_path / "two" / "a", patient_name="S01", patient_id="S01_MR1")
    make_study(tmp_path / "two" / "b", patient_name="S02", patient_id="S02_MR1")
    emulator.succeed_then_504("POST", IMPORT)

    refs = client.import_dicom(tmp_path / "two", "P1", settle_seconds=5)

    assert sorted(r.label for r in refs) == ["S01_MR1", "S02_MR1"]
    assert {r.uri for r in refs} == {"/data" + r["url"] for r in rows(http, emulator)}
    assert len(rows(http, emulator)) == 2
    assert emulator.request_count("POST", IMPORT) == 1


def test_504_after_import_to_archive_took_effect(
    client: XnatClient, emulator: XnatEmulator, http: requests.Session, study: Study, study_zip: Path
) -> None:
    emulator.succeed_then_504("POST", IMPORT)

    refs = client.import_dicom(study_zip, "P1", destination="archive", settle_seconds=5)

    assert [r.uri for r in refs] == ["/data/archive/projects/P1/subjects/S01/experiments/S01_MR1"]
    assert [e["label"] for e in experiments(http, emulator)] == ["S01_MR1"]
    assert rows(http, emulator) == []  # not imported a second time (that would sit in CONFLICT)
    assert emulator.request_count("POST", IMPORT) == 1
    assert archive_files(http, emulator, "P1", "S01_MR1") == expected_files(study)


def test_504_after_an_import_merged_into_an_existing_session(
    client: XnatClient, emulator: XnatEmulator, http: requests.Session, tmp_path: Path
) -> None:
    """The label existed before: the client tells this import's effect by the session's contents."""
    first = make_study(tmp_path / "v1", series=((1, "T1"),), uid_seed="s")
    client.import_dicom(first.files[0].parent, "P1", destination="archive")
    second = make_study(tmp_path / "v2", series=((2, "T2"),), uid_seed="s")
    emulator.succeed_then_504("POST", IMPORT)

    refs = client.import_dicom(second.files[0].parent, "P1", destination="archive", overwrite="append",
                               settle_seconds=5)

    assert [r.uri for r in refs] == ["/data/archive/projects/P1/subjects/S01/experiments/S01_MR1"]
    assert emulator.request_count("POST", IMPORT) == 2  # the first import, and this one once
    assert archive_files(http, emulator, "P1", "S01_MR1") == {**expected_files(first), **expected_files(second)}
    assert rows(http, emulator) == []  # no second copy left in CONFLICT
    assert len(experiments(http, emulator)) == 1


def test_504_after_import_to_an_auto_archive_project(
    client: XnatClient, emulator: XnatEmulator, http: requests.Session, study_zip: Path
) -> None:
    emulator.add_project("AA", prearchive="auto-archive")
    emulator.succeed_then_504("POST", IMPORT)

    refs = client.import_dicom(study_zip, "AA", settle_seconds=5)

    [row] = rows(http, emulator, "AA")  # built, READY, not archived (a /prearchive dest)
    assert [(r.in_prearchive, r.uri) for r in refs] == [(True, "/data" + row["url"])] and row["status"] == "READY"
    assert emulator.request_count("POST", IMPORT) == 1
    assert experiments(http, emulator, "AA") == []


def test_503_before_import_took_effect_is_resent_once(
    client: XnatClient, emulator: XnatEmulator, http: requests.Session, study: Study, study_zip: Path
) -> None:
    emulator.fail_next("POST", IMPORT, status=503)

    refs = client.import_dicom(study_zip, "P1", settle_seconds=0.1)

    [row] = rows(http, emulator)
    assert [r.uri for r in refs] == ["/data" + row["url"]]
    assert emulator.request_count("POST", IMPORT) == 2
    assert prearchive_files(http, emulator, refs[0].uri) == expected_files(study)


def test_503_before_import_to_archive_is_resent_once(
    client: XnatClient, emulator: XnatEmulator, http: requests.Session, study_zip: Path
) -> None:
    emulator.fail_next("POST", IMPORT, status=503)

    refs = client.import_dicom(study_zip, "P1", destination="archive", settle_seconds=0.1)

    assert [r.label for r in refs] == ["S01_MR1"] and not refs[0].in_prearchive
    assert [e["label"] for e in experiments(http, emulator)] == ["S01_MR1"]
    assert emulator.request_count("POST", IMPORT) == 2


def test_persistent_503_gives_up_with_a_server_error(
    emulator: XnatEmulator, http: requests.Session, study_zip: Path
) -> None:
    emulator.fail_next("POST", IMPORT, status=503, count=10)
    with XnatClient(emulator.url, "admin", "admin", backoff=0.01, retries=2) as client:
        with pytest.raises(XnatServerError) as err:
            client.import_dicom(study_zip, "P1", settle_seconds=0.1)
    assert err.value.status == 503 and IMPORT in str(err.value)
    assert emulator.request_count("POST", IMPORT) == 2
    assert rows(http, emulator) == []


def test_error_page_with_200_is_an_error(
    client: XnatClient, emulator: XnatEmulator, http: requests.Session, study_zip: Path
) -> None:
    emulator.error_page_200("POST", IMPORT, message="Something broke in the importer")
    with pytest.raises(XnatServerError, match="Something broke in the importer"):
        client.import_dicom(study_zip, "P1", settle_seconds=0.1)
    assert rows(http, emulator) == []


# ---- auth and secrets ------------------------------------------------------------------------------------
def test_import_survives_session_expiry_with_one_relogin(
    client: XnatClient, emulator: XnatEmulator, http: requests.Session, study_zip: Path
) -> None:
    client.import_dicom(study_zip, "P1")
    assert client.transport.login_attempts == 1
    emulator.expire_sessions()

    refs = client.import_dicom(study_zip, "P1")

    assert client.transport.login_attempts == 2
    assert len(refs) == 1 and len(rows(http, emulator)) == 1  # the study sent again joined its row


def test_no_secret_in_logs_or_errors(
    emulator: XnatEmulator, study_zip: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    emulator.add_user("ops", SECRET, admin=True)
    caplog.set_level(logging.DEBUG)
    errors: list[str] = []
    with XnatClient(emulator.url, "ops", SECRET, backoff=0.01, retries=3) as client:
        client.import_dicom(study_zip, "P1")
        sid = client.transport.session_id
        assert sid
        emulator.succeed_then_504("POST", IMPORT)
        client.import_dicom(study_zip, "P1", settle_seconds=5)
        emulator.fail_next("POST", IMPORT, status=503)
        client.import_dicom(study_zip, "P1", destination="archive", settle_seconds=0.1)
        for call in (
            lambda: client.import_dicom(tmp_path / "missing", "P1"),
            lambda: client.import_dicom(study_zip, "NOPE"),
            lambda: client.import_dicom(study_zip, "P1", destination="archive"),
        ):
            with pytest.raises(Exception) as err:
                call()
            errors.append(f"{err.value!s} {err.value!r}")
    text = caplog.text + "\n".join(errors)
    assert "POST /data/services/import" in caplog.text  # the debug log is there, redacted
    assert SECRET not in text and sid not in text
