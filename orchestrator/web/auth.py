"""Who is looking, and may they act: operator identity (a login with the operator token, or
a user named by a trusted reverse proxy) and CSRF protection for every POST.

Cookies are signed with HMAC-SHA256 under a key from the environment (`ui.secret_env`), or
a key made for this process. The CSRF token is a double submit: a random nonce in a signed
cookie and the same nonce in the form's hidden field; a POST whose two do not match is
refused before anything else is looked at.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from orchestrator.config import Ui

SESSION_COOKIE = "ship_session"
CSRF_COOKIE = "ship_csrf"
FLASH_COOKIE = "ship_flash"
CSRF_FIELD = "csrf"
NAME_PATTERN = re.compile(r"[A-Za-z0-9._@+-]{1,64}")


class Refused(Exception):
    """An action that is not allowed; the message says why, for the person asking."""

    status = 403


@dataclass(frozen=True)
class Viewer:
    user: str | None
    operator: bool
    why_not: str = ""  # when not an operator: why, in words for the page


class Signer:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def sign(self, purpose: str, value: str) -> str:
        return f"{value}.{self._mac(purpose, value)}"

    def unsign(self, purpose: str, signed: str | None) -> str | None:
        """The value, if `signed` carries a valid signature for this purpose."""
        if not signed or "." not in signed:
            return None
        value, _, mac = signed.rpartition(".")
        return value if hmac.compare_digest(mac, self._mac(purpose, value)) else None

    def _mac(self, purpose: str, value: str) -> str:
        digest = hmac.new(self._key, f"{purpose}\0{value}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class Guard:
    """Applies the `ui:` section of pipelines.yaml to requests."""

    def __init__(self, ui: Ui, env: Mapping[str, str]) -> None:
        self.ui = ui
        self._token = env.get(ui.token_env, "") if ui.auth == "token" else ""
        secret = env.get(ui.secret_env, "")
        self.signer = Signer(secret.encode() if secret else secrets.token_bytes(32))
        # A session names the token it was opened with: a new token ends old sessions.
        self._session_purpose = "session:" + hashlib.sha256(self._token.encode()).hexdigest()

    # --- identity ---------------------------------------------------------------------------

    def viewer(self, request: Request) -> Viewer:
        if self.ui.auth == "header":
            return self._by_header(request)
        if self.ui.auth == "token":
            return self._by_session(request)
        return Viewer(None, False, "actions are off: no operator authentication is configured "
                      "(the `ui.auth` setting of pipelines.yaml)")

    def _by_header(self, request: Request) -> Viewer:
        client = request.client.host if request.client else ""
        user = request.headers.get(self.ui.user_header, "").strip()
        if client not in self.ui.trusted_proxies:
            return Viewer(None, False, f"requests from {client or 'unknown'} are not from a "
                          "trusted proxy")
        if not user:
            return Viewer(None, False, "the proxy named no user")
        if "*" in self.ui.operators or user in self.ui.operators:
            return Viewer(user, True)
        return Viewer(user, False, f"{user} is not an operator")

    def _by_session(self, request: Request) -> Viewer:
        if not self._token:
            return Viewer(None, False, f"actions are off: {self.ui.token_env} is not set")
        payload = self.signer.unsign(self._session_purpose, request.cookies.get(SESSION_COOKIE))
        session = _decode(payload)
        if not session or session.get("exp", 0) < time.time():
            return Viewer(None, False, "log in to act")
        user = str(session.get("user", ""))
        if self.ui.operators and user not in self.ui.operators:
            return Viewer(user, False, f"{user} is not an operator")
        return Viewer(user, True)

    def operator(self, request: Request, form: Mapping[str, str]) -> str:
        """The operator allowed to make this POST, or Refused: the CSRF check comes first."""
        if not self.csrf_ok(request, form):
            raise Refused("the form's CSRF token is missing or does not match: reload the "
                          "page and try again")
        viewer = self.viewer(request)
        if not viewer.operator or not viewer.user:
            raise Refused(f"only an operator may do this: {viewer.why_not}")
        return viewer.user

    # --- logging in with the token ------------------------------------------------------

    def open_session(self, name: str, token: str) -> str:
        """A signed session cookie value for `name`, if `token` is the operator token."""
        if self.ui.auth != "token":
            raise Refused("logging in with a token is not configured (ui.auth)")
        if not self._token:
            raise Refused(f"logging in is off: {self.ui.token_env} is not set")
        if not hmac.compare_digest(token.encode(), self._token.encode()):
            raise Refused("wrong token")
        if not NAME_PATTERN.fullmatch(name):
            raise Refused("give your name: letters, digits and . _ @ + - (64 at most)")
        if self.ui.operators and name not in self.ui.operators:
            raise Refused(f"{name} is not an operator")
        payload = _encode({"user": name, "exp": time.time() + self.ui.session_hours * 3600})
        return self.signer.sign(self._session_purpose, payload)

    def set_session(self, request: Request, response: Response, value: str | None) -> None:
        if value is None:
            response.delete_cookie(SESSION_COOKIE, path="/", samesite="strict", httponly=True)
            return
        _set(request, response, SESSION_COOKIE, value, int(self.ui.session_hours * 3600))

    # --- CSRF ---------------------------------------------------------------------------------

    def csrf_nonce(self, request: Request) -> tuple[str, bool]:
        """This browser's CSRF nonce, and whether it is new (to be set as a cookie)."""
        nonce = self.signer.unsign("csrf", request.cookies.get(CSRF_COOKIE))
        return (nonce, False) if nonce else (secrets.token_urlsafe(32), True)

    def set_csrf(self, request: Request, response: Response, nonce: str) -> None:
        _set(request, response, CSRF_COOKIE, self.signer.sign("csrf", nonce), None)

    def csrf_ok(self, request: Request, form: Mapping[str, str]) -> bool:
        nonce = self.signer.unsign("csrf", request.cookies.get(CSRF_COOKIE))
        sent = form.get(CSRF_FIELD, "")
        return bool(nonce and sent) and hmac.compare_digest(nonce.encode(), sent.encode())

    # --- one-shot messages after a redirect ----------------------------------------------

    def set_flash(self, request: Request, response: Response, text: str, ok: bool) -> None:
        value = self.signer.sign("flash", _encode({"text": text, "ok": ok}))
        _set(request, response, FLASH_COOKIE, value, 120)

    def flash(self, request: Request) -> dict | None:
        return _decode(self.signer.unsign("flash", request.cookies.get(FLASH_COOKIE)))

    def clear_flash(self, response: Response) -> None:
        response.delete_cookie(FLASH_COOKIE, path="/", samesite="strict", httponly=True)

def _set(request: Request, response: Response, name: str, value: str,
         max_age: int | None) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/", httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")


def _encode(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _decode(payload: str | None) -> dict | None:
    if not payload:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
