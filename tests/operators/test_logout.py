"""Operators and sensors log out of XNAT when they finish, however they finish.

An XNAT login that is never closed stays open on the server until its idle timeout (15 minutes); a busy
Airflow would otherwise keep hundreds of them (XNAT warns about exactly this).

Nothing does it behind a task's back: each ``execute`` and ``execute_complete`` of the provider's operators and
sensors carries ``@logs_out`` (``xnat_provider.hooks.xnat``), visibly, and a user's subclass that does not opt
in is left alone. Here: every shipped operator and sensor logs out after success and after failure; every such
method carries the decorator; a subclass without it is not wrapped."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowRescheduleException, TaskDeferred

import xnat_provider.operators
import xnat_provider.sensors
from tests.airflow_helpers import context
from xnat_provider.client.errors import XnatError, XnatNotFoundError
from xnat_provider.hooks.xnat import XnatHook, is_logged_out, logs_out
from xnat_provider.operators.archive import XnatArchiveOperator
from xnat_provider.operators.base import XnatBaseOperator
from xnat_provider.operators.fields import XnatSetFieldsOperator
from xnat_provider.operators.imports import XnatImportOperator
from xnat_provider.operators.tokens import XnatInvalidateTokenOperator, XnatIssueTokenOperator
from xnat_provider.operators.transfers import (
    XnatDownloadScanOperator,
    XnatListScansOperator,
    XnatUploadResourceOperator,
)
from xnat_provider.sensors.base import XnatBaseSensor
from xnat_provider.sensors.experiment import XnatExperimentSensor
from xnat_provider.sensors.prearchive import XnatPrearchiveSensor

# Every request but the login and the logout: failing them makes the work fail after the task logged in.
WORK = r"^/data/(?!services/auth$|JSESSION$)"


def open_sessions(emu) -> int:
    return len(emu.auth.sessions)


def test_operator_logs_out_after_success_and_after_failure(xnat_conn) -> None:
    emu = xnat_conn
    XnatSetFieldsOperator(task_id="f", project="P1", fields={"a": "1"}).execute(context())
    assert open_sessions(emu) == 0 and emu.auth.logins == 1
    with pytest.raises(XnatNotFoundError):
        XnatListScansOperator(task_id="s", project="P1", experiment="NOPE").execute(context())
    assert open_sessions(emu) == 0 and emu.auth.logins == 2


def test_sensor_logs_out_after_each_reschedule_poke_and_when_deferring(xnat_conn) -> None:
    emu = xnat_conn
    sensor = XnatExperimentSensor(task_id="w", project="P1", experiment="S01_MR1", mode="reschedule",
                                  poke_interval=1)
    with pytest.raises(AirflowRescheduleException):
        sensor.execute(context())
    assert open_sessions(emu) == 0
    deferring = XnatPrearchiveSensor(task_id="p", project="P1", deferrable=True, poke_interval=1, timeout=10)
    with pytest.raises(TaskDeferred):
        deferring.execute(context())
    assert open_sessions(emu) == 0


def test_connection_test_logs_out(xnat_conn) -> None:
    ok, _ = XnatHook().test_connection()
    assert ok and open_sessions(xnat_conn) == 0


# ---- every shipped operator and sensor, success and failure ------------------------------------------------
def _issued() -> dict[str, Any]:
    return XnatIssueTokenOperator(task_id="t").execute(context())


OPERATORS: dict[str, Callable[[Path], Any]] = {
    "import": lambda tmp: XnatImportOperator(task_id="i", source=str(tmp / "study.zip"), project="P1"),
    "archive": lambda tmp: XnatArchiveOperator(task_id="a", project="P1"),
    "list_scans": lambda tmp: XnatListScansOperator(task_id="l", project="P1", experiment="S01_MR1"),
    "download": lambda tmp: XnatDownloadScanOperator(task_id="d", project="P1", experiment="S01_MR1", scan="1",
                                                     dest=str(tmp / "out")),
    "upload": lambda tmp: XnatUploadResourceOperator(task_id="u", source=str(tmp / "study.zip"), project="P1",
                                                     experiment="S01_MR1", resource="NOTES"),
    "set_fields": lambda tmp: XnatSetFieldsOperator(task_id="f", project="P1", experiment="S01_MR1",
                                                    fields={"qc": "pass"}),
    "issue_token": lambda tmp: XnatIssueTokenOperator(task_id="t"),
    "invalidate_token": lambda tmp: XnatInvalidateTokenOperator(task_id="r", token=_issued()),
    "experiment_sensor": lambda tmp: XnatExperimentSensor(task_id="w", project="P1", experiment="S01_MR1",
                                                          poke_interval=0.1, timeout=5),
    "prearchive_sensor": lambda tmp: XnatPrearchiveSensor(task_id="p", project="P1", experiment="S01_MR1",
                                                          poke_interval=0.1, timeout=0.5),
}


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_every_shipped_task_logs_out_after_success(xnat_conn, archived, study_zip, tmp_path, name) -> None:
    emu = xnat_conn
    if name == "prearchive_sensor":  # something READY to find
        XnatImportOperator(task_id="i", source=str(study_zip), project="P1").execute(context())
    task = OPERATORS[name](tmp_path)
    before, already_open = emu.auth.logins, open_sessions(emu)  # the fixtures' own client is logged in
    task.execute(context())
    assert emu.auth.logins > before  # it did log in...
    assert open_sessions(emu) == already_open  # ...and out


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_every_shipped_task_logs_out_after_failure(xnat_conn, archived, study_zip, tmp_path, name) -> None:
    emu = xnat_conn
    task = OPERATORS[name](tmp_path)  # built first: the token teardown's token is issued here
    before, already_open = emu.auth.logins, open_sessions(emu)
    emu.fail_next("*", WORK, status=403, count=10_000)  # logged in, then refused
    with pytest.raises(XnatError):
        task.execute(context())
    assert emu.auth.logins > before
    assert open_sessions(emu) == already_open


def test_a_sensor_logs_out_after_resuming_from_its_trigger(xnat_conn, tmp_path) -> None:
    """``execute_complete`` runs in a new process after the trigger fired; one that talks to XNAT (here the
    rebuild of a stalled prearchive session, which fails) logs out too."""
    emu = xnat_conn
    sensor = XnatPrearchiveSensor(task_id="p", project="P1", deferrable=True, poke_interval=0.1, timeout=10)
    row = {"project": "P1", "timestamp": "20240101_000000000", "folder": "S01_MR1", "name": "S01_MR1"}
    event = {"status": "rebuild", "message": "stalled", "sessions": [row], "state": {"seen": {}, "rebuilt": []}}
    with pytest.raises(XnatError):
        sensor.execute_complete(context(), event)
    assert emu.auth.logins >= 1 and open_sessions(emu) == 0


# ---- explicit, never hidden ---------------------------------------------------------------------------------
def shipped_tasks() -> list[type]:
    """Every operator and sensor class the provider's packages define (a new module is found by itself)."""
    found: set[type] = set()
    for package in (xnat_provider.operators, xnat_provider.sensors):
        for info in pkgutil.iter_modules(package.__path__):
            if info.name == "session":  # the deprecated alias module defines no class
                continue
            module = importlib.import_module(f"{package.__name__}.{info.name}")
            found.update(obj for obj in vars(module).values() if inspect.isclass(obj)
                         and issubclass(obj, (XnatBaseOperator, XnatBaseSensor)) and obj.__module__ == module.__name__)
    return sorted(found, key=lambda c: c.__name__)


