"""Webhook ingress: signatures (Standard Webhooks, GitHub, Stripe), replay protection, routing, errors.

The router runs in a FastAPI app reached through httpx's ASGI transport, over an embedded client;
delivery ids are deduplicated in the real Redis under a namespace of the test's own.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import hutch
import pytest
from fastapi import FastAPI
from hutch import Client, Status, WorkflowEntrypoint
from hutch.consumers.templates import MessageContext, Template, TemplateError
from hutch.errors import InvalidInputError
from hutch.gateway.signatures import (
    GitHub,
    SignatureError,
    StandardWebhooks,
    Stripe,
    sign_github,
    sign_standard,
    sign_stripe,
)
from hutch.gateway.webhooks import webhook_router
from hutch.triggers import WebhookRoute
from redis.asyncio import Redis

from tests.helpers import unique

OLD_STANDARD = "whsec_" + base64.b64encode(b"the old standard webhooks key!!").decode()
NEW_STANDARD = "whsec_" + base64.b64encode(b"the new standard webhooks key!!").decode()
GITHUB_SECRET = "It's a Secret to Everybody"
STRIPE_SECRET = "whsec_stripe_endpoint_secret"
ENVIRON = {
    # Rotation: the variable lists two secrets; both are accepted.
    "STANDARD_SECRETS": f"{OLD_STANDARD}, {NEW_STANDARD}",
    "GITHUB_SECRET": GITHUB_SECRET,
    "STRIPE_OLD": "whsec_retired_but_still_valid",
    "STRIPE_NEW": STRIPE_SECRET,
}


class Collect(WorkflowEntrypoint):
    """Collects "ping" events until one says it is the last; returns their ``n`` in arrival order."""

    async def run(self, event, step):
        seen: list[Any] = []
        while True:
            received = await step.wait_for_event(f"ping {len(seen)}", "ping", timeout="1 minute")
            seen.append(received.payload["n"])
            if received.payload.get("last"):
                return seen


class Echo(WorkflowEntrypoint):
    """Returns its params."""

    async def run(self, event, step):
        return await step.do("echo", lambda: dict(event.payload))


class Order(WorkflowEntrypoint):
    """Waits for Stripe's payment event; returns the params it was created with and the event."""

    async def run(self, event, step):
        paid = await step.wait_for_event("paid", "payment_intent.succeeded", timeout="1 minute")
        return {"params_id": event.payload["id"], "event_id": paid.payload["id"]}


ROUTES = [
    WebhookRoute(
        path="std/events",
        workflow="collect",
        signature="standard",
        secret_env="STANDARD_SECRETS",
        instance_id="{body.instance}",
        event_type="ping",
    ),
    WebhookRoute(
        path="gh/events",
        workflow="collect",
        signature="github",
        secret_envs=["GITHUB_SECRET"],
        instance_id="{body.instance}",
        event_type="ping",
    ),
    WebhookRoute(
        path="stripe/events",
        workflow="collect",
        signature="stripe",
        secret_envs=["STRIPE_OLD", "STRIPE_NEW"],
        instance_id="{body.instance}",
        event_type="ping",
    ),
    WebhookRoute(path="gh/create", workflow="echo", signature="github", secret_env="GITHUB_SECRET", action="create"),
    WebhookRoute(
        path="stripe/orders",
        workflow="order",
        signature="stripe",
        secret_env="STRIPE_NEW",
        action="create_or_send",
        instance_id="{body.data.object.metadata.orderId}",
        event_type="{body.type}",
    ),
    WebhookRoute(path="tiny", workflow="echo", signature="none", instance_id="tiny-{body.n}", max_body_bytes=100),
    WebhookRoute(
        path="std/pings",
        workflow="collect",
        signature="standard",
        secret_env="STANDARD_SECRETS",
        action="create_or_send",
        instance_id="{body.instance}",
        event_type="ping",
    ),
]


