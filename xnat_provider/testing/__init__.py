"""An XNAT emulator: a real HTTP server speaking XNAT 1.8's REST API, for offline tests of XNAT pipelines.

It is the other side of the wire from :mod:`xnat_provider.client` and shares no code with it. Independent
clients (xnatpy, pyxnat) work against it unchanged; see the README for the Python API, the
``xnat-emulator`` command, the ``xnat_emulator`` pytest fixture and fault injection.

The emulator needs the provider's ``testing`` extra (``pip install 'airflow-provider-xnat[testing]'``). This
package imports nothing until :class:`XnatEmulator`, :class:`FaultRule` or :class:`MissingTestingExtraError` is
first used: the pytest plugin (:mod:`xnat_provider.testing.pytest_plugin`) lives here and is loaded by every
pytest run wherever the provider is installed, with or without that extra, so importing the package itself must
stay cheap and must not fail.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .emulator import XnatEmulator
    from .extra import MissingTestingExtraError
    from .faults import FaultRule

__all__ = ["FaultRule", "MissingTestingExtraError", "XnatEmulator"]

# Imported on first use (PEP 562): name -> the module that defines it. The ``testing`` extra's helpers live in
# ``extra.py`` (which ``uploads.py`` imports, so that no module imports the package back); they stay reachable here.
_LAZY = {
    "XnatEmulator": ".emulator", "FaultRule": ".faults", "MissingTestingExtraError": ".extra",
    "missing_testing_extra": ".extra", "TESTING_EXTRA_INSTALL": ".extra", "TESTING_EXTRA_MODULES": ".extra",
}


def __getattr__(name: str) -> Any:
    """``XnatEmulator``, ``FaultRule`` and the ``testing`` extra's error (``extra.py``), imported on first use."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
