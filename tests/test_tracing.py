"""OpenTelemetry traces: one trace per instance, from the HTTP request (or queue message) that created it.

The spans go to an in-memory exporter on a tracer provider installed for the test; the
``reset_otel_tracer_provider`` fixture puts OpenTelemetry's set-once global back afterwards (the
way temporalio's tests/conftest.py does), so no other test sees a provider.
"""

from __future__ import annotations

import asyncio
import http.server
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import aio_pika
import httpx
import hutch
import pytest
from hutch import EventTimeoutError, Status, WorkflowEntrypoint, tracing
from hutch.consumers import tracing as worker_tracing
from hutch.consumers.queue_trigger import QueueTrigger
from hutch.gateway.app import create_app
from hutch.triggers import QueueConsumerSpec
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util._once import Once

from tests.conftest import MakeClient
from tests.helpers import eventually, unique, wait_status, wait_step

TOKEN = "trace-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
RUNS: dict[str, int] = {}  # executions of run() per instance: more than one means it was replayed


def _reset_globals() -> None:
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None


@pytest.fixture
def reset_otel_tracer_provider() -> Iterator[None]:
    """OpenTelemetry's global tracer provider is set-once: reset it around the test."""
    _reset_globals()
    yield
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()
    _reset_globals()


@pytest.fixture
def spans(reset_otel_tracer_provider: None) -> InMemorySpanExporter:
    """Every span ended during the test, exported synchronously to memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)  # the fixture shuts it down
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


def new_traceparent() -> tuple[str, int, int]:
    """A caller's W3C traceparent, with its trace id and span id as ints."""
    trace_id, span_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    return f"00-{trace_id}-{span_id}-01", int(trace_id, 16), int(span_id, 16)


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def named(spans: list[ReadableSpan], name: str, **match: Any) -> list[ReadableSpan]:
    """Spans called ``name`` whose attributes have these values (``hutch_step_name`` → ``hutch.step.name``)."""
    wanted = {key.replace("_", "."): value for key, value in match.items()}
    return [s for s in spans if s.name == name and all(attrs(s).get(k) == v for k, v in wanted.items())]


def one(spans: list[ReadableSpan], name: str, **match: Any) -> ReadableSpan:
    found = named(spans, name, **match)
    assert len(found) == 1, f"expected one {name} {match}, got {[(s.name, attrs(s)) for s in found]}"
    return found[0]


class Traced(WorkflowEntrypoint):
    """Evicted twice (an event wait, a sleep), so the end of it runs on replays; one step fails once."""

    async def run(self, event, step):
        RUNS[event.instance_id] = RUNS.get(event.instance_id, 0) + 1
        first = await step.do("first", lambda: 1)
        await step.wait_for_event("gate", "go", timeout="1 minute")
        await step.sleep("nap", 0.05)

        def flaky(ctx):
            if ctx.attempt == 1:
                raise ConnectionError("card processor down")
            return 2

        second = await step.do("flaky", flaky, config={"retries": {"limit": 2, "delay": 0.01}})
        early = await step.wait_for_event("early", "early", timeout="1 minute")
        return await step.do("last", lambda: first + second + early.payload["n"])


