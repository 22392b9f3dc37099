"""An alias token for downstream work that needs its own XNAT access (a container task, a script).

``XnatIssueTokenOperator`` (a setup task) issues a token with the connection's credentials; the work task
reads it with :func:`token_from_xcom`; ``XnatInvalidateTokenOperator`` (the teardown) invalidates it however
the work ended. The secret never reaches a log (it is masked) and is never stored in clear: the XCom holds it
encrypted with Airflow's Fernet key (``[core] fernet_key``), the same protection connection passwords get.

    token = XnatIssueTokenOperator(task_id="token")
    work = my_container_task(token=token.output)           # calls token_from_xcom(token)
    done = XnatInvalidateTokenOperator(task_id="revoke", token=token.output)
    token >> work >> done.as_teardown(setups=token)

Whose token: XNAT lets a login that is not a site administrator's work only on its own tokens. Issuing for another
``user``, and validating or invalidating another user's token, is refused with 403 before XNAT even looks at the
token ("Non-admin users can only request operations on alias tokens for their own account"); the client raises
:class:`~xnat_provider.client.errors.XnatPermissionError` saying so (a validation never comes back as "invalid").
Give these tasks the token owner's connection, or a site administrator's. The default, a token for the
connection's own user issued and invalidated over the same connection, always qualifies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..client.errors import XnatBadInputError
from ..client.models import AliasToken
from .base import XnatBaseOperator, logs_out, structured


def _fernet() -> Any:
    from airflow.sdk import conf
    from cryptography.fernet import Fernet, MultiFernet

    keys = [k.strip() for k in (conf.get("core", "fernet_key", fallback="") or "").split(",") if k.strip()]
    if not keys:
        raise XnatBadInputError("Airflow has no [core] fernet_key, so a token secret cannot be stored safely. "
                                "Set AIRFLOW__CORE__FERNET_KEY (see Airflow's security docs).")
    return MultiFernet([Fernet(k.encode()) for k in keys])


def token_from_xcom(value: dict[str, Any]) -> AliasToken:
    """The :class:`AliasToken` behind an ``XnatIssueTokenOperator`` XCom (its secret masked in logs)."""
    from airflow.sdk.log import mask_secret
    from cryptography.fernet import InvalidToken

    try:
        secret = _fernet().decrypt(value["secret_encrypted"].encode()).decode()
    except InvalidToken as exc:
        raise XnatBadInputError(f"The secret of token {value.get('alias')!r} cannot be decrypted with this "
                                "Airflow's [core] fernet_key (was it issued with another key?).") from exc
    mask_secret(secret)
    return AliasToken(alias=value["alias"], secret=secret, user=value["user"])


class XnatIssueTokenOperator(XnatBaseOperator):
    """Issue an alias token (for ``user``, site administrators only, or the connection's user).

    Returns alias, user, expiry and the Fernet-encrypted secret; never the secret in clear. A ``user`` other than
    the connection's own on a connection that is not a site administrator's fails with ``XnatPermissionError``
    (XNAT's 403), and so would the teardown that invalidates the token: give both an administrator's connection.

    :param user: the XNAT user the token is for (default: the connection's own user).
    """

    template_fields: Sequence[str] = ("user", "xnat_conn_id")

    def __init__(self, *, user: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.user = user

    @logs_out
    def execute(self, context: Any) -> dict[str, Any]:
        fernet = _fernet()  # fail before a token exists if it could not be kept safe
        token = self.hook.issue_token(self.user)
        self.log.info("Issued XNAT alias token %s for %s, valid until %s", token.alias, token.user, token.expires)
        return {"alias": token.alias, "user": token.user,
                "expires": token.expires.isoformat() if token.expires else None,
                "secret_encrypted": fernet.encrypt(token.secret.encode()).decode()}


class XnatInvalidateTokenOperator(XnatBaseOperator):
    """Invalidate the token an ``XnatIssueTokenOperator`` issued (use it as that task's teardown).

    A token already gone (invalidated, or expired and swept by XNAT) is fine. Another user's token on a connection
    that is not a site administrator's fails with ``XnatPermissionError`` (XNAT's 403) and stays valid: use the
    connection that issued it (the owner's or an administrator's).

    :param token: the issuing task's XCom (``XnatIssueTokenOperator(...).output``: a dict with ``alias``, or its
        JSON text as a template renders it), or the token's alias.
    """

    template_fields: Sequence[str] = ("token", "xnat_conn_id")

    def __init__(self, *, token: dict[str, Any] | str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.token = token

    @logs_out
    def execute(self, context: Any) -> None:
        token = structured(self.token)
        alias = token.get("alias") if isinstance(token, dict) else str(token or "")
        if not alias:
            raise XnatBadInputError(f"No token alias in {type(self.token).__name__} given to invalidate.")
        self.hook.invalidate_token(alias)
        self.log.info("Invalidated XNAT alias token %s", alias)
