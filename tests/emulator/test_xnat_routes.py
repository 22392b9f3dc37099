"""The emulator serves XNAT 1.8's routes and no others, and answers a path XNAT does not route as XNAT does.

XNAT's route table (``xnat_provider/testing/xnat-routes.txt``, from XNAT's own source) decides which resource a
``/data`` path reaches. Before this table stood in front of the emulator, it served
``/data/projects/P/experiments/E/scans`` (a route XNAT never had) and the client's scan listings, downloads and
uploads passed every test while they would fail on every real server.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import requests

from xnat_provider.testing import XnatEmulator, xnat_routes

SHARED_TABLE = Path(__file__).resolve().parents[3] / "shared" / "reference" / "xnat-routes.txt"


@pytest.fixture
def archived(http: requests.Session, emulator: XnatEmulator, study_zip: Path) -> str:
    """S01_MR1 (subject S01, scans 1 and 2) in P1's archive; returns its ID."""
    r = http.post(emulator.url + "/data/services/import", params={"dest": "/archive/projects/P1"},
                  data=study_zip.read_bytes(), headers={"Content-Type": "application/zip"})
    assert r.status_code == 200, r.text
    doc = http.get(emulator.url + "/data/projects/P1/experiments/S01_MR1", params={"format": "json"}).json()
    return doc["items"][0]["data_fields"]["ID"]


def test_the_packaged_table_is_the_reference_table() -> None:
    if not SHARED_TABLE.exists():
        pytest.skip(f"{SHARED_TABLE} is not beside this checkout (CI and developers have it)")
    assert xnat_routes.TABLE.read_text() == SHARED_TABLE.read_text()


@pytest.mark.parametrize(("path", "resource", "rest"), [
    ("/projects/P1/experiments/E1", "ExperimentResource", ""),
    ("/projects/P1/experiments/E1/scans", "ExperimentResource", "/scans"),  # no such route: the longest prefix
    ("/projects/P1/experiments/E1/scans/1/resources/DICOM/files", "ExperimentResource",
     "/scans/1/resources/DICOM/files"),
    ("/projects/P1/experiments/E1/resources/R/files/a/b.dcm", "FileList", "/a/b.dcm"),
    ("/projects/P1/subjects/S1/experiments/E1/scans", "ScanList", ""),
    ("/experiments/E1/scans/1/resources/DICOM/files", "FileList", ""),
    ("/experiments/E1/assessors/A1/resources/R", "CatalogResource", ""),
    ("/prearchive/projects", "PrearcSessionListResource", "/projects"),
    ("/prearchive/projects/P1/20260101_120000/S01_MR1/logs/last", "PrearcSessionResource", "/logs/last"),
    ("/services/tokens/validate/alias/secret", "AliasTokenRestlet", ""),
])
def test_paths_reach_the_resource_xnat_picks(path: str, resource: str, rest: str) -> None:
    found = xnat_routes.match(path)
    assert found is not None and (found.route.resource, found.rest) == (resource, rest)


def test_a_path_no_template_matches_is_not_found(http: requests.Session, emulator: XnatEmulator) -> None:
    assert xnat_routes.match("/version") is None
    assert http.get(emulator.url + "/data/version").status_code == 404  # gone in XNAT 1.8
    assert http.get(emulator.url + "/data/nothing-here").status_code == 404


def test_scans_under_the_short_experiment_path_answer_the_experiment_document(
        http: requests.Session, emulator: XnatEmulator, archived: str) -> None:
    """What the client used to send: XNAT answers the experiment's own document, not a listing of scans."""
    short = http.get(emulator.url + "/data/projects/P1/experiments/S01_MR1/scans", params={"format": "json"})
    assert short.status_code == 200
    assert "ResultSet" not in short.json() and short.json()["items"][0]["data_fields"]["ID"] == archived
    files = http.get(emulator.url + "/data/projects/P1/experiments/S01_MR1/scans/1/resources/DICOM/files",
                     params={"format": "json"})
    assert "ResultSet" not in files.json()
    by_id = http.get(f"{emulator.url}/data/experiments/{archived}/scans", params={"format": "json"})
    long = http.get(emulator.url + "/data/projects/P1/subjects/S01/experiments/S01_MR1/scans",
                    params={"format": "json"})
    for listing in (by_id, long):
        assert sorted(r["ID"] for r in listing.json()["ResultSet"]["Result"]) == ["1", "2"]


