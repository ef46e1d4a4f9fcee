"""Settings of the HTTP gateway: ``HUTCH_GATEWAY_*`` environment variables, then defaults."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

if TYPE_CHECKING:
    from hutch.config import Limits

BODY_HEADROOM_BYTES = 64 * 1024
"""What a request carries beyond its payload (the id, other fields, JSON's punctuation)."""


class GatewaySettings(BaseSettings):
    """Where the gateway listens and whom it lets in.

    Attributes:
        tokens: the valid API bearer tokens, comma-separated in ``HUTCH_GATEWAY_TOKENS``
            (several at once so they can be rotated: add the new one, move clients, drop the old).
        host: the address to bind.
        port: the port to bind (``hutch dev`` uses 8787, like ``wrangler dev``).
        max_body_bytes: larger request bodies get 413 before they are parsed; unset, the
            deployment's ``limits.max_payload_bytes`` plus :data:`BODY_HEADROOM_BYTES` (see
            :meth:`body_limit`), so the gateway takes every payload the engine does.
    """

    model_config = SettingsConfigDict(env_prefix="HUTCH_GATEWAY_", extra="ignore")

    tokens: Annotated[list[SecretStr], NoDecode] = []
    host: str = "127.0.0.1"
    port: int = Field(default=8787, ge=0, le=65535)
    max_body_bytes: int | None = Field(default=None, ge=1)

    @field_validator("tokens", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [t.strip() for t in value.split(",") if t.strip()]
        return value

    def body_limit(self, limits: Limits) -> int:
        """The largest request body accepted: ``max_body_bytes`` if set, else what ``limits`` lets a payload be."""
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        return limits.max_payload_bytes + BODY_HEADROOM_BYTES

    def token_values(self) -> list[str]:
        """The tokens in clear, for :func:`hutch.gateway.app.create_app`."""
        return [t.get_secret_value() for t in self.tokens]
