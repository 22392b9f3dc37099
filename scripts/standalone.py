"""``make standalone``: ``airflow standalone`` beside the XNAT emulator, to watch the provider in the UI.

Starts the emulator on ``demo-data/xnat`` (project DEMO, admin/admin), points ``xnat_default`` at it, seeds
the landing folder, and runs Airflow's API server, scheduler, triggerer and DAG processor on SQLite with the
example DAGs, unpaused. Open http://127.0.0.1:8080 (Airflow prints the admin password; ``--port`` or
``AIRFLOW_STANDALONE_PORT`` picks another port). Things to watch:
- ``xnat_scheduled_ingest``: runs once at start (its latest hourly interval) and every hour, or trigger it;
  its ``wait_until_ready`` tasks defer (the triggerer holds the wait, no worker slot);
- ``xnat_prearchive_autoarchive``: starts by itself when the watcher sees a new READY session; drop another
  study in with ``xnat-emulator``'s REST API or run the ingest's import only;
- ``xnat_scan_pipeline``: starts by itself on the archive's asset events.

Stop with Ctrl-C (or SIGTERM): one is enough. The script stops Airflow (one SIGINT to ``airflow standalone``,
which stops its components), then the emulator, waiting up to 60 s for Airflow and 10 s for the emulator
before terminating and then killing what is left of its process group, and exits 0. Airflow and the emulator run in
process groups of their own, and the script takes the terminal's foreground while it runs, so a Ctrl-C reaches
only this script (not ``make``, not Airflow's components twice). A second Ctrl-C while stopping kills what is
left at once. Not part of CI.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import demo

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
STOP_TIMEOUT = 60.0  # seconds for Airflow to stop its components (the emulator gets 10)
RUN_MARK = "XNAT_STANDALONE_RUN"  # in the environment of everything this script starts, to find it all again
EXAMPLE_DAGS = ("xnat_scheduled_ingest", "xnat_prearchive_autoarchive", "xnat_scan_pipeline")


class Stop(Exception):
    """Raised in the main thread by the first SIGINT or SIGTERM."""


class Supervisor:
    """Children in process groups of their own, stopped once, in reverse order, however the script ends."""

    def __init__(self) -> None:
        self.children: list[tuple[str, subprocess.Popen]] = []
        self.stopping = False
        self.force = False
        self.holding = False
        self.pending: str | None = None

    def on_signal(self, signum: int, frame: object) -> None:
        if self.stopping:  # a second Ctrl-C: stop waiting, kill what is left
            if not self.force:
                demo.log("stopping already; killing what is left")
            self.force = True
            return
        self.stopping = True
        if self.holding:
            self.pending = signal.Signals(signum).name
            return
        raise Stop(signal.Signals(signum).name)

    @contextlib.contextmanager
    def signals_held(self) -> Iterator[None]:
        """Raise a stop only after the block, so that a child being started is always recorded (and stopped).
        (Not by blocking the signals: a child would inherit the blocked mask and never see them.)"""
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
        if self.pending:
            raise Stop(self.pending)

    def add(self, name: str, proc: subprocess.Popen) -> subprocess.Popen:
        self.children.append((name, proc))
        return proc

    def start(self, name: str, argv: list[str], **kwargs: object) -> subprocess.Popen:
        with self.signals_held():
            return self.add(name, subprocess.Popen(argv, process_group=0, **kwargs))  # type: ignore[call-overload]

    def stop_all(self) -> bool:
        """Stop every child, the last started first, then anything they started that escaped their process
        groups; True when everything stopped without being killed."""
        self.stopping = True
        clean = True
        for name, proc in reversed(self.children):
            if name == "airflow":
                # `airflow standalone` stops its components on one SIGINT, once it has started them; before that
                # (while it prepares the database) a SIGINT is a KeyboardInterrupt traceback, and SIGTERM ends it
                # at once with nothing left to stop.
                first = signal.SIGTERM if processes(parent=proc.pid) == [] else signal.SIGINT
                clean &= self.stop(name, proc, first, STOP_TIMEOUT)
            else:
                clean &= self.stop(name, proc, signal.SIGTERM, 10.0)
        return self.sweep() and clean

    def sweep(self) -> bool:
        """Terminate, then kill, any process still carrying this run's mark in its environment (a grandchild in a
        process group or session of its own); True when there was none."""
        left = marked_processes()
        if not left:
            return True
        demo.log(f"terminating {len(left)} process(es) left behind: {', '.join(map(str, left))}")
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in left:
                with contextlib.suppress(OSError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 10
            while (left := marked_processes()) and time.monotonic() < deadline and not self.force:
                time.sleep(0.1)
            if not left:
                break
        return False

    def stop(self, name: str, proc: subprocess.Popen, first: signal.Signals, timeout: float) -> bool:
        """``first`` to the child alone (it stops what it started), then SIGTERM and at last SIGKILL to its whole
        process group; finally whatever is left of the group (a grandchild that outlived its parent)."""
        pgid = proc.pid  # the child leads its own group
        if proc.poll() is None:
            demo.log(f"stopping {name} (pid {proc.pid})")
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(first)
            if not self.wait(proc, timeout):
                demo.log(f"killing {name}" if self.force else
                         f"{name} did not stop within {timeout:.0f} s: terminating its process group")
                return self.kill_group(pgid, proc)
        if not self.wait(None, 2.0, pgid):
            demo.log(f"{name} left processes behind: terminating them")
            return self.kill_group(pgid, None)
        return True

    def wait(self, proc: subprocess.Popen | None, timeout: float, pgid: int | None = None) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.force:
            if (proc is None or proc.poll() is not None) and (pgid is None or not group_alive(pgid)):
                return True
            time.sleep(0.1)
        return (proc is None or proc.poll() is not None) and (pgid is None or not group_alive(pgid))

    def kill_group(self, pgid: int, proc: subprocess.Popen | None) -> bool:
        """SIGTERM to the group, then SIGKILL after 10 s (at once after a second Ctrl-C); True if SIGTERM did."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        if self.wait(proc, 10.0, pgid):
            return True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        if proc is not None:
            proc.wait()
        demo.log(f"killed process group {pgid}")
        return False


