"""Persistence across restarts, and recovery after a crash in the middle of an upload."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from xnat_provider.testing import XnatEmulator

OCTET = {"Content-Type": "application/octet-stream"}


def test_everything_survives_a_restart(tmp_path: Path, study_zip: Path) -> None:
    data_dir = tmp_path / "xnat"
    with XnatEmulator(data_dir=data_dir, users={"admin": "admin"}, projects=["P1"]) as emu:
        auth = ("admin", "admin")
        r = requests.post(emu.url + "/data/services/import", params={"dest": "/archive/projects/P1"},
                          data=study_zip.read_bytes(), headers={"Content-Type": "application/zip"}, auth=auth)
        assert r.status_code == 200
        eid = requests.get(emu.url + "/data/projects/P1/experiments?format=json",
                           auth=auth).json()["ResultSet"]["Result"][0]["ID"]
        requests.put(f"{emu.url}/data/experiments/{eid}", auth=auth,
                     params={"xsiType": "xnat:mrSessionData", "xnat:mrSessionData/fields/field[name=site]/field": "A"})
        requests.put(f"{emu.url}/data/experiments/{eid}/resources/NOTES/files/n.txt", data=b"note", headers=OCTET,
                     auth=auth)
        tok = requests.get(emu.url + "/data/services/tokens/issue", auth=auth).json()
        pre = requests.post(emu.url + "/data/services/import", params={"dest": "/prearchive", "project": "P1",
                                                                       "session": "S02_MR1", "subject": "S02"},
                            data=study_zip.read_bytes(), headers={"Content-Type": "application/zip"}, auth=auth)
        assert pre.status_code == 200
        before = requests.get(f"{emu.url}/data/experiments/{eid}/scans/ALL/files?format=json",
                              auth=auth).json()["ResultSet"]["Result"]
    with XnatEmulator(data_dir=data_dir, users={"admin": "admin"}, projects=["P1"]) as emu:
        auth = (tok["alias"], tok["secret"])  # the token outlives the restart
        after = requests.get(f"{emu.url}/data/experiments/{eid}/scans/ALL/files?format=json",
                             auth=auth).json()["ResultSet"]["Result"]
        assert sorted((f["URI"], f["digest"]) for f in after) == sorted((f["URI"], f["digest"]) for f in before)
        for f in after:
            assert hashlib.md5(requests.get(emu.url + f["URI"], auth=auth).content).hexdigest() == f["digest"]
        item = requests.get(f"{emu.url}/data/experiments/{eid}?format=json", auth=auth).json()["items"][0]
        assert {"name": "site", "field": "A"} in [i["data_fields"] for c in item["children"] for i in c["items"]]
        assert requests.get(f"{emu.url}/data/experiments/{eid}/resources/NOTES/files/n.txt",
                            auth=auth).content == b"note"
        rows = requests.get(emu.url + "/data/prearchive/projects/P1?format=json", auth=auth).json()
        assert [r["name"] for r in rows["ResultSet"]["Result"]] == ["S02_MR1"]


def _start_cli(data_dir: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "xnat_provider.testing", "--port", "0", "--data-dir", str(data_dir),
         "--user", "admin:admin", "--project", "P1"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline().strip()  # type: ignore[union-attr]
    assert line.startswith("XNAT emulator listening on http://127.0.0.1:"), line
    return proc, line.rsplit(" ", 1)[1]


def test_a_crash_mid_upload_leaves_stored_data_intact(tmp_path: Path) -> None:
    data_dir = tmp_path / "xnat"
    proc, url = _start_cli(data_dir)
    auth = ("admin", "admin")
    try:
        good = os.urandom(300_000)
        base = f"{url}/data/projects/P1/resources/R/files"
        assert requests.put(base + "/good.bin", data=good, headers=OCTET, auth=auth).status_code == 200
        assert requests.put(base + "/replace.bin", data=b"old", headers=OCTET, auth=auth).status_code == 200
        sent = threading.Event()

        def slow_body():
            yield os.urandom(1 << 20)
            sent.set()
            time.sleep(30)  # never finishes: the server dies first
            yield b"x"

        def upload(name: str, params: dict) -> None:
            try:
                requests.put(f"{base}/{name}", data=slow_body(), params=params, headers=OCTET, auth=auth, timeout=20)
            except requests.RequestException:
                pass

        threads = [threading.Thread(target=upload, args=("partial.bin", {}), daemon=True),
                   threading.Thread(target=upload, args=("replace.bin", {"overwrite": "true"}), daemon=True)]
        for t in threads:
            t.start()
        assert sent.wait(10)
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGKILL)  # a crash, not a clean stop
        proc.wait(10)
    proc, url = _start_cli(data_dir)
    try:
        rows = requests.get(f"{url}/data/projects/P1/resources/R/files?format=json",
                            auth=auth).json()["ResultSet"]["Result"]
        assert sorted(r["Name"] for r in rows) == ["good.bin", "replace.bin"]
        assert requests.get(f"{url}/data/projects/P1/resources/R/files/good.bin", auth=auth).content == good
        assert requests.get(f"{url}/data/projects/P1/resources/R/files/replace.bin", auth=auth).content == b"old"
        leftovers = [p for p in data_dir.rglob("*") if p.name.endswith(".part")]
        assert leftovers == []
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def test_recovery_redigests_a_file_replaced_behind_its_row(tmp_path: Path) -> None:
    data_dir = tmp_path / "xnat"
    with XnatEmulator(data_dir=data_dir) as emu:
        requests.put(f"{emu.url}/data/projects/P1/resources/R/files/a.txt", data=b"first", headers=OCTET,
                     auth=("admin", "admin"))
        path = emu.file_path("/data/projects/P1/resources/R/files/a.txt")
    # A crash between the rename and the commit of an overwrite leaves new bytes under the old row.
    time.sleep(0.01)
    path.write_bytes(b"second!")
    with XnatEmulator(data_dir=data_dir) as emu:
        assert emu.recovered["rows_fixed"] == 1
        row = requests.get(f"{emu.url}/data/projects/P1/resources/R/files?format=json",
                           auth=("admin", "admin")).json()["ResultSet"]["Result"][0]
        assert row["digest"] == hashlib.md5(b"second!").hexdigest() and row["Size"] == "7"
