"""The hook's contract: an ``xnat`` connection given as JSON in ``AIRFLOW_CONN_<ID>`` (as the README shows)
reaches the server, and the UI's connection test answers with the server's version and the user."""

from __future__ import annotations

from tests.contract.support import ContractServer, assert_not_leaked
from xnat_provider.client import XnatClient
from xnat_provider.hooks.xnat import XnatHook


def test_connection_test_names_the_version_and_the_user(server: ContractServer, xnat_conn_id: str,
                                                        client: XnatClient) -> None:
    ok, message = XnatHook(xnat_conn_id).test_connection()
    assert_not_leaked(message, server.password, "the connection test's message")
    assert (ok, message) == (True, f"XNAT {client.version()} as {server.user}")


def test_hook_client_is_the_connection_user_on_the_scratch_project(server: ContractServer,
                                                                   xnat_conn_id: str) -> None:
    with XnatHook(xnat_conn_id) as hook:
        xnat = hook.get_conn()
        assert xnat.transport.base_url == server.url
        assert xnat.whoami() == server.user
        assert xnat.project_exists(server.project)
        assert hook.get_conn() is xnat  # one client, one login, for everything the task does
        assert xnat.transport.login_attempts == 1
