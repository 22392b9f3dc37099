"""Deprecated: ``XnatSessionSensor`` is :class:`~xnat_provider.sensors.experiment.XnatExperimentSensor`.

Still importable from here, with a ``DeprecationWarning``; its ``session=`` argument is the new ``experiment=``.
"""

from __future__ import annotations

import warnings
from typing import Any


def __getattr__(name: str) -> Any:
    if name == "XnatSessionSensor":
        from .experiment import XnatExperimentSensor

        warnings.warn("xnat_provider.sensors.session.XnatSessionSensor is deprecated: use XnatExperimentSensor "
                      "from xnat_provider.sensors.experiment (its session= argument is now experiment=)",
                      DeprecationWarning, stacklevel=2)
        return XnatExperimentSensor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
