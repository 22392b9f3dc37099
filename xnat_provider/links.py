"""``XnatSessionLink``: a button on the task instance that opens the session the task works on in XNAT.

Tasks push the page's URL before they start the work whenever their arguments name the target (as the dbt Cloud
provider pushes its job run link before waiting), so a task that fails, the one a person wants to open, has
the button; a task whose target is known only from the work (an import, an archive by selection) pushes it as
soon as it is known, and the final page when it ends.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from airflow.sdk import BaseOperatorLink
from airflow.sdk.execution_time.xcom import XCom

XCOM_KEY = "xnat_session_url"


def _q(part: str) -> str:
    return quote(str(part), safe="")


def session_url(base: str, project: str, label: str) -> str:
    """An archived session's page."""
    return f"{base}/data/projects/{_q(project)}/experiments/{_q(label)}?format=html"


def subject_url(base: str, project: str, subject: str) -> str:
    """A subject's page (its sessions)."""
    return f"{base}/data/projects/{_q(project)}/subjects/{_q(subject)}?format=html"


def prearchive_url(base: str, uri: str) -> str:
    """A prearchive session's page, from its ``/data/prearchive/projects/P/TIMESTAMP/FOLDER`` URI."""
    return f"{base}{uri}?format=html"


def project_prearchive_url(base: str, project: str) -> str:
    """A project's prearchive: its sessions and their statuses."""
    return f"{base}/data/prearchive/projects/{_q(project)}?format=html"


def push_link(context: Any, url: str) -> None:
    """Set the task's "XNAT session" button to ``url`` (the last push wins)."""
    context["ti"].xcom_push(key=XCOM_KEY, value=url)


class XnatSessionLink(BaseOperatorLink):
    name = "XNAT session"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        url = XCom.get_value(key=XCOM_KEY, ti_key=ti_key)
        return str(url) if url else ""
