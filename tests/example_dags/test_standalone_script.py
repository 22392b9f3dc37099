"""``make standalone`` (``scripts/standalone.py``): one Ctrl-C stops Airflow and the emulator cleanly, and the
example DAGs are unpaused, so the event-driven ones start by themselves as documented.

The first test runs ``make standalone`` for real in a pseudo-terminal (as a person does) on the home ``make demo``
leaves and a free port, and presses Ctrl-C through the terminal once Airflow has started its components: the
terminal sends SIGINT to its foreground process group, as it does to ``make``. About 55 s here.
"""

from __future__ import annotations

import contextlib
import os
import pty
import re
import select
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_DAGS = ("xnat_prearchive_autoarchive", "xnat_scan_pipeline", "xnat_scheduled_ingest")
# Paused at creation in every home (is_paused_upon_creation): it needs a Container Service wrapper on the site.
PAUSED_EXAMPLES = {"xnat_container_pipeline": 1}

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir() or shutil.which("make") is None,
                                reason="needs /proc (to find leftover processes) and make")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_for(data: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "XNAT_"))}  # not the tests' home
    env.update(DEMO_DATA=str(data), AIRFLOW_STANDALONE_PORT=str(port), PATH=f"{REPO / '.venv' / 'bin'}:{env['PATH']}")
    return env


def ours(data: Path) -> dict[int, str]:
    """Processes still running with this test's DEMO_DATA in their environment (the script's whole tree): pid ->
    command line."""
    mark = f"DEMO_DATA={data}".encode()
    found = {}
    for environ in Path("/proc").glob("[0-9]*/environ"):
        with contextlib.suppress(OSError):
            if mark in environ.read_bytes().split(b"\0"):
                stat = (environ.parent / "stat").read_text()
                if stat.rsplit(")", 1)[1].split()[0] != "Z":
                    found[int(environ.parent.name)] = (environ.parent / "cmdline").read_bytes()[:120].decode()
    return found


def kill_ours(data: Path) -> None:
    """After a failed test: kill whatever of the script's tree is left."""
    for pid in ours(data):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def example_dags(db: Path) -> dict[str, int]:
    """dag_id -> is_paused, as the home's metadata database holds them (read-only)."""
    if not db.exists():
        return {}
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
            return dict(conn.execute("SELECT dag_id, is_paused FROM dag"))
    except sqlite3.Error:
        return {}


class Terminal:
    """A command run in a pseudo-terminal, its output collected."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: exec at once
            os.chdir(REPO)
            os.execvpe(argv[0], argv, env)
        self.output = b""
        self.exited = False

    def kill(self) -> None:
        """Kill the command's process group if it is still running (a failed test)."""
        if not self.exited:
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                os.killpg(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)

    def read(self, seconds: float) -> bool:
        """Collect output for up to ``seconds``; False once the terminal is closed."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if select.select([self.fd], [], [], 0.1)[0]:
                try:
                    data = os.read(self.fd, 65536)
                except OSError:
                    return False
                if not data:
                    return False
                self.output += data
        return True

    def wait(self, timeout: float) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.read(0.2)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.exited = True
                self.read(0.2)
                return os.waitstatus_to_exitcode(status)
        raise AssertionError(f"still running after {timeout} s:\n{self.text[-3000:]}")

    @property
    def text(self) -> str:
        return self.output.decode(errors="replace")

    @property
    def plain(self) -> str:
        """The output without colours and carriage returns."""
        return re.sub(r"\x1b\[[0-9;]*m|\r", "", self.text)


def as_make_demo_leaves_it(data: Path) -> None:
    """The Airflow home ``make demo`` leaves: its database migrated and the example DAGs written to it with the
    demo's environment (``airflow dags test`` writes every DAG of the folder, as ``dags reserialize`` does)."""
    code = ("import subprocess, demo; env = demo.airflow_env('http://127.0.0.1:9'); "
            "[subprocess.run([str(demo.BIN / 'airflow'), *a], env=env, check=True, capture_output=True) "
            "for a in (['db', 'migrate'], ['dags', 'reserialize'])]")
    subprocess.run([sys.executable, "-c", code], cwd=REPO / "scripts", env=env_for(data, 0), check=True, timeout=180)


@pytest.mark.timeout(300)
def test_one_ctrl_c_stops_make_standalone_cleanly_with_the_example_dags_unpaused(tmp_path: Path) -> None:
    data = tmp_path / "demo-data"
    as_make_demo_leaves_it(data)
    term = Terminal(["make", "--no-print-directory", "standalone"], env_for(data, free_port()))
    try:
        db = data / "airflow" / "airflow.db"
        deadline = time.monotonic() + 150
        components = ("scheduler", "triggerer", "dag-processor")  # each has written to the terminal
        while not all(re.search(rf"^{name} *\|", term.plain, re.M) for name in components):
            assert time.monotonic() < deadline, f"Airflow did not start:\n{term.text[-3000:]}"
            assert term.read(0.5), f"make standalone ended by itself:\n{term.text[-3000:]}"
        mark = len(term.output)
        os.write(term.fd, b"\x03")  # Ctrl-C: SIGINT to the terminal's foreground process group
        code = term.wait(120)
    finally:
        term.kill()
        leftover = ours(data)
        kill_ours(data)
    after = term.output[mark:].decode(errors="replace")
    assert code == 0, after[-3000:]
    assert "Traceback" not in after and "make: ***" not in after, after[-3000:]
    assert "[demo] stopped" in after and "Shutting down components" in after, after[-3000:]
    assert not leftover, leftover
    # The example DAGs were left unpaused, so the watcher's and the alias's DAGs started by themselves.
    assert example_dags(db) == {**dict.fromkeys(EXAMPLE_DAGS, 0), **PAUSED_EXAMPLES}

    # A home whose example DAGs an older `make demo` created paused: the script unpauses them before starting.
    old = tmp_path / "old-demo-data"
    shutil.copytree(data / "airflow", old / "airflow")
    with contextlib.closing(sqlite3.connect(old / "airflow" / "airflow.db")) as conn, conn:
        conn.execute("UPDATE dag SET is_paused = 1")
    assert example_dags(old / "airflow" / "airflow.db") == {**dict.fromkeys(EXAMPLE_DAGS, 1), **PAUSED_EXAMPLES}
    subprocess.run([sys.executable, "-c", "import demo, standalone; "
                    "standalone.unpause_example_dags(demo.airflow_env('http://127.0.0.1:9'))"],
                   cwd=REPO / "scripts", env=env_for(old, free_port()), check=True, timeout=120)
    assert example_dags(old / "airflow" / "airflow.db") == {**dict.fromkeys(EXAMPLE_DAGS, 0), **PAUSED_EXAMPLES}


def test_a_stop_while_airflow_prepares_its_database(tmp_path: Path) -> None:
    """SIGINT to the script's process group (a terminal's Ctrl-C without make) early, while ``airflow standalone``
    still migrates its database: no traceback, exit 0, nothing left running."""
    data = tmp_path / "demo-data"
    proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / "standalone.py")], cwd=REPO,
                            env=env_for(data, free_port()), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        lines = []
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line.decode(errors="replace"))
            if "airflow standalone: UI on" in lines[-1]:
                break
        time.sleep(2)  # `airflow standalone` is importing Airflow and migrating its database
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        leftover = ours(data)
        kill_ours(data)
    text = "".join(lines) + out.decode(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    assert "Traceback" not in text and "[demo] stopped" in text, text[-3000:]
    assert not leftover, leftover
