"""Authentication, HTTP sessions, lock-out and alias tokens, as a client of a real XNAT sees them."""

from __future__ import annotations

import re
import uuid

import requests

from xnat_provider.client.protocol import xnat_message
from xnat_provider.testing import XnatEmulator
from xnat_provider.testing.clock import ManualClock


def test_unauthenticated_data_path_gets_401_with_basic_challenge(emulator: XnatEmulator) -> None:
    r = requests.get(emulator.url + "/data/projects?format=json")
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == 'Basic realm="XNAT"'
    assert "<h3>" in r.text  # an error page, not data


def test_basic_auth_sets_jsessionid_and_quoted_expiration_cookie(emulator: XnatEmulator) -> None:
    r = requests.get(emulator.url + "/data/projects?format=json", auth=("admin", "admin"))
    assert r.status_code == 200
    assert re.fullmatch(r"[0-9A-F]{32}", r.cookies["JSESSIONID"])
    raw = [h for h in r.raw.headers.getlist("Set-Cookie") if h.startswith("SESSION_EXPIRATION_TIME")]
    assert raw and re.match(r'SESSION_EXPIRATION_TIME="\d{13},900000"; Path=/', raw[0])
    assert "Path=/" in next(h for h in r.raw.headers.getlist("Set-Cookie") if h.startswith("JSESSIONID"))


def test_cookie_alone_authenticates_after_login(emulator: XnatEmulator) -> None:
    login = requests.put(emulator.url + "/data/services/auth", data={"username": "admin", "password": "admin"})
    assert login.status_code == 200
    sid = login.text
    assert re.fullmatch(r"[0-9A-F]{32}", sid)
    assert login.cookies["JSESSIONID"] == sid
    r = requests.get(emulator.url + "/data/auth", cookies={"JSESSIONID": sid})
    assert r.status_code == 200 and r.text == "User 'admin' is logged in"
    r = requests.get(emulator.url + "/data/JSESSION", cookies={"JSESSIONID": sid})
    assert r.text == sid
    assert requests.delete(emulator.url + "/data/JSESSION", cookies={"JSESSIONID": sid}).status_code == 200
    assert requests.get(emulator.url + "/data/auth", cookies={"JSESSIONID": sid}).status_code == 401


def test_services_auth_rejects_bad_password_and_get(emulator: XnatEmulator) -> None:
    bad = requests.post(emulator.url + "/data/services/auth", data={"username": "admin", "password": "nope"})
    assert bad.status_code == 401
    assert "Login attempt failed" in bad.text
    assert requests.get(emulator.url + "/data/services/auth").status_code == 405
    unknown = requests.post(emulator.url + "/data/services/auth",
                            data={"username": "admin", "password": "admin", "provider": "ldap9"})
    assert unknown.status_code == 400


def test_sessions_expire_after_idle_timeout(tmp_path) -> None:
    clock = ManualClock()
    with XnatEmulator(data_dir=tmp_path / "x", session_timeout=900, clock=clock) as emu:
        s = requests.Session()
        assert s.get(emu.url + "/data/JSESSION", auth=("admin", "admin")).status_code == 200
        clock.advance(899)
        assert s.get(emu.url + "/data/auth").status_code == 200  # cookie only, still within the timeout
        clock.advance(900.5)
        r = s.get(emu.url + "/data/auth")
        assert r.status_code == 401
        raw = [h for h in r.raw.headers.getlist("Set-Cookie") if h.startswith("SESSION_EXPIRATION_TIME")]
        assert raw == []  # no session, no expiration cookie


def test_requests_refresh_the_idle_timer(tmp_path) -> None:
    clock = ManualClock()
    with XnatEmulator(data_dir=tmp_path / "x", session_timeout=900, clock=clock) as emu:
        s = requests.Session()
        s.get(emu.url + "/data/JSESSION", auth=("admin", "admin"))
        for _ in range(4):  # 2400 s in all, never 900 s idle
            clock.advance(600)
            assert s.get(emu.url + "/data/auth").status_code == 200
        clock.advance(901)
        assert s.get(emu.url + "/data/auth").status_code == 401