def test_a_put_under_the_short_experiment_path_is_a_bare_400(
        http: requests.Session, emulator: XnatEmulator, archived: str) -> None:
    for path in ("/scans/1/resources/NOTES", "/scans/1/resources/NOTES/files/a.txt", "/assessors/QC1"):
        r = http.put(f"{emulator.url}/data/projects/P1/experiments/S01_MR1{path}", data=b"x")
        assert r.status_code == 400, path
    resources = http.get(f"{emulator.url}/data/experiments/{archived}/scans/1/resources", params={"format": "json"})
    assert [r["label"] for r in resources.json()["ResultSet"]["Result"]] == ["DICOM"]  # nothing was created


def test_a_delete_under_the_short_experiment_path_deletes_the_experiment(
        http: requests.Session, emulator: XnatEmulator, archived: str) -> None:
    """XNAT's ExperimentResource.handleDelete ignores the rest of the path: asking to delete one scan this way
    deletes the whole session. The emulator does the same, so a test of such a client would see the loss."""
    assert http.delete(emulator.url + "/data/projects/P1/experiments/S01_MR1/scans/1").status_code == 200
    assert http.get(f"{emulator.url}/data/experiments/{archived}", params={"format": "json"}).status_code == 404


def test_experiments_by_id_only_without_a_project(
        http: requests.Session, emulator: XnatEmulator, archived: str) -> None:
    assert http.get(f"{emulator.url}/data/experiments/{archived}", params={"format": "json"}).status_code == 200
    assert http.get(f"{emulator.url}/data/experiments/S01_MR1", params={"format": "json"}).status_code == 404


def test_a_rest_after_another_resource_is_refused(http: requests.Session, emulator: XnatEmulator,
                                                  archived: str) -> None:
    r = http.get(f"{emulator.url}/data/experiments/{archived}/scans/1/nonsense", params={"format": "json"})
    assert r.status_code == 404 and "ScanResource" in r.text


def test_methods_follow_the_resource_class(http: requests.Session, emulator: XnatEmulator, archived: str) -> None:
    assert http.delete(f"{emulator.url}/data/experiments/{archived}/scans").status_code == 405  # ScanList: GET POST
    recon = http.get(f"{emulator.url}/data/experiments/{archived}/reconstructions", params={"format": "json"})
    assert recon.status_code == 501 and "ReconList" in recon.text  # XNAT has it; the emulator says it does not


def _sample(template: str) -> str:
    return "/data" + re.sub(r"\{(\w+)\}", lambda m: f"x{m[1].lower()}", template)


def test_every_route_the_emulator_serves_is_an_xnat_route(emulator: XnatEmulator) -> None:
    """Each handler stands for XNAT resource classes; every GET template of those classes reaches a handler of
    the same class (reconstructions and assessor in/out folders are not emulated and say so with 501)."""
    claimed = set().union(*(r.xnat for r in emulator.router.routes))
    missing = []
    for route in xnat_routes.routes():
        if route.resource not in claimed or "GET" not in route.methods:
            continue
        served, _params, _known = emulator.router.match("GET", _sample(route.template))
        if served is None or route.resource not in served.xnat or served.pattern.pattern == "":
            missing.append(route.template)
    assert missing and all("reconstructions" in t or "{TYPE}" in t for t in missing), missing
    for served in emulator.router.routes:
        if served.pattern.pattern.startswith("/data"):
            assert served.xnat <= {r.resource for r in xnat_routes.routes()}


def test_a_data_route_must_name_its_xnat_class() -> None:
    from xnat_provider.testing.http import Response, Router

    with pytest.raises(ValueError, match="XNAT resource classes"):
        Router().add("GET", r"/data/projects/(?P<p>[^/]+)/experiments/(?P<e>[^/]+)/scans", lambda r: Response())
    with pytest.raises(ValueError, match="NoSuchResource"):
        Router().add("GET", r"/data/projects", lambda r: Response(), xnat="NoSuchResource")


@pytest.mark.parametrize(("method", "path", "exact"), [
    ("GET", "/experiments/E1/scans", True),
    ("GET", "/projects/P1/experiments/E1/scans", False),
    ("PUT", "/projects/P1/subjects/S1/experiments/E1/scans/1/resources/R/files/a/b.txt", True),
    ("PUT", "/projects/P1/experiments/E1/scans/1/resources/R/files/a.txt", False),
    ("DELETE", "/experiments/E1/scans", False),
    ("HEAD", "/experiments/E1/scans/1/resources/R/files/a.dcm", True),
    ("GET", "/experiments/E1/scans/1/resources/R/files/", False),
])
def test_the_exact_route_check(method: str, path: str, exact: bool) -> None:
    assert xnat_routes.is_exact(method, path) is exact
