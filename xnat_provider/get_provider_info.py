"""Provider registration read by Airflow through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any


def get_provider_info() -> dict[str, Any]:
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
    }
