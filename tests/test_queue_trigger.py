"""Queue-triggered creation on the real RabbitMQ: one instance per message, poison messages dead-lettered."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import hutch
import msgpack
import pytest
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection
from hutch import Limits, Status, WorkflowEntrypoint
from hutch.broker.transports.base import REASON_HEADER
from hutch.client import WorkflowClient
from hutch.consumers.queue_trigger import Poison, QueueTrigger, decode_body
from hutch.errors import InvalidInputError
from hutch.triggers import QueueConsumerSpec

from tests.conftest import MakeClient
from tests.helpers import eventually, unique


class Echo(WorkflowEntrypoint):
    """Returns its params."""

    async def run(self, event, step):
        return await step.do("echo", lambda: dict(event.payload))


class Broker:
    """Publishes to and inspects the test's queues on the real RabbitMQ."""

    def __init__(self, connection: AbstractRobustConnection, channel: AbstractRobustChannel, queue: str) -> None:
        self.connection = connection
        self.channel = channel
        self.queue = queue
        self.dead_letter_queue = f"{queue}.dead-letter"

    async def publish(
        self,
        body: Any,
        *,
        content_type: str | None = "application/json",
        message_id: str | None = None,
        headers: dict[str, Any] | None = None,
        raw: bytes | None = None,
    ) -> None:
        if raw is None:
            raw = msgpack.packb(body) if content_type == "application/msgpack" else json.dumps(body).encode()
        message = aio_pika.Message(raw, content_type=content_type, message_id=message_id, headers=headers or {})
        await self.channel.default_exchange.publish(message, routing_key=self.queue)

    async def dead_letters(self) -> list[tuple[bytes, dict[str, Any]]]:
        """Every dead-lettered message (taken off the queue)."""
        queue = await self.channel.declare_queue(self.dead_letter_queue, passive=True)
        found = []
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            found.append((message.body, dict(message.headers or {})))
        return found

    async def depth(self, name: str | None = None) -> tuple[int, int]:
        """(ready messages, consumers) of a queue."""
        # The raw channel: a robust channel answers repeated passive declares from its cache.
        raw = await self.channel.get_underlay_channel()
        result = await raw.queue_declare(name or self.queue, passive=True)
        return result.message_count or 0, result.consumer_count or 0


@pytest.fixture
async def broker(amqp_url: str) -> AsyncIterator[Broker]:
    queue = unique("orders")
    connection = await aio_pika.connect_robust(amqp_url)
    channel = await connection.channel(publisher_confirms=True)
    try:
        yield Broker(connection, channel, queue)
    finally:
        for name in (queue, f"{queue}.dead-letter"):
            await channel.queue_delete(name)
        await connection.close()


def spec(broker: Broker, **options: Any) -> QueueConsumerSpec:
    return QueueConsumerSpec(queue=broker.queue, workflow="order", **options)


async def instances(workflow: WorkflowClient) -> list[str]:
    return sorted((await workflow.list(limit=1000)).instances)


def reason(headers: dict[str, Any]) -> str:
    value = headers[REASON_HEADER]
    return value.decode() if isinstance(value, bytes) else str(value)


async def test_n_messages_with_duplicates_and_a_poison_one_make_n_instances(
    make_client: MakeClient, broker: Broker, amqp_url: str
) -> None:
    client = await make_client({"order": Echo})
    orders = client.workflow("order")
    trigger = QueueTrigger(client, [spec(broker, id="order-{body.orderId}", prefetch=8)], amqp_url=amqp_url)
    async with trigger:
        n = 20
        for i in range(n):
            content_type = "application/msgpack" if i % 3 == 0 else "application/json"
            await broker.publish({"orderId": i, "n": i}, content_type=content_type)
        for i in range(0, n, 4):  # the producer retried these: same order, same id
            await broker.publish({"orderId": i, "n": i}, message_id=unique("retry"))
        poison = b'{"orderId": 99, "n": '
        await broker.publish(None, raw=poison)

        expected = sorted(f"order-{i}" for i in range(n))
        await eventually(lambda: _equals(instances(orders), expected), timeout=30)
        dead = await eventually(broker.dead_letters, timeout=10)
        assert [body for body, _ in dead] == [poison]
        assert reason(dead[0][1]).startswith("body is not valid JSON")

        # Every message was acknowledged and the consumer still runs: a later message is handled.
        await eventually(lambda: _equals(broker.depth(), (0, 1)), timeout=10)
        await broker.publish({"orderId": 100, "n": 100})
        await eventually(lambda: _equals(instances(orders), sorted([*expected, "order-100"])), timeout=10)

    assert await instances(orders) == sorted([*expected, "order-100"])
    final = await (await orders.get("order-3")).wait(timeout=10)
    assert final.status is Status.COMPLETE and final.output == {"orderId": 3, "n": 3}
    detail = await (await orders.get("order-3")).describe()
    assert detail.trigger["source"] == "queue" and detail.trigger["queue"] == broker.queue
    assert await broker.depth() == (0, 0)  # the consumer left with the trigger


