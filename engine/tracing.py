"""OpenTelemetry tracing: one trace per instance, from the request that created it to its end.

How an instance's trace holds together across processes, broker hops and replays:

* **Create.** :meth:`WorkflowClient.create <engine.client.WorkflowClient.create>` runs inside a
  ``workflow.create`` span (a child of the caller's span: the gateway's server span, a queue
  message's consumer span, or the user's own) and stores that span's W3C ``traceparent`` in the
  instance's meta (field ``trace``). The start message carries the same context in its headers.
* **Every later transition**, on whichever worker owns the instance, after any replay or
  restart, parents its spans on that stored context — so an instance is one trace.
* **Replay is quiet.** Spans come only from live work: a step attempt that really runs
  (``step.do``, around the attempt), and the history records a committed transition appended
  (sleeps and waits resolved, events delivered or buffered, the run finished). Replaying
  history appends nothing, so it emits nothing.

Spans and their attributes (names built here, and only here):

=======================  ===============================================================
``workflow.create``      the client's create call (PRODUCER); parent of the worker spans
``step.do``              one attempt of a step, live, with the step body's work as children
``step.sleep``           issue to resolution of a ``sleep``/``sleep_until`` (explicit times)
``step.wait_for_event``  issue to resolution of a wait: received, timed out or cancelled
``event.deliver``        an event sent (start) to delivered to a wait or buffered (end),
                         linked to the span that sent it
``workflow.run``         started to ended of one run, emitted once when it finishes
=======================  ===============================================================

Custom attributes live under ``hutch.*`` (OpenTelemetry's naming rules for non-standard
attributes); standard ones (``error.type``, ``http.*``, ``url.*``, ``messaging.*``) use the
semantic-convention names.

This module holds the names, the tracer, context propagation and the client's ``workflow.create``
span; the spans a worker emits (``step.do``, those of committed transitions, a queue trigger's
CONSUMER span) are the consumers layer's, in :mod:`hutch.consumers.tracing`.

With no SDK ``TracerProvider`` installed, tracing costs a provider lookup per call site: no span
objects are built. :func:`configure_from_env` installs an OTLP/HTTP exporter when
``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.semconv.attributes import (
    client_attributes,
    error_attributes,
    exception_attributes,
    http_attributes,
    server_attributes,
    url_attributes,
    user_agent_attributes,
)
from opentelemetry.trace import Span, SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

log = logging.getLogger("hutch.tracing")

# ---------------------------------------------------------------------------- names
SCOPE = "hutch"
"""The instrumentation scope of every Hutch span."""

SPAN_CREATE = "workflow.create"
SPAN_RUN = "workflow.run"
SPAN_STEP = "step.do"
SPAN_SLEEP = "step.sleep"
SPAN_WAIT = "step.wait_for_event"
SPAN_EVENT = "event.deliver"

WORKFLOW_NAME = "hutch.workflow.name"
INSTANCE_ID = "hutch.instance.id"
INSTANCE_COUNT = "hutch.instance.count"  # instances one create call made (a batch)
INSTANCE_RUN = "hutch.instance.run"  # 0, then +1 per restart
STEP_NAME = "hutch.step.name"
STEP_COUNT = "hutch.step.count"  # the n-th call of a step with this name
STEP_ATTEMPT = "hutch.step.attempt"
OUTCOME = "hutch.outcome"
EVENT_TYPE = "hutch.event.type"
EVENT_ID = "hutch.event.id"
TRACE_META_FIELD = "trace"  # the instance meta field holding its traceparent

ERROR_TYPE = error_attributes.ERROR_TYPE
EXCEPTION_TYPE = exception_attributes.EXCEPTION_TYPE
EXCEPTION_MESSAGE = exception_attributes.EXCEPTION_MESSAGE
HTTP_REQUEST_METHOD = http_attributes.HTTP_REQUEST_METHOD
HTTP_RESPONSE_STATUS_CODE = http_attributes.HTTP_RESPONSE_STATUS_CODE
HTTP_ROUTE = http_attributes.HTTP_ROUTE
URL_PATH = url_attributes.URL_PATH
URL_SCHEME = url_attributes.URL_SCHEME
CLIENT_ADDRESS = client_attributes.CLIENT_ADDRESS
SERVER_ADDRESS = server_attributes.SERVER_ADDRESS
SERVER_PORT = server_attributes.SERVER_PORT
USER_AGENT_ORIGINAL = user_agent_attributes.USER_AGENT_ORIGINAL
# Messaging conventions are still "development" in the semconv package (not importable as stable).
MESSAGING_SYSTEM = "messaging.system"
MESSAGING_OPERATION_TYPE = "messaging.operation.type"
MESSAGING_OPERATION_NAME = "messaging.operation.name"
MESSAGING_DESTINATION_NAME = "messaging.destination.name"
MESSAGING_MESSAGE_ID = "messaging.message.id"

# Outcomes (values of ``hutch.outcome``).
OK = "success"
ERROR = "error"
CANCELLED = "cancelled"
ELAPSED = "elapsed"
RECEIVED = "received"
TIMED_OUT = "timeout"
DELIVERED = "delivered"
BUFFERED = "buffered"

_W3C = TraceContextTextMapPropagator()


def _version() -> str:
    try:
        return metadata.version("hutch")
    except metadata.PackageNotFoundError:
        return "0"


# ---------------------------------------------------------------------------- tracer
_UNKNOWN = object()
# The API loads a provider named by this variable on first use; it is read at start-up.
_NO_ENV_PROVIDER = "OTEL_PYTHON_TRACER_PROVIDER" not in os.environ


class _TracerCache:
    """The Hutch tracer of the current global provider, or None while only the API's no-op is set.

    Looked up on every use (cheap) rather than bound once: tests install and reset providers,
    and an API ``ProxyTracer`` would stay bound to the first real provider forever.
    """

    __slots__ = ("provider", "tracer")

    def __init__(self) -> None:
        self.provider: object = None
        self.tracer: Tracer | None = None

    def get(self) -> Tracer | None:
        if getattr(trace, "_TRACER_PROVIDER", _UNKNOWN) is None and _NO_ENV_PROVIDER:
            # No provider was set, in code or by the environment: tracing is off. Checked first
            # because get_tracer_provider() reads os.environ on every call (~1 µs, several per step).
            # A future API without this attribute just takes the general path below.
            return None
        provider = trace.get_tracer_provider()
        if provider is not self.provider:
            real = not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)
            self.tracer = provider.get_tracer(SCOPE, _version()) if real else None
            self.provider = provider
        return self.tracer


_cache = _TracerCache()


def tracer() -> Tracer | None:
    """Hutch's tracer, or None when no SDK tracer provider is installed (tracing is off)."""
    return _cache.get()


