"""Which worker owns which partition: heartbeats in Redis and an even, deterministic assignment.

Every worker writes a heartbeat (a sorted set scored by time) each ``heartbeat_s``; the live
workers are those seen within ``ttl_s``. Each worker computes the same assignment from the same
sorted list — partition p goes to live worker ``p mod n`` — and consumes exactly its share. A
worker that dies stops heartbeating and its partitions move within ``ttl_s + heartbeat_s``.

Ownership follows the ability to consume: a worker whose transport cannot consume (its broker
connection is down, see ``Transport.can_consume``) stops heartbeating, so the others take its
partitions once its last heartbeat is ``ttl_s`` old; it releases them itself a heartbeat earlier,
and rejoins as soon as it can consume again. A connection back within ``ttl_s`` changes nothing.

Two workers may briefly disagree while the membership changes; safety does not depend on this
layer: RabbitMQ's single-active-consumer delivers a partition to one consumer at a time, and a
worker taking a partition writes a new fencing token that makes every later commit of the
previous owner fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis

from engine.clock import Clock
from engine.store.redis import STORE_ERRORS

log = logging.getLogger("hutch.membership")


def assign(workers: list[str], partitions: int) -> dict[str, list[int]]:
    """Spread partitions evenly over workers (sorted ids; partition p → worker p mod n)."""
    ordered = sorted(workers)
    out: dict[str, list[int]] = {w: [] for w in ordered}
    for p in range(partitions):
        if ordered:
            out[ordered[p % len(ordered)]].append(p)
    return out


class Membership:
    """Heartbeats this worker and keeps its set of partitions in line with the assignment.

    Args:
        redis: the Redis holding the heartbeats.
        key: the heartbeat sorted set's key.
        worker_id: this worker's id.
        partitions: the deployment's partition count.
        acquire: called with a partition this worker should start consuming.
        release: called with a partition this worker must stop consuming.
        can_consume: whether this worker can consume right now (default: always).
    """

    def __init__(
        self,
        redis: Redis,
        key: str,
        worker_id: str,
        partitions: int,
        *,
        acquire: Callable[[int], Awaitable[None]],
        release: Callable[[int], Awaitable[None]],
        clock: Clock,
        heartbeat_s: float = 1.0,
        ttl_s: float = 3.0,
        can_consume: Callable[[], bool] | None = None,
    ) -> None:
        self._redis = redis
        self._key = key
        self.worker_id = worker_id
        self._partitions = partitions
        self._acquire = acquire
        self._release = release
        self._clock = clock
        self._heartbeat_s = heartbeat_s
        self._ttl_ms = round(ttl_s * 1000)
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self.assigned: set[int] = set()
        self._fenced: set[int] = set()  # assigned partitions another worker claimed from us
        self._can_consume = can_consume
        self._unable_since_ms: int | None = None  # when this worker last became unable to consume

    async def live_workers(self) -> list[str]:
        """Ids of workers that heartbeated within the TTL."""
        now = self._clock.now_ms()
        pipe = self._redis.pipeline(transaction=False)
        pipe.zremrangebyscore(self._key, "-inf", now - self._ttl_ms)
        pipe.zrangebyscore(self._key, now - self._ttl_ms, "+inf")
        _, members = await pipe.execute()
        return [m.decode() if isinstance(m, bytes) else m for m in members]

    async def tick(self) -> None:
        """Heartbeat once and reconcile the partitions this worker consumes."""
        if not self._consumable():
            # The others count this worker dead once its last heartbeat (at most one interval
            # before it became unable) is ttl old: release a heartbeat before that, so that a
            # consumer the broker connection restores later never competes with the new owners.
            assert self._unable_since_ms is not None
            if (
                self.assigned
                and self._clock.now_ms() - self._unable_since_ms >= self._ttl_ms - self._heartbeat_s * 1000
            ):
                log.warning(
                    "worker %s gives up partitions %s: it cannot consume", self.worker_id, sorted(self.assigned)
                )
                for p in sorted(self.assigned):
                    await self._release(p)
                self.assigned = set()
                self._fenced.clear()
            return
        await self._redis.zadd(self._key, {self.worker_id: self._clock.now_ms()})
        workers = await self.live_workers()
        if self.worker_id not in workers:
            workers.append(self.worker_id)
        mine = set(assign(workers, self._partitions)[self.worker_id])
        for p in sorted(self.assigned - mine):
            await self._release(p)
        for p in sorted(mine):
            if p not in self.assigned:
                await self._acquire(p)
            elif p in self._fenced:
                # Another worker claimed it (both believed it theirs for a moment). Consume afresh:
                # standby until the other lets go, if the assignment really is ours.
                self._fenced.discard(p)
                await self._release(p)
                await self._acquire(p)
        self._fenced &= mine
        if mine != self.assigned:
            log.info("worker %s owns partitions %s (%d live workers)", self.worker_id, sorted(mine), len(workers))
        self.assigned = mine

    async def run(self) -> None:
        """Tick until :meth:`stop`; Redis errors are logged and retried on the next tick."""
        while not self._stop.is_set():
            try:
                await self.tick()
            except STORE_ERRORS as exc:
                log.warning("membership tick failed: %s", exc)
            except Exception:
                # A broker error while (re)subscribing (e.g. a channel opened on a connection that
                # just dropped) must not end ownership for good: the next tick reconciles again.
                log.exception("membership tick failed; retrying on the next tick")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._heartbeat_s):
                    await self._wake.wait()
            self._wake.clear()

    def _consumable(self) -> bool:
        """Whether this worker can consume; notes when that changes."""
        if self._can_consume is None or self._can_consume():
            if self._unable_since_ms is not None:
                self._unable_since_ms = None
                log.info("worker %s can consume again; rejoining", self.worker_id)
            return True
        if self._unable_since_ms is None:
            self._unable_since_ms = self._clock.now_ms()
            log.warning("worker %s cannot consume (its broker is unreachable); not heartbeating", self.worker_id)
        return False

    def wake(self) -> None:
        """Reconcile now rather than at the next heartbeat (e.g. the transport's consumability changed)."""
        self._wake.set()

    def fenced(self, partition: int) -> None:
        """A commit of ours for ``partition`` was fenced: reconcile it now, not at the next heartbeat."""
        self._fenced.add(partition)
        self._wake.set()

    async def stop(self) -> None:
        """Stop ticking and leave: the other workers take this worker's partitions at their next tick."""
        self._stop.set()
        self._wake.set()
        for p in sorted(self.assigned):
            await self._release(p)
        self.assigned.clear()
        with contextlib.suppress(*STORE_ERRORS):
            await self._redis.zrem(self._key, self.worker_id)
