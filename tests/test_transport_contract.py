"""The transport contract, run against the in-process transport and real RabbitMQ.

Every behaviour the consumers rely on is asserted on both, so the in-process transport is shown
to behave like RabbitMQ rather than assumed to. Where they legitimately differ (RabbitMQ cannot
tell a standby consumer that it became active; a nacked message's position in a 3.x quorum queue)
the tests assert only what both guarantee, and say so.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiormq
import pytest
from hutch.broker import names
from hutch.broker.transports.base import REASON_HEADER, Delivery, Outgoing, PartitionListener, Transport
from hutch.broker.transports.inprocess import InProcessTransport
from hutch.broker.transports.rabbitmq import RabbitMQTransport

from tests.conftest import AMQP_URL
from tests.helpers import eventually, unique
from tests.tcp_proxy import TCPProxy

MakeTransport = Callable[..., Awaitable[Transport]]


class Recorder(PartitionListener):
    """A listener that records everything and settles deliveries only when the test says so."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.pending: list[Delivery] = []
        self.events: list[tuple[str, int]] = []
        self.max_pending = 0

    def on_delivery(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        self.pending.append(delivery)
        self.max_pending = max(self.max_pending, len(self.pending))

    async def on_assigned(self, partition: int) -> None:
        self.events.append(("assigned", partition))

    async def on_revoked(self, partition: int) -> None:
        self.events.append(("revoked", partition))

    async def ack_all(self) -> None:
        """Acknowledge every delivery received so far."""
        pending, self.pending = self.pending, []
        for delivery in pending:
            await delivery.ack()

    async def nack_all(self) -> None:
        """Requeue every delivery received so far."""
        pending, self.pending = self.pending, []
        for delivery in pending:
            await delivery.nack()

    def bodies(self, partition: int | None = None) -> list[bytes]:
        return [d.body for d in self.deliveries if partition is None or d.partition == partition]

    async def wait_for(self, count: int, *, ack: bool = False, timeout: float = 10.0) -> list[Delivery]:
        """Wait until ``count`` deliveries arrived (acknowledging as they come when ``ack``)."""

        async def check() -> bool:
            if ack:
                await self.ack_all()
            return len(self.deliveries) >= count

        await eventually(check, timeout=timeout)
        return self.deliveries


def messages(partition: int, *bodies: str, headers: dict[str, str] | None = None) -> list[Outgoing]:
    return [Outgoing(partition, body.encode(), dict(headers or {})) for body in bodies]


async def _cleanup_rabbitmq(url: str, transport: RabbitMQTransport) -> None:
    # A fresh, direct connection: the test's own may go through a proxy that is already closed.
    cleaner = RabbitMQTransport(
        url, partitions=transport.partitions, namespace=transport.namespace, delivery_limit=transport.delivery_limit
    )
    await cleaner.start()
    try:
        await cleaner.delete_topology()
    finally:
        await cleaner.close()


@pytest.fixture(params=["inprocess", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
async def make_transport(request: pytest.FixtureRequest) -> AsyncIterator[MakeTransport]:
    """Start transports of the parametrized kind; each is closed (and its queues deleted) at teardown."""
    kind: str = request.param
    url = request.getfixturevalue("amqp_url") if kind == "rabbitmq" else ""
    made: list[Transport] = []

    async def make(*, partitions: int = 4, delivery_limit: int = 20, url_override: str | None = None) -> Transport:
        transport: Transport
        if kind == "inprocess":
            transport = InProcessTransport(partitions, delivery_limit=delivery_limit)
        else:
            transport = RabbitMQTransport(
                url_override or url,
                partitions=partitions,
                namespace=unique("hutch-test"),
                delivery_limit=delivery_limit,
                reconnect_interval_s=0.1,
                publish_timeout_s=20.0,
                connection_name=request.node.nodeid,
            )
        made.append(transport)
        await transport.start()
        return transport

    yield make
    for transport in reversed(made):
        await transport.close()
        if isinstance(transport, RabbitMQTransport):
            await _cleanup_rabbitmq(url, transport)


# --------------------------------------------------------------------------- the contract


async def test_publish_deliver_ack(make_transport: MakeTransport) -> None:
    transport = await make_transport(partitions=2)
    recorder = Recorder()
    subscription = await transport.subscribe([0, 1], recorder, prefetch=10)
    await transport.publish(messages(0, "a") + messages(1, "b"))

    delivered = await recorder.wait_for(2)
    assert sorted((d.partition, d.body, d.redelivered) for d in delivered) == [(0, b"a", False), (1, b"b", False)]
    await recorder.ack_all()
    await subscription.close()

    # Acknowledged messages are gone: a new consumer sees only what is published afterwards.
    second = Recorder()
    await transport.subscribe([0, 1], second, prefetch=10)
    await transport.publish(messages(0, "after"))
    await second.wait_for(1)
    assert second.bodies() == [b"after"]


async def test_order_within_a_partition(make_transport: MakeTransport) -> None:
    transport = await make_transport(partitions=2)
    expected = {p: [f"{p}-{i}" for i in range(120)] for p in (0, 1)}
    for start in range(0, 120, 40):  # several batches, partitions interleaved within each
        batch = [out for i in range(start, start + 40) for p in (0, 1) for out in messages(p, expected[p][i])]
        await transport.publish(batch)
    recorder = Recorder()
    await transport.subscribe([0, 1], recorder, prefetch=16)

    await recorder.wait_for(240, ack=True)
    for p in (0, 1):
        assert recorder.bodies(p) == [body.encode() for body in expected[p]]


async def test_unacknowledged_deliveries_never_exceed_prefetch(make_transport: MakeTransport) -> None:
    transport = await make_transport(partitions=2)
    await transport.publish([out for i in range(12) for p in (0, 1) for out in messages(p, f"{p}-{i}")])
    recorder = Recorder()
    await transport.subscribe([0, 1], recorder, prefetch=4)

    await recorder.wait_for(4)
    for settled in range(1, 21):  # settle one at a time: exactly one more may arrive each time
        await recorder.pending.pop(0).ack()
        await recorder.wait_for(min(4 + settled, 24))
        assert len(recorder.pending) <= 4
    await recorder.wait_for(24, ack=True)
    assert recorder.max_pending <= 4
    for p in (0, 1):
        assert recorder.bodies(p) == [f"{p}-{i}".encode() for i in range(12)]


async def test_nack_redelivers(make_transport: MakeTransport) -> None:
    transport = await make_transport(partitions=1)
    recorder = Recorder()
    await transport.subscribe([0], recorder, prefetch=10)
    await transport.publish(messages(0, "again"))

    first = (await recorder.wait_for(1))[0]
    assert not first.redelivered
    await recorder.nack_all()
    second = (await recorder.wait_for(2))[1]
    assert (second.body, second.redelivered) == (b"again", True)
    await second.ack()
    with pytest.raises(RuntimeError, match="already acknowledged"):
        await second.ack()


async def test_reject_dead_letters_with_the_reason(make_transport: MakeTransport) -> None:
    transport = await make_transport(partitions=3)
    recorder = Recorder()
    await transport.subscribe([0, 1, 2], recorder, prefetch=10)
    headers = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
    await transport.publish(messages(2, "poison", headers=headers))

    poison = (await recorder.wait_for(1))[0]
    await poison.reject("undecodable: msgpack error at byte 3")

    dead = await eventually(transport.dead_letters)
    assert len(dead) == 1
    assert (dead[0].partition, dead[0].body, dead[0].reason) == (2, b"poison", "undecodable: msgpack error at byte 3")
    assert dead[0].headers == {**headers, REASON_HEADER: "undecodable: msgpack error at byte 3"}
    # Reading the dead letters leaves them in place.
    assert [d.body for d in await transport.dead_letters()] == [b"poison"]
    # And the rejected message is gone from its partition.
    await transport.publish(messages(2, "next"))
    await recorder.wait_for(2)
    assert recorder.bodies() == [b"poison", b"next"]


async def test_delivery_limit_dead_letters(make_transport: MakeTransport) -> None:
    transport = await make_transport(partitions=1, delivery_limit=3)
    recorder = Recorder()
    await transport.subscribe([0], recorder, prefetch=10)
    await transport.publish(messages(0, "crashes the consumer"))

    async def dead_lettered() -> list[Any]:
        await recorder.nack_all()
        return await transport.dead_letters()

    dead = await eventually(dead_lettered)
    assert recorder.bodies() == [b"crashes the consumer"] * 3  # delivered exactly delivery_limit times
    assert (dead[0].partition, dead[0].body) == (0, b"crashes the consumer")
    assert "delivery limit" in dead[0].reason
    assert dead[0].headers[REASON_HEADER] == dead[0].reason


async def test_single_active_consumer_and_takeover(make_transport: MakeTransport) -> None:
    transport = await make_transport(partitions=1)
    first, second = Recorder(), Recorder()
    first_subscription = await transport.subscribe([0], first, prefetch=10)
    await transport.subscribe([0], second, prefetch=10)
    await transport.publish(messages(0, *[f"m{i}" for i in range(5)]))

    # Everything goes to the first subscriber (without single active consumer RabbitMQ would
    # round-robin, and the first would never see all five).
    await first.wait_for(5)
    await transport.publish(messages(0, "m5"))
    await first.wait_for(6)
    assert second.deliveries == []

    acked, first.pending = first.pending[:2], first.pending[2:]
    for delivery in acked:
        await delivery.ack()
    await first_subscription.close()

    # The second takes over, starting with the four the first left unacknowledged, in order.
    await second.wait_for(4)
    assert second.bodies() == [b"m2", b"m3", b"m4", b"m5"]
    assert all(d.redelivered for d in second.deliveries)
    await transport.publish(messages(0, "m6"))
    await second.wait_for(5, ack=True)
    assert second.bodies()[-1] == b"m6"
    assert second.events[-1] == ("assigned", 0)
    # Settling a delivery of the closed subscription is harmless: it was already handed back.
    await first.pending[0].ack()


async def test_assigned_then_revoked(make_transport: MakeTransport) -> None:
    transport = await make_transport(partitions=4)
    recorder = Recorder()
    subscription = await transport.subscribe([0, 2], recorder, prefetch=10)
    assert recorder.events == [("assigned", 0), ("assigned", 2)]
    await subscription.close()
    assert recorder.events == [("assigned", 0), ("assigned", 2), ("revoked", 0), ("revoked", 2)]
    await subscription.close()  # idempotent
    assert len(recorder.events) == 4


async def test_headers_round_trip(make_transport: MakeTransport) -> None:
    transport = await make_transport(partitions=1)
    recorder = Recorder()
    await transport.subscribe([0], recorder, prefetch=10)
    headers = {
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "tracestate": "congo=t61rcWkgMzE",
        "x-request-id": "réq-42",
    }
    await transport.publish(messages(0, "traced", headers=headers) + messages(0, "plain"))

    traced, plain = await recorder.wait_for(2)
    assert traced.headers == headers
    assert plain.headers == {}


async def test_publish_of_1000_messages_is_confirmed(make_transport: MakeTransport) -> None:
    transport = await make_transport(partitions=4)
    await transport.publish([Outgoing(i % 4, f"{i}".encode()) for i in range(1000)])
    if isinstance(transport, RabbitMQTransport):
        # publish() returned: every message is in its queue already.
        assert [await transport.ready_count(p) for p in range(4)] == [250] * 4
    recorder = Recorder()
    await transport.subscribe(range(4), recorder, prefetch=200)
    await recorder.wait_for(1000, ack=True)
    for p in range(4):
        assert recorder.bodies(p) == [f"{i}".encode() for i in range(p, 1000, 4)]


async def test_ready_count_counts_waiting_messages_only(make_transport: MakeTransport) -> None:
    transport = await make_transport(partitions=2)
    await transport.publish(messages(0, "a", "b", "c"))
    assert [await transport.ready_count(p) for p in range(2)] == [3, 0]
    recorder = Recorder()
    await transport.subscribe([0], recorder, prefetch=2)
    await recorder.wait_for(2)
    # Two are delivered and unacknowledged: only the third still waits.
    await eventually(lambda: _equals(transport.ready_count(0), 1))


async def test_delete_topology_closes_subscriptions_first(make_transport: MakeTransport) -> None:
    transport = await make_transport(partitions=2)
    recorder = Recorder()
    await transport.subscribe([0, 1], recorder, prefetch=10)
    await transport.publish(messages(1, "x"))
    await recorder.wait_for(1)
    await transport.delete_topology()
    assert sorted(e for e in recorder.events if e[0] == "revoked") == [("revoked", 0), ("revoked", 1)]


async def _equals(value: Awaitable[Any], expected: Any) -> bool:
    return await value == expected


async def test_publish_to_a_missing_partition_fails(make_transport: MakeTransport) -> None:
    transport = await make_transport(partitions=2)
    with pytest.raises(ValueError, match="partition 2 does not exist"):
        await transport.publish(messages(2, "nowhere"))


# --------------------------------------------------------------------------- RabbitMQ only


@pytest.fixture
async def amqp_proxy(amqp_url: str) -> AsyncIterator[TCPProxy]:
    """A TCP proxy in front of the test RabbitMQ."""
    async with TCPProxy("127.0.0.1", 5672) as proxy:
        yield proxy


def _via(proxy: TCPProxy) -> str:
    return AMQP_URL.replace(":5672", f":{proxy.port}")


@pytest.mark.rabbitmq
@pytest.mark.parametrize("make_transport", ["rabbitmq"], indirect=True)
async def test_recovers_from_a_cut_connection(amqp_proxy: TCPProxy, make_transport: MakeTransport) -> None:
    transport = await make_transport(partitions=2, url_override=_via(amqp_proxy))
    recorder = Recorder()
    await transport.subscribe([0, 1], recorder, prefetch=100)

    def spread(prefix: str, count: int) -> list[Outgoing]:
        return [out for i in range(count) for out in messages(i % 2, f"{prefix}-{i}")]

    before = spread("before", 60)
    await transport.publish(before)
    await recorder.wait_for(60)
    unacked = recorder.pending[-10:]
    for delivery in recorder.pending[:-10]:
        await delivery.ack()
    recorder.pending = []

    during = spread("during", 400)
    async with asyncio.TaskGroup() as tasks:
        # Cut while that publish is in flight and its messages are being delivered.
        publishing = tasks.create_task(transport.publish(during))
        await recorder.wait_for(61)
        assert await amqp_proxy.disconnect_all() >= 1
        cut_at = len(recorder.deliveries)
        # Published while the connection is down: publish() waits for the reconnect, then the confirms.
        after = spread("after", 60)
        await transport.publish(after)
    assert publishing.done()

    wanted = {out.body for out in before + during + after}

    async def nothing_lost() -> bool:
        await recorder.ack_all()
        return set(recorder.bodies()) >= wanted

    await eventually(nothing_lost, timeout=30)
    # The ten left unacknowledged at the cut came back: the broker requeued them.
    assert {d.body for d in unacked} <= {d.body for d in recorder.deliveries[cut_at:] if d.redelivered}
    # Settling a stale delivery from the dead channel is a harmless no-op.
    for delivery in unacked:
        await delivery.ack()
    # The listener was told it lost its partitions, and got them back.
    assert recorder.events[:2] == [("assigned", 0), ("assigned", 1)]
    assert ("revoked", 0) in recorder.events and ("revoked", 1) in recorder.events
    assert recorder.events[-2:] == [("assigned", 0), ("assigned", 1)]
    assert amqp_proxy.connections_made >= 2
    # Partition order holds within what each connection delivered (at-least-once: a message whose
    # ack was lost in the cut is delivered again, so only first deliveries are compared).
    for p in (0, 1):
        firsts = list(dict.fromkeys(d.body for d in recorder.deliveries if d.partition == p))
        assert [b for b in firsts if b.startswith(b"after")] == [out.body for out in after if out.partition == p]


@pytest.mark.rabbitmq
async def test_publish_gives_up_after_its_timeout(amqp_proxy: TCPProxy, amqp_url: str) -> None:
    transport = RabbitMQTransport(_via(amqp_proxy), partitions=1, namespace=unique("hutch-test"), publish_timeout_s=0.3)
    await transport.start()
    try:
        amqp_proxy.pause()  # a network partition: the socket stays open, no confirm comes back
        with pytest.raises(TimeoutError, match=r"did not confirm 1 of 1 message\(s\) within 0.3 s"):
            await transport.publish(messages(0, "stuck"))
        amqp_proxy.resume()
        await transport.publish(messages(0, "through"))
    finally:
        amqp_proxy.resume()
        await transport.close()
        await _cleanup_rabbitmq(amqp_url, transport)


async def test_topology_is_declared_idempotently(amqp_url: str) -> None:
    namespace = unique("hutch-test")
    first = RabbitMQTransport(amqp_url, partitions=2, namespace=namespace)
    second = RabbitMQTransport(amqp_url, partitions=2, namespace=namespace)
    try:
        await first.start()
        await first.start()
        await second.start()  # a second worker declaring the same topology
        await first.publish(messages(1, "x"))
        assert await second.ready_count(1) == 1
    finally:
        await second.close()
        await first.delete_topology()
        await first.close()
        await first.close()


# --------------------------------------------------------------------------- names


def test_names_live_under_the_namespace() -> None:
    assert names.partition_queue("hutch", 3) == "hutch.p3"
    assert names.partition_of_queue("hutch", "hutch.p3") == 3
    assert names.partition_of_queue("hutch", "other.p3") is None
    assert names.partition_of_queue("hutch", "hutch.dlq") is None
    assert names.work_exchange("acme") == "acme.work"
    assert names.dead_letter_exchange("acme") == "acme.dlx"
    assert names.dead_letter_queue("acme") == "acme.dlq"


def test_partition_queue_arguments() -> None:
    arguments = names.partition_queue_arguments(dead_letter_exchange="acme.dlx", delivery_limit=20)
    assert arguments == {
        "x-queue-type": "quorum",
        "x-single-active-consumer": True,
        "x-dead-letter-exchange": "acme.dlx",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
        "x-delivery-limit": 19,  # RabbitMQ counts returns: 19 returns = 20 deliveries
    }
    with pytest.raises(ValueError, match="at least 1"):
        names.partition_queue_arguments(dead_letter_exchange="acme.dlx", delivery_limit=0)


# --------------------------------------------------------------------------- dead-letter queue, cancels


async def _raw_channel(url: str) -> tuple[aiormq.abc.AbstractConnection, aiormq.abc.AbstractChannel]:
    connection = await aiormq.connect(url)
    return connection, await connection.channel()


async def test_the_dead_letter_queue_is_a_quorum_queue(amqp_url: str) -> None:
    transport = RabbitMQTransport(amqp_url, partitions=1, namespace=unique("hutch-test"))
    await transport.start()
    connection, channel = await _raw_channel(amqp_url)
    try:
        dlq = names.dead_letter_queue(transport.namespace)
        with pytest.raises(
            aiormq.exceptions.ChannelPreconditionFailed, match="received 'classic' but current is 'quorum'"
        ):
            await channel.queue_declare(dlq, durable=True, arguments={"x-queue-type": "classic"})
    finally:
        await connection.close()
        await transport.delete_topology()
        await transport.close()


async def test_an_existing_classic_dead_letter_queue_is_kept_with_a_warning(
    amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A deployment made before dead-letter queues were quorum queues.
    namespace = unique("hutch-test")
    connection, channel = await _raw_channel(amqp_url)
    await channel.queue_declare(names.dead_letter_queue(namespace), durable=True, arguments={"x-queue-type": "classic"})
    transport = RabbitMQTransport(amqp_url, partitions=1, namespace=namespace)
    try:
        with caplog.at_level("WARNING", logger="hutch.broker.transports.rabbitmq"):
            await transport.start()
        warning = next(r.getMessage() for r in caplog.records if "dead-letter queue" in r.getMessage())
        assert f"rabbitmqctl delete_queue {namespace}.dlq" in warning
        recorder = Recorder()
        await transport.subscribe([0], recorder, prefetch=10)
        await transport.publish(messages(0, "poison"))
        (delivery,) = await recorder.wait_for(1)
        await delivery.reject("kept in the old queue")
        dead = await eventually(transport.dead_letters)
        assert [(d.body, d.reason) for d in dead] == [(b"poison", "kept in the old queue")]
    finally:
        await connection.close()
        await transport.delete_topology()
        await transport.close()


async def test_a_consumer_the_broker_cancels_is_revoked_until_it_consumes_again(amqp_url: str) -> None:
    transport = RabbitMQTransport(amqp_url, partitions=2, namespace=unique("hutch-test"), reconnect_interval_s=0.1)
    await transport.start()
    connection, channel = await _raw_channel(amqp_url)
    try:
        recorder = Recorder()
        await transport.subscribe([0, 1], recorder, prefetch=10)
        changes: list[frozenset[int]] = []
        transport.on_consumability(lambda: changes.append(transport.cannot_consume))
        # Deleting the queue under its consumer makes the broker cancel it (basic.cancel).
        await channel.queue_delete(names.partition_queue(transport.namespace, 0))
        await eventually(lambda: _true(frozenset({0}) in changes))
        # aio-pika declares the queue again and consumes it: the partition is assigned again.
        await eventually(lambda: _true(changes[-1] == frozenset() and recorder.events[-1] == ("assigned", 0)))
        assert recorder.events == [("assigned", 0), ("assigned", 1), ("revoked", 0), ("assigned", 0)]
        assert transport.can_consume  # the connection itself never went away
    finally:
        await connection.close()
        await transport.delete_topology()
        await transport.close()


async def _true(value: bool) -> bool:
    return value