def enabled() -> bool:
    """Whether spans are recorded in this process (an SDK tracer provider is installed)."""
    return _cache.get() is not None


def configure_from_env(service_name: str) -> bool:
    """Install an OTLP/HTTP span exporter when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set; call once at start-up.

    The long-running commands (``hutch worker``, ``hutch gateway``, ``hutch dev``) call this. The
    exporter reads the standard ``OTEL_EXPORTER_OTLP_*`` variables (endpoint, headers, timeout,
    compression); ``OTEL_SERVICE_NAME`` overrides ``service_name``, ``OTEL_RESOURCE_ATTRIBUTES``
    adds resource attributes and ``OTEL_TRACES_SAMPLER`` picks the sampler. Spans are batched
    and flushed when the process exits.

    Args:
        service_name: the ``service.name`` resource attribute unless ``OTEL_SERVICE_NAME`` is set.

    Returns:
        True when an exporter was installed; False when no endpoint is set, the SDK is disabled
        (``OTEL_SDK_DISABLED=true``, ``OTEL_TRACES_EXPORTER=none``) or the process already has a
        tracer provider (the application's own setup wins).
    """
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not endpoint:
        return False
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        log.info("a tracer provider is already installed; not adding Hutch's OTLP exporter")
        return False
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol and protocol.strip().lower() != "http/protobuf":
        log.warning("OTEL_EXPORTER_OTLP_PROTOCOL=%s is not supported; exporting with http/protobuf", protocol)

    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    name = os.environ.get("OTEL_SERVICE_NAME", "").strip() or service_name
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    log.info("exporting traces over OTLP/HTTP to %s as service %r", endpoint, name)
    return True


# ---------------------------------------------------------------------------- context
def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span, if there is a valid one (recorded or only propagated)."""
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    # The global propagator, as broker.dispatch uses for message headers: the stored context and
    # the start message's header are then the same by construction.
    propagate.inject(carrier)
    return carrier.get("traceparent")


@functools.lru_cache(maxsize=4096)
def parent_context(traceparent: str | None) -> Context:
    """A context whose (remote) parent is ``traceparent``; an empty context (a root) when it is None or invalid."""
    if not traceparent:
        return Context()
    return _W3C.extract({"traceparent": traceparent}, context=Context())


def extract(headers: Mapping[str, Any]) -> Context:
    """The context propagated in message or request headers (str or bytes values; names in any case)."""
    carrier: dict[str, str] = {}
    fields = propagate.get_global_textmap().fields
    for key, value in headers.items():
        name = key.lower()
        if name in fields:
            carrier[name] = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return propagate.extract(carrier, context=Context())


# ---------------------------------------------------------------------------- create
@dataclass(slots=True)
class CreateTrace:
    """What :func:`creating` yields: the context to store with the new instances."""

    span: Span | None
    traceparent: str | None

    def created(self, instance_ids: Sequence[str]) -> None:
        """Name the instances the call created on its span."""
        if self.span is None:
            return
        if len(instance_ids) == 1:
            self.span.set_attribute(INSTANCE_ID, instance_ids[0])
        self.span.set_attribute(INSTANCE_COUNT, len(instance_ids))


@contextlib.contextmanager
def creating(workflow: str, requested: int) -> Iterator[CreateTrace]:
    """Wrap a create call in a ``workflow.create`` span (when tracing) and yield the context to store.

    With tracing off, the caller's propagated context (e.g. an incoming ``traceparent`` the
    gateway made current) is still stored, so workers that do trace continue it.
    """
    tracer = _cache.get()
    if tracer is None:
        yield CreateTrace(None, current_traceparent())
        return
    attributes: dict[str, AttributeValue] = {WORKFLOW_NAME: workflow, INSTANCE_COUNT: requested}
    with tracer.start_as_current_span(SPAN_CREATE, kind=SpanKind.PRODUCER, attributes=attributes) as span:
        yield CreateTrace(span, current_traceparent())
