"""The gateway's REST API: every endpoint and every error code, with the envelope checked.

Two layers:

* over real HTTP: uvicorn on a free loopback port, serving a gateway whose remote client talks
  to a worker on the real RabbitMQ and Redis (the deployed topology, in one process);
* in process: ``httpx.ASGITransport`` against the app over an embedded runtime, for the edge
  cases (auth, body limits, odd JSON, unserializable outputs, backend outages, metrics format).
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import hutch
import pytest
import uvicorn
from fastapi import APIRouter, Request
from hutch import Client, InstanceNotFound, NonRetryableError, WorkflowEntrypoint
from hutch.broker.dispatch import BrokerDispatcher
from hutch.broker.transports.rabbitmq import RabbitMQTransport
from hutch.clock import Clock
from hutch.config import Limits
from hutch.consumers.runtime import start_distributed
from hutch.events import WorkflowEvent
from hutch.gateway.api import ErrorCode, TokenSet, get_client, require_token
from hutch.gateway.app import create_app
from hutch.gateway.server import GatewayServer
from hutch.gateway.settings import BODY_HEADROOM_BYTES, GatewaySettings
from hutch.settings import Settings
from hutch.step import WorkflowStep
from hutch.versions import version_of
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.conftest import drop_namespace
from tests.helpers import eventually, unique
from tests.prometheus import samples, value

TOKEN = "current-token"
OLD_TOKEN = "previous-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MiB = 1024 * 1024
JSON = {"content-type": "application/json"}


# ----------------------------------------------------------------------------- workflows
class Approval(WorkflowEntrypoint):
    """Prepares, waits for an ``approve`` event, returns both."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        prepared = await step.do("prepare", lambda: {"order": event.payload["order"]})
        approval = await step.wait_for_event("approval", "approve", timeout="1 hour")
        return {"prepared": prepared, "approved": approval.payload}


class Flaky(WorkflowEntrypoint):
    """One step that fails its first attempt, then succeeds."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        def attempt(ctx: Any) -> str:
            if ctx.attempt == 1:
                raise ConnectionError("upstream hiccup")
            return "ok"

        return await step.do("call upstream", attempt, config={"retries": {"limit": 2, "delay": 0.01}})


class Failing(WorkflowEntrypoint):
    """Fails for good on its first step."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        def refuse() -> None:
            raise NonRetryableError("card declined")

        return await step.do("charge", refuse)


class Sleeper(WorkflowEntrypoint):
    """Sleeps for an hour: an instance to pause, resume, terminate and restart."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        await step.sleep("nap", "1 hour")
        return "woke"


class Odd(WorkflowEntrypoint):
    """Returns values JSON cannot hold as they are."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        deep: list[Any] = []
        for _ in range(300):
            deep = [deep]
        return await step.do(
            "odd", lambda: {"raw": b"\x00\xff", "nan": float("nan"), "inf": float("inf"), "deep": deep}
        )


WORKFLOWS: dict[str, type[WorkflowEntrypoint]] = {
    "approval": Approval,
    "flaky": Flaky,
    "failing": Failing,
    "sleeper": Sleeper,
}


# ----------------------------------------------------------------------------- envelope checks
def assert_ok(response: httpx.Response, status: int = 200) -> Any:
    """A successful envelope with the given status; returns ``result``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["success"] is True and body["errors"] == [] and body["messages"] == [], body
    return body["result"]


def assert_error(response: httpx.Response, status: int, code: ErrorCode, *fragments: str) -> str:
    """An error envelope with the given status and code whose message contains every fragment."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"success", "errors", "messages", "result"}, body
    assert body["success"] is False and body["result"] is None and body["messages"] == [], body
    assert body["errors"] and all(e["code"] == code for e in body["errors"]), body
    message = " | ".join(e["message"] for e in body["errors"])
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


async def wait_http_status(http: httpx.AsyncClient, path: str, *statuses: str, timeout: float = 10.0) -> Any:
    """Poll ``GET path/status`` until the instance is in one of ``statuses``; returns the result."""

    async def check() -> Any:
        result = assert_ok(await http.get(f"{path}/status"))
        return result if result["status"] in statuses else None

    return await eventually(check, timeout=timeout, interval=0.02)


# ----------------------------------------------------------------------------- real HTTP
@asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port; yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_config=None, log_level="warning", access_log=False, lifespan="off", ws="none")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="uvicorn")

    async def started() -> bool:
        if task.done():
            task.result()  # surface a start-up failure
        return server.started

    try:
        await eventually(started, timeout=10)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


@dataclass
class Deployment:
    """A gateway over real HTTP, its remote client, and the worker behind it."""

    url: str
    http: httpx.AsyncClient
    client: Client


@pytest.fixture
async def deployment(redis_url: str, amqp_url: str) -> AsyncIterator[Deployment]:
    namespace = unique("gw")
    settings = Settings(partitions=2, redis_url=redis_url, amqp_url=amqp_url, namespace=namespace, heartbeat_s=0.2)
    worker_client, worker = await start_distributed(
        WORKFLOWS, settings=settings, limits=Limits(), clock=Clock(), resources={}, binding_names={}
    )
    try:
        # The gateway has its own connection, as a separate `hutch gateway` process would.
        async with hutch.connect(WORKFLOWS, settings=settings) as client:
            app = create_app(client, tokens=[TOKEN, OLD_TOKEN])
            async with serve(app) as url, httpx.AsyncClient(base_url=url, headers=AUTH, timeout=30) as http:
                yield Deployment(url, http, client)
    finally:
        await worker.shutdown(timeout=0)
        await worker.transport.delete_topology()
        await worker_client.close()
        await drop_namespace(namespace)


