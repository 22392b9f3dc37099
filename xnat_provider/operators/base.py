"""What every XNAT operator shares: the connection argument, the hook and its login's lifecycle, the link
button, small XComs, and the one helper that keeps a renamed argument working."""

from __future__ import annotations

import ast
import json
import sys
from functools import cached_property
from typing import Any
from warnings import warn  # not "import warnings": Airflow rewrites that global in operator modules

from airflow.sdk import BaseOperator

from ..hooks.xnat import XnatHook, logs_out
from ..links import (
    XnatSessionLink,
    experiment_url,
    prearchive_session_url,
    project_prearchive_url,
    push_link,
)

__all__ = ["XnatBaseOperator", "logs_out", "renamed_argument", "structured"]

# Frames of these packages are skipped when a deprecation warning points at the caller's line (the DAG file).
_INTERNAL = ("xnat_provider.", "airflow.sdk.", "airflow.models.", "airflow.serialization.")


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


def _caller_stacklevel() -> int:
    """The ``stacklevel`` of the first frame outside the provider and Airflow's task machinery: the line of the
    DAG (or test) that passed the argument, whatever the depth of ``__init__`` wrappers in between."""
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and str(frame.f_globals.get("__name__", "")).startswith(_INTERNAL):
        frame, level = frame.f_back, level + 1
    return level


def renamed_argument(task: Any, new: str, value: Any, old: str, old_value: Any, *, required: bool = False) -> Any:
    """The value of argument ``new`` of ``task``'s constructor, which may still be given under its deprecated
    name ``old`` (with a ``DeprecationWarning`` naming ``new``). Giving both is a ``TypeError``, and so is giving
    neither when ``required``. None means "not given".

    The old name stays in the constructor's signature (documented as deprecated) so that ``partial()`` and
    ``expand()``, which check argument names against the signature, accept it too; it is not a template field:
    the value lives in the new attribute, which is. Use::

        def __init__(self, *, experiment: str | None = None, session: str | None = None, **kwargs):
            experiment = renamed_argument(self, "experiment", experiment, "session", session, required=True)
    """
    owner = type(task).__name__
    if old_value is None:
        if value is None and required:
            raise TypeError(f"{owner}: missing keyword argument {new!r}")
        return value
    if value is not None:
        raise TypeError(f"{owner}: give {new}= only; {old}= is its deprecated name, and both were given")
    warn(f"{owner}: the argument {old!r} is deprecated, use {new!r} (same value)", DeprecationWarning,
                  stacklevel=_caller_stacklevel())
    return old_value


class XnatBaseOperator(BaseOperator):
    """Base of the XNAT operators: ``xnat_conn_id`` (templated), a cached hook, and the "XNAT session" button.

    **The login's lifecycle is explicit.** ``self.hook`` is created on first use and logs in on its first request;
    each method Airflow calls (``execute``, and ``execute_complete`` for a deferring operator) carries the
    :func:`~xnat_provider.hooks.xnat.logs_out` decorator, which closes that login when the method returns or
    raises (``tests/operators/test_logout.py`` checks every shipped class). Nothing is wrapped behind your back:
    a subclass that does not decorate its ``execute`` keeps its login open until XNAT's idle timeout. A new
    operator::

        from xnat_provider.operators.base import XnatBaseOperator, logs_out

        class XnatCountScansOperator(XnatBaseOperator):
            # its docstring documents each argument with ":param project:" and ":param experiment:"
            template_fields = ("project", "experiment", "xnat_conn_id")

            def __init__(self, *, project: str, experiment: str, **kwargs):
                super().__init__(**kwargs)
                self.project, self.experiment = project, experiment

            @logs_out
            def execute(self, context):
                self.push_experiment_link(context, self.project, self.experiment)  # before the work
                return len(self.hook.get_conn().list_scans(self.project, self.experiment))

    Check arguments before the first request (bad input fails without a login), push the link before the work
    (so a failed task has the button), and return small JSON-safe XComs.

    :param xnat_conn_id: the Airflow connection of type ``xnat`` (default ``xnat_default``).
    """

    operator_extra_links = (XnatSessionLink(),)
    ui_color = "#c9ddf2"

    def __init__(self, *, xnat_conn_id: str = XnatHook.default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.xnat_conn_id = xnat_conn_id

    @cached_property
    def hook(self) -> XnatHook:
        return XnatHook(self.xnat_conn_id)

    # ---- the "XNAT session" button (no request: a link never costs a login) ----------------------------
    def push_experiment_link(self, context: Any, project: str, experiment: str) -> None:
        """Point the button at an archived imaging session (XNAT experiment), by label. Called before the work
        whenever the arguments name it, so a task that fails has the button too."""
        push_link(context, experiment_url(self.hook.client_config.url, project, experiment))

    def push_prearchive_session_link(self, context: Any, uri: str) -> None:
        """Point the button at a prearchive session, by its ``/data/prearchive/projects/...`` URI."""
        push_link(context, prearchive_session_url(self.hook.client_config.url, uri))

    def push_prearchive_link(self, context: Any, project: str) -> None:
        """Point the button at the project's prearchive (its prearchive sessions are not known yet)."""
        push_link(context, project_prearchive_url(self.hook.client_config.url, project))

    def push_session_link(self, context: Any, project: str, label: str | None = None,
                          prearchive_uri: str | None = None) -> None:
        """Deprecated: :meth:`push_experiment_link` or :meth:`push_prearchive_session_link`."""
        warn("push_session_link is deprecated: use push_experiment_link(context, project, experiment) "
                      "or push_prearchive_session_link(context, uri)", DeprecationWarning, stacklevel=2)
        if label:
            self.push_experiment_link(context, project, label)
        elif prearchive_uri:
            self.push_prearchive_session_link(context, prearchive_uri)
