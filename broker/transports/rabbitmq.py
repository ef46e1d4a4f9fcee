"""The RabbitMQ transport over aio-pika: partition queues with single active consumer.

Topology (names from :mod:`hutch.broker.names`, declared idempotently by :meth:`RabbitMQTransport.start`;
the exchanges and partition queues are re-declared by aio-pika's robust connection after every
reconnect):

- a direct *work* exchange; each partition's quorum queue is bound to it with its own name as the
  routing key, and messages are published with ``mandatory`` so a missing queue is an error, not a
  silent drop;
- one quorum queue per partition with ``x-single-active-consumer`` (the broker guarantees at most
  one consumer receives a partition's messages) and ``x-delivery-limit``; its dead letters go
  through a fanout exchange to one dead-letter queue, a quorum queue as well, so that no start and
  no partition depends on one node. A deployment made before that has a classic one: it is kept
  as it is, with a warning saying how to migrate (:meth:`RabbitMQTransport._declare_dead_letter_queue`).

Connections (:mod:`hutch.broker.connection`): the transport is given every node's URL, connects to any
live node and, when that connection is lost or stops answering (within ``dead_after_s``),
reconnects to the next live one, where aio-pika restores its channels, publisher confirms and
consumers.

Semantics, and where RabbitMQ differs from a naive reading of AMQP:

- ``publish`` returns only when the broker has confirmed every message (publisher confirms,
  persistent delivery mode). A batch is written at once and its confirms are gathered, so a batch
  costs about one round trip, not one per message. Messages the broker nacked (a quorum queue
  whose leader went away), did not confirm within ``confirm_timeout_s`` or whose confirm was lost
  to a connection failure are published again on a new channel, on whichever node the connection
  is on (:mod:`hutch.broker.transports.confirms`), until ``publish_timeout_s``; so a rare
  duplicate is possible: delivery is at-least-once and consumers deduplicate by sequence number.
- ``Delivery.reject(reason)`` dead-letters with the reason in the ``REASON_HEADER`` header.
  RabbitMQ's own dead-lettering records only a fixed reason code in ``x-death``, so the transport
  publishes the message itself to the dead-letter exchange (original headers plus the reason, under
  a publisher confirm) and then acknowledges the original. A crash between the two leaves the
  message both dead-lettered and redelivered; the redelivery is rejected again, so the DLQ may hold
  a duplicate but nothing is lost. Messages the *broker* dead-letters (delivery limit exceeded)
  carry ``x-death`` instead; :meth:`RabbitMQTransport.dead_letters` turns that into the same reason
  text the in-process transport uses.
- ``Delivery.nack()`` sends ``basic.reject(requeue=True)`` rather than ``basic.nack``: since
  RabbitMQ 4.x only ``reject`` counts toward the delivery limit, and a nack is meant to. On RabbitMQ
  3.x quorum queues a requeued message goes to the *back* of the queue (4.x returns it to its
  position); closing a channel returns its unacknowledged messages to their original positions on
  every version, which is why :meth:`Subscription.close` closes the channel instead of nacking.
- ``prefetch`` bounds a whole subscription: quorum queues reject AMQP's channel-wide ("global") QoS,
  so each partition's consumer gets ``prefetch // len(partitions)`` (at least 1).
- ``on_assigned(p)`` is called once the consume on ``p`` is established, and ``on_revoked(p)``
  when the subscription closes or its channel is lost (``on_assigned`` again after the robust
  connection restored it). AMQP 0-9-1 never tells a standby consumer that it became the single
  active one, so these calls mean "consuming", not "the active consumer": partition ownership comes
  from the Redis-lease membership service and fencing on every commit, with single active consumer
  as the backstop that keeps two workers from receiving one partition's messages at once.
  Deliveries that arrive before ``on_assigned`` has returned are held and handed over right after
  it, in order. A consumer the broker cancels (``basic.cancel``: its queue deleted, or moved away
  from under it) revokes its partition the same way until aio-pika has consumed it again.
- Whether the transport can consume is published to its owner (:meth:`Transport.on_consumability`):
  ``can_consume`` is false while the connection is down, and ``cannot_consume`` names the
  subscribed partitions not being consumed right now, so ownership can move to a worker that can.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import aio_pika
import aiormq
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, AbstractRobustQueue
from aiormq.abc import DeliveredMessage
from hutch.broker import names
from hutch.broker.connection import CONNECTION_ERRORS as CONNECTION_ERRORS
from hutch.broker.connection import ClusterConnection, ConnectionOptions, connect
from hutch.broker.transports.base import (
    REASON_HEADER,
    DeadLetter,
    Delivery,
    Outgoing,
    PartitionListener,
    Subscription,
    Transport,
    dead_letter_headers,
    stray_cancel,
)
from hutch.broker.transports.confirms import ConfirmedPublisher, Publish
from hutch.settings import redact_urls
from pamqp import commands as spec

if TYPE_CHECKING:
    from hutch.settings import Settings

log = logging.getLogger(__name__)

# What closing a subscription may meet from a connection that dropped under it; aiormq reports an
# RPC a closing connection abandoned as CancelledError (see stray_cancel).
_CLOSE_ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, TimeoutError, asyncio.CancelledError)
# Headers RabbitMQ adds on redelivery and dead-lettering; not part of the message a producer sent.
_BROKER_HEADERS = frozenset({"x-death", "x-delivery-count"})
_BROKER_HEADER_PREFIXES = ("x-first-death-", "x-last-death-")


def _user_headers(raw: Mapping[str, Any] | None) -> dict[str, str]:
    """The string headers a producer set (AMQP tables may also hold numbers, lists, tables)."""
    if not raw:
        return {}
    headers: dict[str, str] = {}
    for key, value in raw.items():
        if key in _BROKER_HEADERS or key.startswith(_BROKER_HEADER_PREFIXES):
            continue
        if isinstance(value, str):
            headers[key] = value
        elif isinstance(value, bytes):
            headers[key] = value.decode("utf-8", "replace")
    return headers


SETTLE_TIMEOUT_S = 5.0
"""How long an ack or reject may wait for room on the connection before the delivery is left unsettled."""

# aiormq writes every frame through a bounded per-connection queue (10 frames) that even a wait=False ack
# awaits room in. On a connection that died before aiormq noticed, nothing empties it, so an ack could
# await forever and, with it, the orchestrator's whole turn (nothing else of the worker ran again). Left
# unsettled, the message is redelivered once the channel closes, and a redelivery is harmless (commits are
# fenced and sequence-checked). A channel that timed out once is not waited on again.
_stuck_channels: weakref.WeakSet[aiormq.abc.AbstractChannel] = weakref.WeakSet()


async def _settle_on(channel: aiormq.abc.AbstractChannel, send: Callable[[], Awaitable[object]]) -> None:
    """Send an ack or reject on ``channel``: bounded by SETTLE_TIMEOUT_S, a lost connection tolerated."""
    if channel in _stuck_channels:
        return
    try:
        async with asyncio.timeout(SETTLE_TIMEOUT_S):
            await send()
    except TimeoutError:
        _stuck_channels.add(channel)
        log.warning("an ack or reject got no room on its connection in %.0f s; left to redelivery", SETTLE_TIMEOUT_S)
    except CONNECTION_ERRORS:
        pass


class _RabbitDelivery(Delivery):
    __slots__ = ("_done", "_message", "_subscription", "body", "headers", "partition", "published_ms", "redelivered")

    def __init__(self, subscription: _RabbitSubscription, partition: int, message: AbstractIncomingMessage) -> None:
        self._subscription = subscription
        self._message = message
        self.partition = partition
        self.body = message.body
        self.headers = _user_headers(message.headers)
        self.redelivered = bool(message.redelivered)
        self.published_ms = round(message.timestamp.timestamp() * 1000) if message.timestamp else None
        self._done = False

    @property
    def _tag(self) -> int:
        return self._message.delivery_tag or 0

    def _settle(self) -> aiormq.abc.AbstractChannel | None:
        """Mark settled; the channel to settle on, or None when it is gone (the broker requeued the message)."""
        if self._done:
            raise RuntimeError("delivery already acknowledged")
        self._done = True
        try:
            return self._message.channel  # raises once the channel this delivery arrived on has closed
        except aiormq.exceptions.ChannelInvalidStateError:
            return None

    async def ack(self) -> None:
        channel = self._settle()
        if channel is not None:
            # wait=False: an ack has no reply, so there is nothing to wait for but the socket.
            await _settle_on(channel, lambda: channel.basic_ack(self._tag, wait=False))

    async def nack(self) -> None:
        channel = self._settle()
        if channel is not None:
            await _settle_on(channel, lambda: channel.basic_reject(self._tag, requeue=True, wait=False))

    async def reject(self, reason: str) -> None:
        channel = self._settle()
        if channel is None:
            return  # the broker already requeued it; the next delivery decides again
        transport = self._subscription.transport
        headers = dead_letter_headers(self.headers, reason)
        # Routed with the source queue's name, which dead_letters() reads back as the partition.
        source = self._message.routing_key or ""
        try:
            await transport._publish_all(
                [Publish(names.dead_letter_exchange(transport.namespace), source, self.body, headers)]
            )
        except BaseException:
            # Not dead-lettered: hand it back rather than hold a prefetch slot until the channel closes.
            await _settle_on(channel, lambda: channel.basic_reject(self._tag, requeue=True, wait=False))
            raise
        await _settle_on(channel, lambda: channel.basic_ack(self._tag, wait=False))


class _RabbitSubscription(Subscription):
    """One channel consuming a set of partition queues for one listener."""

    def __init__(
        self,
        transport: RabbitMQTransport,
        channel: AbstractRobustChannel,
        partitions: Sequence[int],
        listener: PartitionListener,
    ) -> None:
        self.transport = transport
        self.id = uuid.uuid4().hex[:10]
        self._channel = channel
        self._partitions = list(partitions)
        self._listener = listener
        self._queues: dict[int, tuple[AbstractRobustQueue, str]] = {}
        self._tags: dict[str, int] = {}  # consumer tag → partition
        self.unconsumable: set[int] = set()  # consumed once, not consuming right now (lost, cancelled)
        self._active: set[int] = set()  # deliveries go straight to the listener
        self._assigned: set[int] = set()  # the listener was told it consumes these
        self._held: dict[int, list[_RabbitDelivery]] = {p: [] for p in partitions}
        self._events: asyncio.Queue[tuple[bool, int]] = asyncio.Queue()
        self._supervisor: asyncio.Task[None] | None = None
        self._restoring: set[asyncio.Task[None]] = set()  # waiting for aio-pika to consume a cancelled consumer again
        self._lost = False
        self._closed = False

    # ----------------------------------------------------------------- consuming
    async def _consume(self, partition: int, arguments: names.QueueArguments) -> None:
        queue = await self._channel.declare_queue(
            names.partition_queue(self.transport.namespace, partition), durable=True, arguments=arguments
        )
        tag = await queue.consume(
            functools.partial(self._on_message, partition),
            consumer_tag=names.consumer_tag(self.transport.namespace, partition, self.id),
        )
        self._queues[partition] = (queue, tag)
        self._tags[tag] = partition

    async def _on_message(self, partition: int, message: AbstractIncomingMessage) -> None:
        if self._closed:
            return  # closing the channel hands it back to the queue
        delivery = _RabbitDelivery(self, partition, message)
        if partition in self._active:
            self._hand_over(delivery)
        else:
            self._held[partition].append(delivery)

    def _hand_over(self, delivery: _RabbitDelivery) -> None:
        try:
            self._listener.on_delivery(delivery)
        except Exception:
            log.exception(
                "listener failed on a delivery from partition %d; it stays unacknowledged", delivery.partition
            )

    # ----------------------------------------------------------------- ownership
    async def _watch(self) -> None:
        """Follow the channel: revoke on loss or cancel, re-assign once it consumes again."""
        self._channel.close_callbacks.add(self._on_channel_closed)
        self._channel.reopen_callbacks.add(self._on_channel_reopened)
        await self._hear_cancels()
        self._supervisor = asyncio.create_task(self._supervise(), name=f"hutch-rabbitmq-subscription-{self.id}")

    async def _hear_cancels(self) -> None:
        # Registered on each incarnation of the channel: a restored channel is a new aiormq channel.
        raw = await self._channel.get_underlay_channel()
        raw.on_consumer_cancel_callbacks.add(self._on_consumer_cancelled)

    def _on_channel_closed(self, _sender: object, exc: BaseException | None) -> None:
        # Failed restore attempts close the channel again; one loss is reported once.
        if self._closed or self._lost:
            return
        self._lost = True
        log.warning(
            "RabbitMQ channel of subscription %s lost (%s); partitions revoked until it is restored", self.id, exc
        )
        self._active.clear()
        for held in self._held.values():
            held.clear()  # their channel is gone; the broker requeues them
        self.unconsumable.update(self._partitions)
        self.transport._consumability_changed()
        for p in self._partitions:
            self._events.put_nowait((False, p))

    async def _on_channel_reopened(self, _sender: object) -> None:
        if self._closed:
            return
        # aio-pika restored every consumer of the channel before calling this (or the reopen failed).
        self._lost = False
        await self._hear_cancels()
        log.info("RabbitMQ channel of subscription %s restored; re-assigning its partitions", self.id)
        self.unconsumable.clear()
        self.transport._consumability_changed()
        for p in self._partitions:
            self._events.put_nowait((True, p))

    def _on_consumer_cancelled(self, frame: spec.Basic.Cancel) -> None:
        # The broker ended one consumer (its queue deleted, or gone from under it); the channel lives
        # on and aio-pika consumes the queue again on it as soon as it can.
        partition = self._tags.get(frame.consumer_tag or "")
        if partition is None or self._closed or self._lost or partition in self.unconsumable:
            return
        log.warning(
            "RabbitMQ cancelled the consumer of partition %d (subscription %s); revoked until it consumes again",
            partition,
            self.id,
        )
        self._active.discard(partition)
        self._held[partition].clear()  # the broker requeued them with the cancel
        self.unconsumable.add(partition)
        self.transport._consumability_changed()
        self._events.put_nowait((False, partition))
        task = asyncio.get_running_loop().create_task(
            self._await_consumer(partition, frame.consumer_tag or ""), name=f"hutch-rabbitmq-reconsume-{partition}"
        )
        self._restoring.add(task)
        task.add_done_callback(self._restoring.discard)

    async def _await_consumer(self, partition: int, tag: str) -> None:
        # aio-pika re-consumes a cancelled consumer with the same tag but says nothing when it has:
        # watch the channel's consumers for it. A lost channel ends this (its reopen re-assigns).
        while not (self._closed or self._lost):
            await asyncio.sleep(0.1)
            with contextlib.suppress(*CONNECTION_ERRORS):
                raw = cast(aiormq.Channel, await self._channel.get_underlay_channel())
                if tag in raw.consumers and not (self._closed or self._lost):
                    log.info("RabbitMQ consumes partition %d again (subscription %s)", partition, self.id)
                    self.unconsumable.discard(partition)
                    self.transport._consumability_changed()
                    self._events.put_nowait((True, partition))
                    return

    async def _supervise(self) -> None:
        # One task applies ownership changes in order, so on_revoked(p) always precedes the
        # on_assigned(p) that follows a reconnect, and listener code never runs inside aio-pika's
        # channel-restore path.
        while True:
            assign, partition = await self._events.get()
            if assign:
                await self._assign(partition, retry=True)
            else:
                await self._revoke(partition)

    async def _assign(self, partition: int, *, retry: bool) -> None:
        delay_s = 0.05
        while partition not in self._assigned:
            try:
                await self._listener.on_assigned(partition)
            except Exception:
                if not retry:
                    raise
                log.exception("listener failed to take partition %d; retrying in %.2f s", partition, delay_s)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 5.0)
                continue
            self._assigned.add(partition)
        held, self._held[partition] = self._held[partition], []
        self._active.add(partition)
        for delivery in held:
            self._hand_over(delivery)

    async def _revoke(self, partition: int) -> None:
        self._active.discard(partition)
        if partition in self._assigned:
            self._assigned.discard(partition)
            try:
                await self._listener.on_revoked(partition)
            except Exception:
                log.exception("listener failed to release partition %d", partition)

    # ----------------------------------------------------------------- shutdown
    async def close(self) -> None:
        """Cancel the consumers, hand unacknowledged deliveries back in order, then revoke."""
        if self._closed:
            return
        self._closed = True
        self.transport._subscriptions.discard(self)
        if self.unconsumable:  # no longer the transport's concern
            self.unconsumable.clear()
            self.transport._consumability_changed()
        self._channel.close_callbacks.discard(self._on_channel_closed)
        self._channel.reopen_callbacks.discard(self._on_channel_reopened)
        tasks = [t for t in (self._supervisor, *self._restoring) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._active.clear()
        for held in self._held.values():
            held.clear()
        for queue, tag in self._queues.values() if not self._lost else ():
            # cancel() waits for a lost connection to come back (bounded here); a lost channel's
            # consumers are gone with it, so there is nothing to cancel then.
            await self._closing_call(queue.cancel(tag))
        # Closing the channel returns every unacknowledged delivery to its original position in its
        # queue (an explicit nack would send it to the back of a 3.x quorum queue), so the next
        # active consumer sees the partition in order. It must be closed even when the connection
        # dropped under the cancel above: a robust channel left open is restored on the reconnect,
        # consuming (and, single active, holding the partition) for a subscription that is gone.
        await self._closing_call(self._channel.close())
        for partition in sorted(self._assigned):
            await self._revoke(partition)

    async def _closing_call(self, call: Awaitable[object]) -> None:
        # A broker call made while closing: bounded by close_timeout_s, and a connection that
        # dropped under it is no failure (the close goes on); only a real cancellation propagates.
        try:
            async with asyncio.timeout(self.transport.close_timeout_s):
                await call
        except _CLOSE_ERRORS as exc:
            if isinstance(exc, asyncio.CancelledError) and not stray_cancel(exc):
                raise


class RabbitMQTransport(Transport):
    """Partition queues on RabbitMQ: quorum queues, single active consumer, confirms, dead letters.

    Args:
        url: the AMQP URL, e.g. ``amqp://guest:guest@127.0.0.1:5672/`` (query parameters such as
            ``heartbeat`` are passed to aio-pika), or one per node of a cluster: a list, or
            comma-separated in one string (:func:`~engine.settings.parse_amqp_urls`).
        partitions: the number of partition queues (fixed for a deployment).
        namespace: prefix of every queue and exchange name (``Settings.namespace``).
        delivery_limit: deliveries of one message before it is dead-lettered.
        reconnect_interval_s: pause before trying the nodes again once each failed in a row.
        heartbeat_s: AMQP heartbeat proposed unless the URL sets ``heartbeat``. It bounds how long
            the broker keeps a silently dead connection's consumers (a network partition, not a
            killed process, whose socket the OS closes at once), during which single active
            consumer keeps that partition away from every other worker.
        dead_after_s: a connection whose broker has not answered the transport's probe for this
            long is dropped and another node tried (0: no probe); see :mod:`hutch.broker.connection`.
        publish_timeout_s: how long ``publish`` keeps retrying unconfirmed messages (across
            reconnects and new channels) before raising ``TimeoutError``.
        confirm_timeout_s: how long a publish waits without hearing any confirm before it
            publishes the unconfirmed messages again on a new channel (twice as long after each
            attempt that timed out); see :mod:`hutch.broker.transports.confirms`.
        close_timeout_s: bound on each broker call made while closing.
        connect_timeout_s: how long ``start`` waits for each node before trying the next, and
            raising :class:`~engine.errors.BrokerUnavailable` after the last.
        connection_name: shown in the management UI; defaults to ``hutch/<namespace>``.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        partitions: int = 16,
        namespace: str = "hutch",
        delivery_limit: int = 20,
        reconnect_interval_s: float = 1.0,
        heartbeat_s: int = 1,
        dead_after_s: float = 2.0,
        publish_timeout_s: float = 30.0,
        confirm_timeout_s: float = 2.0,
        close_timeout_s: float = 5.0,
        connect_timeout_s: float = 5.0,
        connection_name: str | None = None,
    ) -> None:
        if partitions < 1:
            raise ValueError(f"partitions must be at least 1, got {partitions}")
        self.url = url if isinstance(url, str) else ",".join(url)
        self.partitions = partitions
        self.namespace = namespace
        self.delivery_limit = delivery_limit
        self.reconnect_interval_s = reconnect_interval_s
        self.heartbeat_s = heartbeat_s
        self.dead_after_s = dead_after_s
        self.publish_timeout_s = publish_timeout_s
        self.confirm_timeout_s = confirm_timeout_s
        self.close_timeout_s = close_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.connection_name = connection_name or f"hutch/{namespace}"
        self._display_url = redact_urls(self.url)
        self._queue_arguments = names.partition_queue_arguments(
            dead_letter_exchange=names.dead_letter_exchange(namespace), delivery_limit=delivery_limit
        )
        self._work_exchange = names.work_exchange(namespace)
        self._routing_keys = [names.partition_queue(namespace, p) for p in range(partitions)]
        self._connection: ClusterConnection | None = None
        self._topology: AbstractRobustChannel | None = None  # declares; restored (and re-declares) on reconnects
        self._confirmed: ConfirmedPublisher | None = None  # publishes
        self._subscriptions: set[_RabbitSubscription] = set()
        self._start_lock = asyncio.Lock()
        self._up = False  # the connection is open and its channels restored

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> RabbitMQTransport:
        """A transport for ``settings.amqp_url``: the deployment's namespace and partitions, the ``amqp_*`` settings."""
        defaults: dict[str, Any] = {
            "heartbeat_s": settings.amqp_heartbeat_s,
            "dead_after_s": settings.amqp_dead_after_s,
            "connect_timeout_s": settings.amqp_connect_timeout_s,
        }
        return cls(
            settings.amqp_url,
            partitions=settings.partitions,
            namespace=settings.namespace,
            **{**defaults, **options},
        )

    @property
    def connection_options(self) -> ConnectionOptions:
        """How this transport connects (for other connections that should behave alike)."""
        return ConnectionOptions(
            heartbeat_s=self.heartbeat_s,
            dead_after_s=self.dead_after_s,
            connect_timeout_s=self.connect_timeout_s,
            reconnect_interval_s=self.reconnect_interval_s,
        )

    @property
    def node(self) -> str | None:
        """The URL of the node the transport is connected to (password hidden); None before ``start``."""
        return self._connection.node if self._connection is not None else None

    # ----------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Connect to any live node (robustly) and declare the topology; idempotent.

        Raises:
            BrokerUnavailable: no node could be connected to.
            InvalidInputError: the URL is malformed.
        """
        async with self._start_lock:
            if self._topology is not None:
                return
            connection = await connect(self.url, options=self.connection_options, name=self.connection_name)
            try:
                topology = await connection.channel(publisher_confirms=False)
                await self._declare(connection, topology)
            except BaseException:
                await connection.close()
                raise
            connection.close_callbacks.add(self._on_connection_lost)
            connection.reconnect_callbacks.add(self._on_connection_restored)
            self._confirmed = ConfirmedPublisher(
                connection,
                ready=topology.ready,
                confirm_timeout_s=self.confirm_timeout_s,
                publish_timeout_s=self.publish_timeout_s,
                close_timeout_s=self.close_timeout_s,
                display_url=self._display_url,
            )
            self._connection, self._topology = connection, topology
            self._up = True
            log.info("connected to RabbitMQ at %s", connection.node)

    async def _declare(self, connection: ClusterConnection, channel: AbstractRobustChannel) -> None:
        # The exchanges and partition queues are declared on a robust channel, so aio-pika declares
        # them again after every reconnect; the dead-letter queue once, as it may be an old one.
        dlx = names.dead_letter_exchange(self.namespace)
        await channel.declare_exchange(dlx, aio_pika.ExchangeType.FANOUT, durable=True)
        await self._declare_dead_letter_queue(connection)
        work = await channel.declare_exchange(self._work_exchange, aio_pika.ExchangeType.DIRECT, durable=True)
        for name in self._routing_keys:
            queue = await channel.declare_queue(name, durable=True, arguments=self._queue_arguments)
            await queue.bind(work, routing_key=name)

    async def _declare_dead_letter_queue(self, connection: ClusterConnection) -> None:
        """Declare the dead-letter queue as a quorum queue, or keep the one a deployment already has.

        Deployments made before dead-letter queues were quorum queues have a classic one, and
        declaring it anew fails (``PRECONDITION_FAILED``; queue arguments cannot change). It is kept
        as it is, so its dead letters stay where operators look, with a warning: while it is
        classic it lives on one node, and dead letters cannot reach it while that node is down.
        Neither that nor any other trouble with it stops the start: nothing but dead-lettering
        needs it. Done once, on throwaway channels (a failed declare closes its channel; on a
        robust channel aio-pika would repeat it on every reconnect).
        """
        assert connection.transport is not None
        raw = connection.transport.connection
        name = names.dead_letter_queue(self.namespace)
        arguments = names.dead_letter_queue_arguments(broker_version=connection.broker_version)
        channel = await raw.channel(publisher_confirms=False)
        try:
            try:
                await channel.queue_declare(name, durable=True, arguments=arguments)
            except aiormq.exceptions.ChannelPreconditionFailed as exc:
                log.warning(
                    "the dead-letter queue %s exists with other arguments (%s); using it as it is. If it is a "
                    "classic queue it lives on one RabbitMQ node, and nothing can be dead-lettered while that node "
                    "is down. To make it a replicated quorum queue: stop every process of namespace %r, move its "
                    "messages elsewhere if you need them (e.g. with a shovel), delete it (`rabbitmqctl "
                    "delete_queue %s`) and start the processes again; the first declares it anew.",
                    name,
                    exc,
                    self.namespace,
                    name,
                )
                channel = await raw.channel(publisher_confirms=False)
            await channel.queue_bind(name, names.dead_letter_exchange(self.namespace), routing_key="")
        except aiormq.exceptions.ChannelClosed as exc:  # e.g. NOT_FOUND: a classic queue's home node is down
            log.error("the dead-letter queue %s is unavailable (%s); starting without it", name, exc)
        finally:
            with contextlib.suppress(*CONNECTION_ERRORS):
                await channel.close()

    # ----------------------------------------------------------------- consumability
    @property
    def can_consume(self) -> bool:
        """Whether the broker connection is up (False before ``start``, after ``close`` and while reconnecting)."""
        return self._up

    @property
    def cannot_consume(self) -> frozenset[int]:
        """The subscribed partitions not consumed right now: their channel is lost or the broker cancelled them."""
        return frozenset(p for subscription in self._subscriptions for p in subscription.unconsumable)

    def _on_connection_lost(self, _sender: object, exc: BaseException | None) -> None:
        # Also called for each failed reconnect attempt; the change is reported once.
        if self._up:
            self._up = False
            log.warning("lost the connection to RabbitMQ (%s); reconnecting to any live node", exc)
            self._consumability_changed()

    def _on_connection_restored(self, _sender: object) -> None:
        # After aio-pika restored every channel (and so every subscription's consumers).
        if not self._up and self._topology is not None:
            self._up = True
            self._consumability_changed()

    async def close(self) -> None:
        """Close every subscription (revoking its partitions), then the connection; idempotent."""
        for subscription in list(self._subscriptions):
            await subscription.close()
        connection, self._connection, self._topology = self._connection, None, None
        confirmed, self._confirmed = self._confirmed, None
        if confirmed is not None:
            await confirmed.close()
        if connection is not None:
            connection.close_callbacks.discard(self._on_connection_lost)
            connection.reconnect_callbacks.discard(self._on_connection_restored)
            with contextlib.suppress(*CONNECTION_ERRORS, TimeoutError):
                async with asyncio.timeout(self.close_timeout_s):
                    await connection.close()
        if self._up:
            self._up = False
            self._consumability_changed()

    def _require_started(self) -> AbstractRobustChannel:
        if self._topology is None:
            raise RuntimeError("the RabbitMQ transport is not started; call await transport.start() first")
        return self._topology

    # ----------------------------------------------------------------- publishing
    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Publish persistent messages; returns once the broker confirmed every one.

        Raises:
            ValueError: a message names a partition that does not exist.
            TimeoutError: not every message was confirmed within ``publish_timeout_s``.
            aiormq.exceptions.PublishError: the broker could not route a message (topology missing).
        """
        batch = []
        for out in messages:
            if not 0 <= out.partition < self.partitions:
                raise ValueError(f"partition {out.partition} does not exist (0..{self.partitions - 1})")
            batch.append(Publish(self._work_exchange, self._routing_keys[out.partition], out.body, out.headers))
        if batch:
            await self._publish_all(batch)

    async def _publish_all(self, batch: list[Publish]) -> None:
        self._require_started()
        assert self._confirmed is not None
        await self._confirmed.publish(batch)

    @property
    def publish_channels_replaced(self) -> int:
        """How often a publishing channel was replaced (it nacked, went silent or was lost); 0 before ``start``."""
        return self._confirmed.channels_retired if self._confirmed is not None else 0

    # ----------------------------------------------------------------- consuming
    async def subscribe(self, partitions: Sequence[int], listener: PartitionListener, *, prefetch: int) -> Subscription:
        """Consume these partitions' queues on one channel; ``on_assigned(p)`` is awaited for each.

        ``prefetch`` bounds the subscription's unacknowledged deliveries: each partition's consumer
        gets ``max(1, prefetch // len(partitions))``.
        """
        self._require_started()
        assert self._connection is not None
        wanted = sorted(set(partitions))
        for p in wanted:
            if not 0 <= p < self.partitions:
                raise ValueError(f"partition {p} does not exist (0..{self.partitions - 1})")
        if prefetch < 1:
            raise ValueError(f"prefetch must be at least 1, got {prefetch}")
        channel = await self._connection.channel(publisher_confirms=False)
        subscription = _RabbitSubscription(self, channel, wanted, listener)
        self._subscriptions.add(subscription)
        try:
            if wanted:
                await channel.set_qos(prefetch_count=max(1, prefetch // len(wanted)))
            for p in wanted:
                await subscription._consume(p, self._queue_arguments)
                await subscription._assign(p, retry=False)
            await subscription._watch()
        except BaseException:
            await subscription.close()
            raise
        return subscription

    # ----------------------------------------------------------------- operators and tests
    async def dead_letters(self, *, limit: int = 10_000) -> list[DeadLetter]:
        """The first ``limit`` messages of the dead-letter queue, oldest first, left in place.

        They are fetched unacknowledged and handed back by closing the channel, which returns
        them to their positions.
        """
        self._require_started()
        assert self._connection is not None
        queue = names.dead_letter_queue(self.namespace)
        found: list[DeadLetter] = []
        async with self._connection.channel(publisher_confirms=False) as channel:
            raw = await channel.get_underlay_channel()
            while len(found) < limit:
                message = await raw.basic_get(queue, no_ack=False)
                if not isinstance(message.delivery, spec.Basic.GetOk):
                    break
                found.append(self._dead_letter(message))
        return found

    def _dead_letter(self, message: DeliveredMessage) -> DeadLetter:
        raw: Mapping[str, Any] = message.header.properties.headers or {}
        reason = raw.get(REASON_HEADER)
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        if not isinstance(reason, str):
            cause = raw.get("x-first-death-reason")
            cause = cause.decode() if isinstance(cause, bytes) else cause
            reason = (
                f"delivery limit of {self.delivery_limit} exceeded"
                if cause == "delivery_limit"
                else f"dead-lettered by RabbitMQ ({cause})"
            )
        queue = raw.get("x-first-death-queue") or message.routing_key or ""
        queue = queue.decode() if isinstance(queue, bytes) else str(queue)
        partition = names.partition_of_queue(self.namespace, queue)
        headers = dead_letter_headers(_user_headers(raw), reason)
        return DeadLetter(-1 if partition is None else partition, message.body, headers, reason)

    async def ping(self) -> None:
        """A passive declare of partition 0's queue: one round trip on the topology channel."""
        await self.ready_count(0)

    async def ready_count(self, partition: int) -> int:
        """Messages waiting in a partition queue (delivered-but-unacknowledged ones not included)."""
        topology = self._require_started()
        channel = await topology.get_underlay_channel()
        result = await channel.queue_declare(names.partition_queue(self.namespace, partition), passive=True)
        return int(result.message_count or 0)

    async def delete_topology(self) -> None:
        """Delete every queue and exchange of this namespace (test cleanup); closes subscriptions first."""
        topology = self._require_started()
        for subscription in list(self._subscriptions):
            await subscription.close()
        # Deleted through the channel that declared them, so the robust connection forgets them too.
        for name in [*self._routing_keys, names.dead_letter_queue(self.namespace)]:
            await topology.queue_delete(name)
        for name in (self._work_exchange, names.dead_letter_exchange(self.namespace)):
            await topology.exchange_delete(name)
