"""The client's Container Service calls against the emulator over HTTP: commands and wrappers, the checks made
before any launch request, a launch followed from its workflow to its finalized container (complete, failing,
killed, failed before any container existed), logs, outputs, a lost launch answer, a bulk launch on scans, and the
async client's polling calls. The decisions themselves (matching, finalization) are checked as plain functions."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import pytest

from tests.container_support import archive_session, register_converter
from xnat_provider.client import XnatClient
from xnat_provider.client.async_client import AsyncXnatClient
from xnat_provider.client.config import ClientConfig
from xnat_provider.client.containers import (
    DONE,
    LAUNCH_FAILED,
    Container,
    ContainerInput,
    ContainerProgress,
    ContainerWatch,
    HistoryEntry,
    LaunchPlan,
    container_matches,
    failure_of,
    parse_container,
    parse_launch_report,
)
from xnat_provider.client.errors import (
    XnatBadInputError,
    XnatConflictError,
    XnatContainerFailedError,
    XnatNotFoundError,
    XnatServerError,
)
from xnat_provider.testing import XnatEmulator
from xnat_provider.testing.containers import exit_with, hang_until_killed, simple_command

pytestmark = pytest.mark.timeout(90)

USER, PASSWORD = "runner", "runner-pw-Qz81"
LAUNCH = r"^/xapi/.*/launch$"


def follow(client, watch: ContainerWatch, timeout: float = 30.0) -> ContainerProgress:
    """Observe a launch with the sync client until it is over; every status seen is kept on the watch."""
    deadline = time.monotonic() + timeout
    watch.seen = []  # type: ignore[attr-defined]
    while True:
        progress = asyncio.run(watch.observe(client))
        watch.seen.append(progress.message)  # type: ignore[attr-defined]
        if progress.action != "wait":
            return progress
        assert time.monotonic() < deadline, f"still waiting: {progress.message}"
        time.sleep(0.05)


@pytest.fixture
def session(emulator: XnatEmulator, tmp_path: Path) -> str:
    return archive_session(emulator, tmp_path)


@pytest.fixture
def converter(emulator: XnatEmulator) -> dict:
    return register_converter(emulator)


def plan(client: XnatClient, **kw) -> LaunchPlan:
    kw.setdefault("command", "dcm2niix")
    kw.setdefault("wrapper", "dcm2niix-session")
    return client.plan_launch(kw.pop("project", "P1"), kw.pop("experiment", "S01_MR1"), kw.pop("scan", None), **kw)


def test_commands_wrappers_and_where_they_are_enabled(client, emulator, converter) -> None:
    scan_cmd = register_converter(emulator, context="scan", name="dcm2niix-scans", enable_for=())
    commands = client.list_commands()
    assert [c.name for c in commands] == ["dcm2niix", "dcm2niix-scans"]
    w = commands[0].wrappers[0]
    assert (w.name, w.root_element, w.command_name, w.contexts) == ("dcm2niix-session", "session", "dcm2niix",
                                                                   ("xnat:imageSessionData",))
    assert [h.label for h in w.output_handlers] == ["NIFTI"] and w.output_handlers[0].parent == "session"
    assert client.get_command(commands[0].id) == commands[0]
    assert [c.name for c in client.list_commands(name="dcm2niix-scans")] == ["dcm2niix-scans"]
    with pytest.raises(XnatNotFoundError):
        client.get_command(999)
    # what runs on an MR session, with enabled for the project or the site
    here = client.available_wrappers("P1", "xnat:mrSessionData")
    assert [(a.wrapper_name, a.enabled, a.root_element) for a in here] == [("dcm2niix-session", True, "session")]
    assert [a.enabled for a in client.available_wrappers("P2", "xnat:mrSessionData")] == [False]
    assert [a.wrapper_name for a in client.available_wrappers(None, "xnat:mrScanData")] == ["dcm2niix-scans-scan"]
    scan_wid = scan_cmd["xnat"][0]["id"]
    report = client.wrapper_enabled(scan_wid, "P1")
    assert (report.site, report.project_enabled, report.enabled) == (True, False, False)
    assert client.wrapper_enabled(w.id, "P1").enabled
    # one wrapper by names or by id; what the site lacks is named
    assert client.get_wrapper("dcm2niix", "dcm2niix-session") == w
    assert client.get_wrapper(wrapper_id=scan_wid).name == "dcm2niix-scans-scan"
    with pytest.raises(XnatBadInputError, match=r"has no wrapper 'nope'.*dcm2niix-session"):
        client.get_wrapper("dcm2niix", "nope")
    with pytest.raises(XnatBadInputError, match=r"no command 'nope'.*dcm2niix, dcm2niix-scans"):
        client.get_wrapper("nope", "x")
    with pytest.raises(XnatBadInputError, match="no command wrapper with id 99"):
        client.get_wrapper(wrapper_id=99)
    with pytest.raises(XnatBadInputError, match="not both"):
        client.get_wrapper("dcm2niix", "dcm2niix-session", wrapper_id=w.id)


def test_a_launch_on_a_session_runs_to_complete(client, emulator, session, converter) -> None:
    p = plan(client)
    exp = client.get_experiment("P1", session)
    assert p.params == {"session": exp.id} and p.target.path == f"/data/experiments/{exp.id}"
    ui = client.launch_ui("P1", p.wrapper.id, {"session": exp.id})
    assert ui["meta"]["wrapper-name"] == "dcm2niix-session"
    with emulator.containers.held():  # the launch rests queued until released: no container yet, for certain
        launch = client.launch(p)
        assert launch.workflow_id and launch.workflow_id.isdigit() and launch.container_id is None
        assert client.workflow_container(launch.workflow_id) is None  # queued: no container yet
    done = follow(client, ContainerWatch(launch.workflow_id))
    assert done.action == DONE
    c = done.container
    assert c.status == "Complete" and c.succeeded and c.finalized and c.exit_code == "0" and not c.killed
    assert c.raw_inputs == {"session": exp.id} and c.wrapper_id == p.wrapper.id and c.workflow_id == launch.workflow_id
    wf = client.get_workflow(launch.workflow_id)
    assert wf.container_id == c.backend_id and wf.status == "Complete" and wf.pipeline_name == "dcm2niix-session"
    assert client.workflow_container(launch.workflow_id) == c.backend_id
    assert client.get_container(c.id) == client.get_container(c.backend_id)
    # its outputs: the NIFTI resource of the session, one file per series
    outputs = client.container_outputs(c)
    assert outputs == [{"name": "output:output-resource", "label": "NIFTI",
                        "uri": f"/data/experiments/{exp.id}/resources/NIFTI", "exists": True, "files": 2,
                        "bytes": 704, "required": True}]
    files = client.list_files(f"/data/experiments/{exp.id}/resources/NIFTI")
    assert sorted(f.path for f in files) == ["series1.nii", "series2.nii"]
    assert client.container_log(c.id, "stdout") == "dcm2niix: converted 4 files in 2 series\n"
    assert client.container_log(c.id, "stderr") == ""
    # look before launching: the container of this plan, and none for other inputs
    assert [x.id for x in client.find_containers(p)] == [c.id]
    assert [x.id for x in client.list_containers("P1")] == [c.id] == [x.id for x in client.list_containers()]
    assert client.list_containers("P1", nonfinalized=True) == []
    with pytest.raises(XnatConflictError, match="already exited"):
        client.kill_container(c.id)


def test_refusals_come_before_any_launch_request(client, emulator, session, tmp_path) -> None:
    register_converter(emulator)  # enabled for P1 only
    register_converter(emulator, context="scan", name="scanconv")
    register_converter(emulator, name="withargs", inputs=[
        {"name": "preset", "type": "string", "required": True},
        {"name": "bids", "type": "boolean", "default-value": "false"}])
    archive_session(emulator, tmp_path, "S02_MR1", "S02", project="P2")
    emulator.containers.set_enabled(4, True, "P2")  # an unrelated wrapper id: changes nothing
    refusals = {
        "has no wrapper 'nope'": dict(wrapper="nope"),
        "no command 'nope'": dict(command="nope", wrapper="x"),
        "not enabled for project P2. XNAT's REST launch does not check this": dict(project="P2",
                                                                                   experiment="S02_MR1"),
        "runs on a scan \\('scan'\\): give the scan": dict(command="scanconv", wrapper="scanconv-scan"),
        "runs on a session \\('session'\\): launch it on the experiment": dict(scan="1"),
        "missing required input\\(s\\) preset": dict(command="withargs", wrapper="withargs-session"),
        "unknown input\\(s\\) presets \\(the inputs a launch can set: bids, preset\\)": dict(
            command="withargs", wrapper="withargs-session", inputs={"presets": "x", "preset": "y"}),
        "'session' is the wrapper's root element": dict(inputs={"session": "XNAT_E00009"}),
        "Map<String, String>": dict(command="withargs", wrapper="withargs-session", inputs={"preset": ["a"]}),
    }
    for message, kw in refusals.items():
        with pytest.raises(XnatBadInputError, match=message):
            plan(client, **kw)
    # a scan wrapper on a scan that has no DICOM resource: XNAT's launch UI cannot resolve the derived input
    client.ensure_resource(client.object_path("P1", experiment=session, scan="1"), "NOTES")
    emulator.containers.register_command(
        simple_command("onnotes", context="scan", input_resource="MISSING"), run=exit_with(0), enable_for=["P1"])
    with pytest.raises(XnatBadInputError, match=r"cannot resolve its inputs.*input-resource"):
        plan(client, command="onnotes", wrapper="onnotes-scan", scan="1")
    with pytest.raises(XnatNotFoundError, match="no scan '9'"):
        plan(client, command="scanconv", wrapper="scanconv-scan", scan="9")
    # nothing was launched
    assert emulator.request_count("POST", LAUNCH) == 0 and emulator.containers.workflows == {}
    # the checks can be skipped (XNAT then runs what it is given)
    assert plan(client, project="P2", experiment="S02_MR1", check=False).params["session"]
    ok = plan(client, command="withargs", wrapper="withargs-session", inputs={"preset": "fast", "bids": True})
    assert ok.params == {"session": ok.target.experiment_id, "preset": "fast", "bids": "true"}


def test_a_failing_container_keeps_its_stderr(client, emulator, session) -> None:
    register_converter(emulator, run=exit_with(3, stderr="line\n" * 2000 + "dcm2niix: bad slice order\n",
                                                stdout="starting\n"))
    launch = client.launch(plan(client))
    done = follow(client, ContainerWatch(launch.workflow_id))
    c = done.container
    assert done.action == DONE and c.status == "Failed" and c.failed and not c.succeeded
    assert c.finalized and c.exit_code == "3" and not c.killed
    assert "Non-zero exit code" in c.failure_message
    exc = failure_of(c, launch.workflow_id)
    assert isinstance(exc, XnatContainerFailedError) and exc.exit_code == "3" and exc.workflow_id == launch.workflow_id
    assert "ended Failed with exit code 3" in str(exc) and exc.container_status == "Failed"
    tail = client.container_log(c.id, "stderr", tail_bytes=100)
    assert tail.endswith("dcm2niix: bad slice order\n") and tail.startswith("[... ")
    assert "earlier bytes not shown" in tail and len(tail) < 200
    assert client.container_log(c.backend_id, "stdout") == "starting\n"
    assert client.container_outputs(c) == [{"name": "output:output-resource", "label": "NIFTI",
                                            "uri": f"/data/experiments/{c.labels['XNAT_ID']}/resources/NIFTI",
                                            "exists": False, "files": 0, "bytes": 0, "required": True}]
    assert client.find_containers(plan(client)) == []  # a failed container is not one to adopt
    assert [x.id for x in client.find_containers(plan(client), include_failed=True)] == [c.id]
    with pytest.raises(XnatBadInputError):
        client.container_log(c.id, "both")


def test_a_killed_container(client, emulator, session) -> None:
    register_converter(emulator, run=hang_until_killed)
    launch = client.launch(plan(client))
    watch = ContainerWatch(launch.workflow_id)
    deadline = time.monotonic() + 20
    while (p := asyncio.run(watch.observe(client))).container is None or p.container.status != "Running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    while (live := client.container_log(p.container.id, "stdout")) == "":  # live, from the running container
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert live == "waiting...\n"
    assert client.kill_container(watch.container_id, project="P1") == p.container.backend_id
    done = follow(client, watch)
    c = done.container
    assert (c.status, c.exit_code, c.killed, c.finalized) == ("Failed", "137", True, True)
    assert "was killed with exit code 137" in str(failure_of(c))
    with pytest.raises(XnatConflictError):
        client.kill_container(c.id)


def test_a_launch_that_fails_before_any_container(client, emulator, session) -> None:
    register_converter(emulator, run=None)  # the image is missing
    launch = client.launch(plan(client))
    done = follow(client, ContainerWatch(launch.workflow_id))
    assert done.action == LAUNCH_FAILED and done.container is None
    assert done.workflow.status == "Failed (Container launch)" and "No such image" in done.workflow.details
    with pytest.raises(XnatContainerFailedError, match=r"failed before any container existed.*No such image") as e:
        client.workflow_container(launch.workflow_id)
    assert e.value.workflow_id == launch.workflow_id and e.value.container_status == "Failed (Container launch)"


def test_a_launch_refused_before_queueing_is_a_server_error(client, emulator, session, converter) -> None:
    emulator.containers.fail_next_launch("Unable to queue container launch")
    with pytest.raises(XnatServerError, match=r"refused the launch before queueing it.*Unable to queue") as e:
        client.launch(plan(client))
    assert e.value.status == 500 and emulator.containers.workflows == {}


def test_a_lost_launch_answer_finds_the_container_instead_of_launching_again(client, emulator, session,
                                                                           converter) -> None:
    p = plan(client)
    emulator.succeed_then_504("POST", LAUNCH)
    launch = client.launch(p, settle_seconds=20)
    assert launch.recovered and launch.workflow_id and launch.container_id
    assert emulator.request_count("POST", LAUNCH) == 1 and len(emulator.containers.containers) == 1
    assert follow(client, ContainerWatch(launch.workflow_id, launch.container_id)).container.succeeded
    # no container shows up: the ambiguous error, after settle_seconds
    emulator.containers.set_runner("emulator/dcm2niix:1.0", None)  # launches now fail before any container
    emulator.succeed_then_504("POST", LAUNCH)
    with pytest.raises(XnatServerError, match="504"):
        client.launch(p, settle_seconds=0.3)


def test_bulk_launch_on_scans(client, emulator, session) -> None:
    register_converter(emulator, context="scan", name="scanconv")
    plans = [plan(client, command="scanconv", wrapper="scanconv-scan", scan=s) for s in ("1", "2")]
    assert plans[1].params == {"scan": f"/archive/experiments/{plans[1].target.experiment_id}/scans/2"}
    bulk = client.bulk_launch(plans)
    assert bulk.id.startswith("bulk-") and bulk.pipeline_name == "scanconv-scan" and bulk.failures == ()
    for p in plans:
        found = []
        deadline = time.monotonic() + 20
        while not found:
            assert time.monotonic() < deadline
            found = client.find_containers(p)
            time.sleep(0.05)
        assert len(found) == 1
        c = follow(client, ContainerWatch(container_id=found[0].id)).container
        assert c.succeeded
        [out] = client.container_outputs(c)
        assert out["uri"] == f"{p.target.path}/resources/NIFTI" and out["files"] == 1
    other = dataclasses.replace(plans[1], params={**plans[1].params, "preset": "fast"})
    with pytest.raises(XnatBadInputError, match="share the wrapper, the project and the inputs"):
        client.bulk_launch([plans[0], other])


def test_the_async_client_follows_a_launch(emulator, session, converter) -> None:
    with XnatClient(emulator.url, "admin", "admin") as sync:
        launch = sync.launch(plan(sync))

    async def run() -> Container:
        async with AsyncXnatClient(ClientConfig(emulator.url, "admin", "admin")) as a:
            assert (await a.get_workflow(launch.workflow_id)).id == launch.workflow_id
            watch = ContainerWatch(launch.workflow_id)
            while (p := await watch.observe(a)).action == "wait":
                await asyncio.sleep(0.05)
            assert p.action == DONE
            assert await a.workflow_container(launch.workflow_id) == p.container.backend_id
            assert (await a.get_container(p.container.backend_id)).id == p.container.id
            with pytest.raises(XnatNotFoundError):
                await a.get_container("nope")
            return p.container

    assert asyncio.run(asyncio.wait_for(run(), 30)).succeeded


# ---- the decisions, as plain functions ------------------------------------------------------------------------

def entry(i: int, status: str, kind: str = "system", code: str | None = None) -> HistoryEntry:
    return HistoryEntry(id=i, status=status, entity_type=kind, exit_code=code)


def test_finalized_means_terminal_and_written_by_the_last_system_entry() -> None:
    base = Container(id="1", backend_id="abc", status="Running", history=(entry(1, "Created", "user"),
                                                                          entry(2, "start", "event")))
    assert not base.terminal and not base.finalized
    killed = Container(id="1", backend_id="abc", status="Failed (Killed)",
                       history=(*base.history, entry(3, "kill", "user")))
    assert killed.terminal and not killed.finalized and killed.killed  # the kill entry, before finalization
    done = Container(id="1", backend_id="abc", status="Failed",
                     history=(*killed.history, entry(4, "die", "event", "137"), entry(5, "Finalizing"),
                              entry(6, "Failed", code="137")))
    assert done.finalized and done.exit_code == "137" and done.failed
    # the newest entry counts by id, whatever the order XNAT lists them in
    assert Container(id="1", backend_id="", status="Complete",
                     history=(entry(9, "Complete"), entry(3, "die", "event", "0"))).finalized


def test_matching_a_container_to_a_plan() -> None:
    from xnat_provider.client.containers import LaunchTarget, Wrapper, WrapperInput

    w = Wrapper(id=7, name="w", command_id=1, command_name="c",
                inputs=(WrapperInput("session", "external", "Session", True),))
    target = LaunchTarget("P1", "XNAT_E1", "S01", "xnat:mrSessionData")
    p = LaunchPlan(w, target, {"session": "XNAT_E1", "preset": "fast"})

    def c(*inputs: tuple[str, str, str], wrapper: int = 7, project: str = "P1") -> Container:
        return Container(id="1", backend_id="b", status="Running", wrapper_id=wrapper, project=project,
                         inputs=tuple(ContainerInput(*i) for i in inputs))

    assert container_matches(c(("raw", "session", "XNAT_E1"), ("raw", "preset", "fast")), p)
    assert not container_matches(c(("raw", "session", "XNAT_E1"), ("raw", "preset", "slow")), p)
    assert not container_matches(c(("raw", "session", "XNAT_E1"), ("raw", "preset", "fast"), wrapper=8), p)
    assert not container_matches(c(("raw", "session", "XNAT_E1"), ("raw", "preset", "fast"), project="P2"), p)
    # raw inputs hidden (a sensitive input): the resolved root element and the other values
    assert container_matches(c(("wrapper-external", "session", "/archive/experiments/XNAT_E1"),
                               ("command", "preset", "fast")), p)
    assert not container_matches(c(("wrapper-external", "session", "/archive/experiments/XNAT_E2"),
                                   ("command", "preset", "fast")), p)
    assert not container_matches(c(), p)  # someone else's: XNAT shows no inputs at all


def test_launch_reports() -> None:
    from xnat_provider.client.containers import LaunchTarget, Wrapper, WrapperInput

    w = Wrapper(id=7, name="w", command_id=1, command_name="c",
                inputs=(WrapperInput("session", "external", "Session", True),))
    p = LaunchPlan(w, LaunchTarget("P1", "XNAT_E1", "S01", "xnat:mrSessionData"), {"session": "XNAT_E1"})
    ok = parse_launch_report({"status": "success", "workflow-id": "123", "wrapper-id": 7}, p, "POST", "/x")
    assert (ok.workflow_id, ok.container_id) == ("123", None)
    old = parse_launch_report({"status": "success", "container-id": "abc", "type": "container"}, p, "POST", "/x")
    assert old.container_id == "abc"  # a site older than CS 3.0
    with pytest.raises(XnatBadInputError, match=r"no workflow.*'To be assigned'"):
        parse_launch_report({"status": "success", "workflow-id": "To be assigned"}, p, "POST", "/x")
    with pytest.raises(XnatServerError):
        parse_launch_report({"status": "failure"}, p, "POST", "/x")
    with pytest.raises(XnatServerError, match="expected a container"):
        parse_container({"status": "Running"})
    with pytest.raises(XnatBadInputError):
        ContainerWatch()
