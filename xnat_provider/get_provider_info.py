"""Provider registration, read by Airflow through the ``apache_airflow_provider`` entry point.

The connection form is declarative (``conn-fields`` and ``ui-field-behaviour``, Airflow >= 3.2), so the
API server can show it without importing the hook.
"""

from __future__ import annotations

from typing import Any


def get_provider_info() -> dict[str, Any]:
    """The provider's registration. One literal, kept whole: it is data in the shape Airflow's provider schema
    defines, read top to bottom against that schema; split into pieces it would only be harder to compare."""
    return {
        "package-name": "airflow-provider-xnat",
        "name": "XNAT",
        "description": "Apache Airflow provider for XNAT, the imaging research archive.",
        "integrations": [
            {
                "integration-name": "XNAT",
                "external-doc-url": "https://www.xnat.org/",
                "tags": ["software"],
            }
        ],
        "hooks": [{"integration-name": "XNAT", "python-modules": ["xnat_provider.hooks.xnat"]}],
        "operators": [{"integration-name": "XNAT", "python-modules": [
            "xnat_provider.operators.imports", "xnat_provider.operators.archive",
            "xnat_provider.operators.transfers", "xnat_provider.operators.fields",
            "xnat_provider.operators.tokens", "xnat_provider.operators.containers"]}],
        "sensors": [{"integration-name": "XNAT", "python-modules": [
            "xnat_provider.sensors.prearchive", "xnat_provider.sensors.experiment",
            "xnat_provider.sensors.containers"]}],
        "triggers": [{"integration-name": "XNAT", "python-modules": [
            "xnat_provider.triggers.prearchive", "xnat_provider.triggers.experiment",
            "xnat_provider.triggers.events", "xnat_provider.triggers.containers"]}],
        "extra-links": ["xnat_provider.links.XnatSessionLink"],
        "connection-types": [
            {
                "connection-type": "xnat",
                "hook-class-name": "xnat_provider.hooks.xnat.XnatHook",
                "hook-name": "XNAT",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema"],
                    "relabeling": {
                        "host": "XNAT URL",
                        "login": "User or token alias",
                        "password": "Password or token secret",
                    },
                    "placeholders": {
                        "host": "https://xnat.example.org (a path prefix such as /xnat is fine)",
                        "port": "optional when the URL has one",
                        "login": "alice, or an alias token's alias",
                        "password": "password, or the alias token's secret",
                    },
                },
                "conn-fields": {
                    "verify_ssl": {"label": "Verify TLS certificates",
                                   "schema": {"type": ["boolean", "null"], "default": True}},
                    "ca_bundle": {"label": "CA bundle path", "schema": {"type": ["string", "null"]}},
                    "connect_timeout": {"label": "Connect timeout (s)",
                                        "schema": {"type": ["number", "null"], "default": 10}},
                    "read_timeout": {"label": "Read timeout (s)",
                                     "schema": {"type": ["number", "null"], "default": 300}},
                    "retries": {"label": "Attempts per idempotent request",
                                "schema": {"type": ["integer", "null"], "default": 5, "minimum": 1}},
                    "backoff": {"label": "First retry wait (s)",
                                "schema": {"type": ["number", "null"], "default": 1.0}},
                    "settle_seconds": {"label": "Wait for a lost import/archive answer (s)",
                                       "schema": {"type": ["number", "null"], "default": 30}},
                    "workers": {"label": "Parallel downloads",
                                "schema": {"type": ["integer", "null"], "default": 4, "minimum": 1}},
                    "progress_interval": {"label": "Seconds between progress lines of a long transfer",
                                          "schema": {"type": ["number", "null"], "default": 10, "minimum": 0}},
                    "direct_io": {"label": "Write big downloads around the page cache (O_DIRECT)",
                                  "schema": {"type": ["boolean", "null"], "default": True}},
                },
            }
        ],
    }
