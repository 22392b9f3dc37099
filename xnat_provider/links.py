"""``XnatSessionLink``: a button on the task instance that opens the session the task worked on in XNAT."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperatorLink
from airflow.sdk.execution_time.xcom import XCom

XCOM_KEY = "xnat_session_url"


class XnatSessionLink(BaseOperatorLink):
    name = "XNAT session"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        url = XCom.get_value(key=XCOM_KEY, ti_key=ti_key)
        return str(url) if url else ""
