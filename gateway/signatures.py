"""Webhook signature schemes: Standard Webhooks, GitHub and Stripe.

Each verifier checks an HMAC-SHA256 over the *raw* request body against every configured secret
(several secrets let a sender rotate without downtime) with constant-time comparisons, and, where
the scheme signs a timestamp, that it lies within ``tolerance_s`` of now in either direction.

============  ===============================================  ==================================
scheme        signed content and header                        delivery id (for deduplication)
============  ===============================================  ==================================
standard      ``webhook-signature: v1,<base64>`` over           ``webhook-id``
              ``"<webhook-id>.<webhook-timestamp>.<body>"``;
              secret ``whsec_<base64 key>``
github        ``X-Hub-Signature-256: sha256=<hex>`` over        ``X-GitHub-Delivery``
              the body; secret used as UTF-8 text
stripe        ``Stripe-Signature: t=<ts>,v1=<hex>`` over        the event's ``id`` (in the body)
              ``"<t>.<body>"``; secret used as UTF-8 text
============  ===============================================  ==================================

The ``sign_*`` functions produce the headers a sender would, for tests and local tooling.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from typing import Protocol

from hutch.errors import InvalidInputError


class SignatureError(Exception):
    """The request is not authentically from the sender: answered with 401 and this message."""


class Verifier(Protocol):
    """Checks one request's signature; returns the delivery id the scheme carries in its headers."""

    def verify(self, headers: Mapping[str, str], body: bytes, now: float) -> str | None:
        """Raise :class:`SignatureError` unless ``body`` was signed with one of the secrets.

        Args:
            headers: the request headers, names lower-cased.
            body: the raw body as received.
            now: the current time in epoch seconds.
        """
        ...


def _check_timestamp(raw: str, now: float, tolerance_s: float, header: str) -> int:
    try:
        timestamp = int(raw)
    except ValueError:
        raise SignatureError(f"{header} {raw[:40]!r} is not a Unix timestamp") from None
    if abs(now - timestamp) > tolerance_s:
        raise SignatureError(
            f"{header} {timestamp} is {abs(now - timestamp):.0f} s from the server's clock; "
            f"the tolerance is {tolerance_s:.0f} s (a replayed or delayed delivery, or a skewed clock)"
        )
    return timestamp


def _hmac(key: bytes, *parts: bytes) -> bytes:
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for part in parts:
        mac.update(part)
    return mac.digest()


def _any_match(expected: Sequence[bytes], given: Sequence[bytes]) -> bool:
    # Every pair is compared (no early exit on the secret list), each in constant time.
    matched = False
    for want in expected:
        for got in given:
            matched |= hmac.compare_digest(want, got)
    return matched


class StandardWebhooks:
    """The Standard Webhooks scheme (Svix and others).

    Args:
        secrets: ``whsec_<base64>`` secrets (the prefix is optional).
        tolerance_s: the accepted distance of ``webhook-timestamp`` from now.

    Raises:
        InvalidInputError: a secret is not valid base64.
    """

    def __init__(self, secrets: Sequence[str], *, tolerance_s: float = 300.0) -> None:
        self._keys = [standard_key(secret) for secret in secrets]
        self._tolerance_s = tolerance_s

    def verify(self, headers: Mapping[str, str], body: bytes, now: float) -> str | None:
        """Check ``webhook-signature``; returns ``webhook-id``."""
        values = {name: headers.get(name, "") for name in ("webhook-id", "webhook-timestamp", "webhook-signature")}
        missing = [name for name, value in values.items() if not value]
        if missing:
            raise SignatureError(f"missing header(s) {', '.join(missing)} (Standard Webhooks)")
        msg_id, timestamp, signature = values.values()
        _check_timestamp(timestamp, now, self._tolerance_s, "webhook-timestamp")
        given = [
            sig.encode()
            for version, _, sig in (item.partition(",") for item in signature.split())
            if version == "v1" and sig
        ]
        expected = [
            base64.b64encode(_hmac(key, msg_id.encode(), b".", timestamp.encode(), b".", body)) for key in self._keys
        ]
        if not given or not _any_match(expected, given):
            raise SignatureError("webhook-signature does not match the body with any configured secret")
        return msg_id


