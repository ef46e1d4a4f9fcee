"""Prometheus metrics of the gateway, through prometheus_client.

Request counts and durations by method, route template and status come from a pure ASGI
middleware into the app's own registry (two apps in one process count apart); the per-status
instance gauge is read from the store when ``/metrics`` is scraped; the rest is the process's
(:mod:`hutch.metrics`: the worker's families when ``hutch dev`` runs one, process and Python).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Request-duration histogram buckets, in seconds.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_UNMATCHED = "<unmatched>"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestMetrics:
    """The requests one app answered, by (method, route template, status), in :attr:`registry`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            "hutch_gateway_requests",
            "HTTP requests answered by the gateway.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self._durations = Histogram(
            "hutch_gateway_request_duration_seconds",
            "Time to answer an HTTP request.",
            ["method", "route"],
            buckets=_BUCKETS,
            registry=self.registry,
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Record one answered request."""
        self._requests.labels(method, route, str(status)).inc()
        self._durations.labels(method, route).observe(seconds)


class InstanceCounts(Collector):
    """The ``hutch_instances`` gauge (instances by workflow and status) of counts read for one scrape."""

    def __init__(self, counts: Mapping[str, Mapping[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        """The one gauge family."""
        gauge = GaugeMetricFamily(
            "hutch_instances", "Instances of each workflow by status.", labels=["workflow", "status"]
        )
        for workflow, by_status in sorted(self._counts.items()):
            for status, count in sorted(by_status.items()):
                gauge.add_metric([workflow, status], count)
        yield gauge


class MetricsMiddleware:
    """Pure ASGI middleware that counts every HTTP request by method, route template and status.

    The route template (``/api/workflows/{name}``), not the raw path, is the label, so label
    cardinality stays bounded whatever clients send; unmatched paths share one label.
    """

    def __init__(self, app: ASGIApp, metrics: RequestMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the request, then count it with its status (500 when the app raised before answering) and duration."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client sees if the app raises before answering

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            route = getattr(scope.get("route"), "path", None) or _UNMATCHED
            method = scope.get("method", "GET")
            self.metrics.observe(method if method in _METHODS else "OTHER", route, status, time.perf_counter() - start)
