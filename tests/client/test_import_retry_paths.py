"""The client's import after an ambiguous failure, study by study, and its reading of archives.

After a 504 the client must wait until every study it sent has settled (matched by study UID, however many
prearchive rows a study makes), never take a session XNAT is still receiving for a finished one, and open a
zip or tar once per pass rather than once per member.
"""

from __future__ import annotations

import gzip
import json
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support import prearchive_rows as rows
from xnat_provider.client import XnatClient
from xnat_provider.client.errors import XnatServerError
from xnat_provider.client.import_body import plan_import, zip_stream
from xnat_provider.client.imports import ImportMemory, ImportSnapshot
from xnat_provider.testing import XnatEmulator
from xnat_provider.testing.samples import Study, make_study

IMPORT = "/data/services/import"


@pytest.fixture
def client(emulator: XnatEmulator) -> Iterator[XnatClient]:
    with XnatClient(emulator.url, "admin", "admin", backoff=0.01, retries=3) as c:
        yield c


def two_studies_one_split(root: Path) -> tuple[str, Study]:
    """Study A in two sessions (its files carry two patient IDs: two prearchive rows), and study B."""
    uid_a = "1.2.826.0.1.3680043.8.498.1001"
    make_study(root / "a1", patient_name="SA", patient_id="A1", series=((1, "T1"),), study_uid=uid_a)
    make_study(root / "a2", patient_name="SA", patient_id="A2", series=((2, "T2"),), study_uid=uid_a)
    b = make_study(root / "b", patient_name="SB", patient_id="B1")
    return uid_a, b


