"""Helpers shared by the sensor and trigger tests: sessions put on the emulator over HTTP, bounded waits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from xnat_provider.testing import XnatEmulator
from xnat_provider.testing.samples import make_study, zip_files

AUTH = ("admin", "admin")
REBUILD = r"/data/services/prearchive/rebuild"


def put_session(emu: XnatEmulator, tmp_path: Path, label: str, subject: str = "S01", project: str = "P1",
                archive: bool = False, series: tuple[tuple[int, str], ...] = ((1, "T1"), (2, "T2"))) -> dict[str, str]:
    """Import a one-instance-per-series study: READY in the prearchive (or archived). Returns its row."""
    study = make_study(tmp_path / f"dicom-{label}", patient_name=subject, patient_id=label, instances=1,
                       series=series)
    body = zip_files(study.files, tmp_path / f"{label}.zip").read_bytes()
    dest = f"/archive/projects/{project}" if archive else f"/prearchive/projects/{project}"
    resp = requests.post(f"{emu.url}/data/services/import", auth=AUTH, data=body,
                         params={"import-handler": "DICOM-zip", "dest": dest},
                         headers={"Content-Type": "application/zip"}, timeout=30)
    resp.raise_for_status()
    if archive:
        return {"label": label, "study_uid": study.study_uid}
    row = next(r for r in prearchive(emu, project) if r["name"] == label)
    return {**row, "study_uid": study.study_uid}


def prearchive(emu: XnatEmulator, project: str = "P1") -> list[dict[str, str]]:
    resp = requests.get(f"{emu.url}/data/prearchive/projects/{project}", auth=AUTH, params={"format": "json"},
                        timeout=30)
    resp.raise_for_status()
    return resp.json()["ResultSet"]["Result"]


def status_of(emu: XnatEmulator, row: dict[str, str]) -> str | None:
    return next((r["status"] for r in prearchive(emu, row["project"]) if r["folderName"] == row["folderName"]
                 and r["timestamp"] == row["timestamp"]), None)


def hold(emu: XnatEmulator, row: dict[str, str], status: str) -> None:
    emu.hold_prearchive(row["project"], row["timestamp"], row["folderName"], status)


def prompt_queue(emu: XnatEmulator) -> None:
    """Queued prearchive operations run at the emulator's next tick instead of ``queue_seconds`` later: a rebuilt
    session goes QUEUED_BUILDING, _BUILDING, BUILDING, READY one status per look (or per tick), so a sensor whose
    stall_timeout is shorter than a second can never find it in one status long enough to call it stalled again
    (with the fixture's 0.2 s steps only 0.1-0.3 s separate the two, which a loaded machine can eat)."""
    emu.prearchive.queue_seconds = 0.0


def uri(row: dict[str, str]) -> str:
    return f"/data/prearchive/projects/{row['project']}/{row['timestamp']}/{row['folderName']}"


def archive(emu: XnatEmulator, row: dict[str, str]) -> requests.Response:
    return requests.post(f"{emu.url}/data/services/archive", auth=AUTH, params={"src": uri(row)}, timeout=30)



async def until(check: Callable[[], Any], what: str, timeout: float = 60.0) -> None:
    """Wait until ``check()`` is true (polled every 20 ms), or fail saying ``what`` did not happen in ``timeout``
    seconds: a slow machine only makes the test wait longer."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.02)


async def first_event(trigger: Any, timeout: float = 10.0) -> dict[str, Any]:
    """The trigger's first event payload, or a test failure after ``timeout`` seconds."""
    gen = trigger.run()
    try:
        event = await asyncio.wait_for(gen.__anext__(), timeout)
    finally:
        await gen.aclose()
    return event.payload


class FakeAssetStore:
    """The asset state store's async accessors, shared by 'triggerer restarts' (new trigger instances)."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.writes = 0

    async def aget(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    async def aset(self, key: str, value: Any) -> None:
        self.writes += 1
        self.data[key] = list(value) if isinstance(value, list) else value
