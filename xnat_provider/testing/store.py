"""The emulator's persistent state: SQLite metadata beside files on disk.

Why SQLite: every change is one transaction (WAL journal, ``synchronous=FULL``), so a crash in the middle of a
request can lose that request but never damages what was stored before it. Files are written to a temporary
name in their final folder and renamed into place before their row is committed, so a row never points at a
half-written file. Stop the emulator and start it again on the same folder and everything is still there.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    login TEXT PRIMARY KEY, password TEXT NOT NULL, admin INTEGER NOT NULL DEFAULT 0,
    enabled INTEGER NOT NULL DEFAULT 1, failed_logins INTEGER NOT NULL DEFAULT 0, locked_until REAL);
CREATE TABLE IF NOT EXISTS tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT, alias TEXT UNIQUE NOT NULL, secret TEXT NOT NULL,
    login TEXT NOT NULL, created REAL NOT NULL, expires REAL NOT NULL, single_use INTEGER NOT NULL DEFAULT 0,
    enabled INTEGER NOT NULL DEFAULT 1);
CREATE TABLE IF NOT EXISTS projects (
    id TEXT PRIMARY KEY, secondary_id TEXT, name TEXT, description TEXT, pi_firstname TEXT,
    pi_lastname TEXT, insert_date TEXT, insert_user TEXT, prearchive_code INTEGER NOT NULL DEFAULT 0,
    accessibility TEXT NOT NULL DEFAULT 'private');
CREATE TABLE IF NOT EXISTS subjects (
    id TEXT PRIMARY KEY, project TEXT NOT NULL, label TEXT NOT NULL, insert_date TEXT, insert_user TEXT,
    UNIQUE(project, label));
CREATE TABLE IF NOT EXISTS experiments (
    id TEXT PRIMARY KEY, project TEXT NOT NULL, subject_id TEXT NOT NULL, label TEXT NOT NULL,
    xsi_type TEXT NOT NULL, date TEXT, time TEXT, uid TEXT, modality TEXT, insert_date TEXT, insert_user TEXT,
    UNIQUE(project, label));
CREATE TABLE IF NOT EXISTS assessors (
    id TEXT PRIMARY KEY, experiment_id TEXT NOT NULL, project TEXT NOT NULL, label TEXT NOT NULL,
    xsi_type TEXT NOT NULL, insert_date TEXT, UNIQUE(project, label));
CREATE TABLE IF NOT EXISTS scans (
    pk INTEGER PRIMARY KEY AUTOINCREMENT, experiment_id TEXT NOT NULL, scan_id TEXT NOT NULL,
    xsi_type TEXT NOT NULL, type TEXT, series_description TEXT, uid TEXT, quality TEXT, note TEXT,
    modality TEXT, frames TEXT, UNIQUE(experiment_id, scan_id));
CREATE TABLE IF NOT EXISTS resources (
    id INTEGER PRIMARY KEY AUTOINCREMENT, owner_kind TEXT NOT NULL, owner_id TEXT NOT NULL,
    label TEXT NOT NULL, format TEXT, content TEXT, description TEXT, tags TEXT, root TEXT NOT NULL,
    UNIQUE(owner_kind, owner_id, label));
CREATE TABLE IF NOT EXISTS files (
    resource_id INTEGER NOT NULL, path TEXT NOT NULL, size INTEGER NOT NULL, md5 TEXT NOT NULL,
    format TEXT, content TEXT, tags TEXT, mtime_ns INTEGER, PRIMARY KEY(resource_id, path));
CREATE TABLE IF NOT EXISTS fields (
    owner_kind TEXT NOT NULL, owner_id TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY(owner_kind, owner_id, name));
CREATE TABLE IF NOT EXISTS prearchive (
    project TEXT NOT NULL, timestamp TEXT NOT NULL, folder TEXT NOT NULL, name TEXT NOT NULL,
    subject TEXT, tag TEXT, status TEXT NOT NULL, lastmod REAL NOT NULL, uploaded REAL NOT NULL,
    scan_date TEXT, scan_time TEXT, autoarchive TEXT, prevent_anon TEXT, prevent_auto_commit TEXT,
    source TEXT, visit TEXT, protocol TEXT, timezone TEXT, due REAL, next_op TEXT, op_arg TEXT,
    message TEXT, built_doc TEXT, held INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY(project, timestamp, folder));
CREATE TABLE IF NOT EXISTS experiment_status (experiment_id TEXT PRIMARY KEY, status TEXT NOT NULL);
"""


def now_text(ts: float | None = None) -> str:
    """XNAT's timestamp text, e.g. ``2024-01-01 12:00:00.123``."""
    ts = time.time() if ts is None else ts
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) + f".{int(ts * 1000) % 1000:03d}"


class Store:
    """Thread-safe access to the emulator's SQLite database (one connection behind a lock)."""

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.data_dir / "emulator.sqlite3"
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(SCHEMA)
        if "accessibility" not in {r[1] for r in self._conn.execute("PRAGMA table_info(projects)")}:
            # a data folder kept from before projects had an accessibility: XNAT's default, private
            self._conn.execute("ALTER TABLE projects ADD COLUMN accessibility TEXT NOT NULL DEFAULT 'private'")
        self._depth = 0

    @property
    def lock(self) -> threading.RLock:
        return self._lock

    @contextmanager
    def tx(self) -> Iterator[Store]:
        """A transaction (nested calls join the outer one). Holding it serialises writers."""
        with self._lock:
            outer = self._depth == 0
            if outer:
                self._conn.execute("BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield self
            except BaseException:
                self._depth -= 1
                if outer:
                    self._conn.execute("ROLLBACK")
                raise
            self._depth -= 1
            if outer:
                self._conn.execute("COMMIT")

    def all(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._conn.execute(sql, args).fetchall()]

    def one(self, sql: str, *args: Any) -> dict[str, Any] | None:
        with self._lock:
            r = self._conn.execute(sql, args).fetchone()
            return dict(r) if r else None

    def run(self, sql: str, *args: Any) -> int:
        """Execute a statement; returns the number of rows it changed."""
        with self._lock:
            return self._conn.execute(sql, args).rowcount

    def insert(self, sql: str, *args: Any) -> int:
        """Execute an INSERT; returns the new row id."""
        with self._lock:
            return int(self._conn.execute(sql, args).lastrowid or 0)

    def next_id(self, name: str) -> int:
        with self.tx():
            row = self.one("SELECT value FROM counters WHERE name=?", name)
            value = (row["value"] if row else 0) + 1
            self.run("INSERT OR REPLACE INTO counters(name, value) VALUES(?, ?)", name, value)
            return value

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def path(self, rel: str) -> Path:
        """Absolute path of a data-folder-relative path, refusing anything outside the folder."""
        p = (self.data_dir / rel).resolve()
        root = self.data_dir.resolve()
        if p != root and root not in p.parents:
            raise ValueError(f"path escapes the data folder: {rel}")
        return p


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
