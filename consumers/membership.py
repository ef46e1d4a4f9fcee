"""Which worker owns which partition: heartbeats, a rendezvous assignment, claims and handovers.

Assignment. Every worker heartbeats into a Redis sorted set each ``heartbeat_s``; the live workers
are those seen within ``ttl_s``. From the same live set every worker computes the same plan by
rendezvous (highest-random-weight) hashing: each (worker, partition) pair has a pseudo-random
weight, and the pairs are taken by descending weight, each partition going to the first worker
that is not full yet (at most ``LOAD_FACTOR`` times the even share). A join or a leave therefore
moves that worker's share and hardly anything else (``p mod n`` moved most partitions), and no
worker owns more than 25 % above the even share. A partition's *successor* behind a holder is
whoever would own it without that holder, among the *fresh* workers: those that heartbeated within
two heartbeats, and whose connection no standby saw closing since (``Keys.departures``) — a worker
just killed is still live for ``ttl_s``, but no use as a standby.

Ownership is the partition's fencing token in Redis (``Keys.owner``, ``<worker id>:<nonce>``),
which every commit checks (commit.lua): a worker *holds* a partition once it wrote its token
there, compare-and-set on what it read, and it commits nothing for it afterwards once another
token replaced it. A holder that lets a partition go writes ``>`` and the worker it hands it to
instead (``>`` alone: nobody).

How a partition changes hands:

- Crash (``kill -9``): every worker also consumes, as a standby behind single-active-consumer,
  the partitions it is the successor of behind their holder. Each partition queue holds one *lease* message that its
  holder keeps unacknowledged (consumers/worker.py), so when the holder's connection closes
  RabbitMQ at once activates the standby and hands it the lease (or whatever else is queued): a
  delivery to a consumer that does not hold the partition is the signal to claim it, without
  waiting for the heartbeat to expire — provided the token is still the one it stood behind (a
  holder that let the partition go rewrote it; the standby then steps back for the next in line).
  The activations of many partitions are claimed together, each claim a compare-and-set, all in
  one pipelined round trip.
- Graceful handover (a join, a leave, a worker coming back): the new owner consumes the partition
  as a standby behind the holder and asks for it (``Keys.handovers``: ``<new owner>|<the
  holder's token>``, so an old request of a worker since dead never counts). The holder stops
  starting new step attempts there, lets the running ones finish and commit (up to
  ``handover_timeout_s``), writes ``><new owner>``, then stops consuming: RabbitMQ activates the
  new owner's consumer, which claims and re-drives from the committed state. No step runs twice.
  A stopping worker does the same for all its partitions, each to its successor.
- A hung or cut-off holder (``SIGSTOP``, a network partition: its connection stays open, or
  closes only at the broker's heartbeat timeout) stops heartbeating: once its heartbeat is
  ``ttl_s`` old the partition's owner claims it from Redis, without waiting for the broker; its
  commits fail from then on.
- A worker that cannot consume a partition (``Transport.cannot_consume``), or at all
  (``Transport.can_consume``), gives it up to its successor once that lasted ``ttl_s`` minus a
  heartbeat (and stops heartbeating while it cannot consume at all).

A Redis outage. While no worker reaches Redis no heartbeat lands, so once it is back every
worker's last heartbeat may be older than ``ttl_s``: a worker that took that for death would count
itself alone and claim every partition, the others would claim theirs back, and each move would
re-run the steps in flight. So a worker counts against another only the silence it *watched*: a
heartbeat's age minus the spans in which this worker itself read no heartbeat (a tick that failed,
or hung, for more than a heartbeat). Workers silent before an outage it could not see through are
then judged dead a ttl after it ends, or earlier if they were silent already; those that heartbeat
again by then keep what they hold, and nothing moves.

Safety does not depend on this layer's views agreeing: a claim is a compare-and-set on the token,
every commit is fenced by it, and single active consumer delivers a queue to one consumer at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from hutch import metrics
from hutch.broker.transports.base import stray_cancel
from hutch.cancelling import cancel_requested
from hutch.clock import Clock
from hutch.commits import ANNOUNCES_CHANGES
from hutch.consumers.supervision import TaskEnded
from hutch.dispatch import CONTROL_BATCH
from hutch.keys import Keys
from hutch.store.redis import STORE_ERRORS
from redis.asyncio import Redis

FEATURES: tuple[str, ...] = (CONTROL_BATCH, ANNOUNCES_CHANGES)
"""The features this worker announces with its heartbeat (``Keys.worker_feature``)."""

log = logging.getLogger("hutch.membership")

LOAD_FACTOR = 1.25
"""A worker owns at most this many times its even share of the partitions (rounded up)."""

LEASE_HEADER = "x-hutch-lease"
"""Header of a partition's lease message (empty body): see consumers/worker.py."""

