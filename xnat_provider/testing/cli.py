"""``xnat-emulator``: run the XNAT emulator in the foreground until SIGINT or SIGTERM.

The emulator is imported by :func:`main`, so that without the ``testing`` extra the command ends with one line
saying what to install rather than a traceback (and ``--help`` works either way).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from . import MissingTestingExtraError


def _user(value: str) -> tuple[str, str]:
    login, sep, password = value.partition(":")
    if not sep or not login:
        raise argparse.ArgumentTypeError(f"expected LOGIN:PASSWORD, got {value!r}")
    return login, password


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="xnat-emulator", description="Serve an XNAT 1.8 REST API emulator.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--data-dir", default=None, help="keep data here (default: a temporary folder)")
    p.add_argument("--user", action="append", type=_user, default=None, metavar="LOGIN:PASSWORD",
                   help="repeatable; default admin:admin")
    p.add_argument("--project", action="append", default=None, help="repeatable; default P1")
    p.add_argument("--session-timeout", type=float, default=900.0, help="idle seconds (XNAT: 900)")
    p.add_argument("--receiving-idle", type=float, default=5.0,
                   help="seconds before a RECEIVING session is built (XNAT: 300)")
    p.add_argument("--range", dest="range_requests", action="store_true", default=False,
                   help="answer a single-range GET of a file with 206, as XNAT 1.8 (Restlet's RangeFilter) does")
    p.add_argument("--no-range", dest="range_requests", action="store_false",
                   help="ignore HTTP Range headers (the default: the harder case for clients)")
    p.add_argument("--archive-conflict-status", type=int, choices=(409, 500), default=500)
    p.add_argument("--no-require-login", dest="require_login", action="store_false",
                   help="an open site (XNAT's requireLogin=false): requests without valid credentials, expired "
                        "sessions included, are served as the guest user instead of 401")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from .emulator import XnatEmulator
    except MissingTestingExtraError as exc:
        print(f"xnat-emulator: {exc}", file=sys.stderr)
        return 1
    users = dict(args.user) if args.user else {"admin": "admin"}
    emulator = XnatEmulator(
        data_dir=args.data_dir, users=users, projects=args.project or ["P1"], host=args.host, port=args.port,
        session_timeout=args.session_timeout, receiving_idle=args.receiving_idle, require_login=args.require_login,
        range_requests=args.range_requests, archive_conflict_status=args.archive_conflict_status,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    emulator.start()
    print(f"XNAT emulator listening on {emulator.url}", flush=True)
    print(f"data folder: {emulator.data_dir}", file=sys.stderr, flush=True)
    try:
        stop.wait()
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
