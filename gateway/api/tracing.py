"""A server span per HTTP request, current while the request is handled (pure ASGI, no extra dependency).

The span continues the caller's W3C ``traceparent`` when there is one, so an instance created by
the request (``POST /api/workflows/{name}/instances``, a webhook) is one trace with the caller's
work: the client stores the current context with the instance (see :mod:`hutch.tracing`).
Attributes follow the HTTP server semantic conventions: ``http.request.method``, ``url.path``,
``url.scheme``, ``http.route``, ``http.response.status_code``, ``error.type`` for 5xx answers.

With no tracer provider installed, the middleware only makes an incoming ``traceparent``
current (so it is still stored with the instances the request creates) and builds no span.
"""

from __future__ import annotations

import inspect
from typing import Any

from fastapi import FastAPI
from hutch import tracing
from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"})
_PROPAGATION_HEADERS = frozenset({b"traceparent", b"tracestate", b"baggage"})


def fastapi_options() -> dict[str, Any]:
    """``FastAPI(...)`` keyword arguments that turn off FastAPI's own request tracing, where it has one.

    Recent FastAPI releases make a server span per request (plus spans for dependencies, the
    endpoint and serialization) once a tracer provider is installed. The gateway traces requests
    with :class:`TracingMiddleware` on every FastAPI version, so the native spans would be
    duplicates; FastAPI's metrics and logs stay as FastAPI configures them.
    """
    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    return {"telemetry": {"tracing": False, "operation_spans": False}}


def _carrier(scope: Scope) -> dict[str, bytes]:
    """The request's trace-context headers (ASGI header names are lower-case bytes)."""
    return {name.decode("latin-1"): value for name, value in scope.get("headers", ()) if name in _PROPAGATION_HEADERS}


def _header(scope: Scope, wanted: bytes) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == wanted:
            return str(value.decode("latin-1"))
    return None


def _request_attributes(scope: Scope, method: str) -> dict[str, Any]:
    """The server span's attributes known before the app runs (``method`` already mapped to ``_OTHER``)."""
    attributes: dict[str, Any] = {
        tracing.HTTP_REQUEST_METHOD: method,
        tracing.URL_PATH: scope.get("path", ""),
        tracing.URL_SCHEME: scope.get("scheme", "http"),
    }
    server = scope.get("server")
    if server:
        attributes[tracing.SERVER_ADDRESS] = str(server[0])
        if server[1] is not None:
            attributes[tracing.SERVER_PORT] = int(server[1])
    client = scope.get("client")
    if client:
        attributes[tracing.CLIENT_ADDRESS] = str(client[0])
    agent = _header(scope, b"user-agent")
    if agent:
        attributes[tracing.USER_AGENT_ORIGINAL] = agent
    return attributes


class TracingMiddleware:
    """Pure ASGI middleware: one SERVER span per HTTP request, named ``{method} {route template}``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle the request inside its server span, which records the route, the status and any error."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tracer = tracing.tracer()
        if tracer is None:
            await self._propagate_only(scope, receive, send)
            return
        method = scope.get("method", "GET")
        known = method if method in _METHODS else "_OTHER"
        span = tracer.start_span(
            "HTTP" if known == "_OTHER" else known,
            context=tracing.extract(_carrier(scope)),
            kind=SpanKind.SERVER,
            attributes=_request_attributes(scope, known),
        )

        async def traced_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status = int(message["status"])
                span.set_attribute(tracing.HTTP_RESPONSE_STATUS_CODE, status)
                if status >= 500:  # a 4xx is the client's error, not the server span's
                    span.set_attribute(tracing.ERROR_TYPE, str(status))
                    span.set_status(Status(StatusCode.ERROR))
            await send(message)

        with trace.use_span(span, end_on_exit=True, record_exception=True, set_status_on_exception=True):
            try:
                await self.app(scope, receive, traced_send)
            except BaseException as exc:
                span.set_attribute(tracing.ERROR_TYPE, type(exc).__qualname__)
                raise
            finally:
                # The router put the matched route in the scope: name the span after its template
                # (bounded cardinality), as the HTTP conventions ask.
                route = getattr(scope.get("route"), "path", None)
                if route:
                    span.set_attribute(tracing.HTTP_ROUTE, route)
                    span.update_name(f"{'HTTP' if known == '_OTHER' else known} {route}")

    async def _propagate_only(self, scope: Scope, receive: Receive, send: Send) -> None:
        carrier = _carrier(scope)
        if not carrier:
            await self.app(scope, receive, send)
            return
        token = context_api.attach(tracing.extract(carrier))
        try:
            await self.app(scope, receive, send)
        finally:
            context_api.detach(token)
