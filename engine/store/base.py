"""The checkpoint store's values: what a transition writes and what loading an instance reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hutch.history import Record


class CommitResult(IntEnum):
    """Outcome of one compare-and-set commit."""

    COMMITTED = 1
    CONFLICT = 0  # the sequence number moved: a duplicate or stale message, or a second writer
    FENCED = -1  # this worker no longer owns the partition
    MISSING = -2  # the instance does not exist (expired or never created)


@dataclass(slots=True)
class Transition:
    """Everything one state transition of one instance writes, applied atomically.

    ``expected_seq`` is the instance's sequence number when the transition was computed; the
    commit succeeds only if it is unchanged (and the partition's fencing token still matches).
    """

    partition: int
    workflow: str
    instance_id: str
    expected_seq: int
    created_ms: int
    meta: dict[str, bytes | str | int] = field(default_factory=dict)
    history: list[bytes] = field(default_factory=list)
    reset_history: bool = False
    timers_add: list[tuple[int, bytes]] = field(default_factory=list)
    timers_remove: list[bytes] = field(default_factory=list)
    events_push: list[bytes] = field(default_factory=list)
    events_remove: list[bytes] = field(default_factory=list)
    active: str = "."  # "+" add to the partition's active set, "-" remove, "." leave
    status_from: str = ""
    status_to: str = ""
    ttl_s: int = 0  # > 0 finished (expire after), < 0 persist again (restart), 0 unchanged
    # The stored creation time must equal ``created_ms`` too: set by an owner that built the instance
    # from its start message instead of reading Redis, so a stale message of a same-id instance conflicts.
    check_created: bool = False


@dataclass(slots=True)
class Snapshot:
    """An instance as stored: its meta fields, history records and buffered events."""

    meta: dict[str, Any]
    history: list[Record]
    events: list[bytes]

    @property
    def seq(self) -> int:
        """The sequence number the next commit must expect."""
        return int(self.meta["seq"])