async def test_http_create_describe_event_and_finish(deployment: Deployment) -> None:
    http = deployment.http
    created = assert_ok(
        await http.post("/api/workflows/approval/instances", json={"id": "order-1", "params": {"order": 1}}), 201
    )
    assert created == {"id": "order-1", "workflow": "approval", "status": "queued"}
    assert_error(
        await http.post("/api/workflows/approval/instances", json={"id": "order-1"}),
        409,
        ErrorCode.INSTANCE_EXISTS,
        "'order-1'",
        "already exists",
    )
    # Cloudflare's field name for the id works too; no id at all gets a random one.
    assert assert_ok(
        await http.post("/api/workflows/approval/instances", json={"instance_id": "order-2", "params": {"order": 2}}),
        201,
    )["id"] == ("order-2")
    anonymous = assert_ok(await http.post("/api/workflows/sleeper/instances"), 201)
    assert len(anonymous["id"]) == 36

    path = "/api/workflows/approval/instances/order-1"
    await wait_http_status(http, path, "waiting")
    detail = assert_ok(await http.get(path))
    assert detail["id"] == "order-1" and detail["workflow"] == "approval" and detail["status"] == "waiting"
    assert detail["params"] == {"order": 1} and detail["trigger"] == {"source": "api"}
    assert detail["queued"] and detail["start"] and detail["end"] is None and detail["output"] is None
    assert detail["version"] == version_of(Approval) and detail["waiting_for_version"] is None
    assert detail["patches"] == []
    listed = assert_ok(await http.get("/api/workflows/approval/instances?status=waiting"))
    assert {row["id"]: row["version"] for row in listed}["order-1"] == version_of(Approval)
    prepare, approval = detail["steps"]
    assert prepare["type"] == "step" and prepare["name"] == "prepare" and prepare["count"] == 1
    assert prepare["success"] is True and prepare["output"] == {"order": 1}
    assert [(a["attempt"], a["success"]) for a in prepare["attempts"]] == [(1, True)]
    assert prepare["config"]["retries"]["limit"] == 5
    assert approval["type"] == "waitForEvent" and approval["event_type"] == "approve" and approval["end"] is None

    sent = assert_ok(await http.post(f"{path}/events/approve", json={"by": "ana"}))
    assert sent == {"instance_id": "order-1", "type": "approve", "instance_finished": False}
    final = await wait_http_status(http, path, "complete")
    assert final == {
        "status": "complete",
        "output": {"prepared": {"order": 1}, "approved": {"by": "ana"}},
        "error": None,
    }
    detail = assert_ok(await http.get(path))
    assert detail["end"] is not None and detail["steps"][1]["outcome"] == "received"

    # A finished instance: events are accepted but reported as ignored; terminate/pause/resume are 409.
    late = assert_ok(await http.post(f"{path}/events/approve", content=b""))
    assert late["instance_finished"] is True
    for action in ("terminate", "pause", "resume"):
        assert_error(
            await http.patch(f"{path}/status", json={"status": action}),
            409,
            ErrorCode.ILLEGAL_TRANSITION,
            f"cannot {action} instance 'order-1'",
            "'complete'",
        )

    # A retried step shows both attempts; a failed one the error.
    flaky = assert_ok(await http.post("/api/workflows/flaky/instances", json={"id": "f-1"}), 201)
    await wait_http_status(http, f"/api/workflows/flaky/instances/{flaky['id']}", "complete")
    (step,) = assert_ok(await http.get("/api/workflows/flaky/instances/f-1"))["steps"]
    assert [(a["attempt"], a["success"]) for a in step["attempts"]] == [(1, False), (2, True)]
    assert step["attempts"][0]["error"] == {"name": "ConnectionError", "message": "upstream hiccup"}
    assert_ok(await http.post("/api/workflows/failing/instances", json={"id": "x-1"}), 201)
    failed = await wait_http_status(http, "/api/workflows/failing/instances/x-1", "errored")
    assert failed["error"] == {"name": "NonRetryableError", "message": "card declined"}


async def test_http_lifecycle_changes(deployment: Deployment) -> None:
    http = deployment.http
    assert_ok(await http.post("/api/workflows/sleeper/instances", json={"id": "nap-1"}), 201)
    path = "/api/workflows/sleeper/instances/nap-1"
    await wait_http_status(http, path, "waiting")

    changed = assert_ok(await http.patch(f"{path}/status", json={"status": "pause"}))
    assert changed["status"] == "paused" and changed["applied"] is True and changed["timestamp"].endswith("Z")
    assert assert_ok(await http.patch(f"{path}/status", json={"status": "resume"}))["status"] in ("running", "waiting")
    assert assert_ok(await http.patch(f"{path}/status", json={"status": "terminate"}))["status"] == "terminated"
    for action in ("terminate", "pause", "resume"):  # none applies to a finished instance
        assert_error(
            await http.patch(f"{path}/status", json={"status": action}),
            409,
            ErrorCode.ILLEGAL_TRANSITION,
            f"cannot {action} instance 'nap-1' since it is in status 'terminated'",
        )
    assert_ok(await http.patch(f"{path}/status", json={"status": "restart"}))
    await wait_http_status(http, path, "waiting")
    detail = assert_ok(await http.get(path))
    assert [s["name"] for s in detail["steps"]] == ["nap"] and detail["steps"][0]["type"] == "sleep"
    assert detail["steps"][0]["due"] is not None


@asynccontextmanager
async def gateway_without_workers(redis_url: str, amqp_url: str) -> AsyncIterator[Deployment]:
    """A gateway over real HTTP on a deployment with no worker: every lifecycle change stays queued.

    Its client waits 0.2 s for a worker to apply a change, instead of the default 10 s.
    """
    namespace = unique("idle")
    settings = Settings(partitions=2, redis_url=redis_url, amqp_url=amqp_url, namespace=namespace)
    try:
        async with hutch.connect(WORKFLOWS, settings=settings) as client:
            try:
                client.control_timeout = 0.2
                app = create_app(client, tokens=[TOKEN])
                async with serve(app) as url, httpx.AsyncClient(base_url=url, headers=AUTH, timeout=30) as http:
                    yield Deployment(url, http, client)
            finally:
                dispatcher = client._dispatcher
                assert isinstance(dispatcher, BrokerDispatcher) and isinstance(dispatcher.transport, RabbitMQTransport)
                await dispatcher.transport.delete_topology()
    finally:
        await drop_namespace(namespace)


