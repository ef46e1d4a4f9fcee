"""Turns client requests into partition messages: the engine's dispatcher over a transport."""

from __future__ import annotations

from collections.abc import Sequence
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
from opentelemetry.propagate import inject

if TYPE_CHECKING:
    from hutch.dispatch import CreatedInstance
    from hutch.restart import FromStep
    from hutch.status import Action


BATCH_TARGETS = 500
"""Instances one ``ControlBatch`` carries at most (about 40 bytes each: far below any message size limit)."""


class BrokerDispatcher:
    """Implements ``engine.dispatch.Dispatcher`` by publishing envelopes to partition queues."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.partitions = transport.partitions

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
        await self._send([message])

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
        await self._send([Redrive(workflow=workflow, instance_id=instance_id)])

    async def _send(self, messages: list[InstanceMessage]) -> None:
        headers: dict[str, str] = {}
        inject(headers)  # W3C traceparent of the caller's span, if any, so traces continue at the worker
        await self.transport.publish(
            [Outgoing(self.partition_of(m.workflow, m.instance_id), encode(m), dict(headers)) for m in messages]
        )