def test_504_waits_for_every_study_however_many_rows_one_makes(
    client: XnatClient, emulator: XnatEmulator, http: requests.Session, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Study A's two rows are listed at once, study B's only at the next look: the client must not count
    A's two rows as two studies and resend B (a second copy of B)."""
    _uid_a, b = two_studies_one_split(tmp_path / "src")
    real = client.list_prearchive
    calls: list[int] = []

    def listing(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        found = real(*args, **kwargs)
        if len(calls) <= 2:  # the snapshot, and the first look after the 504: B not listed yet
            found = [s for s in found if s.study_uid != b.study_uid]
        return found

    monkeypatch.setattr(client, "list_prearchive", listing)
    emulator.succeed_then_504("POST", IMPORT)

    refs = client.import_dicom(tmp_path / "src", "P1", settle_seconds=5)

    assert emulator.request_count("POST", IMPORT) == 1  # B was not sent again
    server_rows = rows(http, emulator)
    assert sorted(r["name"] for r in server_rows) == ["A1", "A2", "B1"]
    assert sorted(r.uri for r in refs) == sorted("/data" + r["url"] for r in server_rows)
    assert len(calls) >= 3  # it looked again for B


def test_504_does_not_take_a_session_still_receiving_for_an_arrived_one(
    client: XnatClient, emulator: XnatEmulator, http: requests.Session, study: Study, study_zip: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Right after the 504 the session is still RECEIVING; the client waits until XNAT has settled it."""
    real = client.list_prearchive
    calls: list[int] = []
    timers: list[threading.Timer] = []

    def listing(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:  # the first look after the POST: XNAT is still receiving the session
            [row] = rows(http, emulator)
            key = (row["project"], row["timestamp"], row["folderName"])
            emulator.hold_prearchive(*key, status="RECEIVING")
            timers.append(threading.Timer(1.0, emulator.release_prearchive, key))
            timers[0].start()
        return real(*args, **kwargs)

    monkeypatch.setattr(client, "list_prearchive", listing)
    emulator.succeed_then_504("POST", IMPORT)
    start = time.monotonic()

    refs = client.import_dicom(study_zip, "P1", settle_seconds=10)

    elapsed = time.monotonic() - start
    [row] = rows(http, emulator)  # as the import returned
    timers[0].join()
    assert elapsed >= 0.9  # it waited for the release
    assert [r.uri for r in refs] == ["/data" + row["url"]] and row["status"] == "READY"
    assert emulator.request_count("POST", IMPORT) == 1


def test_import_arrived_is_by_study_uid_and_the_snapshot_is_json_safe(
    client: XnatClient, emulator: XnatEmulator, tmp_path: Path
) -> None:
    uid_a, b = two_studies_one_split(tmp_path / "src")
    plan = plan_import(tmp_path / "src")
    before = ImportSnapshot.from_dict(json.loads(json.dumps(client.import_snapshot("P1", plan).to_dict())))

    assert client.import_arrived("P1", plan, before) == {}
    refs = client.import_dicom(tmp_path / "src", "P1", plan=plan, snapshot=before, studies=[uid_a])

    assert sorted(r.label for r in refs) == ["A1", "A2"]
    arrived = client.import_arrived("P1", plan, before)
    assert set(arrived) == {uid_a} and sorted(r.label for r in arrived[uid_a]) == ["A1", "A2"]
    assert b.study_uid not in arrived


# ---- archives are opened once per pass --------------------------------------------------------------------
@pytest.fixture
def opens(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How many times a zip or a tar at a given path was opened for reading."""
    counts: dict[str, int] = {}
    real_zip, real_tar = zipfile.ZipFile, tarfile.open

    class CountingZip(real_zip):  # type: ignore[misc, valid-type]
        def __init__(self, file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> None:
            if isinstance(file, (str, Path)) and mode == "r":
                counts[str(file)] = counts.get(str(file), 0) + 1
            super().__init__(file, mode, *args, **kwargs)

    def counting_tar(name: Any = None, *args: Any, **kwargs: Any) -> Any:
        if isinstance(name, (str, Path)):
            counts[str(name)] = counts.get(str(name), 0) + 1
        return real_tar(name, *args, **kwargs)

    monkeypatch.setattr(zipfile, "ZipFile", CountingZip)
    monkeypatch.setattr(tarfile, "open", counting_tar)
    return counts


def unzip(body: bytes, dest: Path) -> dict[str, bytes]:
    (dest / "sent.zip").write_bytes(body)
    with zipfile.ZipFile(dest / "sent.zip") as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


@pytest.mark.parametrize("kind", ["zip", "tar.gz", "tar"])
def test_an_archive_is_opened_once_to_plan_and_once_to_send(
    kind: str, tmp_path: Path, opens: dict[str, int]
) -> None:
    study = make_study(tmp_path / "dicom", instances=4)  # 8 files
    src = tmp_path / f"study.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(src, "w") as zf:
            for f in study.files:
                zf.write(f, f"s/{f.name}")
    else:
        with tarfile.open(src, "w:gz" if kind == "tar.gz" else "w") as tf:
            for f in study.files:
                tf.add(f, arcname=f"s/{f.name}")
    opens.clear()

    plan = plan_import(src)
    planned = opens.get(str(src), 0)
    opens.clear()
    sent = unzip(b"".join(zip_stream(plan.entries)), tmp_path)

    assert len(plan.entries) == 8 and plan.studies == [study.study_uid]
    assert planned <= 2  # tarfile.is_tarfile opens it too; never once per member
    assert opens.get(str(src), 0) == 1
    assert sent == {f"s/{f.name}": f.read_bytes() for f in study.files}
    # Outside a pass a member still opens on its own (the archive is closed after each pass).
    with plan.entries[3].open() as fh:
        assert fh.read() == sent[plan.entries[3].name]


def test_an_abandoned_request_body_does_not_close_the_next_ones_archive(tmp_path: Path) -> None:
    """A failed attempt's body generator may be closed after the next attempt began reading."""
    study = make_study(tmp_path / "dicom")
    src = tmp_path / "s.tar.gz"
    with tarfile.open(src, "w:gz") as tf:
        for f in study.files:
            tf.add(f, arcname=f.name)
    plan = plan_import(src)
    first = zip_stream(plan.entries)
    next(first)
    second = zip_stream(plan.entries)
    head = next(second)
    first.close()
    body = head + b"".join(second)
    assert sorted(unzip(body, tmp_path)) == sorted(f.name for f in study.files)


def test_a_tar_member_header_is_read_without_rewinding_the_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pydicom seeks back while reading a header; in a .tar.gz that must not restart decompression."""
    study = make_study(tmp_path / "dicom", instances=5)
    src = tmp_path / "s.tar.gz"
    with tarfile.open(src, "w:gz") as tf:
        for f in study.files:
            tf.add(f, arcname=f.name)
    rewinds: list[int] = []
    real_reader = gzip._GzipReader._rewind  # type: ignore[attr-defined]

    def rewind(self: Any) -> None:
        rewinds.append(1)
        real_reader(self)

    monkeypatch.setattr(gzip._GzipReader, "_rewind", rewind)  # type: ignore[attr-defined]
    plan = plan_import(src)
    b"".join(zip_stream(plan.entries))
    assert len(plan.entries) == 10
    assert rewinds == []


# ---- across calls: the memory a retried caller keeps ------------------------------------------------------
def test_a_call_with_an_earlier_calls_memory_sends_nothing_again(
    client: XnatClient, emulator: XnatEmulator, tmp_path: Path
) -> None:
    """What the first call saved (JSON, as a task state store keeps it) makes the second call find its work."""
    two_studies_one_split(tmp_path / "src")
    saved: list[str] = []
    memory = ImportMemory(save=lambda data: saved.append(json.dumps(data)))

    first = client.import_dicom_retry_safe([tmp_path / "src"], "P1", memory=memory)

    assert emulator.request_count("POST", IMPORT) == 1
    # Saved before the POST, and again once XNAT answered (its whole body arrived: nothing was cut off).
    assert [json.loads(x)[str(tmp_path / "src")].get("answered") for x in saved] == [None, True]
    again = client.import_dicom_retry_safe([tmp_path / "src"], "P1", memory=ImportMemory(json.loads(saved[-1])))
    assert emulator.request_count("POST", IMPORT) == 1  # found, not sent again
    assert sorted(s.ref.uri for s in again) == sorted(s.ref.uri for s in first)
    assert {s.status for s in again} == {"READY"} and all(s.to_dict()["study_uid"] for s in again)
    # Without the memory the same call is a new import.
    client.import_dicom_retry_safe([tmp_path / "src"], "P1")
    assert emulator.request_count("POST", IMPORT) == 2


def test_the_memory_is_saved_before_the_post(client: XnatClient, emulator: XnatEmulator, tmp_path: Path) -> None:
    """A try may die between the POST and its answer: the record of what it sends must already be saved."""
    two_studies_one_split(tmp_path / "src")
    posts_when_saved: list[int] = []
    memory = ImportMemory(save=lambda data: posts_when_saved.append(emulator.request_count("POST", IMPORT)))
    emulator.fail_next("POST", f"^{IMPORT}$", status=500)

    with pytest.raises(XnatServerError):
        client.import_dicom_retry_safe([tmp_path / "src"], "P1", memory=memory)

    assert posts_when_saved == [0, 1]  # before the POST, and once XNAT had answered (an error, but an answer)
    [record] = memory.data.values()
    assert len(record["studies"]) == 2 and set(record["labels"]) == set(record["studies"])
    # The refused POST did nothing: the next call with the memory sends both studies.
    sessions = client.import_dicom_retry_safe([tmp_path / "src"], "P1", memory=memory)
    assert sorted(s.ref.label for s in sessions) == ["A1", "A2", "B1"]
    assert emulator.request_count("POST", IMPORT) == 2


def test_session_is_the_deprecated_name_of_experiment(client: XnatClient, study_zip: Path) -> None:
    with pytest.warns(DeprecationWarning, match="'session' is deprecated, use 'experiment'"):
        plan = plan_import(study_zip, session="OLD_MR1")
    assert [label for _subject, label in plan.labels.values()] == ["OLD_MR1"]
    with pytest.warns(DeprecationWarning, match="import_dicom: the argument 'session'"):
        [ref] = client.import_dicom(study_zip, "P1", session="OLD_MR1", plan=plan)
    assert ref.label == "OLD_MR1"
    with pytest.raises(TypeError, match="both were given"):
        client.import_dicom(study_zip, "P1", session="A", experiment="B")