async def test_http_lifecycle_change_no_worker_applied_is_202_accepted(redis_url: str, amqp_url: str) -> None:
    async with gateway_without_workers(redis_url, amqp_url) as deployment:
        http = deployment.http
        assert_ok(await http.post("/api/workflows/sleeper/instances", json={"id": "idle-1"}), 201)
        path = "/api/workflows/sleeper/instances/idle-1"

        for action in ("pause", "terminate", "restart"):
            response = await http.patch(f"{path}/status", json={"status": action})
            assert response.status_code == 202, response.text
            body = response.json()
            assert body["success"] is True and body["errors"] == [], body
            assert body["result"]["status"] == "queued" and body["result"]["applied"] is False
            (message,) = body["messages"]
            assert f"no worker applied the {action} of instance 'idle-1' yet; the request stays queued" in message
        # A resume of an instance that is not paused has nothing to do: applied, no worker needed.
        assert assert_ok(await http.patch(f"{path}/status", json={"status": "resume"}))["applied"] is True
        assert assert_ok(await http.get(f"{path}/status"))["status"] == "queued"


async def test_http_listing_batch_and_workflows(deployment: Deployment) -> None:
    http = deployment.http
    assert_ok(await http.post("/api/workflows/sleeper/instances", json={"id": "b-0"}), 201)
    batch = await http.post(
        "/api/workflows/sleeper/instances/batch", json=[{"id": f"b-{n}", "params": {"n": n}} for n in range(5)]
    )
    body = batch.json()
    assert [r["id"] for r in assert_ok(batch, 201)] == ["b-1", "b-2", "b-3", "b-4"]
    assert body["result_info"] == {"count": 4, "skipped": ["b-0"]}
    assert_error(
        await http.post("/api/workflows/sleeper/instances/batch", json=[{} for _ in range(101)]),
        400,
        ErrorCode.INVALID_INPUT,
        "101",
        "limit is 100",
    )
    assert_error(
        await http.post("/api/workflows/sleeper/instances/batch", json=[{"id": "dup"}, {"id": "dup"}]),
        400,
        ErrorCode.INVALID_INPUT,
        "'dup' appears twice",
    )

    # Pages of two, newest first, following the cursor to the end.
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(10):
        params: dict[str, Any] = {"per_page": 2, **({"cursor": cursor} if cursor else {})}
        page = await http.get("/api/workflows/sleeper/instances", params=params)
        rows = assert_ok(page)
        info = page.json()["result_info"]
        assert info["per_page"] == 2 and info["count"] == len(rows) <= 2
        assert all(r["workflow"] == "sleeper" and r["created_on"] for r in rows)
        seen += [r["id"] for r in rows]
        cursor = info["cursor"]
        if cursor is None:
            break
    assert sorted(seen) == [f"b-{n}" for n in range(5)] and seen[0] in ("b-1", "b-2", "b-3", "b-4")

    await wait_http_status(http, "/api/workflows/sleeper/instances/b-3", "waiting")
    assert_ok(await http.patch("/api/workflows/sleeper/instances/b-3/status", json={"status": "terminate"}))
    terminated = assert_ok(await http.get("/api/workflows/sleeper/instances", params={"status": "terminated"}))
    assert [r["id"] for r in terminated] == ["b-3"] and terminated[0]["ended_on"] is not None

    workflows = assert_ok(await http.get("/api/workflows"))
    assert sorted(w["name"] for w in workflows) == sorted(WORKFLOWS)
    sleeper = assert_ok(await http.get("/api/workflows/sleeper"))
    assert sleeper["name"] == "sleeper" and sleeper["instances"]["terminated"] == 1
    assert sum(sleeper["instances"].values()) == 5


async def test_http_error_codes(deployment: Deployment) -> None:
    http = deployment.http
    base = "/api/workflows/approval/instances"
    assert_ok(await http.post(base, json={"id": "e-1", "params": {"order": 1}}), 201)

    # 401: no token, a wrong one, another scheme; the previous token still works (rotation).
    async with httpx.AsyncClient(base_url=deployment.url) as anonymous:
        response = await anonymous.get("/api/workflows")
        assert_error(response, 401, ErrorCode.UNAUTHORIZED, "missing bearer token")
        assert response.headers["www-authenticate"].startswith("Bearer")
        bad = await anonymous.get("/api/workflows", headers={"Authorization": "Bearer nope"})
        assert_error(bad, 401, ErrorCode.UNAUTHORIZED, "invalid bearer token")
        basic = await anonymous.get("/api/workflows", headers={"Authorization": "Basic dTpw"})
        assert_error(basic, 401, ErrorCode.UNAUTHORIZED)
        assert_ok(await anonymous.get("/api/workflows", headers={"Authorization": f"Bearer {OLD_TOKEN}"}))
        # Auth comes first: an unauthenticated request learns nothing about what exists or what is wrong.
        assert_error(await anonymous.get("/api/workflows/nope"), 401, ErrorCode.UNAUTHORIZED)
        assert_error(await anonymous.get("/api/workflows/x/instances?per_page=0"), 401, ErrorCode.UNAUTHORIZED)
        garbage = await anonymous.post(base, content=b"{", headers={"content-type": "application/json"})
        assert_error(garbage, 401, ErrorCode.UNAUTHORIZED)

    # 404: unknown workflow, instance, route.
    assert_error(await http.get("/api/workflows/nope"), 404, ErrorCode.WORKFLOW_NOT_FOUND, "'nope'")
    assert_error(await http.post("/api/workflows/nope/instances", json={}), 404, ErrorCode.WORKFLOW_NOT_FOUND)
    assert_error(await http.get(f"{base}/missing"), 404, ErrorCode.INSTANCE_NOT_FOUND, "'missing'")
    assert_error(await http.get(f"{base}/missing/status"), 404, ErrorCode.INSTANCE_NOT_FOUND)
    assert_error(
        await http.patch(f"{base}/missing/status", json={"status": "pause"}), 404, ErrorCode.INSTANCE_NOT_FOUND
    )
    assert_error(await http.post(f"{base}/missing/events/approve", json=1), 404, ErrorCode.INSTANCE_NOT_FOUND)
    assert_error(
        await http.get("/api/nothing-here"), 404, ErrorCode.NOT_FOUND, "no route matches GET /api/nothing-here"
    )

    # 400: rules of ids, names and cursors, with the field and the rule.
    assert_error(await http.get(f"{base}/bad%20id"), 400, ErrorCode.INVALID_INPUT, "instance id 'bad id' must match")
    assert_error(await http.post(base, json={"id": "no spaces"}), 400, ErrorCode.INVALID_INPUT, "instance id")
    assert_error(await http.post(base, json={"id": "x" * 101}), 400, ErrorCode.INVALID_INPUT, "limit is 100")
    assert_error(await http.get("/api/workflows/bad%20name"), 400, ErrorCode.INVALID_INPUT, "workflow name")
    assert_error(await http.get(base, params={"cursor": "garbage"}), 400, ErrorCode.INVALID_INPUT, "cursor")
    assert_error(await http.post(base, json={"params": 2**70}), 400, ErrorCode.INVALID_INPUT, "not serializable")

    # 409 covered with the lifecycle; 413: a declared length over 1 MiB, and a chunked body that grows past it.
    big = json.dumps({"params": "x" * MiB}).encode()
    assert_error(
        await http.post(base, content=big, headers={"content-type": "application/json"}),
        413,
        ErrorCode.PAYLOAD_TOO_LARGE,
        "1048576 bytes",
    )

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"x" * (128 * 1024)

    assert_error(await http.post(f"{base}/e-1/events/approve", content=chunks()), 413, ErrorCode.PAYLOAD_TOO_LARGE)

    # 422: the request does not match the schema.
    assert_error(
        await http.post(base, content=b"{not json", headers={"content-type": "application/json"}),
        422,
        ErrorCode.VALIDATION_FAILED,
        "not valid JSON",
    )
    assert_error(await http.post(base, json={"id": 5}), 422, ErrorCode.VALIDATION_FAILED, "body.id")
    assert_error(await http.post(base, json={"idd": "x"}), 422, ErrorCode.VALIDATION_FAILED, "body.idd")
    assert_error(await http.post(f"{base}/batch", json={"id": "x"}), 422, ErrorCode.VALIDATION_FAILED, "body")
    assert_error(
        await http.patch(f"{base}/e-1/status", json={"status": "explode"}), 422, ErrorCode.VALIDATION_FAILED, "status"
    )
    assert_error(await http.get(base, params={"per_page": 0}), 422, ErrorCode.VALIDATION_FAILED, "query.per_page")
    assert_error(await http.get(base, params={"status": "sleepy"}), 422, ErrorCode.VALIDATION_FAILED, "query.status")
    assert_error(await http.post(f"{base}/e-1/events/approve", content=b"{"), 422, ErrorCode.VALIDATION_FAILED)
    response = await http.delete(base)
    assert_error(response, 405, ErrorCode.METHOD_NOT_ALLOWED)
    assert "GET" in response.headers["allow"]

    # The gateway is still healthy after all that, and nothing was created by the rejected requests.
    rows = assert_ok(await http.get(base))
    assert [r["id"] for r in rows] == ["e-1"]


