"""Repartitioning: changing the partition count of a stopped deployment (``hutch admin repartition --to N``).

:func:`repartition` changes the partition count of a stopped deployment. Every
process must be stopped: it refuses while a worker heartbeats or consumes a partition queue
(``--force`` skips that check), records its progress in the deployment record first — from then
on no worker, gateway or client starts, on either count — then

1. moves the Redis data partition by partition (engine/store/repartition.py),
2. drains the old partition queues into a staging queue, deletes the queues no new partition
   has and declares the new ones (broker/repartition.py),
3. re-routes the staged messages to their instances' new partitions,
4. records the new partition count, which ends the repartition.

Each step is idempotent and the record says which step is under way, so running the command
again after an interruption (a crash, Ctrl-C, a lost server) finishes the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Protocol

from hutch.broker.partitioning import partition_of
from hutch.broker.repartition import QueueMover
from hutch.consumers.runtime import connect_store, open_transport
from hutch.errors import RepartitionRefused
from hutch.settings import Settings
from hutch.store.repartition import Plan, RedisCounts, RedisRepartition


class Reporter(Protocol):
    """Where :func:`repartition` reports its progress."""

    def phase(self, key: str, description: str, total: int, completed: int = 0) -> None:
        """A phase starts (``key``: ``redis``, ``drain`` or ``distribute``) with ``total`` units of work."""

    def advance(self, amount: int) -> None:
        """``amount`` more units of the current phase are done."""


class _Quiet:
    def phase(self, key: str, description: str, total: int, completed: int = 0) -> None:
        pass

    def advance(self, amount: int) -> None:
        pass


@dataclass(slots=True)
class RepartitionSummary:
    """What a repartition did (in this run; a resumed run counts only its own work).

    Attributes:
        source: the partition count before.
        target: the partition count after.
        changed: False when the deployment already had ``target`` partitions (nothing was done).
        resumed: this run finished an interrupted one.
        redis: the instances, keys and set entries moved.
        staged: messages drained from the old partition queues.
        dropped: partition markers (workers' leases) found in the old queues, dropped.
        rerouted: messages published to their new partition queues.
        dead_lettered: staged messages that did not decode (sent to the dead-letter queue).
        queues_deleted: old partition queues deleted (those no new partition has).
        seconds: how long it took.
    """

    source: int
    target: int
    changed: bool = True
    resumed: bool = False
    redis: RedisCounts = field(default_factory=RedisCounts)
    staged: int = 0
    dropped: int = 0
    rerouted: int = 0
    dead_lettered: int = 0
    queues_deleted: int = 0
    seconds: float = 0.0


async def repartition(
    settings: Settings,
    target: int,
    *,
    force: bool = False,
    reporter: Reporter | None = None,
    message_batch: int = 256,
    chunk: int = 500,
) -> RepartitionSummary:
    """Change the partition count of the (stopped) deployment ``settings`` describes to ``target``.

    Runs the whole procedure, or the rest of an interrupted one (see the module's docstring).

    Args:
        settings: the deployment's ``redis_url``, ``amqp_url``, ``namespace`` and ``worker_ttl_s``
            (its ``partitions`` is not used: the recorded count is the truth).
        target: the new partition count.
        force: skip the check that no worker is running.
        reporter: told the progress.
        message_batch: messages moved per broker round trip.
        chunk: Redis set entries moved per round trip.

    Raises:
        RepartitionRefused: the deployment runs, is not recorded, or another repartition is under way.
        ServiceUnavailable: Redis or RabbitMQ cannot be reached.
    """
    started = time.monotonic()
    reporter = reporter or _Quiet()
    store = await connect_store(settings)
    try:
        redis_side = RedisRepartition(store.redis, settings.namespace, partition_of, chunk=chunk)
        recorded, running = await redis_side.recorded()
        if running is None and recorded == target:
            return RepartitionSummary(target, target, changed=False)
        async with QueueMover(settings.amqp_url, settings.namespace, batch=message_batch) as queues:
            plan, fresh = await redis_side.begin(target)
            try:
                if fresh and not force:
                    # A worker that passed its deployment check just before the plan was recorded
                    # heartbeats moments later (before it consumes anything): give it the time to.
                    await asyncio.sleep(settings.heartbeat_s)
                await _check_stopped(settings, redis_side, queues, plan, force=force)
            except BaseException:
                if fresh:
                    # Nothing moved yet: the deployment may run on unchanged (Ctrl-C here included).
                    with contextlib.suppress(Exception):
                        await redis_side.abandon(plan)
                raise
            summary = RepartitionSummary(plan.source, plan.target, resumed=not fresh)
            await _carry_out(settings, plan, redis_side, queues, reporter, summary)
    finally:
        await store.close()
    summary.seconds = time.monotonic() - started
    return summary


async def _check_stopped(
    settings: Settings, redis_side: RedisRepartition, queues: QueueMover, plan: Plan, *, force: bool
) -> None:
    """Refuse while a worker is alive: it would go on reading and writing the old layout."""
    ttl = settings.worker_ttl_s
    workers = await redis_side.live_workers(ttl)
    states = await queues.partition_states(range(max(plan.source, plan.target)))
    consumed = sorted(p for p, state in states.items() if state.consumers)
    if force or not (workers or consumed):
        return
    found = []
    if workers:
        found.append(f"worker(s) {', '.join(workers)} heartbeated within the last {ttl:g} s")
    if consumed:
        found.append(f"the queues of partition(s) {', '.join(map(str, consumed))} have consumers")
    raise RepartitionRefused(
        f"the deployment in namespace {settings.namespace!r} is running: {'; '.join(found)}. Stop every worker "
        f"(and every gateway, hutch dev and client) first; a killed worker's heartbeat expires {ttl:g} s after it "
        "died. --force skips this check: only for workers you know are gone"
    )


async def _carry_out(
    settings: Settings,
    plan: Plan,
    redis_side: RedisRepartition,
    queues: QueueMover,
    reporter: Reporter,
    summary: RepartitionSummary,
) -> None:
    """The phases from where the plan stands; the plan is saved after each step that must not be redone."""
    if plan.phase == "redis":
        description = f"Redis: moving partitions ({plan.source} → {plan.target})"
        reporter.phase("redis", description, plan.source, plan.moved)
        summary.redis = await redis_side.move(plan, reporter.advance)
    if plan.phase == "drain":
        states = await queues.partition_states(range(plan.source))
        reporter.phase("drain", "RabbitMQ: staging queued messages", sum(s.messages for s in states.values()))
        summary.staged, summary.dropped = await queues.drain(range(plan.source), reporter.advance)
        summary.queues_deleted = await queues.delete_partition_queues(range(plan.target, plan.source))
        # Declared as the workers declare them (arguments, dead-lettering), by the transport itself.
        transport = open_transport(settings.model_copy(update={"partitions": plan.target}))
        await transport.start()
        await transport.close()
        # From here on the new queues receive messages: draining again would put them behind
        # older ones still staged, so a resumed run must go straight to distributing.
        plan.phase = "distribute"
        await redis_side.save(plan)
    if plan.phase == "distribute":
        reporter.phase("distribute", f"RabbitMQ: re-routing to {plan.target} partitions", await queues.staged())
        target = plan.target
        summary.rerouted, summary.dead_lettered = await queues.distribute(
            lambda workflow, instance_id: partition_of(workflow, instance_id, target), reporter.advance
        )
        await queues.delete_staging()
    await redis_side.finish(plan)