async def test_one_trace_from_the_http_request_across_broker_hops_and_replays(
    make_client: MakeClient, spans: InMemorySpanExporter
) -> None:
    client = await make_client({"traced": Traced})
    # Keep nothing warm: the sleep evicts the instance too, so it resumes by replay.
    client.runtime_worker.orchestrator.warm_horizon_ms = 0
    app = create_app(client, tokens=[TOKEN])
    iid = unique("order")
    caller, caller_trace, caller_span = new_traceparent()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gateway", headers=AUTH) as http:
        created = await http.post("/api/workflows/traced/instances", json={"id": iid}, headers={"traceparent": caller})
        assert created.status_code == 201, created.text
        instance = await client.workflow("traced").get(iid)
        await wait_status(instance, Status.WAITING)  # at the gate: "early" is buffered, deterministically
        sent = await http.post(f"/api/workflows/traced/instances/{iid}/events/early", json={"n": 5})
        assert sent.status_code == 200, sent.text

        async def buffered() -> bool:
            return bool(named(list(spans.get_finished_spans()), "event.deliver", hutch_outcome="buffered"))

        await eventually(buffered)
        go = await http.post(f"/api/workflows/traced/instances/{iid}/events/go")
        assert go.status_code == 200, go.text
        final = await instance.wait(timeout=30)
    assert final.status is Status.COMPLETE and final.output == 8
    assert RUNS[iid] >= 3, "the gate and the sleep evicted the instance: its end ran on replays"

    # workflow.run is the last span of the instance (emitted once the end committed).
    await eventually(lambda: _has(spans, "workflow.run"))
    finished = list(spans.get_finished_spans())
    in_trace = [s for s in finished if s.context.trace_id == caller_trace]
    of_instance = [s for s in finished if attrs(s).get("hutch.instance.id") == iid]
    assert of_instance and all(s.context.trace_id == caller_trace for s in of_instance), "one trace per instance"

    # gateway → client: the server span continues the caller; workflow.create is its child.
    server = [s for s in in_trace if s.kind is SpanKind.SERVER]
    assert len(server) == 1, [(s.name, attrs(s), s.parent) for s in server]
    request = server[0]
    assert request.parent is not None and request.parent.span_id == caller_span
    assert attrs(request)["http.request.method"] == "POST"
    assert attrs(request)["url.path"] == "/api/workflows/traced/instances"
    assert attrs(request)["http.response.status_code"] == 201
    assert attrs(request)["http.route"].endswith("/workflows/{name}/instances")
    assert request.name == f"POST {attrs(request)['http.route']}"
    create = one(in_trace, "workflow.create", hutch_workflow_name="traced", hutch_instance_id=iid)
    assert create.kind is SpanKind.PRODUCER and create.parent is not None
    assert create.parent.span_id == request.context.span_id

    # broker → worker → steps: every worker span hangs off the stored context (workflow.create).
    worker_spans = [s for s in in_trace if s.name not in ("workflow.create",) and s.kind is not SpanKind.SERVER]
    assert {s.name for s in worker_spans} == {
        "step.do",
        "step.sleep",
        "step.wait_for_event",
        "event.deliver",
        "workflow.run",
    }
    assert all(s.parent is not None and s.parent.span_id == create.context.span_id for s in worker_spans)

    # Replays emit nothing: each live attempt exactly once.
    attempts = Counter(
        (attrs(s)["hutch.step.name"], attrs(s)["hutch.step.count"], attrs(s)["hutch.step.attempt"])
        for s in named(in_trace, "step.do")
    )
    assert attempts == {("first", 1, 1): 1, ("flaky", 1, 1): 1, ("flaky", 1, 2): 1, ("last", 1, 1): 1}
    failed = one(in_trace, "step.do", hutch_step_name="flaky", hutch_step_attempt=1)
    assert failed.status.status_code is StatusCode.ERROR
    assert attrs(failed)["hutch.outcome"] == "error" and attrs(failed)["error.type"] == "ConnectionError"
    assert "card processor down" in (failed.status.description or "")
    assert [e.name for e in failed.events] == ["exception"]
    retried = one(in_trace, "step.do", hutch_step_name="flaky", hutch_step_attempt=2)
    assert retried.status.status_code is StatusCode.UNSET and attrs(retried)["hutch.outcome"] == "success"

    # Sleeps and waits: issue to resolution.
    nap = one(in_trace, "step.sleep", hutch_step_name="nap", hutch_outcome="elapsed")
    assert nap.end_time is not None and nap.start_time is not None
    assert nap.end_time - nap.start_time >= 50_000_000
    gate = one(in_trace, "step.wait_for_event", hutch_step_name="gate", hutch_outcome="received")
    assert attrs(gate)["hutch.event.type"] == "go"
    one(in_trace, "step.wait_for_event", hutch_step_name="early", hutch_outcome="received")

    # Events: buffered, later taken from the buffer, and delivered straight to a wait; each
    # delivery links to the request that sent it (a trace of its own).
    one(in_trace, "event.deliver", hutch_event_type="early", hutch_outcome="buffered")
    one(in_trace, "event.deliver", hutch_event_type="early", hutch_outcome="delivered", hutch_step_name="early")
    delivered = one(in_trace, "event.deliver", hutch_event_type="go", hutch_outcome="delivered")
    go_request = [s for s in finished if s.kind is SpanKind.SERVER and attrs(s)["url.path"].endswith("/events/go")]
    assert len(go_request) == 1 and go_request[0].context.trace_id != caller_trace
    assert [link.context.trace_id for link in delivered.links] == [go_request[0].context.trace_id]

    # workflow.run: once, spanning the instance's start to its end.
    run = one(in_trace, "workflow.run", hutch_outcome="complete", hutch_instance_run=0)
    steps = named(in_trace, "step.do")
    assert run.start_time is not None and run.end_time is not None
    assert run.start_time <= min(s.start_time or 0 for s in steps)
    # Epoch-millisecond stamps: allow a millisecond of rounding against the SDK's nanosecond clock.
    assert run.end_time + 1_000_000 >= max(s.end_time or 0 for s in steps)


async def _has(spans: InMemorySpanExporter, name: str) -> bool:
    return any(s.name == name for s in spans.get_finished_spans())