async def test_http_probes_metrics_and_schema(deployment: Deployment) -> None:
    async with httpx.AsyncClient(base_url=deployment.url) as anonymous:
        assert assert_ok(await anonymous.get("/healthz")) == {"status": "ok"}
        ready = assert_ok(await anonymous.get("/readyz"))
        assert ready == {"ready": True, "checks": {"redis": "ok", "broker": "ok"}}

        assert_ok(await deployment.http.post("/api/workflows/sleeper/instances", json={"id": "m-1"}), 201)
        await wait_http_status(deployment.http, "/api/workflows/sleeper/instances/m-1", "waiting")
        assert_error(await deployment.http.get("/api/workflows/nope"), 404, ErrorCode.WORKFLOW_NOT_FOUND)
        metrics = await anonymous.get("/metrics")
        assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
        page = samples(metrics.text)
        requests = "hutch_gateway_requests_total"
        assert value(page, requests, method="POST", route="/api/workflows/{name}/instances", status="201") == 1
        assert value(page, requests, method="GET", route="/api/workflows/{name}", status="404") == 1
        assert value(page, "hutch_instances", workflow="sleeper", status="waiting") == 1
        assert ("hutch_instances", frozenset({("workflow", "approval"), ("status", "waiting")})) in page
        assert value(page, "hutch_instances", workflow="approval", status="waiting") == 0

        schema = (await anonymous.get("/openapi.json")).json()
        assert schema["components"]["securitySchemes"]["bearer"] == {
            "type": "http",
            "scheme": "bearer",
            "description": schema["components"]["securitySchemes"]["bearer"]["description"],
        }
        assert "/api/workflows/{name}/instances/{instance_id}/events/{event_type}" in schema["paths"]


# ----------------------------------------------------------------------------- in process
@asynccontextmanager
async def in_process(
    workflows: dict[str, type[WorkflowEntrypoint]] | None = None, **options: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Client, Any]]:
    """An embedded runtime, the app over it, and an authenticated in-process HTTP client."""
    limits = options.pop("limits", Limits())
    async with hutch.connect(workflows or {**WORKFLOWS, "odd": Odd}, limits=limits) as client:
        app = create_app(client, tokens=options.pop("tokens", [TOKEN]), **options)
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway", headers=AUTH) as http:
            yield http, client, app


def test_token_set_rules() -> None:
    tokens = TokenSet(["a-token", " spaced "])
    assert tokens.matches("a-token") and tokens.matches("spaced")
    assert not tokens.matches("a-toke") and not tokens.matches("") and not tokens.matches("a-token ")
    assert not tokens.matches("\u00e9t\u00e9")  # non-ASCII compares as bytes, no TypeError
    assert "a-token" not in repr(tokens)
    for bad in ([], [""], ["ok", "  "]):
        with pytest.raises(ValueError, match="token"):
            TokenSet(bad)
    with pytest.raises(ValueError, match="list of strings"):
        TokenSet("one-token")


async def test_create_app_refuses_to_run_without_tokens() -> None:
    async with hutch.connect(WORKFLOWS) as client:
        with pytest.raises(ValueError, match="at least one API token"):
            create_app(client, tokens=[])


def test_gateway_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUTCH_GATEWAY_TOKENS", "new-one, old-one,,")
    monkeypatch.setenv("HUTCH_GATEWAY_PORT", "9000")
    settings = GatewaySettings()
    assert settings.token_values() == ["new-one", "old-one"] and settings.port == 9000
    assert "new-one" not in repr(settings)
    assert settings.host == "127.0.0.1" and settings.max_body_bytes is None