async def _equals(value: Any, expected: Any) -> bool:
    got = await value
    assert got == expected, got
    return True


async def test_messages_that_cannot_become_instances_are_dead_lettered_with_the_reason(
    broker: Broker, amqp_url: str
) -> None:
    limits = Limits(max_payload_bytes=1000)
    async with hutch.connect({"order": Echo}, limits=limits) as client:
        consumer = spec(broker, id="order-{body.orderId}")
        async with QueueTrigger(client, [consumer], amqp_url=amqp_url):
            cases = [
                ({"n": 1}, "application/json", "template 'order-{body.orderId}': body has no field 'orderId'"),
                ({"orderId": "a b"}, "application/json", "cannot create instance 'order-a b'"),
                ({"orderId": 2, "pad": "x" * 2000}, "application/json", "the limit is 1000 bytes"),
                ({"orderId": 3}, "text/plain", "content-type 'text/plain' is not supported"),
                ({"orderId": {"nested": 1}}, "application/json", "body.orderId is an object"),
            ]
            for body, content_type, _ in cases:
                await broker.publish(body, content_type=content_type, raw=json.dumps(body).encode())
            await broker.publish(None, content_type="application/msgpack", raw=b"\xc1")
            await broker.publish({"orderId": 7})

            await eventually(lambda: _equals(instances(client.workflow("order")), ["order-7"]), timeout=15)
            dead = await eventually(lambda: _at_least(broker.dead_letters(), len(cases) + 1), timeout=10)
        reasons = [reason(headers) for _, headers in dead]
        for (_, _, expected), got in zip(cases, reasons, strict=False):
            assert expected in got, got
        assert reasons[-1].startswith("body is not valid msgpack")
        # The dead letter keeps the original headers and properties.
        assert all(headers[REASON_HEADER] for _, headers in dead)


async def _at_least(value: Any, n: int) -> Any:
    got = await value
    assert len(got) >= n, got
    return got


async def test_the_message_id_is_the_default_instance_id(broker: Broker, amqp_url: str) -> None:
    # (aiormq gives every message it publishes a random message_id when it has none, so a
    # message without one cannot be produced here; the template unit tests cover that case.)
    async with hutch.connect({"order": Echo}) as client:
        # One message at a time, so "the first delivery wins" is deterministic.
        async with QueueTrigger(client, [spec(broker, prefetch=1)], amqp_url=amqp_url):
            await broker.publish({"a": 1}, message_id="msg-1")
            await broker.publish({"a": 2}, message_id="msg-1")  # the same message, published again
            await broker.publish({"a": 3}, message_id="msg-2")
            await broker.publish({"a": 4}, message_id="not valid!")
            await eventually(lambda: _equals(instances(client.workflow("order")), ["msg-1", "msg-2"]))
            dead = await eventually(broker.dead_letters)
        assert "cannot create instance 'not valid!'" in reason(dead[0][1])
        final = await (await client.workflow("order").get("msg-1")).wait(timeout=10)
        assert final.output == {"a": 1}  # the first delivery won; the second created nothing
        detail = await (await client.workflow("order").get("msg-2")).describe()
        assert detail.trigger == {"source": "queue", "queue": broker.queue, "message_id": "msg-2"}


async def test_a_header_template_reads_amqp_headers(broker: Broker, amqp_url: str) -> None:
    async with hutch.connect({"order": Echo}) as client:
        async with QueueTrigger(client, [spec(broker, id="h-{headers.X-Order}")], amqp_url=amqp_url):
            await broker.publish({"a": 1}, headers={"x-order": "17"})
            await broker.publish({"a": 2}, headers={"other": "1"})
            await eventually(lambda: _equals(instances(client.workflow("order")), ["h-17"]))
            dead = await eventually(broker.dead_letters)
        assert "the message has no header 'x-order'" in reason(dead[0][1])
        assert dead[0][1]["other"] in (b"1", "1")  # the original headers are kept


