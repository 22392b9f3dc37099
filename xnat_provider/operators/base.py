"""What every XNAT operator shares: the connection argument, the hook, the session link, small XComs."""

from __future__ import annotations

import ast
import json
from functools import cached_property
from typing import Any

from airflow.sdk import BaseOperator

from ..hooks.xnat import XnatHook, logs_out
from ..links import XnatSessionLink, prearchive_url, project_prearchive_url, push_link, session_url


def structured(value: Any) -> Any:
    """A templated argument that rendered to the text of a list or mapping (JSON, or Python's repr when a
    template printed an XCom) back as that list or mapping; anything else unchanged."""
    if not isinstance(value, str) or value.strip()[:1] not in ("[", "{"):
        return value
    try:
        return json.loads(value)
    except ValueError:
        try:
            return ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            return value


class XnatBaseOperator(BaseOperator):
    """Base of the XNAT operators: ``xnat_conn_id`` (templated), a cached hook, and the session link."""

    operator_extra_links = (XnatSessionLink(),)
    ui_color = "#c9ddf2"

    def __init__(self, *, xnat_conn_id: str = XnatHook.default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.xnat_conn_id = xnat_conn_id

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Log out of XNAT when an operator's ``execute`` ends, however it ends (success, failure, deferral):
        an XNAT login that is never closed stays open on the server until its idle timeout."""
        super().__init_subclass__(**kwargs)
        if "execute" in cls.__dict__:
            cls.execute = logs_out(cls.__dict__["execute"])  # type: ignore[method-assign]

    @cached_property
    def hook(self) -> XnatHook:
        return XnatHook(self.xnat_conn_id)

    def push_session_link(self, context: Any, project: str, label: str | None = None,
                          prearchive_uri: str | None = None) -> None:
        """Point the task's "XNAT session" button at a session's page: archived (``label``) or in the
        prearchive (``prearchive_uri``). Called before the work whenever the arguments name the session, so a
        task that fails has the button too; again with the final page when the work names it."""
        base = self.hook.client_config.url  # no request: the link never costs a login
        if label:
            push_link(context, session_url(base, project, label))
        elif prearchive_uri:
            push_link(context, prearchive_url(base, prearchive_uri))

    def push_prearchive_link(self, context: Any, project: str) -> None:
        """Point the task's "XNAT session" button at the project's prearchive (its sessions are not known yet)."""
        push_link(context, project_prearchive_url(self.hook.client_config.url, project))


