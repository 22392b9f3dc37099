"""``XnatSetFieldsOperator`` and the alias-token pair (``XnatIssueTokenOperator``, ``token_from_xcom``,
``XnatInvalidateTokenOperator``) called directly, and ``xnat_retry_policy()`` on every typed error."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any

import pytest
import requests
import xnat
from airflow.sdk import RetryAction

from tests.airflow_helpers import context
from tests.operators.conftest import Server
from xnat_provider.client.errors import (
    XnatAuthError,
    XnatBadInputError,
    XnatConflictError,
    XnatError,
    XnatNotFoundError,
    XnatPermissionError,
    XnatServerError,
    XnatTransferError,
)
from xnat_provider.client.protocol import fields_from_item
from xnat_provider.links import XCOM_KEY
from xnat_provider.operators.fields import XnatSetFieldsOperator
from xnat_provider.operators.tokens import XnatInvalidateTokenOperator, XnatIssueTokenOperator, token_from_xcom
from xnat_provider.retry import xnat_retry_policy


def stored_fields(server: Server, path: str) -> dict[str, str]:
    item = server.http.get(f"{server.url}{path}", params={"format": "json"}).json()["items"][0]
    return fields_from_item(item)


# ---- fields ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("target", "path"), [
    ({}, "/data/projects/P1"),
    ({"subject": "S01"}, "/data/projects/P1/subjects/S01"),
    ({"experiment": "S01_MR1"}, "/data/projects/P1/experiments/S01_MR1"),
])
def test_set_fields_on_each_target(xnat_conn, server: Server, archived, target, path) -> None:
    ctx = context()
    op = XnatSetFieldsOperator(task_id="fields", project="P1", fields={"Pipeline": "qc", "score": 3}, **target)
    assert op.execute(ctx) == {"pipeline": "qc", "score": "3"}
    assert {k.lower(): v for k, v in stored_fields(server, path).items()} == {"pipeline": "qc", "score": "3"}
    assert (XCOM_KEY in ctx["ti"].pushed) == ("experiment" in target)


def test_fields_are_updated_and_seen_by_xnatpy(xnat_conn, server: Server, archived) -> None:
    XnatSetFieldsOperator(task_id="f", project="P1", experiment=archived, fields={"stage": "one"}).execute(context())
    XnatSetFieldsOperator(task_id="f", project="P1", experiment=archived, fields={"stage": "two", "qc": "pass"}
                          ).execute(context())
    with xnat.connect(xnat_conn.url, user="admin", password="admin", loglevel="ERROR") as session:
        exp = session.projects["P1"].experiments[archived]
        assert dict(exp.fields) == {"stage": "two", "qc": "pass"}


def test_the_fields_mapping_is_templated(xnat_conn, server: Server, archived) -> None:
    op = XnatSetFieldsOperator(task_id="f", project="{{ params.project }}", experiment="{{ params.experiment }}",
                               fields={"run": "{{ run_id }}", "who": "{{ params.who | upper }}"})
    assert op.template_fields_renderers["fields"] == "json" and "fields" in op.template_fields
    ctx = {**context(), "params": {"project": "P1", "experiment": archived, "who": "alice"}, "run_id": "manual__1"}
    op.render_template_fields(ctx)
    assert op.execute(ctx) == {"run": "manual__1", "who": "ALICE"}
    assert stored_fields(server, f"/data/projects/P1/experiments/{archived}") == {"run": "manual__1",
                                                                                  "who": "ALICE"}


def test_fields_rendered_as_json_text(xnat_conn, server: Server, archived) -> None:
    """``fields="{{ params.fields | tojson }}"`` renders to text: it is read as the mapping it stands for."""
    op = XnatSetFieldsOperator(task_id="f", project="P1", experiment=archived, fields='{"qc": "pass", "n": 2}')
    assert op.execute(context()) == {"qc": "pass", "n": "2"}
    assert stored_fields(server, f"/data/projects/P1/experiments/{archived}") == {"qc": "pass", "n": "2"}


@pytest.mark.parametrize("fields", [{}, "a=b", "[1, 2]", {"bad name": "x"}, {"empty": None}])
def test_set_fields_bad_input(xnat_conn, server: Server, archived, fields) -> None:
    puts = xnat_conn.request_count("PUT")
    with pytest.raises(XnatBadInputError):
        XnatSetFieldsOperator(task_id="f", project="P1", experiment=archived, fields=fields).execute(context())
    assert xnat_conn.request_count("PUT") == puts
    assert stored_fields(server, f"/data/projects/P1/experiments/{archived}") == {}


def test_set_fields_on_a_missing_session(xnat_conn, archived) -> None:
    with pytest.raises(XnatNotFoundError):
        XnatSetFieldsOperator(task_id="f", project="P1", experiment="NOPE", fields={"a": "b"}).execute(context())


def test_a_write_that_xnat_acknowledged_but_did_not_store_fails(xnat_conn, server: Server, archived,
                                                                monkeypatch) -> None:
    """XNAT can answer 200 to a field PUT and store nothing: the read-back catches it."""
    original = requests.Session.request

    def swallow_puts(self, method, url, *args, **kwargs):
        if method.upper() == "PUT" and "/experiments/" in url:
            resp = requests.Response()
            resp.status_code, resp._content, resp.url = 200, b"", url
            resp.headers["Content-Type"] = "text/plain"
            return resp
        return original(self, method, url, *args, **kwargs)

    monkeypatch.setattr(requests.Session, "request", swallow_puts)
    with pytest.raises(XnatServerError, match="did not store"):
        XnatSetFieldsOperator(task_id="f", project="P1", experiment=archived, fields={"a": "b"}).execute(context())
    monkeypatch.undo()
    assert stored_fields(server, f"/data/projects/P1/experiments/{archived}") == {}


# ---- alias tokens ----------------------------------------------------------------------------------------
def token_login(url: str, alias: str, secret: str) -> int:
    return requests.get(f"{url}/data/auth", auth=(alias, secret)).status_code


def test_token_setup_and_teardown(xnat_conn, server: Server, caplog, capsys) -> None:
    emu = xnat_conn
    caplog.set_level(logging.DEBUG)
    value = XnatIssueTokenOperator(task_id="token").execute(context())
    assert set(value) == {"alias", "user", "expires", "secret_encrypted"} and value["user"] == "admin"
    token = token_from_xcom(value)
    assert len(token.secret) >= 32 and token.alias == value["alias"]
    # No clear secret in the XCom, nor in any log line.
    assert token.secret not in json.dumps(value)
    captured = capsys.readouterr()
    assert token.secret not in caplog.text + captured.out + captured.err
    # The token works...
    assert token_login(emu.url, token.alias, token.secret) == 200
    valid = server.http.get(f"{emu.url}/data/services/tokens/validate/{token.alias}/{token.secret}").json()
    assert valid["valid"] == "admin"
    # ...until the teardown runs.
    XnatInvalidateTokenOperator(task_id="revoke", token=value).execute(context())
    assert token_login(emu.url, token.alias, token.secret) == 401
    # A second teardown (a retry) is fine: the token is gone either way.
    XnatInvalidateTokenOperator(task_id="revoke", token=value["alias"]).execute(context())


def test_the_teardown_reads_a_token_rendered_as_text(xnat_conn) -> None:
    """``token="{{ ti.xcom_pull('token') }}"`` renders the XCom as text: the teardown must still find the alias
    (a teardown that silently revoked nothing would leave the token valid)."""
    value = XnatIssueTokenOperator(task_id="token").execute(context())
    token = token_from_xcom(value)
    XnatInvalidateTokenOperator(task_id="revoke", token=str(value)).execute(context())
    assert token_login(xnat_conn.url, token.alias, token.secret) == 401
    with pytest.raises(XnatBadInputError):
        XnatInvalidateTokenOperator(task_id="revoke", token={}).execute(context())


def test_token_for_another_user(xnat_conn) -> None:
    value = XnatIssueTokenOperator(task_id="token", user="alice").execute(context())
    token = token_from_xcom(value)
    assert value["user"] == "alice" == token.user
    assert requests.get(f"{xnat_conn.url}/data/auth", auth=(token.alias, token.secret)).text.startswith("User 'alice'")


def test_no_token_without_a_fernet_key(xnat_conn, monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW__CORE__FERNET_KEY", "")
    with pytest.raises(XnatBadInputError, match="fernet_key"):
        XnatIssueTokenOperator(task_id="token").execute(context())
    assert xnat_conn.request_count(None, r"/data/services/tokens/issue") == 0


def test_a_token_xcom_from_another_key_is_refused(xnat_conn, monkeypatch) -> None:
    value = XnatIssueTokenOperator(task_id="token").execute(context())
    monkeypatch.setenv("AIRFLOW__CORE__FERNET_KEY", "0" * 43 + "=")
    with pytest.raises(XnatBadInputError, match="fernet_key"):
        token_from_xcom(value)


# ---- the retry policy ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("error", "action"), [
    (XnatAuthError("401"), RetryAction.FAIL),
    (XnatPermissionError("403"), RetryAction.FAIL),
    (XnatNotFoundError("404"), RetryAction.FAIL),
    (XnatConflictError("409"), RetryAction.FAIL),
    (XnatBadInputError("bad label"), RetryAction.FAIL),
    (XnatServerError("504", status=504), RetryAction.RETRY),
    (XnatTransferError("short"), RetryAction.RETRY),
    (XnatError("anything else"), RetryAction.DEFAULT),
    (ValueError("not ours"), RetryAction.DEFAULT),
])
def test_retry_policy(error: Exception, action: RetryAction) -> None:
    decision = xnat_retry_policy().evaluate(error, try_number=1, max_tries=3)
    assert decision.action == action
    if action is RetryAction.RETRY:
        assert xnat_retry_policy(timedelta(seconds=7)).evaluate(error, 1, 3).retry_delay == timedelta(seconds=7)


def test_retry_policy_serialises(xnat_conn: Any) -> None:
    from airflow.sdk import ExceptionRetryPolicy

    policy = xnat_retry_policy(timedelta(seconds=30))
    again = ExceptionRetryPolicy.deserialize(json.loads(json.dumps(policy.serialize())))
    assert again.evaluate(XnatAuthError("x"), 1, 3).action == RetryAction.FAIL
    assert again.evaluate(XnatServerError("x"), 1, 3).retry_delay == timedelta(seconds=30)