def test_account_locks_after_too_many_failed_logins(tmp_path) -> None:
    with XnatEmulator(data_dir=tmp_path / "x", max_failed_logins=3, lockout_seconds=60) as emu:
        for _ in range(3):
            assert requests.get(emu.url + "/data/auth", auth=("admin", "wrong")).status_code == 401
        r = requests.get(emu.url + "/data/auth", auth=("admin", "admin"))
        assert r.status_code == 401
        assert "locked" in r.text


def test_successful_login_resets_the_failure_count(tmp_path) -> None:
    with XnatEmulator(data_dir=tmp_path / "x", max_failed_logins=3) as emu:
        for _ in range(5):
            requests.get(emu.url + "/data/auth", auth=("admin", "wrong"))
            requests.get(emu.url + "/data/auth", auth=("admin", "wrong"))
            assert requests.get(emu.url + "/data/auth", auth=("admin", "admin")).status_code == 200


def test_version_endpoints(http, emulator: XnatEmulator) -> None:
    assert http.get(emulator.url + "/data/version").status_code == 404
    info = http.get(emulator.url + "/xapi/siteConfig/buildInfo?format=json").json()
    assert info["version"].startswith("1.8")
    assert all(isinstance(v, str) for v in info.values())


def test_path_aliases_reach_the_same_resources(http, emulator: XnatEmulator) -> None:
    for prefix in ("/data", "/REST", "/data/archive"):
        r = http.get(emulator.url + prefix + "/projects?format=json")
        assert r.status_code == 200, prefix
        assert [p["ID"] for p in r.json()["ResultSet"]["Result"]] == ["P1", "P2"]


def test_browser_user_agent_is_not_needed_and_site_root_sets_cookie_for_basic_auth(emulator: XnatEmulator) -> None:
    r = requests.get(emulator.url + "/", auth=("admin", "admin"))
    assert r.status_code == 200
    assert "JSESSIONID" in r.cookies


def test_token_issue_validate_login_invalidate(http, emulator: XnatEmulator) -> None:
    tok = http.get(emulator.url + "/data/services/tokens/issue").json()
    assert re.fullmatch(r"[0-9a-f-]{36}", tok["alias"])
    assert re.fullmatch(r"[A-Za-z0-9]{64}", tok["secret"])
    assert tok["xdatUserId"] == "admin"
    two_days_ms = 2 * 24 * 3600 * 1000
    assert abs(tok["estimatedExpirationTime"] - tok["created"] - two_days_ms) < 5000

    valid = http.get(f"{emulator.url}/data/services/tokens/validate/{tok['alias']}/{tok['secret']}").json()
    assert valid == {"valid": "admin"}
    assert http.get(f"{emulator.url}/data/services/tokens/validate/{tok['alias']}/wrong").json() == {}

    # The token logs in like a user, by basic auth and by the auth service.
    r = requests.get(emulator.url + "/data/auth", auth=(tok["alias"], tok["secret"]))
    assert r.status_code == 200 and r.text == "User 'admin' is logged in"
    r = requests.post(emulator.url + "/data/services/auth", data={"username": tok["alias"], "password": tok["secret"]})
    assert r.status_code == 200

    shown = http.get(emulator.url + "/data/services/tokens/show").json()
    assert tok["alias"] in [t["alias"] for t in shown]

    assert http.get(f"{emulator.url}/data/services/tokens/invalidate/{tok['alias']}").json() == {"result": "OK"}
    assert requests.get(emulator.url + "/data/auth", auth=(tok["alias"], tok["secret"])).status_code == 401
    assert http.get(f"{emulator.url}/data/services/tokens/invalidate/{tok['alias']}").status_code == 404


def test_token_for_another_user_is_admin_only(http, emulator: XnatEmulator) -> None:
    tok = http.get(emulator.url + "/data/services/tokens/issue/user/alice").json()
    assert tok["xdatUserId"] == "alice"
    r = requests.get(emulator.url + "/data/auth", auth=(tok["alias"], tok["secret"]))
    assert r.text == "User 'alice' is logged in"
    as_alice = requests.get(emulator.url + "/data/services/tokens/issue/user/admin", auth=("alice", "alice-pw"))
    assert as_alice.status_code == 403
    assert xnat_message(as_alice.text) == NOT_OWN
    # AliasTokenRestlet, in order: the token named in the path (404), then the caller (403), then the operation.
    nobody = http.get(emulator.url + "/data/services/tokens/issue/user/nobody")
    assert (nobody.status_code, xnat_message(nobody.text)) == (400, "An error occurred retrieving the user: nobody")
    not_alias = http.get(emulator.url + "/data/services/tokens/validate/x")
    assert (not_alias.status_code, xnat_message(not_alias.text)) == (404, "Can't find an alias token with the ID x")
    no_token = http.get(emulator.url + "/data/services/tokens/validate")
    assert (no_token.status_code, xnat_message(no_token.text)) == (
        401, "You must specify both token and secret to validate a token.")
    unknown = http.get(emulator.url + "/data/services/tokens/frobnicate")
    assert (unknown.status_code, xnat_message(unknown.text)) == (400, "Unknown operation: frobnicate")


