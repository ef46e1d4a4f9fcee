"""Changing a deployment's partition count: the Redis side of ``hutch admin repartition``.

Every key of an instance, and every partition-wide set naming it, lives under its partition's hash
tag (:mod:`hutch.keys`), so a new partition count means new key names for most instances: going
from P to Q partitions, an instance moves unless its hash gives the same partition modulo both.
This module moves them while the deployment is stopped (no worker, gateway or client runs; the
caller checks the workers' heartbeats) and records its progress in the deployment record, so an
interrupted run resumes where it stopped.

- The progress is the ``repartition`` field of ``<namespace>:config`` (a :class:`Plan`). While it
  exists :meth:`RedisStore.check_deployment <engine.store.redis.RedisStore.check_deployment>`
  refuses every process, on the old partition count and the new one alike: the data is half moved.
- The old partitions are processed one by one, in order; the plan counts those done. A partition
  is processed by scanning every set :meth:`Keys.partition_sets <engine.keys.Keys.partition_sets>`
  lists for it and moving each entry whose instance belongs elsewhere under the new count:

  * first the instance's keys (:meth:`Keys.instance_keys <engine.keys.Keys.instance_keys>`) are
    copied to the new partition (``DUMP``/``RESTORE REPLACE``, keeping a finished instance's time to
    live), then deleted at the old one;
  * then the entry is added to the same set of the new partition (with its score), then removed
    from the old one.

  Every step is idempotent: nothing else writes these keys while the deployment is stopped, so
  copying again after a crash writes the same values, and an entry that already left a partition
  has its data where it points. Resuming a partition that was processed halfway does it again.
  An entry whose instance belongs to the partition it is in stays: it never had to move, or it
  moved here from a partition processed earlier.
- Every command touches one key, so this works on Redis Cluster, where an instance's old and new
  keys are in different slots and no one script could move them.

The owner tokens of the old partitions are deleted at the end (each partition's next owner writes
its own); the namespace-wide keys (``workflows``, ``workers``, ``config``) do not move.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from hutch.errors import RepartitionRefused
from hutch.keys import Keys, PartitionSet, instance_member
from hutch.serialization import unpack
from redis.asyncio import Redis

RECORD_FIELD = "repartition"
"""The field of the deployment record (``<namespace>:config``) holding a running repartition's :class:`Plan`."""

Phase = Literal["redis", "drain", "distribute"]
PartitionOf = Callable[[str, str, int], int]
"""``partition_of(workflow, instance id, partitions)``: the broker's stable hash (broker/partitioning.py)."""

_FINISH = """
redis.call('HSET', KEYS[1], 'partitions', ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[2])
return 1
"""
"""Switches the deployment to its new partition count and ends the repartition, in one step."""


