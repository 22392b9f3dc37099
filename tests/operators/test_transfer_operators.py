"""``XnatListScansOperator``, ``XnatDownloadScanOperator`` and ``XnatUploadResourceOperator`` called directly:
every selection and option, checked on the server's catalog and on disk."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.airflow_helpers import context
from tests.operators.conftest import Server
from xnat_provider.client.errors import (
    XnatBadInputError,
    XnatConflictError,
    XnatNotFoundError,
    XnatTransferError,
)
from xnat_provider.links import XCOM_KEY
from xnat_provider.operators.transfers import (
    MANIFEST_NAME,
    XnatDownloadScanOperator,
    XnatListScansOperator,
    XnatUploadResourceOperator,
)

EXP = "/data/projects/P1/experiments/S01_MR1"
LONG = "/data/projects/P1/subjects/S01/experiments/S01_MR1"  # XNAT routes scans and assessors here or by ID
FILE_GETS = r"/resources/[^/]+/files/.+"


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def execute(op: Any) -> tuple[Any, dict[str, Any]]:
    ctx = context()
    return op.execute(ctx), ctx


# ---- list scans ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("scans", "expected"), [
    ("ALL", ["1", "2"]),
    (["2"], ["2"]),
    (["T1"], ["1"]),
    (["T1", "2"], ["1", "2"]),
    ("re:T.*", ["1", "2"]),
    ("re:T2", ["2"]),
    ("re:DWI.*", []),
])
def test_list_scans(xnat_conn, server: Server, archived, scans, expected) -> None:
    assert sorted(s["type"] for s in server.scans(archived)) == ["T1", "T2"]
    result, ctx = execute(XnatListScansOperator(task_id="list", project="P1", experiment=archived, scans=scans))
    assert result == expected
    assert ctx["ti"].pushed[XCOM_KEY] == f"{server.url}/data/projects/P1/experiments/S01_MR1?format=html"


def test_scans_rendered_as_text(xnat_conn, archived, tmp_path) -> None:
    """A templated ``scans`` that rendered to the text of a list is read as that list."""
    result, _ = execute(XnatListScansOperator(task_id="list", project="P1", experiment=archived, scans='["T2"]'))
    assert result == ["2"]
    result, _ = download(tmp_path / "out", scans="['1']")
    assert result["files"] == 3 and sorted(p.parent.parent.name for p in (tmp_path / "out").rglob("*.dcm")) == ["1"] * 3


def test_list_scans_of_a_missing_scan_or_session(xnat_conn, archived) -> None:
    with pytest.raises(XnatNotFoundError, match="9"):
        execute(XnatListScansOperator(task_id="list", project="P1", experiment=archived, scans=["9"]))
    with pytest.raises(XnatNotFoundError):
        execute(XnatListScansOperator(task_id="list", project="P1", experiment="NOPE"))


# ---- download --------------------------------------------------------------------------------------------
def download(dest: Path, **kwargs: Any) -> tuple[dict, dict]:
    return execute(XnatDownloadScanOperator(task_id="download", project="P1", experiment="S01_MR1", dest=str(dest),
                                            **kwargs))


def check_on_disk(server: Server, dest: Path, scans: list[str], resource: str = "DICOM") -> None:
    """Every file the catalog lists for these scans is on disk with the catalog's MD5, and nothing else."""
    expected = {}
    for scan in scans:
        for f in server.scan_files("S01_MR1", scan, resource=resource):
            expected[f"{scan}/{resource}/{f['Name']}"] = f["digest"]
    on_disk = {p.relative_to(dest).as_posix(): md5(p) for p in dest.rglob("*") if p.is_file()
               and not p.name.startswith(".")}
    assert on_disk == expected


