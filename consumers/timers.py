"""Fires due timers (sleeps, retry delays, event timeouts) of the partitions this worker owns.

Due times live in each partition's sorted set in Redis, so a timer survives its worker: the
next owner of the partition fires it. Firing publishes a ``TimerFired`` message to the
partition; the transition that handles it removes the timer in the same atomic commit, so a
timer is never lost and a re-fired one is a no-op.

Redis is the truth, memory is the clock. Timers this worker's own commits add (and those a
scan of Redis finds due soon) wait in an in-memory heap and are fired exactly when due, with no
Redis read. A scan of the owned partitions still runs every ``poll_s`` (and at once when a
partition is acquired) to pick up timers written by other or previous owners, to fire again a
timer whose message was lost, and to arm timers too far ahead to be kept in memory — only
timers due within a short lookahead are, so a million hour-long sleeps cost no memory here.

A scan takes at most ``_batch`` timers per partition. A partition with more due at once (a
storm of sleepers waking together) is *draining*: what the scan fired is in flight, and a scan
before those commits removed them would read the same rows again and find nothing new. So it
is scanned again once most of what it fired was handled (or, should those inputs be lost, after
``refire_s``), never every few milliseconds: each due timer is read about twice, not once per
scan until its turn came (which made a storm's cost grow with the square of its size).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Callable, Iterable

from hutch import metrics
from hutch.broker.envelopes import TimerFired, encode
from hutch.broker.transports.base import Outgoing, Transport
from hutch.clock import Clock
from hutch.serialization import unpack
from hutch.store.base import CheckpointStore
from hutch.store.redis import STORE_ERRORS

log = logging.getLogger("hutch.timers")

_NEVER = 2**63
_LATENESS = metrics.TIMER_LATENESS


class TimerService:
    """Keeps the owned partitions' upcoming timers and publishes each when it is due.

    Args:
        owned: returns the partitions this worker currently owns.
        poll_s: the longest it goes without scanning Redis (timers added by another process,
            e.g. a previous owner, are seen at most this late; its own are fired on time).
        refire_s: a fired timer still present after this long is fired again (its message
            was lost with a connection).
    """

    def __init__(
        self,
        store: CheckpointStore,
        transport: Transport,
        owned: Callable[[], list[int]],
        *,
        clock: Clock,
        poll_s: float = 1.0,
        refire_s: float = 30.0,
    ) -> None:
        self._store = store
        self._transport = transport
        self._owned = owned
        self._clock = clock
        self._poll_ms = max(1, round(poll_s * 1000))
        # A timer due within this is kept in memory. Scans are at most poll_s apart, so every
        # timer is seen by a scan at least poll_s before it is due and armed in time.
        self._lookahead_ms = 2 * self._poll_ms
        self._refire_ms = round(refire_s * 1000)
        self._wake = asyncio.Event()
        self._heap: list[tuple[int, bytes, int]] = []  # (due ms, member, partition); stale entries skipped
        self._armed: dict[bytes, tuple[int, int]] = {}  # member -> (due, partition) of its live heap entry
        self._fired: dict[bytes, tuple[int, int]] = {}  # member -> (when published, partition): refire bookkeeping
        self._in_flight: dict[int, int] = {}  # partition -> how many of _fired are on it
        # Draining partitions (see the module docstring) -> when to scan them at the latest; and
        # the ones drained since, scanned on the next pass without waiting for the poll.
        self._draining: dict[int, int] = {}
        self._rescan: set[int] = set()
        self._scan_at = 0  # the next Redis scan (epoch ms); 0: at once
        self._removed_in_scan: set[bytes] | None = None  # removals committed while a scan reads Redis
        self._stopping = False
        self._batch = 1000
        self._deliver: Callable[[int, TimerFired], None] | None = None

    # ------------------------------------------------------------------ what commits tell it
    def committed(self, partition: int, added: Iterable[tuple[int, bytes]], removed: Iterable[bytes]) -> None:
        """A commit of this worker added timers (due ms, member) and removed others on ``partition``.

        Applied in the commit's order (adds, then removes), so memory mirrors Redis.
        """
        horizon = self._clock.now_ms() + self._lookahead_ms
        for due, member in added:
            self._unfire(member)  # re-armed with a new due time: a fresh timer
            if due <= horizon:
                self._arm(partition, member, due)
            else:
                self._armed.pop(member, None)  # a scan arms it when it comes close
        for member in removed:
            self._armed.pop(member, None)
            self._unfire(member)
            if self._removed_in_scan is not None:
                self._removed_in_scan.add(member)

    def _unfire(self, member: bytes) -> None:
        """Forget that ``member`` was fired; a draining partition with most of its fired timers handled is rescanned."""
        fired = self._fired.pop(member, None)
        if fired is None:
            return
        partition = fired[1]
        left = self._in_flight[partition] = self._in_flight.get(partition, 1) - 1
        if partition in self._draining and left <= self._batch // 4:
            del self._draining[partition]
            self._rescan.add(partition)
            self._wake.set()

    def deliver_locally(self, deliver: Callable[[int, TimerFired], None]) -> None:
        """Hand fired timers to ``deliver(partition, message)`` instead of publishing them.

        ``deliver`` is this worker's partition owner: the owner is here, so the broker round trip is saved.
        """
        self._deliver = deliver

    def due_at(self, due_ms: int) -> None:
        """Scan Redis no later than ``due_ms`` (0: now), e.g. after acquiring a partition."""
        if due_ms < self._scan_at:
            self._scan_at = due_ms
            self._wake.set()

    def forget_partition(self, partition: int) -> None:
        """The partition was released: its timers are the next owner's to fire."""
        for member in [m for m, (_, p) in self._armed.items() if p == partition]:
            del self._armed[member]
        # A timer fired just before the release was dropped unhandled (its partition was no longer
        # ours). Should the partition come back, a scan must fire it at once, not refire_s later.
        for member in [m for m, (_, p) in self._fired.items() if p == partition]:
            del self._fired[member]
        self._in_flight.pop(partition, None)
        self._draining.pop(partition, None)
        self._rescan.discard(partition)

    @property
    def armed(self) -> int:
        """Timers waiting in memory."""
        return len(self._armed)

    def stop(self) -> None:
        """Make :meth:`run` return."""
        self._stopping = True
        self._wake.set()

    # ------------------------------------------------------------------ the loop
    async def run(self) -> None:
        """Fire timers until stopped; Redis and broker errors are logged and retried."""
        while not self._stopping:
            self._wake.clear()
            now = self._clock.now_ms()
            try:
                if now >= self._scan_at or self._rescan or any(d <= now for d in self._draining.values()):
                    await self._scan(now)
                await self._fire_due(self._clock.now_ms())
            except STORE_ERRORS as exc:
                log.warning("timer scan failed, retrying: %s", exc)
                self._scan_at = min(self._scan_at, now + 200)
            wake = min(self._scan_at, self._heap[0][0] if self._heap else _NEVER, *self._draining.values())
            await self._clock.sleep_until(wake, self._wake)

    def _arm(self, partition: int, member: bytes, due: int) -> None:
        if self._armed.get(member) == (due, partition):
            return
        self._armed[member] = (due, partition)
        if not self._heap or due < self._heap[0][0]:
            self._wake.set()  # sooner than the loop planned to wake
        heapq.heappush(self._heap, (due, member, partition))

    async def _fire_due(self, now: int) -> None:
        """Publish every armed timer due by ``now`` (never one due later)."""
        heap = self._heap
        if not heap or heap[0][0] > now:
            return
        owned = set(self._owned())
        batch: list[tuple[int, bytes]] = []
        while heap and heap[0][0] <= now:
            due, member, partition = heapq.heappop(heap)
            if self._armed.get(member) != (due, partition):
                continue  # removed, re-armed at another time, or its partition was released
            del self._armed[member]
            if partition not in owned:
                continue
            _LATENESS.observe((now - due) / 1000)
            batch.append((partition, member))
        await self._publish(batch, now)

    def _to_scan(self, now: int) -> list[int]:
        """The owned partitions this pass reads: every one at the poll (but those draining), else those drained."""
        owned = self._owned()
        due = {p for p, at in self._draining.items() if at <= now}
        for p in due:
            del self._draining[p]
        chosen = self._rescan | due
        self._rescan = set()
        if now >= self._scan_at:
            self._scan_at = now + self._poll_ms
            return [p for p in owned if p in chosen or p not in self._draining]
        return [p for p in owned if p in chosen]

    async def _scan(self, now: int) -> None:
        """Fire what Redis holds due (unless fired recently) and arm what falls due before the next scan."""
        partitions = self._to_scan(now)
        if not partitions:
            return
        removed: set[bytes] = set()
        self._removed_in_scan = removed
        try:
            rows = await self._store.due_timers(partitions, now + self._lookahead_ms, limit=self._batch)
        finally:
            self._removed_in_scan = None
        present: set[bytes] = set()
        batch: list[tuple[int, bytes]] = []
        for partition, member, due in rows:
            if member in removed:
                continue  # a commit removed it while the scan was reading
            if due > now:
                if member not in self._fired:
                    self._arm(partition, member, due)
                continue
            present.add(member)
            fired = self._fired.get(member)
            if fired is not None and now - fired[0] < self._refire_ms:
                continue
            self._armed.pop(member, None)
            _LATENESS.observe((now - due) / 1000)
            batch.append((partition, member))
        full = _full_partitions(rows, self._batch)
        # Forget fired timers that are gone (their commit removed them, maybe on another worker):
        # of a full partition, the scan saw only the first rows, so absence there proves nothing.
        scanned = set(partitions) - set(full)
        for member in [m for m, (_, p) in self._fired.items() if p in scanned and m not in present]:
            self._unfire(member)
        await self._publish(batch, now)
        if self._fired:
            self._scan_at = min(self._scan_at, now + self._refire_ms)
        self._after_full(full, now)

    def _after_full(self, full: dict[int, int], now: int) -> None:
        """When to scan again the partitions that had more timers in the window than one scan takes."""
        for partition, last in full.items():
            # More timers in the window than one scan takes. Those fired are in flight: scan again
            # once most are handled. Otherwise (the rows are armed, not due yet) everything up to
            # the last row is handled: look again when that is due (or soon, if it is already).
            if self._in_flight.get(partition, 0) >= self._batch // 2:
                self._draining[partition] = now + self._refire_ms
            else:
                self._scan_at = min(self._scan_at, max(last, now + 50))

    async def _publish(self, batch: list[tuple[int, bytes]], now: int) -> None:
        if not batch:
            return
        messages = [(partition, _message(member)) for partition, member in batch]
        if self._deliver is not None:
            for partition, message in messages:
                self._deliver(partition, message)
        else:
            # Marked fired only once the broker took the messages; if it did not, the next scan
            # (soon: see run) finds the timers still in Redis and fires them.
            await self._transport.publish([Outgoing(partition, encode(message)) for partition, message in messages])
        for partition, member in batch:
            if member not in self._fired:
                self._in_flight[partition] = self._in_flight.get(partition, 0) + 1
            self._fired[member] = (now, partition)


def _message(member: bytes) -> TimerFired:
    _, workflow, instance_id, *_ = unpack(member)
    return TimerFired(workflow=workflow, instance_id=instance_id, timer=member)


def _full_partitions(rows: list[tuple[int, bytes, int]], limit: int) -> dict[int, int]:
    """The partitions whose scan hit ``limit`` rows, with the due time of the last row read."""
    counts: dict[int, int] = {}
    last: dict[int, int] = {}
    for partition, _, due in rows:
        counts[partition] = counts.get(partition, 0) + 1
        last[partition] = due
    return {p: last[p] for p, n in counts.items() if n >= limit}
