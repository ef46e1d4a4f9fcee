"""The checkpoint store's seam (:class:`CheckpointStore`) and its values: what a transition writes, a load reads."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from hutch.blobs import BlobStore
    from hutch.config import Limits
    from hutch.history import Record
    from hutch.keys import Keys
    from hutch.search import Order, Position, SearchFilter, SearchHit
    from redis.asyncio import Redis


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
    # Records to append after ``history``, encoded by the store in its deployment's history format.
    records: list[Record] = field(default_factory=list)
    reset_history: bool = False
    # Restart from a step: history is cut to its first ``keep_history`` records before ``history`` is
    # appended (the buffered events stay). None: history is kept whole (or reset, above).
    keep_history: int | None = None
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
    # Values this transition records by reference (hutch.blobs), key → bytes: stored before it commits.
    blobs: dict[str, bytes] = field(default_factory=dict)


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


class CheckpointStore(Protocol):
    """What the client and the runtime (worker, orchestrator, timers, colocated runtime) need of the checkpoint store.

    :class:`~hutch.store.redis.RedisStore` implements it. The store is Redis-shaped at its edges:
    ``redis`` and ``keys`` are there for the pub/sub announcements, worker membership and the
    gateway's counting views, which talk to the same Redis under the store's key layout.
    """

    @property
    def redis(self) -> Redis:
        """The Redis client the store writes through (announcement channels, membership, views)."""
        ...

    @property
    def keys(self) -> Keys:
        """The store's key layout (its namespace)."""
        ...

    @property
    def partitions(self) -> int:
        """The deployment's partition count."""
        ...

    @property
    def blobs(self) -> BlobStore:
        """Where values over the inline threshold are stored (hutch.blobs)."""
        ...

    async def close(self) -> None:
        """Close the store's connections."""
        ...

    async def check_deployment(self, limits: Limits) -> None:
        """Record the partition count and limits on first use; raise ``DeploymentMismatch`` on different ones."""
        ...

    # ------------------------------------------------------------------ the client's
    async def create_many(
        self,
        items: Sequence[tuple[int, str, str, int, dict[str, Any]]],
        *,
        events: Sequence[Sequence[bytes]] | None = None,
    ) -> list[bool]:
        """Create each (partition, workflow, id, created ms, meta fields) unless its id exists; which were created.

        ``events``, one list per item: packed event records each instance starts with, written atomically with it.
        """
        ...

    async def delete_unstarted(self, partition: int, workflow: str, instance_id: str) -> bool:
        """Delete an instance no worker has started (a create whose start message failed); whether it did."""
        ...

    async def read_meta(self, partition: int, workflow: str, instance_id: str) -> dict[str, Any] | None:
        """An instance's meta fields, or None when it does not exist."""
        ...

    async def history(self, partition: int, workflow: str, instance_id: str) -> list[Record]:
        """An instance's history records."""
        ...

    async def workflow_names(self) -> list[str]:
        """Names of workflows that have (had) instances."""
        ...

    async def list_instances(
        self, workflow: str, status: str | None, *, before: tuple[int, str] | None, limit: int
    ) -> list[tuple[str, int]]:
        """(instance id, created ms) of ``workflow``'s instances (optionally in one status), newest first."""
        ...

    async def search(
        self, workflows: Sequence[str], where: SearchFilter, *, order: Order, after: Position | None, limit: int
    ) -> tuple[list[SearchHit], Position | None]:
        """One page of ``workflows``' instances matching ``where`` (hutch.search), and where the next page starts."""
        ...

    async def delete_finished(self, items: Sequence[tuple[int, str, str]]) -> list[int]:
        """Delete finished (partition, workflow, id) instances for good: 1 deleted, 0 gone, -1 kept (unfinished)."""
        ...

    # ------------------------------------------------------------------ the partition owner's
    async def claim(self, partition: int, token: str) -> None:
        """Make ``token`` the partition's fencing token: every commit of an older owner now fails."""
        ...

    async def load_many(self, items: Sequence[tuple[int, str, str]]) -> list[Snapshot | None]:
        """Each (partition, workflow, id) instance as stored, or None where it does not exist."""
        ...

    async def commit_many(self, transitions: Sequence[Transition], fences: dict[int, str]) -> list[CommitResult]:
        """Apply each transition atomically if its sequence number and partition fence still match."""
        ...

    async def due_timers(
        self, partitions: Iterable[int], now_ms: int, limit: int = 1000
    ) -> list[tuple[int, bytes, int]]:
        """Timers due by ``now_ms`` on these partitions: (partition, member, due ms)."""
        ...

    async def remove_timers(self, partition: int, members: Sequence[bytes]) -> None:
        """Remove timers outside a transition: outbox timers whose effect was carried out."""
        ...

    async def next_due(self, partitions: Iterable[int], *, after_ms: int) -> int | None:
        """The earliest timer due strictly after ``after_ms`` on these partitions (epoch ms), or None."""
        ...
