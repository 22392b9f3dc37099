"""The ``xnat-emulator`` command and the ``xnat_emulator`` pytest fixture users get."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from xnat_provider.testing import XnatEmulator


def _console_script() -> str:
    script = Path(sys.executable).with_name("xnat-emulator")
    assert script.exists(), "the console script is installed with the package"
    return str(script)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_prints_url_first_serves_and_exits_zero_on_signal(tmp_path: Path, sig: signal.Signals) -> None:
    proc = subprocess.Popen(
        [_console_script(), "--host", "127.0.0.1", "--port", "0", "--data-dir", str(tmp_path / "d"),
         "--user", "admin:admin", "--user", "bob:pw", "--project", "P1", "--project", "P9"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline().strip()  # type: ignore[union-attr]
        m = re.fullmatch(r"XNAT emulator listening on (http://127\.0\.0\.1:\d+)", first)
        assert m, first
        url = m.group(1)
        projects = requests.get(url + "/data/projects?format=json", auth=("bob", "pw")).json()
        assert [p["ID"] for p in projects["ResultSet"]["Result"]] == ["P1", "P9"]
    finally:
        proc.send_signal(sig)
        code = proc.wait(10)
    assert code == 0
    assert (tmp_path / "d" / "emulator.sqlite3").exists()


def test_cli_rejects_a_malformed_user(tmp_path: Path) -> None:
    r = subprocess.run([_console_script(), "--user", "nopassword"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "LOGIN:PASSWORD" in r.stderr


def test_fixture_gives_a_running_emulator(xnat_emulator: XnatEmulator) -> None:
    r = requests.get(xnat_emulator.url + "/data/projects?format=json", auth=("admin", "admin"))
    assert [p["ID"] for p in r.json()["ResultSet"]["Result"]] == ["P1"]


class TestFixtureOptions:
    @pytest.fixture
    def xnat_emulator_options(self) -> dict:
        return {"users": {"lab": "secret"}, "projects": ["LAB"]}

    def test_options_fixture_overrides(self, xnat_emulator: XnatEmulator) -> None:
        r = requests.get(xnat_emulator.url + "/data/projects?format=json", auth=("lab", "secret"))
        assert [p["ID"] for p in r.json()["ResultSet"]["Result"]] == ["LAB"]


def test_temporary_data_dir_is_removed_on_stop() -> None:
    emu = XnatEmulator()
    emu.start()
    folder = emu.data_dir
    assert folder.exists()
    emu.stop()
    assert not folder.exists()


def test_bad_options_are_refused_clearly() -> None:
    with pytest.raises(ValueError, match="archive_conflict_status"):
        XnatEmulator(archive_conflict_status=404)
    emu = XnatEmulator()
    try:
        with pytest.raises(RuntimeError, match="not running"):
            _ = emu.url
        with pytest.raises(ValueError, match="prearchive must be one of"):
            emu.add_project("P5", prearchive="sometimes")
    finally:
        emu.stop()