def test_the_body_limit_follows_the_payload_limit_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """A payload the engine accepts fits the gateway's body with room for the rest of the request."""
    monkeypatch.delenv("HUTCH_GATEWAY_MAX_BODY_BYTES", raising=False)
    assert GatewaySettings().body_limit(Limits()) == MiB + BODY_HEADROOM_BYTES
    assert GatewaySettings().body_limit(Limits(max_payload_bytes=16 * MiB)) == 16 * MiB + BODY_HEADROOM_BYTES
    monkeypatch.setenv("HUTCH_GATEWAY_MAX_BODY_BYTES", "2048")
    assert GatewaySettings().body_limit(Limits(max_payload_bytes=16 * MiB)) == 2048


async def test_body_limit_applies_before_parsing() -> None:
    async with in_process(max_body_bytes=100) as (http, _, app):
        base = "/api/workflows/approval/instances"
        assert_error(await http.post(base, json={"params": "x" * 200}), 413, ErrorCode.PAYLOAD_TOO_LARGE, "100 bytes")
        assert_ok(await http.post(base, json={"params": {"order": 1}}), 201)

        # A raw ASGI request with no Content-Length, streamed in pieces: refused once it passes the limit.
        pieces = [b'{"params": "', b"y" * 60, b"y" * 60, b'"}']
        received: list[bytes] = []

        async def receive() -> dict[str, Any]:
            body = pieces.pop(0)
            received.append(body)
            return {"type": "http.request", "body": body, "more_body": bool(pieces)}

        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": base,
            "raw_path": base.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [(b"authorization", f"Bearer {TOKEN}".encode()), (b"content-type", b"application/json")],
            "server": ("gateway", 80),
            "client": ("127.0.0.1", 1),
        }
        await app(scope, receive, send)
        assert sent[0]["status"] == 413 and len(received) == 3  # the last piece was never read
        assert json.loads(sent[1]["body"])["errors"][0]["code"] == ErrorCode.PAYLOAD_TOO_LARGE

        # A Content-Length that is not a number is a 400, not a crash.
        bad_length: list[dict[str, Any]] = []
        bad_scope = {**scope, "headers": [*scope["headers"], (b"content-length", b"abc")]}

        async def collect(message: dict[str, Any]) -> None:
            bad_length.append(message)

        await app(bad_scope, receive, collect)
        assert bad_length[0]["status"] == 400


async def test_json_edge_cases_are_client_errors() -> None:
    async with in_process() as (http, _, _):
        base = "/api/workflows/approval/instances"
        headers = {"content-type": "application/json"}
        for raw in (b'{"params": NaN}', b'{"params": [1e400]}', b'{"params": {"a": -Infinity}}'):
            assert_error(
                await http.post(base, content=raw, headers=headers), 422, ErrorCode.VALIDATION_FAILED, "finite"
            )
        # A lone surrogate is valid JSON but not a storable string: a 400 whose message is still valid UTF-8.
        message = assert_error(
            await http.post(base, content=b'{"params": "\\ud800"}', headers=headers), 400, ErrorCode.INVALID_INPUT
        )
        assert "\\ud800" in message
        # Deeper than Python's parser goes: the same rule named, not "There was an error parsing the body".
        deep = b'{"params": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        for path in (base, f"{base}/anyone/events/approve"):
            response = await http.post(path, content=deep, headers=headers)
            assert_error(response, 422, ErrorCode.VALIDATION_FAILED, "body: nested too deeply", "at most 64 levels")
        # Nesting is capped (64 levels), so every stored value can be shown and replayed.
        too_deep = b'{"params": ' + b"[" * 65 + b"]" * 65 + b"}"
        assert_error(
            await http.post(base, content=too_deep, headers=headers), 422, ErrorCode.VALIDATION_FAILED, "64 levels"
        )
        deepest = b'{"params": {"order": ' + b"[" * 63 + b"]" * 63 + b"}}"
        assert_ok(await http.post(base, content=deepest, headers=headers), 201)
        # A JSON body without a Content-Type header is still read as JSON.
        created = assert_ok(await http.post(base, content=b'{"id": "plain", "params": {"order": 3}}'), 201)
        assert created["id"] == "plain"
        # Event payloads: anything JSON, empty is null; NaN and syntax errors are 422.
        await eventually(lambda: _status_is(http, f"{base}/plain", "waiting"))
        ev = f"{base}/plain/events/approve"
        assert_error(await http.post(ev, content=b"[NaN]"), 422, ErrorCode.VALIDATION_FAILED, "finite")
        assert_error(await http.post(ev, content=b"\xff\xfe{"), 422, ErrorCode.VALIDATION_FAILED, "not valid JSON")
        assert_ok(await http.post(ev, content=b'"yes"', headers={"content-type": "text/plain"}))
        final = await _wait_complete(http, f"{base}/plain")
        assert final["output"]["approved"] == "yes"


async def _status_is(http: httpx.AsyncClient, path: str, status: str) -> bool:
    return bool(assert_ok(await http.get(f"{path}/status"))["status"] == status)


async def _wait_complete(http: httpx.AsyncClient, path: str) -> Any:
    return await wait_http_status(http, path, "complete")


async def test_outputs_json_cannot_hold_are_still_served() -> None:
    async with in_process() as (http, _, _):
        assert_ok(await http.post("/api/workflows/odd/instances", json={"id": "o-1"}), 201)
        final = await _wait_complete(http, "/api/workflows/odd/instances/o-1")
        deep = final["output"].pop("deep")
        assert final["output"] == {"raw": "AP8=", "nan": None, "inf": None}
        levels = 0
        while isinstance(deep, list):
            (deep,) = deep
            levels += 1
        # Cut a few levels short of 200 (the status and output wrap it), far short of the 300 returned.
        assert deep == "<nested deeper than 200 levels>" and 190 < levels < 200
        (step,) = assert_ok(await http.get("/api/workflows/odd/instances/o-1"))["steps"]
        assert step["output"]["raw"] == "AP8=" and step["output"]["nan"] is None


