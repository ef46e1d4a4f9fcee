"""Moving a stopped deployment's queued messages to its new partitions.

This is the RabbitMQ side of ``hutch admin repartition`` (the Redis side is engine/store/repartition.py).

Every message is about one instance and waits in the queue of the instance's partition
(broker/dispatch.py routes it by ``partition_of(workflow, instance id, P)``). With the workers
stopped nothing consumes the queues, and the messages are moved (consumed, since RabbitMQ refuses
``basic.get`` on single-active-consumer quorum queues) in two passes:

1. drain: every message of every old partition queue goes, queue by queue and in queue order, to
   one staging queue (``<namespace>.repartition``, a quorum queue like the partition queues). The
   old partition numbers and the new ones overlap (``p3`` exists under 4 partitions and under 8), so
   messages cannot be re-routed in place: a queue being drained would receive messages meanwhile.
   A partition's own markers (:func:`names_no_instance`) are dropped instead. Then the old queues
   no new partition has are deleted and the new topology is declared (by the caller, with the
   transport's own declarations).
2. distribute: the staging queue is emptied in order, each message to the queue of its instance's
   new partition (through the work exchange, as the dispatcher publishes). A message that does not
   decode goes to the dead-letter queue with the reason, as a consumer would have sent it.

An instance's messages all wait in one old queue, in order, so draining queue by queue and
distributing in order keeps them in order. Each message is fetched unacknowledged, published under
a publisher confirm, and only then acknowledged: a crash in between leaves a duplicate (the fetched
message returns to its queue when the connection closes), which consumers discard as they discard
any redelivery (sequence numbers, event ids). A run interrupted while draining drains on; one
interrupted while distributing must not drain again (the new queues then hold messages older than
those still staged), which is why the caller records the phase.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import cast

import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection
from aiormq.abc import DeliveredMessage
from hutch.broker import names
from hutch.broker.connection import ConnectionOptions, connect_once
from hutch.broker.envelopes import ControlBatch, ControlTarget, PoisonMessage, decode, encode
from hutch.broker.transports.base import dead_letter_headers
from hutch.broker.transports.rabbitmq import _user_headers
from pamqp import commands as spec

_PERSISTENT = 2
STAGING_ARGUMENTS: names.QueueArguments = {"x-queue-type": "quorum"}
"""The staging queue is a quorum queue, as replicated as the partition queues it takes over from."""

Route = Callable[[str, str], int]
"""The new partition of an instance: ``route(workflow, instance id)``."""

Advance = Callable[[int], None]
"""Told how many messages were moved, after each batch."""


@dataclass(frozen=True, slots=True)
class QueueState:
    """A queue's ready messages (fetched-but-unacknowledged ones not included) and consumers."""

    messages: int
    consumers: int


@dataclass(slots=True)
class _Publish:
    exchange: str
    routing_key: str
    body: bytes
    headers: dict[str, str]


def split_batch(batch: ControlBatch, route: Route) -> dict[int, ControlBatch]:
    """A batch of controls re-routed: one batch per new partition, each with the targets that belong there."""
    parts: dict[int, list[ControlTarget]] = {}
    for t in batch.targets:
        parts.setdefault(route(t.workflow, t.instance_id), []).append(t)
    return {p: batch.model_copy(update={"targets": targets}) for p, targets in parts.items()}


def names_no_instance(body: bytes) -> bool:
    """Whether a partition queue's message is the partition's own rather than an instance's.

    Every instance message is a msgpack map (broker/envelopes.py), never empty; an empty body is a
    marker a worker keeps in the queue of a partition it owns (its lease). Such a marker means
    something in its old queue only: it is dropped, and the partition's next owner writes its own.
    """
    return not body


