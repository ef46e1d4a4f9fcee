"""An in-process transport with RabbitMQ's semantics, for the embedded mode and fast tests."""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass, field

from hutch.broker.transports.base import (
    DeadLetter,
    Delivery,
    Outgoing,
    PartitionListener,
    Subscription,
    Transport,
    dead_letter_headers,
)


@dataclass(slots=True)
class _Message:
    body: bytes
    headers: dict[str, str]
    deliveries: int = 0


@dataclass(slots=True)
class _Consumer:
    listener: PartitionListener
    prefetch: int
    unacked: int = 0
    closed: bool = False
    partitions: tuple[int, ...] = ()


@dataclass(slots=True)
class _Queue:
    ready: collections.deque[_Message] = field(default_factory=collections.deque)
    consumers: list[_Consumer] = field(default_factory=list)  # consumers[0] is the active one
    unacked: dict[int, tuple[_Consumer, _Message]] = field(default_factory=dict)


class _InProcessDelivery(Delivery):
    __slots__ = ("_done", "_message", "_queue_owner", "_tag", "body", "headers", "partition", "redelivered")

    def __init__(self, owner: InProcessTransport, partition: int, tag: int, message: _Message) -> None:
        self._queue_owner = owner
        self.partition = partition
        self._tag = tag
        self._message = message
        self.body = message.body
        self.headers = message.headers
        self.redelivered = message.deliveries > 1
        self._done = False

    def _settle(self) -> None:
        if self._done:
            raise RuntimeError("delivery already acknowledged")
        self._done = True

    async def ack(self) -> None:
        self._settle()
        self._queue_owner._settle(self.partition, self._tag, None)

    async def nack(self) -> None:
        self._settle()
        self._queue_owner._settle(self.partition, self._tag, "requeue")

    async def reject(self, reason: str) -> None:
        self._settle()
        self._queue_owner._settle(self.partition, self._tag, reason)


class _InProcessSubscription(Subscription):
    def __init__(self, owner: InProcessTransport, consumer: _Consumer, partitions: Sequence[int]) -> None:
        self._owner = owner
        self._consumer = consumer
        self._partitions = list(partitions)

    async def close(self) -> None:
        if self._consumer.closed:
            return
        self._consumer.closed = True
        await self._owner._remove_consumer(self._consumer, self._partitions)