async def test_backend_outages_are_503_and_not_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    async with in_process() as (http, client, _):
        assert_ok(await http.post("/api/workflows/sleeper/instances", json={"id": "s-1"}), 201)

        async def down(*args: Any, **kwargs: Any) -> Any:
            raise RedisConnectionError("Error 111 connecting to 10.0.0.9:6379. Connection refused.")

        monkeypatch.setattr(client._store, "read_meta", down)
        monkeypatch.setattr(client._store.redis, "ping", down)
        response = await http.get("/api/workflows/sleeper/instances/s-1/status")
        assert_error(response, 503, ErrorCode.UNAVAILABLE, "retry")
        assert response.headers["retry-after"] == "1"
        assert "10.0.0.9" not in response.text

        not_ready = await http.get("/readyz")
        assert not_ready.status_code == 503
        body = not_ready.json()
        assert body["success"] is False and body["result"]["checks"]["redis"] == "unreachable (ConnectionError)"
        assert body["result"]["checks"]["broker"] == "ok" and body["errors"][0]["code"] == ErrorCode.UNAVAILABLE
        assert "10.0.0.9" not in not_ready.text
        assert assert_ok(await http.get("/healthz")) == {"status": "ok"}  # liveness does not depend on Redis

        # A transport that can say it is down (ping) is asked.
        async def broker_down() -> None:
            raise ConnectionResetError("gone")

        monkeypatch.undo()  # Redis is back
        monkeypatch.setattr(client._dispatcher.transport, "ping", broker_down, raising=False)
        not_ready = (await http.get("/readyz")).json()
        assert not_ready["result"]["checks"] == {"redis": "ok", "broker": "unreachable (ConnectionResetError)"}


async def test_extra_routers_get_errors_limits_and_metrics_but_not_bearer_auth() -> None:
    hooks = APIRouter()

    @hooks.post("/webhooks/{path}")
    async def webhook(path: str, request: Request) -> dict[str, Any]:
        body = await request.body()
        client = get_client(request)
        if path == "missing":
            raise InstanceNotFound("approval", "nobody")
        return {"path": path, "bytes": len(body), "workflows": await client.workflows()}

    async with in_process(extra_routers=[hooks], max_body_bytes=1000) as (http, _, _):
        async with httpx.AsyncClient(transport=http._transport, base_url="http://gateway") as anonymous:
            answer = await anonymous.post("/webhooks/stripe", content=b"{}")
            assert (
                answer.status_code == 200 and answer.json()["bytes"] == 2 and "approval" in answer.json()["workflows"]
            )
            assert_error(await anonymous.post("/webhooks/missing"), 404, ErrorCode.INSTANCE_NOT_FOUND, "'nobody'")
            assert_error(
                await anonymous.post("/webhooks/stripe", content=b"x" * 1001), 413, ErrorCode.PAYLOAD_TOO_LARGE
            )

            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(3):
                    yield b"x" * 600

            assert_error(await anonymous.post("/webhooks/stripe", content=chunks()), 413, ErrorCode.PAYLOAD_TOO_LARGE)
            text = (await anonymous.get("/metrics")).text
        # The declared-length refusal happens before routing, so it has no route label.
        requests = "hutch_gateway_requests_total"
        assert value(text, requests, method="POST", route="/webhooks/{path}", status="413") == 1
        assert value(text, requests, method="POST", route="<unmatched>", status="413") == 1
        assert value(text, requests, method="POST", route="/webhooks/{path}", status="404") == 1


async def test_metrics_exposition_is_well_formed() -> None:
    async with in_process() as (http, _, _):
        await http.get("/api/workflows")
        await http.get("/no/such/route/1")
        await http.get("/no/such/route/2")
        await http.request("BREW", "/api/workflows")
        text = (await http.get("/metrics")).text
    assert text.endswith("\n")
    page = samples(text)  # prometheus_client's parser reads the whole page
    requests = "hutch_gateway_requests_total"
    # Unknown paths and methods share one label each, so scrapes stay small whatever clients send.
    assert value(page, requests, method="GET", route="<unmatched>", status="404") == 2
    assert value(page, requests, method="OTHER", route="/api/workflows", status="405") == 1
    buckets = {
        dict(labels)["le"]: v
        for (name, labels), v in page.items()
        if name == "hutch_gateway_request_duration_seconds_bucket"
        and dict(labels).get("route") == "/api/workflows"
        and dict(labels).get("method") == "GET"
    }
    assert len(buckets) == 12 and buckets["+Inf"] == 1
    assert "# TYPE hutch_instances gauge" in text
    assert ("hutch_instances", frozenset({("workflow", "sleeper"), ("status", "queued")})) in page
    # The process's families are served too: every worker family of hutch.metrics, Python's and the process's.
    assert "# TYPE hutch_step_attempts_total counter" in text and "# TYPE hutch_commits_total counter" in text
    assert "python_info" in {name for name, _ in page}


async def test_unregistered_workflow_cannot_get_instances() -> None:
    async with in_process({"approval": Approval}) as (http, client, _):
        assert_error(
            await http.post("/api/workflows/sleeper/instances", json={}), 404, ErrorCode.WORKFLOW_NOT_FOUND, "'sleeper'"
        )
        assert [w["name"] for w in assert_ok(await http.get("/api/workflows"))] == ["approval"]
        assert client.limits.max_batch == 100


async def test_openapi_documents_envelopes_for_every_error() -> None:
    async with in_process() as (http, _, _):
        schema = (await http.get("/openapi.json")).json()
    api_operations = [
        (path, method, op)
        for path, ops in schema["paths"].items()
        if path.startswith("/api/")
        for method, op in ops.items()
    ]
    assert len(api_operations) == 15  # 10 + fleet.py: search, bulk start/progress/cancel, terminate all
    for path, method, op in api_operations:
        assert op["security"] == [{"bearer": []}], (path, method)
        for status in ("400", "401", "413", "422", "503"):
            ref = op["responses"][status]["content"]["application/json"]["schema"]["$ref"]
            assert ref == "#/components/schemas/ErrorEnvelope", (path, method, status)
        success = next(s for s in op["responses"] if s.startswith("2"))
        assert op["responses"][success]["content"]["application/json"]["schema"]["$ref"].startswith(
            ("#/components/schemas/Envelope", "#/components/schemas/ListEnvelope", "#/components/schemas/BatchEnvelope")
        )
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    create = schema["paths"]["/api/workflows/{name}/instances"]["post"]
    assert set(create["responses"]) >= {"201", "404", "409"}


