"""Owner-side spans: what a worker emits while it runs instances (the engine's :mod:`hutch.tracing` names them).

The client's ``workflow.create`` span and the span and attribute names are the engine's; the
spans here come from the consumers layer, which runs the instances: ``step.do`` around a live
attempt, the spans of what a committed transition recorded (sleeps, waits, events, the run's
end), and the CONSUMER span around a queue trigger's message. They read the store's
:class:`~hutch.store.base.Transition`, which is why they live here and not in the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Any, Protocol

from hutch.history import CancelCommand, Kind, Record, Resolution, TimerCommand
from hutch.serialization import unpack
from hutch.status import FINISHED
from hutch.store.base import Transition
from hutch.tracing import (
    BUFFERED,
    CANCELLED,
    DELIVERED,
    ELAPSED,
    ERROR,
    ERROR_TYPE,
    EVENT_ID,
    EVENT_TYPE,
    EXCEPTION_MESSAGE,
    EXCEPTION_TYPE,
    INSTANCE_ID,
    INSTANCE_RUN,
    MESSAGING_DESTINATION_NAME,
    MESSAGING_MESSAGE_ID,
    MESSAGING_OPERATION_NAME,
    MESSAGING_OPERATION_TYPE,
    MESSAGING_SYSTEM,
    OK,
    OUTCOME,
    RECEIVED,
    SPAN_EVENT,
    SPAN_RUN,
    SPAN_SLEEP,
    SPAN_STEP,
    SPAN_WAIT,
    STEP_ATTEMPT,
    STEP_COUNT,
    STEP_NAME,
    TIMED_OUT,
    WORKFLOW_NAME,
    extract,
    parent_context,
)
from hutch.tracing import enabled as enabled  # the orchestrator asks before building span inputs
from hutch.tracing import tracer as current_tracer
from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.util.types import AttributeValue

_NO_SPAN: AbstractContextManager[None] = contextlib.nullcontext()
_MS = 1_000_000  # nanoseconds per millisecond: OpenTelemetry times are epoch nanoseconds


# ---------------------------------------------------------------------------- context
def instance_traceparent(stored: str | None, workflow: str, instance_id: str, created_ms: int) -> str:
    """The traceparent an instance's spans continue: the stored one, else one derived from its identity.

    An instance created by a process that was not tracing has no stored context; deriving the
    trace and parent span ids from (workflow, instance id, creation time) still puts every span
    of the instance, from every worker, in one trace (whose root span is then missing).
    """
    if stored:
        return stored
    digest = hashlib.blake2b(f"{workflow}\x00{instance_id}\x00{created_ms}".encode(), digest_size=24).digest()
    return f"00-{digest[:16].hex()}-{digest[16:].hex()}-01"


def _link(traceparent: str | None) -> list[Link] | None:
    if not traceparent:
        return None
    span_context = trace.get_current_span(parent_context(traceparent)).get_span_context()
    return [Link(span_context)] if span_context.is_valid else None


# ---------------------------------------------------------------------------- queue triggers
@contextlib.contextmanager
def consuming(queue: str, headers: Mapping[str, Any] | None, message_id: str | None) -> Iterator[None]:
    """A CONSUMER span around handling one message of a user's queue, continuing the producer's trace."""
    tracer = current_tracer()
    parent = extract(headers or {})
    if tracer is None:
        # Not recording, but the producer's context still becomes current: the instance stores it.
        token = context_api.attach(parent)
        try:
            yield
        finally:
            context_api.detach(token)
        return
    attributes: dict[str, str] = {
        MESSAGING_SYSTEM: "rabbitmq",
        MESSAGING_OPERATION_TYPE: "process",
        MESSAGING_OPERATION_NAME: "process",
        MESSAGING_DESTINATION_NAME: queue,
    }
    if message_id:
        attributes[MESSAGING_MESSAGE_ID] = message_id
    with tracer.start_as_current_span(
        f"process {queue}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
    ):
        yield


# ---------------------------------------------------------------------------- step attempts
def step_attempt(
    traceparent: str | None, workflow: str, instance_id: str, name: str, count: int, attempt: int
) -> AbstractContextManager[Span | None]:
    """The ``step.do`` span of one live attempt, current while the step body runs (None when not tracing).

    Call :func:`attempt_outcome` with the attempt's error (or None) before leaving it.
    """
    tracer = current_tracer()
    if tracer is None:
        return _NO_SPAN
    return _step_span(tracer, traceparent, workflow, instance_id, name, count, attempt)


@contextlib.contextmanager
def _step_span(
    tracer: Tracer, traceparent: str | None, workflow: str, instance_id: str, name: str, count: int, attempt: int
) -> Iterator[Span]:
    attributes: dict[str, AttributeValue] = {
        WORKFLOW_NAME: workflow,
        INSTANCE_ID: instance_id,
        STEP_NAME: name,
        STEP_COUNT: count,
        STEP_ATTEMPT: attempt,
    }
    with tracer.start_as_current_span(
        SPAN_STEP,
        context=parent_context(traceparent),
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except asyncio.CancelledError:
            # Terminated, restarted or shut down while running: no outcome was reported.
            span.set_attribute(OUTCOME, CANCELLED)
            raise


def attempt_outcome(span: Span | None, error: Mapping[str, str] | None) -> None:
    """Record an attempt's outcome: success, or the error record (``name``, ``message``) with error status."""
    if span is None:
        return
    if error is None:
        span.set_attribute(OUTCOME, OK)
        return
    _fail(span, error)


