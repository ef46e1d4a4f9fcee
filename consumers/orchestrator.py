"""The partition owner's loop: batch inputs, run instance transitions, group-commit, then ack.

Inputs (broker deliveries and local step results) queue in one inbox. Each turn takes what is
queued, folds each instance's inputs into one transition, commits all of them in one
pipelined Redis round trip (each transition atomic and sequence-checked, fenced by the
partition owner's token), and only then acknowledges the deliveries and starts the step
attempts the transitions scheduled. Acks never wait for a step body, a sleep or an event.
While Redis is unreachable a turn is held and retried, never handed back to the broker.

A partition being handed over to another worker (and every partition of a stopping worker) is
*held*: its inputs are still processed and committed, but no new step attempt starts; once its
running attempts ended and their results are committed (:meth:`Orchestrator.wait_quiet`) the
partition can go, and its next owner starts the steps left (consumers/membership.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from hutch.blobs import BlobAddress, BlobRef, BlobsNeeded, fetch_blobs
from hutch.broker.envelopes import (
    ControlBatch,
    EventReceived,
    InstanceCreated,
    PoisonMessage,
    Redrive,
    TimerFired,
    decode,
    encode,
)
from hutch.broker.partitioning import partition_of
from hutch.broker.transports.base import Delivery, Outgoing, PartitionListener, Transport
from hutch.clock import Clock
from hutch.config import Limits
from hutch.consumers import children, observed, tracing
from hutch.consumers.actor import Effects, Input, InstanceActor
from hutch.consumers.fanout import Fanout
from hutch.consumers.items import BatchedControl, CreatedNotice, EventHeard, StepDone
from hutch.consumers.membership import LEASE_HEADER
from hutch.consumers.settlement import ACK, REQUEUE, DeadLetter, Outcome, Settlement, Settling
from hutch.consumers.slots import RECHECK_S, SlotGate
from hutch.consumers.steps import StepRunner
from hutch.consumers.timers import TimerService
from hutch.consumers.versions import VersionWaits
from hutch.entrypoint import Env
from hutch.store.announcements import EventNotice
from hutch.store.base import CheckpointStore, CommitResult, Snapshot, Transition
from hutch.store.redis import STORE_ERRORS, meta_from_fields
from hutch.store.slots import SlotStore
from hutch.versions import Workflows, registry
from hutch.watch import InstanceWatch

log = logging.getLogger("hutch.worker")

_ActorKey = tuple[str, str]

# Instances this worker started, remembered so their start messages (arriving after a creation
# notice started them) are acknowledged without a transition; a forgotten one costs a reload.
_STARTED_REMEMBERED = 16_384
# Events applied from their notices, remembered so their broker messages are acknowledged with no
# transition (and not applied again should the instance restart in between).
_HEARD_REMEMBERED = 16_384


@dataclass(slots=True)
class _Item:
    partition: int
    key: _ActorKey
    input: Input
    delivery: Delivery | None
    parked: bool = False  # kept in Orchestrator._parked for when its partition comes back
    held: bool = False  # a delivery counted in Orchestrator._held (until settled)
    generation: int = 0  # of its partition's subscription when it arrived (see Orchestrator.forget_partition)
    settlement: Settlement | None = field(default=None, init=False)  # a delivery's (local inputs have none)

    def __post_init__(self) -> None:
        if self.delivery is not None:
            self.settlement = Settlement(self.delivery)

    @property
    def settled(self) -> bool:
        """The delivery was acked, requeued or dead-lettered already."""
        return self.settlement is not None and self.settlement.settled


# A transition to commit, with the actor that computed it, its effects and the inputs it consumed.
_Pending = tuple[Transition, InstanceActor, Effects, list[_Item]]


class Orchestrator(PartitionListener):
    """Owns partitions, keeps their live instances and commits their transitions.

    Args:
        max_batch: inputs taken into one turn at most.
        max_instances: instances one turn transitions at most. A turn's steps start only once its
            commit is done, so under a burst (many timers due at once) smaller turns start the first
            steps sooner; larger ones spend fewer script calls per transition, and a turn's fixed
            costs (its settling, its Redis round trip, its wake-ups) are shared by more steps: under
            W1 (hundreds of instances each running a step) 64 takes ~10-20 % less CPU per step than 16.
        warm_horizon_s: a ``waiting`` instance whose next timer is due within this many seconds
            stays in memory, so a short sleep resumes the live ``run()`` with no load and no
            replay; longer sleeps and event waits are evicted (0: always evict).
        noticed: creation notices reach this orchestrator (:meth:`notice_created`; distributed
            workers), so it remembers the instances it started: their start messages, trailing
            behind, are then acknowledged with no transition.
        transport: where the effects of ``step.invoke`` publish (a child's start message, its end
            sent to the parent, a terminate): see consumers/children.py.
        prefetch: the deliveries a partition's consumer holds at most. An event notice is applied
            only while its partition holds fewer: at the prefetch, messages may wait in the queue,
            and one of them could be for the same instance and older than the event.
    """

    def __init__(
        self,
        *,
        store: CheckpointStore,
        workflows: Workflows,
        env: Env,
        limits: Limits,
        clock: Clock,
        runner_factory: Callable[[Callable[[StepDone], None]], StepRunner],
        timers_factory: Callable[[Callable[[], list[int]]], TimerService],
        watch: InstanceWatch | None = None,
        max_batch: int = 512,
        max_instances: int = 64,
        worker_id: str | None = None,
        warm_horizon_s: float = 2.0,
        noticed: bool = False,
        transport: Transport | None = None,
        prefetch: int | None = None,
    ) -> None:
        self.store = store
        self.transport = transport
        self._outbox: list[children.Outbox] = []  # decided by this turn's transitions, carried out at its end
        self.workflows = registry(workflows)
        self.env = env
        self.limits = limits
        self.clock = clock
        self.watch = watch
        self.worker_id = worker_id or uuid.uuid4().hex[:12]
        self.version_waits = VersionWaits(self.worker_id, {n: v.versions for n, v in self.workflows.items()})
        self.warm_horizon_ms = max(0, round(warm_horizon_s * 1000))
        self.owned: dict[int, str] = {}
        self.actors: dict[_ActorKey, InstanceActor] = {}
        self.runner = runner_factory(self._post_step_done)
        self.timers = timers_factory(lambda: sorted(self.owned))
        # Timers of partitions this worker owns come straight to the inbox, with no broker hop; the
        # commit that handles one removes it from Redis, so a lost one is fired again by a scan.
        self.timers.deliver_locally(self._post_timer)
        self._inbox: asyncio.Queue[_Item] = asyncio.Queue()
        self._max_batch = max_batch
        self._max_instances = max_instances
        self._carry: _Item | None = None  # taken from the inbox for the next turn (the last one was full)
        self._idle = asyncio.Event()
        self._idle.set()
        # Partitions being handed over (or every one, while shutting down): their instances go on
        # committing what arrives, but start no new step attempt (see InstanceActor.hold).
        self._holding: set[int] = set()
        self._hold_all = False
        # What a handover waits for before it lets a partition go: its step results still queued
        # here, and the partitions of the turn being processed (set each turn, with _progress).
        self._queued_results: dict[int, int] = {}
        self._turn_partitions: set[int] = set()
        self._progress = asyncio.Event()
        # Bumped each time this worker stops consuming a partition: deliveries of an older
        # subscription still in the inbox must not be parked for the next one (their channel is
        # closed, so the broker hands them out again).
        self._generation: dict[int, int] = {}
        self._lease_acks: set[asyncio.Task[None]] = set()
        # Called with a partition whose commit was fenced (another worker claimed it); the worker
        # uses it to reconcile ownership at once instead of stalling until its next heartbeat.
        self.on_fenced: Callable[[int], None] | None = None
        self._parked: dict[int, list[_Item]] = {}
        self._noticed = noticed
        self._started: OrderedDict[_ActorKey, int] = OrderedDict()  # -> creation ms
        self._heard: OrderedDict[tuple[str, str, str], None] = OrderedDict()  # (workflow, id, event id)
        self._prefetch = prefetch
        self._held: dict[int, int] = {}  # partition -> its broker deliveries received and not settled yet
        # Backoff between attempts at a turn while Redis is unreachable (redis-py's own retries come first).
        self._retry_s = 0.2
        self._retry_max_s = 1.0
        self.commits = 0
        self.slots = SlotGate(
            self.workflows,
            lambda: SlotStore(store.redis, store.keys),
            lambda: self.transport.partitions if self.transport is not None else store.partitions,
        )
        self._recheck: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ transport callbacks
    def on_delivery(self, delivery: Delivery) -> None:
        """Queue a delivery for processing (an undecodable one as poison); a partition lease is just acked."""
        if LEASE_HEADER in delivery.headers:
            # Partition leases are the worker's (consumers/worker.py); one reaching a consumer that
            # has no use for it (every partition's, embedded) is no poison, just not needed.
            self._settle_later(delivery.ack())
            return
        try:
            message = decode(delivery.body)
        except PoisonMessage as exc:
            generation = self._generation.get(delivery.partition, 0)
            self._inbox.put_nowait(_Item(delivery.partition, ("", ""), exc, delivery, generation=generation))  # type: ignore[arg-type]
            return
        generation = self._generation.get(delivery.partition, 0)
        if isinstance(message, ControlBatch):
            # Settled by its fan-out, not counted among the held deliveries (notice_event's check).
            self._fan_out(delivery, message, generation)
            return
        key = (message.workflow, message.instance_id)
        self._held[delivery.partition] = self._held.get(delivery.partition, 0) + 1
        self._inbox.put_nowait(_Item(delivery.partition, key, message, delivery, generation=generation, held=True))

    def _fan_out(self, delivery: Delivery, batch: ControlBatch, generation: int) -> None:
        """Queue each target of a batch as its instance's own control, the delivery settled once all are."""
        if not batch.targets:
            self._settle_later(delivery.ack())
            return
        fanout = Fanout(delivery, len(batch.targets))
        for t in batch.targets:
            control = BatchedControl(workflow=t.workflow, instance_id=t.instance_id, action=batch.action, run=t.run)
            item = _Item(delivery.partition, (t.workflow, t.instance_id), control, fanout.part(), generation=generation)
            self._inbox.put_nowait(item)

    def _settle_later(self, settling: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(settling)
        self._lease_acks.add(task)
        task.add_done_callback(self._lease_acks.discard)

    async def on_assigned(self, partition: int) -> None:
        """Claim the partition (a new fencing token) and take it over: the embedded worker's way."""
        token = self.new_token()
        await self.store.claim(partition, token)
        await self.adopt({partition: token})

    def new_token(self) -> str:
        """A fencing token of this worker's (``<worker id>:<nonce>``: the id tells whose it is)."""
        return f"{self.worker_id}:{uuid.uuid4().hex[:8]}"

    async def adopt(self, tokens: dict[int, str]) -> None:
        """Take over partitions claimed with these tokens: commit with them and re-drive what was in flight.

        The previous owner's running instances are re-driven (a lost attempt runs again; one it
        deferred while handing over starts) and its timers are fired by ours, all partitions' with
        one Redis round trip.
        """
        if not tokens:
            return
        self.owned.update(tokens)
        for partition in sorted(tokens):
            log.info("worker %s owns partition %d", self.worker_id, partition)
            for item in self._parked.pop(partition, []):
                item.parked = False
                if isinstance(item.input, StepDone):
                    self._queued_results[partition] = self._queued_results.get(partition, 0) + 1
                self._inbox.put_nowait(item)
        await self._redrive(sorted(tokens))
        self.timers.due_at(0)

    async def _redrive(self, partitions: list[int]) -> None:
        delay_s = self._retry_s
        while True:
            try:
                pipe = self.store.redis.pipeline(transaction=False)
                for partition in partitions:
                    pipe.smembers(self.store.keys.active(partition))
                active = await pipe.execute()
                break
            except STORE_ERRORS as exc:
                # The partitions are ours already: what ran on them must not wait for a new owner.
                log.warning("re-drive of partitions %s failed, retrying: %s", partitions, exc)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, self._retry_max_s)
                partitions = [p for p in partitions if p in self.owned]
                if not partitions:
                    return
        for partition, members in zip(partitions, active, strict=True):
            if self.owned.get(partition) is None:
                continue  # released again meanwhile
            for member in members:
                workflow, instance_id = member.decode().split(":", 1)
                redrive = Redrive(workflow=workflow, instance_id=instance_id)
                self._inbox.put_nowait(_Item(partition, (workflow, instance_id), redrive, None))

    # ------------------------------------------------------------------ handing partitions over
    def hold(self, partition: int | None = None) -> None:
        """Start no new step attempt on ``partition`` (None: on every partition, for good: shutdown).

        Inputs are still processed and committed, so the attempts running here end in history;
        the steps the workflows issue meanwhile are left for the partition's next owner.
        """
        if partition is None:
            self._hold_all = True
        else:
            self._holding.add(partition)

    async def unhold(self, partition: int) -> None:
        """The handover of ``partition`` is called off: start what was deferred, it stays here."""
        self._holding.discard(partition)
        if partition in self.owned:
            await self._redrive([partition])

    def holding(self, partition: int) -> bool:
        """Whether ``partition`` starts no new attempts right now."""
        return self._hold_all or partition in self._holding

    @property
    def idle(self) -> bool:
        """Whether no input is queued and no turn is being processed (every partition at once)."""
        return self._idle.is_set() and self._inbox.empty()

    def quiet(self, partition: int) -> bool:
        """Whether nothing of ``partition`` is left to commit: no attempt running, no result queued or in a turn."""
        return (
            self.runner.in_flight_on(partition) == 0
            and not self._queued_results.get(partition)
            and partition not in self._turn_partitions
        )

    async def wait_quiet(self, partitions: set[int] | None, timeout: float) -> set[int]:
        """Wait up to ``timeout`` s until each of ``partitions`` (None: every one) is :meth:`quiet`.

        Returns the partitions still busy (for None: those with attempts running).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if partitions is None:
                busy = set(self.runner.partitions())
                if self._queued_results or self._turn_partitions:
                    busy |= {-1}
            else:
                busy = {p for p in partitions if not self.quiet(p)}
            remaining = deadline - loop.time()
            if not busy or remaining <= 0:
                return busy
            # Every result ends up in a turn (a cancelled attempt posts none, but is cancelled in one).
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._progress.wait()

    def forget_partition(self, partition: int) -> None:
        """This worker stops consuming the partition: drop results parked for its return.

        Deliveries of the closed subscription still queued here are dropped instead of parked:
        the broker hands them out again.
        """
        self._parked.pop(partition, None)
        self._holding.discard(partition)
        self._generation[partition] = self._generation.get(partition, 0) + 1
        self._held.pop(partition, None)  # the closed subscription's deliveries go back to the queue

    async def on_revoked(self, partition: int) -> None:
        """Give up the partition: forget its fencing token and timers, and drop its instances' actors."""
        self.owned.pop(partition, None)
        self.timers.forget_partition(partition)
        for key, actor in list(self.actors.items()):
            if actor.partition == partition:
                self._drop(key)
        log.info("worker %s released partition %d", self.worker_id, partition)

    def notice_created(self, partition: int, workflow: str, instance_id: str, meta: dict[str, Any] | None) -> None:
        """A client created this instance: start it now if this worker owns it, ahead of its start message.

        The start message still comes through the broker and stays the durable path: a notice
        that is lost, or heard by a worker that no longer owns the partition, only costs latency.
        """
        key = (workflow, instance_id)
        if partition not in self.owned or key in self.actors or self.holding(partition):
            return
        started = self._started.get(key)
        if started is not None and (meta is None or meta.get("created") == started):
            return  # its start message got here first (a re-created id, noticed with its meta, is not)
        self._inbox.put_nowait(_Item(partition, key, CreatedNotice(partition, workflow, instance_id, meta), None))

    def notice_event(self, partition: int, notice: EventNotice) -> None:
        """A sender announced an event: apply it now if this worker owns its instance, ahead of its broker message.

        The message still comes through the broker and stays the durable path: a notice dropped
        here only costs latency. It is dropped unless the partition's consumer holds fewer than
        its prefetch (else older messages may wait in the queue, one of them maybe for this
        instance): the broker's order is kept. The instance applies it only once it holds the
        event the sender sent before (see EventHeard).
        """
        if partition not in self.owned or self.holding(partition):
            return
        if self._prefetch is not None and self._held.get(partition, 0) >= self._prefetch:
            return
        message = EventReceived(
            id=notice.event_id,
            workflow=notice.workflow,
            instance_id=notice.instance_id,
            event_type=notice.event_type,
            payload=notice.payload,
            sent_ms=notice.sent_ms,
        )
        key = (notice.workflow, notice.instance_id)
        self._inbox.put_nowait(_Item(partition, key, EventHeard(message, notice.prev, notice.traceparent), None))

    def _post_step_done(self, done: StepDone) -> None:
        self._queued_results[done.partition] = self._queued_results.get(done.partition, 0) + 1
        self._inbox.put_nowait(_Item(done.partition, (done.workflow, done.instance_id), done, None))

    def _post_timer(self, partition: int, fired: TimerFired) -> None:
        self._inbox.put_nowait(_Item(partition, (fired.workflow, fired.instance_id), fired, None))

    # ------------------------------------------------------------------ the loop
    async def run(self) -> None:
        """Process inputs until cancelled."""
        inbox = self._inbox
        while True:
            first, self._carry = self._carry or await inbox.get(), None
            self._idle.clear()
            batch, keys = [first], {first.key}
            while len(batch) < self._max_batch and not inbox.empty():
                item = inbox.get_nowait()
                if item.key not in keys and len(keys) >= self._max_instances:
                    self._carry = item
                    break
                keys.add(item.key)
                batch.append(item)
            self._turn_partitions = {item.partition for item in batch}
            for item in batch:
                if isinstance(item.input, StepDone):
                    self._unqueue_result(item.partition)
            try:
                await self._turn(batch)
            finally:
                self._turn_partitions = set()
                self._progress.set()
                if inbox.empty() and self._carry is None:
                    self._idle.set()
            if self._carry is not None or not inbox.empty():
                # More is queued (a burst larger than a batch): let the step attempts this batch just
                # started begin before the next batch's transitions and commit run.
                await asyncio.sleep(0)

    async def _turn(self, batch: list[_Item]) -> None:
        """Process ``batch``; while Redis is unreachable, hold it and try again with backoff.

        Its deliveries stay unacknowledged meanwhile rather than being nacked: every nack counts
        toward the queue's delivery limit, which is there for poison messages, so an outage of 20
        retry cycles would dead-letter every message that arrived during it. Holding them also
        stops consumption, since the broker sends no more than the prefetch, and keeps their order.
        A channel lost meanwhile (or closed by RabbitMQ's consumer timeout, 30 min by default)
        returns them to the queue by itself. Ownership is checked and every commit fenced afresh on
        each attempt, as on any turn.
        """
        delay_s, failures = self._retry_s, 0
        while True:
            try:
                await self.process(batch)
            except STORE_ERRORS as exc:
                # Nothing of this turn is known to be committed: forget its instances (they reload
                # from Redis on the next attempt) and keep what it did not settle or park.
                for item in batch:
                    self._drop(item.key)
                batch = [item for item in batch if not item.settled and not item.parked]
                failures += 1
                if failures == 1:
                    log.warning("store unavailable (%s); holding %d inputs until it is back", exc, len(batch))
                if not batch:
                    return
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, self._retry_max_s)
                continue
            if failures:
                log.warning("store available again after %d failed attempts", failures)
            return

    async def settle(self, timeout: float = 5.0) -> None:
        """Wait (up to ``timeout`` s) until every queued input has been processed."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while not self.idle:
                    if self._idle.is_set():
                        # Queued but not yet taken by the loop: a set Event's wait() does not yield,
                        # so without this the loop task (and the timeout) would never run.
                        await asyncio.sleep(0.001)
                    else:
                        await self._idle.wait()

    async def process(self, batch: list[_Item]) -> None:
        """One turn: load, transition, commit, then start work; its deliveries are settled at the end.

        Each delivery is settled once, as the path that handled it decided (see consumers/settlement.py),
        after the commit it depends on; one left undecided (the turn failed, or it is parked) stays unsettled.
        """
        try:
            async with Settling([item.settlement for item in batch]):
                await self._process(batch)
                await self._carry_out_outbox()
        finally:
            observed.flush()  # the turn's counts, into the metrics at once (see observed._Tally)
            self._release_settled(batch)
        if self.slots.wakes or self.slots.waiting:  # a turn of workflows without limits pays nothing here
            await self._wake_waiters()

    def _release_settled(self, batch: list[_Item]) -> None:
        """Count the batch's deliveries settled now out of their partitions' held deliveries."""
        for item in batch:
            if item.held and item.settled:
                item.held = False
                if item.generation == self._generation.get(item.partition, 0) and self._held.get(item.partition):
                    self._held[item.partition] -= 1

    async def _process(self, batch: list[_Item]) -> None:
        """Sort the batch by instance, transition each instance, and commit the transitions together."""
        groups = self._group(batch)
        if not groups:
            return
        await self._load_missing(groups)
        pending = await self._transition(groups)
        if pending:
            await self._commit(pending)

    def _group(self, batch: list[_Item]) -> dict[_ActorKey, list[_Item]]:
        """The batch's inputs to transition, by instance; the others are decided, parked or dropped here."""
        groups: dict[_ActorKey, list[_Item]] = {}
        for item in batch:
            if isinstance(item.input, PoisonMessage):
                observed.dead_lettered(item.partition, item.input.reason)
                _decide(item, DeadLetter(item.input.reason))
            elif item.partition not in self.owned:
                if item.delivery is not None and item.generation != self._generation.get(item.partition, 0):
                    continue  # its subscription was closed: the broker delivers it again
                if item.delivery is not None or isinstance(item.input, StepDone):
                    # Kept for when the partition comes back. A result that finished while it was
                    # away (a broker reconnect) is not run again; a broker delivery that arrived
                    # after a fenced commit is not nacked, since a nack hands it straight back to
                    # us (still the queue's active consumer) and a few milliseconds of that loop
                    # would burn its delivery limit and dead-letter it. Releasing the partition
                    # closes the subscription, which returns such deliveries to the queue.
                    item.parked = True
                    self._parked.setdefault(item.partition, []).append(item)
                # Other local inputs (re-drives, timers, notices) of a partition gone elsewhere are
                # dropped: its new owner re-drives its instances and fires its timers.
            elif self._started_already(item) or self._heard_already(item):
                _decide(item, ACK)  # a creation or event notice did its work: nothing left to do
            else:
                groups.setdefault(item.key, []).append(item)
        return groups

    async def _transition(self, groups: dict[_ActorKey, list[_Item]]) -> list[_Pending]:
        """Apply each loaded instance's inputs; the transitions left to commit (the others are done with).

        An instance whose transition fails is dropped and its messages requeued; store errors propagate.
        """
        pending: list[_Pending] = []
        for key, items in groups.items():
            actor = self.actors.get(key)
            if actor is None:
                continue
            actor.hold = self.holding(actor.partition)
            try:
                applied = await self._apply(key, actor, items)
                if applied is None:
                    continue
                actor, transition, effects = applied
            except STORE_ERRORS:
                raise
            except Exception:
                log.exception("instance %s/%s: transition failed; its messages are requeued", *key)
                self._drop(key)
                if key in self.slots.taken:
                    await self.slots.undo(*key)
                self._requeue(items, requeue_local=False)
                continue
            if actor.awaiting_version is not None:
                self.version_waits.waiting(*key, actor.awaiting_version)
            if transition is None:
                self._after_commit(key, actor, effects, items)
            else:
                pending.append((transition, actor, effects, items))
        return pending

    async def _commit(self, pending: list[_Pending]) -> None:
        """Commit the transitions in one round trip, then follow each up as committed or rejected."""
        # The tokens this commit is fenced with: a partition re-claimed while it is in flight (its
        # channel was restored) fences it, and that must not revoke the ownership just re-taken.
        fences = dict(self.owned)
        await self._store_blobs([p[0] for p in pending])
        results = await self.store.commit_many([p[0] for p in pending], fences)
        self.commits += len(pending)
        for (transition, actor, effects, items), result in zip(pending, results, strict=True):
            if result is CommitResult.COMMITTED:
                self._committed(transition, actor, effects, items)
            else:
                await self._rejected(result, actor, items, fences)

    async def _store_blobs(self, transitions: list[Transition]) -> None:
        """Store the values the transitions record by reference: a reference to nothing must never commit."""
        puts = [
            self.store.blobs.put(BlobAddress(t.partition, t.workflow, t.instance_id), BlobRef(key, len(data)), data)
            for t in transitions
            for key, data in t.blobs.items()
        ]
        if puts:
            await asyncio.gather(*puts)

    def _committed(self, transition: Transition, actor: InstanceActor, effects: Effects, items: list[_Item]) -> None:
        """Follow a committed transition up: the actor, started instances, spans, timers, then its effects."""
        key = (actor.workflow, actor.instance_id)
        actor.committed(transition)
        if self._noticed and "started" in transition.meta:
            self._remember_started(key, actor.created_ms)
        observed.committed(actor, transition, [i.input for i in items])  # logs and metrics: never of replay
        if tracing.enabled():  # spans of what this transition recorded: never of replayed history
            deliveries = [(i.input, i.delivery.headers) for i in items if i.delivery is not None]
            deliveries += [
                (i.input.message, {"traceparent": i.input.traceparent})
                for i in items
                if isinstance(i.input, EventHeard) and i.input.traceparent
            ]
            tracing.emit_committed(actor, transition, deliveries, now_ms=self.clock.now_ms())
        if transition.timers_add or transition.timers_remove:
            self.timers.committed(actor.partition, transition.timers_add, transition.timers_remove)
        self._after_commit(key, actor, effects, items)

    async def _rejected(
        self, result: CommitResult, actor: InstanceActor, items: list[_Item], fences: dict[int, str]
    ) -> None:
        """Drop the instance of a rejected commit and requeue its inputs; a fenced one revokes the partition."""
        key = (actor.workflow, actor.instance_id)
        # A creation notice that lost the race to its start message is done with: the
        # instance has started. Anything else is retried on the reloaded instance. A start
        # that conflicts is the expected end of such a race (the other one started it).
        rest = [i for i in items if not isinstance(i.input, CreatedNotice | EventHeard)]
        starts_only = all(isinstance(i.input, CreatedNotice | InstanceCreated) for i in items)
        level = logging.DEBUG if result is CommitResult.CONFLICT and starts_only else logging.WARNING
        observed.rejected(actor, result, level)
        self._drop(key)
        if key in self.slots.taken:  # slots taken for a commit that did not land go back (consumers/slots.py)
            await self.slots.undo(*key)
        if result is CommitResult.FENCED and self.owned.get(actor.partition) == fences.get(actor.partition):
            await self.on_revoked(actor.partition)
            if self.on_fenced is not None:
                self.on_fenced(actor.partition)
        self._requeue(rest)

    async def _apply(
        self, key: _ActorKey, actor: InstanceActor, items: list[_Item]
    ) -> tuple[InstanceActor, Transition | None, Effects] | None:
        """``actor.apply``, fetching the values stored by reference that its replay delivers (hutch.blobs).

        Replay asks for them group by group, so only values the code receives are loaded; each time
        the instance is rebuilt as stored (nothing of the interrupted apply is kept) and replayed
        with what was fetched so far. None: the instance vanished meanwhile (its inputs are decided).
        """
        blobs: dict[str, bytes] = {}
        limited = self.slots.limited(actor.workflow)  # no slot work at all for a workflow without limits
        if limited:
            params = actor.params
            if isinstance(params, BlobRef):  # a concurrency key reads the params: load large ones first
                if params.key not in actor.blobs:
                    where = BlobAddress(actor.partition, actor.workflow, actor.instance_id)
                    actor.blobs.update(await fetch_blobs(self.store.blobs, where, [params]))
                blobs[params.key] = actor.blobs[params.key]
            await self.slots.before(actor, [i.input for i in items], self.owned.get(actor.partition, ""))
        while True:
            try:
                transition, effects = actor.apply([i.input for i in items])
                if limited:
                    transition = await self._after_slots(actor, transition)
                return actor, transition, effects
            except BlobsNeeded as need:
                where = BlobAddress(actor.partition, actor.workflow, actor.instance_id)
                blobs.update(await fetch_blobs(self.store.blobs, where, need.refs))
            hold = actor.hold
            self._drop(key)
            await self._load_missing({key: items})
            rebuilt = self.actors.get(key)
            if rebuilt is None:
                if key in self.slots.taken:  # it vanished after taking its slots
                    await self.slots.undo(*key)
                return None
            rebuilt.hold, rebuilt.blobs = hold, blobs
            rebuilt.slot_held, rebuilt.slot_denied = actor.slot_held, actor.slot_denied
            rebuilt.slot_token = actor.slot_token
            rebuilt.slot_wait = actor.slot_wait
            actor = rebuilt

    async def _after_slots(self, actor: InstanceActor, transition: Transition | None) -> Transition | None:
        """Give back the slots of an instance that parks, before its commit (see consumers/slots.py)."""
        transition, release = self.slots.after(actor, transition)
        if release:
            await self.slots.release(actor, self.owned.get(actor.partition, ""))
        return transition

    async def _wake_waiters(self) -> None:
        """Re-drive the instances a slot was freed for (on their partitions), and re-check ours later."""
        wakes = self.slots.take_wakes()
        if self.slots.waiting and self._recheck is None:
            self._recheck = asyncio.get_running_loop().call_later(RECHECK_S, self._recheck_waiting)
        if not wakes:
            return
        partitions = self.transport.partitions if self.transport is not None else self.store.partitions
        outgoing: list[Outgoing] = []
        for workflow, instance_id in wakes:
            partition = partition_of(workflow, instance_id, partitions)
            redrive = Redrive(workflow=workflow, instance_id=instance_id)
            if partition in self.owned:
                self._inbox.put_nowait(_Item(partition, (workflow, instance_id), redrive, None))
            else:
                outgoing.append(Outgoing(partition, encode(redrive)))
        if outgoing and self.transport is not None:
            try:
                await self.transport.publish(outgoing)
            except Exception as exc:  # each waiter tries again within RECHECK_S
                log.warning("waking %d instances waiting for a slot failed: %r", len(outgoing), exc)

    def _recheck_waiting(self) -> None:
        self._recheck = None
        for (workflow, instance_id), partition in list(self.slots.waiting.items()):
            if partition in self.owned:
                redrive = Redrive(workflow=workflow, instance_id=instance_id)
                self._inbox.put_nowait(_Item(partition, (workflow, instance_id), redrive, None))
            else:
                del self.slots.waiting[(workflow, instance_id)]

    async def _load_missing(self, groups: dict[_ActorKey, list[_Item]]) -> None:
        missing = [key for key in groups if key not in self.actors]
        if not missing:
            return
        partitions = [groups[key][0].partition for key in missing]
        # A brand-new instance starts from its start message: no read of what the client just wrote.
        fresh = [_fresh_snapshot(groups[key][0]) for key in missing]
        to_load = [(p, *key) for p, key, f in zip(partitions, missing, fresh, strict=True) if f is None]
        loaded = iter(await self.store.load_many(to_load) if to_load else [])
        snapshots = [f if f is not None else next(loaded) for f in fresh]
        for partition, key, snapshot, built in zip(partitions, missing, snapshots, fresh, strict=True):
            items = groups[key]
            versions = self.workflows.get(key[0])
            if snapshot is None and all(isinstance(i.input, BatchedControl) for i in items):
                for item in items:  # nothing left to control (deleted, or expired): not worth a dead letter
                    _decide(item, ACK)
                del groups[key]
                continue
            if snapshot is None or versions is None:
                reason = (
                    f"instance {key[1]!r} of workflow {key[0]!r} does not exist (expired or never created)"
                    if snapshot is None
                    else f"workflow {key[0]!r} is not registered on this worker"
                )
                for item in items:
                    if item.delivery is not None:  # a local input has nothing to dead-letter
                        observed.dead_lettered(partition, reason, *key)
                    _decide(item, DeadLetter(reason))
                del groups[key]
                continue
            self.actors[key] = InstanceActor(
                snapshot,
                partition=partition,
                versions=versions,
                env=self.env,
                limits=self.limits,
                now_ms=self.clock.now_ms,
                is_executing=self.runner.executing,
                warm_ms=self.warm_horizon_ms,
                from_message=built is not None,
            )

    def _after_commit(self, key: _ActorKey, actor: InstanceActor, effects: Effects, items: list[_Item]) -> None:
        if self.slots.taken:
            self.slots.landed(*key)
        for item in items:
            _decide(item, ACK)
        self._remember_heard(actor, items)
        self._outbox += effects.outbox
        if effects.cancel_all:
            self.runner.cancel(*key)
        for step in effects.cancel:
            self.runner.cancel(*key, step)
        for call, attempt in effects.execute:
            self.runner.start(
                actor.partition, actor.workflow, actor.instance_id, actor.run_no, call, attempt, trace=actor.trace
            )
        if effects.evict:
            self._drop(key)
        if self.watch is not None:
            self.watch.notify(*key, actor.status)

    async def _carry_out_outbox(self) -> None:
        """Carry out the outbox timers this turn handled, then remove them (one failing fires again later)."""
        items, self._outbox = self._outbox, []
        if not items:
            return
        if self.transport is None:
            log.error("outbox: %d effects of step.invoke cannot be carried out: no transport", len(items))
            return
        done = await children.carry_out(
            items,
            store=self.store,
            transport=self.transport,
            now_ms=self.clock.now_ms(),
            inline_threshold=self.limits.inline_threshold,
        )
        by_partition: dict[int, list[bytes]] = {}
        for item in done:
            by_partition.setdefault(item.partition, []).append(item.member)
        for partition, members in by_partition.items():
            try:
                await self.store.remove_timers(partition, members)
            except STORE_ERRORS as exc:  # done again when they fire again: every effect is idempotent
                log.warning("outbox: removing %d timers of partition %d failed: %s", len(members), partition, exc)
                continue
            self.timers.committed(partition, [], members)

    def _remember_started(self, key: _ActorKey, created_ms: int) -> None:
        self._started[key] = created_ms
        self._started.move_to_end(key)
        if len(self._started) > _STARTED_REMEMBERED:
            self._started.popitem(last=False)

    def _started_already(self, item: _Item) -> bool:
        """Whether ``item`` is the start message of an instance this worker already started.

        The creation time tells this instance from an earlier one with the same id.
        """
        message = item.input
        if not isinstance(message, InstanceCreated) or item.delivery is None or not message.fields:
            return False
        started, created = self._started.get(item.key), message.fields.get("created")
        return started is not None and created is not None and started == int(created)

    def _heard_already(self, item: _Item) -> bool:
        """Whether ``item`` is the broker message of an event this worker applied from its notice."""
        message = item.input
        if not isinstance(message, EventReceived) or item.delivery is None:
            return False
        heard = (message.workflow, message.instance_id, message.id)
        if heard not in self._heard:
            return False
        del self._heard[heard]
        return True

    def _remember_heard(self, actor: InstanceActor, items: list[_Item]) -> None:
        for item in items:
            heard = item.input
            if isinstance(heard, EventHeard) and heard.message.id in actor.state.seen_events:
                self._heard[(actor.workflow, actor.instance_id, heard.message.id)] = None
                if len(self._heard) > _HEARD_REMEMBERED:
                    self._heard.popitem(last=False)

    def _drop(self, key: _ActorKey) -> None:
        actor = self.actors.pop(key, None)
        if actor is not None:
            actor.close()

    def _requeue(self, items: list[_Item], *, requeue_local: bool = True) -> None:
        for item in items:
            if item.settlement is not None:
                item.settlement.decide(REQUEUE)
            elif requeue_local:
                # Local inputs (step results, re-drives) have no broker to redeliver them: retry
                # them once the instance reloads.
                if isinstance(item.input, StepDone):
                    self._queued_results[item.partition] = self._queued_results.get(item.partition, 0) + 1
                self._inbox.put_nowait(item)

    def _unqueue_result(self, partition: int) -> None:
        left = self._queued_results.get(partition, 0) - 1
        if left > 0:
            self._queued_results[partition] = left
        else:
            self._queued_results.pop(partition, None)


