"""``XnatSessionLink``: a button on the task instance that opens, in XNAT, what the task works on.

That is an imaging session (XNAT experiment), a subject, a prearchive session or a project's prearchive. Tasks
push the page's URL before they start the work whenever their arguments name the target (as the dbt Cloud
provider pushes its job run link before waiting), so a task that fails, the one a person wants to open, has the
button; a task whose target is known only from the work (an import, an archive by selection) pushes it as soon
as it is known, and the final page when it ends.

The button keeps its name ("XNAT session", what XNAT's own pages call an imaging session) and its class keeps
``XnatSessionLink``: Airflow stores each run's link under the class name (``_link_XnatSessionLink``) and the
pushed URL under :data:`XCOM_KEY`, so a rename would empty the button of every earlier run.
"""

from __future__ import annotations

import warnings
from typing import Any
from urllib.parse import quote

from airflow.sdk import BaseOperatorLink
from airflow.sdk.execution_time.xcom import XCom

XCOM_KEY = "xnat_session_url"


def _q(part: str) -> str:
    return quote(str(part), safe="")


def experiment_url(base: str, project: str, experiment: str) -> str:
    """An archived imaging session's (XNAT experiment's) page, by its label."""
    return f"{base}/data/projects/{_q(project)}/experiments/{_q(experiment)}?format=html"


def subject_url(base: str, project: str, subject: str) -> str:
    """A subject's page (its experiments)."""
    return f"{base}/data/projects/{_q(project)}/subjects/{_q(subject)}?format=html"


def prearchive_session_url(base: str, uri: str) -> str:
    """A prearchive session's page, from its ``/data/prearchive/projects/P/TIMESTAMP/FOLDER`` URI."""
    return f"{base}{uri}?format=html"


def project_prearchive_url(base: str, project: str) -> str:
    """A project's prearchive: its prearchive sessions and their statuses."""
    return f"{base}/data/prearchive/projects/{_q(project)}?format=html"


def push_link(context: Any, url: str) -> None:
    """Set the task's "XNAT session" button to ``url`` (the last push wins)."""
    context["ti"].xcom_push(key=XCOM_KEY, value=url)


class XnatSessionLink(BaseOperatorLink):
    """The "XNAT session" button: the last URL the task pushed with :func:`push_link`."""

    name = "XNAT session"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        url = XCom.get_value(key=XCOM_KEY, ti_key=ti_key)
        return str(url) if url else ""


_RENAMED = {"session_url": experiment_url, "prearchive_url": prearchive_session_url}


def __getattr__(name: str) -> Any:
    """The helpers' old names, still importable, with a ``DeprecationWarning``."""
    if name in _RENAMED:
        new = _RENAMED[name]
        warnings.warn(f"xnat_provider.links.{name} is deprecated: use {new.__name__}", DeprecationWarning,
                      stacklevel=2)
        return new
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
