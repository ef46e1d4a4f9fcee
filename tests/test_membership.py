"""Partition ownership shared by several workers (embedded transport and store, real worker code)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import fakeredis
import pytest

from broker import BrokerDispatcher, InProcessTransport
from consumers import Worker
from consumers.membership import assign
from engine import WorkflowEntrypoint
from engine.client import Client
from engine.settings import Settings
from engine.store.redis import RedisStore
from tests.helpers import eventually


class Three(WorkflowEntrypoint):
    async def run(self, event, step):
        total = 0
        for i in range(3):
            total += await step.do("add", lambda i=i: i)
        return total


def test_assignment_is_even_and_deterministic() -> None:
    plan = assign(["b", "a", "c"], 16)
    assert plan == assign(["c", "b", "a"], 16)
    sizes = sorted(len(v) for v in plan.values())
    assert sizes == [5, 5, 6]
    assert sorted(p for ps in plan.values() for p in ps) == list(range(16))
    assert assign([], 4) == {}


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
        await eventually(lambda: _async(len(a.partitions) == 4 and len(b.partitions) == 4), timeout=5)
        assert set(a.partitions).isdisjoint(b.partitions)

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