def _decide(item: _Item, outcome: Outcome) -> None:
    """Settle ``item``'s delivery with ``outcome`` when the turn ends (a local input has none to settle)."""
    if item.settlement is not None:
        item.settlement.decide(outcome)


def _fresh_snapshot(item: _Item) -> Snapshot | None:
    """The snapshot of an instance that a creation notice or a first-delivery start message describes.

    Both carry the meta fields the client wrote at creation (params, creation time, trigger, the
    trace context of engine.tracing...), so the instance needs no read and looks exactly as a load
    would show it. If it is stale (the instance already moved on, or it is another instance with
    the same id), the first commit's sequence and creation-time checks refuse it; a start message
    is then redelivered and, being a redelivery, loads the instance. None: load it.
    """
    message = item.input
    if isinstance(message, CreatedNotice):
        if message.meta is None:
            return None
        meta = message.meta
    elif isinstance(message, InstanceCreated) and message.fields and item.delivery and not item.delivery.redelivered:
        meta = meta_from_fields(message.fields)
    else:
        return None
    identity = (meta.get("wf"), meta.get("id"), meta.get("seq"), meta.get("status"))
    if identity != (message.workflow, message.instance_id, 0, "queued") or not isinstance(meta.get("created"), int):
        return None  # not the creation record of this instance: read the real one
    return Snapshot(meta, [], [])
