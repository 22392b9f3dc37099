"""The names before "one vocabulary" still work, each with a ``DeprecationWarning`` that names its successor.

An archived imaging session is an *experiment* (XNAT's REST term, and the client's), a prearchive entry a
*prearchive session*: ``session=`` became ``experiment=`` on every operator and sensor, ``sessions=`` and
``session_filter=`` of ``XnatArchiveOperator`` became ``prearchive_sessions=`` and ``experiment_filter=``. The old
keyword is still accepted (also through ``partial()``), warns, and lands in the new, templated attribute; giving
both is refused. One test per old name, run against the emulator."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pendulum
import pytest
from airflow.sdk import DAG

from tests.airflow_helpers import FakeStore, context
from tests.operators.conftest import Server
from tests.operators.test_archive_operator import imported
from tests.sensors.support import put_session
from xnat_provider.client import XnatClient
from xnat_provider.links import XCOM_KEY
from xnat_provider.operators.archive import XnatArchiveOperator
from xnat_provider.operators.base import XnatBaseOperator, renamed_argument
from xnat_provider.operators.fields import XnatSetFieldsOperator
from xnat_provider.operators.imports import XnatImportOperator
from xnat_provider.operators.transfers import (
    XnatDownloadScanOperator,
    XnatListScansOperator,
    XnatUploadResourceOperator,
)
from xnat_provider.sensors.experiment import XnatExperimentSensor
from xnat_provider.sensors.prearchive import XnatPrearchiveSensor


def deprecated(old: str, new: str) -> Any:
    return pytest.warns(DeprecationWarning, match=rf"'{old}' is deprecated, use '{new}'")


def test_list_scans_session(xnat_conn, archived) -> None:
    with deprecated("session", "experiment"):
        op = XnatListScansOperator(task_id="l", project="P1", session=archived)
    assert op.experiment == archived and op.execute(context()) == ["1", "2"]


def test_download_session(xnat_conn, archived, tmp_path) -> None:
    with deprecated("session", "experiment"):
        op = XnatDownloadScanOperator(task_id="d", project="P1", session=archived, scan="1", dest=str(tmp_path))
    result = op.execute(context())
    assert (result["experiment"], result["files"], result["transferred"]) == (archived, 3, 3)
    assert result["session"] == archived  # the XCom key earlier versions wrote, kept for the DAGs that read it


def test_download_session_through_partial(xnat_conn, archived, tmp_path) -> None:
    """``partial()`` checks argument names against the signature: the old one is still in it."""
    with DAG("d", schedule=None, start_date=pendulum.datetime(2024, 1, 1, tz="UTC")):
        mapped = XnatDownloadScanOperator.partial(task_id="d", project="P1", session=archived,
                                                  dest=str(tmp_path)).expand(scan=["1", "2"])
    with deprecated("session", "experiment"):
        op = mapped.unmap({"scan": "2"})
    assert op.experiment == archived and op.execute(context())["scans"] == ["2"]


def test_upload_session(xnat_conn, server: Server, archived, tmp_path) -> None:
    (tmp_path / "note.txt").write_text("a note")
    with deprecated("session", "experiment"):
        op = XnatUploadResourceOperator(task_id="u", source=str(tmp_path / "note.txt"), project="P1",
                                        session=archived, resource="NOTES")
    result = op.execute(context())
    assert result["level"] == "experiment" and result["transferred"] == 1


def test_set_fields_session(xnat_conn, archived) -> None:
    with deprecated("session", "experiment"):
        op = XnatSetFieldsOperator(task_id="f", project="P1", session=archived, fields={"qc": "pass"})
    assert op.execute(context()) == {"qc": "pass"}
    with XnatClient(xnat_conn.url, "admin", "admin") as c:
        assert c.get_fields("P1", experiment=archived)["qc"] == "pass"


def test_import_session(xnat_conn, server: Server, study_zip) -> None:
    with deprecated("session", "experiment"):
        op = XnatImportOperator(task_id="i", source=str(study_zip), project="P1", session="RENAMED_MR1",
                                destination="archive")
    assert [r["label"] for r in op.execute(context(FakeStore()))] == ["RENAMED_MR1"]
    assert server.labels() == ["RENAMED_MR1"]


def test_archive_sessions(xnat_conn, server: Server, study_zip) -> None:
    upstream = imported(study_zip)
    with deprecated("sessions", "prearchive_sessions"):
        op = XnatArchiveOperator(task_id="a", sessions=upstream)
    assert op.prearchive_sessions == upstream
    assert [(r["label"], r["status"]) for r in op.execute(context())] == [("S01_MR1", "archived")]


def test_archive_session_filter(xnat_conn, server: Server, study_zip) -> None:
    imported(study_zip)
    with deprecated("session_filter", "experiment_filter"):
        op = XnatArchiveOperator(task_id="a", project="P1", session_filter="S01_MR1")
    assert op.experiment_filter == "S01_MR1"
    assert [r["label"] for r in op.execute(context())] == ["S01_MR1"]


def test_prearchive_sensor_session(xnat_conn, tmp_path) -> None:
    put_session(xnat_conn, tmp_path, "S01_MR1")
    put_session(xnat_conn, tmp_path, "S02_MR1", subject="S02")
    with deprecated("session", "experiment"):
        sensor = XnatPrearchiveSensor(task_id="p", project="P1", session="S02_MR1", poke_interval=0.1, timeout=5)
    assert [s["name"] for s in sensor.execute(context())] == ["S02_MR1"]


def test_experiment_sensor_session(xnat_conn, archived) -> None:
    with deprecated("session", "experiment"):
        sensor = XnatExperimentSensor(task_id="w", project="P1", session=archived, poke_interval=0.1, timeout=5)
    assert sensor.execute(context())["label"] == archived


# ---- what every rename shares ----------------------------------------------------------------------------
RENAMED: list[tuple[Callable[..., Any], dict[str, Any], str, str]] = [
    (XnatListScansOperator, {"project": "P1"}, "session", "experiment"),
    (XnatDownloadScanOperator, {"project": "P1", "dest": "/tmp/x"}, "session", "experiment"),
    (XnatUploadResourceOperator, {"project": "P1", "source": "/tmp/x", "resource": "R"}, "session", "experiment"),
    (XnatSetFieldsOperator, {"project": "P1", "fields": {"a": "b"}}, "session", "experiment"),
    (XnatImportOperator, {"project": "P1", "source": "/tmp/x"}, "session", "experiment"),
    (XnatArchiveOperator, {"project": "P1"}, "sessions", "prearchive_sessions"),
    (XnatArchiveOperator, {"project": "P1"}, "session_filter", "experiment_filter"),
    (XnatPrearchiveSensor, {"project": "P1"}, "session", "experiment"),
    (XnatExperimentSensor, {"project": "P1"}, "session", "experiment"),
]


@pytest.mark.parametrize(("cls", "kwargs", "old", "new"), RENAMED, ids=lambda v: getattr(v, "__name__", None))
def test_the_old_name_is_no_template_field_and_its_value_is_rendered_in_the_new_one(cls, kwargs, old, new) -> None:
    assert new in cls.template_fields and old not in cls.template_fields
    value = "{{ params.v }}" if new != "prearchive_sessions" else "{{ params.v | tojson }}"
    with deprecated(old, new):
        op = cls(task_id="t", **kwargs, **{old: value})
    op.render_template_fields({**context(), "params": {"v": "S01_MR1"}})
    assert getattr(op, new) in ("S01_MR1", '"S01_MR1"') and not hasattr(op, old)


@pytest.mark.parametrize(("cls", "kwargs", "old", "new"), RENAMED, ids=lambda v: getattr(v, "__name__", None))
def test_both_names_at_once_are_refused(cls, kwargs, old, new) -> None:
    with pytest.raises(TypeError, match=f"give {new}= only; {old}= is its deprecated name"):
        cls(task_id="t", **kwargs, **{old: "A", new: "B"})


def test_a_required_argument_is_still_required() -> None:
    with pytest.raises(TypeError, match="missing keyword argument 'experiment'"):
        XnatListScansOperator(task_id="l", project="P1")


def test_the_warning_points_at_the_line_that_used_the_old_name() -> None:
    with pytest.warns(DeprecationWarning) as caught:
        XnatListScansOperator(task_id="l", project="P1", session="S")  # this line
    assert caught[0].filename == __file__


def test_renamed_argument_for_a_users_operator() -> None:
    class MyOperator(XnatBaseOperator):
        def __init__(self, *, experiment: str | None = None, session: str | None = None, **kwargs: Any) -> None:
            self.experiment = renamed_argument(self, "experiment", experiment, "session", session, required=True)
            super().__init__(**kwargs)

    with pytest.warns(DeprecationWarning, match=re.escape("MyOperator: the argument 'session' is deprecated")):
        assert MyOperator(task_id="m", session="S").experiment == "S"
    assert MyOperator(task_id="n", experiment="E").experiment == "E"


# ---- old helper names ----------------------------------------------------------------------------------------
def test_push_session_link(xnat_conn) -> None:
    ctx = context()
    with pytest.warns(DeprecationWarning, match="push_experiment_link"):
        XnatSetFieldsOperator(task_id="f", project="P1", fields={"a": "b"}).push_session_link(ctx, "P1", "S01_MR1")
    assert ctx["ti"].pushed[XCOM_KEY] == f"{xnat_conn.url}/data/projects/P1/experiments/S01_MR1?format=html"


def test_session_asset() -> None:
    from xnat_provider.operators import archive

    with pytest.warns(DeprecationWarning, match="experiment_asset"):
        old = archive.session_asset
    assert old is archive.experiment_asset and old("h", "P", "S", "E").uri == "xnat://h/P/S/E"


@pytest.mark.parametrize(("old", "new"), [("session_url", "experiment_url"),
                                          ("prearchive_url", "prearchive_session_url")])
def test_link_helpers(old, new) -> None:
    from xnat_provider import links

    with pytest.warns(DeprecationWarning, match=new):
        assert getattr(links, old) is getattr(links, new)


@pytest.mark.parametrize(("old", "new"), [("SessionCriteria", "ExperimentCriteria"),
                                          ("observe_session", "observe_experiment"),
                                          ("session_verdict", "experiment_verdict")])
def test_conditions_names(old, new) -> None:
    from xnat_provider import conditions

    with pytest.warns(DeprecationWarning, match=new):
        assert getattr(conditions, old) is getattr(conditions, new)


def test_old_criteria_and_verdict_names(xnat_conn, archived) -> None:
    """Criteria written with ``session`` (by an earlier version) are read as ``experiment``; ``Verdict.sessions``
    is ``Verdict.found``."""
    from xnat_provider.conditions import ExperimentCriteria, PrearchiveCriteria, observe_experiment

    criteria = ExperimentCriteria.from_dict({"project": "P1", "session": archived})
    assert criteria.experiment == archived
    assert PrearchiveCriteria.from_dict({"project": "P1", "session": "X"}).experiment == "X"
    with XnatClient(xnat_conn.url, "admin", "admin") as c:
        verdict = asyncio.run(observe_experiment(c, criteria))
    assert verdict.sessions is verdict.found and verdict.found[0]["label"] == archived


def test_the_deprecated_sensor_module(xnat_conn, archived, tmp_path: Path) -> None:
    with pytest.warns(DeprecationWarning, match="XnatExperimentSensor"):
        from xnat_provider.sensors.session import XnatSessionSensor
    assert XnatSessionSensor is XnatExperimentSensor
    with deprecated("session", "experiment"):
        sensor = XnatSessionSensor(task_id="w", project="P1", session=archived, poke_interval=0.1, timeout=5)
    assert sensor.execute(context())["label"] == archived
