"""Unit tests of the broker package: partitioning, envelopes, and the in-process transport's semantics.

``TestInProcessTransport`` states the transport contract (single active consumer per partition,
prefetch, nack/reject/delivery limit, assignment callbacks) against the ``transport`` fixture only,
so a RabbitMQ suite can subclass it and override ``transport`` (and ``quiet``, for asserting that
nothing more arrives over a network).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import types
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import msgpack
import pytest
from hutch.broker import (
    Control,
    Delivery,
    EventReceived,
    InProcessTransport,
    InstanceCreated,
    Outgoing,
    PartitionListener,
    PoisonMessage,
    Redrive,
    Subscription,
    TimerFired,
    Transport,
    partition_of,
)
from hutch.broker.envelopes import Message, decode, encode
from hutch.broker.transports import rabbitmq
from hutch.broker.transports.base import REASON_HEADER
from hypothesis import given
from hypothesis import strategies as st

from tests.helpers import eventually


# ---------------------------------------------------------------------------- partitioning
@pytest.mark.parametrize(
    ("workflow", "instance_id", "partitions", "expected"),
    [
        ("order", "order-42", 16, 14),
        ("order", "order-43", 16, 13),
        ("payments", "a", 16, 12),
        ("payments", "a", 7, 1),
        ("wf", "", 1024, 623),
        ("wf", "x" * 100, 3, 1),
    ],
)
def test_partition_of_is_pinned(workflow: str, instance_id: str, partitions: int, expected: int) -> None:
    # The partition is part of every Redis key and queue name of a deployment: a different hash
    # would orphan every existing instance, so these values must never change.
    assert partition_of(workflow, instance_id, partitions) == expected


def test_partition_of_depends_on_workflow_and_id() -> None:
    spread = {partition_of(wf, "same-id", 1024) for wf in ("a", "b", "c", "d")}
    assert len(spread) > 1
    assert partition_of("order", "x", 1) == 0


@given(workflow=st.text(max_size=64), instance_id=st.text(max_size=100), partitions=st.integers(1, 1024))
def test_partition_of_is_in_range_and_deterministic(workflow: str, instance_id: str, partitions: int) -> None:
    p = partition_of(workflow, instance_id, partitions)
    assert 0 <= p < partitions
    assert partition_of(workflow, instance_id, partitions) == p


def test_partition_of_spreads_ids_evenly() -> None:
    n, partitions = 10_000, 16
    counts = collections.Counter(partition_of("order", f"order-{i}", partitions) for i in range(n))
    expected = n / partitions
    chi_square = sum((counts[p] - expected) ** 2 / expected for p in range(partitions))
    # 15 degrees of freedom: 37.7 is the 0.1 % critical value (the pinned hash gives about 13).
    assert chi_square < 37.7, counts
    assert min(counts.values()) > 0.85 * expected


# ---------------------------------------------------------------------------- envelopes
EVERY_KIND: list[Message] = [
    InstanceCreated(workflow="order", instance_id="order-1"),
    EventReceived(workflow="order", instance_id="order-1", event_type="approval", payload=b"\x81\xa2ok\xc3", sent_ms=1),
    TimerFired(workflow="order", instance_id="order-1", timer=b"\x93\xa5sleep\x01\x02"),
    *(Control(workflow="order", instance_id="order-1", action=a) for a in ("pause", "resume", "terminate", "restart")),
    Redrive(workflow="order", instance_id="order-1"),
]


@pytest.mark.parametrize("message", EVERY_KIND, ids=lambda m: f"{m.kind}-{getattr(m, 'action', '')}")
def test_envelope_round_trip(message: Message) -> None:
    body = encode(message)
    assert isinstance(body, bytes)
    back = decode(body)
    assert type(back) is type(message)
    assert back == message
    assert back.id == message.id


def test_every_message_gets_a_distinct_id() -> None:
    ids = {InstanceCreated(workflow="w", instance_id="i").id for _ in range(100)}
    assert len(ids) == 100


@given(
    workflow=st.text(max_size=64),
    instance_id=st.text(max_size=100),
    event_type=st.text(max_size=100),
    payload=st.binary(max_size=256),
    sent_ms=st.integers(0, 2**63 - 1),
)
def test_event_envelope_round_trips_any_content(
    workflow: str, instance_id: str, event_type: str, payload: bytes, sent_ms: int
) -> None:
    message = EventReceived(
        workflow=workflow, instance_id=instance_id, event_type=event_type, payload=payload, sent_ms=sent_ms
    )
    assert decode(encode(message)) == message


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xc1", r"^undecodable body \(FormatError"),  # 0xc1 is never used by msgpack
        (b"\x92\x01", r"^undecodable body .*incomplete input"),  # truncated array
        (b"", r"^undecodable body .*incomplete input"),
        (b"\x01\x02", r"^undecodable body \(ExtraData"),
        (_pack([1, 2]), r"^invalid message: .*valid dictionary"),
        (_pack("created"), r"^invalid message: .*valid dictionary"),
        (_pack({"kind": "bogus", "workflow": "w", "instance_id": "i"}), r"^invalid message: .*'bogus'.*'created'"),
        (_pack({"workflow": "w", "instance_id": "i"}), r"^invalid message: .*discriminator 'kind'"),
        (_pack({"kind": "event", "workflow": "w", "instance_id": "i", "sent_ms": 1, "payload": b""}), "event_type"),
        (_pack({"kind": "timer", "workflow": "w", "timer": b"t"}), r"timer\.instance_id: Field required"),
        (_pack({"kind": "control", "workflow": "w", "instance_id": "i", "action": "explode"}), r"control\.action"),
        (_pack({"kind": "created", "workflow": "w", "instance_id": "i", "extra": 1}), r"created\.extra"),
        (_pack({1: "int keys"}), r"^undecodable body"),
    ],
    ids=[
        "garbage",
        "truncated",
        "empty",
        "trailing-bytes",
        "array",
        "string",
        "unknown-kind",
        "no-kind",
        "missing-event-type",
        "missing-instance-id",
        "bad-action",
        "extra-field",
        "int-keys",
    ],
)
def test_decode_raises_poison_message_with_a_reason(body: bytes, reason: str) -> None:
    with pytest.raises(PoisonMessage) as info:
        decode(body)
    assert info.value.reason == str(info.value)
    assert re.search(reason, info.value.reason), info.value.reason


def test_poison_message_is_a_value_error() -> None:
    assert issubclass(PoisonMessage, ValueError)


# ---------------------------------------------------------------------------- transport semantics
class Recorder(PartitionListener):
    """A listener that records deliveries and ownership changes (and never blocks)."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.log: list[tuple[str, int]] = []

    def on_delivery(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)

    async def on_assigned(self, partition: int) -> None:
        self.log.append(("assigned", partition))

    async def on_revoked(self, partition: int) -> None:
        self.log.append(("revoked", partition))

    def bodies(self, partition: int | None = None) -> list[bytes]:
        return [d.body for d in self.deliveries if partition is None or d.partition == partition]


