"""The login, session and token resources of XNAT 1.8, and the site's root and build information.

- ``/data/JSESSION`` (GET: the session id, with ``CSRF=true`` a token too; DELETE: log out),
  ``/data/services/auth`` (a form login that answers the session id), ``/data/auth``;
- ``/data/services/tokens/{issue,show,validate,invalidate}/...``, ``AliasTokenRestlet``;
- ``/`` and ``/xapi/siteConfig/buildInfo[/version]``, which clients read at connect.

The accounts themselves (users, HTTP sessions, lock-out, tokens) are :class:`~xnat_provider.testing.auth.Auth`,
reached through :class:`~xnat_provider.testing.registry.Services` like every API module's state.
"""

from __future__ import annotations

import json
import secrets
from typing import TYPE_CHECKING, Any

from . import xnat_routes
from .access import GUEST
from .auth import UUID_RE
from .http import Request, Response, Router, XnatHttpError

if TYPE_CHECKING:
    from .auth import Auth
    from .registry import Services


def register(router: Router, services: Services) -> None:
    _register_login(router, services)
    _register_tokens(router, services)


def _register_login(router: Router, services: Services) -> None:
    """The site root, logging in and out, who is logged in, and the build information."""
    auth, settings = services.auth, services.settings

    def site_root(req: Request) -> Response:
        page = "<html><head><title>XNAT</title></head><body><h1>XNAT emulator</h1></body></html>"
        return Response(body=page.encode(), content_type="text/html")

    def jsession(req: Request) -> Response:
        if req.method == "DELETE":
            auth.end_session(req.session_id)
            resp = Response(body=b"", content_type="text/plain")
            resp.cookies.append("JSESSIONID=; Path=/; Max-Age=0; HttpOnly")
            req.session_id = None
            return resp
        text = req.session_id or ""
        if req.flag("CSRF"):
            text += "; XNAT_CSRF=" + secrets.token_hex(8)
        return Response.text(text)

    def services_auth(req: Request) -> Response:
        user = req.first("username", "j_username")
        password = req.first("password", "j_password", default="")
        provider = req.first("provider", "login_method")
        if provider and provider not in ("localdb", "token"):
            raise XnatHttpError(400, f"Unknown authentication provider: {provider}")
        if not user:
            raise XnatHttpError(401, "Login attempt failed. Please try again.")
        login = auth.check_credentials(user, password or "")
        sid = auth.new_session(login)
        req.user, req.session_id = login, sid
        req.new_session = True
        return Response.text(sid)

    def user_auth(req: Request) -> Response:
        return Response.text(f"User '{req.user}' is logged in")

    def build_info(req: Request) -> Response:
        info = {
            "version": settings.version, "buildNumber": "emulator", "buildDate": "", "sha": "emulator",
            "isDirty": "false", "branch": "emulator", "commit": "emulator", "tag": settings.version,
            "shaFull": "emulator", "timestamp": "0",
        }
        return Response(body=json.dumps(info).encode(), content_type="application/json")

    router.add("GET", r"/", site_root, public=True)
    router.add(("GET", "POST", "DELETE"), r"/data/JSESSION", jsession, xnat="UserSession")
    router.add(("PUT", "POST"), r"/data/services/auth", services_auth, public=True, xnat="AuthenticationRestlet")
    router.add("GET", r"/data/auth", user_auth, xnat="UserAuth")
    router.add("GET", r"/xapi/siteConfig/buildInfo", build_info)
    router.add("GET", r"/xapi/siteConfig/buildInfo/version", lambda r: Response.text(settings.version))
    # /data/version is gone in XNAT 1.8: no template in the route table, so the router answers 404.