@pytest.mark.parametrize("cls", shipped_tasks(), ids=lambda c: c.__name__)
def test_every_shipped_execute_carries_logs_out(cls) -> None:
    for name in ("execute", "execute_complete"):
        if name in vars(cls):
            assert is_logged_out(vars(cls)[name]), f"{cls.__name__}.{name} must be decorated with @logs_out"


def test_the_bases_wrap_nothing_in_a_users_subclass(xnat_conn) -> None:
    """A subclass that does not opt in is left as written: its login stays open (until the user closes it)."""
    emu = xnat_conn

    class MyOperator(XnatBaseOperator):
        def execute(self, context: Any) -> list[str]:
            return self.hook.get_conn().list_projects()

    class MySensor(XnatBaseSensor):
        def poke(self, context: Any) -> bool:
            return bool(self.hook.get_conn().list_projects())

        def execute_complete(self, context: Any, event: Any = None) -> None:
            self.hook.get_conn().list_projects()

    for cls in (MyOperator, MySensor):
        assert not is_logged_out(cls.execute_complete if cls is MySensor else cls.execute)
        assert "__init_subclass__" not in vars(XnatBaseOperator) and "__init_subclass__" not in vars(XnatBaseSensor)
    op = MyOperator(task_id="mine")
    assert "P1" in op.execute(context())
    assert open_sessions(emu) == 1  # not wrapped: nothing logged it out
    op.hook.close()
    sensor = MySensor(task_id="mine_too", deferrable=False)
    sensor.execute_complete(context())
    assert open_sessions(emu) == 1
    sensor.hook.close()
    assert open_sessions(emu) == 0

    class OptedIn(XnatBaseOperator):
        @logs_out
        def execute(self, context: Any) -> list[str]:
            return self.hook.get_conn().list_projects()

    assert "P1" in OptedIn(task_id="opted_in").execute(context())
    assert open_sessions(emu) == 0


def test_nested_decorated_calls_keep_one_login(xnat_conn) -> None:
    """A decorated ``execute`` that calls a decorated ``super().execute()`` and then talks to XNAT again logs
    in once and out once, at the end of the outer call."""
    emu = xnat_conn

    class Inner(XnatBaseOperator):
        @logs_out
        def execute(self, context: Any) -> list[str]:
            return self.hook.get_conn().list_projects()

    class Outer(Inner):
        @logs_out
        def execute(self, context: Any) -> list[str]:
            projects = super().execute(context)
            assert open_sessions(emu) == 1  # still logged in after the inner call
            return projects + self.hook.get_conn().list_projects()

    before = emu.auth.logins
    assert Outer(task_id="outer").execute(context()).count("P1") == 2
    assert emu.auth.logins == before + 1 and open_sessions(emu) == 0
