"""Deprecated: ``XnatSessionTrigger`` is :class:`~xnat_provider.triggers.experiment.XnatExperimentTrigger`.

Kept so that a trigger serialized before the rename (classpath ``xnat_provider.triggers.session.XnatSessionTrigger``,
its criteria naming ``session``) is still imported, built and run by a triggerer after an upgrade: Airflow imports
the stored classpath and calls the class with the stored keyword arguments; the new class accepts the old
criteria. Importing the name warns (``DeprecationWarning``).
"""

from __future__ import annotations

import warnings
from typing import Any


def __getattr__(name: str) -> Any:
    if name == "XnatSessionTrigger":
        from .experiment import XnatExperimentTrigger

        warnings.warn("xnat_provider.triggers.session.XnatSessionTrigger is deprecated: use XnatExperimentTrigger "
                      "from xnat_provider.triggers.experiment", DeprecationWarning, stacklevel=2)
        return XnatExperimentTrigger
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