@pytest.mark.parametrize(("kwargs", "scans"), [
    ({}, ["1", "2"]),
    ({"scans": "ALL"}, ["1", "2"]),
    ({"scans": ["1"]}, ["1"]),
    ({"scans": ["T2"]}, ["2"]),
    ({"scans": "re:T[12]"}, ["1", "2"]),
    ({"scan": "2"}, ["2"]),
    ({"scan": "T1"}, ["1"]),
])
def test_download_scans(xnat_conn, server: Server, archived, tmp_path, kwargs, scans) -> None:
    dest = tmp_path / "out"
    result, ctx = download(dest, **kwargs)
    assert result["files"] == 3 * len(scans) and result["transferred"] == 3 * len(scans) and result["skipped"] == 0
    assert result["resource"] == "DICOM" and result["dest"] == str(dest)
    check_on_disk(server, dest, scans)
    manifest = json.loads(Path(result["manifest"]).read_text())
    assert Path(result["manifest"]).name == (f".xnat-manifest-{kwargs['scan']}.json" if "scan" in kwargs
                                             else MANIFEST_NAME)
    assert sorted(Path(f["path"]).name for f in manifest["files"]) == sorted(
        f["Name"] for s in scans for f in server.scan_files("S01_MR1", s))
    assert all(md5(Path(f["path"])) == f["md5"] for f in manifest["files"])
    assert result["bytes"] == sum(Path(f["path"]).stat().st_size for f in manifest["files"])
    assert ctx["ti"].pushed[XCOM_KEY].endswith("/data/projects/P1/experiments/S01_MR1?format=html")


def test_a_rerun_skips_what_is_there_and_finishes_what_is_not(xnat_conn, server: Server, archived,
                                                               tmp_path) -> None:
    emu = xnat_conn
    dest = tmp_path / "out"
    download(dest, scans=["1", "2"])
    gets = emu.request_count("GET", FILE_GETS)
    again, _ = download(dest, scans=["1", "2"])
    assert (again["files"], again["transferred"], again["skipped"]) == (6, 0, 6)
    assert emu.request_count("GET", FILE_GETS) == gets  # nothing downloaded again
    # One file lost and one damaged on disk: only those two are fetched again.
    files = sorted((dest / "1" / "DICOM").iterdir())
    files[0].unlink()
    files[1].write_bytes(b"damaged")
    third, _ = download(dest, scans=["1", "2"])
    assert (third["transferred"], third["skipped"]) == (2, 4)
    assert emu.request_count("GET", FILE_GETS) == gets + 2
    check_on_disk(server, dest, ["1", "2"])


def test_download_another_resource(xnat_conn, server: Server, archived, client, tmp_path) -> None:
    nifti = tmp_path / "t1.nii"
    nifti.write_bytes(b"\x5c\x01" + b"\0" * 346)
    client.upload(nifti, f"{LONG}/scans/1", "NIFTI")
    dest = tmp_path / "out"
    result, _ = download(dest, resource="NIFTI")  # scan 2 has no NIFTI resource: nothing from it
    assert (result["files"], result["resource"]) == (1, "NIFTI")
    assert [p.relative_to(dest).as_posix() for p in dest.rglob("*.nii")] == ["1/NIFTI/t1.nii"]
    assert md5(dest / "1" / "NIFTI" / "t1.nii") == md5(nifti)


def test_a_damaged_file_on_the_server_is_a_transfer_error(xnat_conn, server: Server, archived, tmp_path) -> None:
    uri = server.scan_files("S01_MR1", "1")[0]["URI"]
    xnat_conn.corrupt_file(uri)
    with pytest.raises(XnatTransferError, match="MD5"):
        download(tmp_path / "out", scans=["1"])
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file() and p.name.endswith(".dcm")
                and md5(p) != next(f["digest"] for f in server.scan_files("S01_MR1", "1") if f["Name"] == p.name)]


def test_download_bad_input(xnat_conn, archived, tmp_path) -> None:
    with pytest.raises(XnatBadInputError, match="either scan or scans"):
        XnatDownloadScanOperator(task_id="d", project="P1", experiment="S01_MR1", dest=str(tmp_path), scan="1",
                                 scans=["2"])
    with pytest.raises(XnatNotFoundError):
        download(tmp_path / "out", scans=["T9"])
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.dcm"))


# ---- upload ----------------------------------------------------------------------------------------------
@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    src = tmp_path / "results"
    (src / "sub").mkdir(parents=True)
    (src / "report.json").write_text('{"ok": true}')
    (src / "sub" / "table.csv").write_text("a,b\n1,2\n")
    return src


def upload(source: Path, **kwargs: Any) -> tuple[dict, dict]:
    kwargs.setdefault("resource", "RESULTS")
    return execute(XnatUploadResourceOperator(task_id="upload", source=str(source), project="P1", **kwargs))


