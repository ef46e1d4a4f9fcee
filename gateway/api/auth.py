"""Bearer-token authentication of the REST API.

Several tokens can be valid at once so they can be rotated without downtime: add the new
token, move clients over, remove the old one. The presented token is compared with every
configured token in constant time, and all comparisons run whatever the outcome, so the
response time says nothing about how much of which token matched.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException

API_PREFIX = "/api/"
"""Routes under this prefix need a bearer token."""

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="An API token from the gateway's settings (HUTCH_GATEWAY_TOKENS).",
)


class Unauthorized(HTTPException):
    """The request has no valid bearer token (401, with a ``WWW-Authenticate`` challenge)."""

    def __init__(self, message: str) -> None:
        super().__init__(401, message, headers={"WWW-Authenticate": 'Bearer realm="hutch"'})


class TokenSet:
    """The valid API tokens, compared in constant time.

    Args:
        tokens: every token accepted right now (at least one; none may be empty).

    Raises:
        ValueError: no token, or an empty one.
    """

    def __init__(self, tokens: Sequence[str]) -> None:
        if isinstance(tokens, str):
            raise ValueError("tokens must be a list of strings, not one string")
        cleaned = [t.strip() for t in tokens]
        if not cleaned:
            raise ValueError("the gateway needs at least one API token (HUTCH_GATEWAY_TOKENS)")
        if any(not t for t in cleaned):
            raise ValueError("an API token must not be empty")
        # Digests have one length, so comparing them reveals nothing about the tokens' lengths either.
        self._digests = [_digest(t) for t in cleaned]

    def __len__(self) -> int:
        return len(self._digests)

    def __repr__(self) -> str:
        return f"TokenSet(<{len(self._digests)} tokens>)"

    def matches(self, presented: str) -> bool:
        """Whether ``presented`` is one of the tokens (constant time in the position of any mismatch)."""
        candidate = _digest(presented)
        # A list, not any(): every comparison runs, so timing does not reveal which token matched.
        results = [hmac.compare_digest(candidate, digest) for digest in self._digests]
        return True in results


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def authorized(request: Request) -> bool:
    """Whether the request carries a valid ``Authorization: Bearer`` token for its app."""
    tokens: TokenSet | None = getattr(request.app.state, "tokens", None)
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return tokens is not None and scheme.lower() == "bearer" and tokens.matches(token.strip())


async def require_token(request: Request, credentials: HTTPAuthorizationCredentials | None = Security(_bearer)) -> None:
    """FastAPI dependency: a valid ``Authorization: Bearer <token>`` header, else 401."""
    tokens: TokenSet = request.app.state.tokens
    if credentials is None:
        raise Unauthorized("missing bearer token; send 'Authorization: Bearer <token>'")
    if not tokens.matches(credentials.credentials):
        raise Unauthorized("invalid bearer token")


def token_required(request: Request) -> bool:
    """Whether the request's route is one that needs a token (under ``/api``, unless auth was overridden)."""
    overrides = getattr(request.app, "dependency_overrides", {})
    return request.url.path.startswith(API_PREFIX) and require_token not in overrides
