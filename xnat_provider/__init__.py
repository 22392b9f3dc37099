"""Apache Airflow provider for XNAT.

The import package is deliberately light: importing ``xnat_provider`` does not import Airflow, so the
plain-Python client (``xnat_provider.client``) and the emulator (``xnat_provider.testing``) stay usable
from other workflow engines and from plain scripts.
"""

__version__ = "0.1.0"
