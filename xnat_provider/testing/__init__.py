"""An XNAT emulator: a real HTTP server speaking XNAT 1.8's REST API, for offline tests of XNAT pipelines.

It is the other side of the wire from :mod:`xnat_provider.client` and shares no code with it. Independent
clients (xnatpy, pyxnat) work against it unchanged; see the README for the Python API, the
``xnat-emulator`` command, the ``xnat_emulator`` pytest fixture and fault injection.

The emulator needs the provider's ``testing`` extra (``pip install 'airflow-provider-xnat[testing]'``). This
package imports nothing until :class:`XnatEmulator` or :class:`FaultRule` is first used: the pytest plugin
(:mod:`xnat_provider.testing.pytest_plugin`) lives here and is loaded by every pytest run wherever the provider
is installed, with or without that extra, so importing the package itself must stay cheap and must not fail.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .emulator import XnatEmulator
    from .faults import FaultRule

__all__ = ["FaultRule", "MissingTestingExtraError", "XnatEmulator"]

TESTING_EXTRA_INSTALL = "pip install 'airflow-provider-xnat[testing]'"

# Modules the emulator imports that the provider's runtime dependencies do not bring: import name -> distribution.
TESTING_EXTRA_MODULES = {"python_multipart": "python-multipart"}

_LAZY = {"XnatEmulator": ".emulator", "FaultRule": ".faults"}


class MissingTestingExtraError(ModuleNotFoundError):
    """The emulator was used without the ``testing`` extra (a :class:`ModuleNotFoundError`, so also an ImportError)."""


def missing_testing_extra(exc: ModuleNotFoundError) -> MissingTestingExtraError | None:
    """The error to raise in place of ``exc`` when the module missing is one of the ``testing`` extra's.

    None when the missing module is something else (then ``exc`` is a real bug, not a missing extra)."""
    top = (exc.name or "").partition(".")[0]
    if top not in TESTING_EXTRA_MODULES:
        return None
    return MissingTestingExtraError(
        f"The XNAT emulator (xnat_provider.testing) needs {TESTING_EXTRA_MODULES[top]}, which is not installed "
        f"(import of {top!r} failed). It comes with the provider's `testing` extra: {TESTING_EXTRA_INSTALL}",
        name=exc.name, path=exc.path)


def __getattr__(name: str) -> Any:
    """``XnatEmulator`` and ``FaultRule``, imported on first use (PEP 562)."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