async def test_send_event_concurrency_and_ids_checked_before_the_body() -> None:
    # Ids are checked before the body is parsed, so a bad id with a bad body is a 400, not a 422.
    async with in_process() as (http, _, _):
        assert_error(
            await http.post("/api/workflows/approval/instances/bad%20id/events/x", content=b"{"),
            400,
            ErrorCode.INVALID_INPUT,
            "instance id",
        )
        assert_ok(await http.post("/api/workflows/approval/instances", json={"id": "c-1", "params": {"order": 1}}), 201)
        # Many concurrent requests through one app: every one answered, one event taken by the wait.
        sends: list[Awaitable[httpx.Response]] = [
            http.post("/api/workflows/approval/instances/c-1/events/approve", json={"n": n}) for n in range(20)
        ]
        reads: list[Awaitable[httpx.Response]] = [http.get("/api/workflows/approval/instances/c-1") for _ in range(20)]
        responses = await asyncio.gather(*sends, *reads)
        assert all(r.status_code == 200 for r in responses)
        final = await _wait_complete(http, "/api/workflows/approval/instances/c-1")
        assert final["output"]["approved"]["n"] in range(20)


async def test_auth_can_be_switched_off_by_overriding_the_dependency() -> None:
    # What `hutch dev` does in its open mode: the token check is overridden, and then schema errors
    # are reported as such (not as 401) to requests that carry no token.
    async with in_process() as (http, _, app):
        app.dependency_overrides[require_token] = lambda: None
        async with httpx.AsyncClient(transport=http._transport, base_url="http://gateway") as anonymous:
            assert_ok(await anonymous.post("/api/workflows/sleeper/instances", json={"id": "open-1"}), 201)
            bad = await anonymous.post("/api/workflows/sleeper/instances", content=b"{", headers=JSON)
            assert_error(bad, 422, ErrorCode.VALIDATION_FAILED, "not valid JSON")


async def test_unknown_query_parameters_are_refused_not_ignored() -> None:
    # A Cloudflare client pages with `page` and filters by date; ignoring those would give it page 1
    # forever (and every instance, whatever the dates).
    async with in_process() as (http, _, _):
        base = "/api/workflows/sleeper/instances"
        assert_ok(await http.post(base, json={"id": "q-1"}), 201)
        # Cloudflare's page and date forms are implemented (issue 13), not ignored: page 2 of 1 is empty.
        assert_ok(await http.post(base, json={"id": "q-0"}), 201)
        newest = [r["id"] for r in assert_ok(await http.get(base, params={"per_page": 2}))]
        assert sorted(newest) == ["q-0", "q-1"]
        paged = await http.get(base, params={"page": 2, "per_page": 1})
        assert [r["id"] for r in assert_ok(paged)] == newest[1:]
        assert [r["id"] for r in assert_ok(await http.get(base, params={"page": 3, "per_page": 1}))] == []
        dated = await http.get(base, params={"date_start": "2024-01-01", "date_end": "2024-02-01"})
        assert assert_ok(dated) == []
        unknown = await http.get(base, params={"pages": 2})
        assert_error(unknown, 400, ErrorCode.INVALID_INPUT, "unknown query parameter 'pages'")
        # A parameter given twice is refused too: which value would win is a guess (schemathesis).
        twice = await http.get(f"{base}?status=terminated&status=complete")
        assert_error(twice, 400, ErrorCode.INVALID_INPUT, "'status' given more than once")
        # Every API route, not only listings; the token check still comes first.
        assert_error(await http.get("/api/workflows", params={"x": "1"}), 400, ErrorCode.INVALID_INPUT, "'x'")
        assert_error(await http.post(base, params={"force": "1"}, json={}), 400, ErrorCode.INVALID_INPUT, "'force'")
        async with httpx.AsyncClient(transport=http._transport, base_url="http://gateway") as anonymous:
            assert_error(await anonymous.get(base, params={"page": 2}), 401, ErrorCode.UNAUTHORIZED)
        # What the route declares still works, and an empty cursor (the schema allows it) is the first page.
        assert_ok(await http.get(base, params={"status": "terminated", "per_page": 5, "cursor": ""}))
        first = await http.get(f"{base}?cursor=")
        assert len(assert_ok(first)) == 2 and first.json()["result_info"]["cursor"] is None


async def test_405_allow_lists_every_method_the_path_takes() -> None:
    async with in_process() as (http, _, app):
        paths = app.openapi()["paths"]
        samples = {"{name}": "sleeper", "{instance_id}": "s-1", "{event_type}": "go"}
        for template, operations in paths.items():
            path = template
            for placeholder, value in samples.items():
                path = path.replace(placeholder, value)
            response = await http.request("OPTIONS", path)
            assert_error(response, 405, ErrorCode.METHOD_NOT_ALLOWED, f"method OPTIONS is not allowed on {path}")
            expected = {method.upper() for method in operations}
            if template.endswith(("/batch", "/create_or_send", "/instances/terminate")):
                expected.add("GET")  # the path is also /instances/{instance_id}: GET describes an instance 'batch'
            assert set(response.headers["allow"].split(", ")) == expected, path
        put = await http.put("/api/workflows/sleeper/instances/s-1/status")
        assert put.headers["allow"] == "GET, PATCH" and "it takes GET, PATCH" in put.json()["errors"][0]["message"]
        assert (await http.delete("/api/workflows/sleeper/instances")).headers["allow"] == "GET, POST"


