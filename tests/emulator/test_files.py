"""Files: listings with digests, single-file GET with Content-Length and Range, uploads, zips, catalogs."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import zipfile
from pathlib import Path

import pydicom
import pytest
import requests

from tests.oracles.zips import seekable_zip, streamed_zip
from xnat_provider.testing import XnatEmulator
from xnat_provider.testing.samples import Study

OCTET = {"Content-Type": "application/octet-stream"}


@pytest.fixture
def archived(http, emulator: XnatEmulator, study_zip: Path) -> str:
    """The study imported straight into the archive; returns the experiment ID."""
    r = http.post(emulator.url + "/data/services/import", params={"dest": "/archive/projects/P1"},
                  data=study_zip.read_bytes(), headers={"Content-Type": "application/zip"})
    assert r.status_code == 200, r.text
    exps = http.get(emulator.url + "/data/projects/P1/experiments?format=json").json()["ResultSet"]["Result"]
    return exps[0]["ID"]


def files_of(http: requests.Session, url: str) -> list[dict]:
    r = http.get(url, params={"format": "json"})
    assert r.status_code == 200, r.text
    return r.json()["ResultSet"]["Result"]


def test_file_listing_has_size_and_md5_and_get_matches(http, emulator, archived, study: Study) -> None:
    rows = files_of(http, f"{emulator.url}/data/experiments/{archived}/scans/1/resources/DICOM/files")
    assert len(rows) == 3
    originals = {pydicom.dcmread(p).SOPInstanceUID: p.read_bytes() for p in study.series["1"]}
    for row in rows:
        assert row["URI"].startswith(f"/data/experiments/{archived}/scans/1/resources/")
        r = http.get(emulator.url + row["URI"])
        assert r.status_code == 200
        assert r.headers["Content-Length"] == row["Size"] == str(len(r.content))
        assert hashlib.md5(r.content).hexdigest() == row["digest"]
        assert r.content == originals[row["Name"].removesuffix(".dcm")]  # byte for byte
    assert http.get(emulator.url + rows[0]["URI"] + "x").status_code == 404


def test_range_requests_are_ignored_unless_switched_on(http, emulator, tmp_path) -> None:
    data = bytes(range(256)) * 40
    url = f"{emulator.url}/data/projects/P1/resources/R/files/blob.bin"
    assert http.put(url, data=data, headers=OCTET).status_code == 200
    assert not emulator.range_requests  # the default: the whole file with 200, the harder case for clients
    r = http.get(url, headers={"Range": "bytes=100-199"})
    assert r.status_code == 200 and r.content == data and "Accept-Ranges" not in r.headers

    emulator.range_requests = True  # as XNAT 1.8 does, through Restlet 1.1.10's RangeFilter
    r = http.get(url, headers={"Range": "bytes=100-199"})
    assert r.status_code == 206 and r.content == data[100:200]
    assert r.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    assert http.get(url, headers={"Range": "bytes=10000-"}).content == data[10000:]
    assert http.get(url, headers={"Range": "bytes=-5"}).content == data[-5:]
    bad = http.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert bad.status_code == 416 and bad.headers["Content-Range"] == f"bytes */{len(data)}"
    assert http.get(url, headers={"Range": "bytes=0-9,20-29"}).status_code == 501  # RangeFilter: one range only


def test_upload_duplicate_overwrite_and_delete(http, emulator) -> None:
    url = f"{emulator.url}/data/projects/P1/resources/R/files/dir/a.txt"
    assert http.put(url, data=b"one", headers=OCTET).text == ""
    dup = http.put(url, data=b"two", headers=OCTET)
    assert dup.status_code == 200  # not 409: XNAT answers 200 and stores nothing
    assert json.loads(dup.text) == {"duplicates": ["dir/a.txt"]}
    assert http.get(url).content == b"one"
    assert http.put(url, params={"overwrite": "true"}, data=b"two", headers=OCTET).status_code == 200
    assert http.get(url).content == b"two"
    row = files_of(http, f"{emulator.url}/data/projects/P1/resources/R/files")[0]
    assert row["digest"] == hashlib.md5(b"two").hexdigest() and row["Size"] == "3"
    assert http.delete(url).status_code == 200
    r = http.delete(url)
    assert r.status_code == 404 and "No matched files" in r.text


def test_empty_upload_answers_xnats_500_and_creates_nothing(http, emulator) -> None:
    """An empty in-body file: SecureResource.getFileWritersAndLoadParams throws a FileUploadException, which
    FileList.handlePost (PUT is handled as POST) answers with a 500 and its text; no resource is created."""
    base = f"{emulator.url}/data/projects/P1/resources/R/files"
    for method in ("PUT", "POST"):
        r = http.request(method, base + "/empty.txt", data=b"", headers=OCTET)
        assert r.status_code == 500, r.text
        assert ("In-body File posts must include the file directly as the body of the message. In this case, the "
                "request entity size is 0 but the media type is not application/zip (i.e. streaming compressed "
                "upload).") in r.text
    r = http.put(base + "/chunked.txt", data=iter([b"no ", b"length"]), headers=OCTET)  # size unknown: -1
    assert r.status_code == 500 and "request entity size is -1" in r.text
    r = http.put(base + "/untyped.txt", data=b"")  # no Content-Type: XNAT finds no file in the request at all
    assert r.status_code == 400 and "found request entity size of 0" in r.text
    assert files_of(http, f"{emulator.url}/data/projects/P1/resources") == []  # not even the resource
    # application/zip is exempt ("streaming compressed upload"): an empty body is stored as an empty file.
    assert http.put(base + "/empty.zip", data=b"", headers={"Content-Type": "application/zip"}).status_code == 200
    assert [(row["Name"], row["Size"]) for row in files_of(http, base)] == [("empty.zip", "0")]
    r = http.get(base + "/empty.zip")
    assert (r.status_code, r.headers["Content-Length"], r.content) == (200, "0", b"")


def test_upload_needs_a_name(http, emulator) -> None:
    base = f"{emulator.url}/data/projects/P1/resources/R/files"
    assert http.put(base + "/../escape.txt", data=b"x", headers=OCTET).status_code in (400, 404)
    assert not (emulator.data_dir / "archive/P1/resources/escape.txt").exists()


def test_pyxnat_style_post_with_inbody_and_multipart(http, emulator) -> None:
    base = f"{emulator.url}/data/projects/P1/resources/R/files"
    r = http.post(base + "/raw.txt", params={"inbody": "true", "format": "U", "content": "U"}, data=b"raw")
    assert r.status_code == 200
    r = http.post(base, files={"file": ("multi.txt", b"multi body")})
    assert r.status_code == 200
    names = {row["Name"]: row for row in files_of(http, base)}
    assert set(names) == {"raw.txt", "multi.txt"}
    assert names["raw.txt"]["file_format"] == "U"
    assert http.get(base + "/multi.txt").content == b"multi body"


def test_extract_zip_and_tgz_safely(http, emulator, tmp_path) -> None:
    base = f"{emulator.url}/data/projects/P1/resources/X/files"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a/one.txt", "1")
        zf.writestr("two.txt", "2")
    assert http.put(base + "/bundle.zip", params={"extract": "true"}, data=buf.getvalue(),
                    headers=OCTET).status_code == 200
    tbuf = io.BytesIO()
    with tarfile.open(fileobj=tbuf, mode="w:gz") as tf:
        info = tarfile.TarInfo("b/three.txt")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"3"))
    assert http.put(base + "/upload.tar.gz", params={"extract": "true"}, data=tbuf.getvalue(),
                    headers=OCTET).status_code == 200
    assert sorted(r["URI"].split("/files/")[1] for r in files_of(http, base)) == ["a/one.txt", "b/three.txt",
                                                                                   "two.txt"]
    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../../outside.txt", "x")
    r = http.put(base + "/evil.zip", params={"extract": "true"}, data=evil.getvalue(), headers=OCTET)
    assert r.status_code == 400
    assert not list(emulator.data_dir.rglob("outside.txt"))


def test_extract_unpacks_at_the_resource_root_whatever_folder_the_url_names(http, emulator) -> None:
    """CatalogUtils.storeCatalogEntry extracts into the catalog's own folder; the path after ``/files/`` is used only
    for a file stored as is. The extractor follows the file's name (``Format``, case-sensitive): .zip/.zar,
    .tar/.xar, .tgz/.tar.gz, and .gz for one gzipped file; a zip is read as ``ZipInputStream`` reads it."""
    base = f"{emulator.url}/data/projects/P1/resources/X/files"

    def paths() -> list[str]:
        return sorted(r["URI"].split("/files/")[1] for r in files_of(http, base))

    def put(rel: str, data: bytes) -> requests.Response:
        return http.put(f"{base}/{rel}", params={"extract": "true"}, data=data, headers=OCTET)

    assert put("wanted/folder/bundle.zip", seekable_zip([("a/one.txt", b"1"), ("two.txt", b"2")])).status_code == 200
    assert paths() == ["a/one.txt", "two.txt"]  # not wanted/folder/...
    # Multipart: the part's file name decides, and the URL's folder is ignored just the same.
    r = http.post(f"{base}/elsewhere", params={"extract": "true"},
                  files={"file": ("more.zip", seekable_zip([("three.txt", b"3")]))})
    assert r.status_code == 200 and "three.txt" in paths()
    tbuf = io.BytesIO()
    with tarfile.open(fileobj=tbuf, mode="w") as tf:
        info = tarfile.TarInfo("t/four.txt")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"4"))
    assert put("deep/x.xar", tbuf.getvalue()).status_code == 200 and "t/four.txt" in paths()
    assert put("deep/notes.txt.gz", gzip.compress(b"five")).status_code == 200 and "notes.txt" in paths()
    # A name XNAT does not unpack (the suffix is case-sensitive) is stored as is, where the URL says.
    assert put("kept/BUNDLE.ZIP", seekable_zip([("six.txt", b"6")])).status_code == 200
    assert "kept/BUNDLE.ZIP" in paths() and "six.txt" not in paths()
    # STORED entries with data descriptors (a zip streamed to a pipe): ZipInputStream throws, FileList answers 500,
    # and nothing of the archive is catalogued.
    r = put("streamed.zip", streamed_zip([("seven.txt", b"7"), ("eight.txt", b"8")]))
    assert r.status_code == 500 and "only DEFLATED entries can have EXT descriptor" in r.text
    assert paths() == ["a/one.txt", "kept/BUNDLE.ZIP", "notes.txt", "t/four.txt", "three.txt", "two.txt"]
    # Entries already there are duplicates (by their names from the root) unless overwrite=true.
    dup = put("again/bundle.zip", seekable_zip([("two.txt", b"changed")]))
    assert dup.status_code == 200 and json.loads(dup.text) == {"duplicates": ["two.txt"]}
    assert http.get(f"{base}/two.txt").content == b"2"


def test_zip_downloads_use_xnat_layout(http, emulator, archived) -> None:
    url = f"{emulator.url}/data/experiments/{archived}/scans/ALL/files?format=zip"
    r = http.get(url)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/zip"
    assert "Content-Length" not in r.headers  # streamed
    assert r.headers["Content-Disposition"] == 'attachment; filename="S01_MR1.zip"'
    names = zipfile.ZipFile(io.BytesIO(r.content)).namelist()
    assert len(names) == 6
    assert all(n.startswith(("S01_MR1/scans/1-T1/resources/DICOM/files/",
                             "S01_MR1/scans/2-T2/resources/DICOM/files/")) for n in names)
    by_type = zipfile.ZipFile(io.BytesIO(http.get(
        f"{emulator.url}/data/experiments/{archived}/scans/T2/files?format=zip").content)).namelist()
    assert len(by_type) == 3 and all("/2-T2/" in n for n in by_type)
    listed = zipfile.ZipFile(io.BytesIO(http.get(
        f"{emulator.url}/data/projects/P1/subjects/S01/experiments/S01_MR1/scans/1,2/resources/DICOM/files?format=zip",
        params={"structure": "simplified"}).content)).namelist()
    assert len(listed) == 6 and all("/resources/" not in n for n in listed)
    tgz = http.get(f"{emulator.url}/data/experiments/{archived}/scans/1/files?format=tar.gz")
    with tarfile.open(fileobj=io.BytesIO(tgz.content)) as tf:
        assert len(tf.getnames()) == 3
    missing = http.get(f"{emulator.url}/data/experiments/{archived}/scans/99/files?format=zip")
    assert missing.status_code == 404


def test_catalog_xml_and_refresh(http, emulator, archived) -> None:
    res = f"{emulator.url}/data/experiments/{archived}/scans/1/resources/DICOM"
    r = http.get(res, params={"format": "json"})  # XNAT answers the catalog whatever the format
    assert r.text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<cat:Catalog')
    assert r.text.count("<cat:entry ") == 3
    rows = files_of(http, res + "/files")
    victim = emulator.file_path(rows[0]["URI"])
    victim.write_bytes(b"changed behind XNAT's back")
    r = http.post(emulator.url + "/data/services/refresh/catalog",
                  params={"resource": f"/archive/experiments/{archived}/scans/1/resources/DICOM",
                          "options": "checksum"})
    assert r.status_code == 200
    row = next(x for x in files_of(http, res + "/files") if x["URI"] == rows[0]["URI"])
    assert row["digest"] == hashlib.md5(b"changed behind XNAT's back").hexdigest()


def test_folder_listing_and_glob(http, emulator) -> None:
    base = f"{emulator.url}/data/projects/P1/resources/R/files"
    for name in ("d/a.txt", "d/b.log", "e/c.txt"):
        http.put(f"{base}/{name}", data=b"x", headers=OCTET)
    folder = http.get(base + "/d/", params={"format": "json"}).json()["ResultSet"]["Result"]
    assert sorted(r["Name"] for r in folder) == ["a.txt", "b.log"]
    glob = http.get(base + "/*.txt", params={"format": "json"}).json()["ResultSet"]["Result"]
    assert sorted(r["URI"].split("/files/")[1] for r in glob) == ["d/a.txt", "e/c.txt"]


def test_dicomdump(http, emulator, archived, study: Study) -> None:
    r = http.get(emulator.url + "/data/services/dicomdump",
                 params={"src": f"/archive/projects/P1/experiments/{archived}/scans/2", "format": "json"})
    rows = r.json()["ResultSet"]["Result"]
    by_tag = {row["tag1"]: row for row in rows if not row["tag2"]}
    assert by_tag["(0010,0010)"]["value"] == "S01" and by_tag["(0010,0010)"]["vr"] == "PN"
    assert by_tag["(0008,103E)"]["value"] == "T2"
    only = http.get(emulator.url + "/data/services/dicomdump",
                    params={"src": f"/archive/projects/P1/experiments/{archived}", "field": "PatientID"})
    assert [row["value"] for row in only.json()["ResultSet"]["Result"]] == ["S01_MR1"]
    assert http.get(emulator.url + "/data/services/dicomdump").status_code == 400
    assert http.get(emulator.url + "/data/services/dicomdump", params={"src": "/elsewhere"}).status_code == 400