class Env:
    """The app under test, its client, and signing helpers."""

    def __init__(self, http: httpx.AsyncClient, client: Client, redis: Redis, namespace: str) -> None:
        self.http = http
        self.client = client
        self.redis = redis
        self.namespace = namespace

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        return await self.http.post(f"/webhooks/{path}", content=body, headers=headers)

    async def signed(self, scheme: str, path: str, payload: Any, *, delivery: str | None = None) -> httpx.Response:
        """POST ``payload`` signed as ``scheme`` does, with the current secret and timestamp."""
        body = json.dumps(payload).encode()
        return await self.post(path, body, sign(scheme, body, delivery=delivery or unique("dlv")))


def sign(scheme: str, body: bytes, *, delivery: str, timestamp: int | None = None, secret: str | None = None) -> dict:
    ts = int(time.time()) if timestamp is None else timestamp
    if scheme == "standard":
        return {**sign_standard(secret or NEW_STANDARD, delivery, ts, body), "content-type": "application/json"}
    if scheme == "github":
        return {**sign_github(secret or GITHUB_SECRET, body, delivery=delivery), "content-type": "application/json"}
    return {**sign_stripe(secret or STRIPE_SECRET, ts, body), "content-type": "application/json"}


def stripe_event(event_id: str, instance: str, n: int, *, last: bool = False) -> dict[str, Any]:
    return {"id": event_id, "object": "event", "instance": instance, "n": n, "last": last}