def processes(*, parent: int | None = None, pgid: int | None = None) -> list[int] | None:
    """Live processes (not zombies) with this parent or in this process group, from ``/proc``; None without it."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    found = []
    for stat in proc.glob("[0-9]*/stat"):
        try:
            state, ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue
        if state != "Z" and (parent is None or int(ppid) == parent) and (pgid is None or int(pgrp) == pgid):
            found.append(int(stat.parent.name))
    return found


def marked_processes() -> list[int]:
    """Live processes other than this one whose environment carries this run's ``RUN_MARK`` (all descendants inherit
    it, wherever they moved), from ``/proc``; none where there is no ``/proc``."""
    mark = f"{RUN_MARK}={os.environ.get(RUN_MARK, '')}".encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        pid = int(environ.parent.name)
        with contextlib.suppress(OSError, IndexError):
            if (pid != os.getpid() and mark in environ.read_bytes().split(b"\0")
                    and (environ.parent / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"):
                found.append(pid)
    return found


def group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs (zombies, which a container's init may never reap, do not)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    found = processes(pgid=pgid)
    return True if found is None else bool(found)


@contextlib.contextmanager
def terminal_foreground() -> Iterator[None]:
    """While the script runs, its own process group is the terminal's foreground group, so a Ctrl-C goes to this
    script alone: not to ``make`` (which would then report an error whatever the script does), not to Airflow.
    Nothing changes when there is no terminal or the script is not in its foreground (run in the background)."""
    try:
        tty = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        yield
        return
    previous = None
    old_ttou = signal.signal(signal.SIGTTOU, signal.SIG_IGN)  # a background group may not set the foreground
    try:
        if os.tcgetpgrp(tty) == os.getpgrp():
            previous = os.getpgrp()
            os.setpgid(0, 0)
            try:
                os.tcsetpgrp(tty, os.getpgrp())
            except OSError:
                os.setpgid(0, previous)  # back where the terminal's Ctrl-C reaches this script
                previous = None
    except OSError:
        previous = None
    try:
        yield
    finally:
        if previous is not None and previous != os.getpgrp():
            with contextlib.suppress(OSError):
                os.tcsetpgrp(tty, previous)
        signal.signal(signal.SIGTTOU, old_ttou)
        os.close(tty)


def unpause_example_dags(env: dict[str, str]) -> None:
    """The example DAGs run by themselves here. ``demo.airflow_env`` creates them unpaused; a home where they were
    created paused (by an older ``make demo``) gets them unpaused through Airflow's CLI."""
    db = Path(env["AIRFLOW_HOME"]) / "airflow.db"
    if not db.exists():
        return  # a fresh home: the DAG processor creates them unpaused
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            marks = ",".join("?" * len(EXAMPLE_DAGS))
            paused = [r[0] for r in conn.execute(f"SELECT dag_id FROM dag WHERE is_paused AND dag_id IN ({marks})",
                                                 EXAMPLE_DAGS)]
    except sqlite3.Error:
        return  # no tables yet
    if paused:
        demo.log(f"unpausing {', '.join(sorted(paused))}")
        pattern = "^(" + "|".join(sorted(paused)) + ")$"
        done = subprocess.run([str(demo.BIN / "airflow"), "dags", "unpause", "--treat-dag-id-as-regex", "-y",
                               pattern], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode:
            demo.log(f"could not unpause them (unpause them in the UI): {done.stderr.strip()[-500:]}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("AIRFLOW_STANDALONE_PORT", "8080")),
                        help="the Airflow UI's port (default 8080)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sup = Supervisor()
    code, clean = 0, True
    for sig in STOP_SIGNALS:
        signal.signal(sig, sup.on_signal)
    os.environ[RUN_MARK] = f"{os.getpid()}-{time.time_ns()}"
    with terminal_foreground():
        try:
            demo.DATA.mkdir(parents=True, exist_ok=True)
            with sup.signals_held():
                emulator, url = demo.start_emulator(own_group=True)
                sup.add("emulator", emulator)
            demo.log(f"XNAT emulator on {url} (data in {demo.DATA / 'xnat'})")
            demo.seed_landing(demo.DATA / "landing")
            env = demo.airflow_env(url)
            env.update(AIRFLOW__API__HOST="127.0.0.1", AIRFLOW__API__PORT=str(args.port),
                       AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"http://127.0.0.1:{args.port}/execution/")
            unpause_example_dags(env)
            demo.log(f"airflow standalone: UI on http://127.0.0.1:{args.port} (Ctrl-C to stop)")
            airflow = sup.start("airflow", [str(demo.BIN / "airflow"), "standalone"], env=env)
            code = airflow.wait()
            demo.log(f"airflow standalone ended by itself (exit {code})")
        except Stop as stop:
            demo.log(f"{stop}: stopping")
        finally:
            clean = sup.stop_all()
    if not clean:
        demo.log("stopped, but some processes had to be killed")
        return code or 1
    demo.log("stopped")
    return code


if __name__ == "__main__":
    sys.exit(main())
