"""Every broker delivery the partition owner handles is settled exactly once, as its path decided.

Against the embedded runtime (fakeredis and the in-process transport): each delivery handed to
the orchestrator is wrapped so that its ack, requeue and dead-letter calls are counted. Paths:
a commit acks; a commit the store refuses (a conflict) requeues, and the redelivery acks; a turn
Redis could not commit (an outage) holds its deliveries — no requeue, which would count toward
the delivery limit — and acks them once the retry commits; a poison message and an event for an
instance that does not exist are dead-lettered with the reason.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import hutch
import pytest
from hutch import Client, Status, WorkflowEntrypoint
from hutch.broker.envelopes import EventReceived, PoisonMessage, decode, encode
from hutch.broker.transports.base import Delivery, Outgoing
from hutch.broker.transports.inprocess import InProcessTransport
from hutch.consumers.orchestrator import Orchestrator
from hutch.consumers.settlement import ACK, REQUEUE, DeadLetter, Settlement, Settling
from hutch.consumers.worker import Worker
from hutch.serialization import pack
from hutch.store.base import CommitResult, Transition
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.helpers import eventually, wait_status


class TwoEvents(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        first = await step.wait_for_event("first", "first", timeout="1 hour")
        second = await step.wait_for_event("second", "second", timeout="1 hour")
        return [first.payload, second.payload]


class Counted(Delivery):
    """A delivery that records how it was settled, then settles the real one."""

    def __init__(self, inner: Delivery) -> None:
        self._inner = inner
        self.partition = inner.partition
        self.body = inner.body
        self.headers = inner.headers
        self.redelivered = inner.redelivered
        self.calls: list[str] = []

    async def ack(self) -> None:
        self.calls.append("ack")
        await self._inner.ack()

    async def nack(self) -> None:
        self.calls.append("requeue")
        await self._inner.nack()

    async def reject(self, reason: str) -> None:
        self.calls.append(f"dead-letter: {reason}")
        await self._inner.reject(reason)


@pytest.fixture
async def embedded() -> AsyncIterator[tuple[Client, Orchestrator, InProcessTransport, list[Counted]]]:
    client = await hutch.connect({"two": TwoEvents})
    worker = client.runtime_worker
    assert isinstance(worker, Worker)
    orchestrator = worker.orchestrator
    transport = worker.transport
    assert isinstance(transport, InProcessTransport)
    deliveries: list[Counted] = []
    deliver = orchestrator.on_delivery

    def counting(delivery: Delivery) -> None:
        counted = Counted(delivery)
        deliveries.append(counted)
        deliver(counted)

    orchestrator.on_delivery = counting  # type: ignore[method-assign]
    try:
        yield client, orchestrator, transport, deliveries
    finally:
        await client.close()


def _of(deliveries: list[Counted], message_id: str) -> list[list[str]]:
    """The settlement calls of each delivery of the message with this envelope id, in order."""
    found = []
    for d in deliveries:
        try:
            if decode(d.body).id == message_id:
                found.append(d.calls)
        except PoisonMessage:
            continue
    return found


async def test_every_delivery_is_settled_once_on_every_path(
    embedded: tuple[Client, Orchestrator, InProcessTransport, list[Counted]],
) -> None:
    client, orchestrator, transport, deliveries = embedded
    instance = await client.workflow("two").create()
    await wait_status(instance, Status.WAITING)
    store = orchestrator.store
    commit_many = store.commit_many
    partition = client._partition("two", instance.id)

    # An outage: the turn's commit fails; the delivery is held (not requeued) and acked once the
    # retried turn commits.
    failures: list[int] = []

    async def unreachable_once(transitions: list[Transition], fences: dict[int, str]) -> list[CommitResult]:
        if not failures:
            failures.append(len(transitions))
            raise RedisConnectionError("Redis is down (test)")
        return await commit_many(transitions, fences)

    store.commit_many = unreachable_once  # type: ignore[method-assign]
    first = EventReceived(workflow="two", instance_id=instance.id, event_type="first", payload=pack(1), sent_ms=1)
    await transport.publish([Outgoing(partition, encode(first))])

    async def first_acked() -> bool:
        return _of(deliveries, first.id) == [["ack"]]

    await eventually(first_acked)
    assert failures == [1]

    # A commit the store refuses (as if another writer moved the instance on): requeued once,
    # and the redelivery is acked.
    refused: list[int] = []

    async def conflict_once(transitions: list[Transition], fences: dict[int, str]) -> list[CommitResult]:
        if not refused:
            refused.append(len(transitions))
            return [CommitResult.CONFLICT] * len(transitions)
        return await commit_many(transitions, fences)

    store.commit_many = conflict_once  # type: ignore[method-assign]
    second = EventReceived(workflow="two", instance_id=instance.id, event_type="second", payload=pack(2), sent_ms=2)
    await transport.publish([Outgoing(partition, encode(second))])
    final = await instance.wait(timeout=10)
    assert (final.status, final.output) == (Status.COMPLETE, [1, 2])
    assert refused == [1]
    assert _of(deliveries, second.id) == [["requeue"], ["ack"]]

    # Dead letters, with the reason: a body that does not decode, an event for no instance.
    await transport.publish([Outgoing(0, b"not an envelope")])
    nobody = EventReceived(workflow="two", instance_id="nobody", event_type="first", payload=pack(None), sent_ms=3)
    await transport.publish([Outgoing(client._partition("two", "nobody"), encode(nobody))])

    async def two_dead() -> bool:
        return len(await transport.dead_letters()) == 2

    await eventually(two_dead)
    reasons = sorted(d.reason for d in await transport.dead_letters())
    assert "does not exist" in reasons[0] and "nobody" in reasons[0]
    assert reasons[1]  # the decoder's reason
    assert _of(deliveries, nobody.id) == [[f"dead-letter: {reasons[0]}"]]
    poison = [d.calls for d in deliveries if d.body == b"not an envelope"]
    assert poison == [[f"dead-letter: {reasons[1]}"]]

    # And no delivery of the whole run was settled twice or left unsettled.
    await orchestrator.settle()
    assert all(len(d.calls) == 1 for d in deliveries), [d.calls for d in deliveries]
    assert all(transport.depth(p) == (0, 0) for p in range(transport.partitions))


class _Recorded(Delivery):
    partition = 0
    body = b""
    headers: dict[str, str] = {}
    redelivered = False

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def ack(self) -> None:
        self.calls.append("ack")

    async def nack(self) -> None:
        self.calls.append("requeue")

    async def reject(self, reason: str) -> None:
        self.calls.append(f"dead-letter: {reason}")


async def test_a_settlement_is_decided_once_and_carried_out_once_even_when_the_block_fails() -> None:
    acked, requeued, dead, undecided = (Settlement(_Recorded()) for _ in range(4))
    acked.decide(ACK)
    with pytest.raises(RuntimeError, match="after Ack"):
        acked.decide(REQUEUE)
    requeued.decide(REQUEUE)
    dead.decide(DeadLetter("bad"))
    with pytest.raises(RedisConnectionError):
        async with Settling([acked, None, requeued, dead, undecided]):
            raise RedisConnectionError("the turn failed after deciding")
    async with Settling([acked, requeued, dead, undecided]):  # a retried turn: nothing twice
        pass
    calls = [s.delivery.calls for s in (acked, requeued, dead, undecided)]  # type: ignore[attr-defined]
    assert calls == [["ack"], ["requeue"], ["dead-letter: bad"], []]
    assert (acked.settled, undecided.settled) == (True, False)