def standard_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret (``whsec_`` + base64)."""
    try:
        return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInputError(
            "a Standard Webhooks secret must be 'whsec_' followed by base64 (as the sender shows it)"
        ) from None


class GitHub:
    """GitHub's ``X-Hub-Signature-256`` (HMAC-SHA256 of the body, hex); no timestamp is signed.

    Args:
        secrets: the webhook secrets configured on GitHub.
    """

    def __init__(self, secrets: Sequence[str]) -> None:
        self._keys = [secret.encode() for secret in secrets]

    def verify(self, headers: Mapping[str, str], body: bytes, now: float) -> str | None:
        """Check ``X-Hub-Signature-256``; returns ``X-GitHub-Delivery`` when present."""
        header = headers.get("x-hub-signature-256")
        if not header:
            raise SignatureError("missing header X-Hub-Signature-256 (GitHub)")
        algorithm, _, digest = header.partition("=")
        if algorithm != "sha256" or not digest:
            raise SignatureError("X-Hub-Signature-256 must look like 'sha256=<hex digest>'")
        expected = [_hmac(key, body).hex().encode() for key in self._keys]
        if not _any_match(expected, [digest.strip().lower().encode()]):
            raise SignatureError("X-Hub-Signature-256 does not match the body with any configured secret")
        return headers.get("x-github-delivery") or None


class Stripe:
    """Stripe's ``Stripe-Signature: t=<ts>,v1=<hex>[,v1=...]`` over ``"<t>.<body>"``.

    Args:
        secrets: endpoint secrets (``whsec_...``), used as text.
        tolerance_s: the accepted distance of ``t`` from now.
    """

    def __init__(self, secrets: Sequence[str], *, tolerance_s: float = 300.0) -> None:
        self._keys = [secret.encode() for secret in secrets]
        self._tolerance_s = tolerance_s

    def verify(self, headers: Mapping[str, str], body: bytes, now: float) -> str | None:
        """Check ``Stripe-Signature``; the delivery id is the event's ``id``, read from the body by the caller."""
        header = headers.get("stripe-signature")
        if not header:
            raise SignatureError("missing header Stripe-Signature (Stripe)")
        timestamp: str | None = None
        given: list[bytes] = []
        for item in header.split(","):
            key, _, value = item.strip().partition("=")
            if key == "t":
                timestamp = value
            elif key == "v1" and value:
                given.append(value.lower().encode())
        if timestamp is None or not given:
            raise SignatureError("Stripe-Signature must carry t=<timestamp> and at least one v1=<signature>")
        _check_timestamp(timestamp, now, self._tolerance_s, "Stripe-Signature timestamp")
        expected = [_hmac(key, timestamp.encode(), b".", body).hex().encode() for key in self._keys]
        if not _any_match(expected, given):
            raise SignatureError("Stripe-Signature does not match the body with any configured secret")
        return None


class Unsigned:
    """Accepts every request (``signature = "none"``): for routes behind a trusted proxy only."""

    def verify(self, headers: Mapping[str, str], body: bytes, now: float) -> str | None:
        """Accept the request; there is no delivery id."""
        return None


def verifier(scheme: str, secrets: Sequence[str], *, tolerance_s: float = 300.0) -> Verifier:
    """The verifier of a scheme (``standard``, ``github``, ``stripe`` or ``none``).

    Raises:
        InvalidInputError: the scheme is unknown, a signed scheme has no secret, or a secret is malformed.
    """
    if scheme == "none":
        return Unsigned()
    if not secrets:
        raise InvalidInputError(f"signature scheme {scheme!r} needs at least one secret")
    if scheme == "standard":
        return StandardWebhooks(secrets, tolerance_s=tolerance_s)
    if scheme == "github":
        return GitHub(secrets)
    if scheme == "stripe":
        return Stripe(secrets, tolerance_s=tolerance_s)
    raise InvalidInputError(f"signature scheme {scheme!r} is not one of: standard, github, stripe, none")


# ---------------------------------------------------------------------- signing (senders, tests)
def sign_standard(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The Standard Webhooks headers a sender attaches to ``body``."""
    digest = base64.b64encode(_hmac(standard_key(secret), f"{msg_id}.{timestamp}.".encode(), body)).decode()
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp), "webhook-signature": f"v1,{digest}"}


def sign_github(secret: str, body: bytes, *, delivery: str | None = None) -> dict[str, str]:
    """The headers GitHub attaches to ``body`` (with ``X-GitHub-Delivery`` when given)."""
    headers = {"X-Hub-Signature-256": "sha256=" + _hmac(secret.encode(), body).hex()}
    if delivery is not None:
        headers["X-GitHub-Delivery"] = delivery
    return headers


def sign_stripe(secret: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The ``Stripe-Signature`` header Stripe attaches to ``body``."""
    digest = _hmac(secret.encode(), f"{timestamp}.".encode(), body).hex()
    return {"Stripe-Signature": f"t={timestamp},v1={digest}"}
