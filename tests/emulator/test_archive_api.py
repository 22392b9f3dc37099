"""Archive listings and objects, creation with XNAT's status codes, deletion and custom fields."""

from __future__ import annotations

import csv
import io

import requests
from lxml import etree

from xnat_provider.testing import XnatEmulator

NS = {"xnat": "http://nrg.wustl.edu/xnat"}


def put(http: requests.Session, emu: XnatEmulator, path: str, **params: str) -> requests.Response:
    return http.put(emu.url + path, params=params)


def make_session(http: requests.Session, emu: XnatEmulator, label: str = "S01_MR1", subject: str = "S01") -> str:
    r = put(http, emu, f"/data/projects/P1/subjects/{subject}/experiments/{label}", xsiType="xnat:mrSessionData",
            **{"xnat:mrSessionData/date": "2024-01-15"})
    assert r.status_code == 201, r.text
    return r.text


def rows(r: requests.Response) -> list[dict]:
    assert r.status_code == 200, r.text
    return r.json()["ResultSet"]["Result"]


def test_listings_are_result_sets_of_strings(http, emulator: XnatEmulator) -> None:
    eid = make_session(http, emulator)
    put(http, emulator, f"/data/experiments/{eid}/scans/1", xsiType="xnat:mrScanData", type="T1")
    for path in ("/data/projects", "/data/projects/P1/subjects", "/data/projects/P1/experiments",
                 "/data/experiments", f"/data/experiments/{eid}/scans"):
        body = http.get(emulator.url + path, params={"format": "json"}).json()["ResultSet"]
        assert body["Result"], path
        assert isinstance(body["totalRecords"], str)
        for row in body["Result"]:
            assert all(isinstance(v, str) for v in row.values()), (path, row)
    exp = rows(http.get(emulator.url + "/data/projects/P1/experiments?format=json"))[0]
    assert exp["ID"] == eid and exp["label"] == "S01_MR1" and exp["xsiType"] == "xnat:mrSessionData"
    assert exp["URI"] == f"/data/experiments/{eid}" and exp["date"] == "2024-01-15"
    scan = rows(http.get(f"{emulator.url}/data/experiments/{eid}/scans?format=json"))[0]
    assert scan["ID"] == "1" and scan["type"] == "T1" and scan["xsiType"] == "xnat:mrScanData"


def test_listing_formats_csv_xml_and_columns(http, emulator: XnatEmulator) -> None:
    make_session(http, emulator)
    r = http.get(emulator.url + "/data/projects/P1/experiments", params={"format": "csv", "columns": "label,ID"})
    table = list(csv.DictReader(io.StringIO(r.text)))
    assert r.headers["Content-Type"].startswith("text/csv")
    assert list(table[0])[:2] == ["label", "ID"] and table[0]["label"] == "S01_MR1"  # XNAT appends URI
    xml = etree.fromstring(http.get(emulator.url + "/data/projects?format=xml").content)
    assert xml.get("totalRecords") == "2"
    empty = http.get(emulator.url + "/data/projects/P2/subjects?format=csv")
    assert empty.text.splitlines()[0].startswith("ID,")  # header even when empty


def test_labels_and_ids_address_the_same_objects(http, emulator: XnatEmulator) -> None:
    eid = make_session(http, emulator)
    sid = rows(http.get(emulator.url + "/data/projects/P1/subjects?format=json"))[0]["ID"]
    for path in (f"/data/projects/P1/experiments/{eid}", "/data/projects/P1/experiments/S01_MR1",
                 f"/data/projects/P1/subjects/{sid}/experiments/S01_MR1",
                 "/data/archive/projects/P1/subjects/S01/experiments/S01_MR1", f"/data/experiments/{eid}"):
        item = http.get(emulator.url + path, params={"format": "json"}).json()["items"][0]
        assert item["data_fields"]["ID"] == eid, path
        assert item["meta"]["xsi:type"] == "xnat:mrSessionData" and item["meta"]["isHistory"] is False
    # /data/experiments/{x} takes IDs only, as in XNAT.
    r = http.get(emulator.url + "/data/experiments/S01_MR1?format=json")
    assert r.status_code == 404 and "<h3>" in r.text
    assert http.get(emulator.url + "/data/projects/NOPE?format=json").status_code == 404


