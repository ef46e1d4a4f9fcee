"""Effects of ``step.invoke`` that partition owners carry out after a commit, through outbox timers.

They are: create a child, tell a parent that its child finished, terminate a child whose parent ended.

Each such effect is decided by a transition and must happen even if the worker dies right after the
commit, so the transition records it as an *outbox timer*: a timer due at once in the instance's
partition, whose member says what to do. The timer reaches the instance's owner like any timer
(:class:`~hutch.broker.envelopes.TimerFired`); the actor turns it into an :data:`Outbox` item, the
orchestrator carries it out here, and only then removes the timer. A crash anywhere in between
leaves the timer in Redis, and the partition's next owner (or a later scan) fires it again — so
every effect is idempotent: a child is created only if absent, a parent settles an invoke once and
ignores a copy, terminating a finished child does nothing.

Outbox members are ``[kind, workflow, instance id, run, a, b]`` (the shape of every timer member):
``child`` (a, b = the invoke's name and count), ``close`` (a, b = the child's workflow and id) and
``parent`` (a, b unused), of the instance whose partition holds the timer.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from hutch.blobs import BlobAddress, fetch_blobs, stored_ref
from hutch.broker.envelopes import ChildFinished, Control, InstanceCreated, InstanceMessage, encode
from hutch.broker.partitioning import partition_of
from hutch.broker.transports.base import Outgoing, Transport
from hutch.children import ParentLink
from hutch.client import creation_fields
from hutch.errors import InstanceAlreadyExists
from hutch.history import InvokeCommand
from hutch.serialization import pack
from hutch.status import FINISHED, Status
from hutch.store.base import CheckpointStore

log = logging.getLogger("hutch.worker")

OutboxKind = Literal["child", "close", "parent"]
OUTBOX_KINDS: frozenset[str] = frozenset({"child", "close", "parent"})


def outbox_member(kind: OutboxKind, workflow: str, instance_id: str, run_no: int, a: str = "", b: Any = 0) -> bytes:
    """The member of an outbox timer of instance ``workflow``/``instance_id`` (see the module docstring)."""
    return pack([kind, workflow, instance_id, run_no, a, b])


@dataclass(frozen=True, slots=True)
class StartChild:
    """Create the invoke's child unless it exists (and send its start message)."""

    member: bytes
    partition: int  # the parent's: where the outbox timer is
    parent: ParentLink
    command: InvokeCommand
    trace: str | None


@dataclass(frozen=True, slots=True)
class CloseChild:
    """Terminate the child (its parent ended and its policy is ``parent_close="terminate"``)."""

    member: bytes
    partition: int  # the parent's
    workflow: str
    instance_id: str


@dataclass(frozen=True, slots=True)
class NotifyParent:
    """Send the finished child's outcome to its parent's partition."""

    member: bytes
    partition: int  # the child's
    message: ChildFinished


Outbox = StartChild | CloseChild | NotifyParent


def child_finished(
    link: ParentLink, workflow: str, instance_id: str, status: Status, output: bytes | None, error: Any
) -> ChildFinished:
    """The message that settles the parent's invoke with the child's outcome."""
    return ChildFinished(
        workflow=link["wf"],
        instance_id=link["id"],
        name=link["n"],
        count=link["c"],
        run=link["run"],
        child_workflow=workflow,
        child_id=instance_id,
        status="complete" if status is Status.COMPLETE else "errored" if status is Status.ERRORED else "terminated",
        output=output if status is Status.COMPLETE else None,
        error=dict(error) if status is Status.ERRORED and error else None,
    )


async def carry_out(
    items: Sequence[Outbox], *, store: CheckpointStore, transport: Transport, now_ms: int, inline_threshold: int
) -> list[Outbox]:
    """Carry out ``items``; the ones done, whose outbox timers may go (the rest fire again later).

    The messages are published together, after every store read and write they depend on: an item
    is done only once the broker confirmed its message.
    """
    messages: list[InstanceMessage] = []
    done: list[Outbox] = []
    for item in items:
        try:
            message = await _prepare(item, store, transport.partitions, now_ms, inline_threshold)
        except Exception as exc:  # Redis unreachable, say: the timer fires again
            log.warning("outbox of partition %d: %r failed, retried later: %r", item.partition, item, exc)
            continue
        if message is not None:
            messages.append(message)
        done.append(item)
    if messages:
        try:
            await transport.publish(
                [Outgoing(partition_of(m.workflow, m.instance_id, transport.partitions), encode(m)) for m in messages]
            )
        except Exception as exc:
            log.warning("outbox: publishing %d messages failed, retried later: %r", len(messages), exc)
            return []
    return done


async def _prepare(
    item: Outbox, store: CheckpointStore, partitions: int, now_ms: int, inline_threshold: int
) -> InstanceMessage | None:
    """The store work of one item, and the message it sends (None: nothing to send)."""
    if isinstance(item, NotifyParent):
        return item.message
    if isinstance(item, CloseChild):
        partition = partition_of(item.workflow, item.instance_id, partitions)
        meta = await store.read_meta(partition, item.workflow, item.instance_id)
        if meta is None or meta["status"] in FINISHED:
            return None  # never created (the parent ended first), or it ended by itself
        return Control(workflow=item.workflow, instance_id=item.instance_id, action="terminate")
    command = item.command
    workflow, instance_id = command["wf"], command["id"]
    partition = partition_of(workflow, instance_id, partitions)
    parent = item.parent
    trigger = {"source": "workflow", "workflow": parent["wf"], "instance_id": parent["id"]}
    params = command["pb"]
    held = stored_ref(params)
    if held is not None:  # large params the parent's history refers to: stored under the parent
        where = BlobAddress(item.partition, parent["wf"], parent["id"])
        params = (await fetch_blobs(store.blobs, where, [held]))[held.key]
    # What a client writes at creation, plus the link to the parent.
    fields, ref = creation_fields(workflow, instance_id, params, now_ms, trigger, item.trace, inline_threshold)
    if ref is not None:  # large params, stored under the child before its create commits
        await store.blobs.put(BlobAddress(partition, workflow, instance_id), ref, params)
    fields["parent"] = pack(parent)
    (created,) = await store.create_many([(partition, workflow, instance_id, now_ms, fields)])
    if created:
        return InstanceCreated(workflow=workflow, instance_id=instance_id, fields=fields)
    meta = await store.read_meta(partition, workflow, instance_id)
    if meta is None:
        raise LookupError(f"child {instance_id!r} of workflow {workflow!r} exists and does not")  # deleted meanwhile
    if meta.get("parent") != parent:
        # An instance this invoke did not create holds the id: the invoke fails rather than adopt it.
        error = InstanceAlreadyExists(workflow, instance_id)
        return ChildFinished(
            workflow=parent["wf"],
            instance_id=parent["id"],
            name=parent["n"],
            count=parent["c"],
            run=parent["run"],
            child_workflow=workflow,
            child_id=instance_id,
            status="errored",
            error={"name": type(error).__name__, "message": str(error)},
        )
    if meta["status"] == Status.QUEUED.value:
        # Created by an earlier attempt whose start message may never have been sent: send it (a
        # second one is harmless). The owner loads the instance, as for a redelivered start.
        return InstanceCreated(workflow=workflow, instance_id=instance_id)
    return None