Subscribe = Callable[..., Awaitable[tuple[Recorder, Subscription]]]


async def received(recorder: Recorder, count: int, *, timeout: float = 5.0) -> list[Delivery]:
    """Wait until ``recorder`` has at least ``count`` deliveries; returns them all."""

    async def check() -> bool:
        return len(recorder.deliveries) >= count

    await eventually(check, timeout=timeout)
    return recorder.deliveries


class TestInProcessTransport:
    """The transport contract, stated against the ``transport`` fixture alone."""

    PARTITIONS = 4
    DELIVERY_LIMIT = 3

    @pytest.fixture
    async def transport(self) -> AsyncIterator[Transport]:
        transport = InProcessTransport(self.PARTITIONS, delivery_limit=self.DELIVERY_LIMIT)
        await transport.start()
        yield transport
        await transport.close()

    @pytest.fixture
    async def subscribe(self, transport: Transport) -> AsyncIterator[Subscribe]:
        """Subscribe a fresh Recorder; every subscription is closed at teardown (close is idempotent)."""
        subscriptions: list[Subscription] = []

        async def make(partitions: list[int], *, prefetch: int = 100) -> tuple[Recorder, Subscription]:
            recorder = Recorder()
            subscription = await transport.subscribe(partitions, recorder, prefetch=prefetch)
            subscriptions.append(subscription)
            return recorder, subscription

        yield make
        for subscription in reversed(subscriptions):
            await subscription.close()

    async def quiet(self) -> None:
        """Let anything the transport would still deliver arrive, before asserting that nothing did.

        The in-process transport delivers synchronously inside publish/ack/nack/close, so there is
        nothing to wait for; a networked transport overrides this with a short grace period.
        """

    async def test_messages_reach_the_active_consumer_in_order_with_their_headers(
        self, transport: Transport, subscribe: Subscribe
    ) -> None:
        rec, _ = await subscribe([0, 1, 2, 3])
        await transport.publish([Outgoing(1, f"m{i}".encode(), {"traceparent": f"t{i}"}) for i in range(5)])
        await transport.publish([Outgoing(2, b"x"), Outgoing(1, b"m5")])

        await received(rec, 7)

        assert rec.bodies(1) == [b"m0", b"m1", b"m2", b"m3", b"m4", b"m5"]
        assert rec.bodies(2) == [b"x"]
        assert [d.headers.get("traceparent") for d in rec.deliveries if d.partition == 1][:5] == [
            f"t{i}" for i in range(5)
        ]
        assert not any(d.redelivered for d in rec.deliveries)

    async def test_messages_published_before_any_consumer_wait_for_one(
        self, transport: Transport, subscribe: Subscribe
    ) -> None:
        await transport.publish([Outgoing(0, b"early-1"), Outgoing(0, b"early-2")])
        rec, _ = await subscribe([0])
        await received(rec, 2)
        assert rec.bodies() == [b"early-1", b"early-2"]

    async def test_single_active_consumer_and_takeover_with_unacked_messages_in_order(
        self, transport: Transport, subscribe: Subscribe
    ) -> None:
        first, first_sub = await subscribe([0])
        second, _ = await subscribe([0])
        assert first.log == [("assigned", 0)]
        assert second.log == []

        await transport.publish([Outgoing(0, f"m{i}".encode()) for i in range(4)])
        await received(first, 4)
        await self.quiet()
        assert second.deliveries == []  # the standby gets nothing while the active consumer lives
        await first.deliveries[0].ack()

        await first_sub.close()

        assert first.log == [("assigned", 0), ("revoked", 0)]
        assert second.log == [("assigned", 0)]
        await received(second, 3)
        assert second.bodies() == [b"m1", b"m2", b"m3"]  # the unacknowledged ones, in their order
        assert all(d.redelivered for d in second.deliveries)

        await transport.publish([Outgoing(0, b"m4")])
        await received(second, 4)
        assert second.deliveries[3].body == b"m4"
        assert second.deliveries[3].redelivered is False

    async def test_a_late_settle_from_the_old_owner_does_not_touch_the_new_owners_copy(
        self, transport: Transport, subscribe: Subscribe
    ) -> None:
        first, first_sub = await subscribe([0])
        second, _ = await subscribe([0])
        await transport.publish([Outgoing(0, b"m")])
        (stale,) = await received(first, 1)
        await first_sub.close()
        (current,) = await received(second, 1)

        with contextlib.suppress(Exception):  # a real broker refuses a settle on a closed channel
            await stale.ack()

        await current.nack()  # still unacknowledged, so it can be put back and comes again
        await received(second, 2)
        assert second.bodies() == [b"m", b"m"]

    async def test_closing_a_standby_consumer_changes_nothing_for_the_active_one(
        self, transport: Transport, subscribe: Subscribe
    ) -> None:
        active, _ = await subscribe([0])
        standby, standby_sub = await subscribe([0])
        await standby_sub.close()
        await transport.publish([Outgoing(0, b"m")])
        await received(active, 1)
        assert active.log == [("assigned", 0)]
        assert standby.log == []
        assert standby.deliveries == []

    async def test_prefetch_bounds_unacknowledged_deliveries(self, transport: Transport, subscribe: Subscribe) -> None:
        rec, _ = await subscribe([0], prefetch=2)
        await transport.publish([Outgoing(0, f"m{i}".encode()) for i in range(5)])

        await received(rec, 2)
        await self.quiet()
        assert rec.bodies() == [b"m0", b"m1"]

        await rec.deliveries[0].ack()
        await received(rec, 3)
        await self.quiet()
        assert rec.bodies() == [b"m0", b"m1", b"m2"]

        for i in range(1, 5):
            await (await received(rec, i + 1))[i].ack()
        assert rec.bodies() == [f"m{i}".encode() for i in range(5)]

    async def test_a_freed_prefetch_slot_serves_every_partition_of_the_consumer(
        self, transport: Transport, subscribe: Subscribe
    ) -> None:
        rec, _ = await subscribe([0, 1], prefetch=1)
        await transport.publish([Outgoing(0, b"a")])
        await transport.publish([Outgoing(1, b"b")])
        (first, *_) = await received(rec, 1)

        await first.ack()

        await received(rec, 2)
        assert sorted(rec.bodies()) == [b"a", b"b"]

    async def test_nack_redelivers_with_the_redelivered_flag(self, transport: Transport, subscribe: Subscribe) -> None:
        rec, _ = await subscribe([2])
        await transport.publish([Outgoing(2, b"m", {"h": "v"})])
        (first,) = await received(rec, 1)
        assert first.redelivered is False

        await first.nack()

        second = (await received(rec, 2))[1]
        assert (second.partition, second.body, second.headers["h"], second.redelivered) == (2, b"m", "v", True)
        await second.ack()
        await self.quiet()
        assert len(rec.deliveries) == 2
        assert await transport.dead_letters() == []

    async def test_reject_dead_letters_with_the_reason(self, transport: Transport, subscribe: Subscribe) -> None:
        rec, _ = await subscribe([3])
        await transport.publish([Outgoing(3, b"\xc1garbage", {"traceparent": "t-1"})])
        (delivery,) = await received(rec, 1)

        await delivery.reject("undecodable body (FormatError: )")

        async def dead() -> list[Any]:
            return await transport.dead_letters()

        (letter,) = await eventually(dead)
        assert (letter.partition, letter.body) == (3, b"\xc1garbage")
        assert letter.reason == "undecodable body (FormatError: )"
        assert letter.headers[REASON_HEADER] == letter.reason
        assert letter.headers["traceparent"] == "t-1"
        await self.quiet()
        assert len(rec.deliveries) == 1  # a rejected message is not redelivered

    async def test_delivery_limit_dead_letters_a_message_that_keeps_failing(
        self, transport: Transport, subscribe: Subscribe
    ) -> None:
        rec, _ = await subscribe([1])
        await transport.publish([Outgoing(1, b"boom"), Outgoing(1, b"fine")])
        for n in range(1, self.DELIVERY_LIMIT + 1):

            async def booms(n: int = n) -> list[Delivery]:
                found = [d for d in rec.deliveries if d.body == b"boom"]
                return found if len(found) >= n else []

            await (await eventually(booms))[n - 1].nack()

        async def dead() -> list[Any]:
            return await transport.dead_letters()

        (letter,) = await eventually(dead)
        assert letter.body == b"boom"
        assert "delivery limit" in letter.reason
        assert letter.headers[REASON_HEADER] == letter.reason
        await received(rec, self.DELIVERY_LIMIT + 1)
        await self.quiet()
        assert rec.bodies().count(b"boom") == self.DELIVERY_LIMIT
        assert rec.bodies().count(b"fine") == 1  # the queue moved on

    async def test_on_assigned_and_on_revoked_follow_ownership(
        self, transport: Transport, subscribe: Subscribe
    ) -> None:
        a, a_sub = await subscribe([0, 1, 2])
        b, b_sub = await subscribe([1, 2, 3])
        assert sorted(a.log) == [("assigned", 0), ("assigned", 1), ("assigned", 2)]
        assert b.log == [("assigned", 3)]

        await a_sub.close()
        assert sorted(a.log[3:]) == [("revoked", 0), ("revoked", 1), ("revoked", 2)]
        assert sorted(b.log[1:]) == [("assigned", 1), ("assigned", 2)]

        await a_sub.close()  # idempotent
        assert len(a.log) == 6

        await transport.publish([Outgoing(p, b"m") for p in range(4)])
        await received(b, 3)
        await self.quiet()
        assert sorted(d.partition for d in b.deliveries) == [1, 2, 3]  # partition 0 has nobody

        await b_sub.close()
        assert sorted(b.log[3:]) == [("revoked", 1), ("revoked", 2), ("revoked", 3)]


