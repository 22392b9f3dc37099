"""The ``xnat`` connection type: registration, connection forms, the connection test, masking, tokens."""

from __future__ import annotations

import json
from pathlib import Path

import airflow
import jsonschema
import pytest

from xnat_provider.get_provider_info import get_provider_info
from xnat_provider.hooks import xnat as hook_module
from xnat_provider.hooks.xnat import XnatHook, connection_url
from xnat_provider.testing import XnatEmulator


@pytest.fixture
def conn_env(monkeypatch, emulator: XnatEmulator):
    """Point ``xnat_default`` at the emulator, exactly as the README tells users to."""
    monkeypatch.setenv("AIRFLOW_CONN_XNAT_DEFAULT", json.dumps(
        {"conn_type": "xnat", "host": emulator.url, "login": "admin", "password": "admin"}))
    return emulator


def test_provider_info_is_valid_and_declares_the_connection() -> None:
    info = get_provider_info()
    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    jsonschema.validate(info, schema)
    conn = info["connection-types"][0]
    assert conn["connection-type"] == "xnat" and conn["hook-class-name"] == "xnat_provider.hooks.xnat.XnatHook"
    assert {"verify_ssl", "ca_bundle", "connect_timeout", "read_timeout", "retries"} <= set(conn["conn-fields"])


def test_providers_manager_sees_the_hook() -> None:
    from airflow.providers_manager import ProvidersManager

    pm = ProvidersManager()
    assert "airflow-provider-xnat" in pm.providers
    assert pm.hooks["xnat"].hook_class_name == "xnat_provider.hooks.xnat.XnatHook"
    assert pm.hooks["xnat"].connection_id_attribute_name == "xnat_conn_id"


def test_json_connection_as_documented(conn_env) -> None:
    hook = XnatHook()
    ok, message = hook.test_connection()
    assert ok, message
    assert message == "XNAT 1.8.10 as admin"
    assert hook.get_conn().list_projects() == ["P1", "P2"]
    hook.close()


def test_uri_connection(monkeypatch, emulator) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_XNAT_LAB",
                       f"xnat://alice:alice-pw@{emulator.host}:{emulator.port}/?protocol=http&retries=2")
    hook = XnatHook(xnat_conn_id="xnat_lab")
    assert hook.client_config.url == emulator.url
    assert hook.client_config.retries == 2
    assert hook.test_connection() == (True, "XNAT 1.8.10 as alice")


def test_failed_connection_test_names_the_problem_without_secrets(monkeypatch, emulator) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_XNAT_BAD", json.dumps(
        {"conn_type": "xnat", "host": emulator.url, "login": "admin", "password": "Wrong-Password-9"}))
    ok, message = XnatHook("xnat_bad").test_connection()
    assert not ok
    assert message.startswith("XnatAuthError") and "Login attempt failed" in message
    assert "Wrong-Password-9" not in message
    monkeypatch.setenv("AIRFLOW_CONN_XNAT_DOWN", json.dumps(
        {"conn_type": "xnat", "host": "http://127.0.0.1:9", "login": "a", "password": "b",
         "extra": {"retries": 1, "connect_timeout": 1}}))
    ok, message = XnatHook("xnat_down").test_connection()
    assert not ok and "XnatServerError" in message


@pytest.mark.parametrize(("host", "port", "schema", "protocol", "url"), [
    ("https://xnat.example.org/xnat", None, None, None, "https://xnat.example.org/xnat"),
    ("http://127.0.0.1:8080", None, None, None, "http://127.0.0.1:8080"),
    ("http://xnat.local", 8080, None, None, "http://xnat.local:8080"),
    ("xnat.example.org", 8443, None, None, "https://xnat.example.org:8443"),
    ("xnat.example.org", None, "xnat", "http", "http://xnat.example.org/xnat"),  # URI form: path in schema
    ("xnat.example.org", None, "http", None, "http://xnat.example.org"),
])
def test_connection_url_forms(host, port, schema, protocol, url) -> None:
    assert connection_url(host, port, schema, protocol) == url


def test_extras_map_onto_the_client(monkeypatch, tmp_path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not used")
    monkeypatch.setenv("AIRFLOW_CONN_XNAT_X", json.dumps({
        "conn_type": "xnat", "host": "https://xnat.example.org", "login": "u", "password": "p",
        "extra": {"verify_ssl": True, "ca_bundle": str(ca), "connect_timeout": "3", "read_timeout": 30,
                  "backoff": 0.5, "workers": 8}}))
    cfg = XnatHook("xnat_x").client_config
    assert cfg.verify == str(ca) and cfg.connect_timeout == 3.0 and cfg.read_timeout == 30.0
    assert cfg.backoff == 0.5 and cfg.workers == 8
    monkeypatch.setenv("AIRFLOW_CONN_XNAT_Y", json.dumps({
        "conn_type": "xnat", "host": "https://xnat.example.org", "extra": {"verify_ssl": "false"}}))
    assert XnatHook("xnat_y").client_config.verify is False
    monkeypatch.setenv("AIRFLOW_CONN_XNAT_Z", json.dumps({
        "conn_type": "xnat", "host": "https://xnat.example.org", "extra": {"retries": "many"}}))
    with pytest.raises(Exception, match="'retries' must be a number"):
        _ = XnatHook("xnat_z").client_config
    monkeypatch.setenv("AIRFLOW_CONN_XNAT_EMPTY", json.dumps({"conn_type": "xnat"}))
    ok, message = XnatHook("xnat_empty").test_connection()
    assert not ok and "has no host" in message


def test_secrets_are_handed_to_airflow_masking(conn_env, monkeypatch) -> None:
    masked: list[str] = []
    monkeypatch.setattr(hook_module, "mask_secret", masked.append)
    hook = XnatHook()
    hook.get_conn().list_projects()
    token = hook.issue_token()
    assert "admin" in masked  # the password
    assert hook.get_conn().session.session_id in masked
    assert token.secret in masked
    hook.close()


def test_token_lifecycle_through_the_hook(conn_env) -> None:
    with XnatHook() as hook:
        token = hook.issue_token(user="alice")
        assert hook.validate_token(token) == "alice"
        hook.invalidate_token(token)
        assert hook.validate_token(token) is None


def test_close_logs_out(conn_env) -> None:
    hook = XnatHook()
    client = hook.get_conn()
    client.list_projects()
    sid = client.session.session_id
    hook.close()
    assert sid not in conn_env.auth.sessions


def test_every_module_the_provider_lists_imports() -> None:
    import importlib

    info = get_provider_info()
    for kind in ("hooks", "operators", "sensors", "triggers"):
        for entry in info[kind]:
            for module in entry["python-modules"]:
                importlib.import_module(module)
    for link in info["extra-links"]:
        module, _, name = link.rpartition(".")
        assert hasattr(importlib.import_module(module), name)
