"""Queue-triggered creation: one instance per message of a user's RabbitMQ queue (``[[queues.consumers]]``).

For every message:

1. the body is decoded by its ``content-type``: JSON (``application/json``, ``*+json``, or no
   content type at all) or msgpack (``application/msgpack``, ``application/x-msgpack``,
   ``application/vnd.msgpack``);
2. the instance id is rendered from the entry's ``id`` template over the message
   (``{body.orderId}``, ``{headers.x-order}``, or ``{message_id}``, the default);
3. the instance is created with the body as its params, and the message is acknowledged only
   once ``create`` returned (the instance is in Redis and its start message confirmed by the
   broker). A redelivered or republished message renders the same id, so it finds the instance
   already there (``InstanceAlreadyExists``) and is acknowledged without creating a second one.

A message that can never become an instance (undecodable body, unsupported content type, a field
the template needs is missing, an invalid id, params over the size limit) is *dead-lettered*:
published, under a publisher confirm, to ``<queue>.dead-letter`` with the original body,
properties and headers plus ``x-hutch-dead-letter-reason``, then acknowledged. The consumer goes
on with the next message. Failures of Redis or of Hutch's broker are retried with backoff for as
long as it takes (the message stays unacknowledged meanwhile); an unexpected error is retried a
few times and then dead-lettered with the error.

The queue is declared when it does not exist, as a quorum queue without a delivery limit (Hutch
dead-letters what it cannot use itself), so that it survives the loss of a node; an existing queue
is used as it is, whatever its type and arguments. The dead-letter queue likewise. The connection is
Hutch's (:mod:`hutch.broker.connection`): given a cluster's URLs it connects to any live node, moves to
another when its node fails or stops answering, and consumes again there.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aio_pika
import aiormq
import msgpack
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, AbstractRobustConnection
from hutch.broker import names
from hutch.broker.connection import ClusterConnection, ConnectionOptions, connect
from hutch.broker.transports.base import dead_letter_headers
from hutch.broker.transports.rabbitmq import CONNECTION_ERRORS
from hutch.client import Client, WorkflowClient
from hutch.consumers import tracing
from hutch.consumers.templates import QUEUE_ROOTS, MessageContext, Template, TemplateError
from hutch.errors import InstanceAlreadyExists, InvalidInputError, WorkflowNotFound
from hutch.store.redis import STORE_ERRORS
from hutch.triggers import QueueConsumerSpec

log = logging.getLogger("hutch.queue_trigger")

_JSON_TYPES = frozenset({"", "application/json", "text/json"})
_MSGPACK_TYPES = frozenset({"application/msgpack", "application/x-msgpack", "application/vnd.msgpack"})
_PERSISTENT = aio_pika.DeliveryMode.PERSISTENT
# Errors that mean "try again later": Redis or Hutch's broker is unreachable.
_TRANSIENT: tuple[type[BaseException], ...] = (*STORE_ERRORS, *CONNECTION_ERRORS, TimeoutError)
# An unexpected error is retried this many times before the message is dead-lettered with it.
_MAX_UNEXPECTED = 5


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


class Poison(Exception):
    """A message that cannot become an instance; ``str(exc)`` is the dead-letter reason."""


@dataclass(frozen=True, slots=True)
class Decoded:
    """A message turned into what ``create`` needs."""

    instance_id: str
    params: Any


def decode_body(body: bytes, content_type: str | None, content_encoding: str | None = None) -> Any:
    """Decode a message body by its content type (JSON by default, or msgpack).

    Raises:
        Poison: the encoding or content type is not supported, or the body does not decode.
    """
    if content_encoding and content_encoding.lower() not in ("identity", "utf-8", "utf8"):
        raise Poison(f"content-encoding {content_encoding!r} is not supported; publish the body uncompressed")
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind in _JSON_TYPES or kind.endswith("+json"):
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise Poison(f"body is not valid JSON: {exc}") from None
    if kind in _MSGPACK_TYPES:
        try:
            return msgpack.unpackb(body, raw=False, strict_map_key=False)
        except Exception as exc:  # msgpack raises ValueError subclasses and its own types
            raise Poison(f"body is not valid msgpack: {type(exc).__name__}: {exc}") from None
    raise Poison(
        f"content-type {content_type!r} is not supported; publish JSON (application/json) "
        "or msgpack (application/msgpack)"
    )


class _Consumer:
    """One ``[[queues.consumers]]`` entry: its channel, its inbox and its handlers."""

    def __init__(self, trigger: QueueTrigger, spec: QueueConsumerSpec, workflow: WorkflowClient) -> None:
        self.trigger = trigger
        self.spec = spec
        self.workflow = workflow
        try:
            self.template = Template(spec.id, roots=QUEUE_ROOTS)
        except TemplateError as exc:
            raise InvalidInputError(f"[[queues.consumers]] queue {spec.queue!r}: id: {exc}") from None
        self.inbox: asyncio.Queue[AbstractIncomingMessage | None] = asyncio.Queue()
        self.channel: AbstractRobustChannel | None = None
        self.consumer_tag: str | None = None
        self.queue: Any = None

    async def start(self, connection: AbstractRobustConnection) -> None:
        channel = await connection.channel(publisher_confirms=True)
        self.channel = channel
        await channel.set_qos(prefetch_count=self.spec.prefetch)
        # Both queues exist by now (see QueueTrigger._declare): passive declares never conflict
        # with the arguments an existing queue was created with.
        await channel.declare_queue(self.spec.dead_letter_queue_name, passive=True)
        self.queue = await channel.declare_queue(self.spec.queue, passive=True)
        self.consumer_tag = await self.queue.consume(self._on_message)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self.inbox.put_nowait(message)

    async def stop_consuming(self, timeout_s: float) -> None:
        if self.queue is not None and self.consumer_tag is not None:
            with contextlib.suppress(*CONNECTION_ERRORS, TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await self.queue.cancel(self.consumer_tag)
        # Prefetched but not started: closing the channel hands them back to the queue.
        while not self.inbox.empty():
            self.inbox.get_nowait()
        for _ in range(self.spec.prefetch):
            self.inbox.put_nowait(None)

    async def close(self, timeout_s: float) -> None:
        if self.channel is not None:
            with contextlib.suppress(*CONNECTION_ERRORS, TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await self.channel.close()

    # ------------------------------------------------------------------ handling
    async def work(self) -> None:
        while (message := await self.inbox.get()) is not None:
            try:
                # The instance's trace continues the producer's (a traceparent header), if any.
                with tracing.consuming(self.spec.queue, message.headers, message.message_id):
                    await self.handle(message)
            except Exception:
                # Not settled: the broker redelivers it when the channel closes or reconnects.
                log.exception("queue %s: failed to handle a message; it stays unacknowledged", self.spec.queue)

    def decode(self, message: AbstractIncomingMessage) -> Decoded:
        """The instance id and params of a message.

        Raises:
            Poison: the body does not decode or the id template does not render.
        """
        body = decode_body(message.body, message.content_type, message.content_encoding)
        context = MessageContext.from_headers(body, dict(message.headers or {}), message.message_id)
        try:
            instance_id = self.template.render(context)
        except TemplateError as exc:
            raise Poison(f"cannot build the instance id: {exc}") from None
        return Decoded(instance_id, body)

    async def handle(self, message: AbstractIncomingMessage) -> None:
        try:
            decoded = self.decode(message)
        except Poison as exc:
            await self.dead_letter(message, str(exc))
            return
        trigger = {"source": "queue", "queue": self.spec.queue}
        if message.message_id:
            trigger["message_id"] = message.message_id
        unexpected = 0
        delay_s = 0.05
        while True:
            try:
                await self.workflow.create(id=decoded.instance_id, params=decoded.params, trigger=trigger)
                log.debug("queue %s: created instance %s", self.spec.queue, decoded.instance_id)
                break
            except InstanceAlreadyExists:
                log.debug("queue %s: instance %s exists (a redelivery)", self.spec.queue, decoded.instance_id)
                break
            except InvalidInputError as exc:  # invalid id, params too large or not serializable
                await self.dead_letter(message, f"cannot create instance {decoded.instance_id!r}: {exc}")
                return
            except _TRANSIENT as exc:
                log.warning("queue %s: cannot create an instance yet (%s); retrying", self.spec.queue, exc)
            except Exception as exc:
                unexpected += 1
                log.exception("queue %s: unexpected error creating %s", self.spec.queue, decoded.instance_id)
                if unexpected >= _MAX_UNEXPECTED:
                    await self.dead_letter(message, f"failed {unexpected} times: {type(exc).__name__}: {exc}")
                    return
            if not await self.trigger._pause(delay_s):
                return  # shutting down: left unacknowledged, so the broker redelivers it
            delay_s = min(delay_s * 2, 5.0)
        await _settle(message.ack())

    async def dead_letter(self, message: AbstractIncomingMessage, reason: str) -> None:
        """Publish the message to the dead-letter queue with ``reason`` (confirmed), then ack it."""
        log.warning("queue %s: dead-lettering message %s: %s", self.spec.queue, message.message_id or "-", reason)
        assert self.channel is not None
        copy = aio_pika.Message(
            message.body,
            headers=dead_letter_headers(message.headers or {}, reason),
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            timestamp=message.timestamp,
            type=message.type,
            app_id=message.app_id,
            delivery_mode=_PERSISTENT,
        )
        delay_s = 0.05
        while True:
            try:
                await self.channel.default_exchange.publish(copy, routing_key=self.spec.dead_letter_queue_name)
                break
            except _TRANSIENT as exc:
                log.warning("queue %s: dead-letter publish failed (%s); retrying", self.spec.queue, exc)
            if not await self.trigger._pause(delay_s):
                return
            delay_s = min(delay_s * 2, 5.0)
        await _settle(message.ack())


async def _settle(operation: Any) -> None:
    # The channel the message came on may be gone; the broker then redelivers it, and the
    # redelivery finds the instance (or is dead-lettered again): nothing is lost.
    with contextlib.suppress(*CONNECTION_ERRORS, aio_pika.exceptions.MessageProcessError):
        await operation


class QueueTrigger:
    """Consumes the ``[[queues.consumers]]`` queues and creates an instance per message.

    Use as ``async with QueueTrigger(...):`` (it consumes in the background until the block
    ends), or ``await trigger.start()`` then ``await trigger.run()`` and ``shutdown()`` from
    elsewhere. Signals are the CLI's business.

    Args:
        client: creates the instances (embedded or remote).
        consumers: the entries (``Settings.queues.consumers``).
        amqp_url: the broker holding the user's queues (usually ``Settings.amqp_url``; a cluster's
            nodes comma-separated, or a list).
        shutdown_timeout_s: how long ``shutdown`` lets in-flight messages finish.
        connection_name: shown in the RabbitMQ management UI.
        connection_options: heartbeat, liveness and connect timeouts (default: the defaults of the
            ``amqp_*`` settings; ``ConnectionOptions.from_settings(settings)`` for the configured ones).

    Raises:
        InvalidInputError: an entry's id template is malformed or its workflow unknown to the client.
    """

    def __init__(
        self,
        client: Client,
        consumers: Sequence[QueueConsumerSpec],
        *,
        amqp_url: str | Sequence[str],
        shutdown_timeout_s: float = 30.0,
        connection_name: str = "hutch/queue-trigger",
        connection_options: ConnectionOptions | None = None,
    ) -> None:
        self._client = client
        self._url = amqp_url
        self._options = connection_options or ConnectionOptions()
        self.shutdown_timeout_s = shutdown_timeout_s
        self._connection_name = connection_name
        self._consumers: list[_Consumer] = []
        for spec in consumers:
            try:
                workflow = client.workflow(spec.workflow)
            except (WorkflowNotFound, InvalidInputError) as exc:
                raise InvalidInputError(f"[[queues.consumers]] queue {spec.queue!r}: {exc}") from None
            self._consumers.append(_Consumer(self, spec, workflow))
        self._state = _State.NEW
        self._connection: ClusterConnection | None = None
        self._stopping: asyncio.Event | None = None
        self._runner: asyncio.Task[None] | None = None
        self._running: asyncio.Event | None = None  # set while run() handles messages
        self._finished = asyncio.Event()  # set when run() has returned

    async def __aenter__(self) -> QueueTrigger:
        await self.start()
        self._runner = asyncio.get_running_loop().create_task(self.run(), name="hutch-queue-trigger")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    async def start(self) -> None:
        """Connect, declare the queues when missing and start consuming."""
        if self._state is not _State.NEW:
            raise RuntimeError(f"a QueueTrigger cannot be started twice (it is {self._state.value})")
        self._state = _State.RUNNING
        self._stopping = asyncio.Event()
        try:
            connection = await connect(self._url, options=self._options, name=self._connection_name)
            self._connection = connection
            await self._declare(connection)
            for consumer in self._consumers:
                await consumer.start(connection)
        except BaseException:
            await self.shutdown(timeout=0)
            raise
        for consumer in self._consumers:
            log.info(
                "consuming queue %s into workflow %s (dead letters: %s)",
                consumer.spec.queue,
                consumer.spec.workflow,
                consumer.spec.dead_letter_queue_name,
            )

    async def _declare(self, connection: ClusterConnection) -> None:
        # Plain (not robust) channels of the connection probe for each queue: a passive declare of
        # a missing queue closes its channel, which a robust channel would try to restore. Only
        # missing queues are declared, so an existing queue's own type and arguments are never
        # contested.
        assert connection.transport is not None
        raw = connection.transport.connection
        # A quorum queue, replicated like every queue Hutch declares; no broker delivery limit (it
        # is the same rule as for Hutch's own dead-letter queue, which operators peek at).
        arguments = names.dead_letter_queue_arguments(broker_version=connection.broker_version)
        for consumer in self._consumers:
            for name in (consumer.spec.queue, consumer.spec.dead_letter_queue_name):
                channel = await raw.channel(publisher_confirms=False)
                try:
                    await channel.queue_declare(name, passive=True)
                except aiormq.exceptions.ChannelNotFoundEntity:
                    channel = await raw.channel(publisher_confirms=False)
                    await channel.queue_declare(name, durable=True, arguments=arguments)
                    log.info("declared missing quorum queue %s", name)
                with contextlib.suppress(*CONNECTION_ERRORS):
                    await channel.close()

    async def run(self) -> None:
        """Handle messages until :meth:`shutdown` (starts first if needed)."""
        if self._state is _State.NEW:
            await self.start()
        if self._state is not _State.RUNNING or self._running is not None:
            return
        self._running = asyncio.Event()
        try:
            async with asyncio.TaskGroup() as group:
                for consumer in self._consumers:
                    for n in range(consumer.spec.prefetch):
                        group.create_task(consumer.work(), name=f"hutch-queue-{consumer.spec.queue}-{n}")
        finally:
            self._finished.set()

    async def _pause(self, delay_s: float) -> bool:
        """Sleep ``delay_s`` unless shutting down; False when shutting down."""
        assert self._stopping is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay_s):
                await self._stopping.wait()
        return not self._stopping.is_set()

    async def shutdown(self, timeout: float | None = None) -> None:
        """Stop consuming, let in-flight messages finish up to ``timeout`` s, then close; idempotent.

        Messages not yet acknowledged (prefetched, or in flight at the deadline) go back to the
        queue when the channel closes; a redelivery of one whose instance was already created is
        acknowledged without creating another.
        """
        if self._state is not _State.RUNNING:
            self._state = _State.STOPPED
            return
        self._state = _State.STOPPED
        timeout = self.shutdown_timeout_s if timeout is None else timeout
        close_timeout_s = 5.0
        for consumer in self._consumers:
            await consumer.stop_consuming(close_timeout_s)
        if self._running is not None:
            try:
                async with asyncio.timeout(timeout):
                    await self._finished.wait()
            except TimeoutError:
                log.warning("queue trigger: in-flight messages still running after %.1f s; cancelling", timeout)
        assert self._stopping is not None
        self._stopping.set()  # retries and backoffs give up; their messages stay unacknowledged
        runner = self._runner
        if runner is not None:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        elif self._running is not None:
            # run() belongs to the caller's task; its handlers give up now that stopping is set.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(close_timeout_s):
                    await self._finished.wait()
        for consumer in self._consumers:
            await consumer.close(close_timeout_s)
        if self._connection is not None:
            with contextlib.suppress(*CONNECTION_ERRORS, TimeoutError):
                async with asyncio.timeout(close_timeout_s):
                    await self._connection.close()

    @property
    def queues(self) -> list[str]:
        """The queues consumed."""
        return [consumer.spec.queue for consumer in self._consumers]