# ---------------------------------------------------------------------------- in-process specifics
async def test_inprocess_depth_counts_ready_and_unacked() -> None:
    transport = InProcessTransport(2)
    await transport.start()
    rec = Recorder()
    await transport.subscribe([0], rec, prefetch=1)
    await transport.publish([Outgoing(0, b"a"), Outgoing(0, b"b"), Outgoing(0, b"c")])
    assert transport.depth(0) == (2, 1)
    await rec.deliveries[0].ack()
    assert transport.depth(0) == (1, 1)


async def test_inprocess_settling_twice_is_an_error() -> None:
    transport = InProcessTransport(1)
    rec = Recorder()
    await transport.subscribe([0], rec, prefetch=1)
    await transport.publish([Outgoing(0, b"a")])
    await rec.deliveries[0].ack()
    with pytest.raises(RuntimeError, match="already acknowledged"):
        await rec.deliveries[0].nack()


async def test_inprocess_publish_checks_partition_and_state() -> None:
    transport = InProcessTransport(2)
    await transport.start()
    with pytest.raises(ValueError, match=r"partition 2 does not exist \(0\.\.1\)"):
        await transport.publish([Outgoing(2, b"a")])
    await transport.close()
    with pytest.raises(ConnectionError, match="closed"):
        await transport.publish([Outgoing(0, b"a")])


