"""Logins, HTTP sessions (JSESSIONID), account lock-out and alias tokens, as XNAT 1.8 does them.

- A basic-auth request without a valid session cookie creates a new HTTP session and sets ``JSESSIONID``
  (which is why clients that send credentials on every call pile up sessions on a real server).
- Sessions expire after an idle timeout; every authenticated answer carries the quoted
  ``SESSION_EXPIRATION_TIME="<now ms>,<timeout ms>"`` cookie that xnatpy parses.
- Too many failed logins lock the account for a while; a locked account fails even with the right password.
- Alias tokens are UUID aliases with a 64-character secret that log in like a user and expire. A login that is not
  a site administrator's may work only on its own tokens: anything else is a 403, even a validation.
- On a site that does not require a login (``require_login=False``) a request without valid credentials, an
  expired session included, is the ``guest`` user in a new session (new ``JSESSIONID``), never a 401; what the
  guest may see and do is in ``access.py``.

This module is the accounts' state, which the server asks to authenticate every request; the REST resources
that log in, out and issue tokens are ``auth_api.py``.
"""

from __future__ import annotations

import base64
import re
import secrets
import string
import threading
import time
import uuid
from dataclasses import dataclass

from .access import GUEST
from .clock import Clock
from .http import Request, Response, XnatHttpError
from .store import Store

UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


@dataclass
class HttpSession:
    login: str
    last_access: float


