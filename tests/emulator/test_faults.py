"""Fault injection, from Python and over the HTTP control API, and request counting."""

from __future__ import annotations

import hashlib
import http.client
import time

import pytest
import requests

from xnat_provider.testing import XnatEmulator

OCTET = {"Content-Type": "application/octet-stream"}


@pytest.fixture
def blob(http, emulator: XnatEmulator) -> tuple[str, bytes]:
    data = bytes(range(256)) * 4096  # 1 MiB
    url = f"{emulator.url}/data/projects/P1/resources/R/files/blob.bin"
    assert http.put(url, data=data, headers=OCTET).status_code == 200
    return url, data


def test_fail_next_answers_status_for_count_requests_then_recovers(http, emulator) -> None:
    emulator.fail_next("GET", r"^/data/projects$", status=503, count=2)
    assert http.get(emulator.url + "/data/projects?format=json").status_code == 503
    r = http.get(emulator.url + "/data/archive/projects?format=json")  # aliases fold onto the same path
    assert r.status_code == 503 and "<h3>Injected fault</h3>" in r.text
    assert http.get(emulator.url + "/data/projects?format=json").status_code == 200
    emulator.fail_next("POST", r"^/data/projects$", status=500)
    assert http.get(emulator.url + "/data/projects?format=json").status_code == 200  # method must match


def test_drop_after_cuts_a_download_midway(blob, emulator) -> None:
    url, data = blob
    emulator.drop_after("GET", r"/files/blob\.bin$", after_bytes=1000)
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError)):
        r = requests.get(url, auth=("admin", "admin"), stream=True)
        b"".join(r.iter_content(65536))
    # The next request is whole again.
    assert requests.get(url, auth=("admin", "admin")).content == data


def test_drop_after_on_a_raw_socket_delivers_exactly_k_bytes(blob, emulator) -> None:
    url, _ = blob
    emulator.drop_after("GET", r"/files/blob\.bin$", after_bytes=12345)
    conn = http.client.HTTPConnection(emulator.host, emulator.port, timeout=10)
    conn.request("GET", url.removeprefix(emulator.url), headers={"Authorization": "Basic YWRtaW46YWRtaW4="})
    resp = conn.getresponse()
    assert resp.status == 200 and int(resp.headers["Content-Length"]) == 1 << 20
    with pytest.raises(http.client.IncompleteRead) as info:
        resp.read()
    assert len(info.value.partial) == 12345


def test_drop_after_on_a_streamed_zip(http, emulator, blob) -> None:
    emulator.drop_after("GET", r"/resources/R/files$", after_bytes=5000)
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError)):
        _ = http.get(emulator.url + "/data/projects/P1/resources/R/files?format=zip&compression=0").content


def test_delay(http, emulator) -> None:
    emulator.delay("GET", r"^/data/auth$", seconds=0.5)
    t0 = time.monotonic()
    assert http.get(emulator.url + "/data/auth").status_code == 200
    assert time.monotonic() - t0 >= 0.5


def test_error_page_with_status_200(http, emulator) -> None:
    emulator.error_page_200("GET", r"^/data/projects$", message="Database down")
    r = http.get(emulator.url + "/data/projects?format=json")
    assert r.status_code == 200
    assert r.text.startswith("<html>") and "<h3>Database down</h3>" in r.text


def test_succeed_then_504_does_the_work(http, emulator) -> None:
    emulator.succeed_then_504("PUT", r"/subjects/S7$")
    r = http.put(emulator.url + "/data/projects/P1/subjects/S7")
    assert r.status_code == 504
    subjects = http.get(emulator.url + "/data/projects/P1/subjects?format=json").json()["ResultSet"]["Result"]
    assert [s["label"] for s in subjects] == ["S7"]


def test_expire_sessions_now(emulator) -> None:
    s = requests.Session()
    assert s.get(emulator.url + "/data/JSESSION", auth=("admin", "admin")).status_code == 200
    assert s.get(emulator.url + "/data/auth").status_code == 200
    assert emulator.expire_sessions() >= 1
    assert s.get(emulator.url + "/data/auth").status_code == 401


def test_corrupt_file_no_longer_matches_its_digest(http, emulator, blob) -> None:
    url, data = blob
    row = http.get(emulator.url + "/data/projects/P1/resources/R/files?format=json").json()["ResultSet"]["Result"][0]
    emulator.corrupt_file(row["URI"])
    got = http.get(url).content
    assert len(got) == len(data) and got != data
    assert hashlib.md5(got).hexdigest() != row["digest"]
    # The listing still claims the original digest: exactly what a verifying client must catch.
    again = http.get(emulator.url + "/data/projects/P1/resources/R/files?format=json").json()["ResultSet"]["Result"]
    assert again[0]["digest"] == hashlib.md5(data).hexdigest()


def test_request_counts(http, emulator) -> None:
    before = emulator.request_count("GET", r"^/data/projects$")
    for _ in range(3):
        http.get(emulator.url + "/REST/projects?format=json")
    assert emulator.request_count("GET", r"^/data/projects$") == before + 3
    assert emulator.request_count("PUT") == 0


def test_control_api_over_http(http, emulator, blob) -> None:
    ctl = emulator.url + "/__emulator__"
    r = requests.post(ctl + "/faults", json={"kind": "fail", "method": "GET", "path": "^/data/auth$", "status": 502})
    assert r.status_code == 201 and r.json()["status"] == 502
    assert requests.get(ctl + "/faults").json()["rules"][0]["kind"] == "fail"
    assert http.get(emulator.url + "/data/auth").status_code == 502
    requests.post(ctl + "/faults", json={"kind": "error_200", "path": "^/data/auth$"})
    assert requests.delete(ctl + "/faults").json() == {"cleared": True}
    assert http.get(emulator.url + "/data/auth").status_code == 200
    assert requests.post(ctl + "/faults", json={"kind": "nonsense"}).status_code == 400
    assert requests.post(ctl + "/faults", data="not json").status_code == 400
    url, data = blob
    row = http.get(emulator.url + "/data/projects/P1/resources/R/files?format=json").json()["ResultSet"]["Result"][0]
    assert requests.post(ctl + "/files/corrupt", json={"uri": row["URI"]}).status_code == 200
    assert http.get(url).content != data
    assert requests.post(ctl + "/sessions/expire").json()["expired"] >= 1
    count = requests.get(ctl + "/requests", params={"method": "GET", "path": "^/data/auth$"}).json()["count"]
    assert count == 2
    assert requests.delete(ctl + "/requests").status_code == 200
    assert requests.get(ctl + "/requests").json()["count"] == 0
    assert requests.get(ctl + "/nothing").status_code == 404
