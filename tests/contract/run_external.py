"""Run the contract suite's live mode against the XNAT emulator started as a separate process.

    python tests/contract/run_external.py [--keep] [-- COMMAND ...]     (default COMMAND: make test-live)

Why: the live mode (``XNAT_URL`` and friends, ``make test-live``) is what a lab runs against its own XNAT, and no
real XNAT is reachable here or in CI. Pointing that same mode at an emulator in another process exercises all of
it: the variables, the refusal of an incomplete description, the credential check, every test through the
network with no handle on the server's internals (the fault-injection tests skip, as they would on a lab's
server).

What it does: starts ``xnat-emulator`` (a fresh data folder, a scratch project, a non-admin user with a random
password) in its own process group, waits until it answers HTTP, runs COMMAND with ``XNAT_URL``, ``XNAT_USER``,
``XNAT_PASSWORD``, ``XNAT_PROJECT`` (and ``XNAT_CONTRACT_TIMEOUT=60`` unless set) in its environment, and stops
the emulator by its PID however the run ends: success, failure, Ctrl-C or SIGTERM. Exits with COMMAND's status
(2 when the emulator could not be started). The password is never printed.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType

STARTED = re.compile(r"XNAT emulator listening on (http://\S+)")
PROJECT = "CONTRACT"
USER = "contract"


def log(message: str) -> None:
    print(f"[run_external] {message}", file=sys.stderr, flush=True)


def emulator_command() -> list[str]:
    """The ``xnat-emulator`` console script of this interpreter's environment (the one ``make`` built)."""
    script = Path(sys.executable).with_name("xnat-emulator")
    if script.exists():
        return [str(script)]
    found = shutil.which("xnat-emulator")
    if found is None:
        raise SystemExit("xnat-emulator is not installed in this environment (pip install -e . provides it)")
    return [found]


def wait_for_url(proc: subprocess.Popen[bytes], stdout: Path, deadline: float) -> str:
    """The URL the emulator prints on its first stdout line, once it has printed it."""
    while time.monotonic() < deadline:
        match = STARTED.search(stdout.read_text(errors="replace"))
        if match:
            return match.group(1)
        if proc.poll() is not None:
            raise RuntimeError(f"the emulator exited with status {proc.returncode} before it listened")
        time.sleep(0.1)
    raise RuntimeError("the emulator did not report its URL in time")


def wait_until_answering(url: str, deadline: float) -> None:
    """Until the server answers HTTP at all (any status: 401 without credentials is an answer)."""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/xapi/siteConfig/buildInfo", timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the emulator at {url} did not answer in time")


def stop(proc: subprocess.Popen[bytes] | None, what: str, first: int = signal.SIGTERM, grace: float = 10.0,
         group: bool = False) -> None:
    """Stop a process this script started, by its PID (with ``group``, its whole process group: it was started
    as the group's leader): ``first``, then SIGKILL after ``grace`` seconds. A no-op once it has exited."""
    if proc is None or proc.poll() is not None:
        return
    for sig, wait in ((first, grace), (signal.SIGKILL, 5.0)):
        try:
            if group:
                os.killpg(proc.pid, sig)
            else:
                os.kill(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            log(f"{what} (pid {proc.pid}) stopped")
            return
        except subprocess.TimeoutExpired:
            log(f"{what} (pid {proc.pid}) still running after {signal.Signals(sig).name}")


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks below


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--startup-timeout", type=float, default=30.0)
    parser.add_argument("--keep", action="store_true", help="keep the emulator's data folder and logs")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="after --: what to run (default: make test-live)")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    command = command or ["make", "test-live"]
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)

    work = Path(tempfile.mkdtemp(prefix="xnat-contract-external-"))
    password = secrets.token_urlsafe(16)
    emulator: subprocess.Popen[bytes] | None = None
    tests: subprocess.Popen[bytes] | None = None
    try:
        stdout, stderr = work / "emulator.out", work / "emulator.err"
        with open(stdout, "wb") as out, open(stderr, "wb") as err:
            emulator = subprocess.Popen(
                [*emulator_command(), "--host", "127.0.0.1", "--port", "0", "--data-dir", str(work / "data"),
                 "--user", f"{USER}:{password}", "--project", PROJECT, "--receiving-idle", "1"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True)
        deadline = time.monotonic() + args.startup_timeout
        try:
            url = wait_for_url(emulator, stdout, deadline)
            wait_until_answering(url, deadline)
        except RuntimeError as exc:
            log(f"{exc}; its stderr:\n{stderr.read_text(errors='replace')[-2000:]}")
            return 2
        log(f"emulator (pid {emulator.pid}) answers at {url}; running: {' '.join(command)}")
        env = {**os.environ, "XNAT_URL": url, "XNAT_USER": USER, "XNAT_PASSWORD": password, "XNAT_PROJECT": PROJECT}
        env.setdefault("XNAT_CONTRACT_TIMEOUT", "60")
        # Its own process group, so that the whole tree (make, pytest) is stopped with it if we are interrupted.
        tests = subprocess.Popen(command, env=env, start_new_session=True)
        try:
            return tests.wait()
        except KeyboardInterrupt:
            log("interrupted")
            stop(tests, "the test run", first=signal.SIGINT, group=True)
            return 130
    finally:
        stop(tests, "the test run", group=True)
        stop(emulator, "emulator")
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
