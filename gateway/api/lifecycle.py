"""What the REST API (routes.py) and its Cloudflare form (cloudflare.py) share about lifecycle requests.

An event's request body — its OpenAPI description and its parsing — and the message of a lifecycle
change that no worker applied within the wait (a 202), so both APIs describe and say them alike.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from hutch.gateway.api.errors import json_body_failure
from hutch.gateway.api.models import check_json_value

EVENT_BODY_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": False,
        "description": "The event's payload: any JSON value (an empty body is null).",
        "content": {"application/json": {"schema": {}}},
    }
}
"""``openapi_extra`` of a send-event route: the body is read raw (any JSON value), so FastAPI cannot describe it."""


def event_payload(raw: bytes) -> Any:
    """Parse an event's request body as JSON (empty: null), as a 422 naming the problem when it is not."""
    if not raw.strip():
        return None
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        failure = json_body_failure(exc)
        if failure is not None:
            raise HTTPException(*failure) from None
        error = {"type": "json_invalid", "loc": ("body",), "msg": f"not valid JSON: {exc}"}
        raise RequestValidationError([error]) from None
    try:
        return check_json_value(value, "the event payload")
    except ValueError as exc:
        raise RequestValidationError([{"type": "value_error", "loc": ("body",), "msg": str(exc)}]) from None


def not_applied(change: str, instance_id: str) -> str:
    """The ``messages`` entry of a lifecycle change answered 202: no worker applied it within the wait."""
    return (
        f"no worker applied the {change} of instance {instance_id!r} yet; the request stays queued "
        "and is applied when a worker takes the instance's partition"
    )