class Nested(WorkflowEntrypoint):
    """Step bodies (async and sync, the latter on the thread pool) trace their own work."""

    async def run(self, event, step):
        user = trace.get_tracer("user-code")

        async def charge() -> str:
            with user.start_as_current_span("charge card"):
                return "charged"

        def ship() -> str:
            with user.start_as_current_span("ship parcel"):
                return "shipped"

        return [await step.do("charge", charge), await step.do("ship", ship)]


async def test_a_step_body_runs_inside_its_step_span(spans: InMemorySpanExporter) -> None:
    async with hutch.connect({"nested": Nested}) as client:
        instance = await client.workflow("nested").create()
        assert (await instance.wait(timeout=10)).output == ["charged", "shipped"]
    finished = list(spans.get_finished_spans())
    for child, step in (("charge card", "charge"), ("ship parcel", "ship")):
        inner = one(finished, child)
        outer = one(finished, "step.do", hutch_step_name=step)
        assert inner.parent is not None and inner.parent.span_id == outer.context.span_id
        assert inner.context.trace_id == outer.context.trace_id


class Abandoned(WorkflowEntrypoint):
    """A wait that times out, then a step that never ends (the instance is terminated)."""

    async def run(self, event, step):
        try:
            await step.wait_for_event("approval", "approve", timeout=0.05)
        except EventTimeoutError:
            pass
        return await step.do("hang", asyncio.Event().wait)


async def test_timeouts_and_terminations_have_their_outcomes(spans: InMemorySpanExporter) -> None:
    async with hutch.connect({"abandoned": Abandoned}) as client:
        instance = await client.workflow("abandoned").create()
        await wait_step(instance, "hang")  # its attempt is running
        await instance.terminate()
        assert (await instance.status()).status is Status.TERMINATED
        await eventually(lambda: _has(spans, "workflow.run"))
        await eventually(lambda: _has(spans, "step.do"))  # the cancelled attempt's span ends as it unwinds
    finished = list(spans.get_finished_spans())
    assert len({s.context.trace_id for s in finished}) == 1
    wait = one(finished, "step.wait_for_event", hutch_step_name="approval", hutch_outcome="timeout")
    assert attrs(wait)["error.type"] == "EventTimeoutError"
    hang = one(finished, "step.do", hutch_step_name="hang")
    assert attrs(hang)["hutch.outcome"] == "cancelled"
    run = one(finished, "workflow.run", hutch_outcome="terminated")
    assert run.status.status_code is StatusCode.UNSET


class Failing(WorkflowEntrypoint):
    async def run(self, event, step):
        def boom() -> None:
            raise ValueError("no such customer")

        return await step.do("lookup", boom, config={"retries": {"limit": 0}})


async def test_an_errored_run_has_error_status(spans: InMemorySpanExporter) -> None:
    async with hutch.connect({"failing": Failing}) as client:
        instance = await client.workflow("failing").create()
        assert (await instance.wait(timeout=10)).status is Status.ERRORED
        await eventually(lambda: _has(spans, "workflow.run"))
    finished = list(spans.get_finished_spans())
    run = one(finished, "workflow.run", hutch_outcome="errored")
    assert run.status.status_code is StatusCode.ERROR and attrs(run)["error.type"] == "ValueError"
    lookup = one(finished, "step.do", hutch_step_name="lookup")
    assert lookup.status.status_code is StatusCode.ERROR


class Echo(WorkflowEntrypoint):
    async def run(self, event, step):
        return await step.do("echo", lambda: dict(event.payload))


async def test_without_a_tracer_provider_nothing_is_recorded_but_the_caller_context_is_kept(
    reset_otel_tracer_provider: None,
) -> None:
    assert not tracing.enabled()
    async with hutch.connect({"echo": Echo}) as client:
        app = create_app(client, tokens=[TOKEN])
        caller, _, _ = new_traceparent()
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway", headers=AUTH) as http:
            created = await http.post(
                "/api/workflows/echo/instances", json={"id": "e-1"}, headers={"traceparent": caller}
            )
            assert created.status_code == 201, created.text
            plain = await http.post("/api/workflows/echo/instances", json={"id": "e-2"})
            assert plain.status_code == 201, plain.text
        for iid in ("e-1", "e-2"):
            assert (await (await client.workflow("echo").get(iid)).wait(timeout=10)).status is Status.COMPLETE
        store = client._store
        partition = client._partition("echo", "e-1")
        meta = await store.read_meta(partition, "echo", "e-1")
        assert meta is not None and meta["trace"] == caller  # a tracing worker would continue it
        meta = await store.read_meta(client._partition("echo", "e-2"), "echo", "e-2")
        assert meta is not None and "trace" not in meta