def catalog(server: Server, path: str, resource: str = "RESULTS") -> dict[str, str]:
    return {f["URI"].split("/files/", 1)[1]: f["digest"] for f in server.files(f"{path}/resources/{resource}")}


@pytest.fixture
def assessor(archived, http, server: Server) -> str:
    resp = http.put(f"{server.url}{LONG}/assessors/QC1", params={"xsiType": "xnat:qcAssessmentData"})
    resp.raise_for_status()
    return "QC1"


@pytest.mark.parametrize(("level", "kwargs", "path"), [
    ("project", {}, "/data/projects/P1"),
    ("subject", {"subject": "S01"}, "/data/projects/P1/subjects/S01"),
    ("experiment", {"experiment": "S01_MR1"}, EXP),
    ("experiment", {"subject": "S01", "experiment": "S01_MR1"}, EXP),
    ("scan", {"experiment": "S01_MR1", "scan": "2"}, f"{LONG}/scans/2"),
    ("scan", {"subject": "S01", "experiment": "S01_MR1", "scan": "2"}, f"{LONG}/scans/2"),
    ("assessor", {"experiment": "S01_MR1", "assessor": "QC1"}, f"{LONG}/assessors/QC1"),
    ("assessor", {"subject": "S01", "experiment": "S01_MR1", "assessor": "QC1"}, f"{LONG}/assessors/QC1"),
])
def test_upload_at_each_level(xnat_conn, server: Server, assessor, results_dir, level, kwargs, path) -> None:
    result, ctx = upload(results_dir, format="JSON", content="STATS", **kwargs)
    assert (result["level"], result["files"], result["transferred"], result["skipped"]) == (level, 2, 2, 0)
    assert sorted(result["paths"]) == ["report.json", "sub/table.csv"]
    assert catalog(server, path) == {"report.json": md5(results_dir / "report.json"),
                                     "sub/table.csv": md5(results_dir / "sub" / "table.csv")}
    listed = {r["label"]: r for r in
              server.http.get(f"{server.url}{path}/resources", params={"format": "json"}).json()["ResultSet"]["Result"]}
    assert (listed["RESULTS"]["format"], listed["RESULTS"]["content"]) == ("JSON", "STATS")
    assert (XCOM_KEY in ctx["ti"].pushed) == ("experiment" in kwargs)
    if level in ("scan", "assessor"):  # by the subject given, or by the experiment's ID: routes XNAT has
        by_id = f"/data/experiments/{server.experiment('S01_MR1')['data_fields']['ID']}"
        assert result["path"] == (path if "subject" in kwargs else path.replace(LONG, by_id))
    got = server.http.get(f"{server.url}{path}/resources/RESULTS/files/sub/table.csv")
    assert got.content == (results_dir / "sub" / "table.csv").read_bytes()


def test_upload_one_file_into_a_folder_of_the_resource(xnat_conn, server: Server, archived, results_dir) -> None:
    result, _ = upload(results_dir / "report.json", experiment="S01_MR1", remote_dir="qc/run1")
    assert result["paths"] == ["qc/run1/report.json"]
    assert catalog(server, EXP) == {"qc/run1/report.json": md5(results_dir / "report.json")}


def test_skip_identical(xnat_conn, server: Server, archived, results_dir) -> None:
    emu = xnat_conn
    upload(results_dir, experiment="S01_MR1")
    puts = emu.request_count("PUT", r"/files/")
    again, _ = upload(results_dir, experiment="S01_MR1")
    assert (again["transferred"], again["skipped"]) == (0, 2)
    assert emu.request_count("PUT", r"/files/") == puts
    (results_dir / "sub" / "table.csv").write_text("a,b\n9,9\n")
    before = catalog(server, EXP)
    with pytest.raises(XnatConflictError, match=r"table\.csv"):
        upload(results_dir, experiment="S01_MR1")
    assert catalog(server, EXP) == before and emu.request_count("PUT", r"/files/") == puts


def test_overwrite(xnat_conn, server: Server, archived, results_dir) -> None:
    upload(results_dir, experiment="S01_MR1")
    (results_dir / "sub" / "table.csv").write_text("a,b\n9,9\n")
    result, _ = upload(results_dir, experiment="S01_MR1", overwrite="overwrite")
    assert (result["transferred"], result["skipped"]) == (1, 1)
    assert catalog(server, EXP)["sub/table.csv"] == md5(results_dir / "sub" / "table.csv")
    got = server.http.get(f"{server.url}{EXP}/resources/RESULTS/files/sub/table.csv")
    assert got.text == "a,b\n9,9\n"


