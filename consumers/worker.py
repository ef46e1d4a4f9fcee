"""A worker process's engine room: partition ownership, transitions, step execution, timers."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging

from broker.partitioning import partition_of
from broker.transports.base import Delivery, PartitionListener, Subscription, Transport
from consumers.membership import Membership
from consumers.orchestrator import Orchestrator
from consumers.steps import StepRunner
from consumers.timers import TimerService
from engine.clock import Clock
from engine.config import DEFAULT_LIMITS, Limits
from engine.entrypoint import Env, WorkflowEntrypoint
from engine.settings import Settings
from engine.store.announcements import created_instances
from engine.store.redis import RedisStore
from engine.watch import ChannelFeed, InstanceWatch

log = logging.getLogger("hutch.worker")


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


class _SubscriptionListener(PartitionListener):
    """Forwards one subscription's callbacks to the orchestrator until that subscription is released."""

    def __init__(self, orchestrator: Orchestrator) -> None:
        self._orchestrator = orchestrator
        self.active = True

    def on_delivery(self, delivery: Delivery) -> None:
        # A stale subscription's channel is being closed; the broker requeues what it delivered.
        if self.active:
            self._orchestrator.on_delivery(delivery)

    async def on_assigned(self, partition: int) -> None:
        if self.active:
            await self._orchestrator.on_assigned(partition)

    async def on_revoked(self, partition: int) -> None:
        if self.active:
            await self._orchestrator.on_revoked(partition)


class Worker:
    """Consumes partitions, runs instances and their steps, fires their timers.

    Use as ``async with Worker(...) as worker: await worker.wait_stopped()`` or call
    :meth:`start` and :meth:`shutdown` yourself. Signals are the CLI's business, not the worker's.
    """

    def __init__(
        self,
        *,
        store: RedisStore,
        transport: Transport,
        workflows: dict[str, type[WorkflowEntrypoint]],
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
            runner_factory=lambda post: StepRunner(
                post,
                limits=limits,
                clock=clock,
                max_concurrent=settings.max_concurrent_steps,
                threads=settings.step_threads,
            ),
            timers_factory=lambda owned: TimerService(
                store, transport, owned, clock=clock, poll_s=settings.timer_poll_s
            ),
        )
        self._state = _State.NEW
        self._tasks: list[asyncio.Task[None]] = []
        self._subscriptions: dict[int, Subscription] = {}
        self._listeners: dict[int, _SubscriptionListener] = {}
        self._stopped = asyncio.Event()
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
                store.keys.workers(),
                self.orchestrator.worker_id,
                transport.partitions,
                acquire=self._acquire,
                release=self._release,
                clock=clock,
                heartbeat_s=settings.heartbeat_s,
                ttl_s=settings.worker_ttl_s,
                # Ownership follows the ability to consume: a worker cut off from the broker stops
                # heartbeating, so the workers that can consume take its partitions.
                can_consume=lambda: transport.can_consume,
            )
            self.orchestrator.on_fenced = self.membership.fenced
            transport.on_consumability(self.membership.wake)

    def _on_created(self, data: bytes) -> None:
        for created in created_instances(data):
            partition = partition_of(created.workflow, created.instance_id, self.transport.partitions)
            if partition in self.orchestrator.owned:
                self.orchestrator.notice_created(partition, created.workflow, created.instance_id, created.meta())

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
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self.orchestrator.run(), name="hutch-orchestrator"),
            loop.create_task(self.orchestrator.timers.run(), name="hutch-timers"),
        ]
        if self.membership is None:
            self._subscriptions[-1] = await self.transport.subscribe(
                range(self.transport.partitions), self.orchestrator, prefetch=self.settings.prefetch
            )
        else:
            await self.membership.tick()
            if self._notices is not None:  # the first partitions' channels confirmed: later creates are heard
                await self._notices.settled()
            self._tasks.append(loop.create_task(self.membership.run(), name="hutch-membership"))
        for task in self._tasks:
            task.add_done_callback(self._on_task_done)

    async def _acquire(self, partition: int) -> None:
        if self._notices is not None:  # subscribed in the background (it never holds up an acquire)
            self._notices.subscribe([self.store.keys.created_channel(partition)])
        listener = _SubscriptionListener(self.orchestrator)
        self._listeners[partition] = listener
        self._subscriptions[partition] = await self.transport.subscribe(
            [partition], listener, prefetch=self.settings.prefetch
        )

    async def _release(self, partition: int) -> None:
        if self._notices is not None:
            self._notices.unsubscribe([self.store.keys.created_channel(partition)])
        self.orchestrator.forget_partition(partition)
        listener = self._listeners.pop(partition, None)
        if listener is not None:
            # Callbacks of the old subscription that arrive late (its close, a reconnect) must not
            # revoke or re-assign what a newer subscription of the same partition holds.
            listener.active = False
        subscription = self._subscriptions.pop(partition, None)
        if subscription is not None:
            await subscription.close()
        if listener is not None and partition in self.orchestrator.owned:
            await self.orchestrator.on_revoked(partition)

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("worker task %s crashed", task.get_name(), exc_info=task.exception())
            self._stopped.set()

    async def wait_stopped(self) -> None:
        """Return when the worker stopped (shutdown, or a crashed internal task)."""
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
        if self._notices is not None:
            await self._notices.close()
        timeout = self.settings.shutdown_timeout_s if timeout is None else timeout
        runner = self.orchestrator.runner
        self.orchestrator.draining = True
        if not await runner.drain(timeout):
            log.warning("shutdown: %d step attempts still running after %.1f s; cancelling", runner.in_flight, timeout)
        await self.orchestrator.settle()
        if self.membership is not None:
            await self.membership.stop()
        for partition in list(self._subscriptions):
            await self._release(partition)
        self.orchestrator.timers.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await runner.close()
        self._stopped.set()
