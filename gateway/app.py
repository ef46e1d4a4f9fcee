"""The gateway's ASGI app: the REST API, probes and metrics, plus whatever routers the caller adds.

``hutch gateway`` and ``hutch dev`` serve it with uvicorn::

    async with engine.connect(...) as client:
        app = create_app(client, tokens=settings.token_values(), extra_routers=[webhooks])
        await uvicorn.Server(uvicorn.Config(app, host=..., port=...)).serve()

The app does not own the client: whoever created it closes it after the server stops.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter, FastAPI
from hutch import Client
from hutch.gateway.api import cloudflare, probes, routes
from hutch.gateway.api.auth import TokenSet
from hutch.gateway.api.body_limit import DEFAULT_MAX_BODY_BYTES, BodyLimitMiddleware
from hutch.gateway.api.deps import WorkflowNames
from hutch.gateway.api.docs import install_docs
from hutch.gateway.api.errors import install_error_handlers
from hutch.gateway.api.metrics import MetricsMiddleware, RequestMetrics
from hutch.gateway.api.openapi import install_schema
from hutch.gateway.api.tracing import TracingMiddleware, fastapi_options
from hutch.gateway.dashboard import install_dashboard
from hutch.gateway.webhooks import webhook_router
from hutch.settings import Settings

API_VERSION = "1"


def create_app(
    client: Client,
    *,
    tokens: Sequence[str],
    extra_routers: Sequence[APIRouter] = (),
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> FastAPI:
    """Build the gateway app serving ``client``.

    Args:
        client: the Hutch client requests go through (embedded or remote); the caller closes it.
        tokens: valid bearer tokens for ``/api`` (several allow rotation); at least one.
        extra_routers: more routers (e.g. webhook ingress), included as they are: no bearer auth,
            but the body limit, metrics and error envelope apply. Their routes reach the client
            through :func:`hutch.gateway.api.get_client`.
        max_body_bytes: request bodies over this size get 413 before they are read (default 1 MiB).

    Returns:
        The FastAPI app; ``/openapi.json`` publishes its schema, with the client's limits, and without
        bearer auth if the token check is overridden (``app.dependency_overrides[require_token]``).

    Raises:
        ValueError: no token, an empty token, or a negative ``max_body_bytes``.
    """
    token_set = TokenSet(tokens)
    app = FastAPI(
        title="Hutch",
        version=API_VERSION,
        description=(
            "Durable workflows on RabbitMQ and Redis. The REST API under `/api` mirrors Cloudflare's "
            "Workflows API and its envelope `{success, errors, messages, result}`."
        ),
        docs_url=None,  # served by install_docs, with their assets from the package instead of a CDN
        redoc_url=None,
        **fastapi_options(),
    )
    app.state.client = client
    app.state.tokens = token_set
    app.state.workflow_names = WorkflowNames(client)
    app.state.metrics = RequestMetrics()
    install_error_handlers(app)
    app.include_router(routes.router)
    app.include_router(cloudflare.router)
    app.include_router(probes.router)
    for router in extra_routers:
        app.include_router(router)
    install_schema(app, client.limits)
    install_docs(app)
    install_dashboard(app)  # the web dashboard at /, signed in with the same tokens
    # Added last = outermost: metrics see every answer, including a 413 from the body limit.
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    # Outermost: the server span covers every answer and is current for everything below it.
    app.add_middleware(TracingMiddleware)
    return app


def build_app(client: Client, settings: Settings, *, tokens: Sequence[str], max_body_bytes: int) -> FastAPI:
    """The app ``hutch gateway`` and ``hutch dev`` serve: the REST API plus the routers of ``settings``.

    Args:
        client: the client the API goes through; the caller closes it.
        settings: the process's settings (``hutch.toml`` routes such as ``[[webhooks]]`` come from here).
        tokens: the valid bearer tokens.
        max_body_bytes: request bodies over this size get 413.
    """
    routers: list[APIRouter] = []
    if settings.webhooks:
        # Webhook senders authenticate by signature, not bearer token; deliveries dedupe in Redis.
        routers.append(
            webhook_router(client, settings.webhooks, dedupe_redis=client._store.redis, namespace=settings.namespace)
        )
    return create_app(client, tokens=tokens, extra_routers=routers, max_body_bytes=max_body_bytes)
