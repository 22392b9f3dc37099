"""The Container Service plugin's API over HTTP: commands, wrappers and where they are enabled, the launch UI,
launches on a session and on a scan, the launch's workflow leading to its container, the container's statuses
through to Complete (outputs uploaded as a resource), Failed (stderr kept) and a kill, bulk launches, and what the
plugin refuses.

What each test asserts is the plugin's own behaviour, ``NrgXnat/container-service`` 3.7.3 (``docs/container-
service.md`` names the classes and lines): ``LaunchRestApi``, ``ContainerRestApi``, ``CommandRestApi``,
``CommandConfigurationRestApi``, ``ContainerServiceImpl``, ``ContainerFinalizeServiceImpl``.
"""

from __future__ import annotations

import io
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests

from xnat_provider.testing import XnatEmulator
from xnat_provider.testing.containers import (
    Containers,
    RunContext,
    exit_with,
    hang_until_killed,
    simple_command,
    status_is_terminal,
)
from xnat_provider.testing.containers_api import is_container_service_route
from xnat_provider.testing.samples import make_study, zip_files

TIMEOUT = 20.0


# ---- helpers ------------------------------------------------------------------------------------------------

def archive_study(http: requests.Session, emu: XnatEmulator, tmp: Path, patient: str = "S01",
                  label: str = "S01_MR1") -> str:
    """Import a real two-series MR study straight into P1's archive; returns the session's ID."""
    study = make_study(tmp / label, patient_name=patient, patient_id=label)
    body = zip_files(study.files, tmp / f"{label}.zip").read_bytes()
    r = http.post(emu.url + "/data/services/import", params={"dest": "/archive/projects/P1"}, data=body,
                  headers={"Content-Type": "application/zip"}, timeout=30)
    assert r.status_code == 200, r.text
    rows = http.get(emu.url + "/data/projects/P1/experiments", params={"format": "json"}, timeout=10).json()
    return next(e["ID"] for e in rows["ResultSet"]["Result"] if e["label"] == label)


def wait_for(check: Callable[[], Any], timeout: float = TIMEOUT, what: str = "condition") -> Any:
    deadline = time.time() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def in_order(seen: list[str], expected: list[str]) -> bool:
    """``seen`` (what polls saw) is ``expected`` with steps possibly missed between two polls."""
    it = iter(expected)
    return all(any(s == e for e in it) for s in seen)


def stepped(steps: Containers, look: Callable[[], str], count: int) -> list[str]:
    """What ``look()`` says now and after each of ``count`` steps of a held launch, repeats left out."""
    seen = [look()]
    for _ in range(count):
        steps.step()
        if seen[-1] != (now := look()):
            seen.append(now)
    return seen


def workflow(http: requests.Session, emu: XnatEmulator, wf_id: str) -> dict:
    r = http.get(f"{emu.url}/data/workflows/{wf_id}", params={"format": "json"}, timeout=10)
    assert r.status_code == 200, r.text
    item = r.json()["items"][0]
    assert item["meta"]["xsi:type"] == "wrk:workflowData"
    return item["data_fields"]


def follow(http: requests.Session, emu: XnatEmulator, wf_id: str) -> tuple[list[str], dict]:
    """Poll the workflow as a client would until it names its container or fails; returns the statuses seen."""
    seen: list[str] = []

    def step() -> dict | None:
        wf = workflow(http, emu, wf_id)
        if not seen or seen[-1] != wf["status"]:
            seen.append(wf["status"])
        return wf if wf.get("comments") or wf["status"].startswith("Failed") else None

    return seen, wait_for(step, what=f"workflow {wf_id}")


