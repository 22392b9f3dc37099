"""Shared fixtures: an emulator per test on a fresh folder, an authenticated HTTP session, real DICOM."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from xnat_provider.testing import XnatEmulator
from xnat_provider.testing.samples import Study, make_study, zip_files

# Loopback only: a proxy variable in the environment must never route test traffic elsewhere
# (pyxnat honours a lower-case http_proxy even for 127.0.0.1).
for _var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
    os.environ.pop(_var, None)
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[XnatEmulator]:
    """A running emulator: users admin/admin and alice/alice-pw, project P1, quick prearchive clock."""
    with XnatEmulator(
        data_dir=tmp_path / "xnat", users={"admin": "admin", "alice": "alice-pw"}, projects=["P1", "P2"],
        receiving_idle=0.5, build_seconds=0.2, queue_seconds=0.2,
    ) as emu:
        yield emu


@pytest.fixture
def http(emulator: XnatEmulator) -> Iterator[requests.Session]:
    """A requests session logged in as admin with basic auth (the cookie is kept after the first call)."""
    with requests.Session() as s:
        s.auth = ("admin", "admin")
        s.headers["User-Agent"] = "xnat-provider-tests"
        yield s


@pytest.fixture
def study(tmp_path: Path) -> Study:
    """A real two-series MR study (3 instances each) made from pydicom's MR_small.dcm."""
    return make_study(tmp_path / "dicom", patient_name="S01", patient_id="S01_MR1")


@pytest.fixture
def study_zip(tmp_path: Path, study: Study) -> Path:
    return zip_files(study.files, tmp_path / "study.zip")