@pytest.fixture
async def env(redis_url: str) -> AsyncIterator[Env]:
    namespace = unique("whk")
    redis = Redis.from_url(redis_url)
    client = await hutch.connect({"collect": Collect, "echo": Echo, "order": Order})
    app = FastAPI()
    app.include_router(webhook_router(client, ROUTES, dedupe_redis=redis, namespace=namespace, environ=ENVIRON))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hutch.test") as http:
            yield Env(http, client, redis, namespace)
    finally:
        await client.close()
        keys = [key async for key in redis.scan_iter(match=f"{namespace}:*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()


def assert_error(response: httpx.Response, status: int, *fragments: str) -> str:
    """The response is ``status`` in the error envelope, its message containing every fragment."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"success", "errors", "messages", "result"}
    assert body["success"] is False and body["result"] is None
    assert len(body["errors"]) == 1 and body["errors"][0]["code"] == status
    message: str = body["errors"][0]["message"]
    for fragment in fragments:
        assert fragment in message, message
    return message


def accepted(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["success"] is True and body["errors"] == []
    result: dict[str, Any] = body["result"]
    assert result["duplicate"] is False
    return result


SCHEMES = {"standard": "std/events", "github": "gh/events", "stripe": "stripe/events"}


# --------------------------------------------------------------------------- valid signatures


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_a_validly_signed_webhook_sends_the_event(env: Env, scheme: str) -> None:
    instance = await env.client.workflow("collect").create(id=unique("c"))
    payload = stripe_event(unique("evt"), instance.id, 7, last=True)

    result = accepted(await env.signed(scheme, SCHEMES[scheme], payload))

    assert result == {
        "action": "send_event",
        "workflow": "collect",
        "instance_id": instance.id,
        "event_type": "ping",
        "instance_finished": False,
        "duplicate": False,
        "delivery_id": result["delivery_id"],
    }
    assert result["delivery_id"]
    final = await instance.wait(timeout=10)
    assert final.status is Status.COMPLETE and final.output == [7]


@pytest.mark.parametrize("secret", [OLD_STANDARD, NEW_STANDARD])
async def test_every_secret_of_a_rotation_is_accepted(env: Env, secret: str) -> None:
    instance = await env.client.workflow("collect").create(id=unique("c"))
    body = json.dumps({"instance": instance.id, "n": 1, "last": True}).encode()

    accepted(await env.post("std/events", body, sign("standard", body, delivery=unique("d"), secret=secret)))

    assert (await instance.wait(timeout=10)).output == [1]


async def test_a_stripe_secret_from_the_second_variable_is_accepted(env: Env) -> None:
    instance = await env.client.workflow("collect").create(id=unique("c"))
    body = json.dumps(stripe_event(unique("evt"), instance.id, 3, last=True)).encode()
    headers = sign("stripe", body, delivery="-", secret="whsec_retired_but_still_valid")

    accepted(await env.post("stripe/events", body, headers))

    assert (await instance.wait(timeout=10)).output == [3]


# --------------------------------------------------------------------------- rejected requests


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_a_wrong_secret_is_401(env: Env, scheme: str) -> None:
    instance = await env.client.workflow("collect").create(id=unique("c"))
    body = json.dumps(stripe_event(unique("evt"), instance.id, 1)).encode()
    wrong = "whsec_" + base64.b64encode(b"someone else's key").decode() if scheme == "standard" else "wrong"

    response = await env.post(SCHEMES[scheme], body, sign(scheme, body, delivery=unique("d"), secret=wrong))

    assert_error(response, 401, "does not match")
    assert (await instance.status()).status is not Status.COMPLETE


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_a_tampered_body_is_401(env: Env, scheme: str) -> None:
    instance = await env.client.workflow("collect").create(id=unique("c"))
    body = json.dumps(stripe_event(unique("evt"), instance.id, 1, last=True)).encode()
    headers = sign(scheme, body, delivery=unique("d"))
    tampered = body.replace(b'"n": 1', b'"n": 2')
    assert tampered != body

    assert_error(await env.post(SCHEMES[scheme], tampered, headers), 401, "does not match")


@pytest.mark.parametrize("scheme", ["standard", "stripe"])
@pytest.mark.parametrize("skew_s", [-301, 301])
async def test_a_timestamp_outside_five_minutes_is_401(env: Env, scheme: str, skew_s: int) -> None:
    instance = await env.client.workflow("collect").create(id=unique("c"))
    body = json.dumps(stripe_event(unique("evt"), instance.id, 1, last=True)).encode()
    headers = sign(scheme, body, delivery=unique("d"), timestamp=int(time.time()) + skew_s)

    assert_error(await env.post(SCHEMES[scheme], body, headers), 401, "tolerance is 300 s")


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_missing_signature_headers_are_401(env: Env, scheme: str) -> None:
    body = b'{"instance": "x", "n": 1}'
    assert_error(await env.post(SCHEMES[scheme], body, {"content-type": "application/json"}), 401, "missing header")


async def test_an_oversize_body_is_413_before_its_signature_is_checked(env: Env) -> None:
    body = b"x" * (1024 * 1024 + 1)
    assert_error(await env.post("std/events", body, {}), 413, "at most 1048576")


async def test_an_oversize_streamed_body_without_content_length_is_413(env: Env) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b'{"n": 1, "pad": "' + b"x" * 20 + b'"}'

    response = await env.http.post("/webhooks/tiny", content=chunks())

    assert "content-length" not in response.request.headers
    assert_error(response, 413, "larger than 100 bytes")
    page = await env.client.workflow("echo").list()
    assert page.instances == []


async def test_a_body_just_under_the_limit_is_accepted(env: Env) -> None:
    body = json.dumps({"n": 5, "pad": "x" * 60}).encode()
    assert len(body) <= 100
    result = accepted(await env.post("tiny", body, {"content-type": "application/json"}))
    assert result["instance_id"] == "tiny-5" and result["created"] is True


async def test_an_unknown_route_is_404(env: Env) -> None:
    assert_error(await env.post("nope", b"{}", {}), 404, "no webhook route 'nope'")


async def test_a_body_that_is_not_json_is_400(env: Env) -> None:
    body = b"payload=%7B%7D"
    assert_error(await env.post("gh/events", body, sign("github", body, delivery=unique("d"))), 400, "not valid JSON")


async def test_a_template_field_missing_from_the_body_is_400_naming_it(env: Env) -> None:
    body = json.dumps({"id": unique("evt"), "type": "payment_intent.succeeded", "data": {"object": {}}}).encode()

    response = await env.post("stripe/orders", body, sign("stripe", body, delivery="-"))

    assert_error(response, 400, "{body.data.object.metadata.orderId}", "no field 'metadata'")


async def test_a_rendered_id_that_is_not_a_valid_instance_id_is_400(env: Env) -> None:
    body = json.dumps({"instance": "not valid!", "n": 1}).encode()
    response = await env.post("gh/events", body, sign("github", body, delivery=unique("d")))
    assert_error(response, 400, "instance id 'not valid!'")


# --------------------------------------------------------------------------- replay protection


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_a_replayed_delivery_is_answered_2xx_without_effect(env: Env, scheme: str) -> None:
    instance = await env.client.workflow("collect").create(id=unique("c"))
    first = stripe_event(unique("evt"), instance.id, 1)
    delivery = unique("dlv")
    accepted(await env.signed(scheme, SCHEMES[scheme], first, delivery=delivery))

    replay = await env.signed(scheme, SCHEMES[scheme], first, delivery=delivery)

    assert replay.status_code == 200, replay.text
    body = replay.json()
    assert body["success"] is True and body["result"]["duplicate"] is True
    assert "already processed" in body["messages"][0]["message"]
    accepted(await env.signed(scheme, SCHEMES[scheme], stripe_event(unique("evt"), instance.id, 2, last=True)))
    # The replayed event was not delivered a second time.
    assert (await instance.wait(timeout=10)).output == [1, 2]


async def test_the_delivery_id_is_kept_in_redis_under_the_namespace_with_a_ttl(env: Env) -> None:
    instance = await env.client.workflow("collect").create(id=unique("c"))
    delivery = unique("dlv")
    accepted(await env.signed("standard", "std/events", {"instance": instance.id, "n": 1}, delivery=delivery))

    key = f"{env.namespace}:webhook:std/events:{delivery}"
    assert await env.redis.get(key) == b"done"
    ttl = await env.redis.ttl(key)
    assert 3 * 86400 - 60 < ttl <= 3 * 86400


async def test_a_replay_of_a_create_creates_one_instance(env: Env) -> None:
    body = json.dumps({"repository": "hutch", "action": "opened"}).encode()
    headers = sign("github", body, delivery=unique("gh"))

    created = accepted(await env.post("gh/create", body, headers))
    replay = await env.post("gh/create", body, headers)

    assert replay.status_code == 200 and replay.json()["result"]["duplicate"] is True
    assert (await env.client.workflow("echo").list()).instances == [created["instance_id"]]
    final = await (await env.client.workflow("echo").get(created["instance_id"])).wait(timeout=10)
    assert final.output == {"repository": "hutch", "action": "opened"}


async def test_a_delivery_being_processed_elsewhere_is_409(env: Env) -> None:
    delivery = unique("dlv")
    await env.redis.set(f"{env.namespace}:webhook:std/events:{delivery}", "pending:other-request", ex=60)

    response = await env.signed("standard", "std/events", {"instance": "x", "n": 1}, delivery=delivery)

    assert_error(response, 409, "being processed")
    # The other request's claim is untouched.
    assert await env.redis.get(f"{env.namespace}:webhook:std/events:{delivery}") == b"pending:other-request"


async def test_a_failed_delivery_is_not_remembered_so_its_retry_is_processed(env: Env) -> None:
    instance_id = unique("later")
    delivery = unique("dlv")
    payload = {"instance": instance_id, "n": 1, "last": True}

    missing = await env.signed("standard", "std/events", payload, delivery=delivery)
    assert_error(missing, 404, f"instance {instance_id!r}")

    instance = await env.client.workflow("collect").create(id=instance_id)
    accepted(await env.signed("standard", "std/events", payload, delivery=delivery))
    assert (await instance.wait(timeout=10)).output == [1]


async def test_an_unavailable_store_or_broker_is_503_and_the_retry_is_processed(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    instance = await env.client.workflow("collect").create(id=unique("c"))
    original = hutch.Instance.send_event
    failures = 1

    async def flaky(self: hutch.Instance, *args: Any, **kwargs: Any) -> Any:
        nonlocal failures
        if failures:
            failures -= 1
            raise ConnectionError("broker connection reset")
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(hutch.Instance, "send_event", flaky)
    delivery = unique("dlv")
    payload = {"instance": instance.id, "n": 1, "last": True}

    assert_error(await env.signed("standard", "std/events", payload, delivery=delivery), 503, "retry")
    accepted(await env.signed("standard", "std/events", payload, delivery=delivery))

    assert (await instance.wait(timeout=10)).output == [1]


# --------------------------------------------------------------------------- create-if-absent-then-send


def payment(event_id: str, order: str) -> dict[str, Any]:
    return {"id": event_id, "type": "payment_intent.succeeded", "data": {"object": {"metadata": {"orderId": order}}}}


async def test_create_or_send_delivers_an_event_that_arrived_before_the_instance(env: Env) -> None:
    order = unique("order")
    with pytest.raises(hutch.InstanceNotFound):
        await env.client.workflow("order").get(order)

    first = accepted(await env.signed("stripe", "stripe/orders", payment("evt_1", order)))

    assert first == {
        "action": "create_or_send",
        "workflow": "order",
        "instance_id": order,
        "created": True,
        "event_type": "payment_intent.succeeded",
        "instance_finished": False,
        "duplicate": False,
        "delivery_id": "evt_1",
    }
    instance = await env.client.workflow("order").get(order)
    final = await instance.wait(timeout=10)
    assert final.status is Status.COMPLETE
    assert final.output == {"params_id": "evt_1", "event_id": "evt_1"}
    detail = await instance.describe()
    assert detail.trigger == {"source": "webhook", "path": "stripe/orders", "delivery_id": "evt_1"}


async def test_create_or_send_to_an_existing_instance_only_sends(env: Env) -> None:
    order = unique("order")
    instance = await env.client.workflow("order").create(id=order, params={"id": "from-api"})

    result = accepted(await env.signed("stripe", "stripe/orders", payment("evt_2", order)))

    assert result["created"] is False and result["instance_id"] == order
    assert (await instance.wait(timeout=10)).output == {"params_id": "from-api", "event_id": "evt_2"}


async def test_create_or_send_to_a_finished_instance_reports_it(env: Env) -> None:
    order = unique("order")
    accepted(await env.signed("stripe", "stripe/orders", payment(unique("evt"), order)))
    await (await env.client.workflow("order").get(order)).wait(timeout=10)

    late = accepted(await env.signed("stripe", "stripe/orders", payment(unique("evt"), order)))

    assert late["created"] is False and late["instance_finished"] is True


async def test_create_or_send_racing_deliveries_make_one_instance(env: Env) -> None:
    instance = unique("c")
    payloads = [stripe_event(unique("evt"), instance, n) for n in range(20)]

    results = [accepted(r) for r in await asyncio.gather(*(env.signed("standard", "std/pings", p) for p in payloads))]

    assert sum(r["created"] for r in results) == 1
    accepted(await env.signed("standard", "std/pings", stripe_event(unique("evt"), instance, 20, last=True)))
    final = await (await env.client.workflow("collect").get(instance)).wait(timeout=10)
    assert sorted(final.output) == list(range(21))


@pytest.mark.parametrize("path", ["std/pings", "std/events"])  # create_or_send, send_event
async def test_a_redelivery_after_a_lost_done_mark_does_not_deliver_the_event_twice(env: Env, path: str) -> None:
    instance = unique("c")
    if path == "std/events":
        await env.client.workflow("collect").create(id=instance)
    body = json.dumps(stripe_event(unique("evt"), instance, 1)).encode()
    headers = sign("standard", body, delivery=unique("dlv"))
    accepted(await env.post(path, body, headers))
    # The gateway died before it marked the delivery done, and its claim expired: the sender's
    # retry is processed again, but the event it sends has the id of the first one.
    await env.redis.delete(*[key async for key in env.redis.scan_iter(match=f"{env.namespace}:webhook:*")])

    again = accepted(await env.post(path, body, headers))

    assert again.get("created", False) is False
    accepted(await env.signed("standard", path, stripe_event(unique("evt"), instance, 2, last=True)))
    final = await (await env.client.workflow("collect").get(instance)).wait(timeout=10)
    assert final.output == [1, 2]


def test_create_and_send_is_the_earlier_name_of_create_or_send() -> None:
    route = WebhookRoute(
        path="p", workflow="w", signature="none", action="create_and_send", instance_id="{body.i}", event_type="e"
    )
    assert route.action == "create_or_send"


# --------------------------------------------------------------------------- construction errors


async def test_the_router_refuses_a_route_whose_secret_is_not_set() -> None:
    async with hutch.connect({"echo": Echo}) as client:
        with pytest.raises(InvalidInputError, match=r"path 'gh/create'.*'GITHUB_SECRET' is not set"):
            webhook_router(client, [ROUTES[3]], dedupe_redis=None, environ={})


async def test_the_router_refuses_a_malformed_template() -> None:
    route = WebhookRoute(path="bad", workflow="echo", signature="none", instance_id="{body.id")
    async with hutch.connect({"echo": Echo}) as client:
        with pytest.raises(InvalidInputError, match=r"path 'bad': instance_id: template '\{body.id'.*never closed"):
            webhook_router(client, [route], dedupe_redis=None)


async def test_the_router_refuses_an_unknown_workflow() -> None:
    route = WebhookRoute(path="x", workflow="missing", signature="none")
    async with hutch.connect({"echo": Echo}) as client:
        with pytest.raises(InvalidInputError, match=r"path 'x'.*workflow 'missing' is not registered"):
            webhook_router(client, [route], dedupe_redis=None)


async def test_without_dedupe_redis_deliveries_are_not_deduplicated() -> None:
    async with hutch.connect({"echo": Echo}) as client:
        app = FastAPI()
        app.include_router(webhook_router(client, [ROUTES[3]], dedupe_redis=None, environ=ENVIRON))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
            body = b'{"a": 1}'
            headers = sign("github", body, delivery="same")
            for _ in range(2):
                response = await http.post("/webhooks/gh/create", content=body, headers=headers)
                assert response.status_code == 202
        assert len((await client.workflow("echo").list()).instances) == 2


# --------------------------------------------------------------------------- units: verifiers, templates


def test_standard_webhooks_matches_the_specification_example() -> None:
    # The example of the Standard Webhooks specification (standard-webhooks/spec.md, "Verifying").
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    msg_id, timestamp = "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330
    body = b'{"test": 2432232314}'
    headers = sign_standard(secret, msg_id, timestamp, body)
    assert headers["webhook-signature"] == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert StandardWebhooks([secret]).verify(headers, body, now=timestamp + 10) == msg_id


def test_github_matches_its_documentation_example() -> None:
    # GitHub's "Validating webhook deliveries" example.
    headers = {k.lower(): v for k, v in sign_github("It's a Secret to Everybody", b"Hello, World!").items()}
    expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert headers["x-hub-signature-256"] == expected
    assert GitHub(["another secret", "It's a Secret to Everybody"]).verify(headers, b"Hello, World!", now=0) is None


def test_several_signatures_in_one_header_any_may_match() -> None:
    body = b"{}"
    good = sign_standard(NEW_STANDARD, "m1", 100, body)["webhook-signature"]
    headers = {"webhook-id": "m1", "webhook-timestamp": "100", "webhook-signature": f"v1,bm90IGl0 {good} v1a,xyz"}
    assert StandardWebhooks([NEW_STANDARD]).verify(headers, body, now=100) == "m1"
    stripe_headers = {"stripe-signature": sign_stripe(STRIPE_SECRET, 100, body)["Stripe-Signature"] + ",v1=00ff"}
    assert Stripe([STRIPE_SECRET]).verify(stripe_headers, body, now=100) is None


BAD_TIMESTAMP = {"webhook-id": "m", "webhook-timestamp": "soon", "webhook-signature": "v1,x"}


@pytest.mark.parametrize(
    ("verifier", "headers", "message"),
    [
        (GitHub(["s"]), {"x-hub-signature-256": "sha1=abc"}, "must look like 'sha256=<hex digest>'"),
        (Stripe(["s"]), {"stripe-signature": "v1=abc"}, "must carry t=<timestamp>"),
        (StandardWebhooks([NEW_STANDARD]), BAD_TIMESTAMP, "is not a Unix timestamp"),
    ],
)
def test_malformed_signature_headers_are_explained(verifier: Any, headers: dict[str, str], message: str) -> None:
    with pytest.raises(SignatureError, match=message):
        verifier.verify(headers, b"{}", now=time.time())


def test_a_standard_secret_that_is_not_base64_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="whsec_"):
        StandardWebhooks(["whsec_not base64!"])


CONTEXT = MessageContext.from_headers(
    {"order": {"id": 42, "lines": [{"sku": "a-1"}], "paid": True, "note": None, "total": 9.5}},
    {"X-Request-Id": "req-7", "x.dotted": "yes"},
    message_id="m-1",
)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("order-{body.order.id}", "order-42"),
        ("{body.order.lines.0.sku}", "a-1"),
        ("{body.order.paid}", "true"),
        ("{body.order.total}", "9.5"),
        ("{headers.x-request-id}/{headers.X-REQUEST-ID}", "req-7/req-7"),
        ("{headers.x.dotted}", "yes"),
        ("{message_id}", "m-1"),
        ("{{literal}} {body.order.id}", "{literal} 42"),
        ("constant", "constant"),
    ],
)
def test_templates_render(template: str, expected: str) -> None:
    assert Template(template).render(CONTEXT) == expected


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{body.order.missing}", "body.order has no field 'missing'"),
        ("{body.order.lines.3.sku}", "array of 1; '3' is not an index"),
        ("{body.order.note}", "body.order.note is null"),
        ("{body.order}", "body.order is an object"),
        ("{body.order.lines}", "is an array"),
        ("{body.order.id.x}", "body.order.id is int, so it has no field 'x'"),
        ("{headers.x-missing}", "no header 'x-missing'"),
    ],
)
def test_templates_name_the_field_they_cannot_render(template: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        Template(template).render(CONTEXT)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{body.x", "never closed"),
        ("x}", "unmatched '}'"),
        ("{}", "must start with one of"),
        ("{query.x}", "must start with one of: body, headers, message_id"),
        ("{body..x}", "empty segment"),
        ("{headers}", "needs a header name"),
        ("{message_id.x}", "message_id has no fields"),
    ],
)
def test_malformed_templates_are_refused(template: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        Template(template)


def test_a_message_without_message_id_cannot_render_it() -> None:
    with pytest.raises(TemplateError, match="no message_id"):
        Template("{message_id}").render(MessageContext(body={}))


def test_route_models_explain_bad_entries() -> None:
    from pydantic import ValidationError

    bad: list[tuple[dict[str, Any], str]] = [
        ({"path": "a", "workflow": "w", "action": "create_and_send"}, "needs instance_id and event_type"),
        ({"path": "a", "workflow": "w"}, "needs secret_env"),
        ({"path": "a", "workflow": "w", "signature": "none", "secret_env": "X"}, "takes no secret"),
        ({"path": "a/../b", "workflow": "w", "signature": "none"}, "'..' segments"),
        ({"path": "a", "workflow": "w", "signature": "none", "event_type": "t", "action": "create"}, "only used by"),
    ]
    for data, message in bad:
        with pytest.raises(ValidationError, match=message):
            WebhookRoute.model_validate(data)
    sends = WebhookRoute(path="a", workflow="w", signature="none", instance_id="x", event_type="t")
    assert sends.action == "send_event"
    assert WebhookRoute(path="a", workflow="w", signature="none").action == "create"