def container(http: requests.Session, emu: XnatEmulator, key: str | int) -> dict:
    r = http.get(f"{emu.url}/xapi/containers/{key}", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def until_terminal(http: requests.Session, emu: XnatEmulator, key: str | int) -> tuple[list[str], dict]:
    """Poll a container until its status is terminal and its finalization is over (the last entry written)."""
    seen: list[str] = []

    def step() -> dict | None:
        c = container(http, emu, key)
        if not seen or seen[-1] != c["status"]:
            seen.append(c["status"])
        done = status_is_terminal(c["status"]) and c["history"][-1]["entity-type"] == "system" and \
            status_is_terminal(c["history"][-1]["status"])
        return c if done else None

    return seen, wait_for(step, what=f"container {key}")


def launch(http: requests.Session, emu: XnatEmulator, path: str, **kwargs: Any) -> requests.Response:
    return http.post(emu.url + path, timeout=10, **kwargs)


def resources(http: requests.Session, emu: XnatEmulator, owner: str) -> dict[str, dict]:
    r = http.get(f"{emu.url}/data{owner}/resources", params={"format": "json"}, timeout=10)
    return {row["label"]: row for row in r.json()["ResultSet"]["Result"]}


def files(http: requests.Session, emu: XnatEmulator, owner: str, label: str) -> list[str]:
    r = http.get(f"{emu.url}/data{owner}/resources/{label}/files", params={"format": "json"}, timeout=10)
    assert r.status_code == 200, r.text
    return sorted(row["Name"] for row in r.json()["ResultSet"]["Result"])


def dicom_converter(ctx: RunContext) -> int:
    """A 'converter': reads every DICOM in its input mount, writes one text file per series (in a folder too)."""
    series: dict[str, int] = {}
    for f in sorted(ctx.mounts["in"].rglob("*.dcm")):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        series[str(ds.SeriesNumber)] = series.get(str(ds.SeriesNumber), 0) + 1
    out = ctx.mounts["out"]
    for number, count in series.items():
        (out / f"series{number}.txt").write_text(f"{count} slices\n")
    (out / "qc").mkdir()
    (out / "qc" / "report.txt").write_text("ok\n")
    ctx.stdout.write(f"converted {sum(series.values())} files in {len(series)} series\n")
    ctx.stderr.write("a warning\n")
    return 0


@pytest.fixture
def session(http: requests.Session, emulator: XnatEmulator, tmp_path: Path) -> str:
    return archive_study(http, emulator, tmp_path)


@pytest.fixture
def scan_command(emulator: XnatEmulator) -> dict:
    return emulator.containers.register_command(simple_command("dcm2txt", context="scan"), run=dicom_converter,
                                                enable_for=["P1"])


@pytest.fixture
def session_command(emulator: XnatEmulator) -> dict:
    return emulator.containers.register_command(
        simple_command("sesscount", image="emulator/sesscount:2", context="session", output_resource="COUNTS",
                       output_format="TXT"), run=dicom_converter, enable_for=["P1"])


# ---- commands, wrappers, enabled ----------------------------------------------------------------------------

def test_commands_are_listed_as_the_plugin_writes_them(http, emulator, scan_command, session_command) -> None:
    r = http.get(emulator.url + "/xapi/commands", timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    cmds = r.json()
    assert [c["name"] for c in cmds] == ["dcm2txt", "sesscount"]
    cmd = cmds[0]
    # Command's @JsonProperty names: kebab-case, the wrappers under "xnat", nulls omitted (NON_NULL)
    assert {"id", "name", "image", "type", "mounts", "inputs", "outputs", "xnat", "environment-variables",
            "visibility"} <= set(cmd)
    assert cmd["type"] == "docker" and cmd["visibility"] == "public" and "label" not in cmd
    wrapper = cmd["xnat"][0]
    assert wrapper["name"] == "dcm2txt-scan" and wrapper["contexts"] == ["xnat:imageScanData"]
    assert wrapper["external-inputs"][0] == {"name": "scan", "type": "Scan", "required": True, "load-children": True}
    handler = wrapper["output-handlers"][0]
    assert handler["as-a-child-of"] == "scan" and handler["type"] == "Resource" and handler["label"] == "NIFTI"

    assert [c["name"] for c in http.get(emulator.url + "/xapi/commands", params={"name": "sesscount"}).json()] == \
        ["sesscount"]
    assert http.get(emulator.url + "/xapi/commands", params={"image": "nope"}).json() == []
    r = http.get(emulator.url + "/xapi/commands", params={"version": "1.0"})
    assert r.status_code == 400 and r.text == 'Bad request:\nIf "version" is specified, must specify "name" as well.'
    one = http.get(f"{emulator.url}/xapi/commands/{cmd['id']}").json()
    assert one == cmd
    r = http.get(f"{emulator.url}/xapi/commands/999")
    assert r.status_code == 404 and r.text == "Could not find entity with ID 999"
    # restrictToEnabledForSite keeps commands with at least one wrapper enabled on the site
    http.put(f"{emulator.url}/xapi/wrappers/{wrapper['id']}/disabled").raise_for_status()
    names = [c["name"] for c in http.get(emulator.url + "/xapi/commands",
                                         params={"restrictToEnabledForSite": "true"}).json()]
    assert names == ["sesscount"]


def test_available_commands_and_enabled_flags(http, emulator, scan_command, session_command) -> None:
    scan_wid, sess_wid = scan_command["xnat"][0]["id"], session_command["xnat"][0]["id"]
    avail = http.get(f"{emulator.url}/xapi/projects/P1/commands/available",
                     params={"xsiType": "xnat:mrSessionData"}).json()
    assert [a["wrapper-id"] for a in avail] == [sess_wid]  # an MR session is an xnat:imageSessionData
    assert avail[0]["enabled"] is True and avail[0]["root-element-name"] == "session"
    assert {"command-id", "command-name", "wrapper-name", "wrapper-contexts", "image-name",
            "image-type"} <= set(avail[0])
    scans = http.get(f"{emulator.url}/xapi/commands/available",
                     params={"project": "P2", "xsiType": "xnat:mrScanData"}).json()
    assert [(a["wrapper-id"], a["enabled"]) for a in scans] == [(scan_wid, False)]  # P2 never enabled it
    r = http.get(f"{emulator.url}/xapi/projects/P1/commands/available", params={"xsiType": "xnat:nope"})
    assert r.status_code == 400 and r.text.startswith("Bad XSI Type.")
    r = http.get(f"{emulator.url}/xapi/projects/NOPE/commands/available", params={"xsiType": "xnat:mrSessionData"})
    assert r.status_code == 404 and "NOPE" in r.text

    # Site: enabled unless disabled (a Boolean as JSON); project: a report, enabled only when set for it
    assert http.get(f"{emulator.url}/xapi/wrappers/{scan_wid}/enabled").json() is True
    report = http.get(f"{emulator.url}/xapi/projects/P2/wrappers/{scan_wid}/enabled").json()
    assert report == {"enabled-for-site": True, "enabled-for-project": False, "project": "P2"}
    assert http.put(f"{emulator.url}/xapi/projects/P2/wrappers/{scan_wid}/enabled").status_code == 200
    assert http.get(f"{emulator.url}/xapi/projects/P2/wrappers/{scan_wid}/enabled").json()["enabled-for-project"]
    name = scan_command["xnat"][0]["name"]
    path = f"/xapi/projects/P2/commands/{scan_command['id']}/wrappers/{name}"
    assert http.put(emulator.url + path + "/disabled").status_code == 200
    assert http.get(emulator.url + path + "/enabled").json()["enabled-for-project"] is False
    # disabled on the site means disabled everywhere
    assert http.put(f"{emulator.url}/xapi/commands/{scan_command['id']}/wrappers/{name}/disabled").status_code == 200
    assert http.get(f"{emulator.url}/xapi/projects/P1/wrappers/{scan_wid}/enabled").json() == \
        {"enabled-for-site": False, "enabled-for-project": False, "project": "P1"}
    r = http.get(f"{emulator.url}/xapi/commands/{scan_command['id']}/wrappers/nope/enabled")
    assert r.status_code == 404 and r.text == f"Command {scan_command['id']} has no wrapper nope"
    # The site switches are the ContainerManager's; a plain user is refused with an empty 403
    r = requests.get(f"{emulator.url}/xapi/wrappers/{scan_wid}/enabled", auth=("alice", "alice-pw"), timeout=10)
    assert r.status_code == 403 and r.text == ""


def test_launch_ui_lists_inputs_and_the_values_found(http, emulator, session, scan_command) -> None:
    wid = scan_command["xnat"][0]["id"]
    uri = f"/archive/experiments/{session}/scans/1"
    r = http.get(f"{emulator.url}/xapi/projects/P1/wrappers/{wid}/launch", params={"scan": uri})
    assert r.status_code == 200, r.text
    ui = r.json()
    assert ui["meta"]["wrapper-id"] == wid and ui["meta"]["image-name"] == "emulator/dcm2niix:1.0"
    root = ui["input-config"][0]
    assert (root["name"], root["input-type"], root["required"]) == ("scan", "static", True)
    assert root["children"][0]["name"] == "input-resource"
    values = ui["input-values"][0]
    assert values["name"] == "scan" and values["values"][0]["value"] == uri
    child = values["values"][0]["children"][0]
    assert child["name"] == "input-resource" and child["values"][0]["label"] == "DICOM"
    # Without a value for the root element the input is a text box
    bare = http.get(f"{emulator.url}/xapi/wrappers/{wid}/launch").json()
    assert bare["input-config"][0]["input-type"] == "text" and bare["input-values"][0]["values"] == []
    r = http.get(f"{emulator.url}/xapi/wrappers/999/launch")
    assert r.status_code == 404 and r.text == "No command with wrapper with id 999"
    r = http.get(f"{emulator.url}/xapi/wrappers/{wid}/launch", params={"scan": "/data/experiments/x/scans/1"})
    assert r.status_code == 500 and r.text.startswith("The command could not be resolved.\nInvalid Scan uri")


# ---- launching and running ----------------------------------------------------------------------------------

def test_launch_on_a_session_runs_to_complete_and_uploads_the_output(http, emulator, session,
                                                                     session_command) -> None:
    wid = session_command["xnat"][0]["id"]
    # Held, the launch rests at each step until the next steps.step(): every status below is seen for certain.
    with emulator.containers.held() as steps:
        r = launch(http, emulator, f"/xapi/projects/P1/wrappers/{wid}/root/session/launch",
                   json={"session": session})
        assert r.status_code == 200, r.text
        report = r.json()
        # LaunchReport.Success: the workflow's id, never a container id; command-id 0 on the wrapper-id path
        assert report == {"status": "success", "params": {"session": session}, "command-id": 0, "wrapper-id": wid,
                          "workflow-id": report["workflow-id"]}
        assert report["workflow-id"].isdigit()

        def workflow_status() -> str:
            return workflow(http, emulator, report["workflow-id"])["status"]

        seen = stepped(steps, workflow_status, 2)  # command resolution, then the container created
        # queued (with the JMS prefix), then command resolution, then the container's own statuses
        assert in_order(seen, ["_Queued", "Staging", "Queued", "Created"]) and seen[0] == "_Queued"
        assert seen == ["_Queued", "Staging", "Created"]
        wf = workflow(http, emulator, report["workflow-id"])
        assert wf["ID"] == session and wf["ExternalID"] == "P1" and wf["data_type"] == "xnat:mrSessionData"
        assert wf["pipeline_name"] == "sesscount-session" and wf["justification"] == "Container launch"
        docker_id = wf["comments"]  # the container's backend id, which /xapi/containers/{id} takes as well
        assert len(docker_id) == 64

        # started, its process run, then die, queued for finalizing, finalizing, complete
        statuses = stepped(steps, lambda: container(http, emulator, docker_id)["status"], 6)
    _, c = until_terminal(http, emulator, docker_id)
    assert statuses == ["Created", "Running", "die", "_die", "Finalizing", "Complete"]
    assert c["status"] == "Complete" and c["container-id"] == docker_id
    assert c["workflow-id"] == report["workflow-id"] and c["project"] == "P1" and c["user-id"] == "admin"
    assert in_order(statuses, ["Created", "Running", "die", "_die", "Finalizing", "Complete"])
    assert statuses[-1] == "Complete" and "Running" in statuses
    assert [h["status"] for h in c["history"]] == ["Created", "create", "start", "die", "_die", "Finalizing",
                                                   "Complete"]
    assert c["history"][0]["entity-type"] == "user" and c["history"][0]["entity-id"] == "admin"
    assert [h.get("exitCode") for h in c["history"]][3] == "0"
    assert c["env"]["XNAT_PASS"] == "******" and c["env"]["XNAT_HOST"] == emulator.url
    assert c["container-labels"]["XNAT_ID"] == session and c["container-labels"]["XNAT_PROJECT"] == "P1"
    out = c["outputs"][0]
    assert out["name"] == "output:output-resource" and out["handled-by"] == "session" and out["label"] == "COUNTS"
    assert "created" not in out  # since 3.4.3 the finalizer no longer saves the created URI
    assert workflow(http, emulator, report["workflow-id"])["status"] == "Complete"

    # The output: a new resource on the session, files and folders as the container wrote them
    owner = f"/experiments/{session}"
    assert resources(http, emulator, owner)["COUNTS"]["format"] == "TXT"
    assert files(http, emulator, owner, "COUNTS") == ["report.txt", "series1.txt", "series2.txt"]
    got = http.get(f"{emulator.url}/data{owner}/resources/COUNTS/files/series1.txt", timeout=10)
    assert got.text == "3 slices\n"  # the whole session was mounted: both series, three slices each
    assert http.get(f"{emulator.url}/data{owner}/resources/COUNTS/files/qc/report.txt").text == "ok\n"

    log = http.get(f"{emulator.url}/xapi/containers/{c['id']}/logs/stdout", timeout=10)
    assert log.status_code == 200 and log.text == "converted 6 files in 2 series\n"
    assert log.headers["Content-Disposition"] == f'attachment; filename="{c["id"]}-stdout.log"'
    assert http.get(f"{emulator.url}/xapi/containers/{c['id']}/logs/stderr").text == "a warning\n"
    assert [Path(p).name for p in c["log-paths"]] == ["stdout.log", "stderr.log"]
    zipped = zipfile.ZipFile(io.BytesIO(http.get(f"{emulator.url}/xapi/containers/{c['id']}/logs").content))
    assert sorted(zipped.namelist()) == ["stderr.log", "stdout.log"]
    since = http.get(f"{emulator.url}/xapi/containers/{c['id']}/logSince/stdout").json()
    assert since == {"content": "converted 6 files in 2 series\n", "fromFile": True, "timestamp": "-1",
                     "bytesRead": -1}
    # The container's alias token (XNAT_USER / XNAT_PASS) is invalidated at finalization
    assert emulator.store.one("SELECT 1 FROM tokens WHERE alias=?", c["env"]["XNAT_USER"]) is None


def test_launch_on_a_scan_by_query_parameters_and_by_command_and_wrapper_name(http, emulator, session,
                                                                              scan_command) -> None:
    wid, name = scan_command["xnat"][0]["id"], scan_command["xnat"][0]["name"]
    uri = f"/archive/experiments/{session}/scans/2"
    # The project's query-parameter launch is spelled /wrapper/ (LaunchRestApi: the JSON one is /wrappers/)
    r = launch(http, emulator, f"/xapi/projects/P1/wrapper/{wid}/root/scan/launch", params={"scan": uri})
    assert r.status_code == 200 and r.json()["status"] == "success", r.text
    _, wf = follow(http, emulator, r.json()["workflow-id"])
    assert wf["ID"] == session and wf["scan_id"]  # a scan's workflow hangs on its session
    _, c = until_terminal(http, emulator, wf["comments"])
    assert c["status"] == "Complete"
    scan_owner = f"/experiments/{session}/scans/2"
    assert files(http, emulator, scan_owner, "NIFTI") == ["report.txt", "series2.txt"]  # only that scan's DICOM
    assert "NIFTI" not in resources(http, emulator, f"/experiments/{session}/scans/1")

    by_name = f"/xapi/commands/{scan_command['id']}/wrappers/{name}/root/scan/launch"
    r = launch(http, emulator, by_name, json={"scan": f"/experiments/{session}/scans/1"})  # no /archive: accepted
    assert r.status_code == 200
    assert r.json()["command-id"] == scan_command["id"] and r.json()["wrapper-id"] == 0
    _, wf = follow(http, emulator, r.json()["workflow-id"])
    assert until_terminal(http, emulator, wf["comments"])[1]["status"] == "Complete"
    assert "NIFTI" in resources(http, emulator, f"/experiments/{session}/scans/1")


def test_a_failing_container_ends_failed_with_its_stderr_and_no_output(http, emulator, session) -> None:
    cmd = emulator.containers.register_command(simple_command("broken", context="session"),
                                               run=exit_with(3, stderr="Segmentation fault\n", stdout="starting\n"))
    wid = cmd["xnat"][0]["id"]
    r = launch(http, emulator, f"/xapi/wrappers/{wid}/root/session/launch", params={"session": session})
    _, wf = follow(http, emulator, r.json()["workflow-id"])
    _, c = until_terminal(http, emulator, wf["comments"])
    assert c["status"] == "Failed"
    last = c["history"][-1]
    assert last["status"] == "Failed" and last["exitCode"] == "3"
    assert last["message"] == "Non-zero exit code and/or failure status from container"
    assert [h.get("exitCode") for h in c["history"] if h["status"] == "die"] == ["3"]
    assert http.get(f"{emulator.url}/xapi/containers/{c['id']}/logs/stderr").text == "Segmentation fault\n"
    assert "NIFTI" not in resources(http, emulator, f"/experiments/{session}")  # nothing uploaded on failure
    wf = workflow(http, emulator, r.json()["workflow-id"])
    assert wf["status"] == "Failed" and wf["details"] == "Non-zero exit code and/or failure status from container"


def test_an_exception_in_the_runner_is_exit_code_1_with_the_traceback(http, emulator, session) -> None:
    def boom(ctx: RunContext) -> int:
        raise RuntimeError("converter crashed")

    cmd = emulator.containers.register_command(simple_command("boom", context="session"), run=boom)
    r = launch(http, emulator, f"/xapi/wrappers/{cmd['xnat'][0]['id']}/root/session/launch",
               params={"session": session})
    _, wf = follow(http, emulator, r.json()["workflow-id"])
    _, c = until_terminal(http, emulator, wf["comments"])
    assert c["status"] == "Failed" and c["history"][-1]["exitCode"] == "1"
    assert "RuntimeError: converter crashed" in http.get(f"{emulator.url}/xapi/containers/{c['id']}/logs/stderr").text


def test_killing_a_hanging_container(http, emulator, session) -> None:
    cmd = emulator.containers.register_command(simple_command("hang", context="session"), run=hang_until_killed)
    r = launch(http, emulator, f"/xapi/wrappers/{cmd['xnat'][0]['id']}/root/session/launch",
               params={"session": session})
    _, wf = follow(http, emulator, r.json()["workflow-id"])
    cid = container(http, emulator, wf["comments"])["id"]
    wait_for(lambda: container(http, emulator, cid)["status"] == "Running", what="Running")
    # its process runs: what it wrote so far is read live (as soon as it has written it, however slow the machine)
    live = wait_for(lambda: (got := http.get(f"{emulator.url}/xapi/containers/{cid}/logSince/stdout").json())[
        "content"] and got, what="the live log")
    assert live["content"] == "waiting...\n" and live["fromFile"] is False and live["timestamp"].endswith("Z")
    time.sleep(0.2)
    assert container(http, emulator, cid)["status"] == "Running"  # it does not finish on its own
    assert http.get(f"{emulator.url}/xapi/containers?nonfinalized=true").json()[0]["id"] == cid

    killed = http.post(f"{emulator.url}/xapi/projects/P1/containers/{cid}/kill", timeout=10)
    assert killed.status_code == 200 and killed.text == wf["comments"]  # the backend's id, as text
    now = container(http, emulator, cid)
    assert now["status"].startswith("Failed")  # "Failed (Killed)" at once, then "Failed" once finalized
    _, c = until_terminal(http, emulator, cid)
    assert c["status"] == "Failed"
    assert [h["status"] for h in c["history"]][3:] == ["kill", "die", "_Failed (Killed)", "Finalizing", "Failed"]
    kill_entry = c["history"][3]
    assert kill_entry["entity-type"] == "user" and kill_entry["entity-id"] == "admin"
    assert c["history"][-1]["exitCode"] == "137"
    assert http.get(f"{emulator.url}/xapi/containers?nonfinalized=true").json() == []
    assert workflow(http, emulator, r.json()["workflow-id"])["status"] == "Failed"
    # Killing it again: the container is gone from the backend (auto-cleanup), docker-java's 404 comes back
    again = http.post(f"{emulator.url}/xapi/containers/{cid}/kill", timeout=10)
    assert again.status_code == 404 and "No such container" in again.text
    assert container(http, emulator, cid)["status"] == "Failed"  # a terminal status stays
    assert http.post(f"{emulator.url}/xapi/containers/424242/kill").status_code == 404


def test_held_launches_move_one_step_at_a_time_also_over_the_control_api(http, emulator, session,
                                                                         session_command) -> None:
    """The test control behind every assertion on an intermediate status: held, a launch rests at each step until
    the next step (never later, never sooner), a hanging container rests while it runs, and a release lets every
    launch run on to its end."""
    containers = emulator.containers
    with pytest.raises(RuntimeError, match="not held"):
        containers.step()
    ctl = emulator.url + "/__emulator__/containers"
    assert requests.post(ctl + "/hold", timeout=10).json() == {"held": True}
    wid = session_command["xnat"][0]["id"]
    wf_id = launch(http, emulator, f"/xapi/wrappers/{wid}/root/session/launch", json={"session": session}).json()[
        "workflow-id"]
    time.sleep(0.3)  # three times what an unheld launch takes to make its container
    assert workflow(http, emulator, wf_id)["status"] == "_Queued" and containers.containers == {}
    assert requests.post(ctl + "/step", json={"count": 2}, timeout=30).status_code == 200
    wf = workflow(http, emulator, wf_id)
    assert wf["status"] == "Created" and container(http, emulator, wf["comments"])["history"][-1]["status"] == \
        "Created"
    requests.post(ctl + "/step", timeout=30).raise_for_status()
    assert container(http, emulator, wf["comments"])["status"] == "Running"
    assert requests.post(ctl + "/release", timeout=10).json() == {"held": False}
    _, c = until_terminal(http, emulator, wf["comments"])
    assert c["status"] == "Complete"
    with pytest.raises(RuntimeError, match="not held"):
        containers.step()

    # A hanging container rests while its process runs; killed, the next step writes its death.
    hang = containers.register_command(simple_command("hang", context="session"), run=hang_until_killed)
    with containers.held() as steps:
        wf_id = launch(http, emulator, f"/xapi/wrappers/{hang['xnat'][0]['id']}/root/session/launch",
                       params={"session": session}).json()["workflow-id"]
        steps.step(4)  # staging, created, started, its process running
        cid = workflow(http, emulator, wf_id)["comments"]
        wait_for(lambda: http.get(f"{emulator.url}/xapi/containers/{cid}/logs/stdout").text, what="the live log")
        with pytest.raises(TimeoutError, match="still running"):
            steps.step(timeout=0.2)  # it does not end on its own: nothing takes the step (withdrawn)
        assert http.post(f"{emulator.url}/xapi/containers/{cid}/kill", timeout=10).status_code == 200
        steps.step()  # (the kill ends the process: the step is taken once it has exited)
        assert [h["status"] for h in container(http, emulator, cid)["history"]][-2:] == ["kill", "die"]
        steps.step(3)  # queued for finalizing, finalizing, finalized
        assert container(http, emulator, cid)["status"] == "Failed"
        with pytest.raises(RuntimeError, match="no launch to step"):
            steps.step()
    r = requests.post(ctl + "/step", timeout=10)
    assert r.status_code == 409 and "not held" in r.text


def test_a_subprocess_runner_and_its_kill(http, emulator, session, tmp_path) -> None:
    script = ("import sys, pathlib; n = len(list(pathlib.Path(sys.argv[1]).rglob('*.dcm')));"
              "pathlib.Path(sys.argv[2], 'count.txt').write_text(str(n)); print('counted', n);"
              "print('to stderr', file=sys.stderr)")
    cmd = emulator.containers.register_command(simple_command("count", image="emulator/count:1", context="session"),
                                               run=[sys.executable, "-c", script, "{in}", "{out}"])
    r = launch(http, emulator, f"/xapi/wrappers/{cmd['xnat'][0]['id']}/root/session/launch",
               params={"session": session})
    _, wf = follow(http, emulator, r.json()["workflow-id"])
    _, c = until_terminal(http, emulator, wf["comments"])
    assert c["status"] == "Complete", c["history"]
    assert http.get(f"{emulator.url}/data/experiments/{session}/resources/NIFTI/files/count.txt").text == "6"
    assert http.get(f"{emulator.url}/xapi/containers/{c['id']}/logs/stdout").text == "counted 6\n"

    sleeper = emulator.containers.register_command(simple_command("sleep", image="emulator/sleep:1",
                                                                  context="session"),
                                                   run=[sys.executable, "-c", "import time; time.sleep(60)"])
    r = launch(http, emulator, f"/xapi/wrappers/{sleeper['xnat'][0]['id']}/root/session/launch",
               params={"session": session})
    _, wf = follow(http, emulator, r.json()["workflow-id"])
    wait_for(lambda: container(http, emulator, wf["comments"])["status"] == "Running", what="Running")
    assert http.post(f"{emulator.url}/xapi/containers/{wf['comments']}/kill").status_code == 200
    _, c = until_terminal(http, emulator, wf["comments"])
    assert c["status"] == "Failed" and c["history"][-1]["exitCode"] == "137"


def test_bulk_launch_queues_one_launch_per_target(http, emulator, session, session_command, tmp_path) -> None:
    other = archive_study(http, emulator, tmp_path, patient="S02", label="S02_MR1")
    wid = session_command["xnat"][0]["id"]
    body = {"session": f'["{session}", "{other}"]'}  # the targets: a JSON list, as a string
    r = launch(http, emulator, f"/xapi/projects/P1/wrappers/{wid}/root/session/bulklaunch", json=body)
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["pipeline-name"] == "sesscount-session" and report["failures"] == []
    assert report["bulk-launch-id"].startswith("bulk-admin")
    assert [s["params"]["session"] for s in report["successes"]] == [session, other]
    assert {s["workflow-id"] for s in report["successes"]} == {"To be assigned"}  # workflows come later
    # No ids to follow: the containers are found by their labels (XNAT_ID is the root element's ID)
    done = wait_for(lambda: sorted(c["container-labels"]["XNAT_ID"] for c in
                                   http.get(f"{emulator.url}/xapi/projects/P1/containers").json()
                                   if c["status"] == "Complete") == sorted([session, other]) or None,
                    what="both bulk containers")
    assert done
    jobs = {workflow(http, emulator, c["workflow-id"])["jobID"]
            for c in http.get(f"{emulator.url}/xapi/containers").json()}
    assert jobs == {report["bulk-launch-id"]}
    r = launch(http, emulator, f"/xapi/wrappers/{wid}/root/session/bulklaunch", data={"session": session})
    assert r.status_code == 415  # bulk launch consumes JSON only
    r = launch(http, emulator, f"/xapi/wrappers/{wid}/root/session/bulklaunch", json={"other": "x"})
    assert r.status_code == 500


# ---- what the plugin refuses, and where it does not ---------------------------------------------------------

def test_refused_synchronously(http, emulator, session, session_command) -> None:
    wid = session_command["xnat"][0]["id"]
    # An unknown wrapper id with a root element value: the report is a failure, HTTP 500
    r = launch(http, emulator, "/xapi/wrappers/999/root/session/launch", params={"session": session})
    assert r.status_code == 500
    assert r.json() == {"status": "failure", "params": {"session": session}, "id": 0, "wrapper-id": 999,
                        "message": "Unable to queue container launch"}
    r = launch(http, emulator, f"/xapi/projects/NOPE/wrappers/{wid}/root/session/launch", json={"session": session})
    assert r.status_code == 404 and r.text.endswith("The following item(s) don't exist: NOPE")
    r = launch(http, emulator, f"/xapi/projects/P1/wrappers/{wid}/root/session/launch", data={"session": session})
    assert r.status_code == 415  # this path consumes JSON only
    r = launch(http, emulator, f"/xapi/wrappers/{wid}/root/session/launch", data=b"{not json",
               headers={"Content-Type": "application/json"})
    assert r.status_code == 500 and "JSON parse error" in r.text
    emulator.containers.fail_next_launch("Unable to queue container launch: JMS is down")
    r = launch(http, emulator, f"/xapi/wrappers/{wid}/root/session/launch", params={"session": session})
    assert r.status_code == 500 and r.json()["message"] == "Unable to queue container launch: JMS is down"
    unauthenticated = requests.post(f"{emulator.url}/xapi/wrappers/{wid}/root/session/launch",
                                    params={"session": session}, timeout=10)
    assert unauthenticated.status_code == 401
    assert http.get(emulator.url + "/data/workflows/99999").status_code == 404
    assert emulator.containers.containers == {}


@pytest.mark.parametrize(("params", "status", "details"), [
    ({"session": "XNAT_E99999"}, "Failed (Command resolution)", "Missing values for required input: session."),
    ({"session": "/archive/experiments/XNAT_E99999"}, "Failed (Command resolution)",
     "Invalid Session uri /archive/experiments/XNAT_E99999"),
])
def test_refused_in_the_background_the_workflow_says_why(http, emulator, session, session_command, params, status,
                                                         details) -> None:
    wid = session_command["xnat"][0]["id"]
    r = launch(http, emulator, f"/xapi/wrappers/{wid}/root/session/launch", params=params)
    assert r.status_code == 200 and r.json()["status"] == "success"  # the launch itself is only queued
    _, wf = follow(http, emulator, r.json()["workflow-id"])
    assert wf["status"] == status and not wf.get("comments")
    assert wf["details"] == "Submitted data does not match command resolution requirements. " + details
    assert emulator.containers.containers == {}


def test_a_scan_without_the_input_resource_and_a_wrong_wrapper_name(http, emulator, session, scan_command) -> None:
    http.put(f"{emulator.url}/data/experiments/{session}/scans/3", params={"xsiType": "xnat:mrScanData"},
             timeout=10).raise_for_status()
    wid, cid = scan_command["xnat"][0]["id"], scan_command["id"]
    r = launch(http, emulator, f"/xapi/wrappers/{wid}/root/scan/launch",
               params={"scan": f"/archive/experiments/{session}/scans/3"})
    _, wf = follow(http, emulator, r.json()["workflow-id"])
    assert wf["status"] == "Failed (Command resolution)"
    assert wf["details"].endswith('Input "input-resource" could not be resolved for this item. You might check the '
                                  "JSONPath matchers in command.json and confirm that this item has Resource data.")
    # A scan is given by URI only (Scan has no ID lookup): a bare ID resolves to nothing
    r = launch(http, emulator, f"/xapi/wrappers/{wid}/root/scan/launch", params={"scan": "1"})
    assert follow(http, emulator, r.json()["workflow-id"])[1]["details"].endswith(
        "Missing values for required input: scan.")
    # By command and wrapper name the wrapper is only looked up in the background
    r = launch(http, emulator, f"/xapi/commands/{cid}/wrappers/nope/root/scan/launch",
               params={"scan": f"/archive/experiments/{session}/scans/1"})
    assert r.status_code == 200
    _, wf = follow(http, emulator, r.json()["workflow-id"])
    assert wf["status"] == "Failed (org.nrg.framework.exceptions.NotFoundException)"
    assert wf["details"] == f"Command {cid} has no wrapper nope"


def test_no_root_element_value_means_no_workflow_and_nothing_to_follow(http, emulator, session,
                                                                       session_command) -> None:
    wid = session_command["xnat"][0]["id"]
    r = launch(http, emulator, f"/xapi/wrappers/{wid}/root/session/launch", params={"experiment": session})
    assert r.status_code == 200 and r.json()["workflow-id"] == "To be assigned"
    wait_for(lambda: emulator.containers.resolution_failures, what="the background failure")
    assert emulator.containers.resolution_failures == [
        "Failed (Command resolution): Submitted data does not match command resolution requirements. "
        "Missing values for required input: session."]
    assert http.get(f"{emulator.url}/xapi/containers").json() == []


def test_the_plugin_does_not_check_enablement_at_launch(http, emulator, session, session_command) -> None:
    """LaunchRestApi and ContainerServiceImpl.launchContainer never read the enabled flags: a wrapper disabled
    for the project (or the site) still launches through the REST API. A client must check them itself."""
    wid = session_command["xnat"][0]["id"]
    http.put(f"{emulator.url}/xapi/projects/P1/wrappers/{wid}/disabled").raise_for_status()
    assert http.get(f"{emulator.url}/xapi/projects/P1/wrappers/{wid}/enabled").json()["enabled-for-project"] is False
    r = launch(http, emulator, f"/xapi/projects/P1/wrappers/{wid}/root/session/launch", json={"session": session})
    _, wf = follow(http, emulator, r.json()["workflow-id"])
    assert until_terminal(http, emulator, wf["comments"])[1]["status"] == "Complete"


def test_a_missing_image_and_a_missing_required_output(http, emulator, session) -> None:
    gone = emulator.containers.register_command(simple_command("gone", image="emulator/gone:1", context="session"))
    r = launch(http, emulator, f"/xapi/wrappers/{gone['xnat'][0]['id']}/root/session/launch",
               params={"session": session})
    _, wf = follow(http, emulator, r.json()["workflow-id"])
    assert wf["status"] == "Failed (Container launch)" and "No such image: emulator/gone:1" in wf["details"]

    def nothing(ctx: RunContext) -> int:
        ctx.mounts["out"].rmdir()  # the output folder is not there at upload time
        return 0

    cmd = emulator.containers.register_command(simple_command("empty", context="session"), run=nothing)
    r = launch(http, emulator, f"/xapi/wrappers/{cmd['xnat'][0]['id']}/root/session/launch",
               params={"session": session})
    _, wf = follow(http, emulator, r.json()["workflow-id"])
    _, c = until_terminal(http, emulator, wf["comments"])
    assert c["status"] == "Failed (Upload)"
    assert c["history"][-1]["message"].startswith("Failed to upload required outputs.\n")


def test_another_user_sees_only_a_scrubbed_container(http, emulator, session, session_command) -> None:
    wid = session_command["xnat"][0]["id"]
    r = launch(http, emulator, f"/xapi/wrappers/{wid}/root/session/launch", params={"session": session})
    _, wf = follow(http, emulator, r.json()["workflow-id"])
    _, c = until_terminal(http, emulator, wf["comments"])
    alice = ("alice", "alice-pw")
    assert requests.get(f"{emulator.url}/xapi/containers", auth=alice, timeout=10).json() == []
    seen = requests.get(f"{emulator.url}/xapi/containers/{c['id']}", auth=alice, timeout=10).json()
    assert seen["status"] == "Complete" and seen["history"] == [] and seen["command-line"] == "[REDACTED]"
    assert "container-id" not in seen and "workflow-id" not in seen
    r = requests.post(f"{emulator.url}/xapi/containers/{c['id']}/kill", auth=alice, timeout=10)
    assert r.status_code == 401
    assert requests.get(f"{emulator.url}/xapi/containers/{c['id']}/logs/stdout", auth=alice,
                        timeout=10).status_code == 403


def test_the_plugin_route_table_for_a_route_oracle() -> None:
    assert is_container_service_route("POST", "/xapi/projects/P1/wrapper/3/root/scan/launch")
    assert is_container_service_route("GET", "/xapi/containers/abc/logs/stdout")
    assert not is_container_service_route("POST", "/xapi/containers/abc/delete")
    assert not is_container_service_route("GET", "/xapi/wrappers/3/root/scan/launch")


def test_workflow_xml(http, emulator, session, session_command) -> None:
    from lxml import etree

    wid = session_command["xnat"][0]["id"]
    r = launch(http, emulator, f"/xapi/wrappers/{wid}/root/session/launch", params={"session": session})
    _, wf = follow(http, emulator, r.json()["workflow-id"])
    xml = http.get(f"{emulator.url}/data/workflows/{r.json()['workflow-id']}", timeout=10)
    assert xml.headers["Content-Type"].startswith("text/xml")
    doc = etree.fromstring(xml.content)
    assert doc.tag == "{http://nrg.wustl.edu/workflow}Workflow" and doc.get("ID") == session
    assert doc.findtext("{http://nrg.wustl.edu/workflow}comments") == wf["comments"]
    assert http.get(f"{emulator.url}/data/workflows", timeout=10).status_code == 404  # no id, no item fields
    emulator.containers.wait(wf["comments"])


def test_command_inputs_reach_the_container_and_a_missing_one_is_refused(http, emulator, session) -> None:
    got: dict[str, str] = {}

    def record(ctx: RunContext) -> int:
        got.update(ctx.inputs)
        (ctx.mounts["out"] / "x.txt").write_text("x")
        return 0

    spec = simple_command("thresh", context="session", command_line="run --t #THRESHOLD# #mode#", inputs=[
        {"name": "threshold", "type": "string", "required": True, "replacement-key": "#THRESHOLD#"},
        {"name": "mode", "type": "string", "default-value": "fast"}])
    cmd = emulator.containers.register_command(spec, run=record)
    path = f"/xapi/wrappers/{cmd['xnat'][0]['id']}/root/session/launch"
    r = launch(http, emulator, path, json={"session": session, "threshold": 7})  # a JSON number is a string
    _, wf = follow(http, emulator, r.json()["workflow-id"])
    _, c = until_terminal(http, emulator, wf["comments"])
    assert c["status"] == "Complete" and c["command-line"] == "run --t 7 fast"  # "#mode#" is the default key
    assert got["threshold"] == "7" and got["mode"] == "fast" and got["session"] == f"/archive/experiments/{session}"
    r = launch(http, emulator, path, json={"session": session})
    _, wf = follow(http, emulator, r.json()["workflow-id"])
    assert wf["details"].endswith("Missing values for required input: threshold.")
