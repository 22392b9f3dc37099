"""Private PostgreSQL and Redis servers for the distributed test: started on free loopback ports in a folder of
the run's own, stopped by PID however the run ends, nothing left in the machine's own clusters.

Where the servers are not installed, they are installed from Debian's packages (CI runs as root on a fresh
machine that reaches the package registries); a user's machine may already have them, and a non-root user
without them gets a message saying what to install.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

DEBIAN_PACKAGES = {"postgres": "postgresql", "redis-server": "redis-server"}


def log(message: str) -> None:
    print(f"[distributed] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL server's bin folder (Debian keeps it out of PATH), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def missing_servers() -> list[str]:
    missing = [] if postgres_bin() else ["postgres"]
    return missing + ([] if shutil.which("redis-server") else ["redis-server"])


def ensure_installed() -> None:
    """Install what is missing from Debian's packages when running as root with apt-get; else explain."""
    missing = missing_servers()
    if not missing:
        return
    packages = [DEBIAN_PACKAGES[m] for m in missing]
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise SystemExit(f"the distributed test needs {' and '.join(missing)}: install {' '.join(packages)} "
                         "(e.g. sudo apt-get install " + " ".join(packages) + ") or run it as root on Debian")
    log(f"installing {' '.join(packages)} from Debian's packages")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    if subprocess.run(install, env=env, stdout=subprocess.DEVNULL).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, stdout=subprocess.DEVNULL, check=True)
        subprocess.run(install, env=env, stdout=subprocess.DEVNULL, check=True)
    if still := missing_servers():
        raise SystemExit(f"installed {' '.join(packages)} but still cannot find {' and '.join(still)}")


def wait_port(port: int, what: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode} while starting")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.2)
    raise SystemExit(f"{what} did not listen on port {port} within {timeout:.0f} s")


@dataclass(frozen=True)
class Server:
    """A server process, leading a process group of its own (the run's supervisor stops it by PID)."""

    name: str
    port: int
    proc: subprocess.Popen = field(repr=False)


def start_postgres(folder: Path, user: str, password: str, database: str) -> Server:
    """A new cluster in ``folder`` (password authentication on TCP, as a real deployment has), run as the
    ``postgres`` system user when this runs as root (PostgreSQL refuses to run as root)."""
    bin_dir = postgres_bin()
    assert bin_dir is not None
    folder.mkdir(parents=True, exist_ok=True)
    prefix: list[str] = []
    if os.geteuid() == 0:
        account = pwd.getpwnam("postgres")
        os.chown(folder, account.pw_uid, account.pw_gid)
        prefix = ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--init-groups"]
    data, pwfile = folder / "data", folder / "pwfile"
    pwfile.write_text(password + "\n")
    if prefix:
        os.chown(pwfile, account.pw_uid, account.pw_gid)
    subprocess.run([*prefix, str(bin_dir / "initdb"), "-D", str(data), "-U", user, f"--pwfile={pwfile}",
                    "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync"],
                   check=True, stdout=subprocess.DEVNULL)
    port = free_port()
    proc = subprocess.Popen(
        [*prefix, str(bin_dir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(folder),
         "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=200"],
        stdout=open(folder / "postgres.log", "w"), stderr=subprocess.STDOUT, process_group=0)
    server = Server("postgres", port, proc)
    wait_port(port, "postgres", proc)
    for _ in range(50):  # listening comes a moment before accepting connections
        done = subprocess.run([*prefix, str(bin_dir / "createdb"), "-h", str(folder), "-p", str(port), "-U", user,
                               database], capture_output=True, text=True)
        if done.returncode == 0:
            return server
        time.sleep(0.2)
    raise SystemExit(f"could not create the database: {done.stderr.strip()}")


def start_redis(folder: Path) -> Server:
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(folder)], stdout=open(folder / "redis.log", "w"), stderr=subprocess.STDOUT, process_group=0)
    wait_port(port, "redis", proc)
    return Server("redis", port, proc)
