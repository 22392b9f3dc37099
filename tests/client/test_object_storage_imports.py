"""Imports from object storage: a folder, zip, tar or file in an ``ObjectStoragePath``, streamed into the import
body, against the emulator over HTTP; the checks that run before sending still run before any request."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest
import requests
from airflow.sdk import ObjectStoragePath

from tests import object_storage
from xnat_provider.client import XnatBadInputError, XnatClient
from xnat_provider.testing import XnatEmulator
from xnat_provider.testing.samples import Study, make_study, zip_files

USER, PASSWORD = "ines", "1mp0rt-fr0m-st0re!"
memory_fs, blob_fs = object_storage.memory_fs, object_storage.blob_fs  # the stores' fixtures


@pytest.fixture(params=["memory", "blob"])
def store(request: pytest.FixtureRequest) -> Any:
    fs = request.getfixturevalue(f"{request.param}_fs")
    fs.url = lambda key: f"{request.param}://bucket/{key}"  # type: ignore[attr-defined]
    return fs


def archived_files(http: requests.Session, emulator: XnatEmulator, label: str) -> dict[str, str]:
    """{file name: digest} of every DICOM file of an archived session, over plain HTTP."""
    exp = http.get(f"{emulator.url}/data/projects/P1/experiments/{label}", params={"format": "json"}).json()
    eid = exp["items"][0]["data_fields"]["ID"]
    out = {}
    for scan in http.get(f"{emulator.url}/data/experiments/{eid}/scans?format=json").json()["ResultSet"]["Result"]:
        rows = http.get(f"{emulator.url}/data/experiments/{eid}/scans/{scan['ID']}/resources/DICOM/files",
                        params={"format": "json"}).json()["ResultSet"]["Result"]
        out.update({r["Name"]: r["digest"] for r in rows})
    return out


def digests(study: Study) -> dict[str, str]:
    import pydicom

    return {f"{pydicom.dcmread(p).SOPInstanceUID}.dcm": hashlib.md5(p.read_bytes()).hexdigest() for p in study.files}


def tgz(study: Study) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for p in study.files:
            tf.add(p, arcname=f"study/{p.name}")
    return buf.getvalue()


@pytest.mark.parametrize("form", ["folder", "zip", "tgz", "file"])
def test_import_from_storage_reaches_the_archive_byte_for_byte(client: XnatClient, http: requests.Session,
                                                              emulator: XnatEmulator, store: Any, tmp_path: Path,
                                                              form: str) -> None:
    study = make_study(tmp_path / "s", patient_name="SUBJ040", patient_id="SUBJ040_MR1",
                       series=((1, "T1"), (2, "T2")), instances=2)
    if form == "folder":
        for p in study.files:
            store.pipe_file(f"bucket/in/study/{p.parent.name}/{p.name}", p.read_bytes())
        key = "in/study"
    elif form == "zip":
        store.pipe_file("bucket/in/study.zip", zip_files(study.files, tmp_path / "s.zip").read_bytes())
        key = "in/study.zip"
    elif form == "tgz":
        store.pipe_file("bucket/in/study.tgz", tgz(study))
        key = "in/study.tgz"
    else:
        store.pipe_file("bucket/in/one.dcm", study.files[0].read_bytes())
        key = "in/one.dcm"
    refs = client.import_dicom(ObjectStoragePath(store.url(key)), "P1", destination="archive")
    assert [r.label for r in refs] == ["SUBJ040_MR1"]
    expected = digests(study)
    if form == "file":
        expected = dict([next((k, v) for k, v in expected.items()
                              if v == hashlib.md5(study.files[0].read_bytes()).hexdigest())])
    assert archived_files(http, emulator, "SUBJ040_MR1") == expected


@pytest.mark.parametrize(("setup", "message"), [
    ({}, r"Nothing to import: .*bucket/in does not exist"),
    ({"bucket/in/notes.txt": b"not dicom"}, r"Not DICOM \(or no SOP UIDs\) in .*bucket/in: notes\.txt"),
    ({"bucket/in/broken.zip": b"PK\x03\x04 truncated"}, r"Not DICOM \(or no SOP UIDs\) in .*bucket/in: broken\.zip"),
])
def test_bad_import_source_is_refused_before_any_request(client: XnatClient, emulator: XnatEmulator, store: Any,
                                                         setup: dict, message: str) -> None:
    for key, data in setup.items():
        store.pipe_file(key, data)
    before = emulator.request_count()
    with pytest.raises(XnatBadInputError, match=message):
        client.import_dicom(ObjectStoragePath(store.url("in")), "P1")
    assert emulator.request_count() == before


def test_a_file_of_2_to_4_gib_in_storage_is_refused_before_sending(client: XnatClient, emulator: XnatEmulator,
                                                                    blob_fs: Any, tmp_path: Path) -> None:
    """XNAT's zip reader refuses a streamed entry of 2 to 4 GiB: such a file is refused from its size in the
    store's listing (the file here is sparse: a real DICOM header, then 3 GiB of nothing on disk)."""
    study = make_study(tmp_path / "s", patient_name="SUBJ041", patient_id="SUBJ041_MR1", instances=1)
    blob_fs.pipe_file("bucket/in/ok.dcm", study.files[0].read_bytes())
    big = blob_fs.local("bucket/in/huge.dcm")
    big.write_bytes(study.files[1].read_bytes())
    os.truncate(big, 3 << 30)
    before = emulator.request_count()
    with pytest.raises(XnatBadInputError, match=r"1 file\(s\) in .*bucket/in between 2 and 4 GiB \(huge\.dcm\)"):
        client.import_dicom(ObjectStoragePath("blob://bucket/in"), "P1")
    assert emulator.request_count() == before