# ----------------------------------------------------------------------------- acks on a dead connection
class _StuckChannel:
    """An aiormq channel whose connection died unnoticed: every frame awaits room that never comes."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self._never = asyncio.Event()

    async def basic_ack(self, tag: int, *, wait: bool = True) -> None:
        self.calls.append(f"ack {tag}")
        await self._never.wait()

    async def basic_reject(self, tag: int, *, requeue: bool = True, wait: bool = True) -> None:
        self.calls.append(f"reject {tag}")
        await self._never.wait()


def _delivery_on(channel: _StuckChannel, tag: int) -> Any:
    message = types.SimpleNamespace(
        channel=channel, delivery_tag=tag, body=b"x", headers={}, redelivered=False, timestamp=None, routing_key="q"
    )
    return rabbitmq._RabbitDelivery(cast(Any, None), 0, cast(Any, message))


async def test_an_ack_on_a_connection_that_died_unnoticed_returns_and_the_channel_is_not_waited_on_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Seen in a 30 000-instance storm: an ack awaiting room in aiormq's write queue of a dead connection held
    # the orchestrator's turn forever, and created instances were never started after the reconnect.
    monkeypatch.setattr(rabbitmq, "SETTLE_TIMEOUT_S", 0.05)
    channel = _StuckChannel()
    async with asyncio.timeout(5):
        await _delivery_on(channel, 1).ack()
        await _delivery_on(channel, 2).nack()
        await _delivery_on(channel, 3).ack()
    assert channel.calls == ["ack 1"]  # later settles on the stuck channel do not wait again