class QueueMover:
    """Moves messages between a deployment's queues; ``async with`` it to connect.

    Args:
        url: the broker's AMQP URL, or several (any live node of a cluster).
        namespace: the deployment's namespace.
        batch: messages fetched, published and acknowledged together.
        connect_timeout_s: how long connecting may take.
        idle_timeout_s: how long a queue that should hold more messages may deliver none.
    """

    def __init__(
        self,
        url: str,
        namespace: str,
        *,
        batch: int = 256,
        connect_timeout_s: float = 15.0,
        idle_timeout_s: float = 5.0,
    ) -> None:
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        self.url = url
        self.namespace = namespace
        self.batch = batch
        self.connect_timeout_s = connect_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.staging = names.repartition_queue(namespace)
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None

    async def __aenter__(self) -> QueueMover:
        # Any live node of a cluster (several URLs); BrokerUnavailable names each node's failure.
        self._connection = await connect_once(
            self.url,
            options=ConnectionOptions(connect_timeout_s=self.connect_timeout_s),
            name=f"hutch/{self.namespace}/repartition",
        )
        # Confirms and returns: a publish returns once the broker holds the message, and one no queue
        # takes (a missing queue) raises instead of vanishing.
        self._channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            # Closing hands every fetched-but-unacknowledged message back to its queue, in place.
            with contextlib.suppress(aiormq.exceptions.AMQPError, OSError, TimeoutError):
                await connection.close()

    async def _raw(self) -> aiormq.Channel:
        if self._channel is None:
            raise RuntimeError("QueueMover is not connected; use it as `async with QueueMover(...)`")
        return cast(aiormq.Channel, await self._channel.get_underlay_channel())

    # ------------------------------------------------------------------ inspecting
    async def state(self, queue: str) -> QueueState | None:
        """The queue's state, or None when it does not exist."""
        if self._connection is None:
            raise RuntimeError("QueueMover is not connected; use it as `async with QueueMover(...)`")
        # A passive declare of a missing queue closes its channel: use one of its own.
        channel = await self._connection.channel(publisher_confirms=False)
        try:
            raw = await channel.get_underlay_channel()
            ok = await raw.queue_declare(queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return None
        finally:
            with contextlib.suppress(aiormq.exceptions.AMQPError, RuntimeError):
                await channel.close()
        return QueueState(int(ok.message_count or 0), int(ok.consumer_count or 0))

    async def partition_states(self, partitions: Iterable[int]) -> dict[int, QueueState]:
        """The state of each of these partitions' queues that exists."""
        out: dict[int, QueueState] = {}
        for p in partitions:
            state = await self.state(names.partition_queue(self.namespace, p))
            if state is not None:
                out[p] = state
        return out

    async def staged(self) -> int:
        """Messages waiting in the staging queue."""
        state = await self.state(self.staging)
        return 0 if state is None else state.messages

    # ------------------------------------------------------------------ moving
    async def drain(self, partitions: Iterable[int], advance: Advance) -> tuple[int, int]:
        """Move every message of these partitions' queues (those that exist) to the staging queue, in order.

        Returns:
            ``(staged, dropped)``: dropped are the partitions' own markers (:func:`names_no_instance`).
        """
        raw = await self._raw()
        await raw.queue_declare(self.staging, durable=True, arguments=STAGING_ARGUMENTS)
        dropped = 0

        def target(message: DeliveredMessage) -> list[_Publish]:
            nonlocal dropped
            if names_no_instance(message.body):
                dropped += 1
                return []
            return [_Publish("", self.staging, message.body, _user_headers(message.header.properties.headers))]

        moved = 0
        for p in partitions:
            # A queue an earlier run drained and deleted is skipped (_move finds it missing).
            moved += await self._move(names.partition_queue(self.namespace, p), target, advance)
        return moved - dropped, dropped

    async def delete_partition_queues(self, partitions: Iterable[int]) -> int:
        """Delete these partitions' queues (drained: no new partition has them); how many existed."""
        raw = await self._raw()
        deleted = 0
        for p in partitions:
            queue = names.partition_queue(self.namespace, p)
            if await self.state(queue) is not None:
                # Quorum queues refuse queue.delete's if-empty flag; the caller drained them.
                await raw.queue_delete(queue)
                deleted += 1
        return deleted

    async def distribute(self, route: Route, advance: Advance) -> tuple[int, int]:
        """Re-route the staging queue to the new partition queues, in order: (re-routed, dead-lettered)."""
        raw = await self._raw()
        await raw.queue_declare(self.staging, durable=True, arguments=STAGING_ARGUMENTS)
        work = names.work_exchange(self.namespace)
        dead_letters = names.dead_letter_exchange(self.namespace)
        dead = 0

        def target(message: DeliveredMessage) -> list[_Publish]:
            nonlocal dead
            headers = _user_headers(message.header.properties.headers)
            try:
                envelope = decode(message.body)
            except PoisonMessage as exc:
                dead += 1
                reason = f"{exc.reason} (found while repartitioning)"
                return [_Publish(dead_letters, self.staging, message.body, dead_letter_headers(headers, reason))]
            if isinstance(envelope, ControlBatch):  # its instances may now belong to several partitions
                return [
                    _Publish(work, names.partition_queue(self.namespace, partition), encode(part), headers)
                    for partition, part in split_batch(envelope, route).items()
                ]
            partition = route(envelope.workflow, envelope.instance_id)
            return [_Publish(work, names.partition_queue(self.namespace, partition), message.body, headers)]

        moved = await self._move(self.staging, target, advance)
        return moved - dead, dead

    async def delete_staging(self) -> None:
        """Delete the staging queue (emptied by :meth:`distribute`)."""
        raw = await self._raw()
        await raw.queue_delete(self.staging)

    async def _move(self, queue: str, target: Callable[[DeliveredMessage], list[_Publish]], advance: Advance) -> int:
        """Publish elsewhere and acknowledge every message of ``queue``, a batch at a time, in order.

        Partition queues have a single active consumer, and RabbitMQ refuses ``basic.get`` on such
        a quorum queue: the messages are consumed (with the workers stopped, this consumer is the
        active one). The queue's ready count says how many to expect; nothing else publishes to it
        while the deployment is stopped, and it is counted again until it reads 0.
        """
        moved = 0
        while True:
            state = await self.state(queue)
            if state is None or state.messages == 0:
                return moved
            taken = await self._consume(queue, state.messages, target, advance)
            if not taken:
                raise RuntimeError(
                    f"queue {queue} holds {state.messages} message(s) but delivers none: another consumer "
                    f"({state.consumers} attached) is its single active one; stop it and run the command again"
                )
            moved += taken

    async def _consume(
        self, queue: str, expected: int, target: Callable[[DeliveredMessage], list[_Publish]], advance: Advance
    ) -> int:
        if self._connection is None:
            raise RuntimeError("QueueMover is not connected; use it as `async with QueueMover(...)`")
        publisher = await self._raw()
        channel = await self._connection.channel(publisher_confirms=False)
        try:
            raw = cast(aiormq.Channel, await channel.get_underlay_channel())
            # At most one batch unacknowledged; each delivery arrives in queue order.
            await raw.basic_qos(prefetch_count=self.batch)
            inbox: asyncio.Queue[DeliveredMessage] = asyncio.Queue()

            async def on_message(message: DeliveredMessage) -> None:
                inbox.put_nowait(message)

            consume = await raw.basic_consume(queue, on_message, no_ack=False)
            taken = 0
            while taken < expected or not inbox.empty():
                try:
                    async with asyncio.timeout(self.idle_timeout_s):
                        fetched = [await inbox.get()]
                except TimeoutError:
                    break  # nothing more arrives (the count was stale, or someone else consumes)
                while not inbox.empty() and len(fetched) < self.batch:
                    fetched.append(inbox.get_nowait())
                # Published concurrently but in order: aiormq writes a channel's publishes under a
                # FIFO lock, so the destination receives them in the order they were delivered.
                publishes = [item for message in fetched for item in target(message)]
                await asyncio.gather(*(self._publish(publisher, item) for item in publishes))
                await raw.basic_ack(fetched[-1].delivery_tag or 0, multiple=True)
                taken += len(fetched)
                advance(len(fetched))
            await raw.basic_cancel(consume.consumer_tag or "")
            return taken
        finally:
            # Deliveries that arrived after the last batch return to their places in the queue.
            with contextlib.suppress(aiormq.exceptions.AMQPError, RuntimeError):
                await channel.close()

    @staticmethod
    async def _publish(raw: aiormq.Channel, item: _Publish) -> None:
        confirmation = await raw.basic_publish(
            item.body,
            exchange=item.exchange,
            routing_key=item.routing_key,
            properties=spec.Basic.Properties(delivery_mode=_PERSISTENT, headers=dict(item.headers) or None),
            mandatory=True,
            wait=False,
        )
        if not isinstance(confirmation, spec.Basic.Ack):
            raise RuntimeError(
                f"RabbitMQ did not take a message for {item.routing_key!r}: it answered {confirmation!r}"
            )
