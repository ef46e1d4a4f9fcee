"""The timer service: own timers fire from memory exactly when due; Redis scans catch the rest.

The service runs against fakeredis and a clock the test moves by hand. The clock records every
moment the service goes to sleep until, so a test knows the service finished reacting to a
change (and when it plans to wake) without sleeping itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import fakeredis
import pytest
from hutch.broker.envelopes import TimerFired
from hutch.clock import Clock
from hutch.consumers.timers import TimerService
from hutch.serialization import pack
from hutch.store.base import CommitResult, Transition
from hutch.store.redis import RedisStore

T0 = 1_700_000_000_000
WF = "wf"


class HandClock(Clock):
    """Time moves only when the test says; the service's sleeps are observable."""

    def __init__(self, now_ms: int) -> None:
        self.now = now_ms
        self._moved = asyncio.Event()
        self._parked: asyncio.Queue[int] = asyncio.Queue()

    def now_ms(self) -> int:
        return self.now

    def advance_to(self, ms: int) -> None:
        self.now = ms
        self._moved.set()

    async def sleep_until(self, due_ms: int, wake: asyncio.Event) -> None:
        if self.now >= due_ms or wake.is_set():
            return
        self._moved.clear()
        self._parked.put_nowait(due_ms)
        moved = asyncio.ensure_future(self._moved.wait())
        woken = asyncio.ensure_future(wake.wait())
        try:
            await asyncio.wait({moved, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (moved, woken):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def parked(self) -> int:
        """Wait until the service sleeps again, having handled everything so far; when it plans to wake."""
        while True:
            due = await asyncio.wait_for(self._parked.get(), timeout=5)
            if self._parked.empty():
                return due


@dataclass
class Rig:
    store: RedisStore
    clock: HandClock
    service: TimerService
    owned: set[int]
    fired: list[tuple[int, bytes, int]] = field(default_factory=list)  # (partition, member, at ms)
    scans: int = 0

    async def add(self, partition: int, iid: str, due: int, *, tell: bool = True) -> bytes:
        """Commit a timer to Redis (as an owner's transition does); ``tell`` the service like the owner would."""
        member = pack(["sleep", WF, iid, 0, "nap", 1])
        created = T0 - 1
        fields = {"wf": WF, "id": iid, "status": "running", "seq": 0, "run": 0, "created": created}
        assert await self.store.create(partition, WF, iid, created, fields)
        t = Transition(partition, WF, iid, 0, created, timers_add=[(due, member)])
        assert await self.store.commit_many([t], {}) == [CommitResult.COMMITTED]
        if tell:
            self.service.committed(partition, [(due, member)], [])
        return member

    async def remove(self, partition: int, iid: str, member: bytes) -> None:
        t = Transition(partition, WF, iid, 1, T0 - 1, timers_remove=[member])
        assert await self.store.commit_many([t], {}) == [CommitResult.COMMITTED]
        self.service.committed(partition, [], [member])


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    store = RedisStore(fakeredis.aioredis.FakeRedis(server=fakeredis.FakeServer()), 4)
    clock = HandClock(T0)
    owned = {0, 1, 2, 3}
    service = TimerService(store, None, lambda: sorted(owned), clock=clock, poll_s=1.0, refire_s=30.0)  # type: ignore[arg-type]
    r = Rig(store, clock, service, owned)
    due_timers = store.due_timers

    async def counting_due_timers(*args, **kwargs):  # type: ignore[no-untyped-def]
        r.scans += 1
        return await due_timers(*args, **kwargs)

    store.due_timers = counting_due_timers  # type: ignore[method-assign]

    def deliver(partition: int, message: TimerFired) -> None:
        r.fired.append((partition, message.timer, clock.now))

    service.deliver_locally(deliver)
    task = asyncio.create_task(service.run())
    assert await clock.parked() == T0 + 1000  # the first scan ran; the next is one poll later
    try:
        yield r
    finally:
        service.stop()
        await asyncio.wait_for(task, timeout=5)
        await store.close()


async def test_own_timers_fire_exactly_when_due_without_a_scan(rig: Rig) -> None:
    early = await rig.add(1, "a", T0 + 300)
    late = await rig.add(2, "b", T0 + 301)
    assert await rig.clock.parked() == T0 + 300  # it sleeps until the first due time, not until the poll
    scans = rig.scans

    rig.clock.advance_to(T0 + 299)
    assert await rig.clock.parked() == T0 + 300
    assert rig.fired == []  # never before its due time

    rig.clock.advance_to(T0 + 300)
    assert await rig.clock.parked() == T0 + 301
    rig.clock.advance_to(T0 + 301)
    assert await rig.clock.parked() == T0 + 1000
    assert rig.fired == [(1, early, T0 + 300), (2, late, T0 + 301)]
    assert rig.scans == scans  # fired from memory


async def test_a_timer_removed_by_a_commit_does_not_fire_from_memory(rig: Rig) -> None:
    member = await rig.add(0, "a", T0 + 200)
    assert await rig.clock.parked() == T0 + 200
    await rig.remove(0, "a", member)

    rig.clock.advance_to(T0 + 250)
    assert await rig.clock.parked() == T0 + 1000
    assert rig.fired == []
    assert rig.service.armed == 0


async def test_a_released_partition_fires_nothing_from_memory(rig: Rig) -> None:
    await rig.add(3, "a", T0 + 100)
    assert await rig.clock.parked() == T0 + 100
    rig.owned.discard(3)
    rig.service.forget_partition(3)

    rig.clock.advance_to(T0 + 150)
    await rig.clock.parked()
    assert rig.fired == []


async def test_timers_of_other_owners_are_found_by_the_poll_and_fired_on_time(rig: Rig) -> None:
    # Written by a previous owner: this service was never told.
    overdue = await rig.add(0, "a", T0 - 5_000, tell=False)
    soon = await rig.add(1, "b", T0 + 1_500, tell=False)
    assert rig.fired == [] and rig.service.armed == 0

    rig.clock.advance_to(T0 + 1_000)  # the poll: fires what is due, arms what falls due before the next one
    assert await rig.clock.parked() == T0 + 1_500
    assert rig.fired == [(0, overdue, T0 + 1_000)]
    assert rig.service.armed == 1

    rig.clock.advance_to(T0 + 1_500)
    await rig.clock.parked()
    assert rig.fired[1:] == [(1, soon, T0 + 1_500)]


async def test_far_timers_stay_in_redis_until_a_poll_brings_them_close(rig: Rig) -> None:
    member = await rig.add(2, "a", T0 + 3_600_000)  # an hour: not kept in memory (and no reason to wake)
    assert rig.service.armed == 0

    rig.clock.advance_to(T0 + 3_600_000 - 1_500)  # a poll within the lookahead arms it
    assert await rig.clock.parked() == T0 + 3_600_000 - 500  # the next poll comes first
    assert rig.service.armed == 1 and rig.fired == []
    rig.clock.advance_to(T0 + 3_600_000)
    await rig.clock.parked()
    assert rig.fired == [(2, member, T0 + 3_600_000)]


async def test_a_fired_timer_left_in_redis_fires_again_only_after_refire_s(rig: Rig) -> None:
    member = await rig.add(0, "a", T0 + 100)
    rig.clock.advance_to(T0 + 100)
    await rig.clock.parked()
    assert len(rig.fired) == 1

    rig.clock.advance_to(T0 + 5_000)  # polls see it still in Redis (its message was lost): not yet
    await rig.clock.parked()
    assert len(rig.fired) == 1
    rig.clock.advance_to(T0 + 100 + 30_000)
    await rig.clock.parked()
    assert [f[1] for f in rig.fired] == [member, member]


async def test_a_timer_fired_before_its_partition_left_fires_again_as_soon_as_it_is_back(rig: Rig) -> None:
    # Fired into the owner's inbox just as the partition was released: the owner dropped it
    # unhandled (not its partition any more). Back here, it is due and unhandled: fire it now.
    member = await rig.add(0, "a", T0 + 100)
    rig.clock.advance_to(T0 + 100)
    await rig.clock.parked()
    assert rig.fired == [(0, member, T0 + 100)]

    rig.owned.discard(0)
    rig.service.forget_partition(0)
    rig.clock.advance_to(T0 + 200)
    rig.owned.add(0)
    rig.service.due_at(0)  # what acquiring a partition does
    await rig.clock.parked()
    assert rig.fired[1:] == [(0, member, T0 + 200)]


async def test_a_storm_larger_than_a_scan_rereads_nothing_while_in_flight_and_fires_each_timer_once(rig: Rig) -> None:
    # More timers due at once on a partition than one scan takes (W7's storm: 100 000 sleepers on
    # 16 partitions, 1 000 rows a scan). What a scan fired is in flight until its commits remove
    # it: scanning again meanwhile reads the same rows and finds nothing, and doing so every few
    # milliseconds made the storm's cost grow with the square of its size.
    rig.service._batch = 4
    members = {await rig.add(0, f"i{n:02}", T0 + 100, tell=False): f"i{n:02}" for n in range(10)}
    rig.clock.advance_to(T0 + 1_000)  # the poll finds them due
    await rig.clock.parked()
    assert len(rig.fired) == 4
    scans = rig.scans
    for ms in range(T0 + 1_050, T0 + 1_950, 50):  # the owner works through what was fired
        rig.clock.advance_to(ms)
        await rig.clock.parked()
    assert rig.scans == scans  # nothing new could be found: not scanned again
    assert len(rig.fired) == 4

    handled: set[bytes] = set()
    while len(rig.fired) < len(members):  # each commit that handles a fired timer removes it
        for _, member, _ in rig.fired:
            if member not in handled:
                handled.add(member)
                await rig.remove(0, members[member], member)
        await rig.clock.parked()  # most in flight were handled: scanned again at once
    fired = [member for _, member, _ in rig.fired]
    assert len(fired) == len(set(fired)) == 10  # every timer, each once
    assert all(at < T0 + 1_950 + 1 for _, _, at in rig.fired)  # with no poll or refire needed
