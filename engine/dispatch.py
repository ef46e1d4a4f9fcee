"""The seam between the client API and a broker: how requests reach partition owners."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from hutch.restart import FromStep
from hutch.status import Action

CONTROL_BATCH = "controls"
"""The worker feature (``Keys.worker_feature``) of taking one control message for many instances."""


@dataclass(frozen=True, slots=True)
class CreatedInstance:
    """A just-created instance, with what its owner needs to start it without reading the store."""

    workflow: str
    instance_id: str
    fields: dict[str, bytes | str | int]  # the meta fields written at creation, as stored


class Dispatcher(Protocol):
    """Sends instance messages to the partition that owns the instance (implemented in ``broker``)."""

    partitions: int

    def partition_of(self, workflow: str, instance_id: str) -> int:
        """The partition an instance belongs to."""
        ...

    async def created(self, items: list[CreatedInstance]) -> None:
        """Tell owners that these instances were created."""
        ...

    async def event(
        self,
        workflow: str,
        instance_id: str,
        event_type: str,
        payload: bytes,
        sent_ms: int,
        event_id: str | None = None,
    ) -> None:
        """Deliver an event (payload already msgpack-encoded and size-checked).

        ``event_id`` is the event's identity (a new one when None): the owner takes an event whose
        id it has seen (buffered, or taken by a wait) as a copy and ignores it.
        """
        ...

    async def control(
        self,
        workflow: str,
        instance_id: str,
        action: Action,
        *,
        from_step: FromStep | None = None,
        rollback: bool = False,
    ) -> None:
        """Request pause, resume, terminate or restart (``from_step``: from a step; ``rollback``: with the undos)."""
        ...

    async def control_many(
        self,
        items: Sequence[tuple[str, str]],
        action: Action,
        *,
        runs: Sequence[int | None] | None = None,
        batched: bool = False,
    ) -> None:
        """Request one action of many (workflow, instance id) instances in one confirmed batch (bulk jobs).

        Args:
            items: the instances.
            action: what to request of each.
            runs: per instance, the run it must still be on for the request to apply (None: any);
                only batched requests carry it.
            batched: one message per partition carrying all of its instances (``ControlBatch``),
                rather than one per instance; only for workers that take it (``CONTROL_BATCH``).
        """
        ...
