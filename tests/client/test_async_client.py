"""The async client used by triggers: the same semantics as the sync client for the polling calls."""

from __future__ import annotations

import asyncio
import logging

import pytest

from xnat_provider.client import ClientConfig, XnatAuthError, XnatClient, XnatServerError
from xnat_provider.client.async_client import AsyncXnatClient
from xnat_provider.testing import XnatEmulator


def config(emu: XnatEmulator, password: str = "admin", **kw) -> ClientConfig:
    return ClientConfig(emu.url, "admin", password, backoff=0.01, backoff_max=0.05, **kw)


async def test_polling_calls_match_the_sync_client(emulator, study_zip) -> None:
    with XnatClient(config(emulator)) as sync:
        refs = sync.import_dicom(study_zip, "P1")
        expected = sync.list_prearchive("P1")
    async with AsyncXnatClient(config(emulator)) as xnat:
        got = await xnat.list_prearchive("P1")
        assert got == expected
        assert await xnat.list_prearchive("P1", status="READY", study_uid=expected[0].study_uid) == expected
        assert await xnat.list_prearchive("P1", status=["RECEIVING"]) == []
        assert (await xnat.find_prearchive(refs[0].uri)).status == "READY"
        assert await xnat.find_experiment("P1", "S01_MR1") is None
        assert xnat.login_attempts == 1
    with XnatClient(config(emulator)) as sync:
        sync.archive(refs[0])
        sync.set_fields("P1", {"qc": "pass"}, experiment="S01_MR1")
    async with AsyncXnatClient(config(emulator)) as xnat:
        exp = await xnat.find_experiment("P1", "S01_MR1")
        assert exp is not None and exp.xsi_type == "xnat:mrSessionData"
        assert await xnat.get_fields("P1", experiment="S01_MR1") == {"qc": "pass"}
        assert [s.id for s in await xnat.list_scans("P1", "S01_MR1")] == ["1", "2"]
        assert [e.label for e in await xnat.list_experiments("P1")] == ["S01_MR1"]
        assert await xnat.find_prearchive(refs[0].uri) is None


async def test_relogin_retries_and_typed_errors(emulator) -> None:
    async with AsyncXnatClient(config(emulator)) as xnat:
        await xnat.list_prearchive()
        emulator.expire_sessions()
        emulator.fail_next("GET", "^/data/prearchive", status=503, count=2)
        assert await xnat.list_prearchive() == []
        assert xnat.login_attempts == 2
        emulator.fail_next("GET", "^/data/prearchive", status=500, count=1, message="Boom")
        with pytest.raises(XnatServerError, match="Boom"):
            await xnat.list_prearchive()


async def test_wrong_password_and_no_secret_in_logs(emulator, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    async with AsyncXnatClient(config(emulator, password="Bad-Password-7")) as xnat:
        with pytest.raises(XnatAuthError) as info:
            await xnat.list_prearchive()
        assert xnat.login_attempts == 1
    assert "Bad-Password-7" not in caplog.text + str(info.value)


async def test_polls_do_not_block_the_event_loop(emulator) -> None:
    emulator.delay("GET", "^/data/prearchive", seconds=1.5)  # 5 ticks take 0.25 s: 1.25 s to spare
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.05)
            ticks += 1

    task = asyncio.create_task(ticker())
    async with AsyncXnatClient(config(emulator)) as xnat:
        await xnat.list_prearchive()
    task.cancel()
    assert ticks >= 5  # the loop kept running while the request waited
