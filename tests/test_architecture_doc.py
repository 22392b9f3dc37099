"""``docs/architecture.md`` names only what exists: every path, every module, and every class or function it
names in code spans, so that the page cannot drift from the code without this test saying where."""

from __future__ import annotations

import builtins
import importlib
import pkgutil
import re
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import xnat_provider

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
PATH = re.compile(r"^(xnat_provider|tests|dags|docs|scripts)/[\w./-]*$")
DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")
CLASS = re.compile(r"^[A-Z]\w*[a-z]\w*$")


def spans() -> list[str]:
    return sorted(set(re.findall(r"`([^`\n]+)`", DOC.read_text())))


def modules() -> dict[str, ModuleType]:
    """Every module of the provider, by its full name."""
    found = {"xnat_provider": xnat_provider}
    for info in pkgutil.walk_packages(xnat_provider.__path__, "xnat_provider."):
        if not info.name.endswith(".__main__"):  # a command: importing it would run it
            found[info.name] = importlib.import_module(info.name)
    return found


MODULES = modules()


def lookup(name: str) -> Any:
    """A module by its full or last dotted name(s), or a name any module defines (or lends, as the deprecated
    aliases do); None when nothing has it."""
    for full, module in MODULES.items():
        if full == name or full.endswith("." + name):
            return module
    if hasattr(builtins, name):
        return getattr(builtins, name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for module in MODULES.values():
            if name in vars(module) or (name.startswith(("Xnat", "Session")) and hasattr(module, name)):
                return getattr(module, name)
    return None


def resolve(dotted: str) -> Any:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):  # the longest prefix that is a module, or a name, then attributes
        obj = lookup(".".join(parts[:cut]))
        if obj is None:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the deprecated names are named on purpose
            for attr in parts[cut:]:
                obj = getattr(obj, attr, None)
        return obj
    return None


def test_the_page_names_what_it_should() -> None:
    names = spans()
    for expected in ("xnat_provider/client/core.py", "xnat_provider/client/protocol.py",
                     "xnat_provider/client/transport.py", "xnat_provider/client/async_client.py",
                     "xnat_provider/testing/registry.py", "tests/oracles/test_client_routes.py"):
        assert expected in names


@pytest.mark.parametrize("span", [s for s in spans() if PATH.match(s)])
def test_every_path_exists(span: str) -> None:
    assert (ROOT / span).exists(), f"docs/architecture.md names {span}, which does not exist"


@pytest.mark.parametrize("span", [s for s in spans() if s.endswith(".py") and "/" not in s])
def test_every_module_file_exists(span: str) -> None:
    assert list((ROOT / "xnat_provider").rglob(span)), f"docs/architecture.md names {span}: no such module"


@pytest.mark.parametrize("span", [s for s in spans() if (DOTTED.match(s) and not s.endswith((".py", ".md", ".txt")))
                                  or CLASS.match(s)])
def test_every_module_class_and_function_exists(span: str) -> None:
    assert resolve(span) is not None, f"docs/architecture.md names {span}, which the code does not have"