def _fail(span: Span, error: Mapping[str, Any]) -> None:
    name = str(error.get("name") or "Error")
    message = str(error.get("message") or "")
    span.set_attribute(OUTCOME, ERROR)
    span.set_attribute(ERROR_TYPE, name)
    span.add_event("exception", {EXCEPTION_TYPE: name, EXCEPTION_MESSAGE: message})
    span.set_status(Status(StatusCode.ERROR, f"{name}: {message}" if message else name))


# ---------------------------------------------------------------------------- committed transitions
class TracedInstance(Protocol):
    """What :func:`emit_committed` reads of an instance's owner-side state (``consumers`` actor)."""

    workflow: str
    instance_id: str
    run_no: int
    created_ms: int
    trace: str
    history: list[Record]
    appended: int  # how many records at the end of history the committed transition added


def emit_committed(
    instance: TracedInstance,
    transition: Transition,
    deliveries: Iterable[tuple[object, Mapping[str, str]]] = (),
    *,
    now_ms: int,
) -> None:
    """Emit the spans of what a committed transition recorded: resolved sleeps and waits, events, the run's end.

    Call after the commit succeeded (a rejected transition is recomputed and must not emit twice).
    ``instance.history`` must end with the ``instance.appended`` records the transition added.

    Args:
        instance: the instance whose transition committed.
        transition: the committed transition.
        deliveries: the (message, headers) the transition consumed, to link events to their senders.
        now_ms: the owner's clock when the transition was computed (the end of instant spans).
    """
    tracer = current_tracer()
    if tracer is None:
        return
    n = instance.appended
    records = instance.history[-n:] if n else []
    finished = transition.status_to in FINISHED
    if not records and not transition.events_push and not finished:
        return
    parent = parent_context(instance.trace)
    base = {WORKFLOW_NAME: instance.workflow, INSTANCE_ID: instance.instance_id}
    senders = _senders(deliveries)
    for record in records:
        if record["k"] == "res" and record["ref"] in ("sleep", "wait"):
            _timer_span(tracer, parent, base, instance.history, record)
            if "ev" in record:
                _event_span(tracer, parent, base, record["ev"], record["t"], senders, record)
        elif record["k"] == "cancel" and record["ref"] in ("sleep", "wait"):
            _timer_span(tracer, parent, base, instance.history, record)
    for raw in transition.events_push:
        event = unpack(raw)
        _event_span(tracer, parent, base, event, records[-1]["t"] if records else now_ms, senders, None)
    if finished:
        _run_span(tracer, parent, base, instance, transition)