async def test_open_mode_publishes_no_bearer_auth() -> None:
    # `hutch dev` without --token overrides the token check; a schema still asking for a bearer
    # token (and promising 401s) would make every client and fuzzer expect refusals that never come.
    async with in_process() as (http, _, app):
        guarded = (await http.get("/openapi.json")).json()
        assert guarded["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
        app.dependency_overrides[require_token] = lambda: None
        schema = (await http.get("/openapi.json")).json()
        assert "securitySchemes" not in schema["components"]
        operations = [op for ops in schema["paths"].values() for op in ops.values()]
        assert len(operations) == 13 + 12 + 5  # /api, Cloudflare's /client/v4 (hutch.gateway.api.cloudflare), fleet.py
        assert all("security" not in op and "401" not in op["responses"] for op in operations)
        del app.dependency_overrides[require_token]
        assert (await http.get("/openapi.json")).json() == guarded


async def test_path_parameters_are_checked_as_the_schema_says_before_any_lookup() -> None:
    async with in_process() as (http, _, app):
        long_id = "x" * 101
        # The id is invalid whether or not the workflow exists: 400 before the workflow's 404.
        for workflow in ("sleeper", "nope"):
            for suffix in ("", "/status"):
                response = await http.get(f"/api/workflows/{workflow}/instances/{long_id}{suffix}")
                assert_error(response, 400, ErrorCode.INVALID_INPUT, "is 101 characters; the limit is 100")
        assert_error(await http.get(f"/api/workflows/{'n' * 65}"), 400, ErrorCode.INVALID_INPUT, "the limit is 64")
        parameters = app.openapi()["paths"]["/api/workflows/{name}/instances/{instance_id}"]["get"]["parameters"]
        assert {p["name"]: p["schema"]["maxLength"] for p in parameters} == {"name": 64, "instance_id": 100}

    # Limits are a deployment's setting: the schema publishes the ones the client enforces.
    async with in_process(limits=Limits(max_instance_id_length=10, max_batch=3)) as (http, _, app):
        schema = app.openapi()
        parameters = schema["paths"]["/api/workflows/{name}/instances/{instance_id}"]["get"]["parameters"]
        assert {p["name"]: p["schema"]["maxLength"] for p in parameters} == {"name": 64, "instance_id": 10}
        assert schema["components"]["schemas"]["CreateInstance"]["properties"]["id"]["maxLength"] == 10
        batch = schema["paths"]["/api/workflows/{name}/instances/batch"]["post"]["requestBody"]
        assert batch["content"]["application/json"]["schema"]["maxItems"] == 3
        assert_error(await http.get(f"/api/workflows/nope/instances/{'x' * 11}"), 400, ErrorCode.INVALID_INPUT, "10")
        assert_error(await http.get(f"/api/workflows/nope/instances/{'x' * 10}"), 404, ErrorCode.WORKFLOW_NOT_FOUND)


async def test_errors_say_what_is_wrong_and_what_to_do() -> None:
    async with in_process() as (http, _, _):
        base = "/api/workflows/sleeper/instances"
        # Integers beyond msgpack's 64 bits: "too large", not "type int is not serializable; return ... int".
        for body in ({"params": 2**64}, {"params": {"n": [-(2**63) - 1]}}):
            message = assert_error(await http.post(base, json=body), 400, ErrorCode.INVALID_INPUT, "is too large")
            assert "-2**63 and 2**64 - 1" in message and "type int" not in message
        huge = b'{"params": ' + b"9" * 5000 + b"}"  # over Python's 4300-digit parsing limit
        assert_error(await http.post(base, content=huge, headers=JSON), 400, ErrorCode.INVALID_INPUT, "too large")
        assert_ok(await http.post(base, json={"id": "e-1", "params": 2**64 - 1}), 201)
        event = f"{base}/e-1/events/go"
        assert_error(await http.post(event, json=2**64), 400, ErrorCode.INVALID_INPUT, "integer", "is too large")
        assert_error(await http.post(event, content=b"9" * 5000), 400, ErrorCode.INVALID_INPUT, "too large")

        # A JSON body sent as something else: 415 naming the Content-Type, on every route taking JSON.
        plain = {"content-type": "text/plain"}
        for method, path, raw in (
            ("POST", base, b'{"id": "t-1"}'),
            ("POST", f"{base}/batch", b'[{"id": "t-2"}]'),
            ("PATCH", f"{base}/e-1/status", b'{"status": "pause"}'),
        ):
            response = await http.request(method, path, content=raw, headers=plain)
            assert_error(response, 415, ErrorCode.UNSUPPORTED_MEDIA_TYPE, "application/json", "'text/plain'")
        assert_ok(await http.post(base, headers=plain), 201)  # no body, nothing to misread
        assert_ok(await http.post(base, content=b'{"id": "t-3"}', headers={"content-type": "application/x+json"}), 201)

        # Deep nesting is named even before the token is checked, but the token check comes first.
        deep = b"[" * 100_000 + b"]" * 100_000
        async with httpx.AsyncClient(transport=http._transport, base_url="http://gateway") as anonymous:
            assert_error(await anonymous.post(base, content=deep, headers=JSON), 401, ErrorCode.UNAUTHORIZED)

        # A duplicate id: the hint names what a REST caller can do, not the Python SDK's create_batch.
        message = assert_error(await http.post(base, json={"id": "e-1"}), 409, ErrorCode.INSTANCE_EXISTS)
        assert "'e-1'" in message and "POST /api/workflows/sleeper/instances/batch" in message
        assert "create_batch" not in message


async def test_an_unparseable_http_request_gets_the_error_envelope() -> None:
    # uvicorn itself answers these (the app never sees them), in plain text unless told otherwise.
    async with hutch.connect(WORKFLOWS) as client:
        server = GatewayServer(host="127.0.0.1", port=0, access_log=False)
        serving = asyncio.create_task(server.run(create_app(client, tokens=[TOKEN])))
        try:
            await server.wait_started()
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"POST /api/workflows/sleeper/instances HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
            raw = await reader.read()  # the server closes the connection after answering
            writer.close()
        finally:
            server.shutdown()
            await serving
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"content-type: application/json" in head.lower(), raw
    envelope = json.loads(body)
    assert envelope["success"] is False and envelope["result"] is None
    (error,) = envelope["errors"]
    assert error["code"] == ErrorCode.INVALID_INPUT and "Content-Length" in error["message"]


def test_gateway_api_public_surface() -> None:
    import hutch.gateway.api

    assert hutch.gateway.api.__all__ == sorted(hutch.gateway.api.__all__)
    assert set(hutch.gateway.api.__all__) == {
        "ApiError",
        "BodyLimitMiddleware",
        "BodyTooLarge",
        "CursorInfo",
        "Envelope",
        "ErrorCode",
        "ErrorEnvelope",
        "ListEnvelope",
        "MetricsMiddleware",
        "RequestMetrics",
        "TokenSet",
        "Unauthorized",
        "WorkflowNames",
        "authorized",
        "get_client",
        "get_workflow_names",
        "install_error_handlers",
        "ok",
        "require_token",
    }
    assert all(hasattr(hutch.gateway.api, name) and not name.startswith("_") for name in hutch.gateway.api.__all__)
