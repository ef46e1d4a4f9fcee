"""Event notices: the owner applies an event on its sender's Redis announcement, ahead of its broker message.

An event's broker message waits for a quorum queue's replicated write before it is delivered; the
client also announces the event on its partition's sharded channel ``<namespace>:{pN}:events``, and
the partition's owner applies it from that at once. The broker message stays the durable path: a
notice lost only costs time, and the message trailing it is acknowledged with no further work. A
notice names the event its sender sent the instance before, and is applied only once that one is
held, so no event overtakes an earlier one of the same sender.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hutch import Client, Settings, Status, WorkflowEntrypoint
from hutch.broker import Outgoing
from hutch.broker.dispatch import BrokerDispatcher
from hutch.broker.envelopes import EventReceived, encode
from hutch.clock import Clock
from hutch.config import DEFAULT_LIMITS
from hutch.consumers import Worker
from hutch.consumers.runtime import start_distributed
from hutch.consumers.settlement import ACK
from hutch.serialization import pack
from hutch.store.announcements import EventNotice, event_notice, event_notice_bytes

from tests.conftest import drop_namespace
from tests.helpers import eventually, record_settles, unique

pytestmark = [pytest.mark.redis]

AFTER: dict[str, int] = {}  # instance id -> runs of the step after its waits


class TwoWaits(WorkflowEntrypoint):
    """Takes two "go" events in the order they are applied, then one step."""

    async def run(self, event: Any, step: Any) -> Any:
        first = await step.wait_for_event("first", "go", timeout="1 minute")
        second = await step.wait_for_event("second", "go", timeout="1 minute")

        async def after() -> list[Any]:
            AFTER[event.instance_id] = AFTER.get(event.instance_id, 0) + 1
            return [first.payload, second.payload]

        return await step.do("after", after)


@pytest.fixture
async def owner(redis_url: str, amqp_url: str) -> AsyncIterator[tuple[Client, Worker]]:
    """A distributed worker (and its colocated client) on the real servers, in a namespace of its own."""
    namespace = unique("test")
    settings = Settings(redis_url=redis_url, amqp_url=amqp_url, namespace=namespace, partitions=4, heartbeat_s=0.2)
    client, worker = await start_distributed(
        {"two": TwoWaits}, settings=settings, limits=DEFAULT_LIMITS, clock=Clock(), resources={}, binding_names={}
    )
    try:
        yield client, worker
    finally:
        await worker.shutdown(timeout=0)
        await worker.transport.delete_topology()  # type: ignore[attr-defined]
        await client.close()
        await drop_namespace(namespace)


async def _waiting(client: Client, iid: str) -> None:
    instance = await client.workflow("two").get(iid)

    async def waiting() -> bool:
        return (await instance.status()).status == Status.WAITING

    await eventually(waiting)


def _notice(iid: str, payload: Any, prev: str | None = None) -> EventNotice:
    return EventNotice("two", iid, "go", pack(payload), 1_000, uuid.uuid4().hex, prev)


def _message(notice: EventNotice) -> EventReceived:
    """The broker message the same send publishes next to ``notice``."""
    return EventReceived(
        id=notice.event_id,
        workflow=notice.workflow,
        instance_id=notice.instance_id,
        event_type=notice.event_type,
        payload=notice.payload,
        sent_ms=notice.sent_ms,
    )


async def _history_kinds(client: Client, iid: str) -> list[tuple[str, Any]]:
    store: Any = client._store
    partition = client._partition("two", iid)
    snapshot = (await store.load_many([(partition, "two", iid)]))[0]
    return [(r.get("k"), r.get("n")) for r in snapshot.history]


# ---------------------------------------------------------------------------- the format
def test_a_notice_reads_back_as_sent() -> None:
    notice = _notice("i-1", {"ok": True}, prev="before")
    assert event_notice(event_notice_bytes(notice)) == notice
    traced = dataclasses.replace(notice, traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01")
    assert event_notice(event_notice_bytes(traced)).traceparent == traced.traceparent
    with pytest.raises(ValueError):
        event_notice(b"3 1000 4\nwf:i")  # a creation's announcement is not an event notice


# ---------------------------------------------------------------------------- the sender
class _Transport:
    partitions = 4

    def __init__(self) -> None:
        self.published: list[Outgoing] = []

    async def publish(self, messages: list[Outgoing]) -> None:
        self.published += messages


async def test_the_dispatcher_chains_its_notices_and_sends_none_behind_a_control() -> None:
    announced: list[EventNotice] = []

    async def announce(partition: int, data: bytes) -> None:
        announced.append(event_notice(data))

    transport = _Transport()
    dispatcher = BrokerDispatcher(transport, announce=announce)  # type: ignore[arg-type]
    await dispatcher.event("two", "a", "go", pack(1), 1, "e1")
    await dispatcher.event("two", "a", "go", pack(2), 2, "e2")
    await dispatcher.event("two", "b", "go", pack(3), 3, "e3")
    # Each notice names the sender's previous event to the same instance.
    assert [(n.instance_id, n.event_id, n.prev) for n in announced] == [
        ("a", "e1", None),
        ("a", "e2", "e1"),
        ("b", "e3", None),
    ]

    # A control travels by the broker only: the next event must stay behind it, so it has no notice...
    await dispatcher.control("two", "a", "pause")
    await dispatcher.event("two", "a", "go", pack(4), 4, "e4")
    assert len(announced) == 3
    # ... and the one after it is chained to it.
    await dispatcher.event("two", "a", "go", pack(5), 5, "e5")
    assert (announced[-1].event_id, announced[-1].prev) == ("e5", "e4")
    assert len(transport.published) == 6  # every event and the control went to the broker too

    async def broken(partition: int, data: bytes) -> None:
        raise ConnectionError("redis is down")

    quiet = BrokerDispatcher(_Transport(), announce=broken)  # type: ignore[arg-type]
    await quiet.event("two", "a", "go", pack(1), 1, "e1")  # a failed notice is no failed send


# ---------------------------------------------------------------------------- the owner
@pytest.mark.rabbitmq
async def test_an_event_heard_alone_is_applied_once_and_its_broker_message_then_costs_nothing(
    owner: tuple[Client, Worker],
) -> None:
    client, worker = owner
    store: Any = client._store
    instance = await client.workflow("two").create()
    partition = client._partition("two", instance.id)
    await _waiting(client, instance.id)

    # Announced with no broker message at all: only the notice can deliver them.
    first = _notice(instance.id, "one")
    second = _notice(instance.id, "two", prev=first.event_id)
    await store.announce_event(partition, event_notice_bytes(first))
    await store.announce_event(partition, event_notice_bytes(second))
    final = await instance.wait(timeout=10)
    assert (final.status, final.output, AFTER[instance.id]) == (Status.COMPLETE, ["one", "two"], 1)

    # Their broker messages arriving now (as they would, a broker round trip later) are
    # acknowledged as done, and change nothing.
    settled = record_settles(worker)
    history = await _history_kinds(client, instance.id)
    await worker.transport.publish([Outgoing(partition, encode(_message(n))) for n in (first, second)])

    async def acked() -> bool:
        return [outcome for _, outcome in settled] == [ACK, ACK]

    await eventually(acked)
    assert await _history_kinds(client, instance.id) == history
    assert AFTER[instance.id] == 1


@pytest.mark.rabbitmq
async def test_a_notice_is_not_applied_before_the_event_its_sender_sent_first(owner: tuple[Client, Worker]) -> None:
    client, worker = owner
    store: Any = client._store
    instance = await client.workflow("two").create()
    partition = client._partition("two", instance.id)
    await _waiting(client, instance.id)

    # The first event's notice was lost; the second's is heard while the first is still on its
    # way through the broker. Applying it would take "two" before "one".
    first = _notice(instance.id, "one")
    second = _notice(instance.id, "two", prev=first.event_id)
    await store.announce_event(partition, event_notice_bytes(second))
    await worker.orchestrator.settle()
    assert await _history_kinds(client, instance.id) == [("life", None), ("wait", "first")]

    await worker.transport.publish([Outgoing(partition, encode(_message(n))) for n in (first, second)])
    final = await instance.wait(timeout=10)
    assert (final.status, final.output) == (Status.COMPLETE, ["one", "two"])


@pytest.mark.rabbitmq
async def test_events_still_arrive_when_no_notice_is_applied(owner: tuple[Client, Worker]) -> None:
    client, worker = owner
    store: Any = client._store
    # As if the partition's consumer held its whole prefetch: older messages may wait in the
    # queue (one maybe for this instance), so no notice may overtake them.
    worker.orchestrator._prefetch = 0  # type: ignore[attr-defined]
    instance = await client.workflow("two").create()
    partition = client._partition("two", instance.id)
    await _waiting(client, instance.id)
    await store.announce_event(partition, event_notice_bytes(_notice(instance.id, "lost")))
    await worker.orchestrator.settle()
    assert await _history_kinds(client, instance.id) == [("life", None), ("wait", "first")]

    await instance.send_event("go", "one")
    await instance.send_event("go", "two")
    final = await instance.wait(timeout=10)
    assert (final.status, final.output, AFTER[instance.id]) == (Status.COMPLETE, ["one", "two"], 1)


@pytest.mark.rabbitmq
async def test_sent_events_take_the_fast_path_in_order(owner: tuple[Client, Worker]) -> None:
    client, worker = owner
    heard: list[str] = []
    notice_event = worker.orchestrator.notice_event

    def spy(partition: int, notice: EventNotice) -> None:
        heard.append(notice.event_id)
        notice_event(partition, notice)

    worker.orchestrator.notice_event = spy  # type: ignore[method-assign]
    instance = await client.workflow("two").create()
    await _waiting(client, instance.id)
    await instance.send_event("go", "one", event_id="first")
    await instance.send_event("go", "two", event_id="second")
    final = await instance.wait(timeout=10)
    assert (final.status, final.output, AFTER[instance.id]) == (Status.COMPLETE, ["one", "two"], 1)
    assert heard == ["first", "second"]


@pytest.mark.rabbitmq
async def test_an_event_heard_before_a_restart_is_not_applied_again_by_its_broker_message(
    owner: tuple[Client, Worker],
) -> None:
    client, worker = owner
    store: Any = client._store
    instance = await client.workflow("two").create()
    partition = client._partition("two", instance.id)
    await _waiting(client, instance.id)
    first = _notice(instance.id, "one")
    await store.announce_event(partition, event_notice_bytes(first))

    async def taken() -> bool:
        return ("wait", "second") in await _history_kinds(client, instance.id)

    await eventually(taken)
    # Restarted (by someone else) before the event's broker message arrived: the new run forgot
    # the events, but the owner knows this one was delivered already.
    assert (await instance.restart()).applied
    await _waiting(client, instance.id)
    settled = record_settles(worker)
    await worker.transport.publish([Outgoing(partition, encode(_message(first)))])

    async def acked() -> bool:
        return [outcome for _, outcome in settled] == [ACK]

    await eventually(acked)
    kinds = await _history_kinds(client, instance.id)
    assert kinds[-1] == ("wait", "first") and ("res", "first") not in kinds