@dataclass(slots=True)
class Plan:
    """A repartition's progress, as recorded in the deployment record.

    Attributes:
        source: the partition count the deployment had.
        target: the partition count it gets.
        phase: ``redis`` (moving keys), then ``drain`` (old queues to the staging queue), then
            ``distribute`` (staging queue to the new queues): see broker/repartition.py.
        moved: how many old partitions (0, 1, ...) have had their Redis data moved.
    """

    source: int
    target: int
    phase: Phase = "redis"
    moved: int = 0

    def to_json(self) -> str:
        """The record's text (``from`` and ``to`` are what check_deployment names)."""
        return json.dumps(
            {"from": self.source, "to": self.target, "phase": self.phase, "moved": self.moved}, sort_keys=True
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> Plan:
        """Read a recorded plan."""
        data = json.loads(raw)
        return cls(int(data["from"]), int(data["to"]), data["phase"], int(data["moved"]))


@dataclass(slots=True)
class RedisCounts:
    """What moving the Redis data did.

    Attributes:
        instances: instances whose keys moved to another partition.
        keys: keys moved (an instance has up to three: meta, history, event buffer).
        stayed: instances that keep their partition.
        entries: set entries (timers, indexes...) moved to another partition.
        unreadable: entries left where they were because they name no instance.
    """

    instances: int = 0
    keys: int = 0
    stayed: int = 0
    entries: int = 0
    unreadable: int = 0

    def add(self, other: RedisCounts) -> None:
        """Add another partition's counts to these."""
        self.instances += other.instances
        self.keys += other.keys
        self.stayed += other.stayed
        self.entries += other.entries
        self.unreadable += other.unreadable


@dataclass(slots=True)
class _Chunk:
    """Entries of one set scanned together, and what processing them moves."""

    entries: list[tuple[bytes, float | None]] = field(default_factory=list)
    by_partition: dict[int, list[tuple[bytes, float | None]]] = field(default_factory=dict)
    instances: list[tuple[str, str, int]] = field(default_factory=list)  # (workflow, id, new partition)


class RedisRepartition:
    """Moves a stopped deployment's Redis data from one partition count to another.

    Args:
        redis: the deployment's Redis (``decode_responses=False``), standalone or cluster.
        namespace: the deployment's namespace.
        partition_of: the partition of an instance under a partition count.
        chunk: entries scanned and moved per round trip.
    """

    def __init__(self, redis: Redis, namespace: str, partition_of: PartitionOf, *, chunk: int = 500) -> None:
        self.redis = redis
        self.keys = Keys(namespace)
        self.partition_of = partition_of
        self.chunk = chunk
        self._finish = redis.register_script(_FINISH)

    # ------------------------------------------------------------------ the record
    async def recorded(self) -> tuple[int | None, Plan | None]:
        """The deployment's recorded partition count (None: no deployment) and its running repartition."""
        partitions, raw = await self.redis.hmget(self.keys.config(), ["partitions", RECORD_FIELD])
        return (int(partitions) if partitions else None), (Plan.from_json(raw) if raw else None)

    async def begin(self, target: int) -> tuple[Plan, bool]:
        """The plan to carry out: the recorded one (resumed), or a new one recorded now (True).

        Recording it first is what keeps processes from starting while the data moves.

        Raises:
            RepartitionRefused: no deployment is recorded, or another repartition is under way.
        """
        config = self.keys.config()
        for _ in range(2):
            partitions, plan = await self.recorded()
            if plan is not None:
                if plan.target != target:
                    raise RepartitionRefused(
                        f"a repartition from {plan.source} to {plan.target} partitions is under way in namespace "
                        f"{self.keys.namespace!r} (interrupted, or running elsewhere); finish it first: "
                        f"hutch admin repartition --to {plan.target}"
                    )
                return plan, False
            if partitions == target:
                raise ValueError(f"the deployment already has {target} partitions")
            if partitions is None:
                raise RepartitionRefused(
                    f"namespace {self.keys.namespace!r} has no deployment recorded ({config} has no partition "
                    "count): there is nothing to repartition; check HUTCH_NAMESPACE and HUTCH_REDIS_URL"
                )
            plan = Plan(partitions, target)
            if await self.redis.hsetnx(config, RECORD_FIELD, plan.to_json()):
                return plan, True
            # Another run recorded its plan in between: resume it if it has the same target.
        raise RepartitionRefused(f"the repartition record of namespace {self.keys.namespace!r} keeps changing")

    async def save(self, plan: Plan) -> None:
        """Record the plan's progress."""
        await self.redis.hset(self.keys.config(), RECORD_FIELD, plan.to_json())

    async def abandon(self, plan: Plan) -> None:
        """Remove a plan that moved nothing yet, so the deployment may run again unchanged."""
        if plan.phase != "redis" or plan.moved:
            raise RuntimeError("a repartition that moved data must be finished, not abandoned")
        await self.redis.hdel(self.keys.config(), RECORD_FIELD)

    async def finish(self, plan: Plan) -> None:
        """Forget the old partitions' owners, then record the new partition count and end the repartition."""
        pipe = self.redis.pipeline(transaction=False)
        for p in range(plan.source):
            pipe.delete(self.keys.owner(p))  # one key per command: Cluster-safe
        await pipe.execute()
        await self._finish([self.keys.config()], [plan.target, RECORD_FIELD])

    # ------------------------------------------------------------------ reads
    async def live_workers(self, ttl_s: float, *, now_ms: int | None = None) -> list[str]:
        """Workers whose last heartbeat is within ``ttl_s`` (what consumers/membership.py counts as alive)."""
        now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        found = await self.redis.zrangebyscore(self.keys.workers(), now - round(ttl_s * 1000), "+inf")
        return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in found)

    async def workflow_names(self) -> list[str]:
        """Names of the workflows that have instances (whose status indexes exist)."""
        names: set[bytes] = await self.redis.smembers(self.keys.workflows())  # type: ignore[assignment]
        return sorted(n.decode() for n in names)

    # ------------------------------------------------------------------ moving
    async def move(self, plan: Plan, advance: Callable[[int], None] | None = None) -> RedisCounts:
        """Move the data of the old partitions not moved yet, recording each as done.

        Then the plan's phase becomes ``drain`` (the broker's turn). ``advance(1)`` is called after each partition.
        """
        counts = RedisCounts()
        if plan.phase != "redis":
            return counts
        workflows = await self.workflow_names()
        for partition in range(plan.moved, plan.source):
            counts.add(await self.move_partition(plan, partition, workflows))
            plan.moved = partition + 1
            await self.save(plan)
            if advance is not None:
                advance(1)
        plan.phase = "drain"
        await self.save(plan)
        return counts

    async def move_partition(self, plan: Plan, partition: int, workflows: Sequence[str]) -> RedisCounts:
        """Move every entry of an old partition whose instance belongs elsewhere, with its instance's keys."""
        counts = RedisCounts()
        here = self.keys.partition_sets(partition, workflows)
        # Instances whose keys this call already moved (or found moved): an instance has entries in
        # several sets. Bounded by the partition's instances, and freed when the partition is done.
        handled: set[str] = set()
        for position, pset in enumerate(here):
            chunk = _Chunk()
            async for entry in self._scan(pset):
                chunk.entries.append(entry)
                if len(chunk.entries) >= self.chunk:
                    await self._move_chunk(plan, partition, workflows, position, pset, chunk, handled, counts)
                    chunk = _Chunk()
            if chunk.entries:
                await self._move_chunk(plan, partition, workflows, position, pset, chunk, handled, counts)
        return counts

    async def _scan(self, pset: PartitionSet) -> AsyncIterator[tuple[bytes, float | None]]:
        """The set's entries (member, score or None), a page per round trip.

        ``*SCAN`` returns every entry present for the whole iteration; the entries this removes have
        been returned already, and nothing adds entries to a partition being processed (moved
        entries go to other partitions).
        """
        if pset.scored:
            async for member, score in self.redis.zscan_iter(pset.key, count=self.chunk):
                yield bytes(member), float(score)
        else:
            async for member in self.redis.sscan_iter(pset.key, count=self.chunk):
                yield bytes(member), None

    def _instance(self, pset: PartitionSet, member: bytes) -> tuple[str, str] | None:
        """The (workflow, instance id) an entry names, or None when it names none."""
        try:
            if pset.timers:
                _, workflow, instance_id, *_ = unpack(member)
            else:
                workflow, instance_id = member.decode().split(":", 1)
        except Exception:
            return None
        if not isinstance(workflow, str) or not isinstance(instance_id, str):
            return None
        return workflow, instance_id

    async def _move_chunk(
        self,
        plan: Plan,
        partition: int,
        workflows: Sequence[str],
        position: int,
        pset: PartitionSet,
        chunk: _Chunk,
        handled: set[str],
        counts: RedisCounts,
    ) -> None:
        for member, score in chunk.entries:
            instance = self._instance(pset, member)
            if instance is None:
                counts.unreadable += 1
                continue
            workflow, instance_id = instance
            new = self.partition_of(workflow, instance_id, plan.target)
            if new == partition:
                if pset.names_every_instance and self.partition_of(workflow, instance_id, plan.source) == partition:
                    counts.stayed += 1
                continue
            chunk.by_partition.setdefault(new, []).append((member, score))
            name = instance_member(workflow, instance_id)
            if name not in handled:
                handled.add(name)
                chunk.instances.append((workflow, instance_id, new))
        # The instances' keys first: an entry may leave this partition only once its data has.
        await self._move_instances(partition, chunk.instances, counts)
        await self._move_entries(partition, workflows, position, pset, chunk.by_partition, counts)

    async def _move_instances(self, partition: int, instances: list[tuple[str, str, int]], counts: RedisCounts) -> None:
        if not instances:
            return
        moves: list[tuple[str, str, int]] = []  # (old key, new key, index of its instance)
        pipe = self.redis.pipeline(transaction=False)
        for n, (workflow, instance_id, new) in enumerate(instances):
            olds = self.keys.instance_keys(partition, workflow, instance_id)
            news = self.keys.instance_keys(new, workflow, instance_id)
            for old, dest in zip(olds, news, strict=True):
                pipe.dump(old)
                pipe.pttl(old)
                moves.append((old, dest, n))
        dumped = await pipe.execute()
        pipe = self.redis.pipeline(transaction=False)
        restored: list[str] = []
        moved_instances: set[int] = set()
        for i, (old, dest, n) in enumerate(moves):
            data, ttl = dumped[2 * i], int(dumped[2 * i + 1])
            # No dump: the key does not exist (an empty list is no key; or an earlier run moved it).
            # A TTL of 0 or less than -1: it expired as it was read; RESTORE would make it permanent.
            if data is None or (ttl != -1 and ttl <= 0):
                continue
            pipe.restore(dest, 0 if ttl == -1 else ttl, data, replace=True)
            restored.append(old)
            moved_instances.add(n)
        if not restored:
            return
        await pipe.execute()
        pipe = self.redis.pipeline(transaction=False)
        for old in restored:
            pipe.delete(old)
        await pipe.execute()
        counts.keys += len(restored)
        counts.instances += len(moved_instances)

    async def _move_entries(
        self,
        partition: int,
        workflows: Sequence[str],
        position: int,
        pset: PartitionSet,
        by_partition: dict[int, list[tuple[bytes, float | None]]],
        counts: RedisCounts,
    ) -> None:
        if not by_partition:
            return
        # Added at the destination, and only then removed here: two round trips, because on a
        # Cluster a pipeline's commands for different nodes may apply in any order.
        pipe = self.redis.pipeline(transaction=False)
        for new, rows in by_partition.items():
            dest = self.keys.partition_sets(new, workflows)[position]
            if dest.scored:
                pipe.zadd(dest.key, {member: score or 0.0 for member, score in rows})
            else:
                pipe.sadd(dest.key, *(member for member, _ in rows))
        await pipe.execute()
        members = [member for rows in by_partition.values() for member, _ in rows]
        if pset.scored:
            await self.redis.zrem(pset.key, *members)
        else:
            await self.redis.srem(pset.key, *members)
        counts.entries += len(members)
