"""Alias tokens of another user: XNAT refuses a non-admin login with 403 before it looks at the operation
(AliasTokenRestlet l.95-97), and the client says so; a refusal is never reported as "invalid token"."""

from __future__ import annotations

import pytest

from xnat_provider.client import XnatClient, XnatPermissionError
from xnat_provider.testing import XnatEmulator

NOT_OWN = "Non-admin users can only request operations on alias tokens for their own account"


@pytest.fixture
def emu(tmp_path):
    with XnatEmulator(data_dir=tmp_path / "x", users={"admin": "admin", "alice": "alice-Pw1", "bob": "bob-Pw2"},
                      projects=["P1"]) as e:
        yield e


def test_a_non_admin_validating_another_users_token_gets_a_permission_error_not_none(emu) -> None:
    with XnatClient(emu.url, "alice", "alice-Pw1", backoff=0.01) as alice, \
            XnatClient(emu.url, "bob", "bob-Pw2", backoff=0.01) as bob:
        token = alice.issue_token()
        with pytest.raises(XnatPermissionError) as info:
            bob.validate_token(token)
        message = str(info.value)
        assert info.value.status == 403 and info.value.xnat_message == NOT_OWN
        assert f"token {token.alias} belongs to another user" in message
        assert "validate it with the token owner's login or a site administrator's" in message
        assert token.secret not in message
        # The owner and a site administrator get the answer; the token was not touched by the refusal.
        assert alice.validate_token(token) == "alice"
        with XnatClient(emu.url, "admin", "admin", backoff=0.01) as admin:
            assert admin.validate_token(token) == "alice"
        # A wrong secret is "invalid" (None), for the owner; for another non-admin user it is still a refusal.
        assert alice.validate_token(token.alias, "wrong-secret") is None
        with pytest.raises(XnatPermissionError):
            bob.validate_token(token.alias, "wrong-secret")


def test_a_non_admin_cannot_invalidate_or_issue_for_another_user(emu) -> None:
    with XnatClient(emu.url, "alice", "alice-Pw1", backoff=0.01) as alice, \
            XnatClient(emu.url, "bob", "bob-Pw2", backoff=0.01) as bob:
        token = alice.issue_token()
        with pytest.raises(XnatPermissionError) as info:
            bob.invalidate_token(token)
        assert "it was not invalidated" in str(info.value)
        assert alice.validate_token(token) == "alice"  # still valid
        with pytest.raises(XnatPermissionError) as info:
            bob.issue_token(user="alice")
        assert "issue the token with 'alice''s own login or a site administrator's" in str(info.value)
        alice.invalidate_token(token)  # the owner may
        assert alice.validate_token(token) is None
        bob.invalidate_token(token)  # gone: nothing to refuse, nothing to do