HANDED = ">"
"""Prefix of a released partition's token: ``><worker id>`` handed to that worker, ``>`` to nobody."""

# Compare-and-set of a partition's token: KEYS[1] its owner key; ARGV[1] the token expected ('' for
# none), ARGV[2] the new one ('' deletes it). 1 when written.
_SWAP = """
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then return 0 end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[2]) end
return 1
"""


@functools.lru_cache(maxsize=1 << 16)
def weight(worker: str, partition: int) -> int:
    """The rendezvous weight of a (worker, partition) pair: the same in every process."""
    digest = hashlib.blake2b(f"{partition}/{worker}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


@functools.lru_cache(maxsize=64)
def owners(workers: frozenset[str], partitions: int) -> dict[int, str]:
    """Partition → its owner among ``workers`` (empty without workers). Do not modify the result (cached).

    The (worker, partition) pairs are taken by descending weight; each partition goes to the
    first worker of its pairs that is not full yet.
    """
    if not workers:
        return {}
    ranked = sorted(((weight(w, p), w, p) for w in workers for p in range(partitions)), reverse=True)
    cap = math.ceil(LOAD_FACTOR * partitions / len(workers))
    load = dict.fromkeys(workers, 0)
    out: dict[int, str] = {}
    for _, worker, partition in ranked:
        if partition not in out and load[worker] < cap:
            out[partition] = worker
            load[worker] += 1
            if len(out) == partitions:
                break
    return out


@dataclass(frozen=True, slots=True)
class Plan:
    """The assignment for one set of workers.

    Attributes:
        owner: partition → the worker that should hold it.
        successor: partition → the worker that gets it if its owner leaves (None: no other worker).
    """

    workers: frozenset[str]
    owner: dict[int, str]
    successor: dict[int, str | None]


def plan(workers: frozenset[str], partitions: int) -> Plan:
    """The assignment of ``partitions`` partitions to ``workers``, and each partition's successor."""
    owner = owners(workers, partitions)
    successor: dict[int, str | None] = {p: owners(workers - {w}, partitions).get(p) for p, w in owner.items()}
    return Plan(workers, owner, successor)


def assign(workers: Iterable[str], partitions: int) -> dict[str, list[int]]:
    """Each worker's partitions under the rendezvous plan (every worker listed, sorted)."""
    ws = frozenset(workers)
    out: dict[str, list[int]] = {w: [] for w in sorted(ws)}
    for p, w in sorted(plan(ws, partitions).owner.items()):
        out[w].append(p)
    return out


def _parse(token: str | None) -> tuple[str | None, str | None]:
    """(holder, handed to) of a token: a held token names its holder, a released one whom it went to."""
    if not token:
        return None, None
    if token.startswith(HANDED):
        return None, token[len(HANDED) :] or None
    return token.rpartition(":")[0], None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(slots=True)
class _Moves:
    """What one reconcile pass decided for the partitions, carried out once it has looked at them all.

    Attributes:
        claims: partitions to claim, with the token each is expected to have.
        subscribe: partitions to start consuming.
        unsubscribe: partitions to stop consuming.
        give_up: held partitions to release (this worker could not consume them for too long).
        requests: handover requests to record (partition as a string → ``"<worker>|<token>"``).
        stale: tokens of ours from before a suspension, to hand to the partition's owner.
    """

    claims: dict[int, str | None] = field(default_factory=dict)
    subscribe: list[int] = field(default_factory=list)
    unsubscribe: list[int] = field(default_factory=list)
    give_up: list[int] = field(default_factory=list)
    requests: dict[Any, Any] = field(default_factory=dict)  # field → value, as hset types them
    stale: dict[int, str] = field(default_factory=dict)


class PartitionHost(Protocol):
    """What membership drives: the worker's consumers and its partition owner (consumers/worker.py)."""

    def new_token(self) -> str:
        """A fresh fencing token of this worker's."""

    async def subscribe(self, partition: int) -> None:
        """Consume the partition's queue (the broker decides when this consumer is the active one)."""

    async def unsubscribe(self, partition: int, *, retire_lease: bool = False) -> None:
        """Stop consuming the partition's queue (its unacknowledged deliveries go back to it).

        ``retire_lease``: acknowledge the partition's lease instead (no worker is left to hand it to).
        """

    async def adopt(self, tokens: dict[int, str]) -> None:
        """These partitions were claimed with these tokens: take them over."""

    async def drop(self, partition: int) -> None:
        """Stop committing for the partition (another holds it, or it is being released)."""

    def hold(self, partition: int) -> None:
        """Start no new step attempt on the partition (a handover is under way)."""

    async def unhold(self, partition: int) -> None:
        """The handover is called off: go on as before."""

    async def wait_quiet(self, partitions: set[int], timeout: float) -> set[int]:
        """Wait until nothing of these partitions is running or left to commit; the ones still busy."""


class Membership:
    """Heartbeats this worker and keeps the partitions it consumes and holds in line with the plan.

    Args:
        redis: the Redis holding heartbeats, tokens and handover requests.
        keys: the namespace's keys.
        worker_id: this worker's id.
        partitions: the deployment's partition count.
        host: the worker (see :class:`PartitionHost`).
        heartbeat_s: how often it heartbeats and reconciles.
        ttl_s: a worker silent this long is dead.
        handover_timeout_s: how long a graceful handover lets the partition's running attempts
            finish before letting it go anyway (they then run again on the new owner).
        can_consume: whether this worker can consume at all right now (default: always).
        cannot_consume: the subscribed partitions it cannot consume right now (default: none).
    """

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        worker_id: str,
        partitions: int,
        *,
        host: PartitionHost,
        clock: Clock,
        heartbeat_s: float = 1.0,
        ttl_s: float = 3.0,
        handover_timeout_s: float = 30.0,
        can_consume: Callable[[], bool] | None = None,
        cannot_consume: Callable[[], frozenset[int]] | None = None,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._workers_key = keys.workers()
        # What this worker's version takes that older ones do not (see hutch.dispatch.CONTROL_BATCH).
        self._feature_keys = [keys.worker_feature(f) for f in FEATURES]
        self._handovers_key = keys.handovers()
        self._departures_key = keys.departures()
        self.worker_id = worker_id
        self._partitions = partitions
        self._host = host
        self._clock = clock
        self._heartbeat_s = heartbeat_s
        self._ttl_ms = round(ttl_s * 1000)
        self._heartbeat_ms = round(heartbeat_s * 1000)
        # How long a worker that cannot consume keeps its partitions: the others count it dead once
        # its last heartbeat (at most one interval before it became unable) is ttl old.
        self._grace_ms = max(0, self._ttl_ms - round(heartbeat_s * 1000))
        self._handover_timeout_s = handover_timeout_s
        self._can_consume = can_consume
        self._cannot_consume = cannot_consume
        self.held: dict[int, str] = {}  # partition → our token in Redis
        self.subscribed: set[int] = set()
        self._behind: dict[int, str] = {}  # standby partitions → the holder's token we stand behind
        self._handovers: dict[int, asyncio.Task[None]] = {}
        self._activated: set[int] = set()  # delivered to while not held: claim, or step back
        self._fenced: set[int] = set()  # held partitions whose commit was fenced
        self._live: frozenset[str] = frozenset({worker_id})  # heartbeated within ttl_s: the plan's workers
        self._fresh: frozenset[str] = frozenset({worker_id})  # heartbeated within two heartbeats: standbys
        self._suspects: dict[str, int] = {}  # workers the broker showed gone → when (ms), until they heartbeat
        self._owners: dict[int, str] | None = None
        self._lock = asyncio.Lock()  # one reconciliation (tick, activations, release) at a time
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._claim_wake = asyncio.Event()
        self.leaving = False
        self._unable_since_ms: int | None = None  # when this worker became unable to consume at all
        self._partition_unable_since: dict[int, int] = {}
        self._logged: tuple[int, ...] | None = None
        self._read_ms: int | None = None  # when the last tick that read the heartbeats started
        self._blind: list[tuple[int, int]] = []  # (from, to) ms: the spans this worker read no heartbeat in

    # ------------------------------------------------------------------ signals
    def activated(self, partition: int) -> None:
        """A delivery arrived on a partition this worker does not hold: the broker made it the active consumer."""
        if partition not in self.held and partition not in self._handovers:
            self._activated.add(partition)
            self._claim_wake.set()

    def fenced(self, partition: int) -> None:
        """A commit of ours for ``partition`` was fenced: reconcile it now, not at the next heartbeat."""
        self._fenced.add(partition)
        self._wake.set()

    def suspend(self, partition: int) -> None:
        """The consumer of a held partition went away (its channel was lost): commit nothing for it now.

        Our token stays in Redis: a consumer the broker activated meanwhile claims over it, and this
        worker claims the partition anew once it consumes it again, if it is still its to hold.
        """
        if self.held.pop(partition, None) is not None:
            log.warning("worker %s stopped consuming partition %d; suspended", self.worker_id, partition)
            self._wake.set()

    def wake(self) -> None:
        """Reconcile now rather than at the next heartbeat (e.g. the transport's consumability changed)."""
        self._wake.set()

    # ------------------------------------------------------------------ the loop
    async def live_workers(self) -> list[str]:
        """Ids of the workers this one counts as alive (see :meth:`_age`); prunes nothing."""
        now = self._clock.now_ms()
        spans = self._blind_spans(now)
        members = await self._redis.zrangebyscore(self._workers_key, self._horizon(now, spans), "+inf", withscores=True)
        beats = {_text(m): int(beat) for m, beat in cast(list[tuple[bytes, float]], members)}
        return [w for w, beat in beats.items() if self._age(beat, now, spans) <= self._ttl_ms]

    def _blind_spans(self, now: int) -> list[tuple[int, int]]:
        """The spans without a heartbeat read that still matter at ``now``, should this tick read them."""
        spans = list(self._blind)
        if self._read_ms is not None and now - self._read_ms > 2 * self._heartbeat_ms:
            spans.append((self._read_ms, now))  # at least a whole heartbeat missed
        # A span that ended a ttl ago changes no verdict: whoever was silent since before it is dead
        # by the time watched since its end alone.
        return [(start, end) for start, end in spans if end >= now - self._ttl_ms]

    def _horizon(self, now: int, spans: list[tuple[int, int]]) -> int:
        """A heartbeat older than this is dead, however much of its age this worker did not watch."""
        return now - self._ttl_ms - sum(end - start for start, end in spans)

    def _age(self, beat: int, now: int, spans: list[tuple[int, int]]) -> int:
        """How long this worker watched ``beat`` stay a worker's last heartbeat.

        That is its age minus the spans in which this worker read none: an outage it could not see
        through is not silence.
        """
        unseen = sum(max(0, min(end, now) - max(start, beat)) for start, end in spans)
        return now - beat - unseen

    async def run(self) -> None:
        """Tick until :meth:`stop`, claiming activated partitions in between; errors are retried.

        Raises:
            TaskEnded: the claimer was cancelled meanwhile (its crash ends this too, as is).
        """
        async with asyncio.TaskGroup() as group:
            claimer = group.create_task(self._claimer(), name="hutch-membership-claims")
            claimer.add_done_callback(lambda _: self._wake.set())
            try:
                await self._ticks(claimer)
            finally:
                claimer.cancel()
                self._claim_wake.set()  # a claimer whose cancellation was swallowed sees it at once

    async def _ticks(self, claimer: asyncio.Task[None]) -> None:
        while not self._stop.is_set():
            if cancel_requested():  # the CancelledError swallowed on the way (see hutch.cancelling)
                raise asyncio.CancelledError
            if claimer.done():
                # A TaskGroup acts on a child's crash, not on one cancelled: without its claimer
                # this worker would go on heartbeating, holding partitions and claiming none.
                raise TaskEnded(f"{claimer.get_name()} was cancelled while membership ran")
            try:
                await self.tick()
            except STORE_ERRORS as exc:
                log.warning("membership tick failed: %s", exc)
            except (Exception, asyncio.CancelledError) as exc:
                # A broker error while (re)subscribing (e.g. a channel opened on a connection that
                # just dropped, which aiormq may report as CancelledError) must not end ownership
                # for good: the next tick reconciles again.
                if not isinstance(exc, Exception) and not stray_cancel(exc):
                    raise
                log.exception("membership tick failed; retrying on the next tick")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._heartbeat_s):
                    await self._wake.wait()
            self._wake.clear()

    async def tick(self) -> None:
        """Heartbeat once and reconcile: subscriptions, claims, handover requests and handovers."""
        async with self._lock:
            if self._stop.is_set():
                return
            if not self._consumable():
                await self._unable_to_consume()
                return
            now = self._clock.now_ms()
            pipe = self._redis.pipeline(transaction=False)
            pipe.zadd(self._workers_key, {self.worker_id: now})
            for key in self._feature_keys:
                pipe.zadd(key, {self.worker_id: now})
            if self.leaving:  # stay live until the partitions are released, change nothing
                await pipe.execute()
                return
            spans = self._blind_spans(now)
            horizon = self._horizon(now, spans)
            pipe.zremrangebyscore(self._workers_key, "-inf", horizon)
            for key in self._feature_keys:
                pipe.zremrangebyscore(key, "-inf", horizon)
            pipe.zrangebyscore(self._workers_key, horizon, "+inf", withscores=True)
            pipe.hgetall(self._handovers_key)
            pipe.hgetall(self._departures_key)
            for p in range(self._partitions):
                pipe.get(self._keys.owner(p))
            started = time.perf_counter()
            features = len(self._feature_keys)
            results = await pipe.execute()
            del results[1 : 1 + features]  # the feature heartbeats
            del results[2 : 2 + features]  # and their pruning
            _, _, members, wants, departed, *held_by = results
            metrics.REDIS_ROUND_TRIP.observe(time.perf_counter() - started)  # the heartbeat is the sample
            if self._read_ms is not None and now - self._read_ms > self._ttl_ms:
                log.warning(
                    "worker %s read no heartbeat for %.1f s (Redis unreachable, or this process stalled): "
                    "that time does not count against the other workers",
                    self.worker_id,
                    (now - self._read_ms) / 1000,
                )
            self._read_ms, self._blind = now, spans
            beats = {_text(m): int(score) for m, score in members}
            beats = {w: beat for w, beat in beats.items() if self._age(beat, now, spans) <= self._ttl_ms}
            gone = [w for w in map(_text, departed) if w not in beats]
            if gone:  # their heartbeats expired too
                await self._redis.hdel(self._departures_key, *gone)
            self._see(now, beats, {_text(w): int(at) for w, at in departed.items()})
            tokens = {p: _text(t) if t is not None else None for p, t in enumerate(held_by)}
            await self._reconcile(tokens, {int(_text(k)): _text(v) for k, v in wants.items()})
            self._log_if_changed()
            if self._activated:  # delivered to while this tick was subscribing: the claimer decides
                self._claim_wake.set()

    def _see(self, now: int, beats: dict[str, int], departed: dict[str, int]) -> None:
        """Take in the heartbeats: the live workers (the plan's) and the fresh ones (the standbys')."""
        beats[self.worker_id] = now
        self._live = frozenset(beats)
        self._owners = owners(self._live, self._partitions)
        # A worker that missed a heartbeat, or whose connection the broker was seen closing (a
        # standby of its was activated), stays in the plan until its ttl is up but stands by no
        # more: a standby behind a dead worker's partitions would wait for that ttl. One that
        # heartbeats after that is fresh again (its connection came back).
        fresh_ms = round(2 * self._heartbeat_s * 1000) + 100
        for worker, at in departed.items():
            self._suspects[worker] = max(at, self._suspects.get(worker, at))
        self._suspects = {w: at for w, at in self._suspects.items() if w in beats and beats[w] <= at}
        self._fresh = frozenset(
            w for w, beat in beats.items() if self._age(beat, now, self._blind) <= fresh_ms and w not in self._suspects
        )
        self._fresh |= {self.worker_id}

    def _standby(self, partition: int, holder: str) -> str | None:
        """Who stands by behind ``holder`` on ``partition``: its owner among the fresh workers but ``holder``."""
        return owners(self._fresh - {holder}, self._partitions).get(partition)

    async def _reconcile(self, tokens: dict[int, str | None], wants: dict[int, str]) -> None:
        """Bring this worker in line with the plan, given every partition's token and handover request."""
        assert self._owners is not None
        unable = self._unable_partitions()
        moves = _Moves()
        for p in range(self._partitions):
            if p in self._handovers:
                continue
            token, owner = tokens[p], self._owners[p]
            if p in self.held:
                if self._still_held(p, token, owner, wants, unable, moves):
                    continue
                await self._lost(p)  # another worker claimed it; see below what to do now
            self._decide(p, token, owner, wants, unable, moves)
        await self._carry_out(moves)

    def _still_held(
        self, p: int, token: str | None, owner: str, wants: dict[int, str], unable: dict[int, int], moves: _Moves
    ) -> bool:
        """Whether a partition we hold still has our token; if so, give it up or hand it over when due."""
        if token != self.held[p] or p in self._fenced:
            return False
        if p in unable and unable[p] >= self._grace_ms:
            moves.give_up.append(p)
        elif owner != self.worker_id and owner in self._fresh and wants.get(p) == f"{owner}|{token}":
            self._start_handover(p, owner)
        return True

    def _decide(
        self, p: int, token: str | None, owner: str, wants: dict[int, str], unable: dict[int, int], moves: _Moves
    ) -> None:
        """Decide for a partition we do not hold: claim it, consume it (owner or standby), ask for it, or let go."""
        me, live = self.worker_id, self._live
        holder, handed_to = _parse(token)
        consumable = p not in unable
        free = (
            token is None
            or token == HANDED
            or (holder is not None and (holder == me or holder not in live))
            or (handed_to is not None and handed_to not in live)
        )
        claim = consumable and (handed_to == me or (owner == me and free))
        # Standby behind the holder: who would own the partition without it. The broker
        # activating this consumer while the token is still the one it stood behind means the
        # holder's consumer went away without handing the partition over (a release rewrites it).
        standby = holder is not None and holder != me and self._standby(p, holder) == me
        if standby and token is not None:
            self._behind[p] = token
        else:
            self._behind.pop(p, None)
        if claim:
            moves.claims[p] = token
        elif holder == me and token is not None and owner != me:
            # Ours from before a suspension, and not ours to hold any more: hand it to its owner.
            # (Our own we keep: a standby the broker activated claims over it meanwhile.)
            moves.stale[p] = token
        if claim or owner == me or standby:
            if p not in self.subscribed:
                moves.subscribe.append(p)
        elif p in self.subscribed:
            moves.unsubscribe.append(p)
        if owner == me and consumable and not claim and holder is not None and holder != me and holder in live:
            request = f"{me}|{token}"
            if wants.get(p) != request:
                moves.requests[str(p)] = request

    async def _carry_out(self, moves: _Moves) -> None:
        """Release, unsubscribe, subscribe, request handovers, hand stale tokens on, then claim (in that order)."""
        assert self._owners is not None
        if moves.give_up:
            await self._release(moves.give_up, why="it cannot consume them")
        if moves.unsubscribe:
            await asyncio.gather(*(self._unsubscribe(p) for p in moves.unsubscribe))
        if moves.subscribe:
            await self._subscribe(moves.subscribe)
        if moves.requests:
            await self._redis.hset(self._handovers_key, mapping=moves.requests)
        if moves.stale:
            pipe = self._redis.pipeline(transaction=False)
            for p, token in moves.stale.items():
                pipe.eval(_SWAP, 1, self._keys.owner(p), token, HANDED + self._owners[p])
            await pipe.execute()
        claims = {p: t for p, t in moves.claims.items() if p in self.subscribed}
        if claims:
            await self._claim(claims)

    # ------------------------------------------------------------------ claims
    async def _claimer(self) -> None:
        """Claim (or step back from) the partitions the broker activated this worker's consumer for."""
        while True:
            await self._claim_wake.wait()
            if cancel_requested():  # the CancelledError swallowed on the way (see hutch.cancelling)
                raise asyncio.CancelledError
            self._claim_wake.clear()
            try:
                async with self._lock:
                    await self._on_activations()
            except STORE_ERRORS as exc:
                log.warning("claiming activated partitions failed, retrying: %s", exc)
                await asyncio.sleep(0.2)
                self._claim_wake.set()
            except (Exception, asyncio.CancelledError) as exc:
                if not isinstance(exc, Exception) and not stray_cancel(exc):
                    raise
                log.exception("claiming activated partitions failed")

    async def _on_activations(self) -> None:
        """Claim the activated partitions that are ours to take, step back from the others.

        The consumer ahead of ours went away, so each holder named by a token is suspected gone; the
        suspicion is recorded in the claims' round trip, for every worker's standby plan.
        """
        batch = sorted(p for p in self._activated if p in self.subscribed and p not in self.held)
        if self._owners is None or self.leaving or self._stop.is_set() or not batch:
            return  # kept in _activated (not held yet) until the first plan, or dropped with the worker
        self._activated.difference_update(batch)
        pipe = self._redis.pipeline(transaction=False)
        for p in batch:
            pipe.get(self._keys.owner(p))
        tokens = [_text(t) if t is not None else None for t in await pipe.execute()]
        me = self.worker_id
        claims: dict[int, str | None] = {}
        step_back: list[int] = []
        suspects: set[str] = set()
        for p, token in zip(batch, tokens, strict=True):
            holder, handed_to = _parse(token)
            owner = self._owners[p]
            if holder is not None and holder != me:
                suspects.add(holder)  # its consumer is gone: the broker activated ours
            if self._ours_to_claim(p, token, handed_to, owner):
                claims[p] = token
            else:
                step_back.append(p)  # not ours to take: let the next consumer in line have it
        if step_back:
            log.info("worker %s steps back from partitions %s (not its to claim)", me, step_back)
            await asyncio.gather(*(self._unsubscribe(p) for p in step_back))
        now = self._clock.now_ms()
        for worker in suspects:
            self._suspects.setdefault(worker, now)
        self._fresh -= suspects
        lost = await self._claim(claims, departed=dict.fromkeys(suspects, now))
        if lost:
            self._activated.update(lost)  # the token changed under us: decide again on what it is now
            self._claim_wake.set()
        self._log_if_changed()

    def _ours_to_claim(self, p: int, token: str | None, handed_to: str | None, owner: str) -> bool:
        """Whether this worker claims a partition the broker activated its consumer for."""
        if handed_to == self.worker_id:
            return True
        if owner == self.worker_id and not (handed_to is not None and handed_to in self._live):
            # The consumer ahead of ours went away: its holder died, lost its connection, or let
            # the partition go. (One handed to another live worker is that worker's to claim.)
            return True
        # The holder we stood behind went away without handing it over.
        return token is not None and token == self._behind.get(p)

    async def _claim(self, expected: dict[int, str | None], *, departed: dict[str, int] | None = None) -> list[int]:
        """Compare-and-set a new token on each partition, all in one round trip; adopt those won.

        ``departed``: workers whose connection the broker was seen closing, recorded in the same
        round trip for every worker's standby plan. Returns the partitions whose token was not
        ``expected`` any more.
        """
        if not expected:
            return []
        new = {p: self._host.new_token() for p in expected}
        pipe = self._redis.pipeline(transaction=False)
        for p, token in expected.items():
            pipe.eval(_SWAP, 1, self._keys.owner(p), token or "", new[p])
        pipe.hdel(self._handovers_key, *(str(p) for p in expected))
        if departed:
            pipe.hset(self._departures_key, mapping=cast(dict[Any, Any], departed))
        swapped = (await pipe.execute())[: len(expected)]
        won = {p: new[p] for p, ok in zip(expected, swapped, strict=True) if ok == 1}
        if won:
            self.held.update(won)
            for p in won:
                self._behind.pop(p, None)
                self._activated.discard(p)
            self._log_if_changed()
            await self._host.adopt(won)
        return [p for p in expected if p not in won]

    # ------------------------------------------------------------------ letting go
    def _start_handover(self, partition: int, to: str) -> None:
        task = asyncio.create_task(self._hand_over(partition, to), name=f"hutch-handover-{partition}")
        self._handovers[partition] = task
        task.add_done_callback(
            lambda t: self._handovers.pop(partition, None) if self._handovers.get(partition) is t else None
        )

    async def _hand_over(self, partition: int, to: str) -> None:
        """Let ``partition``'s running attempts finish and commit, then hand it to ``to``."""
        log.info("worker %s hands partition %d over to %s", self.worker_id, partition, to)
        self._host.hold(partition)
        busy = await self._host.wait_quiet({partition}, self._handover_timeout_s)
        if busy:
            log.warning(
                "handover of partition %d: step attempts still running after %.1f s; they run again on %s",
                partition,
                self._handover_timeout_s,
                to,
            )
        async with self._lock:
            token = self.held.get(partition)
            if token is None or self._stop.is_set():
                return  # lost meanwhile, or the whole worker is leaving (stop releases it)
            if self._owners is None or self._owners[partition] != to or to not in self._fresh:
                log.info("handover of partition %d to %s called off: the plan changed", partition, to)
                await self._host.unhold(partition)
                return
            await self._release([partition], to={partition: to}, why=f"handed over to {to}")
            if self._standby(partition, to) == self.worker_id:
                # Stand by behind the new holder at once (it is in line ahead of us: it asked for the
                # partition once it consumed it), not a tick later: it may crash right after its claim.
                await self._subscribe([partition])
                if partition in self.subscribed:
                    self._behind[partition] = HANDED + to
            self._log_if_changed()

    async def _release(self, partitions: list[int], *, why: str, to: dict[int, str] | None = None) -> None:
        """Stop committing for these held partitions, write whom each goes to, stop consuming them.

        ``to`` defaults to each partition's owner should this worker leave. The token is written
        before the consumer goes away, so whoever the broker activates next finds it.
        """
        if to is None:
            # The owners of a plan without this worker, among the workers still heartbeating.
            targets = owners(self._fresh - {self.worker_id}, self._partitions)
            to = {p: targets[p] for p in partitions if p in targets}
        tokens = {p: self.held.pop(p) for p in partitions if p in self.held}
        for p in tokens:
            await self._host.drop(p)
        try:
            pipe = self._redis.pipeline(transaction=False)
            for p, token in tokens.items():
                pipe.eval(_SWAP, 1, self._keys.owner(p), token, HANDED + to.get(p, ""))
            await pipe.execute()
        except STORE_ERRORS as exc:
            # Our tokens stay: whoever the broker activates next claims over them (ours is no
            # consumer any more), and a plan without us lets the owners claim them from Redis.
            log.warning("could not record the release of partitions %s: %s", sorted(tokens), exc)
        finally:
            # A partition nobody is left to take leaves no lease behind: its next holder publishes one.
            await asyncio.gather(*(self._unsubscribe(p, retire_lease=not to.get(p)) for p in partitions))
        if tokens:
            log.info("worker %s released partitions %s (%s)", self.worker_id, sorted(tokens), why)

    async def _lost(self, partition: int) -> None:
        """Drop a partition another worker claimed from us, and stop consuming it.

        Stopping lets the broker activate the new holder's consumer (it may be a standby behind ours).
        """
        self.held.pop(partition, None)
        self._fenced.discard(partition)
        log.warning(
            "worker %s lost partition %d to another worker",
            self.worker_id,
            partition,
            extra={"worker_id": self.worker_id, "partition": partition},
        )
        metrics.PARTITION_CHANGES.labels("lost").inc()
        await self._host.drop(partition)
        await self._unsubscribe(partition)

    # ------------------------------------------------------------------ consuming
    async def _subscribe(self, partitions: list[int]) -> None:
        results = await asyncio.gather(*(self._host.subscribe(p) for p in partitions), return_exceptions=True)
        for p, result in zip(partitions, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception) and not stray_cancel(result):
                    raise result
                log.warning("could not consume partition %d (retried on the next tick): %r", p, result)
            else:
                self.subscribed.add(p)

    async def _unsubscribe(self, partition: int, *, retire_lease: bool = False) -> None:
        self.subscribed.discard(partition)
        self._behind.pop(partition, None)
        self._activated.discard(partition)
        await self._host.unsubscribe(partition, retire_lease=retire_lease)

    def _consumable(self) -> bool:
        """Whether this worker can consume at all; notes when that changes."""
        if self._can_consume is None or self._can_consume():
            if self._unable_since_ms is not None:
                self._unable_since_ms = None
                log.info("worker %s can consume again; rejoining", self.worker_id)
            return True
        if self._unable_since_ms is None:
            self._unable_since_ms = self._clock.now_ms()
            log.warning("worker %s cannot consume (its broker is unreachable); not heartbeating", self.worker_id)
        return False

    async def _unable_to_consume(self) -> None:
        # The others count this worker dead once its last heartbeat (at most one interval before
        # it became unable) is ttl old: release a heartbeat before that, so that a consumer the
        # broker connection restores later never competes with the new holders.
        assert self._unable_since_ms is not None
        if self.held and self._clock.now_ms() - self._unable_since_ms >= self._grace_ms:
            await self._release(sorted(self.held), why="it cannot consume")
            self._fenced.clear()
            self._log_if_changed()

    def _unable_partitions(self) -> dict[int, int]:
        """Partitions this worker cannot consume right now → for how long (ms)."""
        cannot = self._cannot_consume() if self._cannot_consume is not None else frozenset()
        now = self._clock.now_ms()
        for p in list(self._partition_unable_since):
            if p not in cannot:
                del self._partition_unable_since[p]
        return {p: now - self._partition_unable_since.setdefault(p, now) for p in cannot}

    # ------------------------------------------------------------------ leaving
    def leave(self) -> None:
        """This worker is stopping: keep heartbeating, but claim, request and hand over nothing any more."""
        self.leaving = True

    async def stop(self) -> None:
        """Stop ticking and leave: each held partition is handed to its successor, then the heartbeat goes."""
        self.leaving = True
        self._stop.set()
        self._wake.set()
        handovers = list(self._handovers.values())
        for task in handovers:
            task.cancel()
        await asyncio.gather(*handovers, return_exceptions=True)
        async with self._lock:
            if self.held:
                await self._release(sorted(self.held), why="leaving")
            await asyncio.gather(*(self._unsubscribe(p) for p in sorted(self.subscribed)))
            self._log_if_changed()
        with contextlib.suppress(*STORE_ERRORS):
            await self._redis.zrem(self._workers_key, self.worker_id)

    def _log_if_changed(self) -> None:
        held = tuple(sorted(self.held))
        if held != self._logged:
            self._logged = held
            log.info("worker %s owns partitions %s (%d live workers)", self.worker_id, list(held), len(self._live))