def test_object_json_has_no_empty_values_and_xml_is_xft(http, emulator: XnatEmulator) -> None:
    eid = make_session(http, emulator)
    item = http.get(f"{emulator.url}/data/experiments/{eid}?format=json").json()["items"][0]
    assert "" not in item["data_fields"].values()  # xnatpy chokes on "date": ""
    assert item["data_fields"]["subject_ID"].startswith("XNAT_S")
    doc = etree.fromstring(http.get(f"{emulator.url}/data/experiments/{eid}").content)  # XML is the default
    assert doc.tag == "{http://nrg.wustl.edu/xnat}MRSession"
    assert doc.get("label") == "S01_MR1"
    assert doc.findtext("xnat:date", namespaces=NS) == "2024-01-15"


def test_put_status_codes(http, emulator: XnatEmulator) -> None:
    r = put(http, emulator, "/data/projects/P1/subjects/S9")
    assert r.status_code == 201 and r.text.startswith("XNAT_S")
    again = put(http, emulator, "/data/projects/P1/subjects/S9")
    assert again.status_code == 200 and again.text == r.text
    # An experiment creates its subject; it needs a subject and an xsiType.
    e = put(http, emulator, "/data/projects/P1/subjects/S10/experiments/E10", xsiType="xnat:ctSessionData")
    assert e.status_code == 201
    assert put(http, emulator, "/data/projects/P1/experiments/E11", xsiType="xnat:mrSessionData").status_code == 422
    assert put(http, emulator, "/data/projects/P1/subjects/S10/experiments/E12").status_code == 400
    assert put(http, emulator, "/data/projects/P1/subjects/S10/experiments/bad%20label",
               xsiType="xnat:mrSessionData").status_code == 417
    assert put(http, emulator, "/data/projects/P1/subjects/S9/experiments/E10",
               xsiType="xnat:ctSessionData").status_code == 409  # label taken by another subject
    # Scans need an xsiType.
    assert put(http, emulator, f"/data/experiments/{e.text}/scans/1").status_code == 400
    assert put(http, emulator, f"/data/experiments/{e.text}/scans/1", xsiType="xnat:ctScanData").status_code == 201
    assert http.put(emulator.url + "/data/projects/NEW1").status_code == 201
    assert "NEW1" in [p["ID"] for p in rows(http.get(emulator.url + "/data/projects?format=json"))]


def test_resource_create_conflict_and_delete(http, emulator: XnatEmulator) -> None:
    eid = make_session(http, emulator)
    base = f"{emulator.url}/data/experiments/{eid}/resources/NOTES"
    assert http.put(base, params={"format": "TXT", "content": "notes"}).status_code == 200
    r = http.put(base)
    assert r.status_code == 409 and "already exists" in r.text
    listing = rows(http.get(f"{emulator.url}/data/experiments/{eid}/resources?format=json"))
    assert [(x["label"], x["format"], x["element_name"]) for x in listing] == [("NOTES", "TXT",
                                                                                 "xnat:resourceCatalog")]
    assert "ID" not in listing[0] and "URI" not in listing[0]
    assert http.delete(base).status_code == 200
    assert rows(http.get(f"{emulator.url}/data/experiments/{eid}/resources?format=json")) == []


def test_delete_experiment_removes_its_files(http, emulator: XnatEmulator) -> None:
    eid = make_session(http, emulator)
    http.put(f"{emulator.url}/data/experiments/{eid}/resources/R/files/a.txt", data=b"hello",
             headers={"Content-Type": "application/octet-stream"})
    folder = emulator.data_dir / "archive/P1/arc001/S01_MR1"
    assert (folder / "RESOURCES/R/a.txt").read_bytes() == b"hello"
    assert http.delete(f"{emulator.url}/data/experiments/{eid}?removeFiles=true").status_code == 200
    assert http.get(f"{emulator.url}/data/experiments/{eid}?format=json").status_code == 404
    assert not (folder / "RESOURCES/R/a.txt").exists()


