"""The "XNAT session" button is there before the work, so a task that fails mid-work (the one a person wants to
open) has it: every operator and both sensors, called directly against the emulator, and a task failing in a
real ``dag.test()`` run."""

from __future__ import annotations

import pytest

from tests.airflow_helpers import FakeStore, context, run_dag
from tests.operators.conftest import resent_with_one_more
from tests.operators.test_archive_operator import imported
from tests.operators.test_operator_dags import xcom
from tests.sensors.support import hold, put_session
from xnat_provider.client.errors import XnatConflictError, XnatError, XnatPermissionError, XnatServerError
from xnat_provider.links import XCOM_KEY, XnatSessionLink
from xnat_provider.operators.archive import XnatArchiveOperator
from xnat_provider.operators.fields import XnatSetFieldsOperator
from xnat_provider.operators.imports import XnatImportOperator
from xnat_provider.operators.transfers import (
    XnatDownloadScanOperator,
    XnatListScansOperator,
    XnatUploadResourceOperator,
)
from xnat_provider.sensors.experiment import XnatExperimentSensor
from xnat_provider.sensors.prearchive import XnatPrearchiveSensor

pytestmark = pytest.mark.timeout(120)
FILES = r"/scans/[^/]+/resources/[^/]+/files/.+"  # each file (the listing ends at /files)


def link(ctx: dict) -> str | None:
    return ctx["ti"].pushed.get(XCOM_KEY)


def session_page(emu, label: str = "S01_MR1", project: str = "P1") -> str:
    return f"{emu.url}/data/projects/{project}/experiments/{label}?format=html"


def test_a_download_that_fails_mid_work_has_the_link(xnat_conn, archived, tmp_path) -> None:
    """It used to be pushed only after the download succeeded."""
    xnat_conn.fail_next("GET", FILES, status=403, count=1000)  # the scans are listed; their files are refused
    ctx = context()
    op = XnatDownloadScanOperator(task_id="d", project="P1", experiment=archived, scan="1", dest=tmp_path / "out")
    with pytest.raises(XnatPermissionError):
        op.execute(ctx)
    assert xnat_conn.request_count("GET", FILES) >= 1  # it failed during the transfer
    assert link(ctx) == session_page(xnat_conn)


@pytest.mark.parametrize("make", [
    lambda src: XnatListScansOperator(task_id="l", project="P1", experiment="S01_MR1"),
    lambda src: XnatSetFieldsOperator(task_id="f", project="P1", experiment="S01_MR1", fields={"qc": "pass"}),
    lambda src: XnatUploadResourceOperator(task_id="u", source=src, project="P1", experiment="S01_MR1",
                                           resource="NOTES"),
], ids=["list", "fields", "upload"])
def test_operators_on_a_named_session_push_the_link_first(xnat_conn, archived, tmp_path, make) -> None:
    src = tmp_path / "notes.txt"
    src.write_text("a note")
    xnat_conn.fail_next("*", r"^/data/(projects/P1/experiments|experiments/)", status=500, count=1000)
    ctx = context()
    with pytest.raises(XnatError):
        make(src).execute(ctx)
    assert link(ctx) == session_page(xnat_conn)


def test_an_archive_that_conflicts_links_the_prearchive_session(xnat_conn, archived, study, tmp_path) -> None:
    conflict = imported(resent_with_one_more(study, tmp_path / "extra"))
    ctx = context()
    with pytest.raises(XnatConflictError):
        XnatArchiveOperator(task_id="a", prearchive_sessions=conflict).execute(ctx)
    assert link(ctx) == f"{xnat_conn.url}{conflict[0]['uri']}?format=html"  # where XNAT shows the conflict


def test_an_archive_selection_links_the_prearchive_until_it_has_sessions(xnat_conn) -> None:
    xnat_conn.fail_next("GET", r"^/data/prearchive/projects/P1$", status=503, count=1000)
    ctx = context()
    with pytest.raises(XnatServerError):
        XnatArchiveOperator(task_id="a", project="P1").execute(ctx)
    assert link(ctx) == f"{xnat_conn.url}/data/prearchive/projects/P1?format=html"


