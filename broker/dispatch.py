"""Turns client requests into partition messages: the engine's dispatcher over a transport.

Events have a fast path. The broker message is an event's durable path, but a quorum queue's
replicated write makes it the slowest hop of an event's way to its waiter; so, given an
``announce`` function (a distributed runtime's store: sharded pub/sub on the partition's events
channel), the dispatcher also announces each event there as it publishes it, and the partition's
owner applies it from the notice (consumers/orchestrator.py). The message trailing behind is then
a copy the instance ignores (it holds the event's id). A notice lost, or heard by no owner, costs
only the time the fast path would have saved.

A notice carries the id of the event this dispatcher sent the instance before it, and the owner
applies it only once that one is applied: a lost notice can never let a later event overtake an
earlier one of the same sender. After a control or a re-drive of the instance (which travel by
the broker only), the next event is sent without a notice, so it stays behind them.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from hutch.broker.envelopes import (
    Control,
    ControlBatch,
    ControlTarget,
    EventReceived,
    InstanceCreated,
    InstanceMessage,
    Redrive,
    encode,
)
from hutch.broker.partitioning import partition_of
from hutch.broker.transports.base import Outgoing, Transport
from hutch.store.announcements import EventNotice, event_notice_bytes
from opentelemetry.propagate import inject

if TYPE_CHECKING:
    from hutch.dispatch import CreatedInstance
    from hutch.restart import FromStep
    from hutch.status import Action


BATCH_TARGETS = 500
"""Instances one ``ControlBatch`` carries at most (about 40 bytes each: far below any message size limit)."""

log = logging.getLogger("hutch.client")

Announce = Callable[[int, bytes], Awaitable[None]]
"""Publishes an event notice for a partition's owner (``RedisStore.announce_event``)."""

MAX_NOTICE_PAYLOAD = 64 * 1024
"""Events with larger payloads (or references to them) go by the broker only."""

_REMEMBERED = 16_384  # instances whose last message this dispatcher remembers (the fast path's order)
_UNKNOWN = ""  # no event of this dispatcher's known: event ids are never empty


class BrokerDispatcher:
    """Implements ``engine.dispatch.Dispatcher`` by publishing envelopes to partition queues.

    Args:
        transport: where the messages are published.
        announce: announces events for their owners' fast path (see the module docstring); None: none.
    """

    def __init__(self, transport: Transport, *, announce: Announce | None = None) -> None:
        self.transport = transport
        self.partitions = transport.partitions
        self._announce = announce
        # (workflow, instance id) -> the id of the last event sent it, or None after a control or
        # re-drive (the next event then goes by the broker only, behind it).
        self._last: OrderedDict[tuple[str, str], str | None] = OrderedDict()

    def partition_of(self, workflow: str, instance_id: str) -> int:
        """The partition whose queue carries this instance's messages."""
        return partition_of(workflow, instance_id, self.partitions)

    async def created(self, items: list[CreatedInstance]) -> None:
        """Publish one ``InstanceCreated`` per instance, each to its owner's partition, in one confirmed batch."""
        await self._send(
            [InstanceCreated(workflow=c.workflow, instance_id=c.instance_id, fields=c.fields) for c in items]
        )

    async def event(
        self,
        workflow: str,
        instance_id: str,
        event_type: str,
        payload: bytes,
        sent_ms: int,
        event_id: str | None = None,
    ) -> None:
        """Publish an event to its instance's partition; ``event_id`` keeps a resent event's identity."""
        message = EventReceived(
            workflow=workflow, instance_id=instance_id, event_type=event_type, payload=payload, sent_ms=sent_ms
        )
        if event_id is not None:
            message = message.model_copy(update={"id": event_id})
        key = (workflow, instance_id)
        last = self._last.get(key, _UNKNOWN)
        self._remember(key, message.id)
        if self._announce is None or last is None or len(payload) > MAX_NOTICE_PAYLOAD:
            await self._send([message])
            return
        headers: dict[str, str] = {}
        inject(headers)
        notice = EventNotice(
            workflow, instance_id, event_type, payload, sent_ms, message.id, last or None, headers.get("traceparent")
        )
        # The notice first (the send's wait is the broker's confirm either way): the owner usually
        # hears it well before the message is delivered.
        await asyncio.gather(self._notice(self.partition_of(*key), event_notice_bytes(notice)), self._send([message]))

    async def _notice(self, partition: int, data: bytes) -> None:
        assert self._announce is not None
        try:
            await self._announce(partition, data)
        except Exception as exc:  # only the fast path is lost: the broker message still delivers the event
            log.debug("an event notice for partition %d was not published: %r", partition, exc)

    def _remember(self, key: tuple[str, str], last: str | None) -> None:
        if self._announce is None:
            return
        self._last[key] = last
        self._last.move_to_end(key)
        if len(self._last) > _REMEMBERED:
            self._last.popitem(last=False)

    async def control(
        self,
        workflow: str,
        instance_id: str,
        action: Action,
        *,
        from_step: FromStep | None = None,
        rollback: bool = False,
    ) -> None:
        """Publish a pause, resume, terminate or restart request to the instance's partition."""
        self._remember((workflow, instance_id), None)
        await self._send(
            [Control(workflow=workflow, instance_id=instance_id, action=action, from_step=from_step, rollback=rollback)]
        )

    async def control_many(
        self,
        items: Sequence[tuple[str, str]],
        action: Action,
        *,
        runs: Sequence[int | None] | None = None,
        batched: bool = False,
    ) -> None:
        """Publish one action's request to many instances' partitions in one confirmed batch (bulk jobs).

        ``batched``: one ``ControlBatch`` per partition (of at most :data:`BATCH_TARGETS` instances)
        instead of a ``Control`` per instance; ``runs`` fences each batched target to its run.
        """
        for item in items:
            self._remember(item, None)
        if not batched:
            await self._send([Control(workflow=wf, instance_id=iid, action=action) for wf, iid in items])
            return
        by_partition: dict[int, list[ControlTarget]] = {}
        for n, (wf, iid) in enumerate(items):
            run = runs[n] if runs is not None else None
            target = ControlTarget(workflow=wf, instance_id=iid, run=run)
            by_partition.setdefault(self.partition_of(wf, iid), []).append(target)
        headers: dict[str, str] = {}
        inject(headers)
        outgoing = [
            Outgoing(partition, encode(ControlBatch(action=action, targets=targets[i : i + BATCH_TARGETS])), headers)
            for partition, targets in by_partition.items()
            for i in range(0, len(targets), BATCH_TARGETS)
        ]
        await self.transport.publish(outgoing)

    async def redrive(self, workflow: str, instance_id: str) -> None:
        """Publish a ``Redrive`` to the instance's partition: its owner loads the instance and continues it."""
        self._remember((workflow, instance_id), None)
        await self._send([Redrive(workflow=workflow, instance_id=instance_id)])

    async def _send(self, messages: list[InstanceMessage]) -> None:
        headers: dict[str, str] = {}
        inject(headers)  # W3C traceparent of the caller's span, if any, so traces continue at the worker
        await self.transport.publish(
            [Outgoing(self.partition_of(m.workflow, m.instance_id), encode(m), dict(headers)) for m in messages]
        )