def test_an_instance_without_a_stored_context_still_gets_one_trace() -> None:
    derived = worker_tracing.instance_traceparent(None, "order", "o-1", 1_700_000_000_000)
    assert derived == worker_tracing.instance_traceparent(None, "order", "o-1", 1_700_000_000_000)
    assert derived != worker_tracing.instance_traceparent(None, "order", "o-1", 1_700_000_000_001)
    context = trace.get_current_span(tracing.parent_context(derived)).get_span_context()
    assert context.is_valid and context.is_remote and context.trace_flags.sampled
    stored, _, _ = new_traceparent()
    assert worker_tracing.instance_traceparent(stored, "order", "o-1", 0) == stored


async def test_a_queue_message_trace_continues_into_its_instance(spans: InMemorySpanExporter, amqp_url: str) -> None:
    queue = unique("traced-orders")
    producer, producer_trace, producer_span = new_traceparent()
    connection = await aio_pika.connect_robust(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        async with hutch.connect({"order": Echo}) as client:
            spec = QueueConsumerSpec(queue=queue, workflow="order", id="order-{body.orderId}")
            async with QueueTrigger(client, [spec], amqp_url=amqp_url):
                message = aio_pika.Message(b'{"orderId": 7}', content_type="application/json")
                message.headers = {"traceparent": producer}
                await channel.default_exchange.publish(message, routing_key=queue)
                instance = await eventually(lambda: _instance(client, "order-7"), timeout=15)
                assert (await instance.wait(timeout=10)).output == {"orderId": 7}
                await eventually(lambda: _has(spans, "workflow.run"))
        for name in (queue, f"{queue}.dead-letter"):
            await channel.queue_delete(name)
    finally:
        await connection.close()
    finished = list(spans.get_finished_spans())
    consumer = one(finished, f"process {queue}")
    assert consumer.kind is SpanKind.CONSUMER and consumer.parent is not None
    assert consumer.parent.span_id == producer_span and consumer.context.trace_id == producer_trace
    assert attrs(consumer)["messaging.destination.name"] == queue
    create = one(finished, "workflow.create", hutch_instance_id="order-7")
    assert create.parent is not None and create.parent.span_id == consumer.context.span_id
    for name in ("step.do", "workflow.run"):
        assert one(finished, name, hutch_instance_id="order-7").context.trace_id == producer_trace


async def _instance(client: hutch.Client, iid: str) -> hutch.Instance | None:
    try:
        return await client.workflow("order").get(iid)
    except hutch.InstanceNotFound:
        return None


class _Collector(http.server.BaseHTTPRequestHandler):
    received: list[tuple[str, bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    """A stand-in OTLP/HTTP collector on loopback: (its endpoint, the requests it received)."""
    received: list[tuple[str, bytes]] = []
    handler = type("Collector", (_Collector,), {"received": received})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_configure_from_env_exports_over_otlp_http(
    reset_otel_tracer_provider: None,
    collector: tuple[str, list[tuple[str, bytes]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    endpoint, received = collector
    for name in (
        "OTEL_SERVICE_NAME",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_SDK_DISABLED",
        "OTEL_TRACES_EXPORTER",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    assert tracing.configure_from_env("hutch-test") is False  # no endpoint: nothing installed
    assert not tracing.enabled()

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    assert tracing.configure_from_env("hutch-test") is True
    assert tracing.configure_from_env("hutch-test") is False  # once: the installed provider stays
    tracer = tracing.tracer()
    assert tracer is not None
    with tracer.start_as_current_span("probe"):
        pass
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider) and provider.force_flush(5_000)

    assert [path for path, _ in received] == ["/v1/traces"]
    request = ExportTraceServiceRequest.FromString(received[0][1])
    (resource_spans,) = request.resource_spans
    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert resource["service.name"] == "hutch-test"
    names = [span.name for scope in resource_spans.scope_spans for span in scope.spans]
    assert names == ["probe"]


def test_otel_service_name_overrides_the_default(
    reset_otel_tracer_provider: None,
    collector: tuple[str, list[tuple[str, bytes]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    endpoint, _ = collector
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "billing-worker")
    assert tracing.configure_from_env("hutch-worker") is True
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    assert provider.resource.attributes["service.name"] == "billing-worker"


async def test_the_step_span_is_a_no_op_without_a_provider(reset_otel_tracer_provider: None) -> None:
    with worker_tracing.step_attempt("00-" + "1" * 32 + "-" + "2" * 16 + "-01", "wf", "i", "s", 1, 1) as span:
        assert span is None
    with tracing.creating("wf", 1) as created:
        assert created.span is None and created.traceparent is None
