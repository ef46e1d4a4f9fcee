"""Partition ownership shared by several workers (embedded transport and store, real worker code)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from typing import Any

import fakeredis
import pytest
from hutch import WorkflowEntrypoint
from hutch.broker import BrokerDispatcher, InProcessTransport
from hutch.client import Client
from hutch.consumers import Worker
from hutch.consumers.membership import LOAD_FACTOR, assign, plan
from hutch.settings import Settings
from hutch.store.redis import RedisStore

from tests.helpers import eventually


class Three(WorkflowEntrypoint):
    async def run(self, event, step):
        total = 0
        for i in range(3):
            total += await step.do("add", lambda i=i: i)
        return total


def test_assignment_is_deterministic_and_within_the_load_bound() -> None:
    plan = assign(["b", "a", "c"], 16)
    assert plan == assign(["c", "b", "a"], 16)
    assert sorted(p for ps in plan.values() for p in ps) == list(range(16))
    assert max(len(v) for v in plan.values()) <= math.ceil(LOAD_FACTOR * 16 / 3)
    assert assign([], 4) == {}
    assert assign(["only"], 4) == {"only": [0, 1, 2, 3]}


def _workers(rng: random.Random, n: int) -> list[str]:
    return [f"{rng.getrandbits(48):012x}" for _ in range(n)]


@pytest.mark.parametrize(("partitions", "workers"), [(16, 2), (16, 3), (16, 4), (256, 2), (256, 3), (256, 4)])
def test_a_join_or_a_leave_moves_its_share_and_little_else(partitions: int, workers: int) -> None:
    # p mod n moved most partitions on every join and leave (and each move re-ran steps). Rendezvous
    # moves the joiner's or leaver's share; the load bound displaces a few more, rarely.
    rng = random.Random(f"{partitions}/{workers}")
    trials, shares, extra = 30, 0, []
    for _ in range(trials):
        names = _workers(rng, workers)
        joiner = _workers(rng, 1)[0]
        before, after = plan(frozenset(names), partitions).owner, plan(frozenset([*names, joiner]), partitions).owner
        shares += sum(after[p] == joiner for p in range(partitions))
        extra.append(sum(before[p] != after[p] != joiner for p in range(partitions)))
        leaver, rest = names[0], plan(frozenset(names[1:]), partitions).owner
        shares += sum(before[p] == leaver for p in range(partitions))
        extra.append(sum(before[p] != rest[p] and before[p] != leaver for p in range(partitions)))
    # The joiner takes about its share, the leaver's partitions all move.
    assert shares / (2 * trials) == pytest.approx(partitions / (workers + 1) / 2 + partitions / workers / 2, rel=0.2)
    assert sum(extra) / len(extra) <= 1.0, extra  # partitions moved between the workers that stayed
    assert max(extra) <= max(3, partitions // 64), extra
    # ... where taking turns (p mod n) moves most of them.
    modulo = [p for p in range(partitions) if p % workers != p % (workers + 1)]
    assert len(modulo) > partitions / 2


@pytest.mark.parametrize(("partitions", "workers"), [(16, 2), (16, 5), (256, 3), (1024, 8)])
def test_the_load_stays_within_the_bound_and_successors_are_the_plan_without_the_owner(
    partitions: int, workers: int
) -> None:
    rng = random.Random(partitions * workers)
    for _ in range(10 if partitions < 1024 else 2):
        names = frozenset(_workers(rng, workers))
        p = plan(names, partitions)
        loads = [sum(1 for w in p.owner.values() if w == name) for name in names]
        assert sum(loads) == partitions
        assert max(loads) <= math.ceil(LOAD_FACTOR * partitions / workers)
        for partition, owner in p.owner.items():
            successor = p.successor[partition]
            assert successor != owner
            assert successor == plan(names - {owner}, partitions).owner[partition]
    lone = plan(frozenset({"a"}), 4)
    assert lone.successor == {0: None, 1: None, 2: None, 3: None}


@pytest.fixture
def shared() -> tuple[fakeredis.FakeServer, InProcessTransport]:
    return fakeredis.FakeServer(), InProcessTransport(8)


def _worker(
    server: fakeredis.FakeServer,
    transport: InProcessTransport,
    name: str,
    *,
    heartbeat_s: float = 0.05,
    workflows: dict[str, type[WorkflowEntrypoint]] | None = None,
    distributed: bool = True,
) -> Worker:
    store = RedisStore(fakeredis.aioredis.FakeRedis(server=server), 8)
    settings = Settings(partitions=8, heartbeat_s=heartbeat_s, worker_ttl_s=heartbeat_s * 6)
    return Worker(
        store=store,
        transport=transport,
        workflows=workflows or {"three": Three},
        settings=settings,
        distributed=distributed,
        worker_id=name,
    )


async def test_two_workers_split_partitions_and_the_survivor_takes_over(
    shared: tuple[fakeredis.FakeServer, InProcessTransport],
) -> None:
    server, transport = shared
    a, b = _worker(server, transport, "a"), _worker(server, transport, "b")
    await a.start()
    await b.start()
    try:
        # Each its share under the plan (a handover each, from the first to start to the second).
        planned = assign(["a", "b"], 8)
        await eventually(lambda: _async(a.partitions == planned["a"] and b.partitions == planned["b"]), timeout=5)

        client = _client(server, transport)
        instances = [await client.workflow("three").create(params={}) for _ in range(20)]
        for inst in instances:
            assert (await inst.wait(timeout=10)).output == 3

        await b.shutdown()
        await eventually(lambda: _async(len(a.partitions) == 8), timeout=5)
        more = [await client.workflow("three").create(params={}) for _ in range(10)]
        for inst in more:
            assert (await inst.wait(timeout=10)).output == 3
    finally:
        await a.shutdown()
        await b.shutdown()


async def test_a_join_waits_for_the_running_step_and_nothing_runs_twice(
    shared: tuple[fakeredis.FakeServer, InProcessTransport],
) -> None:
    # B joins while A runs a step of an instance whose partition the plan gives B. A starts nothing
    # new there, lets the step finish and commit, then hands the partition over: B continues from
    # the committed state. The step ran once; the next one runs on B.
    server, transport = shared
    gate = asyncio.Event()
    ran: list[str] = []

    async def first() -> str:
        ran.append("first")
        await gate.wait()
        return "first"

    async def second() -> str:
        ran.append("second")
        return "second"

    class Gated(WorkflowEntrypoint):
        async def run(self, event, step):
            return [await step.do("first", first), await step.do("second", second)]

    workflows: dict[str, type[WorkflowEntrypoint]] = {"gated": Gated}
    a = _worker(server, transport, "a", workflows=workflows)
    b = _worker(server, transport, "b", workflows=workflows)
    client = _client(server, transport)
    moving = assign(["a", "b"], 8)["b"][0]
    iid = next(f"g-{n}" for n in range(1000) if client._partition("gated", f"g-{n}") == moving)
    await a.start()
    try:
        instance = await client.workflow("gated").create(id=iid, params={})
        await eventually(lambda: _async(ran == ["first"]), timeout=5)
        await b.start()
        others = [p for p in assign(["a", "b"], 8)["b"] if p != moving]
        await eventually(lambda: _async(all(p in b.partitions for p in others)), timeout=5)
        assert moving in a.partitions and moving not in b.partitions  # held until the step is done
        gate.set()
        assert (await instance.wait(timeout=5)).output == ["first", "second"]
        assert ran == ["first", "second"]
        assert moving in b.partitions and moving not in a.partitions
        attempts = [len(s.attempts) for s in (await instance.describe()).steps]
        assert attempts == [1, 1]
    finally:
        gate.set()
        await a.shutdown()
        await b.shutdown()


async def test_a_crashed_owners_partitions_are_claimed_by_their_standbys_at_once(
    shared: tuple[fakeredis.FakeServer, InProcessTransport],
) -> None:
    # Heartbeats every 60 s: only the broker's signal can move the partitions within the test. The
    # crashed worker's consumers go away without a word (no release); the broker activates B's
    # standby consumers and hands them each partition's lease, and B claims them all.
    server, transport = shared
    a = _worker(server, transport, "a", heartbeat_s=60)
    b = _worker(server, transport, "b", heartbeat_s=60)
    await a.start()
    await b.start()
    try:
        assert a.partitions == list(range(8))  # B waits for handovers A would start at its next tick
        assert b.membership is not None and b.membership.subscribed == set(range(8))  # in line behind A
        await a._children.stop()  # the crash: nothing of A runs any more, its consumers vanish
        for subscription in list(a._subscriptions.values()):
            await subscription.close()
        await eventually(lambda: _async(b.partitions == list(range(8))), timeout=2)
        instance = await _client(server, transport).workflow("three").create(params={})
        assert (await instance.wait(timeout=5)).output == 3
    finally:
        await b.shutdown()
        a._subscriptions.clear()
        await a.shutdown()


async def _async(value: bool) -> bool:
    return value


def _client(server: fakeredis.FakeServer, transport: InProcessTransport) -> Client:
    """A remote client of the shared store and transport (no worker of its own)."""
    return Client(RedisStore(fakeredis.aioredis.FakeRedis(server=server), 8), BrokerDispatcher(transport))


async def _lone_worker(server: fakeredis.FakeServer, transport: InProcessTransport) -> Worker:
    """A started worker alone on the partitions, whose heartbeat (60 s) never fires in a test."""
    worker = _worker(server, transport, "a", heartbeat_s=60)
    await worker.start()
    return worker


async def test_a_fenced_commit_reconciles_ownership_at_once_not_at_the_next_heartbeat(
    shared: tuple[fakeredis.FakeServer, InProcessTransport],
) -> None:
    # Two workers starting together can both claim a partition for a moment; the loser of that race
    # is fenced at its next commit. It must re-take what the assignment gives it right away: with a
    # 60 s heartbeat, only the fenced commit itself can bring the partition back within the deadline.
    server, transport = shared
    worker = await _lone_worker(server, transport)
    store = worker.store
    try:
        assert worker.partitions == list(range(8))
        client = _client(server, transport)
        partition = client._partition("three", "fenced-1")
        await store.claim(partition, "a-racing-worker:0")  # what the other worker's late claim wrote

        instance = await client.workflow("three").create(id="fenced-1", params={})
        assert (await instance.wait(timeout=5)).output == 3
        assert worker.partitions == list(range(8))
        assert worker.orchestrator.owned[partition].startswith("a:")  # re-claimed with a fresh token
    finally:
        await worker.shutdown()


async def test_a_commit_fenced_by_our_own_reclaim_keeps_the_partition(
    shared: tuple[fakeredis.FakeServer, InProcessTransport],
) -> None:
    # A restored broker channel re-assigns its partition (a fresh token) while a commit made with
    # the old token is in flight; that commit is fenced by ourselves and must not drop ownership.
    server, transport = shared
    worker = await _lone_worker(server, transport)
    store = worker.store
    orchestrator = worker.orchestrator
    evalsha_many = store._evalsha_many
    client = _client(server, transport)
    partition = client._partition("three", "reclaimed-1")
    reclaimed: list[str] = []

    async def reclaim_during_the_round_trip(script, calls, **options):  # type: ignore[no-untyped-def]
        # The commit's arguments (and its token) are built; the re-claim lands before Redis runs it.
        if script is store._commit and not reclaimed and partition in orchestrator.owned:
            await orchestrator.on_assigned(partition)
            reclaimed.append(orchestrator.owned[partition])
        return await evalsha_many(script, calls, **options)

    store._evalsha_many = reclaim_during_the_round_trip  # type: ignore[method-assign]
    try:
        instance = await client.workflow("three").create(id="reclaimed-1", params={})
        assert (await instance.wait(timeout=5)).output == 3
        assert reclaimed, "the re-claim never happened; the test proved nothing"
        assert orchestrator.owned[partition] == reclaimed[0]  # still ours, with the re-claimed token
    finally:
        await worker.shutdown()


async def test_deliveries_of_a_fenced_partition_wait_for_it_instead_of_burning_their_delivery_limit(
    shared: tuple[fakeredis.FakeServer, InProcessTransport],
) -> None:
    # After a fenced commit the worker has dropped the partition, but its subscription is still the
    # queue's active consumer: every nack would come straight back, and the delivery limit would
    # dead-letter the message within milliseconds. Parked instead, it runs once the partition is back.
    server, transport = shared
    worker = await _lone_worker(server, transport)
    orchestrator = worker.orchestrator
    try:
        client = _client(server, transport)
        partition = client._partition("three", "parked-1")
        await orchestrator.on_revoked(partition)  # what a fenced commit does

        instance = await client.workflow("three").create(id="parked-1", params={})
        await eventually(lambda: _async(bool(orchestrator._parked.get(partition))), timeout=5)
        assert (await instance.status()).status == "queued"

        await orchestrator.on_assigned(partition)
        assert (await instance.wait(timeout=5)).output == 3
        assert await transport.dead_letters() == []
    finally:
        await worker.shutdown()


async def test_a_partition_back_from_an_owner_that_died_reruns_the_attempt_that_owner_started(
    shared: tuple[fakeredis.FakeServer, InProcessTransport],
) -> None:
    # A runs attempt 1; its partition moves to B, which declares attempt 1 lost and starts attempt 2;
    # B dies and the partition comes back to A, which still runs attempt 1. Attempt 2 runs nowhere,
    # so A must start attempt 3. Attempt 1 cannot stand in for it: B recorded it as ended (lost).
    server, transport = shared
    started: list[int] = []
    cancelled: list[int] = []
    hold = asyncio.Event()  # set at teardown only: attempts 1 and 2 end by cancellation

    async def relay(ctx: Any) -> int:
        started.append(ctx.attempt)
        if ctx.attempt < 3:
            try:
                await hold.wait()
            except asyncio.CancelledError:
                cancelled.append(ctx.attempt)
                raise
        return int(ctx.attempt)

    class Relay(WorkflowEntrypoint):
        async def run(self, event, step):
            return await step.do("relay", relay)

    workflows: dict[str, type[WorkflowEntrypoint]] = {"relay": Relay}
    a = _worker(server, transport, "a", heartbeat_s=60, workflows=workflows)
    await a.start()
    # B is a partition owner with no membership and no subscription: the test hands it the partition.
    b = _worker(server, transport, "b", workflows=workflows, distributed=False)
    b_loop = asyncio.create_task(b.orchestrator.run())
    try:
        client = _client(server, transport)
        partition = client._partition("relay", "relay-1")
        instance = await client.workflow("relay").create(id="relay-1", params={})
        await eventually(lambda: _async(started == [1]), timeout=5)

        await a.orchestrator.on_revoked(partition)  # A lets go; its attempt 1 runs on
        await b.orchestrator.on_assigned(partition)
        await eventually(lambda: _async(started == [1, 2]), timeout=5)

        b_loop.cancel()  # B dies with its attempt 2
        await b.orchestrator.runner.close()
        await a.orchestrator.on_assigned(partition)

        assert (await instance.wait(timeout=5)).output == 3
        assert started == [1, 2, 3]
        assert sorted(cancelled) == [1, 2]  # attempt 1 was stopped on A: it never reported a result
        attempts = (await instance.describe()).steps[0].attempts
        assert [att.error.name if att.error else "ok" for att in attempts] == [
            "WorkerLostError",
            "WorkerLostError",
            "ok",
        ]
    finally:
        hold.set()
        b_loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await b_loop
        await b.orchestrator.runner.close()
        await a.shutdown()


async def test_a_store_outage_longer_than_the_ttl_moves_no_partition(
    shared: tuple[fakeredis.FakeServer, InProcessTransport],
) -> None:
    # No worker heartbeats during the outage, so afterwards every heartbeat is older than the ttl.
    # Counting that as death, the first worker to read Redis again claimed every partition, and the
    # others took theirs back: two moves per partition, each re-running its steps in flight.
    server, transport = shared
    # Heartbeats slow enough that a loaded machine's event-loop stalls stay well under the ttl (1.2 s).
    heartbeat_s = 0.2
    workers = [_worker(server, transport, name, heartbeat_s=heartbeat_s) for name in ("a", "b", "c")]
    for worker in workers:
        await worker.start()
    try:
        planned = assign(["a", "b", "c"], 8)
        await eventually(lambda: _async(all(w.partitions == planned[w.worker_id] for w in workers)), timeout=15)
        before = {w.worker_id: dict(w.membership.held) for w in workers if w.membership is not None}
        moves: list[tuple[str, str, Any]] = []
        for worker in workers:
            adopt, drop = worker.adopt, worker.drop

            async def adopted(tokens: dict[int, str], adopt: Any = adopt, me: str = worker.worker_id) -> None:
                moves.append((me, "adopt", sorted(tokens)))
                await adopt(tokens)

            async def dropped(partition: int, drop: Any = drop, me: str = worker.worker_id) -> None:
                moves.append((me, "drop", partition))
                await drop(partition)

            worker.adopt = adopted  # type: ignore[method-assign]
            worker.drop = dropped  # type: ignore[method-assign]

        server.connected = False  # every command fails with a ConnectionError
        await asyncio.sleep(3 * 6 * heartbeat_s)  # the outage itself (3 ttl): its length is what is under test
        server.connected = True
        assert workers[0].membership is not None
        assert sorted(await workers[0].membership.live_workers()) == ["a", "b", "c"]  # not dead: unseen

        # Every worker reads the heartbeats again, for more than a ttl after the outage.
        ticks = {w.worker_id: 0 for w in workers}
        for worker in workers:
            assert worker.membership is not None
            tick = worker.membership.tick

            async def counted(tick: Any = tick, me: str = worker.worker_id) -> None:
                await tick()
                ticks[me] += 1

            worker.membership.tick = counted  # type: ignore[method-assign]
        await eventually(lambda: _async(min(ticks.values()) >= 2 * 6), timeout=15)
        assert moves == []
        assert {w.worker_id: dict(w.membership.held) for w in workers if w.membership is not None} == before
    finally:
        server.connected = True
        for worker in workers:
            await worker.shutdown()
