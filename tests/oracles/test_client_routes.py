"""Every public call of both clients, in one workflow, against the emulator: each request must be a route XNAT has.

The route oracle (``client_requests_use_xnat_routes`` in tests/conftest.py) checks every request our clients send
in every test against XNAT 1.8's own route table. This module makes sure that check sees *every* public call:
it runs a workflow that uses each public method of :class:`XnatClient` and :class:`AsyncXnatClient` at least
once, and fails when a public method is added without being added here. Operators, sensors and triggers are
covered by their own test modules, under the same oracle.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from pathlib import Path

import pytest

from tests.container_support import register_converter
from tests.support import wait_for
from xnat_provider.client import XnatClient
from xnat_provider.client.async_client import AsyncXnatClient
from xnat_provider.client.import_body import plan_import
from xnat_provider.client.imports import ImportMemory
from xnat_provider.client.transport import ClientConfig
from xnat_provider.testing import XnatEmulator, xnat_routes
from xnat_provider.testing.containers import hang_until_killed
from xnat_provider.testing.containers_api import is_container_service_route


def public(cls: type) -> set[str]:
    return {n for n in dir(cls) if not n.startswith("_") and callable(getattr(cls, n))}


@pytest.fixture
def called(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The names of the public client methods the test called (directly or through another public method)."""
    seen: set[str] = set()
    for cls in (XnatClient, AsyncXnatClient):
        for name in public(cls):
            real = getattr(cls, name)
            if isinstance(inspect.getattr_static(cls, name), staticmethod):
                continue  # extract_zip: called through the instance below, recorded by hand

            if asyncio.iscoroutinefunction(real):
                async def wrapper(*a, __real=real, __name=f"{cls.__name__}.{name}", **kw):  # type: ignore[no-untyped-def]
                    seen.add(__name)
                    return await __real(*a, **kw)
            else:
                def wrapper(*a, __real=real, __name=f"{cls.__name__}.{name}", **kw):  # type: ignore[no-untyped-def]
                    seen.add(__name)
                    return __real(*a, **kw)
            monkeypatch.setattr(cls, name, functools.wraps(real)(wrapper))
    return seen


