"""The transport interface every broker implementation provides.

Semantics (RabbitMQ's, which the in-process transport reproduces): one queue per partition;
at most one active consumer per partition queue at a time (single active consumer), the next
takes over when it goes away; deliveries stay unacknowledged until ``ack``; ``nack(requeue=True)``
redelivers; a delivery that exceeds the delivery limit, or is ``reject``-ed with a reason,
goes to the dead-letter queue with that reason in its headers.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

REASON_HEADER = "x-hutch-dead-letter-reason"


def dead_letter_headers(headers: Mapping[str, Any], reason: str) -> dict[str, Any]:
    """The headers of a message's dead-lettered copy: its own plus ``reason`` under :data:`REASON_HEADER`."""
    return {**headers, REASON_HEADER: reason}


log = logging.getLogger(__name__)


def stray_cancel(exc: BaseException) -> bool:
    """Whether ``exc`` is a CancelledError the current task was not cancelled with.

    aiormq fails the RPCs still waiting on a channel or connection that closes under them with
    CancelledError: that one means "the connection went away" (like a connection error),
    not "stop", and must not end the task that made the call.
    """
    task = asyncio.current_task()
    return isinstance(exc, asyncio.CancelledError) and task is not None and not task.cancelling()


@dataclass(slots=True)
class Outgoing:
    """A message to publish to a partition."""

    partition: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class DeadLetter:
    """A message that was dead-lettered, with where it came from and why."""

    partition: int
    body: bytes
    headers: dict[str, str]
    reason: str


class Delivery(abc.ABC):
    """One delivery of a message to the partition's active consumer."""

    partition: int
    body: bytes
    headers: dict[str, str]
    redelivered: bool
    published_ms: int | None = None  # when it was published (epoch ms, whole seconds on AMQP), if known

    @abc.abstractmethod
    async def ack(self) -> None:
        """The message's effects are durable: remove it from the queue."""

    @abc.abstractmethod
    async def nack(self) -> None:
        """Put the message back for redelivery (counts toward the delivery limit)."""

    @abc.abstractmethod
    async def reject(self, reason: str) -> None:
        """Dead-letter the message with ``reason``."""


class PartitionListener(abc.ABC):
    """What a consumer gives the transport: deliveries plus partition ownership changes."""

    @abc.abstractmethod
    def on_delivery(self, delivery: Delivery) -> None:
        """A message arrived on a partition this consumer is active for (must not block)."""

    @abc.abstractmethod
    async def on_assigned(self, partition: int) -> None:
        """This consumer became the active consumer of ``partition``."""

    @abc.abstractmethod
    async def on_revoked(self, partition: int) -> None:
        """This consumer is no longer the active consumer of ``partition``."""


class Subscription(abc.ABC):
    """A consumer's registration on a set of partitions."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop consuming; unacknowledged deliveries go back to their queues."""


class Transport(abc.ABC):
    """A broker: publish to partitions, consume them with single-active-consumer semantics."""

    partitions: int

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect and declare the topology (idempotent)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close connections; idempotent."""

    @abc.abstractmethod
    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Publish messages; returns once the broker has confirmed every one."""

    @abc.abstractmethod
    async def subscribe(self, partitions: Sequence[int], listener: PartitionListener, *, prefetch: int) -> Subscription:
        """Register a consumer on these partitions' queues."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """One round trip to the broker; raises if it is unreachable (readiness checks)."""

    @abc.abstractmethod
    async def dead_letters(self) -> list[DeadLetter]:
        """The messages in the dead-letter queue (for operators and tests)."""

    @abc.abstractmethod
    async def ready_count(self, partition: int) -> int:
        """Messages waiting in a partition queue (delivered-but-unacknowledged ones not included)."""

    @abc.abstractmethod
    async def delete_topology(self) -> None:
        """Delete every queue of this transport, and their messages and dead letters (namespace clean-up).

        Closes this transport's subscriptions first (their consumers are revoked).
        """

    # A partition's unacknowledged count is not here: AMQP reports only a queue's ready messages
    # (the rest needs the management API), so the in-process transport's ``depth`` stays its own,
    # read by the embedded runtime that owns one (hutch.consumers.embedded).

    # ----------------------------------------------------------------- consumability
    # Partition ownership follows the ability to consume: a worker whose broker connection is down
    # (or whose consumers the broker cancelled) should let a worker that can consume take over.
    # A transport that is always able to (the in-process one) keeps these defaults.

    @property
    def can_consume(self) -> bool:
        """Whether this transport can consume at all right now (for a broker: its connection is up)."""
        return True

    @property
    def cannot_consume(self) -> frozenset[int]:
        """Subscribed partitions not being consumed right now, until the transport consumes them again."""
        return frozenset()

    def on_consumability(self, listener: Callable[[], object]) -> Callable[[], None]:
        """Call ``listener()`` whenever ``can_consume`` or ``cannot_consume`` may have changed.

        It runs in the event loop, synchronously, and must not block; read the two properties in
        it. Returns a function that removes the listener.
        """
        listeners: list[Callable[[], object]] = self.__dict__.setdefault("_consumability_listeners", [])
        listeners.append(listener)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                listeners.remove(listener)

        return remove

    def _consumability_changed(self) -> None:
        for listener in list(self.__dict__.get("_consumability_listeners", ())):
            try:
                listener()
            except Exception:
                log.exception("a consumability listener failed")
