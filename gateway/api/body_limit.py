"""A pure ASGI middleware that refuses request bodies over a size limit before anything parses them.

A request announcing a larger ``Content-Length`` gets 413 at once, without its body being
read. A body without a length (chunked) is counted as it streams in; the read that crosses
the limit raises :class:`BodyTooLarge`, which the app renders as 413, so at most
``limit`` bytes (plus one chunk) are ever buffered.
"""

from __future__ import annotations

from hutch.gateway.api.envelope import ErrorCode, error_response
from hutch.gateway.api.errors import BodyTooLarge
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DEFAULT_MAX_BODY_BYTES = 1024 * 1024


class BodyLimitMiddleware:
    """Reject HTTP request bodies larger than ``max_body_bytes`` with 413.

    Args:
        app: the wrapped ASGI app.
        max_body_bytes: the largest body accepted (default 1 MiB).
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        if max_body_bytes < 0:
            raise ValueError(f"max_body_bytes must be >= 0, got {max_body_bytes}")
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the request, answering 400 or 413 instead when its declared or streamed body breaks the limit."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        refusal = _content_length_refusal(scope, limit)
        if refusal is not None:
            await refusal(scope, receive, send)
            return

        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as exc:
            # Normally the app's handler renders it; this covers a route that let it escape.
            if started:
                raise
            await error_response(413, ErrorCode.PAYLOAD_TOO_LARGE, exc.detail)(scope, receive, send)


def _content_length_refusal(scope: Scope, limit: int) -> JSONResponse | None:
    # Decided from the headers alone, before any of the body is read: a malformed or conflicting
    # Content-Length is a 400, one over the limit a 413; None lets the request through.
    lengths = [v for k, v in scope.get("headers", ()) if k == b"content-length"]
    if not lengths:
        return None
    try:
        declared = {int(v) for v in lengths}
    except ValueError:
        declared = set()
    if len(declared) != 1 or min(declared) < 0:
        return error_response(400, ErrorCode.INVALID_INPUT, "the Content-Length header is not valid")
    if declared.pop() > limit:
        return error_response(413, ErrorCode.PAYLOAD_TOO_LARGE, BodyTooLarge(limit).detail)
    return None