@pytest.mark.parametrize(("destination", "experiment", "page"), [
    ("prearchive", None, "{url}/data/prearchive/projects/P1?format=html"),
    ("archive", "S09_MR1", "{url}/data/projects/P1/experiments/S09_MR1?format=html"),
])
def test_a_failed_import_has_the_link(xnat_conn, study_zip, destination, experiment, page) -> None:
    xnat_conn.fail_next("POST", r"^/data/services/import$", status=403, count=10)
    ctx = context(FakeStore())
    op = XnatImportOperator(task_id="i", source=str(study_zip), project="P1", destination=destination,
                            experiment=experiment)
    with pytest.raises(XnatError):
        op.execute(ctx)
    assert link(ctx) == page.format(url=xnat_conn.url)


# ---- sensors -------------------------------------------------------------------------------------------
def test_sensors_have_the_link_from_their_first_look(xnat_conn, tmp_path) -> None:
    from airflow.sdk.exceptions import AirflowFailException, AirflowSensorTimeout

    assert XnatSessionLink in {type(x) for x in XnatExperimentSensor.operator_extra_links}
    assert XnatSessionLink in {type(x) for x in XnatPrearchiveSensor.operator_extra_links}
    ctx = context()
    with pytest.raises(AirflowSensorTimeout):  # a session that never comes
        XnatExperimentSensor(task_id="s", project="P1", experiment="S01_MR1", timeout=0.3,
                             poke_interval=0.1).execute(ctx)
    assert link(ctx) == session_page(xnat_conn)

    row = put_session(xnat_conn, tmp_path, "S01_MR1")
    hold(xnat_conn, row, "CONFLICT")
    ctx = context()
    with pytest.raises(AirflowFailException, match="CONFLICT"):
        XnatPrearchiveSensor(task_id="p", project="P1", poke_interval=0.1, timeout=10).execute(ctx)
    assert link(ctx) == f"{xnat_conn.url}/data/prearchive/projects/P1?format=html"


@pytest.mark.parametrize("deferrable", [False, True])
def test_a_subject_sensor_links_the_subject_then_the_session_found(xnat_conn, tmp_path, deferrable) -> None:
    from airflow.sdk.exceptions import TaskDeferred

    from tests.sensors.support import first_event

    ctx = context()
    s = XnatExperimentSensor(task_id="s", project="P1", subject="S07", poke_interval=0.1, timeout=20,
                          deferrable=deferrable)
    if deferrable:
        import asyncio

        with pytest.raises(TaskDeferred) as deferred:
            s.execute(ctx)
        assert link(ctx) == f"{xnat_conn.url}/data/projects/P1/subjects/S07?format=html"
        put_session(xnat_conn, tmp_path, "S07_MR1", subject="S07", archive=True)
        event = asyncio.run(first_event(deferred.value.trigger, timeout=20))
        s.execute_complete(ctx, event)
    else:
        put_session(xnat_conn, tmp_path, "S07_MR1", subject="S07", archive=True)
        s.execute(ctx)
    assert link(ctx) == session_page(xnat_conn, "S07_MR1")


# ---- in a real run --------------------------------------------------------------------------------------
def test_a_task_failing_mid_work_in_a_dag_run_has_its_link(airflow_db, xnat_conn, archived, tmp_path) -> None:
    """``dag.test()`` of the session DAG with every file download refused: the mapped downloads fail after
    listing their scans, and each has its "XNAT session" link in the metadata database."""
    xnat_conn.fail_next("GET", FILES, status=403, count=100_000)
    result = run_dag("xnat_test_ops_session", {"work": str(tmp_path / "work")})
    downloads = {k[1]: v for k, v in result.tis.items() if k[0] == "download"}
    assert downloads and set(downloads.values()) == {"failed"}
    for map_index in downloads:
        assert xcom("xnat_test_ops_session", result.run_id, "download", XCOM_KEY, map_index) == (
            session_page(xnat_conn))
