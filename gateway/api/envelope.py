"""Cloudflare's response envelope: ``{"success", "errors", "messages", "result"}``.

Every response of the REST API, success or failure, has this shape, so a client checks
``success`` and reads ``errors[].message`` without looking at the status code first.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum
from typing import Any, Generic, TypeVar

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")


class ErrorCode(IntEnum):
    """The ``code`` of an error in the envelope; one per failure a client can act on.

    ``10000`` is Cloudflare's code for an authentication error; the others are Hutch's.
    """

    UNAUTHORIZED = 10000
    INVALID_INPUT = 10001
    VALIDATION_FAILED = 10002
    NOT_FOUND = 10003
    WORKFLOW_NOT_FOUND = 10004
    INSTANCE_NOT_FOUND = 10005
    INSTANCE_EXISTS = 10006
    ILLEGAL_TRANSITION = 10007
    PAYLOAD_TOO_LARGE = 10008
    METHOD_NOT_ALLOWED = 10009
    UNAVAILABLE = 10010
    INTERNAL = 10011
    UNSUPPORTED_MEDIA_TYPE = 10012


class ApiError(BaseModel):
    """One error: a stable numeric code and a sentence naming the field, the value and the rule."""

    model_config = ConfigDict(frozen=True)

    code: int
    message: str


class Envelope(BaseModel, Generic[T]):
    """A response: ``result`` on success; ``errors`` (and ``result: null``) on failure."""

    success: bool = True
    errors: list[ApiError] = []
    messages: list[str] = []
    result: T | None = None


class CursorInfo(BaseModel):
    """Pagination of a listing: pass ``cursor`` back (query ``cursor=``) for the next page; null at the end."""

    count: int = Field(description="items in this page")
    per_page: int
    cursor: str | None = None


class ListEnvelope(Envelope[list[T]], Generic[T]):
    """A paginated listing: the page in ``result``, the cursor in ``result_info``."""

    result_info: CursorInfo


class ErrorEnvelope(BaseModel):
    """What every failed request returns."""

    success: bool = False
    errors: list[ApiError]
    messages: list[str] = []
    result: None = None


def ok(result: Any) -> dict[str, Any]:
    """The envelope of a successful response (validated and serialized by the route's response model)."""
    return {"success": True, "errors": [], "messages": [], "result": result}


def error_response(
    status_code: int, code: ErrorCode, *messages: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """An error envelope with one error per message, all with the same code."""
    # A message may quote request data; a lone surrogate (from a JSON "\\ud800" escape) cannot be encoded.
    body = ErrorEnvelope(errors=[ApiError(code=int(code), message=_printable(m)) for m in messages])
    return JSONResponse(body.model_dump(mode="json"), status_code=status_code, headers=headers)


def _printable(message: str) -> str:
    return message.encode("utf-8", "backslashreplace").decode("utf-8")
