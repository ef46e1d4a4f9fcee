"""Prometheus metrics of the gateway, in the text exposition format (version 0.0.4).

Request counts and durations by method, route template and status come from a pure ASGI
middleware; the per-status instance gauge is read from the store when ``/metrics`` is scraped.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Request-duration histogram buckets, in seconds.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_UNMATCHED = "<unmatched>"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestMetrics:
    """Counters of the requests the gateway answered, keyed by (method, route template, status)."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str], int] = defaultdict(int)
        self.durations: dict[tuple[str, str], list[float]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Record one answered request."""
        self.requests[(method, route, str(status))] += 1
        hist = self.durations.get((method, route))
        if hist is None:
            # One cumulative counter per bucket, then +Inf count and the sum.
            hist = self.durations[(method, route)] = [0.0] * (len(_BUCKETS) + 2)
        for i, bound in enumerate(_BUCKETS):
            if seconds <= bound:
                hist[i] += 1
        hist[-2] += 1
        hist[-1] += seconds

    def render(self) -> list[str]:
        """The exposition lines of the request metrics."""
        lines = [
            "# HELP hutch_gateway_requests_total HTTP requests answered by the gateway.",
            "# TYPE hutch_gateway_requests_total counter",
        ]
        for (method, route, status), count in sorted(self.requests.items()):
            labels = _labels({"method": method, "route": route, "status": status})
            lines.append(f"hutch_gateway_requests_total{labels} {count}")
        lines += [
            "# HELP hutch_gateway_request_duration_seconds Time to answer an HTTP request.",
            "# TYPE hutch_gateway_request_duration_seconds histogram",
        ]
        for (method, route), hist in sorted(self.durations.items()):
            base = {"method": method, "route": route}
            for bound, cumulative in zip(_BUCKETS, hist, strict=False):
                labels = _labels({**base, "le": _number(bound)})
                lines.append(f"hutch_gateway_request_duration_seconds_bucket{labels} {_number(cumulative)}")
            lines.append(
                f"hutch_gateway_request_duration_seconds_bucket{_labels({**base, 'le': '+Inf'})} {_number(hist[-2])}"
            )
            lines.append(f"hutch_gateway_request_duration_seconds_count{_labels(base)} {_number(hist[-2])}")
            lines.append(f"hutch_gateway_request_duration_seconds_sum{_labels(base)} {hist[-1]!r}")
        return lines


def render_instances(counts: Mapping[str, Mapping[str, int]]) -> list[str]:
    """The exposition lines of the instance gauge: workflow → status → count."""
    lines = [
        "# HELP hutch_instances Instances of each workflow by status.",
        "# TYPE hutch_instances gauge",
    ]
    for workflow, by_status in sorted(counts.items()):
        for status, count in sorted(by_status.items()):
            lines.append(f"hutch_instances{_labels({'workflow': workflow, 'status': status})} {count}")
    return lines


def exposition(*groups: Iterable[str]) -> str:
    """Join metric groups into one exposition document."""
    return "".join(line + "\n" for group in groups for line in group)


def _labels(labels: Mapping[str, str]) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


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
