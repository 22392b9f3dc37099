"""``make demo``: start the XNAT emulator on a data folder, import real DICOM through the REST API, show it.

It runs as a person would use XNAT: two studies (an MR and a CT, made from pydicom's real sample files) go
to the prearchive through the import service, the emulator's prearchive clock builds them, the archive service
archives them, and the archive is listed with every file's size and MD5. Run it again and it appends to the
same sessions (``overwrite=append``), so a second run works too.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import requests

from .emulator import XnatEmulator
from .samples import make_study, zip_files

STUDIES = [
    {"patient_name": "DEMO01", "patient_id": "DEMO01_MR1", "modality": "MR", "series": ((1, "T1w"), (2, "T2w"))},
    {"patient_name": "DEMO02", "patient_id": "DEMO02_CT1", "modality": "CT", "series": ((1, "Abdomen"),)},
]


def wait_ready(http: requests.Session, url: str, names: set[str], timeout: float = 30.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        rows = http.get(f"{url}/data/prearchive/projects/DEMO?format=json").json()["ResultSet"]["Result"]
        mine = [r for r in rows if r["name"] in names]
        if mine and all(r["status"] == "READY" for r in mine) and {r["name"] for r in mine} == names:
            return mine
        if time.monotonic() > deadline:
            raise TimeoutError(f"sessions not READY after {timeout:.0f} s: {[(r['name'], r['status']) for r in mine]}")
        time.sleep(0.2)


def run(data_dir: Path) -> int:
    started = time.monotonic()
    with XnatEmulator(data_dir=data_dir, users={"admin": "admin"}, projects=["DEMO"], receiving_idle=1.0) as xnat, \
            tempfile.TemporaryDirectory() as tmp, requests.Session() as http:
        http.auth = ("admin", "admin")
        print(f"XNAT emulator on {xnat.url}, data in {data_dir.resolve()}")
        names = set()
        for spec in STUDIES:
            study = make_study(Path(tmp) / spec["patient_id"], instances=4, uid_seed=str(spec["patient_id"]),
                               **spec)  # type: ignore[arg-type]
            archive = zip_files(study.files, Path(tmp) / f"{spec['patient_id']}.zip")
            r = http.post(f"{xnat.url}/data/services/import", params={"project": "DEMO"},
                          data=archive.read_bytes(), headers={"Content-Type": "application/zip"})
            r.raise_for_status()
            names.add(str(spec["patient_id"]))
            print(f"imported {archive.name} ({len(study.files)} DICOM files) -> {r.text.strip()}")
        print("waiting for the prearchive to build the sessions (RECEIVING -> BUILDING -> READY)...")
        for row in wait_ready(http, xnat.url, names):
            r = http.post(f"{xnat.url}/data/services/archive",
                          params={"src": "/data" + row["url"], "overwrite": "append"})
            r.raise_for_status()
            print(f"archived {row['name']} -> {r.text.strip()}")
        print()
        print(f"{'experiment':<14} {'type':<22} {'scan':<5} {'series':<8} {'files':>5} {'bytes':>8}  first MD5")
        exps = http.get(f"{xnat.url}/data/projects/DEMO/experiments?format=json").json()["ResultSet"]["Result"]
        for exp in exps:
            scans = http.get(f"{xnat.url}/data/experiments/{exp['ID']}/scans?format=json").json()["ResultSet"]["Result"]
            for scan in scans:
                files = http.get(f"{xnat.url}/data/experiments/{exp['ID']}/scans/{scan['ID']}/resources/DICOM/files"
                                 "?format=json").json()["ResultSet"]["Result"]
                size = sum(int(f["Size"]) for f in files)
                print(f"{exp['label']:<14} {exp['xsiType']:<22} {scan['ID']:<5} {scan['type']:<8} {len(files):>5} "
                      f"{size:>8}  {files[0]['digest'] if files else '-'}")
        print(f"\n{len(exps)} sessions archived in {time.monotonic() - started:.1f} s; the archive is under "
              f"{(data_dir / 'archive').resolve()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="demo-data/xnat", type=Path)
    return run(parser.parse_args(argv).data_dir)


if __name__ == "__main__":
    sys.exit(main())
