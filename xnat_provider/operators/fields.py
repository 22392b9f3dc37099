"""``XnatSetFieldsOperator``: set custom fields on a project, subject or experiment, and prove they stuck."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..client.errors import XnatBadInputError
from .base import XnatBaseOperator, structured


class XnatSetFieldsOperator(XnatBaseOperator):
    """Set custom fields (a templated mapping) on ``project``, or its ``subject``, or its ``session``.

    XNAT can answer 200 and store nothing, so every write is read back; a mismatch fails the task. Returns the
    fields as stored (names in lower case, as XNAT keeps them).
    """

    template_fields: Sequence[str] = ("project", "subject", "session", "fields", "xnat_conn_id")
    template_fields_renderers = {"fields": "json"}

    def __init__(self, *, project: str, fields: dict[str, Any], subject: str | None = None,
                 session: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.project, self.subject, self.session, self.fields = project, subject, session, fields

    def execute(self, context: Any) -> dict[str, str]:
        self.fields = structured(self.fields)
        if not isinstance(self.fields, dict) or not self.fields:
            raise XnatBadInputError(f"fields must be a non-empty mapping, got {self.fields!r}")
        if self.session:
            self.push_session_link(context, self.project, self.session)
        return self.hook.get_conn().set_fields(self.project, self.fields, subject=self.subject,
                                               experiment=self.session)
