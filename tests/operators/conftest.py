"""Helpers for the operator tests: what the server holds, read over plain HTTP (not through the operators)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pydicom
import pytest
import requests
from pydicom.uid import generate_uid

from tests.support import experiment_url
from tests.support import listing as rows
from xnat_provider.client import XnatClient
from xnat_provider.testing import XnatEmulator
from xnat_provider.testing.samples import Study, make_study, zip_files

IMPORT = r"^/data/services/import$"
ARCHIVE = r"^/data/services/archive$"
LOGIN = r"^/data/services/auth$"


class Server:
    """The emulator's state as an independent HTTP client sees it."""

    def __init__(self, emu: XnatEmulator, http: requests.Session) -> None:
        self.emu, self.http, self.url = emu, http, emu.url

    def prearchive(self, project: str = "P1") -> list[dict[str, Any]]:
        return rows(self.http, f"{self.url}/data/prearchive/projects/{project}")

    def experiments(self, project: str = "P1") -> list[dict[str, Any]]:
        return rows(self.http, f"{self.url}/data/projects/{project}/experiments")

    def labels(self, project: str = "P1") -> list[str]:
        return sorted(e["label"] for e in self.experiments(project))

    def scans(self, session: str, project: str = "P1") -> list[dict[str, Any]]:
        return rows(self.http, f"{experiment_url(self.http, self.url, project, session)}/scans")

    def files(self, path: str) -> list[dict[str, Any]]:
        return rows(self.http, f"{self.url}{path}/files")

    def scan_files(self, session: str, scan: str, project: str = "P1", resource: str = "DICOM") -> list[dict]:
        exp = experiment_url(self.http, self.url, project, session)
        return rows(self.http, f"{exp}/scans/{scan}/resources/{resource}/files")

    def experiment(self, session: str, project: str = "P1") -> dict[str, Any]:
        resp = self.http.get(f"{self.url}/data/projects/{project}/experiments/{session}", params={"format": "json"})
        resp.raise_for_status()
        return resp.json()["items"][0]

    def imports(self) -> int:
        return self.emu.request_count("POST", IMPORT)

    def archives(self) -> int:
        return self.emu.request_count("POST", ARCHIVE)


@pytest.fixture
def server(emulator: XnatEmulator, http: requests.Session) -> Server:
    return Server(emulator, http)


@pytest.fixture
def after_request(monkeypatch: pytest.MonkeyPatch) -> Callable[[str, str, Callable[[], Any]], None]:
    """``after_request(method, path_regex, then)``: call ``then()`` once, right after the first matching request
    of this process got its answer (to inject a fault on a *later* request of the same try). Works inside
    ``dag.test()``, which runs tasks in this process."""
    hooks: list[tuple[str, str, Callable[[], Any]]] = []
    original = requests.Session.request

    def request(self: requests.Session, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        resp = original(self, method, url, *args, **kwargs)
        path = urlsplit(url).path
        for hook in list(hooks):
            if hook[0] == method.upper() and re.search(hook[1], path):
                hooks.remove(hook)
                hook[2]()
        return resp

    monkeypatch.setattr(requests.Session, "request", request)
    return lambda method, path, then: hooks.append((method.upper(), path, then))


@pytest.fixture
def client(emulator: XnatEmulator):
    with XnatClient(emulator.url, "admin", "admin", backoff=0.05, retries=3) as c:
        yield c


@pytest.fixture
def archived(client: XnatClient, study_zip: Path) -> str:
    """``S01_MR1`` (subject ``S01``, scans 1 T1 and 2 T2, 3 files each) in P1's archive, set up by the client."""
    client.import_dicom(study_zip, "P1", destination="archive")
    return "S01_MR1"


def second_study(tmp_path: Path, name: str = "S02", session: str = "S02_MR1", **kw: Any) -> Study:
    return make_study(tmp_path / f"dicom-{session}", patient_name=name, patient_id=session, **kw)


def study_zip_of(tmp_path: Path, study: Study, name: str) -> Path:
    return zip_files(study.files, tmp_path / name)


def resent_with_one_more(study: Study, dest: Path) -> Path:
    """A folder with scan 1's first instance of ``study`` again and one new instance of the same series: archived
    into ``study``'s session without overwrite it is a conflict (XNAT's merge meets a file it already has,
    MergeSessionsA "Session already exists with matching files."); with ``append`` scan 1 gains one file."""
    dest.mkdir(parents=True)
    first = study.series["1"][0]
    shutil.copy(first, dest / first.name)
    ds = pydicom.dcmread(first)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.InstanceNumber = 99
    ds.save_as(dest / "one-more.dcm", enforce_file_format=True)
    return dest
