"""Who may use the dashboard, and the checks every state-changing request of it passes.

The browser signs in once with an API token (``/ui/signin``); the token is kept in a cookie the
page's scripts cannot read (``HttpOnly``), that is only sent by the browser on requests that
start on the gateway's own pages (``SameSite=Strict``) and, over https, only over https
(``Secure``). Removing the token from the gateway's settings signs its browsers out too.

A state-changing request (every ``POST`` under ``/ui``) must also come from the gateway's own
origin (its ``Origin`` header names the host the request was sent to) and carry the CSRF token
of its session in ``X-CSRF-Token``: an HMAC of the session under a key that never leaves the
process, which the dashboard's pages embed and a page of another site cannot read.

In ``hutch dev`` without ``--token`` the API is open (``require_token`` overridden) and so is
the dashboard: there is no sign-in, but the origin and CSRF checks still apply.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

from fastapi import Request
from hutch.gateway.api.auth import TokenSet, require_token
from starlette.exceptions import HTTPException
from starlette.responses import Response

COOKIE = "hutch_session"
CSRF_HEADER = "x-csrf-token"

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
"""The dashboard's pages run only the gateway's own script files: no inline script, no other origin."""


class CsrfRefused(HTTPException):
    """A state-changing dashboard request from another origin, or without its session's CSRF token (403)."""

    def __init__(self, message: str) -> None:
        super().__init__(403, message)


class SignInRequired(HTTPException):
    """A dashboard data request without a signed-in session (401); the page sends the browser to sign in."""

    def __init__(self) -> None:
        super().__init__(401, "sign in to the dashboard first (/ui/signin)")


class Sessions:
    """Signs sessions in and checks them, for one app; its CSRF key lives as long as the process."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)

    def is_open(self, request: Request) -> bool:
        """Whether the API, and so the dashboard, needs no token (``hutch dev`` without ``--token``)."""
        return require_token in request.app.dependency_overrides

    def session(self, request: Request) -> str | None:
        """The request's session ("" when the dashboard is open), or None when it is not signed in."""
        if self.is_open(request):
            return ""
        token = request.cookies.get(COOKIE)
        tokens: TokenSet = request.app.state.tokens
        return token if token and tokens.matches(token) else None

    def require(self, request: Request) -> str:
        """The request's session, else :class:`SignInRequired`."""
        session = self.session(request)
        if session is None:
            raise SignInRequired()
        return session

    def csrf_token(self, session: str) -> str:
        """The CSRF token of a session (the same for every page of it)."""
        return hmac.new(self._key, session.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()

    def check_state_change(self, request: Request, session: str) -> None:
        """Refuse a state-changing request that is cross-site or lacks the session's CSRF token."""
        check_same_origin(request)
        presented = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(presented.encode(), self.csrf_token(session).encode()):
            raise CsrfRefused("missing or wrong CSRF token: reload the dashboard page and try again")

    def sign_in(self, request: Request, response: Response, token: str) -> bool:
        """Set the session cookie on ``response`` if ``token`` is valid; whether it was."""
        tokens: TokenSet = request.app.state.tokens
        if not token or not tokens.matches(token):
            return False
        response.set_cookie(
            COOKIE,
            token,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return True

    @staticmethod
    def sign_out(request: Request, response: Response) -> None:
        """Clear the session cookie."""
        response.delete_cookie(COOKIE, httponly=True, samesite="strict", secure=request.url.scheme == "https", path="/")


def check_same_origin(request: Request) -> None:
    """Refuse a request whose ``Origin`` (or, lacking one, ``Referer``) is not the host it was sent to.

    Browsers send ``Origin`` on every cross-origin request and on same-origin POSTs; a request
    with neither header is not from a browser page, and still needs the CSRF token.
    """
    source = request.headers.get("origin") or request.headers.get("referer")
    if source is None:
        return
    host = request.headers.get("host", "")
    if source == "null" or urlsplit(source).netloc.lower() != host.lower():
        raise CsrfRefused(f"cross-site request refused: it came from {source!r}, not from this dashboard ({host})")
