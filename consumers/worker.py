"""A worker process's engine room: partition ownership, transitions, step execution, timers.

Leases. Each partition queue holds one *lease*: an empty message (header ``LEASE_HEADER``) that the
partition's holder keeps unacknowledged. It costs nothing while the holder lives; when the holder's
connection closes (the process died, or lost the broker), RabbitMQ returns it to the queue and
delivers it at once to the next consumer in line — the standby that membership keeps subscribed
there — which claims the partition, even with no other message queued. A holder that finds no
lease (the first holder of a queue, or one whose lease is still held by a stopped process)
publishes one; of two, it keeps the newer. It replaces its lease when the one it holds was
redelivered (a redelivery counts toward the queue's delivery limit) and every ``LEASE_MAX_AGE_S``
(RabbitMQ closes a channel whose delivery stays unacknowledged past its consumer timeout, 30
minutes by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Coroutine
from typing import Any

from hutch import metrics
from hutch.broker.partitioning import partition_of
from hutch.broker.transports.base import Delivery, Outgoing, PartitionListener, Subscription, Transport, stray_cancel
from hutch.clock import Clock
from hutch.config import DEFAULT_LIMITS, Limits
from hutch.consumers.membership import LEASE_HEADER, Membership
from hutch.consumers.orchestrator import Orchestrator
from hutch.consumers.partition_metrics import PartitionSampler
from hutch.consumers.steps import StepRunner
from hutch.consumers.supervision import Supervisor
from hutch.consumers.timers import TimerService
from hutch.entrypoint import Env
from hutch.settings import Settings
from hutch.store.announcements import created_instances, event_notice, is_event_notice
from hutch.store.base import CheckpointStore
from hutch.versions import Workflows
from hutch.watch import ChannelFeed, InstanceWatch

log = logging.getLogger("hutch.worker")

LEASE_MAX_AGE_S = 600.0
"""A held lease older than this is replaced (below RabbitMQ's default consumer timeout of 30 minutes)."""

_LEASE_CHECK_S = 5.0  # how often leases are checked (and ones that failed to publish retried)
_LEASE_RESEND_S = 30.0  # a published lease not received after this long is published again


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


class _SubscriptionListener(PartitionListener):
    """Forwards one partition subscription's callbacks to the worker until that subscription is closed.

    ``on_assigned`` means "consuming", not "the active consumer" (AMQP never tells a standby it
    became active): the first delivery says that. ``on_revoked`` means the consumer went away
    (its channel was lost, or the broker cancelled it).
    """

    def __init__(self, worker: Worker) -> None:
        self._worker = worker
        self.active = True

    def on_delivery(self, delivery: Delivery) -> None:
        # A stale subscription's channel is being closed; the broker requeues what it delivered.
        if self.active:
            self._worker._on_delivery(delivery)

    async def on_assigned(self, partition: int) -> None:
        if self.active and self._worker.membership is not None:
            self._worker.membership.wake()

    async def on_revoked(self, partition: int) -> None:
        if self.active:
            await self._worker._on_consumer_lost(partition)


class Worker:
    """Consumes partitions, runs instances and their steps, fires their timers.

    Use as ``async with Worker(...) as worker: await worker.wait_stopped()`` or call
    :meth:`start` and :meth:`shutdown` yourself. Signals are the CLI's business, not the worker's.
    """

    def __init__(
        self,
        *,
        store: CheckpointStore,
        transport: Transport,
        workflows: Workflows,
        settings: Settings,
        env: Env | None = None,
        limits: Limits = DEFAULT_LIMITS,
        clock: Clock | None = None,
        watch: InstanceWatch | None = None,
        worker_id: str | None = None,
        distributed: bool = False,
    ) -> None:
        self.store = store
        self.transport = transport
        self.settings = settings
        self.limits = limits
        clock = clock or Clock()
        self.orchestrator = Orchestrator(
            store=store,
            workflows=workflows,
            env=env or Env(),
            limits=limits,
            clock=clock,
            watch=watch,
            worker_id=worker_id,
            noticed=distributed,
            # Embedded, a commit's cost is per transition (fakeredis runs each redis.call through
            # Python), not per turn: a larger turn saves nothing there and only delays the steps of
            # instances woken together (W4's p50 6.5 ms at 16 against 9-12 ms at 64).
            max_instances=64 if distributed else 16,
            transport=transport,
            prefetch=settings.prefetch,
            runner_factory=lambda post: StepRunner(
                post,
                limits=limits,
                clock=clock,
                max_concurrent=settings.max_concurrent_steps,
                threads=settings.step_threads,
                blobs=store.blobs,
            ),
            timers_factory=lambda owned: TimerService(
                store, transport, owned, clock=clock, poll_s=settings.timer_poll_s
            ),
        )
        self._state = _State.NEW
        # Its long-running tasks and background ones, in one TaskGroup: one that ends while the
        # worker runs (crashed, returned or cancelled) stops the worker (see _on_failure).
        self._children = Supervisor("hutch-worker", self._on_failure)
        self._subscriptions: dict[int, Subscription] = {}
        self._listeners: dict[int, _SubscriptionListener] = {}
        self._leases: dict[int, tuple[Delivery, float]] = {}  # partition → the lease held, when received
        self._lease_sent: dict[int, float] = {}  # partition → when this worker last published its lease
        self._stopped = asyncio.Event()
        self._sampler = PartitionSampler(transport, lambda: self.orchestrator.owned, settings.metrics_sample_s)
        # Distributed workers share partitions through Redis heartbeats; an embedded worker
        # (or a single one) simply consumes every partition.
        self.membership: Membership | None = None
        # A start message takes a broker round trip (a quorum queue's replicated, fsynced write)
        # to arrive; the create's announcement on Redis pub/sub lets the owner start sooner. Each
        # partition has its channel, heard from acquiring the partition to releasing it.
        self._notices: ChannelFeed | None = None
        if distributed:
            self._notices = ChannelFeed(store.redis, self._on_created)
            self.membership = Membership(
                store.redis,
                store.keys,
                self.orchestrator.worker_id,
                transport.partitions,
                host=self,
                clock=clock,
                heartbeat_s=settings.heartbeat_s,
                ttl_s=settings.worker_ttl_s,
                handover_timeout_s=settings.shutdown_timeout_s,
                # Ownership follows the ability to consume: a worker cut off from the broker stops
                # heartbeating, so the workers that can consume take its partitions.
                can_consume=lambda: transport.can_consume,
                # ... and so does each partition a worker cannot consume.
                cannot_consume=lambda: transport.cannot_consume,
            )
            self.orchestrator.on_fenced = self.membership.fenced
            transport.on_consumability(self.membership.wake)

    def _on_created(self, data: bytes) -> None:
        if is_event_notice(data):
            notice = event_notice(data)
            partition = partition_of(notice.workflow, notice.instance_id, self.transport.partitions)
            self.orchestrator.notice_event(partition, notice)
            return
        for created in created_instances(data):
            partition = partition_of(created.workflow, created.instance_id, self.transport.partitions)
            if partition in self.orchestrator.owned:
                self.orchestrator.notice_created(partition, created.workflow, created.instance_id, created.meta())

    def _channels(self, partition: int) -> list[str]:
        """The partition's channels its owner hears: creations and events (see hutch.store.announcements)."""
        keys = self.store.keys
        return [keys.created_channel(partition), keys.events_channel(partition)]

    @property
    def worker_id(self) -> str:
        """This worker's id (part of its partitions' fencing tokens)."""
        return self.orchestrator.worker_id

    @property
    def partitions(self) -> list[int]:
        """The partitions this worker owns right now."""
        return sorted(self.orchestrator.owned)

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    async def start(self) -> None:
        """Start consuming every partition (the transport decides which this worker is active for)."""
        if self._state is not _State.NEW:
            raise RuntimeError(f"a worker cannot be started twice (it is {self._state.value})")
        # Before the worker counts as running: a refused start has started nothing, so the worker
        # stays new (start() may be called again once the cause is fixed) and shutdown() has
        # nothing to drain.
        await self.store.check_deployment(self.limits)
        if self._state is not _State.NEW:  # shut down, or started, while the check ran
            raise RuntimeError(f"a worker cannot be started twice or after shutdown() (it is {self._state.value})")
        self._state = _State.RUNNING
        if self._notices is not None:
            await self._notices.start()
        await self._children.start()
        self._children.spawn("hutch-orchestrator", self.orchestrator.run())
        self._children.spawn("hutch-timers", self.orchestrator.timers.run())
        if metrics.enabled():
            self._children.spawn("hutch-partition-metrics", self._sampler.run())
        if self.membership is None:
            self._subscriptions[-1] = await self.transport.subscribe(
                range(self.transport.partitions), self.orchestrator, prefetch=self.settings.prefetch
            )
        else:
            await self.membership.tick()
            if self._notices is not None:  # the first partitions' channels confirmed: later creates are heard
                await self._notices.settled()
            self._children.spawn("hutch-membership", self.membership.run())
            self._children.spawn("hutch-leases", self._check_leases())
        log.info("worker %s started", self.worker_id, extra={"worker_id": self.worker_id})

    # ------------------------------------------------------------------ what membership drives
    def new_token(self) -> str:
        """A fresh fencing token of this worker's."""
        return self.orchestrator.new_token()

    async def subscribe(self, partition: int) -> None:
        """Consume the partition's queue: as its active consumer, or as a standby until the broker activates it."""
        listener = _SubscriptionListener(self)
        self._listeners[partition] = listener
        try:
            # One more than the prefetch: the lease this consumer holds takes a slot for good.
            self._subscriptions[partition] = await self.transport.subscribe(
                [partition], listener, prefetch=self.settings.prefetch + 1
            )
        except BaseException:
            listener.active = False
            self._listeners.pop(partition, None)
            raise

    async def unsubscribe(self, partition: int, *, retire_lease: bool = False) -> None:
        """Stop consuming the partition; the broker takes back what this consumer held.

        The lease goes back too unless ``retire_lease`` (then it is acknowledged: no worker is left to
        hand the partition to).
        """
        self.orchestrator.forget_partition(partition)
        listener = self._listeners.pop(partition, None)
        if listener is not None:
            # Callbacks of the old subscription that arrive late (its close, a reconnect) must not
            # revoke or re-assign what a newer subscription of the same partition holds.
            listener.active = False
        lease = self._leases.pop(partition, None)
        if lease is not None and retire_lease:
            with contextlib.suppress(Exception):  # its channel is gone: it went back to the queue
                await lease[0].ack()
        subscription = self._subscriptions.pop(partition, None)
        if subscription is not None:
            await subscription.close()
        if partition in self.orchestrator.owned:
            await self.drop(partition)

    async def adopt(self, tokens: dict[int, str]) -> None:
        """Partitions claimed with these tokens: commit with them, re-drive them, hold their leases."""
        await self.orchestrator.adopt(tokens)
        metrics.PARTITION_CHANGES.labels("taken").inc(len(tokens))
        if self._notices is not None:  # subscribed in the background (it never holds up a claim)
            self._notices.subscribe([c for p in tokens for c in self._channels(p)])
        await self._publish_leases(sorted(tokens))

    async def drop(self, partition: int) -> None:
        """Stop committing for the partition (released, or claimed by another worker)."""
        if self._notices is not None:
            self._notices.unsubscribe(self._channels(partition))
        if partition in self.orchestrator.owned:
            await self.orchestrator.on_revoked(partition)
            metrics.PARTITION_CHANGES.labels("dropped").inc()

    def hold(self, partition: int) -> None:
        """Start no new step attempt on the partition (a handover is under way)."""
        self.orchestrator.hold(partition)

    async def unhold(self, partition: int) -> None:
        """The handover is called off: start what was deferred meanwhile."""
        await self.orchestrator.unhold(partition)

    async def wait_quiet(self, partitions: set[int], timeout: float) -> set[int]:
        """Wait until nothing of these partitions runs or is left to commit; the ones still busy."""
        return await self.orchestrator.wait_quiet(partitions, timeout)

    # ------------------------------------------------------------------ deliveries and leases
    def _on_delivery(self, delivery: Delivery) -> None:
        partition = delivery.partition
        if LEASE_HEADER in delivery.headers:
            self._on_lease(delivery)
            return
        self._sampler.delivered(delivery)
        self.orchestrator.on_delivery(delivery)  # parked by the orchestrator until the partition is ours
        if partition not in self.orchestrator.owned and self.membership is not None:
            self.membership.activated(partition)

    def _on_lease(self, lease: Delivery) -> None:
        partition = lease.partition
        older = self._leases.get(partition)
        self._leases[partition] = (lease, time.monotonic())
        if older is not None:
            self._spawn(older[0].ack())  # the newer one is the lease now
        if partition not in self.orchestrator.owned:
            if self.membership is not None:
                self.membership.activated(partition)
        elif lease.redelivered:
            self._spawn(self._publish_leases([partition]))

    def _lease_due(self, partition: int, now: float) -> bool:
        held = self._leases.get(partition)
        if held is not None and not held[0].redelivered and now - held[1] < LEASE_MAX_AGE_S:
            return False
        sent = self._lease_sent.get(partition)  # one on its way (behind a backlog, say) replaces it
        return sent is None or now - sent >= _LEASE_RESEND_S

    async def _publish_leases(self, partitions: list[int]) -> None:
        now = time.monotonic()
        due = [p for p in partitions if p in self.orchestrator.owned and self._lease_due(p, now)]
        if not due:
            return
        for p in due:
            self._lease_sent[p] = now
        try:
            await self.transport.publish([Outgoing(p, b"", {LEASE_HEADER: self.worker_id}) for p in due])
        except (Exception, asyncio.CancelledError) as exc:
            # A stray CancelledError is aiormq's "the channel closed under the publish": an error like
            # the others, not a reason for _check_leases to end (which would stop the worker).
            if not isinstance(exc, Exception) and not stray_cancel(exc):
                raise
            # Retried by _check_leases; meanwhile a crash of this worker is noticed by heartbeat only.
            for p in due:
                self._lease_sent.pop(p, None)
            log.warning("could not publish the leases of partitions %s: %r", due, exc)

    async def _check_leases(self) -> None:
        while True:
            await asyncio.sleep(_LEASE_CHECK_S)
            await self._publish_leases(sorted(self.orchestrator.owned))

    async def _on_consumer_lost(self, partition: int) -> None:
        # Its deliveries can no longer be acknowledged: stop committing for the partition until
        # this worker consumes it again and claims it anew (the standby the broker activated
        # meanwhile may claim it first). Its creation notices are still heard meanwhile (they are
        # only used while the partition is owned): most such losses are a reconnect away.
        self._leases.pop(partition, None)
        if self.membership is not None:
            self.membership.suspend(partition)
        if partition in self.orchestrator.owned:
            await self.orchestrator.on_revoked(partition)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._children.spawn("hutch-worker-background", coro, essential=False)

    def _on_failure(self, errors: list[BaseException]) -> None:
        # Stop rather than restart the loop that ended: what it was doing is unknown (a reconcile
        # half done, inputs half processed), restarting would hide the bug, and a crash loop would
        # hold the partitions for good. Every other task of the worker is cancelled by now
        # (heartbeats too); wait_stopped() returns, and the caller's shutdown() hands the partitions
        # over (``hutch worker`` does), or the other workers take them once the heartbeat expired.
        if self._state is _State.STOPPED:  # while shutdown() stops them: it sets _stopped when done
            for error in errors:
                log.error("worker %s: an internal task failed while stopping", self.worker_id, exc_info=error)
            return
        for error in errors:
            log.error("worker %s stops: an internal task ended", self.worker_id, exc_info=error)
        self._stopped.set()

    async def wait_stopped(self) -> None:
        """Return when the worker stopped.

        It stops when shut down, or when one of its internal tasks crashed, returned or was cancelled
        while it ran (logged; the worker does nothing any more, call :meth:`shutdown`).
        """
        await self._stopped.wait()

    async def shutdown(self, timeout: float | None = None) -> None:
        """Finish in-flight steps up to ``timeout`` seconds, then release partitions; idempotent."""
        if self._state is _State.NEW:
            # Never started: nothing to drain, but wait_stopped() must return all the same.
            self._state = _State.STOPPED
            self._stopped.set()
            return
        if self._state is _State.STOPPED:
            return  # a shutdown already ran (or runs): it sets _stopped when it is done
        self._state = _State.STOPPED
        self._children.stopping()
        failed = self._children.failed  # its tasks have all ended: nothing finishes what is in flight
        if self.membership is not None:
            self.membership.leave()  # heartbeats go on until the partitions are released
        if self._notices is not None:
            await self._notices.close()
        timeout = 0 if failed else self.settings.shutdown_timeout_s if timeout is None else timeout
        runner = self.orchestrator.runner
        # No new step attempt anywhere: what the running ones lead to is left to the next owners,
        # recorded, so that nothing this worker starts now has its result thrown away.
        self.orchestrator.hold()
        # Every attempt, those a commit in flight starts after the hold too, and every result committed.
        if await self.orchestrator.wait_quiet(None, timeout):
            log.warning("shutdown: %d step attempts still running after %.1f s; cancelling", runner.in_flight, timeout)
        if not failed:
            await self.orchestrator.settle()
        if self.membership is not None:
            await self.membership.stop()  # hands each partition to its successor
        for partition in list(self._subscriptions):
            await self.unsubscribe(partition)
        self.orchestrator.timers.stop()
        await self._children.stop()
        await runner.close()
        self._stopped.set()
        log.info("worker %s stopped", self.worker_id, extra={"worker_id": self.worker_id})
