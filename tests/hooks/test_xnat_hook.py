"""The ``xnat`` connection type: registration, connection forms, the connection test, masking, tokens."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import airflow
import jsonschema
import pytest

from tests.airflow_helpers import context
from xnat_provider.client import XnatBadInputError
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
                  "backoff": 0.5, "workers": 8, "settle_seconds": "12", "progress_interval": "2.5",
                  "direct_io": "off"}}))
    cfg = XnatHook("xnat_x").client_config
    assert cfg.direct_io is False
    assert cfg.verify == str(ca) and cfg.connect_timeout == 3.0 and cfg.read_timeout == 30.0
    assert cfg.backoff == 0.5 and cfg.workers == 8 and cfg.settle_seconds == 12.0 and cfg.progress_interval == 2.5
    monkeypatch.setenv("AIRFLOW_CONN_XNAT_Y", json.dumps({
        "conn_type": "xnat", "host": "https://xnat.example.org", "extra": {"verify_ssl": "false"}}))
    assert XnatHook("xnat_y").client_config.verify is False
    monkeypatch.setenv("AIRFLOW_CONN_XNAT_Z", json.dumps({
        "conn_type": "xnat", "host": "https://xnat.example.org", "extra": {"retries": "many"}}))
    with pytest.raises(XnatBadInputError, match="'retries' must be a whole number"):
        _ = XnatHook("xnat_z").client_config
    monkeypatch.setenv("AIRFLOW_CONN_XNAT_EMPTY", json.dumps({"conn_type": "xnat"}))
    ok, message = XnatHook("xnat_empty").test_connection()
    assert not ok and "has no host" in message


@pytest.mark.parametrize(("interval", "progress_lines"), [(0, True), (3600, False)])
def test_the_progress_interval_extra_sets_how_often_a_transfer_logs(monkeypatch, emulator, tmp_path, caplog,
                                                                    interval, progress_lines) -> None:
    """What the task log shows of a long download: a line at every tenth with ``progress_interval`` 0; with an
    interval longer than the download (an hour), no progress line and, for one file, no summary either."""
    caplog.set_level(logging.INFO, logger="xnat_provider.client")
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(4 * 1024 * 1024))
    with _conn(monkeypatch, "xnat_progress", emulator.url, progress_interval=interval).get_conn() as xnat:
        xnat.upload(source, "/data/projects/P1", "R")
        remote = next(f for f in xnat.list_files("/data/projects/P1/resources/R") if f.path == "big.bin")
        caplog.clear()
        xnat.download_file(remote, tmp_path / "copy.bin")
    assert (tmp_path / "copy.bin").read_bytes() == source.read_bytes()
    shown = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"Download of {tmp_path}")]
    if progress_lines:
        assert len(shown) >= 3 and " done: 4.2 MB of 4.2 MB (100 %)" in shown[-1]
    else:
        assert shown == []


def test_secrets_are_handed_to_airflow_masking(conn_env, monkeypatch) -> None:
    masked: list[str] = []
    monkeypatch.setattr(hook_module, "mask_secret", masked.append)
    hook = XnatHook()
    hook.get_conn().list_projects()
    token = hook.issue_token()
    assert "admin" in masked  # the password
    assert hook.get_conn().transport.session_id in masked
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
    sid = client.transport.session_id
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


# ---- TLS fails closed; connection mistakes are XnatBadInputError before any request ----------------------
def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that no CA signed (what a lab's test server often has), and its key."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def tls_xnat(emulator: XnatEmulator, tmp_path: Path, monkeypatch):
    """The emulator also served over HTTPS with a self-signed certificate: ``(https_url, cert_path)``.

    ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` point at the system's bundle, as in many images: requests would let
    them override a session's ``verify`` (False or a CA path); the connection's setting must win."""
    import ssl

    import certifi

    from xnat_provider.testing.server import make_server, serve_in_thread

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    monkeypatch.setenv("CURL_CA_BUNDLE", certifi.where())
    cert, key = _self_signed(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server = make_server(emulator, "127.0.0.1", 0)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = serve_in_thread(server)
    yield f"https://127.0.0.1:{server.server_address[1]}", cert
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _conn(monkeypatch, conn_id: str, host: str, **extra) -> XnatHook:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({
        "conn_type": "xnat", "host": host, "login": "admin", "password": "admin",
        "extra": {"retries": 1, "connect_timeout": 5, **extra}}))
    return XnatHook(conn_id)


@pytest.mark.parametrize("value", [None, "", " "])
def test_an_unset_verify_ssl_keeps_certificate_checks_on(monkeypatch, tls_xnat, emulator, value) -> None:
    """null and "" used to turn verification off: the self-signed server was trusted and sent the password."""
    url, _cert = tls_xnat
    hook = _conn(monkeypatch, "xnat_tls", url, verify_ssl=value)
    assert hook.client_config.verify is True
    ok, message = hook.test_connection()
    assert not ok and "XnatServerError" in message
    assert emulator.request_count("POST", r"/data/services/auth") == 0  # no credentials went anywhere


@pytest.mark.parametrize("value", [False, 0, "false", "FALSE", " False ", "0", "no", "NO", "off"])
def test_only_an_explicit_false_turns_certificate_checks_off(monkeypatch, tls_xnat, value) -> None:
    url, _cert = tls_xnat
    hook = _conn(monkeypatch, "xnat_tls", url, verify_ssl=value)
    assert hook.client_config.verify is False
    assert hook.test_connection() == (True, "XNAT 1.8.10 as admin")


@pytest.mark.parametrize("value", [True, 1, "true", "Yes", "on", "1"])
def test_verify_with_the_lab_ca(monkeypatch, tls_xnat, value) -> None:
    url, cert = tls_xnat
    hook = _conn(monkeypatch, "xnat_tls", url, verify_ssl=value, ca_bundle=str(cert))
    assert hook.client_config.verify == str(cert)
    assert hook.test_connection() == (True, "XNAT 1.8.10 as admin")


@pytest.mark.parametrize(("extra", "host", "match"), [
    ({"verify_ssl": "maybe"}, None, "extra 'verify_ssl' must be true or false"),
    ({"verify_ssl": "/etc/ssl/lab-ca.pem"}, None, "extra 'verify_ssl'.*ca_bundle"),  # was: verification off
    ({"verify_ssl": 2}, None, "extra 'verify_ssl'"),
    ({"verify_ssl": ["no"]}, None, "extra 'verify_ssl'"),
    ({"ca_bundle": "/no/such/ca.pem"}, None, "extra 'ca_bundle'.*does not exist"),
    ({"retries": "many"}, None, "extra 'retries' must be a whole number"),
    ({"retries": 2.5}, None, "extra 'retries' must be a whole number"),
    ({"retries": 0}, None, "extra 'retries' must be at least 1"),
    ({"retries": True}, None, "extra 'retries' must be a whole number"),
    ({"connect_timeout": "10s"}, None, "extra 'connect_timeout' must be a number"),
    ({"read_timeout": 0}, None, "extra 'read_timeout' must be more than 0"),
    ({"read_timeout": "nan"}, None, "extra 'read_timeout' must be a number"),
    ({"backoff": -1}, None, "extra 'backoff' must be at least 0"),
    ({"workers": "four"}, None, "extra 'workers' must be a whole number"),
    ({"settle_seconds": "inf"}, None, "extra 'settle_seconds' must be a number"),
    ({"progress_interval": -1}, None, "extra 'progress_interval' must be at least 0"),
    ({"progress_interval": "often"}, None, "extra 'progress_interval' must be a number"),
    ({"direct_io": "sometimes"}, None, "extra 'direct_io' must be true or false"),
    ({"direct_io": 2}, None, "extra 'direct_io' must be true or false"),
    ({"protocol": "ftp"}, "xnat.example.org", "extra 'protocol' must be http or https"),
    ({}, "", "has no host"),
    ({}, "ftp://xnat.example.org", "must start with http:// or https://"),
    ({}, "https:///xnat", "has no server name"),
])
def test_connection_mistakes_are_bad_input_before_any_request(monkeypatch, emulator, extra, host, match) -> None:
    """Each used to be a plain XnatError (which a retry policy retries), or worse, silently accepted."""
    from airflow.sdk import RetryAction

    from xnat_provider.operators.fields import XnatSetFieldsOperator
    from xnat_provider.retry import xnat_retry_policy

    hook = _conn(monkeypatch, "xnat_bad", emulator.url if host is None else host, **extra)
    with pytest.raises(XnatBadInputError, match=match) as info:
        hook.get_conn().list_projects()
    assert xnat_retry_policy().evaluate(info.value, 1, 3).action == RetryAction.FAIL
    op = XnatSetFieldsOperator(task_id="f", project="P1", experiment="S", fields={"a": "b"}, xnat_conn_id="xnat_bad")
    with pytest.raises(XnatBadInputError, match=match):
        op.execute(context())
    ok, message = XnatHook("xnat_bad").test_connection()
    assert not ok and message.startswith("XnatBadInputError")
    assert emulator.request_count() == 0  # nothing was sent


def test_extras_that_are_not_a_json_object(monkeypatch, emulator) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_XNAT_J", json.dumps({
        "conn_type": "xnat", "host": emulator.url, "login": "admin", "password": "admin",
        "extra": '{"verify_ssl": false,'}))  # a JSON connection whose extra is broken text
    with pytest.raises(XnatBadInputError, match="extras are not valid JSON"):
        _ = XnatHook("xnat_j").client_config
    monkeypatch.setenv("AIRFLOW_CONN_XNAT_K", json.dumps({
        "conn_type": "xnat", "host": emulator.url, "extra": "[1, 2]"}))
    with pytest.raises(XnatBadInputError, match="must be a JSON object"):
        _ = XnatHook("xnat_k").client_config
    assert emulator.request_count() == 0


def test_a_missing_connection_is_bad_input(emulator) -> None:
    with pytest.raises(XnatBadInputError, match="no Airflow connection 'xnat_nowhere'"):
        XnatHook("xnat_nowhere").get_conn()