def test_custom_fields_set_read_delete(http, emulator: XnatEmulator) -> None:
    eid = make_session(http, emulator)
    key = "xnat:mrSessionData/fields/field[name=site]/field"
    assert http.put(f"{emulator.url}/data/projects/P1/experiments/{eid}",
                    params={"xsiType": "xnat:mrSessionData", key: "Site A"}).status_code == 200
    item = http.get(f"{emulator.url}/data/experiments/{eid}?format=json").json()["items"][0]
    fields = next(c for c in item["children"] if c["field"] == "fields/field")["items"]
    assert [f["data_fields"] for f in fields] == [{"name": "site", "field": "Site A"}]
    xml = etree.fromstring(http.get(f"{emulator.url}/data/experiments/{eid}?format=xml").content)
    assert xml.find("xnat:fields/xnat:field[@name='site']", NS).text == "Site A"
    # The listing answers the xpath as a column, as pyxnat reads it.
    listing = rows(http.get(emulator.url + "/data/projects/P1/experiments",
                            params={"format": "json", "columns": f"ID,{key}"}))
    assert listing[0][key] == "Site A"
    # Delete with NULL.
    http.put(f"{emulator.url}/data/experiments/{eid}", params={"xsiType": "xnat:mrSessionData", key: "NULL"})
    item = http.get(f"{emulator.url}/data/experiments/{eid}?format=json").json()["items"][0]
    assert not [c for c in item["children"] if c["field"] == "fields/field"]


def test_fields_on_projects_and_subjects(http, emulator: XnatEmulator) -> None:
    put(http, emulator, "/data/projects/P1/subjects/S1")
    http.put(emulator.url + "/data/projects/P1",
             params={"xsiType": "xnat:projectData", "xnat:projectData/fields/field[name=Grant]/field": "G-1"})
    http.put(emulator.url + "/data/projects/P1/subjects/S1",
             params={"xsiType": "xnat:subjectData", "xnat:subjectData/fields/field[name=group]/field": "ctl"})
    p = http.get(emulator.url + "/data/projects/P1?format=json").json()["items"][0]
    s = http.get(emulator.url + "/data/projects/P1/subjects/S1?format=json").json()["items"][0]
    assert {"name": "grant", "field": "G-1"} in [i["data_fields"] for c in p["children"] for i in c["items"]]
    assert {"name": "group", "field": "ctl"} in [i["data_fields"] for c in s["children"] for i in c["items"]]


def test_errors_are_status_pages_with_h3(http, emulator: XnatEmulator) -> None:
    r = http.get(emulator.url + "/data/projects/P1/subjects/NOPE?format=json")
    assert r.status_code == 404
    assert r.headers["Content-Type"].startswith("text/html")
    assert "<h3>Unable to find the specified subject: NOPE</h3>" in r.text
    assert http.delete(emulator.url + "/data/projects").status_code == 405  # XNAT allows GET and POST only
    not_emulated = http.post(emulator.url + "/data/projects")  # XNAT creates a project from XML; not emulated
    assert not_emulated.status_code == 501 and "does not implement POST on ProjectListResource" in not_emulated.text
    assert http.get(emulator.url + "/data/nothing-here").status_code == 404


def test_schemas_and_search_elements_for_xnatpy(http, emulator: XnatEmulator) -> None:
    names = http.get(emulator.url + "/xapi/schemas?format=json").json()
    assert {"xnat", "xdat"} <= set(names)
    for name in names:
        r = http.get(f"{emulator.url}/xapi/schemas/{name}")
        assert r.status_code == 200
        assert etree.fromstring(r.content).tag == "{http://www.w3.org/2001/XMLSchema}schema"
    assert http.get(emulator.url + "/data/search/elements?format=json").json()["ResultSet"]["Result"] == []
