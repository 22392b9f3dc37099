"""``XnatSetFieldsOperator``: set custom fields on a project, subject or experiment, and prove they stuck."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..client.errors import XnatBadInputError
from .base import XnatBaseOperator, logs_out, renamed_argument, structured


class XnatSetFieldsOperator(XnatBaseOperator):
    """Set custom fields (a templated mapping) on ``project``, or its ``subject``, or its ``experiment`` (an
    imaging session).

    XNAT can answer 200 and store nothing, so every write is read back; a mismatch fails the task. Returns the
    fields as stored (names in lower case, as XNAT keeps them).

    :param project: the XNAT project (alone: the project's fields).
    :param fields: the fields to set, name to value (a mapping, or its JSON text as a template renders it).
    :param subject: set the fields of this subject instead.
    :param experiment: set the fields of this experiment (by label) instead.
    :param session: deprecated name of ``experiment``.
    """

    template_fields: Sequence[str] = ("project", "subject", "experiment", "fields", "xnat_conn_id")
    template_fields_renderers = {"fields": "json"}

    def __init__(self, *, project: str, fields: dict[str, Any], subject: str | None = None,
                 experiment: str | None = None, session: str | None = None, **kwargs: Any) -> None:
        experiment = renamed_argument(self, "experiment", experiment, "session", session)
        super().__init__(**kwargs)
        self.project, self.subject, self.experiment, self.fields = project, subject, experiment, fields

    @logs_out
    def execute(self, context: Any) -> dict[str, str]:
        self.fields = structured(self.fields)
        if not isinstance(self.fields, dict) or not self.fields:
            raise XnatBadInputError(f"fields must be a non-empty mapping, got {self.fields!r}")
        if self.experiment:
            self.push_experiment_link(context, self.project, self.experiment)
        return self.hook.get_conn().set_fields(self.project, self.fields, subject=self.subject,
                                               experiment=self.experiment)