async def test_a_redelivered_message_whose_instance_exists_is_acknowledged(broker: Broker, amqp_url: str) -> None:
    async with hutch.connect({"order": Echo}) as client:
        # As if an earlier delivery created the instance and its ack was lost with the connection.
        await client.workflow("order").create(id="order-5", params={"first": True})
        async with QueueTrigger(client, [spec(broker, id="order-{body.orderId}")], amqp_url=amqp_url):
            await broker.publish({"orderId": 5})
            await eventually(lambda: _equals(broker.depth(), (0, 1)))
            assert await instances(client.workflow("order")) == ["order-5"]
        final = await (await client.workflow("order").get("order-5")).wait(timeout=10)
        assert final.output == {"first": True}
        assert await broker.dead_letters() == []


async def test_a_transient_failure_is_retried_without_acking_or_dead_lettering(
    broker: Broker, amqp_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    failures = 3
    original = WorkflowClient.create

    async def flaky(self: WorkflowClient, *args: Any, **kwargs: Any) -> Any:
        nonlocal failures
        if failures:
            failures -= 1
            raise ConnectionError("Redis is restarting")
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(WorkflowClient, "create", flaky)
    async with hutch.connect({"order": Echo}) as client:
        async with QueueTrigger(client, [spec(broker, id="order-{body.orderId}")], amqp_url=amqp_url):
            await broker.publish({"orderId": 1})
            await eventually(lambda: _equals(instances(client.workflow("order")), ["order-1"]))
            await eventually(lambda: _equals(broker.depth(), (0, 1)))
    assert failures == 0
    assert await broker.dead_letters() == []


async def test_messages_left_at_shutdown_are_handled_by_the_next_consumer(broker: Broker, amqp_url: str) -> None:
    async with hutch.connect({"order": Echo}) as client:
        consumer = spec(broker, id="order-{body.orderId}", prefetch=2)
        async with QueueTrigger(client, [consumer], amqp_url=amqp_url):
            pass  # declares the queue, consumes nothing
        for i in range(10):
            await broker.publish({"orderId": i})
        assert await broker.depth() == (10, 0)
        async with QueueTrigger(client, [consumer], amqp_url=amqp_url):
            expected = sorted(f"order-{i}" for i in range(10))
            await eventually(lambda: _equals(instances(client.workflow("order")), expected))


async def test_an_existing_queue_is_used_with_its_own_arguments(broker: Broker, amqp_url: str) -> None:
    await broker.channel.declare_queue(broker.queue, durable=True, arguments={"x-queue-type": "quorum"})
    async with hutch.connect({"order": Echo}) as client:
        async with QueueTrigger(client, [spec(broker, id="q-{body.orderId}")], amqp_url=amqp_url):
            await broker.publish({"orderId": 1})
            await eventually(lambda: _equals(instances(client.workflow("order")), ["q-1"]))


async def test_construction_errors_name_the_entry(amqp_url: str) -> None:
    async with hutch.connect({"order": Echo}) as client:
        with pytest.raises(InvalidInputError, match=r"queue 'q': id: template '\{body.x':.*never closed"):
            QueueTrigger(client, [QueueConsumerSpec(queue="q", workflow="order", id="{body.x")], amqp_url=amqp_url)
        with pytest.raises(InvalidInputError, match="queue 'q': workflow 'nope' is not registered"):
            QueueTrigger(client, [QueueConsumerSpec(queue="q", workflow="nope")], amqp_url=amqp_url)
        trigger = QueueTrigger(client, [], amqp_url=amqp_url)
        await trigger.start()
        with pytest.raises(RuntimeError, match="cannot be started twice"):
            await trigger.start()
        await trigger.shutdown()
        await trigger.shutdown()  # idempotent


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (b'{"a": 1}', None, {"a": 1}),
        (b'{"a": 1}', "application/json; charset=utf-8", {"a": 1}),
        (b'{"a": 1}', "application/cloudevents+json", {"a": 1}),
        (msgpack.packb({"a": [1, 2]}), "application/x-msgpack", {"a": [1, 2]}),
    ],
)
def test_bodies_decode_by_content_type(body: bytes, content_type: str | None, expected: Any) -> None:
    assert decode_body(body, content_type) == expected


def test_compressed_bodies_are_refused() -> None:
    with pytest.raises(Poison, match="content-encoding 'gzip' is not supported"):
        decode_body(b"\x1f\x8b", "application/json", "gzip")


def test_consumer_models_explain_bad_entries() -> None:
    from hutch.triggers import QueuesConfig
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="reserved by RabbitMQ"):
        QueueConsumerSpec(queue="amq.orders", workflow="w")
    with pytest.raises(ValidationError, match="queue 'q' appears twice"):
        QueuesConfig(consumers=[QueueConsumerSpec(queue="q", workflow="a"), QueueConsumerSpec(queue="q", workflow="b")])
    assert QueueConsumerSpec(queue="q", workflow="w").dead_letter_queue_name == "q.dead-letter"
