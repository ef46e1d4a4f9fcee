"""One batch's transition in the making: what :meth:`InstanceActor.apply` builds for one instance.

A :class:`Turn` lives for one call of ``apply``: the records the batch adds to history, the
resolutions not yet delivered to the live run, the :class:`~hutch.store.base.Transition` to
commit and the :class:`Effects` to carry out once it committed. Nothing of it outlives the
batch, so no half-built transition can leak into the next one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hutch.consumers.children import Outbox
from hutch.executor import StepCall
from hutch.history import Record, Resolution
from hutch.status import Status
from hutch.store.base import Transition


@dataclass(slots=True)
class Effects:
    """What to do after the transition committed."""

    execute: list[tuple[StepCall, int]] = field(default_factory=list)
    cancel: list[tuple[str, int]] = field(default_factory=list)
    cancel_all: bool = False
    evict: bool = False
    outbox: list[Outbox] = field(default_factory=list)  # fired outbox timers to carry out (consumers/children.py)


@dataclass(slots=True)
class Turn:
    """The work in progress of one batch of one instance.

    Attributes:
        now_ms: the owner's clock when the batch began; every record of the batch carries it.
        tx: what the commit writes.
        status_before: the instance's status before the batch (the transition records the change).
        records: history records the batch adds, in order.
        res: resolutions not yet delivered to the live run.
        effects: what to do once ``tx`` committed.
    """

    now_ms: int
    tx: Transition
    status_before: Status
    records: list[Record] = field(default_factory=list)
    res: list[Resolution] = field(default_factory=list)
    effects: Effects = field(default_factory=Effects)

    def record(self, record: Record) -> None:
        """Add ``record`` to the history the batch writes."""
        self.records.append(record)

    def resolve(self, resolution: Resolution) -> None:
        """Add ``resolution`` to history and to what the live run is delivered next."""
        self.records.append(resolution)
        self.res.append(resolution)

    def set_status(self, after: Status) -> None:
        """Record the status change the batch made (nothing when it ends where it began)."""
        before = self.status_before
        if before == after:
            return
        tx = self.tx
        tx.meta["status"] = after.value
        tx.status_from, tx.status_to = before.value, after.value
        if (before in _ACTIVE) != (after in _ACTIVE):
            tx.active = "+" if after in _ACTIVE else "-"

    def close(self, history: list[Record]) -> Transition | None:
        """The transition to commit (None when the batch changed nothing); ``history`` gets the records."""
        tx = self.tx
        if tx.keep_history is not None:
            # A restart from a step keeps history's first records: ``history`` holds them now. The
            # store may have folded two records into one (hutch.history, format 2), so a count of
            # records is no position in the stored list: they are written again, after a cut to none.
            tx.keep_history = 0
            tx.records = [*history, *self.records]
        elif self.records:
            tx.records = self.records
        if self.records:
            history.extend(self.records)
        if not (tx.records or tx.meta or tx.timers_add or tx.timers_remove or tx.events_push or tx.events_remove):
            return None
        return tx


# Statuses whose instances are in their partition's active set: re-driven by a new owner.
_ACTIVE = frozenset({Status.QUEUED, Status.RUNNING, Status.WAITING_FOR_PAUSE})