NOT_OWN = "Non-admin users can only request operations on alias tokens for their own account"


def test_a_non_admin_is_refused_another_users_token_before_the_operation(http, emulator: XnatEmulator) -> None:
    """AliasTokenRestlet's constructor (l.95-97): a caller who is not a site administrator gets 403 for a token
    of another user, whatever the operation: validate gives no answer about the token, invalidate keeps it."""
    tok = http.get(emulator.url + "/data/services/tokens/issue").json()  # admin's token
    alice = ("alice", "alice-pw")
    for op in (f"validate/{tok['alias']}/{tok['secret']}", f"validate/{tok['alias']}/wrong",
               f"invalidate/{tok['alias']}", f"invalidate/{tok['id']}", f"show/{tok['alias']}", "show/user/admin"):
        r = requests.get(f"{emulator.url}/data/services/tokens/{op}", auth=alice)
        assert (r.status_code, xnat_message(r.text)) == (403, NOT_OWN), op
    # The token is untouched, and its owner and the site administrator still validate it.
    assert http.get(f"{emulator.url}/data/services/tokens/validate/{tok['alias']}/{tok['secret']}").json() == {
        "valid": "admin"}
    # An unknown alias is 404 for anyone: the token is looked up before the caller is checked.
    missing = requests.get(f"{emulator.url}/data/services/tokens/validate/{uuid.uuid4()}/secret", auth=alice)
    assert missing.status_code == 404 and xnat_message(missing.text).startswith("Can't find an alias token")
    # Alice's own token, by alias or by ID: hers to validate and invalidate.
    own = requests.get(emulator.url + "/data/services/tokens/issue", auth=alice).json()
    assert requests.get(f"{emulator.url}/data/services/tokens/validate/{own['alias']}/{own['secret']}",
                        auth=alice).json() == {"valid": "alice"}
    assert requests.get(f"{emulator.url}/data/services/tokens/invalidate/{own['id']}", auth=alice).json() == {
        "result": "OK"}
    # An administrator may work on anyone's token.
    assert http.get(f"{emulator.url}/data/services/tokens/invalidate/{tok['alias']}").json() == {"result": "OK"}


def test_the_guest_user_cannot_touch_tokens(tmp_path) -> None:
    with XnatEmulator(data_dir=tmp_path / "x", require_login=False) as emu:
        tok = requests.get(emu.url + "/data/services/tokens/issue", auth=("admin", "admin")).json()
        for op in ("issue", f"validate/{tok['alias']}/{tok['secret']}", "show"):
            r = requests.get(f"{emu.url}/data/services/tokens/{op}")
            assert (r.status_code, xnat_message(r.text)) == (403, "The guest user can't request alias tokens"), op


def test_tokens_expire(tmp_path) -> None:
    clock = ManualClock()
    with XnatEmulator(data_dir=tmp_path / "x", token_lifetime=2 * 24 * 3600, clock=clock) as emu:
        tok = requests.get(emu.url + "/data/services/tokens/issue", auth=("admin", "admin")).json()
        clock.advance(2 * 24 * 3600 - 1)
        assert requests.get(emu.url + "/data/auth", auth=(tok["alias"], tok["secret"])).status_code == 200
        clock.advance(2)
        assert requests.get(emu.url + "/data/auth", auth=(tok["alias"], tok["secret"])).status_code == 401
        # XNAT's hourly sweep deletes expired tokens; the emulator sweeps at once: the alias is unknown now.
        gone = requests.get(f"{emu.url}/data/services/tokens/validate/{tok['alias']}/{tok['secret']}",
                            auth=("admin", "admin"))
        assert gone.status_code == 404
