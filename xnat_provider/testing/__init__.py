"""An XNAT emulator: a real HTTP server speaking XNAT 1.8's REST API, for offline tests of XNAT pipelines.

It is the other side of the wire from :mod:`xnat_provider.client` and shares no code with it. Independent
clients (xnatpy, pyxnat) work against it unchanged; see the README for the Python API, the
``xnat-emulator`` command, the ``xnat_emulator`` pytest fixture and fault injection.
"""

from .emulator import XnatEmulator
from .faults import FaultRule

__all__ = ["FaultRule", "XnatEmulator"]
