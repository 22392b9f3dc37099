"""pytest plugin (entry point ``pytest11``): the ``xnat_emulator`` fixture for users' own DAG tests.

    def test_my_dag(xnat_emulator):
        url = xnat_emulator.url            # admin/admin, project P1, fresh data folder

Override the ``xnat_emulator_options`` fixture to pass other :class:`XnatEmulator` arguments.

pytest loads this module in every run of every project that installs the provider, used or not, and with or
without the ``testing`` extra the emulator needs. Loading it therefore imports nothing beyond pytest: the
emulator (and with it pydicom, lxml and python-multipart) is imported by the fixture, when a test asks for it,
and a missing extra then fails that test with the command that installs it, not the whole run.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .emulator import XnatEmulator


@pytest.fixture
def xnat_emulator_options() -> dict[str, Any]:
    """Keyword arguments for the ``xnat_emulator`` fixture; override it in a conftest to change them."""
    return {}


@pytest.fixture
def xnat_emulator(tmp_path: Any, xnat_emulator_options: dict[str, Any]) -> Iterator[XnatEmulator]:
    """A running XNAT emulator on a fresh data folder, stopped after the test."""
    from .emulator import XnatEmulator  # here, not at the top: see the module's docstring

    options = {"users": {"admin": "admin"}, "projects": ["P1"], "data_dir": tmp_path / "xnat"}
    options.update(xnat_emulator_options)
    with XnatEmulator(**options) as emulator:
        yield emulator
