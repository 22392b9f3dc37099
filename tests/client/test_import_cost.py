"""Importing the client stays cheap: pydicom (and NumPy under it) cost about half a second and a thread pool at
import, and only an import's header reading needs them, so they load on first use (a triggerer or a web server
process that imports the provider never pays for them)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from xnat_provider.client.import_body import plan_import


def loaded_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint(' '.join(m for m in ('pydicom', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    return set(out.stdout.split())


@pytest.mark.parametrize("statement", [
    "import xnat_provider.client",
    "from xnat_provider.client import XnatClient\nfrom xnat_provider.client.async_client import AsyncXnatClient",
    "import xnat_provider.triggers.prearchive, xnat_provider.triggers.experiment, xnat_provider.triggers.events",
])
def test_importing_the_client_loads_no_pydicom(statement: str) -> None:
    assert loaded_after(statement) == set()


def test_reading_headers_still_works_once_pydicom_is_needed(study_zip) -> None:
    plan = plan_import(study_zip)  # loads pydicom here, on first use
    assert len(plan.entries) == 6 and plan.studies