class InProcessTransport(Transport):
    """Partition queues in memory: single active consumer, prefetch, redelivery, dead-lettering.

    Args:
        partitions: the number of partition queues.
        delivery_limit: deliveries of one message before it is dead-lettered (RabbitMQ's
            ``x-delivery-limit`` on quorum queues).
    """

    def __init__(self, partitions: int, *, delivery_limit: int = 20) -> None:
        self.partitions = partitions
        self.delivery_limit = delivery_limit
        self._queues = [_Queue() for _ in range(partitions)]
        self._dead: list[DeadLetter] = []
        self._next_tag = 0
        self._closed = False

    async def start(self) -> None:
        """Accept publishes again (there is nothing to connect to); idempotent."""
        self._closed = False

    async def close(self) -> None:
        """Refuse publishes and pings from now on; queued messages stay until :meth:`delete_topology`."""
        self._closed = True

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Queue the messages and deliver to each partition's active consumer at once.

        Raises:
            ConnectionError: the transport is closed.
            ValueError: a message names a partition that does not exist.
        """
        if self._closed:
            raise ConnectionError("the in-process transport is closed")
        touched = set()
        for out in messages:
            if not 0 <= out.partition < self.partitions:
                raise ValueError(f"partition {out.partition} does not exist (0..{self.partitions - 1})")
            self._queues[out.partition].ready.append(_Message(out.body, dict(out.headers)))
            touched.add(out.partition)
        for p in touched:
            self._pump(p)

    async def subscribe(self, partitions: Sequence[int], listener: PartitionListener, *, prefetch: int) -> Subscription:
        """Join each partition's consumers; the first one on a queue is its single active consumer."""
        consumer = _Consumer(listener, prefetch, partitions=tuple(partitions))
        for p in partitions:
            queue = self._queues[p]
            queue.consumers.append(consumer)
            if len(queue.consumers) == 1:
                await listener.on_assigned(p)
                self._pump(p)
        return _InProcessSubscription(self, consumer, partitions)

    async def ping(self) -> None:
        """Raise ``ConnectionError`` once the transport is closed, as a lost broker would."""
        if self._closed:
            raise ConnectionError("the in-process transport is closed")

    async def dead_letters(self) -> list[DeadLetter]:
        """The rejected and over-delivered messages, oldest first."""
        return list(self._dead)

    async def ready_count(self, partition: int) -> int:
        """Messages waiting in a partition queue (delivered-but-unacknowledged ones not included)."""
        return len(self._queues[partition].ready)

    async def delete_topology(self) -> None:
        """Drop every consumer (their subscriptions' ``close()`` become no-ops), message and dead letter."""
        consumers = {id(c): c for queue in self._queues for c in queue.consumers}
        for consumer in consumers.values():
            consumer.closed = True  # its subscription's close() is then a no-op
            await self._remove_consumer(consumer, consumer.partitions)
        self._queues = [_Queue() for _ in range(self.partitions)]
        self._dead.clear()

    def depth(self, partition: int) -> tuple[int, int]:
        """(ready, unacknowledged) message counts of a partition queue."""
        queue = self._queues[partition]
        return len(queue.ready), len(queue.unacked)

    async def _remove_consumer(self, consumer: _Consumer, partitions: Sequence[int]) -> None:
        for p in partitions:
            queue = self._queues[p]
            was_active = bool(queue.consumers) and queue.consumers[0] is consumer
            queue.consumers.remove(consumer)
            # Like a closed AMQP channel: its unacknowledged deliveries go back, in order, first.
            returned = [tag for tag, (c, _) in queue.unacked.items() if c is consumer]
            for tag in reversed(returned):
                _, message = queue.unacked.pop(tag)
                queue.ready.appendleft(message)
            if was_active:
                await consumer.listener.on_revoked(p)
                if queue.consumers:
                    await queue.consumers[0].listener.on_assigned(p)
            self._pump(p)

    def _settle(self, partition: int, tag: int, outcome: str | None) -> None:
        queue = self._queues[partition]
        entry = queue.unacked.pop(tag, None)
        if entry is None:
            return  # the consumer went away and the message was already requeued
        consumer, message = entry
        was_full = consumer.unacked >= consumer.prefetch
        consumer.unacked -= 1
        if outcome == "requeue":
            queue.ready.appendleft(message)
        elif outcome is not None:
            self._dead_letter(partition, message, outcome)
        self._pump(partition)
        if was_full and consumer.unacked < consumer.prefetch:
            # The prefetch budget is shared by all the consumer's partitions: messages that became
            # ready elsewhere while it was full must get the freed slot, or they wait forever.
            for p in consumer.partitions:
                if p != partition:
                    self._pump(p)

    def _dead_letter(self, partition: int, message: _Message, reason: str) -> None:
        headers = dead_letter_headers(message.headers, reason)
        self._dead.append(DeadLetter(partition, message.body, headers, reason))

    def _pump(self, partition: int) -> None:
        queue = self._queues[partition]
        if not queue.consumers:
            return
        consumer = queue.consumers[0]
        while queue.ready and consumer.unacked < consumer.prefetch and not consumer.closed:
            message = queue.ready.popleft()
            message.deliveries += 1
            if message.deliveries > self.delivery_limit:
                self._dead_letter(partition, message, f"delivery limit of {self.delivery_limit} exceeded")
                continue
            self._next_tag += 1
            queue.unacked[self._next_tag] = (consumer, message)
            consumer.unacked += 1
            consumer.listener.on_delivery(_InProcessDelivery(self, partition, self._next_tag, message))
