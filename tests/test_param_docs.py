"""Every argument of every public operator, sensor and trigger is documented in its class docstring, in
Airflow's ``:param name:`` style (what Airflow's and Sphinx's docs show, and what a DAG author reads first).

The classes are found by walking ``xnat_provider.operators``, ``.sensors`` and ``.triggers``, so a new module
is checked without being listed here. Each class's own ``__init__`` is read (``**kwargs`` and the arguments
Airflow's ``BaseOperator`` and ``BaseSensorOperator`` take are Airflow's to document)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import pytest
from airflow.sdk import BaseOperator, BaseSensorOperator
from airflow.triggers.base import BaseTrigger

import xnat_provider.operators
import xnat_provider.sensors
import xnat_provider.triggers

AIRFLOWS_OWN = set(inspect.signature(BaseOperator.__init__).parameters) | set(
    inspect.signature(BaseSensorOperator.__init__).parameters)


def public_classes() -> list[type]:
    found: dict[str, type] = {}
    for package in (xnat_provider.operators, xnat_provider.sensors, xnat_provider.triggers):
        for info in pkgutil.iter_modules(package.__path__):
            module = importlib.import_module(f"{package.__name__}.{info.name}")
            for name, obj in vars(module).items():
                if (inspect.isclass(obj) and not name.startswith("_") and obj.__module__ == module.__name__
                        and issubclass(obj, (BaseOperator, BaseTrigger))):
                    found[f"{obj.__module__}.{name}"] = obj
    return [found[k] for k in sorted(found)]


def own_parameters(cls: type) -> list[str]:
    if "__init__" not in vars(cls):
        return []
    params = inspect.signature(vars(cls)["__init__"]).parameters.values()
    return [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            and p.name not in AIRFLOWS_OWN]


def test_the_walk_finds_the_shipped_classes() -> None:
    names = {c.__name__ for c in public_classes()}
    assert {"XnatBaseOperator", "XnatImportOperator", "XnatArchiveOperator", "XnatListScansOperator",
            "XnatDownloadScanOperator", "XnatUploadResourceOperator", "XnatSetFieldsOperator",
            "XnatIssueTokenOperator", "XnatInvalidateTokenOperator", "XnatBaseSensor", "XnatPrearchiveSensor",
            "XnatExperimentSensor", "XnatPrearchiveTrigger", "XnatExperimentTrigger",
            "XnatPrearchiveEventTrigger"} <= names


@pytest.mark.parametrize("cls", public_classes(), ids=lambda c: c.__name__)
def test_every_argument_has_a_param_line(cls: type) -> None:
    doc = vars(cls).get("__doc__") or ""
    documented = set(re.findall(r"^\s*:param (\w+):", doc, re.MULTILINE))
    missing = [name for name in own_parameters(cls) if name not in documented]
    assert not missing, f"{cls.__name__}'s docstring has no ':param <name>:' line for {missing}"