def _register_tokens(router: Router, services: Services) -> None:
    auth = services.auth

    def tokens(req: Request) -> Response:
        """``AliasTokenRestlet`` step by step (web/.../restlet/services/AliasTokenRestlet.java).

        The constructor first finds the token named in the path (404 when there is none), then refuses the guest
        and, for a caller who is not a site administrator, any operation on another user's account or token
        (403, l.95-97), before the operation is even looked at: so a non-admin's ``validate`` of another user's
        token is a 403, never ``{"valid": ...}``. Then ``issue``, ``show``, ``validate`` (``{"valid": user}`` or
        ``{}``: Jackson drops the null, ``SerializerConfig`` NON_NULL) and ``invalidate`` (``{"result": "OK"}``).

        XNAT does not look at a token's expiry here (``HibernateAliasTokenService.validateToken``); an hourly job
        deletes expired tokens (``ClearExpiredAliasTokens``, ``aliasTokenTimeoutSchedule``). The emulator deletes
        them the moment they expire, so an expired token is an unknown one (404), as on XNAT after the sweep.
        """
        found = xnat_routes.match(req.path[len("/data"):])
        variables = found.variables if found else {}
        op, username = variables.get("OPERATION", ""), variables.get("USERNAME")
        token_id, secret = variables.get("TOKEN"), variables.get("SECRET")
        auth.store.run("DELETE FROM tokens WHERE expires<=?", auth.clock())
        token = _named_token(auth, token_id) if token_id else None
        username = _check_token_caller(auth, req.user or "", username, token)
        return _token_operation(auth, op, username, token, secret)

    router.add("GET", r"/data/services/tokens/(?P<op>[^/]+)(?:/(?P<rest>.*))?", tokens, xnat="AliasTokenRestlet")


def _named_token(auth: Auth, token_id: str) -> Any:
    """The enabled token a path names, by alias (a UUID) or by id; 404 when there is none."""
    if UUID_RE.match(token_id):
        token = auth.store.one("SELECT * FROM tokens WHERE alias=? AND enabled=1", token_id)
        if token is None:
            raise XnatHttpError(404, f"Can't find an alias token with the alias {token_id}")
        return token
    token = auth.store.one("SELECT * FROM tokens WHERE id=?", int(token_id)) if token_id.isdigit() else None
    if token is None:
        raise XnatHttpError(404, f"Can't find an alias token with the ID {token_id}")
    return token


def _check_token_caller(auth: Auth, caller: str, username: str | None, token: Any) -> str:
    """The account the operation is for (the caller's by default), once the caller may act on it: never the
    guest; a non-admin only on their own account and tokens (403)."""
    username = username or caller
    if not username or username.lower() == GUEST:
        raise XnatHttpError(403, "The guest user can't request alias tokens")
    admin = auth.is_admin(caller)
    if (username.lower() != caller.lower() or (token is not None and token["login"].lower() != caller.lower())) \
            and not admin:
        raise XnatHttpError(403, "Non-admin users can only request operations on alias tokens for their own "
                                 "account")
    if username != caller and not admin:  # represent(): the same check, case-sensitive this time
        raise XnatHttpError(403, "Only admins can work with alias tokens for other users.")
    return username


def _token_operation(auth: Auth, op: str, username: str, token: Any, secret: str | None) -> Response:
    """``issue``, ``show``, ``validate`` or ``invalidate``, once the caller was checked."""
    if op == "issue":
        if not auth.store.one("SELECT login FROM users WHERE login=?", username):
            raise XnatHttpError(400, f"An error occurred retrieving the user: {username}")
        return _json(auth.issue_token(username))
    if op == "show":
        rows = auth.store.all("SELECT * FROM tokens WHERE login=? AND enabled=1", username)
        return _json([auth.token_json(t) for t in rows])
    if op == "validate":
        if token is None or not secret:
            raise XnatHttpError(401, "You must specify both token and secret to validate a token.")
        ok = secrets.compare_digest(token["secret"], secret)
        if token["single_use"]:  # validateToken deletes a single-use token in a finally, right or wrong
            auth.store.run("DELETE FROM tokens WHERE id=?", token["id"])
        return _json({"valid": token["login"]} if ok else {})
    if op == "invalidate":
        if token is not None:
            auth.store.run("DELETE FROM tokens WHERE id=?", token["id"])
        return _json({"result": "OK"})
    raise XnatHttpError(400, f"Unknown operation: {op}")


def _json(value: object) -> Response:
    return Response(body=json.dumps(value).encode(), content_type="application/json")