def test_every_public_call_uses_routes_xnat_has(emulator: XnatEmulator, study_zip: Path, tmp_path: Path,
                                               called: set[str], client_requests_use_xnat_routes) -> None:
    emulator.add_user("oracle", "oracle-pw", admin=True)
    with XnatClient(emulator.url, "oracle", "oracle-pw", backoff=0.01) as x:
        x.login()
        assert x.whoami() == "oracle" and x.version() and x.project_exists("P1")
        assert "P1" in x.list_projects()
        # prearchive: import, look, rebuild, move, archive, delete
        refs = x.import_dicom(study_zip, "P1")
        plan = plan_import(study_zip)
        before = x.import_snapshot("P2", plan)
        assert x.import_arrived("P2", plan, before) == {}
        assert x.import_dicom_retry_safe([study_zip], "P2", memory=ImportMemory())[0].status == "READY"
        row = wait_for(lambda: x.find_prearchive(refs[0].uri))
        assert x.get_prearchive(refs[0].uri).name == row.name
        wait_for(lambda: x.list_prearchive("P1", status="READY"))
        assert x.list_prearchive_files(refs[0].uri)
        x.prearchive_reason(refs[0].uri)
        x.rebuild_prearchive(refs[0].uri)
        wait_for(lambda: x.list_prearchive("P1", status="READY"))
        archived = x.archive(refs[0].uri)
        second = x.import_dicom(study_zip, "P2")
        x.move_prearchive(second[0].uri, "P1")
        wait_for(lambda: x.list_prearchive("P1"))
        x.delete_prearchive(x.list_prearchive("P1")[0].uri)
        # the archive
        exp = x.get_experiment("P1", archived.label)
        assert x.find_experiment("P1", archived.label) == exp
        assert [e.id for e in x.list_experiments("P1")] == [exp.id]
        assert x.list_subjects("P1")
        path = x.experiment_path("P1", archived.label)
        assert x.scans_at(path) == x.list_scans("P1", archived.label) == x.list_scans("P1", exp)
        assert x.select_scans("P1", archived.label, "re:T.*")
        assert x.session_fingerprint("P1", archived.label)
        scan_path = x.object_path("P1", experiment=archived.label, scan="1")
        assert x.list_resources(scan_path)
        files = x.list_files(f"{scan_path}/resources/DICOM")
        x.download_file(files[0], tmp_path / "one.dcm")
        x.download_files([(f, tmp_path / "many" / f.path) for f in files])
        x.read_header(files[0])
        x.download_scans("P1", archived.label, tmp_path / "scans")
        x.download_session("P1", archived.label, tmp_path / "session")
        x.download_resource(scan_path, "DICOM", tmp_path / "resource")
        x.download_zip(f"{scan_path}/files", tmp_path / "zip", extract=False)
        called.add("XnatClient.extract_zip")
        x.extract_zip(next((tmp_path / "zip").glob("*.zip")), tmp_path / "unzipped")
        # writes: objects, resources, uploads, fields
        x.create_subject("P1", "S99")
        x.create_experiment("P1", "S99", "S99_MR1")
        x.ensure_resource(scan_path, "NOTES")
        note = tmp_path / "note.txt"
        note.write_text("checked\n")
        x.upload(note, x.object_path("P1", "S01", archived.label, scan="2"), "NOTES")
        x.set_fields("P1", {"qc": "pass"}, experiment=archived.label)
        assert x.get_fields("P1", experiment=archived.label) == {"qc": "pass"}
        x.delete_fields("P1", ["qc"], experiment=archived.label)
        assert x.dicom_dump("P1", archived.label, scan="1")
        # tokens
        token = x.issue_token()
        assert x.validate_token(token) == "oracle"
        x.invalidate_token(token)
        # the Container Service: commands, checks, launches, workflows, containers, logs, kill
        session_cmd = register_converter(emulator)
        register_converter(emulator, context="scan", name="scanconv", run=hang_until_killed)
        assert [c.name for c in x.list_commands()] == ["dcm2niix", "scanconv"]
        assert x.get_command(session_cmd["id"]).name == "dcm2niix"
        assert x.available_wrappers("P1", exp.xsi_type) and x.available_wrappers(None, "xnat:mrScanData")
        wrapper = x.get_wrapper("dcm2niix", "dcm2niix-session")
        assert x.wrapper_enabled(wrapper.id, "P1").enabled
        assert x.launch_ui("P1", wrapper.id, {"session": exp.id})["meta"]
        assert x.launch_target("P1", archived.label, "1").scan == "1"
        plan = x.plan_launch("P1", archived.label, command="dcm2niix", wrapper="dcm2niix-session")
        launch = x.launch(plan)
        container_id = wait_for(lambda: x.workflow_container(launch.workflow_id))
        assert x.get_workflow(launch.workflow_id).container_id == container_id
        done = wait_for(lambda: (c := x.get_container(container_id)).finalized and c)
        assert x.container_outputs(done) and x.container_log(done.id, "stdout", tail_bytes=100)
        assert x.find_containers(plan) and x.list_containers("P1") and x.list_containers(nonfinalized=True) == []
        assert x.find_launched(plan, [done.id], settle_seconds=0) is None
        scan_plans = [x.plan_launch("P1", archived.label, s, command="scanconv", wrapper="scanconv-scan")
                      for s in ("1", "2")]
        assert x.bulk_launch(scan_plans).plans == tuple(scan_plans)
        hanging = wait_for(lambda: x.find_containers(scan_plans[0]))[0]
        x.kill_container(hanging.id, project="P1")
        x.kill_container(wait_for(lambda: x.find_containers(scan_plans[1]))[0].id)

    async def polling() -> None:
        async with AsyncXnatClient(ClientConfig(emulator.url, "oracle", "oracle-pw")) as a:
            await a.login()
            assert await a.list_prearchive("P1") is not None
            assert await a.find_prearchive(refs[0].uri) is None  # archived: gone from the prearchive
            found = await a.find_experiment("P1", archived.label)
            assert found is not None and await a.experiment_path("P1", found) == path
            assert await a.list_scans("P1", archived.label) and await a.list_experiments("P1")
            assert await a.list_resources(scan_path)
            assert await a.get_fields("P1", experiment=archived.label) == {}
            await a.request("GET", "/data/projects")
            assert (await a.get_workflow(launch.workflow_id)).id == launch.workflow_id
            assert await a.workflow_container(launch.workflow_id) == container_id
            assert (await a.get_container(container_id)).succeeded

    asyncio.run(polling())
    assert called == {f"{c.__name__}.{n}" for c in (XnatClient, AsyncXnatClient) for n in public(c)}, (
        "public client methods this workflow does not call: add them here, so the route oracle checks them: "
        f"{sorted({f'{c.__name__}.{n}' for c in (XnatClient, AsyncXnatClient) for n in public(c)} - called)}")
    sent = client_requests_use_xnat_routes
    assert len(sent) > 60 and all(
        xnat_routes.is_exact(m, p[len("/data"):]) for m, p in sent if p.startswith("/data/"))
    assert all(is_container_service_route(m, p) for m, p in sent if p.startswith("/xapi/") and "siteConfig" not in p)
    assert {m for m, p in sent if p.startswith("/xapi/")} == {"GET", "POST"}
