"""Operational endpoints outside ``/api`` and without auth: ``/healthz``, ``/readyz``, ``/metrics``."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from hutch import Client, metrics
from hutch.broker.transports.base import Transport
from hutch.gateway.api.deps import WorkflowNames, get_client, get_workflow_names
from hutch.gateway.api.envelope import ApiError, Envelope, ErrorCode, ok
from hutch.gateway.api.errors import UNAVAILABLE_ERRORS
from hutch.gateway.api.metrics import InstanceCounts, RequestMetrics
from hutch.gateway.api.models import Health, Readiness
from hutch.gateway.api.views import instance_counts

log = logging.getLogger("gateway")

CHECK_TIMEOUT_S = 2.0

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Envelope[Health], summary="Liveness")
async def healthz() -> dict[str, Any]:
    """200 while the process serves requests; it checks nothing else."""
    return ok(Health())


@router.get(
    "/readyz",
    response_model=Envelope[Readiness],
    responses={503: {"model": Envelope[Readiness], "description": "A backend is unreachable."}},
    summary="Readiness",
)
async def readyz(client: Client = Depends(get_client)) -> Any:
    """200 when Redis answers a PING and the broker answers; 503 naming the failed check otherwise."""
    results = await asyncio.gather(_check_redis(client), _check_broker(client))
    checks = {"redis": results[0], "broker": results[1]}
    ready = all(v == "ok" for v in checks.values())
    body = Envelope[Readiness](
        success=ready,
        errors=[
            ApiError(code=ErrorCode.UNAVAILABLE, message=f"{name}: {outcome}")
            for name, outcome in checks.items()
            if outcome != "ok"
        ],
        result=Readiness(ready=ready, checks=checks),
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if ready else 503)


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text."}},
    summary="Prometheus metrics",
)
async def prometheus_metrics(
    request: Request, client: Client = Depends(get_client), names: WorkflowNames = Depends(get_workflow_names)
) -> Response:
    """Request counts and durations by route and status, instances by workflow and status, and the process's metrics.

    The process's are every family of :mod:`hutch.metrics` (a worker's too, in ``hutch dev``),
    merged across processes when ``PROMETHEUS_MULTIPROC_DIR`` is set.
    """
    request_metrics: RequestMetrics = request.app.state.metrics
    scraped: InstanceCounts | None = None
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            counts = await instance_counts(client, await names.all())
    except UNAVAILABLE_ERRORS as exc:
        # A scrape still reports the other metrics while the store is down.
        log.warning("metrics: instance counts unavailable: %r", exc)
    else:
        scraped = InstanceCounts({wf: c.model_dump(by_alias=True) for wf, c in counts.items()})
    body = metrics.exposition(request_metrics.registry, scraped=scraped)
    return Response(body, media_type=metrics.CONTENT_TYPE)


async def _check_redis(client: Client) -> str:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            await client._store.redis.ping()
    except Exception as exc:  # any failure means "not ready", never a 500
        log.warning("readyz: Redis check failed: %r", exc)
        return f"unreachable ({type(exc).__name__})"
    return "ok"


async def _check_broker(client: Client) -> str:
    transport = getattr(client._dispatcher, "transport", None)
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            if isinstance(transport, Transport):
                await transport.ping()
    except Exception as exc:
        log.warning("readyz: broker check failed: %r", exc)
        return f"unreachable ({type(exc).__name__})"
    return "ok"