def test_fail_if_anything_is_there(xnat_conn, server: Server, archived, results_dir, tmp_path) -> None:
    only_report = tmp_path / "one"
    only_report.mkdir()
    (only_report / "report.json").write_text('{"ok": true}')
    upload(only_report, experiment="S01_MR1", overwrite="fail")
    with pytest.raises(XnatConflictError, match=r"report\.json"):
        upload(results_dir, experiment="S01_MR1", overwrite="fail")  # identical, but there: fail says no
    assert list(catalog(server, EXP)) == ["report.json"]


def test_extract_a_zip(xnat_conn, server: Server, archived, results_dir, tmp_path) -> None:
    archive = tmp_path / "results.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(results_dir.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(results_dir).as_posix())
    result, _ = upload(archive, experiment="S01_MR1", scan="1", extract=True)
    assert sorted(result["paths"]) == ["report.json", "sub/table.csv"] and result["transferred"] == 2
    assert catalog(server, f"{LONG}/scans/1") == {"report.json": md5(results_dir / "report.json"),
                                                 "sub/table.csv": md5(results_dir / "sub" / "table.csv")}
    again, _ = upload(archive, experiment="S01_MR1", scan="1", extract=True)
    assert (again["transferred"], again["skipped"]) == (0, 2)


def test_upload_read_back_with_pyxnat(xnat_conn, archived, results_dir, tmp_path) -> None:
    pyxnat = pytest.importorskip("pyxnat")
    upload(results_dir, experiment="S01_MR1", subject="S01")
    px = pyxnat.Interface(server=xnat_conn.url, user="admin", password="admin")
    try:
        res = px.select.project("P1").subject("S01").experiment("S01_MR1").resource("RESULTS")
        assert sorted(res.files().get()) == ["report.json", "table.csv"]
        copy = res.file("report.json").get(str(tmp_path / "copy.json"))
        assert Path(copy).read_bytes() == (results_dir / "report.json").read_bytes()
    finally:
        px.disconnect()


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"scan": "1"}, "needs its session"),
    ({"experiment": "S01_MR1", "scan": "1", "assessor": "QC1"}, "not both"),
    ({"experiment": "S01_MR1", "resource": "bad/label"}, "resource label"),
    ({"experiment": "S01_MR1", "overwrite": "always"}, "overwrite"),
    ({"experiment": "S01_MR1", "source": "{missing}"}, "does not exist"),
    ({"experiment": "S01_MR1", "extract": True}, "zip"),
    # XNAT unpacks at the resource root whatever folder the URL names: the entries could never be under remote_dir.
    ({"experiment": "S01_MR1", "extract": True, "remote_dir": "unpacked", "source": "{zip}"}, "at the resource root"),
    # XNAT answers an empty file body with a 500: one empty file refuses the whole folder.
    ({"experiment": "S01_MR1", "source": "{with_empty}"}, r"1 empty \(0-byte\) file\(s\): sub/empty\.txt"),
    ({"experiment": "S01_MR1", "source": "{with_empty}/sub/empty.txt"}, r"empty \(0-byte\) file\(s\): empty\.txt"),
])
def test_upload_bad_input(xnat_conn, server: Server, archived, results_dir, tmp_path, kwargs, match) -> None:
    with zipfile.ZipFile(tmp_path / "results.zip", "w") as zf:
        zf.writestr("report.json", "{}")
    with_empty = tmp_path / "with-empty"
    (with_empty / "sub").mkdir(parents=True)
    (with_empty / "report.json").write_text("{}")
    (with_empty / "sub" / "empty.txt").write_bytes(b"")
    source = Path(str(kwargs.pop("source", results_dir)).format(missing=tmp_path / "missing",
                                                                zip=tmp_path / "results.zip", with_empty=with_empty))
    before = xnat_conn.request_count()
    with pytest.raises(XnatBadInputError, match=match):
        upload(source, **kwargs)
    assert xnat_conn.request_count() == before  # refused before connecting: not even a login