def _senders(deliveries: Iterable[tuple[object, Mapping[str, str]]]) -> dict[str, str]:
    """The ``traceparent`` each delivered message was sent with, by message id (messages without either left out)."""
    senders: dict[str, str] = {}
    for message, headers in deliveries:
        message_id = getattr(message, "id", None)
        traceparent = headers.get("traceparent")
        if message_id and traceparent:
            senders[message_id] = traceparent
    return senders


def _timer_span(
    tracer: Tracer, parent: Context, base: dict[str, Any], history: list[Record], record: Resolution | CancelCommand
) -> None:
    ref, name, count = record["ref"], record["n"], record["c"]
    issued = _find_issue(history, ref, name, count)
    end_ms = record["t"]
    start_ms: int = issued.get("t") or end_ms if issued else end_ms
    attributes = {**base, STEP_NAME: name, STEP_COUNT: count}
    error_type = None
    if record["k"] == "cancel":
        outcome = CANCELLED
    elif ref == "sleep":
        outcome = ELAPSED
    elif record["ok"]:
        outcome = RECEIVED
    else:
        outcome = TIMED_OUT
        error_type = str((record.get("err") or {}).get("name") or "EventTimeoutError")
    attributes[OUTCOME] = outcome
    if issued is not None and issued["k"] == "wait" and "type" in issued:
        attributes[EVENT_TYPE] = issued["type"]
    span = tracer.start_span(
        SPAN_SLEEP if ref == "sleep" else SPAN_WAIT, context=parent, attributes=attributes, start_time=start_ms * _MS
    )
    if error_type is not None:
        span.set_attribute(ERROR_TYPE, error_type)
    span.end(end_time=max(end_ms, start_ms) * _MS)


def _find_issue(history: list[Record], kind: Kind, name: str, count: int) -> TimerCommand | None:
    # Backwards: the command is usually a few records before its resolution.
    record: Record  # mypy types reversed() of a TypedDict union as Any
    for record in reversed(history):
        if (record["k"] == "sleep" or record["k"] == "wait") and (record["k"], record["n"], record["c"]) == (
            kind,
            name,
            count,
        ):
            return record
    return None


def _event_span(
    tracer: Tracer,
    parent: Context,
    base: dict[str, Any],
    event: Mapping[str, Any],
    end_ms: int,
    senders: Mapping[str, str],
    wait: Resolution | None,
) -> None:
    event_id = str(event.get("id", ""))
    attributes = {**base, EVENT_TYPE: str(event.get("type", "")), EVENT_ID: event_id}
    if wait is None:
        attributes[OUTCOME] = BUFFERED
    else:
        attributes.update({OUTCOME: DELIVERED, STEP_NAME: wait["n"], STEP_COUNT: wait["c"]})
    start_ms = min(int(event.get("ts") or end_ms), end_ms)
    span = tracer.start_span(
        SPAN_EVENT,
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes=attributes,
        links=_link(senders.get(event_id)),
        start_time=start_ms * _MS,
    )
    span.end(end_time=end_ms * _MS)


def _run_span(tracer: Tracer, parent: Context, base: dict[str, Any], instance: TracedInstance, tx: Transition) -> None:
    started = instance.created_ms
    record: Record  # mypy types reversed() of a TypedDict union as Any
    for record in reversed(instance.history):
        if record["k"] == "life" and record["what"] in ("started", "restarted"):
            started = record["t"]
            break
    ended = tx.meta.get("ended")
    end_ms = ended if isinstance(ended, int) else (instance.history[-1]["t"] if instance.history else started)
    attributes = {**base, INSTANCE_RUN: instance.run_no, OUTCOME: tx.status_to}
    span = tracer.start_span(SPAN_RUN, context=parent, attributes=attributes, start_time=started * _MS)
    if tx.status_to == "errored":
        raw = tx.meta.get("error")
        error = unpack(raw) if isinstance(raw, bytes) else None
        _fail(span, error if isinstance(error, dict) else {"name": "Error"})
        span.set_attribute(OUTCOME, tx.status_to)
    span.end(end_time=max(end_ms, started) * _MS)