class Auth:
    def __init__(
        self,
        store: Store,
        *,
        site_id: str,
        session_timeout: float,
        token_lifetime: float,
        max_failed_logins: int,
        lockout_seconds: float,
        require_login: bool = True,
        clock: Clock = time.time,
    ):
        self.store = store
        self.clock = clock
        self.site_id = site_id
        self.session_timeout = session_timeout
        self.token_lifetime = token_lifetime
        self.max_failed_logins = max_failed_logins
        self.lockout_seconds = lockout_seconds
        self.require_login = require_login
        self.sessions: dict[str, HttpSession] = {}
        self._lock = threading.Lock()
        self.logins = 0  # successful credential checks, for tests and benchmarks

    # ---- users -------------------------------------------------------------------------------------
    def add_user(self, login: str, password: str, admin: bool = False) -> None:
        with self.store.tx():
            self.store.run(
                "INSERT INTO users(login, password, admin) VALUES(?, ?, ?) "
                "ON CONFLICT(login) DO UPDATE SET password=excluded.password, admin=excluded.admin",
                login, password, int(admin),
            )

    def is_admin(self, login: str | None) -> bool:
        row = self.store.one("SELECT admin FROM users WHERE login=?", login)
        return bool(row and row["admin"])

    # ---- sessions ----------------------------------------------------------------------------------
    def new_session(self, login: str) -> str:
        sid = secrets.token_hex(16).upper()
        with self._lock:
            self.sessions[sid] = HttpSession(login, self.clock())
        return sid

    def session_user(self, sid: str | None) -> str | None:
        if not sid:
            return None
        with self._lock:
            s = self.sessions.get(sid)
            if s is None:
                return None
            now = self.clock()
            if now - s.last_access > self.session_timeout:
                del self.sessions[sid]
                return None
            s.last_access = now
            return s.login

    def end_session(self, sid: str | None) -> None:
        with self._lock:
            self.sessions.pop(sid or "", None)

    def expire_all(self) -> int:
        with self._lock:
            n = len(self.sessions)
            self.sessions.clear()
            return n

    # ---- credentials -------------------------------------------------------------------------------
    def check_credentials(self, username: str, password: str) -> str:
        """Return the login the credentials stand for, or raise 401. Counts failures and locks."""
        now = self.clock()
        if UUID_RE.match(username):
            with self.store.tx():
                tok = self.store.one("SELECT * FROM tokens WHERE alias=?", username)
                if tok and tok["enabled"] and tok["expires"] > now and secrets.compare_digest(tok["secret"], password):
                    if tok["single_use"]:
                        self.store.run("DELETE FROM tokens WHERE id=?", tok["id"])
                    self.logins += 1
                    return tok["login"]
            raise XnatHttpError(401, "Login attempt failed. Please try again.")
        failure = None
        with self.store.tx():  # the failure count must be committed, so raise only after the transaction
            user = self.store.one("SELECT * FROM users WHERE login=?", username)
            if user is None or not user["enabled"]:
                failure = "Login attempt failed. Please try again."
            elif user["locked_until"] and user["locked_until"] > now:
                failure = "User account is locked. Please contact the site administrator."
            elif not secrets.compare_digest(user["password"], password):
                failed = user["failed_logins"] + 1
                locked = now + self.lockout_seconds if failed >= self.max_failed_logins else None
                self.store.run(
                    "UPDATE users SET failed_logins=?, locked_until=? WHERE login=?",
                    0 if locked else failed, locked, username,
                )
                failure = ("User account is locked. Please contact the site administrator." if locked
                           else "Login attempt failed. Please try again.")
            else:
                self.store.run("UPDATE users SET failed_logins=0, locked_until=NULL WHERE login=?", username)
        if failure:
            raise XnatHttpError(401, failure)
        self.logins += 1
        return username

    @staticmethod
    def basic_credentials(req: Request) -> tuple[str, str] | None:
        header = req.headers.get("Authorization") or ""
        if not header.lower().startswith("basic "):
            return None
        try:
            raw = base64.b64decode(header[6:].strip()).decode("utf-8")
        except Exception as exc:
            raise XnatHttpError(400, "Malformed Authorization header.") from exc
        user, _, password = raw.partition(":")
        return user, password

    def authenticate(self, req: Request, cookie_sid: str | None, required: bool) -> Response | None:
        """Attach the user to the request; answer 401 (with ``WWW-Authenticate``) when required."""
        login = self.session_user(cookie_sid)
        if login:
            req.user, req.session_id = login, cookie_sid
            return None
        creds = self.basic_credentials(req)
        if creds:
            try:
                login = self.check_credentials(*creds)
            except XnatHttpError as exc:
                if not required:
                    return None
                resp = Response.error(401, exc.message)
                resp.headers["WWW-Authenticate"] = f'Basic realm="{self.site_id}"'
                return resp
            req.user, req.session_id = login, self.new_session(login)
            req.new_session = True
            return None
        if required and not self.require_login:
            # An open site (requireLogin=false): no 401. Spring Security permits every URL to anyone
            # (UpdateSecurityFilterHandlerMethod.java:162) as the anonymous "guest" (SecurityConfig.java:310), and
            # XnatSecureGuard lets the guest through (XnatSecureGuard.java:97-108); XnatExpiredPasswordFilter calls
            # request.getSession() on every request, so Tomcat starts a new session and sets a new JSESSIONID,
            # also when the request carried an expired one. Later requests with that cookie stay guest.
            req.user, req.session_id = GUEST, self.new_session(GUEST)
            req.new_session = True
            return None
        if required:
            resp = Response.error(401, "Unauthorized")
            resp.headers["WWW-Authenticate"] = f'Basic realm="{self.site_id}"'
            return resp
        return None

    # ---- tokens ------------------------------------------------------------------------------------
    def issue_token(self, login: str, single_use: bool = False) -> dict:
        alphabet = string.ascii_letters + string.digits
        secret = "".join(secrets.choice(alphabet) for _ in range(64))
        alias, now = str(uuid.uuid4()), self.clock()
        with self.store.tx():
            tid = self.store.insert(
                "INSERT INTO tokens(alias, secret, login, created, expires, single_use) VALUES(?,?,?,?,?,?)",
                alias, secret, login, now, now + self.token_lifetime, int(single_use),
            )
        return self.token_json(self.store.one("SELECT * FROM tokens WHERE id=?", tid))

    @staticmethod
    def token_json(t: dict) -> dict:
        return {
            "alias": t["alias"], "secret": t["secret"], "xdatUserId": t["login"],
            "singleUse": bool(t["single_use"]), "estimatedExpirationTime": int(t["expires"] * 1000),
            "id": t["id"], "enabled": bool(t["enabled"]), "created": int(t["created"] * 1000),
            "timestamp": int(t["created"] * 1000), "disabled": 0,
        }
